"""Answering registry authentication challenges (Basic and Bearer tokens)."""

import base64
import dataclasses
import logging
import re
import time
from typing import Callable

import requests

from occystrap.errors import AuthenticationFailed, RegistryError

LOG = logging.getLogger(__name__)

# auth-param = token "=" ( token / quoted-string ), comma separated.
_PARAM_RE = re.compile(
    r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
# Tokens without an expiry are assumed to live this long (the spec's floor).
_DEFAULT_TOKEN_LIFETIME = 60


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


@dataclasses.dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict = dataclasses.field(hash=False)


def parse_challenge(header: str) -> Challenge | None:
    """Parse the first challenge of a WWW-Authenticate header."""
    match = re.match(r"\s*([A-Za-z]+)\s*(.*)$", header or "", re.S)
    if not match:
        return None
    scheme, rest = match.groups()
    params = {}
    for key, value in _PARAM_RE.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return Challenge(scheme.lower(), params)


@dataclasses.dataclass
class _Token:
    value: str
    expires: float


class Authenticator:
    """Produces Authorization headers for one registry, caching tokens per scope.

    `send` performs an HTTP GET with our retry and TLS policy; passing it in
    keeps token requests on the same transport as registry requests.
    """

    def __init__(self, host: str, credentials: Credentials | None,
                 send: Callable[..., requests.Response]) -> None:
        self._host = host
        self._credentials = credentials
        self._send = send
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}

    @property
    def username(self) -> str | None:
        return self._credentials.username if self._credentials else None

    def remember(self, header: str | None) -> None:
        """Note the challenge a ping returned, to answer it up front."""
        self._challenge = parse_challenge(header or "")

    def header(self, scope: str) -> str | None:
        """The Authorization header to send for `scope`, if we know one."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic" and self._credentials:
            return _basic(self._credentials)
        if challenge.scheme == "bearer":
            token = self._tokens.get(scope)
            if not token or token.expires <= time.monotonic():
                self._fetch_token(challenge, scope)
                token = self._tokens[scope]
            return f"Bearer {token.value}"
        return None

    def answer(self, header: str, scope: str, url: str) -> None:
        """React to a 401: remember the challenge and fetch a token if asked."""
        challenge = parse_challenge(header)
        if challenge is None:
            raise AuthenticationFailed(
                f"{self._host} refused access without saying how to "
                "authenticate (no WWW-Authenticate header)", 401, url)
        self._challenge = challenge
        self._tokens.pop(scope, None)
        if challenge.scheme == "basic":
            if not self._credentials:
                raise AuthenticationFailed(
                    f"{self._host} requires a username and password; "
                    "pass --username and --password", 401, url)
        elif challenge.scheme == "bearer":
            self._fetch_token(challenge, scope)
        else:
            raise AuthenticationFailed(
                f"{self._host} asks for unsupported authentication "
                f"scheme {challenge.scheme!r}", 401, url)

    def _fetch_token(self, challenge: Challenge, scope: str) -> None:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthenticationFailed(
                f"{self._host} sent a Bearer challenge without a realm", 401)
        params = {}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        if scope:
            params["scope"] = scope
        headers = {}
        if self._credentials:
            headers["Authorization"] = _basic(self._credentials)
        LOG.debug("requesting token from %s for scope %r", realm, scope)
        response = self._send("GET", realm, params=params, headers=headers)
        if response.status_code in (401, 403):
            who = (f" as {self._credentials.username}"
                   if self._credentials else "")
            hint = ("check the username and password" if self._credentials
                    else "pass --username and --password")
            raise AuthenticationFailed(
                f"authentication failed for {self._host}{who}: the token "
                f"service refused; {hint}", response.status_code, realm)
        if response.status_code != 200:
            raise RegistryError(
                f"token service for {self._host} answered HTTP "
                f"{response.status_code}", response.status_code, realm)
        try:
            body = response.json()
        except ValueError:
            body = None
        value = None
        if isinstance(body, dict):
            value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthenticationFailed(
                f"token service for {self._host} returned no token", 200, realm)
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = _DEFAULT_TOKEN_LIFETIME
        # Renew a little early so a token does not expire mid-request.
        self._tokens[scope] = _Token(
            value, time.monotonic() + max(lifetime - 10, lifetime / 2))


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
