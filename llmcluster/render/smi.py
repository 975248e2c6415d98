"""``nvidia-smi`` as it prints one node: the 91-column table of a 550/570-era driver.

Pure: a ``run`` record and a ``ranks`` record in, lines out (``shared/reference/
observability.md`` section 5 gives the real layout; the processes box lists each GPU's
rank process). Bus ids and the memory figures are the ones the metrics endpoint reports.
"""

from __future__ import annotations

import time

from llmcluster.sim.devices import pci_bus_id
from llmcluster.wire.records import RankSample, RanksRecord, RunRecord

RULE = "+-----------------------------------------+------------------------+----------------------+"
HEAD = (
    "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
    "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
    "|                                         |                        |               MIG M. |",
    "|=========================================+========================+======================|",
)
WIDE = "+" + "-" * 89 + "+"
PROCESSES = (
    "| Processes:                                                                              |",
    "|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |",
    "|        ID   ID                                                               Usage      |",
    "|" + "=" * 89 + "|",
)
NO_PROCESSES = "|  No running processes found" + " " * 61 + "|"
MIG_CAPABLE = ("A100", "H100", "H200", "B200")
CONTEXT_MIB = 512  # what the CUDA context holds beyond the process's own allocations


def smi_date(t: float) -> str:
    """``Fri Aug  1 11:14:23 2025`` and the trailing blanks nvidia-smi prints."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(t)) + " " * 7


def _gpu_rows(run: RunRecord, gpu: RankSample) -> list[str]:
    name = run.gpu.smi_name[:29]
    used = round(gpu.mem_used_gb * 1024)
    mig = "Disabled" if run.gpu.name.startswith(MIG_CAPABLE) else "N/A"
    temp, power, cap = round(gpu.temp_c), round(gpu.power_w), round(run.gpu.tdp_w)
    return [
        f"| {gpu.local_rank:>3}  {name:<29}{'On':>4}  |{pci_bus_id(gpu.local_rank):>19} Off "
        f"| {'0':>20} |",
        f"| N/A  {temp:>3}C    P0  {power:>13}W / {cap:>4}W |{used:>8}MiB / "
        f"{run.gpu.memory_mib:>6}MiB | {round(gpu.util):>6}%      Default |",
        f"|{'':41}|{'':24}| {mig:>20} |",
        RULE,
    ]


def _process_row(run: RunRecord, gpu: RankSample) -> str:
    pid = run.pids[gpu.rank] if gpu.rank < len(run.pids) else 0
    memory = f"{max(0, round(gpu.mem_used_gb * 1024) - CONTEXT_MIB)}MiB"
    return f"|{gpu.local_rank:>5}   N/A  N/A{pid:>10}{'C':>7}   {'python':<40}{memory:>12} |"


def smi_lines(run: RunRecord, ranks: RanksRecord, node: int) -> list[str]:
    """The table for ``node``'s GPUs at the time of ``ranks``."""
    gpus = [g for g in ranks.ranks if g.node == node]
    versions = run.plan.versions
    driver, cuda = versions.get("driver", ""), versions.get("cuda", "")
    lines = [
        smi_date(ranks.time or run.start_time),
        WIDE,
        f"| NVIDIA-SMI {driver:<23}Driver Version: {driver:<15}CUDA Version: {cuda:<9}|",
        "|" + RULE[1:],
        *HEAD,
    ]
    for gpu in gpus:
        lines += _gpu_rows(run, gpu)
    lines += [" " * 91, WIDE, *PROCESSES]
    lines += [_process_row(run, gpu) for gpu in gpus] or [NO_PROCESSES]
    lines.append(WIDE)
    return lines
