"""Continuing a run from a checkpoint, for pretraining and fine-tuning alike: which checkpoint (--resume), on
which terms (the global batch; the ZeRO stage), and how DeepSpeed loads it.

A resume may change the number of ranks and the ZeRO stage between 1 and 2: the checkpoint then loads
through DeepSpeed's universal format (rank 0 converts it once, checkpoint.to_universal, and the ds_config's
checkpoint block gets load_universal), and the optimizer's own step count, saved beside it, is put back
(DeepSpeed's universal load under ZeRO-3 shares one step tensor between the parameter groups). Starting
afresh over checkpoints, or going back past later ones, is refused: the new run would prune or overwrite
them, and --resume auto or export could later take an old one for the latest. What else a resume must keep
(the run's identity) is the caller's: train/resume.py for pretraining, finetune/loop.py for fine-tuning.
checkpoint.py is the mechanism (saving, markers, conversion, vetting); this file the terms.
"""

import os

import torch
import torch.distributed as dist

from spanbert_ds.errors import UserError
from spanbert_ds.run import checkpoint


def find_resume_point(args, ckpt_root):
    """(tag, marker) to resume from, or (None, None), as --resume says: auto, none or a checkpoint folder."""
    found = checkpoint.complete_checkpoints(ckpt_root)
    if args.resume == "none":
        if found:
            latest = checkpoint.tag_of(found[-1]["step"])
            raise UserError(f"--resume none, but {ckpt_root} holds checkpoints of an earlier run (the latest "
                            f"{latest}); continue it with --resume auto, or give this run its own --output")
        return None, None
    if args.resume == "auto":
        return (checkpoint.tag_of(found[-1]["step"]), found[-1]) if found else (None, None)
    tag_dir = os.path.normpath(args.resume)
    if not os.path.isdir(tag_dir):
        raise UserError(f"--resume {args.resume}: no such checkpoint folder; use auto, none, or a folder like "
                        f"{ckpt_root}/step1000")
    if tag_dir.endswith(checkpoint.UNIVERSAL_SUFFIX):
        raise UserError(f"--resume {args.resume} is a converted copy; pass the checkpoint it was made from, "
                        f"{tag_dir[: -len(checkpoint.UNIVERSAL_SUFFIX)]}")
    marker = checkpoint.read_marker(tag_dir)
    if os.path.abspath(os.path.dirname(tag_dir)) != os.path.abspath(ckpt_root):
        raise UserError(f"--resume {args.resume} is not under this run's checkpoints ({ckpt_root}); pass the run "
                        "folder it belongs to as --output")
    later = [checkpoint.tag_of(f["step"]) for f in found if f["step"] > marker["step"]]
    if later:
        raise UserError(f"--resume {args.resume}: {ckpt_root} also holds the later checkpoints {', '.join(later)}, "
                        "which this run would overwrite and which --resume auto and export would take for the latest; "
                        f"move them out of {ckpt_root} first (e.g. into {os.path.join(args.output, 'abandoned')})")
    return os.path.basename(tag_dir), marker


def check_stage(tag, saved_stage, stage, what):
    if stage != saved_stage and not {stage, saved_stage} <= {1, 2}:
        # DeepSpeed 0.19's universal checkpoints load across stages 1 and 2 only (its ZeRO-3 loader looks
        # for ZeRO-3's own file names), and stage 0 keeps no partitioned optimizer state to convert.
        raise UserError(f"checkpoint {tag} was saved under ZeRO stage {saved_stage} and the config asks for stage "
                        f"{stage}: a checkpoint moves between stages 1 and 2 only; keep zero_optimization.stage "
                        f"{saved_stage} for {what}")


def loads_universal(marker, world_size, stage):
    """Does resuming from `marker` on `world_size` ranks under ZeRO `stage` go through the universal format?"""
    return bool(marker) and marker["zero_stage"] > 0 and (marker["world_size"] != world_size
                                                          or marker["zero_stage"] != stage)


def with_universal_load(ds_config):
    """The ds_config with load_universal added to the user's checkpoint block (the rest kept as set)."""
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


