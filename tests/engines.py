"""A real Docker engine and a real containerd, started for the tests.

Both run as root without systemd, with every file (data, state, sockets)
in a temporary directory, so they neither see nor touch the machine's own
engines. dockerd starts a containerd of its own under its exec root; the
standalone containerd here is a second, separate one, as on a k3s node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import ToolError, log_tail, need_tool, run_tool, stop_process

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
NAMESPACE = "occystrap-test"


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        import pytest

        from conftest import REQUIRE_INTEGRATION
        message = f"{what} needs root"
        if REQUIRE_INTEGRATION:
            pytest.fail(f"{message} but OCCYSTRAP_REQUIRE_INTEGRATION=1", pytrace=False)
        pytest.skip(message)


def _wait(check: list[str], process: subprocess.Popen[bytes], log: Path, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT:
        if process.poll() is not None:
            raise ToolError(f"{what} exited {process.returncode}:\n{log_tail(log)}")
        done = subprocess.run(check, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if done.returncode == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    raise ToolError(f"{what} not ready after {START_TIMEOUT}s:\n{log_tail(log)}")


def _unmount_below(root: Path) -> None:
    """Engines may leave mounts (shm, overlay, netns) under their dirs."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(str(root))), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@dataclasses.dataclass(frozen=True)
class Docker:
    binary: str
    socket: Path
    started_in: float

    def run(self, *args: str) -> bytes:
        return run_tool([self.binary, "-H", f"unix://{self.socket}", *args])

    def load(self, tar: Path | str) -> tuple[list[str], list[str]]:
        """`docker load`: the names it reports, and the IDs of untagged images."""
        output = self.run("load", "--input", str(tar)).decode()
        names = [line.split(": ", 1)[1].strip() for line in output.splitlines()
                 if line.startswith("Loaded image: ")]
        ids = [line.split(": ", 1)[1].strip() for line in output.splitlines()
               if line.startswith("Loaded image ID: ")]
        return names, ids

    def inspect(self, name: str) -> dict:
        (image,) = json.loads(self.run("image", "inspect", name))
        return image

    def remove_all(self) -> None:
        ids = self.run("images", "-q", "--no-trunc").decode().split()
        if ids:
            self.run("rmi", "-f", *sorted(set(ids)))


@dataclasses.dataclass(frozen=True)
class Containerd:
    binary: str
    socket: Path
    started_in: float

    def run(self, *args: str) -> bytes:
        return run_tool([self.binary, "--address", str(self.socket), "-n", NAMESPACE, *args])

    def import_(self, tar: Path | str, *flags: str) -> dict[str, str]:
        """`ctr images import`; then every image name -> its target digest."""
        self.run("images", "import", *flags, str(tar))
        return self.images()

    def images(self) -> dict[str, str]:
        listing = self.run("images", "ls").decode().splitlines()[1:]
        return {line.split()[0]: line.split()[2] for line in listing if line.strip()}

    def remove_all(self) -> None:
        names = list(self.images())
        if names:
            self.run("images", "rm", *names)


@contextlib.contextmanager
def start_docker() -> Iterator[Docker]:
    _need_root("dockerd")
    dockerd = need_tool("dockerd")
    # The CLI that came with this engine; a newer one may refuse it.
    client = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else need_tool("docker")
    # Short: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="occy-docker-", dir="/tmp"))
    socket = root / "docker.sock"
    log = root / "dockerd.log"
    command = [
        dockerd, "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
        "--bridge=none", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "-H", f"unix://{socket}", "--pidfile", str(root / "docker.pid"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        took = _wait([client, "-H", f"unix://{socket}", "version"], process, log, "dockerd")
        yield Docker(client, socket, took)
    finally:
        stop_process(process, STOP_TIMEOUT)
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def start_containerd() -> Iterator[Containerd]:
    _need_root("containerd")
    binary = need_tool("containerd")
    ctr = need_tool("ctr")
    root = Path(tempfile.mkdtemp(prefix="occy-ctrd-", dir="/tmp"))
    socket = root / "containerd.sock"
    config = root / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\n'
        f'state = "{root / "state"}"\n'
        # No CRI: nothing here runs pods, and it would want CNI.
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
        f'[debug]\n  address = "{root / "debug.sock"}"\n'
    )
    log = root / "containerd.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        took = _wait([ctr, "--address", str(socket), "version"], process, log, "containerd")
        yield Containerd(ctr, socket, took)
    finally:
        stop_process(process, STOP_TIMEOUT)
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
