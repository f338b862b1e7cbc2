"""One pretraining step (forward + backward + AdamW) of our objectives against Hugging Face's BertForPreTraining.

    python benchmarks/train_step.py [--presets tiny small] [--rounds 7] [--device cpu]
    python benchmarks/train_step.py --presets spanbert-base --device cuda --engine deepspeed --dtype bf16 --seq-len 512

Same model config, same batch, same machine, same optimizer, fp32 unless --dtype says otherwise. With
--engine deepspeed every model runs in its own DeepSpeed engine (ZeRO stage 1, the dtype's mixed precision,
torch's AdamW; one process, world size 1): engine(batch), engine.backward, engine.step, as train.py does.
Throughput is tokens/s; MFU is our objective's model FLOPs per step (the same count for every model: the
work of the step, not what each implementation spends on it) over the GPU's dense bf16 peak. The models take
turns step by step (ours spanbert, ours bert, HF, ...) and the table reports each one's
median, so load from other processes on the machine hits all of them alike.

The batch is what the data pipeline gives: full 128-token blocks, 15% of the tokens
masked (in spans of Geometric(0.2) words, at most 10, for SpanBERT; single tokens for
BERT), SBO targets for every span token. The HF model gets the same masked positions
as `labels` (-100 elsewhere) and, like BERT, an NSP label.
"""

import argparse
import os
import platform
import socket
import statistics
import sys
import time

import numpy as np
import torch

# transformers probes for an optional top-level package named `kernels`; with this folder first on
# sys.path it would find benchmarks/kernels.py instead (and run its argument parser).
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from spanbert_ds.model.attention import ATTENTION_BACKENDS  # noqa: E402
from spanbert_ds.model.config import PRESETS  # noqa: E402
from spanbert_ds.model.objectives import OBJECTIVES  # noqa: E402

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # BERT uncased ids
FIRST_WORD_ID = 999  # ids below are [unused]/specials in BERT's vocabulary


