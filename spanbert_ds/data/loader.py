"""Batches for one rank: which samples, masked how, in what order.

Global step s of epoch e uses samples order(e)[s*G : (s+1)*G] of a permutation
seeded by (seed, e), with G the global batch (train_batch_size). Micro-step k of
the step goes to rank r as the slice starting at (k * world + r) * micro: every
rank gets an equal, disjoint share, and a step contains the same samples whatever
the world size, so runs on 1 and 2 ranks see the same global batches. Steps that
would need more samples than an epoch has left are not run (no rank runs short);
with `wrap` (fine-tuning, where every row counts and a set may be smaller than one
batch) the epoch's last step wraps round to its first samples instead.

Masks are a function of (seed, epoch, sample index) only, so a resumed run sees
exactly the batches it would have seen.

A blend of corpora (blend.BlendedSamples) comes interleaved by weight: its plan is `interleaved`, and
order(e) is the global positions e*n .. (e+1)*n - 1 in turn, which the blend maps to its corpora's
samples; shuffling them again would undo the share of each corpus in every global batch.
"""

import functools
from dataclasses import dataclass

import numpy as np
import torch

from spanbert_ds.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    n_samples: int
    global_batch: int
    micro_batch: int
    world_size: int
    rank: int
    seed: int
    interleaved: bool = False  # the samples are a BlendedSamples, already in training order
    wrap: bool = False  # the last step of an epoch takes what is left and wraps round to the epoch's first samples

    def __post_init__(self):
        if self.global_batch % (self.micro_batch * self.world_size):
            raise UserError(
                f"train_batch_size {self.global_batch} is not a multiple of micro batch {self.micro_batch} "
                f"x world size {self.world_size}; fix train_batch_size or train_micro_batch_size_per_gpu"
            )
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the data has {self.n_samples} samples, fewer than one global batch of {self.global_batch}; "
                "use a larger corpus, a shorter --max-seq-len or a smaller train_batch_size"
            )

    @property
    def accumulation(self):
        return self.global_batch // (self.micro_batch * self.world_size)

    @property
    def steps_per_epoch(self):
        return -(-self.n_samples // self.global_batch) if self.wrap else self.n_samples // self.global_batch

    @functools.lru_cache(maxsize=2)  # an epoch's permutation is the one costly part; a step uses one or two
    def order(self, epoch):
        if self.interleaved:
            return np.arange(epoch * self.n_samples, (epoch + 1) * self.n_samples, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch, 0x5A5A]).permutation(self.n_samples)

    def dropout_seed(self, micro_index):
        """The seed of a micro-batch's dropout masks: a function of where it sits in the data order, so a
        resumed run, or a run on another number of ranks with the same micro batch, draws the same masks."""
        return hash((self.seed, *self.locate(micro_index))) & 0x7FFF_FFFF_FFFF_FFFF

    def locate(self, micro_index):
        """(epoch, start) of this rank's micro-batch number `micro_index` of the run in order(epoch)."""
        step, k = divmod(micro_index, self.accumulation)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        return epoch, step_in_epoch * self.global_batch + (k * self.world_size + self.rank) * self.micro_batch

    def micro_indices(self, micro_index):
        """(epoch, the sample indices of this rank's micro-batch number `micro_index` of the run)."""
        epoch, start = self.locate(micro_index)
        return epoch, self.order(epoch)[np.arange(start, start + self.micro_batch) % self.n_samples]


class MicroBatches(torch.utils.data.Dataset):
    """Item i is this rank's masked micro-batch number `first + i`, as torch tensors."""

    def __init__(self, samples, masker, plan, first, count):
        self.samples, self.masker, self.plan = samples, masker, plan
        self.first, self.count = first, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        epoch, indices = self.plan.micro_indices(self.first + i)
        batch = self.masker(self.samples.batch(indices), indices, epoch, self.plan.seed)
        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}


def micro_batch_loader(samples, masker, plan, first_micro, n_micro, num_workers, worker_init_fn=None):
    """A DataLoader yielding this rank's micro-batches first_micro .. first_micro + n_micro - 1 in order;
    `worker_init_fn` runs in each worker process (the trainer's: leave stop signals to the trainer)."""
    dataset = MicroBatches(samples, masker, plan, first_micro, n_micro)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        worker_init_fn=worker_init_fn,
    )

