"""Plain PyTorch versions of the fused kernels: the numbers the kernels must match.

They also run the model wherever Triton or CUDA is not available.
"""

import math

import torch
import torch.nn.functional as F


def bias_gelu_layernorm(x, bias, ln_weight, ln_bias, eps=1e-12):
    """LayerNorm(GeLU(x + bias)) over the last dimension, with the exact (erf) GeLU of BERT."""
    return F.layer_norm(F.gelu(x + bias), (x.shape[-1],), ln_weight, ln_bias, eps)


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None):
    """softmax(q k^T * scale + mask) v for q, k, v of shape (B, H, T, D).

    key_padding_mask: bool (B, T), True for real tokens. A query whose keys are all
    padding gets zeros rather than NaN.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, H, T, T)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)
