"""The real Prometheus server scraping a 16-rank run (two nodes, one endpoint each).

Debian's ``prometheus`` package provides the server and ``promtool``; the test starts its
own server on 127.0.0.1 (a free port, a 1 s scrape interval, its own TSDB in the test's
temporary directory) and stops it by PID. Nothing else on the machine is touched: a
packaged Prometheus service, if one runs, keeps its own port and data.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Running
from private_dirs import private_dirs  # noqa: F401 - a fixture
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
STEPS, KILL_STEP, STRAGGLER, VICTIM = 40, 25, 5, 12


def free_port(pair: bool = False) -> int:
    """A free port on loopback (and the next one free too, with ``pair``)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not pair:
            return port
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port + 1))
            return port
    raise AssertionError("no free port pair")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@contextlib.contextmanager
def prometheus(tmp: Path, targets: list[str]) -> Iterator[str]:
    """The real server scraping ``targets`` every second; yields its API base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed (.ci/run installs it)")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        "scrape_configs:\n  - job_name: llmcluster\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    log = (tmp / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp / "prometheus.log").read_text()
            with contextlib.suppress(OSError):
                if "Ready" in get(f"{base}/-/ready"):
                    break
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


def query_range(base: str, query: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": "1"})
    body = json.loads(get(f"{base}/api/v1/query_range?{params}"))
    assert body["status"] == "success", body
    return body["data"]["result"]


def series(result: list[dict[str, Any]]) -> dict[float, float]:
    (only,) = result
    return {float(t): float(v) for t, v in only["values"]}


@pytest.mark.usefixtures("private_dirs", "clean_table")
def test_prometheus_sees_the_cluster(tmp_path: Path) -> None:
    base_port = free_port(pair=True)
    targets = [f"127.0.0.1:{base_port}", f"127.0.0.1:{base_port + 1}"]
    with prometheus(tmp_path, targets) as api:
        start = time.time()
        run = Running("--ranks", "16", "--steps", str(STEPS), "--format", "jsonl",
                      "--metrics-port", str(base_port), "--seed", "11",
                      "--inject", f"straggler:rank={STRAGGLER},slowdown=1.5",
                      "--inject", f"kill:rank={VICTIM},step={KILL_STEP}")  # fmt: skip
        try:
            run_record = run.wait_for(lambda r: r["type"] == "run", 60)
            run.wait_for(lambda r: r["type"] == "step" and r["step"] == 3, 60)
            scrape = get(f"http://{targets[0]}/metrics")
            code, records, err = run.finish(timeout_s=240)
        finally:
            run.kill()
        assert code == 0, err
        end = time.time()
        lint = subprocess.run(["promtool", "check", "metrics"], input=scrape, text=True,
                              capture_output=True, timeout=30)  # fmt: skip
        _check_lint(lint)
        _check_scrape_against_records(scrape, records)
        _check_cluster(api, start, end, run_record, records)


def _check_lint(lint: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, or 3 (lint findings only): the findings are those dcgm-exporter's own names
    draw (the camelCase ``modelName`` label, the energy counter without ``_total``)."""
    assert lint.returncode in (0, 3), lint.stdout + lint.stderr
    inherent = (
        "label names should be written in 'snake_case' not 'camelCase'",
        'counter metrics should have "_total" suffix',
    )
    for line in filter(None, (lint.stdout + lint.stderr).splitlines()):
        name, _, problem = line.partition(" ")
        assert name.startswith("DCGM_FI_") and problem in inherent, line
        if problem == inherent[1]:
            assert name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


