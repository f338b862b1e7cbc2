"""The DeepSpeed config of a run (pretraining or fine-tuning), read, checked and completed before any rank
starts work.

The ds_config owns the engine: batch sizes, precision, ZeRO, optimizer, schedule. The global batch
(train_batch_size) is the training hyperparameter and is kept at every world size; the micro batch is a
memory choice, the most samples a rank runs at once, and gradient accumulation makes up the rest
(Megatron's --global-batch-size and --micro-batch-size). The few numbers people change between runs also
have flags (OVERRIDE_FLAGS), which override the file's values.
"""

import json
import math
import os

from spanbert_ds.errors import UserError
# Optimizers DeepSpeed can partition under ZeRO; LAMB and the 1-bit ones need ZeRO off.
ZERO_INCOMPATIBLE_OPTIMIZERS = {"lamb", "onebitlamb", "onebitadam", "zerooneadam"}
# DeepSpeed schedulers whose length is a number of steps: set from --steps.
SCHEDULERS_WITH_LENGTH = ("WarmupDecayLR", "WarmupCosineLR")
# DeepSpeed schedulers that warm up over warmup_num_steps; those that also hold the peak rate as warmup_max_lr.
SCHEDULERS_WITH_WARMUP = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
SCHEDULERS_WITH_PEAK = ("WarmupLR", "WarmupDecayLR")  # WarmupCosineLR peaks at the optimizer's lr
# The flags that override the ds_config: argparse dest -> the flag as typed.
OVERRIDE_FLAGS = {"global_batch_size": "--global-batch-size", "micro_batch_size": "--micro-batch-size",
                  "lr": "--lr", "warmup": "--warmup"}
MAX_DS_CONFIG_BYTES = 1 << 20  # a ds_config is a few KB; it is copied into run_config.json and every checkpoint


def load_ds_config(path, world_size, total_steps, notes=None, overrides=None):
    """Read, check and complete a ds_config for `world_size` ranks, with the command line's `overrides`
    (overrides_of(args)) over the file's values. Returns a dict for deepspeed.initialize; what was changed
    from the file is said in `notes` (a list) when given."""
    overrides = overrides or {}
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
    batch_flags = _override_batch_sizes(config, path, overrides, notes)
    _resolve_batch_sizes(config, path, world_size, batch_flags, notes)

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
    if optimizer.lower() == "lamb":
        # DeepSpeed's FusedLamb asserts dynamic loss scaling inside deepspeed.initialize, on every rank
        if not fp16 or config["fp16"].get("loss_scale", 0) != 0:
            raise UserError(f"{path}: DeepSpeed runs LAMB only under fp16 with dynamic loss scaling; set "
                            "fp16.enabled true and fp16.loss_scale 0 (see ds_configs/lamb_fp16_phase1.json)")
        if not _cuda():
            raise UserError(f"{path}: DeepSpeed's LAMB (FusedLamb) is a CUDA kernel and there is no CUDA GPU here; "
                            "use AdamW on a CPU (ds_configs/cpu_zero2.json)")
    if fp16 and not _cuda():
        raise UserError(f"{path}: fp16 is enabled, but DeepSpeed's fp16 training needs a CUDA GPU and there is none "
                        "here; set bf16.enabled (or neither, for fp32) on a CPU")
    _check_scheduler(config.get("scheduler"), path)
    _override_schedule(config, path, overrides, total_steps, notes)

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


