"""Preparation speed: `prepare` of the built-in corpus against bare `tokenizers` on the same text, one run.

    python benchmarks/prepare.py [--repeats 3] [--threads N]

- corpus: building the `python-docs` corpus (parsing the standard library with `ast`), once;
- train: training the cased WordPiece (vocab 30522, as the demo does) on it, once;
- prepare: `prepare(..., tokenizer=<that tokenizer.json>)`: reading the corpus, encoding in
  chunks, word-start flags, writing the shard folder, renaming; the corpus is already built;
- peers: the same tokenizer's `encode_batch` (and `encode_batch_fast`) over all the corpus's
  sentences in one call, ids only, nothing written.

Best of --repeats for each. `--threads 1` (RAYON_NUM_THREADS=1) gives per-core figures.
Goal: prepare at >= 0.8x bare encode_batch's tokens/s.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="RAYON_NUM_THREADS for tokenizers (default: all)")
    parser.add_argument("--vocab-size", type=int, default=30522)
    args = parser.parse_args()
    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its thread pool

    from spanbert_ds.data.corpus import Corpus, python_docs
    from spanbert_ds.data.prepare import _train, prepare

    work = tempfile.mkdtemp(prefix="bench-prepare-")
    try:
        t_corpus, docs = best_of(1, python_docs)
        sentences = [s for d in docs for s in d]
        n_bytes = sum(len(s.encode()) for s in sentences)
        t_train, tok = best_of(1, lambda: _train(Corpus("python-docs"), "wordpiece", args.vocab_size, False, True))
        tok_path = os.path.join(work, "tokenizer.json")
        tok.save(tok_path)

        def run_prepare():
            out = os.path.join(work, "shards")
            shutil.rmtree(out, ignore_errors=True)
            return prepare("python-docs", out, tokenizer=tok_path).n_tokens

        t_prepare, n_tokens = best_of(args.repeats, run_prepare)
        t_bare, n_bare = best_of(args.repeats, lambda: sum(
            len(e.ids) for e in tok.encode_batch(sentences, add_special_tokens=False)))
        t_fast, _ = best_of(args.repeats, lambda: sum(
            len(e.ids) for e in tok.encode_batch_fast(sentences, add_special_tokens=False)))
        assert n_bare == n_tokens, (n_bare, n_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rate = n_tokens / t_prepare
    threads = os.environ.get("RAYON_NUM_THREADS", f"all ({os.cpu_count()})")
    print(f"python-docs: {n_bytes / 1e6:.2f} MB, {len(sentences)} sentences, {n_tokens} tokens; "
          f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, tokenizers threads: {threads}")
    print(f"built the corpus in {t_corpus:.2f} s, trained WordPiece {tok.get_vocab_size()} in {t_train:.2f} s")
    print(f"{'what':<34}{'seconds':>9}{'tokens/s':>12}{'prepare / it':>14}")
    for name, seconds in [("prepare (read+encode+write)", t_prepare), ("bare encode_batch", t_bare),
                          ("bare encode_batch_fast", t_fast)]:
        print(f"{name:<34}{seconds:>9.3f}{n_tokens / seconds:>12,.0f}{(n_tokens / t_prepare) / (n_tokens / seconds):>14.2f}")
    ratio = t_bare / t_prepare
    print(f"goal prepare >= 0.8x bare encode_batch: {'met' if ratio >= 0.8 else 'NOT met'} ({ratio:.2f}x, "
          f"{rate:,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
