"""`spanbert-ds prepare INPUT OUT`: corpus -> tokenizer -> shard folder.

Two streaming passes over the corpus: one trains the tokenizer (skipped when one is loaded),
one encodes. The encoding pass reads about `chunk_bytes` of whole documents, encodes all their
sentences with one `encode_batch` call (parallel in Rust, over all cores unless
TOKENIZERS_PARALLELISM=false), and appends the ids to the shard files, so memory holds one chunk
at a time whatever the corpus size. Everything is written to OUT.tmp-<pid> and renamed to OUT
only when complete; on any error the temporary folder is removed.
"""

import itertools
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from spanbert_ds.data import tokenizer as tokenizers_
from spanbert_ds.data.corpus import BUILTIN, DEFAULT_MAX_LINE_BYTES, Corpus, describe as describe_corpus
from spanbert_ds.data.shards import ShardWriter, Shards, file_sha256
from spanbert_ds.errors import UserError

# Text per encode_batch call. tokenizers' Encoding objects cost ~200 bytes a token (strings, offsets,
# masks), so 256 KiB of text (~60k tokens) peaks at ~15 MB; bigger chunks were not faster here.
DEFAULT_CHUNK_BYTES = 256 << 10


def add_arguments(parser):
    parser.add_argument("input", help=f"a text file, a .jsonl file, a folder of them, or {BUILTIN!r}")
    parser.add_argument("out", help="the shard folder to create")
    parser.add_argument("--tokenizer", default="wordpiece",
                        help="`wordpiece` (train a cased BERT WordPiece), `bpe` (train a byte-level BPE), "
                             "or a tokenizer.json / vocab.txt to load (default: wordpiece)")
    parser.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size to train (default: 30522)")
    parser.add_argument("--allow-smaller-vocab", action="store_true",
                        help="accept a trained vocabulary smaller than --vocab-size when the corpus is too small")
    parser.add_argument("--lowercase", action="store_true", help="train an uncased tokenizer (default: cased)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict",
                        help="on bytes that are not UTF-8: stop with an error (default) or replace them with U+FFFD")
    parser.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES,
                        help=f"refuse lines longer than this (default: {DEFAULT_MAX_LINE_BYTES})")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                        help="text encoded per encode_batch call (default: 256 KiB)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args):
    shards = prepare(args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                     lowercase=args.lowercase, overwrite=args.overwrite, encoding_errors=args.encoding_errors,
                     max_line_bytes=args.max_line_bytes, allow_smaller_vocab=args.allow_smaller_vocab,
                     chunk_bytes=args.chunk_bytes, progress=not args.quiet)
    if not args.quiet:
        print(shards)
    return 0


def prepare(input, out, tokenizer="wordpiece", vocab_size=30522, lowercase=False, overwrite=False,
            encoding_errors="strict", max_line_bytes=DEFAULT_MAX_LINE_BYTES, allow_smaller_vocab=False,
            chunk_bytes=DEFAULT_CHUNK_BYTES, progress=False):
    """Build the shard folder `out` from `input`; returns the opened `Shards`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} is a file; the output is a folder: choose another path")
    if not out.absolute().parent.is_dir():
        raise UserError(f"output {out}: {out.absolute().parent} is not a folder; create it or choose another path")
    if out.exists() and not overwrite:
        raise UserError(f"output {out} already exists; choose another folder or pass --overwrite to replace it")
    corpus = Corpus(input, encoding_errors=encoding_errors, max_line_bytes=max_line_bytes)
    if tokenizer in ("wordpiece", "bpe") and vocab_size < tokenizers_.MIN_TRAINED_VOCAB:
        raise UserError(f"--vocab-size {vocab_size} is too small to train a tokenizer; use at least "
                        f"{tokenizers_.MIN_TRAINED_VOCAB}")

    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if tokenizer in ("wordpiece", "bpe"):
            tok = _train(corpus, tokenizer, vocab_size, lowercase, allow_smaller_vocab)
        else:
            tok = tokenizers_.load_tokenizer(tokenizer)
        tok.save(str(tmp / "tokenizer.json"))
        info = tokenizers_.describe(tok, source=tokenizer)
        writer = ShardWriter(tmp, info["vocab_size"])
        try:
            _encode(corpus, tok, writer, chunk_bytes, progress)
        except BaseException:
            writer.abort()
            raise
        if writer.n_tokens == 0:
            raise UserError(f"input {input} contains no text (0 tokens after tokenization); "
                            f"give a corpus with at least one non-empty line")
        writer.close({**info, "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"),
                      "corpus": describe_corpus(corpus.source)})
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Shards(out)


def _train(corpus, kind, vocab_size, lowercase, allow_smaller_vocab):
    count = itertools.count()

    def sentences():  # counts what the trainer saw, to tell an empty corpus from a too-large vocab
        for s in corpus.sentences():
            next(count)
            yield s

    tok = tokenizers_.train_tokenizer(kind, sentences(), vocab_size, lowercase=lowercase, min_frequency=2)
    if next(count) == 0:
        raise UserError(f"input {corpus.source} contains no text; give a corpus with at least one non-empty line")
    if not allow_smaller_vocab:
        tokenizers_.check_vocab_size(tok, vocab_size)
    return tok


def _chunks(pieces, chunk_bytes):
    """Group (sentences, ends_document) pieces into lists of about chunk_bytes of text."""
    chunk, size = [], 0
    for piece in pieces:
        chunk.append(piece)
        size += sum(map(len, piece[0]))
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode(corpus, tok, writer, chunk_bytes, progress):
    from tqdm import tqdm

    table = tokenizers_.word_start_table(tok).astype(np.uint8)
    first_of_line_starts_word = tokenizers_.kind_of(tok) == "bpe"  # no Ġ on a line's first token
    # "[MASK]" or "<s>" written in the text is text: only the packer and masker place control tokens.
    tok.encode_special_tokens = True
    # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets, which we do not use.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    bar = tqdm(total=corpus.total_bytes, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr,
               disable=None if progress else True, mininterval=1.0)
    try:
        for pieces in _chunks(corpus.pieces(progress=bar.update, max_bytes=chunk_bytes), chunk_bytes):
            sentences = [s for piece, _ in pieces for s in piece]
            ids = [e.ids for e in encode(sentences, add_special_tokens=False)]
            sent_len = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(sent_len.sum()))
            starts = table[flat]
            if first_of_line_starts_word:
                first = np.cumsum(sent_len) - sent_len
                starts[first[sent_len > 0]] = 1
            # Where the pieces that end a document end, in tokens; sentences (and documents) that encode to
            # nothing are dropped.
            tokens_before = np.concatenate([[0], np.cumsum(sent_len)])
            piece_ends = tokens_before[np.cumsum([len(piece) for piece, _ in pieces])]
            doc_ends = piece_ends[np.fromiter((ends for _, ends in pieces), dtype=bool, count=len(pieces))]
            writer.append(flat, starts, sent_len[sent_len > 0], doc_ends)
    finally:
        bar.close()
