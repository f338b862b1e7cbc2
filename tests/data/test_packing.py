import numpy as np
import pytest

from spanbert_ds.data.packing import PackedSamples

T = 128


@pytest.fixture(scope="module")
def shards(python_docs_shards):
    return python_docs_shards


def virtual_stream(shards):
    """All documents concatenated with one [SEP] between two documents (what FULL-SENTENCES cuts)."""
    parts = []
    for i in range(len(shards)):
        if i:
            parts.append([shards.sep_id])
        parts.append(np.asarray(shards.document(i), dtype=np.int64))
    return np.concatenate(parts)


def contents(packed, batch):
    """Each sample's tokens between [CLS] and its final [SEP]."""
    lengths = batch["attention_mask"].sum(1)
    return [row[1:n - 1] for row, n in zip(batch["input_ids"], lengths)]


def test_full_blocks_cover_the_stream_in_order_at_nominal_length(shards):
    packed = PackedSamples(shards, "full", T)
    s = packed.samples
    assert s[0, 0] == 0 and np.array_equal(s[1:, 0], s[:-1, 1])
    lengths = s[:, 1] - s[:, 0]
    # Exactly T-2 unless the cut moved back to a word start (by < window positions); the last may be short.
    assert lengths.max() == T - 2 and lengths[:-1].min() > T - 2 - packed.window
    assert (lengths[:-1] == T - 2).mean() > 0.5
    batch = packed.batch(np.arange(len(packed)))
    assert np.array_equal(np.concatenate(contents(packed, batch)), virtual_stream(shards))
    assert s[-1, 1] == shards.n_tokens + len(shards) - 1


def test_full_blocks_start_at_word_starts_where_one_is_in_reach(shards):
    packed = PackedSamples(shards, "full", T)
    batch = packed.batch(np.arange(len(packed)))
    first_is_word = batch["word_starts"][:, 1]
    assert first_is_word.mean() > 0.99
    # Where a block does not start a word, the previous block kept its nominal length because no word
    # start lay within the window before the cut.
    n = batch["attention_mask"].sum(1)
    for i in np.flatnonzero(~first_is_word)[1:]:
        assert n[i - 1] == T
        assert not batch["word_starts"][i - 1, 1:T - 1][-(packed.window - 1):].any()


def test_doc_blocks_never_cross_a_document(shards):
    packed = PackedSamples(shards, "doc", T)
    s = packed.samples
    doc_of_first = np.searchsorted(shards.doc_offsets, s[:, 0], side="right")
    doc_of_last = np.searchsorted(shards.doc_offsets, s[:, 1] - 1, side="right")
    assert np.array_equal(doc_of_first, doc_of_last)
    assert (s[:, 1] - s[:, 0]).max() <= T - 2
    assert np.array_equal(s[1:, 0], s[:-1, 1]) and s[-1, 1] == shards.n_tokens
    batch = packed.batch(np.arange(len(packed)))
    assert np.array_equal(np.concatenate(contents(packed, batch)), np.asarray(shards.tokens))
    # Every document start is a sample start, and short last blocks are padded.
    assert set(shards.doc_offsets[:-1].tolist()) <= set(s[:, 0].tolist())
    assert (batch["attention_mask"].sum(1) < T).sum() >= len(shards)


def test_doc_blocks_are_whole_sentences_packed_greedily(shards):
    """SpanBERT's released break_mode=doc: a block ends at a sentence end, and the next sentence of the
    same document would not have fitted; only a sentence longer than a block is cut (at word starts)."""
    packed = PackedSamples(shards, "doc", T)
    s = packed.samples
    sent = np.asarray(shards.sent_offsets, dtype=np.int64)
    lengths = np.diff(sent)
    ends_a_sentence = np.isin(s[:, 1], sent)
    long = lengths > T - 2
    inside_long = (s[:, 1] > sent[np.searchsorted(sent, s[:, 1]) - 1]) & long[np.searchsorted(sent, s[:, 1]) - 1]
    assert (ends_a_sentence | inside_long).all()
    assert long.any() and not ends_a_sentence.all()  # the corpus has such sentences, and they were cut
    # greedy: the sentence after a block (same document) would not have fitted
    k = np.searchsorted(sent, s[:-1, 1])  # index of the sentence that starts where the block ends
    same_doc = ~np.isin(s[:-1, 1], shards.doc_offsets) & ends_a_sentence[:-1] & ~long[np.minimum(k, len(lengths) - 1)]
    assert (s[:-1, 1][same_doc] - s[:-1, 0][same_doc] + lengths[k[same_doc]] > T - 2).all()
    batch = packed.batch(np.arange(len(packed)))
    starts = batch["word_starts"][:, 1]
    assert starts.mean() > 0.99  # blocks start at sentences, so at words


