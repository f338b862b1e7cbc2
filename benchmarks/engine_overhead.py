"""What DeepSpeed's engine costs per training step: the same SpanBERT step (forward, backward,
clip, AdamW) through DeepSpeed ZeRO-0 and through a plain PyTorch loop, alternated in one run.

    python benchmarks/engine_overhead.py [--model small] [--seq-len 128] [--batch 32] [--steps 10]
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data", default=None, help="a shard folder (default: prepare python-docs into a temporary folder)")
    args = parser.parse_args()

    import deepspeed

    from spanbert_ds.data.loader import BatchPlan, MicroBatches
    from spanbert_ds.data.masking import MaskingConfig, SpanMasker
    from spanbert_ds.data.packing import PackedSamples
    from spanbert_ds.data.prepare import prepare
    from spanbert_ds.data.shards import Shards
    from spanbert_ds.model.objectives import OBJECTIVES
    from spanbert_ds.run.distributed import fill_rank_environment
    from spanbert_ds.model.config import model_config_for

    if args.data is None:
        args.data = os.path.join(tempfile.mkdtemp(), "shards")
        prepare("python-docs", args.data, vocab_size=8000)
    shards = Shards(args.data)
    samples = PackedSamples(shards, "full", args.seq_len, seed=0)
    masker = SpanMasker(MaskingConfig(), shards.vocab_size, shards.mask_id, shards.special_ids)
    plan = BatchPlan(len(samples), args.batch, args.batch, 1, 0, 0)
    batches = MicroBatches(samples, masker, plan, 0, args.steps + 2)
    config = model_config_for(args.model, shards.vocab_size, shards.pad_id, "the shards")

    fill_rank_environment()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    ds_config = {
        "train_batch_size": args.batch, "train_micro_batch_size_per_gpu": args.batch, "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01, "torch_adam": True}},
        "zero_optimization": {"stage": 0}, "steps_per_print": 10**9,
    }
    torch.manual_seed(0)
    engine, *_ = deepspeed.initialize(model=OBJECTIVES["spanbert"](config), model_parameters=None, config=ds_config)
    torch.manual_seed(0)
    plain = OBJECTIVES["spanbert"](config)
    optimizer = torch.optim.AdamW(plain.parameter_groups(0.01), lr=1e-4)

    def deepspeed_step(batch):
        loss = engine(batch)["loss"]
        engine.backward(loss)
        engine.step()

    def plain_step(batch):
        loss = plain(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = {"deepspeed": [], "plain": []}
    for i in range(args.steps + 2):
        batch = batches[i]
        for name, step in (("deepspeed", deepspeed_step), ("plain", plain_step)) if i % 2 else (("plain", plain_step), ("deepspeed", deepspeed_step)):
            start = time.perf_counter()
            step(batch)
            if i >= 2:  # the first two steps warm up allocators and the optimizer state
                times[name].append(time.perf_counter() - start)

    tokens = args.batch * args.seq_len
    plain_ms, ds_ms = (statistics.median(times[n]) * 1e3 for n in ("plain", "deepspeed"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), deepspeed {deepspeed.__version__}")
    print(f"{args.model} SpanBERT (MLM+SBO), batch {args.batch} x seq {args.seq_len}, fp32, median of {args.steps} alternated steps")
    print(f"{'loop':<26}{'ms/step':>10}{'tokens/s':>12}{'ratio':>8}")
    print(f"{'plain PyTorch (peer)':<26}{plain_ms:>10.1f}{tokens / plain_ms * 1e3:>12.0f}{1.0:>8.2f}")
    print(f"{'DeepSpeed ZeRO-0':<26}{ds_ms:>10.1f}{tokens / ds_ms * 1e3:>12.0f}{plain_ms / ds_ms:>8.2f}")
    print(f"engine overhead: {100 * (ds_ms - plain_ms) / plain_ms:+.1f}% per step")


if __name__ == "__main__":
    main()
