"""A fault-injecting HTTP proxy to put in front of the test registry.

    with FaultProxy(registry.url) as proxy:
        proxy.add(Status(r"/manifests/", 503, times=2))
        proxy.add(Cut(r"/blobs/sha256:", after=1000, times=1))
        ... occystrap against proxy.host ...
        assert proxy.requests(r"/blobs/")[1].headers["Range"] == "bytes=1000-"

Requests that match no fault are forwarded to the registry unchanged. Each
fault matches a regular expression searched in the request path (query
included) and fires `times` times (None: every time). Probes, small reads
with a bounded Range (`bytes=A-B`, as occystrap's size hints), are left
alone unless a fault says `probes=True`: faults are for downloads. Every request is
recorded, with the status the proxy answered, so tests can count retries and
see the headers a client sent. Stalls are bounded and end when the proxy
closes, and closing joins every handler thread.

Uploads pass through too (POST, PUT, PATCH, DELETE with their bodies), and
the registry's Location headers are rewritten to point back at the proxy.
CutUpload breaks a PATCH off mid-body, optionally after handing the part it
read to the registry, as a registry that keeps partial chunks would.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import json
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# No stall outlasts this, whatever a test asks: a broken client must fail
# its test, not hang the suite.
STALL_LIMIT = 20.0
UPSTREAM_TIMEOUT = 10.0
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
               "proxy-connection", "te", "trailer", "upgrade"}


@dataclasses.dataclass
class Seen:
    """One request as the proxy received it, and how it was answered."""

    method: str
    path: str
    headers: dict[str, str]
    status: int | None = None
    sent: int = 0  # body bytes written to the client
    received: int = 0  # request body bytes read from the client

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def probe(self) -> bool:
        return _is_probe(self.headers)


def _is_probe(headers: dict[str, str]) -> bool:
    return re.fullmatch(r"bytes=\d+-\d+", headers.get("range", "")) is not None


@dataclasses.dataclass
class Upstream:
    """The registry's answer, which a fault may change before it is sent."""

    status: int
    headers: dict[str, str]
    body: bytes


