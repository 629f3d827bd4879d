"""Flaky links, hostile registries and bad input, through a fault-injecting proxy.

Every test asserts the exit code, the message and what is left at the
output path: the image, nothing, or the earlier output untouched.
"""

import dataclasses
import email.utils
import errno
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

import conftest
import faultproxy
import imagebuild as ib
from conftest import assert_error, assert_verbose_error, occystrap
from faultproxy import (
    Cut, Drop, FaultProxy, Oversized, Redirect, Rewrite, Stall, Status, Trickle, corrupt,
    extend, ignore_range, replace_body, truncate, wrong_content_range)
from occystrap.cli import cli
from occystrap.digest import Digest
from occystrap.errors import RegistryUnreachable
from occystrap.manifest import Descriptor
from occystrap.outputs import directory as directory_output
from occystrap.outputs import tarball as tarball_output
from occystrap.reference import Registry
from occystrap.options import TransportOptions
from occystrap.registry import RegistryClient

# Besides conftest.FAST's quick retries: short stalls.
SHORT_TIMEOUT = ["--timeout", "1"]
BIG = 300_000  # bytes of the large layer: several reads, room to cut
SECRETS = ("PASSWORD-SECRET", "TOKEN-SECRET", "SIGNATURE-SECRET")


# --- fixtures and helpers ---------------------------------------------------------


@pytest.fixture
def proxy(registry):
    with FaultProxy(registry.url) as running:
        yield running


@pytest.fixture
def blobhost(registry):
    """A second host, like a storage service, that refuses Authorization headers."""
    with FaultProxy(registry.url, reject_authorization=True) as running:
        yield running


@pytest.fixture
def sleeps(monkeypatch):
    """Every sleep occystrap asks for, none of them slept."""
    asked: list[float] = []
    monkeypatch.setattr("occystrap.registry.time.sleep", asked.append)
    return asked


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return conftest.self_signed_certificate(tmp_path_factory.mktemp("tls"))


@dataclasses.dataclass(frozen=True)
class Pushed:
    image: ib.Image
    big: ib.Layer     # gzip, incompressible content
    small: ib.Layer   # uncompressed


def push(registry, repo: str, tag: str = "v1") -> Pushed:
    big = ib.make_layer([ib.file("data/big", ib.random_bytes(BIG, repo))])
    small = ib.make_layer([ib.file("etc/small", repo.encode())], "none")
    image = ib.make_image([big, small])
    registry.push_image(repo, image, tag)
    return Pushed(image, big, small)


def blob(digest: str) -> str:
    return f"/blobs/{digest}"


def fetch(proxy, repo: str, tag: str, out: Path, *options: str,
          command: str = "fetch-to-tarfile", flags=()):
    """Global `options`, then the command with its `flags`."""
    return occystrap(*SHORT_TIMEOUT, *options, command, *flags, proxy.url, repo, tag, str(out))


def saved(result, out: Path, image: ib.Image) -> None:
    """The fetch succeeded and the tarball holds exactly the image's layers."""
    assert result.exit_code == 0, result.output
    with tarfile.open(out) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))[0]
        layers = [archive.extractfile(name).read() for name in manifest["Layers"]]
        config = archive.extractfile(manifest["Config"]).read()
    assert [ib.sha256(layer) for layer in layers] == image.diff_ids
    assert config == image.config
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def failed(result, complaint: str, out: Path, earlier: bytes | None = None) -> str:
    """One `Error:` line naming the complaint; nothing new left near `out`."""
    message = assert_error(result, complaint)
    if earlier is None:
        assert list(out.parent.iterdir()) == [], "partial output left behind"
    else:
        assert [p.name for p in out.parent.iterdir()] == [out.name], "temporary left behind"
        assert out.read_bytes() == earlier, "earlier output damaged"
    return message


def output_path(tmp_path: Path, name: str = "image.tar") -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out" / name


def good_earlier_output(proxy, repo: str, out: Path) -> bytes:
    result = fetch(proxy, repo, "v1", out)
    assert result.exit_code == 0, result.output
    return out.read_bytes()


# --- transient faults: retry ------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_status_is_retried(registry, proxy, repo, tmp_path, status):
    pushed = push(registry, repo)
    proxy.add(Status(r"/manifests/", status, times=1))
    proxy.add(Status(blob(pushed.big.digest), status, times=2))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out, "--retries", "2"), out, pushed.image)
    assert [s.status for s in proxy.requests(r"/manifests/")] == [status, 200]
    assert [s.status for s in proxy.requests(blob(pushed.big.digest))] == [status, status, 200]


