"""The deberta backbone through the same training system: `deepspeed train.py --objective deberta` on two
ranks under ZeRO-2 (losses fall, kill -9 resume is bit-exact, TensorBoard has the loss), span masking + SBO
on a DeBERTa backbone (two ranks agree with one), and the export transformers opens."""

import os

import pytest

from spanbert_ds.cli import main
from tests.distributed.launch import kill_once_saved, launch, losses
from tests.distributed.test_pretrain import check, ds_config, train_args

pytestmark = pytest.mark.slow  # launches processes

STEPS = 8


def deberta_args(shards, out, config, objective="deberta", model="deberta-tiny", steps=STEPS):
    args = train_args(shards, out, config, steps=steps)
    args[args.index("--model") + 1] = model
    args[args.index("--objective") + 1] = objective
    return args


@pytest.fixture(scope="module")
def work(tmp_path_factory, python_docs_shards):
    tmp = tmp_path_factory.mktemp("deberta")
    return tmp, str(python_docs_shards.path), ds_config(tmp, 2)


@pytest.fixture(scope="module")
def deberta_run(work):
    tmp, shards, config = work
    out = str(tmp / "deberta")
    check(launch(deberta_args(shards, out, config), ranks=2, launcher="deepspeed"))
    return out


def test_deberta_trains_on_two_ranks_and_its_loss_falls(deberta_run):
    rows = losses(deberta_run)
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert rows[STEPS]["mlm_loss"] < rows[1]["mlm_loss"] - 0.5
    assert os.listdir(os.path.join(deberta_run, "tensorboard"))


def test_kill_9_then_resume_is_bit_exact(work, deberta_run):
    tmp, shards, config = work
    out = str(tmp / "killed")
    args = deberta_args(shards, out, config)
    kill_once_saved(args, out, "step2", ranks=2, launcher="deepspeed")
    check(launch(args, ranks=2, launcher="deepspeed"))
    resumed, first = losses(out), losses(deberta_run)
    assert [resumed[s]["loss"] for s in range(1, STEPS + 1)] == [first[s]["loss"] for s in range(1, STEPS + 1)]


def test_span_masking_and_sbo_on_a_deberta_backbone_export_to_transformers(work, tmp_path):
    transformers = pytest.importorskip("transformers")
    tmp, shards, config = work
    out = str(tmp / "spanbert_on_deberta")
    check(launch(deberta_args(shards, out, config, objective="spanbert", steps=4), ranks=2, launcher="deepspeed"))
    one_rank = str(tmp / "spanbert_on_deberta_one_rank")
    check(launch(deberta_args(shards, one_rank, config, objective="spanbert", steps=4), ranks=1, launcher="python"))
    rows = losses(out)
    assert {"mlm_loss", "sbo_loss"} <= set(rows[4])
    # Two ranks under ZeRO-2 train what one rank does with the same global batch.
    assert [rows[s]["loss"] for s in range(1, 5)] == pytest.approx([losses(one_rank)[s]["loss"] for s in range(1, 5)],
                                                                   rel=1e-5)
    assert main(["export", out, str(tmp_path / "hf")]) == 0
    model = transformers.DebertaV2ForMaskedLM.from_pretrained(tmp_path / "hf")
    assert model.config.position_buckets == 256 and (tmp_path / "hf" / "sbo_head.safetensors").exists()
