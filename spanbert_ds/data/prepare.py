"""`spanbert-ds prepare INPUT OUT`: corpus -> tokenizer -> shard folder (and its held-out split).

Two streaming passes over the corpus: one trains the tokenizer (skipped when one is loaded),
one encodes. The encoding pass reads about `chunk_bytes` of whole documents, encodes all their
sentences with one `encode_batch` call (parallel in Rust, over all cores unless
TOKENIZERS_PARALLELISM=false), and appends the ids to the shard files, so memory holds one chunk
at a time whatever the corpus size. Everything is written to OUT.tmp-<pid> and renamed to OUT
only when complete; on any error the temporary folder is removed.

In parallel (`--workers N`, N >= 2): this process reads the corpus and cuts it into chunks of whole
pieces; N worker processes (spawned, one tokenizer thread each) encode the chunks; this process
writes the results in chunk order. So the output is byte-identical to `--workers 1` by construction,
and reading (about 50 MB/s a core) is the only serial part. A worker that dies or fails stops all
of them at once; the workers also die with this process (PR_SET_PDEATHSIG), so nothing outlives it.

In parts (`--part I/N`, for N machines; `spanbert-ds merge` joins them): part I encodes the documents
that start in the I-th N-th of the corpus's bytes (the bytes read before a document starts, as the
progress bar counts them: whole files where the files are small, about a megabyte where they are
large). Every part reads the corpus from its start up to the end of its range, counting the
documents before it, so each document keeps its global number and the held-out split is the one a
single prepare makes; reading is about 20x faster than encoding, so the last part spends a few
percent more than the first. Parts need a tokenizer file (all parts must encode with one tokenizer:
train it once with `--tokenizer-only`); the last part also encodes a --valid corpus.

`--split-sentences` splits each line into sentences (corpus.py's SentenceSplitter, blingfire): in the
tokenizer-training pass as it is read, in the encoding pass by the encoder (the workers, with --workers),
which is where the serial reader would otherwise spend 20x its reading time; the split is a function of
the line, so both give the same sentences. meta.json records it as split_sentences (absent when off).

A held-out split for evaluation goes to OUT/valid, a shard folder of its own with the same
tokenizer: either whole documents of INPUT, each held out with probability --valid-fraction by a
hash of (--seed, document number), or a second corpus (--valid). The tokenizer is trained on the
training documents only, or on a sample of them (`--tokenizer-sample MB`, default 1000 MB: documents
drawn across the whole corpus, each with the probability that leaves the sample its size).
"""

import collections
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

from spanbert_ds.data import tokenizer as tokenizers_
from spanbert_ds.data.corpus import (BUILTIN, DEFAULT_JSON_KEY, DEFAULT_MAX_LINE_BYTES, ENCODING_ERRORS, Corpus,
                                     SentenceSplitter, source_name)
from spanbert_ds.data.hashing import uniform
from spanbert_ds.data.shards import VALID_FOLDER, ShardWriter, Shards, file_sha256, token_dtype
from spanbert_ds.errors import UserError
from spanbert_ds.folders import (FolderLock, check_creatable, check_replaceable, make_parents, remove_made,
                                 remove_stale_siblings, temporary_sibling)

# Text per encode_batch call. tokenizers' Encoding objects cost ~200 bytes a token (strings, offsets,
# masks), so 256 KiB of text (~60k tokens) peaks at ~15 MB; bigger chunks were not faster here.
DEFAULT_CHUNK_BYTES = 256 << 10
DEFAULT_TOKENIZER_SAMPLE_MB = 1000  # WordPiece trains on 1 GB in about a minute a core; 0 = everything
AUTO_WORKERS_BYTES = 64 << 20  # `--workers auto` starts workers (about a second) for corpora of this size up


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
    parser.add_argument("--workers", default="auto", type=_workers_arg,
                        help="processes that encode, one tokenizer thread each (the output is the same for any "
                             "number); `auto`: this machine's usable cores for corpora of 64 MB and more, else 1 "
                             "(one process, the tokenizer's own threads) (default: auto)")
    parser.add_argument("--tokenizer-sample", type=float, default=DEFAULT_TOKENIZER_SAMPLE_MB, metavar="MB",
                        help="train the tokenizer on about this many MB of text, whole documents drawn across the "
                             f"corpus; 0 trains on all of it (default: {DEFAULT_TOKENIZER_SAMPLE_MB})")
    parser.add_argument("--tokenizer-only", action="store_true",
                        help="train the tokenizer and write OUT/tokenizer.json only (for --part runs: pass it to each "
                             "part as --tokenizer)")
    parser.add_argument("--part", default=None, type=_part_arg, metavar="I/N",
                        help="encode the I-th of N parts of the corpus (I = 1..N) into OUT, for N machines; then "
                             "`spanbert-ds merge PART_1 ... PART_N OUT` makes the folder one prepare would make. "
                             "Needs --tokenizer FILE")
    parser.add_argument("--split-sentences", action="store_true",
                        help="split each line (a paragraph, a JSON record's text) into sentences with blingfire "
                             "(`pip install 'spanbert_ds[formats]'`); default: each line is one sentence")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _workers_arg(value):
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--workers {value!r} must be a whole number of 1 or more, or `auto`")
    return n


