"""Where ``llmcluster launch`` finds its node's place in the job: flags, then the environment.

Pure: ``launch_env(flags, environ)`` -> a frozen ``LaunchEnv``, or ConfigError naming the flag
or variable at fault. Each fact comes from the first layer that says it, in torchrun's order
extended to the schedulers that start torchrun:

1. the command line (torchrun's flags, torchrun's meanings);
2. torchrun's ``PET_*`` variables (what Kubeflow's PyTorchJob and Trainer set);
3. ``LLMCLUSTER_MASTER_ADDR`` (e.g. an Indexed Job's headless Service name ``<job>-0.<svc>``);
4. a Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` is the node rank;
5. Slurm: ``SLURM_JOB_ID``, ``SLURM_NODEID``, ``SLURM_JOB_NUM_NODES``,
   ``SLURM_JOB_NODELIST`` (its first host is the master), the GPUs per node; in a step of
   one task per rank (``srun --ntasks-per-node=8``) the tasks per node instead, and the
   task's place (``SlurmTask``: ``SLURM_LOCALID``, checked against ``SLURM_PROCID``);
6. torchrun's defaults (1 node of 1 rank, node rank 0, 127.0.0.1:29500, static, no restart).

As in torchrun, ``--rdzv-endpoint HOST:PORT`` (or ``PET_RDZV_ENDPOINT``) names the rendezvous
instead of the master address and port; ``--nnodes MIN:MAX`` is taken as MAX (a fixed-size
job); with the ``c10d`` backend node ranks are assigned at the rendezvous in join order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llmcluster.config import MAX_NNODES, ConfigError, check_address
from llmcluster.launch.hostlist import HostlistError, expand

BACKENDS = ("static", "c10d")
MAX_NPROC_PER_NODE = 64
AUTO_NPROC = 8  # ``--nproc-per-node auto`` with no GPU count from a scheduler: one HGX node
FIELDS = ("job_id", "nnodes", "nproc_per_node", "node_rank", "master_addr", "master_port",
          "rdzv_endpoint", "rdzv_backend", "max_restarts", "monitor_interval")  # fmt: skip
DEFAULTS = {"job_id": "none", "nnodes": "1", "nproc_per_node": "1", "node_rank": "0",
            "master_addr": "127.0.0.1", "master_port": "29500", "rdzv_backend": "static",
            "max_restarts": "0", "monitor_interval": "0.1"}  # fmt: skip

FLAGS_SOURCE, PET_SOURCE = "command line", "torchrun PET_* variables"
K8S_SOURCE, SLURM_SOURCE, DEFAULT_SOURCE = "Kubernetes Indexed Job", "Slurm", "defaults"
OWN_SOURCE = "LLMCLUSTER_MASTER_ADDR"


@dataclass(frozen=True)
class LaunchFlags:
    """torchrun's flags as written on the command line (None: not given), unchecked text."""

    nnodes: str | None = None
    nproc_per_node: str | None = None
    node_rank: str | None = None
    master_addr: str | None = None
    master_port: str | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    rdzv_backend: str | None = None
    max_restarts: str | None = None
    monitor_interval: str | None = None


@dataclass(frozen=True)
class Said:
    """One fact as one layer says it: the field, the flag or variable, its text."""

    field: str
    origin: str
    text: str


@dataclass(frozen=True)
class SlurmTask:
    """This task's place in a Slurm step of one task per rank (block order, as torchrun's:
    ``SLURM_PROCID`` = node x tasks per node + ``SLURM_LOCALID``)."""

    local_id: int  # SLURM_LOCALID: the local rank this task holds (0: the node agent's)
    proc_id: int  # SLURM_PROCID: the global rank
    tasks_per_node: int
    step: str  # "<job>.<step>": names the step's private directory on each node


@dataclass(frozen=True)
class Layer:
    """What one source (the command line, PET_*, a scheduler) says, in its own words."""

    source: str
    said: tuple[Said, ...]
    hostnames: tuple[str, ...] = ()  # the job's nodes, as the scheduler names them
    nodelist: str = ""  # the scheduler's own expression of them
    host: str = ""  # this node, as the scheduler names it
    task: SlurmTask | None = None  # a step of one task per rank


@dataclass(frozen=True)
class LaunchEnv:
    """This node's place in the job, every fact checked."""

    job_id: str  # --rdzv-id, else the scheduler's job id, else torchrun's "none"
    node_rank: int  # -1: assigned at the rendezvous (c10d)
    nnodes: int
    nproc_per_node: int
    master_addr: str  # where the coordinator listens (the rendezvous endpoint's host)
    master_port: int  # its control port; records on the next one
    rdzv_backend: str
    max_restarts: int
    monitor_interval_s: float
    hostnames: tuple[str, ...]  # the job's nodes by the scheduler's names (() when unknown)
    nodelist: str  # the scheduler's hostlist expression ("" when none)
    host: str  # this node by the scheduler's name ("" when unknown)
    source: str  # the environment that placed the node (a scheduler's, PET_*, or flags)
    origins: tuple[tuple[str, str], ...]  # field -> the flag or variable that set it
    task: SlurmTask | None = None  # a Slurm step of one task per rank: this task's place

    def origin(self, field: str) -> str:
        """The flag or variable a fact came from (``default`` for torchrun's default)."""
        return dict(self.origins).get(field, "default")


