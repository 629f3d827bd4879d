"""push against real registries: digests compared with the source registry's,
images pulled back with skopeo and loaded in podman, requests counted
through the fault proxy."""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import imagebuild as ib
from conftest import (
    assert_error, occystrap, skopeo_copy, skopeo_inspect, start_registry)
from faultproxy import FaultProxy, NthPatch, Status

NO_TLS = "--tls-verify=false"


@pytest.fixture
def far(tmp_path: Path) -> Iterator:
    """An empty registry on the far side of the gap."""
    with start_registry(tmp_path / "far") as running:
        yield running


def _ok(*args: str):
    result = occystrap(*args)
    assert result.exit_code == 0, result.output
    return result


def _get(registry, repository: str, reference: str) -> tuple[bytes, str] | None:
    """A manifest's bytes and digest as the registry serves them, or None."""
    response = requests.get(f"{registry.url}/v2/{repository}/manifests/{reference}",
                            headers={"Accept": ib.ACCEPT}, timeout=10)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.content, response.headers["Docker-Content-Digest"]


def _config_digest(registry, repository: str, reference: str) -> str:
    found = _get(registry, repository, reference)
    assert found is not None, f"{repository}:{reference} is not in {registry.host}"
    return json.loads(found[0])["config"]["digest"]


def _uploads(proxy: FaultProxy) -> list:
    """Requests that send blob bytes (a mount sends none)."""
    return [s for s in proxy.requests(r"/blobs/uploads/")
            if s.method in ("PATCH", "PUT")
            or (s.method == "POST" and "mount=" not in s.path)]


def _load_back(far, reference: str, tmp_path: Path, podman) -> dict:
    """Pull the pushed image back with skopeo, load it in podman."""
    archive = tmp_path / f"back-{len(list(tmp_path.iterdir()))}.tar"
    skopeo_copy(f"docker://{far.host}/{reference}", f"docker-archive:{archive}:back:1",
                "--src-tls-verify=false")
    names = podman.load(archive)
    assert any(n.endswith("back:1") for n in names), names
    return podman.inspect("back:1")


def test_a_bundle_pushes_with_every_digest_identical(registry, repo, far, podman, tmp_path):
    docker_gzip, oci_zstd = ib.small_image(1), ib.small_image(2, "zstd", oci=True)
    amd = ib.small_image(3, oci=True)
    arm = ib.small_image(4, oci=True, architecture="arm64", variant="v8")
    index = ib.make_index([amd, arm], oci=True, attestations=True)
    registry.push_image(f"{repo}/docker", docker_gzip, "1.0")
    registry.push_image(f"{repo}/zstd", oci_zstd, "2.0")
    registry.push_index(f"{repo}/multi", index, "3.0")
    pinned = registry.push_image(f"{repo}/pinned", ib.small_image(5), "x")
    host = registry.host
    bundle = tmp_path / "bundle"
    _ok("fetch-to-bundle", "--all-platforms", f"{host}/{repo}/docker:1.0",
        f"{host}/{repo}/zstd:2.0", f"{host}/{repo}/multi:3.0", f"{host}/{repo}/pinned@{pinned}",
        str(bundle))

    result = _ok("push", str(bundle), far.host)

    for repository, tag in [(f"{repo}/docker", "1.0"), (f"{repo}/zstd", "2.0"),
                            (f"{repo}/multi", "3.0")]:
        assert _get(far, repository, tag) == _get(registry, repository, tag)
        assert f"to {far.host}/{repository}:{tag} (" in result.output
    # The index went up whole: every platform and attestation, by digest.
    assert _get(far, f"{repo}/multi", "3.0")[1] == index.manifest_digest
    for child in index.children:
        assert _get(far, f"{repo}/multi", child.manifest_digest) == (
            child.manifest, child.manifest_digest)
    # Pulled by digest, it has no tag: pushed by digest, and said so.
    assert _get(far, f"{repo}/pinned", pinned) == _get(registry, f"{repo}/pinned", pinned)
    assert f"{far.host}/{repo}/pinned@{pinned}" in result.output
    assert "by digest only" in result.output

    seen = skopeo_inspect(f"docker://{far.host}/{repo}/docker:1.0", NO_TLS)
    assert seen["Digest"] == docker_gzip.manifest_digest
    seen = skopeo_inspect(f"docker://{far.host}/{repo}/multi:3.0", NO_TLS,
                          "--override-arch", "arm64", "--override-variant", "v8")
    assert (seen["Digest"], seen["Architecture"]) == (index.manifest_digest, "arm64")
    loaded = _load_back(far, f"{repo}/docker:1.0", tmp_path, podman)
    assert loaded["Id"] == docker_gzip.config_digest.split(":")[1]


