"""Fused kernels against their peers, forward + backward, measured in the same run on the same device.

    python benchmarks/kernels.py            # on a CUDA GPU, bf16, BERT-base and BERT-large shapes (~2-3 min)
    python benchmarks/kernels.py --smoke    # tiny shapes on CPU under Triton's interpreter: proves the script

bias + GeLU + LayerNorm (the SBO head's and MLM transform's tail), rows x hidden, against PyTorch eager
(x + b, F.gelu, F.layer_norm) and torch.compile of it. Effective bandwidth counts the bytes a fused
kernel must move: forward reads x and writes y, backward reads x and dy and writes dx (5 x rows x hidden
elements; the parameters and per-row statistics are negligible).

Attention, (B, H, T, D) with no padding mask (SDPA's flash backend takes none), against eager PyTorch
(explicit T x T scores, the reference), torch.compile of it and SDPA's FlashAttention-2 backend.
FLOPs: 4 B H T^2 D forward, 2.5 x that backward (FlashAttention's convention).

DeBERTa's disentangled attention, (B, H, T, D) with 256 position buckets each way (DeBERTa V3), no padding
and no dropout, against eager PyTorch (the deberta backbone's eager backend, the reference),
torch.compile of it, flashdeberta's Triton kernel (PyPI `flashdeberta` 0.0.8) and disentangled-flash's
training kernel (PyPI `disentangled-flash` 1.1.1; CUDA only, n/a on CPU), each where installed. Ours, eager
and disentangled-flash include the T x 2*buckets products q k_r^T and k q_r^T; flashdeberta takes the
projected relative tables; disentangled-flash takes them cut to the slots a length T uses (its compact plan).
FLOPs: the content terms' 4 B H T^2 D, x 3.5 for forward + backward, as for attention. Then the same on
packed sequences of lengths uniform in [T/2, T) (varlen, what the backbone's unpadded layers run): ours'
packed layout, eager on the rows padded again to the longest, flashdeberta's varlen kernel and
disentangled-flash's packed one ((H, N, D) with cu_seqlens); FLOPs
summed over the sequences.

Prints one table: time, throughput, each peer's time divided by ours (> 1: ours is faster) and the largest
difference of each forward output from eager's, then whether the goals are met.
"""

import argparse
import contextlib
import math
import os
import sys
import time

# Spec-sheet HBM bandwidth in bytes/s, by a substring of torch.cuda.get_device_name (first match wins).
PEAK_BANDWIDTH = [
    ("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("H800", 3.35e12),
    ("GH200", 4.0e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12), ("L40S", 0.864e12), ("L4", 0.3e12), ("A10G", 0.6e12), ("A10", 0.6e12),
    ("V100", 0.9e12), ("T4", 0.32e12),
]
GOAL_BANDWIDTH = 0.85  # of peak, for bias-GeLU-LN
GOAL_ATTENTION = 0.95  # of SDPA-flash speed, forward + backward
MODELS = {"bert-base": (768, 12), "bert-large": (1024, 16)}  # hidden, heads (head dim 64)
DEBERTA_MODELS = {"deberta-v3-base": (768, 12), "deberta-v3-large": (1024, 16)}
GOAL_DISENTANGLED = 1.0  # of flashdeberta's speed, forward + backward


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes on CPU under TRITON_INTERPRET=1, no torch.compile: checks the script runs")
    p.add_argument("--tokens", type=int, default=65536, help="tokens per batch (rows for bias-GeLU-LN)")
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512], help="attention sequence lengths")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--dropout", type=float, default=0.0, help="attention dropout for every implementation")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers (saves compile time)")
    p.add_argument("--deberta-seq", type=int, nargs="+", default=[512, 2048],
                   help="disentangled attention sequence lengths")
    p.add_argument("--only", choices=["ln", "attention", "disentangled"], help="run one kernel only")
    p.add_argument("--models", nargs="+", choices=[*MODELS, *DEBERTA_MODELS], default=[*MODELS, *DEBERTA_MODELS],
                   help="the shapes to measure (bert-* for bias-GeLU-LN and attention, deberta-* for disentangled)")
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from spanbert_ds.kernels import attention, gelu_layernorm, reference  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Unavailable(Exception):
    """A peer that cannot run here (prints n/a)."""


