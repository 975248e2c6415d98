"""examples/k8s/: the manifests validate offline, and the environment their pods get places
every node as intended.

``kubernetes-validate`` checks the built-in kinds (Service, Job, and each PyTorchJob pod
template as a PodTemplate) against Kubernetes 1.30's schemas, strictly (unknown fields are
errors). It checks neither enum values nor CRDs, so the PyTorchJob's own fields are checked
here against training-operator v1's documented API (``kubeflow.org/v1`` PyTorchJobSpec,
ReplicaSpec, RunPolicy), and the fields Indexed Jobs depend on are checked by value. Then each
pod's command line and the variables its controller sets (JOB_COMPLETION_INDEX; the
operator's PET_*) go through ``llmcluster launch``'s own parser and environment mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmcluster.cli_launch import build_launch_parser, launch_flags
from llmcluster.launch.environment import launch_env

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

K8S = Path(__file__).resolve().parent.parent / "examples" / "k8s"
VERSION = "1.30.0"
IMAGE = "llmcluster:latest"  # docker-compose.yml's image
# training-operator v1 (pkg/apis/kubeflow.org/v1: pytorch_types.go, common_types.go)
PYTORCHJOB_SPEC = {"runPolicy", "elasticPolicy", "pytorchReplicaSpecs", "nprocPerNode"}
REPLICA_SPEC = {"replicas", "template", "restartPolicy"}
RUN_POLICY = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds",
              "backoffLimit", "schedulingPolicy", "suspend", "managedBy"}  # fmt: skip
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
REPLICA_TYPES = {"Master", "Worker"}
DEFAULT_PORT = 23456  # the operator's default for the Master's pytorchjob-port


def _docs(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _token_from_secret(container: dict[str, Any]) -> None:
    env = {item["name"]: item for item in container["env"]}
    ref = env["LLMCLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "llmcluster-token", "key": "token"} and "value" not in env[
        "LLMCLUSTER_TOKEN"]  # fmt: skip


def _placed(args: list[str], environ: dict[str, str]) -> tuple[int, int, int, str, int]:
    assert args[0] == "launch"  # the image's entrypoint is llmcluster
    env = launch_env(launch_flags(build_launch_parser().parse_args(args[1:])), environ)
    return env.nnodes, env.nproc_per_node, env.node_rank, env.master_addr, env.master_port


def test_the_indexed_job_and_its_service_validate() -> None:
    for doc in _docs("indexed-job.yaml"):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_a_type_error_would_be_caught() -> None:
    job = next(d for d in _docs("indexed-job.yaml") if d["kind"] == "Job")
    job["spec"]["parallelism"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSION, strict=True)


def test_the_indexed_job_places_every_pod() -> None:
    service, job = _docs("indexed-job.yaml")
    assert (service["kind"], job["kind"]) == ("Service", "Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    name, svc = job["metadata"]["name"], service["metadata"]["name"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc
    assert service["spec"]["selector"] == {"job-name": name}
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    _token_from_secret(container)
    master = {e["name"]: e.get("value") for e in container["env"]}["LLMCLUSTER_MASTER_ADDR"]
    assert master == f"{name}-0.{svc}"  # pod 0's hostname through the headless Service
    ports = {p["containerPort"] for p in container["ports"]}
    for index in range(spec["completions"]):
        environ = {"JOB_COMPLETION_INDEX": str(index), "LLMCLUSTER_MASTER_ADDR": master}
        nnodes, _, node_rank, addr, port = _placed(container["args"], environ)
        assert (nnodes, node_rank, addr) == (spec["completions"], index, master)
        assert {port, port + 1} <= ports  # control and records


def test_the_pytorchjob_uses_only_the_operators_fields() -> None:
    (job,) = _docs("pytorchjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert set(job["spec"]) <= PYTORCHJOB_SPEC and set(job["spec"]["runPolicy"]) <= RUN_POLICY
    assert isinstance(job["spec"]["nprocPerNode"], str)  # *string in the v1 API
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= REPLICA_TYPES and replicas["Master"]["replicas"] == 1
    for replica in replicas.values():
        assert set(replica) <= REPLICA_SPEC and replica["restartPolicy"] in RESTART_POLICIES
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                    "template": replica["template"]}  # fmt: skip
        kubernetes_validate.validate(template, VERSION, strict=True)
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch" and container["image"] == IMAGE
        _token_from_secret(container)


def test_the_pytorchjob_pods_are_placed_by_the_operators_variables() -> None:
    """What envvar.go sets: PET_NNODES (all replicas), PET_NPROC_PER_NODE, PET_NODE_RANK (the
    Master 0, Worker i: i + 1), PET_MASTER_ADDR <job>-master-0, PET_MASTER_PORT."""
    (job,) = _docs("pytorchjob.yaml")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    master_ports = {p.get("name"): p["containerPort"] for p in
                    replicas["Master"]["template"]["spec"]["containers"][0]["ports"]}  # fmt: skip
    port = master_ports.get("pytorchjob-port", DEFAULT_PORT)
    total = sum(r["replicas"] for r in replicas.values())
    pods = [("Master", 0)] + [("Worker", i + 1) for i in range(replicas["Worker"]["replicas"])]
    for kind, node_rank in pods:
        environ = {"PET_NNODES": str(total), "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
                   "PET_NODE_RANK": str(node_rank), "PET_MASTER_PORT": str(port),
                   "PET_MASTER_ADDR": f"{job['metadata']['name']}-master-0",
                   "MASTER_ADDR": f"{job['metadata']['name']}-master-0", "RANK": str(node_rank),
                   "WORLD_SIZE": str(total * 8), "PYTHONUNBUFFERED": "1"}  # fmt: skip
        args = replicas[kind]["template"]["spec"]["containers"][0]["args"]
        assert _placed(args, environ) == (
            total,
            int(job["spec"]["nprocPerNode"]),
            node_rank,
            environ["PET_MASTER_ADDR"],
            port,
        )
    assert master_ports.get("records") == port + 1
