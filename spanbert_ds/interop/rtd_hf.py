"""Replaced-token detection (the electra and debertav3 objectives) in the Hugging Face formats.

HF keeps the two networks as two models, so an RTD run exports one of them per folder:
  discriminator (the default; what pretraining is for; under gdes with the tables it reads, E_G + E_delta)
    bert backbone     ElectraForPreTraining: electra.*, discriminator_predictions.* (our rtd_head)
    deberta backbone  DebertaV2Model (transformers has no DeBERTa RTD class): deberta.* as hf.py names them, and
                      rtd_head.safetensors beside it, under our names (as the SBO head): DeBERTaV3's head
                      (rtd_head.ln.*, rtd_head.dense.*, rtd_head.classifier.*) or ELECTRA's. The position table
                      the discriminator holds for the generator's EMD is left out (it never reads it; the
                      generator's export carries it in emd.safetensors)
  generator (`spanbert-ds export --generator`)
    bert backbone     ElectraForMaskedLM: electra.* (with electra.embeddings_project where the generator is
                      narrower than the tables it shares), generator_predictions.*, generator_lm_head.bias (its
                      weight is tied to the word embeddings, so not written)
    deberta backbone  DebertaV2ForMaskedLM, as hf.py exports any deberta MLM
ELECTRA's encoder and generator head are BERT's under other names, so everything goes through hf.py's
tables and mapping loop (to_hf_state_dict); this file adds the renames and the few tensors BERT lacks.
"""

import torch
from torch import nn

from spanbert_ds.errors import UserError
from spanbert_ds.interop.hf_names import (bert_config_dict, extra_files, hf_config_dict, rename,
                                          strip_wrapper_prefix, to_hf_state_dict)
from spanbert_ds.model.objectives import OBJECTIVES, load_first_names
from spanbert_ds.model.rtd import merged_state_dict

RTD_FILE = "rtd_head.safetensors"
RTD_PREFIX = "rtd_head."
NO_GENERATOR = ("export --generator: {what} has no generator; only replaced-token detection (the electra and "
                "debertav3 objectives) trains one: leave --generator out")
# BertForPreTraining's names, as to_hf_state_dict writes them -> ElectraForPreTraining's / ElectraForMaskedLM's.
ELECTRA_PREFIXES = {
    "bert.": "electra.",
    "cls.predictions.transform.dense.": "generator_predictions.dense.",
    "cls.predictions.transform.LayerNorm.": "generator_predictions.LayerNorm.",
    "cls.predictions.bias": "generator_lm_head.bias",
}
# Our names that BERT has no place for -> ELECTRA's: the RTD head, and the generator's projection of the shared
# tables (ELECTRA's embeddings_project: both apply it after the embeddings' LayerNorm).
ELECTRA_NAMES = {
    "rtd_head.dense.weight": "discriminator_predictions.dense.weight",
    "rtd_head.dense.bias": "discriminator_predictions.dense.bias",
    "rtd_head.classifier.weight": "discriminator_predictions.dense_prediction.weight",
    "rtd_head.classifier.bias": "discriminator_predictions.dense_prediction.bias",
    "encoder.embeddings.project.weight": "electra.embeddings_project.weight",
    "encoder.embeddings.project.bias": "electra.embeddings_project.bias",
}
# A generator narrower than the tables it shares holds them in ProjectedEmbeddings' `inner`: read as its tables.
PROJECTED = {"encoder.embeddings.inner.": "encoder.embeddings."}


def is_rtd(objective_or_state_dict):
    """Whether this is a replaced-token detection objective, or its state dict: the ones with an RTD head."""
    if isinstance(objective_or_state_dict, nn.Module):
        return hasattr(objective_or_state_dict, "rtd_head")
    return any(k.startswith(RTD_PREFIX) for k in strip_wrapper_prefix(objective_or_state_dict))


def rtd_to_hf(objective_or_state_dict, config, generator=False):
    """(HF config dict, HF tensors, {file name: tensors kept under our names}) of an RTD objective's discriminator
    or, with generator=True, its generator; all tensors fp32 on the CPU."""
    objective = _objective(objective_or_state_dict, config)
    return _generator(objective) if generator else _discriminator(objective)


