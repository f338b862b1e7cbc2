"""Hugging Face's parameter and config names for our models: the one table both conversions use, the
BERT family's (interop/hf.py: BERT, RoBERTa, DeBERTa-V2) and replaced-token detection's (interop/rtd_hf.py:
ELECTRA, DeBERTaV3), our names on one side and transformers' on the other, with the renames between them.
"""

import re

import torch

from spanbert_ds.errors import UserError
from spanbert_ds.model.objectives import TIED


# Our objective's parameter names -> Hugging Face BertForPreTraining's. "{i}" is a layer index;
# a tuple is one of our tensors that HF keeps as several, concatenated along dim 0 (Q, K, V).
HF_NAMES = {
    "encoder.embeddings.word.weight": "bert.embeddings.word_embeddings.weight",
    "encoder.embeddings.position.weight": "bert.embeddings.position_embeddings.weight",
    "encoder.embeddings.token_type.weight": "bert.embeddings.token_type_embeddings.weight",
    "encoder.embeddings.ln.weight": "bert.embeddings.LayerNorm.weight",
    "encoder.embeddings.ln.bias": "bert.embeddings.LayerNorm.bias",
    "encoder.layers.{i}.attn.qkv.weight": tuple(f"bert.encoder.layer.{{i}}.attention.self.{p}.weight"
                                                for p in ("query", "key", "value")),
    "encoder.layers.{i}.attn.qkv.bias": tuple(f"bert.encoder.layer.{{i}}.attention.self.{p}.bias"
                                              for p in ("query", "key", "value")),
    "encoder.layers.{i}.attn.out.weight": "bert.encoder.layer.{i}.attention.output.dense.weight",
    "encoder.layers.{i}.attn.out.bias": "bert.encoder.layer.{i}.attention.output.dense.bias",
    "encoder.layers.{i}.ln1.weight": "bert.encoder.layer.{i}.attention.output.LayerNorm.weight",
    "encoder.layers.{i}.ln1.bias": "bert.encoder.layer.{i}.attention.output.LayerNorm.bias",
    "encoder.layers.{i}.ffn.fc1.weight": "bert.encoder.layer.{i}.intermediate.dense.weight",
    "encoder.layers.{i}.ffn.fc1.bias": "bert.encoder.layer.{i}.intermediate.dense.bias",
    "encoder.layers.{i}.ffn.fc2.weight": "bert.encoder.layer.{i}.output.dense.weight",
    "encoder.layers.{i}.ffn.fc2.bias": "bert.encoder.layer.{i}.output.dense.bias",
    "encoder.layers.{i}.ln2.weight": "bert.encoder.layer.{i}.output.LayerNorm.weight",
    "encoder.layers.{i}.ln2.bias": "bert.encoder.layer.{i}.output.LayerNorm.bias",
    "mlm_head.transform.weight": "cls.predictions.transform.dense.weight",
    "mlm_head.transform.bias": "cls.predictions.transform.dense.bias",
    "mlm_head.transform.ln_weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_head.transform.ln_bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm_head.bias": "cls.predictions.bias",
    "nsp_head.pooler.weight": "bert.pooler.dense.weight",
    "nsp_head.pooler.bias": "bert.pooler.dense.bias",
    "nsp_head.classifier.weight": "cls.seq_relationship.weight",
    "nsp_head.classifier.bias": "cls.seq_relationship.bias",
}
# The same for the deberta backbone -> DebertaV2ForMaskedLM (its non-legacy head, as the released V3
# checkpoints name it). The EMD's absolute position table has no place in DebertaV2: EMD_FILE holds it.
DEBERTA_NAMES = {
    "encoder.embeddings.word.weight": "deberta.embeddings.word_embeddings.weight",
    "encoder.embeddings.token_type.weight": "deberta.embeddings.token_type_embeddings.weight",
    "encoder.embeddings.ln.weight": "deberta.embeddings.LayerNorm.weight",
    "encoder.embeddings.ln.bias": "deberta.embeddings.LayerNorm.bias",
    "encoder.rel_embeddings.weight": "deberta.encoder.rel_embeddings.weight",
    "encoder.rel_ln.weight": "deberta.encoder.LayerNorm.weight",
    "encoder.rel_ln.bias": "deberta.encoder.LayerNorm.bias",
    "encoder.layers.{i}.attn.qkv.weight": tuple(f"deberta.encoder.layer.{{i}}.attention.self.{p}_proj.weight"
                                                for p in ("query", "key", "value")),
    "encoder.layers.{i}.attn.qkv.bias": tuple(f"deberta.encoder.layer.{{i}}.attention.self.{p}_proj.bias"
                                              for p in ("query", "key", "value")),
    "encoder.layers.{i}.attn.out.weight": "deberta.encoder.layer.{i}.attention.output.dense.weight",
    "encoder.layers.{i}.attn.out.bias": "deberta.encoder.layer.{i}.attention.output.dense.bias",
    "encoder.layers.{i}.ln1.weight": "deberta.encoder.layer.{i}.attention.output.LayerNorm.weight",
    "encoder.layers.{i}.ln1.bias": "deberta.encoder.layer.{i}.attention.output.LayerNorm.bias",
    "encoder.layers.{i}.ffn.fc1.weight": "deberta.encoder.layer.{i}.intermediate.dense.weight",
    "encoder.layers.{i}.ffn.fc1.bias": "deberta.encoder.layer.{i}.intermediate.dense.bias",
    "encoder.layers.{i}.ffn.fc2.weight": "deberta.encoder.layer.{i}.output.dense.weight",
    "encoder.layers.{i}.ffn.fc2.bias": "deberta.encoder.layer.{i}.output.dense.bias",
    "encoder.layers.{i}.ln2.weight": "deberta.encoder.layer.{i}.output.LayerNorm.weight",
    "encoder.layers.{i}.ln2.bias": "deberta.encoder.layer.{i}.output.LayerNorm.bias",
    "mlm_head.transform.weight": "lm_predictions.lm_head.dense.weight",
    "mlm_head.transform.bias": "lm_predictions.lm_head.dense.bias",
    "mlm_head.transform.ln_weight": "lm_predictions.lm_head.LayerNorm.weight",
    "mlm_head.transform.ln_bias": "lm_predictions.lm_head.LayerNorm.bias",
    "mlm_head.bias": "lm_predictions.lm_head.bias",
}
# DebertaV2ForMaskedLM's legacy head (transformers' default when a config does not say) -> the names above.
DEBERTA_LEGACY = {"cls.predictions.transform.dense.": "lm_predictions.lm_head.dense.",
                  "cls.predictions.transform.LayerNorm.": "lm_predictions.lm_head.LayerNorm.",
                  "cls.predictions.bias": "lm_predictions.lm_head.bias"}