def test_dropped_connection_is_retried(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Drop(r"/manifests/", times=1))
    proxy.add(Drop(blob(pushed.small.digest), times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)
    assert len(proxy.requests(r"/manifests/")) == 2


def test_persistent_failure_gives_up_after_the_retries(registry, proxy, repo, tmp_path):
    push(registry, repo)
    proxy.add(Status(r"/manifests/", 503))
    out = output_path(tmp_path)
    message = failed(fetch(proxy, repo, "v1", out, "--retries", "3"),
                     "answered HTTP 503 to 4 attempts", out)
    assert "try again later" in message
    assert len(proxy.requests(r"/manifests/")) == 4


def test_persistent_connection_failure_gives_up(registry, proxy, repo, tmp_path):
    push(registry, repo)
    proxy.add(Drop(r"/manifests/"))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out, "--retries", "2"), "after 3 attempts", out)
    assert len(proxy.requests(r"/manifests/")) == 3


def test_backoff_doubles_with_jitter_up_to_a_cap(registry, proxy, repo, tmp_path, sleeps):
    push(registry, repo)
    proxy.add(Status(r"/manifests/", 503))
    out = output_path(tmp_path)
    result = occystrap("--retries", "6", "--retry-delay", "1", "fetch-to-tarfile",
                       proxy.url, repo, "v1", str(out))
    failed(result, "answered HTTP 503 to 7 attempts", out)
    ceilings = [1, 2, 4, 8, 16, 20]
    assert len(sleeps) == len(ceilings)
    for delay, ceiling in zip(sleeps, ceilings):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(sleeps)) == len(sleeps)


@pytest.mark.parametrize("status", [429, 503])
def test_short_retry_after_in_seconds_is_honoured(registry, proxy, repo, tmp_path, sleeps,
                                                  status):
    pushed = push(registry, repo)
    proxy.add(Status(blob(pushed.big.digest), status, {"Retry-After": "7"}, times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)
    assert sleeps == [7.0]


def test_short_retry_after_as_http_date_is_honoured(registry, proxy, repo, tmp_path, sleeps):
    pushed = push(registry, repo)
    when = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30),
                                       usegmt=True)
    proxy.add(Status(r"/manifests/", 429, {"Retry-After": when}, times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)
    assert len(sleeps) == 1 and 27 <= sleeps[0] <= 30


@pytest.mark.parametrize("retry_after, shown", [
    ("3600", "1h00m"),
    ("2 hours from now, as an HTTP date", "2h00m"),
    ("600", "10m00s"),
])
def test_long_retry_after_stops_at_once(registry, proxy, repo, tmp_path, sleeps, retry_after,
                                        shown):
    if not retry_after.isdigit():
        # Made now, not at collection: a slow suite would make it 1h59m.
        # Half a minute spare, as an HTTP date drops the fraction of a second.
        retry_after = email.utils.format_datetime(
            datetime.now(timezone.utc) + timedelta(hours=2, seconds=30), usegmt=True)
    push(registry, repo)
    proxy.add(Status(r"/manifests/", 429, {"Retry-After": retry_after}))
    out = output_path(tmp_path)
    started = time.monotonic()
    message = failed(fetch(proxy, repo, "v1", out, "--retries", "5"), f"wait {shown}", out)
    assert time.monotonic() - started < 5
    assert sleeps == []
    assert len(proxy.requests(r"/manifests/")) == 1
    assert "--username" in message and "try again later" in message


@pytest.mark.parametrize("status, complaint", [
    (404, "the image is incomplete on the registry"),
    (403, "access denied"),
])
def test_404_and_403_are_not_retried(registry, proxy, repo, tmp_path, status, complaint):
    pushed = push(registry, repo)
    proxy.add(Status(blob(pushed.big.digest), status,
                     {"Content-Type": "application/json"}, b'{"errors": []}'))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out, "--retries", "4"), complaint, out)
    assert len(proxy.requests(blob(pushed.big.digest))) == 1


def test_401_without_credentials_is_not_retried(registry, repo, tmp_path):
    push(registry, repo)
    out = output_path(tmp_path)
    with FaultProxy(registry.url, basic_auth=("user", "PASSWORD-SECRET")) as proxy:
        failed(fetch(proxy, repo, "v1", out, "--retries", "4"),
               "requires a username and password", out)
        assert len(proxy.requests(r"/manifests/")) == 1


