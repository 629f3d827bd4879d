"""Pushing blobs and manifests (BlobUploader) to real distribution registries.

Plain http, TLS with htpasswd, and token auth registries; a fault proxy in
front of the plain one fails, cuts and refuses requests, and counts them.
"""

from __future__ import annotations

import dataclasses
import json
import random
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests

import pki
import tokenserver
from conftest import Registry, start_registry
from faultproxy import CutUpload, FaultProxy, NthPatch, Rewrite, Status
from occystrap.credentials import Credentials
from occystrap.digest import Digest
from occystrap.errors import (
    AccessDenied, AuthenticationFailed, UploadRefused, VerificationError)
from occystrap.manifest import Descriptor
from occystrap.options import TransportOptions
from occystrap.reference import Registry as RegistryName
from occystrap.transport import Transport
from occystrap.upload import DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, MONOLITHIC_MAX, BlobUploader

FAST = TransportOptions(retries=3, backoff=0.0, connect_timeout=2, read_timeout=5,
                        certs_d=None)
CHUNK = MIN_CHUNK_SIZE  # 64 KiB: several chunks from a small blob
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ALICE, ALICE_PASSWORD = "alice", "alice-push-pw-1"
BOB, BOB_PASSWORD = "bob", "bob-pull-pw-2"


@dataclasses.dataclass
class Blob:
    data: bytes
    descriptor: Descriptor
    opened: list[int] = dataclasses.field(default_factory=list)

    def reopen(self, offset: int) -> Iterator[bytes]:
        """The blob from `offset`, in uneven pieces, as a file would give it."""
        self.opened.append(offset)
        for start in range(offset, len(self.data), 40_000):
            yield self.data[start:start + 40_000]


def blob(size: int, seed: int = 0) -> Blob:
    data = random.Random(seed).randbytes(size)
    return Blob(data, Descriptor(LAYER, Digest.of(data), size))


def uploader(url: str, chunk_size: int = CHUNK, options: TransportOptions = FAST,
             credentials: Credentials | None = None) -> BlobUploader:
    transport = Transport(RegistryName.parse(url), options, credentials)
    return BlobUploader(transport, chunk_size)


def stored(url: str, repository: str, digest: Digest, **kwargs) -> bytes | None:
    response = requests.get(f"{url}/v2/{repository}/blobs/{digest}", timeout=10, **kwargs)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.content


def one_line(error: pytest.ExceptionInfo[BaseException], *phrases: str) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    for phrase in phrases:
        assert phrase in text, text
    return text


def calls(proxy: FaultProxy, pattern: str = "/blobs/") -> list[tuple[str, int | None]]:
    return [(seen.method, seen.status) for seen in proxy.requests(pattern)]


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as running:
        yield running


# --- plain http -------------------------------------------------------------------


def test_a_small_blob_goes_up_in_one_put(proxy: FaultProxy, registry: Registry,
                                         repo: str) -> None:
    small = blob(30_000)
    sizes: list[int] = []
    up = uploader(proxy.url)

    assert not up.has_blob(repo, small.descriptor.digest)
    up.upload_blob(repo, small.descriptor, small.reopen, sizes.append)

    assert up.has_blob(repo, small.descriptor.digest)
    assert stored(registry.url, repo, small.descriptor.digest) == small.data
    assert calls(proxy) == [("HEAD", 404), ("POST", 202), ("PUT", 201), ("HEAD", 200)]
    (put,) = proxy.requests(r"/blobs/uploads/.*digest=")
    assert put.received == len(small.data)
    assert sizes == [len(small.data)]


