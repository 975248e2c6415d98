"""A node agent's forks share torchrun's common variables: set once in the agent around the
forks, inherited by every rank, the agent's own environment as it was afterwards."""

from __future__ import annotations

import dataclasses
import os

import pytest

from llmcluster.control.env import environment, shared_items, torchrun_env
from llmcluster.worker import starter
from llmcluster.worker.starter import LocalStarter, RankLaunch


def _env(rank: int) -> dict[str, str]:
    return torchrun_env(rank=rank, local_rank=rank % 4, world_size=8, local_world_size=4,
                        group_rank=rank // 4, master_addr="10.0.0.1", master_port=29500,
                        run_id="abc", restart_count=1, max_restarts=3)  # fmt: skip


def test_shared_items_are_the_values_every_env_agrees_on() -> None:
    shared = shared_items([_env(4), _env(5), _env(6)])
    assert "RANK" not in shared and "LOCAL_RANK" not in shared and "ROLE_RANK" not in shared
    assert shared["WORLD_SIZE"] == "8" and shared["GROUP_RANK"] == "1"
    assert shared["TORCHELASTIC_RUN_ID"] == "abc" and shared["MASTER_ADDR"] == "10.0.0.1"
    assert shared_items([{"A": "1"}, {"A": "2"}, {}]) == {}
    assert shared_items([]) == {}


def test_environment_restores_set_and_unset_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMC_TEST_KEPT", "before")
    monkeypatch.delenv("LLMC_TEST_NEW", raising=False)
    with pytest.raises(RuntimeError), environment({"LLMC_TEST_KEPT": "x", "LLMC_TEST_NEW": "y"}):
        assert os.environ["LLMC_TEST_KEPT"] == "x" and os.getenv("LLMC_TEST_NEW") == "y"
        raise RuntimeError  # restored on every way out
    assert os.environ["LLMC_TEST_KEPT"] == "before" and "LLMC_TEST_NEW" not in os.environ


@dataclasses.dataclass(frozen=True)
class _Spec:
    rank: int


def test_each_fork_sets_only_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a rank process ends up with (inherited + its own) is torchrun's whole set."""
    seen: list[tuple[dict[str, str], dict[str, str]]] = []

    def fake_fork(launch: RankLaunch) -> int:
        seen.append((dict(os.environ), launch.env))
        return 1000 + len(seen)

    monkeypatch.setattr(starter, "fork_rank", fake_fork)
    for name in _env(4):
        monkeypatch.delenv(name, raising=False)
    launches = [RankLaunch(_Spec(r), _env(r)) for r in range(4, 8)]  # type: ignore[arg-type]
    pids: list[tuple[int, int]] = []
    LocalStarter().start_all(launches, lambda pid, launch: pids.append((pid, launch.spec.rank)))
    assert pids == [(1001, 4), (1002, 5), (1003, 6), (1004, 7)]  # each told as it is forked
    for rank, (inherited, own) in zip(range(4, 8), seen, strict=True):
        assert set(own) == {"RANK", "LOCAL_RANK", "ROLE_RANK"}
        assert {**{k: inherited[k] for k in _env(rank) if k in inherited}, **own} == _env(rank)
    assert not any(name in os.environ for name in _env(4))  # the agent's own, as before
