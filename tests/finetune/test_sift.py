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
