"""`spanbert-ds bench`: time SpanBERT training steps with each attention backend on this device.

    spanbert-ds bench                                        # spanbert-base, 512 tokens, every backend
    spanbert-ds bench --model tiny --max-seq-len 128 --backends eager,sdpa

A step is what pretraining does per micro-batch: the spanbert objective's forward (encoder, MLM and
SBO heads), backward, and an AdamW step, under torch.autocast in --dtype. The batch is built once,
before any timing: FULL-SENTENCES rows ([CLS] tokens [SEP], no padding) of random token ids with word
starts, masked by the real SpanMasker, so the heads see as many targets as in pretraining (15%).
Every backend starts from the same initial weights and sees the same batch; the table reports the
median step after --warmup untimed ones, with throughput, model FLOPs utilisation and the ratio to
eager attention measured in the same run.

A backend that cannot run here (fused without a GPU) gets an "n/a (why)" row instead of ending the run.
"""

import gc
import logging
import platform
import statistics
import time
import traceback

import numpy as np
import torch

from spanbert_ds.data.masking import MaskingConfig, SpanMasker
from spanbert_ds.errors import UserError
from spanbert_ds.kernels import dispatch, fastest
from spanbert_ds.model.attention import ATTENTION_BACKENDS
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.model.objectives import OBJECTIVES
from spanbert_ds.run.monitor import device_peak_flops

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # None: autocast off
PAD, UNK, CLS, SEP, MASK = range(5)  # the batch's special ids; ordinary tokens are 5..vocab-1
WORD_START_RATE = 0.75  # about 1.3 WordPiece tokens per word in English text


def add_arguments(parser):
    parser.add_argument("--model", default="spanbert-base",
                        help="a preset (tiny, small, bert-base, spanbert-base, ...) or a model JSON file")
    # train's spellings for the same things; --seq-len and --batch, this command's first ones, still work
    parser.add_argument("--max-seq-len", "--seq-len", dest="seq_len", type=int, default=512,
                        help="tokens per sample, [CLS] and [SEP] included")
    parser.add_argument("--micro-batch-size", "--batch", dest="batch", type=int, default=None, metavar="N",
                        help="samples per step (default: 32 on CUDA, 4 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per backend; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling, autotuning), at least 1")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="autocast precision (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--backends", default=",".join(ATTENTION_BACKENDS),
                        help="comma-separated attention backends to time")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is one)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch and the initial weights")


# --------------------------------------------------------------------------------------------------
# the batch

def spanbert_batch(vocab_size, batch_size, seq_len, seed=0):
    """One packed FULL-SENTENCES batch masked by the real SpanMasker, as torch tensors (the batch
    data/masking.py defines)."""
    rng = np.random.default_rng(seed)
    B, T = batch_size, seq_len
    input_ids = rng.integers(MASK + 1, vocab_size, (B, T))
    input_ids[:, 0], input_ids[:, -1] = CLS, SEP
    special = np.zeros((B, T), dtype=bool)
    special[:, [0, -1]] = True
    packed = {
        "input_ids": input_ids,
        "attention_mask": np.ones((B, T), dtype=np.int64),
        "token_type_ids": np.zeros((B, T), dtype=np.int64),
        "word_starts": (rng.random((B, T)) < WORD_START_RATE) & ~special,
        "special_mask": special,
    }
    masker = SpanMasker(MaskingConfig(), vocab_size, MASK, [PAD, UNK, CLS, SEP, MASK])
    out = masker(packed, np.arange(B, dtype=np.int64), epoch=0, seed=seed)
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in out.items()}


# --------------------------------------------------------------------------------------------------
# timing

