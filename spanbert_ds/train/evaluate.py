"""Held-out evaluation during pretraining (`--eval-every N`).

The set is fixed for the whole run: up to `--eval-samples` blocks of the shards' held-out split
(`spanbert-ds prepare --valid-fraction F` or `--valid CORPUS`), packed as the objective trains and
masked once, with masks that depend only on the seed. Every evaluation scores the same predictions,
so the points of a run, and of two runs on the same data with the same seed and masking, compare.

Each rank scores its share of the blocks; the sums (summed loss, correct predictions and count of
each part: MLM, SBO, NSP) are all-reduced, so the figures do not depend on the number of ranks. Every
rank runs the same number of forward passes (a rank with a smaller share repeats one of its batches and
drops the result), since under ZeRO-3 each forward gathers weights from all ranks.
Beside them, the unigram baseline on the same masks: predicting every masked token from the
training split's token frequencies alone (accuracy: always its most frequent token; loss: the
cross-entropy of the add-one-smoothed unigram distribution), which is what a model that learned
nothing about context scores (the frequencies are counted once per shard folder and cached beside
it). Evaluation runs in eval mode (no dropout) without gradients and draws no random numbers, so it
does not change training.
"""

import numpy as np
import torch
import torch.distributed as dist

from spanbert_ds.data.shard_cache import cached
from spanbert_ds.errors import UserError

MASK_EPOCH = 0  # the masks of held-out block i are those training would draw for it in epoch 0
COUNT_CHUNK = 1 << 24  # tokens counted at once for the unigram baseline
UNIGRAM_VERSION = 1  # of the cached counts: bump when unigram_counts counts differently
SCORES = ("loss_sum", "correct", "count")


