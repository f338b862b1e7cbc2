"""One process group however the ranks were started: the deepspeed launcher or torchrun
(RANK etc. already set), mpirun (OMPI_COMM_WORLD_*), srun (SLURM_*), or a plain process, on one node or
many; and the checks that turn a multi-node mistake into one line instead of a hang."""

import fcntl
import glob
import ipaddress
import os
import re
import socket
import struct
import sys
import time

from spanbert_ds.errors import UserError

# Settings a rank depends on that a launcher may leave behind on the way to other nodes: the deepspeed
# launcher's multi-node (pdsh) path forwards only variables named PYTHON*, MLFLOW*, MV2*, UCX* and those
# in .deepspeed_env. Every run compares them across ranks (check_rank_settings).
RANK_SETTINGS = {
    "GLOO_SOCKET_IFNAME": "the network interface Gloo uses",
    "NCCL_SOCKET_IFNAME": "the network interface NCCL uses",
    "OMP_NUM_THREADS": "CPU threads per rank",
    "TORCH_EXTENSIONS_DIR": "where DeepSpeed caches the ops it builds",
    "HF_HUB_OFFLINE": "whether transformers may look for a hub",
}


def forwarding_hint(env=os.environ):
    """How the launcher that started this rank passes variables to the other nodes."""
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "mpirun passes the other nodes only the variables named with -x NAME"
    if "SLURM_PROCID" in env:
        return "srun passes what --export names (ALL by default) from the shell that runs it"
    return ("the deepspeed launcher passes a multi-node run only the variables named in .deepspeed_env (NAME=VALUE "
            "lines, in the folder it starts from or the home folder, or the file DS_ENV_FILE names) and those "
            "starting with PYTHON, MLFLOW, MV2 or UCX")


def fill_rank_environment():
    """Set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT where the launcher did not, and check the
    network settings before anything waits on them."""
    env = os.environ
    if "RANK" not in env:
        if "OMPI_COMM_WORLD_RANK" in env:
            _from_mpirun(env)
        elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
            _from_srun(env)
        else:
            env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            env.setdefault("MASTER_PORT", str(free_port()))
    # Multi-rank launches on one machine that name no address stay on its loopback.
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    check_network(env)
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])


def _from_mpirun(env):
    env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
    env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
    env["LOCAL_RANK"] = env["OMPI_COMM_WORLD_LOCAL_RANK"]
    if "MASTER_ADDR" in env and "MASTER_PORT" in env or env["WORLD_SIZE"] == "1":
        return
    # mpirun (and `deepspeed --launcher openmpi`, which passes no address) tells no rank where rank 0 is:
    # rank 0 says it over MPI itself. Before MPI starts: an interface MPI's TCP transport cannot find makes
    # MPI_Init crash with a segmentation fault, and `deepspeed --launcher openmpi` asks for eth0 unless
    # --launcher_args names the interfaces.
    wanted = [name for name in env.get("OMPI_MCA_btl_tcp_if_include", "").split(",") if name and "/" not in name]
    names = interfaces()
    missing = [name for name in wanted if name not in names]
    if missing:
        raise UserError(f"mpirun's btl_tcp_if_include names {missing[0]}, an interface node {socket.gethostname()} "
                        f"does not have (it has: {', '.join(sorted(names))}); `deepspeed --launcher openmpi` "
                        "asks for eth0 unless you pass --launcher_args='--mca btl_tcp_if_include IFACE'")
    try:
        from mpi4py import MPI
    except ImportError:
        if spans_nodes(env):
            raise UserError("mpirun across nodes needs the address of rank 0's host: add -x MASTER_ADDR=HOST "
                            "-x MASTER_PORT=PORT, or pip install mpi4py and the ranks agree on it themselves") from None
        return
    found = None
    if MPI.COMM_WORLD.Get_rank() == 0:
        found = (env.get("MASTER_ADDR") or rendezvous_address(env), env.get("MASTER_PORT") or str(free_port("")))
    env["MASTER_ADDR"], env["MASTER_PORT"] = MPI.COMM_WORLD.bcast(found, root=0)


