"""A small token service for distribution's `auth: token` mode, on loopback.

It issues RS256 JSON Web Tokens the registry verifies against the signing
certificate in its `rootcertbundle`, found by the libtrust key id in the
token header (`kid`), as distribution 2.8 does. Access rules:

- repositories under `public/` are pullable by anyone, anonymous included;
- `grants[user]` lists the namespaces a user may also pull;
- `pushers[user]` lists the namespaces a user may pull from and push to;
- namespaces in `forbidden` are refused with 403 by the token service itself;
- anything else is granted no access: the registry then answers 401 with
  error="insufficient_scope", as behind Docker Hub's and docker_auth's.

GET /token takes Basic credentials (docker's usual request); POST /token is
the OAuth2 form (grant_type=refresh_token or password), as docker sends for
an identity token. Every request is recorded for tests to inspect.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.server
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pki
from conftest import serving
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

SERVICE = "occystrap-test-registry"
ISSUER = "occystrap-test-token-service"
# distribution accepts a token this long past its `exp` (token.Leeway).
REGISTRY_LEEWAY = 60


@dataclasses.dataclass(frozen=True)
class TokenRequest:
    method: str
    path: str
    user: str | None  # who the request authenticated as (Basic or form)
    authorization: bool  # whether an Authorization header arrived at all
    params: dict[str, str]  # query or form fields, secrets removed
    status: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(certificate) -> str:
    """docker/libtrust's key id: base32 of SHA-256(SPKI DER)[:30], in groups of four."""
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


