"""Masking: turn a packed batch into MLM (and SpanBERT SBO) training targets.

Three maskers share one interface, `masker(batch, sample_indices, epoch, seed) -> dict`:

- `TokenMasker` (BERT): each non-special token is chosen with probability 15%; a chosen
  token becomes [MASK] 80% of the time, a random token 10%, stays unchanged 10% (MaskingConfig's
  mask_prob / random_prob / keep_prob, which an objective may set otherwise: ELECTRA 85/0/15,
  DeBERTaV3 100/0/0).
- `WholeWordMasker`: the same choice made per word; all pieces of a word share it.
- `SpanMasker` (SpanBERT, Joshi et al. 2020): masks contiguous spans of whole words whose
  length in words follows a geometric distribution truncated to 1..10, 15% of the tokens
  in all, the 80/10/10 choice made once per span, and emits the span boundary objective
  (SBO) targets: for a span x_s..x_e, each target token x_i is predicted from the two
  boundary tokens x_{s-1}, x_{e+1} and its position p_{i-s+1} inside the span.

How SpanMasker differs from SpanBERT's released code (fairseq `masking.py`), on purpose:
its last span is cut short when the budget runs out, overlapping or touching spans are
merged (so the lengths it masks are not the distribution it draws from), and it draws spans
until the budget is crossed (which favours a long last span). Here, per sequence:
1. m = randomised rounding of mask_ratio x words / mean span length, independent of lengths;
2. m lengths in words drawn i.i.d. from the exact truncated geometric;
3. each span picks a segment (a run of words between special tokens, e.g. the two sides of
   an inner [SEP]) with room for it, then the spans of a segment are placed at random
   positions on word starts, with at least two free words between two spans, so spans never
   overlap or touch and every span keeps two unmasked boundary tokens of its own.
A span that finds no room after a few retries is dropped (counted in `last_stats`: about 3 in
100,000 at T=128/512 on real text), so the masked lengths follow the distribution exactly up
to that. Measured on the built-in corpus: 15.00% of tokens masked, mean 3.80 words (exact 3.797).

Randomness: every draw is a counter-based hash (splitmix64) of (seed, epoch, sample index,
stream, counter), computed with numpy over the whole batch. So the same (seed, epoch, index)
gives the same mask in any batch, a new epoch a new one (dynamic masking, as RoBERTa), and a
resumed run reproduces its masks without saving any generator state.
"""

from dataclasses import asdict, dataclass

import numpy as np

from spanbert_ds.data.hashing import GOLDEN, mix
from spanbert_ds.errors import UserError

# ---------------------------------------------------------------------------------------
# The batch: what every masker returns and every objective reads (the contract). B rows of T
# positions; "flat" positions index the (B*T) batch, b*T + t. All int64.
#   input_ids, attention_mask (1 real, 0 padding), token_type_ids    (B, T)
#   mlm_positions (N,) flat positions of the masked tokens, ascending; mlm_labels (N,) their ids
#   sbo_positions, sbo_left, sbo_right (M,) flat positions of each SBO target x_i and its span's
#       boundary tokens x_{s-1}, x_{e+1}; sbo_rel_pos (M,) i-s+1 in 1..max_span_targets; sbo_labels (M,)
#       (empty for maskers without spans)
#   nsp_labels (B,) 0 = B follows A, 1 = random next (pair packing only)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MLM_KEYS = ("mlm_positions", "mlm_labels")
SBO_KEYS = ("sbo_positions", "sbo_left", "sbo_right", "sbo_rel_pos", "sbo_labels")
NSP_KEYS = ("nsp_labels",)


# ---------------------------------------------------------------------------------------
# Counter-based random numbers (data/hashing.py): one stream per kind of draw, so that no two
# draws ever share a counter.

_U53 = 1.0 / (1 << 53)
_COUNT, _LENGTH, _SEGMENT, _PLACE, _ACTION, _RANDOM_ID, _TOKEN, _ORDER = range(1, 9)


def sample_keys(sample_indices, epoch, seed, batch_size=None):
    """One 64-bit key per sample from (seed, epoch, index): all its draws derive from it."""
    index = np.asarray(sample_indices, dtype=np.int64).reshape(-1).astype(np.uint64)
    if batch_size is not None and index.size != batch_size:
        raise ValueError(f"{index.size} sample indices for a batch of {batch_size} rows")
    with np.errstate(over="ignore"):
        head = mix(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + GOLDEN)
        head = mix(head ^ np.uint64(int(epoch) & 0xFFFFFFFFFFFFFFFF))
        return mix(head ^ mix(index + GOLDEN))


