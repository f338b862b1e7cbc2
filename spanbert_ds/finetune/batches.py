"""Feature rows -> batches: a training micro-batch's rows as tensors, and prediction across ranks.

Which rows a micro-batch of training holds is pretraining's plan (data/loader.py's BatchPlan with `wrap`:
epoch e visits the rows in a permutation drawn from (seed, e), the epoch's last step wraps round to its
first rows), so a batch is a function of (seed, step) alone, the same on any number of ranks, and a
resumed run sees exactly the batches it would have seen.

A batch is cut to the longest row it holds: features are padded to --max-seq-len, most rows are
shorter, and attention costs T^2.
"""

import math

import numpy as np
import torch
import torch.distributed as dist

PAD_LOGIT = -1e4  # logits at positions past a batch's longest row (which the model never saw)


def collate(features, rows, keys, device):
    """{key: int64 tensor} of `rows`, (B, T) arrays cut to the longest row's length."""
    length = int(features["attention_mask"][rows].sum(axis=1).max())
    batch = {}
    for key in keys:
        array = features[key][rows]
        if array.ndim == 2:
            array = array[:, :length]
        batch[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)
    return batch


@torch.no_grad()
def predict(engine, features, keys, micro_batch, world_size, rank):
    """Logits for every feature row (float32 numpy, padded back to the features' length), on rank 0;
    None on the others. Each rank runs its contiguous share; all run the same number of forward passes
    (a short share repeats its last batch and drops it), since under ZeRO-3 every forward gathers weights."""
    n = len(features["input_ids"])
    share = math.ceil(n / world_size)
    mine = np.arange(rank * share, min((rank + 1) * share, n))
    passes = math.ceil(share / micro_batch)
    full_length = features["input_ids"].shape[1]
    training = engine.module.training
    engine.eval()
    pieces = []
    try:
        for p in range(passes):
            rows = mine[p * micro_batch:(p + 1) * micro_batch]
            dropped = len(rows) == 0
            if dropped:  # nothing left here: repeat a row so the collective pattern matches
                rows = np.array([mine[-1] if len(mine) else 0])
            logits = engine(collate(features, rows, keys, engine.device))["logits"].float()
            if not dropped:
                pieces.append(_pad_length(logits, full_length).cpu().numpy())
    finally:
        engine.train(training)
    local = np.concatenate(pieces) if pieces else None
    gathered = [None] * world_size
    dist.all_gather_object(gathered, local)
    if rank != 0:
        return None
    return np.concatenate([g for g in gathered if g is not None])


def _pad_length(logits, length):
    if logits.dim() == 2:  # (B, C): one prediction per row
        return logits
    missing = length - logits.shape[1]
    return torch.nn.functional.pad(logits, (0, 0, 0, missing), value=PAD_LOGIT) if missing else logits
