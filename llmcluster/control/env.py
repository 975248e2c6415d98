"""The torchrun environment a rank sees (torch/distributed/run.py, elastic agent api.py)."""

from __future__ import annotations

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
