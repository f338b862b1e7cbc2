"""`prepare --workers N`, `prepare --part I/N` + `merge`, `--tokenizer-sample`: the same bytes as one plain
prepare; a failing or killed worker stops everything and leaves nothing; a killed prepare starts again."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spanbert_ds.data import tokenizer as tokenizers_
from spanbert_ds.data.prepare import prepare
from spanbert_ds.errors import UserError


def write_documents(path, n_documents, seed):
    """Documents of 2-12 lines over a few hundred made-up words, each line numbered so none repeats."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(400)]
    docs = []
    for d in range(n_documents):
        lines = [" ".join(rng.choice(words, rng.integers(3, 16))).capitalize() + f" {seed}-{d}-{i}."
                 for i in range(rng.integers(2, 13))]
        docs.append("\n".join(lines))
    Path(path).write_text("\n\n".join(docs) + "\n")


def folder_bytes(folder):
    """{relative path: bytes} of every file below `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out):
    """What a stopped prepare must not leave beside OUT: OUT itself, OUT.tmp-PID, OUT.lock."""
    return sorted(p.name for p in Path(out).parent.iterdir() if p.name.startswith(Path(out).name))


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "spanbert_ds.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def children(pid):
    """PIDs of the processes `pid` started (the spawned workers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 1,200 documents (~0.9 MB) in 6 files, so parts fall on file boundaries."""
    folder = tmp_path_factory.mktemp("parallel") / "corpus"
    folder.mkdir()
    for i in range(6):
        write_documents(folder / f"part{i}.txt", 200, seed=i)
    return folder


def test_two_workers_write_the_same_bytes_as_one(tmp_path, corpus, bert_vocab_file):
    one = prepare(corpus, tmp_path / "one", tokenizer=bert_vocab_file, valid_fraction=0.1, seed=5, workers=1,
                  chunk_bytes=16 << 10)
    two = prepare(corpus, tmp_path / "two", tokenizer=bert_vocab_file, valid_fraction=0.1, seed=5, workers=2,
                  chunk_bytes=16 << 10)
    assert len(one) > 1000 and len(one.valid) > 80  # many documents, and a held-out split, each way
    expected = folder_bytes(one.path)
    assert "valid/tokens.bin" in expected and folder_bytes(two.path) == expected


def test_parts_merged_are_the_whole_byte_for_byte(tmp_path, corpus, bert_vocab_file):
    from spanbert_ds.data.merge import merge

    whole = prepare(corpus, tmp_path / "whole", tokenizer=bert_vocab_file, valid_fraction=0.1, seed=5)
    parts = [prepare(corpus, tmp_path / f"part{i}", tokenizer=bert_vocab_file, valid_fraction=0.1, seed=5,
                     part=(i, 3)) for i in (1, 2, 3)]
    sizes = [len(p) for p in parts]
    assert min(sizes) > 100 and sum(sizes) == len(whole)  # three real parts, no document twice or lost
    merged = merge([tmp_path / "part3", tmp_path / "part1", tmp_path / "part2"], tmp_path / "merged")
    assert folder_bytes(merged.path) == folder_bytes(whole.path)
    with pytest.raises(UserError, match="parts 2 of 3 are missing"):
        merge([tmp_path / "part1", tmp_path / "part3"], tmp_path / "short")
    assert leftovers(tmp_path / "short") == []


def test_parts_need_one_tokenizer_file(tmp_path, corpus):
    with pytest.raises(UserError, match="--tokenizer-only"):
        prepare(corpus, tmp_path / "p", tokenizer="wordpiece", part=(1, 2))


def test_a_bad_file_half_way_stops_the_workers_in_one_line_leaving_nothing(tmp_path, corpus, bert_vocab_file):
    folder = tmp_path / "input"
    folder.mkdir()
    for f in sorted(corpus.iterdir())[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    text = (corpus / "part3.txt").read_bytes()
    (folder / "zbad.txt").write_bytes(text[:60000] + b"caf\xe9 latin-1\n" + text[60000:])  # past what is sniffed
    out = tmp_path / "out"
    proc = cli("prepare", folder, out, "--tokenizer", bert_vocab_file, "--workers", "2", "--quiet",
               "--chunk-bytes", "8192")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "zbad.txt: line" in err and "not valid UTF-8" in err, err
    assert leftovers(out) == []


@pytest.mark.slow  # ~40 s: a 9 MB prepare, killed twice and run again
def test_a_killed_worker_stops_all_within_seconds_and_a_new_prepare_finishes(tmp_path, bert_vocab_file):
    big = tmp_path / "big.txt"
    write_documents(big, 12000, seed=9)  # ~9 MB: the workers are busy for a while
    out = tmp_path / "out"
    proc = cli("prepare", big, out, "--tokenizer", bert_vocab_file, "--workers", "2", "--quiet")
    deadline = time.monotonic() + 60
    while len(workers := children(proc.pid)) < 3 and time.monotonic() < deadline:  # multiprocessing's
        time.sleep(0.2)  # resource tracker, then the two workers
    assert len(workers) >= 3, "no workers started"
    time.sleep(1.0)
    os.kill(workers[-1], signal.SIGKILL)  # as the out-of-memory killer would
    killed = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 15
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "worker died (killed by SIGKILL" in err, err
    assert leftovers(out) == []
    assert all_gone(workers, within=10)

    # kill -9 of prepare itself: its workers die with it, and the next prepare removes its OUT.tmp-PID and finishes
    proc = cli("prepare", big, out, "--tokenizer", bert_vocab_file, "--workers", "2", "--quiet")
    while len(workers := children(proc.pid)) < 3 and time.monotonic() < deadline + 60:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert all_gone(workers, within=10)
    assert any(".tmp-" in name for name in leftovers(out))
    again = cli("prepare", big, out, "--tokenizer", bert_vocab_file, "--workers", "2", "--quiet")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert leftovers(out) == ["out"]


def all_gone(pids, within):
    """Have all of `pids` exited (zombies count as exited) within `within` seconds?"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"]:
            return True
        time.sleep(0.2)
    return False


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_the_tokenizer_trains_on_a_sample_of_the_size_asked_drawn_across_the_corpus(tmp_path, corpus, monkeypatch):
    seen = []
    train = tokenizers_.train_tokenizer

    def counting(kind, sentences, *args, **kwargs):
        def count():
            for s in sentences:
                seen.append(s)
                yield s
        return train(kind, count(), *args, **kwargs)

    monkeypatch.setattr(tokenizers_, "train_tokenizer", counting)
    total = sum(len(s) for f in sorted(corpus.iterdir()) for s in f.read_text().splitlines())
    prepare(corpus, tmp_path / "sampled", tokenizer="wordpiece", vocab_size=300, tokenizer_sample_mb=0.2)
    sampled = sum(map(len, seen))
    assert 0.15e6 < sampled < 0.25e6 < total
    assert any(s.split()[-1].startswith("5-") for s in seen)  # drawn from the last file too, not the first 0.2 MB
    seen.clear()
    prepare(corpus, tmp_path / "all", tokenizer="wordpiece", vocab_size=300, tokenizer_sample_mb=0)
    assert sum(map(len, seen)) == total
