"""`prepare --split-sentences`: each line (a paragraph, a record's text) split into blingfire's sentences,
in the shards' sentence offsets, the same for any --workers, recorded in meta.json and checked by merge;
off, the output is today's, byte for byte."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from spanbert_ds.data.corpus import Corpus
from spanbert_ds.data.merge import merge
from spanbert_ds.data.prepare import prepare
from spanbert_ds.errors import UserError

blingfire = pytest.importorskip("blingfire")

PARAGRAPH = ("The committee met on Monday. It voted to raise the limit by 5.5 percent! Its chair, Mr. Smith, "
             "did not vote. Why not?")


def write_paragraphs(path, n_documents, seed):
    """Documents of 1-4 paragraphs, each paragraph a line of 1-5 sentences (made-up words, numbered)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(300)]
    docs = []
    for d in range(n_documents):
        lines = []
        for i in range(rng.integers(1, 5)):
            sentences = [" ".join(rng.choice(words, rng.integers(3, 14))).capitalize() + f" {d}-{i}-{k}"
                         + str(rng.choice([".", "!", "?"])) for k in range(rng.integers(1, 6))]
            lines.append(" ".join(sentences))
        docs.append("\n".join(lines))
    Path(path).write_text("\n\n".join(docs) + "\n")


def folder_bytes(folder):
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sentence_texts(shards, tok):
    sent = np.asarray(shards.sent_offsets)
    tokens = np.asarray(shards.tokens)
    return [tok.decode(tokens[a:b].tolist()) for a, b in zip(sent[:-1], sent[1:])]


def test_split_sentences_cuts_each_paragraph_into_the_splitters_sentences(tmp_path, bert_vocab_file):
    from spanbert_ds.data.tokenizer import load_tokenizer

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": PARAGRAPH + "\nA second paragraph. It has two sentences."}) + "\n"
                      + json.dumps({"text": "Another document, one sentence."}) + "\n")
    expected = [s for line in (PARAGRAPH, "A second paragraph. It has two sentences.")
                for s in blingfire.text_to_sentences(line).split("\n")]
    assert len(expected) == 6  # the splitter's own sentences: "Mr." and "5.5" do not end one
    assert list(Corpus(corpus, split_sentences=True).documents()) == [expected, ["Another document, one sentence."]]
    on = prepare(corpus, tmp_path / "on", tokenizer=bert_vocab_file, split_sentences=True)
    off = prepare(corpus, tmp_path / "off", tokenizer=bert_vocab_file)
    tok = load_tokenizer(bert_vocab_file)
    assert on.meta["n_sentences"] == 7 and off.meta["n_sentences"] == 3
    assert sentence_texts(on, tok)[:6] == [tok.decode(tok.encode(s, add_special_tokens=False).ids) for s in expected]
    # The same tokens and documents either way: only where the sentences end differs.
    assert folder_bytes(on.path)["tokens.bin"] == folder_bytes(off.path)["tokens.bin"]
    assert np.array_equal(np.asarray(on.doc_offsets), np.asarray(off.doc_offsets))


# sha256 of the files of prepare(<write_paragraphs(.., 40, seed=3)>, tokenizer=<bert vocab>, valid_fraction=0.2,
# seed=1) as the code before --split-sentences wrote them (meta.json aside: it names the temporary input).
TODAY = "f9fd0f810a83fd35afe199fb0ab51c0839f8c117669a552f29f0f4de1347af6e"


def test_off_the_output_is_todays_byte_for_byte(tmp_path, bert_vocab_file):
    corpus = tmp_path / "corpus.txt"
    write_paragraphs(corpus, 40, seed=3)
    default = prepare(corpus, tmp_path / "default", tokenizer=bert_vocab_file, valid_fraction=0.2, seed=1)
    off = prepare(corpus, tmp_path / "off", tokenizer=bert_vocab_file, valid_fraction=0.2, seed=1,
                  split_sentences=False)
    files = folder_bytes(default.path)
    assert folder_bytes(off.path) == files
    assert "split_sentences" not in default.meta and "split_sentences" not in default.valid.meta
    digest = hashlib.sha256(b"".join(name.encode() + data for name, data in files.items()
                                     if not name.endswith("meta.json"))).hexdigest()
    assert digest == TODAY


def test_two_workers_split_into_the_same_bytes_as_one(tmp_path, bert_vocab_file):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        write_paragraphs(corpus / f"part{i}.txt", 150, seed=i)
    kwargs = dict(tokenizer=bert_vocab_file, valid_fraction=0.1, seed=5, chunk_bytes=8 << 10, split_sentences=True)
    one = prepare(corpus, tmp_path / "one", workers=1, **kwargs)
    two = prepare(corpus, tmp_path / "two", workers=2, **kwargs)
    unsplit = prepare(corpus, tmp_path / "unsplit", tokenizer=bert_vocab_file, valid_fraction=0.1, seed=5)
    assert one.meta["n_sentences"] > 1.5 * unsplit.meta["n_sentences"]  # lines of several sentences were split
    assert folder_bytes(two.path) == folder_bytes(one.path)


def test_meta_records_the_splitter_and_its_version(tmp_path, bert_vocab_file):
    import importlib.metadata

    corpus = tmp_path / "corpus.txt"
    write_paragraphs(corpus, 30, seed=1)
    shards = prepare(corpus, tmp_path / "out", tokenizer=bert_vocab_file, valid_fraction=0.2, split_sentences=True)
    expected = {"splitter": "blingfire", "version": importlib.metadata.version("blingfire")}
    assert shards.meta["split_sentences"] == expected and shards.valid.meta["split_sentences"] == expected


def test_merge_refuses_parts_split_and_not_split(tmp_path, bert_vocab_file):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):
        write_paragraphs(corpus / f"part{i}.txt", 60, seed=i)
    prepare(corpus, tmp_path / "p1", tokenizer=bert_vocab_file, part=(1, 2), split_sentences=True)
    prepare(corpus, tmp_path / "p2", tokenizer=bert_vocab_file, part=(2, 2))
    with pytest.raises(UserError, match="prepared differently.*split_sentences"):
        merge([tmp_path / "p1", tmp_path / "p2"], tmp_path / "merged")
    prepare(corpus, tmp_path / "p2", tokenizer=bert_vocab_file, part=(2, 2), split_sentences=True, overwrite=True)
    assert merge([tmp_path / "p1", tmp_path / "p2"], tmp_path / "merged").meta["split_sentences"]["splitter"] == \
        "blingfire"


def test_without_blingfire_split_sentences_is_refused_in_one_line(tmp_path, bert_vocab_file, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(PARAGRAPH + "\n")
    monkeypatch.setitem(sys.modules, "blingfire", None)  # import blingfire raises ImportError
    with pytest.raises(UserError) as e:
        prepare(corpus, tmp_path / "out", tokenizer=bert_vocab_file, split_sentences=True)
    assert "pip install 'spanbert_ds[formats]'" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
