"""The encoder with one fine-tuning head, as the transformers class of its backbone builds it.

- "span" (SQuAD): a Linear(H, 2) on every token gives the start and end logits; the loss is the mean
  of the two cross-entropies over the window's positions (*ForQuestionAnswering).
- "sequence" (classification): a dense layer and an activation on the first token, dropout, Linear(H, C)
  (*ForSequenceClassification). Each backbone's class has its own version (SEQUENCE_HEADS): BERT's pooler
  (dense + tanh), RoBERTa's and ELECTRA's classification heads (dropout, dense, tanh or GeLU), DeBERTa's
  ContextPooler (dense + GeLU). Under our names they are all `pooler` and `classifier`.
- "token" (NER): dropout, Linear(H, C) on every token; positions labelled -100 (later pieces of a
  word, [CLS]/[SEP], padding) take no loss (*ForTokenClassification).

The backbone (`family`) follows from the pretraining: the deberta backbone (the deberta and debertav3
objectives) is DebertaV2; a bert backbone trained by replaced-token detection (electra) is ELECTRA's
discriminator; one without segments (roberta) is RoBERTa; the rest (bert, spanbert) is BERT. The deberta
objective's enhanced mask decoder is dropped: as in the released DeBERTa code, the EMD belongs to the MLM
head (apps/models/masked_language_model.py) and the fine-tuning models run the plain encoder, all layers,
with no absolute positions (transformers' DebertaV2For* have no place for it either).

`model(batch)` returns {"loss", "logits"} when the batch holds the task's targets, {"logits"}
otherwise; logits are (B, T, 2), (B, C) or (B, T, C), in the encoder's dtype. With `sift` (finetune/sift.py)
training adds the adversarial loss: {"loss": task + lambda * adversarial, "task_loss", "sift_loss"}.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_ds.model.config import SHARING_NAMES
from spanbert_ds.model.objectives import ENCODERS, decay_groups, encoder_flops

HEADS = ("span", "sequence", "token")
FAMILIES = ("bert", "roberta", "electra", "deberta")
# The sequence head of each family's *ForSequenceClassification: (dropout before the dense layer, its activation).
SEQUENCE_HEADS = {
    "bert": (False, torch.tanh),  # BertPooler on [CLS]
    "roberta": (True, torch.tanh),  # RobertaClassificationHead
    "electra": (True, F.gelu),  # ElectraClassificationHead: GeLU where BERT has tanh
    "deberta": (False, F.gelu),  # ContextPooler (pooler_dropout 0, pooler_hidden_act gelu: both codes' defaults)
}
IGNORE = -100  # a token position without a label
PAD_LOGIT = -1e4  # a logit that takes a padded position out of a softmax


def family(config):
    """Which transformers model family the encoder of `config` is (see the top of this file)."""
    if config.backbone == "deberta":
        return "deberta"
    if config.embedding_sharing in SHARING_NAMES:  # filled in by the replaced-token detection objectives only
        return "electra"
    return "roberta" if config.type_vocab_size == 0 else "bert"


def encoder_config(config):
    """The encoder a task model runs: the pretraining's, without the enhanced mask decoder."""
    return config.replace(emd=False) if config.emd else config


class TaskModel(nn.Module):
    def __init__(self, config, head, num_labels=2, sift=None):
        super().__init__()
        self.sift = sift  # a finetune.sift.SiFT: adversarial training on the normalised embeddings
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.config, self.head, self.num_labels = config, head, num_labels
        self.family = family(config)
        self.encoder = ENCODERS[config.backbone](encoder_config(config))
        self.dropout = nn.Dropout(config.hidden_dropout)
        if head == "span":
            self.qa_outputs = nn.Linear(config.hidden_size, 2)
        else:
            if head == "sequence":
                self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
            self.classifier = nn.Linear(config.hidden_size, num_labels)
        for module in self.children():
            if isinstance(module, nn.Linear):  # BERT's initialisation, as the encoder's
                nn.init.normal_(module.weight, std=config.initializer_range)
                nn.init.zeros_(module.bias)

    def forward(self, batch):
        logits = self.logits(batch)
        out = {"logits": logits}
        loss = self.loss(logits.float(), batch)
        if loss is None:
            return out
        if self.sift is not None and self.training:
            valid = batch["labels"] != IGNORE if self.head == "token" else None
            width = self.encoder.embeddings.ln.normalized_shape[0]
            adversarial = self.sift.loss(lambda perturb: self.distributions(self.logits(batch, perturb), batch),
                                         (*batch["input_ids"].shape, width), self.distributions(logits, batch), valid)
            out.update(task_loss=loss.detach(), sift_loss=adversarial.detach())
            loss = loss + self.sift.weight * adversarial
        out["loss"] = loss
        return out

    def logits(self, batch, perturb=None):
        """perturb: a function of what the embeddings' LayerNorm takes (B, T, H) that returns what it takes
        instead, for one pass (SiFT puts its perturbation there, as the released DeBERTa code hooks it)."""
        token_type_ids = batch.get("token_type_ids") if self.config.type_vocab_size else None
        hook = None
        if perturb is not None:
            hook = self.encoder.embeddings.ln.register_forward_pre_hook(lambda module, args: (perturb(args[0]),))
        try:
            hidden = self.encoder(batch["input_ids"], batch["attention_mask"], token_type_ids)  # (B, T, H)
        finally:
            if hook is not None:
                hook.remove()
        if self.head == "span":
            return self.qa_outputs(hidden)  # (B, T, 2)
        if self.head == "sequence":
            dropout_first, activation = SEQUENCE_HEADS[self.family]
            first = self.dropout(hidden[:, 0]) if dropout_first else hidden[:, 0]
            return self.classifier(self.dropout(activation(self.pooler(first))))  # (B, C)
        return self.classifier(self.dropout(hidden))  # (B, T, C)

    def distributions(self, logits, batch):
        """The logits of what the head predicts as distributions over the last dimension: start and end
        over the real tokens (B, 2, T), the label of each row (B, C) or of each token (B, T, C)."""
        if self.head != "span":
            return logits
        padding = ~batch["attention_mask"].bool()[:, None, :]
        return logits.transpose(1, 2).masked_fill(padding, PAD_LOGIT)

    def loss(self, logits, batch):
        if self.head == "span":
            if "start_positions" not in batch:
                return None
            # over the real tokens only (Hugging Face's recipe also spreads probability over the padding)
            over_tokens = self.distributions(logits, batch)  # (B, 2, T)
            return (F.cross_entropy(over_tokens[:, 0], batch["start_positions"])
                    + F.cross_entropy(over_tokens[:, 1], batch["end_positions"])) / 2
        if "labels" not in batch:
            return None
        if self.head == "sequence":
            return F.cross_entropy(logits, batch["labels"])
        labels = batch["labels"]
        if not (labels != IGNORE).any():  # a batch of padding rows only: a zero that keeps the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1), ignore_index=IGNORE)

    def parameter_groups(self, weight_decay):
        return decay_groups(self, weight_decay)

    def training_flops(self, seq_len):
        """(FLOPs per token, per decoded row) of a training step, as the pretraining objectives count them: the
        encoder's, plus 2 per head weight (forward and backward, x3); a task head decodes no rows."""
        head = sum(p.numel() for p in self.parameters()) - sum(p.numel() for p in self.encoder.parameters())
        return encoder_flops(self.encoder, seq_len) + 3 * 2 * head, 0
