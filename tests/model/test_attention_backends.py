import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.model import padding
from spanbert_ds.model.attention import (ATTENTION_BACKENDS, Implementations, auto_attention, eager_attention,
                                         get_attention, sdpa_attention)
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.model.deberta import DebertaEncoder, relative_rows
from spanbert_ds.model.encoder import Encoder
from tests.model.synthetic import synthetic_batch, tiny_config


def qkv_and_mask(B=3, H=2, T=10, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    return q, k, v, mask


def test_registry_is_a_plain_dict_of_the_four_backends():
    assert set(ATTENTION_BACKENDS) == {"eager", "sdpa", "fused", "auto"}
    assert all(set(entry) == {"bert", "deberta"} for entry in ATTENTION_BACKENDS.values())


def _needs_fused_kernels(name):
    if name == "fused":
        pytest.importorskip("triton")
        from spanbert_ds.kernels import attention
        if not (attention._INTERPRET or torch.cuda.is_available()):
            pytest.skip("triton was imported before TRITON_INTERPRET=1 was set and there is no GPU")


@pytest.mark.parametrize("backbone", ["bert", "deberta"])
@pytest.mark.parametrize("name", list(ATTENTION_BACKENDS))
def test_each_backend_gives_the_same_numbers_padded_and_varlen(name, backbone):
    """The registry's padded implementation on a (B, T) batch with padding, and its varlen one on the packed
    real rows (longest real sequence 7 of T = 10): the same outputs and gradients at every real row."""
    _needs_fused_kernels(name)
    B, H, T, D, buckets = 3, 2, 10, 16, 4
    lengths = torch.tensor([7, 5, 2])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    layout = padding.unpad(mask)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    config = ModelConfig(backbone="deberta", position_buckets=buckets, max_relative_positions=16)
    tables = [torch.randn(H, 2 * buckets, D, generator=g) for _ in range(2)]  # DeBERTa's k_r, q_r
    padded, varlen = get_attention(name, backbone)
    weights = torch.randn(int(lengths.sum()), H, D, generator=g)  # a loss that weighs every output differently
    outputs, grads = [], []
    for packed in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, *(tables if backbone == "deberta" else ()))]
        q_, k_, v_, *relative = leaves
        if packed:
            q_, k_, v_ = (t.transpose(1, 2)[mask] for t in (q_, k_, v_))  # (N, H, D), as the encoders pack them
        if backbone == "bert":
            y = varlen(q_, k_, v_, layout, 0.0, None) if packed else padded(q_, k_, v_, mask, 0.0, None)
        else:
            rows = relative_rows(layout.max_seqlen if packed else T, config, "cpu")
            where = layout if packed else mask
            y = (varlen if packed else padded)(q_, k_, v_, *relative, rows, where, 0.0, 1 / (3 * D) ** 0.5)
        y = y if packed else y.transpose(1, 2)[mask]
        (y * weights).sum().backward()
        outputs.append(y)
        grads.append([t.grad.transpose(1, 2)[mask] for t in leaves[:3]] + [t.grad for t in leaves[3:]])
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["bert", "deberta"])
def test_an_entry_added_to_the_registry_is_all_either_encoder_needs(monkeypatch, backbone):
    """A backend is one registry entry: the config takes its name, and each encoder runs the entry's padded
    implementation on a batch without padding and its varlen one on the real rows of a batch with padding
    (unpad), chosen when the encoder was built: no other list of names, no name looked at in forward."""
    calls = []

    def counted(layout, fn):
        return lambda *args: calls.append(layout) or fn(*args)

    eager = ATTENTION_BACKENDS["eager"]
    monkeypatch.setitem(ATTENTION_BACKENDS, "counted", {name: Implementations(counted("padded", pair.padded),
                                                                              counted("varlen", pair.varlen))
                                                        for name, pair in eager.items()})
    config = tiny_config(backbone=backbone, unpad=True)
    encoders = {}
    for name in ("eager", "counted"):
        torch.manual_seed(0)
        encoders[name] = (Encoder if backbone == "bert" else DebertaEncoder)(
            config.replace(attention_backend=name)).eval()
    batch = synthetic_batch(100, batch_size=3, seq_len=16, masking="token")
    padded_batch = (batch["input_ids"], batch["attention_mask"])
    full_batch = (batch["input_ids"], torch.ones_like(batch["attention_mask"]))
    for inputs, layout in ((padded_batch, "varlen"), (full_batch, "padded")):
        calls.clear()
        out = encoders["counted"](*inputs)
        assert calls == [layout] * config.num_layers
        torch.testing.assert_close(out, encoders["eager"](*inputs), atol=0, rtol=0)


