"""Fine-tuning: `deepspeed finetune.py --deepspeed_config ds_configs/X.json --task squad|classify|ner
--init RUN_OR_HF_DIR --train FILE --eval FILE --output DIR`.

run -> prepare -> train (run/start.py) -> finish, on the run layer pretraining uses (spanbert_ds/run/): the same engine,
ZeRO stages and precision (the ds_config), run folder and lock, monitor (TensorBoard, metrics.jsonl,
progress bar), checkpoints with completion markers, --resume auto on any number of ranks (through the
universal format) and stop signals, and the same batch plan and dropout seeds (data/loader.py). prepare reads and featurises the data on every
rank (the same arrays everywhere, before the process group exists, so bad input is one line before
any work); finish scores --eval with the task's official metric, writes the predictions file and
results.json, and exports the model in the Hugging Face format of its task (RUN/hf/) with the export
function cli.py hands down (interop sits above fine-tuning).
"""

import contextlib
import io
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from spanbert_ds.data.loader import BatchPlan
from spanbert_ds.data.masking import MODEL_INPUTS
from spanbert_ds.errors import UserError
from spanbert_ds.finetune import batches
from spanbert_ds.finetune.args import add_arguments, check_args
from spanbert_ds.finetune.init import Init, load_into, load_weights, open_init, tokenizer_of
from spanbert_ds.finetune.model import TaskModel
from spanbert_ds.finetune.sift import SiFT
from spanbert_ds.finetune.tasks import TASKS
from spanbert_ds.run import checkpoint, folder, resume
from spanbert_ds.run.distributed import initialize_engine, start_process_group
from spanbert_ds.run.ds_config import load_ds_config
from spanbert_ds.run.monitor import Monitor, StepSums, optimizer_scalars
from spanbert_ds.run.signals import EXIT_PREEMPTED
from spanbert_ds.run.start import start

__all__ = ["add_arguments", "run"]


def run(args, export_task=None, hf=None):
    """export_task: writes the fine-tuned model as a Hugging Face folder (interop's export_task_hf, handed down
    by cli.py); None: no export. hf: what reads a Hugging Face --init (interop/hf.py, also handed down)."""
    return start(lambda world_size, rank: prepare(args, world_size, rank, hf),
                 lambda prepared, rank, world_size, stop: train(args, prepared, rank, world_size, stop, export_task))


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
    plan: BatchPlan
    total_steps: int
    save_every: int
    ckpt_root: str
    identity: dict  # what a resume must keep
    resume_tag: str | None
    load_universal: bool  # through DeepSpeed's universal format (another world size or ZeRO stage)


def prepare(args, world_size, rank=0, hf=None):
    check_args(args)
    init = open_init(args.init, hf)  # its shape and encoder kind; the weights are read last, after every other check
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
    ds_config = load_ds_config(args.deepspeed_config, world_size, 1)
    plan = BatchPlan(n_rows, global_batch=ds_config["train_batch_size"],
                     micro_batch=ds_config["train_micro_batch_size_per_gpu"], world_size=world_size, rank=rank,
                     seed=args.seed, wrap=True)
    total_steps = args.steps or max(1, math.ceil(args.epochs * plan.steps_per_epoch))
    ds_config = load_ds_config(args.deepspeed_config, world_size, total_steps, notes)  # the schedule spans the run
    save_every = args.save_every or plan.steps_per_epoch
    ckpt_root = os.path.join(args.output, "checkpoints")
    identity = json.loads(json.dumps({
        "task": args.task, "init": init.description, "train": os.path.abspath(args.train),
        "train_rows": n_rows, "labels": task.labels, "max_seq_len": args.max_seq_len, "seed": args.seed,
        "train_limit": args.train_limit, "options": options,
    }))
    tag, marker = resume.find_resume_point(args, ckpt_root)
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if marker:
        _check_same_run(args, marker, identity)
        resume.check_batch(tag, marker, plan.global_batch, "")
        resume.check_stage(tag, marker["zero_stage"], stage, "this run")
    universal = resume.loads_universal(marker, world_size, stage)
    if universal:
        ds_config = resume.with_universal_load(ds_config)
    init = load_weights(init)
    for note in notes if rank == 0 else ():
        print(f"note: {note}", file=sys.stderr)
    return FineTuning(ds_config, init, tokenizer, task, sift, train_features, eval_examples, eval_features, plan,
                      total_steps, save_every, ckpt_root, identity, tag, universal)


def _check_same_run(args, marker, identity):
    saved = marker.get("identity", {})
    changed = [k for k in identity if k in saved and saved[k] != identity[k]]
    if changed:
        key = changed[0]
        raise UserError(f"--output {args.output} holds a fine-tuning run with another {key} "
                        f"({saved[key]!r}, now {identity[key]!r}); resume it unchanged, or give this run its own "
                        "--output")