def test_a_blob_past_the_one_request_limit_streams_in_a_chunk(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    # Under the default chunk size, but too large to hold whole in memory.
    medium = blob(MONOLITHIC_MAX + 1, seed=3)

    uploader(proxy.url, DEFAULT_CHUNK_SIZE).upload_blob(repo, medium.descriptor, medium.reopen)

    assert stored(registry.url, repo, medium.descriptor.digest) == medium.data
    assert calls(proxy) == [("POST", 202), ("PATCH", 202), ("PUT", 201)]
    (patch,) = [seen for seen in proxy.requests() if seen.method == "PATCH"]
    assert patch.received == len(medium.data)


def test_a_large_blob_goes_up_in_chunks(proxy: FaultProxy, registry: Registry,
                                        repo: str) -> None:
    large = blob(3 * CHUNK + 1234, seed=1)
    sizes: list[int] = []

    uploader(proxy.url).upload_blob(repo, large.descriptor, large.reopen, sizes.append)

    assert stored(registry.url, repo, large.descriptor.digest) == large.data
    patches = [seen for seen in proxy.requests() if seen.method == "PATCH"]
    assert [p.headers["content-range"] for p in patches] == [
        f"0-{CHUNK - 1}", f"{CHUNK}-{2 * CHUNK - 1}", f"{2 * CHUNK}-{3 * CHUNK - 1}",
        f"{3 * CHUNK}-{3 * CHUNK + 1233}"]
    # Each chunk with its length, not chunked transfer encoding.
    assert [p.headers.get("content-length") for p in patches] == \
        [str(CHUNK)] * 3 + ["1234"]
    assert calls(proxy)[-1] == ("PUT", 201)
    assert sizes == [CHUNK, 2 * CHUNK, 3 * CHUNK, large.descriptor.size]
    assert large.opened == [0]


def test_a_manifest_goes_up_and_its_digest_is_checked(registry: Registry, repo: str) -> None:
    up = uploader(registry.url)
    layer = blob(5000, seed=2)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_blob = Blob(config, Descriptor("application/vnd.oci.image.config.v1+json",
                                          Digest.of(config), len(config)))
    for each in (layer, config_blob):
        up.upload_blob(repo, each.descriptor, each.reopen)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config_blob.descriptor.media_type,
                   "digest": str(config_blob.descriptor.digest), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": str(layer.descriptor.digest),
                    "size": layer.descriptor.size}]}).encode()

    digest = up.put_manifest(repo, "v1", manifest, "application/vnd.oci.image.manifest.v1+json")

    assert digest == Digest.of(manifest)
    got = requests.get(f"{registry.url}/v2/{repo}/manifests/v1", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert got.content == manifest
    assert got.headers["Docker-Content-Digest"] == str(digest)


def test_a_registry_that_rewrites_a_manifest_is_caught(proxy: FaultProxy,
                                                       repo: str) -> None:
    up = uploader(proxy.url)
    config = blob(100, seed=3)
    up.upload_blob(repo, config.descriptor, config.reopen)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(config.descriptor.digest), "size": 100},
        "layers": []}).encode()

    def lie(answer) -> None:
        answer.headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
    proxy.add(Rewrite(r"/manifests/", lie, methods=("PUT",)))

    with pytest.raises(VerificationError) as error:
        up.put_manifest(repo, "v1", manifest, "application/vnd.oci.image.manifest.v1+json")
    one_line(error, "sha256:" + "0" * 64, repo, "changed it")


def test_a_mount_moves_no_data(proxy: FaultProxy, registry: Registry, repo: str) -> None:
    large = blob(2 * CHUNK, seed=4)
    up = uploader(proxy.url)
    up.upload_blob(f"{repo}/source", large.descriptor, large.reopen)
    before = len(proxy.requests())

    assert up.mount_blob(f"{repo}/target", large.descriptor.digest, f"{repo}/source")

    mounting = proxy.requests()[before:]
    assert [(seen.method, seen.status) for seen in mounting] == [("POST", 201)]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(mounting[0].path).query)
    assert query == {"mount": [str(large.descriptor.digest)], "from": [f"{repo}/source"]}
    assert mounting[0].received == 0
    assert stored(registry.url, f"{repo}/target", large.descriptor.digest) == large.data