def _layer(source: str, pairs: list[tuple[str, str, str | None]], **extra: object) -> Layer:
    said = tuple(Said(field, origin, text) for field, origin, text in pairs if text)
    return Layer(source, said, **extra)  # type: ignore[arg-type]


def flag_layer(flags: LaunchFlags) -> Layer:
    """The command line (empty values count as given: they fail their check)."""
    names = {"job_id": ("--rdzv-id", flags.rdzv_id)}
    for field in FIELDS[1:]:
        names[field] = (f"--{field.replace('_', '-')}", getattr(flags, field))
    said = tuple(Said(f, origin, text) for f, (origin, text) in names.items() if text is not None)
    return Layer(FLAGS_SOURCE, said)


def pet_layer(environ: Mapping[str, str]) -> Layer:
    """torchrun's ``PET_<DEST>`` defaults (its argparse ``env`` action)."""
    pairs: list[tuple[str, str, str | None]] = [
        ("job_id", "PET_RDZV_ID", environ.get("PET_RDZV_ID"))
    ]
    pairs += [(f, f"PET_{f.upper()}", environ.get(f"PET_{f.upper()}")) for f in FIELDS[1:]]
    return _layer(PET_SOURCE, pairs)


def kubernetes_layer(environ: Mapping[str, str]) -> Layer:
    """An Indexed Job's pod index (the master comes from LLMCLUSTER_MASTER_ADDR or a flag)."""
    index = environ.get("JOB_COMPLETION_INDEX")
    return _layer(K8S_SOURCE, [("node_rank", "JOB_COMPLETION_INDEX", index)])


