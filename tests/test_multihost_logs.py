"""NCCL's lines from every rank of a 2-host run on the stand-in hosts (``test_multihost``'s)."""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest
from framework_formats import MEGATRON
from nccl_formats import PREFIX, nccl_kind
from netns_hosts import communicate_all, reap
from test_multihost import COORD, NETNS, hosts  # noqa: F401 - the fixture


def _start(host: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return NETNS.start(host, args, {"NCCL_DEBUG": "INFO", **(env or {})})


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("hosts")
def test_two_hosts_show_inter_node_net_lines_and_both_nodes_trees(clean_table: None) -> None:
    coord = _start("coord", "coordinator", "--bind", COORD, "--port", "29500", "--nnodes", "2",
                   "--nproc-per-node", "4", "--token", "s3cret", "--join-timeout", "60",
                   "--format", "jsonl", "--steps", "2", "--speed", "1e6")  # fmt: skip
    nodes = [
        _start(
            host,
            "node",
            "--master-addr",
            COORD,
            "--master-port",
            "29500",
            "--node-rank",
            str(rank),
            "--token",
            "s3cret",
        )
        for rank, host in enumerate(("node1", "node2"))
    ]
    try:
        *read, _ = communicate_all([*nodes, coord], timeout=150)
        outputs = [out for out, _ in read]
        assert [node.returncode for node in nodes] == [0, 0]
        assert coord.returncode == 0
    finally:
        reap(coord, *nodes)
    for node, (host, out) in enumerate(zip(("node1", "node2"), outputs, strict=True)):
        comm_ranks, tree_devs, hops = set(), set(), []
        for line in out.splitlines():
            if line.startswith("{"):
                json.loads(line)  # rank 0's records on node 0
                continue
            found = nccl_kind(line)
            assert found is not None, line
            head = PREFIX.match(line)
            assert head is None or head["host"] == host, line  # each host names itself
            kind, match = found
            if kind == "comm":
                comm_ranks.add(int(match["rank"]))
            if kind == "trees":
                tree_devs.add(int(head["dev"]))  # type: ignore[index]
            if kind == "hop":
                hops.append(match)
        assert comm_ranks == set(range(4 * node, 4 * node + 4)) and tree_devs == {0, 1, 2, 3}
        net = [h for h in hops if h["via"].startswith("NET/IB/")]
        assert net and all(int(h["src"]) // 4 != int(h["dst"]) // 4 for h in net)
        assert {h["dir"] for h in net} == {"send", "receive"}


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("hosts")
def test_each_node_takes_its_own_torchrun_log_flags(tmp_path: str, clean_table: None) -> None:
    """Node 0 redirects into its log dir, node 1 tees local rank 3 only with its own role; the
    coordinator asked for neither. The last rank (node 1's local rank 3) prints Megatron's
    iteration lines itself."""
    node0_dir = os.path.join(str(tmp_path), "node0")
    coord = _start("coord", "coordinator", "--bind", COORD, "--port", "29500", "--nnodes", "2",
                   "--nproc-per-node", "4", "--token", "s3cret", "--join-timeout", "60",
                   "--style", "megatron", "--ui", "log", "--steps", "3",
                   "--speed", "1e6")  # fmt: skip
    node_args = ("node", "--master-addr", COORD, "--master-port", "29500", "--token", "s3cret")
    tmp = {"TMPDIR": str(tmp_path)}  # node 1's torchelastic_ directory (mkdtemp, as torch's)
    nodes = [
        _start("node1", *node_args, "--node-rank", "0", "-r", "3", "--log-dir", node0_dir),
        _start("node2", *node_args, "--node-rank", "1", "-t", "3", "--local-ranks-filter", "3",
               "--role", "worker", env=tmp),
    ]  # fmt: skip
    try:
        *outputs, _ = communicate_all([*nodes, coord], timeout=150)
        assert [node.returncode for node in nodes] == [0, 0], [err for _, err in outputs]
        assert coord.returncode == 0
    finally:
        reap(coord, *nodes)
    (out0, err0), (out1, _) = outputs
    assert out0 == ""  # every stream of node 0 went to its files
    assert f"log directory set to: {node0_dir}/" in err0
    stdouts = sorted(glob.glob(f"{node0_dir}/*_*/attempt_0/*/stdout.log"))
    assert [path.split(os.sep)[-2] for path in stdouts] == ["0", "1", "2", "3"]
    with open(stdouts[0]) as f:
        assert any(MEGATRON["world"].match(line) for line in f.read().splitlines())
    tee_dirs = glob.glob(f"{tmp_path}/torchelastic_*/*_*/attempt_0/3/stdout.log")
    assert len(tee_dirs) == 1  # where torch's tee keeps local rank 3's files: not in /tmp
    lines = out1.splitlines()
    assert lines and all(line.startswith("[worker3]:") for line in lines)
    iterations = [MEGATRON["iteration"].match(line[len("[worker3]:") :]) for line in lines]
    assert [int(m["it"]) for m in iterations if m] == [1, 2, 3]
