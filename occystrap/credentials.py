"""Where registry credentials come from: docker's and podman's files and helpers."""

import base64
import binascii
import dataclasses
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping

from occystrap.errors import ConfigurationError, InvalidReference
from occystrap.reference import Registry

LOG = logging.getLogger(__name__)

# Docker keeps Docker Hub's credentials under its old v1 index URL.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
# A helper's username meaning "the secret is an identity (refresh) token".
TOKEN_USERNAME = "<token>"
HELPER_TIMEOUT = 60
# docker-credential-* helpers print this (exit 1) when they hold nothing.
_HELPER_NOT_FOUND = "credentials not found"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A username with a password or an identity token, and where they came from."""

    username: str
    password: str = ""
    identity_token: str | None = None
    # For messages ("as alice from ~/.docker/config.json"); never secret.
    source: str = dataclasses.field(default="", compare=False)

    def __repr__(self) -> str:
        return (f"Credentials(username={self.username!r}, password=***, "
                f"source={self.source!r})")

    @property
    def secret(self) -> str:
        """What goes after the colon of a Basic header."""
        return self.password or self.identity_token or ""

    def describe(self) -> str:
        """`alice` or `alice (from FILE)`, for error messages."""
        return (f"{self.username} (from {self.source})" if self.source
                else self.username)


# Looked up only when a registry asks for credentials, so a public pull
# never runs a credential helper.
CredentialSource = Callable[[], "Credentials | None"]


def find_credentials(host: str, repository: str | None = None,
                     environ: Mapping[str, str] | None = None
                     ) -> Credentials | None:
    """Stored credentials for a registry host, or None for anonymous.

    Docker's config (auths, credHelpers, credsStore) is consulted first, then
    the containers auth file podman and skopeo write.
    """
    env = os.environ if environ is None else environ
    for path in [docker_config_path(env), *containers_auth_paths(env)]:
        found = _from_config_file(path, host, repository, env)
        if found:
            LOG.debug("using credentials for %s from %s", host, found.source)
            return found
    return None


def docker_config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"]) / "config.json"
    return _home(environ) / ".docker" / "config.json"


def containers_auth_paths(environ: Mapping[str, str]) -> list[Path]:
    """podman's auth files, most specific first, as containers-auth.json(5)."""
    if environ.get("REGISTRY_AUTH_FILE"):
        return [Path(environ["REGISTRY_AUTH_FILE"])]
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/containers/{os.getuid()}"
    config = environ.get("XDG_CONFIG_HOME") or str(_home(environ) / ".config")
    return [Path(runtime) / "containers" / "auth.json",
            Path(config) / "containers" / "auth.json"]


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ["HOME"]) if environ.get("HOME") else Path.home()


def _from_config_file(path: Path, host: str, repository: str | None,
                      environ: Mapping[str, str]) -> Credentials | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigurationError(
            f"cannot read {path}: {e.strerror}; fix its permissions or "
            "move it away") from e
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ConfigurationError(
            f"{path} is not valid JSON ({e}); fix it or move it away"
            ) from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{path} is not a JSON object; fix it or "
                                 "move it away")
    helpers = _mapping(config, "credHelpers", path)
    auths = _mapping(config, "auths", path)
    # As docker: a registry's own helper, then the default store, then the
    # file's inline entries (a store miss falls through to them too).
    key = _best_key(helpers, host, None)
    if key is not None:
        return _from_helper(str(helpers[key]), key, path, environ,
                            required=True)
    auth_key = _best_key(auths, host, repository)
    store = config.get("credsStore")
    if store:
        server = auth_key or (DOCKER_HUB_CONFIG_KEY
                              if Registry(host).is_docker_hub else host)
        found = _from_helper(str(store), server, path, environ,
                             required=False)
        if found:
            return found
    if auth_key is None:
        return None
    return _from_auth_entry(auths[auth_key], auth_key, path)


