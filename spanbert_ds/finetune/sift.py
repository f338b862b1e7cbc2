"""SiFT, scale-invariant fine-tuning (He et al. 2021, DeBERTa, section 3.2): virtual adversarial
training whose perturbation lives on the layer-normalised word embeddings.

Adversarial training perturbs the input embeddings; their norms differ from word to word and grow in
large models, so one perturbation size does not suit all. SiFT perturbs the normalised embeddings
instead, placed as the released code places it (DeBERTa/sift/sift.py, hook_sift_layer on
embeddings.LayerNorm): with x what the embeddings' LayerNorm takes (the sum of the tables), a perturbed
pass gives that LayerNorm x^ + delta instead, x^ = LN0(x) the affine-free LayerNorm (eps 1e-7) of x; the
model's own LayerNorm (with its weights) follows. Every backbone's embeddings end in that LayerNorm
(BERT's, RoBERTa's and ELECTRA's after words + positions + segments, DeBERTa's after words + segments), so
one hook serves them all (TaskModel.logits).

One difference from the released code: there, the clean pass runs through LN0 as well (LN(LN0(x)), which
differs from LN(x) by the two epsilons); here the clean pass is the model as it is trained and exported,
LN(x), so the exported model is the one whose logits training saw.

One step of the loss (as the released code's defaults: one ascent step, init 1e-2, step 1e-4):
  delta_0 ~ N(0, init^2) clipped to +-2 init
  g = d/d(delta) SKL(f(x^ + delta_0), f(x))                   (the clean logits held fixed)
  delta_1 = delta_0 + step * g / max|g| (per token)
  adversarial loss = SKL(f(x^ + delta_1), f(x))              added to the task loss with weight lambda
SKL is the symmetric KL divergence between the two predicted distributions. x^ is detached from the
embedding tables (as in the released code): the adversarial loss trains the embeddings' LayerNorm, the
encoder's layers and the head, not the tables.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SiFT:
    weight: float = 1.0  # lambda: the adversarial loss's weight beside the task loss
    init: float = 1e-2  # standard deviation of the first perturbation (of the normalised embeddings)
    step: float = 1e-4  # size of the ascent step

    @classmethod
    def from_spec(cls, spec):
        """`--sift` -> defaults; `--sift weight=2,step=1e-3` -> those values."""
        values = {}
        for item in filter(None, (spec or "").split(",")):
            key, _, value = item.partition("=")
            if key not in cls.__dataclass_fields__ or not value:
                raise ValueError(f"--sift {spec}: expected key=value with keys weight, init, step; got {item!r}")
            values[key] = float(value)
        return cls(**values)

    def loss(self, forward, x_shape, clean_logits, valid):
        """The adversarial loss. forward(perturb) -> logits, perturb taking what the embeddings' LayerNorm takes
        (of x_shape) to what it takes instead; valid: which rows of the flattened distributions count (the
        token head's labelled positions), or None for all."""
        delta = torch.randn(x_shape, device=clean_logits.device).mul_(self.init)
        delta = delta.clamp_(-2 * self.init, 2 * self.init).requires_grad_(True)
        target = clean_logits.detach()
        first = symmetric_kl(forward(perturbation(delta)), target, valid)
        (grad,) = torch.autograd.grad(first, delta)
        delta = (delta + self.step * grad / (1e-6 + grad.abs().amax(dim=-1, keepdim=True))).detach()
        return symmetric_kl(forward(perturbation(delta)), target, valid)


NORMALISED_EPS = 1e-7  # the released PerturbationLayer's affine-free LayerNorm


def perturbation(delta):
    """The function a perturbed pass applies to the embeddings' LayerNorm input x: LN0(x) + delta, from x
    detached."""
    def perturb(x):
        normalised = F.layer_norm(x.detach().float(), x.shape[-1:], eps=NORMALISED_EPS)
        return (normalised + delta).to(x.dtype)
    return perturb


def symmetric_kl(logits, target, valid=None):
    """Mean over rows of KL(p || q) + KL(q || p), p and q the softmaxes of the last dimension."""
    p_log, q_log = F.log_softmax(logits.float(), dim=-1), F.log_softmax(target.float(), dim=-1)
    per_row = ((p_log.exp() - q_log.exp()) * (p_log - q_log)).sum(dim=-1)
    if valid is not None:
        per_row = per_row[valid]
    return per_row.mean() if per_row.numel() else logits.sum() * 0.0
