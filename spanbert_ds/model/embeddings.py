"""BERT's input embeddings: token + position (+ segment), then LayerNorm and dropout.

Differences from Hugging Face's BertEmbeddings: the word table has `padded_vocab_size`
rows (a multiple of 64; the extra rows stay zero and are never looked up, and the
exporter strips them), and the segment table is absent when `type_vocab_size` is 0
(RoBERTa has no segments).
"""

import torch
import torch.nn as nn


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids, token_type_ids=None):
        # input_ids, token_type_ids: (B, T) int64
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)  # (B, T, H)
        if self.token_type is not None:
            x = x + (self.token_type(token_type_ids) if token_type_ids is not None else self.token_type.weight[0])
        return self.dropout(self.ln(x))
