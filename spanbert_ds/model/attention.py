"""Attention backends: one plain dict from name to function, like ModernBERT's ATTN2CLS.

Every backend computes softmax(q k^T * scale) v with the same signature:
    fn(q, k, v, key_padding_mask, dropout_p, scale) -> (B, H, T, D)
q, k, v: (B, H, T, D); key_padding_mask: bool (B, T), True for real tokens.
They give the same numbers (tests/model/test_attention_backends.py); pick by speed.
"""

import torch.nn.functional as F

from spanbert_ds import kernels
from spanbert_ds.errors import UserError
from spanbert_ds.kernels import reference


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
    """The fused kernel on CUDA when Triton runs there and the kernels pass their self-check, else SDPA."""
    use_fused = q.is_cuda and kernels.fused_available() and kernels.self_check(q.device)  # cached per device
    fn = fused_attention if use_fused else sdpa_attention
    return fn(q, k, v, key_padding_mask, dropout_p, scale)


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

