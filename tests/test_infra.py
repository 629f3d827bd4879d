"""The test infrastructure itself: image builder, real registry, podman, skopeo, umoci."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import conftest
import imagebuild as ib
import pytest
import requests
import zstandard
from conftest import Podman, Registry

# --- pure image building -----------------------------------------------------


def _members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {member.name: member for member in archive}


def test_tar_bytes_builds_every_entry_type_deterministically() -> None:
    def entries() -> list[ib.Entry]:
        return [
            ib.directory("etc", mode=0o700),
            ib.file("etc/passwd", b"root:x:0:0\n", mode=0o600, uid=1, gid=2),
            ib.symlink("etc/link", "passwd"),
            ib.hardlink("etc/hard", "etc/passwd"),
            ib.fifo("run/pipe"),
            ib.whiteout("etc/shadow"),
            ib.whiteout("top"),
            ib.opaque("var/"),
        ]

    tar = ib.tar_bytes(entries())

    assert tar == ib.tar_bytes(entries())
    members = _members(tar)
    assert list(members) == [
        "etc", "etc/passwd", "etc/link", "etc/hard", "run/pipe",
        "etc/.wh.shadow", ".wh.top", "var/.wh..wh..opq",
    ]
    assert members["etc"].isdir() and members["etc"].mode == 0o700
    passwd = members["etc/passwd"]
    assert (passwd.mode, passwd.uid, passwd.gid, passwd.mtime) == (0o600, 1, 2, ib.DEFAULT_MTIME)
    assert members["etc/link"].issym() and members["etc/link"].linkname == "passwd"
    assert members["etc/hard"].islnk() and members["etc/hard"].linkname == "etc/passwd"
    assert members["run/pipe"].isfifo()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        assert archive.extractfile("etc/passwd").read() == b"root:x:0:0\n"


def _decompress(blob: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(blob)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


@pytest.mark.parametrize(
    ("oci", "compression", "media_type"),
    [
        (False, "gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        (False, "none", "application/vnd.docker.image.rootfs.diff.tar"),
        (True, "gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        (True, "zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        (True, "none", "application/vnd.oci.image.layer.v1.tar"),
    ],
)
def test_make_layer(oci: bool, compression: ib.Compression, media_type: str) -> None:
    tar = ib.tar_bytes([ib.file("data", ib.random_bytes(5000, compression))])

    layer = ib.make_layer(tar, compression, oci=oci)

    assert layer.media_type == media_type
    assert layer.tar == tar
    assert _decompress(layer.blob, compression) == tar
    assert layer.digest == ib.sha256(layer.blob)
    assert layer.diff_id == ib.sha256(tar)
    assert layer.size == len(layer.blob)
    assert (layer.digest == layer.diff_id) == (compression == "none")


def test_docker_media_types_have_no_zstd() -> None:
    with pytest.raises(ValueError, match="zstd"):
        ib.make_layer([ib.file("a")], "zstd", oci=False)


def test_random_bytes_is_deterministic_per_seed() -> None:
    assert ib.random_bytes(64, 1) == ib.random_bytes(64, 1) != ib.random_bytes(64, 2)
    assert len(ib.random_bytes(1000, "x")) == 1000


@pytest.mark.parametrize("oci", [False, True])
def test_make_image_config_and_manifest(oci: bool) -> None:
    layers = [ib.make_layer([ib.file("a", b"1")], oci=oci), ib.make_layer([ib.file("b")], oci=oci)]

    image = ib.make_image(
        layers, oci=oci, architecture="arm", variant="v7", config_extra={"author": "me"},
    )

    config = json.loads(image.config)
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm", "v7")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    assert len(config["history"]) == 2
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert config["author"] == "me"
    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == image.manifest_media_type
    assert image.manifest_media_type == (ib.OCI_MANIFEST if oci else ib.DOCKER_MANIFEST)
    assert manifest["config"] == {
        "mediaType": ib.OCI_CONFIG if oci else ib.DOCKER_CONFIG,
        "digest": image.config_digest,
        "size": len(image.config),
    }
    assert [(d["digest"], d["size"]) for d in manifest["layers"]] == [
        (layer.digest, layer.size) for layer in layers
    ]
    assert image.manifest_digest == ib.sha256(image.manifest)
    assert image.platform == ib.Platform("linux", "arm", "v7")


def test_make_index_with_attestations_like_buildkit() -> None:
    layer = ib.make_layer([ib.file("a")], oci=True)
    amd64 = ib.make_image([layer], oci=True)
    arm64 = ib.make_image([layer], oci=True, architecture="arm64", variant="v8")

    index = ib.make_index([amd64, arm64], oci=True, attestations=True)

    document = json.loads(index.manifest)
    assert document["mediaType"] == ib.OCI_INDEX == index.manifest_media_type
    entries = document["manifests"]
    assert [e["platform"] for e in entries] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "unknown", "os": "unknown"},
        {"architecture": "unknown", "os": "unknown"},
    ]
    assert [e["digest"] for e in entries] == [c.manifest_digest for c in index.children]
    assert [e["annotations"]["vnd.docker.reference.digest"] for e in entries[2:]] == [
        amd64.manifest_digest, arm64.manifest_digest,
    ]
    assert {e["annotations"]["vnd.docker.reference.type"] for e in entries[2:]} == {
        "attestation-manifest",
    }
    statement = json.loads(index.attestations[0].layers[0].blob)
    assert statement["subject"][0]["digest"]["sha256"] == amd64.manifest_digest.split(":")[1]


def test_docker_manifest_list_cannot_carry_attestations() -> None:
    image = ib.make_image([ib.make_layer([ib.file("a")])])
    with pytest.raises(ValueError, match="OCI"):
        ib.make_index([image], attestations=True)


# --- tool helpers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("required", "outcome"), [(False, pytest.skip.Exception), (True, pytest.fail.Exception)],
)
def test_need_tool_skips_or_fails(
    monkeypatch: pytest.MonkeyPatch, required: bool, outcome: type[BaseException],
) -> None:
    monkeypatch.setattr(conftest, "REQUIRE_INTEGRATION", required)
    with pytest.raises(outcome, match="no-such-tool-here is not installed"):
        conftest.need_tool("no-such-tool-here")


def test_need_tool_finds_installed_tools() -> None:
    assert conftest.need_tool("sh").endswith("/sh")


# --- the real registry -------------------------------------------------------


def _skopeo_json(ref: str, *flags: str) -> dict:
    return conftest.skopeo_inspect(f"docker://{ref}", "--tls-verify=false", *flags)


def _skopeo_raw(ref: str, *flags: str) -> bytes:
    return conftest.skopeo_inspect_raw(f"docker://{ref}", "--tls-verify=false", *flags)


def _get_manifest(registry: Registry, repo: str, reference: str, accept: str) -> requests.Response:
    return requests.get(
        f"{registry.url}/v2/{repo}/manifests/{reference}", headers={"Accept": accept}, timeout=10,
    )


def _assert_served(registry: Registry, repo: str, tag: str, image: ib.Image) -> None:
    """skopeo sees exactly our manifest, config and layers, by tag and by digest."""
    ref = registry.reference(repo, tag)
    assert _skopeo_raw(ref) == image.manifest
    assert _skopeo_raw(ref, "--config") == image.config
    seen = _skopeo_json(ref)
    assert seen["Digest"] == image.manifest_digest
    assert seen["Layers"] == [layer.digest for layer in image.layers]
    assert (seen["Os"], seen["Architecture"]) == (image.platform.os, image.platform.architecture)
    by_digest = _get_manifest(registry, repo, image.manifest_digest, image.manifest_media_type)
    assert by_digest.status_code == 200
    assert by_digest.content == image.manifest
    assert by_digest.headers["Content-Type"] == image.manifest_media_type
    assert by_digest.headers["Docker-Content-Digest"] == image.manifest_digest
    for layer in image.layers:
        blob = requests.get(f"{registry.url}/v2/{repo}/blobs/{layer.digest}", timeout=10)
        assert blob.content == layer.blob


def _diff_ids_after_skopeo_decompresses(
    registry: Registry, repo: str, tag: str, tmp_path: Path,
) -> list[str]:
    """Proves the served blobs decode to our tars: skopeo's own decompressor renames them."""
    # dir:, not docker-archive: skopeo 1.9 refuses to put zstd layers in a docker-archive.
    copy = tmp_path / "decompressed"
    conftest.skopeo_copy(
        f"docker://{registry.reference(repo, tag)}", f"dir:{copy}",
        "--src-tls-verify=false", "--dest-decompress",
    )
    manifest = json.loads((copy / "manifest.json").read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]


