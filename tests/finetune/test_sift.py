"""finetune/sift.py: the symmetric KL on worked cases, and which weights SiFT's adversarial loss trains."""

import math

import pytest
import torch

from spanbert_ds.finetune.model import TaskModel
from spanbert_ds.finetune.sift import SiFT, symmetric_kl
from spanbert_ds.model.config import ModelConfig


def tiny(head, sift=None):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=100, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                         max_position_embeddings=16, attention_backend="eager", hidden_dropout=0.0,
                         attention_dropout=0.0)
    return TaskModel(config, head, 3, sift)


def batch(head):
    ids = torch.randint(5, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    b = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    if head == "span":
        b.update(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 2]))
    elif head == "sequence":
        b["labels"] = torch.tensor([0, 2])
    else:
        b["labels"] = torch.tensor([[-100, 0, 1, 2, 0, 1, 2, -100]] * 2)
    return b


def test_symmetric_kl_worked_case():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) + KL(q||p) = sum (p - q)(ln p - ln q)
    #   = (1/4) ln 2 + (-1/4) ln(2/3) = (1/4) ln 3 = 0.274653...
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    assert symmetric_kl(p, q).item() == pytest.approx(math.log(3) / 4, rel=1e-6)
    assert symmetric_kl(q, q).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("head", ["span", "sequence", "token"])
@pytest.mark.slow
def test_sift_adds_a_positive_adversarial_loss_that_trains_the_layers_not_the_embeddings(head):
    plain, adversarial = tiny(head).train(), tiny(head, SiFT(init=1.0, step=1.0)).train()
    b = batch(head)
    out = adversarial(b)
    assert out["sift_loss"].item() > 0
    torch.testing.assert_close(out["task_loss"], plain(b)["loss"])  # no dropout: the clean pass is the same
    torch.testing.assert_close(out["loss"], out["task_loss"] + out["sift_loss"])
    out["loss"].backward()
    plain(b)["loss"].backward()
    # the same gradient on the embedding tables (the perturbed passes start from detached embeddings) ...
    torch.testing.assert_close(adversarial.encoder.embeddings.word.weight.grad, plain.encoder.embeddings.word.weight.grad)
    # ... and another on the layers, which the adversarial loss trains
    difference = adversarial.encoder.layers[0].ffn.fc1.weight.grad - plain.encoder.layers[0].ffn.fc1.weight.grad
    assert difference.abs().max() > 1e-4 * plain.encoder.layers[0].ffn.fc1.weight.grad.abs().max()


def test_sift_changes_nothing_in_evaluation():
    model = tiny("sequence", SiFT()).eval()
    b = batch("sequence")
    out = model(b)
    assert "sift_loss" not in out
    torch.testing.assert_close(out["logits"], tiny("sequence").eval()(b)["logits"])


def test_sift_spec():
    assert SiFT.from_spec("") == SiFT()
    assert SiFT.from_spec("weight=2,step=1e-3") == SiFT(weight=2.0, step=1e-3)
    with pytest.raises(ValueError, match="keys weight, init, step"):
        SiFT.from_spec("lambda=2")


def backbone_model(objective, head="sequence", sift=None):
    """A tiny TaskModel of the backbone a run of `objective` fine-tunes (tests/finetune/test_backbones.py)."""
    from spanbert_ds.model.objectives import OBJECTIVES
    from tests.model.synthetic import tiny_config

    config = OBJECTIVES[objective].configure(tiny_config(attention_backend="eager"))
    torch.manual_seed(0)
    return TaskModel(config, head, 3, sift)


def ln_inputs(model, b, perturb=None):
    """What the embeddings' LayerNorm took in one pass of model.logits."""
    taken = []
    hook = model.encoder.embeddings.ln.register_forward_hook(lambda module, args, out: taken.append(args[0]))
    try:
        model.logits(b, perturb)
    finally:
        hook.remove()
    return taken[0]


@pytest.mark.parametrize("objective", ["bert", "debertav3"])
def test_a_perturbed_pass_gives_the_embedding_layernorm_the_normalised_sum_plus_delta(objective):
    """As the released code's hook_sift_layer: LN0(x) + delta before the model's own LayerNorm (LN0 affine-free,
    eps 1e-7); the clean pass before and after is the model as exported."""
    from spanbert_ds.finetune.sift import perturbation

    model = backbone_model(objective).eval()
    b = batch("sequence")
    clean = model.logits(b)
    x = ln_inputs(model, b)  # BERT: words + positions + segments; DeBERTa: words
    delta = torch.randn(x.shape)
    perturbed = ln_inputs(model, b, perturbation(delta))
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-7) + delta
    torch.testing.assert_close(perturbed, expected)
    torch.testing.assert_close(model.logits(b), clean, atol=0, rtol=0)  # the hook is gone


def test_the_perturbation_passes_through_the_models_own_embedding_layernorm():
    # with that LayerNorm's weight zero, whatever it takes comes out as its bias: no perturbation reaches the
    # layers, so the adversarial loss is zero (a perturbation after it would still move the logits)
    model = tiny("sequence", SiFT(init=1.0, step=1.0)).train()
    with torch.no_grad():
        model.encoder.embeddings.ln.weight.zero_()
        model.encoder.embeddings.ln.bias.normal_()
    assert model(batch("sequence"))["sift_loss"].item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("objective", ["roberta", "electra", "deberta", "debertav3"])
def test_sift_trains_every_backbone_from_its_embedding_layernorm_up(objective):
    plain = backbone_model(objective).train()
    adversarial = backbone_model(objective, sift=SiFT(init=1.0, step=1.0)).train()
    b = batch("sequence")
    out = adversarial(b)
    assert out["sift_loss"].item() > 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    plain(b)["loss"].backward()
    embeddings, plain_embeddings = adversarial.encoder.embeddings, plain.encoder.embeddings
    torch.testing.assert_close(embeddings.word.weight.grad, plain_embeddings.word.weight.grad)  # not the tables
    difference = embeddings.ln.weight.grad - plain_embeddings.ln.weight.grad  # the LayerNorm after the perturbation
    assert difference.abs().max() > 1e-4 * plain_embeddings.ln.weight.grad.abs().max()
