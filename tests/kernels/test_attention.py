"""The Triton flash attention (spanbert_ds/kernels/attention.py) against the PyTorch reference, run on CPU
through Triton's interpreter (16 x 16 blocks there, so small sequences already cross block edges)."""

import math

import pytest
import torch

pytest.importorskip("triton")

from spanbert_ds.kernels import attention, reference
from tests.kernels.configs import for_each_config, gpu_configs

if not (attention._INTERPRET or torch.cuda.is_available()):
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set and there is no GPU",
                allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() and not attention._INTERPRET else "cpu"
# (atol, rtol) against an fp32 reference fed the same (rounded) inputs; on a GPU fp32 dots run in TF32
# (TRITON_INTERPRET=0 pytest tests/kernels runs these files on CUDA)
TOL = {torch.float32: (5e-3, 5e-3) if DEVICE == "cuda" else (1e-5, 1e-5), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (3e-2, 2e-2)}


def _qkv(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3)]


def _grad_out(shape, dtype, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def _reference(q, k, v, do, fn):
    """fn's output and (dq, dk, dv) in fp32 from the same inputs."""
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = fn(*ref)
    return out, torch.autograd.grad(out, ref, do.float())


def _assert_close(out, grads, out_ref, grads_ref, dtype):
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.float(), out_ref, atol=atol, rtol=rtol)
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert g.dtype == dtype and bool(torch.isfinite(g).all()), name
        torch.testing.assert_close(g.float(), g_ref, atol=atol * 2, rtol=rtol, msg=name)


def _padding_mask(batch, t):
    """Row 0: real then padding (an odd length); row 1: entirely padding; others: all real."""
    mask = torch.ones(batch, t, dtype=torch.bool, device=DEVICE)
    mask[0, (2 * t) // 3 + 1:] = False
    if batch > 1:
        mask[1] = False
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.slow
def test_padded_attention_matches_reference_per_dtype(dtype):
    shape = (3, 2, 37, 32)  # T = 37 is not a multiple of the block size
    q, k, v = _qkv(shape, dtype)
    mask = _padding_mask(3, 37)
    out = attention.flash_attention(q, k, v, mask)
    do = _grad_out(shape, dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    out_ref, grads_ref = _reference(q, k, v, do, lambda q, k, v: reference.attention(q, k, v, mask))
    _assert_close(out, grads, out_ref, grads_ref, dtype)


@pytest.mark.parametrize("head_dim", [64, 128, 40])
def test_head_dims(head_dim):
    shape = (1, 2, 21, head_dim)  # 40: a head dim that is not a power of two (masked columns)
    q, k, v = _qkv(shape)
    out = attention.flash_attention(q, k, v, None, scale=0.3)
    do = _grad_out(shape, torch.float32)
    grads = torch.autograd.grad(out, (q, k, v), do)
    out_ref, grads_ref = _reference(q, k, v, do, lambda q, k, v: reference.attention(q, k, v, None, 0.0, 0.3))
    _assert_close(out, grads, out_ref, grads_ref, torch.float32)


def test_fully_padded_rows_give_zeros_and_zero_gradients():
    q, k, v = _qkv((2, 1, 20, 32))
    mask = _padding_mask(2, 20)
    out = attention.flash_attention(q, k, v, mask)
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for t in (q, k, v):
        assert bool(torch.isfinite(t.grad).all())
        assert torch.equal(t.grad[1], torch.zeros_like(t.grad[1]))
    # padded keys of row 0 get no gradient either
    assert torch.equal(k.grad[0, :, 14:], torch.zeros_like(k.grad[0, :, 14:]))


def test_strided_inputs_in_the_models_layout():
    # the encoder makes q, k, v as (B, T, H, D) views transposed to (B, H, T, D): no copy needed
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 19, 3, 2, 32, generator=g).to(DEVICE).requires_grad_()  # (B, T, 3, H, D)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D), non-contiguous
    mask = _padding_mask(2, 19)
    out = attention.flash_attention(q, k, v, mask)
    do = _grad_out(out.shape, torch.float32)
    (grad,) = torch.autograd.grad(out, qkv, do)
    ref_qkv = qkv.detach().requires_grad_()
    rq, rk, rv = (ref_qkv[:, :, i].transpose(1, 2) for i in range(3))
    out_ref = reference.attention(rq, rk, rv, mask)
    (grad_ref,) = torch.autograd.grad(out_ref, ref_qkv, do)
    atol, rtol = TOL[torch.float32]
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad, grad_ref, atol=2 * atol, rtol=rtol)


