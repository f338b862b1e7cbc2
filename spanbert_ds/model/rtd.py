"""Replaced-token detection's second network and its links to the first: ELECTRA (Clark et al. 2020) and
DeBERTaV3 (He et al. 2023).

The generator is a small MLM: an encoder of the discriminator's backbone, `generator_width` of its width
(hidden size, heads and FFN; ELECTRA: 1/4 to 1/3) and `generator_depth` of its layers (DeBERTaV3: full
width, half the layers), with BERT's MLM head. Its softmax samples replace the masked tokens, and the
discriminator (the objective's `encoder`) decides for every token whether it was replaced.

The two share their token tables (word, position and segment embeddings, where both have them) in one of
the three ways DeBERTaV3 compares, `embedding_sharing`:
- "none":  each network has its own tables;
- "share": one table, which both losses pull on (ELECTRA);
- "gdes":  gradient-disentangled embedding sharing: the discriminator looks tokens up in
           E_D = sg(E_G) + E_delta, with E_delta zero at the start. The generator's MLM loss alone
           moves E_G, the discriminator's loss alone moves E_delta.
Where the generator is narrower than the tables it shares, it projects them down to its width
(ELECTRA's embeddings_project), and its MLM head maps back up to the tables' width before the
decoder, which is tied to the word table.

DeBERTaV3's generator (`generator_emd`) predicts through the enhanced mask decoder (model/deberta.py), so it
has an absolute position table; the discriminator reads none (its layers see relative positions only), but
as in the released code it holds one under the same sharing as the word table: under gdes
E_D,pos = sg(E_G,pos) + E_delta,pos, whose E_delta,pos no loss moves (the released RTDModel's hook does the
same for position_embeddings). Exports of the discriminator leave that table out (interop/rtd_hf.py).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_ds.errors import UserError
from spanbert_ds.model.encoder import init_weights
from spanbert_ds.model.heads import MLMHead, gather_rows

SHARED_TABLES = ("word", "position", "token_type")


def generator_config(config):
    """The generator's shape: ELECTRA's rule (width and FFN scaled, heads of the discriminator's head size,
    at least one) and DeBERTaV3's (a fraction of the layers)."""
    head_dim = config.hidden_size // config.num_heads
    width = max(1, round(config.hidden_size * config.generator_width))
    heads = max(1, width // head_dim)
    return config.replace(hidden_size=width // heads * heads, num_heads=heads,
                          intermediate_size=max(1, round(config.intermediate_size * config.generator_width)),
                          num_layers=max(1, round(config.num_layers * config.generator_depth)),
                          emd=bool(config.generator_emd))


class GradientDisentangled(nn.Module):
    """A lookup table E_D = sg(E_G) + E_delta over another module's table E_G (DeBERTaV3, section 3.2).

    E_G stays a direct parameter of this module too (as the tied decoders are), so ZeRO-3 gathers it
    for this module's forward; `weight` is what the discriminator sees, and what it exports."""

    def __init__(self, shared):
        super().__init__()
        self.shared_weight = shared.weight
        self.delta = nn.Parameter(torch.zeros_like(shared.weight))

    @property
    def weight(self):
        return self.shared_weight.detach() + self.delta

    def forward(self, ids):
        return F.embedding(ids, self.weight)


def merged_state_dict(module):
    """module.state_dict() with each gradient-disentangled table written as the plain table the discriminator
    reads, E_G + E_delta under `<table>.weight`: what fine-tuning starts from and exports write."""
    state = module.state_dict()
    for name, table in module.named_modules():
        if isinstance(table, GradientDisentangled):
            prefix = f"{name}." if name else ""
            del state[prefix + "shared_weight"], state[prefix + "delta"]
            state[prefix + "weight"] = table.weight.detach()
    return state


class ProjectedEmbeddings(nn.Module):
    """Embeddings of the shared tables' width, projected down to a narrower generator's
    (ELECTRA's embeddings_project)."""

    def __init__(self, embeddings, width):
        super().__init__()
        self.inner = embeddings
        self.project = nn.Linear(embeddings.word.weight.shape[1], width)

    @property
    def word(self):
        return self.inner.word

    def forward(self, *inputs):
        return self.project(self.inner(*inputs))


class Generator(nn.Module):
    """The small MLM whose samples the discriminator has to find. `discriminator`: the discriminator's
    encoder, whose embedding tables it shares (or, under gdes, whose tables it takes over as E_G and hands
    back as sg(E_G) + E_delta)."""

    def __init__(self, config, encoder_class, discriminator):
        super().__init__()
        small = generator_config(config)
        self.encoder = encoder_class(small)
        if config.embedding_sharing == "none":
            self.mlm_head = MLMHead(small, self.encoder.embeddings.word)
            return
        tables = self.encoder.embeddings
        if small.hidden_size != config.hidden_size:  # the tables keep the discriminator's width
            if small.emd:
                raise UserError(f"model config: the generator's enhanced mask decoder adds the shared position table "
                                f"({config.hidden_size} wide) to its {small.hidden_size}-wide states; use "
                                "generator_width 1 (DeBERTaV3's), embedding_sharing none, or generator_emd false")
            tables = type(discriminator.embeddings)(config)
            tables.apply(lambda module: init_weights(module, config, tables))
            self.encoder.embeddings = ProjectedEmbeddings(tables, small.hidden_size)
        for name in SHARED_TABLES:
            mine, theirs = getattr(tables, name, None), getattr(discriminator.embeddings, name, None)
            if mine is not None and theirs is None and name == "position":
                # DeBERTaV3: the generator's EMD reads absolute positions, the discriminator never does; it still
                # holds the table, sharing it as the word table (the released checkpoints carry it)
                setattr(discriminator.embeddings, name, mine)
                theirs = mine
            if mine is None or theirs is None:
                continue
            setattr(tables, name, theirs)  # one table (share), or under gdes E_G ...
            if config.embedding_sharing == "gdes":  # ... and the discriminator's sg(E_G) + E_delta over it
                setattr(discriminator.embeddings, name, GradientDisentangled(theirs))
        self.mlm_head = MLMHead(config, tables.word, in_features=small.hidden_size)

    def forward(self, input_ids, attention_mask, token_type_ids, positions):
        """Logits (N, vocab_size) at the flat positions b * T + t of the masked tokens."""
        return self.mlm_head(gather_rows(self.encoder(input_ids, attention_mask, token_type_ids), positions))


def sample(logits, generator=None):
    """One token per row from softmax(logits) at temperature 1 (Gumbel-max: argmax of logits + Gumbel
    noise), from `generator`, by default torch's, which the training loop seeds per micro-batch."""
    noise = torch.empty_like(logits, dtype=torch.float32).exponential_(generator=generator).log()  # -Gumbel
    return (logits.float() - noise).argmax(dim=-1)


def replace_masked(input_ids, positions, sampled, labels):
    """The discriminator's input (the samples at the masked positions, the original tokens elsewhere) and
    its targets (B, T): 1 where the token differs from the original. A sample equal to the original
    counts as original."""
    corrupted = input_ids.flatten().index_put((positions,), sampled).view_as(input_ids)
    replaced = torch.zeros(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
    replaced = replaced.index_put((positions,), sampled != labels).view_as(input_ids)
    return corrupted, replaced
