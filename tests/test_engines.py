"""Outputs judged by a real Docker engine and a real containerd."""

import json
import subprocess
import tarfile

import pytest
import requests

import imagebuild as ib
from conftest import ToolError, occystrap


def _ok(*args: str):
    result = occystrap(*args)
    assert result.exit_code == 0, result.output
    return result


def _id(image: ib.Image) -> str:
    return image.config_digest


def test_tarfile_and_recreated_image_load_in_docker_and_containerd(
        registry, repo, docker, containerd, tmp_path):
    image = ib.small_image(1)
    registry.push_image(repo, image, "v1")
    tar = tmp_path / "app.tar"
    _ok("fetch-to-tarfile", registry.host, repo, "v1", str(tar))
    name = f"{registry.host}/{repo}:v1"
    assert docker.load(tar)[0] == [name]
    assert docker.inspect(name)["Id"] == _id(image)
    assert name in containerd.import_(tar)

    shared = tmp_path / "shared"
    _ok("fetch-to-extracted", "--use-unique-names", registry.host, repo, "v1", str(shared))
    again = tmp_path / "again.tar"
    _ok("recreate-image", str(shared), repo, "v1", str(again))
    docker.remove_all()
    containerd.remove_all()
    assert docker.load(again)[0] == [name]
    assert docker.inspect(name)["Id"] == _id(image)
    assert name in containerd.import_(again)