def _objective(objective_or_state_dict, config):
    """The objective itself. The networks' sharing (one table under several names; gdes' E_G + E_delta) is the
    module's structure, and a state dict may hold a shared table under a second name in another precision
    (ZeRO-0 keeps fp32 masters for the first name only), so a state dict is loaded into a fresh objective,
    each tensor from its first name, as load_run does."""
    if isinstance(objective_or_state_dict, nn.Module):
        return objective_or_state_dict
    # ELECTRA builds every RTD objective from its model config: DeBERTaV3 only fills other defaults in.
    objective = OBJECTIVES["electra"](config)
    missing, unexpected = load_first_names(objective, strip_wrapper_prefix(objective_or_state_dict))
    if missing or unexpected:
        raise UserError(f"export: the state dict is not one of this model config's RTD objective: missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}")
    return objective


def _fp32(state, table):
    return {table[k]: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items() if k in table}


def _electra_config(config, architecture, embedding_size):
    return {**bert_config_dict(config), "architectures": [architecture], "model_type": "electra",
            "embedding_size": embedding_size}


def _discriminator(objective):
    config = objective.config
    state = merged_state_dict(objective)  # gdes tables as the discriminator reads them, E_G + E_delta
    if config.backbone == "deberta" and not config.emd:
        # the position table the discriminator holds for the generator's EMD (model/rtd.py) and never reads:
        # DebertaV2Model has no place for it (an emd.safetensors would claim an EMD on import)
        state.pop("encoder.embeddings.position.weight", None)
    hf, extra = to_hf_state_dict({k: v for k, v in state.items() if k.startswith("encoder.")}, config, roberta=False)
    if config.backbone == "deberta":  # the head beside the model, under our names
        extras = {**extra_files(extra), RTD_FILE: _fp32(state, {k: k for k in state if k.startswith(RTD_PREFIX)})}
        return {**hf_config_dict(config), "architectures": ["DebertaV2Model"]}, hf, extras
    if config.rtd_head != "electra":
        raise UserError(f"export: ElectraForPreTraining's discriminator_predictions is ELECTRA's head; this run's "
                        f"rtd_head is {config.rtd_head!r} (a LayerNorm over h_CLS + h_i first), which it cannot hold. "
                        "Train ELECTRA with rtd_head electra to export it")
    hf = {rename(k, ELECTRA_PREFIXES): v for k, v in hf.items()}
    config_dict = _electra_config(config, "ElectraForPreTraining", config.hidden_size)
    return config_dict, {**hf, **_fp32(state, ELECTRA_NAMES)}, extra_files(extra)


def _generator(objective):
    small = objective.generator.encoder.config  # the generator's shape (rtd.generator_config)
    state = {rename(k, PROJECTED): v for k, v in objective.generator.state_dict().items()}
    projected = any(k.startswith("encoder.embeddings.project.") for k in state)
    if small.backbone == "deberta" and projected:
        raise UserError(f"export --generator: this generator ({small.hidden_size} wide) projects the "
                        f"{objective.config.hidden_size}-wide tables it shares down after their LayerNorm, with a "
                        "bias; DebertaV2's embed_proj comes before the LayerNorm, without one, so no "
                        "DebertaV2ForMaskedLM holds it. Generators of the discriminator's width (generator_width 1, "
                        "DeBERTaV3's) or with their own tables (embedding_sharing none) export")
    hf, extra = to_hf_state_dict(state, small, roberta=False)
    if small.backbone == "deberta":
        return hf_config_dict(small), hf, extra_files(extra)
    hf = {rename(k, ELECTRA_PREFIXES): v for k, v in hf.items()}
    width = hf["electra.embeddings.word_embeddings.weight"].shape[1]  # the shared tables' (> hidden_size: projected)
    config_dict = _electra_config(small, "ElectraForMaskedLM", width)
    return config_dict, {**hf, **_fp32(state, ELECTRA_NAMES)}, extra_files(extra)
