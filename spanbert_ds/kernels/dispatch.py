"""Which implementation runs where: the fused kernels (Triton) or their plain PyTorch references.

- `bias_gelu_layernorm(x, bias, ln_weight, ln_bias, eps)`: on CUDA, the faster of the Triton kernel and
  the reference (timed once per shape class by `fastest`) when the kernels pass their self-check; the
  reference elsewhere (it is a pure speed-up, so falling back is fine).
- `fused_attention(q, k, v, key_padding_mask, dropout_p, scale)`: the Triton flash-attention kernel, or a
  UserError saying why it cannot run. Someone who asked for "fused" gets it or an error, never a
  silent fallback. `fused_attention_varlen` is the same on packed (total_tokens, H, D) sequences, and
  `fused_disentangled_attention(_varlen)` are DeBERTa's disentangled attention in both layouts.
- `auto_may_fuse(t)`, `fused_available()`, `self_check(device)`: whether the kernels may or can run here, for
  the `auto` choices (model/attention.py's `auto` backend, bias_gelu_layernorm above).

Triton is imported only when a kernel is first used, so the CPU path never pays for it. On a machine
without a GPU the kernels run under Triton's interpreter when TRITON_INTERPRET=1 is set before triton is
imported (the tests do this). SPANBERT_DS_KERNELS=reference|triton|auto (default auto) forces the choice of
`bias_gelu_layernorm`; "triton" on CPU needs the interpreter. SPANBERT_DS_AUTOTUNE=0 skips Triton's
autotuning (each kernel's first config).

`fastest.py` holds the timing that the `auto` choices use.
"""

import functools
import logging
import math
import os

import torch

from spanbert_ds.errors import UserError
from spanbert_ds.kernels import fastest, reference

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
log = logging.getLogger(__name__)


def interpreting():
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _triton_error():
    """None when triton imports, else why not (cached: an import is tried once)."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # an ImportError, or a broken install failing in its own way
        return f"{type(e).__name__}: {e}"
    return None


def _runs_here(t):
    """Can a Triton kernel run on tensor t's device?"""
    return _triton_error() is None and (t.is_cuda or (interpreting() and t.device.type == "cpu"))


def auto_may_fuse(t):
    """May an `auto` choice consider the fused kernels for tensors like t? On CUDA, with Triton importable
    and the self-check passed on t's device (cached); never on the CPU, where the interpreter is for tests."""
    return t.is_cuda and _triton_error() is None and self_check(t.device)


def fused_available():
    """Can the fused kernels run on this machine (a CUDA GPU, or the interpreter) with Triton installed?"""
    return _triton_error() is None and (torch.cuda.is_available() or interpreting())


# --------------------------------------------------------------------------------------------------
# bias + GeLU + LayerNorm

def _gelu_layernorm_mode(x):
    """"triton", "reference" or "auto" (time both) for this x, from SPANBERT_DS_KERNELS and the machine."""
    mode = os.environ.get("SPANBERT_DS_KERNELS", "auto")
    if mode not in ("auto", "triton", "reference"):
        raise UserError(f"SPANBERT_DS_KERNELS={mode!r} is not a choice; set it to auto, triton or reference")
    if mode == "reference":
        return mode
    if mode == "triton" and not _runs_here(x):
        raise UserError(f"SPANBERT_DS_KERNELS=triton but the Triton kernel cannot run on {x.device} "
                        f"({_why_not(x)}); unset SPANBERT_DS_KERNELS to use the reference")
    if mode == "auto" and not auto_may_fuse(x):
        return "reference"
    from spanbert_ds.kernels import gelu_layernorm

    if x.dtype not in _FLOATS or x.shape[-1] > gelu_layernorm.MAX_HIDDEN:
        return "reference"
    return mode


