"""The gradient all-reduce of a model, timed on the ranks and network a run would use.

    deepspeed --hostfile hosts benchmarks/allreduce.py --model spanbert-large --vocab 28996 --dtype bf16
    mpirun --host node1:1,node2:1 python benchmarks/allreduce.py --model tiny --vocab 8000

Started like train.py (any launcher), it all-reduces a buffer of the model's parameter count (the
gradient data-parallel training and ZeRO-1/2 exchange each optimizer step; built on the meta device, so
any size is instant) --repeats times and prints, on rank 0, the median time, the bytes each rank sent
(2 (N - 1) / N of the buffer in a ring) and the bus bandwidth they imply: the measured side of
docs/scaling.md's communication tables.
"""

import argparse
import importlib.util
import os
import socket
import statistics
import sys

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)

from spanbert_ds.model.config import PRESETS  # noqa: E402
from spanbert_ds.run.distributed import (fill_rank_environment, gather_from_ranks, on_gpus,  # noqa: E402
                                         open_process_group)
from spanbert_ds.train.preflight import time_all_reduce  # noqa: E402


def scaling():
    """benchmarks/scaling.py, for its parameter count of a model built on the meta device."""
    spec = importlib.util.spec_from_file_location("scaling", os.path.join(REPO, "benchmarks", "scaling.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--vocab", type=int, default=30522, help="the shards' vocabulary (a preset takes it)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="fp32 on CPUs, bf16 with bf16 on")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    args = parser.parse_args()

    rank, world_size, _ = fill_rank_environment()
    open_process_group(rank)
    params, _ = scaling().count_params(scaling().build_on_meta(PRESETS[args.model].replace(vocab_size=args.vocab)))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpus() else torch.device("cpu")
    gradient = torch.ones(params, dtype=dtype, device=device)
    hosts = gather_from_ranks(socket.gethostname(), world_size)
    times = time_all_reduce(gradient, args.repeats, warmup=2)
    median = statistics.median(times)
    if rank == 0:
        size = params * gradient.element_size()
        sent = 2 * (world_size - 1) / world_size * size
        print(f"{args.model} (vocab {args.vocab}): {params:,} parameters, {args.dtype} gradient {size / 1e6:.1f} MB; "
              f"{world_size} ranks on {len(set(hosts))} node(s) over {dist.get_backend()}: all-reduce median "
              f"{median * 1e3:.1f} ms (min {min(times) * 1e3:.1f}) of {args.repeats}; each rank sent "
              f"{sent / 1e6:.1f} MB: bus bandwidth {sent / median / 1e9:.2f} GB/s ({sent * 8 / median / 1e9:.1f} Gb/s)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
