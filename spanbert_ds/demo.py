"""`spanbert-ds demo`: the README's main command.

Prepares the built-in corpus, pretrains a small SpanBERT on CPU for a few minutes
through the deepspeed launcher (2 ranks, ZeRO-2), exports it to the Hugging Face
format and says where everything is.
"""

import json
import os
import shutil
import subprocess
import sys

from spanbert_ds.errors import UserError
from spanbert_ds.train.distributed import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_arguments(parser):
    parser.add_argument("--workdir", default="runs/demo", help="where shards, the run and the exported model go (default: %(default)s)")
    parser.add_argument("--ranks", type=int, default=2, help="processes started by the deepspeed launcher (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--model", default="small", help="model preset (default: %(default)s)")
    parser.add_argument("--max-seq-len", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument("--deepspeed-config", default=os.path.join(REPO, "ds_configs", "cpu_zero2.json"), help="(default: ds_configs/cpu_zero2.json)")


def run(args):
    train_script = os.path.join(REPO, "train.py")
    if not os.path.isfile(train_script):
        raise UserError(f"the demo runs {train_script}, which is not there: run it from a source checkout of spanbert_ds")
    shards = os.path.join(args.workdir, "shards")
    run_dir = os.path.join(args.workdir, "run")
    hf_dir = os.path.join(args.workdir, "hf")

    if not os.path.isfile(os.path.join(shards, "meta.json")):
        _step(f"1/4 preparing the built-in corpus (CPython's docs and docstrings) into {shards}")
        _call([sys.executable, "-m", "spanbert_ds.cli", "prepare", "python-docs", shards, "--tokenizer", "wordpiece", "--vocab-size", "8000"])
    else:
        _step(f"1/4 using the prepared corpus in {shards}")
    _step("2/4 masking statistics of the SpanBERT span masker on it")
    _call([sys.executable, "-m", "spanbert_ds.cli", "mask-stats", shards, "--max-seq-len", str(args.max_seq_len), "--batches", "20"])

    _step(f"3/4 pretraining a {args.model} SpanBERT (MLM + SBO) for {args.steps} steps: deepspeed launcher, {args.ranks} CPU ranks, ZeRO-2")
    command = [
        _deepspeed_launcher(), "--num_gpus", str(args.ranks), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        train_script, "--deepspeed_config", args.deepspeed_config, "--model", args.model, "--objective", "spanbert",
        "--data", shards, "--output", run_dir, "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len),
        "--save-every", str(args.steps), "--log-every", "5", "--num-workers", "1", "--resume", "none",
    ]
    if os.path.isdir(run_dir):  # each demo trains afresh (--resume none refuses a folder with checkpoints)
        print(f"(replacing the previous demo run in {run_dir})", flush=True)
        shutil.rmtree(run_dir)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(max(1, os.cpu_count() // args.ranks)))
    _call(command, env=env)

    _step(f"4/4 exporting to the Hugging Face format in {hf_dir}")
    _call([sys.executable, "-m", "spanbert_ds.cli", "export", run_dir, hf_dir, "--overwrite"])

    losses = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    first, last = losses[0], losses[-1]
    print(
        f"\nloss fell from {first['loss']:.3f} (step {first['step']}) to {last['loss']:.3f} (step {last['step']}); "
        f"mlm {first['mlm_loss']:.3f} -> {last['mlm_loss']:.3f}, sbo {first['sbo_loss']:.3f} -> {last['sbo_loss']:.3f}\n"
        f"TensorBoard logs: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}\n"
        f"metrics:          {os.path.join(run_dir, 'metrics.jsonl')}\n"
        f"Hugging Face:     {hf_dir}  (transformers.BertForPreTraining.from_pretrained({hf_dir!r}))"
    )


def _deepspeed_launcher():
    """The `deepspeed` script of this Python's environment, also when that environment is not activated."""
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    found = beside if os.path.isfile(beside) else shutil.which("deepspeed")
    if not found:
        raise UserError("the `deepspeed` launcher is not installed in this environment; run `make demo`, or `pip install deepspeed`")
    return found


def _step(text):
    print(f"\n== {text}", flush=True)


def _call(command, **kwargs):
    done = subprocess.run(command, **kwargs)
    if done.returncode != 0:
        raise UserError(f"`{' '.join(command[:4])} ...` failed with exit code {done.returncode} (its output is above)")
