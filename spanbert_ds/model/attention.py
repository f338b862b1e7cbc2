"""Attention backends: one plain dict from name to function, like ModernBERT's ATTN2CLS.

Every backend computes softmax(q k^T * scale) v with the same signature:
    fn(q, k, v, key_padding_mask, dropout_p, scale) -> (B, H, T, D)
q, k, v: (B, H, T, D); key_padding_mask: bool (B, T), True for real tokens.
They give the same numbers (tests/model/test_attention_backends.py); pick by speed.
"""

import torch.nn.functional as F

from spanbert_ds import kernels
from spanbert_ds.errors import UserError
from spanbert_ds.kernels import fastest, reference


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
    """Our Triton flash-attention kernel (spanbert_ds.kernels)."""
    # UserError when it cannot run here (no CUDA, no Triton): asking for "fused" never silently falls back.
    return kernels.fused_attention(q, k, v, key_padding_mask, dropout_p, scale)


def auto_attention(q, k, v, key_padding_mask, dropout_p=0.0, scale=None):
    """On CUDA, the faster of the fused kernel and SDPA for this shape class, timed once per process
    (kernels/fastest.py), if the fused kernels pass their self-check; SDPA everywhere else."""
    if not kernels.auto_may_fuse(q):
        return sdpa_attention(q, k, v, key_padding_mask, dropout_p, scale)
    _, h, t, d = q.shape
    key = ("attention", str(q.device), q.dtype, h, d, fastest.size_class(t), key_padding_mask is not None,
           dropout_p > 0.0)
    chosen = fastest.fastest(key, lambda: {name: fastest.trial(fn, (q, k, v), key_padding_mask, dropout_p, scale)
                                           for name, fn in AUTO_CANDIDATES.items()}, q.device)
    return AUTO_CANDIDATES[chosen](q, k, v, key_padding_mask, dropout_p, scale)


AUTO_CANDIDATES = {"fused": fused_attention, "sdpa": sdpa_attention}  # what `auto` times against each other

ATTENTION_BACKENDS = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "fused": fused_attention,
    "auto": auto_attention,
}


def get_attention(name):
    if name not in ATTENTION_BACKENDS:
        raise UserError(f"attention backend {name!r} is unknown; use one of {', '.join(ATTENTION_BACKENDS)}")
    return ATTENTION_BACKENDS[name]