def _bits(keys, stream, counter):
    """64 random bits for draw number `counter` of `stream` in the sample of key `keys`.

    keys and counter broadcast against each other (e.g. keys[rows] with a counter per item).
    """
    with np.errstate(over="ignore"):
        stream_key = mix(keys ^ np.uint64((stream * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF))
        return mix(stream_key + np.asarray(counter).astype(np.uint64) * GOLDEN)


def _uniform(keys, stream, counter):
    """Uniform floats in [0, 1) with 53 random bits."""
    return (_bits(keys, stream, counter) >> np.uint64(11)).astype(np.float64) * _U53


def _runs(sorted_keys):
    """Start index and length of each run of equal values in a sorted array."""
    first = np.flatnonzero(np.diff(sorted_keys, prepend=sorted_keys[:1] - 1)) if sorted_keys.size else sorted_keys
    return first, np.diff(np.append(first, sorted_keys.size))


def _below(bits, n):
    """Map 64 random bits to integers in [0, n) (multiply-shift on the top 32 bits)."""
    return ((bits >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)


# ---------------------------------------------------------------------------------------
# Configuration.


# The [MASK] / random / unchanged split of a chosen token as each released code makes it, which an objective
# takes as its MaskingConfig defaults (model/objectives.py masking_defaults; mask-stats --split): BERT's
# 80/10/10; ELECTRA's pretrain_helpers.mask() 85% [MASK], the rest unchanged; DeBERTaV3's RTD task 100% [MASK].
SPLITS = {
    "bert": {"mask_prob": 0.8, "random_prob": 0.1, "keep_prob": 0.1},
    "electra": {"mask_prob": 0.85, "random_prob": 0.0, "keep_prob": 0.15},
    "debertav3": {"mask_prob": 1.0, "random_prob": 0.0, "keep_prob": 0.0},
}


@dataclass
class MaskingConfig:
    mask_ratio: float = 0.15  # fraction of the (non-special) tokens to predict
    geometric_p: float = 0.2  # span length in words ~ Geometric(p), truncated and renormalised
    min_span_words: int = 1
    max_span_words: int = 10
    # A chosen token/word/span becomes [MASK], a random non-special token, or stays unchanged: BERT's 80/10/10.
    # ELECTRA's released masking is 85/0/15, DeBERTaV3's RTD 100/0/0 (their objectives' masking_defaults).
    mask_prob: float = 0.8
    random_prob: float = 0.1
    keep_prob: float = 0.1
    max_span_targets: int = 15  # SBO targets per span (its first tokens)

    def __post_init__(self):
        def bad(key, why):
            raise UserError(f"masking config: {key}={getattr(self, key)!r} {why}")

        for key in ("mask_ratio", "geometric_p", "mask_prob", "random_prob", "keep_prob"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                bad(key, "is not a number; give a float")
        for key in ("min_span_words", "max_span_words", "max_span_targets"):
            if not isinstance(getattr(self, key), (int, np.integer)) or isinstance(getattr(self, key), bool):
                bad(key, "is not an integer; give a whole number")
        if not 0.0 < self.mask_ratio < 1.0:
            bad("mask_ratio", "is outside (0, 1); SpanBERT and BERT use 0.15")
        if not 0.0 < self.geometric_p <= 1.0:
            bad("geometric_p", "is outside (0, 1]; SpanBERT uses 0.2")
        if self.min_span_words < 1:
            bad("min_span_words", "must be at least 1")
        if self.max_span_words < self.min_span_words:
            bad("max_span_words", f"is below min_span_words={self.min_span_words}; SpanBERT uses 10")
        if self.max_span_words > 64:
            bad("max_span_words", "is above 64; spans that long leave no context to predict them from")
        if self.max_span_targets < 1:
            bad("max_span_targets", "must be at least 1; SpanBERT uses 15")
        for key in ("mask_prob", "random_prob", "keep_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad(key, "is outside [0, 1]")
        total = self.mask_prob + self.random_prob + self.keep_prob
        if abs(total - 1.0) > 1e-6:
            raise UserError(
                f"masking config: mask_prob + random_prob + keep_prob = {total:g}, not 1; "
                "BERT's split is 0.8 / 0.1 / 0.1"
            )

    @classmethod
    def from_spec(cls, spec, defaults=None):
        """`key=value,...` (train's and mask-stats' --masking) over `defaults` (an objective's own, e.g. ELECTRA's
        85% [MASK] / 15% unchanged; see model/objectives.py masking_defaults) over the defaults of the papers."""
        kinds = {name: type(value) for name, value in asdict(cls()).items()}
        values = dict(defaults or {})
        for pair in filter(None, (p.strip() for p in (spec or "").split(","))):
            key, sep, text = (part.strip() for part in pair.partition("="))
            if not sep or key not in kinds:
                raise UserError(f"--masking {spec!r}: {pair!r} is not key=value with a key among {', '.join(kinds)}")
            try:
                values[key] = kinds[key](text)
            except ValueError:
                raise UserError(f"--masking: {key}={text!r} is not "
                                f"{'a whole number' if kinds[key] is int else 'a number'}") from None
        return cls(**values)

    def span_length_probs(self):
        """P(length = k words) for k = min_span_words..max_span_words (truncated geometric)."""
        k = np.arange(self.min_span_words, self.max_span_words + 1)
        weights = self.geometric_p * (1.0 - self.geometric_p) ** (k - 1)
        return weights / weights.sum()

    @property
    def mean_span_words(self):
        """The exact mean span length in words (3.797 for p=0.2 on 1..10)."""
        k = np.arange(self.min_span_words, self.max_span_words + 1)
        return float((k * self.span_length_probs()).sum())

    def to_dict(self):
        return asdict(self)


# ---------------------------------------------------------------------------------------
# Maskers.


class _Masker:
    """What every masker shares: the ids it needs and the output it builds."""

    def __init__(self, config, vocab_size, mask_id, special_ids):
        self.config = config if config is not None else MaskingConfig()
        self.vocab_size = int(vocab_size)
        self.mask_id = int(mask_id)
        special = np.unique(np.asarray(list(special_ids), dtype=np.int64))
        if not 0 <= self.mask_id < self.vocab_size:
            raise UserError(f"masking: mask_id={self.mask_id} is outside the vocabulary of {self.vocab_size} ids")
        if special.size and (special.min() < 0 or special.max() >= self.vocab_size):
            raise UserError(f"masking: special ids {special.tolist()} fall outside the vocabulary of "
                            f"{self.vocab_size} ids")
        # Random replacements are drawn uniformly from the ids that are not special tokens.
        self.random_ids = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int64), special)
        if self.random_ids.size == 0:
            raise UserError("masking: the vocabulary has no non-special token to draw random replacements from")
        self.special_ids = special

    @classmethod
    def from_meta(cls, config, meta):
        """Build from a shard folder's meta.json dict (vocab_size, mask_id, special_ids)."""
        return cls(config, meta["vocab_size"], meta["mask_id"], meta["special_ids"])

    def _random_tokens(self, keys, flat_positions, T):
        """A random non-special id for each flat position b*T+t, a function of (key_b, t)."""
        rows, cols = np.divmod(flat_positions, T)
        bits = _bits(keys[rows], _RANDOM_ID, cols)
        return self.random_ids[_below(bits, self.random_ids.size).astype(np.int64)]

    def _finish(self, batch, keys, positions, actions, sbo=None):
        """Apply the 80/10/10 actions at sorted flat `positions` and build the output dict.

        actions: uint8 per position, 0 = [MASK], 1 = random token, 2 = unchanged.
        """
        input_ids = np.asarray(batch["input_ids"], dtype=np.int64)
        B, T = input_ids.shape
        flat = input_ids.reshape(-1)
        labels = flat[positions]
        masked = flat.copy()
        masked[positions[actions == 0]] = self.mask_id
        rand = positions[actions == 1]
        masked[rand] = self._random_tokens(keys, rand, T)
        empty = np.zeros(0, dtype=np.int64)
        out = {
            "input_ids": masked.reshape(B, T),
            "attention_mask": np.asarray(batch["attention_mask"], dtype=np.int64),
            "token_type_ids": np.asarray(
                batch["token_type_ids"] if "token_type_ids" in batch else np.zeros((B, T)), dtype=np.int64
            ),
            "mlm_positions": positions.astype(np.int64),
            "mlm_labels": labels,
        }
        sbo = sbo or {}
        for key in SBO_KEYS[:-1]:
            out[key] = sbo.get(key, empty)
        out["sbo_labels"] = flat[out["sbo_positions"]]
        if "nsp_labels" in batch:
            out["nsp_labels"] = np.asarray(batch["nsp_labels"], dtype=np.int64)
        return out

    def _action(self, u):
        """The 80/10/10 decision from uniforms u: 0 = [MASK], 1 = random, 2 = unchanged."""
        c = self.config
        return (u >= c.mask_prob).astype(np.uint8) + (u >= c.mask_prob + c.random_prob)

    def __repr__(self):
        return f"{type(self).__name__}({self.config}, vocab_size={self.vocab_size}, mask_id={self.mask_id})"


def _maskable(batch):
    """[B,T] bool: tokens that may be masked (real, not special)."""
    special = np.asarray(batch["special_mask"], dtype=bool)
    real = np.asarray(batch["attention_mask"]).astype(bool)
    return real & ~special


def word_unit_starts(batch, maskable=None):
    """[B,T] bool: the first token of each word, the unit that whole-word and span masking use.

    A token after a special token (or at t=0) starts a unit even if it is a continuation
    piece (a block may begin inside a word), so no word ever reaches across a special.
    """
    maskable = _maskable(batch) if maskable is None else maskable
    starts = np.asarray(batch["word_starts"], dtype=bool) & maskable
    after_break = np.ones_like(maskable)
    after_break[:, 1:] = ~maskable[:, :-1]
    return starts | (maskable & after_break)


class TokenMasker(_Masker):
    """BERT: every non-special token is chosen independently with probability mask_ratio."""

    def __call__(self, batch, sample_indices, epoch, seed):
        maskable = _maskable(batch)
        keys = sample_keys(sample_indices, epoch, seed, maskable.shape[0])
        B, T = maskable.shape
        bits = _bits(keys[:, None], _TOKEN, np.arange(T, dtype=np.uint64)[None, :])
        # Low 32 bits choose the token, high 32 bits its action: one hash per token.
        low = (bits & np.uint64(0xFFFFFFFF)).astype(np.float64) * (1.0 / 2**32)
        chosen = maskable & (low < self.config.mask_ratio)
        positions = np.flatnonzero(chosen)
        high = (bits.reshape(-1)[positions] >> np.uint64(32)).astype(np.float64) * (1.0 / 2**32)
        return self._finish(batch, keys, positions, self._action(high))


class WholeWordMasker(_Masker):
    """Whole-word masking: each word is chosen with probability mask_ratio, all its pieces
    together, with one 80/10/10 decision per word (random replacements differ per piece)."""

    def __call__(self, batch, sample_indices, epoch, seed):
        maskable = _maskable(batch)
        keys = sample_keys(sample_indices, epoch, seed, maskable.shape[0])
        B, T = maskable.shape
        starts = np.flatnonzero(word_unit_starts(batch, maskable))
        if len(starts) == 0:  # nothing maskable in the whole batch (e.g. a document of [UNK]s)
            return self._finish(batch, keys, starts, np.zeros(0, dtype=np.int8))
        rows, cols = np.divmod(starts, T)
        bits = _bits(keys[rows], _TOKEN, cols)
        low = (bits & np.uint64(0xFFFFFFFF)).astype(np.float64) * (1.0 / 2**32)
        high = (bits >> np.uint64(32)).astype(np.float64) * (1.0 / 2**32)
        chosen_word = low < self.config.mask_ratio
        # Broadcast each word's choice to its pieces: word id of a token = number of word
        # starts up to it, minus one; only maskable tokens belong to a word.
        flat_maskable = maskable.reshape(-1)
        is_start = np.zeros(B * T, dtype=bool)
        is_start[starts] = True
        word_of = np.cumsum(is_start) - 1
        chosen = flat_maskable & chosen_word[np.maximum(word_of, 0)] & (word_of >= 0)
        positions = np.flatnonzero(chosen)
        actions = self._action(high)[word_of[positions]]
        return self._finish(batch, keys, positions, actions)


class SpanMasker(_Masker):
    """SpanBERT span masking with SBO targets (see the module docstring for the algorithm).

    After each call, `last_stats` holds counts of that batch: spans drawn, spans dropped
    because their segment could not fit them, spans without SBO targets.
    """

    def __init__(self, config, vocab_size, mask_id, special_ids):
        super().__init__(config, vocab_size, mask_id, special_ids)
        c = self.config
        self.length_cdf = np.cumsum(c.span_length_probs())
        self.length_cdf[-1] = 1.0
        # Spans whose segment filled up retry elsewhere this many times before being dropped
        # (at T=128/512 on real text about 3 in 100,000 spans are dropped; `last_stats`).
        self.placement_rounds = 4
        self.last_stats = {}

    def __call__(self, batch, sample_indices, epoch, seed):
        c = self.config
        maskable = _maskable(batch)
        keys = sample_keys(sample_indices, epoch, seed, maskable.shape[0])
        B, T = maskable.shape
        flat_maskable = maskable.reshape(-1)

        # --- Units (words) and segments (maximal runs of words between special tokens). ---
        unit_start_mask = word_unit_starts(batch, maskable).reshape(-1)
        unit_start = np.flatnonzero(unit_start_mask)  # [U] flat index of each word's first token
        # A word ends at the next word start or the next non-maskable token.
        boundary = np.append(np.flatnonzero(unit_start_mask | ~flat_maskable), B * T)
        unit_end = boundary[np.searchsorted(boundary, unit_start, side="right")]
        unit_end = np.minimum(unit_end, (unit_start // T + 1) * T)  # a row's end ends its last word
        unit_row = unit_start // T
        seg_first_mask = np.ones(unit_start.size, dtype=bool)
        seg_first_mask[1:] = unit_start[1:] != unit_end[:-1]  # a special or padding before it
        seg_first_mask |= unit_start % T == 0  # or a new row
        seg_first = np.flatnonzero(seg_first_mask)  # [G] first unit of each segment
        G = seg_first.size
        seg_n_words = np.diff(np.append(seg_first, unit_start.size))
        seg_row = unit_row[seg_first]
        # A segment's right edge token can serve as boundary for one span only: if another
        # segment follows in the same row (an inner [SEP]), keep one free word before it.
        seg_next_same_row = np.zeros(G, dtype=bool)
        seg_next_same_row[:-1] = seg_row[1:] == seg_row[:-1]
        seg_end_gap = seg_next_same_row.astype(np.int64)

        # --- Number of spans per sequence, independent of their lengths. ---
        # A span of L words covers about L x (tokens per word) tokens, so spans of mean length
        # mu mask ratio x tokens when m = ratio x tokens / (mu x tokens per word)
        # = ratio x words / mu. Measured on real text: 15.00% +- 0.03 points, no calibration.
        row_words = np.bincount(unit_row, minlength=B)
        expected = c.mask_ratio * row_words / c.mean_span_words
        # Randomised rounding keeps E[m] exact: floor(x) + Bernoulli(frac(x)).
        u_count = _uniform(keys, _COUNT, 0)
        n_spans = np.floor(expected).astype(np.int64)
        n_spans += u_count < expected - n_spans
        S = int(n_spans.sum())
        span_row = np.repeat(np.arange(B), n_spans)
        span_j = np.arange(S) - np.repeat(np.cumsum(n_spans) - n_spans, n_spans)  # index within its row
        span_key = keys[span_row]

        # --- Lengths in words, i.i.d. from the truncated geometric. ---
        u_len = _uniform(span_key, _LENGTH, span_j)
        length = np.searchsorted(self.length_cdf, u_len, side="right") + c.min_span_words

        # --- Each span picks a segment of its row with room for it, weighted by the room left
        # (the number of places it has there when alone): the length decides where a span
        # can go, never the other way round. Spans of lengths L_i fit in a segment of n words when
        # sum(L_i + 2) <= n + 2 - end_gap (two free words between spans). Spans whose chosen
        # segment was filled by others first try again, for a few rounds. ---
        seg_cap = seg_n_words + 2 - seg_end_gap
        seg_used = np.zeros(G, dtype=np.int64)
        seg_of_span = np.full(S, -1, dtype=np.int64)
        row_seg_first = np.searchsorted(seg_row, np.arange(B))
        row_n_seg = np.bincount(seg_row, minlength=B)
        width = int(row_n_seg.max()) if G else 0
        tie = _bits(span_key, _ORDER, span_j)  # a random order among the spans of a segment
        todo = np.arange(S) if width else np.zeros(0, dtype=np.int64)
        for attempt in range(self.placement_rounds):
            if todo.size == 0:
                break
            need = length[todo] + 2
            cand = row_seg_first[span_row[todo]][:, None] + np.arange(width)[None, :]  # [S', width]
            valid = np.arange(width)[None, :] < row_n_seg[span_row[todo]][:, None]
            cand = np.where(valid, cand, 0)
            room = seg_cap[cand] - seg_used[cand] - need[:, None] + 1
            cum = np.cumsum(np.where(valid, np.maximum(room, 0), 0), axis=1)
            u = _uniform(span_key[todo], _SEGMENT, span_j[todo] + (attempt << 32)) * cum[:, -1]
            pick = np.minimum((cum <= u[:, None]).sum(axis=1), width - 1)
            pick = cand[np.arange(todo.size), pick]
            has_room = cum[:, -1] > 0  # no room anywhere in its row: dropped
            todo, pick, need = todo[has_room], pick[has_room], need[has_room]
            # Within each segment, in random order, keep the spans while they fit.
            o = np.lexsort((tie[todo], pick))
            todo, pick, need = todo[o], pick[o], need[o]
            cum_need = np.cumsum(need)
            first, count = _runs(pick)
            cum_need -= np.repeat(cum_need[first] - need[first], count)
            fit = seg_used[pick] + cum_need <= seg_cap[pick]
            seg_of_span[todo[fit]] = pick[fit]
            seg_used += np.bincount(pick[fit], weights=need[fit], minlength=G).astype(np.int64)
            todo = todo[~fit]
        order = np.flatnonzero(seg_of_span >= 0)
        dropped = int(S - order.size)
        order = order[np.lexsort((tie[order], seg_of_span[order]))]  # by segment, random order
        seg = seg_of_span[order]
        L = length[order]

        # --- Random placement: the free words of a segment are split into m+1 gaps at the
        # sorted positions of m i.i.d. uniform points (exchangeable, so every span is
        # equally likely anywhere); the spans sit in their random order with 2 words between.
        # Segments are in token order, so the spans come out sorted by position. ---
        if order.size:
            gstart, glen = _runs(seg)
            free = seg_cap[seg[gstart]] - seg_used[seg[gstart]]  # words left for the gaps, >= 0
            free_of = np.repeat(free, glen)
            u_place = _uniform(keys[span_row[order]], _PLACE, span_j[order])
            point = np.minimum(np.floor(u_place * (free_of + 1)).astype(np.int64), free_of)
            point = np.sort(point + np.repeat(seg[gstart], glen) * (T + 1))  # sort within segment
            point -= np.repeat(seg[gstart], glen) * (T + 1)
            # words before span j inside the segment = sum_{i<j} (L_i + 2)
            before = np.cumsum(L + 2) - (L + 2)
            before -= np.repeat(before[gstart], glen)
            first_word = seg_first[seg] + point + before  # global unit index of the span's first word
            s = unit_start[first_word]
            e = unit_end[first_word + L - 1] - 1  # inclusive last token
        else:
            s = e = np.zeros(0, dtype=np.int64)

        # --- MLM positions: every token of every span, ascending (spans are sorted). ---
        k = e - s + 1
        N = int(k.sum())
        span_of_tok = np.repeat(np.arange(s.size), k)
        offset = np.arange(N) - np.repeat(np.cumsum(k) - k, k)
        positions = s[span_of_tok] + offset
        span_action = self._action(_uniform(keys[span_row[order]], _ACTION, span_j[order]))
        actions = span_action[span_of_tok]

        # --- SBO targets: spans whose boundary tokens x_{s-1}, x_{e+1} are real tokens of
        # the same row ([CLS]/[SEP] count, padding does not). ---
        attention = np.asarray(batch["attention_mask"]).astype(bool).reshape(-1)
        left, right = s - 1, e + 1
        has_sbo = (s % T != 0) & ((e % T) != T - 1)
        has_sbo &= attention[np.clip(left, 0, B * T - 1)] & attention[np.clip(right, 0, B * T - 1)]
        n_targets = np.where(has_sbo, np.minimum(k, c.max_span_targets), 0)
        M = int(n_targets.sum())
        target_span = np.repeat(np.arange(s.size), n_targets)
        rel = np.arange(M) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets) + 1
        sbo = {
            "sbo_positions": s[target_span] + rel - 1,
            "sbo_left": left[target_span],
            "sbo_right": right[target_span],
            "sbo_rel_pos": rel.astype(np.int64),
        }
        self.last_stats = {
            "spans_drawn": S,
            "spans_dropped": dropped,
            "spans": int(s.size),
            "spans_without_sbo": int((~has_sbo).sum()),
            "segments": G,
        }
        return self._finish(batch, keys, positions, actions, sbo)


MASKERS = {"token": TokenMasker, "wholeword": WholeWordMasker, "span": SpanMasker}
