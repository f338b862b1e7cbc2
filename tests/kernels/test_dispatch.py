"""spanbert_ds/kernels/dispatch.py: which implementation runs where, and the errors when fused cannot."""

import pytest
import torch

pytest.importorskip("triton")

from spanbert_ds.errors import UserError
from spanbert_ds.kernels import dispatch, gelu_layernorm, reference

if not gelu_layernorm._INTERPRET:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)


def _qkv(shape):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g) for _ in range(3)]


def test_gelu_layernorm_uses_the_reference_on_cpu_by_default(monkeypatch):
    monkeypatch.delenv("SPANBERT_DS_KERNELS", raising=False)
    x = torch.randn(4, 16, requires_grad=True)
    y = dispatch.bias_gelu_layernorm(x, torch.zeros(16), torch.ones(16), torch.zeros(16), 1e-12)
    assert "BiasGeluLayerNorm" not in type(y.grad_fn).__name__
    torch.testing.assert_close(y, reference.bias_gelu_layernorm(x, torch.zeros(16), torch.ones(16),
                                                                torch.zeros(16)))


def test_gelu_layernorm_forced_to_triton_runs_the_kernel(monkeypatch):
    monkeypatch.setenv("SPANBERT_DS_KERNELS", "triton")
    x = torch.randn(4, 16, requires_grad=True)
    y = dispatch.bias_gelu_layernorm(x, torch.zeros(16), torch.ones(16), torch.zeros(16), 1e-12)
    assert "BiasGeluLayerNorm" in type(y.grad_fn).__name__


def test_gelu_layernorm_forced_to_triton_without_interpreter_is_a_user_error(monkeypatch):
    monkeypatch.setenv("SPANBERT_DS_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(UserError, match="SPANBERT_DS_KERNELS"):
        dispatch.bias_gelu_layernorm(torch.randn(2, 8), torch.zeros(8), torch.ones(8), torch.zeros(8), 1e-12)
    monkeypatch.setenv("SPANBERT_DS_KERNELS", "bogus")
    with pytest.raises(UserError, match="auto, triton or reference"):
        dispatch.bias_gelu_layernorm(torch.randn(2, 8), torch.zeros(8), torch.ones(8), torch.zeros(8), 1e-12)


def test_fused_attention_on_cpu_without_interpreter_is_a_clear_user_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert dispatch.fused_available() == torch.cuda.is_available()
    with pytest.raises(UserError, match="attention_backend 'fused' cannot run.*CPU.*'sdpa'"):
        dispatch.fused_attention(*_qkv((1, 1, 4, 16)), None, 0.0, None)
    with pytest.raises(UserError, match="cannot run"):
        dispatch.fused_attention_varlen(*_qkv((4, 1, 16)), torch.tensor([0, 4]))
    assert dispatch.self_check("cpu") is False


def test_fused_attention_rejects_what_the_kernel_does_not_do():
    q, k, v = _qkv((1, 1, 4, 256))
    with pytest.raises(UserError, match="head dims up to 128"):
        dispatch.fused_attention(q, k, v, None, 0.0, None)
    q, k, v = _qkv((1, 1, 4, 16))
    with pytest.raises(UserError, match="one shape"):
        dispatch.fused_attention(q, k[:, :, :3], v, None, 0.0, None)
    with pytest.raises(UserError, match="float16, bfloat16 or float32"):
        dispatch.fused_attention(q.double(), k.double(), v.double(), None, 0.0, None)


def test_fused_attention_under_the_interpreter_matches_reference():
    q, k, v = _qkv((2, 2, 9, 16))
    mask = torch.tensor([[True] * 6 + [False] * 3, [True] * 9])
    out = dispatch.fused_attention(q, k, v, mask, 0.0, None)
    torch.testing.assert_close(out, reference.attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    lengths = torch.tensor([0, 6, 15], dtype=torch.int32)
    packed = [t.transpose(1, 2).reshape(18, 2, 16)[:15] for t in (q, k, v)]
    out = dispatch.fused_attention_varlen(*packed, lengths)
    torch.testing.assert_close(out, reference.attention_varlen(*packed, lengths), atol=1e-5, rtol=1e-5)


def test_self_check_passes_under_the_interpreter_even_under_no_grad():
    assert dispatch.fused_available()
    dispatch._SELF_CHECKS.clear()
    with torch.no_grad():
        assert dispatch.self_check("cpu") is True
    assert dispatch.self_check() is True  # cached
