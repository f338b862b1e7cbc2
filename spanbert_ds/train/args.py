"""Command line and DeepSpeed config of a pretraining run, validated before any rank starts work.

One source of truth for each setting: the engine (batch sizes, precision, ZeRO,
optimizer, schedule) lives in the ds_config; the model in --model; the run in the
flags below.
"""

import argparse
import json
import math
import os

from spanbert_ds.errors import UserError
from spanbert_ds.folders import check_creatable, check_writable

# Optimizers DeepSpeed can partition under ZeRO; LAMB and the 1-bit ones need ZeRO off.
ZERO_INCOMPATIBLE_OPTIMIZERS = {"lamb", "onebitlamb", "onebitadam", "zerooneadam"}
# DeepSpeed schedulers whose length is a number of steps: set from --steps.
SCHEDULERS_WITH_LENGTH = ("WarmupDecayLR", "WarmupCosineLR")
MAX_DS_CONFIG_BYTES = 1 << 20  # a ds_config is a few KB; it is copied into run_config.json and every checkpoint


def add_arguments(parser):
    import deepspeed

    run = parser.add_argument_group("run")
    arg = run.add_argument
    arg("--model", default=None,
        help="a preset (tiny, small, bert-base, spanbert-base, ...) or a model JSON, with ,key=value overrides "
             "(default: spanbert-base, or the shape of --init-from)")
    arg("--objective", default="spanbert",
        help="spanbert (MLM+SBO), bert (MLM+NSP), roberta (MLM) or deberta (MLM through DeBERTa's enhanced mask "
             "decoder, on the deberta backbone)")
    arg("--data", required=True, help="a shard folder written by `spanbert-ds prepare`")
    arg("--output", default="runs/pretrain", help="the run folder (config, logs, checkpoints), made if missing")
    arg("--steps", type=int, default=10000, help="optimizer steps of the whole run; the schedule spans them")
    arg("--max-seq-len", type=int, default=512, help="tokens per sample, [CLS] and [SEP] included")
    arg("--packing", default=None, choices=["full", "doc", "pair"],
        help="how samples are cut from the shards (default: the objective's; spanbert doc, roberta full, bert pair)")
    arg("--seed", type=int, default=42, help="seeds data order, masks, initialisation and dropout")
    arg("--save-every", type=int, default=1000, help="checkpoint every N steps, and at the end")
    arg("--keep-checkpoints", type=int, default=3, help="how many of the latest checkpoints to keep")
    arg("--log-every", type=int, default=10, help="log every N steps")
    arg("--resume", default="auto", help="auto (the latest checkpoint in --output), none, or a checkpoint folder")
    arg("--eval-every", type=int, default=None,
        help="score the held-out split every N steps (default: at each checkpoint if there is one; 0: never)")
    arg("--eval-samples", type=int, default=512, help="held-out blocks in the fixed evaluation set")
    arg("--masking", default="", help="masking parameters as key=value,... (e.g. mask_ratio=0.15,geometric_p=0.2)")
    arg("--init-from", default=None, help="start from a Hugging Face BERT folder with the shards' vocabulary")
    arg("--num-workers", type=int, default=2, help="DataLoader workers per rank that mask batches")
    arg("--attention", default=None, choices=["auto", "eager", "sdpa", "fused"], help="the attention backend")
    arg("--max-bad-steps", type=int, default=5, help="stop after this many non-finite losses in a row")
    arg("--preflight", action="store_true",
        help="check, the way the run will start, what it depends on (same data and settings on every rank, a "
             "shared output folder, batch sizes, the network), then exit; no training")
    run.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    deepspeed.add_config_arguments(parser)
    return parser


