"""Command line: torchrun-flavoured flags -> a validated Command, then launch or bench.

``parse(argv)`` checks everything (flags, environment defaults, paths, the plan)
and returns a frozen Command without starting anything; ``execute`` runs it.
Usage errors print one line (``llmcluster: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import secrets
import socket
import sys
from collections.abc import Sequence

from llmcluster.cli_flags import (
    HelpShown,
    UsageError,
    build_bench_parser,
    build_coordinator_parser,
    build_node_parser,
    build_parser,
    join_dash_values,
)
from llmcluster.cli_launch import build_launch_parser, describe, launch_flags, owns_address
from llmcluster.commands import (
    BenchRun,
    Command,
    CoordinatorRun,
    LaunchRun,
    LocalRun,
    NodeRun,
    Printed,
    ShowList,
    ShowSchema,
    SlotRun,
    execute,
    one_line,
)
from llmcluster.config import (
    MAX_NNODES,
    BenchSettings,
    ConfigError,
    RunConfig,
    check_address,
    check_port,
    check_record_target,
    check_token,
    env_text,
)
from llmcluster.exporters.settings import MetricsSettings
from llmcluster.launch.environment import launch_env
from llmcluster.launch.hostlist import expand_hostnames
from llmcluster.setup import checked_plan
from llmcluster.worker.logspec import NodeLogOptions, prepare_log_dir
from llmcluster.worker.slots import step_dir

SUBCOMMANDS = ("bench", "coordinator", "launch", "node")
SEED_RANGE = 2**31  # a fresh seed when --seed is not given: small enough to retype


def _parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    return parser.parse_args(join_dash_values(parser, argv))


def parse(argv: Sequence[str]) -> Command:
    """Validate a command line and its environment defaults; raise UsageError or ConfigError."""
    args_list = list(argv)
    if args_list[:1] == ["schema"]:
        if args_list[1:]:
            raise UsageError(f"schema takes no arguments, got {' '.join(args_list[1:])!r}")
        return ShowSchema()
    command = args_list[0] if args_list[:1] and args_list[0] in SUBCOMMANDS else "run"
    rest = args_list[1:] if command != "run" else args_list
    try:
        if command == "bench":
            return _bench(_parse_args(build_bench_parser(), rest))
        if command == "node":
            return _node(_parse_args(build_node_parser(), rest))
        parsers = {"coordinator": build_coordinator_parser, "launch": build_launch_parser}
        args = _parse_args(parsers.get(command, build_parser)(), rest)
    except HelpShown:
        return Printed()
    if args.list:
        return ShowList()
    if command == "launch":
        return _launch(args)
    if command == "coordinator":
        if args.metrics_port is not None:
            raise ConfigError(
                "the coordinator has no GPUs: give --metrics-port to each `llmcluster node`"
            )
        return _coordinator(args)
    config = _run_config(args, ranks=args.ranks)
    return LocalRun(config, checked_plan(config), _metrics(args, config.nnodes))


def _seed(value: int | None) -> int:
    return secrets.randbelow(SEED_RANGE) if value is None else value


def _run_config(args: argparse.Namespace, *, ranks: int) -> RunConfig:
    for flag, value in (("--model", args.model), ("--gpu", args.gpu), ("--dataset", args.dataset)):
        if value is not None and not value.strip():
            raise ConfigError(f"{flag} must name a catalog entry (see --list), got {value!r}")
    if args.smi_every is not None and args.smi_every <= 0:
        raise ConfigError(f"--smi-every must be a positive number of steps, got {args.smi_every}")
    for spec in args.inject:
        if not spec.strip(" ;"):
            raise ConfigError(f"--inject needs a fault such as kill:rank=1,step=5, got {spec!r}")
    config = RunConfig(
        ranks=ranks,
        nproc_per_node=args.nproc_per_node,
        steps=args.steps,
        seed=_seed(args.seed),
        model=args.model,
        gpu=args.gpu,
        dataset=args.dataset,
        speed=args.speed,
        exit_after_s=args.exit_after_time,
        algorithm=args.algorithm,
        output_format=args.output_format,
        ui=args.ui,
        style=args.style,
        ascii_only=args.ascii_only,
        no_color=args.no_color,
        max_restarts=args.max_restarts,
        inject=tuple(args.inject),
        chaos=args.chaos,
        grad_bucket_bytes=args.grad_bucket,
        record_path=args.record_path,
        start_time=args.start_time,
        start_at_launch=args.start_at_launch,
        log_dir=args.log_dir,
        redirects=args.redirects,
        tee=args.tee,
        local_ranks_filter=args.local_ranks_filter,
        role=args.role,
        smi_every=args.smi_every or 0,
        tensorboard_dir=args.tensorboard_dir,
    )
    config.validate()
    if config.log_dir:
        try:
            prepare_log_dir(config.log_dir)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.record_path:
        check_record_target(config.record_path)
    if config.tensorboard_dir is not None:
        _tensorboard_dir(config.tensorboard_dir)
    from llmcluster.control.limits import check_capacity

    check_capacity(config.ranks, config.nnodes)
    return config


def _tensorboard_dir(path: str) -> None:
    """``--tensorboard DIR``: the optional extra is installed and DIR can be made."""
    from llmcluster.worker import tensorboard

    try:
        tensorboard.require()
        prepare_log_dir(path)
    except ValueError as exc:
        raise ConfigError(str(exc).replace("log_dir:", "--tensorboard:")) from None


def _metrics(args: argparse.Namespace, nnodes: int) -> MetricsSettings | None:
    """``--metrics-port``/``--metrics-bind``: one port per node from the given one."""
    if args.metrics_port is None:
        return None
    if not 1 <= args.metrics_port <= 65536 - nnodes:
        raise ConfigError(
            f"--metrics-port must be between 1 and {65536 - nnodes} (one port per node from "
            f"it), got {args.metrics_port}"
        )
    bind = check_address(args.metrics_bind, flag="--metrics-bind")
    return MetricsSettings(port=args.metrics_port, bind=bind)


def _port_from(value: int | None, *, flag: str, highest: int) -> int:
    if value is None:
        text = env_text("MASTER_PORT", "29500")
        if not re.fullmatch(r"[0-9]{1,5}", text):
            raise ConfigError(f"MASTER_PORT must be a port number 1-{highest}, got {text!r}")
        return check_port(int(text), flag="MASTER_PORT", highest=highest)
    return check_port(value, flag=flag, highest=highest)


def _nnodes(text: str | None) -> int:
    flag = "--nnodes" if text is not None else "NNODES"
    text = text if text is not None else env_text("NNODES", "1")
    low, colon, high = text.partition(":")
    if not re.fullmatch(r"[0-9]{1,4}", low) or (colon and not re.fullmatch(r"[0-9]{1,4}", high)):
        raise ConfigError(f"{flag} must be N or MIN:MAX, got {text!r}")
    count = int(high or low)
    if not 1 <= int(low) <= count <= MAX_NNODES:
        raise ConfigError(f"{flag} must be between 1 and {MAX_NNODES} (MIN <= MAX), got {text!r}")
    return count


def _check_listen(bind: str, port: int) -> None:
    """ConfigError unless a TCP listener can be opened on ``bind``:``port`` (then closed)."""
    host = "0.0.0.0" if bind == "*" else bind.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"--bind/--port: cannot listen on {bind}:{port} ({reason})") from None


def _coordinator(args: argparse.Namespace) -> CoordinatorRun:
    bind = check_address(args.bind, flag="--bind")
    port = _port_from(args.port, flag="--port", highest=65534)  # the records port is port + 1
    for listen in (port, port + 1):
        _check_listen(bind, listen)
    nnodes = _nnodes(args.nnodes)
    config = _run_config(args, ranks=nnodes * args.nproc_per_node)
    plan = checked_plan(config)
    token = check_token(args.token)
    if not token:  # loopback too: every local user can reach a loopback port
        raise ConfigError(
            "--token (or LLMCLUSTER_TOKEN) is required: it keys the run's CurveZMQ "
            "encryption and authentication"
        )
    wildcard = bind in ("0.0.0.0", "*", "::")  # what ranks on every node see as MASTER_ADDR
    master = bind
    if wildcard:
        master = check_address(env_text("MASTER_ADDR", socket.gethostname()), flag="MASTER_ADDR")
    config = dataclasses.replace(config, master_addr=master, master_port=port)
    return CoordinatorRun(config, plan, bind, port, token, args.join_timeout)


def _launch(args: argparse.Namespace) -> LaunchRun | SlotRun:
    """torchrun on one node: where it stands (flags, then the environment), its agent, and
    the coordinator when this node hosts the rendezvous. In a Slurm step of one task per
    rank, the task of local id 0 is the node's (its agent gathers the others: slots)."""
    env = launch_env(launch_flags(args), os.environ, expand_hostnames)
    slot = env.task is not None and env.task.local_id > 0
    alone = env.nnodes == 1  # a one-node job: loopback only, a token of its own
    static = env.rdzv_backend == "static"
    hosts = not slot and (
        alone or (env.node_rank == 0 if static else owns_address(env.master_addr))
    )
    token = check_token(args.token)
    if not token and not alone:
        raise ConfigError(
            f"a job of {env.nnodes} nodes needs --token (or LLMCLUSTER_TOKEN), the same on "
            "every node: it keys the run's CurveZMQ encryption and authentication"
        )
    token = token or secrets.token_hex(16)
    master = "127.0.0.1" if alone else env.master_addr
    shape = {"nproc_per_node": env.nproc_per_node, "max_restarts": env.max_restarts}
    config = _run_config(argparse.Namespace(**{**vars(args), **shape}),
                         ranks=env.nnodes * env.nproc_per_node)  # fmt: skip
    config = dataclasses.replace(config, rdzv_backend=env.rdzv_backend,
                                 monitor_interval_s=env.monitor_interval_s)  # fmt: skip
    plan = checked_plan(config)  # every node checks the run's options: bad input fails anywhere
    coordinator = None
    if hosts:
        bind = "127.0.0.1" if alone else "0.0.0.0"  # as torchrun's store: every interface
        for listen in (env.master_port, env.master_port + 1):
            _check_listen(bind, listen)
        config = dataclasses.replace(config, master_addr=master, master_port=env.master_port)
        coordinator = CoordinatorRun(config, plan, bind, env.master_port, token, args.join_timeout)
    try:  # the agent routes to it over IPv4 (its own address on that route is what peers dial)
        socket.gethostbyname(master)
    except OSError:
        flag = env.origin("master_addr")
        raise ConfigError(f"{flag}: cannot resolve {master!r} to an IPv4 address") from None
    slots = step_dir(env.task.step, env.node_rank) if env.task else ""
    if slot:
        assert env.task is not None
        return SlotRun(slots, env.task.local_id, args.join_timeout)
    node = NodeRun(master_addr=master, master_port=env.master_port, node_rank=env.node_rank,
                   token=token, join_timeout_s=args.join_timeout, heartbeat_timeout_s=3.0,
                   nnodes=env.nnodes, nproc_per_node=env.nproc_per_node,
                   metrics=_metrics(args, 1), slots=slots,
                   monitor_interval_s=env.monitor_interval_s)  # fmt: skip
    return LaunchRun(env, node, coordinator, describe(env, hosts_coordinator=hosts))


