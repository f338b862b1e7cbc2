"""Pretraining objectives: the encoder plus its heads plus how their losses combine.

One registry, OBJECTIVES, a plain dict from name to class. Each is built as
`OBJECTIVES[name](model_config)`, says with class attributes which data it trains on
(`masking`: "span" | "token" | "wholeword"; `packing`: "full" | "doc" | "pair") and which
predictions it makes (`parts`: "mlm", "sbo", "nsp"), and maps a batch (the masker's output, whose
keys data/masking.py defines) to losses:

    out = objective(batch)   # {"loss": scalar with grad, "mlm_loss": detached, ...}
    out["loss"].backward()

or, for evaluation, to the sums that held-out scores are made of:

    objective(batch, scores=True)   # {"mlm_loss_sum", "mlm_correct", "mlm_count", "sbo_...", ...}

The training loop calls nothing else, so a new objective (ELECTRA, DeBERTa) is a new
class here and one line in OBJECTIVES.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_ds.data.masking import MLM_KEYS, NSP_KEYS, SBO_KEYS, SPLITS
from spanbert_ds.errors import UserError
from spanbert_ds.model.deberta import DebertaEncoder
from spanbert_ds.model.encoder import Encoder
from spanbert_ds.model.heads import RTD_HEADS, MLMHead, NSPHead, SBOHead, gather_rows
from spanbert_ds.model.rtd import Generator, replace_masked, sample

ENCODERS = {"bert": Encoder, "deberta": DebertaEncoder}  # ModelConfig.backbone -> the encoder class

# Our names that are the word embeddings under another name (the decoders tied to them): one tensor,
# which checkpoints and exports hold once, as the embedding.
TIED = ("mlm_head.decoder_weight", "sbo_head.decoder_weight")


def aliases(module):
    """State-dict names of tensors that an earlier name already holds (the tied decoders, the tables the
    RTD networks share): checkpoints and exports read each tensor once, under its first name."""
    seen, names = set(), []
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            names.append(name)
        seen.add(id(tensor))
    return names


def load_first_names(module, state):
    """Load `state` into `module`, each tensor from its first name only: a second name (a tied decoder, a
    shared table) may hold a 16-bit copy, which must not overwrite the fp32 master. Returns (missing,
    unexpected) as load_state_dict does, second names left out."""
    second = set(aliases(module))
    missing, unexpected = module.load_state_dict({k: v for k, v in state.items() if k not in second}, strict=False)
    return [k for k in missing if k not in second], unexpected


def mean(total, count):
    """A summed loss over `count` rows as a mean; 0 (not NaN) when there are none."""
    return total / max(count, 1)


def encoder_flops(encoder, seq_len):
    """Training FLOPs per token of an encoder (forward and backward, x3): 2 per weight outside the embeddings
    (lookups, not matmuls) plus attention's 2 * 2 * layers * hidden * seq."""
    embeddings = sum(p.numel() for p in encoder.embeddings.parameters())
    weights = sum(p.numel() for p in encoder.parameters()) - embeddings
    c = encoder.config
    return 3 * (2 * weights + 4 * c.num_layers * c.hidden_size * seq_len)


def decay_groups(module, weight_decay):
    """Optimizer groups of a module's trained parameters: no weight decay on biases and LayerNorm weights
    (BERT's recipe), for pretraining objectives and fine-tuning's task models alike."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def score(part, logits, labels):
    """Summed cross-entropy, correct argmax predictions and count of one part's rows (fp32 logits)."""
    logits = logits.float()
    return {f"{part}_loss_sum": F.cross_entropy(logits, labels, reduction="sum"),
            f"{part}_correct": (logits.argmax(dim=-1) == labels).sum(),
            f"{part}_count": torch.tensor(labels.numel(), device=labels.device)}


