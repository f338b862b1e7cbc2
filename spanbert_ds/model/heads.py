"""Pretraining heads: MLM, SpanBERT's span boundary objective (SBO), NSP, replaced-token detection (RTD: ELECTRA's
and DeBERTaV3's).

The MLM and SBO heads run on gathered rows only ((N, H) masked tokens, (M, H) span
targets), never on the whole (B*T, H) sequence: with 15% masking that removes ~85% of
the vocabulary-sized GEMMs, the largest cost of a small model. Both decoders are tied
to the word embeddings and have their own bias, as in BERT and SpanBERT. Given labels,
they return the summed cross-entropy from a fused decoder + loss (LinearCrossEntropy)
instead of logits.

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


# Logits are made this many elements at a time (16 MB in fp32) on the CPU: small enough that
# the allocator reuses the memory instead of mapping fresh pages every step, large enough for
# efficient GEMMs. On GPUs, whose allocator caches, all rows go at once.
CPU_CHUNK_ELEMENTS = 1 << 22


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i W^T + b, y_i) over the first `vocab_size` rows of W and b, with its gradients.

    The gradients are made in the forward pass, chunk by chunk, while each chunk's logits
    are at hand: dlogits = softmax(logits) - onehot(y) overwrites the log-probabilities, feeds the two
    GEMMs (dh = dlogits W, dW += dlogits^T h) and is freed. The (rows, vocab) logits are
    never all alive at once and never written to memory again for a separate
    log-softmax backward; on a CPU this makes a decoder step about a third faster.
    Backward only scales the stored gradients by d(loss).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels, vocab_size, chunk_rows):
        dtypes = (h.dtype, weight.dtype, bias.dtype)
        device_type = h.device.type
        if torch.is_autocast_enabled(device_type):  # do explicitly what autocast would do to each op
            dtype = torch.get_autocast_dtype(device_type)
            h, weight, bias = h.to(dtype), weight.to(dtype), bias.to(dtype)
        w, b = weight[:vocab_size], bias[:vocab_size]
        acc = torch.promote_types(w.dtype, torch.float32)  # softmax and sums: fp32 at least
        grad_h = torch.empty_like(h)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device)
        loss = torch.zeros((), dtype=acc, device=h.device)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, h.shape[0], chunk_rows):
                rows, y = h[start : start + chunk_rows], labels[start : start + chunk_rows]
                logits = torch.addmm(b, rows, w.t())  # (chunk, vocab)
                log_probs = torch.log_softmax(logits.to(acc), dim=1)
                del logits
                loss -= log_probs.gather(1, y[:, None]).sum()
                dlogits = log_probs.exp_()  # softmax, in place
                dlogits[torch.arange(len(y), device=y.device), y] -= 1.0
                grad_bias[:vocab_size] += dlogits.sum(dim=0)
                dlogits = dlogits.to(w.dtype)
                torch.mm(dlogits, w, out=grad_h[start : start + chunk_rows])
                if w.dtype == acc:
                    grad_weight[:vocab_size].addmm_(dlogits.t(), rows)
                else:
                    grad_weight[:vocab_size] += torch.mm(dlogits.t(), rows).to(acc)
        ctx.dtypes = dtypes
        ctx.save_for_backward(grad_h, grad_weight, grad_bias)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_weight, grad_bias = ctx.saved_tensors
        grads = [(g * grad_loss).to(dtype) for g, dtype in zip((grad_h, grad_weight, grad_bias), ctx.dtypes)]
        return (*grads, None, None, None)


def decode_loss(h, weight, bias, labels, vocab_size):
    """Summed cross-entropy of the decoder's logits (h W^T + b) against labels; a fp32 scalar."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad or bias.requires_grad):
        chunk_rows = h.shape[0] if h.is_cuda else max(16, CPU_CHUNK_ELEMENTS // vocab_size)
        return LinearCrossEntropy.apply(h, weight, bias, labels, vocab_size, max(chunk_rows, 1))
    return F.cross_entropy(decode(h, weight, bias, vocab_size).float(), labels, reduction="sum")


class MLMHead(nn.Module):
    """Masked LM: transform (dense -> GeLU -> LayerNorm) -> decoder tied to the word embeddings + own bias.

    in_features: the width of the hidden states, when it is not the embeddings' (ELECTRA's narrower generator).
    """

    def __init__(self, config, word_embeddings, in_features=None):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.transform = DenseGeluLayerNorm(in_features or config.hidden_size, config.hidden_size,
                                            config.layer_norm_eps, config.initializer_range)
        self.decoder_weight = word_embeddings.weight  # tied: the same Parameter, (padded_vocab, H)
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))

    def forward(self, x, labels=None):
        # x: (N, H) hidden states of the masked tokens -> logits (N, vocab_size),
        # or with labels (N,) the summed cross-entropy (the logits are then never all in memory)
        h = self.transform(x)
        if labels is None:
            return decode(h, self.decoder_weight, self.bias, self.vocab_size)
        return decode_loss(h, self.decoder_weight, self.bias, labels, self.vocab_size)


