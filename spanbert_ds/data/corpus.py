"""Read a text corpus as a stream of documents, each a list of sentences.

Inputs (`Corpus(source)`):
- a plain-text file: documents separated by blank lines, one sentence (or paragraph) per line;
- a JSONL file (`*.jsonl`): one JSON object per line with a `text` field = one document,
  whose non-empty lines are its sentences;
- a folder of either (every non-hidden file below it, in sorted path order);
- `python-docs`: the built-in corpus, CPython's `pydoc_data.topics` plus the docstrings of the
  standard library, read statically with `ast` from the stdlib sources so that no module is
  imported (importing `antigravity` opens a browser, `this` prints, tkinter needs a display).

Files are read line by line in binary mode so that a single huge line is caught at
`max_line_bytes` instead of being loaded whole, and decoding errors can name the line and
byte offset. `pieces()` streams: a document of any length (a text file without blank lines is
one document) comes in pieces of about a megabyte, so nothing grows with the corpus.
"""

import ast
import functools
import inspect
import json
import os
import re
import sysconfig
from pathlib import Path

from spanbert_ds.errors import UserError

BUILTIN = "python-docs"
DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_PIECE_BYTES = 1 << 20
_END = None  # in a sentence stream: the document ends here

# Parts of the standard library that are tests, GUIs, vendored third-party code or build files:
# their docstrings are not the prose we want, and some do not parse on every Python.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
                "lib2to3", "ensurepip", "__pycache__", "__phello__", "pydoc_data"}


class Corpus:
    """A corpus source; iterate `documents()` (lists of sentence strings) any number of times."""

    def __init__(self, source, encoding_errors="strict", max_line_bytes=DEFAULT_MAX_LINE_BYTES):
        if encoding_errors not in ("strict", "replace"):
            raise UserError(f"--encoding-errors {encoding_errors!r} is not one of: strict, replace")
        self.source = str(source)
        self.encoding_errors = encoding_errors
        self.max_line_bytes = int(max_line_bytes)
        if self.source == BUILTIN:
            self.files = []
            return
        path = Path(self.source)
        if not path.exists():
            raise UserError(f"input {self.source} does not exist; pass a text/JSONL file, a folder of them, "
                            f"or {BUILTIN!r} for the built-in corpus")
        if path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.is_file()
                                and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not self.files:
                raise UserError(f"input folder {self.source} contains no files; put .txt or .jsonl files in it")
        else:
            self.files = [path]

    @property
    def total_bytes(self):
        """Bytes the reader will consume (for a progress bar)."""
        if self.source == BUILTIN:
            return sum(len(s.encode()) + 1 for doc in python_docs() for s in doc)
        return sum(f.stat().st_size for f in self.files)

    def pieces(self, progress=None, max_bytes=DEFAULT_PIECE_BYTES):
        """Yield (sentences, ends_document): every document in order, as one piece or, past `max_bytes` of
        text, several, the last with ends_document True (it may hold no sentence). Sentences are non-empty
        and stripped; a document has at least one. `progress(n_bytes)` is called as bytes are consumed."""
        piece, size = [], 0
        for sentence in self._stream(progress):
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

    def _stream(self, progress):
        """Sentences, with _END after each document's last one."""
        if self.source == BUILTIN:
            for doc in python_docs():
                if progress:
                    progress(sum(len(s.encode()) + 1 for s in doc))
                yield from doc
                yield _END
            return
        for path in self.files:
            reader = _jsonl_stream if path.name.endswith(".jsonl") else _text_stream
            yield from reader(path, self._lines(path, progress))

    def _lines(self, path, progress):
        """Yield (line_number, decoded line without its newline) with the size and UTF-8 checks."""
        limit = self.max_line_bytes
        offset = 0
        with open(path, "rb") as f:
            number = 0
            while True:
                raw = f.readline(limit + 2)  # room for "\r\n" after a line of exactly `limit` bytes
                if not raw:
                    return
                number += 1
                content = raw.rstrip(b"\r\n")
                if len(content) > limit:
                    raise UserError(f"{path}: line {number} (byte offset {offset}) is longer than "
                                    f"--max-line-bytes {limit}; split it into lines or raise the limit")
                try:
                    text = content.decode("utf-8", errors=self.encoding_errors)
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}: line {number} (byte offset {offset + e.start}) is not valid UTF-8 "
                                    f"({e.reason}); re-encode the file as UTF-8 or pass --encoding-errors replace"
                                    ) from None
                offset += len(raw)
                if progress:
                    progress(len(raw))
                yield number, text


def _text_stream(path, lines):
    in_document = False
    for _, line in lines:
        line = line.strip()
        if line:
            in_document = True
            yield line
        elif in_document:
            in_document = False
            yield _END
    if in_document:
        yield _END


def _jsonl_stream(path, lines):
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {number} is not valid JSON ({e.msg} at column {e.colno}); "
                            f"write one JSON object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f"{path}: line {number} has no string field \"text\"; "
                            f"each JSONL line must be an object like {{\"text\": \"...\"}}")
        doc = [s.strip() for s in record["text"].splitlines() if s.strip()]
        if doc:
            yield from doc
            yield _END


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
