"""The global batch is the training hyperparameter, kept at every world size; the micro batch is a memory
choice, the most a rank runs at once (args._resolve_batch_sizes). And the flags that override the
ds_config's batch sizes, peak learning rate and warmup."""

import argparse
import glob
import json
import os
import types

import pytest

from spanbert_ds.errors import UserError
from spanbert_ds.run import checkpoint
from spanbert_ds.run import ds_config as ds_config_module
from spanbert_ds.run.ds_config import load_ds_config
from spanbert_ds.train import loop, preflight
from spanbert_ds.train.args import overrides_of
from tests.distributed.launch import REPO

SHIPPED = sorted(glob.glob(os.path.join(REPO, "ds_configs", "*.json")))
WORLD_SIZES = (1, 2, 8, 16, 32, 64, 128, 256, 512, 1024)
CONFIG = {"train_batch_size": 256, "train_micro_batch_size_per_gpu": 32,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
          "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_max_lr": 1e-4, "warmup_num_steps": 10000}}}


def write(tmp_path, config):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture
def on_a_gpu(monkeypatch):
    monkeypatch.setattr(ds_config_module, "_cuda", lambda: True)  # zero2_fp16.json is refused on a CPU


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_config_keeps_its_global_batch_at_every_world_size_that_divides_it(path, world_size, on_a_gpu):
    with open(path) as f:
        written = json.load(f)
    total, most = written["train_batch_size"], written["train_micro_batch_size_per_gpu"]
    if total % world_size:  # fewer samples than ranks, or a share that is not whole: what works is said
        with pytest.raises(UserError, match=f"train_batch_size {total} cannot be split over {world_size} ranks .*"
                                            f"use a global batch that splits over {world_size} ranks"):
            load_ds_config(path, world_size, total_steps=100_000)
        return
    config = load_ds_config(path, world_size, total_steps=100_000)
    micro, accumulation = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    assert config["train_batch_size"] == total
    assert micro * accumulation * world_size == total
    # the largest micro batch up to the file's: the fewest accumulation steps
    assert micro == max(m for m in range(1, most + 1) if (total // world_size) % m == 0)


def test_the_shipped_pretraining_configs_run_on_every_world_size_up_to_256_ranks(on_a_gpu):
    pretraining = [p for p in SHIPPED if os.path.basename(p).startswith("zero")]
    assert len(pretraining) >= 6
    for path in pretraining:
        for world_size in WORLD_SIZES[:WORLD_SIZES.index(256) + 1]:
            assert load_ds_config(path, world_size, 100_000)["train_batch_size"] == 256


def test_a_micro_batch_that_does_not_split_the_global_batch_becomes_the_largest_that_does_and_is_said(tmp_path):
    notes = []
    config = load_ds_config(write(tmp_path, CONFIG), 16, 100_000, notes)  # the README's 4 nodes x 8 GPUs is 32
    assert [config[k] for k in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")] \
        == [256, 16, 1]
    assert notes == [f"{tmp_path / 'ds.json'}: train_batch_size 256 over 16 ranks is 16 samples a rank: micro batch 16 "
                     "x 1 accumulation step (train_micro_batch_size_per_gpu 32 is the most a rank runs at once)"]
    notes = []
    config = load_ds_config(write(tmp_path, {**CONFIG, "train_micro_batch_size_per_gpu": 24}), 8, 100_000, notes)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (16, 2)
    assert "micro batch 16 x 2 accumulation steps (train_micro_batch_size_per_gpu 24 is the most" in notes[0]


@pytest.mark.parametrize("total, world_size, works", [
    (256, 512, "use a global batch that splits over 512 ranks, 512 or 1024 (train.py --global-batch-size N, or "
               "train_batch_size; scale the learning rate with it), or run on 256 ranks"),
    (256, 24, "use a global batch that splits over 24 ranks, 240 or 264 (train.py --global-batch-size N, or "
              "train_batch_size; scale the learning rate with it), or run on 16 or 32 ranks"),
    (16, 1024, "use a global batch that splits over 1024 ranks, 1024 or 2048 (train.py --global-batch-size N, or train_batch_size; scale the "
               "learning rate with it), or run on 16 ranks"),
])
def test_a_global_batch_that_cannot_be_split_says_which_batches_and_world_sizes_would(tmp_path, total, world_size, works):
    path = write(tmp_path, {**CONFIG, "train_batch_size": total})
    with pytest.raises(UserError) as refused:
        load_ds_config(path, world_size, 1000)
    assert str(refused.value) == (f"{path}: train_batch_size {total} cannot be split over {world_size} ranks (each rank "
                                  f"takes a whole number of samples a step); {works}")


def test_the_flags_override_the_file_and_an_accumulation_the_file_sets_still_has_to_fit(tmp_path):
    path = write(tmp_path, {**CONFIG, "gradient_accumulation_steps": 1})
    with pytest.raises(UserError, match="train_batch_size 256 != train_micro_batch_size_per_gpu 32 x "
                                        "gradient_accumulation_steps 1 x 16 ranks"):
        load_ds_config(path, 16, 1000)
    notes = []
    config = load_ds_config(path, 16, 1000, notes, {"global_batch_size": 512, "micro_batch_size": 8, "lr": 3e-4,
                                                     "warmup": "0.06"})
    assert [config[k] for k in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")] \
        == [512, 8, 4]
    assert config["optimizer"]["params"]["lr"] == config["scheduler"]["params"]["warmup_max_lr"] == 3e-4
    assert config["scheduler"]["params"]["warmup_num_steps"] == 60
    assert notes == [f"{path}: gradient_accumulation_steps 1 left out: with --global-batch-size and --micro-batch-size "
                     "it follows from the batch sizes and the number of ranks",
                     "--warmup 0.06: 60 warmup steps of --steps 1000"]
    with pytest.raises(UserError, match="^--global-batch-size 100 cannot be split over 16 ranks .* 96 or 112"):
        load_ds_config(path, 16, 1000, None, {"global_batch_size": 100})
    # warmup in steps; a micro batch flag alone keeps the file's global batch
    config = load_ds_config(write(tmp_path, CONFIG), 8, 1000, None, {"micro_batch_size": 4, "warmup": "250"})
    assert (config["train_batch_size"], config["gradient_accumulation_steps"]) == (256, 8)
    assert config["scheduler"]["params"]["warmup_num_steps"] == 250


def test_lr_sets_the_peak_of_a_cosine_schedule_and_of_a_constant_rate(tmp_path):
    cosine = {**CONFIG, "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 10}}}
    config = load_ds_config(write(tmp_path, cosine), 1, 100, None, {"lr": 2e-4})
    assert config["optimizer"]["params"]["lr"] == 2e-4 and "warmup_max_lr" not in config["scheduler"]["params"]
    constant = {k: v for k, v in CONFIG.items() if k != "scheduler"}
    assert load_ds_config(write(tmp_path, constant), 1, 100, None, {"lr": 5e-5})["optimizer"]["params"]["lr"] == 5e-5


@pytest.mark.parametrize("overrides, scheduler, message", [
    ({"global_batch_size": 0}, None, "--global-batch-size must be a whole number of at least 1, got 0"),
    ({"micro_batch_size": -2}, None, "--micro-batch-size must be a whole number of at least 1, got -2"),
    ({"lr": 0.0}, None, "--lr must be a number above 0, got 0.0"),
    ({"lr": float("inf")}, None, "--lr must be a number above 0, got inf"),
    ({"warmup": "1.5"}, None, r"--warmup 1.5: give whole steps \(e.g. 10000\) or a fraction of --steps below 1 \(e.g. 0.01\)"),
    ({"warmup": "ten"}, None, "--warmup ten: give whole steps"),
    ({"warmup": "-3"}, None, "--warmup must be 0 or more steps, got -3"),
    ({"warmup": "2000"}, None, r"--warmup 2000 is 2000 steps, not below --steps 1000; warm up for fewer steps \(or a "
                               r"fraction of the run, e.g. --warmup 0.01\)"),
    ({"warmup": "100"}, "none", "--warmup: .* has no scheduler, which does not warm up; add a scheduler block such as"),
    ({"lr": 1e-3}, {"type": "OneCycle", "params": {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-4}},
     "--lr: .*'s scheduler OneCycle sets its rates itself; set them in its scheduler block, or use one of WarmupLR"),
])
def test_bad_overrides_are_refused_naming_the_flag(tmp_path, overrides, scheduler, message):
    config = dict(CONFIG)
    if scheduler == "none":
        del config["scheduler"]
    elif scheduler:
        config["scheduler"] = scheduler
    with pytest.raises(UserError, match=message):
        load_ds_config(write(tmp_path, config), 8, 1000, None, overrides)


def parser():
    return loop.add_arguments(argparse.ArgumentParser())


def test_the_flags_parse_into_overrides():
    args = parser().parse_args(["--data", "d", "--global-batch-size", "512", "--micro-batch-size", "16", "--lr", "2e-4",
                                "--warmup", "0.01"])
    assert overrides_of(args) == {"global_batch_size": 512, "micro_batch_size": 16, "lr": 2e-4, "warmup": "0.01"}
    assert overrides_of(parser().parse_args(["--data", "d"])) == {}


def test_preflight_reports_the_batch_sizes_the_run_will_use():
    args = parser().parse_args(["--data", "d", "--deepspeed_config", os.path.join(REPO, "ds_configs", "zero2_bf16.json")])
    assert preflight._batch(args, 16) == "train_batch_size 256 = micro batch 16 x 16 ranks x 1 accumulation steps"
    args.micro_batch_size, args.global_batch_size = 4, 512
    assert preflight._batch(args, 16) == "train_batch_size 512 = micro batch 4 x 16 ranks x 8 accumulation steps"
    args.global_batch_size = 100
    with pytest.raises(preflight.Failed, match="--global-batch-size 100 cannot be split over 16 ranks"):
        preflight._batch(args, 16)


def test_a_resume_may_change_micro_batch_lr_and_warmup_but_not_the_global_batch(tmp_path, python_docs_shards):
    ds = write(tmp_path, {**CONFIG, "train_batch_size": 16, "train_micro_batch_size_per_gpu": 8})

    def run_args(*extra):
        return parser().parse_args(["--deepspeed_config", ds, "--data", str(python_docs_shards.path), "--output",
                                    str(tmp_path / "run"), "--model", "tiny", "--max-seq-len", "64", "--steps", "20",
                                    *extra])
    first = loop.prepare(run_args("--global-batch-size", "32"), 1, 0)
    folder = tmp_path / "run" / "checkpoints" / checkpoint.tag_of(4)
    folder.mkdir(parents=True)
    (folder / checkpoint.MARKER).write_text(json.dumps({"step": 4, "world_size": 1, "zero_stage": 0,
                                                        "train_batch_size": 32, "identity": first.identity}))
    again = loop.prepare(run_args("--global-batch-size", "32", "--micro-batch-size", "4", "--lr", "5e-4", "--warmup",
                                  "0.5"), 2, 0)
    assert again.resume_tag == "step4" and again.plan.global_batch == 32 and again.plan.micro_batch == 4
    assert again.ds_config["scheduler"]["params"]["warmup_num_steps"] == 10
    with pytest.raises(UserError, match="checkpoint step4 was trained with train_batch_size 32, the run asks for 16: "
                                        r"keep the global batch when resuming \(train_batch_size, --global-batch-size\)"):
        loop.prepare(run_args(), 1, 0)
    with pytest.raises(UserError, match="was trained with train_batch_size 32, the run asks for 64"):
        loop.prepare(run_args("--global-batch-size", "64"), 1, 0)


def test_lamb_is_refused_in_one_line_where_deepspeed_would_assert(tmp_path, monkeypatch):
    lamb = {**CONFIG, "optimizer": {"type": "Lamb", "params": {"lr": 6e-3}}}
    monkeypatch.setattr(ds_config_module, "_cuda", lambda: True)
    with pytest.raises(UserError, match="LAMB only under fp16 with dynamic loss scaling"):
        load_ds_config(write(tmp_path, {**lamb, "bf16": {"enabled": True}}), 8, 1000)
    with pytest.raises(UserError, match="LAMB only under fp16 with dynamic loss scaling"):
        load_ds_config(write(tmp_path, {**lamb, "fp16": {"enabled": True, "loss_scale": 128}}), 8, 1000)
    assert load_ds_config(write(tmp_path, {**lamb, "fp16": {"enabled": True}}), 8, 1000)["optimizer"]["type"] == "Lamb"
    monkeypatch.setattr(ds_config_module, "_cuda", lambda: False)
    with pytest.raises(UserError, match="FusedLamb. is a CUDA kernel"):
        load_ds_config(write(tmp_path, {**lamb, "fp16": {"enabled": True}}), 8, 1000)


@pytest.mark.parametrize("phase, sequences", [(1, 65536), (2, 32768)])  # 128 then 512 tokens
def test_the_lamb_configs_are_nvidias_two_phases_at_every_world_size_up_to_1024(phase, sequences, on_a_gpu):
    path = os.path.join(REPO, "ds_configs", f"lamb_fp16_phase{phase}.json")
    for world_size in WORLD_SIZES:
        config = load_ds_config(path, world_size, 10_000)
        assert config["train_batch_size"] == sequences
        assert config["zero_optimization"]["stage"] == 0 and config["fp16"]["loss_scale"] == 0
