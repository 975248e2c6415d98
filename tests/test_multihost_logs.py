"""NCCL's lines from every rank of a 2-host run on the stand-in hosts (``test_multihost``'s)."""

from __future__ import annotations

import json
import subprocess

import pytest
from nccl_formats import PREFIX, nccl_kind
from test_multihost import COORD, LLMC, NETNS, _env, _reap, hosts  # noqa: F401 - the fixture


def _start(host: str, *args: str) -> subprocess.Popen[str]:
    env = {**_env(), "NCCL_DEBUG": "INFO"}
    return subprocess.Popen(["bash", str(NETNS), "exec", host, *LLMC, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)  # fmt: skip


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
        outputs = [node.communicate(timeout=150)[0] for node in nodes]
        assert [node.returncode for node in nodes] == [0, 0]
        assert coord.wait(timeout=30) == 0
    finally:
        _reap(coord, *nodes)
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
