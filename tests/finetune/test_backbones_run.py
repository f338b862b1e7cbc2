"""Issue 24's "done when", launched: `train.py --objective debertav3` pretrains a tiny DeBERTaV3 for a few steps,
`finetune.py --task squad --init RUN --sift` fine-tunes its discriminator (with SiFT's adversarial loss, in the
DeepSpeed engine), and the run's export (RUN/hf) is a DebertaV2ForQuestionAnswering that transformers opens with
the logits of the last checkpoint.

Needs finetune/loop.py to export with interop/task_hf.py's export_task_hf (with interop.hf's, the folder says
BertForQuestionAnswering over DeBERTa's weights)."""

import json
import os

import pytest
import torch

from spanbert_ds.data.tokenizer import load_tokenizer
from spanbert_ds.finetune.model import TaskModel
from spanbert_ds.finetune.squad import SquadTask
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.run import checkpoint
from tests.distributed.launch import FINETUNE, launch, metrics
from tests.distributed.test_deberta_runs import deberta_args
from tests.distributed.test_pretrain import check, ds_config
from tests.finetune.test_backbones import squad_file

pytestmark = pytest.mark.slow  # launches processes
transformers = pytest.importorskip("transformers")

WORDS = ("the function returns a new list of values from the file and the module keeps each name in its own "
         "dictionary so that a class can define methods for every object it makes").split()


def test_a_debertav3_run_fine_tunes_on_squad_and_exports_deberta_v2_for_question_answering(tmp_path,
                                                                                             python_docs_shards):
    pretrained = str(tmp_path / "pretrained")
    check(launch(deberta_args(str(python_docs_shards.path), pretrained, ds_config(tmp_path, 2), "debertav3",
                              steps=2), ranks=1, launcher="python", timeout=600))
    contexts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(24)]
    squad = str(squad_file(tmp_path / "squad.json", contexts))
    (tmp_path / "ft.json").write_text(json.dumps({
        "train_batch_size": 8, "train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}, "steps_per_print": 10**6}))
    out = str(tmp_path / "squad")
    check(launch(["--deepspeed_config", str(tmp_path / "ft.json"), "--task", "squad", "--init", pretrained,
                  "--train", squad, "--eval", squad, "--steps", "4", "--max-seq-len", "64", "--doc-stride", "16",
                  "--max-query-len", "16", "--sift", "--log-every", "1", "--output", out], ranks=1, launcher="python", timeout=600,
                 script=FINETUNE))

    results = json.load(open(os.path.join(out, "results.json")))
    assert results["metrics"]["count"] == 24
    steps = [row for row in metrics(out) if "loss" in row]
    assert len(steps) == 4 and all(row["sift_loss"] > 0 for row in steps), steps
    hf_dir = os.path.join(out, "hf")
    assert json.load(open(os.path.join(hf_dir, "config.json")))["architectures"] == ["DebertaV2ForQuestionAnswering"]
    theirs, info = transformers.AutoModelForQuestionAnswering.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info

    config = ModelConfig.from_json(os.path.join(out, "model_config.json"))
    model = TaskModel(config, "span").eval()
    model.load_state_dict(checkpoint.fp32_state_dict(os.path.join(out, "checkpoints"), results["checkpoint"], model))
    task = SquadTask(load_tokenizer(os.path.join(pretrained, "tokenizer")), 64, doc_stride=16, max_query_len=16)
    features = task.features(task.read(squad)[:4], train=False)
    batch = {k: torch.as_tensor(features[k][:4], dtype=torch.long) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ours = model(batch)["logits"]
        out_hf = theirs.eval()(**batch)
    reference = torch.stack([out_hf.start_logits, out_hf.end_logits], -1)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], reference[real], atol=1e-5, rtol=1e-5)