def test_a_second_push_uploads_no_blob_and_mounts_across_repositories(
        registry, repo, far, tmp_path):
    one, two = ib.small_image(10), ib.small_image(11)
    registry.push_image(f"{repo}/one", one, "1")
    registry.push_image(f"{repo}/two", two, "2")
    bundle = tmp_path / "bundle"
    _ok("fetch-to-bundle", f"{registry.host}/{repo}/one:1", f"{registry.host}/{repo}/two:2",
        str(bundle))
    shared = one.layers[0].digest
    assert shared == two.layers[0].digest

    with FaultProxy(far.url) as proxy:
        result = _ok("push", str(bundle), proxy.host)
        # The base layer went up once, into one; two mounted it from there.
        sent = _uploads(proxy)
        assert len(sent) > 0
        mounts = [s for s in proxy.requests(r"mount=") if s.method == "POST"]
        assert [(s.path.split("?")[0], s.status) for s in mounts] == [
            (f"/v2/{repo}/two/blobs/uploads/", 201)]
        query = urllib.parse.parse_qs(mounts[0].path.split("?")[1])
        assert query == {"mount": [shared], "from": [f"{repo}/one"]}
        assert "1 mounted" in result.output

        # Again, from a tar of the bundle: every blob is there already.
        tar = tmp_path / "bundle.tar"
        subprocess.run(["tar", "-cf", str(tar), "-C", str(bundle), "."], check=True)
        before = len(proxy.seen)
        again = _ok("push", str(tar), proxy.host)
        later = proxy.seen[before:]
        assert [s for s in later if "/blobs/uploads/" in s.path] == []
        assert {s.method for s in later if "/blobs/" in s.path} == {"HEAD"}
        assert sorted(s.path for s in later if s.method == "PUT") == sorted([
            f"/v2/{repo}/one/manifests/1", f"/v2/{repo}/two/manifests/2"])
        assert "0 blobs uploaded" in again.output
    assert _get(far, f"{repo}/two", "2")[1] == two.manifest_digest


