"""`prepare --valid-fraction F` and `--valid CORPUS`: a held-out split of whole documents in OUT/valid."""

import os

import numpy as np
import pytest

from spanbert_ds.cli import main
from spanbert_ds.data.prepare import DocumentSplit, prepare

WORDS = "span boundary objective masks contiguous words and predicts them from the tokens around each span".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 documents of 2-4 lines each, every document different."""
    rng = np.random.default_rng(0)
    docs = ["\n".join(" ".join(rng.choice(WORDS, rng.integers(4, 12))) + f" number {d}." for _ in range(rng.integers(2, 5)))
            for d in range(60)]
    path = tmp_path_factory.mktemp("held_out") / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def documents(shards):
    return [tuple(shards.document(i).tolist()) for i in range(len(shards))]


def test_whole_documents_are_held_out_and_nothing_is_lost(tmp_path, corpus, bert_vocab_file):
    whole = prepare(corpus, tmp_path / "whole", tokenizer=bert_vocab_file)
    split = prepare(corpus, tmp_path / "split", tokenizer=bert_vocab_file, valid_fraction=0.25, seed=3)
    train, valid = documents(split), documents(split.valid)
    assert 5 <= len(valid) <= 25 and len(train) + len(valid) == len(whole) == 60
    # each held-out document is one whole document of the corpus, and training keeps the others, in order
    everything = documents(whole)
    held = [d for d in everything if d in set(valid)]
    assert held == valid and [d for d in everything if d not in set(valid)] == train
    assert split.valid.meta["split"] == "valid" and split.meta["valid_split"]["source"]["fraction"] == 0.25
    assert split.valid.meta["tokenizer_sha256"] == split.meta["tokenizer_sha256"]


def test_the_split_is_a_function_of_the_seed(tmp_path, corpus, bert_vocab_file):
    a, b, c = (prepare(corpus, tmp_path / name, tokenizer=bert_vocab_file, valid_fraction=0.25, seed=seed).valid
               for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert documents(a) == documents(b) and documents(a) != documents(c)


def test_a_trained_tokenizer_never_sees_the_held_out_documents(tmp_path):
    text = "\n\n".join(["common words in training text."] * 30 + ["zyxwvut qqqq"])
    (tmp_path / "c.txt").write_text(text + "\n")
    # a seed that holds out the last document, the one with the rare words
    seed = next(seed for seed in range(1000) if DocumentSplit(0.1, seed).held_out(np.arange(31))[30])
    shards = prepare(tmp_path / "c.txt", tmp_path / "out", vocab_size=200, allow_smaller_vocab=True,
                     valid_fraction=0.1, seed=seed)
    assert not any(token.startswith("zy") for token in shards.tokenizer().get_vocab())
    assert documents(shards.valid)[-1] == (shards.unk_id, shards.unk_id)  # words it never saw


def test_a_second_corpus_as_the_held_out_split(tmp_path, corpus, bert_vocab_file):
    (tmp_path / "valid.txt").write_text("A held out document.\n\nAnd another one, with two lines.\nThe second.\n")
    shards = prepare(corpus, tmp_path / "out", tokenizer=bert_vocab_file, valid=tmp_path / "valid.txt")
    assert len(shards) == 60 and (len(shards.valid), shards.valid.meta["n_sentences"]) == (2, 3)
    assert shards.valid.tokenizer().decode(list(shards.valid.document(0))) == "a held out document."


def test_without_a_split_there_is_none(bert_vocab_shards):
    assert bert_vocab_shards.valid is None and "valid_split" not in bert_vocab_shards.meta


@pytest.mark.parametrize("args, message", [
    (["--valid-fraction", "1.0"], "--valid-fraction 1.0 must be at least 0 and below 1"),
    (["--valid-fraction", "0.1", "--valid", "{corpus}"], "give --valid CORPUS or --valid-fraction F, not both"),
    (["--valid-fraction", "0.0001"], "held out none of the 60 documents"),
    (["--valid", "{tmp}/empty.txt"], "--valid {tmp}/empty.txt contains no text"),
])
def test_a_split_that_cannot_be_made_is_one_line_and_leaves_nothing(tmp_path, capsys, corpus, bert_vocab_file, args,
                                                                  message):
    (tmp_path / "empty.txt").write_text("\n\n")
    args = [a.format(corpus=corpus, tmp=tmp_path) for a in args]
    out = tmp_path / "new" / "parents" / "out"
    assert main(["prepare", str(corpus), str(out), "--tokenizer", bert_vocab_file, "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "new").exists()  # neither the output nor the parents made for it


def test_output_parents_are_made_as_mkdir_p_does(tmp_path, corpus, bert_vocab_file):
    assert main(["prepare", str(corpus), str(tmp_path / "a" / "b" / "out"), "--tokenizer", bert_vocab_file,
                 "--quiet"]) == 0
    assert os.path.isfile(tmp_path / "a" / "b" / "out" / "meta.json")


def test_every_rank_runs_as_many_evaluation_passes_and_all_blocks_count_once(tmp_path, corpus, bert_vocab_file):
    # under ZeRO-3 each forward pass gathers weights from all ranks: a rank with one pass more would hang
    from spanbert_ds.data.masking import MaskingConfig, TokenMasker
    from spanbert_ds.data.packing import PackedSamples
    from spanbert_ds.train.evaluate import HeldOutEvaluation

    shards = prepare(corpus, tmp_path / "out", tokenizer=bert_vocab_file, valid_fraction=0.3, seed=1)
    samples = PackedSamples(shards, "full", 16, seed=0)
    masker = TokenMasker(MaskingConfig(), shards.vocab_size, shards.mask_id, shards.special_ids)
    for n, world in ((3, 2), (1, 3), (5, 4)):
        ranks = [HeldOutEvaluation(shards, samples, masker, ("mlm",), 0, n, 1, world, rank) for rank in range(world)]
        assert len({len(r.batches) for r in ranks}) == 1
        assert sum(len(r.batches) - r.ignored for r in ranks) == n == ranks[0].n_samples
