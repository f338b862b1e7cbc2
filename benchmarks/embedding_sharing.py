"""DeBERTaV3's comparison of embedding sharing in replaced-token detection, at a small scale.

    python benchmarks/embedding_sharing.py [--out runs/embedding_sharing] [--objective debertav3]
        [--model deberta-tiny] [--steps 400] [--seeds 1] [--quick]

Three runs of the same objective, the same model, data, seed and initial weights, which differ only in how
the generator and discriminator share their token tables (model/rtd.py): none (NES), share (ES, ELECTRA's)
and gdes (GDES, DeBERTaV3's). For each it reports
- the discriminator's loss over the last tenth of the steps, beside the loss of a discriminator that knows only
  the share of replaced tokens (the binary entropy of that share, rtd_prior_loss: at small scale the
  discriminator stays close to it), and its held-out loss and accuracy;
- the generator's MLM loss and held-out accuracy;
- the tug-of-war the paper (He et al. 2023, section 3) uses to explain the difference: the average cosine
  similarity between the word embeddings of each network's table (over the vocabulary's non-special
  rows). Under ES the two tables are one; the MLM pulls semantically close tokens together and the
  discriminator pulls them apart, so one table serves both badly. Under NES and GDES the generator's
  table is free to become coherent. Also the mean cosine between a token's row in the two tables.

Every run goes through the deepspeed launcher (`--jobs` at once, one rank each); finished runs are reused.
The script prints one table (with the machine), and writes results.json and embedding_sharing.png (with
matplotlib) to --out. --quick checks that it runs (a few steps; the numbers mean nothing).
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# With this folder first on sys.path a top-level `import kernels` (which transformers probes for) would
# find benchmarks/kernels.py.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)

from benchmarks.runs import (Job, machine, prepare_shards, read_metrics, run_jobs, save_figure,  # noqa: E402
                             write_ds_config)

MODES = {"none": "NES (no sharing)", "share": "ES (one table)", "gdes": "GDES (sg(E_G) + E_delta)"}
SHORT = {"none": "NES", "share": "ES", "gdes": "GDES"}
COLORS = {"none": "tab:blue", "share": "tab:red", "gdes": "tab:green"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("--out", default=os.path.join("runs", "embedding_sharing"), help="work folder: shards, runs, table, plot")
    arg("--data", default=None, help="a shard folder with a held-out split (default: OUT/shards, prepared from the "
                                     "built-in corpus if missing)")
    arg("--objective", default="debertav3", choices=("debertav3", "electra"), help="the RTD objective")
    arg("--model", default="deberta-tiny", help="the discriminator's --model (the sharing mode is added to it)")
    arg("--seeds", type=int, nargs="+", default=[1], help="one run per seed and mode")
    arg("--steps", type=int, default=400, help="pretraining steps")
    arg("--batch", type=int, default=16, help="samples per step")
    arg("--max-seq-len", type=int, default=128, help="tokens per sample")
    arg("--lr", type=float, default=1e-3, help="peak learning rate")
    arg("--warmup", type=int, default=40, help="warmup steps")
    arg("--threads", type=int, default=1, help="OMP threads per run")
    arg("--jobs", type=int, default=2, help="runs at once (2 on a 2-core machine)")
    arg("--quick", action="store_true", help="check that the script runs (CI): a few steps")
    arg("--fresh", action="store_true", help="run everything again instead of reusing finished runs in --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.max_seq_len, args.warmup = 6, 4, 64, 2
    for name in ("steps", "batch", "max_seq_len", "threads", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    args.ranks = 1  # run_jobs' launcher setting
    return args


def jobs_for(args, shards):
    config = write_ds_config(os.path.join(args.out, "ds_pretrain.json"), args.batch, args.batch, args.lr,
                             min(args.warmup, max(1, args.steps // 10)))
    jobs = {}
    for seed in args.seeds:
        for mode in MODES:
            folder = os.path.join(args.out, f"seed{seed}", mode)
            script_args = ["--deepspeed_config", config, "--model", f"{args.model},embedding_sharing={mode}",
                           "--objective", args.objective, "--data", shards, "--output", folder,
                           "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len), "--seed", str(seed),
                           "--save-every", str(args.steps), "--keep-checkpoints", "1",
                           "--eval-every", str(max(1, args.steps // 4)), "--log-every", str(max(1, args.steps // 100)),
                           "--num-workers", "0", "--resume", "none"]
            finished = os.path.join(folder, "checkpoints", f"step{args.steps}")
            jobs[seed, mode] = Job(f"{args.objective} {mode} seed {seed}", folder, "train.py", script_args, finished)
    return jobs


def mean_cosine(table):
    """The average cosine similarity of a table's rows with each other (each pair once, no row with itself)."""
    import torch

    rows = torch.nn.functional.normalize(table.double(), dim=1)
    n = rows.shape[0]
    total = rows.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def embedding_similarities(run_dir):
    """(mean cosine within the generator's word table, within the discriminator's, between a token's two rows)
    over the vocabulary's non-special rows, from the run's last checkpoint."""
    import torch

    from spanbert_ds.run.folder import load_run

    objective, _ = load_run(run_dir)
    with open(os.path.join(run_dir, "tokenizer", "meta.json")) as f:
        meta = json.load(f)
    special = {value for key, value in meta.items() if key.endswith("_id") and isinstance(value, int)}
    rows = torch.tensor([i for i in range(objective.config.vocab_size) if i not in special])
    with torch.no_grad():
        generator = objective.generator.encoder.embeddings.word.weight[rows]
        discriminator = objective.encoder.embeddings.word.weight[rows]
    between = (torch.nn.functional.cosine_similarity(generator, discriminator, dim=1).mean().item()
               if generator.shape == discriminator.shape else float("nan"))
    return mean_cosine(generator), mean_cosine(discriminator), between


