"""Private registries: every credential source, Basic and token auth, TLS and proxies.

Two real distribution registries behind TLS from a test CA serve the same
storage: one with htpasswd (Basic) auth, one in token mode with
tokenserver.TokenServer as its realm.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import os
import select
import socket
import socketserver
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import Result

import imagebuild as ib
from conftest import (
    REQUIRE_INTEGRATION, Registry, assert_error, assert_verbose_error, occystrap,
    serving, start_registry)
from occystrap.registry import RegistryClient


def _need_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        if REQUIRE_INTEGRATION:
            raise
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')",
                    allow_module_level=True)


bcrypt = _need_module("bcrypt")
_need_module("cryptography")
import pki  # noqa: E402  (needs cryptography)
import tokenserver  # noqa: E402

ALICE, ALICE_PASSWORD = "alice", "alice-S3cret-pw"
BOB, BOB_PASSWORD = "bob", "bob-Xq-pw-42"
WRONG_PASSWORD = "not-the-Password-9"
ALICE_REFRESH = "alice-refresh-token-0123"
HELPER = "occytest"  # docker-credential-occytest
PROXY_NAME = "registry.test"  # resolved only by the test proxy, never by DNS
ENVIRONMENT = (
    "DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME", "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE", "CURL_CA_BUNDLE", "OCCYSTRAP_USERNAME", "OCCYSTRAP_PASSWORD",
    "OCCYSTRAP_CA_CERT", "OCCYSTRAP_INSECURE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
    "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
)


# --- fixtures --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class World:
    root: Path
    ca: pki.Issued
    server: pki.Issued
    storage: Path
    image: ib.Image

    def tls(self) -> dict:
        return {"http": {"tls": {"certificate": str(self.server.cert),
                                 "key": str(self.server.key)}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("auth")
    ca = pki.make_ca(root / "pki")
    server = pki.issue_server_cert(ca, root / "pki", ["127.0.0.1", "localhost", PROXY_NAME])
    image = ib.make_image([ib.make_layer([ib.file("etc/motd", b"private\n")]),
                           ib.make_layer([ib.file("data", ib.random_bytes(50_000, 3))])])
    # Pushed without auth; the authenticating registries serve this storage.
    with start_registry(root / "plain") as plain:
        for repo in ("public/app", "private/app", "forbidden/app", "team/app"):
            plain.push_image(repo, image, "latest")
    return World(root, ca, server, plain.storage, image)


@pytest.fixture(scope="module")
def basic(world: World) -> Iterator[Registry]:
    """htpasswd auth (bcrypt, as distribution requires) behind TLS."""
    htpasswd = world.root / "htpasswd"
    hashed = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{ALICE}:{hashed}\n")
    config = {**world.tls(), "auth": {"htpasswd": {"realm": "occystrap-test",
                                                   "path": str(htpasswd)}}}
    with start_registry(world.root / "basic", config, storage=world.storage) as running:
        yield running


@pytest.fixture(scope="module")
def token_service(world: World) -> Iterator[tokenserver.TokenServer]:
    service = tokenserver.TokenServer(
        world.root / "token", world.server,
        users={ALICE: ALICE_PASSWORD, BOB: BOB_PASSWORD},
        grants={ALICE: ["private"]}, forbidden=["forbidden"],
        refresh_tokens={ALICE_REFRESH: ALICE},
    )
    with service.running():
        yield service


@pytest.fixture(scope="module")
def token_registry(world: World, token_service: tokenserver.TokenServer) -> Iterator[Registry]:
    config = {**world.tls(), **token_service.registry_config()}
    with start_registry(world.root / "tokenmode", config, storage=world.storage) as running:
        yield running


@pytest.fixture
def tokens(token_registry: Registry,
           token_service: tokenserver.TokenServer) -> Iterator[tokenserver.TokenServer]:
    """The token service, its knobs and request log fresh for this test."""
    token_service.reset()
    yield token_service
    token_service.reset()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credential, CA or proxy setting of the machine leaks into a test."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("OCCYSTRAP_CERTS_D", str(tmp_path / "certs.d"))


# --- helpers ---------------------------------------------------------------------


def pull(registry: Registry | str, repo: str, out: Path, *options: str,
         input: str | None = None) -> Result:
    host = registry if isinstance(registry, str) else registry.host
    return occystrap(*options, "fetch-to-tarfile", host, repo, "latest", str(out), input=input)


def ca_option(world: World) -> list[str]:
    return ["--ca-cert", str(world.ca.cert)]


def assert_pulled(result: Result, out: Path, image: ib.Image) -> None:
    assert result.exit_code == 0, result.output
    with tarfile.open(out) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    assert manifest[0]["Config"] == image.config_digest.split(":")[1] + ".json"
    assert len(manifest[0]["Layers"]) == len(image.layers)


def assert_failed(result: Result, out: Path, *phrases: str) -> None:
    assert_error(result, *phrases)
    assert not out.exists()


def assert_no_secrets(result: Result) -> None:
    for secret in (ALICE_PASSWORD, BOB_PASSWORD, WRONG_PASSWORD, ALICE_REFRESH):
        assert secret not in result.output


def basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write_json(path: Path, value: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict) -> Path:
    directory = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return write_json(directory / "config.json", config)


def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   store: dict[str, dict[str, str]]) -> Path:
    """docker-credential-occytest on PATH, answering `get` from `store`; returns its log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "helper.log"
    bin_dir.mkdir()
    store_path = write_json(tmp_path / "helper-store.json", store)
    helper = bin_dir / f"docker-credential-{HELPER}"
    helper.write_text(f"""#!{sys.executable}
import json, sys
server = sys.stdin.read().strip()
with open({str(log)!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + " " + server + "\\n")
store = json.load(open({str(store_path)!r}))
if sys.argv[1:] != ["get"] or server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
json.dump(dict(ServerURL=server, **store[server]), sys.stdout)
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


# --- Basic auth: right and wrong credentials -------------------------------------


def test_basic_flags(world: World, basic: Registry, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)


def test_basic_wrong_password_says_so(world: World, basic: Registry, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world), "--verbose",
                  "--username", ALICE, "--password", WRONG_PASSWORD)

    assert_verbose_error(result, f"authentication failed for {basic.host} as {ALICE} "
                         "(from --username)", "check the username and password")
    assert not out.exists()
    assert_no_secrets(result)


def test_basic_without_credentials_asks_for_them(
    world: World, basic: Registry, tmp_path: Path,
) -> None:
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world))

    assert_failed(result, out, f"{basic.host} requires a username and password",
                  "--password-stdin", "docker login")


def test_basic_missing_repository_is_not_found(
    world: World, basic: Registry, tmp_path: Path,
) -> None:
    out = tmp_path / "image.tar"

    result = pull(basic, "private/missing", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_failed(result, out, "repository private/missing not found")


# --- credential sources ------------------------------------------------------------


def test_password_stdin(world: World, basic: Registry, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world), "--username", ALICE,
                  "--password-stdin", input=ALICE_PASSWORD + "\n")

    assert_pulled(result, out, world.image)


@pytest.mark.parametrize("args, message", [
    (["--password-stdin"], "--password-stdin needs --username"),
    (["--username", ALICE, "--password", "x", "--password-stdin"], "mutually exclusive"),
    (["--username", ALICE], "--username needs --password or --password-stdin"),
    (["--password", "x"], "--password needs --username"),
])
def test_credential_option_misuse(tmp_path: Path, args: list[str], message: str) -> None:
    result = occystrap(*args, "fetch-to-tarfile", "127.0.0.1:1", "a/b", "latest",
                       str(tmp_path / "x.tar"), input="")

    assert result.exit_code == 2
    assert message in result.stderr


def test_environment_variables(world: World, basic: Registry, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCCYSTRAP_USERNAME", ALICE)
    monkeypatch.setenv("OCCYSTRAP_PASSWORD", ALICE_PASSWORD)
    monkeypatch.setenv("OCCYSTRAP_CA_CERT", str(world.ca.cert))
    out = tmp_path / "image.tar"

    assert_pulled(pull(basic, "private/app", out), out, world.image)


@pytest.mark.parametrize("key", ["{host}", "https://{host}", "http://{host}/v2/"])
def test_docker_config_auths(world: World, basic: Registry, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    docker_config(tmp_path, monkeypatch, {"auths": {
        key.format(host=basic.host): {"auth": basic_auth(ALICE, ALICE_PASSWORD)},
        "127.0.0.1:1": {"auth": basic_auth("someone", "else")},
    }})
    out = tmp_path / "image.tar"

    assert_pulled(pull(basic, "private/app", out, *ca_option(world)), out, world.image)


def test_docker_config_default_location(world: World, basic: Registry, tmp_path: Path) -> None:
    write_json(tmp_path / "home" / ".docker" / "config.json", {"auths": {
        basic.host: {"auth": basic_auth(ALICE, WRONG_PASSWORD)}}})
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world))

    # Wrong on purpose: the message names the file the credentials came from.
    assert_failed(result, out, f"as {ALICE} (from {tmp_path}/home/.docker/config.json)")
    assert_no_secrets(result)


def test_docker_credential_helper(world: World, basic: Registry, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log = install_helper(tmp_path, monkeypatch, {
        basic.host: {"Username": ALICE, "Secret": ALICE_PASSWORD}})
    docker_config(tmp_path, monkeypatch, {
        "credHelpers": {basic.host: HELPER},
        # Inline credentials lose to the registry's own helper, as in docker.
        "auths": {basic.host: {"auth": basic_auth(ALICE, WRONG_PASSWORD)}},
    })
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world))

    assert_pulled(result, out, world.image)
    assert log.read_text() == f"get {basic.host}\n"


def test_docker_credential_helper_missing(world: World, basic: Registry, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    docker_config(tmp_path, monkeypatch, {"credHelpers": {basic.host: "absent"}})
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world))

    assert_failed(result, out, "docker-credential-absent", "not on PATH")


def test_docker_credential_store(world: World, basic: Registry, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = install_helper(tmp_path, monkeypatch, {
        basic.host: {"Username": ALICE, "Secret": ALICE_PASSWORD}})
    docker_config(tmp_path, monkeypatch, {"credsStore": HELPER, "auths": {basic.host: {}}})
    out = tmp_path / "image.tar"

    assert_pulled(pull(basic, "private/app", out, *ca_option(world)), out, world.image)
    assert log.read_text() == f"get {basic.host}\n"


def test_public_pull_runs_no_helper(world: World, tokens: tokenserver.TokenServer,
                                    token_registry: Registry, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    log = install_helper(tmp_path, monkeypatch, {})
    docker_config(tmp_path, monkeypatch, {"credsStore": HELPER})
    out = tmp_path / "image.tar"

    result = pull(token_registry, "public/app", out, *ca_option(world))

    # The token realm asked, so the store was asked, found nothing: anonymous.
    assert_pulled(result, out, world.image)
    assert log.read_text() == f"get {token_registry.host}\n"
    assert [r.authorization for r in tokens.token_requests()] == [False]


@pytest.mark.parametrize("where", ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"])
def test_containers_auth_file(world: World, basic: Registry, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    entry = {"auths": {basic.host: {"auth": basic_auth(ALICE, ALICE_PASSWORD)}}}
    if where == "REGISTRY_AUTH_FILE":
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write_json(tmp_path / "auth.json", entry)))
    else:
        write_json(tmp_path / "run" / "containers" / "auth.json", entry)
    out = tmp_path / "image.tar"

    assert_pulled(pull(basic, "private/app", out, *ca_option(world)), out, world.image)


SOURCES = ["flags", "environment", "docker config", "auth file"]


@pytest.mark.parametrize("right", SOURCES)
def test_credential_precedence(world: World, basic: Registry, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, right: str) -> None:
    """The source holding the right password wins over every later one (all wrong)."""
    later = SOURCES[SOURCES.index(right):]

    def password(source: str) -> str:
        return ALICE_PASSWORD if source == right else WRONG_PASSWORD

    flags = ["--username", ALICE, "--password", password("flags")] if "flags" in later else []
    if "environment" in later:
        monkeypatch.setenv("OCCYSTRAP_USERNAME", ALICE)
        monkeypatch.setenv("OCCYSTRAP_PASSWORD", password("environment"))
    if "docker config" in later:
        docker_config(tmp_path, monkeypatch, {"auths": {
            basic.host: {"auth": basic_auth(ALICE, password("docker config"))}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write_json(tmp_path / "auth.json", {
        "auths": {basic.host: {"auth": basic_auth(ALICE, password("auth file"))}}})))
    out = tmp_path / "image.tar"

    assert_pulled(pull(basic, "private/app", out, *ca_option(world), *flags), out, world.image)


# --- TLS -----------------------------------------------------------------------------


def test_tls_failure_suggests_ca_cert_or_insecure(
    basic: Registry, tmp_path: Path,
) -> None:
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, "--username", ALICE, "--password", ALICE_PASSWORD)

    # Not a confusing "HTTP 400" from the plain-http fallback loopback allows.
    assert_failed(result, out, f"TLS verification failed for {basic.host}",
                  "unable to get local issuer certificate", "--ca-cert", "--insecure")
    assert "HTTP 400" not in result.stderr


def test_certs_d(world: World, basic: Registry, tmp_path: Path) -> None:
    certs_d = tmp_path / "certs.d"  # OCCYSTRAP_CERTS_D, set by `isolated`
    (certs_d / basic.host).mkdir(parents=True)
    (certs_d / basic.host / "ca.crt").write_bytes(world.ca.cert.read_bytes())
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)


def test_certs_d_option_names_another_host(world: World, basic: Registry, tmp_path: Path) -> None:
    other = tmp_path / "other.d"
    (other / "127.0.0.1:1").mkdir(parents=True)
    (other / "127.0.0.1:1" / "ca.crt").write_bytes(world.ca.cert.read_bytes())
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, "--certs-d", str(other),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_failed(result, out, "TLS verification failed")


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_ca_bundle_from_environment(world: World, basic: Registry, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, str(world.ca.cert))
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)


@pytest.mark.parametrize("option", [["--ca-cert", "CA"], ["--insecure"]])
def test_options_beat_requests_ca_bundle(world: World, basic: Registry, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         option: list[str]) -> None:
    # requests lets REQUESTS_CA_BUNDLE override a session's verify; not ours.
    import certifi
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    option = [str(world.ca.cert) if o == "CA" else o for o in option]
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *option,
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)


def test_insecure_warns_once(world: World, basic: Registry, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, "--insecure",
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)
    assert result.stderr.count("not verifying the TLS certificate") == 1
    assert "InsecureRequestWarning" not in result.output


def test_ca_cert_that_is_not_pem(basic: Registry, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.crt"
    bogus.write_text("not a certificate\n")
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, "--ca-cert", str(bogus))

    assert_failed(result, out, f"CA certificate file {bogus} holds no PEM certificate")


# --- proxies ---------------------------------------------------------------------------


class ConnectProxy(socketserver.ThreadingTCPServer):
    """An HTTPS (CONNECT-only) proxy on loopback that sends one made-up name to 127.0.0.1."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.name = name
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        self.server.requests.append(line)
        method, target, _ = line.split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host != self.server.name:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            peers = {client: upstream, upstream: client}
            while True:
                readable, _, _ = select.select(list(peers), [], [], 10)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with serving(ConnectProxy(PROXY_NAME)) as server:
        yield server


def test_https_proxy_from_environment(world: World, basic: Registry, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      proxy: ConnectProxy) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    port = basic.host.rsplit(":", 1)[1]
    out = tmp_path / "image.tar"

    result = pull(f"{PROXY_NAME}:{port}", "private/app", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)
    assert proxy.requests
    assert all(r.startswith(f"CONNECT {PROXY_NAME}:{port} HTTP/") for r in proxy.requests)


def test_loopback_is_never_proxied(world: World, basic: Registry, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   proxy: ConnectProxy) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    out = tmp_path / "image.tar"

    result = pull(basic, "private/app", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)
    assert proxy.requests == []


# --- token auth --------------------------------------------------------------------


def test_token_anonymous_pull(world: World, token_registry: Registry,
                              tokens: tokenserver.TokenServer, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "public/app", out, *ca_option(world))

    assert_pulled(result, out, world.image)
    (request,) = tokens.token_requests()
    assert (request.method, request.user, request.authorization) == ("GET", None, False)
    assert request.params == {"service": tokenserver.SERVICE,
                              "scope": "repository:public/app:pull"}


def test_token_anonymous_refused_private(world: World, token_registry: Registry,
                                         tokens: tokenserver.TokenServer,
                                         tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world))

    assert_failed(result, out, f"{token_registry.host} refused anonymous access to "
                               "private/app", "--username")


