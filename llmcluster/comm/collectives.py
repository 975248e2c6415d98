"""Collectives over a PeerMesh: barrier, allreduce, broadcast, gather.

Algorithms (the ``algorithm`` argument):

- ``tree``: binomial-tree reduce to rank 0, then binomial broadcast. Every rank
  ends with rank 0's bits.
- ``ring``: reduce-scatter then allgather in 2(n-1) steps (bandwidth-optimal).
  Each chunk is reduced in a fixed ring order, and the allgather copies the
  finished chunks, so every rank holds the same bits.
- ``hierarchical``: tree reduce inside each node to its leader (lowest rank),
  allreduce among the leaders (ring for large buffers, tree for small), then
  broadcast inside each node, as NCCL does across NVLink and InfiniBand. Where the
  node has a shared arena, large buffers and every buffer in the arena
  (``shared_buffer``: registered) take the single-copy path instead (``intranode``).

The training step's small reductions use ``allreduce_fused``: a two-level star whose
in-node level runs on the node board (shared memory and futexes, ``board``) where
available. Reduction order never depends on message arrival order, so results are
bit-identical on every rank and reproducible from run to run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from llmcluster.comm import fused
from llmcluster.comm.board import BOARD_VALUES, SPIN_S, NodeBoard, tag_of
from llmcluster.comm.intranode import IntraNode
from llmcluster.comm.mesh import CollectiveTimeout, PeerMesh
from llmcluster.comm.shm import ShmArena
from llmcluster.comm.topology import Topology

ReduceOp = Callable[..., np.ndarray]
OPS: dict[str, ReduceOp] = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum}
RING_MIN_BYTES = 64 * 1024  # hierarchical: leaders switch from tree to ring above this size
_EMPTY = np.zeros(0, dtype=np.uint8)
_BARRIER = ((np.zeros(1), "max"),)  # what a barrier reduces: nothing worth a payload


class Communicator:
    """All collectives of one rank. Every rank must call the same collectives in the same order."""

    def __init__(
        self,
        mesh: PeerMesh,
        *,
        rank: int,
        topology: Topology,
        shm: ShmArena | None = None,
        board: NodeBoard | None = None,
    ) -> None:
        self.mesh, self.rank, self.topology, self.shm = mesh, rank, topology, shm
        self.world_size = len(topology.node_of)
        self.seq = 0  # collectives issued so far (NCCL's SeqNum)
        self._local = topology.node_members(topology.node_of[rank])  # this node's ranks
        self._index = self._local.index(rank)  # this rank's local index (0 leads the node)
        self._leaders = topology.leaders()
        usable = board is not None and board.local_ranks == len(self._local) > 1
        self.board = board if usable else None  # tiny reductions and node barriers
        # board waits yield before they sleep on one node only: with several, the waits
        # include socket hops, and more ranks share the cores (spinners would crowd them)
        self._spin_s = SPIN_S if len(self._leaders) == 1 else 0.0
        self._intra: IntraNode | None = None  # the single-copy path through the arena
        if shm is not None and shm.local_ranks == len(self._local):
            self._intra = IntraNode(shm, self._index, across=len(self._leaders) > 1,
                                    sync=self._node_sync, poll=mesh.poll_service)  # fmt: skip

    def shared_buffer(
        self, shape: int | tuple[int, ...], dtype: np.dtype | type = np.float32
    ) -> np.ndarray:
        """An array of ``shape`` in this rank's part of the node's arena (a registered
        buffer: allreduce reads it in place and writes results into it without copies).
        Outside an arena, or when the arena is full, a plain array (collectives copy)."""
        kind, dims = np.dtype(dtype), (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(dims, dtype=np.int64))
        intra, shm = self._intra, self.shm
        found = shm.allocate(intra.index, count, kind) if intra and shm else None
        return (found if found is not None else np.empty(count, dtype=kind)).reshape(dims)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # ---- public collectives -------------------------------------------------------------
    def barrier(self) -> None:
        """Return once every rank has entered the barrier: one fused round (board, leaders'
        star), whose release takes 2 hops whatever the world size (a binomial tree's takes
        log2 N, and at 1024 ranks on two cores each hop waits for a CPU)."""
        self.allreduce_fused(_BARRIER)

    def allreduce(
        self,
        array: np.ndarray,
        op: str = "sum",
        *,
        algorithm: str = "tree",
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Reduce ``array`` across all ranks; every rank receives the bit-identical result.

        The result is a new array, or ``out`` when given (``out=array`` is NCCL's in-place
        allreduce: no result buffer is allocated).
        """
        reduce = OPS[op]
        seq = self._next_seq()
        source = np.asarray(array)
        if algorithm == "hierarchical" and self._use_shm(source):
            result = self._shm_allreduce(source, reduce, seq, out)
        else:
            acc = np.array(source, copy=True)
            everyone = list(range(self.world_size))
            if algorithm == "tree":
                result = self._tree_allreduce(everyone, acc, reduce, seq, 0)
            elif algorithm == "ring":
                result = self._ring_allreduce(everyone, acc, reduce, seq, 0)
            elif algorithm == "hierarchical":
                result = self._hierarchical_allreduce(acc, reduce, seq)
            else:
                raise ValueError(f"unknown algorithm {algorithm!r}")
            if out is not None:
                np.copyto(out, result.reshape(out.shape))
                result = out
        self.mesh.flush()
        if op == "mean":
            return np.true_divide(result, self.world_size, out=out)
        return result

    def allreduce_fused(self, parts: Sequence[tuple[np.ndarray, str]]) -> list[np.ndarray]:
        """Several small allreduces (each with its own op) in one two-level star.

        Like NCCL's tuner picking a latency-optimised path for tiny messages: ranks hand
        their values to their node leader (on the node board when there is one, else as
        one message), leaders send to rank 0, which sends the result back down the same
        way: 4 hops whatever the world size. Contributions are folded in a fixed order
        (local ranks ascending, then nodes ascending) and only rank 0's result travels,
        so every rank holds the bit-identical result.
        """
        seq = self._next_seq()
        values, spans = fused.flatten(parts)
        local, leaders, mesh = self._local, self._leaders, self.mesh
        leader, root = local[0], leaders[0]
        board = self.board if len(values) <= BOARD_VALUES else None
        tag = tag_of(mesh.attempt, seq)
        result: Sequence[float]
        if self.rank != leader:
            if board is not None:
                board.arrive(self._index, tag, values)
                self._board_result(board, tag, seq)
                result = board.values(len(local), len(values))
            else:
                mesh.send(leader, seq, 0, np.array(values))
                result = mesh.recv(leader, seq, 3).tolist()
        else:
            if board is not None:
                self._board_arrivals(board, tag, seq)
                fused.fold_rows(values, board.others(len(values)), spans)
            else:
                for src in local[1:]:
                    fused.fold(values, mesh.recv(src, seq, 0).tolist(), spans)
            if self.rank != root:
                mesh.send(root, seq, 1, np.array(values))
                result = mesh.recv(root, seq, 2).tolist()
            else:
                for src in leaders[1:]:
                    fused.fold(values, mesh.recv(src, seq, 1).tolist(), spans)
                result = values
                if len(leaders) > 1:
                    mesh.send_many(leaders[1:], seq, 2, np.array(result))
            if board is not None:
                board.post(len(local), tag, result)
            elif len(local) > 1:
                mesh.send_many(local[1:], seq, 3, np.array(result))
        mesh.flush()
        return fused.split(result, parts, spans, self.world_size)

    def _board_idle(self, seq: int, source: Callable[[], int]) -> Callable[[], None]:
        """What a board wait runs between sleeps: serve control, and raise the watchdog
        (naming ``source()``, the rank waited for) once the collective timeout has passed."""
        self.mesh.poll_service()
        started = time.monotonic()

        def idle() -> None:
            self.mesh.serve()
            waited = time.monotonic() - started
            if waited > self.mesh.timeout_s:
                raise CollectiveTimeout(source(), seq, waited)

        return idle

    def _board_arrivals(self, board: NodeBoard, tag: int, seq: int) -> None:
        """The leader waits until every local rank has arrived on the board for ``tag``."""
        local = self._local
        idle = self._board_idle(seq, lambda: local[board.missing(tag) or 0])
        board.await_arrivals(idle, self.mesh.service_s, self._spin_s)

    def _board_result(self, board: NodeBoard, tag: int, seq: int) -> None:
        """A non-leader waits for the leader's result word to show ``tag``."""
        idle = self._board_idle(seq, lambda: self._local[0])
        board.await_tag(len(self._local), tag, idle, self.mesh.service_s, self._spin_s)

    def broadcast(self, array: np.ndarray | None, root: int = 0) -> np.ndarray:
        """Every rank returns ``root``'s array (other ranks may pass None)."""
        seq = self._next_seq()
        members = [root, *[r for r in range(self.world_size) if r != root]]
        value = np.asarray(array) if self.rank == root else None
        result = self._tree_bcast(members, value, seq, 0)
        self.mesh.flush()
        return result

    def gather(self, array: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Root returns every rank's array in rank order; the others return None."""
        seq = self._next_seq()
        if self.rank != root:
            self.mesh.send(root, seq, 0, np.asarray(array))
            self.mesh.flush()
            return None
        return [
            np.array(array, copy=True) if r == root else self.mesh.recv(r, seq, 0)
            for r in range(self.world_size)
        ]

    # ---- building blocks ----------------------------------------------------------------
    def _tree_allreduce(
        self, members: Sequence[int], acc: np.ndarray, reduce: ReduceOp, seq: int, phase: int
    ) -> np.ndarray:
        reduced = self._tree_reduce(members, acc, reduce, seq, phase)
        return self._tree_bcast(members, reduced, seq, phase + 1)

    def _tree_reduce(
        self, members: Sequence[int], acc: np.ndarray, reduce: ReduceOp, seq: int, phase: int
    ) -> np.ndarray | None:
        """Binomial reduce to members[0]; children are folded in ascending mask order."""
        idx, n, mask = members.index(self.rank), len(members), 1
        while mask < n:
            if idx & mask:
                self.mesh.send(members[idx - mask], seq, phase, acc)
                return None
            if idx + mask < n:
                reduce(acc, self.mesh.recv(members[idx + mask], seq, phase), out=acc)
            mask <<= 1
        return acc

    def _tree_bcast(
        self, members: Sequence[int], value: np.ndarray | None, seq: int, phase: int
    ) -> np.ndarray:
        """Binomial broadcast from members[0]."""
        idx, n = members.index(self.rank), len(members)
        if idx == 0:
            mask = 1 << max(n - 1, 0).bit_length()
        else:
            mask = idx & -idx
            value = self.mesh.recv(members[idx - mask], seq, phase)
        if value is None:
            raise ValueError("the broadcast root must pass an array")
        mask >>= 1
        while mask:
            if idx + mask < n:
                self.mesh.send(members[idx + mask], seq, phase, value)
            mask >>= 1
        return value

    def _ring_allreduce(
        self, members: Sequence[int], acc: np.ndarray, reduce: ReduceOp, seq: int, phase: int
    ) -> np.ndarray:
        n = len(members)
        if n == 1:
            return acc
        idx = members.index(self.rank)
        right, left = members[(idx + 1) % n], members[(idx - 1) % n]
        flat = acc.reshape(-1)
        bounds = np.linspace(0, flat.size, n + 1).astype(np.int64)
        chunk = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(n)]
        for k in range(n - 1):  # reduce-scatter: a chunk is never changed after it is sent
            self.mesh.send(right, seq, phase + k, flat[chunk[(idx - k) % n]])
            part = chunk[(idx - k - 1) % n]
            reduce(flat[part], self.mesh.recv(left, seq, phase + k), out=flat[part])
        result = np.empty_like(flat)
        own = chunk[(idx + 1) % n]
        result[own] = flat[own]
        for k in range(n - 1):  # allgather into a fresh array
            self.mesh.send(right, seq, phase + n + k, result[chunk[(idx + 1 - k) % n]])
            result[chunk[(idx - k) % n]] = self.mesh.recv(left, seq, phase + n + k)
        return result.reshape(acc.shape)

    def _use_shm(self, source: np.ndarray) -> bool:
        """Large buffers, and any buffer already in the arena, go through shared memory."""
        intra, shm = self._intra, self.shm
        if intra is None or shm is None or not shm.fits(source):
            return False
        flat = source.reshape(-1)
        return source.nbytes >= RING_MIN_BYTES or shm.offset_of(intra.index, flat) is not None

    def _shm_allreduce(
        self, source: np.ndarray, reduce: ReduceOp, seq: int, out: np.ndarray | None
    ) -> np.ndarray:
        """Hierarchical through the node's arena (``intranode``); node leaders combine nodes
        over the sockets (ring for large buffers, tree for small)."""
        intra = self._intra
        assert intra is not None
        leaders = self._leaders
        inter = None
        if len(leaders) > 1 and self.rank == self._local[0]:

            def inter(node_result: np.ndarray) -> np.ndarray:
                combined = node_result.copy()
                if combined.nbytes >= RING_MIN_BYTES:
                    return self._ring_allreduce(leaders, combined, reduce, seq, 30)
                return self._tree_allreduce(leaders, combined, reduce, seq, 30)

        return intra.allreduce(source, reduce, out, inter)

    def _node_sync(self, phase: int) -> None:
        """A barrier of this node's ranks for ``phase`` of the current collective: on the
        board (futex words) when there is one, else over the sockets."""
        seq, board, local = self.seq, self.board, self._local
        if board is None:
            self._local_barrier(local, seq, 20 + 2 * phase)
            return
        tag = tag_of(self.mesh.attempt, seq, phase)
        if self._index:
            board.arrive(self._index, tag)
            self._board_result(board, tag, seq)
        else:
            self._board_arrivals(board, tag, seq)
            board.post(len(local), tag, ())

    def _local_barrier(self, members: Sequence[int], seq: int, phase: int) -> None:
        self._tree_allreduce(members, _EMPTY.copy(), np.maximum, seq, phase)

    def _hierarchical_allreduce(self, acc: np.ndarray, reduce: ReduceOp, seq: int) -> np.ndarray:
        local = self.topology.node_members(self.topology.node_of[self.rank])
        leaders = self.topology.leaders()
        reduced = self._tree_reduce(local, acc, reduce, seq, 0)
        if reduced is not None:  # this rank leads its node
            if reduced.nbytes >= RING_MIN_BYTES:
                reduced = self._ring_allreduce(leaders, reduced, reduce, seq, 10)
            else:
                reduced = self._tree_allreduce(leaders, reduced, reduce, seq, 10)
        phase_bcast = 10 + 2 * len(leaders) + 2
        return self._tree_bcast(local, reduced, seq, phase_bcast)