def _registry_digest(registry, repo: str, tag: str) -> str:
    response = requests.head(
        f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=10, headers={"Accept": ", ".join([
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json"])})
    return response.headers["Docker-Content-Digest"]


@pytest.fixture
def pushed(registry, repo):
    """Docker and OCI manifests, gzip and plain layers, a zstd image, an
    index with attestations, a pin by digest and a tag pinned by digest."""
    docker_gzip, oci_plain = ib.small_image(2), ib.small_image(3, "none", oci=True)
    zstd = ib.small_image(4, "zstd", oci=True)
    amd = ib.small_image(5, oci=True)
    arm = ib.small_image(6, oci=True, architecture="arm64", variant="v8")
    index = ib.make_index([amd, arm], oci=True, attestations=True)
    registry.push_image(f"{repo}/docker", docker_gzip, "1.0")
    registry.push_image(f"{repo}/oci", oci_plain, "2.0")
    registry.push_image(f"{repo}/zstd", zstd, "3.0")
    registry.push_index(f"{repo}/multi", index, "4.0")
    pinned = registry.push_image(f"{repo}/pinned", ib.small_image(7), "gone")
    named = registry.push_image(f"{repo}/named", ib.small_image(8), "5.0")
    host = registry.host
    return {
        "references": [
            f"{host}/{repo}/docker:1.0", f"{host}/{repo}/oci:2.0", f"{host}/{repo}/zstd:3.0",
            f"{host}/{repo}/multi:4.0", f"{host}/{repo}/pinned@{pinned}",
            f"{host}/{repo}/named:5.0@{named}",
        ],
        "ids": {
            f"{host}/{repo}/docker:1.0": _id(docker_gzip),
            f"{host}/{repo}/oci:2.0": _id(oci_plain),
            f"{host}/{repo}/multi:4.0": _id(amd),
            f"{host}/{repo}/named:5.0": _id(ib.small_image(8)),
        },
        "pinned": (f"{host}/{repo}/pinned@{pinned}", _id(ib.small_image(7))),
        "zstd": f"{host}/{repo}/zstd:3.0",
    }


def test_a_bundle_loads_in_containerd_with_every_registry_digest(
        registry, repo, pushed, containerd, tmp_path):
    bundle = tmp_path / "bundle"
    images = tmp_path / "images.txt"
    images.write_text("# release\n\n" + "\n".join(pushed["references"][3:]) + "\n")
    _ok("fetch-to-bundle", "--all-platforms", "--images-from", str(images),
        *pushed["references"][:3], str(bundle))
    tar = tmp_path / "bundle.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(bundle), "."], check=True)
    held = containerd.import_(tar, "--all-platforms")
    host = registry.host
    expected = {
        f"{host}/{repo}/docker:1.0": _registry_digest(registry, f"{repo}/docker", "1.0"),
        f"{host}/{repo}/oci:2.0": _registry_digest(registry, f"{repo}/oci", "2.0"),
        f"{host}/{repo}/zstd:3.0": _registry_digest(registry, f"{repo}/zstd", "3.0"),
        f"{host}/{repo}/multi:4.0": _registry_digest(registry, f"{repo}/multi", "4.0"),
        pushed["pinned"][0]: pushed["pinned"][0].split("@")[1],
        f"{host}/{repo}/named:5.0": _registry_digest(registry, f"{repo}/named", "5.0"),
    }
    assert held == expected


def test_a_bundle_loads_in_docker_with_every_name(registry, repo, pushed, docker, tmp_path):
    bundle = tmp_path / "bundle"
    # Docker 20.10 cannot inflate zstd layers; newer engines can.
    references = [r for r in pushed["references"] if r != pushed["zstd"]]
    _ok("fetch-to-bundle", *references, str(bundle))
    tar = tmp_path / "bundle.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(bundle), "."], check=True)
    names, _ = docker.load(tar)
    assert sorted(names) == sorted(pushed["ids"])
    for name, image_id in pushed["ids"].items():
        assert docker.inspect(name)["Id"] == image_id
    # Pulled by digest alone: docker has no name for it, only its ID.
    assert docker.inspect(pushed["pinned"][1])["RepoTags"] == []
    with tarfile.open(tar) as archive:
        entries = json.load(archive.extractfile("./manifest.json"))
    assert [] in [entry["RepoTags"] for entry in entries]


def test_a_digest_pull_arrives_named_in_containerd(registry, repo, docker, containerd,
                                                   tmp_path):
    """containerd makes no image of an untagged docker-save entry: the
    tarball carries REPO@sha256:… in an OCI index.json for it."""
    image = ib.small_image(9)
    digest = registry.push_image(repo, image)
    tar = tmp_path / "pinned.tar"
    result = _ok("fetch-to-tarfile", registry.host, repo, digest, str(tar))
    held = containerd.import_(tar)
    assert list(held) == [f"{registry.host}/{repo}@{digest}"]
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("Note:")]
    assert "docker load leaves it untagged" in note
    assert f"docker tag {image.config_digest.split(':')[1][:12]} {registry.host}/{repo}:TAG" \
        in note
    names, ids = docker.load(tar)
    assert (names, ids) == ([], [image.config_digest])
    assert docker.inspect(image.config_digest)["RepoTags"] == []
    # occystrap reads its own output back.
    _ok("verify", str(tar))


@pytest.mark.parametrize("command", ["fetch-to-tarfile", "fetch-to-extracted"])
def test_tag_at_digest_names_by_tag_and_pins_by_digest(
        registry, repo, docker, containerd, tmp_path, command):
    image, newer = ib.small_image(10), ib.small_image(11)
    digest = registry.push_image(repo, image, "v1")
    registry.push_image(repo, newer, "v1")  # the tag moved on; the digest did not
    out = tmp_path / "out"
    _ok(command, registry.host, repo, f"v1@{digest}", str(out))
    tar = out
    if command == "fetch-to-extracted":
        tar = tmp_path / "out.tar"
        subprocess.run(["tar", "-cf", str(tar), "-C", str(out), "."], check=True)
    name = f"{registry.host}/{repo}:v1"
    assert docker.load(tar)[0] == [name]
    assert docker.inspect(name)["Id"] == _id(image)
    assert name in containerd.import_(tar)


def test_containerd_filters_other_platforms_unless_asked(registry, repo, docker, containerd,
                                                         tmp_path):
    """What the README's troubleshooting says: docker loads any platform;
    ctr images import keeps only the native platform by default, and takes
    others with --platform or --all-platforms (as k3s does)."""
    arm = ib.small_image(12, architecture="arm64", variant="v8")
    registry.push_image(repo, arm, "arm")
    tar = tmp_path / "arm.tar"
    _ok("fetch-to-tarfile", registry.host, repo, "arm", str(tar))
    name = f"{registry.host}/{repo}:arm"
    assert docker.load(tar)[0] == [name]
    assert docker.inspect(name)["Architecture"] == "arm64"
    with pytest.raises(ToolError, match="image might be filtered out"):
        containerd.import_(tar)
    assert name not in containerd.images()
    assert name in containerd.import_(tar, "--platform", "linux/arm64/v8")
    containerd.remove_all()
    assert name in containerd.import_(tar, "--all-platforms")


def test_an_expanded_directory_loads_only_through_recreate_image(
        registry, repo, docker, containerd, tmp_path):
    image = ib.make_image([
        ib.make_layer([ib.directory("etc"), ib.file("etc/a", b"a")]),
        ib.make_layer([ib.symlink("etc/link-to-a", "a")]),
    ])
    registry.push_image(repo, image, "v1")
    expanded = tmp_path / "expanded"
    result = _ok("fetch-to-extracted", "--expand", registry.host, repo, "v1", str(expanded))
    hint = f"occystrap recreate-image {expanded} {repo} v1 IMAGE.tar"
    assert hint in result.stderr
    tarred = tmp_path / "tarred.tar"
    subprocess.run(["tar", "-cf", str(tarred), "-C", str(expanded), "."], check=True)
    with pytest.raises(ToolError, match="no target for symlink"):
        containerd.import_(tarred)
    again = tmp_path / "again.tar"
    _ok("recreate-image", str(expanded), repo, "v1", str(again))
    name = f"{registry.host}/{repo}:v1"
    assert name in containerd.import_(again)
    assert docker.load(again)[0] == [name]


def test_a_shared_directory_loads_only_through_recreate_image(
        registry, repo, docker, tmp_path):
    registry.push_image(repo, ib.small_image(13), "v1")
    shared = tmp_path / "shared"
    _ok("fetch-to-extracted", "--use-unique-names", registry.host, repo, "v1", str(shared))
    tarred = tmp_path / "tarred.tar"
    subprocess.run(["tar", "-cf", str(tarred), "-C", str(shared), "."], check=True)
    # No manifest.json: docker 20.10 falls back to the legacy format, and fails.
    with pytest.raises(ToolError, match="repositories: no such file"):
        docker.load(tarred)
    again = tmp_path / "again.tar"
    _ok("recreate-image", str(shared), repo, "v1", str(again))
    assert docker.load(again)[0] == [f"{registry.host}/{repo}:v1"]


def test_help_names_the_way_out_of_expanded_and_shared_directories():
    help_text = " ".join(_ok("fetch-to-extracted", "--help").output.split())
    assert "A tar of a shared (--use-unique-names) or --expand directory does not load" \
        in help_text
    assert "occystrap recreate-image DIR IMAGE TAG image.tar" in help_text
