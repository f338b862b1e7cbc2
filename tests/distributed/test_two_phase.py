"""Two-phase training (NVIDIA's BERT: most steps at 128 tokens, then 512 at another batch), on CPU:
phase 1 at 64 tokens, then `--continue-from` phase 1 at 128 tokens and twice the global batch.

Phase 2 starts from phase 1's last checkpoint: its weights, optimizer moments and step count (the
global steps and Adam's own go on), with its own schedule and optimizer settings; killed with -9
after its first checkpoint and resumed, it gives the uninterrupted phase-2 losses bit for bit.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from spanbert_ds.run import checkpoint
from tests.distributed.launch import REPO, environment, kill_once_saved, launch, losses, metrics

pytestmark = pytest.mark.slow  # launches processes: left out by `pytest -m "not slow"`

PHASE1_STEPS, PHASE2_STEPS = 4, 6
PHASE2 = range(PHASE1_STEPS + 1, PHASE1_STEPS + PHASE2_STEPS + 1)  # global steps 5 .. 10
PHASE2_LR, PHASE2_BETAS = 3e-3, [0.9, 0.98]


def write_config(path, scheduler, betas=(0.9, 0.999)):
    config = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 5e-3, "betas": list(betas), "weight_decay": 0.01,
                                                        "torch_adam": True}},
              "scheduler": scheduler, "zero_optimization": {"stage": 2}}
    with open(path, "w") as f:
        json.dump(config, f)
    return str(path)


def common(shards, out, config, steps, max_seq_len):
    return ["--deepspeed_config", config, "--model", "tiny", "--objective", "spanbert", "--data", shards,
            "--output", out, "--steps", str(steps), "--max-seq-len", str(max_seq_len), "--log-every", "1",
            "--save-every", "2", "--num-workers", "1", "--attention", "eager"]


def check(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def phases(tmp_path_factory, python_docs_shards):
    tmp, shards = tmp_path_factory.mktemp("two_phase"), str(python_docs_shards.path)
    # Phase 1 ends at its peak rate (WarmupLR keeps it): a phase 2 that kept phase 1's rate would show it.
    phase1_config = write_config(tmp / "phase1.json", {"type": "WarmupLR", "params": {
        "warmup_min_lr": 0, "warmup_max_lr": 5e-3, "warmup_num_steps": 2, "warmup_type": "linear"}})
    phase2_config = write_config(tmp / "phase2.json", {"type": "WarmupDecayLR", "params": {
        "warmup_min_lr": 0, "warmup_max_lr": 5e-3, "warmup_num_steps": 100, "warmup_type": "linear"}}, PHASE2_BETAS)
    phase1 = str(tmp / "phase1")
    check(launch(common(shards, phase1, phase1_config, PHASE1_STEPS, 64)))

    def phase2_args(out):
        return [*common(shards, out, phase2_config, PHASE2_STEPS, 128), "--continue-from", phase1,
                "--global-batch-size", "16", "--lr", str(PHASE2_LR), "--warmup", "2"]

    whole = str(tmp / "phase2")
    check(launch(phase2_args(whole)))
    killed = str(tmp / "phase2_killed")
    kill_once_saved(phase2_args(killed), killed, f"step{PHASE1_STEPS + 2}", ranks=1, launcher="python")
    survived = [row["step"] for row in metrics(killed) if "loss" in row]
    resumed = launch(phase2_args(killed))
    check(resumed)
    return {"phase1": phase1, "whole": whole, "killed": killed, "survived": survived, "resumed": resumed,
            "phase2_args": phase2_args, "tmp": tmp, "shards": shards, "phase1_config": phase1_config}


def test_phase_2_killed_after_its_first_checkpoint_resumes_to_the_uninterrupted_losses_bit_for_bit(phases):
    whole, killed = losses(phases["whole"]), losses(phases["killed"])
    assert sorted(whole) == list(PHASE2)  # phase 2 logs the global steps after phase 1's
    assert phases["survived"][:2] == [5, 6]  # killed after step 6 was saved, maybe mid-step 7 or later
    assert "resumed from step6 at step 6" in phases["resumed"].stdout + phases["resumed"].stderr
    assert [killed[s]["loss"] for s in PHASE2] == [whole[s]["loss"] for s in PHASE2]
    assert [row["step"] for row in metrics(phases["killed"]) if "loss" in row] == list(PHASE2)
    assert [killed[s]["tokens_seen"] for s in PHASE2] == [whole[s]["tokens_seen"] for s in PHASE2]
    print("phase-2 losses, uninterrupted and killed -9 at step 6 then resumed:",
          {s: (whole[s]["loss"], killed[s]["loss"]) for s in PHASE2})


def test_phase_2_goes_on_from_phase_1s_steps_tokens_and_optimizer_with_its_own_schedule(phases):
    first = losses(phases["phase1"])
    whole = losses(phases["whole"])
    # the schedule restarts: phase 2 warms up again over its own 2 steps to its own --lr (as every DeepSpeed
    # schedule, from a first step at warmup_min_lr), then decays over its own --steps
    assert [whole[s]["lr"] for s in PHASE2] == pytest.approx([0, 0, PHASE2_LR / 2, PHASE2_LR, PHASE2_LR * 3 / 4,
                                                           PHASE2_LR / 2])
    assert first[PHASE1_STEPS]["lr"] == 5e-3
    # the tokens axis goes on from phase 1's count; phase 2's samples hold up to 128 tokens
    assert whole[5]["tokens_seen"] > first[PHASE1_STEPS]["tokens_seen"]
    assert whole[5]["tokens_seen"] - first[PHASE1_STEPS]["tokens_seen"] > 16 * 64
    # Adam's own step count goes on (its bias correction): 4 in phase 1's last checkpoint, 6 two steps later
    assert client_state(phases["phase1"], PHASE1_STEPS)["adam_step"] == PHASE1_STEPS
    assert client_state(phases["whole"], 6)["adam_step"] == 6
    assert optimizer_steps(phases["whole"], 6) == {6.0}
    origin = {"run": os.path.abspath(phases["phase1"]), "tag": f"step{PHASE1_STEPS}", "step": PHASE1_STEPS}
    with open(os.path.join(phases["whole"], "run_config.json")) as f:
        assert json.load(f)["continued_from"] == origin
    for step in (6, 8, 10):
        assert read_marker(phases["whole"], step)["continued_from"] == origin
        assert read_marker(phases["whole"], step)["train_batch_size"] == 16


LOAD_ONLY = r"""
import argparse, json, os, sys
import torch, torch.distributed as dist
from spanbert_ds.run import checkpoint, resume
from spanbert_ds.run.distributed import fill_rank_environment, initialize_engine, start_process_group
from spanbert_ds.train import loop
from spanbert_ds.train.resume import source