EMD_FILE = "emd.safetensors"
EMD_NAMES = ("encoder.embeddings.position.weight",)
# Tensors whose rows are the vocabulary: padded_vocab_size rows here, vocab_size in HF files.
VOCAB_ROWS = ("encoder.embeddings.word.weight", "mlm_head.bias", "sbo_head.bias")
# HF names (as load_hf_into renames them) that carry no weights of their own (buffers and tied copies), and
# the replaced-token-detection head DeBERTa V3 checkpoints carry, which transformers' MLM model skips too.
HF_DERIVED = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$|^(cls\.predictions|lm_head)\.decoder\."
                        r"(weight|bias)$|^mask_predictions\.")
# BertForPreTraining's names -> RobertaForMaskedLM's, by prefix (the encoder's are the same under roberta.).
ROBERTA_PREFIXES = {
    "bert.": "roberta.",
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
    "cls.predictions.bias": "lm_head.bias",
}
ROBERTA_POSITIONS = "embeddings.position_embeddings.weight"
SBO_FILE = "sbo_head.safetensors"
HF_SHAPE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
SBO_PREFIX = "sbo_head."


def name_pairs(config):
    """(our name, HF name or tuple of HF names) for every mapped tensor of a model with this config."""
    for ours, hf in (DEBERTA_NAMES if config.backbone == "deberta" else HF_NAMES).items():
        if "{i}" not in ours:
            yield ours, hf
            continue
        for i in range(config.num_layers):
            yield ours.format(i=i), tuple(n.format(i=i) for n in hf) if isinstance(hf, tuple) else hf.format(i=i)


