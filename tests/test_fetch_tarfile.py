"""fetch-to-tarfile against the real registry, judged by podman and skopeo."""

import json
import tarfile
from pathlib import Path

import pytest

import imagebuild as ib
from conftest import (
    assert_error, assert_verbose_error, occystrap, skopeo_inspect_archive)


def _two_layer_image(oci=False, compression="gzip", **kwargs):
    base = ib.make_layer([ib.directory("etc"), ib.file("etc/os-release",
                                                       b"ID=test\n")],
                         compression, oci=oci)
    app = ib.make_layer([ib.file("app/data", ib.random_bytes(300_000, 1),
                                 mode=0o755)], compression, oci=oci)
    return ib.make_image([base, app], oci=oci, **kwargs)


def _fetch(registry, repo, tag, out: Path, *options: str):
    result = occystrap(*options, "fetch-to-tarfile", registry.host, repo, tag,
                       str(out))
    assert result.exit_code == 0, result.output
    return result


def _assert_loads(podman, path: Path, image: ib.Image, name: str | None):
    names = podman.load(path)
    if name:
        assert names == [name]
    loaded = podman.inspect(names[0])
    assert loaded["Id"] == image.config_digest.split(":")[1]
    assert loaded["RootFS"]["Layers"] == image.diff_ids
    assert loaded["Architecture"] == image.platform.architecture


def _manifest_json(path: Path) -> list:
    with tarfile.open(path) as archive:
        return json.load(archive.extractfile("manifest.json"))


@pytest.mark.parametrize("oci, compression", [
    (False, "gzip"), (False, "none"), (True, "gzip"), (True, "none"),
    (True, "zstd"),
])
def test_loads_in_podman(registry, repo, podman, tmp_path, oci, compression):
    image = _two_layer_image(oci=oci, compression=compression)
    registry.push_image(repo, image, "v1")
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "image.tar"

    result = _fetch(registry, repo, "v1", out)

    name = f"{registry.host}/{repo}:v1"
    assert name in result.stderr
    _assert_loads(podman, out, image, name)
    inspected = skopeo_inspect_archive(out)
    assert inspected["Layers"] == image.diff_ids
    assert _manifest_json(out) == [{
        "Config": image.config_digest.split(":")[1] + ".json",
        "RepoTags": [name],
        "Layers": [d.split(":")[1] + "/layer.tar" for d in image.diff_ids],
    }]
    assert [p.name for p in out.parent.iterdir()] == ["image.tar"]


def test_single_layer_and_repeated_layer(registry, repo, podman, tmp_path):
    empty = ib.make_layer([])
    content = ib.make_layer([ib.file("hello", b"world")])
    image = ib.make_image([empty, content, empty])
    registry.push_image(repo, image, "dup")
    out = tmp_path / "dup.tar"
    _fetch(registry, repo, "dup", out)
    _assert_loads(podman, out, image, f"{registry.host}/{repo}:dup")
    with tarfile.open(out) as archive:
        names = archive.getnames()
    assert len(names) == len(set(names)), "a member was written twice"


def test_summary_counts_in_words(registry, repo, tmp_path):
    one = ib.make_image([ib.make_layer([ib.file("hello", b"world")])])
    registry.push_image(repo, one, "one")
    result = _fetch(registry, repo, "one", tmp_path / "one.tar")
    assert ", 1 layer; " in result.stderr
    registry.push_image(repo, _two_layer_image(), "two")
    result = _fetch(registry, repo, "two", tmp_path / "two.tar")
    assert ", 2 layers; " in result.stderr


@pytest.mark.parametrize("oci, attestations", [(False, False), (True, True)])
def test_every_platform_of_an_index(registry, repo, podman, tmp_path, oci,
                                    attestations):
    images = {
        "linux/amd64": _two_layer_image(oci=oci),
        "linux/arm64/v8": _two_layer_image(
            oci=oci, architecture="arm64", variant="v8"),
        "linux/arm/v7": _two_layer_image(
            oci=oci, architecture="arm", variant="v7",
            config_extra={"author": "arm"}),
    }
    index = ib.make_index(list(images.values()), oci=oci,
                          attestations=attestations)
    registry.push_index(repo, index, "multi")
    for platform, image in images.items():
        out = tmp_path / (platform.replace("/", "-") + ".tar")
        _fetch(registry, repo, "multi", out, "--platform", platform)
        _assert_loads(podman, out, image, None)
    # The default is linux/amd64, as on a typical transfer host.
    out = tmp_path / "default.tar"
    _fetch(registry, repo, "multi", out)
    assert skopeo_inspect_archive(out)["Architecture"] == "amd64"
    # --os/--architecture/--variant say the same as --platform.
    out = tmp_path / "split.tar"
    _fetch(registry, repo, "multi", out, "--architecture", "arm",
           "--variant", "v7")
    assert skopeo_inspect_archive(out)["Layers"] == \
        images["linux/arm/v7"].diff_ids


