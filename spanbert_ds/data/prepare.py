"""`spanbert-ds prepare INPUT OUT`: corpus -> tokenizer -> shard folder (and its held-out split).

Two streaming passes over the corpus: one trains the tokenizer (skipped when one is loaded),
one encodes. The encoding pass reads about `chunk_bytes` of whole documents, encodes all their
sentences with one `encode_batch` call (parallel in Rust, over all cores unless
TOKENIZERS_PARALLELISM=false), and appends the ids to the shard files, so memory holds one chunk
at a time whatever the corpus size. Everything is written to OUT.tmp-<pid> and renamed to OUT
only when complete; on any error the temporary folder is removed.

A held-out split for evaluation goes to OUT/valid, a shard folder of its own with the same
tokenizer: either whole documents of INPUT, each held out with probability --valid-fraction by a
hash of (--seed, document number), or a second corpus (--valid). The tokenizer is trained on the
training documents only.
"""

import itertools
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from spanbert_ds.data import tokenizer as tokenizers_
from spanbert_ds.data.corpus import (BUILTIN, DEFAULT_JSON_KEY, DEFAULT_MAX_LINE_BYTES, ENCODING_ERRORS, Corpus,
                                     source_name)
from spanbert_ds.data.hashing import uniform
from spanbert_ds.data.shards import VALID_FOLDER, ShardWriter, Shards, file_sha256
from spanbert_ds.errors import UserError
from spanbert_ds.folders import (FolderLock, check_creatable, check_replaceable, make_parents, remove_made,
                                 remove_stale_siblings, temporary_sibling)

# Text per encode_batch call. tokenizers' Encoding objects cost ~200 bytes a token (strings, offsets,
# masks), so 256 KiB of text (~60k tokens) peaks at ~15 MB; bigger chunks were not faster here.
DEFAULT_CHUNK_BYTES = 256 << 10


def add_arguments(parser):
    parser.add_argument("input", help="a text, JSON lines, WikiExtractor or Parquet file (.gz .bz2 .xz .zst too), a "
                                      f"datasets save_to_disk folder, a folder or quoted glob of them, or {BUILTIN!r}")
    parser.add_argument("out", help="the shard folder to create (with its parent folders)")
    parser.add_argument("--tokenizer", default="wordpiece",
                        help="`wordpiece` (train a cased BERT WordPiece), `bpe` (train a byte-level BPE), "
                             "or a tokenizer.json / vocab.txt to load (default: wordpiece)")
    parser.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size to train (default: 30522)")
    parser.add_argument("--allow-smaller-vocab", action="store_true",
                        help="accept a trained vocabulary smaller than --vocab-size when the corpus is too small")
    parser.add_argument("--lowercase", action="store_true", help="train an uncased tokenizer (default: cased)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--encoding-errors", choices=ENCODING_ERRORS, default="strict",
                        help="on a line that is not UTF-8: stop with an error (default), replace its bad bytes with "
                             "U+FFFD, or skip the line; the lines replaced or skipped are counted at the end")
    parser.add_argument("--json-key", default=DEFAULT_JSON_KEY,
                        help="the field of JSON lines (or column of Parquet/datasets) that holds the text "
                             f"(default: {DEFAULT_JSON_KEY})")
    parser.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES,
                        help=f"refuse lines longer than this (default: {DEFAULT_MAX_LINE_BYTES})")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                        help="text encoded per encode_batch call (default: 256 KiB)")
    parser.add_argument("--valid-fraction", type=float, default=0.0,
                        help="hold out this share of INPUT's documents (whole documents, chosen by --seed) as the "
                             f"evaluation split in OUT/{VALID_FOLDER} (default: none)")
    parser.add_argument("--valid", default=None, metavar="CORPUS",
                        help=f"a second corpus to encode as the evaluation split in OUT/{VALID_FOLDER} instead")
    parser.add_argument("--seed", type=int, default=0, help="seeds which documents --valid-fraction holds out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args):
    shards = prepare(args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                     lowercase=args.lowercase, overwrite=args.overwrite, encoding_errors=args.encoding_errors,
                     max_line_bytes=args.max_line_bytes, allow_smaller_vocab=args.allow_smaller_vocab,
                     chunk_bytes=args.chunk_bytes, valid=args.valid, valid_fraction=args.valid_fraction, seed=args.seed,
                     progress=not args.quiet, json_key=args.json_key)
    if not args.quiet:
        print(shards)
    return 0


def prepare(input, out, tokenizer="wordpiece", vocab_size=30522, lowercase=False, overwrite=False,
            encoding_errors="strict", max_line_bytes=DEFAULT_MAX_LINE_BYTES, allow_smaller_vocab=False,
            chunk_bytes=DEFAULT_CHUNK_BYTES, valid=None, valid_fraction=0.0, seed=0, progress=False,
            json_key=DEFAULT_JSON_KEY):
    """Build the shard folder `out` from `input` (and OUT/valid from `valid` or `valid_fraction`);
    returns the opened `Shards`."""
    out = Path(out)
    check_creatable(out, "output", writes_beside=True)
    check_replaceable(out, "output", overwrite)
    if not 0.0 <= valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction} must be at least 0 and below 1 (0.01 to 0.05 is usual)")
    if valid is not None and valid_fraction:
        raise UserError("give --valid CORPUS or --valid-fraction F, not both: the held-out split comes from one of "
                        "them")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    corpus = Corpus(input, encoding_errors=encoding_errors, max_line_bytes=max_line_bytes, json_key=json_key)
    valid_corpus = None if valid is None else Corpus(valid, encoding_errors, max_line_bytes, json_key)
    if tokenizer in ("wordpiece", "bpe") and vocab_size < tokenizers_.MIN_TRAINED_VOCAB:
        raise UserError(f"--vocab-size {vocab_size} is too small to train a tokenizer; use at least "
                        f"{tokenizers_.MIN_TRAINED_VOCAB}")

    made = make_parents(out)
    try:
        with FolderLock(f"{out}.lock", f"output {out}"):  # two prepares into one folder: one goes on
            check_replaceable(out, "output", overwrite)  # made by another prepare while this one waited
            remove_stale_siblings(out)
            _prepare_locked(out, corpus, valid_corpus, input, tokenizer, vocab_size, lowercase, allow_smaller_vocab,
                            chunk_bytes, valid, valid_fraction, seed, progress)
    except BaseException:
        remove_made(made)  # after the lock file is gone, so the parents it made are empty
        raise
    for note in (c.encoding_note() for c in (corpus, valid_corpus) if c is not None):
        if note:  # the lines --encoding-errors replace/skip changed, counted in the encoding pass
            print(note, file=sys.stderr)
    return Shards(out)


