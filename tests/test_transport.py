"""The transport: token scopes with actions, and bodies that may not be replayed."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
import urllib.parse

import pytest

from conftest import serving
from occystrap.auth import scope, scope_key
from occystrap.errors import BodyNotReplayable, RegistryUnreachable
from occystrap.options import TransportOptions
from occystrap.reference import Registry
from occystrap.transport import Transport

FAST = TransportOptions(retries=3, backoff=0.0, connect_timeout=2, read_timeout=2)


class _Recorder(http.server.ThreadingHTTPServer):
    """A registry that asks for a token, and a token service, in one."""

    def __init__(self, fail_uploads: int = 0, slow: float = 0.0,
                 fail_pings: int = 0) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.fail_uploads = fail_uploads
        self.fail_pings = fail_pings
        # Seconds each answer takes: long enough for threads to overlap.
        self.slow = slow
        self.lock = threading.Lock()
        self.connections = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    def verify_request(self, request: object, client_address: object) -> bool:
        with self.lock:
            self.connections += 1
        return True

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Recorder

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, headers: dict[str, str] | None = None,
                body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") != "chunked":
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        parts = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(parts)

    def _handle(self) -> None:
        body = self._body()
        with self.server.lock:
            self.server.seen.append((self.command, self.path, body))
        time.sleep(self.server.slow)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/v2/" and self.server.fail_pings:
            self.server.fail_pings -= 1
            self._answer(503)
        elif path == "/token":
            self._answer(200, {"Content-Type": "application/json"}, b'{"token": "T"}')
        elif self.headers.get("Authorization") != "Bearer T":
            self._answer(401, {"WWW-Authenticate": (
                f'Bearer realm="http://{self.server.host}/token",service="reg"')})
        elif self.command == "PUT" and self.server.fail_uploads:
            self.server.fail_uploads -= 1
            self._answer(503)
        else:
            self._answer(200 if self.command != "PUT" else 201)

    do_GET = do_PUT = do_POST = do_HEAD = _handle


def test_one_token_carries_several_scopes_with_their_actions():
    with serving(_Recorder()) as server, Transport(
            Registry.parse(f"http://{server.host}"), FAST) as transport:
        wanted = scope("team/app", "pull,push", ("base/os", "pull"))
        response = transport.request("POST", "team/app/blobs/uploads/", wanted,
                                     "team/app", "push")
        assert response.status_code == 200
        (token,) = [path for method, path, _ in server.seen if path.startswith("/token")]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(token).query)
    # As docker asks: one scope parameter per repository.
    assert query["scope"] == ["repository:team/app:pull,push", "repository:base/os:pull"]


def test_a_bytes_body_is_sent_again_after_a_failure():
    with serving(_Recorder(fail_uploads=2)) as server, Transport(
            Registry.parse(f"http://{server.host}"), FAST) as transport:
        response = transport.request("PUT", "app/manifests/v1", scope("app", "pull,push"),
                                     "app", "push", body=b"manifest")
        assert response.status_code == 201
        puts = [body for method, _, body in server.seen if method == "PUT"]
    # Twice refused (503), then accepted: the same bytes each time.
    assert puts[-3:] == [b"manifest"] * 3


def test_a_streamed_body_is_not_replayed():
    with serving(_Recorder(fail_uploads=1)) as server, Transport(
            Registry.parse(f"http://{server.host}"), FAST) as transport:
        # Authenticate first: a streamed body cannot answer a challenge.
        transport.request("GET", "", scope("app", "pull,push"), "app", "push").close()
        response = transport.request("PUT", "app/blobs/uploads/x", scope("app", "pull,push"),
                                     "app", "push", body=iter([b"part", b"two"]))
        # The 503 comes back to the caller, who knows where to resume.
        assert response.status_code == 503
        assert [body for method, _, body in server.seen if method == "PUT"] == [b"parttwo"]


def test_a_streamed_body_cut_by_the_link_raises_for_the_caller_to_resume():
    with serving(_Recorder()) as server, Transport(
            Registry.parse(f"http://{server.host}"), FAST) as transport:
        transport.request("GET", "", scope("app", "pull,push"), "app", "push").close()

        def broken():
            yield b"part"
            raise ConnectionResetError("cut")

        with pytest.raises(BodyNotReplayable, match="broke off"):
            transport.request("PATCH", "app/blobs/uploads/x", scope("app", "pull,push"),
                              "app", "push", body=broken())


def test_threads_starting_together_ping_the_registry_once():
    # A push's layer threads all begin with a request: one of them finds
    # the API root (plain http first on a local registry), the rest wait.
    with serving(_Recorder(slow=0.2)) as server, Transport(
            Registry.parse(server.host), FAST) as transport:
        start = threading.Barrier(4)

        def first_request() -> str:
            start.wait()
            return transport.base_url()

        threads = [threading.Thread(target=first_request) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pings = [path for method, path, _ in server.seen if path == "/v2/"]
    assert transport.base_url() == f"http://{server.host}/v2"
    assert pings == ["/v2/"]


def test_a_loopback_registry_is_asked_over_plain_http_first():
    # One connection: no TLS handshake (and no CA bundle loaded) to fail
    # before the plain http that a local registry usually speaks.
    with serving(_Recorder()) as server, Transport(
            Registry.parse(server.host), FAST) as transport:
        assert transport.base_url() == f"http://{server.host}/v2"
        assert server.connections == 1


def test_a_loopback_registry_failing_a_moment_over_plain_http_is_retried_there():
    # A 503 is an answer over plain http: retried as any request is, not
    # taken for a port that speaks only TLS.
    with serving(_Recorder(fail_pings=2)) as server, Transport(
            Registry.parse(server.host), FAST) as transport:
        assert transport.base_url() == f"http://{server.host}/v2"
        assert [path for _, path, _ in server.seen] == ["/v2/"] * 3


class _Hangs(socketserver.ThreadingTCPServer):
    """Accepts and closes every connection unanswered, as some TLS servers
    treat a plain http request."""

    daemon_threads = True

    def __init__(self) -> None:
        self.plain = 0

        class Close(socketserver.BaseRequestHandler):
            def handle(inner) -> None:
                if inner.request.recv(3) == b"GET":
                    self.plain += 1

        super().__init__(("127.0.0.1", 0), Close)
        self.host = f"127.0.0.1:{self.server_address[1]}"


def test_the_plain_http_probe_of_a_loopback_registry_is_not_retried():
    # A port that closes plain http unanswered may speak TLS: https is
    # tried next, with the usual retries; the probe spends no backoff.
    with serving(_Hangs()) as server, Transport(
            Registry.parse(server.host), FAST) as transport:
        with pytest.raises(RegistryUnreachable):
            transport.base_url()
        assert server.plain == 1


def test_a_token_is_cached_per_set_of_scopes_whatever_their_order():
    with serving(_Recorder()) as server, Transport(
            Registry.parse(f"http://{server.host}"), FAST) as transport:
        for wanted in (scope("team/app", "pull,push", ("base/os", "pull")),
                       scope("base/os", "pull", ("team/app", "push,pull"))):
            transport.request("HEAD", "team/app/blobs/sha256:0", wanted,
                              "team/app", "push").close()
        tokens = [path for method, path, _ in server.seen if path.startswith("/token")]
    assert len(tokens) == 1, tokens


def test_scope_key_merges_repeated_repositories_and_orders_actions():
    assert scope_key("repository:a:push,pull repository:b:pull repository:a:pull") \
        == "repository:a:pull,push repository:b:pull"
