"""What the benchmarks that train models share: running train.py/finetune.py through the deepspeed launcher
a few at a time (finished runs reused), their ds_config, the built-in corpus with a held-out split, their
metrics, and a line about the machine."""

import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launcher_command(script, script_args, ranks, port):
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    if not os.path.isfile(deepspeed):
        deepspeed = shutil.which("deepspeed")
    if not deepspeed:
        raise SystemExit("the deepspeed launcher is not installed in this environment: pip install -e .")
    return [deepspeed, "--num_gpus", str(ranks), "--master_addr", "127.0.0.1", "--master_port", str(port),
            os.path.join(REPO, script), *script_args]


class Job:
    """One training run: its folder, its command, and `done` once it finished with the same command."""

    def __init__(self, name, folder, script, script_args, finished_file):
        self.name, self.folder, self.script, self.script_args = name, folder, script, script_args
        self.finished_file = finished_file  # what the run writes last
        self.marker = os.path.join(folder, "benchmark_job.json")

    def done(self):
        try:
            with open(self.marker) as f:
                return json.load(f)["args"] == self.script_args and os.path.exists(self.finished_file)
        except (OSError, ValueError, KeyError):
            return False


def run_jobs(jobs, args, what):
    """Run the jobs not done yet, args.jobs at a time; stop the benchmark on the first failure."""
    from spanbert_ds.run.distributed import free_port

    todo = [job for job in jobs if args.fresh or not job.done()]
    if len(todo) < len(jobs):
        print(f"  reusing {len(jobs) - len(todo)} finished {what} run(s) in {args.out} (--fresh runs them again)",
              flush=True)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1", TORCH_EXTENSIONS_DIR=os.environ.get(
                   "TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions")))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(name, None)
    running, started = [], time.monotonic()
    while todo or running:
        while todo and len(running) < args.jobs:
            job = todo.pop(0)
            shutil.rmtree(job.folder, ignore_errors=True)
            os.makedirs(job.folder)
            log = open(os.path.join(job.folder, "log.txt"), "w")
            command = launcher_command(job.script, job.script_args, args.ranks, free_port())
            log.write(" ".join(command) + "\n\n")
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                       start_new_session=True)
            running.append((job, process, log, time.monotonic()))
            print(f"  started {job.name}", flush=True)
        time.sleep(0.5)
        for entry in list(running):
            job, process, log, begun = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log.close()
            if process.returncode != 0 or not os.path.exists(job.finished_file):
                for _, other, _, _ in running:  # the benchmark stops here: so do the runs beside it
                    os.killpg(other.pid, 15)
                    other.wait()
                with open(os.path.join(job.folder, "log.txt")) as f:
                    tail = f.read()[-3000:]
                raise SystemExit(f"{job.name} failed (exit code {process.returncode}); its log, "
                                 f"{os.path.join(job.folder, 'log.txt')}, ends:\n{tail}")
            with open(job.marker, "w") as f:
                json.dump({"args": job.script_args, "seconds": time.monotonic() - begun}, f)
            print(f"  finished {job.name} in {time.monotonic() - begun:.0f} s", flush=True)
    return time.monotonic() - started


def write_ds_config(path, batch, micro, lr, warmup):
    config = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": micro, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.98], "eps": 1e-6,
                                                        "weight_decay": 0.01, "torch_adam": True}},
              "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": lr,
                                                                "warmup_num_steps": warmup, "warmup_type": "linear"}},
              "zero_optimization": {"stage": 2}, "steps_per_print": 10**9}
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def prepare_shards(args):
    shards = args.data or os.path.join(args.out, "shards")
    if os.path.isfile(os.path.join(shards, "valid", "meta.json")):
        return shards
    if args.data:
        raise SystemExit(f"--data {shards}: no held-out split (valid/meta.json); prepare it with "
                         f"`spanbert-ds prepare CORPUS {shards} --valid-fraction 0.05`")
    print(f"preparing the built-in corpus into {shards} (5% of the documents held out)", flush=True)
    done = subprocess.run([sys.executable, "-m", "spanbert_ds.cli", "prepare", "python-docs", shards,
                           "--tokenizer", "wordpiece", "--vocab-size", "8000", "--valid-fraction", "0.05",
                           "--overwrite"], cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise SystemExit(f"preparing the corpus failed (exit code {done.returncode}; its output is above)")
    return shards


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    import torch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}; "
            f"load average now {load:.1f}")


def save_figure(fig, out, name):
    """A matplotlib figure as out/name (PNG); returns its path."""
    import matplotlib.pyplot as plt

    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