def make_batch(vocab_size, B, T, seed=0):
    """Masked batches for both objectives over the same token blocks: (span batch, token batch, HF inputs)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_WORD_ID, vocab_size, (B, T))
    ids[:, 0], ids[:, -1] = CLS, SEP
    token_type_ids = np.zeros((B, T), dtype=np.int64)
    token_type_ids[:, T // 2 :] = 1  # BERT's pair: two halves

    # Span masking: gaps then spans, so that ~15% of the tokens are masked (one loop step per span).
    mean_span = 3.8
    targets = []  # (flat target, flat left, flat right, rel pos)
    for b in range(B):
        t = 1
        while True:
            start = t + int(rng.geometric(0.15 / (mean_span * 0.85)))
            length = min(int(rng.geometric(0.2)), 10)
            end = start + length - 1
            if end >= T - 2:
                break
            rel = np.arange(length)
            targets.append(np.stack([b * T + start + rel, np.full(length, b * T + start - 1),
                                     np.full(length, b * T + end + 1), rel + 1], axis=1))
            t = end + 2
    targets = np.concatenate(targets)
    flat = ids.reshape(-1)
    span = {
        "mlm_positions": targets[:, 0], "mlm_labels": flat[targets[:, 0]],
        "sbo_positions": targets[:, 0], "sbo_left": targets[:, 1], "sbo_right": targets[:, 2],
        "sbo_rel_pos": targets[:, 3], "sbo_labels": flat[targets[:, 0]],
    }
    masked_ids = flat.copy()
    masked_ids[targets[:, 0]] = MASK
    span.update(input_ids=masked_ids.reshape(B, T), attention_mask=np.ones((B, T), dtype=np.int64),
                token_type_ids=np.zeros((B, T), dtype=np.int64))

    # Token masking for BERT: 15% of the non-special tokens.
    inner = np.zeros((B, T), dtype=bool)
    inner[:, 1:-1] = True
    inner[:, T // 2 - 1] = False  # the middle [SEP]
    chosen = np.flatnonzero(inner.reshape(-1) & (rng.random(B * T) < 0.15))
    masked_ids = flat.copy()
    masked_ids[chosen] = MASK
    pair_ids = masked_ids.reshape(B, T)
    pair_ids[:, T // 2 - 1] = SEP
    token = {
        "input_ids": pair_ids, "attention_mask": np.ones((B, T), dtype=np.int64), "token_type_ids": token_type_ids,
        "mlm_positions": chosen, "mlm_labels": flat[chosen], "nsp_labels": rng.integers(0, 2, B),
    }
    for key in ("sbo_positions", "sbo_left", "sbo_right", "sbo_rel_pos", "sbo_labels"):
        token[key] = np.zeros(0, dtype=np.int64)
    labels = np.full(B * T, -100, dtype=np.int64)
    labels[chosen] = flat[chosen]
    hf = {
        "input_ids": token["input_ids"], "attention_mask": token["attention_mask"],
        "token_type_ids": token_type_ids, "labels": labels.reshape(B, T), "next_sentence_label": token["nsp_labels"],
    }
    to_torch = lambda d: {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in d.items()}  # noqa: E731
    return to_torch(span), to_torch(token), to_torch(hf)


def hf_model(config):
    import transformers

    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        hidden_dropout_prob=config.hidden_dropout, attention_probs_dropout_prob=config.attention_dropout,
        layer_norm_eps=config.layer_norm_eps,
    )
    return transformers.BertForPreTraining(hf_config)


def contenders(preset, batch_size, seq_len, device, attention_backend):
    config = PRESETS[preset].replace(attention_backend=attention_backend)
    span, token, hf_inputs = make_batch(config.vocab_size, batch_size, seq_len)
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    span, token, hf_inputs = move(span), move(token), move(hf_inputs)
    ours_span = OBJECTIVES["spanbert"](config).to(device)
    ours_bert = OBJECTIVES["bert"](config).to(device)
    hf = hf_model(config).to(device)
    # each loss is a function of what runs the model: the module itself, or its DeepSpeed engine
    return [
        ("transformers BertForPreTraining", hf, lambda m: m(**hf_inputs).loss),
        (f"ours spanbert ({config.attention_backend})", ours_span, lambda m: m(span)["loss"]),
        (f"ours bert ({config.attention_backend})", ours_bert, lambda m: m(token)["loss"]),
    ], len(span["mlm_positions"]), len(token["mlm_positions"]), model_flops(ours_span, span)


def deepspeed_engines(models, batch_size, dtype, device):
    """Each nn.Module in its own DeepSpeed engine (one process, world size 1): ZeRO stage 1, `dtype`
    (bf16, fp16 or fp32) mixed precision, torch's AdamW (FusedAdam would be JIT-compiled, needing nvcc)."""
    import deepspeed

    if not torch.distributed.is_initialized():  # a world of one, on a port nothing else holds
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(port))):
            os.environ[key] = value
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                                             init_method=f"tcp://127.0.0.1:{port}")
        deepspeed.init_distributed(verbose=False)
    config = {"train_batch_size": batch_size, "train_micro_batch_size_per_gpu": batch_size,
              "zero_optimization": {"stage": 1}, "steps_per_print": 10**9, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01, "torch_adam": True}},
              "bf16": {"enabled": dtype == "bf16"}, "fp16": {"enabled": dtype == "fp16", "initial_scale_power": 12}}
    engines = []
    for model in models:
        engine, _, _, _ = deepspeed.initialize(model=model.to(device), model_parameters=model.parameters(),
                                               config=config)
        engines.append(engine)
    return engines


def model_flops(objective, batch):
    """Our objective's training FLOPs for `batch` (encoder per token, decoders per masked row)."""
    per_token, per_row = objective.training_flops(batch["input_ids"].shape[1])
    rows = batch["mlm_positions"].numel() + (batch["sbo_labels"].numel() if "sbo_labels" in batch else 0)
    return per_token * int(batch["attention_mask"].sum()) + per_row * rows


