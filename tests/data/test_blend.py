"""`--data "0.7 wiki/ 0.3 books/"`: corpora drawn by weight in every prefix, in an order fixed by (seed, epoch,
position) alone, the same batches on any number of ranks; one tokenizer; the blend in a resume's identity."""

import argparse
import json

import numpy as np
import pytest

from spanbert_ds.cli import main
from spanbert_ds.data.blend import BlendedSamples, corpus_names, interleave, parse_data
from spanbert_ds.data.loader import BatchPlan
from spanbert_ds.data.packing import PackedSamples
from spanbert_ds.data.prepare import prepare
from spanbert_ds.errors import UserError
from spanbert_ds.train import loop, resume

WORDS = "span boundary objective masks contiguous words and predicts them from the tokens around each span".split()


def text(n_docs, salt):
    rng = np.random.default_rng(salt)
    return "\n\n".join("\n".join(" ".join(rng.choice(WORDS, rng.integers(4, 12))) + f" {salt} number {d}."
                                 for _ in range(rng.integers(2, 5))) for d in range(n_docs)) + "\n"


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory, bert_vocab_file):
    """Two shard folders of different sizes, one tokenizer (BERT's vocab.txt), held-out splits in both."""
    root = tmp_path_factory.mktemp("blend")
    folders = []
    for name, n_docs in (("wiki", 80), ("books", 30)):
        (root / f"{name}.txt").write_text(text(n_docs, name == "books"))
        folders.append(prepare(root / f"{name}.txt", root / name, tokenizer=bert_vocab_file, valid_fraction=0.2))
    return folders


def blended(corpora, weights=(0.7, 0.3), seed=5, max_seq_len=24):
    parts = [PackedSamples(shards, "doc", max_seq_len, seed) for shards in corpora]
    return BlendedSamples(parts, weights, corpus_names([str(s.path) for s in corpora]), seed)


@pytest.mark.parametrize("weights, bound", [((0.7, 0.3), 0.5), ((0.123, 0.877), 0.5), ((0.5, 0.3, 0.2), 1.0),
                                            ((0.61, 0.3, 0.09), 1.0), ((0.4, 0.3, 0.2, 0.1), 1.5)])
def test_every_prefix_holds_each_corpus_in_its_share(weights, bound):
    corpus, draw = interleave(weights, 5000)
    n = np.arange(1, 5001)
    for i, w in enumerate(weights):
        counts = np.cumsum(corpus == i)
        # two corpora: exactly w n rounded, in every prefix; m corpora: within 1/2 + w (m - 2) / 2
        assert np.abs(counts - w * n).max() <= min(bound, 0.5 + w * (len(weights) - 2) / 2) + 1e-9
        assert np.array_equal(draw[corpus == i], np.arange(counts[-1]))  # a corpus's draws come in order


def test_each_global_batch_holds_the_weights_share_of_each_corpus(two_corpora):
    blend = blended(two_corpora)
    plan = BatchPlan(len(blend), global_batch=10, micro_batch=5, world_size=1, rank=0, seed=5, interleaved=True)
    for epoch in (0, 1):
        for step in range(plan.steps_per_epoch):
            corpus, _ = blend.locate(plan.order(epoch)[step * 10:(step + 1) * 10])
            assert np.bincount(corpus, minlength=2).tolist() == [7, 3]


def test_a_corpus_gives_every_sample_once_before_it_repeats_one(two_corpora):
    blend = blended(two_corpora, weights=(0.2, 0.8))  # wiki, the larger, is drawn less than once an epoch
    sizes = blend.sizes
    assert blend.per_epoch[0] < sizes[0] and blend.per_epoch[1] > sizes[1]
    corpus, local = blend.locate(np.arange(4 * len(blend)))
    for i in (0, 1):
        drawn = local[corpus == i]
        for start in range(0, len(drawn) - sizes[i] + 1, sizes[i]):  # each pass: a permutation of the corpus
            assert sorted(drawn[start:start + sizes[i]].tolist()) == list(range(sizes[i]))
        assert not np.array_equal(drawn[:sizes[i]], drawn[sizes[i]:2 * sizes[i]])  # a new order each pass


def test_the_order_is_a_function_of_seed_and_position_only(two_corpora):
    a, b = blended(two_corpora), blended(two_corpora)
    positions = np.array([3, 0, 900, 17, 2 * len(a) + 5])
    b.locate(np.arange(len(b), 3 * len(b)))  # another history of what was asked before
    assert all(np.array_equal(x, y) for x, y in zip(a.locate(positions), b.locate(positions)))
    for name, value in a.batch(positions).items():
        assert np.array_equal(value, b.batch(positions)[name]), name
    other_seed = blended(two_corpora, seed=6)
    assert not np.array_equal(a.locate(np.arange(50))[1], other_seed.locate(np.arange(50))[1])


def test_a_blended_batch_is_its_corpora_s_samples_in_order(two_corpora):
    blend = blended(two_corpora)
    positions = np.arange(20, 40)
    corpus, local = blend.locate(positions)
    batch = blend.batch(positions)
    for row, (i, k) in enumerate(zip(corpus, local)):
        own = blend.parts[i].batch([k])
        for name in own:
            assert np.array_equal(batch[name][row], own[name][0]), name


