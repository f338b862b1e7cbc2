"""Fused kernels with their plain PyTorch references (the kernels worker extends this dispatch)."""

from spanbert_ds.kernels.reference import bias_gelu_layernorm  # noqa: F401