def train(args, run, rank, world_size, stop, export_task=None):
    start_process_group(rank, world_size)

    torch.manual_seed(args.seed)  # the same head initialisation on every rank
    task = run.task
    model = TaskModel(run.init.config, task.head, len(task.labels) if task.labels else 2, run.sift)
    initialised = load_into(model, run.init)
    weight_decay = run.ds_config["optimizer"].get("params", {}).get("weight_decay", 0.0)
    load_tag = resume.tag_to_load(run.ckpt_root, run.resume_tag, run.load_universal, rank)
    engine = initialize_engine(model, run.ds_config, args.deepspeed_config, rank, weight_decay)
    folder_lock = folder.lock(args.output, rank)
    if rank == 0:  # only now: a run that DeepSpeed refuses leaves no folder behind
        folder.write(args.output, run.init.config, {
            "args": vars(args), "ds_config": run.ds_config, "world_size": world_size, "identity": run.identity,
            "total_steps": run.total_steps})
    start = resume.load(engine, run.ckpt_root, load_tag)["step"] if load_tag else 0
    monitor = Monitor(args.output, rank == 0, start, run.total_steps, *model.training_flops(args.max_seq_len),
                      desc=f"fine-tuning {args.task}")
    monitor.message(f"resumed from {run.resume_tag} at step {start}" if start else
                    f"initialised from {run.init.description}; new: {', '.join(_heads(initialised)) or 'nothing'}; "
                    f"{len(run.train_features['input_ids'])} training inputs, {run.total_steps} steps")

    accumulation = run.plan.accumulation
    keys = MODEL_INPUTS + task.target_keys
    sums = StepSums(engine.device, ("loss", "task_loss", "sift_loss"))
    exit_code, step, scores = 0, start, {}
    for step in range(start + 1, run.total_steps + 1):
        for micro_index in range((step - 1) * accumulation, step * accumulation):
            torch.manual_seed(run.plan.dropout_seed(micro_index))
            _, rows = run.plan.micro_indices(micro_index)
            batch = batches.collate(run.train_features, rows, keys, engine.device)
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
                resume.save(engine, run.ckpt_root, step, {"seed": args.seed}, args.keep_checkpoints,
                            {"world_size": world_size, "train_batch_size": run.plan.global_batch,
                             "identity": run.identity})
        if stop_requested and not last:
            monitor.message(f"stop requested ({stop.signal or 'by another rank'}): saved {checkpoint.tag_of(step)}; "
                            "resume with --resume auto")
            exit_code = EXIT_PREEMPTED
            break
    if exit_code == 0:
        dist.barrier()
        if rank == 0:
            _finish(args, run, step, scores, export_task)
    monitor.close()
    dist.barrier()
    if folder_lock:
        folder_lock.release()
    return exit_code


def _heads(names):
    return sorted({name.rsplit(".", 1)[0] for name in names})


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


def _finish(args, run, step, scores, export_task):
    """Rank 0: results.json and, with export_task, the Hugging Face export of the last checkpoint's fp32 weights."""
    tag = checkpoint.tag_of(step)
    out = os.path.join(args.output, "hf") if export_task else None
    if export_task:
        _export(args, run, tag, out, export_task)
    results = {"task": args.task, "step": step, "checkpoint": tag, "init": run.init.description,
               "train": args.train, "eval": args.eval, "metrics": scores, "export": out}
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    summary = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k in ("exact_match", "f1", "accuracy",
                                                                              "macro_f1", "precision", "recall"))
    model = ""
    if out:  # the backbone's class, as the export wrote it (DebertaV2ForQuestionAnswering for a debertav3 run)
        with open(os.path.join(out, "config.json")) as f:
            model = f"  model: {out} (transformers.{json.load(f)['architectures'][0]}.from_pretrained)"
    print(f"done: {step} steps. {summary or 'no --eval given'}. Results: {os.path.join(args.output, 'results.json')}"
          f"{model}", file=sys.stderr)


def _export(args, run, tag, out, export_task):
    model = TaskModel(run.init.config, run.task.head, len(run.task.labels) if run.task.labels else 2)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = checkpoint.fp32_state_dict(run.ckpt_root, tag, model)  # zero_to_fp32 reports every step it takes
    tmp = f"{out}.tmp{os.getpid()}"
    tokenizer = run.init.tokenizer_path
    if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        tokenizer = run.tokenizer  # a folder with a vocab.txt only
    try:
        export_task(state, run.init.config, run.task.hf_architecture, run.task.labels, tokenizer, tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
