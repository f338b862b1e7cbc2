"""Every rank gets an equal, disjoint share of each global batch, in an order fixed by (seed, epoch)."""

import numpy as np
import pytest

from spanbert_ds.data.loader import BatchPlan
from spanbert_ds.errors import UserError


def samples_of_step(plan, step):
    """All samples of one global step on one rank, micro-batch by micro-batch."""
    out = []
    for k in range(plan.accumulation):
        epoch, start = plan.locate(step * plan.accumulation + k)
        out.append(plan.order(epoch)[start : start + plan.micro_batch])
    return np.concatenate(out)


def test_ranks_share_each_global_batch_equally_and_disjointly_whatever_the_world_size():
    one = BatchPlan(n_samples=1000, global_batch=32, micro_batch=8, world_size=1, rank=0, seed=3)
    for step in (0, 5, 31, 40):  # 31 steps per epoch: 40 is in the second epoch
        whole = samples_of_step(one, step)
        for world in (2, 4):
            shares = [samples_of_step(BatchPlan(1000, 32, 8, world, r, 3), step) for r in range(world)]
            assert all(len(s) == 32 // world for s in shares)
            joined = np.concatenate(shares)
            assert len(set(joined.tolist())) == 32
            assert sorted(joined.tolist()) == sorted(whole.tolist())


def test_an_epoch_visits_each_sample_at_most_once_and_epochs_differ():
    plan = BatchPlan(n_samples=100, global_batch=16, micro_batch=4, world_size=2, rank=0, seed=1)
    seen = np.concatenate([samples_of_step(BatchPlan(100, 16, 4, 2, r, 1), s) for s in range(plan.steps_per_epoch) for r in range(2)])
    assert len(seen) == len(set(seen.tolist())) == 96  # the remainder of 4 samples is dropped, on every rank
    assert not np.array_equal(plan.order(0), plan.order(1))
    assert np.array_equal(plan.order(1), BatchPlan(100, 16, 4, 2, 1, 1).order(1))


def test_bad_batch_plans_are_user_errors():
    with pytest.raises(UserError, match="not a multiple"):
        BatchPlan(100, 30, 4, 2, 0, 1)
    with pytest.raises(UserError, match="fewer than one global batch"):
        BatchPlan(10, 16, 4, 2, 0, 1)
