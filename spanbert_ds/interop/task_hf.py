"""A fine-tuned TaskModel (finetune/model.py) as the transformers class of its backbone and task.

The backbone family (finetune/model.py `family`) picks the class, the task its head:

  family    class prefix  encoder    *ForSequenceClassification's head (ours: pooler, classifier)
  bert      Bert          bert.*     bert.pooler.dense, classifier            (BertPooler: tanh)
  roberta   Roberta       roberta.*  classifier.dense, classifier.out_proj   (RobertaClassificationHead: tanh)
  electra   Electra       electra.*  classifier.dense, classifier.out_proj   (ElectraClassificationHead: GeLU)
  deberta   DebertaV2     deberta.*  pooler.dense, classifier               (ContextPooler: GeLU)

*ForQuestionAnswering's qa_outputs and *ForTokenClassification's classifier have our names in every family.
The encoder's names come from interop/hf.py's tables (to_hf_state_dict); ELECTRA's discriminator is BERT's
encoder under electra.*; DeBERTa's is exported without the enhanced mask decoder, which fine-tuning drops.
"""

import json
import os

import torch

from spanbert_ds.finetune.model import encoder_config, family
from spanbert_ds.folders import save_safetensors
from spanbert_ds.interop.hf import hf_config_dict, to_hf_state_dict, write_tokenizer_files
from spanbert_ds.interop.hf_names import strip_wrapper_prefix

TASKS = ("QuestionAnswering", "SequenceClassification", "TokenClassification")
PREFIXES = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra", "deberta": "DebertaV2"}
# Our sequence head's names -> each family's (by prefix); the other heads keep ours.
SEQUENCE_HEAD_NAMES = {
    "bert": {"pooler.": "bert.pooler.dense.", "classifier.": "classifier."},
    "roberta": {"pooler.": "classifier.dense.", "classifier.": "classifier.out_proj."},
    "electra": {"pooler.": "classifier.dense.", "classifier.": "classifier.out_proj."},
    "deberta": {"pooler.": "pooler.dense.", "classifier.": "classifier."},
}
OTHER_HEAD_NAMES = {"qa_outputs.": "qa_outputs.", "classifier.": "classifier."}


def task_architecture(model_config, architecture):
    """The transformers class a fine-tuned model of `model_config` exports as, for the task that `architecture`
    (any family's *ForQuestionAnswering, -SequenceClassification or -TokenClassification) names."""
    task = architecture.partition("For")[2]
    if task not in TASKS:
        raise ValueError(f"architecture {architecture!r} is not a *For{{{', '.join(TASKS)}}} class")
    return f"{PREFIXES[family(model_config)]}For{task}"


def export_task_hf(state, model_config, architecture, labels, tokenizer_source, out_dir):
    """A fine-tuned model's state dict (finetune/model.py's names) as an HF folder of its backbone's class for
    the task `architecture` names (task_architecture: BertForQuestionAnswering from a debertav3 run writes
    DebertaV2ForQuestionAnswering); `labels`: the label names in id order (None for QA). Returns the files
    written."""
    state = strip_wrapper_prefix(state)
    architecture = task_architecture(model_config, architecture)
    kind = family(model_config)
    config = encoder_config(model_config)
    # what DebertaV2 has no place for (an EMD position table) comes back as extra, and is left out
    hf, _ = to_hf_state_dict({k: v for k, v in state.items() if k.startswith("encoder.")}, config,
                             roberta=kind == "roberta")
    if kind == "electra":  # ELECTRA's discriminator is BERT's encoder under electra.*
        hf = {"electra." + k.removeprefix("bert."): v for k, v in hf.items()}
    heads = SEQUENCE_HEAD_NAMES[kind] if architecture.endswith("SequenceClassification") else OTHER_HEAD_NAMES
    for name, tensor in state.items():
        prefix = next((p for p in heads if name.startswith(p)), None)
        if prefix is not None:
            hf[heads[prefix] + name[len(prefix):]] = tensor.detach().to("cpu", torch.float32).contiguous()
    hf_config = {**_config_dict(config, kind), "architectures": [architecture]}
    if labels is not None:
        hf_config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        hf_config["label2id"] = {label: i for i, label in enumerate(labels)}
    os.makedirs(out_dir, exist_ok=True)
    written = [os.path.join(out_dir, "config.json"), os.path.join(out_dir, "model.safetensors")]
    with open(written[0], "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    save_safetensors(hf, written[1])
    return written + write_tokenizer_files(tokenizer_source, out_dir, config)


def _config_dict(config, kind):
    if kind == "electra":
        # BERT's settings (one zero segment row where the model has none, as to_hf_state_dict writes it)
        bert = hf_config_dict(config.replace(type_vocab_size=max(config.type_vocab_size, 1)))
        return {**bert, "model_type": "electra", "embedding_size": config.hidden_size}
    if kind == "deberta":  # ContextPooler as the released code's PoolConfig defaults: no dropout, GeLU
        return {**hf_config_dict(config), "pooler_hidden_size": config.hidden_size, "pooler_hidden_act": "gelu",
                "pooler_dropout": 0.0}
    return hf_config_dict(config)  # BertConfig, or RobertaConfig for a model without segments