def test_401_reruns_the_challenge_once(registry, repo, tmp_path):
    push(registry, repo)
    out = output_path(tmp_path)
    with FaultProxy(registry.url, basic_auth=("user", "right")) as proxy:
        result = fetch(proxy, repo, "v1", out, "--retries", "4", "--username", "user",
                       "--password", "PASSWORD-SECRET")
        failed(result, "authentication failed", out)
        assert [s.status for s in proxy.requests(r"/manifests/")] == [401, 401]
    assert "PASSWORD-SECRET" not in result.output


# --- transient faults: resume -------------------------------------------------------


@pytest.mark.parametrize("command", ["fetch-to-tarfile", "fetch-to-extracted"])
def test_cut_blob_resumes_with_range(registry, proxy, repo, tmp_path, command):
    pushed = push(registry, repo)
    proxy.add(Cut(blob(pushed.big.digest), after=100_000, times=1))
    out = output_path(tmp_path, "image.tar" if command == "fetch-to-tarfile" else "dir")
    result = fetch(proxy, repo, "v1", out, command=command)
    assert result.exit_code == 0, result.output
    first, second = proxy.requests(blob(pushed.big.digest))
    assert "range" not in first.headers and first.sent == 100_000
    assert second.headers["range"] == "bytes=100000-" and second.status == 206
    if command == "fetch-to-tarfile":
        saved(result, out, pushed.image)
    else:
        layer = out / pushed.big.diff_id[7:] / "layer.tar"
        assert layer.read_bytes() == pushed.big.tar


def test_cut_blob_restarts_when_range_is_ignored(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Cut(blob(pushed.big.digest), after=100_000, times=1))
    proxy.add(ignore_range())
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)
    first, second = proxy.requests(blob(pushed.big.digest))
    assert second.headers["range"] == "bytes=100000-"
    assert second.status == 200 and second.sent == pushed.big.size


def test_resumed_blob_is_still_verified_whole(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Cut(blob(pushed.big.digest), after=100_000, times=1))
    # The resumed part is corrupt: only a digest over the whole blob sees it.
    proxy.add(Rewrite(blob(pushed.big.digest), corrupt(5000), times=1))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out), "digest mismatch", out)


def test_wrong_content_range_is_rejected(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Cut(blob(pushed.big.digest), after=100_000, times=1))
    proxy.add(Rewrite(blob(pushed.big.digest), wrong_content_range()))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out), "Content-Range 'bytes 0-9/10'", out)


def test_blob_cut_every_time_gives_up(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Cut(blob(pushed.big.digest), after=0))
    out = output_path(tmp_path)
    message = failed(fetch(proxy, repo, "v1", out, "--retries", "2"),
                     "kept failing after 3 attempts", out)
    assert "connection closed mid-transfer" in message
    assert len(proxy.requests(blob(pushed.big.digest))) == 3


def test_a_dropping_link_that_progresses_gets_there(registry, proxy, repo, tmp_path):
    """Retries count failures without progress, not cuts of a long download."""
    layer = ib.make_layer([ib.file("big", ib.random_bytes(6_000_000, 9))])
    image = ib.make_image([layer])
    registry.push_image(repo, image, "v1")
    proxy.add(Cut(blob(layer.digest), after=1_200_000, times=4))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out, "--retries", "1"), out, image)
    assert len(proxy.requests(blob(layer.digest))) == 5


def test_blob_that_keeps_ending_early_gives_up(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    # A clean end (the length header agrees) short of the descriptor's size.
    proxy.add(Rewrite(blob(pushed.big.digest), truncate(1000), drop_range=True))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out, "--retries", "2"),
           f"ended after 1000 of {pushed.big.size} bytes", out)


def test_cut_manifest_is_retried(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Cut(r"/manifests/", after=10, times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)
    assert len(proxy.requests(r"/manifests/")) == 2


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_broken_size_probe_only_costs_the_hint(registry, proxy, repo, tmp_path, fault):
    pushed = push(registry, repo)
    if fault == "cut":
        proxy.add(Cut(blob(pushed.big.digest), after=2, probes=True, times=1))
    else:
        proxy.add(Stall(blob(pushed.big.digest), 10, after=2, probes=True, times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)
    assert proxy.requests(blob(pushed.big.digest), probes=True)[0].probe


def test_broken_tag_list_still_gives_a_clean_not_found(registry, proxy, repo, tmp_path):
    push(registry, repo)
    proxy.add(Cut(r"/tags/list", after=5))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "lastest", out), "tag 'lastest' not found", out)