def _prepare_locked(out, corpus, valid_corpus, input, tokenizer, vocab_size, lowercase, allow_smaller_vocab,
                    chunk_bytes, valid, valid_fraction, seed, progress):
    tmp = Path(temporary_sibling(out))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        split = DocumentSplit(valid_fraction, seed)
        if tokenizer in ("wordpiece", "bpe"):
            training = (s for piece, _, held_out in split(corpus.pieces()) if not held_out for s in piece)
            source = corpus.source + (f" (outside the documents --valid-fraction {valid_fraction} holds out)"
                                      if valid_fraction else "")
            tok = _train(training, source, tokenizer, vocab_size, lowercase, allow_smaller_vocab)
        else:
            tok = tokenizers_.load_tokenizer(tokenizer)
        tok.save(str(tmp / "tokenizer.json"))
        info = {**tokenizers_.tokenizer_meta(tok, source=tokenizer),
                "tokenizer_sha256": file_sha256(tmp / "tokenizer.json")}
        held_out = valid_corpus is not None or valid_fraction > 0
        writers = [ShardWriter(tmp, info["vocab_size"])]
        if held_out:
            (tmp / VALID_FOLDER).mkdir()
            shutil.copy(tmp / "tokenizer.json", tmp / VALID_FOLDER / "tokenizer.json")
            writers.append(ShardWriter(tmp / VALID_FOLDER, info["vocab_size"]))
        try:
            total = corpus.total_bytes + (valid_corpus.total_bytes if valid_corpus else 0)
            with _progress_bar(total, progress) as bar:
                _encode(split(corpus.pieces(progress=bar.update, max_bytes=chunk_bytes)), tok, writers, chunk_bytes)
                if valid_corpus is not None:
                    pieces = valid_corpus.pieces(progress=bar.update, max_bytes=chunk_bytes)
                    _encode(((s, ends, True) for s, ends in pieces), tok, writers, chunk_bytes)
            _check_not_empty(writers, input, valid, valid_fraction, seed)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        split_meta = {}
        if held_out:
            source = source_name(valid_corpus.source) if valid_corpus else \
                {"fraction": valid_fraction, "seed": seed, "of": source_name(corpus.source)}
            split_meta = {"valid_split": {"folder": VALID_FOLDER, "source": source}}
            writers[1].close({**info, "corpus": source, "split": "valid"})
        writers[0].close({**info, "corpus": source_name(corpus.source), **split_meta})
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class DocumentSplit:
    """Marks each document of a piece stream as held out or not: document n is held out when
    uniform(seed, n) < fraction, so the split is a function of the seed and the corpus alone."""

    BLOCK = 1 << 16  # documents whose draws are made at once

    def __init__(self, fraction, seed):
        self.fraction, self.seed = fraction, seed

    def __call__(self, pieces):
        """(sentences, ends_document) pieces -> (sentences, ends_document, held_out)."""
        document, block, flags = 0, -1, None
        for sentences, ends in pieces:
            if document // self.BLOCK != block:
                block = document // self.BLOCK
                flags = self.held_out(np.arange(block * self.BLOCK, (block + 1) * self.BLOCK))
            yield sentences, ends, bool(flags[document % self.BLOCK])
            document += bool(ends)

    def held_out(self, documents):
        """bool per document number."""
        if self.fraction <= 0:
            return np.zeros(len(documents), dtype=bool)
        return uniform(self.seed, np.asarray(documents, dtype=np.uint64), 0x5EED) < self.fraction


