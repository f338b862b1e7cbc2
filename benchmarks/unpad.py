"""Unpadded layers (model/padding.py) against the padded path, on the batches doc packing really makes.

    python benchmarks/unpad.py [--presets tiny small] [--seq-lens 128 512] [--rounds 5] [--shards DIR]

SpanBERT's blocks of whole sentences from one document leave padding in every batch. The same batches
(the built-in corpus, prepared into --shards if missing; span masking; SBO targets) go through the
`spanbert` objective with `unpad` on and off: forward, backward and an AdamW step in fp32, the two
models taking turns step by step so machine load hits both alike. The table gives the share of real
tokens, each path's median real tokens/s and the ratio.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)

from spanbert_ds.data.masking import MASKERS, MaskingConfig  # noqa: E402
from spanbert_ds.data.packing import PackedSamples  # noqa: E402
from spanbert_ds.data.prepare import prepare  # noqa: E402
from spanbert_ds.data.shards import Shards  # noqa: E402
from spanbert_ds.model.config import PRESETS  # noqa: E402
from spanbert_ds.model.objectives import OBJECTIVES  # noqa: E402


def batches(shards, seq_len, batch_size, count, seed=0):
    samples = PackedSamples(shards, "doc", seq_len, seed)
    masker = MASKERS["span"](MaskingConfig(), shards.vocab_size, shards.mask_id, shards.special_ids)
    order = np.random.default_rng(seed).permutation(len(samples))
    out = []
    for i in range(count):
        index = order[i * batch_size:(i + 1) * batch_size]
        out.append({k: torch.from_numpy(v) for k, v in masker(samples.batch(index), index, 0, seed).items()})
    return out


def step_timer(preset, vocab_size, unpad):
    torch.manual_seed(0)
    config = PRESETS[preset].replace(vocab_size=vocab_size, unpad=unpad)
    objective = OBJECTIVES["spanbert"](config).train()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)

    def step(batch):
        start = time.perf_counter()
        objective(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS))
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per path (median reported)")
    parser.add_argument("--shards", default=os.path.join(REPO, ".cache", "bench_shards", "python-docs"))
    args = parser.parse_args(argv)
    if os.path.isfile(os.path.join(args.shards, "meta.json")):
        shards = Shards(args.shards)
    else:
        shards = prepare("python-docs", args.shards, tokenizer="wordpiece", vocab_size=8000)
    print(f"unpadded vs padded layers: spanbert objective, doc packing of the built-in corpus, batch "
          f"{args.batch_size}, fp32, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'model':<8} {'T':>5} {'real %':>7} {'padded tok/s':>13} {'unpadded tok/s':>15} {'ratio':>6}")
    for preset in args.presets:
        for seq_len in args.seq_lens:
            data = batches(shards, seq_len, args.batch_size, args.rounds + 1)
            real = sum(int(b["attention_mask"].sum()) for b in data[1:])
            share = real / (args.rounds * args.batch_size * seq_len)
            steps = {unpad: step_timer(preset, shards.vocab_size, unpad) for unpad in (False, True)}
            times = {False: [], True: []}
            for i, batch in enumerate(data):
                for unpad, step in steps.items():
                    seconds = step(batch)
                    if i:  # the first step of each warms up
                        times[unpad].append(seconds)
            rate = {unpad: real / args.rounds / statistics.median(t) for unpad, t in times.items()}
            print(f"{preset:<8} {seq_len:>5} {100 * share:>6.1f}% {rate[False]:>13,.0f} {rate[True]:>15,.0f} "
                  f"{rate[True] / rate[False]:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