class Objective(nn.Module):
    """What every objective shares: the encoder, the MLM head, and the batch checks."""

    name = None
    masking = None
    packing = None
    parts = ("mlm",)  # the predictions it makes: "<part>_loss" in training, scores in evaluation
    needs = ("input_ids", "attention_mask") + MLM_KEYS  # batch keys forward reads
    config_overrides = {}  # model settings the objective fixes, whatever --model says
    config_defaults = {}  # model settings the objective chooses where --model leaves them unset (None)
    masking_defaults = {}  # MaskingConfig settings the objective chooses where --masking leaves them out
    encoder_predicts_masked = True  # the MLM head sits on the encoder (ELECTRA's sits on its generator)

    @classmethod
    def configure(cls, config):
        """The model config this objective trains: `config` with the objective's overrides and defaults."""
        config = config.replace(**cls.config_overrides)
        return config.replace(**{k: v for k, v in cls.config_defaults.items() if getattr(config, k) is None})

    @classmethod
    def summarize(cls, parts):
        """The step's logged numbers from its `logged` means (over micro-batches and ranks)."""
        return parts

    def __init__(self, config):
        super().__init__()
        config = self.configure(config)
        self.config = config
        self.encoder = ENCODERS[config.backbone](config)
        if self.encoder_predicts_masked:
            self.mlm_head = MLMHead(config, self.encoder.embeddings.word)
        self._values_checked = False

    @classmethod
    def logged(cls):
        """The names of the numbers `forward` returns in training, which the loop logs."""
        return ("loss",) + tuple(f"{part}_loss" for part in cls.parts)

    def parameter_groups(self, weight_decay):
        return decay_groups(self, weight_decay)

    def training_flops(self, seq_len):
        """(FLOPs per token, FLOPs per decoded row) of a training step, forward and backward (x3).

        Per token: 2 per encoder weight (the embeddings are lookups, not matmuls) plus attention's
        2 * 2 * layers * hidden * seq. Per row through a vocabulary decoder (MLM and SBO run on the
        masked positions only): 2 * padded vocab * hidden, plus the head's own dense layers.
        """
        c = self.config
        per_row = 3 * (2 * c.padded_vocab_size * c.hidden_size + 2 * 2 * c.hidden_size**2)
        return encoder_flops(self.encoder, seq_len), per_row

    def forward(self, batch, scores=False):
        """Training losses ({"loss": with grad, "<part>_loss": detached}) or, with scores=True, each
        part's summed loss, correct predictions and count (for held-out evaluation)."""
        self.check_batch(batch)
        hidden = self.encode(batch)
        return self.scores(hidden, batch) if scores else self.losses(hidden, batch)

    def encode(self, batch):
        token_type_ids = batch.get("token_type_ids") if self.config.type_vocab_size else None
        return self.encoder(batch["input_ids"], batch["attention_mask"], token_type_ids)  # (B, T, H)

    def mlm_loss(self, hidden, batch):
        labels = batch["mlm_labels"]  # the head sees the (N, H) masked rows only
        return mean(self.mlm_head(gather_rows(hidden, batch["mlm_positions"]), labels), labels.shape[0])

    def mlm_scores(self, hidden, batch):
        return score("mlm", self.mlm_head(gather_rows(hidden, batch["mlm_positions"])), batch["mlm_labels"])

    # --- batch checks -----------------------------------------------------------------

    def check_batch(self, batch):
        """Shapes and dtypes on every call (free); value ranges on the first batch (one host sync)."""
        where = f"the {self.name} objective"
        if not isinstance(batch, dict):
            raise UserError(f"{where} takes a dict of tensors (the masker's output), got {type(batch).__name__}")
        for key in self.needs:
            if key not in batch:
                hint = (f"; it needs masking '{self.masking}' and packing '{self.packing}'"
                        if key.startswith(("sbo_", "nsp_")) else "")
                raise UserError(f"{where}: the batch has no '{key}'{hint}")
            if not torch.is_tensor(batch[key]):
                raise UserError(f"{where}: batch['{key}'] is a {type(batch[key]).__name__}, not a torch tensor")
        ids = batch["input_ids"]
        if ids.dim() != 2:
            raise UserError(f"{where}: input_ids must be (batch, seq_len), got shape {tuple(ids.shape)}")
        B, T = ids.shape
        if T > self.config.max_position_embeddings:
            raise UserError(
                f"{where}: sequences of {T} tokens but the model has {self.config.max_position_embeddings} "
                "positions; lower --max-seq-len or pass --model with a larger max_position_embeddings"
            )
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in batch and tuple(batch[key].shape) != (B, T):
                raise UserError(f"{where}: batch['{key}'] has shape {tuple(batch[key].shape)}, expected {(B, T)}")
        for key in self.needs[2:]:
            tensor = batch[key]
            if tensor.dtype != torch.int64:
                raise UserError(f"{where}: batch['{key}'] must be int64, got {tensor.dtype}")
            if tensor.dim() != 1:
                raise UserError(f"{where}: batch['{key}'] must be 1-D, got shape {tuple(tensor.shape)}")
        self._check_lengths(batch, where, B)
        if not self._values_checked:
            self._check_values(batch, where, B * T)
            self._values_checked = True

    def _check_lengths(self, batch, where, B):
        groups = [MLM_KEYS] + [SBO_KEYS] * ("sbo_labels" in self.needs)
        for group in groups:
            lengths = {key: batch[key].shape[0] for key in group}
            if len(set(lengths.values())) != 1:
                raise UserError(f"{where}: these batch arrays must have one length, got {lengths}")
        if "nsp_labels" in self.needs and batch["nsp_labels"].shape[0] != B:
            raise UserError(f"{where}: nsp_labels has {batch['nsp_labels'].shape[0]} entries for {B} samples")

    def _check_values(self, batch, where, n_flat):
        V = self.config.vocab_size

        def span(key):
            t = batch[key]
            return (int(t.min()), int(t.max())) if t.numel() else (0, 0)

        for key in ("input_ids", "mlm_labels") + (("sbo_labels",) if "sbo_labels" in self.needs else ()):
            low, high = span(key)
            if high >= V or low < 0:
                raise UserError(
                    f"{where}: batch['{key}'] holds token id {high if high >= V else low}, but the model was built "
                    f"for vocab_size {V}; the shards' vocabulary is not the model's: pass --model with the "
                    "shards' vocab_size (meta.json), e.g. --model tiny,vocab_size=N"
                )
        flat_keys = [k for k in ("mlm_positions", "sbo_positions", "sbo_left", "sbo_right") if k in self.needs]
        for key in flat_keys:
            low, high = span(key)
            if low < 0 or high >= n_flat:
                raise UserError(f"{where}: batch['{key}'] holds {high if high >= n_flat else low}, outside the "
                                f"flat batch*seq_len range 0..{n_flat - 1}")
        if "sbo_rel_pos" in self.needs and batch["sbo_rel_pos"].numel():
            low, high = span("sbo_rel_pos")
            if low < 1 or high > self.config.sbo_max_targets:
                raise UserError(f"{where}: sbo_rel_pos holds {low if low < 1 else high}, but the SBO head takes "
                                f"1..{self.config.sbo_max_targets}; lower the masking's max_span_targets or raise "
                                "the model's sbo_max_targets")
        if self.config.type_vocab_size and "token_type_ids" in batch:
            low, high = span("token_type_ids")
            if low < 0 or high >= self.config.type_vocab_size:
                raise UserError(f"{where}: token_type_ids reach {high}, but the model has "
                                f"type_vocab_size {self.config.type_vocab_size}")
        if "nsp_labels" in self.needs:
            low, high = span("nsp_labels")
            if low < 0 or high > 1:
                raise UserError(f"{where}: nsp_labels must be 0 (true next) or 1 (random), found {high}")


