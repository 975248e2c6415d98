"""The torchrun environment a rank sees (torch/distributed/run.py, elastic agent api.py), and
how a forker shares what all its children see (set once around the forks, inherited)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

TORCHRUN_VARS = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
)  # fmt: skip


def torchrun_env(
    *,
    rank: int,
    local_rank: int,
    world_size: int,
    local_world_size: int,
    group_rank: int,
    master_addr: str,
    master_port: int,
    run_id: str,
    restart_count: int,
    max_restarts: int,
    role: str = "default",
) -> dict[str, str]:
    """Environment variables exactly as torchrun's elastic agent sets them for one worker."""
    values = {
        "RANK": rank,
        "LOCAL_RANK": local_rank,
        "WORLD_SIZE": world_size,
        "LOCAL_WORLD_SIZE": local_world_size,
        "GROUP_RANK": group_rank,
        "ROLE_RANK": rank,
        "ROLE_WORLD_SIZE": world_size,
        "ROLE_NAME": role,
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": master_port,
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": restart_count,
        "TORCHELASTIC_MAX_RESTARTS": max_restarts,
        "OMP_NUM_THREADS": 1,
    }
    return {key: str(value) for key, value in values.items()}


def env_mismatches(
    env: dict[str, str], *, rank: int, local_rank: int, node: int, world_size: int
) -> list[str]:
    """Names of torchrun variables a rank reported that contradict its place in the world."""
    expected = {
        "RANK": rank,
        "LOCAL_RANK": local_rank,
        "GROUP_RANK": node,
        "WORLD_SIZE": world_size,
    }
    return [name for name, value in expected.items() if env.get(name) != str(value)]


def shared_items(envs: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The variables every one of ``envs`` sets to the same value."""
    if not envs:
        return {}
    first, rest = envs[0], envs[1:]
    return {k: v for k, v in first.items() if all(env.get(k) == v for env in rest)}


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment with ``values`` set, as it was again afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
