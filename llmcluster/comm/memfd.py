"""Shared memory that unrelated processes of one host can pass each other: a memfd.

A node agent whose ranks are not all its own children (a Slurm step of one task per rank:
``worker.slots``) cannot hand them an inherited anonymous mapping. It maps a memfd
(``memfd_create``: no name in ``/dev/shm``, nothing to remove on any way out; the memory
goes with the last descriptor and the last mapping) and passes the descriptor over a unix
socket (``SCM_RIGHTS``); the receiver maps the same pages. The mapping is made through libc,
not ``mmap.mmap``: Python's object keeps a duplicate descriptor of its own, which a forked
rank's descriptor sweep would close under it (and a later close would hit a reused number).
The buffer is a ctypes array over the mapping: numpy, ``ctypes.from_buffer`` and slice
assignment use it as they use an ``mmap``.
"""

from __future__ import annotations

import ctypes
import os

_PROT_READ_WRITE, _MAP_SHARED = 0x1 | 0x2, 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class SharedRegion:
    """One memfd and this process's mapping of it."""

    def __init__(self, fd: int, size: int) -> None:
        address = _libc.mmap(None, size, _PROT_READ_WRITE, _MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of a shared region: {os.strerror(err)}")
        self.fd, self.size, self._address = fd, size, address
        self.buffer = (ctypes.c_char * size).from_address(address)

    @classmethod
    def create(cls, name: str, size: int) -> SharedRegion:
        """A new zero-filled region of ``size`` bytes (close-on-exec descriptor)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Unmap it and close the descriptor (no object of this process may use the buffer
        afterwards: a forked child keeps its own copy of the mapping)."""
        if self._address is not None:
            _libc.munmap(self._address, self.size)
            self._address = None
            os.close(self.fd)