def _node(args: argparse.Namespace) -> NodeRun:
    address = (
        args.master_addr if args.master_addr is not None else env_text("MASTER_ADDR", "127.0.0.1")
    )
    flag = "--master-addr" if args.master_addr is not None else "MASTER_ADDR"
    node_rank = args.node_rank if args.node_rank is not None else env_text("NODE_RANK", "auto")
    rank_flag = "--node-rank" if args.node_rank is not None else "NODE_RANK"
    if node_rank != "auto" and not re.fullmatch(r"[0-9]{1,4}", node_rank):
        raise ConfigError(f"{rank_flag} must be auto or 0-{MAX_NNODES - 1}, got {node_rank!r}")
    if node_rank != "auto" and int(node_rank) >= MAX_NNODES:
        raise ConfigError(f"{rank_flag} must be auto or 0-{MAX_NNODES - 1}, got {node_rank}")
    if not 0.1 <= args.heartbeat_timeout <= 3600:
        raise ConfigError(
            f"--heartbeat-timeout must be 0.1-3600 seconds, got {args.heartbeat_timeout:g}"
        )
    shape = (("--nnodes", args.nnodes, MAX_NNODES), ("--nproc-per-node", args.nproc_per_node, 64))
    for shape_flag, value, highest in shape:
        if not 0 <= value <= highest:
            raise ConfigError(f"{shape_flag} must be between 0 (any) and {highest}, got {value}")
    try:  # the agent routes to it over IPv4 (its own address on that route is what peers dial)
        socket.gethostbyname(check_address(address, flag=flag))
    except OSError:
        raise ConfigError(f"{flag}: cannot resolve {address!r} to an IPv4 address") from None
    logs = NodeLogOptions(log_dir=args.log_dir, redirects=args.redirects, tee=args.tee,
                          local_ranks_filter=args.local_ranks_filter, role=args.role)  # fmt: skip
    if logs.log_dir:
        try:
            prepare_log_dir(logs.log_dir)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return NodeRun(
        master_addr=address,
        master_port=_port_from(args.master_port, flag="--master-port", highest=65535),
        node_rank=-1 if node_rank == "auto" else int(node_rank),
        token=check_token(args.token),
        join_timeout_s=args.join_timeout,
        heartbeat_timeout_s=args.heartbeat_timeout,
        nnodes=args.nnodes,
        nproc_per_node=args.nproc_per_node,
        metrics=_metrics(args, 1),
        logs=None if logs == NodeLogOptions() else logs,
        monitor_interval_s=args.monitor_interval,
    )