def _check_not_empty(writers, input, valid, valid_fraction, seed):
    if writers[0].n_tokens == 0:
        if valid_fraction:
            raise UserError(f"--valid-fraction {valid_fraction} held out every document of {input} "
                            f"({writers[1].n_documents}); "
                            "lower it, or give a larger corpus")
        raise UserError(f"input {input} contains no text (0 tokens after tokenization); "
                        f"give a corpus with at least one non-empty line")
    if len(writers) > 1 and writers[1].n_tokens == 0:
        if valid is not None:
            raise UserError(f"--valid {valid} contains no text (0 tokens after tokenization); give a corpus with at "
                            "least one non-empty line")
        raise UserError(f"--valid-fraction {valid_fraction} (--seed {seed}) held out none of the "
                        f"{writers[0].n_documents} "
                        f"documents of {input}; raise it, or pass the held-out text as --valid CORPUS")


def _train(sentences, source, kind, vocab_size, lowercase, allow_smaller_vocab):
    count = itertools.count()

    def counted():  # counts what the trainer saw, to tell an empty corpus from a too-large vocab
        for s in sentences:
            next(count)
            yield s

    tok = tokenizers_.train_tokenizer(kind, counted(), vocab_size, lowercase=lowercase, min_frequency=2)
    if next(count) == 0:
        raise UserError(f"input {source} contains no text; give a corpus with at least one non-empty line")
    if not allow_smaller_vocab:
        tokenizers_.check_vocab_size(tok, vocab_size)
    return tok


def _chunks(pieces, chunk_bytes):
    """Group (sentences, ends_document, held_out) pieces into lists of about chunk_bytes of text."""
    chunk, size = [], 0
    for piece in pieces:
        chunk.append(piece)
        size += sum(map(len, piece[0]))
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _progress_bar(total, progress):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr,
                disable=None if progress else True, mininterval=1.0)


def _encode(pieces, tok, writers, chunk_bytes):
    """Encode (sentences, ends_document, held_out) pieces into writers[0] (training) and writers[1] (held out)."""
    table = tokenizers_.word_start_table(tok).astype(np.uint8)
    first_of_line_starts_word = tokenizers_.kind_of(tok) == "bpe"  # no Ġ on a line's first token
    # "[MASK]" or "<s>" written in the text is text: only the packer and masker place control tokens.
    tok.encode_special_tokens = True
    # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets, which we do not use.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    for chunk in _chunks(pieces, chunk_bytes):
        sentences = [s for piece, _, _ in chunk for s in piece]
        ids = [e.ids for e in encode(sentences, add_special_tokens=False)]
        sent_len = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(sent_len.sum()))
        starts = table[flat]
        if first_of_line_starts_word:
            first = np.cumsum(sent_len) - sent_len
            starts[first[sent_len > 0]] = 1
        piece_sentences = np.fromiter((len(piece) for piece, _, _ in chunk), dtype=np.int64, count=len(chunk))
        piece_ends = np.fromiter((ends for _, ends, _ in chunk), dtype=bool, count=len(chunk))
        piece_held = np.fromiter((held for _, _, held in chunk), dtype=bool, count=len(chunk))
        tokens_before = np.concatenate([[0], np.cumsum(sent_len)])
        piece_tokens = np.diff(tokens_before[np.concatenate([[0], np.cumsum(piece_sentences)])])
        sentence_held = np.repeat(piece_held, piece_sentences)
        token_held = np.repeat(sentence_held, sent_len)
        for writer, held in zip(writers, (False, True)):
            mine = piece_held == held
            if not mine.any():
                continue
            keep = token_held == held
            lengths = sent_len[sentence_held == held]
            # Where this split's documents end, in its tokens; sentences (and documents) that encode to
            # nothing are dropped.
            doc_ends = np.cumsum(piece_tokens[mine])[piece_ends[mine]]
            writer.append(flat[keep], starts[keep], lengths[lengths > 0], doc_ends)
