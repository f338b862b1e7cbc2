"""SpanBERT pretraining from 8 to 1,024 GPUs, on paper: memory, batch and learning rate, communication.

    python benchmarks/scaling.py [--tiny-vocab 8000] [--deepspeed-printout]

Prints, in Markdown, every table of docs/scaling.md. Nothing is timed and no GPU is needed: the models
are built on torch's meta device (shapes, no storage) to count their parameters, model-state memory comes
from DeepSpeed's own ZeRO estimators, and the rest from formulas the doc states, on the hardware
assumptions named in the constants below (peak FLOP/s, link speeds and efficiencies are assumptions,
not measurements). Runs in a few seconds on a CPU.
"""

import argparse
import contextlib
import io
import math
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's logger writes to stdout, where the Markdown goes
    from deepspeed.runtime.zero import stage3, stage_1_and_2  # noqa: E402

from spanbert_ds.model.config import PRESETS  # noqa: E402
from spanbert_ds.model.objectives import OBJECTIVES  # noqa: E402

GIB = 2**30  # memory in GiB, as DeepSpeed's estimators print it ("GB" there is bytes / 2**30)

# --- Assumptions (the doc repeats each one) ----------------------------------------------------------
GPU_COUNTS = (8, 64, 256, 1024)
GPUS_PER_NODE = 8
GPU_MEMORY_GIB = 80  # A100 80GB / H100 80GB
MICRO_BATCH = 32  # sequences per GPU per micro step
SEQ_LEN = 512
MASK_RATIO = 0.15  # MLM rows per token; the SBO head decodes about as many span targets again
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12}  # dense bf16 tensor-core peak, per the vendor's sheets
MFU = 0.40  # achieved share of that peak: an assumption for a well-tuned BERT-large step, not a measurement
# A node's inter-node bandwidth: one NIC of 100, 200 or 400 Gb/s per node, or one 400 Gb/s NIC per GPU as
# DGX-class H100 nodes have (8 x 400). The ring leaves each node through all of them at once.
NETWORK_GBPS = (100, 200, 400, 3200)
LINK_EFFICIENCY = 0.80  # share of the line rate an all-reduce gets
NVLINK_BUS_GBYTES = 200  # assumed intra-node all-reduce bus bandwidth (GB/s) when the run is one node
GRAD_BYTES = 2  # bf16 gradients and 16-bit parameter all-gathers
TARGET_EFFICIENCY = 0.90  # "communication is hidden enough": compute / (compute + exposed communication)

# The recipes. SpanBERT (Joshi et al. 2020): 256 sequences of 512, 2.4M steps, peak lr 1e-4, 10k warmup
# steps, linear decay. RoBERTa (Liu et al. 2019): 8K batches with Adam; LAMB (You et al. 2019): 32K.
SPANBERT = {"batch": 256, "steps": 2_400_000, "lr": 1e-4, "warmup": 10_000}
ADAMW_LARGEST_REPORTED = 8192  # RoBERTa's batch; LAMB's paper: earlier large-batch methods fail past it
LAMB_LARGEST_REPORTED = 32768  # at 512 tokens (65,536 at 128)
ROBERTA_WARMUP_SHARE = 30_000 / 500_000  # RoBERTa-large: 30k warmup of 500k steps

# The ~1B encoder is not a preset: BERT-large's recipe widened and deepened (head size 64, FFN 4H);
# pre-LN, which config.py recommends for deep models.
ONE_B = PRESETS["spanbert-large"].replace(hidden_size=1536, num_layers=36, num_heads=24, intermediate_size=6144,
                                          pre_layernorm=True)
MODELS = {"spanbert-large": PRESETS["spanbert-large"], "encoder-1b": ONE_B}


# --- Parameters --------------------------------------------------------------------------------------

def build_on_meta(config, objective="spanbert"):
    """The real model, with shapes and no storage: as fast for 1B parameters as for 4M."""
    with torch.device("meta"):
        return OBJECTIVES[objective](config)