def _bench(args: argparse.Namespace) -> BenchRun:
    bench = BenchSettings(min_bytes=args.min_bytes, max_bytes=args.max_bytes,
                          factor=args.factor, iters=args.iters, warmup=args.warmup,
                          json=args.json)  # fmt: skip
    config = RunConfig(ranks=args.ranks, nproc_per_node=args.nproc_per_node,
                       algorithm=args.algorithm, seed=_seed(args.seed), bench=bench)  # fmt: skip
    config.validate()
    if not 2 <= bench.factor <= 1024:
        raise ConfigError(f"--factor must be between 2 and 1024, got {bench.factor}")
    if not 1 <= bench.iters <= 100_000:
        raise ConfigError(f"--iters must be between 1 and 100000, got {bench.iters}")
    if not 0 <= bench.warmup <= 100_000:
        raise ConfigError(f"--warmup must be between 0 and 100000, got {bench.warmup}")
    if not 4 <= bench.min_bytes <= bench.max_bytes <= 1 << 30:
        raise ConfigError(
            "sizes must satisfy 4 <= --min-bytes <= --max-bytes <= 1G, "
            f"got {bench.min_bytes} and {bench.max_bytes}"
        )
    from llmcluster.control.limits import check_capacity

    check_capacity(config.ranks, config.nnodes)
    return BenchRun(config)


def parse_or_fail(argv: Sequence[str]) -> Command | int:
    """The validated Command, or exit code 2 after printing the one-line reason on stderr."""
    try:
        return parse(argv)
    except (UsageError, ConfigError) as exc:
        print(f"llmcluster: error: {one_line(str(exc))}", file=sys.stderr)
        return 2


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _stderr_to_devnull() -> None:
    """Started with stderr closed (2>&-): what goes there is dropped, as by any Unix tool."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != 2:
        os.dup2(devnull, 2)
        os.close(devnull)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's stderr


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmcluster`` command: parse, then execute; returns the exit code."""
    if not _fd_open(2):
        _stderr_to_devnull()
    if not _fd_open(1) or sys.stdout is None:  # stdout closed (>&-): refuse to run, as ls does
        print("llmcluster: error: stdout is closed; nothing to show the run on", file=sys.stderr)
        return 2
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["attach"], ["ps"]):  # second terminals onto a run: their own commands
        from llmcluster.attach import attach_main, ps_main

        return (attach_main if args[0] == "attach" else ps_main)(args[1:])
    command = parse_or_fail(args)
    return command if isinstance(command, int) else execute(command)
