"""The exporter's pieces on a real run's records: the fold, dcgm-exporter's format, nvidia-smi.

The records come from one short real run (16 ranks on two H100 nodes, JSONL); faults and
phases are derived from them with ``dataclasses.replace``, so every figure has a real
origin and every assertion could fail on a wrong mapping.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import run_cli
from prometheus_client.parser import text_string_to_metric_families

from llmcluster.exporters import dcgm
from llmcluster.exporters.job import JobCollector
from llmcluster.exporters.state import MetricsState
from llmcluster.render.smi import smi_lines
from llmcluster.sim.devices import gpu_uuid, mem_clock_mhz, nccl_bus_id, pci_bus_id
from llmcluster.wire.records import (
    FailureRecord,
    PhaseName,
    RanksRecord,
    RestartRecord,
    RunRecord,
    StepRecord,
    record_from_wire,
)

REFERENCE = Path("/work/shared/reference/observability.md")
LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"]


@pytest.fixture(scope="module")
def real() -> tuple[RunRecord, list[StepRecord], list[RanksRecord]]:
    done = run_cli("--ranks", "16", "--steps", "3", "--gpu", "H100-SXM", "--seed", "3",
                   "--speed", "100000", "--format", "jsonl", timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    run = record_from_wire(next(x for x in lines if x["type"] == "run"))
    steps = [record_from_wire(x) for x in lines if x["type"] == "step"]
    ranks = [record_from_wire(x, world_size=16) for x in lines
             if x["type"] == "ranks" and x.get("phase") is None]  # fmt: skip
    assert isinstance(run, RunRecord) and len(steps) == 3 and len(ranks) == 3
    return run, steps, ranks  # type: ignore[return-value]


def fold(*records: object) -> MetricsState:
    state = MetricsState()
    for record in records:
        state.update(record)  # type: ignore[arg-type]
    return state


def scrape(state: MetricsState, node: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = dcgm.render(dcgm.families(state, node))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_scrape_matches_the_ranks_record_value_by_value(real) -> None:
    run, steps, ranks = real
    state = fold(run, steps[0], ranks[0], steps[1], ranks[1])
    record = ranks[1]
    for node in (0, 1):
        got = scrape(state, node)
        gpus = [g for g in record.ranks if g.node == node]
        assert len(got["DCGM_FI_DEV_GPU_UTIL"]) == 8
        for gpu in gpus:

            def value(name: str, g=gpu, got=got) -> float:
                return next(v for labels, v in got[name] if labels["gpu"] == str(g.local_rank))

            used = round(gpu.mem_used_gb * 1024)
            assert value("DCGM_FI_DEV_GPU_UTIL") == round(gpu.util)
            assert value("DCGM_FI_DEV_GPU_TEMP") == round(gpu.temp_c)
            assert value("DCGM_FI_DEV_POWER_USAGE") == pytest.approx(gpu.power_w, abs=1e-6)
            assert value("DCGM_FI_DEV_SM_CLOCK") == gpu.sm_clock_mhz
            assert value("DCGM_FI_DEV_FB_USED") == used
            assert value("DCGM_FI_DEV_FB_FREE") == run.gpu.memory_mib - used
            assert value("DCGM_FI_DEV_MEM_CLOCK") == mem_clock_mhz(run.gpu.name, run.gpu.mem_bw_gbs)
            assert value("DCGM_FI_DEV_MEMORY_TEMP") > value("DCGM_FI_DEV_GPU_TEMP")
            assert value("DCGM_FI_DEV_XID_ERRORS") == 0
            assert 0 < value("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") < value(
                "DCGM_FI_PROF_GR_ENGINE_ACTIVE") <= 1  # fmt: skip
            # a ring inside the node: 2 (n-1)/n of the gradient bytes per step, each way
            moved = 2 * 7 / 8 * steps[1].collective.bytes / steps[1].step_time_s
            assert value("DCGM_FI_PROF_NVLINK_TX_BYTES") == pytest.approx(moved, abs=1)
        hosts = {labels["Hostname"] for labels, _ in got["DCGM_FI_DEV_GPU_UTIL"]}
        assert hosts == {run.hosts[node]}


def test_labels_help_and_types_are_dcgm_exporters(real) -> None:
    run, steps, ranks = real
    text = dcgm.render(dcgm.families(fold(run, steps[0], ranks[0]), 1))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    assert helps["DCGM_FI_DEV_GPU_UTIL"] == "GPU utilization (in %)."
    assert helps["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == (
        "Total energy consumption since boot (in mJ).")  # fmt: skip
    assert helps["DCGM_FI_DEV_XID_ERRORS"] == "Value of the last XID error encountered."
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert {t for n, t in types.items() if n != "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"} == {"gauge"}
    line = next(x for x in text.splitlines() if x.startswith('DCGM_FI_DEV_SM_CLOCK{gpu="3"'))
    assert re.findall(r'(\w+)="', line) == LABELS  # the exporter's order, not sorted
    assert f'UUID="{gpu_uuid(3, 1, 3)}",pci_bus_id="{pci_bus_id(3)}",device="nvidia3"' in line
    assert f'modelName="{run.gpu.smi_name}",Hostname="{run.hosts[1]}"' in line
    assert re.fullmatch(r".*\} \d+", line)  # DCGM's int64 fields print as integers
    power = next(x for x in text.splitlines() if x.startswith("DCGM_FI_DEV_POWER_USAGE{"))
    assert re.fullmatch(r".*\} \d+\.\d{6}", power)  # doubles as %f
    xid = next(x for x in text.splitlines() if x.startswith("DCGM_FI_DEV_XID_ERRORS{"))
    assert re.findall(r'(\w+)="', xid) == [*LABELS, "err_code", "err_msg"]


def test_uuids_are_unique_per_gpu_and_stable_per_seed() -> None:
    uuids = {gpu_uuid(7, node, local) for node in range(8) for local in range(8)}
    assert len(uuids) == 64
    assert gpu_uuid(7, 2, 5) == gpu_uuid(7, 2, 5) != gpu_uuid(8, 2, 5)
    assert all(re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in uuids)
    assert nccl_bus_id(0) == "18000" and pci_bus_id(1) == "00000000:2A:00.0"


def test_a_kill_leaves_an_xid_and_idle_gpus_energy_keeps_growing(real) -> None:
    run, steps, ranks = real
    state = fold(run, steps[0], ranks[0])
    victim = ranks[0].ranks[12]
    energy = dict(state.energy_mj)
    failure = FailureRecord(time=ranks[0].time + 5, rank=12, local_rank=4, node=1,
                            host=victim.host, pid=4242, exitcode=-9, signal="SIGKILL",
                            reason="killed", seq=2, numel=5, timeout_ms=30000, step=2,
                            attempt=0, max_restarts=3)  # fmt: skip
    restart = RestartRecord(time=ranks[0].time + 60, attempt=1, max_restarts=3, restarts_left=2,
                            resume_step=1, replayed_steps=1, lost_s=60.0,
                            reason="killed")  # fmt: skip
    state.update(failure)
    got = scrape(state, 1)
    xids = {labels["gpu"]: (v, labels["err_msg"]) for labels, v in got["DCGM_FI_DEV_XID_ERRORS"]}
    assert xids["4"] == (79, "GPU has fallen off the bus")
    assert all(v == (0, "No Error") for gpu, v in xids.items() if gpu != "4")
    assert {v for _, v in got["DCGM_FI_DEV_GPU_UTIL"]} == {0}
    assert {v for _, v in got["DCGM_FI_DEV_POWER_USAGE"]} == {run.gpu.idle_w}
    state.update(restart)
    replayed = dataclasses.replace(ranks[0], time=ranks[0].time + 90)
    state.update(replayed)
    assert all(state.energy_mj[r] > energy[r] for r in energy)  # monotonic across the restart
    after = scrape(state, 1)
    assert [labels for labels, _ in after["DCGM_FI_DEV_XID_ERRORS"]] == [
        labels for labels, _ in got["DCGM_FI_DEV_XID_ERRORS"]
    ]  # same series, sticky XID
    assert state.restarts == 1
    hung = dataclasses.replace(failure, rank=9, local_rank=1, exitcode=1, signal=None)
    state.update(hung)  # a rank that stopped without a signal (a hang, a crash)
    xids = {labels["gpu"]: v for labels, v in scrape(state, 1)["DCGM_FI_DEV_XID_ERRORS"]}
    assert xids["1"] == 43 and xids["4"] == 79


def test_phase_samples_idle_the_tensor_pipes_and_links(real) -> None:
    run, steps, ranks = real
    sample = dataclasses.replace(ranks[0], phase=PhaseName.CHECKPOINT, time=ranks[0].time + 15)
    got = scrape(fold(run, steps[0], ranks[0], sample), 0)
    assert {v for _, v in got["DCGM_FI_PROF_NVLINK_TX_BYTES"]} == {0}
    assert {v for _, v in got["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"]} == {0}


def test_throttle_reasons_carry_the_thermal_bits(real) -> None:
    run, steps, ranks = real
    hot = dataclasses.replace(ranks[0].ranks[2], throttled=True)
    record = dataclasses.replace(ranks[0], ranks=(*ranks[0].ranks[:2], hot, *ranks[0].ranks[3:]))
    masks = scrape(fold(run, steps[0], record), 0)["DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"]
    got = {labels["gpu"]: int(v) for labels, v in masks}
    assert got["2"] & (dcgm.SW_THERMAL | dcgm.HW_THERMAL) == dcgm.SW_THERMAL | dcgm.HW_THERMAL
    assert all(mask & dcgm.HW_THERMAL == 0 for gpu, mask in got.items() if gpu != "2")


def test_smi_table_has_nvidia_smis_layout(real) -> None:
    run, _, ranks = real
    ref = REFERENCE.read_text().split("## 5. nvidia-smi default table")[1].split("```")[1]
    expected = ref.splitlines()[1:]
    gpu = dataclasses.replace(ranks[0].ranks[0], temp_c=28.0, power_w=69.0, mem_used_gb=0.0,
                              util=0.0)  # fmt: skip
    versions = {**run.plan.versions, "driver": "570.148.08", "cuda": "12.8"}
    run = dataclasses.replace(run, plan=dataclasses.replace(run.plan, versions=versions))
    lines = smi_lines(run, dataclasses.replace(ranks[0], ranks=(gpu,)), 0)
    assert lines[1:12] == [line.replace("00000000:06:00.0", "00000000:18:00.0")
                           for line in expected[1:12]]  # fmt: skip
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} {7}", lines[0])
    full = smi_lines(real[0], ranks[0], 1)
    assert {len(line) for line in full[1:]} == {91}
    assert sum("NVIDIA H100 80GB HBM3" in line for line in full) == 8
    pids = [int(line.split()[4]) for line in full if re.match(r"\|\s+\d+\s+N/A\s+N/A", line)]
    assert pids == list(real[0].pids[8:16])


def test_examples_query_only_series_the_exporter_serves(real) -> None:
    run, steps, ranks = real
    state = fold(run, steps[0], ranks[0])
    served = {s.name for f in dcgm.families(state, 0) for s in f.samples}
    served |= {s.name for f in JobCollector(state, threading.Lock(), 0, job=True).collect()
               for s in f.samples}  # fmt: skip
    examples = Path(__file__).resolve().parent.parent / "examples" / "observability"
    dashboard = json.loads((examples / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(?:DCGM_FI_|llmcluster_)\w+", e)}
    assert used <= served, used - served
    assert {
        "DCGM_FI_DEV_GPU_TEMP",
        "llmcluster_loss",
        "llmcluster_step_time_seconds_bucket",
    } <= used
    titles = [p["title"] for p in dashboard["panels"]]
    assert titles.index("Training (llmcluster_*)") > titles.index("GPU Utilization")
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "config", str(examples / "prometheus.yml")],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
