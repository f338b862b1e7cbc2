"""`spanbert-ds demo`, the README's main command, as a new user runs it: from a folder with nothing in it; and
CI's check of what it produced (.ci/check_demo.py)."""

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.launch import REPO, environment

CHECK_DEMO = os.path.join(REPO, ".ci", "check_demo.py")


def demo(cwd, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "spanbert_ds.cli", "demo", *args], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # launches ranks: left out by `pytest -m "not slow"`
def test_the_demo_runs_in_a_work_folder_whose_parents_do_not_exist(tmp_path):
    workdir = tmp_path / "runs" / "not" / "there"
    done = demo(tmp_path, "--workdir", str(workdir), "--steps", "3", "--ranks", "1", "--model", "tiny",
                "--max-seq-len", "64", "--examples", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (workdir / "hf" / "model.safetensors").is_file() and (workdir / "shards" / "valid" / "meta.json").is_file()
    assert "held-out MLM accuracy" in done.stdout and "unigram baseline" in done.stdout
    assert done.stdout.count("      true: ") == 2  # the fill-mask examples, through transformers


@pytest.mark.slow
def test_impossible_demo_settings_are_one_line_errors(tmp_path):
    (tmp_path / "a_file").write_text("")
    for args, message in ((["--ranks", "0"], "--ranks must be at least 1, got 0"),
                          (["--workdir", str(tmp_path / "a_file" / "demo")], "a_file is a file (or a broken link), so no folder can be made")):
        done = demo(tmp_path, *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def check_demo(workdir, accuracy, unigram_accuracy):
    """.ci/check_demo.py on a work folder whose run logged a falling loss and these held-out figures."""
    (workdir / "run").mkdir(parents=True)
    rows = [{"step": 10, "loss": 17.9}, {"step": 1500, "loss": 10.2, "eval_mlm_accuracy": accuracy,
                                         "eval_mlm_unigram_accuracy": unigram_accuracy}]
    (workdir / "run" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return subprocess.run([sys.executable, CHECK_DEMO, str(workdir)], capture_output=True, text=True, timeout=60)


def test_the_demo_check_fails_a_model_that_does_not_double_the_unigram_baseline(tmp_path):
    # the old recipe's figures: 1.8 times the most-frequent-token guess, a model that guesses "the" and ","
    done = check_demo(tmp_path / "old", accuracy=0.104, unigram_accuracy=0.058)
    assert done.returncode == 1 and "held-out MLM accuracy 0.104 is not" in done.stderr, done.stderr
    done = check_demo(tmp_path / "new", accuracy=0.140, unigram_accuracy=0.058)
    assert done.returncode == 1 and "held-out MLM accuracy" not in done.stderr, done.stderr  # only the missing export
