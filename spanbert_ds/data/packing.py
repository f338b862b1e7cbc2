"""Cut a shard folder's token stream into fixed-length training samples.

Modes (names from the RoBERTa paper):
- "full" (RoBERTa's FULL-SENTENCES, cut at word starts rather than sentence ends): contiguous blocks
  of at most max_seq_len - 2 positions over all documents concatenated, with a [SEP] between two
  documents (it takes one position). Positions are counted in that "virtual" stream: document d's
  token j sits at doc_offsets[d] + d + j, and the separator after document d at doc_offsets[d + 1] + d.
- "doc" (DOC-SENTENCES; SpanBERT's released pretraining, fairseq's BlockDataset with break_mode="doc"):
  as many whole sentences of one document as fit in max_seq_len - 2 positions; a block never crosses
  a document and never cuts a sentence, so most blocks are shorter than the limit (padded). A sentence
  longer than a block, which the released code drops, is cut at word starts into pieces that fit
  instead, so no text is lost.
- "pair" (SEGMENT-PAIR, BERT with NSP): [CLS] A [SEP] B [SEP] within max_seq_len. Each document is
  tiled with regions of at most max_seq_len - 3 tokens (cut as in "doc" mode); a region is split into
  A and its continuation at a random sentence boundary (or, without one, at a word start near its
  middle). With probability 1/2 B is that continuation (label 0), else (label 1) it is the
  continuation of another document's random-next region, handed on around a random cycle so that
  every continuation is used (or, failing that, a random sentence of another document onwards),
  cut at its end to fit.

Block cuts are moved back (by at most `word_start_window` positions) to the nearest word start,
so blocks begin with whole words where possible; a block is therefore 0..window-1 positions
shorter than the nominal length. All sample boundaries are computed once per shard folder and
parameters into int64 arrays, kept in its start-up cache (data/shard_cache.py) and memory-mapped by
every later start, so `len()` and `batch()` are O(1) per sample and `batch()` gathers every token of a
batch with one fancy index into the memmap. `batch()` also checks the ids it read against vocab_size:
start-up trusts meta.json's max_id instead of reading every token.

Randomness (pair mode only) is a counter-based hash of (seed, region index), and the pairs are all
computed at construction, so a sample never depends on batch composition.
"""

import numpy as np

from spanbert_ds.data.hashing import uniform
from spanbert_ds.data.shard_cache import cached
from spanbert_ds.errors import UserError

MODES = ("full", "doc", "pair")
INDEX_VERSION = 1  # of the cached sample index: bump with any change here that moves a sample boundary
_CHUNK = 1 << 20  # positions of word-start flags examined at once while cutting blocks


