"""Unpadding (ModernBERT's layout): the real tokens of a padded (B, T) batch packed back to back.

Blocks of whole sentences leave a fifth to a third of each batch as padding (doc packing of the
built-in corpus: 78% real at 128 tokens, 68% at 512), and fine-tuning batches more. Between the
embeddings and the output the encoder then works on (N, H) real rows only: every GEMM, LayerNorm
and dropout skips the padding. Attention takes the packed rows directly where a varlen kernel
runs (the fused backends of model/attention.py); the others lay q, k, v out again as
(B, heads, T_max, D) over the longest real sequence, which is still shorter than T (heads_padded).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Unpadded:
    """Where the real tokens of a (batch, seq_len) batch went; built once per forward by `unpad`."""

    index: torch.Tensor  # (N,) flat b * seq_len + t of each real token, in order
    cu_seqlens: torch.Tensor  # (B + 1,) int32: sequence b is rows cu_seqlens[b]:cu_seqlens[b + 1]
    max_seqlen: int
    repad_index: torch.Tensor  # (N,) b * max_seqlen + (the token's place among its sequence's real tokens)
    mask: torch.Tensor  # (B, max_seqlen) bool: True where a repadded row holds a real token
    batch: int
    seq_len: int


def unpad(key_padding_mask):
    """The layout of a bool (B, T) mask (True: real), or None when no position is padding."""
    B, T = key_padding_mask.shape
    lengths = key_padding_mask.sum(1)
    n_real, max_seqlen = torch.stack([lengths.sum(), lengths.max()]).tolist()  # one host sync
    if n_real == B * T:
        return None
    index = key_padding_mask.flatten().nonzero().squeeze(1)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0))
    sequence = index // T
    place = torch.arange(len(index), device=index.device) - cu_seqlens[sequence]
    mask = torch.arange(max_seqlen, device=index.device)[None, :] < lengths[:, None]
    return Unpadded(index, cu_seqlens.to(torch.int32), max_seqlen, sequence * max_seqlen + place, mask, B, T)


class _Rows(torch.autograd.Function):
    """rows = x[index] for unique indices. Its backward copies the gradient rows into zeros (index_copy)
    instead of index_select's general accumulating scatter, which took a fifth of a CPU step's time here."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.n_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.n_rows, *grad.shape[1:]).index_copy_(0, index, grad), None


def take(x, layout):
    """(B, T, H) -> (N, H): the real rows."""
    return _Rows.apply(x.reshape(-1, x.shape[-1]), layout.index)


def put_back(x, layout):
    """(N, H) -> (B, T, H), zeros at the padding."""
    out = x.new_zeros(layout.batch * layout.seq_len, x.shape[-1]).index_copy(0, layout.index, x)
    return out.view(layout.batch, layout.seq_len, -1)


def heads_padded(x, layout):
    """(N, heads, D) -> (B, heads, max_seqlen, D), zeros at the padding, for the padded attention backends."""
    out = x.new_zeros(layout.batch * layout.max_seqlen, *x.shape[1:]).index_copy(0, layout.repad_index, x)
    return out.view(layout.batch, layout.max_seqlen, *x.shape[1:]).transpose(1, 2)


def heads_unpadded(y, layout):
    """(B, heads, max_seqlen, D) -> (N, heads, D): the real rows of an attention output."""
    y = y.transpose(1, 2).reshape(layout.batch * layout.max_seqlen, y.shape[1], y.shape[3])
    return _Rows.apply(y, layout.repad_index)