def check_run_args(args):
    from spanbert_ds.model.objectives import OBJECTIVES

    if args.objective not in OBJECTIVES:
        raise UserError(f"unknown objective {args.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    args.packing = args.packing or OBJECTIVES[args.objective].packing
    if (args.packing == "pair") != (OBJECTIVES[args.objective].packing == "pair"):
        raise UserError(f"--packing {args.packing} does not suit --objective {args.objective}: bert trains on segment "
                        "pairs (pair), the others on single segments (doc or full)")
    if not args.deepspeed_config:
        raise UserError("no DeepSpeed config: pass --deepspeed_config ds_configs/NAME.json")
    if args.init_from and not os.path.isfile(os.path.join(args.init_from, "config.json")):
        raise UserError(f"--init-from {args.init_from}: not a Hugging Face model folder (no config.json in it); "
                        "pass the folder that holds config.json and the weights")
    for name in ("steps", "max_seq_len", "save_every", "keep_checkpoints", "log_every", "max_bad_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_seq_len < 8:
        raise UserError(f"--max-seq-len {args.max_seq_len} is too short; use at least 8")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    if args.eval_every is not None and args.eval_every < 0:
        raise UserError(f"--eval-every must be 0 (never) or more, got {args.eval_every}")
    if args.eval_samples < 1:
        raise UserError(f"--eval-samples must be at least 1, got {args.eval_samples}")
    if args.num_workers < 0:
        raise UserError("--num-workers must be 0 or more")
    if not os.path.isdir(args.data):
        if os.path.exists(args.data):
            raise UserError(f"--data {args.data} is a file; --data takes a shard folder: make one with "
                            f"`spanbert-ds prepare {args.data} SHARD_FOLDER`")
        raise UserError(f"--data {args.data}: no such shard folder; make one with `spanbert-ds prepare CORPUS "
                        f"{args.data}`")
    check_creatable(args.output, "--output")  # made with its parents by rank 0 once the run starts
    for sub in ("checkpoints", "tensorboard", "tokenizer"):  # what a resume writes into
        if os.path.isdir(os.path.join(args.output, sub)):
            check_writable(os.path.join(args.output, sub), f"--output {args.output}: its {sub}/")
    data, output = os.path.abspath(args.data), os.path.abspath(args.output)
    if output == data or output.startswith(data + os.sep) or data.startswith(output + os.sep):
        raise UserError(f"--output {args.output} and --data {args.data} overlap; give the run its own folder")


def load_ds_config(path, world_size, total_steps, notes=None):
    """Read, check and complete a ds_config for `world_size` ranks. Returns a dict for deepspeed.initialize;
    what was changed from the file is said in `notes` (a list) when given."""
    try:
        size = os.path.getsize(path)
        if size > MAX_DS_CONFIG_BYTES:
            raise UserError(f"DeepSpeed config {path} is {size / 2**20:.1f} MB; a ds_config is a few KB (the limit is "
                            f"{MAX_DS_CONFIG_BYTES // 2**20} MB): pass the right file")
        with open(path) as f:
            config = json.load(f)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"DeepSpeed config {path} does not exist; see ds_configs/ for examples") from None
    except json.JSONDecodeError as error:
        raise UserError(f"DeepSpeed config {path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    except (RecursionError, UnicodeDecodeError) as error:
        why = "is nested too deeply" if isinstance(error, RecursionError) else "is not UTF-8 text"
        raise UserError(f"DeepSpeed config {path} {why} to be a ds_config; see ds_configs/ for examples") from None

    if not isinstance(config, dict):
        raise UserError(f"DeepSpeed config {path} must be a JSON object ({{...}}), not a {type(config).__name__}")
    for block in ("fp16", "bf16", "zero_optimization", "optimizer", "scheduler", "checkpoint"):
        if block in config and not isinstance(config[block], dict):
            raise UserError(f"{path}: {block} must be an object ({{...}}), got {config[block]!r}")
    _resolve_batch_sizes(config, path, world_size)

    fp16 = config.get("fp16", {}).get("enabled", False)
    bf16 = config.get("bf16", {}).get("enabled", False)
    if fp16 and bf16:
        raise UserError(f"{path}: fp16 and bf16 are both enabled; enable one of them")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise UserError(f"{path}: zero_optimization.stage is {stage}; use 0, 1, 2 or 3")
    optimizer = config.get("optimizer", {}).get("type", "")
    if stage > 0 and optimizer.lower() in ZERO_INCOMPATIBLE_OPTIMIZERS:
        raise UserError(f"{path}: DeepSpeed does not support optimizer {optimizer} under ZeRO stage {stage}; "
                        "use AdamW, or set zero_optimization.stage to 0")
    if not optimizer:
        raise UserError(f"{path}: no optimizer block; add e.g. "
                        f"{{\"optimizer\": {{\"type\": \"AdamW\", \"params\": {{\"lr\": 1e-4}}}}}}")
    _check_optimizer(config["optimizer"], path)
    if fp16 and not _cuda():
        raise UserError(f"{path}: fp16 is enabled, but DeepSpeed's fp16 training needs a CUDA GPU and there is none "
                        "here; set bf16.enabled (or neither, for fp32) on a CPU")
    _check_scheduler(config.get("scheduler"), path)

    scheduler = config.get("scheduler", {})
    if scheduler.get("type") in SCHEDULERS_WITH_LENGTH:
        # The run's length is --steps; the schedule follows it.
        params = scheduler.setdefault("params", {})
        if params.get("total_num_steps", total_steps) != total_steps and notes is not None:
            notes.append(f"{path}: scheduler total_num_steps {params['total_num_steps']} -> {total_steps} (--steps)")
        params["total_num_steps"] = total_steps
        warmup = params.get("warmup_num_steps", 0)
        if warmup >= total_steps:
            params["warmup_num_steps"] = max(1, total_steps // 10)
            if notes is not None:
                shortened = params["warmup_num_steps"]
                notes.append(f"{path}: warmup_num_steps {warmup} is not below --steps {total_steps}; warming up for "
                             f"{shortened} steps in this run (a resume with a larger --steps goes back to {warmup})")
    return config


def _cuda():
    import torch

    return torch.cuda.is_available()


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_optimizer(block, path):
    """What DeepSpeed would only find inside deepspeed.initialize, on every rank, as a traceback."""
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    kind = block.get("type")
    if not isinstance(kind, str) or kind.lower() not in DEEPSPEED_OPTIMIZERS:
        raise UserError(f"{path}: optimizer.type {kind!r} is not an optimizer DeepSpeed knows; use one of "
                        f"{', '.join(DEEPSPEED_OPTIMIZERS)} (AdamW is BERT's)")
    params = block.get("params", {})
    if not isinstance(params, dict):
        raise UserError(f"{path}: optimizer.params must be an object ({{...}}), got {params!r}")
    if "lr" in params and not (_number(params["lr"]) and params["lr"] > 0):
        raise UserError(f"{path}: optimizer.params.lr must be a number above 0, got {params['lr']!r}")
    for name in ("eps", "weight_decay"):
        if name in params and not (_number(params[name]) and params[name] >= 0):
            raise UserError(f"{path}: optimizer.params.{name} must be a number of 0 or more, got {params[name]!r}")
    betas = params.get("betas", [0.9, 0.999])
    if not (isinstance(betas, list) and len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas)):
        raise UserError(f"{path}: optimizer.params.betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; "
                        f"got {betas!r}")


def _check_scheduler(block, path):
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES

    if block is None:
        return
    if block.get("type") not in VALID_LR_SCHEDULES:
        raise UserError(f"{path}: scheduler.type {block.get('type')!r} is not a DeepSpeed scheduler; use one of "
                        f"{', '.join(VALID_LR_SCHEDULES)} (or drop the scheduler block for a constant rate)")
    params = block.get("params", {})
    if not isinstance(params, dict):
        raise UserError(f"{path}: scheduler.params must be an object ({{...}}), got {params!r}")
    for name, value in params.items():  # rates and step counts: warmup_max_lr, warmup_num_steps, ...
        if name.endswith(("_lr", "_steps")) and not (_number(value) and value >= 0):
            raise UserError(f"{path}: scheduler.params.{name} must be a number of 0 or more, got {value!r}")


def _resolve_batch_sizes(config, path, world_size):
    """Fill in the missing batch sizes as DeepSpeed would (accumulation 1 unless derivable), and check that
    the three agree."""
    names = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    for name in names:
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{path}: {name} must be a whole number of at least 1, got {value!r}")
    total, micro, accumulation = (config.get(name) for name in names)
    if total is None and micro is None:  # as DeepSpeed: either alone is enough, accumulation alone is not
        raise UserError(f"{path}: set train_batch_size or train_micro_batch_size_per_gpu (or both)")
    if total is None:
        accumulation = accumulation or 1
        total = micro * accumulation * world_size
    elif micro is None:
        accumulation = accumulation or 1
        if total % (accumulation * world_size):
            raise UserError(f"{path}: train_batch_size {total} is not divisible by gradient_accumulation_steps "
                            f"{accumulation} x {world_size} ranks")
        micro = total // (accumulation * world_size)
    elif accumulation is None:
        if total % (micro * world_size):
            raise UserError(f"{path}: train_batch_size {total} is not divisible by "
                            f"train_micro_batch_size_per_gpu {micro} x {world_size} ranks; change one of them")
        accumulation = total // (micro * world_size)
    if micro * accumulation * world_size != total:
        raise UserError(
            f"{path}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x gradient_accumulation_steps "
            f"{accumulation} x {world_size} ranks; fix one of them (or drop gradient_accumulation_steps and let it be "
            "derived)"
        )
    config.update(train_batch_size=total, train_micro_batch_size_per_gpu=micro,
                  gradient_accumulation_steps=accumulation)
