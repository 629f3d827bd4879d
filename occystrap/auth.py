"""Answering registry authentication challenges (Basic and Bearer tokens)."""

import base64
import dataclasses
import logging
import re
import threading
import time
from typing import Callable

import requests

from occystrap.credentials import CredentialSource, Credentials
from occystrap.errors import AccessDenied, AuthenticationFailed, RegistryError

LOG = logging.getLogger(__name__)

# auth-param = token "=" ( token / quoted-string ), comma separated.
_PARAM_RE = re.compile(
    r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
# Tokens without an expiry are assumed to live this long (the spec's floor).
_DEFAULT_TOKEN_LIFETIME = 60
# docker sends client_id=docker with OAuth token requests; we name ourselves.
CLIENT_ID = "occystrap"
LOGIN_HINT = ("pass --username with --password or --password-stdin, or log "
              "in with docker login or podman login")


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

    `send` performs an HTTP request with our retry, redirect and TLS policy;
    passing it in keeps token requests on the same transport as registry
    requests (so credentials never follow a redirect to another host).
    `credentials` may be a callable, asked only once a registry challenges.
    Safe to share between the threads that download layers.
    """

    def __init__(self, host: str,
                 credentials: Credentials | CredentialSource | None,
                 send: Callable[..., requests.Response]) -> None:
        self._host = host
        self._lookup = credentials if callable(credentials) else None
        self._credentials = None if callable(credentials) else credentials
        self._send = send
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        # A token service may rotate the refresh token it was given.
        self._refresh_token: str | None = None
        # Reentrant: a token fetch inside the lock resolves credentials.
        self._lock = threading.RLock()

    @property
    def credentials(self) -> Credentials | None:
        with self._lock:
            if self._lookup is not None:
                lookup, self._lookup = self._lookup, None
                self._credentials = lookup()
            return self._credentials

    @property
    def username(self) -> str | None:
        credentials = self.credentials
        return credentials.username if credentials else None

    def as_user(self) -> str:
        """' for USER (from SOURCE)', or '' when anonymous."""
        credentials = self.credentials
        return f" for {credentials.describe()}" if credentials else ""

    def remember(self, header: str | None) -> None:
        """Note the challenge a ping returned, to answer it up front."""
        self._challenge = parse_challenge(header or "")

    def header(self, scope: str) -> str | None:
        """The Authorization header to send for `scope`, if we know one."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = self.credentials
            return _basic(credentials) if credentials else None
        if challenge.scheme == "bearer":
            with self._lock:
                token = self._tokens.get(scope_key(scope))
                if not token or token.expires <= time.monotonic():
                    token = self._fetch_token(challenge, scope)
            return f"Bearer {token.value}"
        return None

    def answer(self, header: str, scope: str, url: str,
               rejected: str | None = None) -> None:
        """React to a 401: remember the challenge and fetch a token if asked.

        `rejected` is the Authorization header the registry refused; if
        another thread has replaced that token meanwhile, it is reused.
        """
        challenge = parse_challenge(header)
        if challenge is None:
            raise AuthenticationFailed(
                f"{self._host} refused access without saying how to "
                "authenticate (no WWW-Authenticate header)", 401, url)
        with self._lock:
            self._challenge = challenge
            if challenge.scheme == "basic":
                if not self.credentials:
                    raise AuthenticationFailed(
                        f"{self._host} requires a username and password; "
                        f"{LOGIN_HINT}", 401, url)
            elif challenge.scheme == "bearer":
                current = self._tokens.get(scope_key(scope))
                if current and rejected and \
                        rejected != f"Bearer {current.value}":
                    return
                self._tokens.pop(scope_key(scope), None)
                self._fetch_token(challenge, scope)
            else:
                raise AuthenticationFailed(
                    f"{self._host} asks for unsupported authentication "
                    f"scheme {challenge.scheme!r}", 401, url)

    def refusal(self, header: str, repository: str, url: str,
                action: str = "pull") -> RegistryError:
        """The error for a 401 that answering the challenge did not cure.

        `action` is what was refused ("pull", "push"); messages say it with
        its preposition, "pull from" or "push to", and the repository.
        """
        challenge = parse_challenge(header)
        params = challenge.params if challenge else {}
        credentials = self.credentials
        doing = verb(action)
        anonymous = AuthenticationFailed(
            f"{self._host} refused anonymous access to {repository}: the "
            f"repository does not exist or needs credentials; {LOGIN_HINT}",
            401, url)
        if params.get("error") == "insufficient_scope":
            # Token services grant what they may and the registry refuses
            # the rest: a 401 that means "denied", not "wrong password".
            if not credentials:
                if action != "pull":
                    return AuthenticationFailed(
                        f"{self._host} refused to let anonymous users "
                        f"{doing} {repository}; {LOGIN_HINT}", 401, url)
                return anonymous
            return AccessDenied(
                f"access denied to {repository} on {self._host} for "
                f"{credentials.describe()}: the repository does not exist "
                f"or they may not {doing} it", 401, url)
        if params.get("error") == "invalid_token":
            reason = params.get("error_description") or "invalid_token"
            return AuthenticationFailed(
                f"{self._host} rejected the token its token service issued "
                f"({reason}); check that this machine's clock is right",
                401, url)
        if credentials:
            return AuthenticationFailed(
                f"authentication failed for {self._host} as "
                f"{credentials.describe()} trying to {doing} {repository}: "
                "check the username and password", 401, url)
        if action != "pull":
            return AuthenticationFailed(
                f"{self._host} needs credentials to {doing} {repository}; "
                f"{LOGIN_HINT}", 401, url)
        return anonymous

    def _fetch_token(self, challenge: Challenge, scope: str) -> "_Token":
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthenticationFailed(
                f"{self._host} sent a Bearer challenge without a realm", 401)
        service = challenge.params.get("service")
        credentials = self.credentials
        if credentials and credentials.identity_token:
            body = self._oauth_token(realm, service, scope, credentials)
        else:
            body = self._basic_token(realm, service, scope, credentials)
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthenticationFailed(
                f"token service for {self._host} returned no token", 200, realm)
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = _DEFAULT_TOKEN_LIFETIME
        # Renew a little early so a token does not expire mid-request.
        token = _Token(value, time.monotonic() + max(lifetime - 10,
                                                     lifetime / 2))
        self._tokens[scope_key(scope)] = token
        return token

    def _basic_token(self, realm: str, service: str | None, scope: str,
                     credentials: Credentials | None) -> dict:
        """docker's usual token request: GET with Basic credentials."""
        params: dict[str, str | list[str]] = {}
        if service:
            params["service"] = service
        if scope:
            params["scope"] = scope.split(" ")
        headers: dict[str, str] = {}
        if credentials:
            params["account"] = credentials.username
            headers["Authorization"] = _basic(credentials)
        LOG.debug("requesting a token from %s for %r%s", realm, scope,
                  f" as {credentials.username}" if credentials else "")
        response = self._send("GET", realm, params=params, headers=headers)
        return self._token_body(response, realm, scope, credentials)

    def _oauth_token(self, realm: str, service: str | None, scope: str,
                     credentials: Credentials) -> dict:
        """Trade an identity (refresh) token for an access token, as docker.

        A token service without OAuth answers 404 or 405; some of those take
        the identity token as a Basic password instead, so try that.
        """
        form = {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                "refresh_token": (self._refresh_token
                                  or credentials.identity_token)}
        if service:
            form["service"] = service
        if scope:
            form["scope"] = scope
        LOG.debug("requesting a token from %s for %r with an identity token",
                  realm, scope)
        response = self._send("POST", realm, data=form)
        if response.status_code in (404, 405):
            response.close()
            LOG.debug("%s does not take OAuth token requests; trying Basic",
                      realm)
            return self._basic_token(realm, service, scope, credentials)
        body = self._token_body(response, realm, scope, credentials,
                                oauth=True)
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            self._refresh_token = rotated
        return body

    def _token_body(self, response: requests.Response, realm: str,
                    scope: str, credentials: Credentials | None,
                    oauth: bool = False) -> dict:
        status = response.status_code
        # OAuth token services answer a bad refresh token with 400.
        if status == 401 or (oauth and status == 400):
            if not credentials:
                raise AuthenticationFailed(
                    f"the token service of {self._host} requires "
                    f"credentials; {LOGIN_HINT}", status, realm)
            fix = ("log in again: the identity token may have expired or "
                   "been revoked" if credentials.identity_token
                   else "check the username and password")
            raise AuthenticationFailed(
                f"authentication failed for {self._host} as "
                f"{credentials.describe()}: the token service refused them; "
                f"{fix}", status, realm)
        if status == 403:
            repository = scope.split(":")[1] if scope.count(":") == 2 \
                else scope
            raise AccessDenied(
                f"access denied to {repository} on {self._host}"
                f"{self.as_user()}: the token service refused {scope!r}",
                status, realm)
        if status != 200:
            raise RegistryError(
                f"token service for {self._host} answered HTTP {status}",
                status, realm)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AuthenticationFailed(
                f"token service for {self._host} returned no token", 200, realm)
        return body


def scope(repository: str, actions: str = "pull",
          *also: tuple[str, str]) -> str:
    """A token scope: `repository:NAME:ACTIONS`, and more of them.

    A cross-repository mount needs `pull,push` on the target and `pull`
    on the source, in one token: scope("b", "pull,push", ("a", "pull")).
    Several scopes travel space-separated, and as repeated `scope`
    parameters in docker's token request.
    """
    parts = [f"repository:{repository}:{actions}"]
    parts += [f"repository:{name}:{acts}" for name, acts in also]
    return " ".join(parts)


def verb(action: str) -> str:
    """An action with the preposition a message needs: "push to"."""
    return {"pull": "pull from", "push": "push to"}.get(action, action)


def scope_key(scope: str) -> str:
    """One spelling per set of grants, to cache a token under.

    A push asks for "pull,push" and a mount adds its source; the same set
    asked in another order, or with a repository named twice, is the same
    token, so it is fetched once.
    """
    wanted: dict[tuple[str, str], set[str]] = {}
    for part in scope.split():
        kind, _, rest = part.partition(":")
        name, _, actions = rest.rpartition(":")
        wanted.setdefault((kind, name), set()).update(
            a for a in actions.split(",") if a)
    return " ".join(f"{kind}:{name}:{','.join(sorted(actions))}"
                    for (kind, name), actions in sorted(wanted.items()))


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.secret}".encode()
    return "Basic " + base64.b64encode(raw).decode()
