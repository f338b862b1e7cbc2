"""DeBERTa V2/V3's encoder (He et al. 2021): disentangled attention over relative positions, and the
enhanced mask decoder (EMD) that brings absolute positions in only at the end.

Attention scores add to content-to-content (Q_c K_c^T) the content-to-position (Q_c K_r^T at the
distance i - j) and position-to-content (K_c Q_r^T at the distance j - i) terms, all scaled by
1/sqrt(3d). The relative table has 2 * position_buckets rows, shared by all layers, LayerNorm'd once,
and projected by each layer's own query and key weights (V2/V3's share_att_key); distances beyond
+-position_buckets/2 fall into log-spaced buckets up to relative_span. The layers see no absolute
position. Like encoder.py, Q, K and V are one (H, 3H) projection; interop/hf.py maps all names to and
from transformers' DebertaV2Model, which this matches to 1e-5 on random weights.

Attention is a backend of model/attention.py (eager, sdpa, fused, auto), as for BERT; its `deberta`
implementations take the relative table's projections and `rows`, the row each query and key meet at.
With `unpad` (the default) the GEMMs and LayerNorms run on the real rows only, and attention gets them
packed: the fused kernel gathers the relative products made for the real rows only, the other backends lay
the rows out again over the longest real sequence of the batch.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_ds.model import padding
from spanbert_ds.model.attention import get_attention
from spanbert_ds.model.encoder import FeedForward, init_weights, recompute_mode, run_layer


def log_bucket_position(relative, buckets, span):
    """Distances within +-buckets/2 as they are; longer ones on a log scale up to `span`, so that 2 * buckets
    rows of the relative table cover distances up to `span` (DeBERTa V2's make_log_bucket_position)."""
    mid = buckets // 2
    sign = torch.sign(relative)
    near = (relative < mid) & (relative > -mid)
    distance = torch.where(near, torch.full_like(relative, mid - 1), relative.abs())
    # In float32 throughout, as the reference computes it: a bucket edge must round the same way.
    log_position = torch.ceil(torch.log(distance / mid) / torch.log(torch.tensor((span - 1) / mid)) * (mid - 1)) + mid
    return torch.where(distance <= mid, relative.to(log_position.dtype), log_position * sign).long()


def relative_positions(length, config, device):
    """(T, T) bucketed distances i - j from query i to key j."""
    ids = torch.arange(length, device=device)
    return log_bucket_position(ids[:, None] - ids[None, :], config.position_buckets, config.relative_span)


def relative_rows(length, config, device):
    """(T, T): the row of the 2 * position_buckets relative table that query i and key j meet at, that of
    their bucketed distance i - j. Distances are odd (d(j, i) = -d(i, j)), so the transpose is the row of
    j - i."""
    span = config.position_buckets
    return (relative_positions(length, config, device) + span).clamp(0, 2 * span - 1)


class DisentangledSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout_p = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.position_dropout = nn.Dropout(config.hidden_dropout)
        # the backend's implementation for each layout, chosen once (model/attention.py)
        self.attend_padded, self.attend_varlen = get_attention(config.attention_backend, "deberta")

    def heads(self, x):
        B, T, C = x.shape
        return x.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x, mask, rel_table, rows, query=None):
        # x: (B, T, H) the keys' and values' input, mask its (B, T) key padding mask; or (N, H) real rows with
        # mask their Unpadded layout. query: the queries' input (the EMD's), default x. rel_table:
        # (2 * buckets, H); rows: relative_rows of T (the layout's max_seqlen when unpadded).
        C = x.shape[-1]
        w_q, w_k, w_v = self.qkv.weight.split(C)
        b_q, b_k, b_v = self.qkv.bias.split(C)
        q, k, v = F.linear(x if query is None else query, w_q, b_q), F.linear(x, w_k, b_k), F.linear(x, w_v, b_v)
        unpadded = isinstance(mask, padding.Unpadded)
        if unpadded:
            q, k, v = (t.view(t.shape[0], self.num_heads, -1) for t in (q, k, v))  # (N, nh, hs)
        else:
            q, k, v = self.heads(q), self.heads(k), self.heads(v)
        table = self.position_dropout(rel_table)
        q_r = self.heads(F.linear(table, w_q, b_q)[None])[0]  # (nh, 2 * span, hs): the same weights (share_att_key)
        k_r = self.heads(F.linear(table, w_k, b_k)[None])[0]
        dropout_p, scale = self.dropout_p if self.training else 0.0, 1.0 / math.sqrt(3 * q.shape[-1])
        if unpadded:
            return self.out(self.attend_varlen(q, k, v, k_r, q_r, rows, mask, dropout_p, scale).flatten(1))
        y = self.attend_padded(q, k, v, k_r, q_r, rows, mask, dropout_p, scale)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], C))


class DebertaLayer(nn.Module):
    """Post-LayerNorm like BERT's layer, around disentangled attention."""

    def __init__(self, config):
        super().__init__()
        self.attn = DisentangledSelfAttention(config)
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, mask, rel_table, rows, query=None):
        residual = x if query is None else query
        x = self.ln1(residual + self.dropout(self.attn(x, mask, rel_table, rows, query)))
        return self.ln2(x + self.dropout(self.ffn(x)))


class DebertaEmbeddings(nn.Module):
    """Words (+ segments), LayerNorm, zeros at padding; the absolute position table only for the EMD."""

    def __init__(self, config):
        super().__init__()
        self.word = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size) if config.emd else None
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids, token_type_ids=None, mask=None):
        x = self.word(input_ids)
        if self.token_type is not None:
            x = x + (self.token_type(token_type_ids) if token_type_ids is not None else self.token_type.weight[0])
        x = self.ln(x)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        return self.dropout(x)


class DebertaEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = DebertaEmbeddings(config)
        self.layers = nn.ModuleList(DebertaLayer(config) for _ in range(config.num_layers))
        self.rel_embeddings = nn.Embedding(2 * config.position_buckets, config.hidden_size)
        self.rel_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.apply(lambda module: init_weights(module, config, self.embeddings))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """(B, T) ids -> (B, T, H) hidden states; with config.emd, those of the enhanced mask decoder."""
        mask = attention_mask.bool() if attention_mask is not None else None
        x = self.embeddings(input_ids, token_type_ids, mask)
        rel_table = self.rel_ln(self.rel_embeddings.weight)
        T = input_ids.shape[1]
        positions = torch.arange(T, device=x.device)
        # With `unpad`, the layers work on the real rows only. Batches pad at the end, so a token's place
        # among its sequence's real tokens is its position, and relative distances stay what they were.
        layout = padding.unpad(mask) if mask is not None and self.config.unpad else None
        if layout is not None:
            x, mask, T = padding.take(x, layout), layout, layout.max_seqlen
            positions = layout.repad_index % layout.max_seqlen
        rows = relative_rows(T, self.config, x.device)  # once: every layer meets the same distances
        recompute = recompute_mode(self)
        for layer in self.layers[:-1] if self.config.emd else self.layers:
            x = run_layer(layer, recompute, x, mask, rel_table, rows)
        if self.config.emd:
            # The EMD: the last layer twice more, with the absolute positions added to the queries only.
            query = x + self.embeddings.position(positions)
            for _ in range(2):
                query = run_layer(self.layers[-1], recompute, x, mask, rel_table, rows, query)
            x = query
        return padding.put_back(x, layout) if layout is not None else x
