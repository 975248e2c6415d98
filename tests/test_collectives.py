"""Collectives over real processes: every rank gets the bit-identical, correct result.

Each test forks N rank processes that talk over ipc:// PeerMesh sockets (no
coordinator), runs a table of collectives, and saves every result. The test
then checks bit equality across ranks and agreement with a numpy reference.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

import numpy as np
import pytest
import zmq
from own_processes import own_only  # noqa: F401  (the fixture every test here uses)

from llmcluster.comm import Communicator, PeerMesh
from llmcluster.comm.board import NodeBoard, create_board
from llmcluster.comm.shm import ShmArena, create_region
from llmcluster.comm.topology import Topology, node_book_ranks
from llmcluster.control.procs import fork_child, terminate_all

pytestmark = pytest.mark.usefixtures("own_only")
SIZES = (0, 1, 3, 7, 1000, 4097)
SHM_CAPACITY = 1 << 21
OPS = ("sum", "mean", "max", "min")
REGISTERED = ("reg-in-place", "reg-both", "reg-src-only", "reg-out-only")  # which are in the arena


def rank_input(rank: int, size: int, dtype: str = "float64") -> np.ndarray:
    rng = np.random.default_rng([1234, rank, size])
    if dtype.startswith("int"):
        return rng.integers(-1000, 1000, size=size, dtype=np.int64).astype(dtype)
    return rng.standard_normal(size).astype(dtype)


def cases(world: int, algorithms: tuple[str, ...], sizes: tuple[int, ...]) -> list[tuple]:
    out: list[tuple] = []
    for algorithm in algorithms:
        for size in sizes:
            for op in OPS:
                out.append(("allreduce", algorithm, op, size, "float64"))
        out.append(("allreduce", algorithm, "sum", 257, "int64"))
        out.append(("allreduce", algorithm, "sum", 15, "float32"))
        out.append(("inplace", algorithm, "mean", 1000, "float64"))
    out.append(("broadcast", "tree", "root0", 33, "float64"))
    out.append(("broadcast", "tree", f"root{world - 1}", 33, "float64"))
    out.append(("gather", "flat", "root0", 5, "float64"))
    out.append(("barrier", "tree", "", 0, ""))
    return out


def _rank_main(
    rank: int,
    world: int,
    nproc: int,
    folder: str,
    table: list[tuple],
    regions: dict | None,
    boards: dict,
    sparse: bool = False,
) -> int:
    ctx = zmq.Context()
    mesh = PeerMesh(
        ctx,
        rank=rank,
        run_id="test",
        bind=[f"ipc://{folder}/r{rank}"],
        timeout_s=60,
        service=lambda: None,
    )
    topology = Topology.uniform(world, nproc)
    known = node_book_ranks(topology, rank // nproc) if sparse else range(world)
    mesh.set_peers({r: [f"ipc://{folder}/r{r}"] for r in known}, topology.node_of)
    arena = None
    if regions is not None:
        local = topology.node_members(rank // nproc)
        arena = ShmArena(regions[rank // nproc], len(local), SHM_CAPACITY)
    board = None
    if boards.get(rank // nproc) is not None:
        board = NodeBoard(boards[rank // nproc], len(topology.node_members(rank // nproc)))
    comm = Communicator(mesh, rank=rank, topology=topology, shm=arena, board=board)
    sends = comm.shared_buffer(SHM_CAPACITY // 8, np.float64)  # registered, when in an arena
    receives = comm.shared_buffer(SHM_CAPACITY // 8, np.float64)
    results = {}
    for i, (kind, algorithm, op, size, dtype) in enumerate(table):
        if kind in REGISTERED:  # buffers in the node's arena, as a registering caller has them
            data = rank_input(rank, size, dtype)
            send, receive = sends.view(dtype)[:size], receives.view(dtype)[:size]
            send[:] = data
            source = data if kind == "reg-out-only" else send
            target = {"reg-in-place": send, "reg-src-only": None}.get(kind, receive)
            returned = comm.allreduce(source, op, algorithm=algorithm, out=target)
            assert target is None or returned is target
            if kind in ("reg-src-only", "reg-both"):  # out of place: the input is untouched
                assert send.tobytes() == data.tobytes()
            results[f"c{i}"] = returned.copy()
        elif kind == "fused":  # the training step's sum + max in one round
            data = rank_input(rank, size, dtype)
            summed, top = comm.allreduce_fused([(data, "sum"), (data, "max")])
            results[f"c{i}"] = summed if op == "sum" else top
        elif kind == "allreduce":
            data = rank_input(rank, size, dtype)
            if dtype == "float32":
                data = data.reshape(3, 5)
            results[f"c{i}"] = comm.allreduce(data, op, algorithm=algorithm)
        elif kind == "inplace":  # out= the input: the result overwrites it
            data = rank_input(rank, size, dtype)
            returned = comm.allreduce(data, op, algorithm=algorithm, out=data)
            assert returned is data
            results[f"c{i}"] = data
        elif kind == "broadcast":
            root = int(op[4:])
            data = rank_input(root, size) if rank == root else None
            results[f"c{i}"] = comm.broadcast(data, root=root)
        elif kind == "gather":
            got = comm.gather(rank_input(rank, size), root=0)
            if got is not None:
                results[f"c{i}"] = np.stack(got)
        else:
            comm.barrier()
    np.savez(f"{folder}/out{rank}.npz", **results)
    comm.barrier()  # nobody closes its inbox while a peer may still send to it
    mesh.close()
    ctx.term()
    return 0


def run_ranks(
    world: int,
    nproc: int,
    table: list[tuple],
    *,
    shm: bool = False,
    board: bool = False,
    sparse: bool = False,
) -> list[dict[str, np.ndarray]]:
    regions = None
    if shm:  # mapped before the fork, as a node agent does
        regions = {
            node: create_region(
                len(range(node * nproc, min(world, (node + 1) * nproc))), SHM_CAPACITY
            )
            for node in range(-(-world // nproc))
        }
    boards = {}
    if board:  # as a node agent makes them
        boards = {n: create_board(len(range(n * nproc, min(world, (n + 1) * nproc))))
                  for n in range(-(-world // nproc))}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="llmc-test-") as folder:
        pids = [
            fork_child(
                functools.partial(
                    _rank_main, r, world, nproc, folder, table, regions, boards, sparse
                ),
                name=f"llmc-t{r}",
            )
            for r in range(world)
        ]
        deadline = time.monotonic() + 90
        codes: dict[int, int] = {}
        try:
            while len(codes) < world and time.monotonic() < deadline:
                pid, status = os.waitpid(-1, 0)
                if pid in pids:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        finally:
            terminate_all([p for p in pids if p not in codes])
        assert sorted(codes.values()) == [0] * world, codes
        loaded = []
        for r in range(world):
            with np.load(f"{folder}/out{r}.npz") as data:
                loaded.append({key: data[key] for key in data.files})
        return loaded


def reference(world: int, op: str, size: int, dtype: str) -> np.ndarray:
    inputs = [rank_input(r, size, dtype) for r in range(world)]
    if dtype == "float32" and size == 15:  # the "allreduce" case's 2-d input
        inputs = [x.reshape(3, 5) for x in inputs]
    if op in ("sum", "mean"):
        total = functools.reduce(np.add, inputs)
        return total / world if op == "mean" else total
    return functools.reduce(np.maximum if op == "max" else np.minimum, inputs)


def check(world: int, nproc: int, table: list[tuple], outputs: list[dict[str, np.ndarray]]) -> None:
    for i, (kind, _algorithm, op, size, dtype) in enumerate(table):
        key = f"c{i}"
        if kind == "barrier":
            continue
        if kind in ("fused", "inplace", *REGISTERED):
            kind = "allreduce"
        if kind == "gather":
            expected = np.stack([rank_input(r, size) for r in range(world)])
            np.testing.assert_array_equal(outputs[0][key], expected)
            continue
        first = outputs[0][key]
        for r in range(1, world):  # bit-identical on every rank
            assert outputs[r][key].tobytes() == first.tobytes(), (table[i], r)
            assert outputs[r][key].shape == first.shape
        if kind == "broadcast":
            expected = rank_input(int(op[4:]), size)
            assert first.tobytes() == expected.tobytes()
        elif dtype == "int64" or op in ("max", "min"):
            np.testing.assert_array_equal(first, reference(world, op, size, dtype))
        else:
            np.testing.assert_allclose(
                first, reference(world, op, size, dtype), rtol=1e-5, atol=1e-9
            )


@pytest.mark.parametrize(
    ("world", "nproc"),
    [(1, 8), (2, 8), (3, 2), (5, 2), (8, 4), (8, 8)],
)
def test_collectives_bit_identical_and_correct(world: int, nproc: int) -> None:
    table = cases(world, ("tree", "ring", "hierarchical"), SIZES)
    check(world, nproc, table, run_ranks(world, nproc, table))


@pytest.mark.timeout(180)
def test_collectives_at_64_ranks() -> None:
    table = cases(64, ("tree", "ring", "hierarchical"), (1, 7, 4097))
    check(64, 8, table, run_ranks(64, 8, table))


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("world", "nproc", "shm"), [(5, 2, False), (12, 4, True), (24, 3, True)])
def test_collectives_with_node_address_books(world: int, nproc: int, shm: bool) -> None:
    """Each rank knows only its node's book (the ranks its node sends to, far fewer than
    the world at scale): every algorithm, the fused step, barrier, broadcast and gather
    from root 0 still find every peer they send to (an unknown one fails the rank)."""
    table = [c for c in cases(world, ("tree", "ring", "hierarchical"), (1, 4097))
             if c[:3] != ("broadcast", "tree", f"root{world - 1}")]  # fmt: skip
    table += [("fused", "fused", op, 5, "float64") for op in ("sum", "max")]
    table += [("allreduce", "hierarchical", "sum", 100003, "float64")]  # the arena's path
    outputs = run_ranks(world, nproc, table, shm=shm, board=shm, sparse=True)
    check(world, nproc, table, outputs)
    topology = Topology.uniform(world, nproc)
    assert all(len(node_book_ranks(topology, n)) < world for n in range(1, world // nproc))


def test_large_buffer_ring_allreduce() -> None:
    table = [
        ("allreduce", "ring", "sum", 1 << 20, "float64"),
        ("allreduce", "hierarchical", "sum", 1 << 18, "float64"),
    ]
    check(4, 2, table, run_ranks(4, 2, table))


@pytest.mark.parametrize(("world", "nproc"), [(8, 8), (8, 4), (6, 4)])
def test_shared_memory_allreduce_is_bit_identical(world: int, nproc: int) -> None:
    table = [
        ("allreduce", "hierarchical", op, size, "float64")
        for size in (20000, 100003, 1 << 17)
        for op in ("sum", "mean", "max", "min")
    ]
    table += [("allreduce", "hierarchical", "sum", 40001, "int64")] * 3  # the arena reused
    table += [("inplace", "hierarchical", op, 100003, "float64") for op in ("sum", "mean")]
    check(world, nproc, table, run_ranks(world, nproc, table, shm=True))


@pytest.mark.parametrize("board", [False, True])
@pytest.mark.parametrize(("world", "nproc"), [(2, 2), (8, 8), (6, 4), (3, 1)])
def test_registered_buffers_single_copy(world: int, nproc: int, board: bool) -> None:
    """Inputs and outputs in the arena (in place, out of place, either side alone), sizes
    below and above the socket threshold and not divisible by the ranks, every op."""
    table = [
        (kind, "hierarchical", op, size, dtype)
        for kind in REGISTERED
        for op, size, dtype in (
            ("sum", 9, "float64"),
            ("mean", 100003, "float64"),
            ("max", 20001, "float32"),
            ("sum", 70001, "int64"),
        )
    ]
    table += [("allreduce", "hierarchical", "min", 100003, "float64")]  # neither registered
    check(world, nproc, table, run_ranks(world, nproc, table, shm=True, board=board))


@pytest.mark.parametrize(("world", "board"), [(2, True), (3, False), (8, True)])
def test_registered_buffers_match_numpy_bit_for_bit(world: int, board: bool) -> None:
    """On one node the arena's allreduce folds the ranks in rank order, so in place and out
    of place its results are numpy's left-to-right sum to the last bit, for odd sizes and
    every dtype."""
    table = [
        (kind, "hierarchical", "sum", size, dtype)
        for kind in ("reg-in-place", "reg-both")
        for dtype in ("float32", "float64", "int32", "int64")
        for size in (1, 7, 4097, 100003)
    ]
    outputs = run_ranks(world, world, table, shm=True, board=board)
    for i, (_, _, _, size, dtype) in enumerate(table):
        expected = functools.reduce(np.add, [rank_input(r, size, dtype) for r in range(world)])
        for rank in range(world):
            got = outputs[rank][f"c{i}"]
            assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), (i, rank)


def _backing(address: int) -> str:
    """What the mapping holding ``address`` maps (the last field of /proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            lo, hi = (int(end, 16) for end in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError(f"{address:#x} is not mapped")


def test_a_registered_buffer_has_the_asked_shape_and_lives_in_the_arena() -> None:
    """A registered buffer has the shape asked for and lives in the arena, an anonymous
    shared mapping: no /dev/shm name that an exit could leave behind (the kernel frees it
    with the last process that maps it); past the heap, a plain array."""
    region = create_region(1, SHM_CAPACITY)
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="llmc-test-") as folder:
        mesh = PeerMesh(ctx, rank=0, run_id="t", bind=[f"ipc://{folder}/r0"], timeout_s=10,
                        service=lambda: None)  # fmt: skip
        mesh.set_peers([[f"ipc://{folder}/r0"]], [0])
        try:
            arena = ShmArena(region, 1, SHM_CAPACITY)
            comm = Communicator(mesh, rank=0, topology=Topology.uniform(1, 1), shm=arena)
            grid = comm.shared_buffer((3, 5), np.float64)
            assert grid.shape == (3, 5) and arena.offset_of(0, grid.reshape(-1)) is not None
            assert _backing(grid.__array_interface__["data"][0]) == "/dev/zero (deleted)"
            grid[:] = np.arange(15.0).reshape(3, 5)
            assert comm.allreduce(grid, algorithm="hierarchical", out=grid) is grid
            assert grid.tolist() == np.arange(15.0).reshape(3, 5).tolist()
            too_big = comm.shared_buffer(3 * SHM_CAPACITY, np.uint8)  # the heap is full: plain
            assert too_big.size == 3 * SHM_CAPACITY and arena.offset_of(0, too_big) is None
        finally:
            mesh.close()
            ctx.term()


@pytest.mark.parametrize("board", [False, True])
@pytest.mark.parametrize(("world", "nproc"), [(1, 8), (5, 2), (16, 8), (12, 8)])
def test_fused_step_reduction(world: int, nproc: int, board: bool) -> None:
    table = [("fused", "fused", op, size, "float64") for op in ("sum", "max") for size in (1, 3, 5)]
    table += [("fused", "fused", "sum", 40, "float64")]  # more than a board slot: over sockets
    check(world, nproc, table, run_ranks(world, nproc, table, board=board))


def test_a_receive_that_finds_its_message_at_once_still_serves_control() -> None:
    """Busy collectives never wait, so the service (heartbeats) must run on receives that
    succeed at once too, whenever it is due (it is due at the first one)."""
    served: list[int] = []
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="llmc-test-") as folder:
        mesh = PeerMesh(ctx, rank=0, run_id="t", bind=[f"ipc://{folder}/r0"], timeout_s=10,
                        service=lambda: served.append(1))  # fmt: skip
        mesh.set_peers([[f"ipc://{folder}/r0"]], [0])
        try:
            mesh.send(0, 1, 0, np.arange(3.0))
            assert mesh.recv(0, 1, 0).tolist() == [0.0, 1.0, 2.0]
            assert served == [1]
        finally:
            mesh.close()
            ctx.term()