def test_token_with_credentials(world: World, token_registry: Registry,
                                tokens: tokenserver.TokenServer, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)
    (request,) = tokens.token_requests()
    assert (request.method, request.user) == ("GET", ALICE)
    assert request.params == {"service": tokenserver.SERVICE, "account": ALICE,
                              "scope": "repository:private/app:pull"}


def test_token_wrong_password(world: World, token_registry: Registry,
                              tokens: tokenserver.TokenServer, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world), "-v",
                  "--username", ALICE, "--password", WRONG_PASSWORD)

    assert_verbose_error(result, f"authentication failed for {token_registry.host} as {ALICE}",
                         "check the username and password")
    assert not out.exists()
    assert_no_secrets(result)


def test_token_denied_scope_is_access_denied(world: World, token_registry: Registry,
                                             tokens: tokenserver.TokenServer,
                                             tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world),
                  "--username", BOB, "--password", BOB_PASSWORD)

    # The registry's answer is 401 insufficient_scope: bob is who he says.
    assert_failed(result, out, f"access denied to private/app on {token_registry.host} "
                               f"for {BOB}")
    assert "authentication failed" not in result.stderr


def test_token_service_403_is_access_denied(world: World, token_registry: Registry,
                                            tokens: tokenserver.TokenServer,
                                            tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "forbidden/app", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_failed(result, out, f"access denied to forbidden/app on {token_registry.host}")
    assert [r.status for r in tokens.token_requests()] == [403]


def test_token_missing_repository_is_not_found(world: World, token_registry: Registry,
                                               tokens: tokenserver.TokenServer,
                                               tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "public/missing", out, *ca_option(world))

    assert_failed(result, out, "repository public/missing not found")


def test_token_from_docker_hub_style_key_does_not_match(
    world: World, token_registry: Registry, tokens: tokenserver.TokenServer,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Docker Hub's key belongs to Docker Hub only.
    docker_config(tmp_path, monkeypatch, {"auths": {
        "https://index.docker.io/v1/": {"auth": basic_auth(ALICE, ALICE_PASSWORD)}}})
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world))

    assert_failed(result, out, "refused anonymous access")
    assert all(not r.authorization for r in tokens.token_requests())


