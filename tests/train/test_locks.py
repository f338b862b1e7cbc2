"""Two commands on one folder: the second says who holds it, in one line, and changes nothing."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from spanbert_ds.data.shards import Shards
from spanbert_ds.errors import UserError
from spanbert_ds.folders import FolderLock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
ENV.pop("RANK", None)


def test_a_lock_names_its_holder_and_goes_with_it(tmp_path):
    path = str(tmp_path / ".lock")
    first = FolderLock(path, "run folder X", wait=0).acquire()
    with pytest.raises(UserError, match=f"run folder X is in use by another run \\(host {socket.gethostname()}, "
                                        f"pid {os.getpid()}, since"):
        FolderLock(path, "run folder X", wait=0.5).acquire()
    first.release()
    assert not os.path.exists(path)
    with FolderLock(path, "run folder X", wait=0):  # free again
        pass


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    path = str(tmp_path / ".lock")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from spanbert_ds.folders import FolderLock; "
                               f"FolderLock({path!r}, 'x').acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9: no chance to clean up
    holder.wait()
    assert os.path.exists(path)  # the file stays, the lock does not
    FolderLock(path, "x", wait=0).acquire().release()


@pytest.mark.slow
def test_a_second_training_on_a_running_folder_is_refused(tmp_path, python_docs_shards):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
                                  "steps_per_print": 10**6}))
    out = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO, "train.py"), "--deepspeed_config", str(config), "--model", "tiny",
               "--data", str(python_docs_shards.path), "--output", str(out), "--steps", "100000", "--max-seq-len", "16",
               "--num-workers", "0", "--save-every", "100000", "--log-every", "1"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
        assert first.poll() is None  # still training
    finally:
        first.kill()
        first.wait()
    errors = [line for line in second.stderr.splitlines() if "error:" in line]
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-3000:]
    assert f"run folder {out} is in use by another run (host {socket.gethostname()}, pid {first.pid}" in errors[0]
    assert "Traceback" not in second.stderr
    assert len(os.listdir(out / "tensorboard")) == 1  # one run's event file


@pytest.mark.slow
def test_two_prepares_into_one_new_folder_one_wins_and_the_other_says_so(tmp_path):
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "spanbert_ds.cli", "prepare", "python-docs", str(out), "--vocab-size", "2000"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    time.sleep(0.5)
    second = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 2, second.stderr[-2000:]
    refusal = [line for line in second.stderr.splitlines() if "error:" in line]
    assert len(refusal) == 1 and ("already exists" in refusal[0] or "in use by another run" in refusal[0])
    assert Shards(out, check_ids=True).vocab_size <= 2000
    assert sorted(os.listdir(tmp_path)) == ["shards"]  # no lock file, no temporary folder left


def test_a_holder_that_stops_on_an_error_leaves_no_lock_file(tmp_path):
    """A run that ends on an error (a full disk: a UserError out of the loop) without reaching its release."""
    path = str(tmp_path / ".lock")
    done = subprocess.run([sys.executable, "-c", "from spanbert_ds.folders import FolderLock; "
                           f"FolderLock({path!r}, 'x').acquire(); raise SystemExit('no space left')"],
                          capture_output=True, text=True, cwd=REPO, env=dict(ENV, PYTHONPATH=REPO), timeout=60)
    assert done.returncode == 1 and "no space left" in done.stderr
    assert os.listdir(tmp_path) == []