class SpanBERT(Objective):
    """MLM + span boundary objective; loss = mean MLM CE over masked tokens + mean SBO CE over targets."""

    name = "spanbert"
    masking = "span"
    packing = "doc"  # single segments of whole sentences from one document, no NSP (the released code's blocks)
    parts = ("mlm", "sbo")
    needs = Objective.needs + SBO_KEYS

    def __init__(self, config):
        super().__init__(config)
        self.sbo_head = SBOHead(config, self.encoder.embeddings.word)

    def sbo_head_on(self, hidden, batch, labels=None):
        # Only real targets reach the head: the masker lists them flat, padding never appears.
        return self.sbo_head(gather_rows(hidden, batch["sbo_left"]), gather_rows(hidden, batch["sbo_right"]),
                             batch["sbo_rel_pos"], labels)

    def losses(self, hidden, batch):
        mlm_loss = self.mlm_loss(hidden, batch)
        labels = batch["sbo_labels"]
        sbo_loss = mean(self.sbo_head_on(hidden, batch, labels), labels.shape[0])
        loss = mlm_loss + sbo_loss
        return {"loss": loss, "mlm_loss": mlm_loss.detach(), "sbo_loss": sbo_loss.detach()}

    def scores(self, hidden, batch):
        return {**self.mlm_scores(hidden, batch), **score("sbo", self.sbo_head_on(hidden, batch), batch["sbo_labels"])}


class BERT(Objective):
    """MLM + next sentence prediction on segment pairs."""

    name = "bert"
    masking = "token"
    packing = "pair"
    parts = ("mlm", "nsp")
    needs = Objective.needs + NSP_KEYS

    def __init__(self, config):
        super().__init__(config)
        self.nsp_head = NSPHead(config)

    def losses(self, hidden, batch):
        mlm_loss = self.mlm_loss(hidden, batch)
        nsp_loss = F.cross_entropy(self.nsp_head(hidden[:, 0]).float(), batch["nsp_labels"])  # [CLS] is position 0
        loss = mlm_loss + nsp_loss
        return {"loss": loss, "mlm_loss": mlm_loss.detach(), "nsp_loss": nsp_loss.detach()}

    def scores(self, hidden, batch):
        return {**self.mlm_scores(hidden, batch), **score("nsp", self.nsp_head(hidden[:, 0]), batch["nsp_labels"])}


