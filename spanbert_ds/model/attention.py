"""Attention backends: one plain dict from name to function, like ModernBERT's ATTN2CLS.

Every backend computes softmax(q k^T * scale) v with the same signature:
    fn(q, k, v, key_padding_mask, dropout_p, scale) -> (B, H, T, D)
q, k, v: (B, H, T, D); key_padding_mask: bool (B, T), True for real tokens.
They give the same numbers (tests/model/test_attention.py); pick by speed.
"""

import functools
import importlib.util

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
    fn = getattr(kernels, "fused_attention", None)
    if fn is None:
        raise UserError(
            "attention_backend 'fused' needs the Triton kernels (spanbert_ds.kernels.fused_attention), "
            "which this installation does not have; use attention_backend 'sdpa' or 'auto'"
        )
    return fn(q, k, v, key_padding_mask, dropout_p, scale)


@functools.lru_cache(maxsize=None)
def _fused_available():
    return hasattr(kernels, "fused_attention") and importlib.util.find_spec("triton") is not None


def auto_attention(q, k, v, key_padding_mask, dropout_p=0.0, scale=None):
    """The fused kernel on CUDA when it is installed, else SDPA."""
    fn = fused_attention if q.is_cuda and _fused_available() else sdpa_attention
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