def test_a_tarball_pushes_with_its_config_unchanged(registry, repo, far, podman, tmp_path):
    image = ib.small_image(20, "zstd", oci=True)
    registry.push_image(repo, image, "v1")
    tarball = tmp_path / "image.tar"
    _ok("fetch-to-tarfile", registry.host, repo, "v1", str(tarball))

    result = _ok("push", str(tarball), far.host)

    assert _config_digest(far, repo, "v1") == image.config_digest
    manifest, digest = _get(far, repo, "v1")
    assert digest != image.manifest_digest
    assert f"manifest {digest}" in result.output
    assert "not the digest the image had" in result.output
    doc = json.loads(manifest)
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert {layer["mediaType"] for layer in doc["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"}
    loaded = _load_back(far, f"{repo}:v1", tmp_path, podman)
    assert loaded["Id"] == image.config_digest.split(":")[1]
    # Compressed the same way again: the same blobs, nothing uploaded.
    with FaultProxy(far.url) as proxy:
        again = _ok("push", str(tarball), proxy.host)
        assert _uploads(proxy) == []
    assert f"manifest {digest}" in again.output


def test_layers_pushed_before_are_known_by_what_they_compressed_to(
        registry, repo, far, tmp_path, monkeypatch, own_cache):
    image = ib.small_image(22)
    registry.push_image(repo, image, "v1")
    tarball = tmp_path / "image.tar"
    _ok("fetch-to-tarfile", registry.host, repo, "v1", str(tarball))
    _ok("push", str(tarball), far.host)
    digest = _get(far, repo, "v1")[1]
    layers = json.loads(_get(far, repo, "v1")[0])["layers"]
    remembered = sorted(p.name for p in own_cache.glob("occystrap/compressed/sha256/*"))
    assert remembered == sorted(d.split(":")[1] for d in image.diff_ids)

    # Again: found by the remembered digests, and no layer read or sent.
    with FaultProxy(far.url) as proxy:
        again = _ok("push", str(tarball), proxy.host)
        assert [s for s in proxy.requests("/blobs/uploads/")] == []
    assert f"0 blobs uploaded, {len(layers) + 1} already there" in again.output
    assert _get(far, repo, "v1")[1] == digest

    # Into another repository of that registry: mounted from where they went
    # (only the config, which is no layer, is sent).
    copied = _ok("push", "--prefix", "copy", str(tarball), far.host)
    assert "1 blob uploaded" in copied.output
    assert f"{len(layers)} mounted" in copied.output
    assert _get(far, f"copy/{repo}", "v1")[1] == digest
    for entry in own_cache.glob("occystrap/compressed/sha256/*"):
        (remembered,) = json.loads(entry.read_text())
        # Newest first; the push through the proxy went to another host:port.
        places = remembered["places"]
        assert places[0] == f"{far.host}/copy/{repo}" and f"{far.host}/{repo}" in places

    # Forgotten, or remembered wrong: compressed and sent again, to the same digests.
    cache = tmp_path / "other-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    wrong = cache / "occystrap" / "compressed" / "sha256"
    wrong.mkdir(parents=True)
    first, *rest = image.diff_ids
    (wrong / first.split(":")[1]).write_text(json.dumps([{
        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "digest": ib.sha256(b"not this layer"), "size": 14}]))
    for diff_id in rest:
        (wrong / diff_id.split(":")[1]).write_text("{damaged")
    with FaultProxy(far.url) as proxy:
        fresh = _ok("push", "--prefix", "fresh", str(tarball), proxy.host)
        patches = [s for s in proxy.requests("/blobs/uploads/") if s.method == "PATCH"]
        # Sent as made, in chunked encoding, without a range.
        assert patches and all("content-range" not in s.headers for s in patches)
        assert {s.headers.get("transfer-encoding") for s in patches} == {"chunked"}
    assert f"{len(layers) + 1} blobs uploaded" in fresh.output
    assert _get(far, f"fresh/{repo}", "v1")[1] == digest


def test_a_shared_directory_pushes_each_image_mounting_what_they_share(
        registry, repo, far, tmp_path):
    one, two = ib.small_image(30), ib.small_image(31)
    registry.push_image(f"{repo}/one", one, "a")
    registry.push_image(f"{repo}/two", two, "b")
    shared = tmp_path / "shared"
    for name, tag in [("one", "a"), ("two", "b")]:
        _ok("fetch-to-extracted", "--use-unique-names", registry.host, f"{repo}/{name}", tag,
            str(shared))

    with FaultProxy(far.url) as proxy:
        result = _ok("push", str(shared), proxy.host)
        mounts = [s for s in proxy.requests(r"mount=") if s.method == "POST"]
        assert [s.status for s in mounts] == [201]

    assert _config_digest(far, f"{repo}/one", "a") == one.config_digest
    assert _config_digest(far, f"{repo}/two", "b") == two.config_digest
    assert result.output.count("Pushed ") == 2


def test_prefix_and_image_choose_what_goes_where(registry, repo, far, tmp_path):
    one, two = ib.small_image(40), ib.small_image(41)
    registry.push_image(f"{repo}/one", one, "1")
    registry.push_image(f"{repo}/two", two, "2")
    bundle = tmp_path / "bundle"
    _ok("fetch-to-bundle", f"{registry.host}/{repo}/one:1", f"{registry.host}/{repo}/two:2",
        str(bundle))

    result = _ok("push", "--prefix", "mirror/team", "--image", f"{repo}/two:2", str(bundle),
                 far.host)

    assert _get(far, f"mirror/team/{repo}/two", "2")[1] == two.manifest_digest
    assert _get(far, f"mirror/team/{repo}/one", "1") is None
    assert _get(far, f"{repo}/two", "2") is None
    assert f"{far.host}/mirror/team/{repo}/two:2" in result.output

    missing = occystrap("push", "--image", f"{repo}/three:3", str(bundle), far.host)
    assert_error(missing, f"{repo}/three:3 is not in {bundle}", f"{repo}/two:2")
    bad = occystrap("push", "--prefix", "Mirror", str(bundle), far.host)
    assert_error(bad, "invalid --prefix 'Mirror'")


@pytest.mark.parametrize("name,prefix,repository,tag", [
    ("127.0.0.1:5555/shared/app:stable", None, "shared/app", "stable"),
    ("busybox:latest", None, "library/busybox", "latest"),
    ("docker.io/library/busybox:1.36", None, "library/busybox", "1.36"),
    ("quay.io/org/app:1.0", "mirror", "mirror/org/app", "1.0"),
    ("busybox:latest", "mirror/team", "mirror/team/library/busybox", "latest"),
    (f"localhost:5000/app@sha256:{'a' * 64}", None, "app", None),
    ("host:5000/app:1.0@sha256:" + "b" * 64, None, "app", "1.0"),
    (None, "untagged", "untagged", None),
])
def test_where_a_name_goes(name, prefix, repository, tag):
    from occystrap.pusher import destination
    assert destination(name, prefix, None) == (repository, tag)


def test_a_nameless_image_needs_a_prefix():
    from occystrap.errors import InvalidReference
    from occystrap.inputs.offline import SourceImage
    from occystrap.pusher import destination
    from occystrap.digest import Digest
    image = SourceImage((), None, Digest("sha256", "c" * 64), "c.json", None, None, ())
    with pytest.raises(InvalidReference, match="--prefix"):
        destination(None, None, image)


def test_a_hub_name_goes_under_library(far, tmp_path):
    # A docker-save tarball names its image as docker does: busybox:latest.
    image = ib.small_image(50)
    tarball = tmp_path / "busybox.tar"
    _write_docker_save(tarball, image, "busybox:latest")

    result = _ok("--progress", "push", str(tarball), far.host)

    assert _config_digest(far, "library/busybox", "latest") == image.config_digest
    assert f"{far.host}/library/busybox:latest" in result.output
    assert "2/2 layers" in result.stderr  # the progress display's last line


def test_an_image_without_a_name_goes_by_digest_under_the_prefix(far, tmp_path):
    image = ib.small_image(55)
    tarball = tmp_path / "untagged.tar"
    _write_docker_save(tarball, image, None)

    assert_error(occystrap("push", str(tarball), far.host), "has no name", "--prefix")
    result = _ok("push", "--prefix", "loose", str(tarball), far.host)

    (line,) = result.stderr.strip().splitlines()
    assert "by digest only" in line
    digest = line.split(f"{far.host}/loose@")[1].split()[0]
    assert _config_digest(far, "loose", digest) == image.config_digest


def test_a_docker_save_tarball_pushes_with_its_image_id(registry, repo, far, docker, tmp_path):
    image = ib.small_image(60)
    registry.push_image(repo, image, "v1")
    ours = tmp_path / "ours.tar"
    _ok("fetch-to-tarfile", registry.host, repo, "v1", str(ours))
    names, _ = docker.load(ours)
    saved = tmp_path / "saved.tar"
    docker.run("save", "--output", str(saved), names[0])

    result = _ok("push", "--prefix", "from-docker", str(saved), far.host)

    assert _config_digest(far, f"from-docker/{repo}", "v1") == image.config_digest
    assert "not the digest the image had" in result.output


CHUNK = 64 << 10


@pytest.mark.parametrize("source", ["bundle", "tarball"])
@pytest.mark.parametrize("keep_part,follow", [(True, True), (True, False)],
                         ids=["resumed-mid-chunk", "session-forgotten"])
def test_a_cut_upload_resumes_or_starts_again_from_the_source(
        registry, repo, far, tmp_path, source, keep_part, follow):
    # Random bytes do not compress: the layer stays over three chunks.
    image = ib.small_image(80, size=4 * CHUNK)
    registry.push_image(repo, image, "big")
    path = tmp_path / source
    if source == "bundle":
        _ok("fetch-to-bundle", f"{registry.host}/{repo}:big", str(path))
    else:
        _ok("fetch-to-tarfile", registry.host, repo, "big", str(path))

    with FaultProxy(far.url) as proxy:
        # With -j 1, the second PATCH of the first layer; a layer compressed
        # on the way names no range, so the count, not the range, finds it.
        proxy.add(NthPatch(2, keep_part=keep_part, follow=follow))
        proxy.add(Status(r"/manifests/", 503, methods=("PUT",), times=1))
        _ok("--retries", "3", "-j", "1", "push", "--chunk-size", "64k", str(path), proxy.host)
        statuses = [s.status for s in proxy.requests(r"/blobs/uploads/.")
                    if s.method == "GET"]
        assert statuses == ([204] if follow else [404])

    assert _config_digest(far, repo, "big") == image.config_digest
    if source == "bundle":
        assert _get(far, repo, "big")[1] == image.manifest_digest
    for layer in json.loads(_get(far, repo, "big")[0])["layers"]:
        blob = requests.get(f"{far.url}/v2/{repo}/blobs/{layer['digest']}", timeout=10)
        assert ib.sha256(blob.content) == layer["digest"]
        assert len(blob.content) == layer["size"]


def test_a_damaged_bundle_blob_is_never_committed(registry, repo, far, tmp_path):
    # The push hashes a bundle's blob once, as it reads it: the check at
    # its end must still come before the closing PUT.
    image = ib.small_image(81, size=4 * CHUNK)
    registry.push_image(repo, image, "big")
    bundle = tmp_path / "bundle"
    _ok("fetch-to-bundle", f"{registry.host}/{repo}:big", str(bundle))
    large = max(image.layers, key=lambda layer: layer.size)
    blob = bundle / "blobs" / "sha256" / large.digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-100] ^= 1
    blob.write_bytes(bytes(data))

    with FaultProxy(far.url) as proxy:
        result = occystrap("push", "--chunk-size", "64k", str(bundle), proxy.host)
        sent = [(s.method, s.status) for s in proxy.requests(r"/blobs/uploads/.")]
        committed = proxy.requests(urllib.parse.quote(large.digest))
    assert_error(result, large.digest[:19], "damaged")
    assert ("DELETE", 204) in sent
    assert not [s for s in committed if s.method == "PUT"]
    gone = requests.head(f"{far.url}/v2/{repo}/blobs/{large.digest}", timeout=10)
    assert gone.status_code == 404
    assert _get(far, repo, "big") is None


