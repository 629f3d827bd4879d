"""recreate-image from a bundle: one image out as a docker-save tarball."""

import json
import tarfile

import imagebuild as ib
from conftest import assert_error, occystrap


def _image(seed: int) -> ib.Image:
    layer = ib.make_layer([ib.file("data", ib.random_bytes(50_000, seed))], "gzip")
    base = ib.make_layer([ib.directory("etc"), ib.file("etc/os", b"ID=t\n")], "none")
    return ib.make_image([base, layer])


def test_recreate_one_image_from_a_bundle(registry, repo, podman, tmp_path):
    one, two = _image(1), _image(2)
    registry.push_image(repo, one, "one")
    registry.push_image(repo, two, "two")
    bundle = tmp_path / "bundle"
    result = occystrap("fetch-to-bundle", f"{registry.host}/{repo}:one",
                       f"{registry.host}/{repo}:two", str(bundle))
    assert result.exit_code == 0, result.output
    out = tmp_path / "two.tar"
    result = occystrap("recreate-image", str(bundle), f"{registry.host}/{repo}", "two",
                       str(out))
    assert result.exit_code == 0, result.output
    with tarfile.open(out) as archive:
        (entry,) = json.load(archive.extractfile("manifest.json"))
    assert entry["RepoTags"] == [f"{registry.host}/{repo}:two"]
    assert entry["Config"] == two.config_digest.split(":")[1] + ".json"
    (name,) = podman.load(out)
    loaded = podman.inspect(name)
    assert loaded["Id"] == two.config_digest.split(":")[1]
    assert loaded["RootFS"]["Layers"] == two.diff_ids


def test_recreate_refuses_a_damaged_bundle_blob(registry, repo, tmp_path):
    image = _image(3)
    registry.push_image(repo, image, "v1")
    bundle = tmp_path / "bundle"
    assert occystrap("fetch-to-bundle", f"{registry.host}/{repo}:v1",
                     str(bundle)).exit_code == 0
    layer = image.layers[1].digest.split(":")[1]
    blob = bundle / "blobs" / "sha256" / layer
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    out = tmp_path / "x.tar"
    result = occystrap("recreate-image", str(bundle), f"{registry.host}/{repo}", "v1",
                       str(out))
    assert_error(result, "digest mismatch", layer)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_recreate_names_what_a_bundle_holds(registry, repo, tmp_path):
    image = _image(4)
    registry.push_image(repo, image, "v1")
    bundle = tmp_path / "bundle"
    assert occystrap("fetch-to-bundle", f"{registry.host}/{repo}:v1",
                     str(bundle)).exit_code == 0
    result = occystrap("recreate-image", str(bundle), f"{registry.host}/{repo}", "v2",
                       str(tmp_path / "x.tar"))
    assert_error(result, f"{registry.host}/{repo}:v1",
                 f"{registry.host}/{repo}:v2 is not in {bundle}")


def test_recreate_from_a_tar_of_a_bundle_picks_the_platform(registry, repo, tmp_path):
    amd = ib.make_image([ib.make_layer([ib.file("a", b"amd")], "gzip", oci=True)], oci=True)
    arm = ib.make_image([ib.make_layer([ib.file("a", b"arm")], "gzip", oci=True)], oci=True,
                        architecture="arm64", variant="v8")
    registry.push_index(repo, ib.make_index([amd, arm], oci=True), "multi")
    bundle = tmp_path / "bundle"
    assert occystrap("--platform", "linux/arm64", "fetch-to-bundle", "--all-platforms",
                     f"{registry.host}/{repo}:multi", str(bundle)).exit_code == 0
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle, arcname=".")
    for platform, image in (("linux/amd64", amd), ("linux/arm64", arm)):
        out = tmp_path / f"{platform.replace('/', '-')}.tar"
        result = occystrap("--platform", platform, "recreate-image", str(archive),
                           f"{registry.host}/{repo}", "multi", str(out))
        assert result.exit_code == 0, result.output
        with tarfile.open(out) as saved:
            (entry,) = json.load(saved.extractfile("manifest.json"))
        assert entry["Config"] == image.config_digest.split(":")[1] + ".json"