def to_hf_state_dict(state, config, roberta=None):
    """Our objective's state dict -> (HF tensors: BertForPreTraining's, RobertaForMaskedLM's for a model without
    segments unless roberta is False, DebertaV2ForMaskedLM's for the deberta backbone; the tensors kept under
    our names beside them: the SBO head and the EMD's positions), all fp32 CPU."""
    if config.pre_layernorm:
        raise UserError("export: this model is pre-LayerNorm; Hugging Face's BertForPreTraining is post-LayerNorm "
                        "only, so it cannot hold it. Train with pre_layernorm false to export to HF BERT")
    state = strip_wrapper_prefix(state)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
    for key in VOCAB_ROWS:
        if key in state:
            state[key] = state[key][: config.vocab_size]
    hf, missing = {}, []
    for ours, names in name_pairs(config):
        if ours not in state:
            if ours.startswith("encoder.") and ours != "encoder.embeddings.token_type.weight":
                missing.append(ours)
            continue
        names = names if isinstance(names, tuple) else (names,)
        for name, part in zip(names, state.pop(ours).chunk(len(names), dim=0)):
            hf[name] = part.contiguous()
    if missing:
        raise UserError(f"export: the state dict lacks encoder tensors for {missing[:3]} "
                        f"(and {max(len(missing) - 3, 0)} more); is it the state dict of this model config's "
                        "objective?")
    extra = {k: v.contiguous() for k, v in state.items()
             if (k.startswith(SBO_PREFIX) or k in EMD_NAMES) and k not in TIED}
    if config.backbone == "deberta":
        left = [k for k in state if k not in extra and k not in TIED]
        if left:
            raise UserError(f"export: DebertaV2 has no place for {', '.join(left[:3])} (the NSP head); export a "
                            "deberta backbone trained with the deberta, roberta or spanbert objective")
        return hf, extra
    if "bert.embeddings.token_type_embeddings.weight" not in hf:
        # No segments (RoBERTa): HF BERT always adds one segment row; a zero row adds nothing. It has the
        # word table's width, which is wider than hidden_size in a generator that projects shared tables down.
        width = hf["bert.embeddings.word_embeddings.weight"].shape[1]
        hf["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, width)
    roberta = is_roberta(config) if roberta is None else roberta
    return (bert_to_roberta(hf, config) if roberta else hf), extra


def is_roberta(config):
    """A model without segments is what the roberta objective trains: it exports as RoBERTa."""
    return config.type_vocab_size == 0


def position_offset(pad_token_id):
    # RoBERTa numbers the positions of real tokens from padding_idx + 1 (its padding takes row padding_idx).
    return pad_token_id + 1


def rename(name, table):
    for old, new in table.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def bert_to_roberta(hf, config):
    roberta = {rename(name, ROBERTA_PREFIXES): tensor for name, tensor in hf.items()}
    positions = roberta["roberta." + ROBERTA_POSITIONS]
    unused = torch.zeros(position_offset(config.pad_token_id), positions.shape[1])
    roberta["roberta." + ROBERTA_POSITIONS] = torch.cat([unused, positions])
    return roberta


def roberta_to_bert(hf, hf_config):
    back = {new: old for old, new in ROBERTA_PREFIXES.items()}
    bert = {rename(name, back): tensor for name, tensor in hf.items()}
    positions = "bert." + ROBERTA_POSITIONS
    if positions in bert:
        bert[positions] = bert[positions][position_offset(hf_config.get("pad_token_id", 1)):]
    return bert


def hf_config_dict(config):
    """Our ModelConfig as a transformers BertConfig dict (RobertaConfig for a model without segments,
    DebertaV2Config for the deberta backbone)."""
    if config.backbone == "deberta":
        return {**bert_config_dict(config), "architectures": ["DebertaV2ForMaskedLM"], "model_type": "deberta-v2",
                "type_vocab_size": config.type_vocab_size, "relative_attention": True,
                "pos_att_type": ["p2c", "c2p"], "position_buckets": config.position_buckets,
                "max_relative_positions": config.max_relative_positions, "share_att_key": True,
                "norm_rel_ebd": "layer_norm", "position_biased_input": False, "legacy": False}
    if is_roberta(config):
        return {**bert_config_dict(config), "architectures": ["RobertaForMaskedLM"], "model_type": "roberta",
                "max_position_embeddings": config.max_position_embeddings + position_offset(config.pad_token_id),
                "type_vocab_size": 1}
    return bert_config_dict(config)


def bert_config_dict(config):
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": max(config.type_vocab_size, 1),
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def strip_wrapper_prefix(state):
    # DeepSpeed / DDP wrap the objective as `module`.
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def extra_files(extra):
    """to_hf_state_dict's tensors kept under our names -> {file name: its tensors} (empty ones are not written)."""
    return {SBO_FILE: {k: v for k, v in extra.items() if k.startswith(SBO_PREFIX)},
            EMD_FILE: {k: v for k, v in extra.items() if k in EMD_NAMES}}
