"""SpanBERT's claim at a small scale: span masking + SBO against token masking + MLM, same model, same tokens.

    python benchmarks/span_vs_token.py [--out runs/span_vs_token] [--seeds 1 2 3] [--steps 1000] [--quick]

Two identical `tiny` encoders (2 layers, hidden 128, no segment embeddings) are pretrained by train.py
on the built-in corpus (`spanbert-ds prepare python-docs`, 5% of its documents held out) for the same
steps x batch x sequence length, the same blocks in the same order and the same initial encoder:

- token: objective `roberta`: MLM on single-segment blocks of whole sentences from one document
  (`--packing doc`, SpanBERT's released blocks), 15% of the tokens masked one by one (80% [MASK],
  10% random, 10% kept): BERT's token masking on SpanBERT's single-segment packing;
- span:  objective `spanbert`: MLM + SBO on the same blocks, 15% of the tokens masked in spans of
  whole words (lengths Geometric(0.2) truncated to 1..10), the 80/10/10 choice made per span.

What differs between the two is the masking scheme, the SBO head (its loss, its ~0.1M parameters and
so the norm that gradient clipping sees); everything else (data order, masking budget, optimizer,
schedule, dropout rate, the encoder's initial weights) is the same. The `spanbert` objective would
train segment embeddings that `roberta` does not have; both are built with type_vocab_size=0, so the
encoders are the same module.

Then, for each seed and model:
(a) span filling on the held-out blocks: spans of exactly L = 1..10 whole words (each with an
    unmasked word on both sides), every piece replaced by [MASK], one span per sequence; the MLM
    head's argmax at each masked position (SpanBERT's paper scores the MLM head), accuracy per
    piece and per whole span; the SBO head's too for the span model (on the first max_span_targets
    pieces of a span, which are all it was trained on). The spans are drawn from the seed alone, so
    both models fill exactly the same ones.
(b) fine-tuning by finetune.py on the same subsets of SQuAD v1.1 (F1, exact match) and CoNLL-2003
    (entity F1), the data from scripts/fetch_benchmarks.py. The models use the corpus's own cased
    WordPiece vocabulary of 8000 pieces trained on Python documentation and have seen about a
    million tokens: absolute scores are low; the difference between the two is the point.

Every training run goes through the real commands (the deepspeed launcher; --ranks ranks of
--threads threads each, --jobs runs at once). Finished runs are kept in --out and reused when the
same command is asked for again (--fresh starts over). The script ends with one table (both models,
the difference span - token, its spread over seeds, the machine), a verdict line per measure, PNG
plots (matplotlib, when installed) and results.json, all in --out.

--quick checks that everything runs (CI; about two minutes on an idle 2-core machine): 1 seed, a few
steps, a handful of SQuAD and CoNLL examples. Its numbers mean nothing.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# With this folder first on sys.path a top-level `import kernels` (which transformers probes for) would
# find benchmarks/kernels.py.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)

from benchmarks.runs import (Job, machine, prepare_shards, read_metrics, run_jobs, save_figure,  # noqa: E402
                             write_ds_config)

SCHEMES = {"token": "roberta", "span": "spanbert"}  # our name -> train.py's --objective
LABELS = {"token": "token masking + MLM", "span": "span masking + MLM + SBO"}
COLORS = {"token": "tab:blue", "span": "tab:red"}
MODEL = "tiny,type_vocab_size=0"  # the default --model
LENGTHS = range(1, 11)  # span lengths in words
# task -> (fetch_benchmarks name, train file, eval file, metrics reported, --max-seq-len)
TASKS = {
    "squad": ("squad", "train-v1.1.json", "dev-v1.1.json", ("f1", "exact_match"), 256),
    "ner": ("conll", "train.txt", "valid.txt", ("f1",), 128),
}
TASK_NAMES = {"squad": "SQuAD v1.1", "ner": "CoNLL-2003"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("--out", default=os.path.join("runs", "span_vs_token"), help="work folder: shards, runs, table, plots")
    arg("--data", default=None, help="a shard folder with a held-out split (default: OUT/shards, prepared from the "
                                     "built-in corpus if missing)")
    arg("--model", default=MODEL, help="the encoder both schemes train, e.g. deberta-tiny for the DeBERTa backbone "
                                       "(fine-tuning takes BERT-family encoders only: add --tasks with no task)")
    arg("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one pretraining (and fine-tuning) per seed and model")
    arg("--steps", type=int, default=1000, help="pretraining steps, the same for both models")
    arg("--batch", type=int, default=16, help="pretraining samples per step")
    arg("--max-seq-len", type=int, default=128, help="pretraining tokens per sample")
    arg("--lr", type=float, default=1e-3, help="pretraining peak learning rate (the demo's recipe)")
    arg("--warmup", type=int, default=100, help="pretraining warmup steps")
    arg("--ranks", type=int, default=1, help="ranks per training run (deepspeed launcher)")
    arg("--threads", type=int, default=1, help="OMP threads per rank")
    arg("--jobs", type=int, default=2, help="training runs at once (2 on a 2-core machine: one per core)")
    arg("--spans-per-block", type=int, default=2, help="span-fill sequences per held-out block and length")
    arg("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS), help="fine-tuning tasks (none: skip (b))")
    arg("--benchmarks", default=None, help="where scripts/fetch_benchmarks.py keeps the data (its default cache)")
    arg("--squad-train", type=int, default=1000, help="SQuAD training examples (the first N)")
    arg("--squad-eval", type=int, default=300, help="SQuAD dev examples scored")
    arg("--ner-train", type=int, default=2000, help="CoNLL training sentences")
    arg("--ner-eval", type=int, default=500, help="CoNLL validation sentences scored")
    arg("--ft-epochs", type=float, default=2.0, help="fine-tuning epochs")
    arg("--ft-lr", type=float, default=3e-4, help="fine-tuning peak learning rate (tiny models want more than BERT's)")
    arg("--ft-batch", type=int, default=32, help="fine-tuning batch")
    arg("--quick", action="store_true", help="check that the script runs (CI): 1 seed, few steps, few examples")
    arg("--fresh", action="store_true", help="run everything again instead of reusing finished runs in --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1] if args.seeds != [1, 2, 3] else [1]
        args.steps, args.batch, args.max_seq_len, args.warmup = 12, 8, 64, 2
        args.spans_per_block = 1
        args.squad_train, args.squad_eval, args.ner_train, args.ner_eval = 24, 8, 48, 16
        args.ft_epochs, args.ft_batch = 1.0, 8
    for name in ("steps", "batch", "max_seq_len", "ranks", "threads", "jobs", "spans_per_block", "ft_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.batch % args.ranks or args.ft_batch % args.ranks:
        parser.error(f"--batch {args.batch} and --ft-batch {args.ft_batch} must be multiples of --ranks {args.ranks}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: each seed once")
    return args


# --- running the real commands --------------------------------------------------------------------


def pretraining_jobs(args, shards):
    config = write_ds_config(os.path.join(args.out, "ds_pretrain.json"), args.batch, args.batch // args.ranks,
                             args.lr, min(args.warmup, max(1, args.steps // 10)))
    jobs = {}
    for seed in args.seeds:
        for scheme, objective in SCHEMES.items():
            folder = os.path.join(args.out, f"seed{seed}", scheme, "pretrain")
            script_args = ["--deepspeed_config", config, "--model", args.model, "--objective", objective, "--packing", "doc",
                           "--data", shards,
                           "--output", folder, "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len),
                           "--seed", str(seed), "--save-every", str(args.steps), "--keep-checkpoints", "1",
                           "--eval-every", str(max(1, args.steps // 5)), "--log-every", str(max(1, args.steps // 100)),
                           "--num-workers", "0", "--resume", "none"]
            finished = os.path.join(folder, "checkpoints", f"step{args.steps}")
            jobs[seed, scheme] = Job(f"pretraining {scheme} seed {seed}", folder, "train.py", script_args, finished)
    return jobs


def finetuning_jobs(args, pretrained, files):
    config = write_ds_config(os.path.join(args.out, "ds_finetune.json"), args.ft_batch, args.ft_batch // args.ranks,
                             args.ft_lr, 10)
    limits = {"squad": (args.squad_train, args.squad_eval), "ner": (args.ner_train, args.ner_eval)}
    jobs = {}
    for (seed, scheme), pretrain in pretrained.items():
        for task in args.tasks:
            name, train, evaluate, _, seq_len = TASKS[task]
            folder = os.path.join(args.out, f"seed{seed}", scheme, task)
            script_args = ["--deepspeed_config", config, "--task", task, "--init", pretrain.folder,
                           "--train", os.path.join(files[name], train), "--eval", os.path.join(files[name], evaluate),
                           "--output", folder, "--train-limit", str(limits[task][0]), "--eval-limit",
                           str(limits[task][1]), "--epochs", str(args.ft_epochs), "--max-seq-len", str(seq_len),
                           "--seed", str(seed), "--log-every", "5", "--keep-checkpoints", "1", "--resume", "none"]
            jobs[seed, scheme, task] = Job(f"fine-tuning {scheme} seed {seed} on {task}", folder, "finetune.py",
                                           script_args, os.path.join(folder, "results.json"))
    return jobs


def fetch_task_data(args):
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        from fetch_benchmarks import fetch
    except ImportError as error:
        raise SystemExit(f"scripts/fetch_benchmarks.py is needed for fine-tuning ({error}); pass --tasks with no "
                         "task to skip (b)") from None
    names = sorted({TASKS[task][0] for task in args.tasks})
    return fetch(names, args.benchmarks) if args.benchmarks else fetch(names)


# --- (a) span filling on held-out text ------------------------------------------------------------


def span_fill_set(shards_path, max_seq_len, seed, spans_per_block):
    """The held-out blocks and, for each length L in words, spans of exactly L whole words.

    A span is a run of L words inside one segment (no [CLS]/[SEP] in it) with one more word of the
    same segment on each side, so both boundary tokens are real text. Up to `spans_per_block` per block
    and length, at random word positions drawn from `seed` alone. Returns (input_ids (B, T),
    attention_mask (B, T), spans: int64 (N, 4) rows of (block, L, first position, end position))."""
    from spanbert_ds.data.packing import PackedSamples
    from spanbert_ds.data.shards import Shards

    valid = Shards(shards_path).valid
    samples = PackedSamples(valid, "doc", max_seq_len, seed=0)
    blocks = samples.batch(np.arange(len(samples)))
    starts, special = blocks["word_starts"], blocks["special_mask"] | (blocks["attention_mask"] == 0)
    rng = np.random.default_rng([seed, 0x5FA1])
    spans = []
    T = starts.shape[1]
    for b in range(len(starts)):
        word_at = np.flatnonzero(starts[b])  # first piece of each word
        if len(word_at) < 3:
            continue
        segment = np.cumsum(special[b])[word_at]  # specials before each word: equal = same segment
        # a word ends where the next word or special token begins
        boundary = np.flatnonzero(starts[b] | special[b])
        following = np.searchsorted(boundary, word_at, side="right")
        ends = np.append(boundary, T)[following]
        for L in LENGTHS:
            # word k starts a span when words k-1 .. k+L are all in one segment
            k = np.arange(1, len(word_at) - L)
            if not len(k):
                continue
            k = k[segment[k - 1] == segment[k + L]]
            if not len(k):
                continue
            for first in rng.choice(k, size=min(spans_per_block, len(k)), replace=False):
                spans.append((b, L, word_at[first], ends[first + L - 1]))
    return blocks["input_ids"], blocks["attention_mask"], np.array(spans, dtype=np.int64).reshape(-1, 4), valid


def span_fill(run_dir, scheme, fill_set, batch_size=128):
    """Per length L: piece accuracy and exact-span accuracy of the MLM head (and the SBO head's)."""
    import torch

    from spanbert_ds.model.heads import gather_rows
    from spanbert_ds.run.folder import load_run

    input_ids, attention_mask, spans, valid = fill_set
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed's notes on consolidating the checkpoint
        objective, _ = load_run(run_dir)
    objective.eval()
    max_targets = objective.config.sbo_max_targets
    if hasattr(objective, "sbo_head"):
        with open(os.path.join(run_dir, "run_config.json")) as f:
            max_targets = min(max_targets, json.load(f)["masking_config"]["max_span_targets"])
    T = input_ids.shape[1]
    heads = ["mlm"] + (["sbo"] if hasattr(objective, "sbo_head") else [])
    right = {head: [] for head in heads}  # one bool array per span: its pieces predicted right
    with torch.inference_mode():
        for at in range(0, len(spans), batch_size):
            chunk = spans[at:at + batch_size]
            ids = torch.from_numpy(input_ids[chunk[:, 0]].copy())
            mask = torch.from_numpy(attention_mask[chunk[:, 0]])
            lengths = chunk[:, 3] - chunk[:, 2]
            row = np.repeat(np.arange(len(chunk)), lengths)
            offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # 0.. within a span
            position = torch.from_numpy(np.repeat(chunk[:, 2], lengths) + offset)
            flat = torch.from_numpy(row) * T + position
            labels = ids.view(-1)[flat].clone()
            ids.view(-1)[flat] = valid.mask_id
            batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
            hidden = objective.encode(batch)
            guess = {"mlm": objective.mlm_head(gather_rows(hidden, flat)).argmax(-1)}
            if "sbo" in heads:
                left = torch.from_numpy(row * T + np.repeat(chunk[:, 2] - 1, lengths))
                right_edge = torch.from_numpy(row * T + np.repeat(chunk[:, 3], lengths))
                rel = torch.from_numpy(np.minimum(offset + 1, max_targets))
                guess["sbo"] = objective.sbo_head(gather_rows(hidden, left), gather_rows(hidden, right_edge),
                                                  rel).argmax(-1)
            splits = np.cumsum(lengths)[:-1]
            for head in heads:
                correct = (guess[head] == labels).numpy()
                if head == "sbo":  # only the first max_targets pieces of a span were ever SBO targets
                    correct = np.where(offset < max_targets, correct, -1)
                right[head] += np.split(correct.astype(np.int8), splits)
    scores = {}
    for head in heads:
        for L in LENGTHS:
            chosen = [r[r >= 0] for r, length in zip(right[head], spans[:, 1]) if length == L]
            pieces = np.concatenate(chosen) if chosen else np.zeros(0)
            scores[f"{head}_piece_L{L}"] = float(pieces.mean()) if pieces.size else float("nan")
            scores[f"{head}_span_L{L}"] = float(np.mean([r.all() for r in chosen])) if chosen else float("nan")
            scores[f"n_spans_L{L}"] = len(chosen)
        scores[f"{head}_piece_mean"] = float(np.nanmean([scores[f"{head}_piece_L{L}"] for L in LENGTHS]))
        scores[f"{head}_span_mean"] = float(np.nanmean([scores[f"{head}_span_L{L}"] for L in LENGTHS]))
    return scores


# --- collecting, the table, the verdicts, the plots -------------------------------------------------


def percent(finetuned, task, metric):
    """A fine-tuning score in percent: SQuAD's official script reports 0-100, seqeval 0-1."""
    return finetuned[task][metric] * (100 if task == "ner" else 1)


def summarise(results, args):
    """{measure: {scheme: [value per seed]}} for the table (measure order kept)."""
    measures = {}

    def put(name, scheme, value):
        measures.setdefault(name, {s: [] for s in SCHEMES})[scheme].append(value)

    for seed in args.seeds:
        for scheme in SCHEMES:
            r = results[str(seed)][scheme]
            train = [row for row in r["metrics"] if "mlm_loss" in row]
            tail = train[-max(1, len(train) // 10):]  # the last tenth of the logged steps
            put("pretraining MLM loss (last 10% of steps, own masks)", scheme,
                statistics.fmean(row["mlm_loss"] for row in tail))
            held_out = [row for row in r["metrics"] if "eval_mlm_accuracy" in row]
            if held_out:
                put("held-out MLM accuracy % (own masks)", scheme, 100 * held_out[-1]["eval_mlm_accuracy"])
            fill = r["span_fill"]
            put("span fill, piece accuracy %, mean of L=1..10", scheme, 100 * fill["mlm_piece_mean"])
            for L in LENGTHS:
                put(f"span fill, piece accuracy %, L={L}", scheme, 100 * fill[f"mlm_piece_L{L}"])
            put("span fill, whole spans right %, mean of L=1..10", scheme, 100 * fill["mlm_span_mean"])
            for task in args.tasks:
                for metric in TASKS[task][3]:
                    put(f"{TASK_NAMES[task]} {metric} %", scheme, percent(r["finetune"], task, metric))
    return measures


def verdict(differences):
    better = sum(d > 0 for d in differences)
    worse = sum(d < 0 for d in differences)
    if better == len(differences):
        return f"span better in all {len(differences)} seeds"
    if worse == len(differences):
        return f"token better in all {len(differences)} seeds"
    return f"mixed: span better in {better} of {len(differences)} seeds"


def spread(values):
    mean = statistics.fmean(values)
    return (mean, statistics.stdev(values)) if len(values) > 1 else (mean, float("nan"))


def fmt(mean, sd):
    return f"{mean:8.2f}" + (f" ± {sd:5.2f}" if sd == sd else "        ")


def table(measures, args, timings):
    lines = [f"span vs token masking: {args.model} pretrained {args.steps} steps x {args.batch} samples x "
             f"{args.max_seq_len} tokens on the built-in corpus, seeds {' '.join(map(str, args.seeds))} "
             f"(mean ± sd over seeds); span - token is the paired difference per seed"]
    width = max(len(name) for name in measures)
    lines.append(f"{'measure':<{width}}  {'token (MLM)':>16}  {'span (MLM+SBO)':>16}  {'span - token':>16}  verdict")
    verdicts = {}
    for name, per in measures.items():
        differences = [s - t for t, s in zip(per["token"], per["span"])]
        verdicts[name] = verdict(differences) if "loss" not in name else "(lower is better; masks differ)"
        lines.append(f"{name:<{width}}  {fmt(*spread(per['token']))}  {fmt(*spread(per['span']))}  "
                     f"{fmt(*spread(differences))}  {verdicts[name]}")
    lines.append("machine: " + machine())
    lines.append("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    return "\n".join(lines), verdicts


def plots(results, args):
    """PNG figures in --out; returns their paths (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed in this environment: no PNG plots (pip install matplotlib); the table "
              "and results.json have every number", flush=True)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    seeds = [str(seed) for seed in args.seeds]

    # 1. pretraining losses (mean over seeds, band from the lowest to the highest seed)
    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for scheme in SCHEMES:
        curves = [("mlm_loss", "MLM", "-")] + ([("sbo_loss", "SBO", "--")] if scheme == "span" else [])
        for key, part, style in curves:
            runs = [[(row["step"], row[key]) for row in results[s][scheme]["metrics"] if key in row] for s in seeds]
            steps = np.array([step for step, _ in runs[0]])
            values = np.array([[value for _, value in run][:len(steps)] for run in runs])
            train_ax.plot(steps, values.mean(0), style, color=COLORS[scheme], label=f"{scheme}: {part}")
            train_ax.fill_between(steps, values.min(0), values.max(0), color=COLORS[scheme], alpha=0.15)
        evals = [[(row["step"], row["eval_mlm_loss"]) for row in results[s][scheme]["metrics"]
                  if "eval_mlm_loss" in row] for s in seeds]
        if evals[0]:
            steps = np.array([step for step, _ in evals[0]])
            values = np.array([[value for _, value in run][:len(steps)] for run in evals])
            eval_ax.errorbar(steps, values.mean(0), yerr=values.std(0), marker="o", color=COLORS[scheme],
                             label=LABELS[scheme], capsize=3)
    train_ax.set(title="pretraining loss (training batches)", xlabel="step", ylabel="cross-entropy")
    eval_ax.set(title="held-out MLM loss (each model's own masks)", xlabel="step", ylabel="cross-entropy")
    for ax in (train_ax, eval_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    paths.append(save_figure(fig, args.out, "pretraining_loss.png"))

    # 2. span-fill accuracy per length
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines = [("token", "mlm", "token: MLM head", "-o"), ("span", "mlm", "span: MLM head", "-o"),
             ("span", "sbo", "span: SBO head", "--s")]
    for ax, kind, title in ((axes[0], "piece", "pieces right"), (axes[1], "span", "whole spans right")):
        for scheme, head, label, style in lines:
            values = np.array([[results[s][scheme]["span_fill"][f"{head}_{kind}_L{L}"] for L in LENGTHS]
                               for s in seeds]) * 100
            ax.errorbar(list(LENGTHS), values.mean(0), yerr=values.std(0), fmt=style, color=COLORS[scheme],
                        label=label, capsize=3, alpha=1.0 if head == "mlm" else 0.6)
        ax.set(title=f"held-out span filling: {title}", xlabel="span length L (words, all pieces [MASK])",
               ylabel="accuracy %", xticks=list(LENGTHS))
        ax.legend()
        ax.grid(alpha=0.3)
    paths.append(save_figure(fig, args.out, "span_fill_accuracy.png"))

    # 3. fine-tuning scores
    if args.tasks:
        names = [(task, metric) for task in args.tasks for metric in TASKS[task][3]]
        fig, ax = plt.subplots(figsize=(2.2 * len(names) + 2, 4))
        for i, scheme in enumerate(SCHEMES):
            x = np.arange(len(names)) + (i - 0.5) * 0.38
            values = np.array([[percent(results[s][scheme]["finetune"], task, metric) for task, metric in names]
                               for s in seeds])
            ax.bar(x, values.mean(0), width=0.36, color=COLORS[scheme], alpha=0.7, label=LABELS[scheme])
            for row in values:
                ax.plot(x, row, "k.", markersize=5)
        ax.set_xticks(np.arange(len(names)), [f"{TASK_NAMES[task]}\n{metric}" for task, metric in names])
        ax.set(title="fine-tuned (bars: mean over seeds, dots: seeds)", ylabel="score %")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        paths.append(save_figure(fig, args.out, "finetune_scores.png"))
    return paths


# --- main -----------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    import torch
    torch.set_num_threads(max(1, args.threads * args.jobs))
    begun, timings = time.monotonic(), {}
    shards = prepare_shards(args)
    files = None
    if args.tasks:  # before any training, so missing data is found in seconds, not after an hour
        files = fetch_task_data(args)

    print(f"\n== (pretraining) {len(args.seeds)} seed(s) x 2 models, {args.steps} steps each", flush=True)
    pretrained = pretraining_jobs(args, shards)
    timings["pretraining"] = run_jobs(list(pretrained.values()), args, "pretraining")

    print("\n== (a) span filling on the held-out blocks", flush=True)
    started = time.monotonic()
    results = {str(seed): {scheme: {} for scheme in SCHEMES} for seed in args.seeds}
    for seed in args.seeds:
        fill_set = span_fill_set(shards, args.max_seq_len, seed, args.spans_per_block)
        for scheme in SCHEMES:
            r = results[str(seed)][scheme]
            r["metrics"] = read_metrics(pretrained[seed, scheme].folder)
            r["span_fill"] = span_fill(pretrained[seed, scheme].folder, scheme, fill_set)
        print(f"  seed {seed}: {len(fill_set[2])} spans in {len(fill_set[0])} blocks; mean piece accuracy token "
              f"{100 * results[str(seed)]['token']['span_fill']['mlm_piece_mean']:.1f}%, span "
              f"{100 * results[str(seed)]['span']['span_fill']['mlm_piece_mean']:.1f}%", flush=True)
    timings["span filling"] = time.monotonic() - started

    if args.tasks:
        print(f"\n== (b) fine-tuning on {', '.join(TASK_NAMES[t] for t in args.tasks)}", flush=True)
        finetuned = finetuning_jobs(args, pretrained, files)
        timings["fine-tuning"] = run_jobs(list(finetuned.values()), args, "fine-tuning")
        for (seed, scheme, task), job in finetuned.items():
            with open(job.finished_file) as f:
                results[str(seed)][scheme].setdefault("finetune", {})[task] = json.load(f)["metrics"]
    timings["total"] = time.monotonic() - begun

    measures = summarise(results, args)
    text, verdicts = table(measures, args, timings)
    print("\n" + text)
    paths = plots(results, args)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results, "measures": measures, "verdicts": verdicts,
                   "timings_s": timings, "machine": machine()}, f, indent=1)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    print(f"\ntable: {os.path.join(args.out, 'table.txt')}; every number: {os.path.join(args.out, 'results.json')}")
    for path in paths:
        print(f"plot: {path}")
    if args.quick:
        print("(--quick: a check that the script runs; its numbers mean nothing)")


if __name__ == "__main__":
    main()