def _part_arg(value):
    i, _, n = value.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise UserError(f"--part {value!r} must be I/N with 1 <= I <= N, e.g. --part 3/8 (in a SLURM job array: "
                        "--part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=1-N)")
    return i, n


def run(args):
    shards = prepare(args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                     lowercase=args.lowercase, overwrite=args.overwrite, encoding_errors=args.encoding_errors,
                     max_line_bytes=args.max_line_bytes, allow_smaller_vocab=args.allow_smaller_vocab,
                     chunk_bytes=args.chunk_bytes, valid=args.valid, valid_fraction=args.valid_fraction, seed=args.seed,
                     progress=not args.quiet, json_key=args.json_key, workers=args.workers,
                     tokenizer_sample_mb=args.tokenizer_sample, tokenizer_only=args.tokenizer_only, part=args.part,
                     split_sentences=args.split_sentences)
    if not args.quiet:
        print(shards if shards is not None else f"{args.out}: " + (
            "tokenizer.json" if args.tokenizer_only else f"part {args.part[0]}/{args.part[1]}, no documents"))
    return 0


def prepare(input, out, tokenizer="wordpiece", vocab_size=30522, lowercase=False, overwrite=False,
            encoding_errors="strict", max_line_bytes=DEFAULT_MAX_LINE_BYTES, allow_smaller_vocab=False,
            chunk_bytes=DEFAULT_CHUNK_BYTES, valid=None, valid_fraction=0.0, seed=0, progress=False,
            json_key=DEFAULT_JSON_KEY, workers=1, tokenizer_sample_mb=DEFAULT_TOKENIZER_SAMPLE_MB,
            tokenizer_only=False, part=None, split_sentences=False):
    """Build the shard folder `out` from `input` (and OUT/valid from `valid` or `valid_fraction`);
    returns the opened `Shards` (None for --tokenizer-only, or a part that holds no document).
    workers: an int or "auto"; part: (I, N) with 1 <= I <= N, or None."""
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
    if tokenizer_sample_mb < 0:
        raise UserError(f"--tokenizer-sample {tokenizer_sample_mb} must be 0 (all the text) or more MB")
    trains = tokenizer in ("wordpiece", "bpe")
    if part is not None and (trains or tokenizer_only):
        raise UserError(f"--part {part[0]}/{part[1]} needs a tokenizer file that every part shares: train it once "
                        f"with `spanbert-ds prepare {input} TOKENIZER_FOLDER --tokenizer-only`, then pass "
                        "--tokenizer TOKENIZER_FOLDER/tokenizer.json to each part")
    if tokenizer_only and not trains:
        raise UserError(f"--tokenizer-only trains a tokenizer, but --tokenizer {tokenizer} loads one; pass "
                        "--tokenizer wordpiece or bpe")
    corpus = Corpus(input, encoding_errors=encoding_errors, max_line_bytes=max_line_bytes, json_key=json_key,
                    split_sentences=split_sentences)
    valid_corpus = None if valid is None else Corpus(valid, encoding_errors, max_line_bytes, json_key,
                                                     split_sentences)
    if tokenizer in ("wordpiece", "bpe") and vocab_size < tokenizers_.MIN_TRAINED_VOCAB:
        raise UserError(f"--vocab-size {vocab_size} is too small to train a tokenizer; use at least "
                        f"{tokenizers_.MIN_TRAINED_VOCAB}")

    if workers == "auto":
        workers = _usable_cores() if corpus.source != BUILTIN and corpus.total_bytes >= AUTO_WORKERS_BYTES else 1
    options = dict(workers=workers, sample_bytes=int(tokenizer_sample_mb * 1e6), tokenizer_only=tokenizer_only,
                   part=part, settings={"json_key": json_key, "encoding_errors": encoding_errors,
                                        "max_line_bytes": max_line_bytes, "chunk_bytes": chunk_bytes})
    made = make_parents(out)
    try:
        with FolderLock(f"{out}.lock", f"output {out}"):  # two prepares into one folder: one goes on
            check_replaceable(out, "output", overwrite)  # made by another prepare while this one waited
            remove_stale_siblings(out)
            _prepare_locked(out, corpus, valid_corpus, input, tokenizer, vocab_size, lowercase, allow_smaller_vocab,
                            chunk_bytes, valid, valid_fraction, seed, progress, **options)
    except BaseException:
        remove_made(made)  # after the lock file is gone, so the parents it made are empty
        raise
    for note in (c.encoding_note() for c in (corpus, valid_corpus) if c is not None):
        if note:  # the lines --encoding-errors replace/skip changed, counted in the encoding pass
            print(note, file=sys.stderr)
    if tokenizer_only or (part is not None and not json.loads((out / "meta.json").read_text())["n_tokens"]):
        return None
    return Shards(out)


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _prepare_locked(out, corpus, valid_corpus, input, tokenizer, vocab_size, lowercase, allow_smaller_vocab,
                    chunk_bytes, valid, valid_fraction, seed, progress, workers, sample_bytes, tokenizer_only, part,
                    settings):
    tmp = Path(temporary_sibling(out))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        split = DocumentSplit(valid_fraction, seed)
        if tokenizer in ("wordpiece", "bpe"):
            source = corpus.source + (f" (outside the documents --valid-fraction {valid_fraction} holds out)"
                                      if valid_fraction else "")
            tok = _train(_training_sample(corpus, split, sample_bytes), source, tokenizer, vocab_size, lowercase,
                         allow_smaller_vocab)
        else:
            tok = tokenizers_.load_tokenizer(tokenizer)
        tok.save(str(tmp / "tokenizer.json"))
        if tokenizer_only:
            _replace(tmp, out)
            return
        info = {**tokenizers_.tokenizer_meta(tok, source=tokenizer),
                "tokenizer_sha256": file_sha256(tmp / "tokenizer.json")}
        if corpus.splitter is not None:  # absent when off: the meta.json of unsplit folders is unchanged
            info["split_sentences"] = corpus.splitter.meta()
        held_out = valid_corpus is not None or valid_fraction > 0
        writers = [ShardWriter(tmp, info["vocab_size"])]
        if held_out:
            (tmp / VALID_FOLDER).mkdir()
            shutil.copy(tmp / "tokenizer.json", tmp / VALID_FOLDER / "tokenizer.json")
            writers.append(ShardWriter(tmp / VALID_FOLDER, info["vocab_size"]))
        last_part = part is None or part[0] == part[1]
        try:
            total = corpus.total_bytes + (valid_corpus.total_bytes if valid_corpus and last_part else 0)
            # Lines are split into sentences by the encoder (in the workers, if any), not while reading: the
            # split is a function of the line, so the output is the same for any --workers, and reading
            # stays the only serial part (blingfire splits ~6 MB a CPU second, reading ~100: benchmarks/sentences.py).
            splits = corpus.splitter is not None
            encoder = _Encoder(tok, info["vocab_size"], splits)
            with _progress_bar(total, progress) as bar, \
                    _Pool(workers, tmp / "tokenizer.json", info["vocab_size"], splits) as pool:
                read = _Position(bar.update)
                pieces = split(corpus.pieces(progress=read, max_bytes=chunk_bytes, split=False))
                if part is not None:
                    pieces = _part_of(pieces, read, part, corpus.total_bytes)
                _encode(pieces, encoder, pool, writers, chunk_bytes)
                if valid_corpus is not None and last_part:
                    pieces = valid_corpus.pieces(progress=bar.update, max_bytes=chunk_bytes, split=False)
                    _encode(((s, ends, True) for s, ends in pieces), encoder, pool, writers, chunk_bytes)
            if part is None:
                _check_not_empty(writers, input, valid, valid_fraction, seed)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        split_meta, extra = {}, {}
        if part is not None:  # what `merge` checks the parts agree on, and takes out again
            extra = {"part": {"index": part[0], "of": part[1], "settings": settings}}
        if held_out:
            source = source_name(valid_corpus.source) if valid_corpus else \
                {"fraction": valid_fraction, "seed": seed, "of": source_name(corpus.source)}
            split_meta = {"valid_split": {"folder": VALID_FOLDER, "source": source}}
            writers[1].close({**info, "corpus": source, "split": "valid", **extra})
        writers[0].close({**info, "corpus": source_name(corpus.source), **split_meta, **extra})
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp, out):
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)


