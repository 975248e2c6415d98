"""Shared memory for large collectives inside a node: the node's arena.

A node agent maps one anonymous shared region before it forks its ranks, so every
local rank inherits it and nothing needs cleaning up: it disappears with the last
process that maps it (or a memfd, ``comm.memfd``, passed to ranks started by other tasks). Layout::

    descriptor line per local rank | area[0] | area[1] | ...
    area[i] = scratch slot (inputs that live elsewhere are copied here) | heap (2 slots)

A rank allocates its registered buffers from its own heap (``allocate``, NCCL's
user-buffer registration / an MPI shared window). An allreduce whose input already
lives in the arena is read in place by the peers (no copy-in), and one whose output
lives there is written in place (no copy-out). Before each such collective a rank
publishes, on its descriptor line, where its input and its staged result are, so
peers need no agreement on allocation order.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ALIGN = 4096
LINE = 64
HEAP_SLOTS = 2  # registered buffers per rank: nccl-tests' send and receive buffers
MAX_SLOT_BYTES = 64 << 20  # larger payloads go over the peer sockets (memory stays bounded)


def slot_bytes(capacity: int) -> int:
    """Slot size for payloads up to ``capacity`` bytes, page aligned."""
    return -(-min(capacity, MAX_SLOT_BYTES) // ALIGN) * ALIGN


def _header_bytes(local_ranks: int) -> int:
    return -(-local_ranks * LINE // ALIGN) * ALIGN


def region_bytes(local_ranks: int, capacity: int) -> int:
    """Size of a node's arena."""
    return _header_bytes(local_ranks) + local_ranks * (1 + HEAP_SLOTS) * slot_bytes(capacity)


def anonymous(size: int) -> mmap.mmap:
    """An anonymous shared mapping: what a node agent's forked ranks inherit."""
    return mmap.mmap(-1, size)


def create_region(
    local_ranks: int, capacity: int, allocate: Callable[[int], Any] = anonymous
) -> Any:
    """The shared region a node agent maps before starting its ranks (None when not worth
    it); ``allocate`` makes the memory (a memfd's when some ranks are not its children)."""
    if capacity <= 0:
        return None
    return allocate(region_bytes(local_ranks, capacity))


@dataclass(frozen=True)
class Placement:
    """Where one local rank's input and staged result live, as region offsets."""

    source: int
    stage: int
    nbytes: int


class ShmArena:
    """One rank's view of its node's shared region (its allocation state is its own)."""

    def __init__(self, region: Any, local_ranks: int, capacity: int) -> None:
        self.region, self.local_ranks, self.capacity = region, local_ranks, capacity
        self.slot = slot_bytes(capacity)
        self._header = _header_bytes(local_ranks)
        self._area = (1 + HEAP_SLOTS) * self.slot
        self._bytes = np.frombuffer(region, dtype=np.uint8)
        self._base = self._bytes.__array_interface__["data"][0]
        self._lines = np.ndarray((local_ranks, LINE // 8), dtype=np.uint64, buffer=region)
        self._used = 0  # heap bytes handed out by ``allocate``

    def fits(self, array: np.ndarray) -> bool:
        """True if ``array`` can use the shared-memory path."""
        return array.nbytes <= self.slot

    def scratch(self, index: int) -> int:
        """Region offset of local rank ``index``'s scratch slot."""
        return self._header + index * self._area

    def allocate(self, index: int, count: int, dtype: np.dtype) -> np.ndarray | None:
        """A fresh ``count``-element array in local rank ``index``'s heap (None if full)."""
        used = self._used
        nbytes = -(-count * dtype.itemsize // ALIGN) * ALIGN
        if used + nbytes > HEAP_SLOTS * self.slot:
            return None
        self._used = used + nbytes
        return self.view(self.scratch(index) + self.slot + used, dtype, count)

    def offset_of(self, index: int, array: np.ndarray) -> int | None:
        """Region offset of ``array`` if it is contiguous and lies in local rank ``index``'s
        area, else None."""
        if not array.flags.c_contiguous:
            return None
        start = array.__array_interface__["data"][0] - self._base
        lo = self.scratch(index)
        return start if lo <= start and start + array.nbytes <= lo + self._area else None

    def view(self, offset: int, dtype: np.dtype, count: int) -> np.ndarray:
        """``count`` elements of ``dtype`` at region ``offset``."""
        return np.frombuffer(self.region, dtype=dtype, count=count, offset=offset)

    def publish(self, index: int, placement: Placement) -> None:
        """Write this rank's placement on its descriptor line (a barrier makes it visible)."""
        self._lines[index, :3] = (placement.source, placement.stage, placement.nbytes)

    def placement(self, index: int) -> Placement:
        """Local rank ``index``'s published placement."""
        source, stage, nbytes = (int(v) for v in self._lines[index, :3])
        return Placement(source, stage, nbytes)
