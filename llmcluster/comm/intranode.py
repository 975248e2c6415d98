"""Single-copy allreduce inside a node, through the node's shared arena.

Like Open MPI's shared-memory path with CMA, peers' buffers are read where they are:

1. each rank publishes where its input lives (its registered buffer, or, for a buffer
   outside the arena, a copy in its scratch slot) and where it stages its result;
2. sync; rank i reduces chunk i of every input, in local-rank order, block by block so
   the partial sum stays in cache, into chunk i of its own stage;
3. sync; every rank copies the other chunks from their owners' stages into its output
   (an output in the arena is its own stage, so its chunk needs no copy at all);
4. sync, so nobody reuses a buffer a peer may still be reading.

Across nodes, the leader gathers the node's chunks, combines nodes over the sockets and
the others copy the whole result from it. Every element is reduced by one rank in a
fixed order and then only copied, so every rank holds the bit-identical result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmcluster.comm.shm import Placement, ShmArena

BLOCK_BYTES = 256 * 1024  # the reduction's cache block (fits in L2 with its inputs streaming)
Sync = Callable[[int], None]  # a node-wide barrier for one phase of this collective


def chunk_bounds(count: int, parts: int) -> list[int]:
    """Chunk boundaries: ``parts`` near-equal chunks of ``count`` elements."""
    return [count * k // parts for k in range(parts + 1)]


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


class IntraNode:
    """One rank's side of the node's shared-memory allreduce."""

    def __init__(
        self, arena: ShmArena, index: int, *, across: bool, sync: Sync, poll: Callable[[], None]
    ) -> None:
        """``index``: this rank's local index (0 leads the node); ``across``: the node is one
        of several; ``sync(phase)``: a node barrier; ``poll()``: serve control if due."""
        self.arena, self.index, self.across, self.sync, self.poll = arena, index, across, sync, poll
        self.size = arena.local_ranks
        self._block = np.empty(0)

    def allreduce(
        self,
        source: np.ndarray,
        reduce: np.ufunc,
        out: np.ndarray | None,
        inter: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Allreduce ``source`` over the node and, through the leader's ``inter`` (the
        allreduce among leaders), across nodes; returns ``out`` or a fresh array."""
        arena, index = self.arena, self.index
        count, dtype = source.size, source.dtype
        flat = source.reshape(-1)
        usable = out is not None and out.dtype == dtype and out.size == count
        target = out if usable and out is not None and out.flags.c_contiguous else None
        final = target.reshape(-1) if target is not None else np.empty(count, dtype)
        out_at = arena.offset_of(index, final) if target is not None else None
        source_at = arena.offset_of(index, flat)
        if source_at is None:  # copy in, into the output when it lives in the arena anyway
            source_at = out_at if out_at is not None else arena.scratch(index)
            np.copyto(arena.view(source_at, dtype, count), flat)
            stage_at = source_at
        else:  # in place, or out of place into a registered output, else via scratch
            stage_at = out_at if out_at is not None else arena.scratch(index)
        arena.publish(index, Placement(source_at, stage_at, source.nbytes))
        self.sync(1)
        places = [arena.placement(i) for i in range(self.size)]
        if any(p.nbytes != source.nbytes for p in places):
            raise ValueError("ranks of a node passed allreduce buffers of different sizes")
        sources = [arena.view(p.source, dtype, count) for p in places]
        stages = [arena.view(p.stage, dtype, count) for p in places]
        bounds = chunk_bounds(count, self.size)
        mine = stages[index]
        self._reduce_chunk(sources, mine, bounds[index], bounds[index + 1], reduce)
        self.sync(2)
        if self.across:
            if inter is not None:  # the leader: the node's result, then every node's
                self._gather(stages, mine, bounds)
                np.copyto(mine, inter(mine))
            self.sync(3)
            whole = mine if inter is not None else stages[0]
            if _address(final) != _address(whole):
                np.copyto(final, whole)
        else:
            self._gather(stages, final, bounds)
            if _address(final) != _address(mine):
                lo, hi = bounds[index], bounds[index + 1]
                np.copyto(final[lo:hi], mine[lo:hi])
        self.sync(4)
        if out is None:
            return final.reshape(source.shape)
        if target is None:
            np.copyto(out, final.reshape(out.shape))
        return out

    def _gather(self, stages: list[np.ndarray], into: np.ndarray, bounds: list[int]) -> None:
        """Copy every other rank's finished chunk into ``into``, starting with the next rank's
        (so the ranks spread over different owners)."""
        for step in range(1, self.size):
            owner = (self.index + step) % self.size
            lo, hi = bounds[owner], bounds[owner + 1]
            np.copyto(into[lo:hi], stages[owner][lo:hi])
            self.poll()

    def _reduce_chunk(
        self, sources: list[np.ndarray], stage: np.ndarray, lo: int, hi: int, reduce: np.ufunc
    ) -> None:
        """stage[lo:hi] = sources[0] op sources[1] op ... (in that order), one cache block at
        a time, serving control between blocks."""
        step = max(1, BLOCK_BYTES // stage.itemsize)
        if self._block.dtype != stage.dtype or self._block.size < step:
            self._block = np.empty(step, dtype=stage.dtype)
        for start in range(lo, hi, step):
            end = min(start + step, hi)
            dst = stage[start:end]
            if len(sources) == 1:
                if _address(dst) != _address(sources[0][start:end]):
                    np.copyto(dst, sources[0][start:end])
            elif len(sources) == 2:
                reduce(sources[0][start:end], sources[1][start:end], out=dst)
            else:  # the partial result stays in a private block: dst may be one of the inputs
                acc = self._block[: end - start]
                reduce(sources[0][start:end], sources[1][start:end], out=acc)
                for source in sources[2:-1]:
                    reduce(acc, source[start:end], out=acc)
                reduce(acc, sources[-1][start:end], out=dst)
            self.poll()