def _override_batch_sizes(config, path, overrides, notes):
    """--global-batch-size and --micro-batch-size over the file's values. Returns {ds_config key: flag} of
    those given, for the messages. With either flag the accumulation follows from the batch sizes, as in
    Megatron: the file's gradient_accumulation_steps is dropped (it still counts where the file sets no
    global batch, which it then defines)."""
    given = {}
    for name, key in (("global_batch_size", "train_batch_size"), ("micro_batch_size", "train_micro_batch_size_per_gpu")):
        if name not in overrides:
            continue
        value = overrides[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{OVERRIDE_FLAGS[name]} must be a whole number of at least 1, got {value!r}")
        config[key] = value
        given[key] = OVERRIDE_FLAGS[name]
    if given and config.get("train_batch_size") is not None and config.get("gradient_accumulation_steps") is not None:
        dropped = config.pop("gradient_accumulation_steps")
        if notes is not None:
            notes.append(f"{path}: gradient_accumulation_steps {dropped} left out: with {' and '.join(given.values())} "
                         "it follows from the batch sizes and the number of ranks")
    return given


def _override_schedule(config, path, overrides, total_steps, notes):
    """--lr and --warmup over the optimizer's and the scheduler's values."""
    scheduler = config.get("scheduler")
    kind = scheduler.get("type") if scheduler else None
    if "lr" in overrides:
        lr = overrides["lr"]
        if not (_number(lr) and lr > 0):
            raise UserError(f"--lr must be a number above 0, got {lr!r}")
        if scheduler and kind not in SCHEDULERS_WITH_WARMUP:
            raise UserError(f"--lr: {path}'s scheduler {kind} sets its rates itself; set them in its scheduler block, "
                            f"or use one of {', '.join(SCHEDULERS_WITH_WARMUP)} there")
        config["optimizer"].setdefault("params", {})["lr"] = lr
        if kind in SCHEDULERS_WITH_PEAK:
            scheduler.setdefault("params", {})["warmup_max_lr"] = lr
    if "warmup" in overrides:
        steps = _warmup_steps(overrides["warmup"], total_steps)
        if kind not in SCHEDULERS_WITH_WARMUP:
            raise UserError(f"--warmup: {path} has {f'scheduler {kind}' if kind else 'no scheduler'}, which does not "
                            "warm up; add a scheduler block such as {\"type\": \"WarmupDecayLR\", \"params\": "
                            "{\"warmup_num_steps\": 10000}}")
        if kind in SCHEDULERS_WITH_LENGTH and steps >= total_steps:
            raise UserError(f"--warmup {overrides['warmup']} is {steps} steps, not below --steps {total_steps}; warm "
                            "up for fewer steps (or a fraction of the run, e.g. --warmup 0.01)")
        scheduler.setdefault("params", {})["warmup_num_steps"] = steps
        if steps != overrides["warmup"] and notes is not None:
            notes.append(f"--warmup {overrides['warmup']}: {steps} warmup steps of --steps {total_steps}")


def _warmup_steps(value, total_steps):
    """--warmup's steps: a whole number of steps, or a fraction of the run below 1."""
    text = str(value).strip()
    try:
        steps = int(text)
    except ValueError:
        try:
            fraction = float(text)
        except ValueError:
            fraction = None
        if fraction is None or not 0 <= fraction < 1:
            raise UserError(f"--warmup {value}: give whole steps (e.g. 10000) or a fraction of --steps below 1 "
                            "(e.g. 0.01)") from None
        return int(fraction * total_steps)
    if steps < 0:
        raise UserError(f"--warmup must be 0 or more steps, got {steps}")
    return steps


def _resolve_batch_sizes(config, path, world_size, flags=None, notes=None):
    """Fill in the missing batch sizes for `world_size` ranks and check that the three agree. The global
    batch is kept; the micro batch is the most a rank runs at once: where it does not split the global
    batch over the ranks, the largest size below it that does is used (said in `notes`), and gradient
    accumulation makes up the rest. An accumulation the file sets is kept, and must fit. `flags`: the
    ds_config keys the command line set, with their flags, for the messages."""
    names = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    flags = flags or {}
    for name in names:
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{path}: {name} must be a whole number of at least 1, got {value!r}")
    total, micro, accumulation = (config.get(name) for name in names)
    if total is None and micro is None:  # as DeepSpeed: either alone is enough, accumulation alone is not
        raise UserError(f"{path}: set train_batch_size or train_micro_batch_size_per_gpu (or both)")
    said = {name: flags.get(name, name) for name in names[:2]}  # what the user set: a key of the file or a flag
    where = "" if "train_batch_size" in flags else f"{path}: "
    if total is None:
        accumulation = accumulation or 1
        total = micro * accumulation * world_size
    elif total % world_size:
        raise UserError(f"{where}{said['train_batch_size']} {total} cannot be split over {world_size} ranks (each "
                        f"rank takes a whole number of samples a step); {_what_splits(total, world_size)}")
    elif accumulation is None:
        share = total // world_size  # samples a rank takes a step
        most = min(micro or share, share)
        fitted = max(d for d in range(1, most + 1) if share % d == 0)
        if micro is not None and fitted != micro and notes is not None:
            notes.append(f"{where}{said['train_batch_size']} {total} over {world_size} ranks is {share} samples a rank: "
                         f"micro batch {fitted} x {share // fitted} accumulation step{'s' * (share // fitted > 1)} "
                         f"({said['train_micro_batch_size_per_gpu']} {micro} is the most a rank runs at once)")
        micro, accumulation = fitted, share // fitted
    elif micro is None:
        if total % (accumulation * world_size):
            raise UserError(f"{where}{said['train_batch_size']} {total} is not divisible by gradient_accumulation_steps "
                            f"{accumulation} x {world_size} ranks; drop gradient_accumulation_steps from {path} and let "
                            "it follow from the batch sizes")
        micro = total // (accumulation * world_size)
    if micro * accumulation * world_size != total:
        raise UserError(
            f"{path}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x gradient_accumulation_steps "
            f"{accumulation} x {world_size} ranks; fix one of them (or drop gradient_accumulation_steps and let it be "
            "derived)"
        )
    config.update(train_batch_size=total, train_micro_batch_size_per_gpu=micro,
                  gradient_accumulation_steps=accumulation)


def _what_splits(total, world_size):
    """Which global batches split over `world_size` ranks, and which numbers of ranks split `total`."""
    below = total // world_size * world_size
    batches = [b for b in (below, below + world_size, below + 2 * world_size) if b > 0][:2]
    fewer = max(n for n in range(1, world_size) if total % n == 0)
    more = [n for n in range(world_size + 1, total + 1) if total % n == 0][:1]
    ranks = " or ".join(str(n) for n in [fewer, *more])
    return (f"use a global batch that splits over {world_size} ranks, {' or '.join(map(str, batches))} (train.py "
            f"--global-batch-size N, or train_batch_size; scale the learning rate with it), or run on {ranks} ranks")
