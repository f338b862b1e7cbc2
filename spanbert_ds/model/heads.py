"""Pretraining heads: MLM, SpanBERT's span boundary objective (SBO), NSP.

The MLM and SBO heads run on gathered rows only ((N, H) masked tokens, (M, H) span
targets), never on the whole (B*T, H) sequence: with 15% masking that removes ~85% of
the vocabulary-sized GEMMs, the largest cost of a small model. Both decoders are tied
to the word embeddings and have their own bias, as in BERT and SpanBERT.

Every weight a head multiplies by is a direct parameter of the module whose forward
uses it (no reaching into a child's `.weight`), so ZeRO-3 gathers it in time.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_ds import kernels


class DenseGeluLayerNorm(nn.Module):
    """LayerNorm(GeLU(x W^T + b)): BERT's prediction transform, one block of SBO's MLP.

    The bias, GeLU and LayerNorm go through spanbert_ds.kernels.bias_gelu_layernorm,
    one fused kernel on CUDA (the plain PyTorch reference elsewhere).
    """

    def __init__(self, in_features, out_features, eps, std):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(out_features, in_features).normal_(std=std))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.ln_weight = nn.Parameter(torch.ones(out_features))
        self.ln_bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x):
        return kernels.bias_gelu_layernorm(F.linear(x, self.weight), self.bias, self.ln_weight, self.ln_bias, self.eps)


def decode(h, weight, bias, vocab_size):
    """Logits over the real vocabulary: (rows, H) -> (rows, vocab_size).

    The rows past vocab_size only pad the table; slicing the weight (a contiguous view)
    rather than the logits keeps them out of the softmax without copying (rows, vocab) tensors.
    """
    return F.linear(h, weight[:vocab_size], bias[:vocab_size])


class MLMHead(nn.Module):
    """Masked LM: transform (dense -> GeLU -> LayerNorm) -> decoder tied to the word embeddings + own bias."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.transform = DenseGeluLayerNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps,
                                            config.initializer_range)
        self.decoder_weight = word_embeddings.weight  # tied: the same Parameter, (padded_vocab, H)
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))

    def forward(self, x):
        # x: (N, H) hidden states of the masked tokens -> logits (N, vocab_size)
        return decode(self.transform(x), self.decoder_weight, self.bias, self.vocab_size)


class SBOHead(nn.Module):
    """Span boundary objective (SpanBERT, section 3.2).

    For target token x_i of a span (x_s..x_e):  y_i = f(x_{s-1}, x_{e+1}, p_{i-s+1})
    with p a learned relative-position embedding and f a 2-layer MLP of GeLU + LayerNorm:
        h0 = [x_{s-1}; x_{e+1}; p_{i-s+1}]
        h1 = LayerNorm(GeLU(W1 h0)),  y_i = LayerNorm(GeLU(W2 h1))
    then the decoder tied to the word embeddings, with its own bias.
    """

    def __init__(self, config, word_embeddings):
        super().__init__()
        H, eps, std = config.hidden_size, config.layer_norm_eps, config.initializer_range
        self.vocab_size = config.vocab_size
        self.position = nn.Embedding(config.sbo_position_size, H)
        nn.init.normal_(self.position.weight, std=std)
        self.layer1 = DenseGeluLayerNorm(3 * H, H, eps, std)
        self.layer2 = DenseGeluLayerNorm(H, H, eps, std)
        self.decoder_weight = word_embeddings.weight  # tied
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))

    def forward(self, left, right, rel_pos):
        # left, right: (M, H) boundary states x_{s-1}, x_{e+1}; rel_pos: (M,) in 1..max span targets
        h = torch.cat([left, right, self.position(rel_pos)], dim=-1)  # (M, 3H)
        h = self.layer2(self.layer1(h))  # (M, H)
        return decode(h, self.decoder_weight, self.bias, self.vocab_size)


class NSPHead(nn.Module):
    """Next sentence prediction on [CLS]: BERT's pooler (dense + tanh), then a 2-way classifier."""

    def __init__(self, config):
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 2)
        for linear in (self.pooler, self.classifier):
            nn.init.normal_(linear.weight, std=config.initializer_range)
            nn.init.zeros_(linear.bias)

    def forward(self, cls_state):
        # cls_state: (B, H) the [CLS] hidden state -> logits (B, 2): 0 = true next, 1 = random
        return self.classifier(torch.tanh(self.pooler(cls_state)))


def gather_rows(hidden, flat_index):
    """Rows of (B, T, H) `hidden` at flat indices b*T+t -> (len(flat_index), H)."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_index)