def peak_flops(device):
    from spanbert_ds.run.monitor import device_peak_flops

    return device_peak_flops() if device.type == "cuda" else None


def timed_step(model, optimizer, loss_fn, device):
    """One step; `optimizer` None: `model` is a DeepSpeed engine (engine.backward, engine.step)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = loss_fn(model)
    if optimizer is None:
        model.backward(loss)
        model.step()
    else:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attention-backend", default="auto", choices=list(ATTENTION_BACKENDS))
    parser.add_argument("--engine", default="torch", choices=["torch", "deepspeed"],
                        help="torch: plain AdamW steps; deepspeed: each model in a DeepSpeed engine (ZeRO 1)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="the engine's precision (--engine deepspeed; plain torch steps are fp32)")
    args = parser.parse_args(argv)
    if args.engine == "torch" and args.dtype != "fp32":
        parser.error("--dtype bf16/fp16 needs --engine deepspeed (plain torch steps run in fp32)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = []
    peak = peak_flops(device)
    for preset in args.presets:
        models, n_span, n_token, flops = contenders(preset, args.batch_size, args.seq_len, device,
                                                    args.attention_backend)
        if args.engine == "deepspeed":
            engines = deepspeed_engines([model for _, model, _ in models], args.batch_size, args.dtype, device)
            models = [(name, engine, loss_fn) for (name, _, loss_fn), engine in zip(models, engines)]
            optimizers = [None] * len(models)
        else:
            optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-4) for _, model, _ in models]
        times = [[] for _ in models]
        for round_ in range(args.warmup + args.rounds):
            order = range(len(models)) if round_ % 2 == 0 else reversed(range(len(models)))
            for i in order:
                _, model, loss_fn = models[i]
                seconds = timed_step(model, optimizers[i], loss_fn, device)
                if round_ >= args.warmup:
                    times[i].append(seconds)
        tokens = args.batch_size * args.seq_len
        base, base_best = statistics.median(times[0]), min(times[0])
        for (name, _, _), t in zip(models, times):
            median = statistics.median(t)
            rows.append((preset, name, median * 1e3, tokens / median, base / median, base_best / min(t),
                         flops / median / peak if peak else None))
        print(f"[{preset}] masked tokens per batch: span {n_span}, token {n_token}; "
              f"step times (ms): " + "; ".join(f"{m[0]}: " + " ".join(f"{x * 1e3:.0f}" for x in t)
                                                 for m, t in zip(models, times)), file=sys.stderr)

    where = (f"{platform.machine()} {platform.system()}, {args.threads} threads, "
             if device.type == "cpu" else f"{torch.cuda.get_device_name(device)}, ")
    import transformers

    engine = "DeepSpeed engines (ZeRO 1)" if args.engine == "deepspeed" else "plain torch AdamW"
    print(f"train step (fwd+bwd+AdamW), {args.dtype}, {engine}, batch {args.batch_size} x seq {args.seq_len}, median "
          f"of {args.rounds} alternating steps; {where}torch {torch.__version__}, transformers {transformers.__version__}")
    print("MFU: our spanbert objective's model FLOPs per step, the same for every row, over "
          + (f"{peak / 1e12:.0f} TFLOP/s (dense bf16 peak)" if peak else "n/a (no known peak for this device)"))
    print("(step ms and tokens/s are medians; 'vs HF' is the ratio of medians, 'best' the ratio of the fastest steps,")
    print(" which load from other processes disturbs least)")
    print(f"{'preset':<14} {'model':<34} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} {'vs HF':>7} {'best':>7}")
    for preset, name, ms, tps, ratio, best, mfu in rows:
        mfu = "n/a" if mfu is None else f"{mfu:.1%}"
        print(f"{preset:<14} {name:<34} {ms:>9.1f} {tps:>10.0f} {mfu:>6} {ratio:>6.2f}x {best:>6.2f}x")
    return rows


if __name__ == "__main__":
    main()
