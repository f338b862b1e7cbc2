"""The start-up cache (spanbert_ds/data/shard_cache.py): sample index and unigram counts computed once
per shard folder and parameters, memory-mapped afterwards, never trusted when damaged."""

import json
import multiprocessing
import os
import shutil
import tempfile

import numpy as np
import pytest

from spanbert_ds.data import shard_cache
from spanbert_ds.data.packing import MODES, PackedSamples
from spanbert_ds.data.shards import Shards
from spanbert_ds.errors import UserError
from spanbert_ds.train.evaluate import unigram_counts

T = 128


@pytest.fixture()
def shards(python_docs_shards, tmp_path):
    """A fresh copy of the python-docs shards (about 0.5M tokens) with no cache yet."""
    out = tmp_path / "shards"
    shutil.copytree(python_docs_shards.path, out, ignore=shutil.ignore_patterns(shard_cache.FOLDER))
    return Shards(out)


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "spanbert_ds"


def cache_files(folder):
    return sorted(p.name for p in folder.glob("*.idx")) if folder.is_dir() else []


def test_cached_index_equals_a_fresh_computation_in_every_mode(shards):
    for mode in MODES:
        built = PackedSamples(shards, mode, T, seed=3)  # first start: computed and stored
        read = PackedSamples(shards, mode, T, seed=3)  # later starts: memory-mapped
        fresh = PackedSamples(shards, mode, T, seed=3, cache=False)
        assert isinstance(read.samples, np.memmap)
        for packed in (built, read):
            assert np.array_equal(packed.samples, fresh.samples) and packed.samples.dtype == np.int64
            assert packed.samples.shape == fresh.samples.shape
            if mode == "pair":
                assert np.array_equal(packed.nsp_labels, fresh.nsp_labels)
            else:
                assert packed.nsp_labels is None
        idx = np.arange(0, len(fresh), 5)
        for key, value in fresh.batch(idx).items():
            assert np.array_equal(read.batch(idx)[key], value)
    assert len(cache_files(shards.path / shard_cache.FOLDER)) == 3


def test_a_later_start_reads_the_index_instead_of_computing_it(shards, monkeypatch):
    first = PackedSamples(shards, "doc", T)

    def computed(self):
        raise AssertionError("the sample index was computed again")

    monkeypatch.setattr(PackedSamples, "compute_index", computed)
    again = PackedSamples(Shards(shards.path), "doc", T)  # a new process opens the folder again
    assert np.array_equal(again.samples, first.samples)


def test_a_changed_parameter_or_shard_folder_gives_another_cache_file(shards):
    folder = shards.path / shard_cache.FOLDER
    PackedSamples(shards, "pair", T, seed=1)
    seen = set(cache_files(folder))
    for mode, max_seq_len, seed, window in [("pair", T, 2, 8), ("pair", 64, 1, 8), ("pair", T, 1, 4),
                                            ("doc", T, 1, 8), ("full", T, 1, 8)]:
        PackedSamples(shards, mode, max_seq_len, seed=seed, word_start_window=window)
        now = set(cache_files(folder))
        assert len(now - seen) == 1, (mode, max_seq_len, seed, window)
        seen = now
    PackedSamples(shards, "doc", T, seed=7)  # doc and full mode draw nothing: the seed does not matter
    assert set(cache_files(folder)) == seen
    os.utime(shards.path / "word_starts.bin")  # the shards changed (here: their time) after the index was built
    PackedSamples(Shards(shards.path), "doc", T)
    assert len(set(cache_files(folder)) - seen) == 1


@pytest.mark.parametrize("damage", ["truncate", "header", "key", "empty", "extended"])
def test_a_damaged_cache_file_is_rebuilt_not_trusted(shards, damage):
    fresh = PackedSamples(shards, "pair", T, seed=1, cache=False)
    PackedSamples(shards, "pair", T, seed=1)
    (path,) = (shards.path / shard_cache.FOLDER).glob("*.idx")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    elif damage == "header":
        data[:8] = b"garbage!"
    elif damage == "key":
        at = data.index(b'"key": "') + 8
        data[at:at + 4] = b"0000" if data[at:at + 4] != b"0000" else b"1111"
    elif damage == "empty":
        data = b""
    else:
        data += b"\0" * 64
    path.write_bytes(bytes(data))
    again = PackedSamples(shards, "pair", T, seed=1)
    assert np.array_equal(again.samples, fresh.samples) and np.array_equal(again.nsp_labels, fresh.nsp_labels)
    # ... and the bad file was replaced by a good one, which the next start reads
    assert cache_files(path.parent) == [path.name]
    arrays = shard_cache.read(path, path.name.split("-", 1)[1][:-4])
    assert arrays is not None and np.array_equal(arrays["samples"], fresh.samples)