def test_registry_answers_v2(registry: Registry) -> None:
    response = requests.get(f"{registry.url}/v2/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.host == registry.url.removeprefix("http://")
    assert registry.storage.is_dir()


def test_push_two_layer_docker_image(registry: Registry, repo: str) -> None:
    image = ib.make_image([
        ib.make_layer([ib.directory("etc"), ib.file("etc/a", b"a")]),
        ib.make_layer([ib.file("big", ib.random_bytes(100_000, 1))]),
    ])

    assert registry.push_image(repo, image, "v1") == image.manifest_digest

    _assert_served(registry, repo, "v1", image)
    assert _skopeo_json(registry.reference(repo, "v1"))["Env"] == image.config_json["config"]["Env"]


def test_push_oci_image_with_zstd_layer(registry: Registry, repo: str, tmp_path: Path) -> None:
    image = ib.make_image(
        [ib.make_layer([ib.file("z", ib.random_bytes(3000, 2))], "zstd", oci=True)], oci=True,
    )

    registry.push_image(repo, image, "zstd")

    _assert_served(registry, repo, "zstd", image)
    assert _diff_ids_after_skopeo_decompresses(registry, repo, "zstd", tmp_path) == image.diff_ids


@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
def test_push_uncompressed_layer_image(
    registry: Registry, repo: str, oci: bool, tmp_path: Path,
) -> None:
    image = ib.make_image([ib.make_layer([ib.file("plain", b"text")], "none", oci=oci)], oci=oci)

    registry.push_image(repo, image, "plain")

    _assert_served(registry, repo, "plain", image)
    assert image.layers[0].digest == image.layers[0].diff_id
    assert _diff_ids_after_skopeo_decompresses(registry, repo, "plain", tmp_path) == image.diff_ids


def test_push_by_digest_only(registry: Registry, repo: str) -> None:
    image = ib.make_image([ib.make_layer([ib.file("a", b"untagged")])])

    registry.push_image(repo, image)

    response = _get_manifest(registry, repo, image.manifest_digest, image.manifest_media_type)
    assert response.content == image.manifest
    # distribution 2.8 answers 404 for the tag list of a repository with no tags.
    tags = requests.get(f"{registry.url}/v2/{repo}/tags/list", timeout=10)
    assert tags.status_code == 404
    assert tags.json()["errors"][0]["code"] == "NAME_UNKNOWN"


@pytest.mark.parametrize(
    ("oci", "attestations"), [(False, False), (True, False), (True, True)],
    ids=["docker-list", "oci-index", "oci-index-attested"],
)
def test_push_two_platform_index(
    registry: Registry, repo: str, oci: bool, attestations: bool,
) -> None:
    def layer(name: str) -> ib.Layer:
        return ib.make_layer([ib.file(name, name.encode())], oci=oci)

    amd64 = ib.make_image([layer("amd64")], oci=oci)
    arm64 = ib.make_image([layer("arm64")], oci=oci, architecture="arm64", variant="v8")
    index = ib.make_index([amd64, arm64], oci=oci, attestations=attestations)

    assert registry.push_index(repo, index, "multi") == index.manifest_digest

    ref = registry.reference(repo, "multi")
    assert _skopeo_raw(ref) == index.manifest
    assert _skopeo_json(ref)["Digest"] == index.manifest_digest
    for image in (amd64, arm64):
        platform = ["--override-arch", image.platform.architecture]
        platform += ["--override-variant", image.platform.variant or ""]
        assert _skopeo_raw(ref, *platform, "--config") == image.config
        assert _skopeo_json(ref, *platform)["Layers"] == [layer.digest for layer in image.layers]
    by_digest = _get_manifest(registry, repo, index.manifest_digest, index.manifest_media_type)
    assert by_digest.content == index.manifest
    assert by_digest.headers["Content-Type"] == index.manifest_media_type
    for child in index.children:
        _assert_served(registry, repo, child.manifest_digest, child)
    assert len(index.attestations) == (2 if attestations else 0)


# What distribution 2.8 does, so client code is tested against the real behaviour.


def test_registry_rewrites_docker_manifest_to_schema1_without_accept(
    registry: Registry, repo: str,
) -> None:
    image = ib.make_image([ib.make_layer([ib.file("a", b"s1")])])
    registry.push_image(repo, image, "v1")

    response = requests.get(f"{registry.url}/v2/{repo}/manifests/v1", timeout=10)

    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    assert response.headers["Content-Type"] == schema1
    assert response.json()["schemaVersion"] == 1


def test_registry_hides_oci_manifest_unless_accepted(registry: Registry, repo: str) -> None:
    image = ib.make_image([ib.make_layer([ib.file("a", b"oci")], oci=True)], oci=True)
    registry.push_image(repo, image, "v1")

    refused = _get_manifest(registry, repo, "v1", ib.DOCKER_MANIFEST)
    accepted = _get_manifest(registry, repo, "v1", f"{ib.DOCKER_MANIFEST}, {ib.OCI_MANIFEST}")

    assert refused.status_code == 404
    assert refused.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert accepted.content == image.manifest


def test_registry_serves_platform_manifest_when_list_not_accepted(
    registry: Registry, repo: str,
) -> None:
    amd64 = ib.make_image([ib.make_layer([ib.file("x", b"amd64")])])
    arm64 = ib.make_image([ib.make_layer([ib.file("x", b"arm64")])], architecture="arm64")
    registry.push_index(repo, ib.make_index([arm64, amd64]), "multi")

    response = _get_manifest(registry, repo, "multi", ib.DOCKER_MANIFEST)

    assert response.content == amd64.manifest


def test_push_error_carries_registry_message(registry: Registry, repo: str) -> None:
    image = ib.make_image([ib.make_layer([ib.file("never-pushed")])])

    with pytest.raises(ib.PushError, match="MANIFEST_BLOB_UNKNOWN"):
        ib.push_manifest(registry.url, repo, image.manifest, image.manifest_media_type, "v1")
    with pytest.raises(ib.PushError, match="MANIFEST_INVALID"):
        ib.push_manifest(registry.url, repo, image.manifest, ib.OCI_MANIFEST, "v1")


# --- start_registry variants -------------------------------------------------


def test_start_registry_reports_bad_config(tmp_path: Path) -> None:
    # Two storage drivers: distribution refuses to start.
    broken = conftest.start_registry(tmp_path, {"storage": {"inmemory": {}}})
    with pytest.raises(conftest.ToolError, match="registry exited"), broken:
        pass


def test_start_registry_with_auth_over_shared_storage(
    registry: Registry, repo: str, tmp_path: Path,
) -> None:
    image = ib.make_image([ib.make_layer([ib.file("a", b"shared")])])
    registry.push_image(repo, image, "v1")
    # distribution's "silly" auth demands any Authorization header: enough to
    # prove auth configs start and that pushes can carry credentials.
    silly = {"auth": {"silly": {"realm": "http://127.0.0.1/token", "service": "test"}}}

    with conftest.start_registry(tmp_path, silly, storage=registry.storage) as guarded:
        anonymous = _get_manifest(guarded, repo, "v1", image.manifest_media_type)
        session = requests.Session()
        session.headers["Authorization"] = "Bearer anything"
        served = session.get(
            f"{guarded.url}/v2/{repo}/manifests/v1",
            headers={"Accept": image.manifest_media_type}, timeout=10,
        )
        other = ib.make_image([ib.make_layer([ib.file("b", b"via auth")])])
        pushed = guarded.push_image(repo, other, "v2", session=session)

    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith('Bearer realm="http://127.0.0.1/token"')
    assert served.content == image.manifest
    assert pushed == other.manifest_digest


def test_start_registry_with_tls(tmp_path: Path) -> None:
    cert, key = conftest.self_signed_certificate(tmp_path)
    tls = {"http": {"tls": {"certificate": str(cert), "key": str(key)}}}

    with conftest.start_registry(tmp_path / "registry", tls) as secure:
        response = requests.get(f"{secure.url}/v2/", verify=str(cert), timeout=10)

    assert secure.url.startswith("https://127.0.0.1:")
    assert response.status_code == 200


# --- podman, skopeo archives, umoci ------------------------------------------


def _two_layer_image_with_whiteouts() -> ib.Image:
    lower = ib.make_layer([
        ib.directory("etc"), ib.file("etc/keep", b"keep"), ib.file("etc/gone", b"gone"),
        ib.directory("var"), ib.file("var/old", b"old"),
    ])
    upper = ib.make_layer([
        ib.whiteout("etc/gone"), ib.opaque("var"), ib.file("var/new", b"new"),
        ib.symlink("etc/link", "keep"), ib.hardlink("etc/hard", "etc/keep"),
    ])
    return ib.make_image([lower, upper])


def _docker_archive(registry: Registry, repo: str, tag: str, path: Path) -> Path:
    ref = registry.reference(repo, tag)
    conftest.skopeo_copy(
        f"docker://{ref}", f"docker-archive:{path}:{ref}", "--src-tls-verify=false",
    )
    return path


def test_podman_loads_docker_archive(
    registry: Registry, repo: str, podman: Podman, tmp_path: Path,
) -> None:
    image = _two_layer_image_with_whiteouts()
    registry.push_image(repo, image, "v1")
    archive = _docker_archive(registry, repo, "v1", tmp_path / "image.tar")

    names = podman.load(archive)

    assert names == [registry.reference(repo, "v1")]
    loaded = podman.inspect(names[0])
    assert loaded["Id"] == image.config_digest.removeprefix("sha256:")
    assert loaded["RootFS"]["Layers"] == image.diff_ids
    assert loaded["RepoTags"] == names


def test_podman_store_is_isolated(podman: Podman, tmp_path: Path) -> None:
    assert json.loads(podman.run("images", "--format", "json")) == []
    assert (podman.root / "storage").is_dir()


def test_skopeo_inspects_docker_archive(registry: Registry, repo: str, tmp_path: Path) -> None:
    image = _two_layer_image_with_whiteouts()
    registry.push_image(repo, image, "v1")
    archive = _docker_archive(registry, repo, "v1", tmp_path / "image.tar")

    summary = conftest.skopeo_inspect_archive(archive)
    raw = conftest.skopeo_inspect_archive(archive, raw=True)
    config = conftest.skopeo_inspect_config_archive(archive)

    # A docker-archive holds uncompressed layers, so skopeo lists diff_ids.
    assert summary["Layers"] == image.diff_ids
    assert raw["config"]["digest"] == image.config_digest
    assert config == image.config_json


def test_umoci_unpacks_layout_applying_whiteouts(
    registry: Registry, repo: str, tmp_path: Path,
) -> None:
    image = _two_layer_image_with_whiteouts()
    registry.push_image(repo, image, "v1")
    layout = tmp_path / "layout"
    conftest.skopeo_copy(
        f"docker://{registry.reference(repo, 'v1')}", f"oci:{layout}:v1", "--src-tls-verify=false",
    )

    rootfs = conftest.umoci_unpack(layout, "v1", tmp_path / "bundle")

    found = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    assert found == ["etc", "etc/hard", "etc/keep", "etc/link", "var", "var/new"]
    assert (rootfs / "etc/keep").read_bytes() == b"keep"
    assert (rootfs / "etc/link").readlink() == Path("keep")
    assert (rootfs / "etc/hard").stat().st_ino == (rootfs / "etc/keep").stat().st_ino
