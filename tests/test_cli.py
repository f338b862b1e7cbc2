"""The command line: a mistake in it is one line and exit 2; what killed commands left behind is cleaned."""

import os
import subprocess
import sys

import pytest

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


@pytest.mark.slow
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


def test_term_and_hup_interrupt_a_command_but_nohups_ignored_hup_stays_ignored(tmp_path, monkeypatch, capsys):
    import signal

    import spanbert_ds.data.prepare as prepare_module
    from spanbert_ds.cli import main

    seen = {}

    def record(*args, **kwargs):
        seen.update({sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)})
        return "shards"

    monkeypatch.setattr(prepare_module, "prepare", record)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        assert main(["prepare", "python-docs", str(tmp_path / "out"), "--quiet"]) == 0
        assert seen[signal.SIGHUP] == signal.SIG_IGN
        assert callable(seen[signal.SIGTERM])  # raises KeyboardInterrupt, so each command's clean-up runs
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)
