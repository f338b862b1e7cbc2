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


def help_of(capsys, command, prog=None):
    from spanbert_ds.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"], prog=prog)
    assert done.value.code == 0
    return capsys.readouterr().out


def option_help(text, flag):
    """The help paragraph of `flag` in argparse's --help output, as one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " ") or line.strip() == flag)
    block = [lines[start]]
    for line in lines[start + 1:]:
        if line.strip().startswith("-") or not line.startswith(" "):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def test_train_help_lists_every_objective_of_the_registry(capsys):
    from spanbert_ds.model.objectives import OBJECTIVES

    text = option_help(help_of(capsys, "train"), "--objective")
    for name in OBJECTIVES:
        assert f"{name} (" in text, (name, text)


def test_init_from_help_says_which_hugging_face_folders_it_takes(capsys):
    text = option_help(help_of(capsys, "train"), "--init-from")
    for family in ("BERT", "RoBERTa", "DeBERTa"):
        assert family in text, text
    assert "config.json" in text


def test_usage_and_errors_name_the_prog_they_are_given(capsys):
    from spanbert_ds.cli import main

    assert help_of(capsys, "train", prog="train.py").startswith("usage: train.py ")
    assert help_of(capsys, "finetune").startswith("usage: spanbert-ds finetune ")
    assert main(["bench", "--steps", "0"], prog="bench.py") == 2
    assert capsys.readouterr().err.startswith("bench.py: error: --steps must be at least 1")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "finetune.py"])
def test_the_entry_scripts_usage_and_errors_show_the_script_the_user_ran(script):
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=ENV, cwd=REPO,
                            timeout=120)
    assert helped.returncode == 0, helped.stderr[-500:]
    assert any(line.startswith(f"usage: {script} ") for line in helped.stdout.splitlines()), helped.stdout[:500]
    done = subprocess.run([sys.executable, script, "--bogus"], capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"{script}: error: "), done.stderr[-500:]
    assert f"(see {script} --help)" in done.stderr


def test_the_same_setting_has_one_spelling_in_every_command():
    """Tokens per sample is --max-seq-len and samples per micro-batch --micro-batch-size wherever a command
    takes them (bench's older --seq-len and --batch still parse)."""
    import argparse
    import importlib

    from spanbert_ds.cli import COMMANDS

    def options(name):
        parser = argparse.ArgumentParser()
        importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
        return {o: a.dest for a in parser._actions for o in a.option_strings}

    for name in ("train", "finetune", "mask-stats", "demo", "bench"):
        assert "--max-seq-len" in options(name), name
        assert "--seq-len" not in options(name) or options(name)["--seq-len"] == options(name)["--max-seq-len"]
    assert "--micro-batch-size" in options("train") and "--micro-batch-size" in options("bench")
    assert options("bench")["--batch"] == options("bench")["--micro-batch-size"]