def test_a_damaged_tarball_layer_is_never_committed(registry, repo, far, tmp_path):
    # Compressed and sent as it is read: its check against the diff_id at
    # its end must still come before the closing PUT, and is not retried.
    image = ib.small_image(82, size=4 * CHUNK)
    registry.push_image(repo, image, "big")
    tarball = tmp_path / "image.tar"
    _ok("fetch-to-tarfile", registry.host, repo, "big", str(tarball))
    large = max(image.layers, key=lambda layer: layer.size)
    with tarfile.open(tarball) as archive:
        member = next(m for m in archive.getmembers()
                      if m.isfile() and m.size > 4 * CHUNK)
    with open(tarball, "r+b") as f:
        f.seek(member.offset_data + 2000)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))

    with FaultProxy(far.url) as proxy:
        result = occystrap("--retries", "3", "push", "--chunk-size", "64k", str(tarball),
                           proxy.host)
        sent = proxy.requests(r"/blobs/uploads/.")
    assert_error(result, large.diff_id[:19], "corrupt")
    assert [s for s in sent if s.method == "GET"] == []
    # Only the other layer was committed.
    (put,) = [s for s in sent if s.method == "PUT"]
    digest = urllib.parse.parse_qs(urllib.parse.urlsplit(put.path).query)["digest"][0]
    committed = requests.get(f"{far.url}/v2/{repo}/blobs/{digest}", timeout=10).content
    assert gzip.decompress(committed) != large.tar
    assert ib.sha256(gzip.decompress(committed)) in image.diff_ids
    assert _get(far, repo, "big") is None


