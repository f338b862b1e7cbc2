"""Pretraining across two simulated nodes (tests/multinode/nodes.py): every way users start a multi-node
run trains `tiny` to the same losses as two ranks on one host; the multi-node mistakes are one line, not
a hang; preflight says what a node lacks.

Every run uses the same global batch of 8 (micro batch 2) and a constant learning rate, so a run of any
length and any number of ranks logs the reference's losses for the steps it makes.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.distributed.launch import BIN, REPO, launch, losses, metrics
from tests.multinode.nodes import INTERFACE, TwoNodes, available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="needs root and openssh-server, pdsh, iproute2 "
                                                         "(.ci/run installs them)")]

STEPS = 6
LONG = 30  # the runs that are interrupted
PYTHON = sys.executable
DEEPSPEED = os.path.join(BIN, "deepspeed")
TORCH_EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))
MPIRUN = ["mpirun", "--allow-run-as-root", "--mca", "btl_tcp_if_include", INTERFACE, "--mca", "oob_tcp_if_include",
          INTERFACE]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    try:
        nodes = TwoNodes(tmp_path_factory.mktemp("nodes")).start()
    except (subprocess.CalledProcessError, RuntimeError) as error:
        if "Operation not permitted" in str(getattr(error, "stderr", "")):
            pytest.skip("network namespaces are not permitted here")
        raise
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def slurm(nodes):
    if not all(os.path.exists(f"/usr/sbin/{daemon}") for daemon in ("slurmctld", "slurmd")):
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm)")
    return nodes.start_slurm()


@pytest.fixture(scope="module")
def work(tmp_path_factory, python_docs_shards):
    tmp = tmp_path_factory.mktemp("multinode")
    config = tmp / "ds.json"
    config.write_text(json.dumps({
        "train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01, "torch_adam": True}},
        "zero_optimization": {"stage": 2}}))
    # What the deepspeed launcher's pdsh path passes to the ranks besides PYTHON* variables.
    env_file = tmp / "deepspeed_env"
    env_file.write_text(f"OMP_NUM_THREADS=1\nTORCH_EXTENSIONS_DIR={TORCH_EXTENSIONS_DIR}\nHF_HUB_OFFLINE=1\n")
    return tmp, str(config), str(python_docs_shards.path), str(env_file)


def train_args(work, out, steps=STEPS, *extra):
    _, config, shards, _ = work
    return ["--deepspeed_config", config, "--model", "tiny", "--data", shards, "--output", str(out), "--steps",
            str(steps), "--max-seq-len", "64", "--log-every", "1", "--save-every", "5", "--eval-every", "0",
            "--num-workers", "0", "--attention", "eager", *extra]


@pytest.fixture(scope="module")
def reference(work):
    """Two ranks on this host, over loopback: the losses every multi-node run must give."""
    tmp = work[0]
    done = launch(train_args(work, tmp / "reference", LONG), ranks=2, launcher="deepspeed")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [losses(str(tmp / "reference"))[step]["loss"] for step in range(1, LONG + 1)]


def node_env(work, **extra):
    """The environment of a shell on node 1, with nothing that pins the network to loopback."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=TORCH_EXTENSIONS_DIR, HF_HUB_OFFLINE="1", DS_ENV_FILE=work[3],
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def on_node1(nodes, work, command, timeout=240, **env):
    return nodes.run("node1", command, check=False, timeout=timeout, cwd=REPO, env=node_env(work, **env))


def hostfile(work, slots):
    path = work[0] / f"hostfile{slots}"
    path.write_text(f"node1 slots={slots}\nnode2 slots={slots}\n")
    return str(path)


def check_trained(done, out, reference, hosts, steps=STEPS):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logged = losses(str(out))
    assert [logged[step]["loss"] for step in range(1, steps + 1)] == pytest.approx(reference[:steps], rel=1e-6, abs=0)
    assert json.load(open(os.path.join(out, "run_config.json")))["hosts"] == hosts


