"""A real Slurm cluster on this machine: one slurmctld and one slurmd per stand-in host.

The recipe of ``shared/reference/schedulers.md`` section 2, as a context manager: the stand-in
hosts are network namespaces (``tests/netns/netns-hosts.sh``: coord runs slurmctld, node1..N
one slurmd each, with its own node name and eight fake GPUs, ``Gres=gpu:8`` backed by
character devices); authentication is ``auth/none`` (a private cluster nobody else can
reach: the namespaces have no route out). Every file (configuration, state, spool, logs,
device files, job output) lives in one private directory. The daemons run in the foreground
and are owned by their PIDs (each below a ``host_init`` that reaps its orphans, as a host's
init does); on the way out they are stopped by PID, whatever is left inside
the namespaces is killed by PID (``netns-hosts.sh down``), and the directory is removed. The
mounts slurmd needs (cgroup hierarchies, under ``ip netns exec``'s fresh ``/sys``) live in
that command's private mount namespace and vanish with it.

Every client (``sbatch``, ``squeue``, ``scancel``) runs inside the coord namespace: the
stand-in hosts' addresses exist nowhere else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NETNS = Path(__file__).parent / "netns" / "netns-hosts.sh"
HOST_INIT = Path(__file__).parent / "host_init.py"
DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol")
GPUS_PER_NODE = 8
MARK = "LLMCLUSTER_TEST_MARK"
_GENERIC_MOUNT_FLAGS = {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec"}


def missing() -> str | None:
    """Why a Slurm cluster cannot be started here, or None when it can."""
    absent = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing; .ci/run installs it)"
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("mknod") is None:
        return "a Slurm cluster on stand-in hosts needs root, iproute2 and mknod"
    return None


def cgroup_mounts() -> list[str]:
    """Shell lines re-creating this machine's cgroup mounts (slurmd initialises its cgroup
    plugin even with proctrack/pgid, and ``ip netns exec`` mounts a fresh, empty /sys)."""
    with open("/proc/self/mounts") as src:
        mounts = [line.split() for line in src]
    lines = []
    for _, target, fstype, options, *_ in mounts:
        if not target.startswith("/sys/fs/cgroup"):
            continue
        kept = [opt for opt in options.split(",") if opt not in _GENERIC_MOUNT_FLAGS]
        if fstype == "tmpfs":
            lines.append(f"mount -t tmpfs -o {','.join(kept) or 'mode=755'} tmpfs {target}")
        elif fstype == "cgroup":
            if not any(not opt.startswith("name=") for opt in kept):
                kept.insert(0, "none")  # a named hierarchy without controllers
            lines.append(
                f"mkdir -p {target} && mount -t cgroup -o {','.join(kept)} cgroup {target}"
            )
        elif fstype == "cgroup2":
            lines.append(f"mkdir -p {target} && mount -t cgroup2 cgroup2 {target}")
    return lines


def slurm_conf(root: Path, nodes: int) -> str:
    """The cluster's slurm.conf (the recipe's, every path under ``root``)."""
    last = 10 + nodes
    return f"""\
