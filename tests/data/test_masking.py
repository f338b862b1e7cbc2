"""Tests of spanbert_ds/data/masking.py and mask_stats.py: statistics on real text, invariants,
determinism.

The text is the built-in corpus (CPython's documentation and docstrings, the shared
`python_docs_shards` fixture: a cased WordPiece of 8000 tokens), packed by `PackedSamples` in
all three modes, so rows hold inner [SEP]s between documents or segments, and some are padded.
"""

import numpy as np
import pytest
from scipy import stats

from spanbert_ds.cli import main as cli_main
from spanbert_ds.data.masking import (MLM_KEYS, MODEL_INPUTS, NSP_KEYS, SBO_KEYS, MaskingConfig, SpanMasker,
                                      TokenMasker, WholeWordMasker, word_unit_starts)
from spanbert_ds.data.packing import PackedSamples
from spanbert_ds.errors import UserError

MODES = ("full", "doc", "pair")


class RealText:
    """Packed samples of the built-in corpus, and the ids the maskers need."""

    def __init__(self, shards):
        self.shards = shards
        m = shards.meta
        self.vocab_size = m["vocab_size"]
        self.pad, self.unk, self.cls, self.sep, self.mask = (m[k] for k in ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id"))
        self.special_ids = m["special_ids"]
        self.tokens = np.asarray(shards.tokens, dtype=np.int64)
        self.word_starts = np.asarray(shards.word_starts) > 0
        self._packed = {}

    def packed(self, T, mode="full"):
        if (T, mode) not in self._packed:
            self._packed[T, mode] = PackedSamples(self.shards, mode, T, seed=0)
        return self._packed[T, mode]

    def batch(self, indices, T, mode="full"):
        return self.packed(T, mode).batch(np.asarray(indices, dtype=np.int64))

    def masker(self, kind, config=None):
        return kind.from_meta(config or MaskingConfig(), self.shards.meta)


@pytest.fixture(scope="module")
def text(python_docs_shards):
    return RealText(python_docs_shards)


def spans_of(out, batch):
    """Recover the spans from the output: maximal runs of consecutive masked positions."""
    pos = out["mlm_positions"]
    T = batch["input_ids"].shape[1]
    breaks = np.flatnonzero((np.diff(pos) != 1) | (np.diff(pos // T) != 0)) + 1
    starts = np.r_[0, breaks] if pos.size else np.zeros(0, dtype=np.int64)
    ends = np.r_[breaks, pos.size] - 1 if pos.size else starts
    return pos[starts], pos[ends]  # inclusive token positions


def unit_starts(batch):
    return word_unit_starts(batch)


@pytest.fixture(scope="module")
def span_runs(text):
    """Many masked batches at T=128 and T=512 and the spans recovered from them."""
    masker = text.masker(SpanMasker)
    runs = []
    for T, rows in ((128, 1024), (512, 256)):
        for epoch in range(12):
            mode = MODES[epoch % 3]
            n = len(text.packed(T, mode))
            idx = np.sort((np.arange(rows) * 3 + epoch * 397) % n)
            batch = text.batch(idx, T, mode)
            out = masker(batch, idx, epoch, seed=1234)
            runs.append((batch, out, dict(masker.last_stats)))
    return runs


@pytest.mark.slow
def test_span_masked_fraction_is_15_percent(span_runs):
    masked = sum(out["mlm_positions"].size for _, out, _ in span_runs)
    maskable = sum((b["attention_mask"].astype(bool) & ~b["special_mask"]).sum() for b, _, _ in span_runs)
    assert abs(masked / maskable - 0.15) < 0.005, masked / maskable


def span_word_lengths(span_runs):
    lengths = []
    for batch, out, _ in span_runs:
        s, e = spans_of(out, batch)
        cum = np.r_[0, np.cumsum(unit_starts(batch).reshape(-1))]
        lengths.append(cum[e + 1] - cum[s])
    return np.concatenate(lengths)


def test_span_length_mean_is_the_exact_mean(span_runs):
    cfg = MaskingConfig()
    assert abs(cfg.mean_span_words - 3.797) < 5e-4
    lengths = span_word_lengths(span_runs)
    assert lengths.size > 20000
    assert abs(lengths.mean() - cfg.mean_span_words) < 0.05, lengths.mean()


def test_span_length_histogram_matches_truncated_geometric(span_runs):
    cfg = MaskingConfig()
    lengths = span_word_lengths(span_runs)
    assert lengths.min() >= 1 and lengths.max() <= 10
    observed = np.bincount(lengths, minlength=11)[1:]
    expected = cfg.span_length_probs() * lengths.size
    p = stats.chisquare(observed, expected).pvalue
    assert p > 1e-3, (observed, expected.round(1), p)


def test_dropped_spans_are_rare(span_runs):
    drawn = sum(st["spans_drawn"] for _, _, st in span_runs)
    dropped = sum(st["spans_dropped"] for _, _, st in span_runs)
    assert dropped <= 0.002 * drawn, (dropped, drawn)


def test_each_span_shares_one_80_10_10_decision(span_runs, text):
    counts = np.zeros(3)
    for batch, out, _ in span_runs:
        s, e = spans_of(out, batch)
        orig = batch["input_ids"].reshape(-1)
        new = out["input_ids"].reshape(-1)
        span_of = np.repeat(np.arange(s.size), e - s + 1)
        pos = out["mlm_positions"]
        is_mask = np.bincount(span_of, weights=new[pos] == text.mask, minlength=s.size)
        changed = np.bincount(span_of, weights=(new[pos] != orig[pos]) & (new[pos] != text.mask), minlength=s.size)
        k = e - s + 1
        # all [MASK], or none: a span never mixes [MASK] with other actions
        assert np.all((is_mask == 0) | (is_mask == k))
        counts += [np.sum(is_mask == k), np.sum((is_mask == 0) & (changed > 0)), np.sum((is_mask == 0) & (changed == 0))]
    share = counts / counts.sum()
    assert np.allclose(share, [0.8, 0.1, 0.1], atol=0.01), share


def test_spans_start_and_end_on_word_boundaries(span_runs):
    for batch, out, _ in span_runs:
        s, e = spans_of(out, batch)
        starts = unit_starts(batch).reshape(-1)
        maskable = (batch["attention_mask"].astype(bool) & ~batch["special_mask"]).reshape(-1)
        assert starts[s].all()
        after = e + 1
        assert (starts[after] | ~maskable[after]).all()  # the next token begins a word or is special


def test_no_special_or_padding_token_is_masked(span_runs, text):
    for batch, out, _ in span_runs:
        pos = out["mlm_positions"]
        assert not batch["special_mask"].reshape(-1)[pos].any()
        assert batch["attention_mask"].reshape(-1)[pos].all()
        assert not np.isin(out["mlm_labels"], [text.pad, text.cls, text.sep, text.mask]).any()
        assert np.all(np.diff(pos) > 0)
        np.testing.assert_array_equal(out["mlm_labels"], batch["input_ids"].reshape(-1)[pos])


def test_spans_never_touch_or_overlap(span_runs):
    for batch, out, _ in span_runs:
        T = batch["input_ids"].shape[1]
        s, e = spans_of(out, batch)
        same_row = s[1:] // T == s[:-1] // T
        # two unmasked tokens between spans: each span has its own x_{s-1} and x_{e+1}
        assert np.all(s[1:][same_row] - e[:-1][same_row] >= 3)


def test_spans_never_cross_an_inner_sep(span_runs, text):
    for batch, out, _ in span_runs:
        s, e = spans_of(out, batch)
        ids = batch["input_ids"].reshape(-1)
        cum = np.r_[0, np.cumsum(ids == text.sep)]
        assert np.all(cum[e + 1] == cum[s])
    inner = sum(((b["input_ids"][:, :-1] == text.sep) & (b["attention_mask"][:, 1:] == 1)).sum() for b, _, _ in span_runs)
    assert inner > 1000  # many rows hold two segments or two documents


def check_sbo(batch, out, max_targets):
    T = batch["input_ids"].shape[1]
    s, e = spans_of(out, batch)
    real = batch["attention_mask"].reshape(-1).astype(bool)
    has = (s % T != 0) & (e % T != T - 1)
    has &= real[np.clip(s - 1, 0, None)] & real[np.clip(e + 1, None, real.size - 1)]
    n = np.where(has, np.minimum(e - s + 1, max_targets), 0)
    span = np.repeat(np.arange(s.size), n)
    rel = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 1
    np.testing.assert_array_equal(out["sbo_left"], s[span] - 1)
    np.testing.assert_array_equal(out["sbo_right"], e[span] + 1)
    np.testing.assert_array_equal(out["sbo_rel_pos"], rel)
    np.testing.assert_array_equal(out["sbo_positions"], s[span] + rel - 1)
    np.testing.assert_array_equal(out["sbo_labels"], batch["input_ids"].reshape(-1)[out["sbo_positions"]])
    masked = out["input_ids"].reshape(-1)
    # boundaries are never masked; the targets are
    assert not np.isin(out["sbo_left"], out["mlm_positions"]).any()
    assert not np.isin(out["sbo_right"], out["mlm_positions"]).any()
    assert np.isin(out["sbo_positions"], out["mlm_positions"]).all()
    assert masked.size == real.size
    return n


def test_sbo_boundaries_relative_positions_and_labels(span_runs):
    n = np.concatenate([check_sbo(batch, out, 15) for batch, out, _ in span_runs])
    assert n.max() <= 15 and (n > 0).mean() > 0.99


def test_sbo_targets_are_capped_per_span(text):
    masker = text.masker(SpanMasker, MaskingConfig(max_span_targets=3))
    idx = np.arange(256)
    batch = text.batch(idx, 128)
    out = masker(batch, idx, 0, 0)
    n = check_sbo(batch, out, 3)
    assert n.max() == 3 and out["sbo_rel_pos"].max() == 3


def test_sbo_needs_real_boundaries(text):
    """A span touching the row's edge (no [CLS]/[SEP] around it) gets no SBO targets."""
    masker = text.masker(SpanMasker)
    B, T = 64, 16
    ids = text.tokens[: B * T].reshape(B, T)
    batch = {
        "input_ids": ids,
        "attention_mask": np.ones((B, T), dtype=np.int64),
        "token_type_ids": np.zeros((B, T), dtype=np.int64),
        "word_starts": text.word_starts[: B * T].reshape(B, T) & (ids != text.sep),
        "special_mask": ids == text.sep,
    }
    out = masker(batch, np.arange(B), 0, 0)
    check_sbo(batch, out, 15)
    assert masker.last_stats["spans_without_sbo"] > 0


def row_view(out, T):
    """Per-row (position-in-row, label, masked id) tuples, to compare across batches."""
    pos = out["mlm_positions"]
    rows = pos // T
    return {
        r: (pos[rows == r] % T, out["mlm_labels"][rows == r], out["input_ids"][r][pos[rows == r] % T])
        for r in range(out["input_ids"].shape[0])
    }


@pytest.mark.parametrize("kind", [SpanMasker, TokenMasker, WholeWordMasker])
def test_same_seed_epoch_index_gives_the_same_mask_in_any_batch(text, kind):
    masker = text.masker(kind)
    T = 128
    idx = np.arange(100, 132)
    one = masker(text.batch(idx, T), idx, 3, 42)
    perm = np.r_[idx[::-1][:20], np.arange(900, 950)]  # other order, other neighbours
    two = masker(text.batch(perm, T), perm, 3, 42)
    a, b = row_view(one, T), row_view(two, T)
    for i, sample in enumerate(idx[12:]):
        j = int(np.flatnonzero(perm == sample)[0])
        for x, y in zip(a[12 + i], b[j]):
            np.testing.assert_array_equal(x, y)
    if kind is SpanMasker:
        # the SBO targets of a row do not depend on its neighbours either
        r1 = one["sbo_positions"] // T == 31
        r2 = two["sbo_positions"] // T == int(np.flatnonzero(perm == idx[31])[0])
        np.testing.assert_array_equal(one["sbo_rel_pos"][r1], two["sbo_rel_pos"][r2])
        np.testing.assert_array_equal(one["sbo_positions"][r1] % T, two["sbo_positions"][r2] % T)


@pytest.mark.parametrize("kind", [SpanMasker, TokenMasker, WholeWordMasker])
def test_a_new_epoch_or_seed_gives_a_new_mask(text, kind):
    masker = text.masker(kind)
    idx = np.arange(1, 17)
    batch = text.batch(idx, 128)
    base = masker(batch, idx, 0, 7)
    again = masker(batch, idx, 0, 7)
    np.testing.assert_array_equal(base["input_ids"], again["input_ids"])
    for epoch, seed in ((1, 7), (0, 8)):
        other = masker(batch, idx, epoch, seed)
        for r in range(16):  # every row changes, not just the batch as a whole
            assert not np.array_equal(base["input_ids"][r], other["input_ids"][r])


@pytest.mark.parametrize("kind", [SpanMasker, TokenMasker, WholeWordMasker])
def test_random_replacements_are_never_special_ids(text, kind):
    cfg = MaskingConfig(mask_prob=0.0, random_prob=1.0, keep_prob=0.0)
    masker = text.masker(kind, cfg)
    idx = np.arange(512)
    out = masker(text.batch(idx, 128), idx, 0, 0)
    new = out["input_ids"].reshape(-1)[out["mlm_positions"]]
    assert not np.isin(new, [text.pad, text.cls, text.sep, text.mask, text.unk]).any()
    # uniform over the rest of the vocabulary: ~8000 ids, ~9800 draws
    assert np.unique(new).size > 0.6 * text.vocab_size


def test_token_masker_rates(text):
    masker = text.masker(TokenMasker)
    orig, new, maskable = [], [], 0
    for epoch in range(4):
        idx = np.arange(512) + 800 * epoch
        batch = text.batch(idx, 128, MODES[epoch % 3])
        out = masker(batch, idx, epoch, 0)
        pos = out["mlm_positions"]
        assert not batch["special_mask"].reshape(-1)[pos].any()
        maskable += (batch["attention_mask"].astype(bool) & ~batch["special_mask"]).sum()
        orig.append(out["mlm_labels"])
        new.append(out["input_ids"].reshape(-1)[pos])
        assert out["sbo_positions"].size == 0 and out["sbo_labels"].dtype == np.int64
    orig, new = np.concatenate(orig), np.concatenate(new)
    assert abs(orig.size / maskable - 0.15) < 0.005
    share = [np.mean(new == text.mask), np.mean((new != text.mask) & (new != orig)), np.mean(new == orig)]
    assert np.allclose(share, [0.8, 0.1, 0.1], atol=0.01), share


def test_whole_word_masker_masks_whole_words_at_15_percent(text):
    masker = text.masker(WholeWordMasker)
    words = total = 0
    masked = maskable = 0
    for epoch in range(4):
        idx = np.arange(512) + 800 * epoch
        batch = text.batch(idx, 128, MODES[epoch % 3])
        out = masker(batch, idx, epoch, 0)
        m = np.zeros(batch["input_ids"].size, dtype=bool)
        m[out["mlm_positions"]] = True
        ok = (batch["attention_mask"].astype(bool) & ~batch["special_mask"]).reshape(-1)
        assert not (m & ~ok).any()
        word = np.cumsum(unit_starts(batch).reshape(-1))
        # within a word every piece has the same fate
        n_masked = np.bincount(word[ok], weights=m[ok])
        n_all = np.bincount(word[ok])
        assert np.all((n_masked == 0) | (n_masked == n_all))
        new = out["input_ids"].reshape(-1)
        is_mask = np.bincount(word[m], weights=new[m] == text.mask, minlength=n_all.size)
        assert np.all((is_mask == 0) | (is_mask == n_all))
        masked += m.sum()
        maskable += ok.sum()
        words += np.sum(n_masked > 0)
        total += np.sum(n_all > 0)
    assert abs(masked / maskable - 0.15) < 0.006
    assert abs(words / total - 0.15) < 0.006


def test_outputs_have_the_contract_keys_and_dtypes(text):
    idx = np.arange(8)
    batch = text.batch(idx, 64)
    batch["nsp_labels"] = np.arange(8) % 2
    for kind in (SpanMasker, TokenMasker, WholeWordMasker):
        out = text.masker(kind)(batch, idx, 0, 0)
        assert set(out) == {*MODEL_INPUTS, *MLM_KEYS, *SBO_KEYS, *NSP_KEYS}
        for key in MODEL_INPUTS:
            assert out[key].shape == (8, 64) and out[key].dtype == np.int64
        for key in (*MLM_KEYS, *SBO_KEYS, *NSP_KEYS):
            assert out[key].dtype == np.int64 and out[key].ndim == 1
        assert out["mlm_positions"].size == out["mlm_labels"].size
        np.testing.assert_array_equal(out["nsp_labels"], batch["nsp_labels"])
    assert batch["input_ids"][0, 0] == text.cls  # the input batch is not modified


def test_empty_and_tiny_rows_do_not_break_span_masking(text):
    masker = text.masker(SpanMasker)
    T = 8
    ids = np.full((3, T), text.pad)
    ids[0, :2] = [text.cls, text.sep]  # nothing to mask
    ids[1, :4] = [text.cls, 500, text.sep, text.sep]  # one word
    ids[2, :] = [text.cls, 500, text.sep, 501, 502, text.sep, 503, text.sep]
    batch = {
        "input_ids": ids,
        "attention_mask": (ids != text.pad).astype(np.int64),
        "token_type_ids": np.zeros_like(ids),
        "word_starts": np.isin(ids, [500, 501, 502, 503]),
        "special_mask": ~np.isin(ids, [500, 501, 502, 503]),
    }
    for epoch in range(50):
        out = masker(batch, np.arange(3), epoch, 0)
        assert not batch["special_mask"].reshape(-1)[out["mlm_positions"]].any()
        check_sbo(batch, out, 15)


@pytest.mark.parametrize(
    "bad",
    [
        {"mask_ratio": 0.0},
        {"mask_ratio": 1.5},
        {"geometric_p": 0.0},
        {"geometric_p": 1.2},
        {"min_span_words": 0},
        {"max_span_words": 0},
        {"min_span_words": 5, "max_span_words": 3},
        {"max_span_targets": 0},
        {"mask_prob": 0.5},
        {"random_prob": -0.1, "keep_prob": 0.3},
        {"mask_ratio": "0.15"},
        {"max_span_words": 2.5},
    ],
)
def test_bad_config_raises_user_error(bad):
    with pytest.raises(UserError, match="masking config"):
        MaskingConfig(**bad)


def test_bad_ids_raise_user_error():
    with pytest.raises(UserError, match="mask_id"):
        SpanMasker(MaskingConfig(), 100, 100, [0, 1])
    with pytest.raises(UserError, match="special ids"):
        SpanMasker(MaskingConfig(), 100, 5, [0, 200])


def test_mask_stats_command_prints_the_masking_statistics(python_docs_shards, capsys):
    rc = cli_main(["mask-stats", str(python_docs_shards.path), "--max-seq-len", "512", "--batches", "8",
                   "--batch-size", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    fraction = float(out.split("masked fraction")[1].split("%")[0])
    assert abs(fraction - 15.0) < 0.5
    assert "exact 3.797" in out and "per span" in out and "SBO targets per sequence" in out
    mean = float(out.split("span length in words")[1].split("mean")[1].split(",")[0])
    assert abs(mean - 3.797) < 0.25


@pytest.mark.parametrize("kind", ["token", "wholeword"])
def test_mask_stats_command_for_token_maskers(python_docs_shards, capsys, kind):
    rc = cli_main(["mask-stats", str(python_docs_shards.path), "--masker", kind, "--packing", "pair",
                   "--max-seq-len", "128", "--batches", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "80/10/10 per token" in out and "span length" not in out


def test_mask_stats_takes_the_masking_string_of_train(python_docs_shards, capsys):
    # the string a training run was given (train.py --masking ...) reproduces its masking here
    rc = cli_main(["mask-stats", str(python_docs_shards.path), "--max-seq-len", "256", "--batches", "8",
                   "--masking", "mask_ratio=0.3,max_span_words=5"])
    out = capsys.readouterr().out
    assert rc == 0
    assert abs(float(out.split("masked fraction")[1].split("%")[0]) - 30.0) < 1.0
    exact = MaskingConfig.from_spec("max_span_words=5").mean_span_words
    assert f"exact {exact:.3f}" in out and "on 1..5)" in out


@pytest.mark.parametrize("argv", [["--masking", "mask_ratio=1.5"], ["--batches", "0"], ["--masking", "max_span_words=0"],
                                  ["--masking", "span_len=3"], ["--masking", "max_span_words=2.5"]])
def test_mask_stats_command_rejects_bad_arguments_in_one_line(python_docs_shards, capsys, argv):
    rc = cli_main(["mask-stats", str(python_docs_shards.path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "error:" in err


@pytest.mark.parametrize("kind", [TokenMasker, WholeWordMasker, SpanMasker])
def test_a_batch_with_nothing_maskable_masks_nothing(text, kind):
    # a row of [CLS] [UNK] [UNK] [UNK] [SEP] and padding: a document the tokenizer could not read
    ids = np.array([[text.cls, text.unk, text.unk, text.unk, text.sep, text.pad, text.pad, text.pad]])
    batch = {
        "input_ids": ids,
        "attention_mask": (ids != text.pad).astype(np.int64),
        "token_type_ids": np.zeros_like(ids),
        "word_starts": np.zeros(ids.shape, dtype=bool),
        "special_mask": np.isin(ids, [text.cls, text.sep, text.pad]),
    }
    out = text.masker(kind)(batch, np.arange(1), 0, 0)
    assert out["mlm_positions"].size == 0
    np.testing.assert_array_equal(out["input_ids"], ids)


@pytest.mark.parametrize("split, share", [("electra", [0.85, 0.0, 0.15]), ("debertav3", [1.0, 0.0, 0.0])])
def test_rtd_objectives_split_as_their_released_code(text, split, share):
    """ELECTRA's pretrain_helpers.mask(): 85% of the chosen tokens [MASK], the rest unchanged, no random token;
    DeBERTaV3's RTD task: every chosen token [MASK]. Over ~10,000 chosen tokens of real text, seed 0."""
    from spanbert_ds.model.objectives import OBJECTIVES

    config = MaskingConfig.from_spec("", OBJECTIVES[split].masking_defaults)
    masker = text.masker(TokenMasker, config)
    orig, new = [], []
    for epoch in range(2):
        idx = np.arange(512) + 800 * epoch
        out = masker(text.batch(idx, 128), idx, epoch, 0)
        orig.append(out["mlm_labels"])
        new.append(out["input_ids"].reshape(-1)[out["mlm_positions"]])
    orig, new = np.concatenate(orig), np.concatenate(new)
    assert orig.size > 8000
    seen = [np.mean(new == text.mask), np.mean((new != text.mask) & (new != orig)), np.mean(new == orig)]
    assert seen[1] == 0.0  # exactly no random replacement
    assert np.allclose(seen, share, atol=0.01), seen
    if split == "debertav3":
        assert (new == text.mask).all()


def test_masking_flag_overrides_an_objectives_split():
    electra = {"mask_prob": 0.85, "random_prob": 0.0, "keep_prob": 0.15}
    assert MaskingConfig.from_spec("", electra).to_dict() == {**MaskingConfig().to_dict(), **electra}
    back = MaskingConfig.from_spec("mask_prob=0.8,random_prob=0.1,keep_prob=0.1,mask_ratio=0.2", electra)
    assert (back.mask_prob, back.random_prob, back.keep_prob, back.mask_ratio) == (0.8, 0.1, 0.1, 0.2)
    with pytest.raises(UserError, match="not 1"):  # one key alone no longer sums to 1: said, not guessed
        MaskingConfig.from_spec("random_prob=0.1", electra)


def test_mask_stats_shows_an_objectives_split(python_docs_shards, capsys):
    rc = cli_main(["mask-stats", str(python_docs_shards.path), "--masker", "token", "--split", "electra",
                   "--max-seq-len", "128", "--batches", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "random 0.0%" in out and "(target 85/0/15)" in out