@pytest.mark.parametrize("status,phrases", [
    (405, ["read-only or a pull-through cache"]),
    (413, ["too large", "--chunk-size"]),
    (507, ["out of space or over quota"]),
])
def test_a_refused_upload_is_one_line_naming_the_repository(far, tmp_path, status, phrases):
    tarball = tmp_path / "busybox.tar"
    _write_docker_save(tarball, ib.small_image(75), "busybox:latest")
    with FaultProxy(far.url) as proxy:
        proxy.add(Status(r"/blobs/uploads/", status, methods=("POST",)))
        result = occystrap("push", str(tarball), proxy.host)
    assert_error(result, "library/busybox", *phrases)
    assert list(Path(tempfile.gettempdir()).glob("occystrap-push-*")) == []


def test_an_unreachable_registry_is_one_line(tmp_path):
    tarball = tmp_path / "busybox.tar"
    _write_docker_save(tarball, ib.small_image(70), "busybox:latest")
    result = occystrap("push", str(tarball), "127.0.0.1:9")
    assert_error(result, "127.0.0.1:9")


def _write_docker_save(path: Path, image: ib.Image, repo_tag: str | None) -> None:
    """A docker-save tarball as docker before 25 writes it."""
    import io
    import tarfile
    config_name = f"{image.config_digest.split(':')[1]}.json"
    members = {config_name: image.config}
    layers = []
    for layer in image.layers:
        name = f"{layer.diff_id.split(':')[1]}/layer.tar"
        members[name] = layer.tar
        layers.append(name)
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": [repo_tag] if repo_tag else [],
          "Layers": layers}]).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