class PackedSamples:
    """Fixed-length samples over a `Shards`; `batch(indices)` returns padded numpy arrays.

    `samples` (int64 [n, 2] of (start, end), [n, 4] of (a0, a1, b0, b1) in pair mode) and `nsp_labels`
    (int64 [n], pair mode; else None) are read-only. They are computed once per shard folder and
    parameters, and memory-mapped from the start-up cache afterwards (data/shard_cache.py): a start costs
    the same whatever the corpus size. `cache=False` computes them afresh (what the cache must equal)."""

    def __init__(self, shards, mode, max_seq_len, seed=0, word_start_window=8, cache=True):
        if mode not in MODES:
            raise UserError(f"packing mode {mode!r} is not one of {', '.join(MODES)}")
        if max_seq_len < 8:
            raise UserError(f"max_seq_len {max_seq_len} is too short; use at least 8 (typically 128 or 512)")
        self.shards, self.mode, self.max_seq_len, self.seed = shards, mode, int(max_seq_len), int(seed)
        self.window = int(word_start_window)
        m = shards.meta
        self.cls_id, self.sep_id, self.pad_id = m["cls_id"], m["sep_id"], m["pad_id"]
        self.vocab_size = m["vocab_size"]
        self._special = np.zeros(max(m["vocab_size"], max(m["special_ids"]) + 1), dtype=bool)
        self._special[m["special_ids"]] = True
        self._doc_offsets = np.asarray(shards.doc_offsets, dtype=np.int64)  # a view of the memmap: read lazily
        self._virtual = None  # full mode: (virtual document starts, document lengths, [SEP] positions)
        if cache:
            index = cached(shards, "samples", INDEX_VERSION, self.index_params(), self.compute_index)
        else:
            index = self.compute_index()
        self.samples, self.nsp_labels = index["samples"], index.get("nsp_labels")

    def index_params(self):
        """What the sample boundaries depend on besides the shards: the start-up cache's key."""
        params = {"mode": self.mode, "max_seq_len": self.max_seq_len, "word_start_window": self.window}
        if self.mode == "pair":  # the only mode with random draws
            params["seed"] = self.seed
        return params

    def compute_index(self):
        """{"samples": ..., "nsp_labels": ... (pair mode)} computed from the shards (a pass over the corpus
        with a Python step per block: what the start-up cache saves)."""
        if self.mode == "full":
            length = int(self._doc_offsets[-1]) + len(self._doc_offsets) - 2
            return {"samples": _cut_blocks(length, self.max_seq_len - 2, np.array([length]),
                                           self._virtual_word_starts, self.window)}
        if self.mode == "doc":
            return {"samples": self._sentence_blocks()}
        samples, labels = self._pairs()
        return {"samples": samples, "nsp_labels": labels}

    def _virtual_layout(self):
        """Full mode's (virtual start of each document, document lengths, virtual position of each [SEP]),
        computed at first use (O(documents))."""
        if self._virtual is None:
            offsets = np.asarray(self._doc_offsets)
            n_docs = len(offsets) - 1
            self._virtual = (offsets[:-1] + np.arange(n_docs), np.diff(offsets), offsets[1:-1] + np.arange(n_docs - 1))
        return self._virtual

    def __len__(self):
        return len(self.samples)

    def _virtual_to_real(self, v):
        """Virtual positions (full mode) -> (real token index, is the inter-document [SEP])."""
        vdoc_start, doc_len, _ = self._virtual_layout()
        d = np.searchsorted(vdoc_start, v, side="right") - 1
        offset = v - vdoc_start[d]
        is_sep = offset >= doc_len[d]
        return np.where(is_sep, 0, self._doc_offsets[d] + offset), is_sep

    def _virtual_word_starts(self, a, b):
        """Word-start flags of virtual positions [a, b): a slice of the real flags with False put in at
        the separators (no per-position lookup: this runs over the whole corpus at start-up)."""
        vsep = self._virtual_layout()[2]
        first, last = np.searchsorted(vsep, [a, b])
        real_start = a - first  # every separator before a shifts the real stream by one
        flags = np.asarray(self.shards.word_starts[real_start:real_start + (b - a) - (last - first)]) > 0
        return np.insert(flags, vsep[first:last] - a - np.arange(last - first), False)

    def _sentence_blocks(self):
        """[n_blocks, 2] (start, end): whole sentences of one document, greedily, up to max_seq_len - 2."""
        limit, ws = self.max_seq_len - 2, self.shards.word_starts
        sent = np.asarray(self.shards.sent_offsets, dtype=np.int64)
        pieces = [np.stack([sent[:-1], sent[1:]], axis=1)]
        long = np.flatnonzero(np.diff(sent) > limit)
        for k in long:  # few: each is cut on its own at word starts
            a, b = int(sent[k]), int(sent[k + 1])
            pieces.append(a + _cut_blocks(b - a, limit, np.array([b - a]),
                                          lambda x, y: np.asarray(ws[a + x:a + y], dtype=bool), self.window))
        pieces = np.concatenate([np.delete(pieces[0], long, axis=0), *pieces[1:]])
        starts, ends = pieces[np.argsort(pieces[:, 0], kind="stable")].T
        doc = np.searchsorted(self._doc_offsets, starts, side="right") - 1
        next_doc = np.searchsorted(starts, self._doc_offsets[doc + 1])  # first piece of the next document
        blocks, i = [], 0
        while i < len(starts):  # one Python step per block, as in _cut_blocks
            j = min(int(np.searchsorted(ends, starts[i] + limit, side="right")), int(next_doc[i]))
            blocks.append((starts[i], ends[j - 1]))
            i = j
        return np.array(blocks, dtype=np.int64).reshape(-1, 2)

    def _pairs(self):
        shards, target, window = self.shards, self.max_seq_len - 3, self.window
        n_docs = len(shards)
        if n_docs < 2:
            raise UserError(f"packing mode 'pair' needs at least 2 documents for its random next segments; "
                            f"{shards.path} has {n_docs} (separate documents by blank lines, or use mode 'full')")
        ws = shards.word_starts
        sent = np.asarray(shards.sent_offsets, dtype=np.int64)
        doc_sent = shards.doc_sentence_index()
        # Regions of at most `target` tokens tiling each document, cut at word starts as in doc mode.
        c0, c1 = _cut_blocks(int(self._doc_offsets[-1]), target, self._doc_offsets[1:],
                             lambda a, b: np.asarray(ws[a:b], dtype=bool), window).T
        n = len(c0)
        doc = np.searchsorted(self._doc_offsets, c0, side="right") - 1
        index = np.arange(n, dtype=np.uint64)
        u_split, u_label, u_order, u_doc, u_sent = (uniform(self.seed, index, k) for k in range(5))

        # A ends at a random sentence boundary inside the region, else at a word start near its middle.
        lo = np.searchsorted(sent, c0, side="right")  # the first boundary after c0
        inner = np.searchsorted(sent, c1, side="left") - lo  # boundaries strictly inside
        at_sentence = sent[np.minimum(lo + (u_split * inner).astype(np.int64), len(sent) - 1)]
        middle = _next_word_start(ws, c0 + (c1 - c0) // 2, c1, window)
        splittable = (c1 - c0) >= 2
        a1 = np.where(splittable, np.clip(np.where(inner > 0, at_sentence, middle), c0 + 1, c1 - 1), c1)
        labels = ((u_label < 0.5) | ~splittable).astype(np.int64)  # 1 = random next
        b0, b1 = a1.copy(), c1.copy()  # label 0: B is A's own continuation, which fits by construction

        # Label 1: B is the continuation of another random-next region, handed on around a cycle, so no
        # continuation goes unused (BERT puts unused segments back for the same reason). The cycle runs in
        # order of A's length, so a donor's A is about as long as the receiver's and a random pair fills
        # its row as a true pair does: the row's length must not give the label away.
        cycle = np.flatnonzero((labels == 1) & splittable)
        cycle = cycle[np.lexsort((u_order[cycle], a1[cycle] - c0[cycle]))]
        donor = np.roll(cycle, -1)
        other_doc = doc[donor] != doc[cycle]
        b0[cycle[other_doc]], b1[cycle[other_doc]] = a1[donor[other_doc]], c1[donor[other_doc]]
        # The rest (the cycle came round to the same document, or A is the whole region): a random
        # sentence of another document onwards.
        rest = np.flatnonzero(labels == 1)
        rest = rest[~np.isin(rest, cycle[other_doc])]
        other = (doc[rest] + 1 + (u_doc[rest] * (n_docs - 1)).astype(np.int64)) % n_docs
        r_sent = doc_sent[other] + (u_sent[rest] * (doc_sent[other + 1] - doc_sent[other])).astype(np.int64)
        b0[rest], b1[rest] = sent[r_sent], self._doc_offsets[other + 1]
        b1 = np.minimum(b1, b0 + (target - (a1 - c0)))  # A + B within target: B loses its end
        return np.stack([c0, a1, b0, b1], axis=1), labels

    def batch(self, indices):
        """The masker's input for the samples `indices`, padded numpy (B, T) arrays: input_ids,
        attention_mask, token_type_ids, word_starts, special_mask, and nsp_labels (B,) in pair mode."""
        idx = np.asarray(indices, dtype=np.int64)
        T = self.max_seq_len
        s = self.samples[idx]
        a0, la = s[:, 0], s[:, 1] - s[:, 0]
        pos = np.arange(T)[None, :]
        in_a = (pos >= 1) & (pos <= la[:, None])
        sep_at = [la + 1]
        if self.mode == "pair":
            b0, lb = s[:, 2], s[:, 3] - s[:, 2]
            in_b = (pos >= (la + 2)[:, None]) & (pos < (la + 2 + lb)[:, None])
            sep_at.append(la + 2 + lb)
            length = la + lb + 3
            src = np.where(in_a, a0[:, None] + pos - 1, b0[:, None] + pos - (la + 2)[:, None])
        else:
            in_b = np.zeros_like(in_a)
            length = la + 2
            src = a0[:, None] + pos - 1
        is_tok = in_a | in_b
        flat = src[is_tok]
        inner_sep = np.zeros(len(flat), dtype=bool)
        if self.mode == "full":
            flat, inner_sep = self._virtual_to_real(flat)
        # One gather per array for the whole batch; the memmap is read only where needed.
        tokens = np.asarray(self.shards.tokens[flat]).astype(np.int64)
        if tokens.size and tokens.max() >= self.vocab_size:  # start-up trusts meta.json's max_id: the ids read
            self._bad_id(flat, tokens)
        starts = np.asarray(self.shards.word_starts[flat]) > 0
        tokens[inner_sep] = self.sep_id
        starts[inner_sep] = False

        rows = np.arange(len(idx))
        input_ids = np.full((len(idx), T), self.pad_id, dtype=np.int64)
        input_ids[:, 0] = self.cls_id
        input_ids[is_tok] = tokens
        token_type_ids = np.zeros((len(idx), T), dtype=np.int64)
        for k, at in enumerate(sep_at):
            input_ids[rows, at] = self.sep_id
            token_type_ids[rows, at] = k
        token_type_ids[in_b] = 1
        special_mask = self._special[input_ids]
        word_starts = np.zeros((len(idx), T), dtype=bool)
        word_starts[is_tok] = starts
        word_starts &= ~special_mask
        out = {
            "input_ids": input_ids,
            "attention_mask": (pos < length[:, None]).astype(np.int64),
            "token_type_ids": token_type_ids,
            "word_starts": word_starts,
            "special_mask": special_mask,
        }
        if self.mode == "pair":
            out["nsp_labels"] = self.nsp_labels[idx]
        return out


    def _bad_id(self, positions, tokens):
        at = int(np.argmax(tokens >= self.vocab_size))
        raise UserError(f"{self.shards.path / 'tokens.bin'} holds token id {tokens[at]} at position {positions[at]}, "
                        f"but meta.json says vocab_size {self.vocab_size} (max_id {self.shards.meta.get('max_id')}); "
                        "the folder was changed after prepare: re-create it with `spanbert-ds prepare ... --overwrite`")


def _cut_blocks(length, limit, hard_ends, allowed, window):
    """Cut positions [0, length) into blocks of at most `limit` positions.

    A block ends at the next of `hard_ends` (sorted; the last is `length`) when that is within
    reach; otherwise its nominal end is moved back to the nearest position where `allowed(a, b)`
    (a bool array over [a, b)) is True, if one is within `window` positions. One Python step per
    block (not per token): each cut depends on the previous one.
    Returns int64 [n_blocks, 2] of (start, end).
    """
    starts, ends = [], []
    hard_ends = np.asarray(hard_ends, dtype=np.int64)
    h = 0
    chunk_start = chunk_end = 0
    last_allowed = None  # last_allowed[p - chunk_start] = last allowed position <= p, or -1
    b = 0
    while b < length:
        while hard_ends[h] <= b:
            h += 1
        e = b + limit
        hard = int(hard_ends[h])
        if e >= hard:
            e = hard
        else:
            if e >= chunk_end:
                chunk_start, chunk_end = b, min(length, b + max(_CHUNK, 2 * limit))
                flags = allowed(chunk_start, chunk_end)
                last_allowed = np.maximum.accumulate(np.where(flags, np.arange(chunk_start, chunk_end), -1))
            p = int(last_allowed[e - chunk_start])
            if p > b and e - p < window:
                e = p
        starts.append(b)
        ends.append(e)
        b = e
    return np.stack([np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)], axis=1)


def _next_word_start(word_starts, pos, limit, window):
    """For each position, the first word start in [pos, min(pos + window, limit)), else pos itself."""
    pos = np.asarray(pos, dtype=np.int64)
    if len(pos) == 0:
        return pos
    look = pos[:, None] + np.arange(window)[None, :]
    ok = look < np.asarray(limit)[..., None]
    flags = (np.asarray(word_starts[np.minimum(look, len(word_starts) - 1)]) > 0) & ok
    found = flags.any(axis=1)
    return np.where(found, pos + flags.argmax(axis=1), pos)

