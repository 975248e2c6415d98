"""Compose smoke test: the real Dockerfile and docker-compose.yml, 1 coordinator + 2 nodes.

No registry is reachable, so (``shared/reference/docker.md``) the base image is a
debootstrapped Debian with the runtime dependencies' wheels unpacked into it, imported with
``docker import``; the Dockerfile takes it as its ``BASE`` build argument and installs the
package offline. The Docker engine runs inside its own network namespace (its bridge and
firewall rules stay there, containers cannot reach out) with a private socket, data root
and exec root. The test skips, saying why, where the engine cannot be had: not root, no
docker.io/docker-compose/debootstrap, or a daemon that does not come up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("dockerd", "docker", "docker-compose", "debootstrap", "nsenter", "ip")
BASE_TAG = "llmcluster-compose-base"
DEPENDENCIES = ("pyzmq", "msgpack", "rich", "numpy", "prometheus-client")  # unpacked in the base
# the build backend pyproject.toml asks for, as a wheel in the base's WHEELS for an isolated
# build to install offline (the venv's own setuptools is Debian's, too old for its metadata)
BUILD_REQUIREMENTS = ("setuptools>=77",)
WHEELS = "/usr/local/share/llmcluster-wheels"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmcluster"
STEPS = 6

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(*args: str, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True,
                          **kwargs)  # fmt: skip


def _debian_source() -> tuple[str, str]:
    """(suite, mirror) of this machine's apt sources, for a base image like the host."""
    suite = "bookworm"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            suite = line.split("=", 1)[1].strip('"') or suite
    mirror = "http://deb.debian.org/debian"
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        found = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.M)
        mirror = found.group(1) if found else mirror
    return suite, mirror


def _base_tarball(work: Path) -> Path:
    """A Debian minbase root with python3, venv and the runtime dependencies (cached)."""
    suite, mirror = _debian_source()
    deps = hashlib.sha256(" ".join(DEPENDENCIES + BUILD_REQUIREMENTS).encode()).hexdigest()[:8]
    tarball = CACHE / f"compose-base-{suite}-{platform.machine()}-{deps}.tar"
    if tarball.exists():
        return tarball
    rootfs = work / "rootfs"
    _run("debootstrap", "--variant=minbase", "--include=python3,python3-venv", suite,
         str(rootfs), mirror, timeout=600)  # fmt: skip
    version = _run("chroot", str(rootfs), "python3", "-c",
                   "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"
                   ).stdout.strip()  # fmt: skip
    glibc = _run("chroot", str(rootfs), "python3", "-c",
                 "import platform; print(platform.libc_ver()[1].split('.')[1])"
                 ).stdout.strip()  # fmt: skip
    platforms = [f"--platform=manylinux_2_{minor}_{platform.machine()}"  # pip does not widen
                 for minor in range(17, int(glibc) + 1)]  # fmt: skip
    _run(sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:",
         "--target", str(rootfs / f"usr/local/lib/python{version}/dist-packages"),
         "--python-version", version, "--implementation", "cp",
         *platforms, *DEPENDENCIES)  # fmt: skip
    _run(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
         "--dest", str(rootfs / WHEELS.lstrip("/")), *BUILD_REQUIREMENTS)  # fmt: skip
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial")
    _run("tar", "-C", str(rootfs), "-cf", str(partial), ".")
    partial.rename(tarball)
    for stale in CACHE.glob(f"compose-base-{suite}-{platform.machine()}-*.tar"):
        if stale != tarball:  # built for other dependencies: never used again
            stale.unlink()
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


