"""Preparation speed: `prepare` against bare `tokenizers` and against `datasets` map, same text, same tokenizer, one run.

    python benchmarks/prepare.py [--mb 200] [--workers 2] [--keep-corpus PATH]

The corpus: --mb MB of plain text made here from the built-in python-docs corpus (real English prose,
~2 MB): documents of 3-39 of its sentences drawn at random (seed 0), blank lines between documents.
The tokenizer: a cased WordPiece of 30522 trained once on python-docs, loaded by every row.
Each row runs in a fresh process (its own thread settings) and is timed from outside (wall) and by
its CPU seconds (getrusage of the children: robust when the machine is shared):
- limit, 1 thread: the tokenizer's encode_batch_fast over the corpus's sentences in 256 KiB batches,
  ids read out, TOKENIZERS_PARALLELISM=false; the sentences are read before the clock starts;
- prepare --workers 1, 1 thread (TOKENIZERS_PARALLELISM=false): one process reads, encodes, writes;
- prepare --workers 1 (the tokenizer's threads: the default before --workers);
- prepare --workers N: N processes of one thread each, this process reading and writing;
- peer: `datasets` load_dataset("text", sample_by="paragraph") + map(batched=True, num_proc=N) with the
  same tokenizer's encode_batch_fast, ids kept (what a user of datasets would write); only where
  `datasets` imports (`pip install 'spanbert_ds[bench]'`).
Goals: prepare --workers N per worker >= 0.85x the limit; >= 1.5x the peer; --workers 2 >= 1.8x
--workers 1 on one thread and >= 1.5x the default.
"""

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

LIMIT = """
import sys, time
from spanbert_ds.data.corpus import Corpus
from spanbert_ds.data.tokenizer import load_tokenizer
tok = load_tokenizer(sys.argv[2])
batches, batch, size = [], [], 0
for piece, _ in Corpus(sys.argv[1]).pieces(max_bytes=256 << 10):
    batch += piece; size += sum(map(len, piece))
    if size >= 256 << 10:
        batches.append(batch); batch, size = [], 0
batches.append(batch)
start = time.process_time()
n = sum(len(e.ids) for b in batches for e in tok.encode_batch_fast(b, add_special_tokens=False))
print(time.process_time() - start, n)
"""

PEER = """
import sys, time
from datasets import load_dataset
from tokenizers import Tokenizer
path, tok_file, n_proc, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def encode(batch, tok=[]):
    if not tok:
        tok.append(Tokenizer.from_file(tok_file))
    lines = [s for t in batch["text"] for s in t.splitlines() if s.strip()]
    return {"ids": [e.ids for e in tok[0].encode_batch_fast(lines, add_special_tokens=False)]}
ds = load_dataset("text", data_files=path, sample_by="paragraph", split="train", cache_dir=cache)
out = ds.map(encode, batched=True, batch_size=1000, num_proc=n_proc, remove_columns=["text"])
print(sum(len(x) for x in out["ids"]))
"""


def build_corpus(path, n_bytes, seed=0):
    import numpy as np

    from spanbert_ds.data.corpus import python_docs

    sentences = [s for d in python_docs() for s in d]
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "w") as f:
        while written < n_bytes:
            lengths = rng.integers(3, 40, size=2000)
            picks = rng.integers(0, len(sentences), size=int(lengths.sum()))
            ends = np.cumsum(lengths)
            text = "\n\n".join("\n".join(sentences[i] for i in picks[e - n:e]) for n, e in zip(lengths, ends)) + "\n\n"
            f.write(text)
            written += len(text.encode())


def timed(argv, env=None):
    """(wall seconds, CPU seconds of the process and its children, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200, help="corpus size in MB (default: 200)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep-corpus", default=None, help="build the corpus here (or reuse it) and keep it")
    parser.add_argument("--no-peer", action="store_true", help="skip the datasets row")
    args = parser.parse_args()

    from spanbert_ds.data.corpus import python_docs
    from spanbert_ds.data.tokenizer import train_tokenizer

    work = tempfile.mkdtemp(prefix="bench-prepare-")
    py, cli = sys.executable, [sys.executable, "-m", "spanbert_ds.cli", "prepare"]
    one_thread = {"TOKENIZERS_PARALLELISM": "false"}
    try:
        corpus = args.keep_corpus or os.path.join(work, "corpus.txt")
        if not os.path.exists(corpus):
            build_corpus(corpus, int(args.mb * 1e6))
        mb = os.path.getsize(corpus) / 1e6
        tok_file = os.path.join(work, "tokenizer.json")
        train_tokenizer("wordpiece", (s for d in python_docs() for s in d), 30522).save(tok_file)

        rows = []
        _, cpu, out = timed([py, "-c", LIMIT, corpus, tok_file], one_thread)
        encode_cpu, n_tokens = map(float, out.split())
        rows.append(("limit: bare encode_batch_fast, 1 thread", encode_cpu, encode_cpu, 1))

        def prepare_row(name, workers, env=None):
            out = os.path.join(work, f"shards-{workers}")
            wall, cpu, _ = timed([*cli, corpus, out, "--tokenizer", tok_file, "--workers", str(workers), "--quiet"],
                                 env)
            size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith((".bin", ".idx")))
            shutil.rmtree(out)
            rows.append((name, wall, cpu, workers))
            return size

        prepare_row("prepare --workers 1, 1 thread", 1, one_thread)
        prepare_row("prepare --workers 1 (old default)", 1)
        shard_bytes = prepare_row(f"prepare --workers {args.workers}", args.workers)
        if not args.no_peer:
            try:
                wall, cpu, _ = timed([py, "-c", PEER, corpus, tok_file, str(args.workers), os.path.join(work, "hf")],
                                     one_thread)
                rows.append((f"peer: datasets map num_proc={args.workers}", wall, cpu, args.workers))
            except SystemExit as e:
                print(f"(no datasets row: {str(e).splitlines()[-1]})")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    limit = mb / encode_cpu
    print(f"corpus: {mb:.0f} MB of python-docs sentences, {n_tokens:,.0f} tokens; shards {shard_bytes / 1e6:.0f} MB; "
          f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'what':<40}{'wall s':>8}{'MB/s':>8}{'CPU s':>8}{'MB/CPU-s':>10}{'MB/s/worker':>13}{'/ limit':>9}")
    for name, wall, cpu, workers in rows:
        per_worker = mb / wall / workers
        print(f"{name:<40}{wall:>8.1f}{mb / wall:>8.2f}{cpu:>8.1f}{mb / cpu:>10.2f}{per_worker:>13.2f}"
              f"{per_worker / limit:>9.2f}")
    by = {name: wall for name, wall, _, _ in rows}
    n = f"prepare --workers {args.workers}"
    print(f"--workers {args.workers} vs --workers 1 on 1 thread: {by['prepare --workers 1, 1 thread'] / by[n]:.2f}x "
          f"(goal 1.8x for 2); vs the old default: {by['prepare --workers 1 (old default)'] / by[n]:.2f}x (goal 1.5x)")
    peer = next((wall for name, wall, _, _ in rows if name.startswith("peer")), None)
    if peer:
        print(f"vs datasets map: {peer / by[n]:.2f}x (goal 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
