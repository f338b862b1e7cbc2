"""The shard folder: a tokenized corpus on disk, read with numpy.memmap.

    OUT/meta.json        format_version, tokenizer kind/sha256/casing, vocab_size, special ids, counts,
                         max_id (the largest id in tokens.bin, checked against vocab_size at training start)
    OUT/tokenizer.json   the tokenizer that produced the ids
    OUT/tokens.bin       all documents' token ids concatenated, no special tokens
                         (uint16 when vocab_size <= 65536, else uint32; meta["token_dtype"])
    OUT/word_starts.bin  uint8 per token: 1 where the token begins a word
    OUT/index.idx        int64, little-endian:
                           [n_documents, n_sentences,
                            doc_offsets  (n_documents + 1 values, doc_offsets[0] = 0),
                            sent_offsets (n_sentences + 1 values, sent_offsets[0] = 0)]
                         token offsets: document i is tokens[doc_offsets[i]:doc_offsets[i+1]];
                         every document boundary is also a sentence boundary.
    OUT/cache/           made by training's first start, not by prepare: the sample index of each packing
                         and the unigram counts (data/shard_cache.py), keyed by what they depend on;
                         deleting it is always safe (the next start rebuilds what it needs)

A held-out split for evaluation, when prepared, is a shard folder of its own in OUT/valid (same
tokenizer; meta.json "split": "valid"), named in the main meta.json under "valid_split".

`ShardWriter` appends chunks and only keeps running counts in memory (the offsets go to side
files that are joined into index.idx at the end), so writing streams; `append_folder` appends a
whole folder (the merge of `prepare --part` folders). `Shards` opens a folder
read-only; pickling it sends only the path, so each DataLoader worker maps the files itself.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from spanbert_ds.errors import UserError

FORMAT_VERSION = 1
VALID_FOLDER = "valid"
FILES = ("meta.json", "tokenizer.json", "tokens.bin", "word_starts.bin", "index.idx")
REQUIRED_META = ("tokenizer_kind", "tokenizer_sha256", "vocab_size", "lowercase", "cls_id", "sep_id", "mask_id",
                 "pad_id", "unk_id", "special_ids", "token_dtype", "n_tokens", "n_documents", "n_sentences")


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


class ShardWriter:
    """Append tokenized documents to a (temporary) shard folder; `close(meta)` finishes it."""

    def __init__(self, folder, vocab_size):
        self.folder = Path(folder)
        self.dtype = token_dtype(vocab_size)
        self.tokens = open(self.folder / "tokens.bin", "wb")
        self.word_starts = open(self.folder / "word_starts.bin", "wb")
        self.doc_offsets = open(self.folder / "doc_offsets.tmp", "wb")
        self.sent_offsets = open(self.folder / "sent_offsets.tmp", "wb")
        for f in (self.doc_offsets, self.sent_offsets):
            f.write(np.zeros(1, np.int64).tobytes())
        self.n_tokens = self.n_documents = self.n_sentences = 0
        self.last_doc_end = 0
        self.max_id = -1

    def append(self, ids, word_starts, sent_lengths, doc_ends):
        """ids/word_starts: [n] tokens; sent_lengths: the token counts (> 0) of their sentences; doc_ends:
        the positions in ids (non-decreasing, 1..n) where documents end. A document may go on over several
        appends, and one ending where the last one did (no tokens) is dropped."""
        ids = np.asarray(ids, self.dtype)
        self.tokens.write(ids.tobytes())
        if len(ids):
            self.max_id = max(self.max_id, int(ids.max()))
        self.word_starts.write(np.asarray(word_starts, np.uint8).tobytes())
        self.sent_offsets.write((self.n_tokens + np.cumsum(sent_lengths, dtype=np.int64)).tobytes())
        ends = np.unique(self.n_tokens + np.asarray(doc_ends, np.int64))
        ends = ends[ends > self.last_doc_end]
        self.doc_offsets.write(ends.tobytes())
        self.n_tokens += int(len(ids))
        self.n_sentences += len(sent_lengths)
        self.n_documents += len(ends)
        if len(ends):
            self.last_doc_end = int(ends[-1])

    def append_folder(self, folder):
        """Append a whole shard folder that a ShardWriter of this vocabulary wrote (a `prepare --part`), as if
        its appends had been made here: its files are copied, its offsets shifted. Its documents start
        after this writer's last one ended (a part holds whole documents)."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if meta["token_dtype"] != np.dtype(self.dtype).name:
            raise UserError(f"{folder} holds {meta['token_dtype']} token ids, not {np.dtype(self.dtype).name}; "
                            "prepare every part with the same --tokenizer")
        for name, out in (("tokens.bin", self.tokens), ("word_starts.bin", self.word_starts)):
            with open(folder / name, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
        n_documents, n_sentences = meta["n_documents"], meta["n_sentences"]
        if n_documents:
            index = np.memmap(folder / "index.idx", dtype="<i8", mode="r")
            block = 1 << 20
            for offsets, out in ((index[3:3 + n_documents], self.doc_offsets),
                                 (index[4 + n_documents:4 + n_documents + n_sentences], self.sent_offsets)):
                for i in range(0, len(offsets), block):  # offsets after the leading 0, shifted; a block at a time
                    out.write((offsets[i:i + block] + self.n_tokens).astype("<i8").tobytes())
            del index
            self.last_doc_end = self.n_tokens + meta["n_tokens"]
        self.n_tokens += meta["n_tokens"]
        self.n_documents += n_documents
        self.n_sentences += n_sentences
        self.max_id = max(self.max_id, meta.get("max_id", -1))

    def close(self, meta):
        if self.n_tokens > self.last_doc_end:  # a document left open ends with the corpus
            self.append([], [], [], [0])
        for f in (self.tokens, self.word_starts, self.doc_offsets, self.sent_offsets):
            f.close()
        with open(self.folder / "index.idx", "wb") as out:
            out.write(np.array([self.n_documents, self.n_sentences], np.int64).tobytes())
            for name in ("doc_offsets.tmp", "sent_offsets.tmp"):
                with open(self.folder / name, "rb") as f:
                    shutil.copyfileobj(f, out)
                os.remove(self.folder / name)
        meta = {"format_version": FORMAT_VERSION, **meta, "token_dtype": np.dtype(self.dtype).name,
                "n_tokens": self.n_tokens, "n_documents": self.n_documents, "n_sentences": self.n_sentences,
                "max_id": self.max_id}
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    def abort(self):
        for f in (self.tokens, self.word_starts, self.doc_offsets, self.sent_offsets):
            f.close()


class Shards:
    """A shard folder opened read-only: `.tokens`, `.word_starts`, `.doc_offsets`, `.sent_offsets`, `.meta`."""

    def __init__(self, path, check_ids=False):
        """check_ids: confirm that no id reaches vocab_size, as training does at start: from meta.json's
        max_id, which prepare records (its range is checked at every load, and the file sizes match the
        counts), so no token is read; only a folder from before max_id was recorded is read through once.
        Ids changed in tokens.bin after prepare are caught where a batch reads them (PackedSamples.batch),
        or by a full pass, `check_ids(full=True)`."""
        self.path = Path(path)
        if not self.path.is_dir():
            what = "is a file (a corpus?)" if self.path.exists() else "does not exist"
            raise UserError(f"shard folder {self.path} {what}; make shards with "
                            f"`spanbert-ds prepare CORPUS SHARD_FOLDER` and pass that folder")
        if (self.path / "run_config.json").is_file():
            raise UserError(f"{self.path} is a training run's folder, not a shard folder; pass the shards it was "
                            f"trained on (its run_config.json names them under args.data)")
        for name in FILES:
            if not (self.path / name).is_file():
                raise UserError(f"shard folder {self.path} has no {name}; "
                                f"re-create it with `spanbert-ds prepare CORPUS {self.path} --overwrite`")
        try:
            self._meta_bytes = (self.path / "meta.json").read_bytes()
            self.meta = json.loads(self._meta_bytes)
        except ValueError as e:
            raise UserError(f"{self.path / 'meta.json'} is not valid JSON ({e}); re-create the folder "
                            f"with `spanbert-ds prepare ... --overwrite`") from None
        version = self.meta.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(f"{self.path} has shard format_version {version!r}, this code reads "
                            f"{FORMAT_VERSION}; re-create it with `spanbert-ds prepare ... --overwrite`")
        self._check_meta()
        m = self.meta
        dtype = np.dtype(m["token_dtype"])
        n, n_docs, n_sents = m["n_tokens"], m["n_documents"], m["n_sentences"]
        self._check_size("tokens.bin", n * dtype.itemsize)
        self._check_size("word_starts.bin", n)
        self._check_size("index.idx", 8 * (2 + n_docs + 1 + n_sents + 1))
        # np.memmap refuses empty files; an empty corpus never gets this far (prepare rejects it).
        self.tokens = np.memmap(self.path / "tokens.bin", dtype=dtype, mode="r", shape=(n,))
        self.word_starts = np.memmap(self.path / "word_starts.bin", dtype=np.uint8, mode="r", shape=(n,))
        index = np.memmap(self.path / "index.idx", dtype="<i8", mode="r")
        if index[0] != n_docs or index[1] != n_sents:
            raise UserError(f"{self.path / 'index.idx'} holds {index[0]} documents / {index[1]} sentences but "
                            f"meta.json says {n_docs} / {n_sents}; re-create the folder with `prepare --overwrite`")
        self.doc_offsets = index[2:3 + n_docs]
        self.sent_offsets = index[3 + n_docs:]
        for name, offsets in (("document", self.doc_offsets), ("sentence", self.sent_offsets)):
            if offsets[0] != 0 or offsets[-1] != n:  # the ends only: reading every offset costs a pass
                raise UserError(f"{self.path / 'index.idx'} is damaged: its {name} offsets run from {offsets[0]} to "
                                f"{offsets[-1]}, not from 0 to the {n} tokens; re-create the folder with "
                                "`spanbert-ds prepare ... --overwrite`")
        if check_ids:
            self.check_ids()

    def _check_meta(self):
        """Types and ranges of meta.json's values, so a hand-edited file fails here and not at step 0."""
        m, where = self.meta, self.path / "meta.json"
        redo = "re-create the folder with `spanbert-ds prepare ... --overwrite`"
        missing = [k for k in REQUIRED_META if k not in m]
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}; {redo}")

        def whole(value):
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        for key in ("vocab_size", "n_tokens", "n_documents", "n_sentences", "cls_id", "sep_id", "mask_id", "pad_id",
                    "unk_id"):
            if not whole(m[key]):
                raise UserError(f"{where}: {key} must be a whole number of 0 or more, got {m[key]!r}; {redo}")
        if not (isinstance(m["special_ids"], list) and all(whole(i) for i in m["special_ids"])):
            raise UserError(f"{where}: special_ids must be a list of token ids, got {m['special_ids']!r}; {redo}")
        ids = {k: m[k] for k in ("cls_id", "sep_id", "mask_id", "pad_id", "unk_id")}
        too_big = {k: v for k, v in ids.items() if v >= m["vocab_size"]}
        too_big.update({"special_ids": i for i in m["special_ids"] if i >= m["vocab_size"]})
        if too_big:
            raise UserError(f"{where}: {', '.join(f'{k} {v}' for k, v in too_big.items())} not below vocab_size "
                            f"{m['vocab_size']}; {redo}")
        if m["token_dtype"] not in ("uint16", "uint32"):
            raise UserError(f"{where}: token_dtype must be uint16 or uint32, got {m['token_dtype']!r}; {redo}")
        if "max_id" in m and not (isinstance(m["max_id"], int) and -1 <= m["max_id"] < m["vocab_size"]):
            raise UserError(f"{where}: max_id {m['max_id']!r} is not below vocab_size {m['vocab_size']} (the tokens "
                            f"hold ids the vocabulary does not have); {redo}")

    def check_ids(self, full=False):
        """Every id in tokens.bin below vocab_size. Where prepare recorded max_id (checked against vocab_size
        at load) that record is the check, unless `full`: then every token is read once (a vectorised max)
        and must also match max_id."""
        if "max_id" in self.meta and not full:
            return
        largest = int(self.tokens.max()) if len(self.tokens) else -1  # one pass, vectorised
        recorded = self.meta.get("max_id", largest)
        if largest >= self.vocab_size:
            said = f"vocab_size {self.vocab_size}"
        elif largest != recorded:
            said = f"max_id {recorded}"
        else:
            return
        raise UserError(f"{self.path / 'tokens.bin'} holds token id {largest}, but meta.json says {said}; the "
                        "folder was changed after prepare: re-create it with `spanbert-ds prepare ... --overwrite`")

    def fingerprint(self):
        """What identifies this folder's content without reading it: meta.json's bytes (tokenizer hash,
        counts, max_id) and the size and modification time of each data file. Keys the start-up cache."""
        h = hashlib.sha256(self._meta_bytes)
        for name in ("tokens.bin", "word_starts.bin", "index.idx"):
            st = (self.path / name).stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()

    @property
    def valid(self):
        """The held-out split (a Shards), or None when the folder was prepared without one."""
        if "valid_split" not in self.meta:
            return None
        valid = Shards(self.path / self.meta["valid_split"].get("folder", VALID_FOLDER))
        if valid.meta["tokenizer_sha256"] != self.meta["tokenizer_sha256"]:
            raise UserError(f"{valid.path} was tokenized with another tokenizer than {self.path}; re-create both with "
                            "`spanbert-ds prepare ... --overwrite`")
        return valid

    def _check_size(self, name, expected):
        actual = (self.path / name).stat().st_size
        if actual != expected:
            raise UserError(f"{self.path / name} is {actual} bytes, meta.json implies {expected} (truncated or "
                            f"from another run); re-create the folder with `spanbert-ds prepare ... --overwrite`")

    def __len__(self):
        return self.meta["n_documents"]

    def document(self, i):
        """Token ids of document i (a read-only view into the memmap)."""
        return self.tokens[self.doc_offsets[i]:self.doc_offsets[i + 1]]

    def tokenizer(self):
        from tokenizers import Tokenizer
        return Tokenizer.from_file(str(self.path / "tokenizer.json"))

    def doc_sentence_index(self):
        """int64 [n_documents + 1]: document i holds sentences doc_sentence_index[i]:doc_sentence_index[i+1]."""
        return np.searchsorted(self.sent_offsets, self.doc_offsets).astype(np.int64)

    # Pickle the path only: a memmap pickles as a full in-memory copy of its data.
    def __getstate__(self):
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self):
        m = self.meta
        held_out = ""
        if "valid_split" in m:
            held_out = f"; held out in {self.meta['valid_split'].get('folder', VALID_FOLDER)}/: {self.valid!r}"
        return (f"Shards({str(self.path)!r}: {m['n_documents']} documents, {m['n_sentences']} sentences, "
                f"{m['n_tokens']} tokens, {m['tokenizer_kind']} vocab {m['vocab_size']}{held_out})")

    vocab_size = property(lambda self: self.meta["vocab_size"])
    cls_id = property(lambda self: self.meta["cls_id"])
    sep_id = property(lambda self: self.meta["sep_id"])
    mask_id = property(lambda self: self.meta["mask_id"])
    pad_id = property(lambda self: self.meta["pad_id"])
    unk_id = property(lambda self: self.meta["unk_id"])
    special_ids = property(lambda self: list(self.meta["special_ids"]))
    lowercase = property(lambda self: self.meta["lowercase"])
    n_tokens = property(lambda self: self.meta["n_tokens"])


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
