"""One process group however the ranks were started: the deepspeed launcher or torchrun
(RANK etc. already set), mpirun (OMPI_COMM_WORLD_*), srun (SLURM_*), or a plain process."""

import os
import socket


def fill_rank_environment():
    """Set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT where the launcher did not."""
    env = os.environ
    if "RANK" not in env:
        if "OMPI_COMM_WORLD_RANK" in env:
            env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
            env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
            env["LOCAL_RANK"] = env["OMPI_COMM_WORLD_LOCAL_RANK"]
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            env["RANK"] = env["SLURM_PROCID"]
            env["WORLD_SIZE"] = env["SLURM_NTASKS"]
            env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        else:
            env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            env.setdefault("MASTER_PORT", str(_free_port()))
    # Multi-rank launches outside a cluster scheduler stay on this machine's loopback.
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
