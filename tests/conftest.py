"""Shared fixtures: a real registry on loopback, an isolated podman, skopeo and umoci helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import threading
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import imagebuild
import pytest
import requests
import urllib3
from click.testing import CliRunner, Result

from occystrap.cli import cli

REQUIRE_INTEGRATION = os.environ.get("OCCYSTRAP_REQUIRE_INTEGRATION") == "1"
TOOL_TIMEOUT = 120
REGISTRY_START_TIMEOUT = 15.0
REGISTRY_STOP_TIMEOUT = 10.0


class ToolError(RuntimeError):
    """An external tool (registry, podman, skopeo, umoci) failed."""


def need_tool(name: str) -> str:
    """The tool's path; skip the test without it, or fail when integration is required."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed"
    if REQUIRE_INTEGRATION:
        pytest.fail(f"{message} but OCCYSTRAP_REQUIRE_INTEGRATION=1", pytrace=False)
    pytest.skip(message)


def run_tool(
    args: list[str], *, timeout: float = TOOL_TIMEOUT, env: Mapping[str, str] | None = None,
    umask: int | None = None,
) -> bytes:
    """Run a tool to completion and return its stdout; raise with its stderr on failure."""
    result = subprocess.run(
        args, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False,
        preexec_fn=None if umask is None else lambda: os.umask(umask),
    )
    if result.returncode != 0:
        output = (result.stderr + result.stdout).decode(errors="replace")
        raise ToolError(f"{' '.join(args)} exited {result.returncode}:\n{output}")
    return result.stdout


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    """Run a test server on a daemon thread for the block, then stop it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for a TLS server on 127.0.0.1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    run_tool([
        need_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
    ])
    return cert, key


# --- running occystrap ---------------------------------------------------------

# Quick retries: a test that fails should fail at once, not after backoff.
FAST = ("--retry-delay", "0", "--retries", "1")


def occystrap(*args: str, input: str | None = None) -> Result:
    """`occystrap FAST ARGS` in process, as CliRunner runs a click command."""
    return CliRunner().invoke(cli, [*FAST, *args], input=input)


def assert_error(result: Result, *phrases: str) -> str:
    """The command failed as a user should see it fail; returns the message.

    Exit status 1, and on stderr exactly one line: `Error: ...`, naming
    every phrase given, with no traceback anywhere.
    """
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def assert_verbose_error(result: Result, *phrases: str) -> str:
    """As assert_error, for a command run with --verbose.

    The log and the traceback come first; the last line is still the one
    `Error: ...` line, naming every phrase given.
    """
    assert result.exit_code == 1, result.output
    assert "Traceback" in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.stderr
    for phrase in phrases:
        assert phrase in last, last
    return last


# --- registry ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Registry:
    host: str
    url: str
    storage: Path
    log: Path

    def reference(self, repo: str, tag_or_digest: str = "latest") -> str:
        """`host/repo:tag` or `host/repo@digest`, as a client would be given it."""
        separator = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repo}{separator}{tag_or_digest}"

    def push_image(
        self, repo: str, image: imagebuild.Image, tag: str | None = None,
        *, session: requests.Session | None = None,
    ) -> str:
        return imagebuild.push_image(self.url, repo, image, tag, session=session)

    def push_index(
        self, repo: str, index: imagebuild.Index, tag: str | None = None,
        *, session: requests.Session | None = None,
    ) -> str:
        return imagebuild.push_index(self.url, repo, index, tag, session=session)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def registry_config(
    storage: Path, port: int, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """distribution's config; `extra` is deep-merged (auth, http.tls, ...)."""
    base = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    return _merge(base, extra or {})


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + REGISTRY_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ToolError(f"registry exited {process.returncode}:\n{log_tail(log)}")
        try:
            with warnings.catch_warnings():
                # Readiness only: TLS registries use throwaway self-signed certificates.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                response = imagebuild.loopback_session().get(
                    f"{url}/v2/", timeout=1, verify=False,
                )
            # 401 still proves the server is up when the config enables auth.
            if response.status_code in (200, 401):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise ToolError(
        f"registry not ready at {url} after {REGISTRY_START_TIMEOUT}s:\n{log_tail(log)}"
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = REGISTRY_STOP_TIMEOUT) -> None:
    """SIGTERM, and SIGKILL if it has not ended within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextlib.contextmanager
def start_registry(
    tmpdir: Path, config_extra: Mapping[str, Any] | None = None, *, storage: Path | None = None,
) -> Iterator[Registry]:
    """Run `docker-registry serve` on a free loopback port until the block exits.

    Pass the `storage` of an earlier registry to serve images pushed there
    without auth from a registry that requires it.
    """
    binary = need_tool("docker-registry")
    tmpdir.mkdir(parents=True, exist_ok=True)
    storage = storage or tmpdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = registry_config(storage, port, config_extra)
    config_path = tmpdir / "config.yml"
    # JSON is YAML, and needs no YAML library.
    config_path.write_text(json.dumps(config, indent=2))
    scheme = "https" if "tls" in config["http"] else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    log = tmpdir / "registry.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_ready(process, url, log)
        yield Registry(f"127.0.0.1:{port}", url, storage, log)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory,
              monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test remembers compressed layers in a cache of its own (for
    push; see occystrap.blobcache), never in the user's."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to the test, since the registry is shared by the session."""
    parts = [request.node.module.__name__, request.node.name]
    return "/".join(re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in parts)