def timer(device):
    """fn -> milliseconds. On CUDA triton's do_bench (warm-up, L2 flushed between runs, median);
    on CPU a plain clock over two runs after one warm-up (the smoke run checks, it does not measure)."""
    if device.type == "cuda":
        def cuda_ms(fn, grads):
            return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median")
        return cuda_ms

    def cpu_ms(fn, grads):
        fn()
        start = time.perf_counter()
        for _ in range(2):
            for t in grads:
                t.grad = None
            fn()
        return (time.perf_counter() - start) / 2 * 1e3
    return cpu_ms


def measure(impl, inputs, make_grad, time_ms, reference_out):
    """impl(*inputs) -> (fwd ms, fwd+bwd ms, max |out - reference_out|) or raises Unavailable.

    The forward is timed as in training (autograd on, activations saved), so a compiled peer
    runs the same graph in both timings and is compiled once."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    try:
        out = impl(*inputs)  # also compiles / autotunes, outside the timing
        grad = make_grad(out)
        out.backward(grad)
        err = None if reference_out is None else float((out.detach().float() - reference_out.float()).abs().max())
        del out
        fwd = time_ms(lambda: impl(*inputs), [])
        fwd_bwd = time_ms(lambda: impl(*inputs).backward(grad), leaves)
    except Unavailable:
        raise
    except Exception as e:  # a peer that does not compile or run on this device/version: n/a, not a crash
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise Unavailable(f"{type(e).__name__}: {msg}") from e
    return fwd, fwd_bwd, err


def compiled(fn):
    """torch.compile of fn, or a function raising Unavailable when compile is off."""
    if ARGS.smoke or ARGS.no_compile:
        def off(*_):
            raise Unavailable("off (--smoke)" if ARGS.smoke else "off (--no-compile)")
        return off
    return torch.compile(fn, dynamic=False)


def run_cases(device, dtype):
    time_ms = timer(device)
    rows = []  # (kernel, shape, impl, fwd ms, fwd+bwd ms, throughput str, throughput value, vs-ours, err)
    notes = []
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, grad=True):
        return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_(grad)

    def add_case(kernel, shape, impls, work, unit, make_grad):
        ours_t = None
        ref_out = None  # eager's output: every implementation's forward is compared with it
        if not (kernel == "attention" and ARGS.dropout > 0):  # disentangled runs without dropout
            with torch.no_grad():
                ref_out = next(impl(*inputs) for name, impl, inputs in impls if name == "eager")
        for name, impl, inputs in impls:
            try:
                fwd, fwd_bwd, err = measure(impl, inputs, make_grad, time_ms, ref_out)
            except Unavailable as e:
                rows.append((kernel, shape, name, None, None, "n/a", None, None, None))
                notes.append(f"{kernel} {shape} {name}: n/a ({e})")
                continue
            if name.startswith("ours"):
                ours_t = fwd_bwd
            rate = work / (fwd_bwd * 1e-3)
            ratio = fwd_bwd / ours_t if ours_t else None
            rows.append((kernel, shape, name, fwd, fwd_bwd, unit(rate), rate, ratio, err))
            # One line per measurement as it lands, so a run cut short still leaves its numbers.
            print(f"measured {kernel} {shape} {name}: fwd {fwd:.3f} ms, fwd+bwd {fwd_bwd:.3f} ms, {unit(rate)}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if ARGS.only in (None, "ln"):
        shapes = ([(64, 48), (33, 64)] if ARGS.smoke
                  else [(ARGS.tokens, h) for m, (h, _) in MODELS.items() if m in ARGS.models])
        peak = peak_bandwidth(device)
        for n_rows, hidden in shapes:
            x = randn(n_rows, hidden)
            params = [randn(hidden), (1 + 0.1 * torch.randn(hidden, generator=gen)).to(device, dtype).requires_grad_(),
                      randn(hidden)]
            bytes_moved = 5 * n_rows * hidden * x.element_size()

            def gbps(rate, peak=peak):
                return f"{rate / 1e9:7.4g} GB/s" + (f" {rate / peak:4.0%}" if peak else "")

            inputs = (x, *params, 1e-12)
            add_case("bias_gelu_ln", f"{n_rows}x{hidden}", [
                ("ours (triton)", gelu_layernorm.bias_gelu_layernorm, inputs),
                ("eager", reference.bias_gelu_layernorm, inputs),
                ("torch.compile", compiled(reference.bias_gelu_layernorm), inputs),
            ], bytes_moved, gbps, lambda out: torch.randn_like(out))
            notes.append(f"bias_gelu_ln {n_rows}x{hidden} ours: autotuned forward {tuned(gelu_layernorm._bias_gelu_ln_fwd)}; "
                         f"backward {tuned(gelu_layernorm._bias_gelu_ln_bwd)}")
            del x, params, inputs

    if ARGS.only in (None, "attention"):
        if ARGS.smoke:
            shapes = [("tiny", 2, 2, 40, 32)]
        else:
            shapes = [(m, max(1, ARGS.tokens // t), heads, t, hidden // heads)
                      for m, (hidden, heads) in MODELS.items() if m in ARGS.models for t in ARGS.seq]
        p = ARGS.dropout
        for model, b, h, t, d in shapes:
            q, k, v = randn(b, h, t, d), randn(b, h, t, d), randn(b, h, t, d)
            flops = 3.5 * 4 * b * h * t * t * d  # forward + 2.5 x forward for backward

            def sdpa_flash(q, k, v):
                if device.type != "cuda":  # the smoke run still exercises the code path
                    return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
                from torch.nn.attention import SDPBackend, sdpa_kernel
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, dropout_p=p)

            def ours(q, k, v):
                return attention.flash_attention(q, k, v, None, p)

            def eager(q, k, v):
                return reference.attention(q, k, v, None, p)

            add_case("attention", f"{model} B{b} H{h} T{t} D{d}", [
                ("ours (triton)", ours, (q, k, v)),
                ("eager", eager, (q, k, v)),
                ("torch.compile", compiled(eager), (q, k, v)),
                ("sdpa-flash" if device.type == "cuda" else "sdpa (cpu)", sdpa_flash, (q, k, v)),
            ], flops, lambda rate: f"{rate / 1e12:7.4g} TFLOP/s", lambda out: torch.randn_like(out))
            del q, k, v

    if ARGS.only in (None, "disentangled"):
        from spanbert_ds.model import padding
        from spanbert_ds.model.attention import ATTENTION_BACKENDS
        from spanbert_ds.model.config import ModelConfig
        from spanbert_ds.model.deberta import relative_rows

        eager_disentangled, eager_disentangled_varlen = ATTENTION_BACKENDS["eager"]["deberta"]
        fused_disentangled, fused_disentangled_varlen = ATTENTION_BACKENDS["fused"]["deberta"]

        def flashdeberta():
            """flashdeberta's padded and varlen disentangled attention."""
            try:
                from flashdeberta.ops.flash_attention import flash_attention_with_disentangled
                from flashdeberta.ops.flash_attention_varlen import flash_attention_with_disentangled_varlen
            except ImportError as e:
                raise Unavailable(f"flashdeberta is not installed ({e})") from e
            if device.type == "cpu":  # it enters torch.cuda.device(q.device.index), which a CPU tensor lacks
                torch.cuda.device = lambda index: contextlib.nullcontext()
            return flash_attention_with_disentangled, flash_attention_with_disentangled_varlen

        plans = {}  # (span, reach) -> disentangled-flash's plan cache: built outside the timings

        def disentangled_flash(seq_len, k_r, q_r):
            """disentangled-flash's training kernels (padded, packed), its compact position plan for seq_len
            and the projected tables cut to the plan's active slots (in the graph, as ours' products are):
            (padded, packed, plan, pk, pq). Its kernels refuse non-CUDA tensors: n/a in the CPU dry run."""
            try:
                from disentangled_flash.position import SharedPositionPlanCache, pad_position_table
                from disentangled_flash.training._kernels import training_attention, training_attention_packed
            except ImportError as e:
                raise Unavailable(f"disentangled-flash is not installed ({e})") from e
            if device.type != "cuda":
                raise Unavailable("CUDA only, skipped in the dry run")
            if (span, reach) not in plans:
                plans[span, reach] = SharedPositionPlanCache(position_buckets=span, max_relative_positions=reach,
                                                             position_embedding_size=span)
            plan = plans[span, reach].compact(seq_len, device)  # cached per length after the first call
            pk, pq = (pad_position_table(table[:, plan.active_slots]) for table in (k_r, q_r))
            return training_attention, training_attention_packed, plan, pk, pq

        if ARGS.smoke:
            shapes = [("tiny", 2, 2, 40, 32, 8, 32)]
        else:
            shapes = [(m, max(1, ARGS.tokens // t), heads, t, hidden // heads, 256, 512)
                      for m, (hidden, heads) in DEBERTA_MODELS.items() if m in ARGS.models
                      for t in ARGS.deberta_seq]
        for model, b, h, t, d, span, reach in shapes:
            config = ModelConfig(backbone="deberta", position_buckets=span, max_relative_positions=reach)
            relative = relative_rows(t, config, device)  # (T, T) rows of the relative table
            scale = 1.0 / math.sqrt(3 * d)
            inputs = (randn(b, h, t, d), randn(b, h, t, d), randn(b, h, t, d), randn(h, 2 * span, d),
                      randn(h, 2 * span, d))

            def eager(q, k, v, k_r, q_r):
                return eager_disentangled(q, k, v, k_r, q_r, relative, None, 0.0, scale)

            def ours(q, k, v, k_r, q_r):
                return fused_disentangled(q, k, v, k_r, q_r, relative, None, 0.0, scale)

            def peer(q, k, v, k_r, q_r):
                lengths = torch.full((b,), t, dtype=torch.int32, device=device)
                padded, _ = flashdeberta()
                return padded(q, k, v, lengths, k_r[None], q_r[None], False, scale, span, reach)

            def peer_df(q, k, v, k_r, q_r):
                padded, _, plan, pk, pq = disentangled_flash(t, k_r, q_r)
                mask = torch.ones(b, t, dtype=torch.bool, device=device)
                out = padded(q, k, v, pk, pq, plan.delta_to_local, mask, score_scale=scale, has_padding=False,
                             strict_fp32=True, gradient_band=plan.gradient_band)  # (B, T, H*D)
                return out.view(b, t, h, d).transpose(1, 2)

            add_case("disentangled", f"{model} B{b} H{h} T{t} D{d}", [
                ("ours (triton)", ours, inputs),
                ("eager", eager, inputs),
                ("torch.compile", compiled(eager), inputs),
                ("flashdeberta", peer, inputs),
                ("disentangled-flash", peer_df, inputs),
            ], 3.5 * 4 * b * h * t * t * d, lambda rate: f"{rate / 1e12:7.4g} TFLOP/s", lambda out: torch.randn_like(out))
            del inputs

            lengths = torch.randint(t // 2, t, (b,), generator=gen)
            layout = padding.unpad((torch.arange(t)[None, :] < lengths[:, None]).to(device))
            relative_packed = relative_rows(layout.max_seqlen, config, device)
            n = int(lengths.sum())
            inputs = (randn(n, h, d), randn(n, h, d), randn(n, h, d), randn(h, 2 * span, d), randn(h, 2 * span, d))

            def eager_varlen(q, k, v, k_r, q_r):
                return eager_disentangled_varlen(q, k, v, k_r, q_r, relative_packed, layout, 0.0, scale)

            def ours_varlen(q, k, v, k_r, q_r):
                return fused_disentangled_varlen(q, k, v, k_r, q_r, relative_packed, layout, 0.0, scale)

            def peer_varlen(q, k, v, k_r, q_r):
                _, varlen = flashdeberta()
                cu, longest = layout.cu_seqlens, layout.max_seqlen
                return varlen(q, k, v, k_r[None], q_r[None], cu, cu, longest, longest, False, scale, span, reach)

            def peer_df_varlen(q, k, v, k_r, q_r):
                longest = int(layout.max_seqlen)
                _, packed, plan, pk, pq = disentangled_flash(longest, k_r, q_r)
                q, k, v = (x.transpose(0, 1).contiguous() for x in (q, k, v))  # (H, N, D), its packed layout
                out = packed(q, k, v, pk, pq, plan.delta_to_local, layout.cu_seqlens.to(torch.int32).contiguous(),
                             max_seqlen=longest, score_scale=scale, strict_fp32=True,
                             gradient_band=plan.gradient_band)  # (N, H*D)
                return out.view(n, h, d)

            add_case("disentangled", f"{model} varlen B{b} H{h} N{n} D{d}", [
                ("ours (triton)", ours_varlen, inputs),
                ("eager", eager_varlen, inputs),
                ("torch.compile", compiled(eager_varlen), inputs),
                ("flashdeberta", peer_varlen, inputs),
                ("disentangled-flash", peer_df_varlen, inputs),
            ], 3.5 * 4 * h * d * int((lengths ** 2).sum()), lambda rate: f"{rate / 1e12:7.4g} TFLOP/s",
                lambda out: torch.randn_like(out))
            del inputs
    return rows, notes


def tuned(kernel):
    """The config a Triton autotuner chose last, and how the others it timed compared (ms)."""
    best = getattr(kernel, "best_config", None)
    if best is None:
        return "n/a"
    text = f"{best.kwargs} num_warps={best.num_warps}"
    def ms(timing):  # do_bench returns a float, or a list when asked for quantiles
        return timing[0] if isinstance(timing, (list, tuple)) else timing

    ranked = sorted((getattr(kernel, "configs_timings", None) or {}).items(), key=lambda kv: ms(kv[1]))
    if ranked:
        shown = ranked[:5] + ranked[-1:] if len(ranked) > 6 else ranked  # the best few and the worst
        text += " (timed, ms: " + ", ".join(f"{c.kwargs} w{c.num_warps} {ms(t):.3f}" for c, t in shown) + ")"
    return text


def peak_bandwidth(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH if key in name), None)


def print_table(rows, notes, device, dtype):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter: no speed meaning)"
    peak = peak_bandwidth(device)
    print(f"device: {name}" + (f" (spec memory bandwidth {peak / 1e12:.2f} TB/s)" if peak else ""))
    print(f"torch {torch.__version__}, triton {triton.__version__}, dtype {str(dtype).replace('torch.', '')}, "
          f"attention dropout {ARGS.dropout}, forward + backward unless marked fwd")
    header = ("kernel", "shape", "impl", "fwd ms", "fwd+bwd ms", "throughput", "peer/ours", "max|err| fwd")
    lines = []
    for kernel, shape, impl, fwd, fwd_bwd, thr, _, ratio, err in rows:
        lines.append((kernel, shape, impl, "n/a" if fwd is None else f"{fwd:.3f}",
                      "n/a" if fwd_bwd is None else f"{fwd_bwd:.3f}", thr,
                      "-" if ratio is None or impl.startswith("ours") else f"{ratio:.2f}x",
                      "-" if err is None else f"{err:.1e}"))
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    for r in [header] + lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    for note in notes:
        print("note:", note)
    if device.type == "cuda":
        print_goals(rows, peak)


def print_goals(rows, peak):
    by_case = {}
    for kernel, shape, impl, _, fwd_bwd, _, rate, _, _ in rows:
        by_case.setdefault((kernel, shape), {})[impl] = (fwd_bwd, rate)
    for (kernel, shape), impls in by_case.items():
        ours = impls.get("ours (triton)", (None, None))
        if ours[0] is None:
            print(f"goal {kernel} {shape}: ours did not run")
            continue
        if kernel == "bias_gelu_ln":
            frac = f"{ours[1] / peak:.0%} of peak bandwidth (goal {GOAL_BANDWIDTH:.0%})" if peak else "peak unknown"
            comp = impls.get("torch.compile", (None, None))[0]
            vs = "torch.compile n/a" if comp is None else f"{comp / ours[0]:.2f}x torch.compile's speed (goal > 1)"
            print(f"goal {kernel} {shape}: {frac}, {vs}")
        elif kernel == "disentangled":
            vs = []
            for name in ("flashdeberta", "disentangled-flash"):
                peer = impls.get(name, (None, None))[0]
                vs.append(f"{name} n/a" if peer is None else f"{peer / ours[0]:.2f}x {name}'s speed")
            print(f"goal {kernel} {shape}: {', '.join(vs)} (goal >= {GOAL_DISENTANGLED} each)")
        else:
            flash = impls.get("sdpa-flash", (None, None))[0]
            vs = "sdpa-flash n/a" if flash is None else f"{flash / ours[0]:.2f}x SDPA-flash's speed"
            print(f"goal {kernel} {shape}: {vs} (goal >= {GOAL_ATTENTION})")


def main():
    if ARGS.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        sys.exit("benchmarks/kernels.py measures CUDA kernels and this machine has no GPU; "
                 "run it with --smoke to check it on CPU under the Triton interpreter")
    dtype = torch.float32 if ARGS.smoke else DTYPES[ARGS.dtype]
    if not 0.0 <= ARGS.dropout < 1.0:
        sys.exit(f"--dropout {ARGS.dropout}: must be in [0, 1)")
    start = time.perf_counter()
    rows, notes = run_cases(device, dtype)
    print_table(rows, notes, device, dtype)
    print(f"total {time.perf_counter() - start:.0f} s")
    if ARGS.smoke:  # the smoke run is a test: the kernels must run and agree with eager
        bad = [r for r in rows if r[2].startswith("ours") and (r[4] is None or r[8] is None or r[8] > 1e-4)]
        if bad or math.isnan(sum(r[8] or 0.0 for r in rows)):
            sys.exit(f"smoke run failed: {bad}")


if __name__ == "__main__":
    main()
