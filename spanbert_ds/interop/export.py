"""`spanbert-ds export RUN OUT`: a pretraining run's checkpoint as a Hugging Face model folder.

ZeRO shards are consolidated with DeepSpeed's zero_to_fp32; the folder itself is
written by interop/hf.py, the one place that knows Hugging Face's names.
"""

import json
import os
import shutil

import torch

from spanbert_ds.errors import UserError
from spanbert_ds.folders import check_creatable, make_parents, remove_made
from spanbert_ds.interop.hf import TIED
from spanbert_ds.train import checkpoint


def add_arguments(parser):
    parser.add_argument("run", help="a run folder written by train.py (holds run_config.json and checkpoints/), or one of its checkpoints (RUN/checkpoints/stepN)")
    parser.add_argument("out", help="the Hugging Face model folder to write (made with its parents)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint tag such as step1000 (default: the latest complete one)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args):
    from spanbert_ds.interop.hf import export_hf

    run_dir, tag = _run_and_tag(args.run, args.checkpoint)
    _check_out(args.out, run_dir, args.overwrite)  # before the slow consolidation, and never over the run
    objective, tag = load_run(run_dir, tag)
    made = make_parents(args.out)
    tmp = f"{os.path.normpath(args.out)}.tmp{os.getpid()}"
    try:
        export_hf(objective, objective.config, os.path.join(run_dir, "tokenizer"), tmp)
        if os.path.exists(args.out):  # only now, with the new folder complete
            shutil.rmtree(args.out)
        os.replace(tmp, args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_made(made)
        raise
    print(f"exported {objective.name} model of {os.path.join(run_dir, 'checkpoints', tag)} to {args.out} (load it with transformers.BertForPreTraining.from_pretrained)")


def _run_and_tag(path, tag):
    """RUN or RUN/checkpoints/stepN -> (RUN, tag or None)."""
    path = os.path.normpath(path)
    parent = os.path.dirname(path)
    if os.path.basename(parent) == "checkpoints" and os.path.isfile(os.path.join(os.path.dirname(parent), "run_config.json")):
        if tag is not None and tag != os.path.basename(path):
            raise UserError(f"export: {path} is checkpoint {os.path.basename(path)} but --checkpoint says {tag}; give one of them")
        return os.path.dirname(parent), os.path.basename(path)
    return path, tag


def _check_out(out, run_dir, overwrite):
    out_abs, run_abs = os.path.abspath(out), os.path.abspath(run_dir)
    if out_abs == run_abs or out_abs.startswith(run_abs + os.sep) or run_abs.startswith(out_abs + os.sep):
        raise UserError(f"export: {out} is the run folder {run_dir}, or inside it, or holds it; write the Hugging Face "
                        "folder somewhere else (e.g. next to the run)")
    check_creatable(out, "export: output")
    if os.path.exists(out) and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")


def load_run(run_dir, tag=None):
    """(objective with the checkpoint's fp32 weights, tag) of a run folder."""
    from spanbert_ds.model.config import ModelConfig
    from spanbert_ds.model.objectives import OBJECTIVES

    config_path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{run_dir} is not a run folder (no run_config.json); pass the --output folder of a training run")
    with open(config_path) as f:
        run_config = json.load(f)
    ckpt_root = os.path.join(run_dir, "checkpoints")
    if tag is None:
        found = checkpoint.complete_checkpoints(ckpt_root)
        if not found:
            raise UserError(f"{run_dir} has no complete checkpoint yet; train for at least --save-every steps first")
        tag = checkpoint.tag_of(found[-1]["step"])
    tag_dir = os.path.join(ckpt_root, tag)
    if not os.path.isdir(tag_dir):
        found = [checkpoint.tag_of(c["step"]) for c in checkpoint.complete_checkpoints(ckpt_root)]
        raise UserError(f"{run_dir} has no checkpoint {tag}; its complete checkpoints are: {', '.join(found) or 'none yet'}")
    info = checkpoint.read_marker(tag_dir)
    checkpoint.check_loadable(tag_dir)

    config = ModelConfig.from_json(os.path.join(run_dir, "model_config.json"))
    objective = OBJECTIVES[run_config["objective"]](config)
    if info["zero_stage"] > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(ckpt_root, tag=tag)
    else:
        state = _zero0_fp32_state(objective, os.path.join(tag_dir, "mp_rank_00_model_states.pt"))
    # A tied decoder is the word embedding under another name: load it once, from the embedding (a
    # 16-bit copy saved under the other name would otherwise overwrite the fp32 master).
    missing, unexpected = objective.load_state_dict({k: v.float() for k, v in state.items() if k not in TIED}, strict=False)
    # Tied decoders may be stored once, as the word embedding; anything else missing is a mismatch.
    missing = [name for name in missing if name not in TIED]
    if missing or unexpected:
        raise UserError(f"checkpoint {tag_dir} does not match the run's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return objective, tag


def _zero0_fp32_state(objective, path):
    """The module's weights of a ZeRO-0 checkpoint, in fp32 even under bf16/fp16.

    Under mixed precision the module copy is rounded to 16 bits; the optimizer keeps the fp32
    masters in the order of the training loop's parameter groups, which map them back. DeepSpeed
    0.19 saves them as `fp32_groups_flat` (one flat tensor per group: its fused optimizer, the
    default on GPUs) or `fp32_groups` (a list per group: any other optimizer, e.g. torch's AdamW).
    A 16-bit module without masters is refused: exporting its rounded weights would be a silent loss.
    """
    from spanbert_ds.train.loop import parameter_groups

    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = dict(saved["module"])
    optimizer = saved.get("optimizer") if isinstance(saved.get("optimizer"), dict) else {}
    groups = [g["params"] for g in parameter_groups(objective, {"optimizer": {}}) if g["params"]]
    if optimizer.get("fp32_groups_flat") is not None:
        flats = optimizer["fp32_groups_flat"]
        masters = [list(flat.split([p.numel() for p in params])) for flat, params in zip(flats, groups)]
    elif optimizer.get("fp32_groups") is not None:
        masters = optimizer["fp32_groups"]
    else:
        rounded = sorted(name for name, tensor in state.items() if tensor.dtype in (torch.float16, torch.bfloat16))
        if rounded:
            raise UserError(f"checkpoint {os.path.dirname(path)} holds {len(rounded)} weights in 16 bits (e.g. "
                            f"{rounded[0]}) and no fp32 master copy this exporter knows ({os.path.basename(path)} has "
                            "neither fp32_groups_flat nor fp32_groups); exporting them would lose precision silently")
        return state
    name_of = {id(p): n for n, p in objective.named_parameters()}
    sizes = [sum(p.numel() for p in params) for params in groups]
    found = [sum(m.numel() for m in group_masters) for group_masters in masters]
    if found != sizes:
        raise UserError(f"checkpoint {os.path.dirname(path)}: the optimizer's fp32 masters hold {found} values per "
                        f"parameter group, the run's model {sizes}; it is not a checkpoint of this run's model")
    for params, group_masters in zip(groups, masters):
        for param, master in zip(params, group_masters):
            state[name_of[id(param)]] = master.view(param.shape)
    return state