def test_deepspeed_hostfile_one_slot_per_node_discovers_the_master_address(nodes, work, reference):
    out = work[0] / "ds_2x1"
    done = on_node1(nodes, work, [DEEPSPEED, "--hostfile", hostfile(work, 1), "train.py", *train_args(work, out)])
    check_trained(done, out, reference, {"node1": [0], "node2": [1]})
    # Two ranks add two numbers: the order cannot matter, so the losses are the reference's, bit for bit.
    assert [losses(str(out))[s]["loss"] for s in range(1, STEPS + 1)] == reference[:STEPS]


def test_deepspeed_hostfile_two_slots_per_node(nodes, work, reference):
    out = work[0] / "ds_2x2"
    done = on_node1(nodes, work, [DEEPSPEED, "--hostfile", hostfile(work, 2), "train.py", *train_args(work, out)])
    check_trained(done, out, reference, {"node1": [0, 1], "node2": [2, 3]})


def test_settings_the_pdsh_path_drops_are_named(nodes, work, reference):
    """With OMP_NUM_THREADS left out of .deepspeed_env, the shell's value reaches no rank: the run says so."""
    out = work[0] / "ds_no_threads"
    env_file = work[0] / "deepspeed_env_without_threads"
    env_file.write_text("".join(line for line in open(work[3]).readlines() if not line.startswith("OMP_NUM_THREADS")))
    done = on_node1(nodes, work, [DEEPSPEED, "--hostfile", hostfile(work, 1), "train.py", *train_args(work, out, 2)],
                    DS_ENV_FILE=str(env_file))
    check_trained(done, out, reference, {"node1": [0], "node2": [1]}, steps=2)
    assert "unset on every rank: " in done.stderr and "OMP_NUM_THREADS" in done.stderr.split("unset on every rank: ")[1]
    assert ".deepspeed_env" in done.stderr


def test_deepspeed_openmpi_launcher(nodes, work, reference):
    out = work[0] / "ds_openmpi"
    interface = f"--launcher_args=--allow-run-as-root --mca btl_tcp_if_include {INTERFACE} --mca oob_tcp_if_include {INTERFACE}"
    done = on_node1(nodes, work, [DEEPSPEED, "--launcher", "openmpi", interface, "--hostfile", hostfile(work, 1),
                                  "train.py", *train_args(work, out)])
    check_trained(done, out, reference, {"node1": [0], "node2": [1]})


def test_deepspeed_openmpi_launcher_on_interfaces_not_called_eth0_is_one_line(nodes, work):
    started = time.monotonic()
    done = on_node1(nodes, work, [DEEPSPEED, "--launcher", "openmpi", "--launcher_args=--allow-run-as-root",
                                  "--hostfile", hostfile(work, 1), "train.py", *train_args(work, work[0] / "eth0")],
                    timeout=60)
    assert done.returncode != 0 and time.monotonic() - started < 60
    assert "btl_tcp_if_include names eth0" in done.stdout + done.stderr and "--launcher_args" in done.stdout + done.stderr


@pytest.mark.parametrize("master", ["given", "agreed"])
def test_mpirun_across_nodes(nodes, work, reference, master):
    out = work[0] / f"mpirun_{master}"
    given = ["-x", "MASTER_ADDR=node1", "-x", "MASTER_PORT=29611"] if master == "given" else []
    done = on_node1(nodes, work, [*MPIRUN, "--host", "node1:2,node2:2", "-x", "OMP_NUM_THREADS", "-x",
                                  "TORCH_EXTENSIONS_DIR", *given, PYTHON, "train.py", *train_args(work, out)])
    check_trained(done, out, reference, {"node1": [0, 1], "node2": [2, 3]})


def test_a_setting_that_differs_between_nodes_is_named(nodes, work, reference):
    out = work[0] / "mpirun_differing"
    common = ["-x", "TORCH_EXTENSIONS_DIR", PYTHON, "train.py", *train_args(work, out, 2)]
    done = on_node1(nodes, work, [*MPIRUN, "--host", "node1:1", "-x", "OMP_NUM_THREADS=1", *common, ":",
                                  "--host", "node2:1", "-x", "OMP_NUM_THREADS=2", *common])
    check_trained(done, out, reference, {"node1": [0], "node2": [1]}, steps=2)
    assert "warning: OMP_NUM_THREADS (CPU threads per rank) is '1' on node1 (rank 0); '2' on node2 (rank 1)" in done.stderr


