"""The Triton bias+GeLU+LayerNorm (spanbert_ds/kernels/gelu_layernorm.py) against the PyTorch reference,
run on CPU through Triton's interpreter."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from spanbert_ds import kernels
from spanbert_ds.kernels import gelu_layernorm, reference
from tests.kernels.configs import for_each_config, gpu_configs

if not (gelu_layernorm._INTERPRET or torch.cuda.is_available()):
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set and there is no GPU",
                allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() and not gelu_layernorm._INTERPRET else "cpu"
# (atol, rtol) of outputs and gradients against an fp32 reference fed the same (rounded) inputs
TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (5e-3, 5e-3), torch.bfloat16: (3e-2, 2e-2)}


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = torch.randn(*shape, generator=g)
    params = [torch.randn(n, generator=g) * 0.5, 1 + 0.3 * torch.randn(n, generator=g), torch.randn(n, generator=g)]
    return [t.to(DEVICE, dtype).requires_grad_() for t in [x] + params]


def _compare(shape, dtype, eps=1e-12):
    inputs = _inputs(shape, dtype)
    y = gelu_layernorm.bias_gelu_layernorm(*inputs, eps)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    grads = torch.autograd.grad(y, inputs, dy)

    ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
    y_ref = reference.bias_gelu_layernorm(*ref_inputs, eps)
    grads_ref = torch.autograd.grad(y_ref, ref_inputs, dy.float())

    atol, rtol = TOL[dtype]
    assert y.dtype == dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y.float(), y_ref, atol=atol, rtol=rtol)
    for name, g, g_ref in zip(("dx", "dbias", "dln_weight", "dln_bias"), grads, grads_ref):
        assert g.dtype == dtype, name
        # parameter grads sum over rows: scale the tolerance with their size
        scale = 1.0 if name == "dx" else max(1.0, g_ref.abs().max().item() / 4)
        torch.testing.assert_close(g.float(), g_ref, atol=atol * scale, rtol=rtol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_values_and_gradients_match_reference_per_dtype(dtype):
    # 7*5 = 35 rows: not a multiple of the rows per program, and more row blocks than persistent programs;
    # hidden 48 is not a power of two (BLOCK_N = 64 with masked columns)
    _compare((7, 5, 48), dtype, eps=1e-5)


@pytest.mark.parametrize("hidden", [1000, 4096])
def test_large_and_odd_hidden_sizes(hidden):
    _compare((3, hidden), torch.float32)


def test_any_leading_shape():
    _compare((40,), torch.float32)  # one row
    _compare((2, 1, 3, 24), torch.float32)


def test_zero_rows_give_empty_output_and_zero_parameter_grads():
    x, b, w, beta = _inputs((0, 32), torch.float32)
    y = gelu_layernorm.bias_gelu_layernorm(x, b, w, beta)
    assert y.shape == (0, 32)
    y.sum().backward()
    assert b.grad.abs().sum() == 0 and w.grad.abs().sum() == 0


class _SBOStyleHead(torch.nn.Module):
    """SpanBERT's SBO MLP shape: [x_left; x_right; p] -> 2 x (Linear -> GeLU -> LayerNorm) -> tied decoder."""

    def __init__(self, hidden, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.embed = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g) * 0.2)
        self.layers = torch.nn.ModuleList()
        for fan_in in (3 * hidden, hidden):
            layer = torch.nn.Module()
            layer.weight = torch.nn.Parameter(torch.randn(hidden, fan_in, generator=g) * fan_in**-0.5)
            layer.bias = torch.nn.Parameter(torch.randn(hidden, generator=g) * 0.1)
            layer.ln_weight = torch.nn.Parameter(1 + 0.1 * torch.randn(hidden, generator=g))
            layer.ln_bias = torch.nn.Parameter(0.1 * torch.randn(hidden, generator=g))
            self.layers.append(layer)

    def forward(self, h, labels):
        for layer in self.layers:
            h = kernels.bias_gelu_layernorm(F.linear(h, layer.weight), layer.bias, layer.ln_weight,
                                            layer.ln_bias, 1e-12)
        return F.cross_entropy(F.linear(h, self.embed), labels)


def test_sbo_style_head_gives_reference_loss_and_gradients(monkeypatch):
    hidden, vocab, targets = 32, 50, 11
    g = torch.Generator().manual_seed(4)
    h0 = torch.randn(targets, 3 * hidden, generator=g).to(DEVICE)
    labels = torch.randint(0, vocab, (targets,), generator=g).to(DEVICE)
    results = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("SPANBERT_DS_KERNELS", mode)
        head = _SBOStyleHead(hidden, vocab).to(DEVICE)
        loss = head(h0, labels)
        loss.backward()
        results[mode] = (loss.detach(), {n: p.grad for n, p in head.named_parameters()})
        if mode == "triton":  # the dispatcher really took the kernel
            x = h0[:, :hidden].clone().requires_grad_()
            out = kernels.bias_gelu_layernorm(x, *[torch.zeros(hidden, device=DEVICE)] * 3)
            assert "BiasGeluLayerNorm" in type(out.grad_fn).__name__
    (loss_ref, grads_ref), (loss, grads) = results["reference"], results["triton"]
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    for name in grads_ref:  # the Linear layers' grads come from dx: any error in it shows here
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_every_config_the_gpu_may_choose_gives_reference_numbers(monkeypatch):
    # 37 rows: with 4 rows per block fewer blocks than programs (each runs once), with 1 row more blocks
    # than programs (some loop twice); the forward's configs are run with the default backward and back
    for kernel, make in ((gelu_layernorm._bias_gelu_ln_fwd, gelu_layernorm._fwd_configs),
                         (gelu_layernorm._bias_gelu_ln_bwd, gelu_layernorm._bwd_configs)):
        configs = gpu_configs(gelu_layernorm, make, monkeypatch, DEVICE == "cpu")
        for_each_config(kernel, configs, monkeypatch, lambda: _compare((37, 48), torch.float32, eps=1e-5))
