"""Fine-tuning: `deepspeed finetune.py --deepspeed_config ds_configs/X.json --task squad|classify|ner
--init RUN_OR_HF_DIR --train FILE --eval FILE --output DIR`.

run -> prepare -> train -> finish, on the pretraining run's machinery: the same engine, ZeRO stages and
precision (the ds_config), monitor (TensorBoard, metrics.jsonl, progress bar), checkpoints with
completion markers, --resume auto and stop signals. prepare reads and featurises the data on every
rank (the same arrays everywhere, before the process group exists, so bad input is one line before
any work); finish scores --eval with the task's official metric, writes the predictions file and
results.json, and exports the model in the Hugging Face format of its task (RUN/hf/).
"""

import contextlib
import io
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from spanbert_ds.data.hashing import mix
from spanbert_ds.errors import UserError
from spanbert_ds.finetune import batches
from spanbert_ds.finetune.args import add_arguments, check_args
from spanbert_ds.finetune.init import Init, load_into, load_weights, open_init, tokenizer_of
from spanbert_ds.finetune.model import TaskModel
from spanbert_ds.finetune.sift import SiFT
from spanbert_ds.finetune.tasks import MODEL_INPUTS, TASKS
from spanbert_ds.train import checkpoint, run_folder
from spanbert_ds.train.args import load_ds_config
from spanbert_ds.train.distributed import (fill_rank_environment, initialize_engine, said_by_rank_0,
                                           start_process_group)
from spanbert_ds.train.monitor import Monitor, StepSums, optimizer_scalars
from spanbert_ds.train.signals import EXIT_PREEMPTED, StopRequest

__all__ = ["add_arguments", "run"]


def run(args):
    stop = StopRequest()
    rank, world_size, local_rank = fill_rank_environment()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    try:
        prepared = prepare(args, world_size)
    except UserError:
        said_by_rank_0(rank)
        raise
    try:
        return train(args, prepared, rank, world_size, stop)
    finally:  # also after an error: a process group left open aborts the interpreter's exit
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class FineTuning:
    """What a fine-tuning run is made of, built and checked by prepare() on every rank."""

    ds_config: dict
    init: Init
    tokenizer: object  # tokenizers.Tokenizer, the encoder's
    task: object  # a TASKS class instance
    sift: SiFT | None
    train_features: dict
    eval_examples: list | None
    eval_features: dict | None
    total_steps: int
    save_every: int
    ckpt_root: str
    identity: dict  # what a resume must keep
    resume_tag: str | None

    @property
    def global_batch(self):
        return self.ds_config["train_batch_size"]


def prepare(args, world_size):
    check_args(args)
    init = open_init(args.init)  # its shape and encoder kind; the weights are read last, after every other check
    task_class = TASKS[args.task]
    options = dict(doc_stride=args.doc_stride, max_query_len=args.max_query_len, max_answer_len=args.max_answer_len,
                   n_best=args.n_best) if args.task == "squad" else {}
    if args.max_seq_len > init.config.max_position_embeddings:
        raise UserError(f"--max-seq-len {args.max_seq_len} is longer than the encoder's "
                        f"{init.config.max_position_embeddings} positions ({init.description}); lower it")
    try:
        sift = SiFT.from_spec(args.sift) if args.sift is not None else None
    except ValueError as error:
        raise UserError(str(error)) from None
    tokenizer = tokenizer_of(init)
    task = task_class(tokenizer, args.max_seq_len, **options)
    train_examples = task.read(args.train)
    if task.labels is None and hasattr(task, "fit_labels"):
        task.fit_labels(train_examples)  # the whole file's labels: --train-limit's first rows may lack some
    train_examples = train_examples[:args.train_limit]
    train_features = task.features(train_examples, train=True)
    eval_examples = eval_features = None
    if args.eval:
        eval_examples = task.read(args.eval)[:args.eval_limit]
        eval_features = task.features(eval_examples, train=False)
    n_rows = len(train_features["input_ids"])
    if n_rows == 0:
        raise UserError(f"--train {args.train}: no training inputs came out of it")

    notes = []
    per_epoch = batches.steps_per_epoch(n_rows, _global_batch(args.deepspeed_config, world_size))
    total_steps = args.steps or max(1, math.ceil(args.epochs * per_epoch))
    ds_config = load_ds_config(args.deepspeed_config, world_size, total_steps, notes)
    save_every = args.save_every or per_epoch
    ckpt_root = os.path.join(args.output, "checkpoints")
    identity = json.loads(json.dumps({
        "task": args.task, "init": init.description, "train": os.path.abspath(args.train),
        "train_rows": n_rows, "labels": task.labels, "max_seq_len": args.max_seq_len, "seed": args.seed,
        "train_limit": args.train_limit, "options": options, "train_batch_size": ds_config["train_batch_size"],
        "world_size": world_size, "zero_stage": ds_config.get("zero_optimization", {}).get("stage", 0),
    }))
    resume_tag = _resume_point(args, ckpt_root, identity)
    init = load_weights(init)
    for note in notes if int(os.environ.get("RANK", 0)) == 0 else ():
        print(f"note: {note}", file=sys.stderr)
    return FineTuning(ds_config, init, tokenizer, task, sift, train_features, eval_examples, eval_features, total_steps, save_every,
                      ckpt_root, identity, resume_tag)


