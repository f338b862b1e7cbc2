import json
import os
import pickle
import shutil

import numpy as np
import pytest

from spanbert_ds.data.corpus import Corpus
from spanbert_ds.data.prepare import prepare
from spanbert_ds.data.shards import Shards, token_dtype
from spanbert_ds.errors import UserError

TEXT = """The quick brown fox jumps over the lazy dog.
It was the best of times, it was the worst of times.

Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about.
Ça coûte 3,50 € — naïve café! Zürich's "quoted" text; tabs\tand   spaces.
Numbers 1234567 and CamelCaseWords, snake_case_words, and URLs like https://example.org/a?b=c.
"""


def squeeze(text):
    return "".join(text.split())


def assert_round_trip(shards, corpus_path):
    """Every sentence decodes back to its text, modulo the tokenizer's normalizer and whitespace."""
    tok = shards.tokenizer()
    sentences = [s for doc in Corpus(corpus_path).documents() for s in doc]
    assert len(sentences) == shards.meta["n_sentences"]
    offsets = np.asarray(shards.sent_offsets)
    for i, sentence in enumerate(sentences):
        ids = shards.tokens[offsets[i]:offsets[i + 1]].tolist()
        assert shards.unk_id not in ids
        decoded = tok.decode(ids)
        expected = tok.normalizer.normalize_str(sentence) if tok.normalizer else sentence
        assert squeeze(decoded) == squeeze(expected), (sentence, decoded)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT * 3)
    return path


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_tokenizer_round_trip(tmp_path, text_file, kind):
    shards = prepare(text_file, tmp_path / "out", tokenizer=kind, vocab_size=400, allow_smaller_vocab=True)
    assert shards.meta["tokenizer_kind"] == kind and shards.meta["lowercase"] is False
    assert_round_trip(shards, text_file)


def test_bert_vocab_round_trip_is_uncased(bert_vocab_shards):
    m = bert_vocab_shards.meta
    assert (m["tokenizer_kind"], m["lowercase"], m["vocab_size"]) == ("wordpiece", True, 30522)
    assert (m["pad_id"], m["unk_id"], m["cls_id"], m["sep_id"], m["mask_id"]) == (0, 100, 101, 102, 103)
    assert bert_vocab_shards.tokens.dtype == np.uint16
    assert_round_trip(bert_vocab_shards, bert_vocab_shards.path.parent / "small.txt")


def test_document_and_sentence_offsets_match_the_corpus(bert_vocab_shards):
    shards = bert_vocab_shards
    tok = shards.tokenizer()
    docs = list(Corpus(shards.path.parent / "small.txt").documents())
    assert len(shards) == len(docs) == 3
    expected_docs = [[tok.encode(s, add_special_tokens=False).ids for s in doc] for doc in docs]
    for i, doc in enumerate(expected_docs):
        assert shards.document(i).tolist() == sum(doc, [])
    sent_lengths = [len(s) for doc in expected_docs for s in doc]
    assert np.diff(shards.sent_offsets).tolist() == sent_lengths
    assert shards.doc_offsets[-1] == shards.sent_offsets[-1] == shards.n_tokens == sum(sent_lengths)
    doc_sent = shards.doc_sentence_index()
    assert np.diff(doc_sent).tolist() == [len(d) for d in docs]


def test_wordpiece_word_starts_are_tokens_without_hashes(bert_vocab_shards):
    tok = bert_vocab_shards.tokenizer()
    pieces = [tok.id_to_token(int(i)) for i in bert_vocab_shards.tokens]
    assert bert_vocab_shards.word_starts.tolist() == [int(not p.startswith("##")) for p in pieces]
    assert any(p.startswith("##") for p in pieces)


def test_bpe_word_starts_follow_the_space_marker_and_line_starts(tmp_path, text_file):
    shards = prepare(text_file, tmp_path / "out", tokenizer="bpe", vocab_size=400, allow_smaller_vocab=True)
    tok = shards.tokenizer()
    pieces = [tok.id_to_token(int(i)) for i in shards.tokens]
    line_start = np.zeros(len(pieces), dtype=bool)
    line_start[np.asarray(shards.sent_offsets[:-1])] = True
    expected = [int(p.startswith("Ġ") or first) for p, first in zip(pieces, line_start)]
    assert shards.word_starts.tolist() == expected


def test_vocab_above_65536_uses_uint32():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_files_are_memory_mapped_and_pickle_by_path(python_docs_shards):
    shards = python_docs_shards
    assert isinstance(shards.tokens, np.memmap) and isinstance(shards.word_starts, np.memmap)
    blob = pickle.dumps(shards)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    last = len(shards) - 1
    assert np.array_equal(again.document(last), shards.document(last))
    assert shards.meta["n_tokens"] > 300_000 and shards.vocab_size == 8000


