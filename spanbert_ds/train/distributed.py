"""One process group however the ranks were started: the deepspeed launcher or torchrun
(RANK etc. already set), mpirun (OMPI_COMM_WORLD_*), srun (SLURM_*), or a plain process."""

import glob
import os
import socket
import time

from spanbert_ds.errors import UserError


def fill_rank_environment():
    """Set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT where the launcher did not."""
    env = os.environ
    if "RANK" not in env:
        if "OMPI_COMM_WORLD_RANK" in env:
            env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
            env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
            env["LOCAL_RANK"] = env["OMPI_COMM_WORLD_LOCAL_RANK"]
            if "MASTER_ADDR" not in env and env["OMPI_COMM_WORLD_SIZE"] != env.get("OMPI_COMM_WORLD_LOCAL_SIZE"):
                raise UserError("mpirun across nodes needs the address of rank 0's host: add -x MASTER_ADDR=HOST "
                                "(and -x MASTER_PORT=PORT)")
        elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
            # An srun step (not the batch script itself, where SLURM_NTASKS describes the whole allocation).
            env["RANK"] = env["SLURM_PROCID"]
            env["WORLD_SIZE"] = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
            env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        else:
            env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            env.setdefault("MASTER_PORT", str(free_port()))
    # Multi-rank launches outside a cluster scheduler stay on this machine's loopback.
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])


def free_port():
    """A TCP port that is free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unlink_shared_memory_names(rank):
    """Remove this rank's name of DeepSpeed's CPU all-reduce buffer from /dev/shm. Call after a barrier
    that follows deepspeed.init_distributed.

    DeepSpeed's shm communication op (CPU runs) creates a ~70 MB /dev/shm segment per rank, which every
    rank maps during init_distributed, and never unlinks it: each run left its buffers in RAM until the
    machine restarts. Once all ranks have mapped them the names are not needed (a mapping outlives its
    name), so removing them here leaves nothing behind, even after kill -9."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        return
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer*_{addr}_{port}_{rank}"):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def said_by_rank_0(rank):
    """For an error every rank meets alike: rank 0 reports it; the others leave quietly with the same code, a
    moment later, so that a launcher that stops all ranks on the first exit lets rank 0 speak."""
    if rank != 0:
        time.sleep(1.0)
        raise SystemExit(UserError.exit_code)


def initialize_engine(model, ds_config, config_path, rank, weight_decay):
    """deepspeed.initialize, with a setting DeepSpeed refuses (one our checks in train/args.py do not know of)
    said in one line by rank 0 instead of a traceback on every rank."""
    import deepspeed

    try:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameter_groups(weight_decay),
                                          config=ds_config)
    except (AssertionError, ValueError, TypeError, KeyError, IndexError, NotImplementedError) as error:
        said_by_rank_0(rank)
        raise UserError(f"DeepSpeed refused the configuration in {config_path}: "
                        f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from None
    return engine
