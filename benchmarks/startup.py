"""Start-up against corpus size: process start to the first optimizer step of a 1-rank run, and its parts.

    python benchmarks/startup.py SHARDS [SHARDS ...] [--packing doc] [--max-seq-len 128]

For each shard folder, three starts of train.py (a tiny model on the CPU, cpu_zero2.json), each a fresh
process and run folder:
  today   the work every rank did at every start before the start-up cache: the sample index computed,
          every token read for the id check, rank 0's full unigram pass (the cache switched off in the
          child, and check_ids(full=True)): the peer, measured in the same run
  first   the first start on the folder: builds SHARDS/cache/ (the folder's cache is removed before it)
  later   every later start and requeue: memory-maps the cache, takes the id check from meta.json
Each child times its own parts (the sample index of the training and held-out splits, the id check,
the unigram counts; `prepare` is all that every rank builds and checks before the process group, these
included; `imports` is the interpreter and imports) and writes the time of its first engine.step() (one
micro-batch forward and backward done), then exits at once. `epoch order` is the loader's permutation of all samples, which
each DataLoader worker computes once per epoch (timed here, in this process). One table; files in the
page cache (every start reads what the one before read).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTS = ("today", "first", "later")


def child(out, kind, train_args):
    """Run training in this process with timers on the parts; write the times at the first step and exit."""
    started = float(os.environ["STARTUP_T0"])
    import deepspeed.runtime.engine as engine_module
    import numpy as np  # noqa: F401

    from spanbert_ds.cli import main
    from spanbert_ds.data import packing
    from spanbert_ds.data.shards import Shards
    from spanbert_ds.train import evaluate, loop

    parts = {"imported": time.time() - started, "prepare": 0.0, "index": 0.0, "id check": 0.0, "unigram": 0.0}

    def timed(part, function):
        def wrapper(*args, **kwargs):
            t = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                parts[part] += time.time() - t
        return wrapper

    if kind == "today":  # the cache off: everything computed, every token read, as before it existed
        def uncached(shards, kind_, version, params, build):
            return build()
        packing.cached = evaluate.cached = uncached
        check_ids = Shards.check_ids
        Shards.check_ids = lambda self, full=False: check_ids(self, full=True)
    Shards.check_ids = timed("id check", Shards.check_ids)
    packing.PackedSamples.__init__ = timed("index", packing.PackedSamples.__init__)
    evaluate.unigram_counts = timed("unigram", evaluate.unigram_counts)
    loop.prepare = timed("prepare", loop.prepare)
    step = engine_module.DeepSpeedEngine.step

    def first_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with open(out, "w") as f:
            json.dump({"first step": time.time() - started, **parts}, f)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
        return result

    engine_module.DeepSpeedEngine.step = first_step
    main(["train", *train_args], prog="train.py")
    raise SystemExit("training ended without a step")


def start(kind, shards, args, scratch):
    run = tempfile.mkdtemp(prefix=f"run-{kind}-", dir=scratch)
    out = os.path.join(scratch, f"{kind}.json")
    train_args = ["--deepspeed_config", os.path.join(REPO, "ds_configs", "cpu_zero2.json"), "--data", shards,
                  "--output", run, "--model", "tiny", "--steps", "1000", "--save-every", "1000",
                  "--max-seq-len", str(args.max_seq_len), "--packing", args.packing, "--resume", "none"]
    env = dict(os.environ, STARTUP_T0=repr(time.time()), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29500 + os.getpid() % 1000), HF_HUB_OFFLINE="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions")))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, __file__, "--child", out, kind, "--", *train_args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=args.timeout)
    if done.returncode or not os.path.exists(out):
        sys.exit(f"the {kind} start on {shards} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with open(out) as f:
        times = json.load(f)
    shutil.rmtree(run, ignore_errors=True)
    return times


def epoch_order_seconds(n_samples):
    import numpy as np

    t = time.perf_counter()
    np.random.default_rng([42, 0, 0x5A5A]).permutation(n_samples)
    return time.perf_counter() - t


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], sys.argv[5:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="+", help="shard folders (spanbert-ds prepare), smallest first")
    parser.add_argument("--packing", default="doc", choices=["full", "doc", "pair"])
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one start may take")
    args = parser.parse_args()

    from spanbert_ds.data.packing import PackedSamples
    from spanbert_ds.data.shard_cache import FOLDER
    from spanbert_ds.data.shards import Shards

    rows = []
    with tempfile.TemporaryDirectory(prefix="startup-") as scratch:
        for path in args.shards:
            shards = Shards(path)
            for folder in (shards.path / FOLDER, shards.path / "valid" / FOLDER):
                shutil.rmtree(folder, ignore_errors=True)  # so that "first" builds it
            times = {kind: start(kind, path, args, scratch) for kind in STARTS}
            n_samples = len(PackedSamples(shards, args.packing, args.max_seq_len, 42))
            rows.append((shards.n_tokens, n_samples, times, epoch_order_seconds(n_samples)))
            print(f"{path}: done", file=sys.stderr)

    machine = f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"start-up of a 1-rank run (tiny model, cpu_zero2.json, --packing {args.packing}, --max-seq-len "
          f"{args.max_seq_len}), seconds; {machine}")
    columns = ("first step", "imported", "prepare", "index", "id check", "unigram")
    print(f"{'tokens':>12} {'samples':>9} {'start':>6} {'to step 1':>9} {'x today':>7} {'imports':>7} {'prepare':>7} "
          f"{'index':>7} {'id check':>8} {'unigram':>7} {'epoch order':>11}")
    for n_tokens, n_samples, times, order in rows:
        for kind in STARTS:
            t = times[kind]
            ratio = t["first step"] / times["today"]["first step"]
            first, imported, prepared, index, check, unigram = (t[c] for c in columns)
            print(f"{n_tokens:>12,} {n_samples:>9,} {kind:>6} {first:>9.2f} {ratio:>7.2f} {imported:>7.2f} "
                  f"{prepared:>7.2f} {index:>7.2f} {check:>8.3f} {unigram:>7.2f} {order:>11.3f}")
    if len(rows) > 1:
        small, big = rows[0], rows[-1]
        for column in ("first step", "prepare"):
            growth = {kind: big[2][kind][column] / small[2][kind][column] for kind in ("today", "later")}
            print(f"{column}, {big[0] / small[0]:.0f}x the tokens: later start {growth['later']:.2f}x the time "
                  f"(today: {growth['today']:.2f}x)")


if __name__ == "__main__":
    main()