@pytest.fixture()
def copy_of(bert_vocab_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(bert_vocab_shards.path, out)
    return out


def test_truncated_file_is_a_clear_error(copy_of):
    with open(copy_of / "tokens.bin", "r+b") as f:
        f.truncate(os.path.getsize(copy_of / "tokens.bin") - 2)
    with pytest.raises(UserError, match=r"tokens.bin is \d+ bytes, meta.json implies \d+ \(truncated"):
        Shards(copy_of)


def test_damaged_index_is_a_clear_error(copy_of):
    index = np.memmap(copy_of / "index.idx", dtype="<i8", mode="r+")
    index[-1] += 5  # the last sentence offset past the end of the tokens
    index.flush()
    with pytest.raises(UserError, match="index.idx is damaged: its sentence offsets run from 0 to"):
        Shards(copy_of)


def test_missing_file_is_a_clear_error(copy_of):
    os.remove(copy_of / "index.idx")
    with pytest.raises(UserError, match="has no index.idx"):
        Shards(copy_of)


def test_other_format_version_is_a_clear_error(copy_of):
    meta = (copy_of / "meta.json").read_text().replace('"format_version": 1', '"format_version": 99')
    (copy_of / "meta.json").write_text(meta)
    with pytest.raises(UserError, match="format_version 99"):
        Shards(copy_of)


def edit_meta(folder, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.mark.parametrize("changes, message", [
    ({"vocab_size": "4000"}, "vocab_size must be a whole number of 0 or more, got '4000'"),
    ({"special_ids": None}, "special_ids must be a list of token ids, got None"),
    ({"vocab_size": 100}, "not below vocab_size 100"),  # the special ids of BERT's vocabulary are above 100
    ({"n_tokens": True}, "n_tokens must be a whole number"),
    ({"token_dtype": "float64"}, "token_dtype must be uint16 or uint32"),
])
def test_hand_edited_meta_is_a_clear_error_at_load(copy_of, changes, message):
    edit_meta(copy_of, **changes)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        Shards(copy_of)


def test_ids_the_vocabulary_lacks_are_found_by_a_full_check(copy_of):
    """Training's start takes the check from meta.json's max_id (tests/data/test_shard_cache.py); a full pass
    still finds ids changed after prepare."""
    meta = json.loads((copy_of / "meta.json").read_text())
    assert meta["max_id"] == int(np.asarray(Shards(copy_of).tokens).max())  # recorded by prepare
    Shards(copy_of, check_ids=True).check_ids(full=True)  # a good folder passes
    tokens = np.memmap(copy_of / "tokens.bin", dtype=meta["token_dtype"], mode="r+")
    tokens[len(tokens) // 2] = meta["vocab_size"] + 7  # deep inside, where step 0 would not sample it
    tokens.flush()
    Shards(copy_of, check_ids=True)  # opening, and the start-up check, do not read every token
    with pytest.raises(UserError, match=f"holds token id {meta['vocab_size'] + 7}, but meta.json says vocab_size"):
        Shards(copy_of).check_ids(full=True)
    tokens[len(tokens) // 2] = 5  # below the vocabulary, but not what prepare wrote
    tokens[:] = np.minimum(tokens, meta["max_id"] - 1)
    tokens.flush()
    with pytest.raises(UserError, match=f"but meta.json says max_id {meta['max_id']}"):
        Shards(copy_of).check_ids(full=True)


def test_a_recorded_max_id_the_vocabulary_lacks_is_refused_at_load(copy_of):
    meta = edit_meta(copy_of, max_id=json.loads((copy_of / "meta.json").read_text())["vocab_size"])
    with pytest.raises(UserError, match=f"max_id {meta['max_id']} is not below vocab_size {meta['vocab_size']}"):
        Shards(copy_of)


def test_a_document_longer_than_a_chunk_is_written_as_one(tmp_path, bert_vocab_file):
    # 120 lines and no blank line: one document, encoded over many chunks of 500 bytes
    text = "".join(f"Line {i} says something about spans and boundaries.\n" for i in range(120)) + "\nLast one.\n"
    (tmp_path / "c.txt").write_text(text)
    streamed = prepare(tmp_path / "c.txt", tmp_path / "small", tokenizer=bert_vocab_file, chunk_bytes=500)
    prepare(tmp_path / "c.txt", tmp_path / "whole", tokenizer=bert_vocab_file)
    assert (streamed.meta["n_documents"], streamed.meta["n_sentences"]) == (2, 121)
    for name in ("tokens.bin", "word_starts.bin", "index.idx"):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_special_token_strings_in_the_text_stay_text(tmp_path, bert_vocab_file):
    (tmp_path / "c.txt").write_text("Write [MASK] or [SEP] or [CLS] in a sentence.\n")
    shards = prepare(tmp_path / "c.txt", tmp_path / "out", tokenizer=bert_vocab_file)
    assert not set(shards.tokens.tolist()) & set(shards.special_ids)
    assert "[ mask ]" in shards.tokenizer().decode(shards.tokens.tolist())