class Engine:
    """A dockerd in its own network namespace, reached through a private socket."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.netns = f"llmc-dock{os.getpid() % 10000}"
        self.socket = work / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.log = work / "dockerd.log"
        self.daemon: subprocess.Popen[bytes] | None = None

    def start(self) -> str | None:
        """Start the daemon; returns why it could not, or None."""
        _run("ip", "netns", "add", self.netns)
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        with self.log.open("wb") as log:  # nsenter, not ip netns exec: that remounts /sys
            self.daemon = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", "dockerd",
                 "-H", f"unix://{self.socket}", "--data-root", str(self.work / "data"),
                 "--exec-root", str(self.work / "exec"), "--pidfile", str(self.work / "pid")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                break
            probe = subprocess.run(
                ["docker", "version", "--format", "{{.Server.Version}}"],
                env=self.env, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if probe.returncode == 0:
                return None
            time.sleep(0.3)
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return "the Docker engine did not start: " + " | ".join(tail)

    def docker(self, *args: str, timeout: float = 300, **kwargs: Any) -> str:
        return _run("docker", *args, env=self.env, timeout=timeout, **kwargs).stdout

    def logs(self, container: str) -> str:
        """A container's stdout and stderr (rich's log goes to one, the agent's to the other)."""
        done = _run("docker", "logs", container, env=self.env)
        return done.stdout + done.stderr

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)  # dockerd stops its containerd with it
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=10)
        left = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                              text=True).stdout.split()  # fmt: skip
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["umount", "-R", str(self.work / "data")], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("the compose smoke test needs root (a Docker engine in a network namespace)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (apt-get install docker.io docker-compose "
                    "debootstrap; .ci/run does)")  # fmt: skip
    work = tmp_path_factory.mktemp("compose")
    engine = Engine(work)
    try:
        why = engine.start()
        if why is not None:
            pytest.skip(why)
        engine.docker("import", str(_base_tarball(work)), BASE_TAG, timeout=300)
        yield engine
    finally:
        engine.stop()


def _project(work: Path) -> Path:
    """The files compose builds from, plus an .env with a fresh token (the repo stays clean)."""
    project = work / "project"
    project.mkdir()
    for name in ("Dockerfile", ".dockerignore", "docker-compose.yml", "pyproject.toml",
                 "README.md"):  # fmt: skip
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "llmcluster", project / "llmcluster",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (project / ".env").write_text(f"LLMCLUSTER_TOKEN={secrets.token_hex(16)}\n")
    return project


def test_compose_runs_two_nodes_and_rank0_prints_the_log(engine: Engine) -> None:
    project = _project(engine.work)
    env = {**engine.env, "BASE_IMAGE": BASE_TAG, "PIP_OPTIONS": f"--no-index --find-links {WHEELS}",
           "NNODES": "2", "STEPS": str(STEPS), "SPEED": "400", "MODEL": "Llama-3-8B",
           "GPU": "H100-SXM", "COMPOSE_PROJECT_NAME": "llmcsmoke"}  # fmt: skip

    def compose(*args: str, timeout: float = 300) -> str:
        return _run("docker-compose", *args, env=env, cwd=project, timeout=timeout).stdout

    try:
        compose("build")
        compose("up", "-d", "--scale", "node=2", timeout=180)
        containers = compose("ps", "-q").split()
        assert len(containers) == 3
        codes = engine.docker("wait", *containers, timeout=300).split()
        assert codes == ["0", "0", "0"], compose("logs", "--no-color")
        logs = {
            engine.docker("inspect", "--format", "{{.Name}}", c).strip().lstrip("/"):
            engine.logs(c)
            for c in containers
        }  # fmt: skip
    finally:
        subprocess.run(["docker-compose", "down", "-v", "--timeout", "5"], env=env, cwd=project,
                       capture_output=True, timeout=120)  # fmt: skip

    coordinator = logs.pop("llmcsmoke_coordinator_1")
    assert "node 0 joined" in coordinator and "node 1 joined" in coordinator
    assert "all 16 ranks ready on 2 node(s)" in coordinator
    assert f"run completed after step {STEPS}, exit code 0" in coordinator

    leaders = [log for log in logs.values() if "group_rank=0" in log]
    assert len(leaders) == 1, "exactly one node is node rank 0 and prints the training log"
    rank0 = leaders[0]
    assert "world size 16 (2 nodes x 8 H100-SXM), master coordinator:29500" in rank0
    assert "rdzv_endpoint    : coordinator:29500" in rank0
    steps = re.findall(r"\| step (\d+)/(\d+) \| loss (\d+\.\d+) \| ppl", rank0)
    assert [int(s) for s, _, _ in steps] == list(range(1, STEPS + 1))
    losses = [float(loss) for _, _, loss in steps]
    assert losses[-1] < losses[0]
    assert f"training completed after {STEPS} steps, final loss {steps[-1][2]}" in rank0
    assert re.search(r"Exit\s+│ completed", rank0)
    assert re.search(r"Dropped messages\s+│ 0\s", rank0)

    (other,) = [log for log in logs.values() if log is not rank0]
    assert "group_rank=1" in other and f"global_ranks={list(range(8, 16))}" in other
    assert "worker group successfully finished" in other
    assert "| step 1/" not in other, "only rank 0 prints the training log"
