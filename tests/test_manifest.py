"""Manifest and index parsing, validation and platform choice."""

import json

import pytest

from occystrap.errors import ManifestError, PlatformNotFound
from occystrap.manifest import (
    DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, ImageIndex, ImageManifest,
    Platform, parse_config, parse_manifest)

D1, D2, D3, D4 = (f"sha256:{c * 64}" for c in "1234")


def _entry(digest, os, arch, variant=None, annotations=None):
    platform = {"os": os, "architecture": arch}
    if variant:
        platform["variant"] = variant
    entry = {"mediaType": DOCKER_MANIFEST, "digest": digest, "size": 10,
             "platform": platform}
    if annotations:
        entry["annotations"] = annotations
    return entry


INDEX = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        _entry(D1, "linux", "amd64"),
        _entry(D2, "linux", "arm", "v6"),
        _entry(D3, "linux", "arm64", "v8"),
        _entry(D4, "unknown", "unknown", annotations={
            "vnd.docker.reference.type": "attestation-manifest"}),
    ]}).encode()


@pytest.mark.parametrize("wanted, digest", [
    ("linux/amd64", D1), ("linux/arm/v6", D2), ("linux/arm64", D3),
    ("linux/arm64/v8", D3),
])
def test_select_platform(wanted, digest):
    index = parse_manifest(INDEX, None)
    assert isinstance(index, ImageIndex)
    assert str(index.select(Platform.parse(wanted)).digest) == digest


def test_missing_platform_lists_what_is_available():
    index = parse_manifest(INDEX, None)
    with pytest.raises(PlatformNotFound) as caught:
        index.select(Platform.parse("linux/s390x"))
    message = str(caught.value)
    assert "linux/amd64, linux/arm/v6, linux/arm64/v8" in message
    assert "unknown" not in message


def _manifest(**changes):
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType":
                      "application/vnd.docker.container.image.v1+json",
                      "digest": D1, "size": 5},
           "layers": [{"mediaType":
                       "application/vnd.docker.image.rootfs.diff.tar.gzip",
                       "digest": D2, "size": 7}]}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_parse_image_manifest():
    parsed = parse_manifest(_manifest(), DOCKER_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert str(parsed.config.digest) == D1
    assert [str(layer.digest) for layer in parsed.layers] == [D2]


@pytest.mark.parametrize("data, complaint", [
    (b"{not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (_manifest(config=None), "no config"),
    (_manifest(manifests=[], mediaType=None), "both 'layers' and"),
    (_manifest(schemaVersion=1), "schema 1"),
    (_manifest(mediaType="application/x-unknown"), "unsupported manifest"),
    (_manifest(layers=[{"mediaType": "text/plain", "digest": D2,
                        "size": 1}]), "unsupported media type"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer."
                        "v1.tar", "digest": "sha256:../../etc",
                        "size": 1}]), "invalid digest"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer."
                        "v1.tar", "digest": D2, "size": -1}]), "size"),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST}).encode(),
     "no 'manifests'"),
])
def test_malformed_manifests_are_refused(data, complaint):
    with pytest.raises(ManifestError, match=complaint):
        parse_manifest(data, DOCKER_MANIFEST)


def test_config_diff_ids():
    config = parse_config(json.dumps({
        "os": "linux", "architecture": "arm64", "variant": "v8",
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]}}).encode())
    assert config.platform == Platform("linux", "arm64", "v8")
    assert [str(d) for d in config.diff_ids] == [D1, D2]
    with pytest.raises(ManifestError, match="diff_ids"):
        parse_config(b'{"rootfs": {}}')