def _mapping(config: dict, name: str, path: Path) -> dict:
    value = config.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError(f"{name} in {path} is not a JSON object; "
                                 "fix it or move it away")
    return value


def _best_key(entries: Mapping[str, Any], host: str,
              repository: str | None) -> str | None:
    """The entry for `host` (or, longest first, a namespace of `repository`).

    Keys may be `host`, `host:port`, `https://host/v1/` (docker), or
    `host/namespace` (containers-auth.json).
    """
    best, best_rank = None, -1
    for key in entries:
        parsed = _parse_key(key)
        if parsed is None or parsed[0] != host:
            continue
        namespace = parsed[1]
        if namespace:
            if not repository or not (repository == namespace or
                                      repository.startswith(namespace + "/")):
                continue
            rank = 2 + len(namespace)
        else:
            # A key spelled exactly as the host beats an alias of it.
            rank = 1 if key == host else 0
        if rank > best_rank:
            best, best_rank = key, rank
    return best


def _parse_key(key: str) -> tuple[str, str] | None:
    text = key.strip()
    for prefix in ("https://", "http://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    hostpart, _, path = text.partition("/")
    path = path.strip("/")
    if path in ("v1", "v2"):
        path = ""
    try:
        return Registry.parse(hostpart).host, path
    except InvalidReference:
        return None


def _from_auth_entry(entry: Any, key: str, path: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"the entry for {key} in {path} is not a "
                                 "JSON object; fix it or move it away")
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            decoded = None
        if decoded is None or ":" not in decoded:
            raise ConfigurationError(
                f"the auth of {key} in {path} is not base64 of "
                "USER:PASSWORD; log in again or fix the file")
        username, password = decoded.split(":", 1)
    token = entry.get("identitytoken") or None
    if token:
        return Credentials(username or TOKEN_USERNAME, "", str(token),
                           str(path))
    if not username:
        return None
    return Credentials(str(username), str(password), None, str(path))


def _from_helper(name: str, server: str, config: Path,
                 environ: Mapping[str, str],
                 required: bool) -> Credentials | None:
    """Ask docker-credential-NAME for `server`, by docker's helper protocol."""
    program = f"docker-credential-{name}"
    source = f"{program} via {config}"
    executable = shutil.which(program, path=environ.get("PATH"))
    if executable is None:
        if required:
            raise ConfigurationError(
                f"{config} names the credential helper {program} for "
                f"{server}, but it is not on PATH; install it or remove the "
                "entry")
        LOG.warning("credential store %s named in %s is not on PATH; "
                    "ignoring it", program, config)
        return None
    try:
        result = subprocess.run(
            [executable, "get"], input=server.encode(), capture_output=True,
            env=dict(environ), timeout=HELPER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigurationError(
            f"credential helper {program} did not answer within "
            f"{HELPER_TIMEOUT}s") from None
    except OSError as e:
        raise ConfigurationError(
            f"cannot run credential helper {program}: {e.strerror}") from None
    if result.returncode != 0:
        # Helpers put their error text on stdout; it names no secret.
        message = (result.stdout.strip() or result.stderr.strip()).decode(
            errors="replace")
        if _HELPER_NOT_FOUND in message.lower():
            return None
        raise ConfigurationError(
            f"credential helper {program} failed for {server} (exit "
            f"{result.returncode}): {message[:200]}")
    try:
        answer = json.loads(result.stdout)
        username = answer.get("Username") or ""
        secret = answer.get("Secret") or ""
    except (ValueError, AttributeError):
        raise ConfigurationError(
            f"credential helper {program} answered something other than "
            "the JSON of the helper protocol") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise ConfigurationError(
            f"credential helper {program} answered a non-string Username "
            "or Secret")
    if not secret:
        return None
    if username == TOKEN_USERNAME:
        return Credentials(username, "", secret, source)
    return Credentials(username, secret, None, source)