# --- timeouts ------------------------------------------------------------------------


def test_server_that_never_answers_times_out(registry, proxy, repo, tmp_path):
    push(registry, repo)
    proxy.add(Stall(r"", 10))
    out = output_path(tmp_path)
    started = time.monotonic()
    message = failed(fetch(proxy, repo, "v1", out), "after 2 attempts: timed out", out)
    assert time.monotonic() - started < 6
    assert "--timeout" in message


def test_blob_that_stops_mid_body_times_out(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Stall(blob(pushed.big.digest), 10, after=50_000))
    out = output_path(tmp_path)
    started = time.monotonic()
    message = failed(fetch(proxy, repo, "v1", out), "kept failing after 2 attempts", out)
    assert time.monotonic() - started < 6
    assert "timed out" in message and "--timeout" in message


def test_manifest_that_stops_mid_body_is_retried(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Stall(r"/manifests/", 10, after=20, times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)


def test_stalled_blob_resumes(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    proxy.add(Stall(blob(pushed.big.digest), 10, after=50_000, times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, pushed.image)
    assert proxy.requests(blob(pushed.big.digest))[1].headers["range"] == "bytes=50000-"


def test_a_blob_that_never_answers_ends_the_run_in_time(
        registry, proxy, repo, tmp_path, monkeypatch):
    """Default options: the README promises about two minutes, 90 s without
    progress. The gzip size hint is one short try inside the layer's budget."""
    monkeypatch.setattr(faultproxy, "STALL_LIMIT", 300.0)
    pushed = push(registry, repo)
    proxy.add(Stall(blob(pushed.big.digest), 300, probes=True))
    out = output_path(tmp_path)
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["fetch-to-tarfile", proxy.url, repo, "v1", str(out)])
    took = time.monotonic() - started
    failed(result, "timed out", out)
    hints = [seen for seen in proxy.requests(blob(pushed.big.digest), probes=True)
             if seen.probe]
    assert len(hints) == 1
    assert took < 110, f"gave up after {took:.0f} s"


def test_one_unanswered_size_hint_stops_the_others(registry, proxy, repo, tmp_path):
    """Hints are asked before any download starts: each unanswered one would
    add its timeout to the run."""
    layers = [ib.make_layer([ib.file(f"data/{n}", ib.random_bytes(30_000, n))])
              for n in range(3)]
    image = ib.make_image(layers)
    registry.push_image(repo, image, "v1")
    for layer in layers:
        proxy.add(Stall(blob(layer.digest), 10, probes=True, times=1))
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out, "--parallel", "1"), out, image)
    hints = [seen for seen in proxy.requests("/blobs/", probes=True) if seen.probe]
    assert len(hints) == 1