class HeldOutEvaluation:
    """`evaluation(engine)` -> {"eval_loss", "eval_<part>_loss", "eval_<part>_accuracy", baselines...}."""

    def __init__(self, shards, samples, masker, parts, seed, n_samples, micro_batch, world_size, rank):
        from spanbert_ds.data.packing import PackedSamples

        valid = shards.valid
        if valid is None:
            raise UserError(f"--eval-every: the shards in {shards.path} have no held-out split; prepare them with "
                            "`spanbert-ds prepare CORPUS OUT --valid-fraction 0.02` (or --valid CORPUS), or leave "
                            "evaluation off with --eval-every 0")
        held_out = PackedSamples(valid, samples.mode, samples.max_seq_len, seed)
        n = min(n_samples, len(held_out))
        chosen = np.sort(np.random.default_rng([seed, 0xE7A1]).permutation(len(held_out))[:n])
        self.n_samples, self.parts = n, parts
        self.batches = [self._masked(held_out, masker, seed, indices)
                        for indices in _micro_batches(chosen[rank::world_size], micro_batch)]
        passes = -(-(-(-n // world_size)) // micro_batch)  # the largest share's micro-batches, on every rank
        filler = self.batches[0] if self.batches else self._masked(held_out, masker, seed, chosen[:1])
        self.ignored = passes - len(self.batches)  # forward passes whose scores are dropped
        self.batches += [filler] * self.ignored
        self.baseline = {}
        if rank == 0:  # the baseline is a fact of the data: one rank computes it, on the whole set
            everything = [self._masked(held_out, masker, seed, indices) for indices in _micro_batches(chosen, 1024)]
            self.baseline = unigram_baseline(shards, everything, [p for p in parts if p in ("mlm", "sbo")])

    @staticmethod
    def _masked(held_out, masker, seed, indices):
        batch = masker(held_out.batch(indices), indices, MASK_EPOCH, seed)
        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}

    @torch.no_grad()
    def __call__(self, engine):
        training = engine.module.training
        engine.eval()
        sums = torch.zeros(len(self.parts) * len(SCORES), dtype=torch.float64, device=engine.device)
        try:
            for i, batch in enumerate(self.batches):
                out = engine({name: t.to(engine.device, non_blocking=True) for name, t in batch.items()}, scores=True)
                if i < len(self.batches) - self.ignored:
                    sums += torch.stack([out[f"{part}_{score}"].double() for part in self.parts for score in SCORES])
        finally:
            engine.train(training)
        dist.all_reduce(sums)
        metrics, total = {}, 0.0
        for part, (loss_sum, correct, count) in zip(self.parts, sums.view(-1, len(SCORES)).tolist()):
            metrics[f"eval_{part}_loss"] = loss_sum / max(count, 1)
            metrics[f"eval_{part}_accuracy"] = correct / max(count, 1)
            total += metrics[f"eval_{part}_loss"]
        return {"eval_loss": total, **metrics, **self.baseline}


class BlendedEvaluation:
    """A blend's held-out evaluation (`--data "0.7 wiki/ 0.3 books/"`): each corpus's own held-out split scored
    as HeldOutEvaluation scores one folder's (up to --eval-samples blocks each, its own unigram baseline), under
    eval_<corpus>/... (TensorBoard: eval/<corpus>/...), and the blended total under the plain eval_... names:
    the mean of the corpora's figures weighted as training draws them. Corpora without a held-out split are
    left out (`skipped`: (name, folder) pairs) and the weights of the others renormalised."""

    def __init__(self, samples, masker, parts, seed, n_samples, micro_batch, world_size, rank):
        held_out = [(name, part, w) for name, part, w in zip(samples.names, samples.parts, samples.weights)
                    if part.shards.valid is not None]
        self.skipped = [(name, str(part.shards.path)) for name, part in zip(samples.names, samples.parts)
                        if part.shards.valid is None]
        if not held_out:
            raise UserError(f"--eval-every: none of the blended shard folders ({', '.join(name for name, _ in self.skipped)}) "
                            "has a held-out split; prepare them with `spanbert-ds prepare CORPUS OUT --valid-fraction "
                            "0.02` (or --valid CORPUS), or leave evaluation off with --eval-every 0")
        total = sum(w for _, _, w in held_out)
        self.sets = [(name, w / total, HeldOutEvaluation(part.shards, part, masker, parts, seed, n_samples,
                                                         micro_batch, world_size, rank))
                     for name, part, w in held_out]
        self.n_samples = sum(evaluation.n_samples for _, _, evaluation in self.sets)

    def __call__(self, engine):
        scores = [(name, w, evaluation(engine)) for name, w, evaluation in self.sets]  # collective, in order
        metrics = {}
        for name, _, figures in scores:
            metrics.update({f"eval_{name}/{key[len('eval_'):]}": value for key, value in figures.items()})
        # the figures every corpus has (the baselines are on rank 0 only, which logs)
        shared = set.intersection(*(set(figures) for _, _, figures in scores))
        total = {key: sum(w * figures[key] for _, w, figures in scores) for key in sorted(shared)}
        return {**total, **metrics}


def _micro_batches(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def unigram_counts(shards):
    """How often each id occurs in the training split: counted once per shard folder (in chunks, so memory
    stays flat) and kept in its start-up cache (data/shard_cache.py), so later starts read no token."""
    def count():
        counts = np.zeros(shards.vocab_size, dtype=np.int64)
        for start in range(0, shards.n_tokens, COUNT_CHUNK):
            chunk = np.asarray(shards.tokens[start:start + COUNT_CHUNK])
            counts += np.bincount(chunk, minlength=shards.vocab_size)[:shards.vocab_size]
        return {"counts": counts}

    return cached(shards, "unigram", UNIGRAM_VERSION, {"vocab_size": shards.vocab_size}, count)["counts"]


def unigram_baseline(shards, batches, parts):
    """{"eval_<part>_unigram_accuracy", "eval_<part>_unigram_loss"} of the unigram model on these batches' labels."""
    special = shards.special_ids  # never a label: special tokens are not masked
    counts = unigram_counts(shards).astype(np.float64)
    counts[special] = 0.0
    probs = counts + 1.0  # add-one smoothing, so held-out tokens the training split lacks get a probability
    probs[special] = 0.0
    probs /= probs.sum()
    most_frequent = int(np.argmax(counts))
    baseline = {}
    for part in parts:
        labels = np.concatenate([b[f"{part}_labels"].numpy() for b in batches])
        if labels.size == 0:
            continue
        baseline[f"eval_{part}_unigram_accuracy"] = float(np.mean(labels == most_frequent))
        baseline[f"eval_{part}_unigram_loss"] = float(-np.mean(np.log(probs[labels])))
    return baseline