def test_a_read_only_shard_folder_caches_in_the_users_cache_folder(shards, user_cache, monkeypatch, capsys):
    refused = shards.path
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # what a read-only mount says, also to root
        if str(dir).startswith(str(refused)):
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(shard_cache.tempfile, "mkstemp", mkstemp)
    mode = os.stat(shards.path).st_mode
    os.chmod(shards.path, 0o555)
    try:
        fresh = PackedSamples(shards, "full", T, cache=False)
        first = PackedSamples(shards, "full", T)
        PackedSamples(shards, "doc", T)
        unigram_counts(shards)
    finally:
        os.chmod(shards.path, mode)
    err = capsys.readouterr().err
    assert err.count("note:") == 1, err  # said once
    assert f"{shards.path} cannot be written (Permission denied)" in err and str(user_cache) in err
    assert len(cache_files(user_cache)) == 3 and not cache_files(shards.path / shard_cache.FOLDER)
    assert np.array_equal(first.samples, fresh.samples)
    monkeypatch.setattr(PackedSamples, "compute_index", None)  # read from the user's cache from now on
    assert np.array_equal(PackedSamples(Shards(shards.path), "full", T).samples, fresh.samples)


def _build(path, queue):
    queue.put(np.asarray(PackedSamples(Shards(path), "doc", T).samples).tobytes())


def test_ranks_that_build_at_once_leave_one_complete_file(shards):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    ranks = [context.Process(target=_build, args=(shards.path, queue)) for _ in range(3)]
    for rank in ranks:
        rank.start()
    results = [queue.get(timeout=120) for _ in ranks]
    for rank in ranks:
        rank.join()
        assert rank.exitcode == 0
    fresh = PackedSamples(shards, "doc", T, cache=False).samples
    assert all(r == fresh.tobytes() for r in results)
    folder = shards.path / shard_cache.FOLDER
    assert len(cache_files(folder)) == 1 and len(list(folder.iterdir())) == 1  # no temporary file left


def test_unigram_counts_are_counted_once_and_cached(shards, monkeypatch):
    counts = unigram_counts(shards)
    assert np.array_equal(counts, np.bincount(np.asarray(shards.tokens), minlength=shards.vocab_size))
    assert len(cache_files(shards.path / shard_cache.FOLDER)) == 1

    class Unread:  # a later start reads no token
        def __getitem__(self, key):
            raise AssertionError("tokens.bin was read")

    again = Shards(shards.path)
    monkeypatch.setattr(again, "tokens", Unread())
    assert np.array_equal(unigram_counts(again), counts)


def test_start_up_takes_the_id_check_from_meta_and_a_batch_catches_a_changed_id(shards):
    meta = shards.meta
    position = shards.n_tokens // 2
    tokens = np.memmap(shards.path / "tokens.bin", dtype=meta["token_dtype"], mode="r+")
    tokens[position] = meta["vocab_size"] + 7  # changed after prepare, deep inside the corpus
    tokens.flush()
    del tokens
    opened = Shards(shards.path, check_ids=True)  # what every rank does at start: no pass over the tokens
    packed = PackedSamples(opened, "doc", T)
    with pytest.raises(UserError, match=f"holds token id {meta['vocab_size'] + 7}, but meta.json says vocab_size"):
        opened.check_ids(full=True)
    holding = np.flatnonzero((packed.samples[:, 0] <= position) & (packed.samples[:, 1] > position))
    packed.batch(np.arange(int(holding[0])))  # the samples before it are fine
    with pytest.raises(UserError, match=rf"tokens.bin holds token id {meta['vocab_size'] + 7} at position {position}, "
                                        rf"but meta.json says vocab_size {meta['vocab_size']}"):
        packed.batch(holding)


def test_a_folder_without_a_recorded_max_id_is_read_through_at_start(shards):
    meta = json.loads((shards.path / "meta.json").read_text())
    del meta["max_id"]  # as an older prepare wrote it
    (shards.path / "meta.json").write_text(json.dumps(meta))
    tokens = np.memmap(shards.path / "tokens.bin", dtype=meta["token_dtype"], mode="r+")
    tokens[5] = meta["vocab_size"]
    tokens.flush()
    del tokens
    with pytest.raises(UserError, match=f"holds token id {meta['vocab_size']}, but meta.json says vocab_size"):
        Shards(shards.path, check_ids=True)