ClusterName=llmctest
SlurmctldHost=coord(10.213.0.10)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=node[1-{nodes}] NodeAddr=10.213.0.[11-{last}] CPUs=16 RealMemory=4000 \
Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN
PartitionName=gpu Nodes=node[1-{nodes}] Default=YES MaxTime=INFINITE State=UP
"""


class NoHosts(Exception):
    """The stand-in hosts cannot be made here (not a Slurm failure: the tests skip)."""


@dataclass(frozen=True)
class Job:
    """A submitted batch job: its id and where its output goes."""

    job_id: int
    output: Path


class SlurmCluster:
    """A running cluster: submit, watch and cancel jobs from the coord host."""

    def __init__(self, root: Path, prefix: str, nodes: int) -> None:
        self.root = root
        self.prefix = prefix
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.conf = root / "slurm.conf"
        self.daemons: list[subprocess.Popen[bytes]] = []
        # the daemons carry their own marker: no test's process table counts them
        self._daemon_mark = f"slurm-cluster-{uuid.uuid4().hex}"

    # ---- environment and clients -----------------------------------------------------------
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a client started now (the current test's marker included)."""
        return {**os.environ, "NETNS_PREFIX": self.prefix, "SLURM_CONF": str(self.conf),
                **(extra or {})}  # fmt: skip

    def netns(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(NETNS), *args], env=self.env(), capture_output=True,
                              text=True, timeout=120, check=check)  # fmt: skip

    def client(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client on the coord host (cwd: the private directory)."""
        return subprocess.run(["bash", str(NETNS), "exec", "coord", *args], env=self.env(env),
                              cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    def sbatch(self, script: Path, *args: str, env: dict[str, str] | None = None) -> Job:
        """Submit ``script`` (sbatch options first in ``args``, then the script's arguments)."""
        out_dir = self.root / "out"
        done = self.client("sbatch", "--parsable", f"--output={out_dir}/%j.out",
                           *self._split(args, script), env=env)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"sbatch failed: {done.stderr.strip()}")
        job_id = int(done.stdout.strip().split(";")[0])
        return Job(job_id, out_dir / f"{job_id}.out")

    @staticmethod
    def _split(args: tuple[str, ...], script: Path) -> list[str]:
        """sbatch's own options (those before ``--``), the script, then its arguments."""
        if "--" in args:
            cut = args.index("--")
            return [*args[:cut], str(script), *args[cut + 1 :]]
        return [*args, str(script)]

    def state(self, job: Job) -> str:
        """The job's state as squeue shows it, "" once it has left the queue."""
        done = self.client("squeue", "-h", "-j", str(job.job_id), "-o", "%T")
        return done.stdout.strip() if done.returncode == 0 else ""

    def wait_gone(self, job: Job, timeout_s: float) -> None:
        """Poll squeue until the job has left the queue (completed, failed or cancelled)."""
        deadline = time.monotonic() + timeout_s
        while self.state(job):
            if time.monotonic() > deadline:
                why = self.client("squeue", "-h", "-j", str(job.job_id), "-o", "%T %r").stdout
                raise AssertionError(f"job {job.job_id} still {why.strip()} after {timeout_s:.0f}"
                                     f"s:\n{self.output(job)}\n{self.logs()}")  # fmt: skip
            time.sleep(0.2)

    def output(self, job: Job) -> str:
        return job.output.read_text(errors="replace") if job.output.exists() else ""

    def wait_for_output(self, job: Job, text: str, timeout_s: float) -> str:
        """Poll the job's output file until ``text`` appears in it; return the output."""
        deadline = time.monotonic() + timeout_s
        while text not in (out := self.output(job)):
            if time.monotonic() > deadline or not self.state(job):
                raise AssertionError(f"{text!r} never appeared in job {job.job_id}:\n{out}")
            time.sleep(0.1)
        return out

    def logs(self) -> str:
        """The daemons' logs (for a failing test's message)."""
        return "\n".join(f"== {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for log in sorted((self.root / "log").glob("*")))  # fmt: skip

    # ---- life --------------------------------------------------------------------------------
    def prepare(self) -> None:
        for sub in ("ctld", "log", "out", "dev", "tmp", *(f"spool-{n}" for n in self.nodes)):
            (self.root / sub).mkdir()
        for i in range(GPUS_PER_NODE):  # character devices (with plain files: no GPU variables)
            os.mknod(self.root / "dev" / f"nvidia{i}", 0o600 | 0o020000, os.makedev(195, i))
        self.conf.write_text(slurm_conf(self.root, len(self.nodes)))
        (self.root / "gres.conf").write_text(
            "AutoDetect=off\n"
            f"NodeName=node[1-{len(self.nodes)}] Name=gpu "
            f"File={self.root}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n"
        )
        wrap = self.root / "nodewrap.sh"
        wrap.write_text("#!/bin/sh\nset -e\n" + "\n".join(cgroup_mounts()) + '\nexec "$@"\n')
        wrap.chmod(0o755)

    def start(self) -> None:
        made = self.netns("up", str(len(self.nodes)), check=False)
        if made.returncode != 0:
            raise NoHosts(f"network namespaces unavailable: {made.stderr.strip()[:200]}")
        env = {**self.env(), MARK: self._daemon_mark}
        logs = self.root / "log"
        init = [sys.executable, str(HOST_INIT)]
        hosts = [("coord", [*init, "slurmctld", "-D", "-f", str(self.conf)])]
        hosts += [(n, [str(self.root / "nodewrap.sh"), *init, "slurmd", "-D", "-f",
                       str(self.conf)]) for n in self.nodes]  # fmt: skip
        for host, command in hosts:
            with open(logs / f"{host}.stdout", "wb") as out:
                daemon = subprocess.Popen(["bash", str(NETNS), "exec", host, *command], env=env,
                                          stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT)  # fmt: skip
                self.daemons.append(daemon)
        self._wait_idle(timeout_s=60)

    def _wait_idle(self, timeout_s: float) -> None:
        """Poll sinfo until every node is idle (each slurmd has registered)."""
        deadline = time.monotonic() + timeout_s
        while True:
            dead = [d.args for d in self.daemons if d.poll() is not None]
            if dead:
                raise RuntimeError(f"a Slurm daemon exited: {dead}\n{self.logs()}")
            states = self.client("sinfo", "-h", "-N", "-o", "%N %T").stdout.split()
            if states.count("idle") == len(self.nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nodes not idle after {timeout_s:.0f}s: {states}\n{self.logs()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the daemons by PID, then anything left inside the namespaces, then the
        namespaces themselves."""
        for daemon in self.daemons:
            if daemon.poll() is None:
                daemon.terminate()
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        self.netns("down", check=False)


@contextlib.contextmanager
def slurm_cluster(nodes: int = 2) -> Iterator[SlurmCluster]:
    """A started cluster of ``nodes`` slurmd hosts; everything is gone after the block."""
    root = Path(tempfile.mkdtemp(prefix="llmc-slurm-", dir="/tmp"))
    cluster = SlurmCluster(root, prefix=f"sl{os.getpid() % 10000}-", nodes=nodes)
    try:
        cluster.prepare()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