def _slurm_gpus(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, GPUs per node) from SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE (``8``,
    ``h100:8``, ``a100:2,v100:2``) or SLURM_NTASKS_PER_NODE, the first one set."""
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        text = environ.get(name, "")
        if not text:
            continue
        counts = [item.rsplit(":", 1)[-1] for item in text.split(",")]
        if not all(re.fullmatch(r"[0-9]{1,5}", c) for c in counts):
            raise ConfigError(f"{name} must be a GPU count like 8 or h100:8, got {text!r}")
        return name, str(sum(int(c) for c in counts))
    return None


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str | None]:
    """(name, value) of the first of ``names`` set, as Slurm sets a variable and its alias."""
    return next(((name, environ[name]) for name in names if environ.get(name)), (names[0], None))


def _task_counts(name: str, text: str) -> list[int]:
    """Tasks per node from Slurm's compressed form: ``8(x2)``, ``8,8``, ``8(x3),4``."""
    counts: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"([0-9]{1,5})(?:\(x([0-9]{1,5})\))?", item.strip())
        if match is None:
            raise ConfigError(f"{name} must be task counts like 8(x2) or 8,4, got {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _whole_var(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name, "")
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise ConfigError(f"{name} must be a whole number in a step of one task per rank, "
                          f"got {text!r}")  # fmt: skip
    return int(text)


def _slurm_task(environ: Mapping[str, str], job: str) -> tuple[str, SlurmTask] | None:
    """(the variable that says the tasks per node, this task's place) in a step of more
    tasks than nodes; None in the batch step or a step of one task per node. ConfigError
    for a step whose ranks llmcluster cannot map as srun placed them."""
    tasks, nodes = environ.get("SLURM_STEP_NUM_TASKS", ""), environ.get("SLURM_STEP_NUM_NODES", "")
    if not (tasks.isdigit() and nodes.isdigit()) or int(tasks) <= int(nodes):
        return None
    name, text = _first(environ, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    counts = _task_counts(name, text or "")
    if len(counts) != int(nodes) or sum(counts) != int(tasks):
        raise ConfigError(f"{name} {text!r} does not add up to SLURM_STEP_NUM_TASKS={tasks} on "
                          f"SLURM_STEP_NUM_NODES={nodes}: an inconsistent Slurm step")  # fmt: skip
    if len(set(counts)) != 1:
        raise ConfigError(
            f"this Slurm step runs {text} tasks per node ({name}): a rank per "
            "task needs the same count on every node (srun --ntasks-per-node=N)"
        )
    per_node = counts[0]
    local, proc = _whole_var(environ, "SLURM_LOCALID"), _whole_var(environ, "SLURM_PROCID")
    node = _whole_var(environ, "SLURM_NODEID")
    here = range(node * per_node, node * per_node + per_node)  # block order's global ranks
    gtids = environ.get("SLURM_GTIDS", ",".join(map(str, here)))  # the node's tasks, as placed
    if local >= per_node or proc != here[local] or gtids != ",".join(map(str, here)):
        how = environ.get("SLURM_DISTRIBUTION", "not block")
        raise ConfigError(f"this node's Slurm tasks are ranks {gtids} (SLURM_GTIDS; this one "
                          f"SLURM_PROCID={proc}, SLURM_LOCALID={local}), not {here[0]}-{here[-1]} "
                          f"in block order: the step's distribution ({how}) is not torchrun's "
                          "rank order; use srun --distribution=block")  # fmt: skip
    step = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID") or "0"
    if not re.fullmatch(r"[0-9]{1,20}", job) or not re.fullmatch(r"[0-9]{1,10}", step):
        raise ConfigError(f"SLURM_JOB_ID and SLURM_STEP_ID must be whole numbers, got {job!r} "
                          f"and {step!r}")  # fmt: skip
    return name, SlurmTask(local, proc, per_node, f"{job}.{step}")


def slurm_layer(
    environ: Mapping[str, str], expand_hosts: Callable[[str], tuple[str, ...]] = expand
) -> Layer:
    """A Slurm job step, of one task per node or per rank (nothing without SLURM_JOB_ID)."""
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job:
        return Layer(SLURM_SOURCE, ())
    per_rank = _slurm_task(environ, job)
    nodelist_var, nodelist = _first(environ, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    nnodes_var, nnodes = _first(environ, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
    hosts: tuple[str, ...] = ()
    if nodelist:
        try:
            hosts = expand_hosts(nodelist)
        except HostlistError as exc:
            raise ConfigError(f"{nodelist_var}: {exc}") from None
    gpus = (per_rank[0], str(per_rank[1].tasks_per_node)) if per_rank else _slurm_gpus(environ)
    pairs: list[tuple[str, str, str | None]] = [
        ("job_id", "SLURM_JOB_ID", job),
        ("node_rank", "SLURM_NODEID", environ.get("SLURM_NODEID")),
        ("nnodes", nnodes_var, nnodes),
        ("master_addr", nodelist_var, hosts[0] if hosts else None),
    ]
    if gpus:
        pairs.append(("nproc_per_node", *gpus))
    return _layer(SLURM_SOURCE, pairs, hostnames=hosts, nodelist=nodelist or "",
                  host=environ.get("SLURMD_NODENAME", ""),
                  task=per_rank[1] if per_rank else None)  # fmt: skip


def layers(
    flags: LaunchFlags,
    environ: Mapping[str, str],
    expand_hosts: Callable[[str], tuple[str, ...]] = expand,
) -> tuple[Layer, ...]:
    """Every source, the one that wins first."""
    own = _layer(OWN_SOURCE, [("master_addr", "LLMCLUSTER_MASTER_ADDR",
                                             environ.get("LLMCLUSTER_MASTER_ADDR"))])  # fmt: skip
    return (flag_layer(flags), pet_layer(environ), own, kubernetes_layer(environ),
            slurm_layer(environ, expand_hosts))  # fmt: skip


def _whole(said: Said, low: int, high: int) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,6}\s*", said.text) or not low <= int(said.text) <= high:
        raise ConfigError(f"{said.origin} must be a whole number {low}-{high}, got {said.text!r}")
    return int(said.text)


def _nnodes(said: Said) -> int:
    """``N`` or ``MIN:MAX`` (taken as MAX: the job has a fixed size)."""
    low, colon, high = said.text.strip().partition(":")
    if not re.fullmatch(r"[0-9]{1,4}", low) or (colon and not re.fullmatch(r"[0-9]{1,4}", high)):
        raise ConfigError(f"{said.origin} must be N or MIN:MAX, got {said.text!r}")
    count = int(high or low)
    if not 1 <= int(low) <= count <= MAX_NNODES:
        raise ConfigError(
            f"{said.origin} must be between 1 and {MAX_NNODES} (MIN <= MAX), got {said.text!r}"
        )
    return count


def _nproc(said: Said, scheduler_gpus: Said | None) -> int:
    """A count, or torchrun's ``auto``/``gpu``: the scheduler's GPUs on this node, else 8."""
    if said.text.strip().lower() in ("auto", "gpu"):
        return _whole(scheduler_gpus, 1, MAX_NPROC_PER_NODE) if scheduler_gpus else AUTO_NPROC
    return _whole(said, 1, MAX_NPROC_PER_NODE)


def _endpoint(said: Said) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):([0-9]{1,5})", said.text.strip())
    if match is None:
        raise ConfigError(f"{said.origin} must be HOST:PORT, got {said.text!r}")
    host = check_address(match.group(1), flag=said.origin)
    return host, _whole(Said(said.field, said.origin, match.group(2)), 1, 65534)


def _interval(said: Said) -> float:
    try:
        value = float(said.text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:  # also NaN
        raise ConfigError(f"{said.origin} must be seconds in (0, 3600], got {said.text!r}")
    return value


def _check_task(
    task: SlurmTask, chosen: dict[str, Said], *, nproc: int, node_rank: int, backend: str
) -> None:
    """A step of one task per rank takes its ranks from srun: what else the flags or
    variables say must agree with it."""
    if backend != "static":
        raise ConfigError(
            f"{chosen['rdzv_backend'].origin}: a Slurm step of one task per "
            "rank takes its ranks from SLURM_PROCID: use the static rendezvous"
        )
    if nproc != task.tasks_per_node:
        raise ConfigError(
            f"{chosen['nproc_per_node'].origin} {nproc} does not match this "
            f"Slurm step's {task.tasks_per_node} tasks per node (one per rank)"
        )
    if node_rank * nproc + task.local_id != task.proc_id:
        raise ConfigError(
            f"{chosen['node_rank'].origin} {node_rank} does not match this "
            f"Slurm task's SLURM_PROCID={task.proc_id} (one task per rank)"
        )


def resolve(stack: tuple[Layer, ...]) -> LaunchEnv:
    """The first say of every fact, checked; ConfigError naming the flag or variable."""
    chosen: dict[str, Said] = {}
    for layer in stack:
        for said in layer.said:
            chosen.setdefault(said.field, said)
    for field, text in DEFAULTS.items():
        chosen.setdefault(field, Said(field, "default", text))
    backend = chosen["rdzv_backend"].text.strip()
    if backend not in BACKENDS:
        raise ConfigError(f"{chosen['rdzv_backend'].origin} must be static or c10d (the "
                          f"coordinator is the rendezvous), got {backend!r}")  # fmt: skip
    nnodes = _nnodes(chosen["nnodes"])
    gpus = next((s for layer in stack if layer.source == SLURM_SOURCE for s in layer.said
                 if s.field == "nproc_per_node"), None)  # fmt: skip
    nproc = _nproc(chosen["nproc_per_node"], gpus)
    if "rdzv_endpoint" in chosen:  # as torchrun: the endpoint names the rendezvous
        master, port = _endpoint(chosen["rdzv_endpoint"])
        for field in ("master_addr", "master_port"):
            chosen[field] = chosen["rdzv_endpoint"]
    else:
        master = check_address(
            chosen["master_addr"].text.strip(), flag=chosen["master_addr"].origin
        )
        port = _whole(chosen["master_port"], 1, 65534)  # the records port is the next one
    node_rank = _whole(chosen["node_rank"], 0, MAX_NNODES - 1)
    if backend == "static" and node_rank >= nnodes:
        raise ConfigError(f"{chosen['node_rank'].origin} {node_rank} is out of range for "
                          f"{nnodes} node(s) (0-{nnodes - 1})")  # fmt: skip
    task = next((layer.task for layer in stack if layer.task), None)
    if task:
        _check_task(task, chosen, nproc=nproc, node_rank=node_rank, backend=backend)
    job_id = chosen["job_id"].text.strip()
    if not re.fullmatch(r"[A-Za-z0-9._:@+-]{1,128}", job_id):
        raise ConfigError(f"{chosen['job_id'].origin} must be 1-128 letters, digits or ._:@+-, "
                          f"got {job_id!r}")  # fmt: skip
    placed = [layer for layer in stack[1:] if layer.said and layer.source != OWN_SOURCE]
    scheduler = next((layer for layer in stack if layer.hostnames or layer.host), None)
    return LaunchEnv(
        job_id=job_id,
        node_rank=node_rank if backend == "static" else -1,
        nnodes=nnodes,
        nproc_per_node=nproc,
        master_addr=master,
        master_port=port,
        rdzv_backend=backend,
        max_restarts=_whole(chosen["max_restarts"], 0, 100),
        monitor_interval_s=_interval(chosen["monitor_interval"]),
        hostnames=scheduler.hostnames if scheduler else (),
        nodelist=scheduler.nodelist if scheduler else "",
        host=scheduler.host if scheduler else "",
        source=placed[0].source if placed else (FLAGS_SOURCE if stack[0].said else DEFAULT_SOURCE),
        origins=tuple((field, said.origin) for field, said in chosen.items()),
        task=task,
    )


def launch_env(
    flags: LaunchFlags,
    environ: Mapping[str, str],
    expand_hosts: Callable[[str], tuple[str, ...]] = expand,
) -> LaunchEnv:
    """This node's place in the job from its command line and environment."""
    return resolve(layers(flags, environ, expand_hosts))
