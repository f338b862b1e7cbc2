"""A DeBERTa training step: our deberta backbone against transformers' DebertaV2ForMaskedLM, same weights.

    python benchmarks/deberta_step.py [--presets deberta-tiny deberta-mini] [--seq-lens 128 512] [--rounds 5]
    python benchmarks/deberta_step.py --presets deberta-v3-base --device cuda --engine deepspeed --dtype bf16

Both models hold the same weights (ours exported through interop/hf.py and loaded by transformers, EMD
off so the two compute the same function) and take the same masked batches of the built-in corpus
(RoBERTa-style token masking on full-length blocks, prepared into --shards if missing): forward, MLM loss,
backward and an AdamW step, taking turns step by step so that machine load hits both alike. Plain torch
steps run in fp32; --engine deepspeed puts each model in its own one-rank DeepSpeed engine (ZeRO 1, --dtype
mixed precision, torch's AdamW: benchmarks/train_step.py's deepspeed_engines), as train.py runs it.
Ours decodes the masked rows only, as every objective here does; transformers decodes every position.
The table gives each side's median step time, tokens/s and MFU (our objective's model FLOPs per step, the
same count for both, over the GPU's dense bf16 peak; n/a on CPU), the ratio (above 1: ours is faster), and
the largest difference of the two models' first-step MLM losses (fp32, before any step) as a check that
they computed the same thing. The presets take the shards' vocabulary (8000 for the built-in corpus), not
DeBERTa-v3's 128100.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)

sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # for train_step only: a site-packages `benchmarks` shadows ours
from train_step import deepspeed_engines, model_flops, peak_flops  # noqa: E402

sys.path.pop(0)  # and off again: benchmarks/kernels.py would shadow an optional package named `kernels`
from spanbert_ds.data.masking import MASKERS, MaskingConfig  # noqa: E402
from spanbert_ds.data.packing import PackedSamples  # noqa: E402
from spanbert_ds.data.prepare import prepare  # noqa: E402
from spanbert_ds.data.shards import Shards  # noqa: E402
from spanbert_ds.interop.hf import export_hf  # noqa: E402
from spanbert_ds.model.config import PRESETS  # noqa: E402
from spanbert_ds.model.objectives import OBJECTIVES  # noqa: E402


def batches(shards, seq_len, batch_size, count, seed=0):
    samples = PackedSamples(shards, "full", seq_len, seed)
    masker = MASKERS["token"](MaskingConfig(), shards.vocab_size, shards.mask_id, shards.special_ids)
    order = np.random.default_rng(seed).permutation(len(samples))
    out = []
    for i in range(count):
        index = order[i * batch_size:(i + 1) * batch_size]
        batch = {k: torch.from_numpy(v) for k, v in masker(samples.batch(index), index, 0, seed).items()}
        labels = torch.full_like(batch["input_ids"], -100)  # transformers' labels: -100 where nothing is masked
        labels.view(-1)[batch["mlm_positions"]] = batch["mlm_labels"]
        out.append((batch, labels))
    return out


def models(preset, vocab_size, seq_len):
    import transformers

    torch.manual_seed(0)
    config = PRESETS[preset].replace(vocab_size=vocab_size, max_position_embeddings=max(seq_len, 512))
    ours = OBJECTIVES["roberta"](config).train()
    with tempfile.TemporaryDirectory() as folder:
        export_hf(ours, config, None, folder)
        theirs = transformers.DebertaV2ForMaskedLM.from_pretrained(folder).train()
    return ours, theirs


def timer(model, loss_of, device, engine=False):
    """A step function of (batch, labels) -> (seconds, loss); `engine`: `model` is a DeepSpeed engine."""
    optimizer = None if engine else torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch, labels):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = loss_of(model, batch, labels)
        if engine:
            model.backward(loss)
            model.step()
        else:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, loss.item()

    return step


def our_loss(model, batch, labels):
    return model(batch)["loss"]


def their_loss(model, batch, labels):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["deberta-tiny", "deberta-mini"],
                        choices=[name for name in PRESETS if name.startswith("deberta")])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per side (median reported)")
    parser.add_argument("--shards", default=os.path.join(REPO, ".cache", "bench_shards", "python-docs"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engine", default="torch", choices=["torch", "deepspeed"],
                        help="torch: plain AdamW steps; deepspeed: each model in a DeepSpeed engine (ZeRO 1)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="the engine's precision (--engine deepspeed; plain torch steps are fp32)")
    args = parser.parse_args(argv)
    if args.engine == "torch" and args.dtype != "fp32":
        parser.error("--dtype bf16/fp16 needs --engine deepspeed (plain torch steps run in fp32)")
    device = torch.device(args.device)
    if os.path.isfile(os.path.join(args.shards, "meta.json")):
        shards = Shards(args.shards)
    else:
        shards = prepare("python-docs", args.shards, tokenizer="wordpiece", vocab_size=8000)
    where = (f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
             if device.type == "cpu" else torch.cuda.get_device_name(device))
    engine = "DeepSpeed engines (ZeRO 1)" if args.engine == "deepspeed" else "plain torch AdamW"
    peak = peak_flops(device)
    print(f"DeBERTa training step, ours vs transformers' DebertaV2ForMaskedLM: batch {args.batch_size}, {args.dtype}, "
          f"{engine}, dropout on, {where}; MFU over "
          + (f"{peak / 1e12:.0f} TFLOP/s (dense bf16 peak)" if peak else "n/a (no known peak for this device)"))
    print(f"{'model':<16} {'T':>5} {'ours ms':>9} {'HF ms':>9} {'ours tok/s':>11} {'HF tok/s':>9} {'ours MFU':>8} "
          f"{'HF MFU':>7} {'ratio':>6} {'step-1 loss diff':>17}")
    rows = []
    for preset in args.presets:
        for seq_len in args.seq_lens:
            data = [({k: v.to(device) for k, v in batch.items()}, labels.to(device))
                    for batch, labels in batches(shards, seq_len, args.batch_size, args.rounds + 1)]
            ours, theirs = (model.to(device) for model in models(preset, shards.vocab_size, seq_len))
            # The first step's losses, before either model moves, in eval mode: the same function of the weights.
            ours.eval(), theirs.eval()
            with torch.no_grad():
                difference = abs(our_loss(ours, *data[0]).item() - their_loss(theirs, *data[0]).item())
            ours.train(), theirs.train()
            flops = model_flops(ours, data[0][0])
            if args.engine == "deepspeed":
                ours, theirs = deepspeed_engines([ours, theirs], args.batch_size, args.dtype, device)
            use_engine = args.engine == "deepspeed"
            step_ours, step_theirs = timer(ours, our_loss, device, use_engine), timer(theirs, their_loss, device,
                                                                                      use_engine)
            step_ours(*data[0]), step_theirs(*data[0])  # warm-up
            times_ours, times_theirs = [], []
            for i, (batch, labels) in enumerate(data[1:]):  # alternating order, as benchmarks/train_step.py
                first, second = (step_ours, step_theirs) if i % 2 == 0 else (step_theirs, step_ours)
                a_time, b_time = first(batch, labels)[0], second(batch, labels)[0]
                times_ours.append(a_time if i % 2 == 0 else b_time)
                times_theirs.append(b_time if i % 2 == 0 else a_time)
            a, b = statistics.median(times_ours), statistics.median(times_theirs)
            tokens = args.batch_size * seq_len
            mfu = lambda seconds: "n/a" if peak is None else f"{flops / seconds / peak:.1%}"  # noqa: E731
            rows.append((preset, seq_len, a, b, tokens / a, tokens / b, flops / a / peak if peak else None,
                         flops / b / peak if peak else None))
            print(f"{preset:<16} {seq_len:>5} {a * 1e3:>9.1f} {b * 1e3:>9.1f} {tokens / a:>11.0f} {tokens / b:>9.0f} "
                  f"{mfu(a):>8} {mfu(b):>7} {b / a:>6.2f} {difference:>17.2e}")
            del ours, theirs, step_ours, step_theirs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