def count_params(model):
    """(total parameters, largest layer's parameters), tied weights counted once.

    DeepSpeed's stage3.model_to_params gives both, but its total dedups by data_ptr(), which is 0 for every
    meta tensor (it would count one parameter); model.parameters() already yields a tied weight once.
    Its largest layer (the most parameters held directly by one module) is right on meta tensors.
    """
    total = sum(p.numel() for p in model.parameters())
    _, largest = stage3.model_to_params(model)
    return total, largest


# --- Memory ------------------------------------------------------------------------------------------

def zero_gpu_bytes(stage, params, largest_layer, gpus, gpus_per_node=GPUS_PER_NODE):
    """Model states per GPU (16-bit params and grads, fp32 master, Adam m and v), no offload.

    Stages 2 and 3 are DeepSpeed's estimators (2 B/param of 16-bit params replicated + 18 B/param sharded
    for stage 2; 18 B/param sharded + 4 B per param of the largest layer for stage 3). DeepSpeed has none
    for stage 1: the same byte counts with the 16-bit gradients replicated instead of sharded, i.e.
    2 + 2 B/param replicated and 4 (fp32 gradient shard) + 12 (fp32 master, m, v) B/param sharded.
    Stage 0 (no partitioning, which LAMB needs) replicates all 20 B/param: the stage-2 estimate for one GPU.
    """
    nodes = gpus // gpus_per_node
    if stage == 0:
        return 20 * params
    if stage == 1:
        return 4 * params + 16 * params / gpus
    if stage == 2:
        _, gpu = stage_1_and_2.estimate_zero2_model_states_mem_needs(
            params, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False)
        return gpu
    if stage == 3:
        _, gpu, _ = stage3.estimate_zero3_model_states_mem_needs(
            params, largest_layer, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False,
            cpu_offload_params=False)
        return gpu
    raise ValueError(f"ZeRO stage {stage}")


def activation_bytes(config, micro_batch=MICRO_BATCH, seq_len=SEQ_LEN, flash=True, checkpointing=False):
    """Activations the encoder layers keep for backward, 16-bit (Korthikanti et al. 2022, no tensor parallelism).

    A layer keeps 34*s*b*h bytes (inputs of its GEMMs, GeLU and LayerNorms, 1-byte dropout masks) plus
    5*a*s^2*b for the attention scores, softmax and its dropout mask; flash attention recomputes those, so
    they drop out. Checkpointing each layer keeps only its 2*s*b*h input and rebuilds one layer at a time.
    The 34 assumes an FFN of 4h, which both models here have.
    """
    s, b, h, a, L = seq_len, micro_batch, config.hidden_size, config.num_heads, config.num_layers
    per_layer = 34 * s * b * h + (0 if flash else 5 * a * s * s * b)
    if checkpointing:
        return L * 2 * s * b * h + per_layer
    return L * per_layer


def head_transient_bytes(config, micro_batch=MICRO_BATCH, seq_len=SEQ_LEN):
    """Peak of one vocabulary decoder on a GPU (heads.LinearCrossEntropy takes all rows at once there):
    16-bit logits and fp32 log-probabilities of the masked rows, plus the fp32 gradient of the tied table."""
    rows = MASK_RATIO * micro_batch * seq_len
    return rows * config.vocab_size * (2 + 4) + config.padded_vocab_size * config.hidden_size * 4


# --- Communication and compute ----------------------------------------------------------------------

def ring_allreduce_bytes(params, gpus, bytes_per_value=GRAD_BYTES):
    """Bytes each GPU sends (and receives) in a ring all-reduce of `params` values."""
    return 2 * (gpus - 1) / gpus * params * bytes_per_value


def bytes_per_step(stage, params, gpus, accumulation=1, bytes_per_value=GRAD_BYTES):
    """Bytes each GPU sends per optimizer step, with `accumulation` micro steps per optimizer step.

    0/1: one all-reduce (ZeRO-1: reduce-scatter + all-gather, the same volume) at the accumulation
    boundary. 2: DeepSpeed reduce-scatters the gradients in every micro step's backward
    (stage_1_and_2.reduce_ready_partitions_and_remove_grads), then all-gathers the updated parameters once.
    3: all-gathers the parameters in every forward and again in every backward, reduce-scatters gradients.
    """
    share = (gpus - 1) / gpus * params * bytes_per_value  # one reduce-scatter or one all-gather
    return {0: 2 * share, 1: 2 * share, 2: (accumulation + 1) * share, 3: 3 * accumulation * share}[stage]


