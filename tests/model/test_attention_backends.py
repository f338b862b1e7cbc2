import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.model.attention import ATTENTION_BACKENDS, auto_attention, eager_attention, sdpa_attention
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
        ATTENTION_BACKENDS["fused"](q, k, v, mask)


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
