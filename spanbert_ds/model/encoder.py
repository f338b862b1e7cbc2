"""The BERT encoder, top to bottom: embeddings, then num_layers transformer layers.

Post-LayerNorm as in BERT and SpanBERT (x = LN(x + sublayer(x))); `pre_layernorm`
switches to x = x + sublayer(LN(x)) with a final LayerNorm, which trains more stably
for deep models. Differences from Hugging Face's BertModel: Q, K and V come from one
(H, 3H) projection (one GEMM instead of three; interop/hf.py splits it on export),
attention is a pluggable backend (model/attention.py), there is no pooler (the NSP
head owns it), and with `unpad` (the default) a batch with padding runs through the layers as
its real tokens only (model/padding.py).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from spanbert_ds.model import padding
from spanbert_ds.model.attention import get_attention
from spanbert_ds.model.embeddings import Embeddings


class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout_p = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        # the backend's implementation for each layout, chosen once (model/attention.py)
        self.attend_padded, self.attend_varlen = get_attention(config.attention_backend, "bert")

    def forward(self, x, mask):
        # x: (B, T, C) with mask the (B, T) key padding mask, or (N, C) real rows with mask their Unpadded layout
        C, hs = x.shape[-1], x.shape[-1] // self.num_heads
        dropout_p = self.dropout_p if self.training else 0.0
        q, k, v = self.qkv(x).split(C, dim=-1)
        if isinstance(mask, padding.Unpadded):
            q, k, v = (t.view(-1, self.num_heads, hs) for t in (q, k, v))  # (N, nh, hs)
            return self.out(self.attend_varlen(q, k, v, mask, dropout_p, None).flatten(1))
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, self.num_heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = self.attend_padded(q, k, v, mask, dropout_p, None)
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C): heads side by side again


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GeLU, as BERT


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.pre_layernorm = config.pre_layernorm
        self.attn = SelfAttention(config)
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, mask):
        if self.pre_layernorm:
            x = x + self.dropout(self.attn(self.ln1(x), mask))
            return x + self.dropout(self.ffn(self.ln2(x)))
        x = self.ln1(x + self.dropout(self.attn(x, mask)))
        return self.ln2(x + self.dropout(self.ffn(x)))


def recompute_mode(encoder):
    """The activation checkpointing an encoder's forward applies: its config's while training with grad, else
    "none"."""
    training = encoder.training and torch.is_grad_enabled()
    return encoder.config.activation_checkpointing if training else "none"


def run_layer(layer, recompute, *inputs):
    """layer(*inputs), recomputed in backward where recompute is "torch" or "deepspeed"."""
    if recompute == "torch":
        return torch.utils.checkpoint.checkpoint(layer, *inputs, use_reentrant=False)
    if recompute == "deepspeed":
        import deepspeed  # only runs that ask for it pay the import

        return deepspeed.checkpointing.checkpoint(layer, *inputs)
    return layer(*inputs)


def init_weights(module, config, embeddings):
    """BERT's initialisation: N(0, 0.02) weights, zero biases, identity LayerNorms (for Module.apply)."""
    std = config.initializer_range
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if module is embeddings:
        # Rows past vocab_size only pad the table to a multiple of 64: no id reaches them.
        module.word.weight.data[config.vocab_size:].zero_()


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.final_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_layernorm else None
        self.apply(lambda module: init_weights(module, config, self.embeddings))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        # input_ids, attention_mask (1 real, 0 pad), token_type_ids: (B, T) -> hidden states (B, T, H).
        mask = attention_mask.bool() if attention_mask is not None else None
        x = self.embeddings(input_ids, token_type_ids)
        layout = padding.unpad(mask) if mask is not None and self.config.unpad else None
        if layout is not None:
            x, mask = padding.take(x, layout), layout
        recompute = recompute_mode(self)
        for layer in self.layers:
            x = run_layer(layer, recompute, x, mask)
        if self.final_ln is not None:
            x = self.final_ln(x)
        return padding.put_back(x, layout) if layout is not None else x