def _from_srun(env):
    # An srun step (not the batch script itself, where SLURM_NTASKS describes the whole allocation).
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:  # srun outside slurm/pretrain.sbatch (or `deepspeed --launcher slurm`)
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise UserError("srun gave this task no node list (SLURM_STEP_NODELIST): set MASTER_ADDR to rank 0's host")
        env["MASTER_ADDR"] = first_host(nodes)
    # The same port on every task of the step, and another for each step of the job.
    job, step = int(env.get("SLURM_JOB_ID", "0")), int(env.get("SLURM_STEP_ID", "0")) % 1000
    env.setdefault("MASTER_PORT", str(20000 + (job * 7 + step) % 20000))


def first_host(nodelist):
    """The first host of a SLURM host list: 'gpu[07-12,15],cpu1' -> 'gpu07' (what scontrol show hostnames
    lists first)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", nodelist[:end])


def spans_nodes(env=os.environ):
    """Whether the launcher put this run's ranks on more than one node, by what each launcher tells a rank."""
    if "CROSS_SIZE" in env:  # the deepspeed launcher
        return int(env["CROSS_SIZE"]) > 1
    if "OMPI_COMM_WORLD_SIZE" in env:
        return env["OMPI_COMM_WORLD_SIZE"] != env.get("OMPI_COMM_WORLD_LOCAL_SIZE", env["OMPI_COMM_WORLD_SIZE"])
    if "SLURM_STEP_NUM_NODES" in env and "SLURM_PROCID" in env:
        return int(env["SLURM_STEP_NUM_NODES"]) > 1
    if "LOCAL_WORLD_SIZE" in env:  # torchrun
        return env["LOCAL_WORLD_SIZE"] != env.get("WORLD_SIZE")
    return False


def interfaces():
    """{name: IPv4 address or None} of this node's network interfaces."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                request = struct.pack("256s", name.encode()[:15])
                found[name] = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, request)[20:24])  # SIOCGIFADDR
            except OSError:
                found[name] = None
    return found


def is_loopback(host):
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, socket.AF_INET))
    except (socket.gaierror, ValueError):
        return False


def rendezvous_address(env):
    """An address of this node that the others can reach: that of the interface GLOO_SOCKET_IFNAME (or
    NCCL_SOCKET_IFNAME) names, else the hostname where it does not resolve to loopback, else the first
    interface that has an address and is not loopback."""
    addresses = interfaces()
    for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        name = env.get(variable, "").split(",")[0]
        if addresses.get(name):
            return addresses[name]
    if not is_loopback(socket.gethostname()):
        return socket.gethostname()
    for name, address in addresses.items():
        if address and not ipaddress.ip_address(address).is_loopback:
            return address
    raise UserError(f"this node ({socket.gethostname()}) has no address other nodes can reach: set MASTER_ADDR")


def check_network(env):
    """Refuse at once, in one line, the network settings that would make a multi-node run hang in its first
    collective until a timeout."""
    host = socket.gethostname()
    names = interfaces()
    for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        value = env.get(variable, "")
        # NCCL also takes prefixes (eth), exclusions (^docker) and exact names (=eth0): only plain full names
        # are checked.
        wanted = [name for name in value.split(",") if name] if variable == "GLOO_SOCKET_IFNAME" else \
            [name.lstrip("=") for name in value.split(",") if name.startswith("=")]
        missing = [name for name in wanted if name not in names]
        if missing:
            raise UserError(f"{variable}={value}, but node {host} has no interface {missing[0]} (it has: "
                            f"{', '.join(sorted(names))}); name one it has, or unset {variable}")
    if not spans_nodes(env):
        return
    if is_loopback(env["MASTER_ADDR"]):
        raise UserError(f"MASTER_ADDR={env['MASTER_ADDR']} is loopback, but this run's ranks are on several nodes: "
                        "set it to rank 0's host (the launchers and slurm/pretrain.sbatch do when they are given none)")
    for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        chosen = [name for name in env.get(variable, "").split(",") if name]
        if chosen and all(name in names and (name == "lo" or is_loopback(names[name] or "")) for name in chosen):
            raise UserError(f"{variable}={env[variable]} keeps the collectives on loopback, but this run's ranks are "
                            f"on several nodes: unset it or name the interface between the nodes (node {host} has: "
                            f"{', '.join(sorted(names))})")
    if "GLOO_SOCKET_IFNAME" not in env and not on_gpus() and is_loopback(host):
        raise UserError(f"this node's hostname {host} resolves to a loopback address, where Gloo would listen and the "
                        "other nodes cannot reach it: set GLOO_SOCKET_IFNAME to the interface between the nodes "
                        f"(node {host} has: {', '.join(sorted(names))})")


def on_gpus():
    import torch

    return torch.cuda.is_available()


def rank_settings_report(world_size):
    """Collective. Each rank's host; the RANK_SETTINGS that differ between ranks (one line each, naming the
    ranks and hosts); and, on a run the deepspeed launcher spread over nodes, those unset on every rank."""
    everyone = gather_from_ranks((socket.gethostname(), {name: os.environ.get(name) for name in RANK_SETTINGS}),
                                 world_size)
    differing = []
    for name in RANK_SETTINGS:
        where = {}  # value -> {host: [ranks]}
        for rank, (host, settings) in enumerate(everyone):
            where.setdefault(settings[name], {}).setdefault(host, []).append(rank)
        if len(where) > 1:
            differing.append(f"{name} ({RANK_SETTINGS[name]}) is " + "; ".join(
                ("unset" if value is None else repr(value)) + " on " + ", ".join(
                    f"{host} (rank{'s' if len(ranks) > 1 else ''} {rank_list(ranks)})" for host, ranks in hosts.items())
                for value, hosts in where.items()))
    unset = [name for name in RANK_SETTINGS if all(settings[name] is None for _, settings in everyone)]
    return [host for host, _ in everyone], differing, unset if int(os.environ.get("CROSS_SIZE", "1")) > 1 else []


def gather_from_ranks(value, world_size):
    """Collective. Every rank's value (any picklable object), in rank order, on every rank."""
    import torch.distributed as dist

    everyone = [None] * world_size
    dist.all_gather_object(everyone, value)
    return everyone


