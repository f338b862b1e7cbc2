"""A disk that fills up during a checkpoint or an export, and a read-only output: one line, exit 2, the
previous checkpoint kept, nothing partial left. The disks are small tmpfs mounts (root only; skipped
elsewhere)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


@pytest.fixture()
def mount(tmp_path):
    """mount(size_mb, read_only=False) -> a fresh tmpfs folder; all unmounted at the end."""
    mounted = []

    def make(size_mb, read_only=False, prepare=None):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(folder)
        if prepare:
            prepare(folder)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)])


def ds_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4,
                                "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
                                "zero_optimization": {"stage": 0}, "steps_per_print": 10**6}))
    return str(path)


def command(name, *args):
    if name == "train":
        return [sys.executable, os.path.join(REPO, "train.py"), *args]
    return [sys.executable, "-m", "spanbert_ds.cli", name, *args]


def run(cmd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
    env.pop("RANK", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def train(tmp_path, shards, out, steps):
    return run(command("train", "--deepspeed_config", ds_config(tmp_path), "--model", "tiny", "--data", shards,
                       "--output", str(out), "--steps", str(steps), "--save-every", "2", "--max-seq-len", "32",
                       "--num-workers", "0"))


def one_line_exit_2(done, words):
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and len(errors) == 1 and words in errors[0], done.stderr[-3000:]


def test_a_disk_that_fills_during_a_checkpoint_keeps_the_one_before(tmp_path, mount, python_docs_shards):
    disk = mount(30)  # a tiny run's checkpoint takes about 18 MB: the first fits, the second does not
    done = train(tmp_path, str(python_docs_shards.path), disk / "run", steps=6)
    one_line_exit_2(done, "no space left on the device of")
    assert "the partial step4 was removed and step2 stays the latest" in done.stderr
    assert sorted(os.listdir(disk / "run" / "checkpoints")) == ["latest", "step2"]
    assert not os.path.lexists(disk / "run" / ".lock")  # the folder is left as found: unlocked, no lock file


def test_an_export_onto_a_full_disk_writes_nothing(tmp_path, mount, python_docs_shards):
    check = train(tmp_path, str(python_docs_shards.path), tmp_path / "run", steps=2)
    assert check.returncode == 0, check.stderr[-3000:]
    disk = mount(4)  # the tiny model's safetensors alone take about 6 MB
    done = run(command("export", str(tmp_path / "run"), str(disk / "hf")))
    one_line_exit_2(done, "no space left on the device of")
    assert os.listdir(disk) == []


def test_read_only_outputs_are_one_line_before_any_work(tmp_path, mount, python_docs_shards):
    shards = str(python_docs_shards.path)
    check = train(tmp_path, shards, tmp_path / "run", steps=2)
    assert check.returncode == 0, check.stderr[-3000:]

    def copy_run(folder):
        subprocess.run(["cp", "-a", str(tmp_path / "run"), str(folder / "run")], check=True)

    disk = mount(40, read_only=True, prepare=copy_run)
    one_line_exit_2(train(tmp_path, shards, disk / "new", steps=2), "is on a read-only file system")
    one_line_exit_2(train(tmp_path, shards, disk / "run", steps=4), "is on a read-only file system")  # a resume
    one_line_exit_2(run(command("export", str(tmp_path / "run"), str(disk / "hf"))), "is on a read-only file system")
    one_line_exit_2(run(command("prepare", "python-docs", str(disk / "shards"))), "is on a read-only file system")
