"""Several shard folders as one sample space, drawn by weight: `--data "0.7 wiki/ 0.3 books/"`.

The form is Megatron-LM's (`--data-path 0.7 wiki 0.3 books`); one folder alone is the plain form and
is not blended at all (PackedSamples as before). Blending follows Megatron's BlendedDataset: the
corpora are interleaved so that every prefix of the sample stream holds each corpus in its share.
Megatron fills its dataset index position by position, giving each one to the corpus furthest below
its share (a C++ loop); here every corpus's k-th sample gets the due time (k + 1/2) / w_i and the
positions are the due times in order (a sort, vectorised; ties go to the corpus listed first). Among
the first n positions corpus i then has w_i n samples to within 1/2 + w_i (m - 2) / 2 for m corpora:
exactly rounded for two corpora, within one sample for three.

An epoch is a fixed number of positions, the corpora's samples added up (N = sum of len(part)), so a
corpus of weight w_i gives K_i ~ w_i N samples an epoch: more than it has (repeated) or fewer (the
rest come in the next epoch). Each corpus is read as one stream across epochs: its draw g = e K_i + k
is sample perm(i, g // len_i)[g % len_i], a permutation of the corpus per pass, so a corpus repeats
nothing before it has given every sample once. Permutations are sorted splitmix64 keys of (seed,
corpus, pass, sample) (hashing.py): nothing depends on the world size, the batch or what was drawn
before, so a resumed run or another number of ranks reads the same samples.

Global position q = e N + p (epoch e, position p) is the sample index the loader hands to the masker,
so masks are a function of (seed, epoch, blended position) as they are of (seed, epoch, sample) in a
single folder. The interleaving is the training order (loader.BatchPlan(interleaved=True)): the plan
does not shuffle positions again, which would undo the shares of each global batch.
"""

import math
import os
import re

import numpy as np

from spanbert_ds.data.hashing import GOLDEN, mix
from spanbert_ds.errors import UserError

EXAMPLE = '"0.7 wiki/ 0.3 books/"'
_PASS_STREAM = np.uint64(0xB1E7D5A3C0FFEE11)
_ODD = np.uint64(0xD1B54A32D192ED03)


def parse_data(text, flag="--data"):
    """`--data`'s value -> [(weight, folder)], weights normalised to sum to 1. One folder (a path, spaces
    and all, or one word) is [(1.0, folder)]; else weights and folders in pairs, Megatron's form."""
    text = str(text).strip()
    words = text.split()
    if not words:
        raise UserError(f"{flag} is empty; pass a shard folder, or weights and folders as {EXAMPLE}")
    if len(words) == 1 or os.path.isdir(text):
        return [(1.0, text)]
    if len(words) % 2:
        raise UserError(f"{flag} {text!r}: {len(words)} words; give one shard folder, or each folder after its "
                        f"weight, e.g. {EXAMPLE}")
    pairs = []
    for weight, folder in zip(words[::2], words[1::2]):
        try:
            value = float(weight)
        except ValueError:
            raise UserError(f"{flag} {text!r}: {weight!r} is not a weight; put a number before each folder, "
                            f"e.g. {EXAMPLE}") from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag} {text!r}: the weight of {folder} is {weight}; weights must be numbers above 0 "
                            f"(they are normalised to sum to 1), e.g. {EXAMPLE}")
        pairs.append((value, folder))
    seen = {}
    for _, folder in pairs:
        key = os.path.realpath(folder)
        if key in seen:
            raise UserError(f"{flag} {text!r} names {seen[key]} twice (as {folder}); give each folder one weight")
        seen[key] = folder
    total = math.fsum(w for w, _ in pairs)
    # rounded, so "0.7 a 0.3 b" and "7 a 3 b" are one blend to the last bit (and to a resume)
    return [(round(w / total, 12), folder) for w, folder in pairs]