def _global_batch(ds_config_path, world_size):
    return load_ds_config(ds_config_path, world_size, 1)["train_batch_size"]


def _resume_point(args, ckpt_root, identity):
    found = checkpoint.complete_checkpoints(ckpt_root)
    if not found:
        return None
    latest = found[-1]
    if args.resume == "none":
        raise UserError(f"--resume none, but {ckpt_root} holds checkpoints of an earlier run (the latest "
                        f"{checkpoint.tag_of(latest['step'])}); continue it with --resume auto, or give this run "
                        "its own --output")
    changed = [k for k in identity if latest.get("identity", {}).get(k) != identity[k]]
    if changed:
        key = changed[0]
        raise UserError(f"--output {args.output} holds a fine-tuning run with another {key} "
                        f"({latest.get('identity', {}).get(key)!r}, now {identity[key]!r}); resume it unchanged, or "
                        "give this run its own --output")
    return checkpoint.tag_of(latest["step"])


def train(args, run, rank, world_size, stop):
    start_process_group(rank, world_size)

    torch.manual_seed(args.seed)  # the same head initialisation on every rank
    task = run.task
    model = TaskModel(run.init.config, task.head, len(task.labels) if task.labels else 2, run.sift)
    initialised = load_into(model, run.init)
    weight_decay = run.ds_config["optimizer"].get("params", {}).get("weight_decay", 0.0)
    engine = initialize_engine(model, run.ds_config, args.deepspeed_config, rank, weight_decay)
    folder_lock = run_folder.lock(args.output, rank)
    if rank == 0:  # only now: a run that DeepSpeed refuses leaves no folder behind
        _write_run_folder(args, run, world_size)
    start = 0
    if run.resume_tag:
        checkpoint.check_loadable(os.path.join(run.ckpt_root, run.resume_tag))
        _, client_state = engine.load_checkpoint(run.ckpt_root, tag=run.resume_tag)
        start = client_state["step"]
    monitor = Monitor(args.output, rank == 0, start, run.total_steps, *model.training_flops(args.max_seq_len),
                      desc=f"fine-tuning {args.task}")
    monitor.message(f"resumed from {run.resume_tag} at step {start}" if start else
                    f"initialised from {run.init.description}; new: {', '.join(_heads(initialised)) or 'nothing'}; "
                    f"{len(run.train_features['input_ids'])} training inputs, {run.total_steps} steps")

    micro, accumulation = run.ds_config["train_micro_batch_size_per_gpu"], run.ds_config["gradient_accumulation_steps"]
    keys = MODEL_INPUTS + task.target_keys
    n_rows = len(run.train_features["input_ids"])
    sums = StepSums(engine.device, ("loss", "task_loss", "sift_loss"))
    exit_code, step, scores = 0, start, {}
    for step in range(start + 1, run.total_steps + 1):
        rows = batches.step_rows(n_rows, run.global_batch, args.seed, step - 1)
        for m, micro_rows in enumerate(batches.micro_batch_rows(rows, micro, accumulation, world_size, rank)):
            torch.manual_seed(int(mix(_key(args.seed, step, m))))  # dropout: a function of (seed, step, micro-batch)
            batch = batches.collate(run.train_features, micro_rows, keys, engine.device)
            out = engine(batch)
            engine.backward(out["loss"])
            lr = engine.get_lr()[0]
            engine.step()
            sums.add(out, batch)
        parts, counts, stop_requested = sums.reduce(stop.signal is not None, accumulation * world_size)
        monitor.count(*counts)
        last = step == run.total_steps
        scalars = {}
        due = last or (args.eval_every and step % args.eval_every == 0 and not stop_requested)
        if run.eval_features is not None and due:
            with monitor.paused():
                scores = _evaluate(engine, run, args, world_size, rank, write=last)
            scalars = {f"eval_{k}": v for k, v in scores.items()}
        if scalars or step % args.log_every == 0 or last or stop_requested:
            monitor.log(step, {**parts, **optimizer_scalars(engine), "lr": lr, **scalars})
        if step % run.save_every == 0 or last or stop_requested:
            with monitor.paused():
                _save(engine, run, args, step, world_size)
        if stop_requested and not last:
            monitor.message(f"stop requested ({stop.signal or 'by another rank'}): saved {checkpoint.tag_of(step)}; "
                            "resume with --resume auto")
            exit_code = EXIT_PREEMPTED
            break
    if exit_code == 0:
        dist.barrier()
        if rank == 0:
            _finish(args, run, step, scores)
    monitor.close()
    dist.barrier()
    if folder_lock:
        folder_lock.release()
    return exit_code


