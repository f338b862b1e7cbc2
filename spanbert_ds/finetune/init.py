"""Where fine-tuning starts (`--init`): a pretraining run of ours or a Hugging Face BERT folder.

Either way the result is the same: the model's shape, the encoder's fp32 weights under our names
(and BERT's pooler where one was trained: the NSP head's, or HF's bert.pooler), and the tokenizer
the encoder was trained with. A run folder gives its latest complete checkpoint (or the one named,
RUN/checkpoints/stepN), with ZeRO shards consolidated.
"""

import json
import os
from dataclasses import dataclass, replace

from spanbert_ds.data.tokenizer import TOKENIZER_FILES, load_tokenizer, vocab_size
from spanbert_ds.errors import UserError
from spanbert_ds.model.config import ModelConfig

POOLER = {"nsp_head.pooler.weight": "pooler.weight", "nsp_head.pooler.bias": "pooler.bias"}


@dataclass
class Init:
    config: ModelConfig
    state: dict | None  # TaskModel names -> fp32 tensors: encoder.* and, if trained, pooler.*; None until loaded
    tokenizer_path: str
    description: str  # e.g. "runs/x checkpoint step1000 (spanbert)"
    read_weights: object = None  # () -> state, for load_weights


def load_init(path):
    """open_init and load_weights in one."""
    return load_weights(open_init(path))


def open_init(path):
    """Where --init starts, checked, without its weights (state None): the shape, the encoder kind, the
    tokenizer's place. Reading the weights is slow (a run's ZeRO shards are consolidated), so fine-tuning
    checks everything else before load_weights."""
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise UserError(f"--init {path}: no such folder; pass a pretraining run folder (train.py's --output), one "
                        "of its checkpoints, or a Hugging Face BERT folder")
    if os.path.isfile(os.path.join(path, "config.json")):
        return _from_hf(path)
    return _from_run(path)


def load_weights(init):
    """The Init with its weights read."""
    return replace(init, state=init.read_weights()) if init.state is None else init


def _from_run(path):
    from spanbert_ds.interop.export import run_and_tag
    from spanbert_ds.interop.hf import read_imported
    from spanbert_ds.model.rtd import merged_state_dict
    from spanbert_ds.train import checkpoint
    from spanbert_ds.train.run_folder import load_run

    run_dir, tag = run_and_tag(path, None)
    if not os.path.isfile(os.path.join(run_dir, "run_config.json")):
        raise UserError(f"--init {path} is neither a pretraining run folder (no run_config.json) nor a Hugging "
                        "Face folder (no config.json)")
    with open(os.path.join(run_dir, "run_config.json")) as f:
        name = json.load(f).get("objective")
    config = ModelConfig.from_json(os.path.join(run_dir, "model_config.json"))
    _check_backbone(config, path)
    if tag is None:  # the latest complete checkpoint, as load_run takes it (which says so when there is none)
        found = checkpoint.complete_checkpoints(os.path.join(run_dir, "checkpoints"))
        tag = checkpoint.tag_of(found[-1]["step"]) if found else None

    def read_weights():
        objective, _ = load_run(run_dir, tag)
        # an RTD run's encoder is its discriminator, whose gdes tables become plain ones here; the pooler of the
        # run's --init-from folder where the objective trained none
        return _task_state({**read_imported(run_dir), **merged_state_dict(objective)})

    if tag is None:
        read_weights()  # load_run's error: no complete checkpoint yet
    return Init(config, None, os.path.join(run_dir, "tokenizer"), f"{run_dir} checkpoint {tag} ({name})",
                read_weights)


def _from_hf(path):
    from spanbert_ds.interop.hf import config_from_hf, load_hf_into
    from spanbert_ds.model.objectives import OBJECTIVES

    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise UserError(f"--init {path}: the folder has no tokenizer.json, vocab.txt or spm.model; the encoder needs "
                        "the tokenizer it was trained with")
    config = config_from_hf(path)
    _check_backbone(config, path)

    def read_weights():
        holder = OBJECTIVES["bert"](config)  # BERT's encoder and pooler, the names load_hf_into fills
        report = load_hf_into(holder, path)
        return _task_state({k: v for k, v in holder.state_dict().items() if k in report["loaded"]})

    return Init(config, None, path, f"{path} (Hugging Face)", read_weights)


def _check_backbone(config, path):
    if config.backbone != "bert":
        raise UserError(f"--init {path}: a {config.backbone} encoder; fine-tuning takes BERT-family encoders only "
                        "for now (the task heads and their Hugging Face exports are BERT's)")


def _task_state(state):
    kept = {POOLER.get(k, k): v.float() for k, v in state.items() if k.startswith("encoder.") or k in POOLER}
    return kept


def load_into(model, init):
    """Copy the encoder (and pooler) into a TaskModel; returns the names left as initialised (the head)."""
    wanted = {k: v for k, v in init.state.items() if k in model.state_dict()}
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    absent = [k for k in missing if k.startswith("encoder.")]
    if absent:
        raise UserError(f"--init {init.description}: no weights for {', '.join(absent[:3])}; it is not a BERT "
                        "encoder this model can start from")
    return sorted(missing)


def tokenizer_of(init):
    tokenizer = load_tokenizer(init.tokenizer_path)
    if vocab_size(tokenizer) > init.config.vocab_size:
        raise UserError(f"--init {init.description}: its tokenizer has {vocab_size(tokenizer)} tokens but the "
                        f"encoder only {init.config.vocab_size}; the folder mixes a tokenizer and a model that "
                        "were not trained together")
    return tokenizer