class _Position:
    """The progress callback of a corpus pass that also counts the bytes read so far (`value`)."""

    def __init__(self, update=None):
        self.value, self.update = 0, update

    def __call__(self, n):
        self.value += n
        if self.update:
            self.update(n)


def _part_of(pieces, read, part, total_bytes):
    """The pieces of the documents of part (I, N): those whose previous document ended (in the reading,
    so whatever the chunk size) when read.value was in the I-th N-th of total_bytes. Stops reading at
    the first document past the part."""
    index, n_parts = part[0] - 1, part[1]
    start = 0  # bytes read when the previous document ended
    for piece in pieces:
        k = min(start * n_parts // max(total_bytes, 1), n_parts - 1)
        if k > index:
            return
        if k == index:
            yield piece
        if piece[1]:
            start = read.value


def _training_sample(corpus, split, sample_bytes):
    """The sentences the tokenizer trains on: the training documents (not the held-out ones), all of them when
    sample_bytes is 0 or the corpus is not larger, else whole documents drawn across the corpus: document n is
    taken when uniform(0, n) < (sample left) / (text left), the text left estimated from the bytes read so far
    (compressed files are counted by what they hold). Stops when the sample is full."""
    read = _Position()
    total, text, taken, document, block = max(corpus.total_bytes, 1), 0, 0, 0, None
    take = None if sample_bytes else True
    for sentences, ends, held_out in split(corpus.pieces(progress=read)):
        size = sum(map(len, sentences))
        if sample_bytes and take is None:  # a document's first piece decides for the whole document
            if taken >= sample_bytes:
                return
            text_left = (total - read.value) * (text / read.value if read.value and text else 1.0)
            if document // DocumentSplit.BLOCK != block:
                block = document // DocumentSplit.BLOCK
                draws = uniform(0, np.arange(block * DocumentSplit.BLOCK, (block + 1) * DocumentSplit.BLOCK,
                                             dtype=np.uint64), 0x5A391E)
            take = draws[document % DocumentSplit.BLOCK] < (sample_bytes - taken) / max(text_left, 1.0)
        text += size
        if take and not held_out:
            taken += size
            yield from sentences
        if ends:
            document += 1
            take = None if sample_bytes else True


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


def _encode(pieces, encoder, pool, writers, chunk_bytes):
    """Encode (sentences, ends_document, held_out) pieces into writers[0] (training) and writers[1] (held out):
    here, or in the pool's workers with the results written in chunk order."""
    results = pool.map(encoder, _chunks(pieces, chunk_bytes)) if pool else map(encoder, _chunks(pieces, chunk_bytes))
    for result in results:
        for writer, appended in zip(writers, result):
            if appended is not None:
                writer.append(*appended)


class _Encoder:
    """One chunk of pieces -> per split (training, held out) the arguments of ShardWriter.append, or None."""

    def __init__(self, tok, vocab_size, split_sentences=False):
        self.splitter = SentenceSplitter() if split_sentences else None
        self.table = tokenizers_.word_start_table(tok).astype(np.uint8)
        self.first_of_line_starts_word = tokenizers_.kind_of(tok) == "bpe"  # no Ġ on a line's first token
        self.dtype = token_dtype(vocab_size)
        # "[MASK]" or "<s>" written in the text is text: only the packer and masker place control tokens.
        tok.encode_special_tokens = True
        # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets, which we do not use.
        self.encode = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def __call__(self, chunk):
        if self.splitter is not None:  # lines -> sentences, as Corpus.pieces(split=True) would give them
            chunk = [([s for line in piece for s in self.splitter(line)], ends, held) for piece, ends, held in chunk]
        sentences = [s for piece, _, _ in chunk for s in piece]
        ids = [e.ids for e in self.encode(sentences, add_special_tokens=False)]
        sent_len = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(sent_len.sum()))
        starts = self.table[flat]
        if self.first_of_line_starts_word:
            first = np.cumsum(sent_len) - sent_len
            starts[first[sent_len > 0]] = 1
        piece_sentences = np.fromiter((len(piece) for piece, _, _ in chunk), dtype=np.int64, count=len(chunk))
        piece_ends = np.fromiter((ends for _, ends, _ in chunk), dtype=bool, count=len(chunk))
        piece_held = np.fromiter((held for _, _, held in chunk), dtype=bool, count=len(chunk))
        tokens_before = np.concatenate([[0], np.cumsum(sent_len)])
        piece_tokens = np.diff(tokens_before[np.concatenate([[0], np.cumsum(piece_sentences)])])
        sentence_held = np.repeat(piece_held, piece_sentences)
        result = []
        for held in (False, True):
            mine = piece_held == held
            if not mine.any():
                result.append(None)
                continue
            if mine.all():
                keep_ids, keep_starts, lengths = flat, starts, sent_len
            else:
                keep = np.repeat(sentence_held == held, sent_len)
                keep_ids, keep_starts, lengths = flat[keep], starts[keep], sent_len[sentence_held == held]
            # Where this split's documents end, in its tokens; sentences (and documents) that encode to
            # nothing are dropped.
            doc_ends = np.cumsum(piece_tokens[mine])[piece_ends[mine]]
            result.append((keep_ids, keep_starts, lengths[lengths > 0], doc_ends))
        return result


