"""Attention backends: one plain dict from name to implementations, like ModernBERT's ATTN2CLS.

ATTENTION_BACKENDS[name][backbone] is an Implementations(padded, varlen) pair; the config's
attention_backend and the command line's choices are its keys. The attention modules (encoder.py for BERT,
deberta.py for DeBERTa's disentangled attention) take their pair once, when they are built, and then call
`padded` on a (B, T) batch and `varlen` on the packed real rows of an unpadded one (model/padding.py); no
backend name is looked at again.

The signatures, one per backbone and layout (scale None: 1/sqrt(hs)):
    bert     padded(q, k, v, key_padding_mask, dropout_p, scale)            q, k, v (B, nh, T, hs) -> (B, nh, T, hs)
             varlen(q, k, v, layout, dropout_p, scale)                      q, k, v (N, nh, hs) -> (N, nh, hs)
    deberta  padded(q, k, v, k_r, q_r, rows, key_padding_mask, dropout_p, scale)
             varlen(q, k, v, k_r, q_r, rows, layout, dropout_p, scale)
key_padding_mask: bool (B, T), True for real tokens (None: no padding); layout: padding.Unpadded. DeBERTa's
k_r, q_r: (nh, 2 * buckets, hs), the relative table projected by the layer's key and query weights; rows:
(T, T) deberta.relative_rows of T (of the layout's max_seqlen when varlen).

eager is the reference, sdpa is PyTorch's scaled_dot_product_attention, fused our Triton kernels
(spanbert_ds/kernels; a UserError where they cannot run, never a silent fallback), and auto on CUDA the
faster of fused and sdpa for each shape class, timed once per process (kernels/fastest.py), where the fused
kernels passed their self-check; sdpa elsewhere. The varlen kernels take the packed rows as they are; the
other backends lay them out again over the longest real sequence of the batch (`repadded`). They all give
the same numbers (tests/model/test_attention_backends.py); pick by speed.
"""

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from spanbert_ds.errors import UserError
from spanbert_ds.kernels import dispatch, fastest, reference
from spanbert_ds.model import padding


class Implementations(NamedTuple):
    padded: Callable  # on (B, nh, T, hs) heads with a key padding mask
    varlen: Callable  # on (N, nh, hs) packed real rows with their Unpadded layout


def repadded(padded):
    """The varlen implementation of a padded one: the packed rows laid out again over the longest real sequence
    (zeros at the padding, masked), attended, and the real rows taken back."""
    return functools.partial(_repad_and_attend, padded)


def _repad_and_attend(padded, q, k, v, *rest):
    *relative, layout, dropout_p, scale = rest  # relative: DeBERTa's k_r, q_r, rows; none for BERT
    q, k, v = (padding.heads_padded(t, layout) for t in (q, k, v))
    return padding.heads_unpadded(padded(q, k, v, *relative, layout.mask, dropout_p, scale), layout)


AUTO_CANDIDATES = ("fused", "sdpa")  # what `auto` times against each other; sdpa last: `fastest` raises its error


def fastest_padded(backbone, key, inputs, *args):
    """The faster of the AUTO_CANDIDATES' padded implementations for `backbone` on these inputs (tensors, then
    the other arguments), timed once per `key` (the shape class) per process."""
    candidates = {name: ATTENTION_BACKENDS[name][backbone].padded for name in AUTO_CANDIDATES}
    chosen = fastest.fastest(key, lambda: {name: fastest.trial(fn, inputs, *args) for name, fn in candidates.items()},
                             inputs[0].device)
    return candidates[chosen](*inputs, *args)


# --------------------------------------------------------------------------------------------------
# BERT: softmax(q k^T * scale) v

def eager_attention(q, k, v, key_padding_mask, dropout_p=0.0, scale=None):
    """The reference: explicit scores, mask, softmax, dropout, weighted sum."""
    return reference.attention(q, k, v, key_padding_mask, dropout_p, scale)


