"""The run folder, pretraining's and fine-tuning's: what a run writes (`--output`), and the one place that
reads a run's weights back (export, fine-tuning's --init).

    RUN/run_config.json    everything resolved (the caller's description: arguments, ds_config, world size,
                           identity, ...), the git commit and versions
    RUN/model_config.json  the model (model/config.py's JSON)
    RUN/tokenizer/         pretraining: the shards' tokenizer.json and meta.json, so export needs no shards
    RUN/imported.safetensors  weights --init-from brought that the objective does not train (BERT's pooler)
    RUN/metrics.jsonl, RUN/tensorboard/   monitor.py
    RUN/checkpoints/       checkpoint.py (which one a run continues and how it loads: resume.py)
    RUN/.lock              while a run writes the folder: its host and PID (folders.FolderLock)
"""

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

import torch.distributed as dist

from spanbert_ds.errors import UserError
from spanbert_ds.folders import FolderLock, save_safetensors
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.model.objectives import OBJECTIVES, load_first_names
from spanbert_ds.model.rtd import merged_state_dict
from spanbert_ds.run import checkpoint
from spanbert_ds.run.distributed import said_by_rank_0

IMPORTED_FILE = "imported.safetensors"


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


def write(output, model_config, description, tokenizer_files=()):
    """Rank 0, once the process group exists: the folder (with its parents), model_config.json, run_config.json
    (`description`, what the caller resolved, plus the git commit and library versions) and tokenizer/ (copies
    of `tokenizer_files`, so export and fine-tuning need no shards)."""
    os.makedirs(output, exist_ok=True)
    if tokenizer_files:
        os.makedirs(os.path.join(output, "tokenizer"), exist_ok=True)
    for path in tokenizer_files:
        shutil.copy(path, os.path.join(output, "tokenizer", os.path.basename(path)))
    model_config.to_json(os.path.join(output, "model_config.json"))
    resolved = {**description, "git_commit": _git_commit(), "versions": _versions()}
    with open(os.path.join(output, "run_config.json"), "w") as f:
        json.dump(resolved, f, indent=2, default=str)


def save_imported(kept, run_dir):
    """The tensors --init-from brought that the objective does not train (e.g. BERT's pooler; interop/hf.py's
    load_hf_into `kept`), under our names, for the export and for fine-tuning."""
    if kept:
        save_safetensors(kept, os.path.join(run_dir, IMPORTED_FILE))


def read_imported(run_dir):
    """The tensors save_imported kept in a run folder (none when the run did not start from an HF folder)."""
    path = os.path.join(run_dir, IMPORTED_FILE)
    if not os.path.isfile(path):
        return {}
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors' errors for a file cut short or damaged
        raise UserError(f"{path} is cut short or damaged ({str(error).strip()[:200] or 'it ends early'}); delete it to "
                        "go on without the weights --init-from brought that this run does not train") from None


def run_and_tag(path, tag=None):
    """RUN or RUN/checkpoints/stepN -> (RUN, tag or None)."""
    path = os.path.normpath(path)
    parent = os.path.dirname(path)
    run_dir = os.path.dirname(parent)
    if os.path.basename(parent) == "checkpoints" and os.path.isfile(os.path.join(run_dir, "run_config.json")):
        if tag is not None and tag != os.path.basename(path):
            raise UserError(f"{path} is checkpoint {os.path.basename(path)} but --checkpoint says {tag}; give one "
                            "of them")
        return run_dir, os.path.basename(path)
    return path, tag


@dataclass
class RunWeights:
    """A pretraining run's checkpoint as a starting point (fine-tuning's --init), checked; read() reads it."""

    run_dir: str
    tag: str
    objective: str  # its objective's name
    config: ModelConfig
    tokenizer_path: str
    description: str  # e.g. "runs/x checkpoint step1000 (spanbert)"

    def read(self):
        """The fp32 weights under our names (ZeRO shards consolidated): an RTD run's discriminator with its gdes
        tables merged into plain ones, and what the run's --init-from brought that it did not train (BERT's
        pooler) where the objective trained none of its own."""
        objective, _ = load_run(self.run_dir, self.tag)
        return {**read_imported(self.run_dir), **merged_state_dict(objective)}


def open_run(path):
    """RUN (its latest complete checkpoint) or RUN/checkpoints/stepN, checked without reading the weights,
    which is slow (RunWeights.read). The one way a run's weights are read for fine-tuning."""
    run_dir, tag = run_and_tag(path)
    run_config = _run_config(run_dir)
    root = os.path.join(run_dir, "checkpoints")
    tag = _check_tag(run_dir, root, tag)
    name = run_config.get("objective")
    config = ModelConfig.from_json(os.path.join(run_dir, "model_config.json"))
    return RunWeights(run_dir, tag, name, config, os.path.join(run_dir, "tokenizer"),
                      f"{run_dir} checkpoint {tag} ({name})")


def load_run(run_dir, tag=None):
    """(objective with the fp32 weights of checkpoint `tag`, default the latest complete one, tag)."""
    run_config = _run_config(run_dir)
    root = os.path.join(run_dir, "checkpoints")
    tag = _check_tag(run_dir, root, tag)
    config = ModelConfig.from_json(os.path.join(run_dir, "model_config.json"))
    objective = OBJECTIVES[run_config["objective"]](config)
    state = checkpoint.fp32_state_dict(root, tag, objective)  # vets every file before unpickling it
    missing, unexpected = load_first_names(objective, {k: v.float() for k, v in state.items()})
    if missing or unexpected:
        raise UserError(f"checkpoint {os.path.join(root, tag)} does not match the run's model: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    return objective, tag


def _run_config(run_dir):
    config_path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{run_dir} is not a run folder (no run_config.json); pass the --output folder of a "
                        "training run")
    with open(config_path) as f:
        return json.load(f)


def _check_tag(run_dir, root, tag):
    """The checkpoint `tag` names (None: the latest complete one), checked to be there and not a converted copy."""
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
    return tag


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
