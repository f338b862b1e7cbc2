"""The model's shape in one dataclass, its named presets, and JSON load/save.

One source of truth for the model: the training run saves this JSON beside its
checkpoints and the exporter turns it into a Hugging Face BertConfig.
"""

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass

from spanbert_ds.errors import UserError
from spanbert_ds.model.attention import unknown_backend

BACKBONE_NAMES = ("bert", "deberta")
CHECKPOINTING_NAMES = ("none", "torch", "deepspeed")
SHARING_NAMES = ("none", "share", "gdes")  # embedding_sharing of the RTD objectives (model/rtd.py)
RTD_HEAD_NAMES = ("electra", "debertav3")  # rtd_head: model/heads.py RTD_HEADS
RTD_TRAINING_NAMES = ("joint", "decoupled")  # rtd_training (model/objectives.py ELECTRA.parameter_groups)


def _finite(test):
    return lambda value: math.isfinite(value) and test(value)


_FRACTION = "a fraction in (0, 1] of the discriminator's (leave it out for the objective's choice)"
# Every numeric setting's range, checked alike when a config is made: name -> (test, the range in words). Floats
# must also be finite: NaN passes every comparison's negation, so each test says what is allowed.
RANGES = {
    **{name: (lambda v: v >= 1, "at least 1")
       for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings", "sbo_max_targets", "sbo_position_dim", "position_buckets")},
    "type_vocab_size": (lambda v: v >= 0, "0 (no segments) or more"),
    "pad_token_id": (lambda v: v >= 0, "a token id, 0 or more"),
    "max_relative_positions": (lambda v: v == -1 or v >= 1, "-1 (max_position_embeddings) or at least 1"),
    "hidden_dropout": (_finite(lambda v: 0 <= v < 1), "a probability in [0, 1)"),
    "attention_dropout": (_finite(lambda v: 0 <= v < 1), "a probability in [0, 1)"),
    "layer_norm_eps": (_finite(lambda v: v > 0), "positive and finite (BERT: 1e-12, DeBERTa: 1e-7)"),
    "initializer_range": (_finite(lambda v: v > 0), "positive and finite (BERT: 0.02)"),
    "generator_width": (_finite(lambda v: 0 < v <= 1), _FRACTION),  # None (left out): the objective's choice
    "generator_depth": (_finite(lambda v: 0 < v <= 1), _FRACTION),
    "rtd_weight": (_finite(lambda v: v > 0),
                   "positive and finite (lambda, the discriminator loss's weight; ELECTRA: 50)"),
}
KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
# What files written before unset meant a key left out hold for the three RTD choices the objective makes.
LEGACY_UNSET = {"generator_width": 0.0, "generator_depth": 0.0, "embedding_sharing": ""}
# What an RTD run's file (one whose objective filled embedding_sharing in) written before these keys existed
# meant by leaving them out: ELECTRA's head and a generator without the EMD, whatever the objective.
LEGACY_RTD = {"rtd_head": "electra", "generator_emd": False, "rtd_training": "joint"}


def with_legacy_rtd(values):
    """`values` (a model config file's or a checkpoint marker's model identity) with LEGACY_RTD filled in where it
    is an RTD run's, written before rtd_head existed: resuming or exporting such a run keeps its architecture."""
    if values.get("embedding_sharing") in SHARING_NAMES and "rtd_head" not in values:
        return {**LEGACY_RTD, **values}
    return values


@dataclass
class ModelConfig:
    vocab_size: int = 30522  # real tokens; the embedding has padded_vocab_size rows
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072  # FFN width
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # segment embeddings; 0 = none (RoBERTa)
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    pre_layernorm: bool = False  # BERT and SpanBERT are post-LN; pre-LN trains more stably when deep
    attention_backend: str = "auto"  # a key of model/attention.py ATTENTION_BACKENDS
    activation_checkpointing: str = "none"  # recompute each layer in backward: "none", "torch", "deepspeed"
    unpad: bool = True  # run the layers on the real tokens of a padded batch only (model/padding.py)
    # The SBO head's relative-position table p_i: one row per target of a span (the masker's max_span_targets),
    # of sbo_position_dim each. The released SpanBERT's shapes (15 x 200), so its SBO weights load as they are.
    sbo_max_targets: int = 15
    sbo_position_dim: int = 200
    # The encoder: BERT's (absolute positions added to the input) or DeBERTa V2/V3's (model/deberta.py:
    # disentangled attention over log-bucketed relative positions; absolute positions only in the
    # enhanced mask decoder, `emd`, which the deberta objective turns on).
    backbone: str = "bert"  # one of BACKBONE_NAMES
    position_buckets: int = 256  # relative distances beyond +-position_buckets/2 share log-spaced buckets
    max_relative_positions: int = -1  # the longest distance the buckets span; -1: max_position_embeddings
    emd: bool = False
    # Replaced-token detection (the electra and debertav3 objectives, model/rtd.py): the generator's share of
    # the discriminator's width and of its layers, how the two share their embedding tables (none, share,
    # gdes), and lambda, the weight of the discriminator's loss. Unset (None, a key left out) is the
    # objective's own choice (ELECTRA: 1/4 of the width, every layer, share; DeBERTaV3: full width, half
    # the layers, gdes). rtd_head: the discriminator's head, ELECTRA's (dense -> GeLU -> logit) or DeBERTaV3's
    # (LayerNorm(h_CLS + h_i) -> dense -> GeLU -> logit); generator_emd: the generator predicts through the
    # enhanced mask decoder (DeBERTaV3); rtd_training: one loss over all parameters ("joint", the papers') or
    # the generator's and the discriminator's parameters in groups of their own ("decoupled", the released
    # DeBERTaV3's separate optimisers, which use rtd_weight 10). Unset: the objective's choice.
    generator_width: float | None = None
    generator_depth: float | None = None
    embedding_sharing: str | None = None
    rtd_weight: float = 50.0
    rtd_head: str | None = None
    generator_emd: bool | None = None
    rtd_training: str | None = None

    def __post_init__(self):
        self._check_types()
        for name, (allowed, wanted) in RANGES.items():
            value = getattr(self, name)
            if value is not None and not allowed(value):
                raise UserError(f"model config: {name} must be {wanted}, got {value}")
        if self.pad_token_id >= self.vocab_size:
            raise UserError(f"model config: pad_token_id {self.pad_token_id} is not an id of the vocabulary of "
                            f"{self.vocab_size} tokens")
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"model config: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}; "
                "pick sizes where hidden_size / num_heads is a whole number (64 is usual)"
            )
        if unknown_backend(self.attention_backend):
            raise UserError(f"model config: {unknown_backend(self.attention_backend)}")
        if self.backbone not in BACKBONE_NAMES:
            raise UserError(f"model config: backbone {self.backbone!r} is unknown; use one of {', '.join(BACKBONE_NAMES)}")
        if self.backbone == "deberta" and self.pre_layernorm:
            raise UserError("model config: the deberta backbone is post-LayerNorm, as DeBERTa; drop pre_layernorm")
        if self.emd and self.backbone != "deberta":
            raise UserError("model config: emd (the enhanced mask decoder) belongs to the deberta backbone")
        if self.backbone == "deberta" and self.position_buckets < 2:
            raise UserError(f"model config: position_buckets must be at least 2, got {self.position_buckets}")
        if self.embedding_sharing is not None and self.embedding_sharing not in SHARING_NAMES:
            raise UserError(f"model config: embedding_sharing {self.embedding_sharing!r} is unknown; use one of "
                            f"{', '.join(SHARING_NAMES)} (or leave it out for the objective's choice)")
        if self.rtd_head is not None and self.rtd_head not in RTD_HEAD_NAMES:
            raise UserError(f"model config: rtd_head {self.rtd_head!r} is unknown; use one of "
                            f"{', '.join(RTD_HEAD_NAMES)} (or leave it out for the objective's choice)")
        if self.rtd_training is not None and self.rtd_training not in RTD_TRAINING_NAMES:
            raise UserError(f"model config: rtd_training {self.rtd_training!r} is unknown; use one of "
                            f"{', '.join(RTD_TRAINING_NAMES)} (or leave it out for the objective's choice)")
        if self.generator_emd and self.backbone != "deberta":
            raise UserError("model config: generator_emd (the enhanced mask decoder) belongs to the deberta backbone")
        if self.activation_checkpointing not in CHECKPOINTING_NAMES:
            raise UserError(
                f"model config: activation_checkpointing {self.activation_checkpointing!r} is unknown; "
                f"use one of {', '.join(CHECKPOINTING_NAMES)}"
            )

    def _check_types(self):
        """Each value of its field's kind (a JSON file may hold anything); ints are taken as floats."""
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), _kind(field)
            if value is None and _optional(field):
                continue
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, field.name, value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise UserError(f"model config: {field.name} must be {KIND_WORDS[kind]}, got {value!r}")

    @property
    def relative_span(self):
        """The longest relative distance the DeBERTa buckets tell apart."""
        return self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings

    @property
    def padded_vocab_size(self):
        """vocab_size rounded up to a multiple of 64, so the decoder GEMM fills tensor cores."""
        return (self.vocab_size + 63) // 64 * 64

    def check_vocab(self, data_vocab_size, where="the shards"):
        """A clear error when the data's vocabulary is not the one the model was built for."""
        if data_vocab_size != self.vocab_size:
            raise UserError(
                f"the vocabulary of {where} has {data_vocab_size} tokens "
                f"but the model was built for {self.vocab_size}; "
                f"pass --model with vocab_size {data_vocab_size} (e.g. --model tiny,vocab_size={data_vocab_size})"
            )

    # --- JSON ---------------------------------------------------------------------------

    def to_dict(self):
        """The settings as a dict; unset ones (the objective's choice) are left out, as a file leaves them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_json(self, path=None):
        """The config as a JSON string; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_dict(cls, values, where="model config"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if "sbo_position_size" in unknown:
            raise UserError(f"{where}: sbo_position_size is from a version whose SBO head had another shape (a table "
                            "of hidden_size columns); its checkpoints do not load here. Use sbo_max_targets and "
                            "sbo_position_dim (the released SpanBERT's 15 and 200)")
        if unknown:
            raise UserError(f"{where}: unknown keys {unknown}; the known keys are {sorted(known)}")
        if all(values.get(k, None) == v for k, v in LEGACY_UNSET.items()):
            # written before unset was a key left out: these three values together were the objective's choice
            values = {k: v for k, v in values.items() if k not in LEGACY_UNSET}
        values = with_legacy_rtd(values)
        try:
            return cls(**values)
        except UserError as error:
            raise UserError(f"{where}: {str(error).removeprefix('model config: ')}") from None

    @classmethod
    def from_json(cls, path):
        try:
            with open(path) as f:
                values = json.load(f)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error}); write the model config as a JSON object") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: a model config must be a JSON object of keys and values")
        return cls.from_dict(values, where=str(path))

    @classmethod
    def from_name_or_path(cls, spec, **overrides):
        """A preset name or a JSON file, optionally followed by `,key=value` overrides.

        `tiny`, `spanbert-base`, `configs/my.json`, `tiny,vocab_size=8000,attention_backend=eager`.
        Keyword `overrides` win over both.
        """
        base, *pairs = [part.strip() for part in str(spec).split(",")]
        if base in PRESETS:
            config = PRESETS[base]
        elif os.path.isfile(base):
            config = cls.from_json(base)
        else:
            raise UserError(
                f"--model {base!r}: neither a preset nor a JSON file; use one of {', '.join(PRESETS)} "
                "or the path of a model config JSON"
            )
        values = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            if not sep:
                raise UserError(f"--model {spec!r}: {pair!r} is not key=value (e.g. tiny,vocab_size=8000)")
            values[key.strip()] = _parse_value(config, key.strip(), text.strip(), spec)
        values.update(overrides)
        try:
            return config.replace(**values)
        except UserError as error:
            raise UserError(f"--model {spec!r}: {str(error).removeprefix('model config: ')}") from None

    def replace(self, **changes):
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UserError(f"model config: unknown keys {unknown}; the known keys are {sorted(known)}")
        return dataclasses.replace(self, **changes)


