"""Read a text corpus as a stream of documents, each a list of sentences.

Inputs (`Corpus(source)`), recognised by their content (the first bytes, then the first non-empty
line), never by their name alone:
- plain text: documents separated by blank lines, one sentence (or paragraph) per line;
- JSON lines (any name: `.jsonl`, `.json`, WikiExtractor's `--json` output `AA/wiki_00`): one JSON
  object per line, whose field `json_key` (`--json-key`, default `text`) is one document; the
  document's non-empty lines are its sentences and the other fields are ignored. A file named
  `.json`/`.jsonl`/`.ndjson` must be JSON lines; a pretty-printed JSON document or a JSON array is
  refused (convert it: `jq -c '.[]' data.json > data.jsonl`);
- WikiExtractor's default output: `<doc id=... url=... title=...>` ... `</doc>` elements, each one
  document. WikiExtractor writes the title again as the first line of the text; that line is dropped
  (when it equals the title attribute), so that both WikiExtractor outputs of one dump give the same
  documents (the `--json` text has no title line either);
- any of those compressed with gzip, bzip2, xz or zstandard (`.gz .bz2 .xz .zst`, recognised by
  their magic numbers), decompressed as a stream: nothing is unpacked to disk;
- Parquet files (`PAR1`) and Arrow IPC files and streams (a Hugging Face `datasets` cache file), with
  a string column `json_key`: each row is one document, split into lines as above; read one record
  batch at a time;
- a Hugging Face datasets folder written by `save_to_disk` (`state.json`, `dataset_info.json` and
  `data-*.arrow`): its Arrow files in the order state.json lists them. A `DatasetDict` folder (with
  `dataset_dict.json`) is refused: pass one split's folder;
- a folder of any of these, mixed (every non-hidden regular file below it, in sorted path order; a
  datasets folder inside it is read as one), or a glob (`'data/*.jsonl.gz'`, quoted so that the shell
  leaves it to us; `**` matches folders at any depth);
- `python-docs`: the built-in corpus, CPython's `pydoc_data.topics` plus the docstrings of the
  standard library, read statically with `ast` from the stdlib sources so that no module is
  imported (importing `antigravity` opens a browser, `this` prints, tkinter needs a display).

Anything else is refused when the Corpus is made (each file's first bytes and first line are looked at
then), before anything is tokenized or written, in one line naming what its first bytes are (an ELF
binary, a PDF, a zip or tar archive, UTF-16 text, NUL bytes, ...); so is an input that is not a regular
file or folder (a FIFO, a device), which prepare could not read twice.
Zstandard needs the `zstandard` package and Parquet/Arrow `pyarrow` (`pip install 'spanbert_ds[formats]'`).

Files are read line by line in binary mode so that a single huge line is caught at
`max_line_bytes` instead of being loaded whole, and decoding errors can name the line and
byte offset (of the decompressed text, for a compressed file); a truncated or corrupt compressed file
is named with the offset where its text ends. With `encoding_errors` "replace" or "skip" a line that
is not UTF-8 (or holds a NUL byte) has its bad bytes replaced with U+FFFD, or is dropped; `bad_lines`
counts them in the last pass and `encoding_note()` says so in one line. `pieces()` streams: a document of any length
(a text file without blank lines is one document) comes in pieces of about a megabyte, so nothing
grows with the corpus.

Sentences (`split_sentences`, prepare's `--split-sentences`): by default a line is taken as one
sentence, so a JSON lines record's or a Wikipedia paragraph's line is one "sentence". With
`split_sentences=True` every line is split into sentences by `SentenceSplitter` (blingfire's
text_to_sentences: a finite-state model shipped in its wheel, nothing downloaded) after it is read, so
errors still name the file, line and byte offset, and `pieces()` still streams. benchmarks/sentences.py
compared it with pysbd and syntok: on CoNLL-2003's Reuters news it finds 97% of the sentence ends after
. ! ? (pysbd 89%, syntok 97%) at precision 0.84 (pysbd 0.96, syntok 0.83), 40x faster than pysbd and 8x
faster than syntok (about 6 MB a CPU second, a paragraph a call). The split is a function
of the line alone: `pieces(split=False)` gives the lines as read to a consumer that splits them itself
with `corpus.splitter` (prepare's workers, where it costs no serial time) and gets the same sentences.

What the packing modes (data/packing.py) do with a long paragraph when the lines are not split (a
paragraph is then one sentence):
- doc: a block holds whole sentences of one document, so it holds whole paragraphs; a paragraph longer
  than the block (max_seq_len - 2 tokens) is cut at word starts (not at its sentence ends) into pieces
  that fit, the last piece starting a block of its own;
- full: blocks run across documents and are cut at word starts; sentences play no part, so splitting
  changes nothing but the shard's sentence offsets;
- pair: A ends at a random sentence boundary inside its region, so it can only end between two
  paragraphs; a region inside one long paragraph (no boundary in it) is split at a word start near its
  middle, mid-sentence; a random-next B starts at a random paragraph of another document.
"""