# --- TLS, Basic and token auth -------------------------------------------------

ALICE, ALICE_PASSWORD = "alice", "alice-Push-pw-7"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Behind TLS from a test CA: one registry with htpasswd, one in token
    mode whose token service lets alice push to team/ and anyone pull
    public/ only."""
    bcrypt = pytest.importorskip("bcrypt")
    import pki
    import tokenserver
    root = tmp_path_factory.mktemp("secured")
    ca = pki.make_ca(root / "pki")
    server = pki.issue_server_cert(ca, root / "pki", ["127.0.0.1", "localhost"])
    tls = {"http": {"tls": {"certificate": str(server.cert), "key": str(server.key)}}}
    htpasswd = root / "htpasswd"
    hashed = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{ALICE}:{hashed}\n")
    service = tokenserver.TokenServer(root / "token", server, users={ALICE: ALICE_PASSWORD},
                                      pushers={ALICE: ["team"]})
    with service.running(), \
            start_registry(root / "basic", {**tls, "auth": {"htpasswd": {
                "realm": "occystrap-test", "path": str(htpasswd)}}}) as basic, \
            start_registry(root / "tokens", {**tls, **service.registry_config()}) as tokens:
        yield {"ca": str(ca.cert), "basic": basic, "tokens": tokens}


@pytest.fixture
def no_stored_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME",
                 "OCCYSTRAP_USERNAME", "OCCYSTRAP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))


def _stored_config(registry, repository: str, tag: str, ca: str, auth=None) -> str:
    response = requests.get(f"{registry.url}/v2/{repository}/manifests/{tag}",
                            headers={"Accept": ib.ACCEPT}, verify=ca, auth=auth, timeout=10)
    response.raise_for_status()
    return json.loads(response.content)["config"]["digest"]


def test_tls_with_htpasswd(secured, no_stored_credentials, tmp_path):
    image = ib.small_image(90)
    tarball = tmp_path / "app.tar"
    _write_docker_save(tarball, image, "127.0.0.1:5555/shared/app:stable")
    basic = secured["basic"]

    wrong = occystrap("--ca-cert", secured["ca"], "--username", ALICE, "--password", "nope",
                      "push", str(tarball), basic.host)
    assert_error(wrong, ALICE)
    untrusted = occystrap("--username", ALICE, "--password", ALICE_PASSWORD,
                          "push", str(tarball), basic.host)
    assert_error(untrusted, "--ca-cert")
    _ok("--ca-cert", secured["ca"], "--username", ALICE, "--password", ALICE_PASSWORD,
        "push", str(tarball), basic.host)

    assert _stored_config(basic, "shared/app", "stable", secured["ca"],
                          (ALICE, ALICE_PASSWORD)) == image.config_digest


def test_token_auth_pushes_for_a_pusher_and_refuses_anonymous(
        secured, no_stored_credentials, tmp_path):
    image = ib.small_image(91)
    tarball = tmp_path / "app.tar"
    _write_docker_save(tarball, image, "app:1")
    tokens = secured["tokens"]

    anonymous = occystrap("--ca-cert", secured["ca"], "push", "--prefix", "team", str(tarball),
                          tokens.host)
    assert_error(anonymous, "team/library/app")
    _ok("--ca-cert", secured["ca"], "--username", ALICE, "--password", ALICE_PASSWORD,
        "push", "--prefix", "team", str(tarball), tokens.host)
    elsewhere = occystrap("--ca-cert", secured["ca"], "--username", ALICE, "--password",
                          ALICE_PASSWORD, "push", "--prefix", "public", str(tarball),
                          tokens.host)
    assert_error(elsewhere, "public/library/app")


def test_ctrl_c_says_what_a_push_leaves(far, tmp_path, monkeypatch):
    tarball = tmp_path / "busybox.tar"
    _write_docker_save(tarball, ib.small_image(76), "busybox:latest")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("occystrap.pusher._push_one", interrupted)
    result = occystrap("push", str(tarball), far.host)

    assert result.exit_code == 130
    assert "Interrupted; what was pushed stays" in result.stderr
    assert "nothing was written" not in result.stderr