def ranks_by_host(hosts):
    """{host: [its ranks]} from each rank's host, hosts in the order of their first rank."""
    return {host: [rank for rank, its in enumerate(hosts) if its == host] for host in dict.fromkeys(hosts)}


def rank_list(ranks):
    return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)) else \
        ",".join(map(str, ranks))


def check_rank_settings(rank, world_size):
    """Collective. Say on rank 0 which settings a launcher did not pass to every rank, instead of running
    on silently without them. Returns each rank's host."""
    hosts, differing, unset = rank_settings_report(world_size)
    if rank != 0:
        return hosts
    for line in differing:
        print(f"warning: {line}. If a launcher dropped it: {forwarding_hint()}", file=sys.stderr)
    if unset:
        print(f"note: unset on every rank: {', '.join(unset)}. If you set any of them where you started the "
              f"run, {forwarding_hint()}", file=sys.stderr)
    return hosts


def free_port(host="127.0.0.1"):
    """A TCP port that is free on host (loopback by default) now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def open_process_group(rank, timeout=None):
    """deepspeed.init_distributed on NCCL (GPUs) or Gloo (CPUs), leaving nothing in /dev/shm. timeout: that
    of the rendezvous and every collective (default DeepSpeed's)."""
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="nccl" if on_gpus() else "gloo", auto_mpi_discovery=False,
                               **({"timeout": timeout} if timeout else {}))
    dist.barrier()  # every rank has mapped the others' shared-memory buffers: their names can go
    unlink_shared_memory_names(rank)


def start_process_group(rank, world_size):
    """The process group of a training run, and the checks every run makes of it. Returns each rank's host."""
    open_process_group(rank)
    return check_rank_settings(rank, world_size)


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
    """deepspeed.initialize, with a setting DeepSpeed refuses (one our checks in run/ds_config.py do not know of)
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