def allreduce_seconds(nbytes, gpus, gbps):
    """Time of the ring on the slowest link: a node's NIC when the ring leaves the node, else NVLink."""
    if gpus <= GPUS_PER_NODE:
        return nbytes / (NVLINK_BUS_GBYTES * 1e9)
    return nbytes * 8 / (gbps * 1e9 * LINK_EFFICIENCY)


def compute_seconds(params, tokens, gpu):
    """6 * params * tokens FLOPs (forward 2, backward 4) at MFU of the GPU's bf16 peak."""
    return 6 * params * tokens / (PEAK_BF16_FLOPS[gpu] * MFU)


def exposed_seconds(compute, comm, overlap):
    """The part of a step's all-reduce that compute does not hide. Without overlap, all of it; with
    DeepSpeed's overlap_comm it runs, at best, under the last micro step's backward (2/3 of its compute)."""
    return max(0.0, comm - 2 / 3 * compute) if overlap else comm


def accumulation_for(target, compute, comm, overlap=False):
    """The fewest micro steps per optimizer step for A * compute / (A * compute + exposed comm) >= target."""
    exposed = exposed_seconds(compute, comm, overlap)
    return max(1, math.ceil(target / (1 - target) * exposed / compute - 1e-9))  # 1e-9: 2.0000001 is 2


# --- Tables ------------------------------------------------------------------------------------------

