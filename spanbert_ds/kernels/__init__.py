"""Fused kernels (Triton) and their plain PyTorch references.

    attention.py       flash attention and DeBERTa's disentangled attention, padded and varlen (Triton)
    gelu_layernorm.py  bias + GeLU + LayerNorm (Triton)
    reference.py       the same in plain PyTorch: the fallback and the tests' reference
    dispatch.py        which of them runs where: Triton's availability, the self-check, the checked entry points
    fastest.py         the timing the `auto` choices use

The entry points are re-exported here, so `from spanbert_ds import kernels; kernels.bias_gelu_layernorm(...)`
reads as the package's API; patch them in dispatch.py, where they are looked up.
"""

from spanbert_ds.kernels.dispatch import (auto_may_fuse, bias_gelu_layernorm, fused_attention,  # noqa: F401
                                          fused_attention_varlen, fused_available, fused_disentangled_attention,
                                          fused_disentangled_attention_varlen, interpreting, self_check)