class SBOHead(nn.Module):
    """Span boundary objective (SpanBERT, section 3.2).

    For target token x_i of a span (x_s..x_e):  y_i = f(x_{s-1}, x_{e+1}, p_{i-s+1})
    with p a learned relative-position embedding and f a 2-layer MLP of GeLU + LayerNorm:
        h0 = [x_{s-1}; x_{e+1}; p_{i-s+1}]
        h1 = LayerNorm(GeLU(W1 h0)),  y_i = LayerNorm(GeLU(W2 h1))
    then the decoder tied to the word embeddings, with its own bias. As in the released code, p has
    one row per target (sbo_max_targets, 15) of its own width (sbo_position_dim, 200), so W1 takes
    2H + 200 inputs.
    """

    def __init__(self, config, word_embeddings):
        super().__init__()
        H, eps, std = config.hidden_size, config.layer_norm_eps, config.initializer_range
        self.vocab_size = config.vocab_size
        self.position = nn.Embedding(config.sbo_max_targets, config.sbo_position_dim)
        nn.init.normal_(self.position.weight, std=std)
        self.layer1 = DenseGeluLayerNorm(2 * H + config.sbo_position_dim, H, eps, std)
        self.layer2 = DenseGeluLayerNorm(H, H, eps, std)
        self.decoder_weight = word_embeddings.weight  # tied
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))

    def forward(self, left, right, rel_pos, labels=None):
        # left, right: (M, H) boundary states x_{s-1}, x_{e+1}; rel_pos: (M,) in 1..sbo_max_targets
        # -> logits (M, vocab_size), or with labels (M,) the summed cross-entropy
        h = torch.cat([left, right, self.position(rel_pos - 1)], dim=-1)  # (M, 2H + sbo_position_dim)
        h = self.layer2(self.layer1(h))  # (M, H)
        if labels is None:
            return decode(h, self.decoder_weight, self.bias, self.vocab_size)
        return decode_loss(h, self.decoder_weight, self.bias, labels, self.vocab_size)


class NSPHead(nn.Module):
    """Next sentence prediction on [CLS]: BERT's pooler (dense + tanh), then a 2-way classifier."""

    def __init__(self, config):
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 2)
        init_linear(config, self.pooler, self.classifier)

    def forward(self, cls_state):
        # cls_state: (B, H) the [CLS] hidden state -> logits (B, 2): 0 = true next, 1 = random
        return self.classifier(torch.tanh(self.pooler(cls_state)))


class RTDHead(nn.Module):
    """Replaced-token detection on every token (ELECTRA's discriminator head): dense -> GeLU -> one logit,
    replaced (> 0) or original."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 1)
        init_linear(config, self.dense, self.classifier)

    def forward(self, hidden):
        return self.classifier(F.gelu(self.dense(hidden))).squeeze(-1)  # (..., H) -> (...)


class ContextRTDHead(nn.Module):
    """DeBERTaV3's replaced-token detection head (the released code's LMMaskPredictionHead): each token's state
    plus the [CLS] state (position 0), LayerNorm'd, then dense -> GeLU -> one logit:
        logit_i = w^T GeLU(W LayerNorm(h_CLS + h_i) + b) + c
    ELECTRA's RTDHead sees h_i alone and has no LayerNorm."""

    def __init__(self, config):
        super().__init__()
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 1)
        init_linear(config, self.dense, self.classifier)

    def forward(self, hidden):
        h = self.ln(hidden[:, :1] + hidden)  # (B, T, H): h_CLS + h_i
        return self.classifier(F.gelu(self.dense(h))).squeeze(-1)  # (B, T)


RTD_HEADS = {"electra": RTDHead, "debertav3": ContextRTDHead}  # ModelConfig.rtd_head -> the head


def init_linear(config, *linears):
    """BERT's initialisation of a head's dense layers: N(0, initializer_range) weights, zero biases."""
    for linear in linears:
        nn.init.normal_(linear.weight, std=config.initializer_range)
        nn.init.zeros_(linear.bias)


def gather_rows(hidden, flat_index):
    """Rows of (B, T, H) `hidden` at flat indices b*T+t -> (len(flat_index), H)."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_index)