def test_varlen_matches_reference_and_padded_kernel():
    lengths = [5, 17, 0, 1, 16]  # an empty sequence, a single token, one exactly a block
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    total, heads, d = int(cu[-1]), 2, 32
    q, k, v = _qkv((total, heads, d))
    out = attention.flash_attention_varlen(q, k, v, cu, max(lengths))
    do = _grad_out(out.shape, torch.float32)
    grads = torch.autograd.grad(out, (q, k, v), do)
    out_ref, grads_ref = _reference(q, k, v, do, lambda q, k, v: reference.attention_varlen(q, k, v, cu))
    _assert_close(out, grads, out_ref, grads_ref, torch.float32)

    # the same batch padded, through the padded entry, unpadded again
    (qp, mask), (kp, _), (vp, _) = (reference.pad_packed(t, cu) for t in (q, k, v))
    out_padded = attention.flash_attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), mask)
    torch.testing.assert_close(out_padded.transpose(1, 2)[mask], out, atol=1e-5, rtol=1e-5)


def _keep_mask(batch, heads, t, p, seed):
    """The kernel's dropout mask, read back: uniform probabilities (q = k = 0) times v = identity."""
    zeros = torch.zeros(batch, heads, t, t, device=DEVICE)
    eye = torch.eye(t, device=DEVICE).expand(batch, heads, t, t)
    out = attention.flash_attention(zeros, zeros, eye, None, p, seed=seed)  # = keep / (t (1 - p))
    return out > 0


@pytest.mark.slow
def test_dropout_is_deterministic_per_seed_and_has_the_right_rate():
    p = 0.25
    q, k, v = _qkv((2, 2, 32, 32))
    out1 = attention.flash_attention(q, k, v, None, p, seed=7)
    out2 = attention.flash_attention(q, k, v, None, p, seed=7)
    out3 = attention.flash_attention(q, k, v, None, p, seed=8)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    torch.manual_seed(0)  # without a seed it is drawn from torch's generator
    out4 = attention.flash_attention(q, k, v, None, p)
    torch.manual_seed(0)
    assert torch.equal(out4, attention.flash_attention(q, k, v, None, p))

    keep = _keep_mask(2, 2, 32, p, seed=7)  # 4096 draws: std of the rate ~0.007
    assert abs(1 - keep.float().mean().item() - p) < 0.03
    assert not torch.equal(keep[0, 0], keep[0, 1])  # heads draw independently


@pytest.mark.slow
def test_dropout_gradients_match_reference_with_the_same_mask():
    p, shape = 0.2, (2, 2, 32, 32)
    keep = _keep_mask(*shape[:3], p, seed=11)
    q, k, v = _qkv(shape, seed=3)
    mask = _padding_mask(2, 32)
    out = attention.flash_attention(q, k, v, mask, p, seed=11)
    do = _grad_out(shape, torch.float32)
    grads = torch.autograd.grad(out, (q, k, v), do)
    out_ref, grads_ref = _reference(
        q, k, v, do, lambda q, k, v: reference.attention(q, k, v, mask, p, keep_mask=keep))
    _assert_close(out, grads, out_ref, grads_ref, torch.float32)


def test_default_scale_is_one_over_sqrt_head_dim():
    q, k, v = _qkv((1, 1, 8, 32))
    out = attention.flash_attention(q, k, v)
    atol, rtol = TOL[torch.float32]
    torch.testing.assert_close(out, reference.attention(q, k, v, None, 0.0, 1 / math.sqrt(32)),
                               atol=atol, rtol=rtol)


@pytest.mark.slow  # every config through the interpreter: ~30 s on a CPU
def test_every_config_the_gpu_may_choose_gives_reference_numbers(monkeypatch):
    # T = 130 crosses the edges of 32-, 64- and 128-wide blocks; the padding starts inside a block
    shape = (1, 2, 130, 32)
    q, k, v = _qkv(shape)
    mask = torch.ones(1, 130, dtype=torch.bool, device=DEVICE)
    mask[0, 101:] = False
    do = _grad_out(shape, torch.float32)
    out_ref, grads_ref = _reference(q, k, v, do, lambda q, k, v: reference.attention(q, k, v, mask))

    def check():
        out = attention.flash_attention(q, k, v, mask)
        _assert_close(out, torch.autograd.grad(out, (q, k, v), do), out_ref, grads_ref, torch.float32)

    for kernel, make in ((attention._attn_fwd, attention._configs), (attention._attn_bwd_dkdv, attention._bwd_configs),
                         (attention._attn_bwd_dq, attention._bwd_configs)):
        for_each_config(kernel, gpu_configs(attention, make, monkeypatch, DEVICE == "cpu"), monkeypatch, check)
