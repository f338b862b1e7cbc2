"""DeBERTa's disentangled attention in the Triton flash kernel (kernels.fused_disentangled_attention) against
explicit T x T scores, on CPU through Triton's interpreter: the kernel, its gradients (the relative tables'
through atomic adds), dropout, and the deberta encoder's fused backend against its eager one."""

import math

import pytest
import torch

pytest.importorskip("triton")

from spanbert_ds import kernels
from spanbert_ds.kernels import attention
from spanbert_ds.model.deberta import relative_index, relative_positions
from spanbert_ds.model.objectives import OBJECTIVES
from tests.kernels.test_attention import DEVICE, TOL, _keep_mask
from tests.model.synthetic import synthetic_batch, tiny_config

if not (attention._INTERPRET or torch.cuda.is_available()):
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set and there is no GPU", allow_module_level=True)

B, H, T, D, SPAN = 2, 2, 40, 16, 8  # 40 tokens cross the interpreter's 16 x 16 blocks; 8 buckets each way


def inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3))
    k_r, q_r = (torch.randn(H, 2 * SPAN, D, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    config = tiny_config(backbone="deberta", position_buckets=SPAN, max_relative_positions=32)
    rel_pos = relative_positions(T, config, DEVICE)
    mask = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    mask[0, 27:] = False
    return (q, k, v, k_r, q_r), rel_pos, mask


def reference(q, k, v, k_r, q_r, rel_pos, mask, scale, keep=None, p=0.0):
    """The deberta encoder's eager formulation, in fp32."""
    q, k, v, k_r, q_r = (t.float() for t in (q, k, v, k_r, q_r))
    index = (rel_pos + SPAN).clamp(0, 2 * SPAN - 1)
    c2p = torch.gather(q @ k_r.transpose(-1, -2), -1, index.expand(B, H, T, T))
    p2c = torch.gather(k @ q_r.transpose(-1, -2), -1, (-rel_pos + SPAN).clamp(0, 2 * SPAN - 1).expand(B, H, T, T))
    scores = (q @ k.transpose(-1, -2) + c2p + p2c.transpose(-1, -2)) * scale
    probs = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
    if keep is not None:
        probs = probs * keep / (1 - p)
    return probs @ v


def fused(q, k, v, k_r, q_r, rel_pos, mask, scale, p=0.0, seed=None):
    c2p, p2c = (q @ k_r.transpose(-1, -2)) * scale, (k @ q_r.transpose(-1, -2)) * scale
    index = relative_index((rel_pos + SPAN).clamp(0, 2 * SPAN - 1))
    return kernels.fused_disentangled_attention(q, k, v, c2p, p2c, index, mask, p, scale) \
        if seed is None else attention.flash_disentangled_attention(q, k, v, c2p, p2c, index, mask, p, scale, seed)


def check(tensors, rel_pos, mask, dtype, p=0.0, seed=None, keep=None):
    scale = 1 / math.sqrt(3 * D)
    grad_out = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    out = fused(*tensors, rel_pos, mask, scale, p, seed)
    grads = torch.autograd.grad(out, tensors, grad_out)
    ref_inputs = [t.detach().float().requires_grad_() for t in tensors]
    out_ref = reference(*ref_inputs, rel_pos, mask, scale, keep, p)
    grads_ref = torch.autograd.grad(out_ref, ref_inputs, grad_out.float())
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), out_ref, atol=atol, rtol=rtol)
    for name, g, g_ref in zip(("dq", "dk", "dv", "dk_r", "dq_r"), grads, grads_ref):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.float(), g_ref, atol=atol * 4, rtol=rtol * 2, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_the_t_by_t_formulation_with_padding_per_dtype(dtype):
    tensors, rel_pos, mask = inputs(dtype)
    check(tensors, rel_pos, mask, dtype)


def test_dropout_gradients_match_the_reference_with_the_kernels_mask():
    p = 0.2
    keep = _keep_mask(B, H, T, p, seed=11)  # the Philox mask depends on (seed, head, query, key) only
    tensors, rel_pos, mask = inputs(torch.float32, seed=3)
    check(tensors, rel_pos, mask, torch.float32, p=p, seed=11, keep=keep)


def test_shapes_that_do_not_fit_are_one_line():
    from spanbert_ds.errors import UserError

    (q, k, v, k_r, q_r), rel_pos, mask = inputs(torch.float32)
    with pytest.raises(UserError, match="c2p and p2c must be"):
        kernels.fused_disentangled_attention(q, k, v, q[..., :4], q[..., :4], torch.zeros(5, dtype=torch.int32), mask)


def test_the_deberta_encoders_fused_backend_matches_eager_with_gradients():
    torch.manual_seed(0)
    config = tiny_config(vocab_size=120, backbone="deberta", position_buckets=8, max_position_embeddings=64,
                         hidden_dropout=0.0, attention_dropout=0.0, emd=True)
    eager = OBJECTIVES["deberta"](config.replace(attention_backend="eager")).to(DEVICE)
    fused_model = OBJECTIVES["deberta"](config.replace(attention_backend="fused")).to(DEVICE)
    fused_model.load_state_dict(eager.state_dict())
    batch = {k: v.to(DEVICE) for k, v in synthetic_batch(120, seq_len=40, masking="token").items()}
    losses = [model(batch)["loss"] for model in (eager, fused_model)]
    for model, loss in zip((eager, fused_model), losses):
        loss.backward()
    assert abs(losses[0].item() - losses[1].item()) < 1e-5
    for (name, a), b in zip(eager.named_parameters(), fused_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_auto_times_the_kernel_against_sdpa_once_and_gives_the_same_numbers(monkeypatch):
    from spanbert_ds.kernels import fastest
    from spanbert_ds.model import deberta

    monkeypatch.setattr(kernels, "auto_may_fuse", lambda t: True)  # what a GPU that passed the self-check says
    monkeypatch.setattr(fastest, "_CHOICES", {})
    (q, k, v, k_r, q_r), rel_pos, mask = inputs(torch.float32)
    scale = 1 / math.sqrt(3 * D)
    rows = (rel_pos + SPAN).clamp(0, 2 * SPAN - 1)
    out = deberta.auto_disentangled(q, k, v, k_r, q_r, rows, mask, 0.0, scale)
    (key, (chosen, times)), = fastest.choices().items()
    assert key[0] == "disentangled" and chosen in ("fused", "sdpa") and set(times) == {"fused", "sdpa"}
    expected = deberta.eager_disentangled(q, k, v, k_r, q_r, rows, mask, 0.0, scale)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
