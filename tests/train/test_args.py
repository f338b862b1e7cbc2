"""Bad configurations are refused before any rank starts work: one line, exit code 2."""

import json

import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.run.ds_config import load_ds_config


def write(tmp_path, config):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


GOOD = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}


def test_accumulation_is_derived_from_the_batch_sizes_and_world_size(tmp_path):
    config = load_ds_config(write(tmp_path, GOOD), world_size=2, total_steps=100)
    assert config["gradient_accumulation_steps"] == 2
    config = load_ds_config(write(tmp_path, {**GOOD, "train_micro_batch_size_per_gpu": None, "gradient_accumulation_steps": 4}), world_size=2, total_steps=100)
    assert config["train_micro_batch_size_per_gpu"] == 4


def test_a_micro_batch_alone_is_accepted_as_deepspeed_accepts_it(tmp_path):
    # DeepSpeed's HelloDeepSpeed config sets only train_micro_batch_size_per_gpu: accumulation 1, the global
    # batch micro x ranks
    only_micro = {"train_micro_batch_size_per_gpu": 8, "optimizer": GOOD["optimizer"]}
    config = load_ds_config(write(tmp_path, only_micro), world_size=2, total_steps=100)
    assert (config["train_batch_size"], config["gradient_accumulation_steps"]) == (16, 1)
    config = load_ds_config(write(tmp_path, {**only_micro, "gradient_accumulation_steps": 3}), world_size=2, total_steps=100)
    assert config["train_batch_size"] == 48


@pytest.mark.parametrize(
    "change, message",
    [
        ({"gradient_accumulation_steps": 3}, "train_batch_size 32 != train_micro_batch_size_per_gpu 8 x gradient_accumulation_steps 3 x 2 ranks"),
        ({"train_batch_size": 33}, "train_batch_size 33 cannot be split over 2 ranks"),
        ({"train_micro_batch_size_per_gpu": None, "gradient_accumulation_steps": 3},
         "train_batch_size 32 is not divisible by gradient_accumulation_steps 3 x 2 ranks; drop gradient_accumulation_steps"),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "fp16 and bf16 are both enabled"),
        ({"optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 2}}, "does not support optimizer Lamb under ZeRO stage 2"),
        ({"zero_optimization": {"stage": 4}}, "stage is 4"),
        ({"optimizer": None}, "no optimizer block"),
        ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu must be a whole number of at least 1, got 0"),
        ({"train_batch_size": "8"}, "train_batch_size must be a whole number of at least 1, got '8'"),
        ({"train_batch_size": -8, "train_micro_batch_size_per_gpu": -4}, "train_batch_size must be a whole number"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be a whole number of at least 1, got 0"),
        ({"zero_optimization": "2"}, "zero_optimization must be an object"),
        ({"train_batch_size": None, "train_micro_batch_size_per_gpu": None, "gradient_accumulation_steps": 2},
         "set train_batch_size or train_micro_batch_size_per_gpu"),
        # what only DeepSpeed noticed before, inside initialize, as a traceback on every rank
        ({"optimizer": {"type": "FooOpt"}}, "optimizer.type 'FooOpt' is not an optimizer DeepSpeed knows; use one of"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": -0.001}}}, "lr must be a number above 0, got -0.001"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": "abc"}}}, "lr must be a number above 0, got 'abc'"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": float("nan")}}}, "lr must be a number above 0, got nan"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9]}}}, "betas must be two numbers"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "eps": "x"}}}, "eps must be a number of 0 or more"),
        ({"scheduler": {"type": "FooLR"}}, "scheduler.type 'FooLR' is not a DeepSpeed scheduler; use one of"),
        ({"scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": "1e-3"}}},
         "scheduler.params.warmup_max_lr must be a number of 0 or more, got '1e-3'"),
        pytest.param({"fp16": {"enabled": True}}, "fp16 is enabled, but DeepSpeed's fp16 training needs a CUDA GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 trains on a GPU")),
    ],
)
def test_bad_configs_are_refused_with_a_message_that_says_what_to_fix(tmp_path, change, message):
    config = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_ds_config(write(tmp_path, config), world_size=2, total_steps=100)


def test_a_deeply_nested_or_huge_config_is_one_line(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        load_ds_config(str(nested), 1, 10)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({**GOOD, "padding": "x" * (2 << 20)}))  # valid, but 2 MB
    with pytest.raises(UserError, match="is 2.0 MB; a ds_config is a few KB"):
        load_ds_config(str(huge), 1, 10)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_ds_config(str(tmp_path / "nope.json"), 1, 10)
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_batch_size": 8,\n oops}')
    with pytest.raises(UserError, match="not valid JSON \\(line 2"):
        load_ds_config(str(bad), 1, 10)


@pytest.mark.parametrize("scheduler", ["WarmupDecayLR", "WarmupCosineLR"])
def test_schedule_length_follows_steps(tmp_path, scheduler):
    config = {**GOOD, "scheduler": {"type": scheduler, "params": {"warmup_num_steps": 10, "total_num_steps": 100000}}}
    notes = []
    assert load_ds_config(write(tmp_path, config), 1, 500, notes)["scheduler"]["params"]["total_num_steps"] == 500
    assert notes == [f"{tmp_path / 'ds.json'}: scheduler total_num_steps 100000 -> 500 (--steps)"]


def test_a_warmup_longer_than_the_run_is_shortened_and_said(tmp_path):
    config = {**GOOD, "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 1000}}}
    notes = []
    params = load_ds_config(write(tmp_path, config), 1, 50, notes)["scheduler"]["params"]
    assert params["warmup_num_steps"] == 5
    assert len(notes) == 1 and "warmup_num_steps 1000 is not below --steps 50" in notes[0]