class RoBERTa(Objective):
    """MLM only, dynamic masking, full-length blocks, no segment embeddings."""

    name = "roberta"
    masking = "token"
    packing = "full"
    config_overrides = {"type_vocab_size": 0}

    def losses(self, hidden, batch):
        mlm_loss = self.mlm_loss(hidden, batch)
        return {"loss": mlm_loss, "mlm_loss": mlm_loss.detach()}

    def scores(self, hidden, batch):
        return self.mlm_scores(hidden, batch)


class DeBERTa(RoBERTa):
    """DeBERTa V3's encoder trained as DeBERTa was: MLM with dynamic token masking on full-length blocks
    without segments, through the enhanced mask decoder (model/deberta.py). Other objectives also take the
    deberta backbone (--model deberta-v3-base), without the EMD: e.g. spanbert's span masking and SBO."""

    name = "deberta"
    config_overrides = {"type_vocab_size": 0, "backbone": "deberta", "emd": True}


class ELECTRA(Objective):
    """Replaced-token detection (Clark et al. 2020). The generator (model/rtd.py) fills the masked positions
    with samples from its softmax; the discriminator, this objective's encoder, tells for every real token
    whether it was replaced. loss = generator MLM + lambda (rtd_weight) x discriminator loss; no gradient
    crosses the sampling. Only the discriminator is what pretraining is for.

    Masking as the released code's pretrain_helpers.mask(): 15% of the tokens, of which 85% become [MASK]
    and 15% stay as they are, none a random token (the generator's samples are the random tokens).

    rtd_training "decoupled" puts the generator's and the discriminator's parameters in optimizer groups of
    their own (parameter_groups), DeBERTaV3's released separate optimisers (rtd_task.py, --decoupled_training,
    the discriminator's loss x --rtd_lambda 10: pass rtd_weight=10). The loss is the same sum: no gradient
    of the MLM loss reaches a discriminator parameter and none of the RTD loss a generator parameter (the
    sampling, and gdes' stop-gradient on E_G; "share" has one table pulled by both and is refused), so
    each group's Adam update is the one a separate optimiser on its own loss makes. It differs from the
    released code in what DeepSpeed does for the whole engine: gradient clipping is on the norm over both
    networks (released: per network), one fp16 loss scale whose overflow skips both steps (released: one
    each), one learning rate schedule (released: --discriminator_learning_rate may differ); and the
    released discriminator steps after the generator, reading E_G as the generator's step left it (here
    both step on the same E_G)."""

    name = "electra"
    masking = "token"
    packing = "full"
    parts = ("mlm", "rtd")
    encoder_predicts_masked = False
    config_defaults = {"generator_width": 0.25, "generator_depth": 1.0, "embedding_sharing": "share",
                       "rtd_head": "electra", "generator_emd": False, "rtd_training": "joint"}
    masking_defaults = SPLITS["electra"]
    # Summed per micro-batch, so that summarize's ratios are exact over a step.
    COUNTS = ("rtd_replaced_correct", "rtd_replaced", "rtd_original_correct", "rtd_original", "rtd_masked")

    def __init__(self, config):
        super().__init__(config)
        if self.config.rtd_training == "decoupled" and self.config.embedding_sharing == "share":
            raise UserError("model config: rtd_training decoupled gives the generator and the discriminator "
                            "parameters of their own, but embedding_sharing share makes one table both losses "
                            "pull on; use gdes (DeBERTaV3's) or none with decoupled, or rtd_training joint")
        self.generator = Generator(self.config, ENCODERS[self.config.backbone], self.encoder)
        self.rtd_head = RTD_HEADS[self.config.rtd_head](self.config)

    def parameter_groups(self, weight_decay):
        """Joint: BERT's two groups over both networks. Decoupled: those two for the generator (its layers, head
        and E_G), then the same two for the discriminator (its layers, E_delta, the RTD head), each group
        named ("generator" / "discriminator")."""
        groups = super().parameter_groups(weight_decay)
        if self.config.rtd_training != "decoupled":
            return groups
        mine = {id(p) for p in self.generator.parameters()}
        split = []
        for network, is_generator in (("generator", True), ("discriminator", False)):
            for group in groups:
                params = [p for p in group["params"] if (id(p) in mine) == is_generator]
                if params:
                    split.append({**group, "params": params, "name": network})
        return split

    @classmethod
    def logged(cls):
        return super().logged() + cls.COUNTS

    @classmethod
    def summarize(cls, parts):
        """The discriminator's accuracy on replaced and on original tokens, the replaced fraction of the
        masked tokens (how often the generator's sample differs from the original), and rtd_prior_loss: the
        loss of a discriminator that knows only how many tokens are replaced (the binary entropy of their
        share), the mark its rtd_loss has to go below."""
        parts = dict(parts)
        n = {key: parts.pop(key) for key in cls.COUNTS if key in parts}
        for name, top, bottom in (("rtd_replaced_accuracy", "rtd_replaced_correct", "rtd_replaced"),
                                  ("rtd_original_accuracy", "rtd_original_correct", "rtd_original"),
                                  ("replaced_fraction", "rtd_replaced", "rtd_masked")):
            if n.get(bottom):
                parts[name] = n[top] / n[bottom]
        if n.get("rtd_replaced") and n.get("rtd_original"):
            share = n["rtd_replaced"] / (n["rtd_replaced"] + n["rtd_original"])
            parts["rtd_prior_loss"] = -(share * math.log(share) + (1 - share) * math.log(1 - share))
        return parts

    def training_flops(self, seq_len):
        per_token, _ = super().training_flops(seq_len)
        small, c = self.generator.encoder.config, self.config
        per_row = 3 * (2 * c.padded_vocab_size * c.hidden_size + 2 * small.hidden_size * c.hidden_size)
        return per_token + encoder_flops(self.generator.encoder, seq_len) + 3 * 2 * c.hidden_size**2, per_row

    def forward(self, batch, scores=False):
        self.check_batch(batch)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        token_types = batch.get("token_type_ids") if self.config.type_vocab_size else None
        positions, labels = batch["mlm_positions"], batch["mlm_labels"]
        logits = self.generator(ids, mask, token_types, positions).float()  # (N, vocab)
        # Held-out scores draw from a generator of their own, seeded alike for every batch: the same masks
        # give the same samples at every evaluation, and training's random stream is left alone.
        draws = torch.Generator(logits.device).manual_seed(0) if scores else None
        with torch.no_grad():
            corrupted, replaced = replace_masked(ids, positions, sample(logits, draws), labels)  # (B, T) each
        rtd_logits = self.rtd_head(self.encoder(corrupted, mask, token_types)).float()  # (B, T)
        real = mask.bool()
        rtd_sum = (F.binary_cross_entropy_with_logits(rtd_logits, replaced.float(), reduction="none") * real).sum()
        right = (rtd_logits > 0) == replaced
        n_real = real.sum()
        if scores:
            return {**score("mlm", logits, labels), "rtd_loss_sum": rtd_sum, "rtd_correct": (right & real).sum(),
                    "rtd_count": n_real}
        mlm_loss = mean(F.cross_entropy(logits, labels, reduction="sum"), labels.shape[0])
        rtd_loss = rtd_sum / n_real.clamp(min=1)
        replaced, original = replaced & real, ~replaced & real
        return {"loss": mlm_loss + self.config.rtd_weight * rtd_loss, "mlm_loss": mlm_loss.detach(),
                "rtd_loss": rtd_loss.detach(), "rtd_replaced_correct": (right & replaced).sum(),
                "rtd_replaced": replaced.sum(), "rtd_original_correct": (right & original).sum(),
                "rtd_original": original.sum(), "rtd_masked": torch.tensor(labels.shape[0], device=ids.device)}


class DeBERTaV3(ELECTRA):
    """DeBERTaV3 (He et al. 2023): ELECTRA's replaced-token detection on the deberta backbone, with a generator
    of the discriminator's width and half its layers that predicts through the enhanced mask decoder, sharing
    the word and position tables through gradient-disentangled embedding sharing (model/rtd.py), and the
    released code's head on the discriminator (heads.ContextRTDHead: LayerNorm(h_CLS + h_i) -> dense -> GeLU
    -> logit). Masking as the released RTD task's: 15% of the tokens, all of them [MASK] (its mask generator
    with mask_prob 1, keep_prob 0)."""

    name = "debertav3"
    config_overrides = {"type_vocab_size": 0, "backbone": "deberta", "emd": False}
    config_defaults = {"generator_width": 1.0, "generator_depth": 0.5, "embedding_sharing": "gdes",
                       "rtd_head": "debertav3", "generator_emd": True, "rtd_training": "joint"}
    masking_defaults = SPLITS["debertav3"]


OBJECTIVES = {
    "spanbert": SpanBERT,
    "bert": BERT,
    "roberta": RoBERTa,
    "deberta": DeBERTa,
    "electra": ELECTRA,
    "debertav3": DeBERTaV3,
}