def test_batch_layout_padding_and_masks(shards):
    for mode in ("full", "doc", "pair"):
        packed = PackedSamples(shards, mode, T, seed=3)
        b = packed.batch(np.arange(0, len(packed), 7))
        ids, att = b["input_ids"], b["attention_mask"]
        assert ids.shape[1] == T and ids.dtype == np.int64 and att.dtype == np.int64
        assert b["token_type_ids"].dtype == np.int64 and b["word_starts"].dtype == bool
        n = att.sum(1)
        assert (ids[:, 0] == shards.cls_id).all()
        assert (ids[np.arange(len(ids)), n - 1] == shards.sep_id).all()
        assert (ids[att == 0] == shards.pad_id).all()
        assert np.array_equal(att, (np.arange(T)[None] < n[:, None]).astype(np.int64))
        special = np.isin(ids, shards.special_ids)
        assert np.array_equal(b["special_mask"], special)
        assert not (b["word_starts"] & special).any()
        if mode != "pair":
            assert not b["token_type_ids"].any()


def test_pair_labels_are_balanced_and_true_pairs_are_adjacent(shards):
    packed = PackedSamples(shards, "pair", T, seed=1)
    s, labels = packed.samples, packed.nsp_labels
    assert abs(labels.mean() - 0.5) < 0.04  # about 3,800 samples: 5 standard deviations
    doc = lambda pos: np.searchsorted(shards.doc_offsets, pos, side="right") - 1
    a0, a1, b0, b1 = s.T
    assert (a1 > a0).all() and (b1 > b0).all() and ((a1 - a0) + (b1 - b0) <= T - 3).all()
    assert (doc(a0) == doc(a1 - 1)).all() and (doc(b0) == doc(b1 - 1)).all()
    true = labels == 0
    assert np.array_equal(a1[true], b0[true]) and (doc(a0[true]) == doc(b0[true])).all()
    assert (doc(a0[~true]) != doc(b0[~true])).all()
    # B (random or not) starts a word; A does too except where no word start was within reach.
    ws = np.asarray(shards.word_starts)
    assert ws[b0].all() and ws[a0].mean() > 0.99

    b = packed.batch(np.arange(len(packed)))
    la, lb = a1 - a0, b1 - b0
    assert np.array_equal(b["attention_mask"].sum(1), la + lb + 3)
    assert np.array_equal(b["token_type_ids"].sum(1), lb + 1)  # B and its [SEP]
    assert np.array_equal(b["nsp_labels"], labels)
    i = int(np.flatnonzero(~true)[0])
    row = b["input_ids"][i]
    assert np.array_equal(row[1:1 + la[i]], shards.tokens[a0[i]:a1[i]])
    assert row[1 + la[i]] == shards.sep_id
    assert np.array_equal(row[2 + la[i]:2 + la[i] + lb[i]], shards.tokens[b0[i]:b1[i]])


def test_pairs_use_nearly_every_token_of_the_corpus(shards):
    # regions tile each document, and a random-next sample takes another region's unused continuation
    s = PackedSamples(shards, "pair", T, seed=1).samples
    edges = np.zeros(shards.n_tokens + 1, dtype=np.int64)
    for start, end in ((s[:, 0], s[:, 1]), (s[:, 2], s[:, 3])):
        np.add.at(edges, start, 1)
        np.add.at(edges, end, -1)
    covered = np.cumsum(edges)[:-1] > 0
    assert covered.mean() > 0.9, covered.mean()


@pytest.mark.parametrize("max_seq_len", [T, 512])
def test_a_rows_length_does_not_give_its_nsp_label_away(shards, max_seq_len):
    packed = PackedSamples(shards, "pair", max_seq_len, seed=1)
    s, labels = packed.samples, packed.nsp_labels
    length = (s[:, 1] - s[:, 0]) + (s[:, 3] - s[:, 2])
    padded = length < max_seq_len - 3 - 8
    # guessing "random next" for every padded row must be no better than a coin
    accuracy = ((padded & (labels == 1)) | (~padded & (labels == 0))).mean()
    assert abs(accuracy - 0.5) < 0.04, accuracy
    assert abs(length[labels == 1].mean() / length[labels == 0].mean() - 1) < 0.05


def test_pairs_are_a_function_of_seed_and_index(shards):
    one, same, other = (PackedSamples(shards, "pair", T, seed=k) for k in (7, 7, 8))
    assert np.array_equal(one.samples, same.samples) and np.array_equal(one.nsp_labels, same.nsp_labels)
    assert not np.array_equal(one.nsp_labels, other.nsp_labels)
    idx = np.array([5, 900, 17])
    whole, single = one.batch(idx), one.batch(idx[1:2])
    for key in whole:
        assert np.array_equal(whole[key][1], single[key][0])


def test_len_and_batch_on_the_real_bert_vocab(bert_vocab_shards):
    for mode in ("full", "doc", "pair"):
        packed = PackedSamples(bert_vocab_shards, mode, 16, seed=0)
        b = packed.batch(np.arange(len(packed)))
        assert b["input_ids"].shape == (len(packed), 16)
        assert (b["input_ids"][:, 0] == 101).all()