class Fault:
    """Base of every fault: which requests it takes, and how many times."""

    def __init__(self, path: str, *, times: int | None = None,
                 methods: tuple[str, ...] = ("GET",), probes: bool = False) -> None:
        self.pattern = re.compile(path)
        self.times = times
        self.methods = methods
        self.probes = probes
        self.hits = 0

    def takes(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if method not in self.methods or not self.pattern.search(path):
            return False
        if _is_probe(headers) and not self.probes:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True

    def serve(self, request: _Request) -> None:
        raise NotImplementedError


class Status(Fault):
    """Answer with a status (503, 429 + Retry-After, 404...) instead of the registry."""

    def __init__(self, path: str, status: int, headers: dict[str, str] | None = None,
                 body: bytes = b"", **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.status, self.headers, self.body = status, headers or {}, body

    def serve(self, request: _Request) -> None:
        request.send(Upstream(self.status, dict(self.headers), self.body))


class Drop(Fault):
    """Close the connection without answering."""

    def serve(self, request: _Request) -> None:
        request.close()


class Stall(Fault):
    """Go silent for `seconds` (bounded): before answering, or after `after` body bytes."""

    def __init__(self, path: str, seconds: float, *, after: int | None = None,
                 **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.seconds, self.after = min(seconds, STALL_LIMIT), after

    def serve(self, request: _Request) -> None:
        if self.after is None:
            request.stall(self.seconds)
            request.close()
            return
        request.send(request.forward(), upto=self.after)
        request.stall(self.seconds)
        request.close()


class Trickle(Fault):
    """Send the body slowly: `piece` bytes every `interval` seconds, a slow link."""

    def __init__(self, path: str, piece: int = 4096, interval: float = 0.05,
                 **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.piece, self.interval = piece, interval

    def serve(self, request: _Request) -> None:
        answer = request.forward()
        body = answer.body

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(body), self.piece):
                if start and request.proxy.stopping.wait(self.interval):
                    return
                yield body[start:start + self.piece]
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        request.stream(answer.status, headers, pieces(), len(body))


class Cut(Fault):
    """Send the headers and `after` bytes of the body, then close the connection."""

    def __init__(self, path: str, after: int, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.after = after

    def serve(self, request: _Request) -> None:
        request.send(request.forward(), upto=self.after)
        request.close()


class CutUpload(Fault):
    """Read `after` bytes of an upload's body, then close the connection.

    With `keep_part`, those bytes first go to the registry as a whole PATCH,
    and (with `follow`) later requests to the upload's old location go to
    its new one: a registry that keeps what arrived of a cut chunk and
    tracks the session on its side. Without `follow`, distribution itself
    answers the old location with 404: it cannot resume the session.
    """

    def __init__(self, path: str, after: int, *, keep_part: bool = False,
                 follow: bool = True, methods: tuple[str, ...] = ("PATCH",),
                 **kwargs) -> None:
        super().__init__(path, methods=methods, **kwargs)
        self.after, self.keep_part, self.follow = after, keep_part, follow

    def serve(self, request: _Request) -> None:
        part = request.read_body(self.after)
        if self.keep_part and part:
            headers = dict(request.seen.headers)
            # A streamed PATCH names no range: the part is appended.
            if "content-range" in headers:
                start = int(headers["content-range"].split("-")[0])
                headers["content-range"] = f"{start}-{start + len(part) - 1}"
            answer = request.proxy.forward(request.method, request.path, headers,
                                           body=part)
            location = answer.headers.get("Location")
            if answer.status == 202 and location and self.follow:
                request.proxy.alias(request.path, location)
        request.close()


class NthPatch(CutUpload):
    """Cut the nth PATCH (of any upload: its count runs across them) after
    10,000 bytes, once; see CutUpload for `keep_part` and `follow`."""

    def __init__(self, nth: int, **kwargs) -> None:
        super().__init__(r"/blobs/uploads/", after=10_000, times=1, **kwargs)
        self.nth, self.patches = nth, 0

    def takes(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if method != "PATCH":
            return False
        self.patches += 1
        return self.patches == self.nth and super().takes(method, path, headers)


class Rewrite(Fault):
    """Pass the registry's answer through `change`, which edits it in place."""

    def __init__(self, path: str, change: Callable[[Upstream], None], *,
                 drop_range: bool = False, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.change, self.drop_range = change, drop_range

    def serve(self, request: _Request) -> None:
        answer = request.forward(drop_range=self.drop_range)
        self.change(answer)
        request.send(answer)


def corrupt(offset: int = -1) -> Callable[[Upstream], None]:
    """Flip one byte of the body (a full body or a resumed part)."""
    def change(answer: Upstream) -> None:
        body = bytearray(answer.body)
        body[offset] ^= 0xFF
        answer.body = bytes(body)
    return change


def extend(extra: bytes) -> Callable[[Upstream], None]:
    def change(answer: Upstream) -> None:
        answer.body += extra
    return change


def truncate(length: int) -> Callable[[Upstream], None]:
    """A short body with a Content-Length that matches it: a clean early end."""
    def change(answer: Upstream) -> None:
        answer.body = answer.body[:length]
    return change


def replace_body(body: bytes, *, keep_digest: bool = False) -> Callable[[Upstream], None]:
    """Serve other bytes; the digest header then follows them, unless kept."""
    def change(answer: Upstream) -> None:
        answer.status = 200
        answer.body = body
        if not keep_digest:
            answer.headers["Docker-Content-Digest"] = \
                "sha256:" + hashlib.sha256(body).hexdigest()
    return change


def wrong_content_range() -> Callable[[Upstream], None]:
    """Claim a resumed part starts somewhere it does not."""
    def change(answer: Upstream) -> None:
        answer.headers["Content-Range"] = "bytes 0-9/10"
    return change


def ignore_range() -> Rewrite:
    """Answer every blob request whole, with 200, as if Range were unknown."""
    return Rewrite(r"/blobs/", lambda answer: None, drop_range=True)


class Redirect(Fault):
    """Answer 307 to `target` (a base URL) + the same path + `query`."""

    def __init__(self, path: str, target: str, *, query: str = "", **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.target, self.query = target.rstrip("/"), query

    def serve(self, request: _Request) -> None:
        path = request.path.split("?", 1)[0]
        location = self.target + path + (f"?{self.query}" if self.query else "")
        request.send(Upstream(307, {"Location": location}, b""))


class Oversized(Fault):
    """A manifest body of `size` bytes, streamed lazily, chunked or with a length."""

    def __init__(self, path: str, size: int, *, chunked: bool, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.size, self.chunked = size, chunked

    def serve(self, request: _Request) -> None:
        prefix = b'{"schemaVersion": 2, "layers": [], "padding": "'
        filler = b" " * (64 << 10)

        def body() -> Iterator[bytes]:
            yield prefix
            left = self.size - len(prefix) - 2
            while left > 0:
                piece = filler[:left]
                left -= len(piece)
                yield piece
            yield b'"}'
        request.stream(200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                       body(), None if self.chunked else self.size)


# --- the server ----------------------------------------------------------------


class _Request:
    """The parts of one request a fault works with."""

    def __init__(self, handler: _Handler, proxy: FaultProxy, seen: Seen,
                 path: str) -> None:
        self.handler, self.proxy, self.seen = handler, proxy, seen
        self.method, self.path = handler.command, path
        self._body_read = False
        self._body = b""

    def read_body(self, limit: int | None = None) -> bytes:
        """The request body, or its first `limit` bytes (once only)."""
        if self._body_read:
            return self._body
        self._body_read = True
        headers = self.seen.headers
        stream = self.handler.rfile
        parts: list[bytes] = []
        left = limit if limit is not None else 1 << 62
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while left > 0:
                size = int(stream.readline().split(b";")[0] or b"0", 16)
                if not size:
                    stream.readline()
                    break
                parts.append(stream.read(min(size, left)))
                left -= len(parts[-1])
                if len(parts[-1]) == size:
                    stream.readline()
        else:
            length = int(headers.get("content-length") or 0)
            if length:
                parts.append(stream.read(min(length, left)))
        body = b"".join(parts)
        self.seen.received += len(body)
        self._body = body
        return body

    def forward(self, *, drop_range: bool = False) -> Upstream:
        return self.proxy.forward(self.method, self.path, self.seen.headers,
                                  drop_range=drop_range, body=self.read_body())

    def send(self, answer: Upstream, *, upto: int | None = None) -> None:
        handler = self.handler
        self.seen.status = answer.status
        handler.send_response(answer.status)
        for name, value in answer.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                handler.send_header(name, value)
        # Always the full length: a cut body is then one the client can tell is short.
        handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        if self.method != "HEAD":
            body = answer.body if upto is None else answer.body[:upto]
            handler.wfile.write(body)
            self.seen.sent += len(body)
        handler.wfile.flush()

    def stream(self, status: int, headers: dict[str, str], chunks: Iterator[bytes],
               length: int | None) -> None:
        handler = self.handler
        self.seen.status = status
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if length is None:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        try:
            for chunk in chunks:
                if length is None:
                    chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                handler.wfile.write(chunk)
                self.seen.sent += len(chunk)
            if length is None:
                handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            # The client hung up, as it should on a body it refuses.
            self.close()

    def stall(self, seconds: float) -> None:
        self.handler.wfile.flush()
        self.proxy.stopping.wait(seconds)

    def close(self) -> None:
        self.handler.close_connection = True
        try:
            self.handler.wfile.flush()
            self.handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection must not pin a thread past the test.
    timeout = 15
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle
        # and delayed ACKs add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.proxy.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy.closed(self.connection)

    def do_GET(self) -> None:  # http.server's naming
        self.server.proxy.handle(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    proxy: FaultProxy

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-answer is the point of many tests.
        pass


class FaultProxy:
    """An HTTP(S) server on 127.0.0.1 that forwards to `upstream`, applying faults.

    basic_auth=(user, password) asks for Basic credentials like a private
    registry; bearer="TOKEN" runs a token service at /token that hands out
    TOKEN to those credentials (or to anyone, without basic_auth).
    reject_authorization=True makes it a blob host that refuses any request
    carrying an Authorization header, as a storage service would.
    """

    def __init__(self, upstream: str, *, tls: tuple[Path, Path] | None = None,
                 basic_auth: tuple[str, str] | None = None, bearer: str | None = None,
                 reject_authorization: bool = False) -> None:
        split = urllib.parse.urlsplit(upstream)
        if split.scheme != "http":
            raise ValueError("the proxy forwards to plain-http registries only")
        self.upstream = split.netloc
        self.basic_auth = basic_auth
        self.bearer = bearer
        self.reject_authorization = reject_authorization
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._aliases: dict[str, str] = {}
        self._connections: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        port = self._server.server_address[1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"{scheme}://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"faultproxy-{port}", daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def requests(self, pattern: str = "", *, probes: bool = False) -> list[Seen]:
        """Requests whose path matches `pattern`, in the order they arrived."""
        with self._lock:
            return [s for s in self.seen if re.search(pattern, s.path)
                    and (probes or not s.probe)]

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # Joins every handler thread (ThreadingHTTPServer.block_on_close).
        self._server.server_close()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError(f"{self._thread.name} did not stop")

    # -- called by handler threads ----------------------------------------------

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def alias(self, path: str, location: str) -> None:
        """Send later requests for `path` to `location` (an upload moved on)."""
        split = urllib.parse.urlsplit(location)
        target = split.path + (f"?{split.query}" if split.query else "")
        with self._lock:
            self._aliases[path] = target

    def handle(self, handler: _Handler) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        seen = Seen(handler.command, handler.path, headers)
        with self._lock:
            self.seen.append(seen)
            path = self._aliases.get(handler.path, handler.path)
            fault = next((f for f in self.faults
                          if f.takes(handler.command, handler.path, headers)), None)
        request = _Request(handler, self, seen, path)
        refusal = self._refusal(handler.path, headers)
        if not isinstance(fault, CutUpload):
            # Read before answering, or the body would be taken for the
            # next request on this connection.
            request.read_body()
        if refusal:
            request.send(refusal)
        elif fault:
            fault.serve(request)
        else:
            request.send(request.forward())

    def _refusal(self, path: str, headers: dict[str, str]) -> Upstream | None:
        """The 401 a registry with auth (or a blob host without) would give."""
        given = headers.get("authorization")
        if self.reject_authorization:
            if given:
                return Upstream(401, {}, b"this host takes no Authorization header")
            return None
        basic = None
        if self.basic_auth:
            basic = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
        if self.bearer and path.startswith("/token"):
            if basic and given != basic:
                return Upstream(401, {"WWW-Authenticate": 'Basic realm="token"'}, b"")
            body = json.dumps({"token": self.bearer, "expires_in": 300}).encode()
            return Upstream(200, {"Content-Type": "application/json"}, body)
        if self.bearer:
            if given != f"Bearer {self.bearer}":
                challenge = (f'Bearer realm="{self.url}/token",service="faultproxy",'
                             'scope="registry:catalog:*"')
                return Upstream(401, {"WWW-Authenticate": challenge}, b"")
        elif basic and given != basic:
            return Upstream(401, {"WWW-Authenticate": 'Basic realm="faultproxy"'},
                            b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        return None

    def forward(self, method: str, path: str, headers: dict[str, str], *,
                drop_range: bool = False, body: bytes | None = None) -> Upstream:
        # A blob host serves whatever path it was redirected with; the
        # signature in the query is for show.
        if self.reject_authorization:
            path = path.split("?", 1)[0]
        sent = {name: value for name, value in headers.items()
                if name not in _HOP_BY_HOP and name not in ("host", "authorization")}
        if drop_range:
            sent.pop("range", None)
        connection = http.client.HTTPConnection(self.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            answer = Upstream(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()
        # Uploads continue at the Location the registry gives: keep them here.
        location = answer.headers.get("Location", "")
        if location.startswith(f"http://{self.upstream}/"):
            answer.headers["Location"] = self.url + location[len(f"http://{self.upstream}"):]
        return answer
