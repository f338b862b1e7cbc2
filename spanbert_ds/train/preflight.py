"""`deepspeed train.py --preflight ...` (or `spanbert-ds preflight ...` under srun, mpirun or torchrun):
before a long run, check what it depends on, started exactly as the run will be. One line per check;
the first failure ends it with exit status 1.

Every check is collective: each rank looks for itself, rank 0 compares what all of them saw, and every
rank leaves with the same verdict.
"""

import hashlib
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from spanbert_ds.data.blend import parse_data
from spanbert_ds.data.shards import FILES
from spanbert_ds.errors import UserError
from spanbert_ds.run.distributed import (RANK_SETTINGS, fill_rank_environment, forwarding_hint,
                                         gather_from_ranks, on_gpus, open_process_group, rank_list,
                                         rank_settings_report, ranks_by_host)
from spanbert_ds.run.ds_config import load_ds_config
from spanbert_ds.train.args import add_arguments, overrides_of  # noqa: F401 (add_arguments: the command's)

RENDEZVOUS_TIMEOUT = timedelta(seconds=120)
SAMPLED_BLOCKS, BLOCK = 16, 1 << 16
ALL_REDUCE_BYTES, ALL_REDUCE_REPEATS = 32 << 20, 5


class Failed(Exception):
    pass


def run(args):
    rank, world_size, _ = fill_rank_environment()  # refuses the network settings that would hang, one line
    say = print if rank == 0 else (lambda *_, **__: None)
    started = time.monotonic()
    open_process_group(rank, RENDEZVOUS_TIMEOUT)
    try:
        hosts, differing, _ = rank_settings_report(world_size)
        by_host = ranks_by_host(hosts)
        say(f"ok    rendezvous: {world_size} rank{'s' * (world_size > 1)} on {len(by_host)} node{'s' * (len(by_host) > 1)} ("
            + ", ".join(f"{host}: {rank_list(ranks)}" for host, ranks in by_host.items())
            + f") at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}, {dist.get_backend()}, "
            f"{time.monotonic() - started:.1f} s")
        checks = [("settings", lambda: _settings(differing)),
                  ("data", lambda: _data(args.data, hosts)),
                  ("output", lambda: _output(args.output, rank, world_size, hosts)),
                  ("batch", lambda: _batch(args, world_size)),
                  ("all-reduce", lambda: _all_reduce(world_size))]
        for name, check in checks:
            try:
                verdict = check()
            except Failed as failure:
                say(f"FAIL  {name}: {failure}")
                return 1
            say(f"ok    {name}: {verdict}")
        say("preflight passed: start the run the same way without --preflight")
        return 0
    finally:
        sys.stdout.flush()
        dist.barrier()
        dist.destroy_process_group()


def _settings(differing):
    if differing:
        raise Failed(" | ".join(differing) + f". {forwarding_hint()}")
    return f"{', '.join(RANK_SETTINGS)} are the same on every rank"


def _data(value, hosts):
    """--data, one folder or a blend (\"0.7 wiki/ 0.3 books/\"): every folder, and the weights, the same on
    every rank."""
    try:
        blend = parse_data(value)
    except UserError as error:
        raise Failed(str(error)) from None
    if len(blend) == 1:
        return _same_everywhere(_fingerprint(blend[0][1]), hosts, f"the shard folder {blend[0][1]}")
    fingerprints = [_fingerprint(folder) for _, folder in blend]
    bad = [(folder, fp) for (_, folder), fp in zip(blend, fingerprints) if fp.startswith(("missing", "incomplete"))]
    if bad:
        kind, _, why = bad[0][1].partition(" ")
        seen = f"{kind}: {bad[0][0]} {why}"  # e.g. "missing: books/ (no such folder)"
    else:
        digest = hashlib.sha256(repr([(w, fp) for (w, _), fp in zip(blend, fingerprints)]).encode())
        seen = "sha256 " + digest.hexdigest()[:16]
    folders = ", ".join(f"{w:g} {folder}" for w, folder in blend)
    return _same_everywhere(seen, hosts, f"the blend of shard folders {folders}")