def test_a_mount_of_a_blob_the_source_lacks_cancels_the_upload_it_started(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    missing = blob(1000, seed=5)
    up = uploader(proxy.url)

    assert not up.mount_blob(f"{repo}/target", missing.descriptor.digest, f"{repo}/source")

    assert calls(proxy) == [("POST", 202), ("DELETE", 204)]


def test_bytes_that_do_not_match_the_digest_are_not_stored(proxy: FaultProxy,
                                                           registry: Registry,
                                                           repo: str) -> None:
    for size in (1000, 2 * CHUNK + 5):
        good = blob(size, seed=6)
        damaged = Blob(bytes([good.data[0] ^ 1]) + good.data[1:], good.descriptor)

        with pytest.raises(VerificationError) as error:
            uploader(proxy.url).upload_blob(repo, damaged.descriptor, damaged.reopen)
        one_line(error, str(good.descriptor.digest), "nothing was pushed")
        assert stored(registry.url, repo, good.descriptor.digest) is None
    # The chunked one was sent, then cancelled rather than committed.
    assert ("DELETE", 204) in calls(proxy)
    assert not [seen for seen in proxy.requests(r"digest=") if seen.method == "PUT"]


# --- faults -------------------------------------------------------------------------


def test_a_503_is_retried_and_the_upload_goes_on(proxy: FaultProxy, registry: Registry,
                                                 repo: str) -> None:
    large = blob(3 * CHUNK, seed=7)
    proxy.add(Status(r"/blobs/uploads/$", 503, methods=("POST",), times=1))
    proxy.add(Status(r"/blobs/uploads/.", 503, methods=("PATCH",), times=1))

    uploader(proxy.url).upload_blob(repo, large.descriptor, large.reopen)

    assert stored(registry.url, repo, large.descriptor.digest) == large.data
    assert calls(proxy)[:5] == [("POST", 503), ("POST", 202), ("PATCH", 503),
                                ("GET", 204), ("PATCH", 202)]
    # Nothing of the refused chunk arrived: it is sent again from 0.
    assert large.opened == [0, 0]


def _cut_second_patch(proxy: FaultProxy, *, keep_part: bool,
                      follow: bool = True) -> CutUpload:
    """Cut the second PATCH after 10,000 bytes (the first goes through)."""
    class SecondPatch(CutUpload):
        def takes(self, method: str, path: str, headers: dict[str, str]) -> bool:
            if method == "PATCH" and headers.get("content-range", "").startswith(f"{CHUNK}-"):
                return super().takes(method, path, headers)
            return False
    cut = SecondPatch(r"/blobs/uploads/", after=10_000, keep_part=keep_part,
                      follow=follow, times=1)
    proxy.add(cut)
    return cut


def test_a_chunk_cut_and_dropped_is_sent_again_from_its_start(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    large = blob(3 * CHUNK + 99, seed=8)
    _cut_second_patch(proxy, keep_part=False)

    uploader(proxy.url).upload_blob(repo, large.descriptor, large.reopen)

    assert stored(registry.url, repo, large.descriptor.digest) == large.data
    (status,) = [seen for seen in proxy.requests("/blobs/") if seen.method == "GET"]
    assert status.status == 204
    # The registry held the first chunk; the source is reopened there.
    assert large.opened == [0, CHUNK]
    ranges = [seen.headers["content-range"] for seen in proxy.requests()
              if seen.method == "PATCH"]
    assert ranges[:3] == [f"0-{CHUNK - 1}", f"{CHUNK}-{2 * CHUNK - 1}",
                          f"{CHUNK}-{2 * CHUNK - 1}"]


def test_a_chunk_cut_and_partly_kept_resumes_mid_chunk(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    large = blob(3 * CHUNK + 99, seed=9)
    _cut_second_patch(proxy, keep_part=True)
    sizes: list[int] = []

    uploader(proxy.url).upload_blob(repo, large.descriptor, large.reopen, sizes.append)

    assert stored(registry.url, repo, large.descriptor.digest) == large.data
    # The registry says it holds the first chunk and 10,000 bytes more.
    assert large.opened == [0, CHUNK + 10_000]
    ranges = [seen.headers["content-range"] for seen in proxy.requests()
              if seen.method == "PATCH"]
    assert ranges[2] == f"{CHUNK + 10_000}-{2 * CHUNK + 10_000 - 1}"
    assert CHUNK + 10_000 in sizes and sizes[-1] == large.descriptor.size


def test_distribution_forgets_a_session_whose_chunk_was_cut_and_it_starts_again(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    large = blob(3 * CHUNK, seed=10)
    # Without the proxy's help, distribution's old location no longer fits
    # the bytes it holds: 404 to the status request.
    _cut_second_patch(proxy, keep_part=True, follow=False)

    uploader(proxy.url).upload_blob(repo, large.descriptor, large.reopen)

    assert stored(registry.url, repo, large.descriptor.digest) == large.data
    assert ("GET", 404) in calls(proxy)
    assert [method for method, _ in calls(proxy)].count("POST") == 2
    assert large.opened == [0, 0]


def test_an_upload_that_keeps_failing_gives_up_in_one_line(proxy: FaultProxy,
                                                           repo: str) -> None:
    large = blob(2 * CHUNK, seed=11)
    proxy.add(Status(r"/blobs/uploads/.", 503, methods=("PATCH",)))

    with pytest.raises(Exception) as error:
        uploader(proxy.url).upload_blob(repo, large.descriptor, large.reopen)
    one_line(error, repo, proxy.host, "HTTP 503")


# --- refusals --------------------------------------------------------------------------


def test_a_read_only_registry_is_one_line(tmp_path: Path, repo: str) -> None:
    small = blob(1000, seed=12)
    config = {"storage": {"maintenance": {"readonly": {"enabled": True}}}}
    with start_registry(tmp_path / "readonly", config) as readonly:
        with pytest.raises(UploadRefused) as error:
            uploader(readonly.url).upload_blob(repo, small.descriptor, small.reopen)
    one_line(error, f"does not accept pushes to {repo}", "HTTP 405", "read-only",
             "pull-through cache")


@pytest.mark.parametrize("status, body, phrases", [
    (413, b"", ("too large", "HTTP 413", "smaller --chunk-size")),
    (507, b"", ("no room for", "HTTP 507", "out of space or over quota")),
    (403, b'{"errors": [{"code": "DENIED", "message": "quota exceeded: 10 GiB"}]}',
     ("no room for", "quota exceeded: 10 GiB", "over quota")),
])
def test_a_refused_chunk_is_one_line(proxy: FaultProxy, repo: str, status: int, body: bytes,
                                     phrases: tuple[str, ...]) -> None:
    large = blob(2 * CHUNK, seed=13)
    proxy.add(Status(r"/blobs/uploads/.", status, body=body, methods=("PATCH",),
                     headers={"Content-Type": "application/json"}))

    with pytest.raises(UploadRefused) as error:
        uploader(proxy.url).upload_blob(repo, large.descriptor, large.reopen)
    one_line(error, repo, *phrases)


# --- TLS and htpasswd -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[pki.Issued, pki.Issued, Path]:
    root = tmp_path_factory.mktemp("upload-tls")
    ca = pki.make_ca(root / "pki")
    server = pki.issue_server_cert(ca, root / "pki", ["127.0.0.1", "localhost"])
    return ca, server, root


def test_tls_and_htpasswd(tls_world: tuple[pki.Issued, pki.Issued, Path], repo: str) -> None:
    ca, server, root = tls_world
    htpasswd = root / "htpasswd"
    hashed = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{ALICE}:{hashed}\n")
    config = {"http": {"tls": {"certificate": str(server.cert), "key": str(server.key)}},
              "auth": {"htpasswd": {"realm": "occystrap-test", "path": str(htpasswd)}}}
    options = dataclasses.replace(FAST, verify=str(ca.cert))
    large = blob(2 * CHUNK + 7, seed=14)
    with start_registry(root / "basic", config) as basic:
        up = uploader(basic.url, options=options,
                      credentials=Credentials(ALICE, ALICE_PASSWORD, source="--username"))
        up.upload_blob(repo, large.descriptor, large.reopen)
        assert up.has_blob(repo, large.descriptor.digest)
        assert stored(basic.url, repo, large.descriptor.digest, verify=str(ca.cert),
                      auth=(ALICE, ALICE_PASSWORD)) == large.data

        wrong = uploader(basic.url, options=options,
                         credentials=Credentials(ALICE, "not-it", source="--username"))
        with pytest.raises(AuthenticationFailed) as error:
            wrong.upload_blob(repo, large.descriptor, large.reopen)
        one_line(error, f"authentication failed for {basic.host} as {ALICE}",
                 f"push to {repo}", "check the username and password")


# --- token auth -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_world(tls_world: tuple[pki.Issued, pki.Issued, Path]
                ) -> Iterator[tuple[Registry, tokenserver.TokenServer, TransportOptions]]:
    ca, server, root = tls_world
    service = tokenserver.TokenServer(
        root / "token", server, users={ALICE: ALICE_PASSWORD, BOB: BOB_PASSWORD},
        grants={BOB: ["team"]}, pushers={ALICE: ["team", "public"]})
    with service.running():
        config = {"http": {"tls": {"certificate": str(server.cert), "key": str(server.key)}},
                  **service.registry_config()}
        with start_registry(root / "tokenmode", config) as running:
            yield running, service, dataclasses.replace(FAST, verify=str(ca.cert))


def test_token_auth_grants_push_to_one_user_only(token_world, repo: str) -> None:
    registry, service, options = token_world
    service.reset()
    large = blob(2 * CHUNK + 3, seed=15)
    alice = Credentials(ALICE, ALICE_PASSWORD, source="--username")
    bob = Credentials(BOB, BOB_PASSWORD, source="--username")

    uploader(registry.url, options=options, credentials=alice).upload_blob(
        f"team/{repo}", large.descriptor, large.reopen)

    scopes = {r.params.get("scope") for r in service.token_requests() if r.user == ALICE}
    assert scopes == {f"repository:team/{repo}:pull,push"}
    # Bob may pull it, but not push.
    bob_up = uploader(registry.url, options=options, credentials=bob)
    assert bob_up.transport.request("HEAD", f"team/{repo}/blobs/{large.descriptor.digest}",
                                    f"repository:team/{repo}:pull", f"team/{repo}"
                                    ).status_code == 200
    other = blob(500, seed=16)
    with pytest.raises(AccessDenied) as error:
        bob_up.upload_blob(f"team/{repo}", other.descriptor, other.reopen)
    one_line(error, f"access denied to team/{repo} on {registry.host} for {BOB}",
             "may not push to it")
    # Anonymous users may pull public/ but push nothing.
    anonymous = uploader(registry.url, options=options)
    with pytest.raises(AuthenticationFailed) as error:
        anonymous.upload_blob(f"public/{repo}", other.descriptor, other.reopen)
    one_line(error, f"anonymous users push to public/{repo}", "--username")


def test_token_auth_mount_asks_pull_on_the_source(token_world, repo: str) -> None:
    registry, service, options = token_world
    alice = Credentials(ALICE, ALICE_PASSWORD, source="--username")
    up = uploader(registry.url, options=options, credentials=alice)
    shared = blob(4000, seed=17)
    up.upload_blob(f"public/{repo}", shared.descriptor, shared.reopen)
    service.reset()

    assert up.mount_blob(f"team/{repo}", shared.descriptor.digest, f"public/{repo}")

    (request,) = service.token_requests()
    # One token for both repositories: docker's repeated scope parameters.
    assert request.params["scope"] == \
        f"repository:team/{repo}:pull,push repository:public/{repo}:pull"
    assert up.has_blob(f"team/{repo}", shared.descriptor.digest)


def test_token_auth_mount_refused_on_the_source_falls_back(token_world, repo: str) -> None:
    registry, service, options = token_world
    alice = Credentials(ALICE, ALICE_PASSWORD, source="--username")
    # Alice may not read private/ (nobody may): the mount is refused.
    assert not uploader(registry.url, options=options, credentials=alice).mount_blob(
        f"team/{repo}", blob(10).descriptor.digest, f"private/{repo}")


# --- blobs made as they are sent (layers compressed on the way) -------------------


@dataclasses.dataclass
class Made:
    """A blob made afresh, in uneven pieces, each time it is asked for."""

    data: bytes
    made: int = 0

    def produce(self) -> Iterator[bytes]:
        self.made += 1
        for start in range(0, len(self.data), 30_000):
            yield self.data[start:start + 30_000]


def test_a_blob_made_on_the_way_goes_up_in_chunks_of_unknown_length(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    made = Made(random.Random(20).randbytes(3 * CHUNK + 5))

    descriptor = uploader(proxy.url).stream_blob(repo, LAYER, made.produce)

    assert descriptor == Descriptor(LAYER, Digest.of(made.data), len(made.data))
    assert stored(registry.url, repo, descriptor.digest) == made.data
    assert made.made == 1
    patches = [seen for seen in proxy.requests("/blobs/") if seen.method == "PATCH"]
    assert len(patches) == 4
    assert all(seen.headers.get("transfer-encoding") == "chunked"
               and "content-range" not in seen.headers for seen in patches)
    assert [method for method, _ in calls(proxy)] == ["POST", "PATCH", "PATCH", "PATCH",
                                                      "PATCH", "PUT"]


@pytest.mark.parametrize("keep_part", [True, False], ids=["partly-kept", "dropped"])
def test_a_cut_blob_made_on_the_way_is_made_again_and_resumed(
        proxy: FaultProxy, registry: Registry, repo: str, keep_part: bool) -> None:
    made = Made(random.Random(21).randbytes(3 * CHUNK))
    proxy.add(NthPatch(2, keep_part=keep_part))

    descriptor = uploader(proxy.url).stream_blob(repo, LAYER, made.produce)

    assert stored(registry.url, repo, descriptor.digest) == made.data
    assert descriptor.digest == Digest.of(made.data)
    # Made again from its start, the bytes the registry holds skipped.
    assert made.made == 2
    assert ("GET", 204) in calls(proxy)
    assert [method for method, _ in calls(proxy)].count("POST") == 1


def test_a_blob_made_on_the_way_over_a_link_that_drops_but_progresses_gets_there(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    # Every PATCH is cut after 10,000 bytes, which the registry keeps: more
    # cuts in a row than retries, each with progress, as for a stored blob.
    made = Made(random.Random(25).randbytes(3 * CHUNK))
    proxy.add(CutUpload(r"/blobs/uploads/", after=10_000, keep_part=True, times=8))

    descriptor = uploader(proxy.url).stream_blob(repo, LAYER, made.produce)

    assert stored(registry.url, repo, descriptor.digest) == made.data
    assert made.made == 9


def test_a_blob_made_on_the_way_starts_again_when_the_session_is_forgotten(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    made = Made(random.Random(22).randbytes(3 * CHUNK))
    proxy.add(NthPatch(2, keep_part=True, follow=False))

    descriptor = uploader(proxy.url).stream_blob(repo, LAYER, made.produce)

    assert stored(registry.url, repo, descriptor.digest) == made.data
    assert ("GET", 404) in calls(proxy)
    assert [method for method, _ in calls(proxy)].count("POST") == 2
    assert made.made == 2


def test_a_turn_is_taken_for_each_chunk_and_always_given_back(
        proxy: FaultProxy, registry: Registry, repo: str) -> None:
    made = Made(random.Random(23).randbytes(2 * CHUNK + 1))
    proxy.add(NthPatch(1, keep_part=True))
    turns: list[str] = []

    class Turn:
        def __enter__(self) -> None:
            turns.append("in")

        def __exit__(self, *exc_info: object) -> None:
            turns.append("out")

    uploader(proxy.url).stream_blob(repo, LAYER, made.produce, Turn)

    # The chunk cut after 10,000 bytes, then the two the rest makes: the turn
    # is given back after each, cut or not.
    assert turns == ["in", "out"] * 3


def test_a_registry_that_wants_lengths_is_one_line(proxy: FaultProxy, repo: str) -> None:
    made = Made(random.Random(24).randbytes(CHUNK))
    proxy.add(Status(r"/blobs/uploads/.", 411, methods=("PATCH",)))

    with pytest.raises(UploadRefused) as error:
        uploader(proxy.url).stream_blob(repo, LAYER, made.produce)
    one_line(error, repo, proxy.host, "HTTP 411", "bundle")
