"""`spanbert-ds demo`, the README's main command, as a new user runs it: from a folder with nothing in it."""

import subprocess
import sys

import pytest

from tests.distributed.launch import environment

pytestmark = pytest.mark.slow  # launches processes: left out by `pytest -m "not slow"`


def demo(cwd, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "spanbert_ds.cli", "demo", *args], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=timeout)


def test_the_demo_runs_in_a_work_folder_whose_parents_do_not_exist(tmp_path):
    workdir = tmp_path / "runs" / "not" / "there"
    done = demo(tmp_path, "--workdir", str(workdir), "--steps", "3", "--ranks", "1", "--model", "tiny",
                "--max-seq-len", "64", "--examples", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (workdir / "hf" / "model.safetensors").is_file() and (workdir / "shards" / "valid" / "meta.json").is_file()
    assert "held-out MLM accuracy" in done.stdout and "unigram baseline" in done.stdout
    assert done.stdout.count("      true: ") == 2  # the fill-mask examples, through transformers


def test_impossible_demo_settings_are_one_line_errors(tmp_path):
    (tmp_path / "a_file").write_text("")
    for args, message in ((["--ranks", "0"], "--ranks must be at least 1, got 0"),
                          (["--workdir", str(tmp_path / "a_file" / "demo")], "a_file is a file (or a broken link), so no folder can be made")):
        done = demo(tmp_path, *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
