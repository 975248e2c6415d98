"""A Slurm step of one task per rank without Slurm: four ``llmcluster launch`` processes on
this machine with exactly the variables srun gives the tasks of a one-node step
(``test_launch_env_per_rank.srun_task``), as srun would start them. Runs where the real
cluster of ``test_slurm.py`` cannot (no root, no namespaces): the run, a lost task, and the
stop signal scancel sends to every task."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import cli
from test_launch_env_per_rank import srun_task

TASKS = 4
RUN = ("--model", "Llama-3-8B", "--gpu", "H100-SXM", "--format", "jsonl", "--seed", "3")


def _free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as other:  # the records port: the next one
            try:
                other.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@contextmanager
def step(tmp_path: Path, *args: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The step's tasks, started together; every one is gone after the block."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = str(_free_port())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PET_"))}
    tasks = []
    for procid in range(TASKS):
        env = {**base, **srun_task(procid, nodes=1, per_node=TASKS, job=41), "TMPDIR": str(tmp),
               "SLURM_JOB_NODELIST": "localhost", "SLURM_NODELIST": "localhost"}  # fmt: skip
        out = open(tmp_path / f"task{procid}.out", "wb")  # noqa: SIM115 - closed below
        err = open(tmp_path / f"task{procid}.err", "wb")  # noqa: SIM115
        tasks.append(subprocess.Popen(cli("launch", "--master-port", port, *RUN, *args),
                                      env=env, stdout=out, stderr=err))  # fmt: skip
        out.close()
        err.close()
    try:
        yield tasks
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
            task.wait(timeout=30)


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(errors="replace").split("\n")[:-1]
    return [json.loads(line) for line in lines if line.startswith("{")]


def _wait_training(tmp_path: Path, tasks: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while not any(r["type"] == "step" for r in _records(tmp_path / "task0.out")):
        assert all(t.poll() is None for t in tasks) and time.monotonic() < deadline, [
            (tmp_path / f"task{i}.err").read_text() for i in range(TASKS)
        ]
        time.sleep(0.05)


def _codes(tasks: list[subprocess.Popen[bytes]]) -> list[int]:
    return [task.wait(timeout=60) for task in tasks]


@pytest.mark.timeout(120)
def test_four_tasks_of_a_step_train_as_four_ranks(tmp_path: Path, clean_table: None) -> None:
    with step(tmp_path, "--steps", "3", "--speed", "1e6") as tasks:
        assert _codes(tasks) == [0] * TASKS
    recs = _records(tmp_path / "task0.out")
    assert recs[-1]["type"] == "summary" and recs[-1]["exit"] == "completed", recs[-1:]
    (run,) = [r for r in recs if r["type"] == "run"]
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) for e in
            run["env"]] == [(str(r), str(r), "4", "4") for r in range(TASKS)]  # fmt: skip
    for record in (r for r in recs if r["type"] == "ranks" and r["phase"] is None):
        assert len({x["loss"] for x in record["ranks"]}) == 1
    assert not any((tmp_path / "tmp").iterdir())  # the step's directory and socket are gone
    assert all((tmp_path / f"task{i}.out").read_text() == "" for i in range(1, TASKS))


@pytest.mark.timeout(120)
def test_a_lost_task_fails_the_run_and_every_task_leaves(tmp_path: Path, clean_table: None) -> None:
    """Task 2 killed: its rank dies with it, the group restarts, and the node, which cannot
    start rank 2 again (srun never restarts a task), fails as a lost node would."""
    with step(tmp_path, "--steps", "100000", "--speed", "200", "--max-restarts", "1") as tasks:
        _wait_training(tmp_path, tasks)
        tasks[2].kill()
        codes = _codes(tasks)
    assert codes == [1, 1, -signal.SIGKILL, 1], codes
    err = (tmp_path / "task0.err").read_text()
    assert "the task of local rank 2 is gone; this node cannot start its ranks" in err, err
    assert "Traceback" not in err
    assert "the node agent is gone" not in (tmp_path / "task1.err").read_text()  # a BYE
    assert not any((tmp_path / "tmp").iterdir())


@pytest.mark.timeout(120)
def test_sigterm_to_every_task_as_scancel_sends_it_ends_the_step(
    tmp_path: Path, clean_table: None
) -> None:
    """Each slot kills its rank and leaves at once (143); the coordinator, stopping at the
    step boundary, may see those ranks die first: the node's task then ends as a failed run
    (1). Either way promptly, with nothing left (the scheduler calls the job cancelled)."""
    with step(tmp_path, "--steps", "100000", "--speed", "200") as tasks:
        _wait_training(tmp_path, tasks)
        for task in tasks:
            task.send_signal(signal.SIGTERM)
        codes = _codes(tasks)
    assert codes[0] in (1, 143) and codes[1:] == [143] * (TASKS - 1), codes
    assert "Traceback" not in (tmp_path / "task0.err").read_text()
    assert not any((tmp_path / "tmp").iterdir())
