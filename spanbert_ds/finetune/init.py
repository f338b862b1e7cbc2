"""Where fine-tuning starts (`--init`): a pretraining run of ours (any objective) or a Hugging Face BERT,
RoBERTa or DeBERTa V2/V3 folder.

Either way the result is the same: the model's shape, the encoder's fp32 weights under our names
(and BERT's pooler where one was trained: the NSP head's, or HF's bert.pooler), and the tokenizer
the encoder was trained with. A run folder gives its latest complete checkpoint (or the one named,
RUN/checkpoints/stepN), with ZeRO shards consolidated; a replaced-token detection run (electra, debertav3)
gives its discriminator, with gradient-disentangled tables merged (E_G + E_delta). The deberta objective's
EMD position table comes along and is left out by the task model, which drops the EMD (finetune/model.py).
"""

import os
from dataclasses import dataclass, replace

from torch import nn

from spanbert_ds.data.tokenizer import TOKENIZER_FILES, load_tokenizer, vocab_size
from spanbert_ds.errors import UserError
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.model.objectives import ENCODERS

POOLER = {"nsp_head.pooler.weight": "pooler.weight", "nsp_head.pooler.bias": "pooler.bias"}


@dataclass
class Init:
    config: ModelConfig
    state: dict | None  # TaskModel names -> fp32 tensors: encoder.* and, if trained, pooler.*; None until loaded
    tokenizer_path: str
    description: str  # e.g. "runs/x checkpoint step1000 (spanbert)"
    read_weights: object = None  # () -> state, for load_weights


def load_init(path, hf=None):
    """open_init and load_weights in one."""
    return load_weights(open_init(path, hf))


def open_init(path, hf=None):
    """Where --init starts, checked, without its weights (state None): the shape, the encoder kind, the
    tokenizer's place. Reading the weights is slow (a run's ZeRO shards are consolidated), so fine-tuning
    checks everything else before load_weights. hf: what reads a Hugging Face folder (interop/hf.py's
    config_from_hf and load_hf_into), handed down by cli.py: interop sits above fine-tuning."""
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise UserError(f"--init {path}: no such folder; pass a pretraining run folder (train.py's --output), one "
                        "of its checkpoints, or a Hugging Face BERT, RoBERTa or DeBERTa V2/V3 folder")
    if os.path.isfile(os.path.join(path, "config.json")):
        if hf is None:
            raise TypeError("--init of a Hugging Face folder needs its reader (interop/hf.py) handed down")
        return _from_hf(path, hf)
    return _from_run(path)


def load_weights(init):
    """The Init with its weights read."""
    return replace(init, state=init.read_weights()) if init.state is None else init


def _from_run(path):
    from spanbert_ds.run.folder import open_run, run_and_tag

    run_dir, _ = run_and_tag(path)
    if not os.path.isfile(os.path.join(run_dir, "run_config.json")):
        raise UserError(f"--init {path} is neither a pretraining run folder (no run_config.json) nor a Hugging "
                        "Face folder (no config.json)")
    run = open_run(path)  # the checkpoint checked, its weights not read yet
    return Init(run.config, None, run.tokenizer_path, run.description, lambda: _task_state(run.read()))


def _from_hf(path, hf):
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise UserError(f"--init {path}: the folder has no tokenizer.json, vocab.txt or spm.model; the encoder needs "
                        "the tokenizer it was trained with")
    config = hf.config_from_hf(path)

    def read_weights():
        holder = _EncoderOnly(config)
        report = hf.load_hf_into(holder, path)  # the encoder loaded; BERT's pooler (nsp_head.pooler.*) kept
        return _task_state({**{k: v for k, v in holder.state_dict().items() if k in report["loaded"]},
                            **report["kept"]})

    return Init(config, None, path, f"{path} (Hugging Face)", read_weights)


class _EncoderOnly(nn.Module):
    """The names load_hf_into fills (encoder.*), and nothing else: what the folder holds beyond the encoder
    and BERT's export has a place for (its pooler) comes back as kept."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = ENCODERS[config.backbone](config)


def _task_state(state):
    kept = {POOLER.get(k, k): v.float() for k, v in state.items() if k.startswith("encoder.") or k in POOLER}
    return kept


def load_into(model, init):
    """Copy the encoder (and, into BERT's classification head, the pretrained pooler) into a TaskModel; returns
    the names left as initialised (the head). The other families' classification heads start fresh, as
    transformers' Roberta-, Electra- and DebertaV2ForSequenceClassification do."""
    wanted = {k: v for k, v in init.state.items() if k in model.state_dict()
              and (k.startswith("encoder.") or model.family == "bert")}
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    absent = [k for k in missing if k.startswith("encoder.")]
    if absent:
        raise UserError(f"--init {init.description}: no weights for {', '.join(absent[:3])}; it is not an "
                        f"encoder of the {model.config.backbone} backbone this model can start from")
    return sorted(missing)


def tokenizer_of(init):
    tokenizer = load_tokenizer(init.tokenizer_path)
    if vocab_size(tokenizer) > init.config.vocab_size:
        raise UserError(f"--init {init.description}: its tokenizer has {vocab_size(tokenizer)} tokens but the "
                        f"encoder only {init.config.vocab_size}; the folder mixes a tokenizer and a model that "
                        "were not trained together")
    return tokenizer