def tag_to_load(root, tag, universal, rank):
    """The tag to hand DeepSpeed for checkpoint root/tag (None to start afresh): rank 0 checks every file of the
    checkpoint and, with `universal` (loads_universal), converts it, then checks every file of the converted
    copy; every rank learns the result or leaves with rank 0's error."""
    if not tag:
        return None
    error = None
    if rank == 0:
        try:
            checkpoint.check_loadable(os.path.join(root, tag))  # what the converter or DeepSpeed unpickles
            if universal:
                tag = checkpoint.to_universal(root, tag)
                checkpoint.check_loadable(os.path.join(root, tag))  # the copy, converted now or found there
        except UserError as e:
            error = str(e)
    shared = [error, tag]
    dist.broadcast_object_list(shared, src=0)
    error, tag = shared
    if error:
        if rank == 0:
            raise UserError(error)
        raise SystemExit(UserError.exit_code)
    return tag


def load(engine, root, tag, new_phase=False):
    """Load checkpoint root/tag (tag_to_load's) into the engine; returns its client state. A new phase loads
    the weights and the optimizer's state, not the scheduler's, and keeps this run's optimizer settings."""
    settings = _optimizer_settings(engine) if new_phase else None
    load_path, client_state = engine.load_checkpoint(root, tag=tag, load_lr_scheduler_states=not new_phase)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load checkpoint {os.path.join(root, tag)}; delete it to resume "
                        "from an earlier one")
    if settings is not None:
        _set_optimizer_settings(engine, settings)
    if tag.endswith(checkpoint.UNIVERSAL_SUFFIX):
        # DeepSpeed 0.19.8's universal load under ZeRO-3 gives every parameter group the same `step`
        # tensor, which torch's Adam then increments once per group at each step: give each its own.
        _set_adam_step(engine, client_state.get("adam_step"))
    return client_state


def save(engine, root, step, client_state, keep, marker):
    """checkpoint.save with what load needs to continue it (the optimizer's own step count); `marker` must hold
    world_size and train_batch_size (check_batch, loads_universal) and the run's identity."""
    client_state = {**client_state, "step": step, "adam_step": _adam_step(engine)}
    marker = {**marker, "zero_stage": engine.zero_optimization_stage()}
    checkpoint.save(engine, root, step, client_state, keep, marker)


def check_batch(tag, marker, global_batch, fix):
    """The global batch is part of a run's data order (a step's samples): a resume keeps it."""
    if marker.get("train_batch_size") != global_batch:
        raise UserError(f"checkpoint {tag} was trained with train_batch_size {marker.get('train_batch_size')}, the "
                        f"run asks for {global_batch}: keep the global batch when resuming (train_batch_size, "
                        f"--global-batch-size), and change the micro batch instead{fix}")


def _adam_states(engine):
    """The per-parameter states of the torch optimizer inside DeepSpeed's wrapper (if any)."""
    return _inner_optimizer(engine).state.values()


def _inner_optimizer(engine):
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _optimizer_settings(engine):
    """Each parameter group's settings as this run's ds_config and scheduler made them (lr, betas, eps,
    weight decay, ...), without its parameters and step count."""
    return [{k: v for k, v in group.items() if k not in ("params", "step")}
            for group in _inner_optimizer(engine).param_groups]


def _set_optimizer_settings(engine, settings):
    """Put back what _optimizer_settings took: loading the optimizer's state also loads the phase before's
    settings, its last learning rate among them."""
    for group, saved in zip(_inner_optimizer(engine).param_groups, settings):
        group.update(saved)


def _adam_step(engine):
    """The optimizer's own step count (lower than the global step when fp16 skipped steps)."""
    for state in _adam_states(engine):
        if "step" in state:
            return float(state["step"])
    return None


def _set_adam_step(engine, value):
    if value is None:
        return
    for state in _adam_states(engine):
        if torch.is_tensor(state.get("step")):
            state["step"] = torch.tensor(float(value), dtype=state["step"].dtype, device=state["step"].device)
        elif "step" in state:
            state["step"] = value
