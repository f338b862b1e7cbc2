"""The run folder: what a training run writes (`--output`) and what export reads back.

    RUN/run_config.json    everything resolved: arguments, ds_config, objective, masking, world size,
                           git commit, versions; "data": per corpus of --data (one, or a blend's) its
                           folder, weight, samples, samples an epoch and samples this run draws
    RUN/model_config.json  the model (model/config.py's JSON)
    RUN/tokenizer/         the shards' tokenizer.json and meta.json (a blend's first folder's: they share
                           one tokenizer), so export needs no shards
    RUN/metrics.jsonl, RUN/tensorboard/   monitor.py
    RUN/checkpoints/       checkpoint.py
    RUN/.lock              while a run writes the folder: its host and PID (folders.FolderLock)
"""

import json
import os
import platform
import shutil
import subprocess

import torch.distributed as dist

from spanbert_ds.errors import UserError
from spanbert_ds.folders import FolderLock
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.model.objectives import OBJECTIVES, load_first_names
from spanbert_ds.train import checkpoint
from spanbert_ds.train.distributed import ranks_by_host, said_by_rank_0


def lock(output, rank):
    """Rank 0 takes the run folder's lock for the whole run, before anything is written into it, so two
    trainings on one folder cannot mix their metrics and checkpoints; every rank learns whether it did.
    Returns the lock (rank 0) to release at the end."""
    held, error = None, None
    if rank == 0:
        os.makedirs(output, exist_ok=True)
        try:
            held = FolderLock(os.path.join(output, ".lock"), f"run folder {output}").acquire()
        except UserError as refused:
            error = str(refused)
    shared = [error]
    dist.broadcast_object_list(shared, src=0)
    if shared[0]:
        said_by_rank_0(rank)
        raise UserError(shared[0])
    return held


def write(args, run, hosts):
    """Rank 0, once the process group exists: the folder (with its parents) and its description. hosts:
    each rank's host."""
    tokenizer_dir = os.path.join(args.output, "tokenizer")
    os.makedirs(tokenizer_dir, exist_ok=True)
    for name in ("tokenizer.json", "meta.json"):
        shutil.copy(os.path.join(run.shards.path, name), os.path.join(tokenizer_dir, name))  # a blend's first
    run.model_config.to_json(os.path.join(args.output, "model_config.json"))
    resolved = {
        "args": {k: v for k, v in vars(args).items() if k != "deepspeed_config"},
        "deepspeed_config_file": args.deepspeed_config,
        "ds_config": run.ds_config,
        "objective": args.objective,
        "packing": run.samples.mode,
        "data": corpora(run, args.steps),
        "masking": run.objective_class.masking,
        "masking_config": run.masking_config.to_dict(),
        "world_size": len(hosts),
        "hosts": ranks_by_host(hosts),
        "gradient_accumulation_steps": run.plan.accumulation,
        # a new phase (--continue-from): the run, checkpoint and step it started from; its steps follow that one
        "continued_from": run.continued_from,
        "git_commit": _git_commit(),
        "versions": _versions(),
    }
    with open(os.path.join(args.output, "run_config.json"), "w") as f:
        json.dump(resolved, f, indent=2, default=str)


def corpora(run, steps):
    """Per corpus of --data: name, folder, weight, samples, samples an epoch and samples this run of `steps`
    steps draws (a blend's shares; one folder's epoch is its samples, drawn in a new order each epoch)."""
    if hasattr(run.samples, "describe"):
        return run.samples.describe(steps, run.plan.global_batch)
    n = len(run.samples)
    return [{"name": os.path.basename(os.path.normpath(str(run.shards.path))), "folder": str(run.shards.path),
             "weight": 1.0, "samples": n, "samples_per_epoch": n, "samples_in_run": steps * run.plan.global_batch}]


def load_run(run_dir, tag=None):
    """(objective with the fp32 weights of checkpoint `tag`, default the latest complete one, tag)."""
    config_path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{run_dir} is not a run folder (no run_config.json); pass the --output folder of a "
                        "training run")
    with open(config_path) as f:
        run_config = json.load(f)
    root = os.path.join(run_dir, "checkpoints")
    found = [checkpoint.tag_of(c["step"]) for c in checkpoint.complete_checkpoints(root)]
    if tag is None:
        if not found:
            raise UserError(f"{run_dir} has no complete checkpoint yet; train for at least --save-every steps first")
        tag = found[-1]
    if tag.endswith(checkpoint.UNIVERSAL_SUFFIX):
        raise UserError(f"{os.path.join(root, tag)} is a converted copy, made to resume on another number of ranks "
                        f"or ZeRO stage; pass the checkpoint it was made from, "
                        f"{tag[: -len(checkpoint.UNIVERSAL_SUFFIX)]}")
    if not os.path.isdir(os.path.join(root, tag)):
        raise UserError(f"{run_dir} has no checkpoint {tag}; its complete checkpoints are: "
                        f"{', '.join(found) or 'none yet'}")

    config = ModelConfig.from_json(os.path.join(run_dir, "model_config.json"))
    objective = OBJECTIVES[run_config["objective"]](config)
    state = checkpoint.fp32_state_dict(root, tag, objective)  # vets every file before unpickling it
    missing, unexpected = load_first_names(objective, {k: v.float() for k, v in state.items()})
    if missing or unexpected:
        raise UserError(f"checkpoint {os.path.join(root, tag)} does not match the run's model: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    return objective, tag


def _git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        done = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions():
    import deepspeed
    import numpy
    import tokenizers
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "tokenizers": tokenizers.__version__, "numpy": numpy.__version__}
