"""Start train.py the ways users do (python, deepspeed launcher, torchrun, mpirun), on loopback only."""

import json
import os
import signal
import subprocess
import sys
import time

from spanbert_ds.run.distributed import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "train.py")
FINETUNE = os.path.join(REPO, "finetune.py")
BIN = os.path.dirname(sys.executable)


def environment():
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
        TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions")),
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(name, None)
    return env


def command(train_args, ranks=1, launcher="python", script=TRAIN):
    port = str(free_port())
    if launcher == "python":
        assert ranks == 1
        return [sys.executable, script, *train_args]
    if launcher == "deepspeed":
        return [os.path.join(BIN, "deepspeed"), "--num_gpus", str(ranks), "--master_addr", "127.0.0.1", "--master_port", port, script, *train_args]
    if launcher == "torchrun":
        return [os.path.join(BIN, "torchrun"), "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1", "--master_port", port, script, *train_args]
    if launcher == "mpirun":
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), "-x", f"MASTER_PORT={port}", "-x", "MASTER_ADDR=127.0.0.1",
                "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo", sys.executable, script, *train_args]
    raise ValueError(launcher)


def launch(train_args, ranks=1, launcher="python", timeout=240, script=TRAIN):
    """Run to completion; returns the CompletedProcess (stdout and stderr captured as text)."""
    return subprocess.run(command(train_args, ranks, launcher, script), env=environment(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def start(train_args, ranks=1, launcher="python", script=TRAIN):
    """Start in its own process group (so the whole tree can be signalled or killed)."""
    return subprocess.Popen(command(train_args, ranks, launcher, script), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, start_new_session=True)


def wait_for(predicate, process, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return predicate()
        time.sleep(0.05)
    return False


def kill_tree(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def kill_once_saved(train_args, run_dir, tag, ranks, launcher):
    """Start a run and kill -9 its whole tree as soon as checkpoint `tag` is complete: mid-run, with steps
    done after it that a resume must redo."""
    process = start(train_args, ranks=ranks, launcher=launcher)
    marker = os.path.join(run_dir, "checkpoints", tag, "complete.json")
    assert wait_for(lambda: os.path.exists(marker), process), f"the run never saved {tag}"
    assert process.poll() is None, "the run finished before it could be killed"
    kill_tree(process)


def metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by SIGKILL
    return rows


def losses(run_dir):
    """{step: row} of the last run logged for each step (a resumed run overwrites the steps it redoes)."""
    return {row["step"]: row for row in metrics(run_dir)}
