"""DeBERTa's disentangled attention in the Triton flash kernel (dispatch.fused_disentangled_attention) against
explicit T x T scores, on CPU through Triton's interpreter: the kernel in both layouts (padded, and packed
sequences back to back), its gradients (the relative tables' through atomic adds), dropout, and the deberta
encoder's fused backend, which attends on the unpadded rows directly, against its eager one."""

import math

import pytest
import torch

pytest.importorskip("triton")

from spanbert_ds.errors import UserError
from spanbert_ds.kernels import attention, dispatch
from spanbert_ds.kernels.reference import pad_packed
from spanbert_ds.model import padding
from spanbert_ds.model.attention import relative_index
from spanbert_ds.model.deberta import relative_positions
from spanbert_ds.model.objectives import OBJECTIVES
from tests.kernels.test_attention import DEVICE, TOL, _keep_mask
from tests.model.synthetic import synthetic_batch, tiny_config

if not (attention._INTERPRET or torch.cuda.is_available()):
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set and there is no GPU", allow_module_level=True)

B, H, T, D, SPAN = 2, 2, 40, 16, 8  # 40 tokens cross the interpreter's 16 x 16 blocks; 8 buckets each way
LENGTHS = [23, 1, 37, 9]  # packed sequences: two cross block edges, one is a single token


def rel_positions(length):
    return relative_positions(length, tiny_config(backbone="deberta", position_buckets=SPAN, max_relative_positions=32),
                              DEVICE)


def inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3))
    k_r, q_r = (torch.randn(H, 2 * SPAN, D, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    rel_pos = rel_positions(T)
    mask = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    mask[0, 27:] = False
    return (q, k, v, k_r, q_r), rel_pos, mask


def reference(q, k, v, k_r, q_r, rel_pos, mask, scale, keep=None, p=0.0):
    """The deberta encoder's eager formulation, in fp32."""
    q, k, k_r, q_r = (t.float() for t in (q, k, k_r, q_r))
    c2p, p2c = (q @ k_r.transpose(-1, -2)) * scale, (k @ q_r.transpose(-1, -2)) * scale
    return reference_from_tables(q, k, v, c2p, p2c, rel_pos, mask, scale, keep, p)


def reference_from_tables(q, k, v, c2p, p2c, rel_pos, mask, scale, keep=None, p=0.0):
    """The same from the scaled tables c2p = scale q k_r^T and p2c = scale k q_r^T (B, H, T, R), in fp32."""
    q, k, v, c2p, p2c = (t.float() for t in (q, k, v, c2p, p2c))
    b, h, t, _ = q.shape
    c2p = torch.gather(c2p, -1, (rel_pos + SPAN).clamp(0, 2 * SPAN - 1).expand(b, h, t, t))
    p2c = torch.gather(p2c, -1, (-rel_pos + SPAN).clamp(0, 2 * SPAN - 1).expand(b, h, t, t))
    scores = (q @ k.transpose(-1, -2)) * scale + c2p + p2c.transpose(-1, -2)
    probs = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
    if keep is not None:
        probs = probs * keep / (1 - p)
    return probs @ v


def fused(q, k, v, k_r, q_r, rel_pos, mask, scale, p=0.0, seed=None):
    c2p, p2c = (q @ k_r.transpose(-1, -2)) * scale, (k @ q_r.transpose(-1, -2)) * scale
    index = relative_index((rel_pos + SPAN).clamp(0, 2 * SPAN - 1))
    return dispatch.fused_disentangled_attention(q, k, v, c2p, p2c, index, mask, p, scale) \
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
@pytest.mark.slow
def test_matches_the_t_by_t_formulation_with_padding_per_dtype(dtype):
    tensors, rel_pos, mask = inputs(dtype)
    check(tensors, rel_pos, mask, dtype)


@pytest.mark.slow
def test_dropout_gradients_match_the_reference_with_the_kernels_mask():
    p = 0.2
    keep = _keep_mask(B, H, T, p, seed=11)  # the Philox mask depends on (seed, head, query, key) only
    tensors, rel_pos, mask = inputs(torch.float32, seed=3)
    check(tensors, rel_pos, mask, torch.float32, p=p, seed=11, keep=keep)


def packed_inputs(dtype, seed=0):
    """Leaves q, k, v (N, H, D) and the scaled tables c2p, p2c (N, H, R) of sequences of LENGTHS back to back, and
    cu_seqlens."""
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(sum(LENGTHS), H, width, generator=g).to(DEVICE, dtype).requires_grad_()
              for width in (D, D, D, 2 * SPAN, 2 * SPAN)]
    return leaves, torch.tensor([0] + LENGTHS, device=DEVICE).cumsum(0).to(torch.int32)


def check_varlen(dtype, p=0.0, seed=0):
    """The packed kernel's output and gradients (q, k, v, c2p, p2c) against the padded kernel and the reference on
    the same sequences padded to max_seqlen. Their dropout masks agree: both draw at (b H + h) T^2 + i T + j with
    T = max_seqlen, i and j the places in the sequence."""
    t_max, scale = max(LENGTHS), 1 / math.sqrt(3 * D)
    rel_pos = rel_positions(t_max)
    index = relative_index((rel_pos + SPAN).clamp(0, 2 * SPAN - 1))
    leaves, cu = packed_inputs(dtype)
    grad_out = torch.randn(sum(LENGTHS), H, D, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    out = attention.flash_disentangled_attention_varlen(*leaves, index, cu, t_max, p, scale, seed)
    grads = torch.autograd.grad(out, leaves, grad_out)

    def through_padding(fn, leaves):
        """fn on (B, H, max_seqlen, X) padded copies of the packed leaves, its output packed again, and the
        gradients of the leaves."""
        padded = [pad_packed(t, cu)[0].transpose(1, 2) for t in leaves]
        mask = pad_packed(leaves[0], cu)[1]
        out = fn(*padded, mask).transpose(1, 2)[mask]
        return out, torch.autograd.grad(out, leaves, grad_out.to(out.dtype))

    same = [t.detach().requires_grad_() for t in leaves]
    out_padded, grads_padded = through_padding(
        lambda q, k, v, c2p, p2c, mask: attention.flash_disentangled_attention(q, k, v, c2p, p2c, index, mask, p,
                                                                               scale, seed), same)
    keep = _keep_mask(len(LENGTHS), H, t_max, p, seed) if p > 0 else None
    fp32 = [t.detach().float().requires_grad_() for t in leaves]
    out_ref, grads_ref = through_padding(
        lambda q, k, v, c2p, p2c, mask: reference_from_tables(q, k, v, c2p, p2c, rel_pos, mask, scale, keep, p), fp32)

    atol, rtol = TOL[dtype]
    assert out.dtype == dtype and out.shape == (sum(LENGTHS), H, D)
    torch.testing.assert_close(out, out_padded, atol=atol, rtol=rtol)
    torch.testing.assert_close(out.float(), out_ref, atol=atol, rtol=rtol)
    for name, g, g_padded, g_ref in zip(("dq", "dk", "dv", "dc2p", "dp2c"), grads, grads_padded, grads_ref):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g, g_padded, atol=atol, rtol=rtol, msg=name)
        torch.testing.assert_close(g.float(), g_ref, atol=atol * 4, rtol=rtol * 2, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.slow
def test_varlen_matches_the_padded_kernel_and_the_reference(dtype):
    check_varlen(dtype)


@pytest.mark.slow
def test_varlen_dropout_matches_the_padded_kernels_mask():
    check_varlen(torch.float32, p=0.2, seed=11)


def test_shapes_that_do_not_fit_are_one_line():
    (q, k, v, k_r, q_r), rel_pos, mask = inputs(torch.float32)
    with pytest.raises(UserError, match="c2p and p2c must be"):
        dispatch.fused_disentangled_attention(q, k, v, q[..., :4], q[..., :4], torch.zeros(5, dtype=torch.int32), mask)
    (q, k, v, c2p, p2c), cu = packed_inputs(torch.float32)
    index = torch.zeros(2 * max(LENGTHS) - 1, dtype=torch.int32)
    for bad_c2p, bad_index in ((c2p[:, :1], index), (c2p[None], index), (c2p, index[1:])):
        with pytest.raises(UserError, match=r"c2p and p2c must be \(total_tokens, H, R\)"):
            dispatch.fused_disentangled_attention_varlen(q, k, v, bad_c2p, p2c, bad_index, cu, max(LENGTHS))


def spy(monkeypatch, name):
    """The calls of kernels/dispatch.py's <name> from now on (it still runs)."""
    calls, fn = [], getattr(dispatch, name)
    monkeypatch.setattr(dispatch, name, lambda *args, **kwargs: calls.append(name) or fn(*args, **kwargs))
    return calls


@pytest.mark.slow
def test_the_deberta_encoders_fused_backend_matches_eager_with_gradients(monkeypatch):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=120, backbone="deberta", position_buckets=8, max_position_embeddings=64,
                         hidden_dropout=0.0, attention_dropout=0.0, emd=True, unpad=True)
    eager = OBJECTIVES["deberta"](config.replace(attention_backend="eager")).to(DEVICE)
    fused_model = OBJECTIVES["deberta"](config.replace(attention_backend="fused")).to(DEVICE)
    fused_model.load_state_dict(eager.state_dict())
    batch = {k: v.to(DEVICE) for k, v in synthetic_batch(120, seq_len=40, masking="token").items()}
    assert not batch["attention_mask"].bool().all()  # padding to take out: the layers see packed rows
    varlen = spy(monkeypatch, "fused_disentangled_attention_varlen")
    padded = spy(monkeypatch, "fused_disentangled_attention")
    losses = [model(batch)["loss"] for model in (eager, fused_model)]
    # every attention of the fused model on the packed rows: the layers but the last, then the last twice (the EMD)
    assert len(varlen) == config.num_layers + 1 and not padded
    for model, loss in zip((eager, fused_model), losses):
        loss.backward()
    assert abs(losses[0].item() - losses[1].item()) < 1e-5
    for (name, a), b in zip(eager.named_parameters(), fused_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("may_fuse", [True, False])
def test_unpadded_auto_attends_on_the_packed_rows_where_it_may_fuse(monkeypatch, may_fuse):
    # as auto_attention_varlen does for BERT: no timing, the varlen kernel wherever the fused kernels may run, else
    # SDPA on the rows padded again
    from spanbert_ds.model.deberta import DisentangledSelfAttention, relative_rows

    monkeypatch.setattr(dispatch, "auto_may_fuse", lambda t: may_fuse)
    torch.manual_seed(0)
    config = tiny_config(backbone="deberta", position_buckets=SPAN, max_relative_positions=32)
    auto = DisentangledSelfAttention(config.replace(attention_backend="auto")).to(DEVICE)
    eager = DisentangledSelfAttention(config.replace(attention_backend="eager")).to(DEVICE)
    eager.load_state_dict(auto.state_dict())
    lengths = torch.tensor(LENGTHS, device=DEVICE)
    layout = padding.unpad(torch.arange(max(LENGTHS), device=DEVICE)[None, :] < lengths[:, None])
    x = torch.randn(sum(LENGTHS), config.hidden_size, device=DEVICE)
    rel_table = torch.randn(2 * SPAN, config.hidden_size, device=DEVICE)
    rows = relative_rows(layout.max_seqlen, config, DEVICE)
    varlen = spy(monkeypatch, "fused_disentangled_attention_varlen")
    out = auto(x, layout, rel_table, rows)
    assert len(varlen) == may_fuse
    torch.testing.assert_close(out, eager(x, layout, rel_table, rows), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_auto_times_the_kernel_against_sdpa_once_and_gives_the_same_numbers(monkeypatch):
    from spanbert_ds.kernels import fastest
    from spanbert_ds.model import attention as backends

    monkeypatch.setattr(dispatch, "auto_may_fuse", lambda t: True)  # what a GPU that passed the self-check says
    monkeypatch.setattr(fastest, "_CHOICES", {})
    (q, k, v, k_r, q_r), rel_pos, mask = inputs(torch.float32)
    scale = 1 / math.sqrt(3 * D)
    rows = (rel_pos + SPAN).clamp(0, 2 * SPAN - 1)
    out = backends.auto_disentangled(q, k, v, k_r, q_r, rows, mask, 0.0, scale)
    (key, (chosen, times)), = fastest.choices().items()
    assert key[0] == "disentangled" and chosen in ("fused", "sdpa") and set(times) == {"fused", "sdpa"}
    expected = backends.eager_disentangled(q, k, v, k_r, q_r, rows, mask, 0.0, scale)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
