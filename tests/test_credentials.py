"""Credential lookup in docker's and podman's files and helpers, without a registry."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from occystrap.credentials import Credentials, find_credentials
from occystrap.errors import ConfigurationError

HUB = "registry-1.docker.io"


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment naming only files under tmp_path."""
    return {
        "HOME": str(tmp_path / "home"),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PATH": os.environ["PATH"],
    }


def docker(env: dict[str, str], config: object) -> Path:
    return _write(Path(env["DOCKER_CONFIG"]) / "config.json", config)


def _helper(tmp_path: Path, env: dict[str, str], name: str, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(f"#!{sys.executable}\nimport sys, json\n{script}")
    helper.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"


@pytest.mark.parametrize("key", [
    "https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io",
])
def test_docker_hub_keys_match_the_hub(env: dict[str, str], key: str) -> None:
    docker(env, {"auths": {key: {"auth": _auth("hubuser", "hubpass")}}})

    found = find_credentials(HUB, "library/busybox", env)

    assert found == Credentials("hubuser", "hubpass")
    assert find_credentials("quay.io", "org/app", env) is None


@pytest.mark.parametrize("key, host, matches", [
    ("127.0.0.1:5000", "127.0.0.1:5000", True),
    ("https://127.0.0.1:5000/v2/", "127.0.0.1:5000", True),
    ("127.0.0.1:5000", "127.0.0.1:5001", False),
    ("127.0.0.1", "127.0.0.1:5000", False),
    ("Quay.IO", "quay.io", True),
])
def test_host_keys(env: dict[str, str], key: str, host: str, matches: bool) -> None:
    docker(env, {"auths": {key: {"auth": _auth("u", "p")}}})

    assert (find_credentials(host, "a/b", env) is not None) is matches


def test_docker_config_beats_containers_auth(env: dict[str, str], tmp_path: Path) -> None:
    docker(env, {"auths": {"quay.io": {"auth": _auth("from-docker", "p")}}})
    _write(tmp_path / "run" / "containers" / "auth.json",
           {"auths": {"quay.io": {"auth": _auth("from-podman", "p")}}})

    assert find_credentials("quay.io", "a/b", env).username == "from-docker"
    assert find_credentials("quay.io", "a/b", env).source == env["DOCKER_CONFIG"] + "/config.json"


def test_default_docker_config_is_in_home(env: dict[str, str]) -> None:
    del env["DOCKER_CONFIG"]
    _write(Path(env["HOME"]) / ".docker" / "config.json",
           {"auths": {"quay.io": {"auth": _auth("home", "p")}}})

    assert find_credentials("quay.io", "a/b", env).username == "home"


def test_containers_auth_files_in_order(env: dict[str, str], tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "containers" / "auth.json"
    config = tmp_path / "config" / "containers" / "auth.json"
    _write(config, {"auths": {"quay.io": {"auth": _auth("config", "p")},
                              "ghcr.io": {"auth": _auth("config", "p")}}})
    _write(runtime, {"auths": {"quay.io": {"auth": _auth("runtime", "p")}}})

    assert find_credentials("quay.io", "a/b", env).username == "runtime"
    assert find_credentials("ghcr.io", "a/b", env).username == "config"


def test_registry_auth_file_replaces_the_defaults(env: dict[str, str], tmp_path: Path) -> None:
    _write(tmp_path / "run" / "containers" / "auth.json",
           {"auths": {"quay.io": {"auth": _auth("runtime", "p")}}})
    env["REGISTRY_AUTH_FILE"] = str(_write(tmp_path / "elsewhere.json",
                                           {"auths": {"ghcr.io": {"auth": _auth("x", "p")}}}))

    assert find_credentials("quay.io", "a/b", env) is None
    assert find_credentials("ghcr.io", "a/b", env).username == "x"


def test_namespaced_keys_pick_the_longest_match(env: dict[str, str], tmp_path: Path) -> None:
    env["REGISTRY_AUTH_FILE"] = str(_write(tmp_path / "auth.json", {"auths": {
        "quay.io": {"auth": _auth("host", "p")},
        "quay.io/team": {"auth": _auth("team", "p")},
        "quay.io/team/app": {"auth": _auth("app", "p")},
    }}))

    assert find_credentials("quay.io", "team/app", env).username == "app"
    assert find_credentials("quay.io", "team/other", env).username == "team"
    assert find_credentials("quay.io", "teams/app", env).username == "host"


def test_entry_forms(env: dict[str, str]) -> None:
    docker(env, {"auths": {
        "a.example": {"username": "plain", "password": "pw"},
        "b.example": {"auth": _auth("<token>", ""), "identitytoken": "refresh"},
        "c.example": {},
        "d.example": {"auth": _auth("user", "pass:with:colons")},
    }})

    assert find_credentials("a.example", None, env) == Credentials("plain", "pw")
    assert find_credentials("b.example", None, env) == Credentials("<token>", "", "refresh")
    assert find_credentials("c.example", None, env) is None
    assert find_credentials("d.example", None, env).password == "pass:with:colons"


def test_repr_and_describe_hide_secrets() -> None:
    credentials = Credentials("alice", "hunter2", "refresh-me", "/x/config.json")

    assert "hunter2" not in repr(credentials) and "refresh-me" not in repr(credentials)
    assert credentials.describe() == "alice (from /x/config.json)"


@pytest.mark.parametrize("content, phrase", [
    ("{not json", "is not valid JSON"),
    ("[]", "is not a JSON object"),
    ({"auths": []}, "auths in"),
    ({"auths": {"quay.io": {"auth": "!!!"}}}, "is not base64 of USER:PASSWORD"),
    ({"auths": {"quay.io": {"auth": base64.b64encode(b"nocolon").decode()}}},
     "is not base64 of USER:PASSWORD"),
])
def test_broken_files_are_reported(env: dict[str, str], content: object, phrase: str) -> None:
    path = docker(env, content)

    with pytest.raises(ConfigurationError, match=phrase) as caught:
        find_credentials("quay.io", "a/b", env)
    assert str(path) in str(caught.value)


def test_helper_protocol(env: dict[str, str], tmp_path: Path) -> None:
    _helper(tmp_path, env, "fake", """
server = sys.stdin.read()
assert sys.argv[1:] == ["get"], sys.argv
if server == "https://index.docker.io/v1/":
    json.dump({"ServerURL": server, "Username": "<token>", "Secret": "hub-refresh"}, sys.stdout)
elif server == "quay.io":
    json.dump({"ServerURL": server, "Username": "q", "Secret": "qpass"}, sys.stdout)
else:
    print("credentials not found in native keychain")
    sys.exit(1)
""")
    docker(env, {"credsStore": "fake"})

    assert find_credentials(HUB, "library/x", env) == Credentials("<token>", "", "hub-refresh")
    assert find_credentials("quay.io", "a/b", env) == Credentials("q", "qpass")
    assert find_credentials("ghcr.io", "a/b", env) is None
    assert "docker-credential-fake" in find_credentials("quay.io", "a/b", env).source


def test_helper_failure_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    _helper(tmp_path, env, "broken", 'print("keychain is locked"); sys.exit(3)')
    docker(env, {"credHelpers": {"quay.io": "broken"}})

    with pytest.raises(ConfigurationError,
                       match="docker-credential-broken failed for quay.io .exit 3.: "
                             "keychain is locked"):
        find_credentials("quay.io", "a/b", env)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_store_miss_falls_back_to_inline_auths(env: dict[str, str]) -> None:
    docker(env, {"credsStore": "not-installed",
                 "auths": {"quay.io": {"auth": _auth("inline", "p")}}})
    # Our own handler: the CLI tests turn off propagation to pytest's.
    records, logger = _Records(), logging.getLogger("occystrap.credentials")
    logger.addHandler(records)
    try:
        found = find_credentials("quay.io", "a/b", env)
    finally:
        logger.removeHandler(records)

    assert found.username == "inline"
    assert any("docker-credential-not-installed" in m for m in records.messages)


def test_no_files_means_anonymous(env: dict[str, str]) -> None:
    assert find_credentials("quay.io", "a/b", env) is None
