"""Plain PyTorch versions of the fused kernels: the numbers the kernels must match.

They also run the model wherever Triton or CUDA is not available.
"""

import math

import torch
import torch.nn.functional as F


def bias_gelu_layernorm(x, bias, ln_weight, ln_bias, eps=1e-12):
    """LayerNorm(GeLU(x + bias)) over the last dimension, with the exact (erf) GeLU of BERT."""
    return F.layer_norm(F.gelu(x + bias), (x.shape[-1],), ln_weight, ln_bias, eps)


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None, keep_mask=None):
    """softmax(q k^T * scale + mask) v for q, k, v of shape (B, H, T, D).

    key_padding_mask: bool (B, T), True for real tokens. A query whose keys are all
    padding gets zeros rather than NaN.
    keep_mask: optional bool (B, H, T, T) dropout mask to use instead of drawing one
    (tests replay a kernel's dropout with it).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, H, T, T)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(q.dtype)
    if keep_mask is not None:
        probs = probs * keep_mask.to(probs.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def pad_packed(x, cu_seqlens):
    """Packed (total, ...) rows of sequences back to back -> (B, T_max, ...) zero-padded, and the
    (B, T_max) bool mask of real positions. cu_seqlens: (B+1) cumulative lengths starting at 0."""
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    batch = lengths.numel()
    t_max = int(lengths.max()) if batch else 0
    seq = torch.repeat_interleave(torch.arange(batch, device=x.device), lengths)  # sequence of each row
    pos = torch.arange(x.shape[0], device=x.device) - cu[seq]  # position inside it
    padded = x.new_zeros(batch, t_max, *x.shape[1:])
    padded[seq, pos] = x
    mask = torch.arange(t_max, device=x.device)[None, :] < lengths[:, None]
    return padded, mask


def attention_varlen(q, k, v, cu_seqlens, dropout_p=0.0, scale=None):
    """attention() on packed q, k, v (total_tokens, H, D): each sequence attends only to itself."""
    (qp, mask), (kp, _), (vp, _) = (pad_packed(x, cu_seqlens) for x in (q, k, v))  # (B, T, H, D)
    out = attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), mask, dropout_p, scale)
    return out.transpose(1, 2)[mask]  # back to (total, H, D), in packed order