def bias_gelu_layernorm(x, bias, ln_weight, ln_bias, eps=1e-12):
    """LayerNorm(GeLU_erf(x + bias)) over the last dim: fused on CUDA where faster, the PyTorch reference elsewhere."""
    mode = _gelu_layernorm_mode(x)
    if mode == "reference":
        return reference.bias_gelu_layernorm(x, bias, ln_weight, ln_bias, eps)
    from spanbert_ds.kernels import gelu_layernorm

    impls = {"triton": gelu_layernorm.bias_gelu_layernorm, "reference": reference.bias_gelu_layernorm}
    if mode == "auto":
        inputs = (x, bias, ln_weight, ln_bias)
        rows = x.numel() // x.shape[-1]
        key = ("bias_gelu_layernorm", str(x.device), x.dtype, x.shape[-1], fastest.size_class(rows))
        mode = fastest.fastest(key, lambda: {name: fastest.trial(fn, inputs, eps) for name, fn in impls.items()},
                               x.device)
    return impls[mode](x, bias, ln_weight, ln_bias, eps)


# --------------------------------------------------------------------------------------------------
# attention

def _why_not(t):
    if _triton_error() is not None:
        return f"Triton does not import ({_triton_error()}); install it with pip install 'spanbert_ds[kernels]'"
    if t.device.type == "cpu":
        return "the tensors are on the CPU and Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1 for tests)"
    return f"Triton kernels do not run on device {t.device}"


def _check_attention_inputs(q, k, v, what):
    if not _runs_here(q):
        raise UserError(f"attention_backend 'fused' cannot run: {_why_not(q)}. "
                        "Use attention_backend 'sdpa' (or 'auto', which picks what works) on this machine")
    if q.dtype not in _FLOATS or k.dtype != q.dtype or v.dtype != q.dtype:
        raise UserError(f"fused attention takes float16, bfloat16 or float32 q, k, v of one dtype, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}; set the precision in the ds_config (bf16/fp16) "
                        "or use attention_backend 'sdpa'")
    if q.shape != k.shape or q.shape != v.shape:
        raise UserError(f"fused attention is self-attention: q, k, v must have one shape {what}, got "
                        f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}; use attention_backend 'sdpa'")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise UserError(f"fused attention supports head dims up to {MAX_HEAD_DIM}, the model has {q.shape[-1]} "
                        "(hidden_size / num_attention_heads); use attention_backend 'sdpa'")


def fused_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None):
    """softmax(q k^T * scale + mask) v with dropout, by the Triton flash kernel.

    q, k, v: (B, H, T, D); key_padding_mask: bool (B, T), True for real tokens (None: no padding);
    scale: None for 1/sqrt(D). Raises UserError when the kernel cannot run here.
    """
    _check_attention_inputs(q, k, v, "(B, H, T, D)")
    from spanbert_ds.kernels import attention

    return attention.flash_attention(q, k, v, key_padding_mask, dropout_p, scale)


def fused_disentangled_attention(q, k, v, c2p, p2c, rel_index, key_padding_mask=None, dropout_p=0.0, scale=None):
    """DeBERTa's disentangled attention by the Triton flash kernel: the scores q k^T * scale + c2p + p2c, their
    relative terms gathered inside the kernel and never stored T x T.

    q, k, v: (B, H, T, D); c2p = scale q k_r^T and p2c = scale k q_r^T: (B, H, T, R) for R relative rows;
    rel_index: int (2T - 1,), the row of R for each distance i - j at i - j + T - 1.
    """
    _check_attention_inputs(q, k, v, "(B, H, T, D)")
    if c2p.shape[:3] != q.shape[:3] or p2c.shape != c2p.shape or rel_index.numel() != 2 * q.shape[2] - 1:
        raise UserError(f"fused disentangled attention: c2p and p2c must be (B, H, T, R) for q {tuple(q.shape)} and "
                        f"rel_index (2T - 1,), got {tuple(c2p.shape)}, {tuple(p2c.shape)}, {tuple(rel_index.shape)}")
    from spanbert_ds.kernels import attention

    return attention.flash_disentangled_attention(q, k, v, c2p, p2c, rel_index, key_padding_mask, dropout_p, scale)


