"""Shared memory for large collectives inside a node.

A node agent maps one anonymous shared region before it forks its ranks, so every
local rank inherits it and nothing needs cleaning up: it disappears with the last
process that maps it. The region holds, twice over (alternating by collective
sequence number, so only two barriers are needed per allreduce), one slot per
local rank plus a result slot. Messages still carry the synchronisation.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

ALIGN = 4096
MAX_SLOT_BYTES = 64 << 20  # larger payloads go over the peer sockets (memory stays bounded)


def slot_bytes(capacity: int) -> int:
    """Slot size for payloads up to ``capacity`` bytes, page aligned."""
    return -(-min(capacity, MAX_SLOT_BYTES) // ALIGN) * ALIGN


def create_region(local_ranks: int, capacity: int) -> mmap.mmap | None:
    """The shared region a node agent maps before forking (None when not worth it)."""
    if capacity <= 0:
        return None
    return mmap.mmap(-1, 2 * (local_ranks + 1) * slot_bytes(capacity))


@dataclass(frozen=True)
class ShmArena:
    """One rank's view of its node's shared region."""

    region: mmap.mmap
    local_ranks: int
    capacity: int

    @property
    def slot(self) -> int:
        """Bytes per slot."""
        return slot_bytes(self.capacity)

    def fits(self, array: np.ndarray) -> bool:
        """True if ``array`` can use the shared-memory path."""
        return array.nbytes <= self.slot

    def slots(self, parity: int, dtype: np.dtype, count: int) -> np.ndarray:
        """Every slot of buffer set ``parity`` as one (local ranks + 1, count) array."""
        offset = parity * (self.local_ranks + 1) * self.slot
        return np.ndarray((self.local_ranks + 1, count), dtype=dtype, buffer=self.region,
                          offset=offset, strides=(self.slot, dtype.itemsize))  # fmt: skip

    def view(self, parity: int, index: int, dtype: np.dtype, count: int) -> np.ndarray:
        """Slot ``index`` (``local_ranks`` is the result slot) of buffer set ``parity``."""
        offset = (parity * (self.local_ranks + 1) + index) * self.slot
        return np.frombuffer(self.region, dtype=dtype, count=count, offset=offset)