def _key(seed, step, micro):
    return np.uint64(((seed * 1_000_003 + step) * 4099 + micro) & 0xFFFFFFFFFFFFFFFF)


def _heads(names):
    return sorted({name.rsplit(".", 1)[0] for name in names})


def _save(engine, run, args, step, world_size):
    client_state = {"step": step, "seed": args.seed}
    marker = {"world_size": world_size, "zero_stage": engine.zero_optimization_stage(),
              "train_batch_size": run.global_batch, "identity": run.identity}
    checkpoint.save(engine, run.ckpt_root, step, client_state, args.keep_checkpoints, marker)


def _evaluate(engine, run, args, world_size, rank, write=False):
    """The task's metrics on --eval (all ranks predict; rank 0 scores and, with write, writes the predictions).
    Returns the metrics on rank 0, {} elsewhere."""
    logits = batches.predict(engine, run.eval_features, MODEL_INPUTS, run.ds_config["train_micro_batch_size_per_gpu"],
                             world_size, rank)
    if rank != 0:
        return {}
    metrics, predictions = run.task.evaluate(run.eval_examples, run.eval_features, logits)
    if write:
        run.task.write_predictions(predictions, os.path.join(args.output, run.task.predictions_file))
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _finish(args, run, step, scores):
    """Rank 0: results.json and the Hugging Face export of the last checkpoint's fp32 weights."""
    from spanbert_ds.interop.hf import export_task_hf

    tag = checkpoint.tag_of(step)
    model = TaskModel(run.init.config, run.task.head, len(run.task.labels) if run.task.labels else 2)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = checkpoint.fp32_state_dict(run.ckpt_root, tag, model)  # zero_to_fp32 reports every step it takes
    out = os.path.join(args.output, "hf")
    tmp = f"{out}.tmp{os.getpid()}"
    tokenizer = run.init.tokenizer_path
    if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        tokenizer = run.tokenizer  # a folder with a vocab.txt only
    try:
        export_task_hf(state, run.init.config, run.task.hf_architecture, run.task.labels, tokenizer, tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    results = {"task": args.task, "step": step, "checkpoint": tag, "init": run.init.description,
               "train": args.train, "eval": args.eval, "metrics": scores, "export": out}
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    summary = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k in ("exact_match", "f1", "accuracy",
                                                                              "macro_f1", "precision", "recall"))
    print(f"done: {step} steps. {summary or 'no --eval given'}. Results: {os.path.join(args.output, 'results.json')}  "
          f"model: {out} (transformers.{run.task.hf_architecture}.from_pretrained)", file=sys.stderr)


def _write_run_folder(args, run, world_size):
    os.makedirs(args.output, exist_ok=True)
    run.init.config.to_json(os.path.join(args.output, "model_config.json"))
    resolved = {"args": {k: v for k, v in vars(args).items()}, "ds_config": run.ds_config, "world_size": world_size,
                "identity": run.identity, "total_steps": run.total_steps}
    with open(os.path.join(args.output, "run_config.json"), "w") as f:
        json.dump(resolved, f, indent=2, default=str)
