"""Two simulated cluster nodes on this machine, built and torn down by the tests (root only).

Each node is a network namespace with its own address on a private veth pair (an interface that is
deliberately not called eth0), its own hostname, PID space and /dev/shm, and an sshd; the filesystem is
shared, as NFS is on a cluster. Everything that would change the machine (/etc/hosts, /root/.ssh) is
changed only inside a private mount namespace that the nodes live in, so nothing outlives stop().
Traffic between the nodes stays on the veth pair: never on the machine's own addresses.
"""

import os
import shutil
import signal
import subprocess
import time

from tests.slurm.cluster import COMMON_CONF

NAMES = ("node1", "node2")
INTERFACE = "sim0"
SUBNET = "10.213.7"

SSHD_CONFIG = """\
ListenAddress {address}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
"""

SSH_CONFIG = """\
Host *
  IdentityFile {dir}/id_ed25519
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
"""


SLURM_CONF = """\
ClusterName=sim
SlurmctldHost=node1({node1})
SlurmdSpoolDir={dir}/spool-%n
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmdLogFile={dir}/slurmd-%n.log
NodeName=node1 NodeAddr={node1} CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 State=UNKNOWN
NodeName=node2 NodeAddr={node2} CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""" + COMMON_CONF


def available():
    """Root, and the tools the recipe needs (openssh-server, pdsh, iproute2, util-linux)."""
    tools = ("ip", "unshare", "nsenter", "ssh", "/usr/sbin/sshd", "pdsh", "ssh-keygen")
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in tools)


def _run(*cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def _child_of(pid, timeout=10):
    """The first child of pid (the PID 1 of a namespace that `unshare --fork` starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise RuntimeError(f"process {pid} started no child")


class TwoNodes:
    def __init__(self, folder):
        self.dir = str(folder)
        tag = f"sbds{os.getpid()}"
        self.netns = {name: f"{tag}{i}" for i, name in enumerate(NAMES, start=1)}
        self.address = {name: f"{SUBNET}.{i}" for i, name in enumerate(NAMES, start=1)}
        self.holder = None  # the process that keeps the private mount namespace alive
        self.pid = {}  # node name -> PID (in this namespace) of its PID 1, the sshd

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        ssh = os.path.join(self.dir, "ssh")
        os.makedirs(ssh, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{ssh}/id_ed25519")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{ssh}/host_key")
        shutil.copy(f"{ssh}/id_ed25519.pub", f"{ssh}/authorized_keys")
        with open(f"{ssh}/config", "w") as f:
            f.write(SSH_CONFIG.format(dir=ssh))
        hosts = os.path.join(self.dir, "hosts")
        with open(hosts, "w") as f:
            f.write(open("/etc/hosts").read().rstrip("\n") + "\n")
            f.writelines(f"{self.address[name]} {name}\n" for name in NAMES)

        # The namespaces first: their bind mounts under /run/netns must exist before the private mount
        # namespace copies the mount table.
        for name, netns in self.netns.items():
            _run("ip", "netns", "add", netns)
        first, second = self.netns.values()
        _run("ip", "link", "add", "sbdsveth1", "netns", first, "type", "veth", "peer", "name", "sbdsveth2", "netns", second)
        for i, (name, netns) in enumerate(self.netns.items(), start=1):
            _run("ip", "-n", netns, "link", "set", f"sbdsveth{i}", "name", INTERFACE)
            _run("ip", "-n", netns, "addr", "add", f"{self.address[name]}/24", "dev", INTERFACE)
            _run("ip", "-n", netns, "link", "set", "lo", "up")
            _run("ip", "-n", netns, "link", "set", INTERFACE, "up")

        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"])
        mount = ["nsenter", "-t", str(self.holder.pid), "-m", "--"]
        time.sleep(0.1)
        _run(*mount, "mount", "--bind", hosts, "/etc/hosts")
        os.makedirs("/root/.ssh", mode=0o700, exist_ok=True)
        _run(*mount, "mount", "--bind", ssh, "/root/.ssh")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory

        for name, netns in self.netns.items():
            config = os.path.join(self.dir, f"sshd_{name}.conf")
            with open(config, "w") as f:
                f.write(SSHD_CONFIG.format(address=self.address[name], dir=ssh))
            # nsenter --net rather than `ip netns exec`, which remounts /sys and so hides the cgroup
            # mounts that slurmd needs.
            node = subprocess.Popen(
                [*mount, "nsenter", f"--net=/run/netns/{netns}", "unshare", "--uts", "--pid", "--mount", "--fork",
                 "--mount-proc", "sh", "-c", f"hostname {name}; mount -t tmpfs tmpfs /dev/shm; "
                 f"exec /usr/sbin/sshd -D -e -f {config} 2>>{self.dir}/sshd_{name}.log"],
                stdin=subprocess.DEVNULL)
            self.pid[name] = _child_of(node.pid)
        deadline = time.monotonic() + 30
        for name in NAMES:
            while self.run("node1", ["ssh", "-o", "ConnectTimeout=2", name, "true"], check=False).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd on {name} does not answer; see {self.dir}/sshd_{name}.log")
                time.sleep(0.2)

    def enter(self, node):
        """The command prefix that runs a command on node (its network, hostname, PIDs and mounts)."""
        return ["nsenter", "-t", str(self.pid[node]), "-m", "-n", "-u", "-p", f"--wd={os.getcwd()}", "--"]

    def run(self, node, cmd, check=True, timeout=120, cwd=None, **kwargs):
        prefix = self.enter(node)
        if cwd:
            prefix[-2] = f"--wd={cwd}"
        done = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} on {node} exited with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def popen(self, node, cmd, cwd=None, **kwargs):
        prefix = self.enter(node)
        if cwd:
            prefix[-2] = f"--wd={cwd}"
        return subprocess.Popen(prefix + list(cmd), start_new_session=True, **kwargs)

    def pids_on(self, node, pattern):
        """PIDs (as this namespace numbers them) of the processes on node whose command line contains pattern."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != os.readlink(f"/proc/{self.pid[node]}/ns/pid"):
                    continue
                if pattern in open(f"/proc/{entry}/cmdline").read().replace("\0", " "):
                    found.append(int(entry))
            except OSError:
                pass
        return found

    def start_slurm(self):
        """A SLURM cluster: slurmctld on node1, a slurmd on each node. Returns the environment that its
        commands (sbatch, srun, scontrol), run on a node, need."""
        folder = os.path.join(self.dir, "slurm")
        for sub in ("state", "spool-node1", "spool-node2"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        conf = os.path.join(folder, "slurm.conf")
        with open(conf, "w") as f:
            f.write(SLURM_CONF.format(dir=folder, cpus=os.cpu_count(), **self.address))
        env = dict(os.environ, SLURM_CONF=conf)
        self.run("node1", ["/usr/sbin/slurmctld"], env=env)
        for name in NAMES:
            self.run(name, ["/usr/sbin/slurmd", "-N", name], env=env)
        deadline = time.monotonic() + 60
        while True:
            states = self.run("node1", ["sinfo", "-h", "-N", "-o", "%N %T"], env=env, check=False).stdout.split()
            if states.count("idle") == len(NAMES):
                return env
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SLURM nodes did not become idle ({states}); see {folder}/*.log")
            time.sleep(0.25)

    def stop(self):
        # Killing a PID namespace's PID 1 kills every process in it: the node's sshd and all it started.
        for pid in self.pid.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for netns in self.netns.values():
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        if self.holder:
            self.holder.kill()
            self.holder.wait()