class TokenServer:
    def __init__(self, directory: Path, tls: pki.Issued, users: dict[str, str],
                 grants: dict[str, list[str]] | None = None,
                 forbidden: list[str] | None = None,
                 pushers: dict[str, list[str]] | None = None,
                 refresh_tokens: dict[str, str] | None = None) -> None:
        self.signing = pki.self_signed(directory, "occystrap test token signer", "signing")
        self._kid = libtrust_key_id(self.signing.certificate)
        self._tls = tls
        self.users = dict(users)
        self.grants = dict(grants or {})
        self.forbidden = list(forbidden or [])
        self.pushers = dict(pushers or {})
        self._initial_refresh_tokens = dict(refresh_tokens or {})  # token -> user
        self.refresh_tokens = dict(self._initial_refresh_tokens)
        self.requests: list[TokenRequest] = []
        # Knobs a test turns (and the fixture resets):
        self.oauth = True  # False: POST answers 404, like a Basic-only service
        self.short_lived = 0  # the next N tokens expire ~3 s after issue...
        self.advertised_lifetime = 300  # ...while expires_in still says this
        self.redirect_to: str | None = None  # 307 every /token request there
        self.rotate_refresh_tokens = False
        self._server: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[TokenServer]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self._tls.cert), str(self._tls.key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        with serving(server):
            yield self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def registry_config(self) -> dict[str, Any]:
        """The `auth` section for start_registry's config_extra."""
        return {"auth": {"token": {
            "realm": self.realm, "service": SERVICE, "issuer": ISSUER,
            "rootcertbundle": str(self.signing.cert),
        }}}

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.oauth, self.short_lived, self.redirect_to = True, 0, None
        self.rotate_refresh_tokens = False
        self.refresh_tokens = dict(self._initial_refresh_tokens)

    def token_requests(self) -> list[TokenRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == "/token"]

    # -- policy -----------------------------------------------------------------

    def _actions(self, user: str | None, repository: str, wanted: list[str]) -> list[str]:
        def within(namespaces: list[str]) -> bool:
            return any(repository == ns or repository.startswith(ns + "/")
                       for ns in namespaces)
        if within(self.pushers.get(user or "", [])):
            return [a for a in wanted if a in ("pull", "push")]
        if within(["public", *self.grants.get(user or "", [])]):
            return [a for a in wanted if a == "pull"]
        return []

    def _forbidden(self, repository: str) -> bool:
        return any(repository.startswith(ns + "/") for ns in self.forbidden)

    def _sign(self, user: str | None, access: list[dict[str, Any]]) -> tuple[str, int]:
        now = int(time.time())
        lifetime = self.advertised_lifetime
        with self._lock:
            short = self.short_lived > 0
            self.short_lived -= short
        # Valid for 2-3 s given the registry's leeway, whatever it claims.
        expires = now + 3 - REGISTRY_LEEWAY if short else now + lifetime
        header = {"typ": "JWT", "alg": "RS256", "kid": self._kid}
        claims = {
            "iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": expires,
            "nbf": now - 5, "iat": now, "jti": secrets.token_hex(8), "access": access,
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self.signing.private_key.sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256(),
        )
        return f"{signing_input}.{_b64url(signature)}", lifetime

    # -- HTTP -------------------------------------------------------------------

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                service._handle(self, "GET")

            def do_POST(self) -> None:
                service._handle(self, "POST")

        return Handler

    def _handle(self, request: http.server.BaseHTTPRequestHandler, method: str) -> None:
        split = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(split.query)
        form: dict[str, list[str]] = {}
        if method == "POST":
            length = int(request.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(request.rfile.read(length).decode())
        fields = {k: " ".join(v) for k, v in {**query, **form}.items()}
        authorization = request.headers.get("Authorization")
        user, status, body = self._answer(method, split.path, fields, authorization)
        shown = {k: v for k, v in fields.items() if k not in ("password", "refresh_token")}
        with self._lock:
            self.requests.append(TokenRequest(
                method, split.path, user, authorization is not None, shown, status,
            ))
        if status in (301, 302, 307, 308):
            request.send_response(status)
            request.send_header("Location", body["location"])
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _answer(self, method: str, path: str, fields: dict[str, str],
                authorization: str | None) -> tuple[str | None, int, dict[str, Any]]:
        if path == "/token" and self.redirect_to:
            query = urllib.parse.urlencode(fields)
            return None, 307, {"location": f"{self.redirect_to}?{query}"}
        if path not in ("/token", "/token2"):
            return None, 404, {"errors": [{"code": "NOT_FOUND"}]}
        if fields.get("service") != SERVICE:
            return None, 400, {"error": "invalid_request", "detail": "unknown service"}
        user = None
        if method == "POST":
            if not self.oauth:
                return None, 404, {"errors": [{"code": "NOT_FOUND"}]}
            grant = fields.get("grant_type")
            if grant == "refresh_token":
                user = self.refresh_tokens.get(fields.get("refresh_token", ""))
            elif grant == "password":
                name = fields.get("username", "")
                user = name if self.users.get(name) == fields.get("password") else None
            if user is None or not fields.get("client_id"):
                return None, 400, {"error": "invalid_grant"}
        elif authorization:
            scheme, _, encoded = authorization.partition(" ")
            name, _, password = base64.b64decode(encoded).decode().partition(":")
            known = self.users.get(name) == password or self.refresh_tokens.get(password) == name
            if scheme != "Basic" or not known:
                return name, 401, {"errors": [{"code": "UNAUTHORIZED"}]}
            user = name
        access = []
        for scope in fields.get("scope", "").split():
            kind, _, rest = scope.partition(":")
            repository, _, actions = rest.rpartition(":")
            if kind != "repository":
                continue
            if self._forbidden(repository):
                return user, 403, {"errors": [{"code": "DENIED"}]}
            granted = self._actions(user, repository, actions.split(","))
            access.append({"type": kind, "name": repository, "actions": granted})
        token, lifetime = self._sign(user, access)
        body: dict[str, Any] = {"token": token, "access_token": token, "expires_in": lifetime}
        offline = fields.get("access_type") == "offline"
        if method == "POST" and (self.rotate_refresh_tokens or offline):
            rotated = secrets.token_hex(16)
            self.refresh_tokens[rotated] = user or ""
            body["refresh_token"] = rotated
        return user, 200, body