def _fingerprint(folder):
    """What a rank sees of a shard folder: each file's size, meta.json and tokenizer.json whole, and sampled
    blocks of the large files (reading all of a corpus on every rank would take minutes)."""
    if not os.path.isdir(folder):
        return "missing (no such folder)"
    digest = hashlib.sha256()
    for sub in ("", "valid"):
        for name in FILES:
            path = os.path.join(folder, sub, name)
            if not os.path.exists(path):
                if not sub:
                    return f"incomplete (no {name})"
                continue
            size = os.path.getsize(path)
            digest.update(f"{sub}/{name}:{size}".encode())
            with open(path, "rb") as f:
                if name.endswith(".json"):
                    digest.update(f.read())
                    continue
                for i in range(SAMPLED_BLOCKS):
                    f.seek(size * i // SAMPLED_BLOCKS)
                    digest.update(f.read(BLOCK))
    return "sha256 " + digest.hexdigest()[:16]


def _same_everywhere(seen, hosts, what):
    everyone = gather_from_ranks(seen, len(hosts))
    if everyone[0].startswith(("missing", "incomplete")):
        raise Failed(f"{what} is {everyone[0]} on rank 0 ({hosts[0]})")
    odd = [r for r, value in enumerate(everyone) if value != everyone[0]]
    if odd:
        raise Failed(f"{what} is {everyone[odd[0]]} on rank{'s' * (len(odd) > 1)} {rank_list(odd)} ("
                     f"{', '.join(dict.fromkeys(hosts[r] for r in odd))}) but {everyone[0]} on rank 0 ({hosts[0]})")
    return f"{what} is the same on every rank ({everyone[0]})"


def _output(folder, rank, world_size, hosts):
    """The run folder must be one folder that every node can write: rank 0 leaves a file there that every
    rank must read, and every rank leaves one that rank 0 must find. Nothing is left behind."""
    probe = os.path.join(folder, f".preflight-{os.environ['MASTER_PORT']}")
    made = rank == 0 and not os.path.isdir(folder)
    problem = None
    if rank == 0:
        try:
            os.makedirs(folder, exist_ok=True)
            with open(probe, "w") as f:
                f.write(os.environ["MASTER_ADDR"])
        except OSError as error:
            problem = f"rank 0 ({hosts[0]}) cannot write in it: {error.strerror}"
    if problem := gather_from_ranks(problem, world_size)[0]:
        raise Failed(f"--output {folder}: {problem}")
    try:
        with open(f"{probe}-{rank}", "w") as f:
            f.write(str(rank))
        mine = None if os.path.exists(probe) else "does not see rank 0's file in it"
    except OSError as error:
        mine = f"cannot write in it: {error.strerror}"
    everyone = gather_from_ranks(mine, world_size)
    if rank == 0:
        for r in range(world_size):
            if not everyone[r] and not os.path.exists(f"{probe}-{r}"):
                everyone[r] = "wrote a file in it that rank 0 does not see"
            _remove(f"{probe}-{r}")
        _remove(probe)
        if made:
            os.rmdir(folder)
    everyone = gather_from_ranks(everyone, world_size)[0]  # rank 0's verdict, for every rank
    bad = [r for r, value in enumerate(everyone) if value]
    if bad:
        raise Failed(f"--output {folder}: rank {bad[0]} ({hosts[bad[0]]}) {everyone[bad[0]]}; every node must see "
                     "one shared folder" + (f" ({len(bad) - 1} more ranks too)" if len(bad) > 1 else ""))
    return f"--output {folder} is one folder every rank can write"


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _batch(args, world_size):
    try:
        config = load_ds_config(args.deepspeed_config, world_size, args.steps, overrides=overrides_of(args))
    except UserError as error:
        raise Failed(str(error)) from None
    micro, accumulation = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    return (f"train_batch_size {config['train_batch_size']} = micro batch {micro} x {world_size} ranks x "
            f"{accumulation} accumulation steps")


def _all_reduce(world_size):
    if world_size == 1:
        return "one rank: nothing to exchange"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpus() else torch.device("cpu")
    data = torch.ones(ALL_REDUCE_BYTES // 4, device=device)
    times = time_all_reduce(data, ALL_REDUCE_REPEATS)
    data.fill_(1.0)
    dist.all_reduce(data)
    if not bool((data == world_size).all()):
        raise Failed(f"an all-reduce of ones over {world_size} ranks did not sum to {world_size}")
    best = min(times)
    # Bus bandwidth: what each rank sends and receives in a ring all-reduce, 2 (n - 1) / n of the data.
    bus = 2 * (world_size - 1) / world_size * ALL_REDUCE_BYTES / best / 1e9
    return (f"{ALL_REDUCE_BYTES >> 20} MiB in {best * 1e3:.1f} ms (best of {ALL_REDUCE_REPEATS}), "
            f"bus bandwidth {bus:.2f} GB/s")


def time_all_reduce(data, repeats, warmup=1):
    """Collective. Seconds each of `repeats` all-reduces of `data` took, after `warmup` untimed ones (which
    pay for connections and buffers); the ranks start each one together."""
    sync = torch.cuda.synchronize if data.is_cuda else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        sync()
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(data)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times
