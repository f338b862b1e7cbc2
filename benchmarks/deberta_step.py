"""A DeBERTa training step: our deberta backbone against transformers' DebertaV2ForMaskedLM, same weights.

    python benchmarks/deberta_step.py [--presets deberta-tiny deberta-mini] [--seq-lens 128 512] [--rounds 5]

Both models hold the same weights (ours exported through interop/hf.py and loaded by transformers, EMD
off so the two compute the same function) and take the same masked batches of the built-in corpus
(RoBERTa-style token masking on full-length blocks, prepared into --shards if missing): forward, MLM loss,
backward and an AdamW step, in fp32, taking turns step by step so that machine load hits both alike.
Ours decodes the masked rows only, as every objective here does; transformers decodes every position.
The table gives each side's median step time and the ratio (above 1: ours is faster), and the largest
difference of the two models' first-step MLM losses as a check that they computed the same thing.
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


def timer(model, loss_of):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch, labels):
        start = time.perf_counter()
        loss = loss_of(model, batch, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
    args = parser.parse_args(argv)
    if os.path.isfile(os.path.join(args.shards, "meta.json")):
        shards = Shards(args.shards)
    else:
        shards = prepare("python-docs", args.shards, tokenizer="wordpiece", vocab_size=8000)
    print(f"DeBERTa training step, ours vs transformers' DebertaV2ForMaskedLM: batch {args.batch_size}, fp32, dropout "
          f"on, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'model':<14} {'T':>5} {'ours ms':>9} {'HF ms':>9} {'ratio':>6} {'step-1 loss diff':>17}")
    rows = []
    for preset in args.presets:
        for seq_len in args.seq_lens:
            data = batches(shards, seq_len, args.batch_size, args.rounds + 1)
            ours, theirs = models(preset, shards.vocab_size, seq_len)
            # The first step's losses, before either model moves, in eval mode: the same function of the weights.
            ours.eval(), theirs.eval()
            with torch.no_grad():
                difference = abs(our_loss(ours, *data[0]).item() - their_loss(theirs, *data[0]).item())
            ours.train(), theirs.train()
            step_ours, step_theirs = timer(ours, our_loss), timer(theirs, their_loss)
            step_ours(*data[0]), step_theirs(*data[0])  # warm-up
            times_ours, times_theirs = [], []
            for batch, labels in data[1:]:
                times_ours.append(step_ours(batch, labels)[0])
                times_theirs.append(step_theirs(batch, labels)[0])
            a, b = statistics.median(times_ours), statistics.median(times_theirs)
            rows.append((preset, seq_len, a, b))
            print(f"{preset:<14} {seq_len:>5} {a * 1e3:>9.1f} {b * 1e3:>9.1f} {b / a:>6.2f} {difference:>17.2e}")
    return rows


if __name__ == "__main__":
    main()