# --- podman ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Podman:
    """podman with its own store, so tests never see or touch the system's images."""

    binary: str
    root: Path

    def run(self, *args: str) -> bytes:
        command = [
            self.binary,
            "--root", str(self.root / "storage"),
            "--runroot", str(self.root / "run"),
            "--tmpdir", str(self.root / "libpod-tmp"),
            "--storage-driver", "vfs",
            # No systemd here: cgroupfs and file events avoid talking to it or journald.
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            *args,
        ]
        # `podman load` stages the archive under $TMPDIR (default /var/tmp).
        env = {**os.environ, "TMPDIR": str(self.root / "tmp")}
        return run_tool(command, env=env)

    def load(self, tar_path: Path | str) -> list[str]:
        """Load a docker-archive; return the image names podman reports."""
        output = self.run("load", "--input", str(tar_path))
        names: list[str] = []
        for line in output.decode().splitlines():
            prefix, _, rest = line.partition(": ")
            if prefix.startswith("Loaded image"):
                names += [name.strip() for name in rest.split(",") if name.strip()]
        if not names:
            raise ToolError(f"podman load printed no image names:\n{output.decode()}")
        return names

    def inspect(self, name: str) -> dict[str, Any]:
        (image,) = json.loads(self.run("image", "inspect", name))
        return image


@pytest.fixture
def podman() -> Iterator[Podman]:
    binary = need_tool("podman")
    # Not tmp_path: podman refuses a --runroot longer than 50 characters.
    root = Path(tempfile.mkdtemp(prefix="occystrap-podman-", dir="/tmp"))
    (root / "tmp").mkdir()
    try:
        yield Podman(binary, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- skopeo and umoci --------------------------------------------------------


def skopeo_inspect(reference: str, *flags: str) -> dict[str, Any]:
    """`skopeo inspect [flags] REFERENCE` as JSON; REFERENCE includes the transport."""
    return json.loads(run_tool([need_tool("skopeo"), "inspect", *flags, reference]))


def skopeo_inspect_raw(reference: str, *flags: str) -> bytes:
    """The exact bytes `skopeo inspect --raw` prints: a manifest, or with --config a config."""
    return run_tool([need_tool("skopeo"), "inspect", "--raw", *flags, reference])


def skopeo_inspect_archive(path: Path | str, *, raw: bool = False) -> dict[str, Any]:
    """Inspect a docker-archive; `raw` gives the manifest skopeo synthesises for it."""
    return skopeo_inspect(f"docker-archive:{path}", *(["--raw"] if raw else []))


def skopeo_inspect_config_archive(path: Path | str) -> dict[str, Any]:
    """The image config stored in a docker-archive."""
    return skopeo_inspect(f"docker-archive:{path}", "--config")


def skopeo_copy(source: str, destination: str, *flags: str) -> None:
    # --insecure-policy: no dependence on the machine's /etc/containers/policy.json.
    skopeo = need_tool("skopeo")
    run_tool([skopeo, "--insecure-policy", "copy", "--quiet", *flags, source, destination])


def umoci_unpack(oci_layout_dir: Path | str, tag: str, dest: Path | str) -> Path:
    """Unpack an OCI layout's tag into a new bundle `dest`; return its rootfs.

    umoci is the reference for how layers apply, so this is also how the
    layer tests see the tree they must match.
    """
    command = [need_tool("umoci"), "--log", "error", "unpack", "--image",
               f"{oci_layout_dir}:{tag}"]
    if os.geteuid() != 0:
        command.append("--rootless")
    # A fixed umask: umoci leaves it to decide the mode of implicit parents.
    run_tool([*command, str(dest)], umask=0o022)
    return Path(dest) / "rootfs"


# --- docker and containerd ---------------------------------------------------


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A real dockerd (vfs, no networking) with its own state; images removed per test."""
    import engines
    with engines.start_docker() as running:
        yield running


@pytest.fixture
def docker(docker_engine: Any) -> Iterator[Any]:
    yield docker_engine
    docker_engine.remove_all()


@pytest.fixture(scope="session")
def containerd_daemon() -> Iterator[Any]:
    """A real containerd with its own root, state and socket."""
    import engines
    with engines.start_containerd() as running:
        yield running


@pytest.fixture
def containerd(containerd_daemon: Any) -> Iterator[Any]:
    yield containerd_daemon
    containerd_daemon.remove_all()