def corpus_names(folders):
    """A short name per folder for logs and TensorBoard: its base name, made unique by the one before it."""
    parts = [os.path.normpath(os.path.abspath(f)).split(os.sep) for f in folders]
    depth = 1
    while True:
        names = ["_".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(map(len, parts)):
            break
        depth += 1
    names = [re.sub(r"[^A-Za-z0-9._-]+", "_", n).strip("_") or f"corpus{i}" for i, n in enumerate(names)]
    if len(set(names)) < len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    return names


def check_one_tokenizer(shards_list):
    """UserError unless every shard folder was tokenized with the first one's tokenizer (meta.json's sha256)."""
    first = shards_list[0]
    for other in shards_list[1:]:
        a, b = first.meta["tokenizer_sha256"], other.meta["tokenizer_sha256"]
        if a != b:
            raise UserError(f"{other.path} was tokenized with another tokenizer than {first.path} (tokenizer "
                            f"sha256 {b[:12]} vs {a[:12]}); blended folders must share one: re-prepare it with "
                            f"`spanbert-ds prepare CORPUS {other.path} --tokenizer {first.path / 'tokenizer.json'} "
                            "--overwrite`")


def interleave(weights, n):
    """(corpus of each of n positions, the corpus's draw number there): due times (k + 1/2) / w_i in order."""
    weights = np.asarray(weights, dtype=np.float64)
    per = [np.arange(int(math.ceil(w * n)) + len(weights) + 1, dtype=np.int64) for w in weights]  # enough for n
    due = np.concatenate([(k + 0.5) / w for k, w in zip(per, weights)])
    corpus = np.concatenate([np.full(len(k), i, dtype=np.int64) for i, k in enumerate(per)])
    first = np.lexsort((corpus, due))[:n]  # ties: the corpus listed first
    draw = np.concatenate(per)[first]
    return corpus[first].astype(np.min_scalar_type(len(weights))), draw


class BlendedSamples:
    """PackedSamples of several corpora as one: len() positions an epoch, batch(global positions)."""

    def __init__(self, parts, weights, names, seed):
        if len(parts) < 2:
            raise ValueError("a blend has at least two corpora")
        first = parts[0]
        for name, part in zip(names, parts):
            if (part.mode, part.max_seq_len) != (first.mode, first.max_seq_len):
                raise ValueError("blended corpora must be packed alike")
            if len(part) == 0:
                raise UserError(f"--data: {part.shards.path} ({name}) yields no samples; leave it out of the blend")
        self.parts, self.names, self.seed = list(parts), list(names), int(seed)
        self.weights = [float(w) for w in weights]
        self.mode, self.max_seq_len = first.mode, first.max_seq_len
        self.sizes = np.array([len(p) for p in parts], dtype=np.int64)
        self.n = int(self.sizes.sum())
        self._corpus, self._draw = interleave(self.weights, self.n)
        self.per_epoch = np.bincount(self._corpus, minlength=len(parts)).astype(np.int64)  # K_i
        self._perms = {}

    def __len__(self):
        return self.n

    def counts(self, n):
        """Samples of each corpus among the first n positions of an epoch."""
        return np.bincount(self._corpus[:n], minlength=len(self.parts)).astype(np.int64)

    def locate(self, positions):
        """(corpus, sample in that corpus) of global positions e N + p."""
        q = np.asarray(positions, dtype=np.int64).reshape(-1)
        epoch, p = np.divmod(q, self.n)
        corpus = self._corpus[p].astype(np.int64)
        draw = epoch * self.per_epoch[corpus] + self._draw[p]  # g: the corpus's draw number over the run
        passes, at = np.divmod(draw, self.sizes[corpus])
        local = np.empty_like(q)
        for i, k in set(zip(corpus.tolist(), passes.tolist())):
            rows = (corpus == i) & (passes == k)
            local[rows] = self._permutation(i, k)[at[rows]]
        return corpus, local

    def _permutation(self, corpus, k):
        """Corpus `corpus`'s order in pass k: its samples sorted by splitmix64 keys of (seed, corpus, k, sample)."""
        key = (corpus, k)
        if key not in self._perms:
            if len(self._perms) >= 2 * len(self.parts):  # a batch spans at most two passes of a corpus
                self._perms.pop(next(iter(self._perms)))
            with np.errstate(over="ignore"):
                head = mix(np.array([self.seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + GOLDEN)
                head = mix(head ^ _PASS_STREAM ^ np.uint64(corpus))
                head = mix(head ^ np.uint64(k))
                keys = mix(head + np.arange(self.sizes[corpus], dtype=np.uint64) * _ODD)  # distinct: a bijection
            self._perms[key] = np.argsort(keys, kind="stable")
        return self._perms[key]

    def batch(self, positions):
        """PackedSamples.batch of the samples at these global positions, rows in the positions' order."""
        corpus, local = self.locate(positions)
        out = None
        for i in np.unique(corpus):
            rows = np.flatnonzero(corpus == i)
            part = self.parts[i].batch(local[rows])
            if out is None:
                out = {name: np.empty((len(corpus), *value.shape[1:]), dtype=value.dtype)
                       for name, value in part.items()}
            for name, value in part.items():
                out[name][rows] = value
        return out

    def describe(self, steps, global_batch):
        """Per corpus: name, folder, weight, samples, samples an epoch, and samples a run of `steps` steps of
        `global_batch` draws (steps that do not fit in an epoch's positions are not run, as in BatchPlan)."""
        per_epoch_steps = self.n // global_batch
        epochs, rest = divmod(steps, per_epoch_steps)
        in_run = epochs * self.counts(per_epoch_steps * global_batch) + self.counts(rest * global_batch)
        return [{"name": name, "folder": str(part.shards.path), "weight": w, "samples": int(size),
                 "samples_per_epoch": int(k), "samples_in_run": int(r)}
                for name, part, w, size, k, r in zip(self.names, self.parts, self.weights, self.sizes,
                                                     self.per_epoch, in_run)]
