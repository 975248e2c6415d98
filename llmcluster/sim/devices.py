"""The identity of each simulated GPU: its UUID, PCI address and memory clock (pure).

One owner for what ``nvidia-smi -L``, NCCL's ``busId``, ``nvidia-smi``'s table and the
dcgm-exporter labels all print. A GPU's UUID is a property of the physical board, so it
is derived from the seed, the node and the slot: the same for a seed across runs and
restarts, different for every GPU of the cluster. Bus numbers follow a DGX-style layout
(one PCIe switch per GPU pair) and wrap into further PCI domains on wide nodes.
"""

from __future__ import annotations

import hashlib
import math

BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)  # a DGX H100's GPU buses
HBM_BUS_BITS = 5120  # five HBM stacks of 1024 bits (A100, H100)
BUS_BITS = {  # memory interfaces that differ from five HBM stacks
    "V100-SXM2-16GB": 4096,
    "V100-SXM2-32GB": 4096,
    "H200-SXM": 6144,
    "B200": 8192,
    "MI300X": 8192,
    "L40S": 384,  # GDDR6
}


def gpu_uuid(seed: int, node: int, local: int) -> str:
    """``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``, stable for (seed, node, slot)."""
    digest = hashlib.sha256(f"llmcluster-gpu-{seed}-{node}-{local}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def pci_bus(local: int) -> tuple[int, int]:
    """(domain, bus) of the GPU in slot ``local``."""
    domain, slot = divmod(local, len(BUSES))
    return domain, BUSES[slot]


def pci_bus_id(local: int) -> str:
    """NVML's form, as nvidia-smi and dcgm-exporter print it: ``00000000:18:00.0``."""
    domain, bus = pci_bus(local)
    return f"{domain:08X}:{bus:02X}:00.0"


def nccl_bus_id(local: int) -> str:
    """NCCL's ``busId`` (the PCI address as one hex number, device and function packed)."""
    domain, bus = pci_bus(local)
    return f"{(domain << 20) | (bus << 12):x}"


def mem_clock_mhz(gpu_name: str, mem_bw_gbs: float) -> int:
    """The memory clock that gives the datasheet bandwidth on the GPU's memory interface
    (double data rate): 2617 MHz for an H100 SXM (nvidia-smi: 2619), 1593 for an A100 80GB."""
    bits = BUS_BITS.get(gpu_name, HBM_BUS_BITS)
    return math.floor(mem_bw_gbs * 1000 * 8 / (2 * bits))


def memory_temp_c(gpu_temp_c: float, util_pct: float) -> float:
    """HBM runs a few degrees above the GPU die, more under load."""
    return gpu_temp_c + 2.0 + 5.0 * util_pct / 100.0
