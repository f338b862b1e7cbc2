"""A real one-node SLURM cluster on localhost (Debian's slurm-wlm), started and stopped by the tests."""

import os
import shutil
import signal
import subprocess
import time

from spanbert_ds.run.distributed import free_port

# What every cluster of the tests sets: no authentication, no accounting, no cgroups, root.
COMMON_CONF = """\
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
SlurmUser=root
SlurmdUser=root
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation={dir}/state
SlurmctldPidFile={dir}/slurmctld.pid
SlurmctldLogFile={dir}/slurmctld.log
"""

CONF = """\
ClusterName=ci
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmdSpoolDir={dir}/spool
SlurmdPidFile={dir}/slurmd.pid
SlurmdLogFile={dir}/slurmd.log
NodeName=localhost CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""" + COMMON_CONF
# A node that claims more CPUs than the machine has (so that 16 tasks fit on 2 cores, as 16 GPUs' worth of ranks
# would on a real node) is kept in service instead of drained.
MORE_CPUS_THAN_THE_MACHINE = "SlurmdParameters=config_overrides\n"


def available():
    return all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "scontrol")) and os.geteuid() == 0


class Cluster:
    def __init__(self, folder, cpus=None):
        """cpus: what the node tells SLURM it has (default: this machine's); more lets tests start more tasks
        than there are cores (--overcommit does not go past the node's CPUs)."""
        self.dir = str(folder)
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.conf = os.path.join(self.dir, "slurm.conf")
        with open(self.conf, "w") as f:
            # Ports of our own, so that no other cluster on this machine (a test run before) answers.
            f.write(CONF.format(dir=self.dir, cpus=max(cpus or 0, os.cpu_count()), ctld_port=free_port(), d_port=free_port()))
            if (cpus or 0) > os.cpu_count():
                f.write(MORE_CPUS_THAN_THE_MACHINE)
        self.env = dict(os.environ, SLURM_CONF=self.conf)

    def start(self):
        subprocess.run(["/usr/sbin/slurmctld"], env=self.env, check=True)
        subprocess.run(["/usr/sbin/slurmd", "-N", "localhost"], env=self.env, check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.node_state() == "idle":
                return self
            time.sleep(0.25)
        raise RuntimeError(f"the local SLURM node did not become idle (state {self.node_state()!r}); see {self.dir}/*.log")

    def node_state(self):
        return subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout.strip()

    def stop(self):
        for name in ("slurmd", "slurmctld"):
            try:
                pid = int(open(os.path.join(self.dir, f"{name}.pid")).read())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def job(self, job_id):
        """`scontrol show job` as a dict of its key=value fields."""
        text = subprocess.run(["scontrol", "show", "job", str(job_id)], env=self.env, capture_output=True, text=True).stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)