import ast
import bz2
import codecs
import contextlib
import functools
import glob
import gzip
import html
import importlib.metadata
import inspect
import io
import json
import lzma
import os
import re
import stat
import sysconfig
import zlib
from pathlib import Path

from spanbert_ds.errors import UserError

BUILTIN = "python-docs"
DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_PIECE_BYTES = 1 << 20
DEFAULT_JSON_KEY = "text"
ENCODING_ERRORS = ("strict", "replace", "skip")
_END = None  # in a sentence stream: the document ends here
_SNIFF_BYTES = 4096
_PROGRESS_EVERY = 1 << 20  # bytes between progress() calls
_DECOMPRESS_BUFFER = 1 << 18
_BATCH_ROWS = 1024  # Parquet/Arrow rows converted to Python strings at a time
INSTALL_FORMATS = "pip install 'spanbert_ds[formats]'"
SPLITTER = "blingfire"  # the sentence splitter of --split-sentences

# Parts of the standard library that are tests, GUIs, vendored third-party code or build files:
# their docstrings are not the prose we want, and some do not parse on every Python.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
                "lib2to3", "ensurepip", "__pycache__", "__phello__", "pydoc_data"}

# Magic numbers, tried in order on a file's first bytes.
_COMPRESSIONS = [(b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")]
_TABLES = [(b"PAR1", "parquet"), (b"ARROW1", "arrow-file"), (b"\xff\xff\xff\xff", "arrow-stream")]
_NOT_TEXT = [
    (b"\x7fELF", "an ELF binary"),
    (b"%PDF", "a PDF document; extract its text first, e.g. with pdftotext"),
    (b"PK\x03\x04", "a zip archive (or .docx, .epub, .jar); unpack it first"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive; unpack it first"),
    (b"Rar!\x1a\x07", "a RAR archive; unpack it first"),
    (b"\x04\x22\x4d\x18", "an LZ4 frame; decompress it first with lz4 -d, or recompress it as .zst or .gz"),
    (b"\x1f\x9d", "a .Z file; decompress it first with uncompress, or recompress it as .gz"),
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x93NUMPY", "a NumPy array"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O binary"), (b"\xca\xfe\xba\xbe", "a Mach-O or Java class file"),
    (b"\x00asm", "a WebAssembly module"),
    (b"\xff\xfe\x00\x00", "UTF-32 text; re-encode it as UTF-8: iconv -f UTF-32 -t UTF-8"),
    (b"\xff\xfe", "UTF-16 text; re-encode it as UTF-8: iconv -f UTF-16 -t UTF-8"),
    (b"\xfe\xff", "UTF-16 text; re-encode it as UTF-8: iconv -f UTF-16 -t UTF-8"),
]
_FORMATS = ("give plain text, JSON lines, WikiExtractor output, Parquet or a datasets folder "
            "(or .gz .bz2 .xz .zst of them)")
# Bytes that do not occur in text (tab, newlines, form feed and ESC do).
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\v\f\r\x1b") + b"\x7f"
_DOC_OPEN = re.compile(r"<doc(\s[^>]*)?>")
_TITLE = re.compile(r"""\stitle=(?:"([^"]*)"|'([^']*)')""")
_JSON_NAMES = (".jsonl", ".json", ".ndjson")


class Corpus:
    """A corpus source; iterate `documents()` (lists of sentence strings) any number of times."""

    def __init__(self, source, encoding_errors="strict", max_line_bytes=DEFAULT_MAX_LINE_BYTES,
                 json_key=DEFAULT_JSON_KEY, split_sentences=False):
        if encoding_errors not in ENCODING_ERRORS:
            raise UserError(f"--encoding-errors {encoding_errors!r} is not one of: {', '.join(ENCODING_ERRORS)}")
        if not json_key:
            raise UserError("--json-key must name a field, e.g. --json-key text")
        self.source = str(source)
        self.encoding_errors = encoding_errors
        self.max_line_bytes = int(max_line_bytes)
        self.json_key = json_key
        self.splitter = SentenceSplitter() if split_sentences else None  # refused now when not installed
        self.bad_lines, self._first_bad = 0, None
        self.files, self._kinds = [], {}
        if self.source == BUILTIN:
            return
        path = Path(self.source)
        if path.exists():
            mode = path.stat().st_mode
            if stat.S_ISDIR(mode):
                self.files = _folder_files(path)
                if not self.files:
                    raise UserError(f"input folder {self.source} contains no files; put text, JSON lines or "
                                    "Parquet files in it")
            elif stat.S_ISREG(mode):
                self.files = [path]
            else:
                raise UserError(f"input {self.source} is {_file_type(mode)}, not a regular file or folder; write the "
                                "corpus to a file first (prepare reads it twice: to train the tokenizer and to encode)")
        elif glob.has_magic(self.source):
            files = {}  # in order, once each: "data/**" matches folders and the files in them
            for match in sorted(glob.glob(self.source, recursive=True)):
                p = Path(match)
                files.update(dict.fromkeys(_folder_files(p) if p.is_dir() else [p] if p.is_file() else []))
            self.files = list(files)
            if not self.files:
                raise UserError(f"input {self.source} matches no file; check the pattern (quote it so that the "
                                "shell does not expand it)")
        else:
            raise UserError(f"input {self.source} does not exist; pass a text/JSONL/Parquet file, a folder of them, "
                            f"a glob, or {BUILTIN!r} for the built-in corpus")
        for f in self.files:  # every file is looked at now, so that a bad one is refused before any work
            self._kinds[f] = self._sniff(f)

    @property
    def total_bytes(self):
        """Bytes the reader will consume (for a progress bar): the files' sizes, compressed or not."""
        if self.source == BUILTIN:
            return sum(len(s.encode()) + 1 for doc in python_docs() for s in doc)
        return sum(f.stat().st_size for f in self.files)

    def kind(self, path):
        """What `path` (one of `files`) was recognised as: e.g. "text", "jsonl", "wikiextractor",
        "parquet", "arrow-stream", with "+gzip" (or bzip2, xz, zstd) when it is compressed."""
        compression, kind = self._kinds[Path(path)]
        return kind + (f"+{compression}" if compression else "")

    def pieces(self, progress=None, max_bytes=DEFAULT_PIECE_BYTES, split=True):
        """Yield (sentences, ends_document): every document in order, as one piece or, past `max_bytes` of
        text, several, the last with ends_document True (it may hold no sentence). Sentences are non-empty
        and stripped; a document has at least one. `progress(n_bytes)` is called as bytes are consumed.
        split=False: the lines as read, not split by `self.splitter` (for a consumer that splits them)."""
        piece, size = [], 0
        stream = self._stream(progress)
        if split and self.splitter is not None:
            stream = _split(stream, self.splitter)
        for sentence in stream:
            if sentence is _END:
                yield piece, True
                piece, size = [], 0
                continue
            piece.append(sentence)
            size += len(sentence)
            if size >= max_bytes:
                yield piece, False
                piece, size = [], 0

    def documents(self, progress=None):
        """Yield each document whole, as a list of sentences (for small corpora and tests; `pieces` streams)."""
        doc = []
        for piece, ends in self.pieces(progress):
            doc += piece
            if ends:
                yield doc
                doc = []

    def sentences(self):
        """Every sentence of every document, in order (what tokenizer training reads)."""
        for piece, _ in self.pieces():
            yield from piece

    def encoding_note(self):
        """One line on the lines that --encoding-errors replace/skip changed in the last pass, or None."""
        if not self.bad_lines:
            return None
        done = "replaced the bad bytes of" if self.encoding_errors == "replace" else "skipped"
        path, number = self._first_bad
        return (f"{self.source}: --encoding-errors {self.encoding_errors} {done} {self.bad_lines} "
                f"line{'s' if self.bad_lines > 1 else ''} that {'are' if self.bad_lines > 1 else 'is'} not valid "
                f"UTF-8 (the first: {path} line {number})")

    def _stream(self, progress):
        """Sentences, with _END after each document's last one."""
        self.bad_lines, self._first_bad = 0, None
        if self.source == BUILTIN:
            for doc in python_docs():
                if progress:
                    progress(sum(len(s.encode()) + 1 for s in doc))
                yield from doc
                yield _END
            return
        for path in self.files:
            compression, kind = self._kinds[path]
            if kind in _TABLE_KINDS:
                yield from self._table_stream(path, kind, progress)
                continue
            with _open(path, compression) as (stream, raw):
                yield from _LINE_READERS[kind](path, self._lines(path, compression, stream, raw, progress),
                                               self.json_key)

    def _lines(self, path, compression, stream, raw, progress):
        """Yield (line_number, byte_offset, decoded line without its newline, or None for a line that
        --encoding-errors skip drops) with the size and UTF-8 checks."""
        limit = self.max_line_bytes
        of = f" of its {compression}-decompressed text" if compression else ""
        offset, number, reported, next_report = 0, 0, 0, _PROGRESS_EVERY
        while True:
            try:
                line = stream.readline(limit + 2)  # room for "\r\n" after a line of exactly `limit` bytes
            except _read_errors() as e:
                raise _read_failure(path, compression, offset, number, e) from None
            if not line:
                if progress:
                    progress(raw.tell() - reported)
                return
            number += 1
            content = line.rstrip(b"\r\n")
            if len(content) > limit:
                raise UserError(f"{path}: line {number} (byte offset {offset}{of}) is longer than "
                                f"--max-line-bytes {limit}; split it into lines or raise the limit")
            bad = None
            if b"\0" in content:  # binary data after text: the first bytes looked like text
                bad = content.index(b"\0"), "holds a NUL byte, which is not text"
                content = content.replace(b"\0", b"\xff")  # replaced, or the line skipped, like a bad byte
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = bad or (e.start, f"is not valid UTF-8 ({e.reason})")
            if bad:
                if self.encoding_errors == "strict":
                    raise UserError(f"{path}: line {number} (byte offset {offset + bad[0]}{of}) {bad[1]}; re-encode "
                                    "the file as UTF-8 or pass --encoding-errors replace (or skip)")
                self.bad_lines += 1
                self._first_bad = self._first_bad or (path, number)
                text = None if self.encoding_errors == "skip" else content.decode("utf-8", "replace")
            if number == 1 and text and text[0] == "\ufeff":
                text = text[1:]  # a UTF-8 byte order mark
            yield number, offset, text
            offset += len(line)
            if progress and offset >= next_report:
                position = raw.tell()
                progress(position - reported)
                reported, next_report = position, offset + _PROGRESS_EVERY

    def _table_stream(self, path, kind, progress):
        """Documents of a Parquet or Arrow file: one per row of the column `json_key`."""
        row = 0
        for values, consumed in _table_batches(path, kind, self.json_key):
            for value in values:
                row += 1
                if value is None:
                    continue
                doc = _lines_of(value)
                for s in doc:
                    if len(s) * 4 > self.max_line_bytes and len(s.encode()) > self.max_line_bytes:
                        raise UserError(f"{path}: row {row}: a line of column \"{self.json_key}\" is longer than "
                                        f"--max-line-bytes {self.max_line_bytes}; split it into lines or raise the "
                                        "limit")
                if doc:
                    yield from doc
                    yield _END
            if progress:
                progress(consumed)

    def _sniff(self, path):
        """(compression or None, kind) of one file; refuses what is not one of the formats, in one line."""
        try:
            with open(path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
        except OSError as e:
            raise UserError(f"{path}: cannot read it ({e.strerror or e}); check that it exists and is readable"
                            ) from None
        compression = next((name for magic, name in _COMPRESSIONS if head.startswith(magic)), None)
        table = next((name for magic, name in _TABLES if head.startswith(magic)), None)
        if table:
            _check_column(path, table, self.json_key)
            return None, table
        if compression:
            if compression == "zstd":
                _zstandard(path)
            with _open(path, compression) as (stream, _):
                try:
                    head = stream.read(_SNIFF_BYTES)
                except _read_errors() as e:
                    raise _read_failure(path, compression, 0, 0, e) from None
            table = next((name for magic, name in _TABLES if head.startswith(magic)), None)
            if table or any(head.startswith(magic) for magic, _ in _COMPRESSIONS):
                inner = table or next(name for magic, name in _COMPRESSIONS if head.startswith(magic))
                raise UserError(f"{path}: a {inner} file inside {compression} compression; decompress the outer "
                                f"layer first")
        _refuse_binary(path, head, compression)
        return compression, self._text_kind(path, compression)

    def _text_kind(self, path, compression):
        """"text", "jsonl" or "wikiextractor", from the first non-empty line."""
        limit = self.max_line_bytes
        first = number = ""
        with _open(path, compression) as (stream, _):
            try:
                for number, line in enumerate(iter(lambda: stream.readline(limit + 2), b""), 1):
                    first = line[:limit + 2].decode("utf-8", "replace").lstrip("\ufeff").strip()
                    if first:
                        break
            except _read_errors() as e:
                raise _read_failure(path, compression, 0, 0, e) from None
        name = path.name
        for suffix in (".gz", ".bz2", ".xz", ".zst", ".zstd"):
            name = name.removesuffix(suffix)
        named_json = name.endswith(_JSON_NAMES)
        if _DOC_OPEN.fullmatch(first):
            return "wikiextractor"
        if first in ("{", "["):
            raise UserError(f"{path}: a JSON document spread over lines (line {number} is {first!r}), not JSON lines; "
                            "write one object per line (e.g. jq -c '.[]' FILE > FILE.jsonl)")
        if first.startswith("["):
            if named_json:
                raise UserError(f"{path}: a JSON array, not JSON lines; write one object per line "
                                "(e.g. jq -c '.[]' FILE > FILE.jsonl)")
            return "text"
        if first.startswith("{") and first.endswith("}"):
            try:
                record = json.loads(first)
            except json.JSONDecodeError:
                return "jsonl"  # the reader names the line
            if isinstance(record, dict) and not isinstance(record.get(self.json_key), str):
                raise _no_key(path, number, self.json_key, record)
            return "jsonl"
        return "jsonl" if named_json and first else "text"


class SentenceSplitter:
    """A line (a paragraph, a record's text) -> its sentences, stripped and non-empty, with blingfire.

    blingfire returns the text with a newline put in at each sentence end (and a newline in the text,
    which a line does not hold, turned into a space), so the sentences are the line's own characters.
    Picklable (it imports blingfire again where it is unpickled: in prepare's workers)."""

    name = SPLITTER

    def __init__(self):
        try:
            import blingfire
        except ImportError:
            raise UserError(f"--split-sentences needs the {SPLITTER} package, which is not installed; "
                            f"{INSTALL_FORMATS} (or pip install {SPLITTER})") from None
        self._split = blingfire.text_to_sentences
        self.version = importlib.metadata.version(SPLITTER)

    def __reduce__(self):
        return SentenceSplitter, ()

    def meta(self):
        """What meta.json records (and merge compares)."""
        return {"splitter": self.name, "version": self.version}

    def __call__(self, line):
        out = self._split(line)
        if not out:  # blingfire's error value (its output buffer overflowed): keep the line whole
            return [line] if line.strip() else []
        return [s for s in map(str.strip, out.split("\n")) if s]


def _split(stream, splitter):
    """A sentence stream with each line split by `splitter`; _END passes through."""
    for line in stream:
        if line is _END:
            yield line
        else:
            yield from splitter(line)


def _file_type(mode):
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def _folder_files(folder):
    """Every non-hidden regular file below `folder` in sorted path order (a datasets folder: its data files
    in its own order); symbolic links to files are followed, to folders not."""
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise UserError(f"{folder} is a Hugging Face DatasetDict with the splits {', '.join(splits) or '(none)'}; "
                        f"pass one split's folder, e.g. {folder / (splits[0] if splits else 'train')} (and another "
                        "as --valid)")
    if (folder / "state.json").is_file() and any(folder.glob("*.arrow")):
        return _dataset_files(folder)
    files = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            files += _folder_files(Path(entry.path))
        elif entry.is_file():
            files.append(Path(entry.path))
    return files


def _dataset_files(folder):
    """The Arrow files of a `datasets` save_to_disk folder, in the order its state.json gives."""
    try:
        names = [f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder / 'state.json'} does not list the dataset's files ({type(e).__name__}: {e}); "
                        "save the dataset again with save_to_disk") from None
    files = [folder / name for name in names]
    for f in files:
        if not f.is_file():
            raise UserError(f"{folder / 'state.json'} lists {f.name}, which is not in {folder}; save the dataset "
                            "again with save_to_disk")
    return files


def _refuse_binary(path, head, compression):
    """Refuse a file whose first bytes are not text, naming them."""
    inside = f" (inside its {compression} compression)" if compression else ""
    what = next((what for magic, what in _NOT_TEXT if head.startswith(magic)), None)
    if what is None and head[257:262] == b"ustar":
        what = "a tar archive; unpack it first: tar -xf FILE"
    if what is None and b"\x00" in head:
        what = f"NUL bytes in its first {len(head)} bytes: a binary file"
    if what is None and len(head) >= 64:
        decoded = codecs.getincrementaldecoder("utf-8")("replace").decode(head)  # leaves out a cut last character
        bad = decoded.count("\ufffd") + sum(head.count(c) for c in _CONTROL)
        if bad > 0.3 * len(decoded):
            what = f"{100 * bad // len(decoded)}% of its first {len(head)} bytes are neither UTF-8 text nor whitespace"
    if what:
        raise UserError(f"{path}: not text{inside}: starts with bytes {head[:8].hex(' ')} ({what})"
                        + ("" if ";" in what else f"; {_FORMATS}"))


def _no_key(path, number, key, record):
    fields = ", ".join(map(str, list(record)[:8])) or "none"
    return UserError(f"{path}: line {number} has no string field \"{key}\" (its fields: {fields}); "
                     f"pass --json-key with the field that holds the text")


def _lines_of(text):
    return [s.strip() for s in text.splitlines() if s.strip()]


def _text_stream(path, lines, json_key):
    in_document = False
    for _, _, line in lines:
        if line is None:
            continue
        line = line.strip()
        if line:
            in_document = True
            yield line
        elif in_document:
            in_document = False
            yield _END
    if in_document:
        yield _END


def _jsonl_stream(path, lines, json_key):
    for number, offset, line in lines:
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {number} (byte offset {offset}) is not valid JSON ({e.msg} at column "
                            f"{e.colno}); write one JSON object per line") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object; each line "
                            f"must be an object like {{\"{json_key}\": \"...\"}}")
        if not isinstance(record.get(json_key), str):
            raise _no_key(path, number, json_key, record)
        doc = _lines_of(record[json_key])
        if doc:
            yield from doc
            yield _END


def _wikiextractor_stream(path, lines, json_key):
    """WikiExtractor's default output: each <doc ...> ... </doc> element is one document; the first line
    after the tag repeats the title and is dropped."""
    opened, title, in_doc = 0, None, False
    for number, _, line in lines:
        if line is None:
            continue
        s = line.strip()
        if not in_doc:
            if not s:
                continue
            if not _DOC_OPEN.fullmatch(s):
                raise UserError(f"{path}: line {number} is text outside a <doc ...>...</doc> element "
                                f"({s[:40]!r}); fix the file or extract the dump again")
            match = _TITLE.search(s)
            title = None if match is None else match.group(1) if match.group(1) is not None else match.group(2)
            opened, in_doc, has_text = number, True, False
            continue
        if s == "</doc>":
            if has_text:
                yield _END
            in_doc = False
            continue
        if s.startswith("<doc") and _DOC_OPEN.fullmatch(s):
            raise UserError(f"{path}: line {number} opens a <doc> before the one opened at line {opened} is closed; "
                            "fix the file or extract the dump again")
        if title is not None and s:
            if s in (title, html.unescape(title)):
                title = None
                continue
            title = None
        if s:
            has_text = True
            yield s
    if in_doc:
        raise UserError(f"{path}: the <doc> opened at line {opened} has no </doc>: the file ends first (truncated?); "
                        "extract the dump again")


_LINE_READERS = {"text": _text_stream, "jsonl": _jsonl_stream, "wikiextractor": _wikiextractor_stream}


@contextlib.contextmanager
def _open(path, compression):
    """(decompressed binary stream, raw file) of `path`: the raw file's tell() is the progress."""
    with open(path, "rb") as raw:
        if compression is None:
            yield raw, raw
            return
        # readline() on GzipFile & co. decompresses 8 KiB at a time; a larger buffer reads 2-3x faster.
        opener = {"gzip": lambda: _Read1(gzip.GzipFile(fileobj=raw)), "bzip2": lambda: _Read1(bz2.BZ2File(raw)),
                  "xz": lambda: _Read1(lzma.LZMAFile(raw)), "zstd": lambda: _ZstdReader(raw)}[compression]
        with io.BufferedReader(opener(), _DECOMPRESS_BUFFER) as stream:
            yield stream, raw


class _Read1(io.RawIOBase):
    """GzipFile, BZ2File or LZMAFile as a raw stream that returns what is decompressed so far: their read(n)
    waits for n bytes, so a truncated file would fail before the lines it does hold were read."""

    def __init__(self, f):
        self.f = f

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.f.read1(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _ZstdReader(io.RawIOBase):
    """Zstandard frames, one after another, as a raw stream; EOFError when the file ends inside a frame
    (zstandard's own stream_reader returns a truncated file's text without a word)."""

    def __init__(self, raw):
        self.raw = raw
        self.dctx = _zstandard().ZstdDecompressor(max_window_size=1 << 31)  # files made with zstd --long=31
        self.frame, self.pending, self.at = None, b"", 0

    def readable(self):
        return True

    def readinto(self, buffer):
        while self.at >= len(self.pending):
            data = b""
            if self.frame is not None and self.frame.eof:
                data, self.frame = self.frame.unused_data, None
            if not data:
                data = self.raw.read(_DECOMPRESS_BUFFER)
            if not data:
                if self.frame is not None:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            if self.frame is None:
                self.frame = self.dctx.decompressobj()
            self.pending, self.at = self.frame.decompress(data), 0
        n = min(len(buffer), len(self.pending) - self.at)
        buffer[:n] = self.pending[self.at:self.at + n]
        self.at += n
        return n


def _zstandard(path=None):
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path}: zstandard-compressed, and the zstandard package is not installed; "
                        f"{INSTALL_FORMATS} (or decompress it: zstd -d)") from None
    return zstandard