def auto_resolves_to(device):
    """(attention backend, why) that `auto` ran on `device`, read after it ran.

    On CUDA `auto` times the fused kernel against SDPA per shape class (kernels/fastest.py); this reports
    what those timings chose. Elsewhere it is SDPA, and the reason is said.
    """
    if device.type != "cuda":
        return "sdpa", f"{device.type} is not a CUDA device"
    if not dispatch.fused_available():
        return "sdpa", "Triton does not import"
    if not dispatch.self_check(device):
        return "sdpa", "the fused kernels failed their self-check (see the warning above)"
    timed = [(key, choice) for key, choice in fastest.choices().items() if key[0] == "attention"]
    if not timed:
        return "n/a", "auto did not run"
    names = sorted({name for _, (name, _) in timed})
    why = "; ".join(", ".join(f"{n} {ms:.3f} ms" for n, ms in medians.items()) + f" per call at T<={key[5]}"
                    for key, (_, medians) in timed)
    return "+".join(names), f"timed fused against SDPA, one forward + backward each: {why}"


def time_backend(config, batch, device, amp_dtype, steps, warmup, seed):
    """Median seconds per training step, the first step's loss, and the peak GPU memory (None on CPU)."""
    torch.manual_seed(seed)  # same initial weights for every backend
    objective = OBJECTIVES["spanbert"](config).to(device).train()
    # fused AdamW on CUDA is the closest to DeepSpeed's FusedAdam; torch's default elsewhere
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, weight_decay=0.01,
                                  fused=True if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = objective(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    first_loss = step()
    for _ in range(warmup - 1):
        step()
    seconds = []
    if cuda:
        # Events time the GPU stream without a host sync per step; read them all at the end.
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        torch.cuda.synchronize(device)
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        seconds = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    per_token, per_row = objective.training_flops(batch["input_ids"].shape[1])
    rows = batch["mlm_positions"].numel() + batch["sbo_labels"].numel()
    flops = per_token * int(batch["attention_mask"].sum()) + per_row * rows
    return {"seconds": statistics.median(seconds), "loss": float(first_loss), "peak_bytes": peak,
            "flops_per_step": flops}


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# the command

def resolve(args):
    """Check the arguments and fill in the device-dependent defaults. Returns (config, device, amp_dtype, backends)."""
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UserError(f"--device {args.device!r} is not a device; use cuda, cuda:N or cpu") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: this machine has no CUDA GPU that torch can use; use "
                            "--device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.batch is None:
        args.batch = 32 if device.type == "cuda" else 4
    if args.dtype is None:
        args.dtype = "bf16" if device.type == "cuda" else "fp32"
    if args.dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use --dtype fp16")
    for name, flag in (("batch", "--micro-batch-size"), ("steps", "--steps")):
        if getattr(args, name) < 1:
            raise UserError(f"{flag} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 1:
        raise UserError(f"--warmup must be at least 1 (the first step compiles kernels and checks the batch), "
                        f"got {args.warmup}")
    config = ModelConfig.from_name_or_path(args.model)
    if not 8 <= args.seq_len <= config.max_position_embeddings:
        raise UserError(f"--max-seq-len {args.seq_len}: the model {args.model} takes 8 to "
                        f"{config.max_position_embeddings} tokens per sample; pick a length in that range")
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = [name for name in backends if name not in ATTENTION_BACKENDS]
    if unknown or not backends:
        raise UserError(f"--backends {args.backends!r}: unknown {unknown or 'empty list'}; "
                        f"use a comma-separated list of {', '.join(ATTENTION_BACKENDS)}")
    return config, device, DTYPES[args.dtype], list(dict.fromkeys(backends))


def run(args):
    config, device, amp_dtype, backends = resolve(args)
    batch = {key: value.to(device) for key, value in spanbert_batch(config.vocab_size, args.batch, args.seq_len,
                                                                     args.seed).items()}
    tokens = args.batch * args.seq_len  # every token is real: FULL-SENTENCES rows carry no padding

    results = {}  # backend -> the timing dict, or the reason it could not run
    for name in backends:
        try:
            results[name] = time_backend(config.replace(attention_backend=name), batch, device, amp_dtype,
                                         args.steps, args.warmup, args.seed)
        except UserError as error:
            results[name] = str(error)
        except torch.cuda.OutOfMemoryError:
            results[name] = f"out of GPU memory at batch {args.batch} x seq {args.seq_len}; lower --micro-batch-size"
        except Exception as error:  # a kernel that fails to compile or launch: report it, time the others
            log.error("backend %s failed:\n%s", name, traceback.format_exc())
            results[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        free(device)

    auto_name, auto_why = auto_resolves_to(device)
    print_table(args, config, device, backends, results, tokens, auto_name)
    if "auto" in backends:
        print(f"auto resolved to: {auto_name} ({auto_why})")
        fastest = min((n for n in backends if n != "auto" and isinstance(results[n], dict)),
                      key=lambda n: results[n]["seconds"], default=None)
        if fastest is not None and fastest != auto_name and isinstance(results.get(auto_name), dict):
            gain = results[auto_name]["seconds"] / results[fastest]["seconds"]
            if gain > 1.05:  # below that, step-to-step noise
                print(f"note: {fastest} was {gain:.2f}x faster than auto's choice {auto_name} here (median of "
                      f"{args.steps} steps; on a busy machine or with few --steps, time again before trusting it)")
    return 0 if any(isinstance(r, dict) for r in results.values()) else 1


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def print_table(args, config, device, backends, results, tokens, auto_name):
    peak = device_peak_flops() if device.type == "cuda" else None
    timed = [r for r in results.values() if isinstance(r, dict)]
    print(f"spanbert-ds bench: {args.model} (spanbert objective), batch {args.batch} x seq {args.seq_len}, "
          f"{args.dtype}, fwd+bwd+AdamW, median of {args.steps} steps after {args.warmup} warmup")
    print(f"device: {describe_device(device)}; torch {torch.__version__}")
    if timed:
        print("FLOPs per step (encoder matmuls and attention per token, decoders per masked row): "
              f"{timed[0]['flops_per_step'] / 1e12:.3f} T; MFU against "
              + (f"{peak / 1e12:.0f} TFLOP/s (dense bf16 peak)" if peak else "n/a (no known peak for this device)"))
    eager = results.get("eager")
    header = (f"{'backend':<8} {'runs':<6} {'ms/step':>9} {'tokens/s':>11} {'MFU':>6} {'vs eager':>8} "
              f"{'peak mem':>9} {'loss':>8}")
    print(header)
    print("-" * len(header))
    for name in backends:
        runs = auto_name if name == "auto" else name
        r = results[name]
        if not isinstance(r, dict):
            print(f"{name:<8} {runs:<6} n/a ({r})")
            continue
        tokens_per_s = tokens / r["seconds"]
        mfu = f"{r['flops_per_step'] / r['seconds'] / peak:.1%}" if peak else "n/a"
        ratio = f"{eager['seconds'] / r['seconds']:.2f}x" if isinstance(eager, dict) else "n/a"
        memory = f"{r['peak_bytes'] / 2**30:.1f} GiB" if r["peak_bytes"] is not None else "n/a"
        print(f"{name:<8} {runs:<6} {r['seconds'] * 1e3:>9.1f} {tokens_per_s:>11,.0f} {mfu:>6} {ratio:>8} "
              f"{memory:>9} {r['loss']:>8.4f}")
    print("(vs eager: eager's step time / this one's, > 1 is faster; loss: the first step's, a sanity check; "
          "on CUDA the heads' bias-GeLU-LayerNorm is the faster of the fused kernel and eager PyTorch, timed, "
          "unless SPANBERT_DS_KERNELS forces one)")
    for key, (name, medians) in fastest.choices().items():
        if key[0] == "bias_gelu_layernorm":
            print(f"bias-GeLU-LayerNorm auto, up to {key[4]} rows x {key[3]}: {name} ("
                  + ", ".join(f"{n} {ms:.3f} ms" for n, ms in medians.items()) + ")")