def _check_cluster(api: str, start: float, end: float, run: dict[str, Any],
                   records: list[dict[str, Any]]) -> None:  # fmt: skip
    util = query_range(api, "DCGM_FI_DEV_GPU_UTIL", start, end)
    assert len(util) == 16
    hosts = {r["metric"]["Hostname"] for r in util}
    assert hosts == set(run["hosts"]) and len(hosts) == 2
    assert len({r["metric"]["instance"] for r in util}) == 2  # one endpoint per node
    assert len({r["metric"]["UUID"] for r in util}) == 16  # one series per GPU, restart included

    phase = {p: series(query_range(api, f'llmcluster_phase{{phase="{p}"}}', start, end))
             for p in ("training", "checkpoint")}  # fmt: skip
    temp = series(query_range(api, "avg(DCGM_FI_DEV_GPU_TEMP)", start, end))
    times = sorted(t for t in temp if t in phase["training"])
    training = [t for t in times if phase["training"][t] == 1]
    checkpoint = [t for t in times if phase["checkpoint"][t] == 1]
    first_checkpoint = [t for t in checkpoint if t < checkpoint[0] + 30]
    assert len(first_checkpoint) >= 2, "no checkpoint seen in two scrapes"
    before = [t for t in training if t < first_checkpoint[0]]
    assert temp[before[-1]] > temp[before[0]] + 5, "temperatures did not rise in training"
    assert temp[first_checkpoint[-1]] < temp[first_checkpoint[0]], "no cooling in the checkpoint"

    # the straggler draws the most power and is the busiest while everyone else waits for it
    when = training[len(training) // 4]
    power = per_rank(query_range(api, "avg_over_time(DCGM_FI_DEV_POWER_USAGE[5s])", when, when),
                     run)  # fmt: skip
    busy = per_rank(query_range(api, "avg_over_time(DCGM_FI_DEV_GPU_UTIL[5s])", when, when), run)
    assert len(power) == 16 and max(power, key=power.__getitem__) == STRAGGLER, power
    assert max(busy, key=busy.__getitem__) == STRAGGLER, busy

    xid = per_rank(query_range(api, "max_over_time(DCGM_FI_DEV_XID_ERRORS[10m])", end, end), run)
    assert xid[VICTIM] == 79, xid  # "GPU has fallen off the bus": the rank was SIGKILLed
    assert all(v == 0 for rank, v in xid.items() if rank != VICTIM)

    restart = next(r for r in records if r["type"] == "restart")
    steps = series(query_range(api, "llmcluster_steps_total", start, end))
    step = series(query_range(api, "llmcluster_step", start, end))
    assert max(step.values()) == STEPS
    assert max(steps.values()) == STEPS + restart["replayed_steps"]
    assert sorted(steps.values()) == list(steps.values())  # a counter: never goes down
    restarts = series(query_range(api, "llmcluster_restarts_total", start, end))
    assert max(restarts.values()) == 1


def per_rank(result: list[dict[str, Any]], run: dict[str, Any]) -> dict[int, float]:
    """Global rank -> the last value of each GPU's series."""
    nproc = run["nproc_per_node"]
    return {int(r["metric"]["gpu"]) + nproc * run["hosts"].index(r["metric"]["Hostname"]):
            float(r["values"][-1][1]) for r in result}  # fmt: skip


def _check_scrape_against_records(scrape: str, records: list[dict[str, Any]]) -> None:
    """The step-3 scrape of node 0 equals, GPU by GPU, one ranks record of the run."""
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if "gpu" in sample.labels:
                values.setdefault(sample.name, {})[sample.labels["gpu"]] = sample.value

    def matches(record: dict[str, Any]) -> bool:
        gpus = [g for g in record["ranks"] if g["node"] == 0]
        return len(gpus) == len(values["DCGM_FI_DEV_GPU_UTIL"]) and all(
            values["DCGM_FI_DEV_GPU_UTIL"][str(g["local_rank"])] == round(g["util"])
            and values["DCGM_FI_DEV_GPU_TEMP"][str(g["local_rank"])] == round(g["temp_c"])
            and abs(values["DCGM_FI_DEV_POWER_USAGE"][str(g["local_rank"])] - g["power_w"]) < 1e-5
            and values["DCGM_FI_DEV_SM_CLOCK"][str(g["local_rank"])] == g["sm_clock_mhz"]
            and values["DCGM_FI_DEV_FB_USED"][str(g["local_rank"])]
            == round(g["mem_used_gb"] * 1024)
            for g in gpus
        )

    ranks = [r for r in records if r["type"] == "ranks"]
    assert any(matches(r) for r in ranks), "the scrape matches no ranks record of the run"
