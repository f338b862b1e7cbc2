"""A RoBERTa run end to end as its user meets it: byte-level BPE shards -> `train.py --objective roberta`
-> `spanbert-ds export` -> transformers' RobertaForMaskedLM and tokenizer -> `--init-from` the export."""

import json

import pytest
import torch

from spanbert_ds.cli import main
from tests.distributed.launch import launch

pytestmark = pytest.mark.slow  # launches training processes
transformers = pytest.importorskip("transformers")


def test_a_roberta_run_exports_as_roberta_and_starts_a_new_run(tmp_path):
    from spanbert_ds.data.prepare import prepare
    from spanbert_ds.run.folder import load_run

    shards = prepare("python-docs", tmp_path / "shards", tokenizer="bpe", vocab_size=2000)
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
                                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}))
    common = ["--deepspeed_config", str(config), "--objective", "roberta", "--data", str(shards.path), "--steps", "2",
              "--max-seq-len", "64", "--num-workers", "0", "--attention", "eager"]
    done = launch([*common, "--model", "tiny", "--output", str(tmp_path / "run")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0

    model = transformers.RobertaForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Return the number of items in a container."
    encoded = tokenizer(text, return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == shards.tokenizer().encode(text).ids  # <s> ... </s> as trained
    objective, _ = load_run(str(tmp_path / "run"))
    objective.eval()
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with torch.no_grad():
        hidden = objective.encode(batch)
        ours = objective.mlm_head(hidden[0])
        theirs = model(**batch).logits[0]
    assert (ours - theirs).abs().max() < 1e-4

    done = launch([*common, "--init-from", str(tmp_path / "hf"), "--output", str(tmp_path / "again")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "initialised from" in done.stderr and "initialised 0" not in done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("initialised from"))
    assert "; initialised" not in line and "ignored" not in line, line  # every tensor came from the export
    shape = json.load(open(tmp_path / "again" / "model_config.json"))
    assert (shape["num_layers"], shape["hidden_size"], shape["max_position_embeddings"]) == (2, 128, 512)