_worker_encoder = None  # in a worker process: the _Encoder of the tokenizer file it was started with


def _worker_start(tokenizer_file, vocab_size, split_sentences, parent):
    """A worker's set-up: one tokenizer thread, signals left to the parent, death with the parent."""
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before the first encode: N workers use N cores
    os.environ["RAYON_NUM_THREADS"] = "1"
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C reaches the whole process group:
        signal.signal(sig, signal.SIG_IGN)  # the parent stops the workers itself, after its clean-up starts
    try:  # Linux: SIGKILL this worker when the parent dies, even by kill -9, so no worker outlives it
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)
    except (OSError, AttributeError):
        pass
    from tokenizers import Tokenizer

    _worker_encoder = _Encoder(Tokenizer.from_file(tokenizer_file), vocab_size, split_sentences)


def _worker_encode(chunk):
    return _worker_encoder(chunk)


class _Pool:
    """`workers` processes that encode chunks (none for 1: this process encodes, with the tokenizer's threads).
    `map` keeps at most 2 chunks a worker in flight and yields results in order; a worker that fails (its
    exception is raised here) or dies (a UserError) stops all the others at once, as leaving does."""

    def __init__(self, workers, tokenizer_file, vocab_size, split_sentences=False):
        self.workers, self.executor = workers, None
        self.args = (str(tokenizer_file), vocab_size, split_sentences, os.getpid())
        self.processes = []

    def __bool__(self):
        return self.workers > 1

    def __enter__(self):
        if self:
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a fork would copy this process's tokenizer thread pool and progress-bar thread mid-state
            self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_start, initargs=self.args)
        return self

    def map(self, fn, chunks):
        from concurrent.futures.process import BrokenProcessPool

        pending = collections.deque()
        try:
            for chunk in chunks:
                pending.append(self.executor.submit(_worker_encode, chunk))
                if len(self.processes) < self.workers:  # kept here: the pool forgets the processes when one dies
                    self.processes = list((self.executor._processes or {}).values())
                while len(pending) >= 2 * self.workers or (pending and pending[0].done()):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise UserError(f"a prepare worker died ({self._how_they_died()}); nothing was written: run prepare "
                            "again, with fewer --workers if memory ran out") from None

    def _how_they_died(self):
        for p in self.processes:
            p.join(1)
        codes = [p.exitcode for p in self.processes if p.exitcode]
        if not codes:
            return "exit status unknown"
        code = min(codes, key=lambda c: c == -signal.SIGTERM)  # the pool stops the others with SIGTERM
        if code < 0:
            name = signal.Signals(-code).name
            return f"killed by {name}" + (": out of memory?" if name == "SIGKILL" else "")
        return f"exit status {code}"

    def __exit__(self, *exc):
        if self.executor is None:
            return
        processes = self.processes + list((self.executor._processes or {}).values())
        if exc[0] is not None:  # stop now: a worker still encoding would hold the exit up
            for p in processes:
                if p.is_alive():
                    p.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        for p in processes:
            p.join(5)
