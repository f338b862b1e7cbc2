"""The command line: a mistake in it is one line and exit 2; what killed commands left behind is cleaned."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "spanbert_ds.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=120)


def test_an_unknown_flag_is_one_line_that_points_to_help():
    done = cli("prepare", "python-docs", "out", "--vocab-sise", "100")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "spanbert-ds prepare: error: unrecognized arguments: --vocab-sise 100 (see spanbert-ds prepare --help)"]
    done = cli("nope")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_prepare_removes_the_temporary_folders_of_killed_runs(tmp_path):
    out = tmp_path / "shards"
    dead = tmp_path / "shards.tmp-999999999"  # no such process
    dead.mkdir()
    (dead / "tokens.bin").write_bytes(b"half")
    alive = tmp_path / f"shards.tmp-{os.getpid()}"  # a running process's: left alone
    alive.mkdir()
    done = cli("prepare", "python-docs", str(out), "--vocab-size", "500")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shards", alive.name])