def test_one_and_two_ranks_train_on_the_same_blended_batches(two_corpora):
    blend = blended(two_corpora)

    def step_samples(world, step):
        rows = []
        for rank in range(world):
            plan = BatchPlan(len(blend), 8, 2, world, rank, 5, interleaved=True)
            for k in range(plan.accumulation):
                epoch, start = plan.locate(step * plan.accumulation + k)
                rows.append(plan.order(epoch)[start:start + plan.micro_batch])
        return np.sort(np.concatenate(rows))

    steps = BatchPlan(len(blend), 8, 2, 1, 0, 5, interleaved=True).steps_per_epoch
    for step in (0, 3, steps + 1):  # the last in the second epoch
        one, two = step_samples(1, step), step_samples(2, step)
        assert np.array_equal(one, two)
        assert np.array_equal(blend.batch(one)["input_ids"], blend.batch(two)["input_ids"])


@pytest.mark.parametrize("value, message", [
    ("0.7 wiki/ 0.3", "3 words; give one shard folder, or each folder after its weight"),
    ("wiki/ books/", "'wiki/' is not a weight; put a number before each folder"),
    ("0.7 wiki/ -0.3 books/", "the weight of books/ is -0.3; weights must be numbers above 0"),
    ("0 wiki/ 1 books/", "the weight of wiki/ is 0; weights must be numbers above 0"),
    ("nan wiki/ 1 books/", "the weight of wiki/ is nan"),
    ("inf wiki/ 1 books/", "the weight of wiki/ is inf"),
    ("0.5 wiki/ 0.5 wiki", "names wiki/ twice"),
    ("   ", "--data is empty"),
])
def test_bad_weights_are_one_line(value, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as caught:
        parse_data(value)
    assert "\n" not in str(caught.value)


def test_weights_are_normalised_and_one_folder_is_not_a_blend(tmp_path):
    assert parse_data("7 a 3 b") == parse_data("0.7 a 0.3 b") == [(0.7, "a"), (0.3, "b")]
    assert parse_data("wiki/") == [(1.0, "wiki/")]
    (tmp_path / "my shards").mkdir()
    assert parse_data(str(tmp_path / "my shards")) == [(1.0, str(tmp_path / "my shards"))]  # spaces and all
    assert corpus_names(["/x/wiki/", "/y/books"]) == ["wiki", "books"]
    assert corpus_names(["/x/shards", "/y/shards"]) == ["x_shards", "y_shards"]


@pytest.fixture
def run_args(tmp_path, two_corpora):
    (tmp_path / "ds.json").write_text(json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
                                                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}))
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)
    wiki, books = (str(s.path) for s in two_corpora)

    def make(data=f"0.7 {wiki} 0.3 {books}", *extra):
        return parser.parse_args(["--deepspeed_config", str(tmp_path / "ds.json"), "--data", data, "--output",
                                  str(tmp_path / "run"), "--model", "tiny", "--max-seq-len", "24", "--steps", "20",
                                  "--eval-samples", "8", *extra])
    return make


def test_a_training_run_takes_the_blend_and_evaluates_each_corpus(run_args, two_corpora):
    run = loop.prepare(run_args(), 1, 0)
    assert isinstance(run.samples, BlendedSamples) and run.plan.interleaved
    assert run.samples.names == ["wiki", "books"] and run.samples.weights == [0.7, 0.3]
    assert [name for name, _, _ in run.evaluation.sets] == ["wiki", "books"]
    assert run.identity["data"]["weights"] == [0.7, 0.3]
    assert run.identity["data"]["n_tokens"] == [s.meta["n_tokens"] for s in two_corpora]
    described = run.samples.describe(20, 8)
    assert [d["name"] for d in described] == ["wiki", "books"]
    assert sum(d["samples_in_run"] for d in described) == 20 * 8
    assert abs(described[0]["samples_in_run"] - 0.7 * 160) <= 0.5


def test_a_resume_with_other_weights_or_one_folder_is_refused(run_args, two_corpora):
    wiki, books = (str(s.path) for s in two_corpora)
    saved = loop.prepare(run_args(), 1, 0).identity
    for data in (f"0.5 {wiki} 0.5 {books}", wiki, f"0.3 {books} 0.7 {wiki}"):
        with pytest.raises(UserError, match="belongs to a run with other settings \\(data"):
            resume.check_same_run("step4", {"identity": saved}, loop.prepare(run_args(data), 1, 0).identity)
    resume.check_same_run("step4", {"identity": saved}, loop.prepare(run_args(f"7 {wiki} 3 {books}"), 1, 0).identity)


def test_a_single_folder_keeps_todays_identity_and_order(run_args, two_corpora):
    run = loop.prepare(run_args(str(two_corpora[0].path)), 1, 0)
    assert isinstance(run.samples, PackedSamples) and not run.plan.interleaved
    assert run.identity["data"] == {k: two_corpora[0].meta[k] for k in
                                    ("n_documents", "n_sentences", "n_tokens", "vocab_size", "tokenizer_sha256")}


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    (root / "c.txt").write_text(text(40, 7) * 3)
    return prepare(root / "c.txt", root / "other", tokenizer="wordpiece", vocab_size=200, allow_smaller_vocab=True)


def test_folders_with_different_tokenizers_are_refused_in_one_line(run_args, two_corpora, other_tokenizer, capsys):
    data = f"0.5 {two_corpora[0].path} 0.5 {other_tokenizer.path}"
    with pytest.raises(UserError, match="was tokenized with another tokenizer than .*--tokenizer") as caught:
        loop.prepare(run_args(data), 1, 0)
    assert "\n" not in str(caught.value)
    assert main(["mask-stats", data, "--max-seq-len", "24"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_mask_stats_takes_a_blend(two_corpora, capsys):
    data = f"0.7 {two_corpora[0].path} 0.3 {two_corpora[1].path}"
    assert main(["mask-stats", data, "--max-seq-len", "24", "--batches", "2", "--batch-size", "8"]) == 0
    assert "masked fraction" in capsys.readouterr().out