def model_config_for(spec, vocab_size, pad_id, where, base=None):
    """The model a run trains: `--model SPEC` (a preset takes the data's vocabulary size and padding id),
    or `base` (e.g. the shape of an --init-from checkpoint) when no spec is given. A JSON config or
    `base` must already have the data's vocabulary; `where` names the data in the error."""
    if spec is None and base is not None:
        # a checkpoint may have more rows than its tokenizer has ids (DeBERTa-v3: 128100 for 128001), never fewer
        if vocab_size > base.vocab_size:
            base.check_vocab(vocab_size, where=where)
        return base
    spec = spec or "spanbert-base"
    config = ModelConfig.from_name_or_path(spec)
    if spec.split(",")[0].strip() in PRESETS:
        return config.replace(vocab_size=vocab_size, pad_token_id=pad_id)
    config.check_vocab(vocab_size, where=where)
    return config


def _kind(field):
    """A field's type, Optional[...] unwrapped."""
    kinds = [k for k in typing.get_args(field.type) if k is not type(None)]
    return kinds[0] if kinds else field.type


def _optional(field):
    return type(None) in typing.get_args(field.type)


def _parse_value(config, key, text, spec):
    fields = {f.name: f for f in dataclasses.fields(config)}
    if key not in fields:
        raise UserError(f"--model {spec!r}: unknown key {key!r}; the known keys are {sorted(fields)}")
    kind = _kind(fields[key])
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise UserError(f"--model {spec!r}: {key}={text!r} is not a valid {kind.__name__}") from None