def collect(jobs, args):
    results = {}
    for (seed, mode), job in jobs.items():
        rows = read_metrics(job.folder)
        trained = [row for row in rows if "rtd_loss" in row]
        tail = trained[-max(1, len(trained) // 10):]
        held_out = [row for row in rows if "eval_rtd_loss" in row]
        last = held_out[-1] if held_out else {}
        g, d, between = embedding_similarities(job.folder)
        results.setdefault(mode, []).append({
            "seed": seed,
            "curve": [(row["step"], row["rtd_loss"]) for row in trained],
            "prior_curve": [(row["step"], row["rtd_prior_loss"]) for row in trained if "rtd_prior_loss" in row],
            "rtd_loss": sum(row["rtd_loss"] for row in tail) / len(tail),
            "rtd_prior_loss": sum(row.get("rtd_prior_loss", float("nan")) for row in tail) / len(tail),
            "mlm_loss": sum(row["mlm_loss"] for row in tail) / len(tail),
            "eval_rtd_loss": last.get("eval_rtd_loss"), "eval_rtd_accuracy": last.get("eval_rtd_accuracy"),
            "eval_mlm_accuracy": last.get("eval_mlm_accuracy"),
            "cosine_generator": g, "cosine_discriminator": d, "cosine_between": between,
        })
    return results


COLUMNS = (("rtd_loss", "disc. loss (last 10%)", "{:.4f}"), ("rtd_prior_loss", "prior's loss", "{:.4f}"), ("eval_rtd_loss", "held-out disc. loss", "{:.4f}"),
           ("eval_rtd_accuracy", "held-out disc. acc", "{:.2%}"), ("mlm_loss", "gen. MLM loss", "{:.3f}"),
           ("eval_mlm_accuracy", "held-out gen. acc", "{:.2%}"), ("cosine_generator", "avg cos G", "{:.3f}"),
           ("cosine_discriminator", "avg cos D", "{:.3f}"), ("cosine_between", "cos(G_i, D_i)", "{:.3f}"))


def table(results, args):
    def cell(mode, key, fmt):
        values = [run[key] for run in results[mode] if run[key] is not None and run[key] == run[key]]
        return fmt.format(sum(values) / len(values)) if values else "n/a"

    lines = [f"embedding sharing in {args.objective} on {args.model}: {args.steps} steps x {args.batch} samples x "
             f"{args.max_seq_len} tokens, seeds {args.seeds} (means over seeds)",
             "| mode | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for mode, label in MODES.items():
        lines.append(f"| {label} | " + " | ".join(cell(mode, key, fmt) for key, _, fmt in COLUMNS) + " |")
    lines.append(f"machine: {machine()}")
    return "\n".join(lines)


def smooth(curve, window=5):
    """A moving average over `window` logged points (the per-step loss is noisy at small batches)."""
    return [(curve[i][0], sum(v for _, v in curve[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)))
            for i in range(len(curve))]


def plot(results, args):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed in this environment: no plot (pip install matplotlib)", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, runs in results.items():
        for i, run in enumerate(runs):
            steps, losses = zip(*smooth(run["curve"]))
            curves.plot(steps, losses, color=COLORS[mode], alpha=0.8, label=MODES[mode] if i == 0 else None)
            if run["prior_curve"]:
                steps, losses = zip(*smooth(run["prior_curve"]))
                curves.plot(steps, losses, color=COLORS[mode], alpha=0.6, linestyle=":",
                            label="knowing only the replaced share" if mode == "none" and i == 0 else None)
    curves.set(xlabel="step", ylabel="discriminator loss (training, smoothed)", title="replaced-token detection loss")
    curves.legend()
    width = 0.38
    for j, (key, label) in enumerate((("cosine_generator", "generator"), ("cosine_discriminator", "discriminator"))):
        heights = [sum(run[key] for run in results[mode]) / len(results[mode]) for mode in MODES]
        bars.bar([i + (j - 0.5) * width for i in range(len(MODES))], heights, width, label=label)
    bars.set_xticks(range(len(MODES)), [SHORT[mode] for mode in MODES])
    bars.set(ylabel="average cosine similarity of word embeddings", title="the tug-of-war on the token table")
    bars.legend()
    return save_figure(fig, args.out, "embedding_sharing.png")


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    shards = prepare_shards(args)
    jobs = jobs_for(args, shards)
    seconds = run_jobs(list(jobs.values()), args, "pretraining")
    results = collect(jobs, args)
    text = table(results, args)
    print(text)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()}, "seconds": seconds, "results": results}, f, indent=1)
    path = plot(results, args)
    if path:
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
