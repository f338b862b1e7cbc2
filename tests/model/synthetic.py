"""Small synthetic batches in exactly the masker's output format (data/masking.py lists the keys).

Special ids: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK]; ordinary tokens are 5..vocab-1.
Samples have random lengths, so most carry padding. Span masking marks a few
non-overlapping spans inside each sample and lists one SBO target per masked token.
"""

import numpy as np
import torch

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def synthetic_batch(vocab_size, batch_size=4, seq_len=24, masking="span", pair=False, seed=0, min_len=None):
    rng = np.random.default_rng(seed)
    B, T = batch_size, seq_len
    input_ids = np.full((B, T), PAD, dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=np.int64)
    token_type_ids = np.zeros((B, T), dtype=np.int64)
    masked = np.zeros((B, T), dtype=bool)
    sbo = []  # (flat target, flat left, flat right, rel_pos)
    for b in range(B):
        n = int(rng.integers(min_len or T // 2, T + 1))  # real tokens, [CLS] .. [SEP] included
        input_ids[b, :n] = rng.integers(5, vocab_size, n)
        input_ids[b, 0], input_ids[b, n - 1] = CLS, SEP
        attention_mask[b, :n] = 1
        if pair:  # [CLS] a [SEP] b [SEP]
            cut = n // 2
            input_ids[b, cut] = SEP
            token_type_ids[b, cut + 1 : n] = 1
        real = np.flatnonzero(input_ids[b, :n] >= 5)
        if masking == "span":
            t = 1
            while t < n - 1:
                length = int(rng.integers(1, 4))
                if rng.random() < 0.3 and t + length < n - 1 and np.all(input_ids[b, t : t + length] >= 5):
                    masked[b, t : t + length] = True
                    for i in range(length):
                        sbo.append((b * T + t + i, b * T + t - 1, b * T + t + length, i + 1))
                    t += length + 1  # keep spans apart so boundaries are unmasked tokens
                else:
                    t += 1
        else:
            chosen = real[rng.random(len(real)) < 0.2]
            masked[b, chosen] = True
    mlm_positions = np.flatnonzero(masked.reshape(-1))
    labels = input_ids.reshape(-1)[mlm_positions].copy()
    masked_ids = input_ids.copy().reshape(-1)
    masked_ids[mlm_positions] = MASK
    sbo = np.array(sbo, dtype=np.int64).reshape(-1, 4)
    batch = {
        "input_ids": masked_ids.reshape(B, T),
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "mlm_positions": mlm_positions.astype(np.int64),
        "mlm_labels": labels,
        "sbo_positions": sbo[:, 0],
        "sbo_left": sbo[:, 1],
        "sbo_right": sbo[:, 2],
        "sbo_rel_pos": sbo[:, 3],
        "sbo_labels": input_ids.reshape(-1)[sbo[:, 0]].copy(),
    }
    if pair:
        batch["nsp_labels"] = rng.integers(0, 2, B).astype(np.int64)
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}


def tiny_config(**changes):
    from spanbert_ds.model.config import PRESETS

    values = dict(vocab_size=100, max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
    values.update(changes)
    return PRESETS["tiny"].replace(**values)
