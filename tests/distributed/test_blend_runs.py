"""A blend of two shard folders (`--data "0.7 first/ 0.3 second/"`) on two ranks: kill -9 then resume gives the
uninterrupted losses bit for bit, run_config.json has each corpus's sample counts, and each corpus's held-out
split is scored under eval/<corpus>/ in TensorBoard beside the blended total."""

import json
import os

import pytest

from tests.distributed.launch import kill_once_saved, launch, losses, metrics
from tests.distributed.test_pretrain import STEPS, check, ds_config, loss_list, train_args

pytestmark = pytest.mark.slow  # launches processes


@pytest.fixture(scope="module")
def blend(tmp_path_factory):
    """The built-in corpus split in two (its first and second half of documents), the second prepared with the
    first's tokenizer (--tokenizer), each with a held-out split."""
    from spanbert_ds.data.corpus import python_docs
    from spanbert_ds.data.prepare import prepare

    root = tmp_path_factory.mktemp("blend_runs")
    docs = list(python_docs())
    half = len(docs) // 2
    for name, part in (("first", docs[:half]), ("second", docs[half:])):
        (root / f"{name}.txt").write_text("\n\n".join("\n".join(doc) for doc in part) + "\n")
    first = prepare(root / "first.txt", root / "first", tokenizer="wordpiece", vocab_size=8000, valid_fraction=0.05)
    second = prepare(root / "second.txt", root / "second", tokenizer=str(first.path / "tokenizer.json"),
                     valid_fraction=0.05)
    return root, f"0.7 {first.path} 0.3 {second.path}"


@pytest.fixture(scope="module")
def whole(blend):
    root, data = blend
    out = str(root / "whole")
    check(launch(train_args(data, out, ds_config(str(root), 2), eval_samples=32), ranks=2, launcher="deepspeed"))
    return out


def test_kill_9_then_resume_on_a_blend_gives_the_uninterrupted_losses_bit_for_bit(blend, whole):
    root, data = blend
    out = str(root / "killed")
    args = train_args(data, out, ds_config(str(root), 2), eval_samples=32)
    kill_once_saved(args, out, "step2", ranks=2, launcher="deepspeed")
    check(launch(args, ranks=2, launcher="deepspeed"))
    assert loss_list(out, range(3, STEPS + 1)) == loss_list(whole, range(3, STEPS + 1))
    assert [row["step"] for row in metrics(out) if "loss" in row] == list(range(1, STEPS + 1))
    assert losses(out)[STEPS]["eval_loss"] == losses(whole)[STEPS]["eval_loss"]


def test_run_config_has_each_corpus_s_sample_counts(whole):
    with open(os.path.join(whole, "run_config.json")) as f:
        data = json.load(f)["data"]
    assert [(d["name"], d["weight"]) for d in data] == [("first", 0.7), ("second", 0.3)]
    drawn = [d["samples_in_run"] for d in data]
    assert sum(drawn) == STEPS * 8 and drawn[0] == round(0.7 * STEPS * 8)
    assert all(d["samples"] > 0 and d["samples_per_epoch"] > 0 for d in data)


def test_each_corpus_is_evaluated_on_its_own_held_out_split_in_tensorboard(whole):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(whole, "tensorboard"))
    events.Reload()
    for name in ("eval/loss", "eval/mlm_loss", "eval/first/mlm_loss", "eval/second/mlm_loss",
                 "eval/first/sbo_accuracy", "eval/second/mlm_unigram_accuracy"):
        assert [e.step for e in events.Scalars(name)] == [2, 4, 6], name
    row = losses(whole)[STEPS]
    assert row["eval_first/mlm_loss"] != row["eval_second/mlm_loss"]
    assert row["eval_mlm_loss"] == pytest.approx(0.7 * row["eval_first/mlm_loss"] + 0.3 * row["eval_second/mlm_loss"])


def test_preflight_checks_every_folder_of_a_blend(blend):
    root, data = blend
    done = launch(train_args(data, str(root / "preflight"), ds_config(str(root), 2)) + ["--preflight"], ranks=2,
                  launcher="deepspeed")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("ok    data"))
    assert f"the blend of shard folders 0.7 {root / 'first'}, 0.3 {root / 'second'} is the same on every rank" in line