_BASE = ModelConfig()
_LARGE = ModelConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096)
_DEBERTA = ModelConfig(backbone="deberta", vocab_size=128100, type_vocab_size=0, layer_norm_eps=1e-7)
PRESETS = {
    # tiny and small keep BERT's uncased vocabulary so speed numbers include a real-size decoder.
    "tiny": ModelConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "small": ModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "bert-base": _BASE,
    "bert-large": _LARGE,
    # SpanBERT was released with BERT's cased vocabulary.
    "spanbert-base": dataclasses.replace(_BASE, vocab_size=28996),
    "spanbert-large": dataclasses.replace(_LARGE, vocab_size=28996),
    # DeBERTa V3 (He et al. 2021/2023): no segments, 256 position buckets, its 128K SentencePiece vocabulary
    # (a preset takes the shards' vocabulary anyway). deberta-tiny and -mini are CPU-sized.
    "deberta-tiny": dataclasses.replace(_DEBERTA, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "deberta-mini": dataclasses.replace(_DEBERTA, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "deberta-v3-xsmall": dataclasses.replace(_DEBERTA, hidden_size=384, num_layers=12, num_heads=6,
                                             intermediate_size=1536),
    "deberta-v3-small": dataclasses.replace(_DEBERTA, num_layers=6),
    "deberta-v3-base": _DEBERTA,
    "deberta-v3-large": dataclasses.replace(_DEBERTA, hidden_size=1024, num_layers=24, num_heads=16,
                                            intermediate_size=4096),
}
