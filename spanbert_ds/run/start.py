"""How every run starts and ends, pretraining's and fine-tuning's: run -> prepare -> train.

prepare builds and checks the whole run on every rank before the process group exists, so a mistake is
one line (rank 0's) before any work; train starts the process group and trains. Stop signals are
honoured from the very start: one during set-up (which can take minutes when a checkpoint is converted
or loaded) stops the run at its first step boundary instead of killing it.
"""

import torch
import torch.distributed as dist

from spanbert_ds.errors import UserError
from spanbert_ds.run.distributed import fill_rank_environment, said_by_rank_0
from spanbert_ds.run.signals import StopRequest


def start(prepare, train):
    """prepare(world_size, rank) -> what train(prepared, rank, world_size, stop) runs; returns train's exit code."""
    stop = StopRequest()
    rank, world_size, local_rank = fill_rank_environment()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before the first collective, so NCCL puts each rank on its own GPU
    try:
        prepared = prepare(world_size, rank)
    except UserError:
        said_by_rank_0(rank)
        raise
    try:
        return train(prepared, rank, world_size, stop)
    finally:  # also after an error: a process group left open aborts the interpreter's exit
        if dist.is_initialized():
            dist.destroy_process_group()