def fused_disentangled_attention_varlen(q, k, v, c2p, p2c, rel_index, cu_seqlens, max_seqlen, dropout_p=0.0,
                                        scale=None):
    """The same on packed sequences: q, k, v (total_tokens, H, D) and c2p, p2c (total_tokens, H, R), back to back
    as cu_seqlens int (B+1) says; max_seqlen the longest sequence, and rel_index (2 max_seqlen - 1,) the row for
    each distance i - j at i - j + max_seqlen - 1."""
    _check_attention_inputs(q, k, v, "(total_tokens, H, D)")
    if (c2p.dim() != 3 or c2p.shape[:2] != q.shape[:2] or p2c.shape != c2p.shape
            or rel_index.numel() != 2 * max_seqlen - 1):
        raise UserError(f"fused disentangled attention: c2p and p2c must be (total_tokens, H, R) for q "
                        f"{tuple(q.shape)} and rel_index (2 max_seqlen - 1,) for max_seqlen {max_seqlen}, got "
                        f"{tuple(c2p.shape)}, {tuple(p2c.shape)}, {tuple(rel_index.shape)}")
    from spanbert_ds.kernels import attention

    return attention.flash_disentangled_attention_varlen(q, k, v, c2p, p2c, rel_index, cu_seqlens, max_seqlen,
                                                         dropout_p, scale)


def fused_attention_varlen(q, k, v, cu_seqlens, max_seqlen=None, dropout_p=0.0, scale=None):
    """The same on packed sequences: q, k, v (total_tokens, H, D), cu_seqlens int (B+1) cumulative lengths
    from 0, max_seqlen the longest (pass it to avoid a device sync). Padding costs nothing here."""
    _check_attention_inputs(q, k, v, "(total_tokens, H, D)")
    from spanbert_ds.kernels import attention

    return attention.flash_attention_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale)


# --------------------------------------------------------------------------------------------------
# self-check for the `auto` attention backend

def _close(a, b, tol):
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and (a.float() - b.float()).abs().max() <= tol


_SELF_CHECKS = {}  # device -> bool


def _self_check_on(device):
    g = torch.Generator(device="cpu").manual_seed(0)
    # fp32 inputs: GPU dots run in TF32 (~1e-3 relative); a broken kernel is off by O(1)
    tol = 2e-2

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    from spanbert_ds.kernels import attention, gelu_layernorm

    x, b, w, beta = randn(3, 5, 96), randn(96), randn(96), randn(96)
    y = gelu_layernorm.bias_gelu_layernorm(x, b, w, beta, 1e-5)
    y_ref = reference.bias_gelu_layernorm(x, b, w, beta, 1e-5)
    dy = torch.randn(y.shape, generator=g).to(device)
    grads = torch.autograd.grad(y, (x, b, w, beta), dy)
    grads_ref = torch.autograd.grad(y_ref, (x, b, w, beta), dy)
    ok = _close(y, y_ref, tol) and all(_close(a, r, tol * 10) for a, r in zip(grads, grads_ref))

    q, k, v = randn(2, 2, 40, 32), randn(2, 2, 40, 32), randn(2, 2, 40, 32)
    mask = torch.ones(2, 40, dtype=torch.bool, device=device)
    mask[0, 23:] = False
    scale = 1.0 / math.sqrt(32)
    o = attention.flash_attention(q, k, v, mask, 0.0, scale)
    o_ref = reference.attention(q, k, v, mask, 0.0, scale)
    do = torch.randn(o.shape, generator=g).to(device)
    grads = torch.autograd.grad(o, (q, k, v), do)
    grads_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    return ok and _close(o, o_ref, tol) and all(_close(a, r, tol) for a, r in zip(grads, grads_ref))


def self_check(device=None):
    """Run both kernels once on tiny shapes against the reference; True when they run and match.

    Cheap (a few kernel launches, compiled once) and cached per device. The `auto` attention backend
    uses it to decide whether the fused kernels can be trusted on this machine.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if _triton_error() is not None or not (device.type == "cuda" or (interpreting() and device.type == "cpu")):
        return False
    if device not in _SELF_CHECKS:
        try:
            # grads are needed even when the caller runs under no_grad (evaluation), and full precision
            with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                ok = _self_check_on(device)
            if not ok:
                log.warning("fused kernels gave wrong numbers in their self-check on %s; not using them", device)
        except Exception as e:  # a compile or launch failure means: do not use the kernels here
            log.warning("fused kernels failed their self-check on %s: %s: %s", device, type(e).__name__, e)
            ok = False
        _SELF_CHECKS[device] = ok
    return _SELF_CHECKS[device]