def test_identity_token_refresh_flow(world: World, token_registry: Registry,
                                     tokens: tokenserver.TokenServer, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    docker_config(tmp_path, monkeypatch, {"auths": {token_registry.host: {
        "auth": basic_auth("<token>", ""), "identitytoken": ALICE_REFRESH}}})
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world), "-v")

    assert_pulled(result, out, world.image)
    assert_no_secrets(result)
    (request,) = tokens.token_requests()
    assert (request.method, request.user, request.authorization) == ("POST", ALICE, False)
    assert request.params == {"grant_type": "refresh_token", "client_id": "occystrap",
                              "service": tokenserver.SERVICE,
                              "scope": "repository:private/app:pull"}


def test_identity_token_revoked(world: World, token_registry: Registry,
                                tokens: tokenserver.TokenServer, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    docker_config(tmp_path, monkeypatch, {"auths": {token_registry.host: {
        "identitytoken": "revoked-token"}}})
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world))

    assert_failed(result, out, f"authentication failed for {token_registry.host}",
                  "log in again")


def test_identity_token_falls_back_to_basic(world: World, token_registry: Registry,
                                            tokens: tokenserver.TokenServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    tokens.oauth = False  # POST answers 404, as a token service without OAuth
    docker_config(tmp_path, monkeypatch, {"auths": {token_registry.host: {
        "auth": basic_auth(ALICE, ""), "identitytoken": ALICE_REFRESH}}})
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world))

    assert_pulled(result, out, world.image)
    assert [(r.method, r.status, r.user) for r in tokens.token_requests()] == [
        ("POST", 404, None), ("GET", 200, ALICE)]