def sdpa_attention(q, k, v, key_padding_mask, dropout_p=0.0, scale=None):
    """PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels where they apply)."""
    mask = None
    if key_padding_mask is not None:
        # A sample with no real token at all would softmax over nothing (NaN): let it attend
        # everywhere instead; nothing reads its outputs. Costs no host sync.
        mask = key_padding_mask | ~key_padding_mask.any(dim=-1, keepdim=True)
        mask = mask[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def fused_attention(q, k, v, key_padding_mask, dropout_p=0.0, scale=None):
    """Our Triton flash-attention kernel."""
    return dispatch.fused_attention(q, k, v, key_padding_mask, dropout_p, scale)


def fused_attention_varlen(q, k, v, layout, dropout_p=0.0, scale=None):
    """The Triton kernel on the packed rows: the padding costs nothing."""
    return dispatch.fused_attention_varlen(q, k, v, layout.cu_seqlens, layout.max_seqlen, dropout_p, scale)


def auto_attention(q, k, v, key_padding_mask, dropout_p=0.0, scale=None):
    """The faster of fused and sdpa for this shape class where the fused kernels may run, else sdpa."""
    if not dispatch.auto_may_fuse(q):
        return sdpa_attention(q, k, v, key_padding_mask, dropout_p, scale)
    _, h, t, d = q.shape
    key = ("attention", str(q.device), q.dtype, h, d, fastest.size_class(t), key_padding_mask is not None,
           dropout_p > 0.0)
    return fastest_padded("bert", key, (q, k, v), key_padding_mask, dropout_p, scale)


def auto_attention_varlen(q, k, v, layout, dropout_p=0.0, scale=None):
    """The varlen kernel wherever the fused kernels may run, untimed (it skips the padding that SDPA would
    compute over); SDPA on the rows laid out again elsewhere."""
    if dispatch.auto_may_fuse(q):
        return fused_attention_varlen(q, k, v, layout, dropout_p, scale)
    return repadded(sdpa_attention)(q, k, v, layout, dropout_p, scale)


# --------------------------------------------------------------------------------------------------
# DeBERTa: softmax(q k^T * scale + c2p + p2c) v, the relative terms c2p[i, j] = q_i . k_r[rows[i, j]] and
# p2c[i, j] = k_j . q_r[rows[i, j]], scale 1/sqrt(3 hs) (model/deberta.py)

def relative_bias(q, k, k_r, q_r, rows, scale):
    """The c2p + p2c terms as a (B, nh, T, T) tensor (p2c gathered key-major, at rows^T, then transposed)."""
    B, nh, T, _ = q.shape
    c2p = torch.gather(q @ k_r.transpose(-1, -2), -1, rows.expand(B, nh, T, T))
    p2c = torch.gather(k @ q_r.transpose(-1, -2), -1, rows.T.expand(B, nh, T, T)).transpose(-1, -2)
    return (c2p + p2c) * scale


def relative_index(rows):
    """The row for each distance d = i - j, at d + T - 1 ((2T - 1,) int32): what the fused kernel looks up
    (the first row and column of `rows` hold every distance)."""
    return torch.cat([rows[0, 1:].flip(0), rows[:, 0]]).to(torch.int32)  # i - j from -(T - 1) to T - 1


def eager_disentangled(q, k, v, k_r, q_r, rows, mask, dropout_p, scale):
    """The reference: explicit scores, mask, softmax, dropout, weighted sum."""
    scores = (q @ k.transpose(-1, -2)) * scale + relative_bias(q, k, k_r, q_r, rows, scale)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.dropout(scores.softmax(dim=-1), dropout_p, dropout_p > 0.0) @ v


def sdpa_disentangled(q, k, v, k_r, q_r, rows, mask, dropout_p, scale):
    """PyTorch's SDPA with the relative terms (and the padding) as a T x T additive mask."""
    bias = relative_bias(q, k, k_r, q_r, rows, scale)
    if mask is not None:
        bias = bias.masked_fill(~mask[:, None, None, :], torch.finfo(bias.dtype).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def fused_disentangled(q, k, v, k_r, q_r, rows, mask, dropout_p, scale):
    """Our Triton kernel, which gathers c2p and p2c itself from the T x 2 * buckets products: no T x T tensor."""
    return dispatch.fused_disentangled_attention(q, k, v, (q @ k_r.transpose(-1, -2)) * scale,
                                                 (k @ q_r.transpose(-1, -2)) * scale, relative_index(rows), mask,
                                                 dropout_p, scale)


def fused_disentangled_varlen(q, k, v, k_r, q_r, rows, layout, dropout_p, scale):
    """The kernel on packed rows: c2p and p2c are (N, nh, 2 * buckets), nothing padded, nothing T x T."""
    c2p = torch.einsum("nhd,hrd->nhr", q, k_r) * scale
    p2c = torch.einsum("nhd,hrd->nhr", k, q_r) * scale
    return dispatch.fused_disentangled_attention_varlen(q, k, v, c2p, p2c, relative_index(rows), layout.cu_seqlens,
                                                        layout.max_seqlen, dropout_p, scale)


def auto_disentangled(q, k, v, k_r, q_r, rows, mask, dropout_p, scale):
    """As auto_attention: the faster of fused and sdpa where the fused kernels may run, else sdpa."""
    if not dispatch.auto_may_fuse(q):
        return sdpa_disentangled(q, k, v, k_r, q_r, rows, mask, dropout_p, scale)
    _, nh, T, hs = q.shape
    key = ("disentangled", str(q.device), q.dtype, nh, hs, k_r.shape[1], fastest.size_class(T), mask is not None,
           dropout_p > 0.0)
    return fastest_padded("deberta", key, (q, k, v, k_r, q_r), rows, mask, dropout_p, scale)


def auto_disentangled_varlen(q, k, v, k_r, q_r, rows, layout, dropout_p, scale):
    """As auto_attention_varlen: the varlen kernel wherever the fused kernels may run, else SDPA repadded."""
    if dispatch.auto_may_fuse(q):
        return fused_disentangled_varlen(q, k, v, k_r, q_r, rows, layout, dropout_p, scale)
    return repadded(sdpa_disentangled)(q, k, v, k_r, q_r, rows, layout, dropout_p, scale)


# --------------------------------------------------------------------------------------------------

ATTENTION_BACKENDS = {
    "eager": {"bert": Implementations(eager_attention, repadded(eager_attention)),
              "deberta": Implementations(eager_disentangled, repadded(eager_disentangled))},
    "sdpa": {"bert": Implementations(sdpa_attention, repadded(sdpa_attention)),
             "deberta": Implementations(sdpa_disentangled, repadded(sdpa_disentangled))},
    "fused": {"bert": Implementations(fused_attention, fused_attention_varlen),
              "deberta": Implementations(fused_disentangled, fused_disentangled_varlen)},
    "auto": {"bert": Implementations(auto_attention, auto_attention_varlen),
             "deberta": Implementations(auto_disentangled, auto_disentangled_varlen)},
}


def unknown_backend(name):
    """The one line that refuses an attention backend not in the registry, or None for a known one."""
    if name in ATTENTION_BACKENDS:
        return None
    return f"attention_backend {name!r} is unknown; use one of {', '.join(ATTENTION_BACKENDS)}"


def get_attention(name, backbone):
    """The Implementations(padded, varlen) of backend `name` for `backbone` ("bert" or "deberta")."""
    if unknown_backend(name):
        raise UserError(unknown_backend(name))
    return ATTENTION_BACKENDS[name][backbone]