def test_an_unknown_backend_is_refused_in_one_line_naming_the_registrys_keys():
    keys = ", ".join(ATTENTION_BACKENDS)
    with pytest.raises(UserError) as refused:
        get_attention("flash", "bert")
    assert str(refused.value) == f"attention_backend 'flash' is unknown; use one of {keys}"
    with pytest.raises(UserError) as refused:
        ModelConfig(attention_backend="flash")
    assert str(refused.value) == f"model config: attention_backend 'flash' is unknown; use one of {keys}"


def test_eager_and_sdpa_agree_with_padding():
    q, k, v, mask = qkv_and_mask()
    torch.testing.assert_close(sdpa_attention(q, k, v, mask), eager_attention(q, k, v, mask), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sdpa_attention(q, k, v, None), eager_attention(q, k, v, None), atol=1e-6, rtol=1e-5)


def test_eager_and_sdpa_gradients_agree():
    q, k, v, mask = qkv_and_mask()
    grads = []
    for fn in (eager_attention, sdpa_attention):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        (fn(*inputs, mask) * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append([t.grad for t in inputs])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_sample_with_no_real_token_gives_no_nan():
    q, k, v, mask = qkv_and_mask()
    mask[0] = False
    assert torch.isfinite(sdpa_attention(q, k, v, mask)).all()
    assert torch.isfinite(eager_attention(q, k, v, mask)).all()


def test_auto_is_sdpa_on_cpu():
    q, k, v, mask = qkv_and_mask()
    torch.testing.assert_close(auto_attention(q, k, v, mask), sdpa_attention(q, k, v, mask), atol=0, rtol=0)


def test_fused_on_cpu_is_a_clear_user_error(monkeypatch):
    from spanbert_ds import kernels

    kernels.fused_available()  # Triton imported (if it is installed) while the interpreter is on, as in other tests
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # what a user's machine has
    q, k, v, mask = qkv_and_mask()
    with pytest.raises(UserError, match="attention_backend 'fused' cannot run"):
        ATTENTION_BACKENDS["fused"]["bert"].padded(q, k, v, mask)


@pytest.mark.parametrize("pre_layernorm", [False, True])
def test_encoder_backends_agree(pre_layernorm):
    batch = synthetic_batch(100, batch_size=3, seq_len=16, masking="token")
    outputs = []
    for backend in ("eager", "sdpa"):
        torch.manual_seed(0)
        encoder = Encoder(tiny_config(attention_backend=backend, pre_layernorm=pre_layernorm)).eval()
        outputs.append(encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(outputs[0][real], outputs[1][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_padding_does_not_change_real_tokens(backend):
    torch.manual_seed(0)
    encoder = Encoder(tiny_config(attention_backend=backend)).eval()
    batch = synthetic_batch(100, batch_size=3, seq_len=16, masking="token")
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    padded = [torch.cat([t, torch.full((3, 9), fill)], dim=1) for t, fill in ((ids, 0), (mask, 0), (types, 0))]
    garbage = padded[0].clone()
    garbage[:, 16:] = 57  # what sits under the padding must not matter either
    short = encoder(ids, mask, types)
    for long_ids in (padded[0], garbage):
        long = encoder(long_ids, padded[1], padded[2])
        real = mask.bool()
        torch.testing.assert_close(long[:, :16][real], short[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("how", ["torch", "deepspeed"])
@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_gradients(how):
    if how == "deepspeed":
        pytest.importorskip("deepspeed")
    batch = synthetic_batch(100, batch_size=2, seq_len=12, masking="token")
    grads = []
    for mode in ("none", how):
        torch.manual_seed(0)
        encoder = Encoder(tiny_config(activation_checkpointing=mode)).train()
        encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in encoder.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "fused"])
@pytest.mark.slow
def test_unpadded_layers_give_the_padded_numbers(backend):
    """With `unpad` the layers see only the real tokens (the fused backend through the varlen kernel, here
    under Triton's interpreter): the same hidden states at the real positions, zeros at the padding, and the
    same gradients as the padded path (dropout off: the two draw their masks over different shapes)."""
    if backend == "fused":
        pytest.importorskip("triton")
        from spanbert_ds.kernels import attention
        if not (attention._INTERPRET or torch.cuda.is_available()):
            pytest.skip("triton was imported before TRITON_INTERPRET=1 was set and there is no GPU")
    batch = synthetic_batch(100, batch_size=3, seq_len=16, masking="token")
    batch["attention_mask"][2, 5:] = 0  # a short sequence, below the longest
    real = batch["attention_mask"].bool()
    assert not real.all()
    outputs, grads = [], []
    for unpad in (False, True):
        torch.manual_seed(0)
        encoder = Encoder(tiny_config(attention_backend=backend, unpad=unpad, hidden_dropout=0.0,
                                      attention_dropout=0.0)).train()
        out = encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        out[real].pow(2).sum().backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in encoder.parameters()])
    torch.testing.assert_close(outputs[1][real], outputs[0][real], atol=1e-5, rtol=1e-5)
    assert (outputs[1][~real] == 0).all()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