def _pyarrow(path, what):
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise UserError(f"{path}: {what}, and pyarrow is not installed; {INSTALL_FORMATS}") from None
    return pyarrow


@functools.lru_cache(maxsize=1)
def _read_errors():
    """What reading a (compressed) file raises when the file is cut short, corrupt or unreadable."""
    errors = [EOFError, OSError, zlib.error, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def _read_failure(path, compression, offset, number, error):
    """The one-line UserError for a file that cannot be read (further) at `offset`."""
    where = "before its first line" if not number else \
        f"after line {number} (byte offset {offset}" + (" of its decompressed text)" if compression else ")")
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    if compression and isinstance(error, EOFError):
        return UserError(f"{path}: the {compression} data ends early, {where}: the file is truncated; download or "
                         "copy it again")
    if compression and not (isinstance(error, OSError) and error.errno is not None):
        return UserError(f"{path}: corrupt {compression} data {where} ({reason}); download or copy it again")
    return UserError(f"{path}: cannot read {where} ({reason}); check the file and its disk")


def _check_column(path, kind, key):
    """Refuse a Parquet/Arrow file without a string column `key`, reading only its schema."""
    pa = _pyarrow(path, "a Parquet file" if kind == "parquet" else "an Arrow file")
    try:
        with _open_table(path, kind) as (schema, _):
            pass
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable {kind} file ({e}); write it again") from None
    if key not in schema.names:
        raise UserError(f"{path}: has no column \"{key}\" (its columns: {', '.join(schema.names[:8])}); pass "
                        f"--json-key with the column that holds the text")
    field = schema.field(key).type
    if not (pa.types.is_string(field) or pa.types.is_large_string(field)
            or getattr(pa.types, "is_string_view", lambda t: False)(field)):
        raise UserError(f"{path}: column \"{key}\" holds {field}, not text; pass --json-key with the column that "
                        "holds the text")


@contextlib.contextmanager
def _open_table(path, kind):
    """(schema, batches(key)) of a Parquet or Arrow file; batches yields (record batch, bytes consumed so far)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet":
        with pq.ParquetFile(path, memory_map=True) as f:
            def batches(key):
                rows, size, reported = f.metadata.num_rows, os.path.getsize(path), 0
                done = 0
                for group in range(f.num_row_groups):
                    for batch in f.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=[key]):
                        done += batch.num_rows
                        position = size if done >= rows else size * done // max(rows, 1)
                        yield batch, position - reported
                        reported = position
            yield f.schema_arrow, batches
        return
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source) if kind == "arrow-stream" else pa.ipc.open_file(source)

        def batches(key):
            reported = 0
            it = iter(reader) if kind == "arrow-stream" else (reader.get_batch(i)
                                                              for i in range(reader.num_record_batches))
            for batch in it:
                position = source.tell() if kind == "arrow-stream" else reported
                yield batch.select([key]), position - reported
                reported = position
            yield None, source.size() - reported
        yield reader.schema, batches


def _table_batches(path, kind, key):
    """(values of column `key`, bytes consumed) per record batch."""
    import pyarrow as pa

    row = 0
    try:
        with _open_table(path, kind) as (_, batches):
            for batch, consumed in batches(key):
                values = [] if batch is None else batch.column(0).to_pylist()
                row += len(values)
                yield values, consumed
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: cannot read past row {row} ({e}); the file is truncated or corrupt: write it "
                        "again") from None


_TABLE_KINDS = ("parquet", "arrow-stream", "arrow-file")


@functools.lru_cache(maxsize=1)
def python_docs():
    """The built-in corpus as a tuple of documents (about 2 MB of English), in a fixed order.

    One document per pydoc topic (sorted by name) and per stdlib module with docstrings
    (sorted by path); a sentence is a paragraph with its lines joined.
    """
    from pydoc_data.topics import topics  # a plain dict of strings; importing it has no side effects

    docs = [_paragraphs(topics[name]) for name in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _STDLIB_SKIP or part.startswith(("test", "config-")) for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # a file this Python cannot parse (e.g. a template) has no docstrings for us
        sentences = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    sentences.extend(_paragraphs(inspect.cleandoc(doc)))
        docs.append(sentences)
    return tuple(tuple(doc) for doc in docs if doc)


_RULE = re.compile(r"([-=*~^+#`'\".:_])\1{2,}")


def _paragraphs(text):
    """Split on blank lines; join each paragraph's lines with single spaces."""
    out, current = [], []
    for line in text.splitlines():
        line = line.strip()
        if _RULE.fullmatch(line):
            continue  # reST heading underlines ("*****", "====") are not text
        if line:
            current.append(line)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def source_name(source):
    """A short name for meta.json: the built-in name or the absolute input path."""
    return source if source == BUILTIN else os.path.abspath(source)