def markdown(headers, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def gib(nbytes):
    return f"{nbytes / GIB:.1f}" if nbytes >= 10 * GIB else f"{nbytes / GIB:.2f}"


def ms(seconds):
    return f"{seconds * 1e3:,.0f}" if seconds >= 0.01 else f"{seconds * 1e3:.1f}"


def link(gbps):
    return "NVLink" if gbps is None else "8x400" if gbps == 3200 else str(gbps)


def lr_text(lr):
    return f"{lr:.1e}".replace("e-0", "e-")


def describe(config):
    return (f"{config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, FFN "
            f"{config.intermediate_size}, vocab {config.vocab_size} (table {config.padded_vocab_size}), "
            f"{'pre' if config.pre_layernorm else 'post'}-LN")


def plan(tiny_vocab=8000):
    """Every number of docs/scaling.md, as data: {"params": ..., "tables": [(title, markdown), ...]}."""
    models = {name: build_on_meta(config) for name, config in MODELS.items()}
    counts = {name: count_params(model) for name, model in models.items()}
    nodes_models = {name: count_params(build_on_meta(PRESETS[name].replace(vocab_size=tiny_vocab)))
                    for name in ("tiny", "small", "bert-base")}
    tiny = nodes_models["tiny"]
    tables = []

    # 1. Parameters
    rows = []
    for name, config in {"bert-large": PRESETS["bert-large"], **MODELS}.items():
        model = models.get(name) or build_on_meta(config)
        total, largest = counts.get(name) or count_params(model)
        encoder = sum(p.numel() for p in model.encoder.parameters())
        sbo = sum(p.numel() for n, p in model.named_parameters() if n.startswith("sbo_head."))
        per_token, per_row = model.training_flops(SEQ_LEN)
        flops = per_token + 2 * MASK_RATIO * per_row  # MLM rows and about as many SBO targets per token
        rows.append([name, describe(config), f"{total / 1e6:,.1f}M", f"{encoder / 1e6:,.1f}M",
                     f"{sbo / 1e6:.2f}M", f"{largest / 1e6:.1f}M", f"{flops / (6 * total):.2f}"])
    tables.append(("Parameters (built on the meta device)", markdown(
        ["model", "shape", "params", "encoder", "SBO head", "largest layer", "project FLOPs / 6P"], rows,
        ["---", "---"] + ["---:"] * 5)))

    # 2. Model-state memory per GPU
    for name, (total, largest) in counts.items():
        rows = [[gpus, gpus // GPUS_PER_NODE]
                + [gib(zero_gpu_bytes(stage, total, largest, gpus)) for stage in (0, 1, 2, 3)] for gpus in GPU_COUNTS]
        tables.append((f"Model states per GPU, GiB: {name} ({total / 1e6:,.0f}M params), bf16, AdamW or LAMB, "
                       "no offload",
                       markdown(["GPUs", "nodes", "ZeRO-0 (LAMB)", "ZeRO-1", "ZeRO-2", "ZeRO-3"], rows)))

    # 3. Activations per GPU
    rows = []
    for name, config in MODELS.items():
        for label, flash, ckpt in (("no checkpointing, attention scores kept (eager / SDPA math)", False, False),
                                   ("no checkpointing, flash attention", True, False),
                                   ("checkpoint every layer, flash attention", True, True),
                                   ("checkpoint every layer, scores kept", False, True)):
            rows.append([name, label, gib(activation_bytes(config, flash=flash, checkpointing=ckpt))])
        rows.append([name, "decoder peak (MLM or SBO head, transient)", gib(head_transient_bytes(config))])
    tables.append((f"Activations per GPU, GiB, micro batch {MICRO_BATCH} x {SEQ_LEN}, bf16",
                   markdown(["model", "setting", "GiB"], rows, ["---", "---", "---:"])))

    # 4. Batch and learning rate (SpanBERT-large)
    budget = SPANBERT["batch"] * SPANBERT["steps"]  # sequences SpanBERT trained on
    reported = {256: "lr 1e-4, 2.4M steps (SpanBERT)", 2048: "lr 7e-4, 125K steps (RoBERTa, BERT-base size)",
                8192: "lr 1e-3, 31K steps (RoBERTa, base size); 4e-4, 500K steps (RoBERTa-large)",
                32768: "LAMB, 15.6K steps, BERT-large (You et al.)"}
    rows = []
    for gpus, micro, accumulation in ((8, 32, 1), (32, 8, 1), (64, 32, 1), (256, 32, 1), (1024, 8, 1),
                                      (1024, 32, 1)):
        batch = gpus * micro * accumulation
        steps = budget // batch
        ratio = batch / SPANBERT["batch"]
        if batch == SPANBERT["batch"]:
            optimizer, lrs, warmup = "AdamW", ["1e-4", "1e-4"], [f"{SPANBERT['warmup']:,} (reported)", "-"]
        else:
            optimizer = "AdamW" if batch <= ADAMW_LARGEST_REPORTED else "LAMB"
            # Adam's scaling rules say nothing about LAMB's learning rate: LAMB's paper tunes its own.
            lrs = ([lr_text(SPANBERT["lr"] * math.sqrt(ratio)), lr_text(SPANBERT["lr"] * ratio)]
                   if optimizer == "AdamW" else ["-", "-"])
            warmup = [f"{SPANBERT['warmup'] * SPANBERT['batch'] // batch:,}",
                      f"{round(ROBERTA_WARMUP_SHARE * steps):,}"]
        rows.append([gpus, micro, accumulation, f"{batch:,}", f"{steps:,}", optimizer, *lrs,
                     reported[batch], *warmup])
    tables.append((f"Batch and learning rate, SpanBERT-large, SpanBERT's {budget / 1e6:.1f}M sequences of {SEQ_LEN}",
                   markdown(["GPUs", "micro", "accum", "global batch", "steps", "optimizer", "lr sqrt",
                             "lr linear", "reported at this batch", "warmup: same seqs", "warmup: 6% of steps"],
                            rows, ["---:"] * 5 + ["---"] + ["---:"] * 2 + ["---"] + ["---:"] * 2)))

    # 5. Communication per optimizer step (accumulation 1)
    rows = []
    for name, (total, _) in counts.items():
        for gpus in GPU_COUNTS:
            dp, z3 = bytes_per_step(1, total, gpus), bytes_per_step(3, total, gpus)
            times = ([f"{ms(allreduce_seconds(dp, gpus, None))} (NVLink)"] + [""] * (len(NETWORK_GBPS) - 1)
                     if gpus <= GPUS_PER_NODE else
                     [f"{ms(allreduce_seconds(dp, gpus, g))} / {ms(allreduce_seconds(z3, gpus, g))}"
                      for g in NETWORK_GBPS])
            rows.append([name, gpus, f"{dp / 1e9:.2f}", f"{z3 / 1e9:.2f}"] + times)
    tables.append(("Communication per GPU per optimizer step, bf16, accumulation 1: GB each GPU sends, and the "
                   "time in ms as DP, ZeRO-1 or ZeRO-2 / ZeRO-3",
                   markdown(["model", "GPUs", "DP, ZeRO-1, ZeRO-2 GB", "ZeRO-3 GB"]
                            + [f"ms at {link(g)} Gb/s" for g in NETWORK_GBPS], rows,
                            ["---"] + ["---:"] * (3 + len(NETWORK_GBPS)))))

    # 6. Compute per micro step
    tokens = MICRO_BATCH * SEQ_LEN
    rows = [[name] + [ms(compute_seconds(total, tokens, gpu)) for gpu in PEAK_BF16_FLOPS]
            for name, (total, _) in counts.items()]
    tables.append((f"Compute per GPU per micro step ({MICRO_BATCH} x {SEQ_LEN} tokens), ms, at {MFU:.0%} of peak bf16",
                   markdown(["model"] + [f"{gpu} ({PEAK_BF16_FLOPS[gpu] / 1e12:.0f} TFLOP/s peak)"
                                         for gpu in PEAK_BF16_FLOPS], rows)))

    # 7. Data-parallel efficiency against sequences per GPU per optimizer step: bytes and FLOPs both scale with
    # the parameter count, so only the tokens per step, the GPU and the link matter (here 64+ GPUs, no overlap).
    comm = {g: allreduce_seconds(bytes_per_step(1, counts["spanbert-large"][0], 1024), 1024, g) for g in NETWORK_GBPS}
    rows = []
    for sequences in (8, 32, 64, 128, 256):
        row = [sequences]
        for gpu in PEAK_BF16_FLOPS:
            compute = compute_seconds(counts["spanbert-large"][0], sequences * SEQ_LEN, gpu)
            row += [f"{compute / (compute + comm[g]):.0%}" for g in NETWORK_GBPS]
        rows.append(row)
    tables.append(("Data-parallel efficiency (compute / (compute + all-reduce), no overlap) by sequences per GPU "
                   "per optimizer step (micro batch x accumulation), either model",
                   markdown(["sequences/GPU/step"] + [f"{gpu} {link(g)} Gb/s" for gpu in PEAK_BF16_FLOPS
                                                      for g in NETWORK_GBPS], rows)))

    # 8. Which limit comes first: ZeRO-1 (ZeRO-0 where the batch needs LAMB), micro batch 32. Gradient bytes
    # and FLOPs both grow with the parameter count, so the efficiency columns hold for either model.
    total = counts["spanbert-large"][0]
    rows = []
    for gpus in GPU_COUNTS:
        stage = 1 if gpus * MICRO_BATCH <= ADAMW_LARGEST_REPORTED else 0  # LAMB runs without ZeRO
        memory = {name: zero_gpu_bytes(stage, *counts[name], gpus) + activation_bytes(config)
                  + head_transient_bytes(config) for name, config in MODELS.items()}
        for gbps in (None,) if gpus <= GPUS_PER_NODE else NETWORK_GBPS:
            comm = allreduce_seconds(bytes_per_step(1, total, gpus), gpus, gbps)
            row = [gpus, link(gbps), " / ".join(gib(m) for m in memory.values()),
                   f"{gpus * MICRO_BATCH:,}"]
            limits = []
            for gpu in PEAK_BF16_FLOPS:
                compute = compute_seconds(total, tokens, gpu)
                efficiency = [compute / (compute + exposed_seconds(compute, comm, overlap))
                              for overlap in (False, True)]
                batches = [gpus * MICRO_BATCH * accumulation_for(TARGET_EFFICIENCY, compute, comm, overlap)
                           for overlap in (True, False)]
                row.append(f"{span(efficiency, '{:.0%}')}, {span(batches, '{:,}')}")
                limits.append(first_limit(max(memory.values()), gpus * MICRO_BATCH, *batches))
            row.append(limits[0] if limits[0] == limits[1] else f"A100: {limits[0]}; H100: {limits[1]}")
            rows.append(row)
    tables.append((f"What limits first, micro batch {MICRO_BATCH}, either model",
                   markdown(["GPUs", "Gb/s", "GiB/GPU large / 1B", "batch at A=1",
                             f"A100: efficiency at A=1; batch for {TARGET_EFFICIENCY:.0%}", "H100: same",
                             "first limit"], rows, ["---:"] * 6 + ["---"])))

    # 9. The two simulated nodes (tests/multinode): the bytes a step's all-reduce moves, for the timings
    # benchmarks/allreduce.py measures there (filled in by hand in the doc)
    rows = []
    for name, (params, _) in nodes_models.items():
        size = params * 4  # the CPU runs train in fp32 (ds_configs/cpu_zero2.json has no bf16 block)
        rows.append([f"`{name}` (vocab {tiny_vocab})", f"{params:,}", f"{size / 1e6:.1f}",
                     f"{ring_allreduce_bytes(params, 2, 4) / 1e6:.1f}", "TODO(measured)"])
    tables.append(("Checked on the two simulated nodes",
                   markdown(["model", "params", "fp32 gradient, MB", "each of 2 ranks sends, MB", "measured"], rows,
                            ["---", "---:", "---:", "---:", "---:"])))

    return {"params": {**{name: c[0] for name, c in counts.items()}, "tiny": tiny[0]},
            "largest_layer": {name: c[1] for name, c in counts.items()}, "tables": tables}


def span(values, form):
    """'low-high' of two numbers, or one number when they agree."""
    low, high = sorted(values)
    return form.format(low) if form.format(low) == form.format(high) else f"{form.format(low)}-{form.format(high)}"


def first_limit(memory, batch_at_one, batch_overlapped, batch_not_overlapped):
    """What stops scaling first for one (GPUs, network, GPU) cell; the batches are those the accumulation
    for TARGET_EFFICIENCY makes with the all-reduce ideally overlapped and not overlapped."""
    if memory > GPU_MEMORY_GIB * GIB:
        return "memory"
    if batch_at_one > LAMB_LARGEST_REPORTED:
        return "batch (past LAMB's 32K)"
    if batch_at_one > ADAMW_LARGEST_REPORTED:
        return "batch (past 8K: LAMB)"
    if batch_not_overlapped == batch_at_one:
        return "none"
    if batch_overlapped == batch_at_one:
        return "network unless overlapped"
    if batch_overlapped > ADAMW_LARGEST_REPORTED:
        return "network, then batch"
    return "network: accumulate"


def deepspeed_printout(counts):
    """DeepSpeed's own _all_cold tables (with offload options and CPU memory), for cross-checking."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for total, largest in counts:
            for gpus in GPU_COUNTS:
                nodes = gpus // GPUS_PER_NODE
                stage_1_and_2.estimate_zero2_model_states_mem_needs_all_cold(total, GPUS_PER_NODE, nodes)
                stage3.estimate_zero3_model_states_mem_needs_all_cold(total, largest, GPUS_PER_NODE, nodes)
    return out.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny-vocab", type=int, default=8000,
                        help="vocabulary of the models timed on the simulated nodes (the tests' shards have 8000)")
    parser.add_argument("--deepspeed-printout", action="store_true",
                        help="also print DeepSpeed's own estimator tables (all offload options)")
    args = parser.parse_args(argv)
    result = plan(args.tiny_vocab)
    print(f"Scale on paper: micro batch {MICRO_BATCH} x {SEQ_LEN}, {GPUS_PER_NODE} GPUs per node, "
          f"{MFU:.0%} of peak, {LINK_EFFICIENCY:.0%} link efficiency (assumptions, not measurements)")
    for title, table in result["tables"]:
        print(f"\n### {title}\n\n{table}")
    if args.deepspeed_printout:
        counts = [count_params(build_on_meta(config)) for config in MODELS.values()]
        print("\n```\n" + deepspeed_printout(counts) + "```")
    return result


if __name__ == "__main__":
    main()