def test_srun_across_two_nodes_finds_rank_0s_host(nodes, slurm, work, reference):
    out = work[0] / "srun"
    done = nodes.run("node1", ["srun", "-N2", "-n2", PYTHON, "train.py", *train_args(work, out)], check=False,
                     timeout=240, cwd=REPO, env={**node_env(work), **slurm})
    check_trained(done, out, reference, {"node1": [0], "node2": [1]})


def test_deepspeed_slurm_launcher(nodes, slurm, work, reference):
    """DeepSpeed's slurm launcher asks srun for tasks, not nodes: --num_nodes places them on both."""
    out = work[0] / "ds_slurm"
    done = nodes.run("node1", [DEEPSPEED, "--launcher", "slurm", "--num_nodes", "2", "--hostfile", hostfile(work, 1),
                               "train.py", *train_args(work, out)], check=False, timeout=240, cwd=REPO,
                     env={**node_env(work), **slurm})
    check_trained(done, out, reference, {"node1": [0], "node2": [1]})


def test_sbatch_on_two_nodes_requeues_and_resumes_to_the_same_losses(nodes, slurm, work, reference):
    out, log = work[0] / "sbatch", work[0] / "sbatch-%j.out"
    env = {**node_env(work), **slurm, "PYTHON": PYTHON, "DS_CONFIG": work[1], "MODEL": "tiny"}
    args = train_args(work, out, LONG)[4:]  # the script passes --deepspeed_config and --model itself
    submit = nodes.run("node1", ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0",
                                 "--cpus-per-task=1", f"--output={log}", "slurm/pretrain.sbatch", *args],
                       cwd=REPO, env=env)
    job = submit.stdout.strip().split(";")[0]
    job_log = str(log).replace("%j", job)
    scontrol = lambda *a: nodes.run("node1", ["scontrol", *a], env=env, check=False).stdout  # noqa: E731
    deadline = time.monotonic() + 300
    while not losses(str(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    # What --signal=USR1@180 does before the time limit: signal the tasks of the job's steps, on both nodes.
    nodes.run("node1", ["scancel", "--signal=USR1", job], env=env)
    state, held_since = {}, None
    while time.monotonic() < deadline:
        state = dict(f.split("=", 1) for f in scontrol("show", "job", job).split() if "=" in f)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and int(state.get("Restarts", 0)):
            break
        if state.get("JobState") == "PENDING" and state.get("Reason") == "BeginTime":
            # A requeued job is held for two minutes; release it once both nodes are idle again.
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since > 3 and scontrol("show", "nodes").count("State=IDLE") == 2:
                scontrol("update", f"JobId={job}", "StartTime=now")
        time.sleep(0.5)
    text = open(job_log).read()
    assert state.get("JobState") == "COMPLETED" and state.get("Restarts") == "1", (state, text[-3000:])
    assert "requeueing job" in text and "resumed from step" in text, text[-3000:]
    logged = losses(str(out))
    assert [logged[s]["loss"] for s in range(1, LONG + 1)] == reference
    assert json.load(open(os.path.join(out, "run_config.json")))["hosts"] == {"node1": [0], "node2": [1]}


def test_kill_9_on_node_2_ends_node_1_promptly_and_the_resumed_run_is_exact(nodes, work, reference):
    out = work[0] / "killed"
    command = [DEEPSPEED, "--hostfile", hostfile(work, 1), "train.py", *train_args(work, out, LONG)]
    process = nodes.popen("node1", command, cwd=REPO, env=node_env(work), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while max(losses(str(out)), default=0) < 12 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    ranks = [pid for pid in nodes.pids_on("node2", "train.py") if "--local_rank=" in open(f"/proc/{pid}/cmdline").read()]
    assert process.poll() is None and ranks, "the run ended before node 2 could be killed"
    for pid in ranks:
        os.kill(pid, 9)
    killed = time.monotonic()
    try:
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    gave_up = time.monotonic() - killed
    print(f"node 1 gave up {gave_up:.1f} s after node 2's rank was killed")
    assert gave_up < 60, f"node 1 took {gave_up:.0f} s to give up"
    assert not nodes.pids_on("node1", "--local_rank="), "a rank on node 1 was left running"

    done = on_node1(nodes, work, command)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stderr
    logged = losses(str(out))
    assert [logged[s]["loss"] for s in range(1, LONG + 1)] == reference
    assert [row["step"] for row in metrics(str(out))] == list(range(1, LONG + 1))


def test_gloo_pinned_to_loopback_across_nodes_fails_at_once(nodes, work, tmp_path):
    env_file = tmp_path / "deepspeed_env"
    env_file.write_text(open(work[3]).read() + "GLOO_SOCKET_IFNAME=lo\n")
    started = time.monotonic()
    done = on_node1(nodes, work, [DEEPSPEED, "--hostfile", hostfile(work, 1), "train.py",
                                  *train_args(work, tmp_path / "run")], timeout=90, DS_ENV_FILE=str(env_file))
    assert done.returncode != 0 and time.monotonic() - started < 60
    assert "GLOO_SOCKET_IFNAME=lo keeps the collectives on loopback" in done.stdout + done.stderr


def preflight(nodes, work, out, *extra):
    return on_node1(nodes, work, [*MPIRUN, "--host", "node1:1,node2:1", "-x", "TORCH_EXTENSIONS_DIR", "-x",
                                  "OMP_NUM_THREADS", "-x", "HF_HUB_OFFLINE", PYTHON, "train.py", "--preflight", *train_args(work, out, STEPS, *extra)],
                    timeout=120)


def test_preflight_passes_on_two_nodes(nodes, work):
    out = work[0] / "preflight"
    done = preflight(nodes, work, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert [line.split(":")[0].split()[-1] for line in lines] == ["rendezvous", "settings", "data", "output", "batch",
                                                                  "all-reduce"], done.stdout
    assert all(line.startswith("ok") for line in lines)
    assert "2 ranks on 2 nodes (node1: 0, node2: 1)" in lines[0]
    assert not out.exists(), "preflight left the output folder it made"


def test_preflight_names_the_node_that_cannot_see_the_data_or_the_output(nodes, work, tmp_path):
    shards = tmp_path / "shards"
    subprocess.run(["cp", "-r", work[2], str(shards)], check=True)
    output = tmp_path / "out"
    output.mkdir()
    # On node 2 only, an empty file system over each folder: what a node that lacks the shared mount sees.
    for folder in (shards, output):
        nodes.run("node2", ["mount", "-t", "tmpfs", "tmpfs", str(folder)])
    try:
        done = preflight(nodes, work, output, "--data", str(shards))
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        assert (f"FAIL  data: the shard folder {shards} is incomplete (no meta.json) on rank 1 (node2) but sha256 "
                in done.stdout)
        nodes.run("node2", ["umount", str(shards)])
        done = preflight(nodes, work, output, "--data", str(shards))
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"FAIL  output: --output {output}: rank 1 (node2) does not see rank 0's file in it" in done.stdout
    finally:
        nodes.run("node2", ["umount", str(output)], check=False)
        nodes.run("node2", ["umount", str(shards)], check=False)


def test_preflight_fails_on_settings_that_differ_between_nodes(nodes, work):
    common = ["-x", "TORCH_EXTENSIONS_DIR", "-x", "HF_HUB_OFFLINE", PYTHON, "train.py", "--preflight",
              *train_args(work, work[0] / "pf")]
    done = on_node1(nodes, work, [*MPIRUN, "--host", "node1:1", "-x", "OMP_NUM_THREADS=1", *common, ":",
                                  "--host", "node2:1", "-x", "OMP_NUM_THREADS=2", *common], timeout=120)
    assert done.returncode == 1
    assert "FAIL  settings: OMP_NUM_THREADS" in done.stdout and "mpirun passes the other nodes only the variables named with -x" in done.stdout
