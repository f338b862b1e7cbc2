import pytest
import torch
import torch.nn.functional as F

from spanbert_ds.model import heads
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.model.heads import MLMHead, NSPHead, SBOHead

# Tiny float64 shapes so gradcheck's finite differences are meaningful.
CONFIG = ModelConfig(vocab_size=11, hidden_size=6, num_layers=1, num_heads=2, intermediate_size=8,
                     sbo_max_targets=4, sbo_position_dim=3, layer_norm_eps=1e-5, initializer_range=0.5)


def word_embeddings():
    torch.manual_seed(0)
    return torch.nn.Embedding(CONFIG.padded_vocab_size, CONFIG.hidden_size).double()


def randomise_(module):
    # Non-trivial LayerNorm and bias values so every parameter's gradient is exercised.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


def test_mlm_head_gradcheck():
    emb = word_embeddings()
    head = randomise_(MLMHead(CONFIG, emb).double())
    x = torch.randn(3, CONFIG.hidden_size, dtype=torch.float64, requires_grad=True)
    params = [head.transform.weight, head.transform.bias, head.transform.ln_weight, head.transform.ln_bias,
              head.bias, emb.weight]

    def fn(x, *params_):
        return torch.func.functional_call(head, dict(zip(
            ["transform.weight", "transform.bias", "transform.ln_weight", "transform.ln_bias", "bias",
             "decoder_weight"], params_)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


def test_sbo_head_gradcheck():
    emb = word_embeddings()
    head = randomise_(SBOHead(CONFIG, emb).double())
    left = torch.randn(4, CONFIG.hidden_size, dtype=torch.float64, requires_grad=True)
    right = torch.randn(4, CONFIG.hidden_size, dtype=torch.float64, requires_grad=True)
    rel_pos = torch.tensor([1, 2, 3, 1])
    # The decoder (shared code with the MLM head, checked there) is left out to keep this fast.
    names = [n for n, _ in head.named_parameters() if n not in ("decoder_weight", "bias")]
    params = [dict(head.named_parameters())[n] for n in names]
    assert "position.weight" in names and "layer1.weight" in names

    def fn(left, right, *params_):
        return torch.func.functional_call(head, dict(zip(names, params_)), (left, right, rel_pos))

    assert torch.autograd.gradcheck(fn, (left, right, *params), eps=1e-6, atol=1e-5)


def test_nsp_head_gradcheck():
    head = randomise_(NSPHead(CONFIG).double())
    x = torch.randn(3, CONFIG.hidden_size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: head(x), (x,), eps=1e-6, atol=1e-5)


def test_decoders_are_tied_to_the_word_embeddings_and_cover_the_real_vocab_only():
    emb = word_embeddings()
    mlm, sbo = MLMHead(CONFIG, emb).double(), SBOHead(CONFIG, emb).double()
    assert mlm.decoder_weight is emb.weight and sbo.decoder_weight is emb.weight
    assert CONFIG.padded_vocab_size == 64 and emb.weight.shape[0] == 64
    x = torch.randn(5, CONFIG.hidden_size, dtype=torch.float64)
    assert mlm(x).shape == (5, CONFIG.vocab_size)
    assert sbo(x, x, torch.tensor([1, 2, 3, 4, 1])).shape == (5, CONFIG.vocab_size)
    assert mlm(x[:0]).shape == (0, CONFIG.vocab_size)  # no masked tokens: empty, not an error


@pytest.mark.slow
def test_decoder_loss_gradcheck_across_chunks(monkeypatch):
    """The fused decoder + cross-entropy (gradients made in forward, chunk by chunk) is exact."""
    monkeypatch.setattr(heads, "CPU_CHUNK_ELEMENTS", 2 * CONFIG.vocab_size)  # 16-row chunks -> use 40 rows
    h = torch.randn(40, CONFIG.hidden_size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(CONFIG.padded_vocab_size, CONFIG.hidden_size, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(CONFIG.padded_vocab_size, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, CONFIG.vocab_size, (40,))
    fused = heads.decode_loss(h, weight, bias, labels, CONFIG.vocab_size)
    plain = F.cross_entropy(heads.decode(h, weight, bias, CONFIG.vocab_size), labels, reduction="sum")
    torch.testing.assert_close(fused, plain)
    assert torch.autograd.gradcheck(lambda *t: heads.decode_loss(*t, labels, CONFIG.vocab_size) * 0.7,
                                     (h, weight, bias), eps=1e-6, atol=1e-5)
    (grad_w,) = torch.autograd.grad(fused, weight)
    assert (grad_w[CONFIG.vocab_size:] == 0).all()  # padding rows get no gradient


def test_decoder_loss_under_autocast_matches_fp32():
    torch.manual_seed(0)
    h = torch.randn(30, 32, requires_grad=True)
    weight = torch.randn(128, 32, requires_grad=True)
    bias = torch.zeros(128, requires_grad=True)
    labels = torch.randint(0, 100, (30,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = heads.decode_loss(h, weight, bias, labels, 100)
    low.backward()
    assert low.dtype == torch.float32 and h.grad.dtype == weight.grad.dtype == torch.float32
    exact = F.cross_entropy(heads.decode(h, weight, bias, 100), labels, reduction="sum")
    assert abs(low.item() - exact.item()) < 0.02 * abs(exact.item())


def test_heads_give_a_loss_when_given_labels():
    emb = word_embeddings()
    mlm = MLMHead(CONFIG, emb).double()
    x = torch.randn(5, CONFIG.hidden_size, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 10, 2, 2])
    expected = F.cross_entropy(mlm(x), labels, reduction="sum")
    torch.testing.assert_close(mlm(x, labels), expected)
    assert mlm(x[:0], labels[:0]).item() == 0.0


def test_sbo_head_has_the_released_shapes_and_formula():
    """SpanBERT's released head: a 15 x 200 relative-position table (row 0 for a span's first target) and
    a first layer over [x_{s-1}; x_{e+1}; p] of 2H + 200 inputs, so its weights load as they are."""
    config = ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    emb = torch.nn.Embedding(config.padded_vocab_size, config.hidden_size)
    head = SBOHead(config, emb).eval()
    assert head.position.weight.shape == (15, 200) and head.layer1.weight.shape == (32, 2 * 32 + 200)
    left, right = torch.randn(3, 32), torch.randn(3, 32)
    rel_pos = torch.tensor([1, 15, 7])

    def block(layer, x):
        return F.layer_norm(F.gelu(F.linear(x, layer.weight, layer.bias)), (32,), layer.ln_weight, layer.ln_bias,
                            config.layer_norm_eps)

    h = torch.cat([left, right, head.position.weight[rel_pos - 1]], dim=-1)
    expected = F.linear(block(head.layer2, block(head.layer1, h)), emb.weight[:50], head.bias[:50])
    torch.testing.assert_close(head(left, right, rel_pos), expected)


def test_debertav3_rtd_head_layer_norms_h_cls_plus_h_i_then_dense_gelu_classifier():
    """The released LMMaskPredictionHead, by hand: H = 2, LayerNorm of (h_CLS + h_i) without affine terms is
    (-1, 1) or (1, -1) (eps aside); W = I, b = 0, so GeLU(+-1); classifier w = (1, 2), c = 0.5."""
    config = ModelConfig(vocab_size=11, hidden_size=2, num_layers=1, num_heads=1, intermediate_size=4,
                         layer_norm_eps=1e-12)
    head = heads.RTD_HEADS["debertav3"](config)
    with torch.no_grad():
        head.dense.weight.copy_(torch.eye(2))
        head.dense.bias.zero_()
        head.classifier.weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.classifier.bias.fill_(0.5)
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, -5.0]]])  # (1, 3, 2); position 0 is [CLS]
    # h_CLS + h_i: (2, 0) -> (1, -1); (1, 3) -> (-1, 1); (3, -5) -> (1, -1)
    g1, gm1 = F.gelu(torch.tensor(1.0)).item(), F.gelu(torch.tensor(-1.0)).item()
    expected = torch.tensor([[g1 + 2 * gm1 + 0.5, gm1 + 2 * g1 + 0.5, g1 + 2 * gm1 + 0.5]])
    assert torch.allclose(head(hidden), expected, atol=1e-6)
    electra = heads.RTD_HEADS["electra"](config)  # ELECTRA's head sees h_i alone: no [CLS], no LayerNorm
    assert not hasattr(electra, "ln")