def test_pull_by_digest(registry, repo, podman, tmp_path):
    image = _two_layer_image()
    arm = _two_layer_image(architecture="arm64")
    index = ib.make_index([image, arm], oci=True)
    registry.push_index(repo, index)

    out = tmp_path / "by-manifest.tar"
    result = _fetch(registry, repo, image.manifest_digest, out)
    assert f"Saved {registry.host}/{repo}@{image.manifest_digest} " in result.stderr
    # Like docker save and crane, no tag is invented for a digest pull.
    assert _manifest_json(out)[0]["RepoTags"] == []
    _assert_loads(podman, out, image, None)

    out = tmp_path / "by-index.tar"
    _fetch(registry, repo, index.manifest_digest, out, "--platform",
           "linux/arm64")
    assert skopeo_inspect_archive(out)["Layers"] == arm.diff_ids


def test_overwrites_an_existing_tarball(registry, repo, podman, tmp_path):
    image = _two_layer_image()
    registry.push_image(repo, image, "v1")
    out = tmp_path / "image.tar"
    out.write_bytes(b"old contents")
    _fetch(registry, repo, "v1", out)
    _assert_loads(podman, out, image, f"{registry.host}/{repo}:v1")


def _fails(tmp_path: Path, *args: str, complaint: str):
    out = tmp_path / "out" / "image.tar"
    out.parent.mkdir()
    result = occystrap(*args[:-3], "fetch-to-tarfile", *args[-3:], str(out))
    message = assert_error(result, complaint)
    assert list(out.parent.iterdir()) == [], "partial output left behind"
    return message


def test_wrong_tag_lists_available_tags(registry, repo, tmp_path):
    image = _two_layer_image()
    registry.push_image(repo, image, "stable")
    registry.push_image(repo, image, "latest")
    message = _fails(tmp_path, registry.host, repo, "lastest",
                     complaint="tag 'lastest' not found")
    assert "available tags: latest, stable" in message


def test_wrong_image(registry, tmp_path):
    _fails(tmp_path, registry.host, "no/such-image", "latest",
           complaint="repository no/such-image not found")


def test_missing_platform(registry, repo, tmp_path):
    index = ib.make_index([_two_layer_image()], oci=True, attestations=True)
    registry.push_index(repo, index, "v1")
    message = _fails(tmp_path, "--platform", "linux/s390x", registry.host,
                     repo, "v1", complaint="no image for platform linux/s390x")
    assert "available: linux/amd64;" in message


def test_single_platform_image_of_another_platform(registry, repo, tmp_path):
    registry.push_image(repo, _two_layer_image(), "v1")
    _fails(tmp_path, "--platform", "linux/arm64", registry.host, repo, "v1",
           complaint="single-platform image for linux/amd64")


@pytest.mark.parametrize("registry_name, image, tag, complaint", [
    ("127.0.0.1:1", "app", "v1", "cannot reach"),
    ("nosuchhost.invalid", "app", "v1", "cannot resolve registry host"),
])
def test_bad_input(registry, tmp_path, registry_name, image, tag, complaint):
    _fails(tmp_path, registry_name.format(registry=registry.host), image, tag,
           complaint=complaint)


@pytest.mark.parametrize("image, tag, complaint", [
    ("Bad/Name", "v1", "invalid image name"),
    ("app", "bad tag", "invalid tag"),
    ("app", "sha256:1234", "invalid digest"),
])
def test_malformed_names_are_a_wrong_command_line(registry, tmp_path, image,
                                                  tag, complaint):
    out = tmp_path / "out" / "image.tar"
    out.parent.mkdir()
    result = occystrap("fetch-to-tarfile", registry.host, image, tag,
                       str(out))
    assert result.exit_code == 2, result.output
    assert complaint in result.stderr
    assert list(out.parent.iterdir()) == []


def test_verbose_shows_traceback(registry, tmp_path):
    result = occystrap("--verbose", "fetch-to-tarfile", registry.host,
                       "no/such", "v1", str(tmp_path / "x.tar"))
    assert_verbose_error(result, "repository no/such not found")


def test_python_dash_m(registry, repo, tmp_path):
    import subprocess
    import sys
    registry.push_image(repo, _two_layer_image(), "v1")
    out = tmp_path / "m.tar"
    done = subprocess.run(
        [sys.executable, "-m", "occystrap", "fetch-to-tarfile", registry.host,
         repo, "v1", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert tarfile.is_tarfile(out)


def test_multi_member_gzip_layer(registry, repo, podman, tmp_path):
    """gzip's size trailer then describes only the last member."""
    import gzip
    tar = ib.tar_bytes([ib.file("big", ib.random_bytes(400_000, 3)),
                        ib.file("small", b"x" * 10)])
    blob = gzip.compress(tar[:300_000]) + gzip.compress(tar[300_000:])
    layer = ib.Layer(tar, blob, ib.DOCKER_LAYER_GZIP, ib.sha256(blob),
                     ib.sha256(tar), len(blob))
    image = ib.make_image([layer, ib.make_layer([ib.file("z", b"z")])])
    registry.push_image(repo, image, "v1")
    out = tmp_path / "multi.tar"
    _fetch(registry, repo, "v1", out)
    _assert_loads(podman, out, image, f"{registry.host}/{repo}:v1")
    with tarfile.open(out) as archive:
        stored = archive.extractfile(
            f"{layer.diff_id.split(':')[1]}/layer.tar").read()
    assert stored == tar
