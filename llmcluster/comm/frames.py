"""Training-plane frames: a fixed binary header for collective messages.

The control plane speaks msgpack maps; the training plane sends thousands of tiny
messages per second, so its header is a ``struct``: packing and checking it costs a
fraction of a msgpack map, which is most of a small collective's CPU time::

    magic "LLMP" | version | run tag (8) | attempt u32 | src i32 | seq u32 | phase u16
    | dtype char | ndim u8 | ndim x u64 dims | inline payload (small arrays only)

Arrays of ``ZERO_COPY_BYTES`` or more travel as a second frame instead of inline. The run
tag is a digest of the run id, so frames of another run or attempt are told apart.
``parse_header`` raises ``FrameError`` on anything malformed; the receiver drops and counts.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import NamedTuple

import numpy as np

PEER_MAGIC = b"LLMP\x01"
ZERO_COPY_BYTES = 64 * 1024  # larger buffers are sent and received without copying
MAX_DIMS = 8
HEAD = struct.Struct("<5s8sIiIHcB")
DTYPES = {char: np.dtype(chr(char)) for char in b"?bBhHiIlLqQefd"}  # numeric: no objects
_DIMS = [struct.Struct(f"<{n}Q") for n in range(MAX_DIMS + 1)]


class FrameError(ValueError):
    """A training-plane frame that is malformed or not of this run and attempt."""


def run_tag(run_id: str) -> bytes:
    """The 8-byte digest of ``run_id`` every peer frame carries."""
    return hashlib.blake2b(run_id.encode(), digest_size=8).digest()


class PeerHeader(NamedTuple):  # a tuple: built for every message, so built cheaply
    """A parsed header: who sent which piece of which collective, and what array follows."""

    src: int
    seq: int
    phase: int
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int
    offset: int  # where the inline payload starts in the first frame


def pack_header(
    tag: bytes, attempt: int, src: int, seq: int, phase: int, data: np.ndarray
) -> bytes:
    """The header for ``data`` (contiguous); the caller appends the payload when inline."""
    shape = data.shape
    return HEAD.pack(PEER_MAGIC, tag, attempt, src, seq, phase, data.dtype.char.encode(),
                     len(shape)) + _DIMS[len(shape)].pack(*shape)  # fmt: skip


def parse_header(first: bytes, tag: bytes, attempt: int) -> PeerHeader:
    """Check and unpack a first frame; raises ``FrameError`` when it is not ours or malformed."""
    if len(first) < HEAD.size:
        raise FrameError("short frame")
    magic, their_tag, their_attempt, src, seq, phase, char, ndim = HEAD.unpack_from(first)
    if magic != PEER_MAGIC or their_tag != tag or their_attempt != attempt:
        raise FrameError("not a frame of this run and attempt")
    dtype = DTYPES.get(char[0])
    if dtype is None or ndim > MAX_DIMS:
        raise FrameError("bad dtype or rank")
    offset = HEAD.size + 8 * ndim
    if len(first) < offset:
        raise FrameError("truncated shape")
    shape = _DIMS[ndim].unpack_from(first, HEAD.size)
    nbytes = dtype.itemsize * math.prod(shape)
    return PeerHeader(src, seq, phase, dtype, shape, nbytes, offset)