@pytest.fixture
def unaccepting_port():
    """A port whose listen queue is full: connections to it never complete."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = []
    for _ in range(4):
        client = socket.socket()
        client.settimeout(0.3)
        try:
            client.connect(("127.0.0.1", port))
        except OSError:
            client.close()
            break
        queued.append(client)
    else:
        pytest.fail("the listen queue never filled")
    yield port
    for client in queued:
        client.close()
    server.close()


def test_connect_timeout_follows_timeout_option(unaccepting_port, tmp_path):
    out = output_path(tmp_path)
    started = time.monotonic()
    result = occystrap("--retry-delay", "0", "--retries", "1", "--timeout", "1",
                       "fetch-to-tarfile", f"http://127.0.0.1:{unaccepting_port}",
                       "app", "v1", str(out))
    failed(result, "after 2 attempts: timed out", out)
    assert time.monotonic() - started < 5


def test_stalls_are_given_up_within_a_time_budget(registry, proxy, repo):
    """Retries nested in resumes cannot multiply: one budget without progress."""
    pushed = push(registry, repo)
    proxy.add(Stall(blob(pushed.big.digest), 10, after=50_000, times=1))
    proxy.add(Stall(blob(pushed.big.digest), 10))
    options = TransportOptions(connect_timeout=0.3, read_timeout=0.3, retries=100,
                               backoff=0, give_up_after=1.5)
    client = RegistryClient(Registry.parse(proxy.url), options)
    layer = Descriptor(pushed.big.media_type, Digest.parse(pushed.big.digest),
                       pushed.big.size)
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable, match="timed out"):
        b"".join(client.blob_chunks(repo, layer))
    client.close()
    assert time.monotonic() - started < 3
    assert len(proxy.requests(blob(pushed.big.digest))) < 10


# --- redirects ---------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_redirected_blobs_carry_no_authorization(registry, blobhost, repo, tmp_path, auth):
    pushed = push(registry, repo)
    options = {"basic_auth": ("user", "PASSWORD-SECRET")}
    if auth == "bearer":
        options["bearer"] = "TOKEN-SECRET"
    out = output_path(tmp_path)
    with FaultProxy(registry.url, **options) as proxy:
        proxy.add(Redirect(r"/blobs/", blobhost.url, query="X-Amz-Signature=SIGNATURE-SECRET"))
        result = fetch(proxy, repo, "v1", out, "--verbose", "--username", "user",
                       "--password", "PASSWORD-SECRET")
        saved(result, out, pushed.image)
        assert all(s.authorization for s in proxy.requests(r"/blobs/"))
    fetched = blobhost.requests(r"/blobs/")
    assert len(fetched) == 3  # two layers and the config
    assert not any(s.authorization for s in fetched)
    assert all(s.status == 200 for s in fetched)
    for secret in SECRETS:
        assert secret not in result.output


def test_https_to_http_redirect_is_refused(registry, blobhost, repo, tmp_path, certificate):
    push(registry, repo)
    out = output_path(tmp_path)
    with FaultProxy(registry.url, tls=certificate) as proxy:
        proxy.add(Redirect(r"/blobs/", blobhost.url))
        result = fetch(proxy, repo, "v1", out, "--ca-cert", str(certificate[0]))
        assert proxy.url.startswith("https://")
    failed(result, "redirected from https to http; refusing to downgrade", out)
    assert blobhost.seen == []


# --- hostile registries: verify -------------------------------------------------------


@pytest.mark.parametrize("target", ["gzip layer", "plain layer", "config"])
def test_corrupt_blob_is_refused_and_earlier_output_kept(registry, proxy, repo, tmp_path,
                                                         target):
    pushed = push(registry, repo)
    digest = {"gzip layer": pushed.big.digest, "plain layer": pushed.small.digest,
              "config": pushed.image.config_digest}[target]
    out = output_path(tmp_path)
    earlier = good_earlier_output(proxy, repo, out)
    proxy.add(Rewrite(blob(digest), corrupt(300)))
    failed(fetch(proxy, repo, "v1", out), "digest mismatch", out, earlier)


@pytest.mark.parametrize("pull", ["by digest", "by tag", "index entry"])
def test_manifest_that_differs_from_its_digest(registry, proxy, repo, tmp_path, pull):
    pushed = push(registry, repo)
    index = ib.make_index([pushed.image], oci=True)
    registry.push_index(repo, index, "multi")
    tag = {"by digest": pushed.image.manifest_digest, "by tag": "v1",
           "index entry": "multi"}[pull]
    # The digest header stays the registry's, as a tampering cache would leave it.
    changed = proxy.add(Rewrite(r"/manifests/" + (pushed.image.manifest_digest
                                                  if pull != "by tag" else "v1"),
                                extend(b"\n")))
    out = output_path(tmp_path)
    complaint = ("does not match the digest the registry claims" if pull == "by tag"
                 else f"digest mismatch for manifest {repo}@{pushed.image.manifest_digest}")
    failed(fetch(proxy, repo, tag, out), complaint, out)
    assert changed.hits == 1
    assert proxy.requests(r"/blobs/") == []


@pytest.mark.parametrize("target", ["layer", "config"])
def test_blob_longer_than_its_descriptor_is_cut_off(registry, proxy, repo, tmp_path, target):
    pushed = push(registry, repo)
    digest = pushed.small.digest if target == "layer" else pushed.image.config_digest
    proxy.add(Rewrite(blob(digest), extend(b"x" * 100_000)))
    out = output_path(tmp_path)
    size = pushed.small.size if target == "layer" else len(pushed.image.config)
    failed(fetch(proxy, repo, "v1", out),
           f"is longer than the {size} bytes its descriptor promises", out)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_manifest_is_refused_unread(registry, proxy, repo, tmp_path, chunked):
    push(registry, repo)
    size = 64 << 20
    proxy.add(Oversized(r"/manifests/", size, chunked=chunked))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out), "over the 4194304 byte limit", out)
    # Refused by its length header, or after the first few MiB: never read whole.
    assert proxy.requests(r"/manifests/")[0].sent < size // 2


def test_large_manifest_under_the_cap_works(registry, proxy, repo, tmp_path):
    big = ib.make_layer([ib.file("a", b"a")])
    padded = dataclasses.replace(big, annotations={"padding": "p" * (3_500_000)})
    image = ib.make_image([padded])
    assert 3 << 20 < len(image.manifest) < 4 << 20
    registry.push_image(repo, image, "v1")
    out = output_path(tmp_path)
    saved(fetch(proxy, repo, "v1", out), out, image)


def test_oversized_config_is_refused_before_download(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    manifest = json.loads(pushed.image.manifest)
    manifest["config"]["size"] = 17 << 20
    proxy.add(Rewrite(r"/manifests/v1", replace_body(json.dumps(manifest).encode())))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out), "more than the 16777216 allowed", out)
    assert proxy.requests(r"/blobs/") == []


def _manifest(**fields) -> bytes:
    base = {"schemaVersion": 2, "mediaType": ib.OCI_MANIFEST,
            "config": {"mediaType": ib.OCI_CONFIG, "digest": "sha256:" + "a" * 64,
                       "size": 10},
            "layers": [{"mediaType": ib.OCI_LAYER_GZIP, "digest": "sha256:" + "b" * 64,
                        "size": 10}]}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


@pytest.mark.parametrize("body, complaint", [
    (b'{"schemaVersion": 2, "layers": [', "manifest is not valid JSON"),
    (b"[]", "manifest is not a JSON object"),
    (_manifest(config=None), "manifest has no config"),
    (_manifest(manifests=[]), "ambiguous manifest: it has both 'layers' and 'manifests'"),
    (_manifest(schemaVersion=1, mediaType=None), "Docker schema 1 manifest"),
    (_manifest(mediaType="application/vnd.example.thing+json"),
     "unsupported manifest media type 'application/vnd.example.thing+json'"),
    (_manifest(layers=[{"mediaType": ib.OCI_LAYER_GZIP, "size": 10,
                        "digest": "sha256:../../../../etc/passwd"}]), "invalid digest"),
    (_manifest(config={"mediaType": ib.OCI_CONFIG, "size": 10, "digest": "md5:abc"}),
     "unsupported digest algorithm"),
    (_manifest(layers=[{"mediaType": "text/plain", "size": 1, "digest": "sha256:" + "b" * 64}]),
     "unsupported media type 'text/plain'"),
    (json.dumps({"schemaVersion": 2, "mediaType": ib.OCI_INDEX, "manifests": [
        {"mediaType": ib.OCI_MANIFEST, "size": 10, "digest": "sha256:/../../x",
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode(), "invalid digest"),
], ids=["invalid-json", "not-an-object", "no-config", "layers-and-manifests", "schema1",
        "unknown-media-type", "traversal-digest", "md5-digest", "text-layer",
        "index-traversal-digest"])
def test_malformed_manifest_is_refused(registry, proxy, repo, tmp_path, body, complaint):
    push(registry, repo)
    proxy.add(Rewrite(r"/manifests/v1", replace_body(body)))
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out), complaint, out)
    # Nothing unvalidated reached a URL.
    assert [s.path for s in proxy.seen if ".." in s.path or "md5:" in s.path] == []
    assert proxy.requests(r"/blobs/") == []


def test_diff_ids_not_matching_layers_is_refused(registry, proxy, repo, tmp_path):
    layer = ib.make_layer([ib.file("a", b"a")])
    image = ib.make_image([layer], config_extra={
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id, layer.diff_id]}})
    registry.push_image(repo, image, "v1")
    out = output_path(tmp_path)
    failed(fetch(proxy, repo, "v1", out),
           "the manifest lists 1 layer but the config lists 2 diff_ids", out)


def _odd_layer(blob_bytes: bytes, media_type: str, content: bytes | None = None) -> ib.Layer:
    """A layer whose blob is what we say, whatever it decompresses to."""
    tar = blob_bytes if content is None else content
    return ib.Layer(tar, blob_bytes, media_type, ib.sha256(blob_bytes), ib.sha256(tar),
                    len(blob_bytes))


_TAR = ib.tar_bytes([ib.file("one", ib.random_bytes(5000, 1)),
                     ib.file("two", ib.random_bytes(5000, 2))])
# The first header's name changed: its checksum no longer matches.
_BAD_HEADER = b"X" + _TAR[1:]


@pytest.mark.parametrize("layer, complaint", [
    (_odd_layer(gzip.compress(_TAR)[:-40], ib.DOCKER_LAYER_GZIP, _TAR),
     "is truncated: the gzip stream ends early"),
    (_odd_layer(b"\x1f\x8b\x08\x00" + ib.random_bytes(3000), ib.DOCKER_LAYER_GZIP, _TAR),
     "is not valid gzip data"),
    (_odd_layer(_TAR[:7000], ib.DOCKER_LAYER), "is truncated"),
    (_odd_layer(ib.random_bytes(3000), ib.DOCKER_LAYER), "is not a valid tar stream"),
    (_odd_layer(gzip.compress(_BAD_HEADER), ib.DOCKER_LAYER_GZIP, _BAD_HEADER),
     "is not a valid tar stream"),
    (_odd_layer(gzip.compress(_TAR), ib.DOCKER_LAYER_GZIP, b"what the config claims"),
     "content (diff_id)"),
], ids=["truncated-gzip", "garbage-gzip", "truncated-tar", "not-a-tar", "bad-tar-header",
        "wrong-diff-id"])
@pytest.mark.parametrize("command", ["fetch-to-tarfile", "fetch-to-extracted"])
def test_bad_layer_is_a_clean_error(registry, proxy, repo, tmp_path, layer, complaint,
                                    command):
    image = ib.make_image([ib.make_layer([ib.file("ok", b"ok")]), layer])
    registry.push_image(repo, image, "v1")
    out = output_path(tmp_path, "image.tar" if command == "fetch-to-tarfile" else "dir")
    message = failed(fetch(proxy, repo, "v1", out, command=command), complaint, out)
    assert "layer 2" in message


# --- clean failure ---------------------------------------------------------------------


def test_failure_keeps_an_earlier_directory_intact(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    out = output_path(tmp_path, "dir")
    result = fetch(proxy, repo, "v1", out, command="fetch-to-extracted")
    assert result.exit_code == 0, result.output
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / pushed.big.diff_id[7:] / "layer.tar").unlink()  # fetched again below
    del before[out / pushed.big.diff_id[7:] / "layer.tar"]
    proxy.add(Rewrite(blob(pushed.big.digest), corrupt(1000)))
    result = fetch(proxy, repo, "v1", out, command="fetch-to-extracted")
    assert_error(result, "digest mismatch")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_failure_into_an_empty_directory_leaves_it_empty(registry, proxy, repo, tmp_path):
    pushed = push(registry, repo)
    out = output_path(tmp_path, "dir")
    out.mkdir()
    proxy.add(Rewrite(blob(pushed.small.digest), corrupt(100)))
    result = fetch(proxy, repo, "v1", out, command="fetch-to-extracted")
    assert_error(result, "digest mismatch")
    assert list(out.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the ENOSPC tests below cover it")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def push_large(registry, repo: str) -> ib.Image:
    layer = ib.make_layer([ib.file("big", ib.random_bytes(1_500_000, 7))])
    image = ib.make_image([layer])
    registry.push_image(repo, image, "big")
    return image


@pytest.mark.parametrize("command, flags", [
    ("fetch-to-tarfile", []),
    # A directory holds one image, so the earlier output is a shared one.
    ("fetch-to-extracted", ["--use-unique-names"]),
])
def test_full_disk_leaves_earlier_output_intact(registry, proxy, repo, tiny_disk, command,
                                                flags):
    push(registry, repo)
    push_large(registry, repo)
    out = tiny_disk / ("image.tar" if command == "fetch-to-tarfile" else "dir")
    result = fetch(proxy, repo, "v1", out, command=command, flags=flags)
    assert result.exit_code == 0, result.output
    before = {p: p.read_bytes() for p in tiny_disk.rglob("*") if p.is_file()}
    result = fetch(proxy, repo, "big", out, command=command, flags=flags)
    assert_error(result, "No space left on device")
    after = {p: p.read_bytes() for p in tiny_disk.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("command", ["fetch-to-tarfile", "fetch-to-extracted"])
def test_full_disk_into_a_new_target_leaves_nothing(registry, proxy, repo, tiny_disk,
                                                    command):
    push_large(registry, repo)
    out = tiny_disk / ("image.tar" if command == "fetch-to-tarfile" else "dir")
    result = fetch(proxy, repo, "big", out, command=command)
    assert_error(result, "No space left on device")
    assert list(tiny_disk.iterdir()) == []


class _FillsUp:
    """A file that takes `room` bytes, then fails like a full disk."""

    def __init__(self, file, room: int) -> None:
        self._file, self._room = file, room

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._file.close()

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_enospc_while_writing_a_tarball(registry, proxy, repo, tmp_path, monkeypatch):
    pushed = push(registry, repo)
    out = output_path(tmp_path)
    earlier = good_earlier_output(proxy, repo, out)
    room = [BIG // 2]

    def pwrite(fd, data, offset):
        if len(data) > room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        room[0] -= len(data)
        return os.pwrite(fd, data, offset)
    # Only the tarball writer's view of `os` is changed.
    patched_os = types.SimpleNamespace(**{**vars(os), "pwrite": pwrite})
    monkeypatch.setattr(tarball_output, "os", patched_os)
    failed(fetch(proxy, repo, "v1", out), "No space left on device", out, earlier)
    assert proxy.requests(blob(pushed.big.digest)), "the disk filled before any download"


def test_enospc_while_writing_a_directory(registry, proxy, repo, tmp_path, monkeypatch):
    push(registry, repo)
    out = output_path(tmp_path, "dir")
    monkeypatch.setattr(directory_output, "open",
                        lambda path, mode: _FillsUp(open(path, mode), BIG // 2),
                        raising=False)
    failed(fetch(proxy, repo, "v1", out, command="fetch-to-extracted"),
           "No space left on device", out)


def _without_proxies() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@pytest.mark.parametrize("command, flags, link", [
    ("fetch-to-tarfile", [], "slow"),
    ("fetch-to-extracted", [], "slow"),
    # Ctrl-C cannot wait for a stalled download thread: cleanup runs under it.
    ("fetch-to-extracted", ["--use-unique-names"], "stalled"),
])
def test_ctrl_c_mid_download_exits_130_leaving_nothing(registry, proxy, repo, tmp_path,
                                                       command, flags, link):
    pushed = push(registry, repo)
    if link == "slow":
        proxy.add(Trickle(blob(pushed.big.digest)))
    else:
        proxy.add(Stall(blob(pushed.big.digest), 15, after=100_000))
    out = output_path(tmp_path, "image.tar" if command == "fetch-to-tarfile" else "dir")
    run = subprocess.Popen(
        [sys.executable, "-m", "occystrap", "--timeout", "30", command, *flags, proxy.url,
         repo, "v1", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_without_proxies())
    try:
        deadline = time.monotonic() + 15
        while not any(s.sent for s in proxy.requests(blob(pushed.big.digest))):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        time.sleep(0.2)
        interrupted = time.monotonic()
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=10)
        # Promptly, even when a download thread is stuck in a stalled read.
        assert time.monotonic() - interrupted < 4
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, stderr.decode()
    assert "Interrupted" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert list(out.parent.iterdir()) == []


def test_bad_ca_file_leaves_no_temporary(registry, proxy, repo, tmp_path):
    push(registry, repo)
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("not a certificate\n")
    out = output_path(tmp_path)
    result = fetch(proxy, repo, "v1", out, "--ca-cert", str(bad))
    assert_error(result)
    assert list(out.parent.iterdir()) == []


# --- messages ------------------------------------------------------------------------


@pytest.mark.parametrize("blob_host", ["failing", "refusing connections"])
def test_secrets_never_appear_even_verbose(registry, blobhost, repo, tmp_path, blob_host):
    push(registry, repo)
    if blob_host == "failing":
        blobhost.add(Status(r"", 500))
        target = blobhost.url
    else:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            target = f"http://127.0.0.1:{unused.getsockname()[1]}"
    out = output_path(tmp_path)
    with FaultProxy(registry.url, basic_auth=("user", "PASSWORD-SECRET"),
                    bearer="TOKEN-SECRET") as proxy:
        proxy.add(Redirect(r"/blobs/", target, query="X-Amz-Signature=SIGNATURE-SECRET"))
        result = fetch(proxy, repo, "v1", out, "--verbose", "--username", "user",
                       "--password", "PASSWORD-SECRET")
    # --verbose does show details, the traceback too.
    assert_verbose_error(result, "127.0.0.1")
    for secret in SECRETS:
        assert secret not in result.output
    assert list(out.parent.iterdir()) == []


def test_readme_documents_exit_codes():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("##", 1)[0]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in table


def test_tar_fixture_is_what_the_bad_layer_cases_assume():
    # The truncation at 7000 bytes must fall inside the second member's data.
    members = tarfile.open(fileobj=io.BytesIO(_TAR)).getmembers()
    assert members[1].offset_data < 7000 < members[1].offset_data + members[1].size
    assert hashlib.sha256(_TAR).hexdigest() != hashlib.sha256(_TAR[:7000]).hexdigest()
