"""Arrays derived from a shard folder, computed once and kept beside it for every later start.

The sample index of a packing (`packing.py`: every block's boundaries, built by a Python step per
block) and the training split's token counts (`train/evaluate.py`: a read of every token) grow with the
corpus; without a cache every rank rebuilds them at every start and every SLURM requeue. `cached()`
builds such arrays once and memory-maps the stored copy afterwards, so a start costs the same whatever
the corpus size.

Where: SHARDS/cache/NAME-KEY.idx, or, where the shard folder cannot be written (a cluster's read-only
dataset), $XDG_CACHE_HOME/spanbert_ds/ (~/.cache/spanbert_ds/), said once on stderr. Both are looked in.

Key: a hash of everything the arrays depend on: the kind and its code version, the caller's parameters
(packing mode, max_seq_len, word_start_window, seed where it matters) and the shards' fingerprint
(meta.json's bytes and the size and modification time of each data file). Any change gives another
file; nothing is ever updated in place, and an unused file can be deleted at any time.

Concurrency: whoever finds the file missing builds it (ranks of a job, or jobs sharing a file system,
before any process group exists) and writes it to a temporary name in the same folder, renamed over the
final name when complete (os.replace, atomic). The content is a function of the key, so builders that
race write the same bytes and a reader sees either no file or a complete one.

Format (little-endian): 8 bytes magic, uint64 header length, the header as JSON ({"key", "size",
"arrays": {name: {"dtype", "shape", "offset"}}}), then each array at its 64-byte aligned offset.
A read checks the magic, the key and that the file is exactly `size` bytes long, and nothing more (no
pass over the data): a file cut short or with a damaged header is rebuilt and replaced, never trusted.
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from spanbert_ds.folders import give_umask_mode

MAGIC = b"SBDSIDX\x01"
FOLDER = "cache"  # inside the shard folder
ALIGN = 64
_noted = set()  # folders already said to be read-only, so the note comes once per process


def user_cache_dir():
    """Where a read-only shard folder's arrays go: $XDG_CACHE_HOME/spanbert_ds, else ~/.cache/spanbert_ds."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spanbert_ds"


def cache_key(shards, kind, version, params):
    """The hex digest that names the file of (kind, version, params) over these shards."""
    spec = {"kind": kind, "version": version, "params": params, "shards": shards.fingerprint()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def locations(shards):
    return [shards.path / FOLDER, user_cache_dir()]


def cached(shards, kind, version, params, build):
    """{name: array} of `build()`, read from the cache where a complete copy is stored (read-only
    memmaps), else built, stored, and returned (read-only as well, so both paths behave alike)."""
    key = cache_key(shards, kind, version, params)
    name = f"{kind}-{key}.idx"
    for folder in locations(shards):
        arrays = read(folder / name, key)
        if arrays is not None:
            return arrays
    arrays = {k: np.ascontiguousarray(v) for k, v in build().items()}
    for v in arrays.values():
        v.flags.writeable = False
    for i, folder in enumerate(locations(shards)):
        try:
            write(folder / name, key, arrays)
            break
        except OSError as error:
            if i == 0:
                _note(shards.path, f"{shards.path} cannot be written ({error.strerror or error}); its start-up "
                                   f"index and counts are cached in {user_cache_dir()} instead")
            else:
                _note(folder, f"cannot cache {kind} in {folder} either ({error.strerror or error}); it is "
                              "rebuilt at every start (set XDG_CACHE_HOME to a writable folder)")
    return arrays


def read(path, key):
    """The arrays stored at `path` under `key`, or None when it is missing, for another key, or damaged."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) != 16 or head[:8] != MAGIC:
                return None
            length = int.from_bytes(head[8:], "little")
            if length > 1 << 20:
                return None
            header = json.loads(f.read(length))
            size = os.fstat(f.fileno()).st_size
        if header.get("key") != key or header.get("size") != size:
            return None
        arrays = {}
        for name, spec in header["arrays"].items():
            dtype, shape, offset = np.dtype(spec["dtype"]), tuple(spec["shape"]), int(spec["offset"])
            count = int(np.prod(shape, dtype=np.int64))
            if offset < 16 + length or offset + count * dtype.itemsize > size:
                return None
            arrays[name] = (np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape) if count
                            else np.empty(shape, dtype))
        return arrays
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable or damaged: rebuilt and replaced


def write(path, key, arrays):
    """Store `arrays` at `path` atomically: a temporary file in the same folder renamed over it."""
    specs, offset = {}, 0
    for name, a in arrays.items():
        specs[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "at": offset}
        offset += -(-a.nbytes // ALIGN) * ALIGN
    start = ALIGN
    while True:  # the data offsets are written in the header, whose length moves them: settle both
        for spec in specs.values():
            spec["offset"] = start + spec["at"]
        header = {"key": key, "size": start + offset,
                  "arrays": {n: {k: v for k, v in spec.items() if k != "at"} for n, spec in specs.items()}}
        text = json.dumps(header).encode()
        if 16 + len(text) <= start:
            break
        start = -(-(16 + len(text)) // ALIGN) * ALIGN
    text += b" " * (start - 16 - len(text))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + len(text).to_bytes(8, "little") + text)
            for name, a in arrays.items():
                f.seek(specs[name]["offset"])
                f.write(memoryview(a).cast("B"))
            f.truncate(header["size"])
        give_umask_mode(tmp)  # mkstemp makes 0600; the cache serves every user of the folder
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _note(folder, text):
    if folder in _noted:
        return
    _noted.add(folder)
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {text}", file=sys.stderr)