parser = argparse.ArgumentParser()
loop.add_arguments(parser)
args = parser.parse_args(sys.argv[1:])
rank, world_size, _ = fill_rank_environment()
run = loop.prepare(args, world_size, rank)
start_process_group(rank, world_size)
torch.manual_seed(args.seed)
objective = run.objective_class(run.model_config)
root, tag = source(run)
tag = resume.tag_to_load(root, tag, run.load_universal, rank)
weight_decay = run.ds_config["optimizer"].get("params", {}).get("weight_decay", 0.0)
engine = initialize_engine(objective, run.ds_config, args.deepspeed_config, rank, weight_decay)
step = resume.load(engine, root, tag, new_phase=True)["step"]
saved = checkpoint.fp32_state_dict(root, tag, run.objective_class(run.model_config))
module = engine.module.state_dict()
groups = resume._inner_optimizer(engine).param_groups
print(json.dumps({"step": step, "adam_step": resume._adam_step(engine), "lr": engine.get_lr()[0],
                  "betas": [list(g["betas"]) for g in groups],
                  "compared": sum(k in module for k in saved),
                  "same_weights": all(torch.equal(module[k].float(), v.float()) for k, v in saved.items() if k in module)}))
dist.destroy_process_group()
"""


def test_loading_phase_1_gives_its_last_weights_and_adam_step_with_phase_2s_settings(phases):
    out = str(phases["tmp"] / "load_only")
    done = subprocess.run([sys.executable, "-c", LOAD_ONLY, *phases["phase2_args"](out)], env=environment(),
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    check(done)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["compared"] > 10 and loaded["same_weights"], loaded
    assert loaded["step"] == PHASE1_STEPS and loaded["adam_step"] == PHASE1_STEPS
    assert loaded["lr"] == 0.0  # phase 2's warmup start, not phase 1's last rate (5e-3)
    assert loaded["betas"] == [PHASE2_BETAS] * len(loaded["betas"])


def test_a_plain_resume_at_another_sequence_length_is_refused_naming_continue_from(phases):
    done = launch(common(phases["shards"], phases["phase1"], phases["phase1_config"], 8, 128))
    assert done.returncode == 2
    assert "--continue-from" in done.stderr.strip().splitlines()[-1]


def read_marker(run_dir, step):
    return checkpoint.read_marker(os.path.join(run_dir, "checkpoints", f"step{step}"))


def client_state(run_dir, step):
    path = os.path.join(run_dir, "checkpoints", f"step{step}", "mp_rank_00_model_states.pt")
    with torch.serialization.safe_globals(checkpoint._deepspeed_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def optimizer_steps(run_dir, step):
    """Adam's per-parameter step counts in the (one-rank ZeRO-2) optimizer shard of checkpoint `step`."""
    path = os.path.join(run_dir, "checkpoints", f"step{step}", "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with torch.serialization.safe_globals(checkpoint._deepspeed_safe_globals()):
        saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved["optimizer_state_dict"]["base_optimizer_state"]["state"]
    return {float(s["step"]) for s in state.values()}