def test_identity_token_from_credential_helper(world: World, token_registry: Registry,
                                               tokens: tokenserver.TokenServer,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    install_helper(tmp_path, monkeypatch, {
        token_registry.host: {"Username": "<token>", "Secret": ALICE_REFRESH}})
    docker_config(tmp_path, monkeypatch, {"credHelpers": {token_registry.host: HELPER}})
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world))

    assert_pulled(result, out, world.image)
    assert [r.method for r in tokens.token_requests()] == ["POST"]


def test_token_expiring_mid_pull_is_renewed_once(world: World, token_registry: Registry,
                                                 tokens: tokenserver.TokenServer,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The first token claims 300 s but the registry stops taking it after
    # about 3 s; the blobs are fetched only once it has.
    tokens.short_lived = 1
    issued = time.time()
    original = RegistryClient.blob_chunks

    def late_blob_chunks(self, *args, **kwargs):
        time.sleep(max(0.0, issued + 4.0 - time.time()))
        yield from original(self, *args, **kwargs)

    monkeypatch.setattr(RegistryClient, "blob_chunks", late_blob_chunks)
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    assert_pulled(result, out, world.image)
    assert [(r.user, r.status) for r in tokens.token_requests()] == [(ALICE, 200)] * 2


def test_credentials_never_follow_a_redirect_to_another_host(
    world: World, token_registry: Registry, tokens: tokenserver.TokenServer, tmp_path: Path,
) -> None:
    # The realm sends every token request on to the same server under
    # another name: to the client, another host.
    tokens.redirect_to = f"https://localhost:{tokens.port}/token2"
    out = tmp_path / "image.tar"

    result = pull(token_registry, "private/app", out, *ca_option(world),
                  "--username", ALICE, "--password", ALICE_PASSWORD)

    # Without credentials the token grants nothing: alice is denied.
    assert_failed(result, out, "access denied to private/app")
    with tokens._lock:
        seen = [(r.path, r.authorization) for r in tokens.requests]
    assert ("/token", True) in seen
    assert ("/token2", False) in seen
    assert ("/token2", True) not in seen


def test_token_realm_tls_uses_the_same_trust(world: World, token_registry: Registry,
                                             tokens: tokenserver.TokenServer,
                                             tmp_path: Path) -> None:
    out = tmp_path / "image.tar"

    result = pull(token_registry, "public/app", out, "--insecure")

    assert_pulled(result, out, world.image)
