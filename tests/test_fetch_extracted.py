"""fetch-to-extracted, shared directories and recreate-image, for real."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests

import imagebuild as ib
from conftest import assert_error, occystrap


def ok(*args: str):
    result = occystrap(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def blob_requests(monkeypatch):
    """Every blob URL occystrap asks the registry for, in order."""
    seen: list[str] = []
    real = requests.Session.request

    def counting(self, method, url, *args, **kwargs):
        if "/blobs/" in url:
            seen.append(url.rsplit("/", 1)[1])
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", counting)
    return seen


def _layer(name: str, size: int = 50_000):
    return ib.make_layer([ib.file(name, ib.random_bytes(size, name))])


BASE = [_layer("base/one"), _layer("base/two")]


def _family(registry, repo):
    """Three tags sharing two base layers, each with a layer of its own."""
    images = {}
    for tag in ("latest", "stable", "2021.3"):
        images[tag] = ib.make_image([*BASE, _layer(f"app/{tag}")],
                                    config_extra={"author": tag})
        registry.push_image(repo, images[tag], tag)
    return images


def _layer_dirs(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if (p / "layer.tar").exists()}


def test_plain_directory_tars_into_a_loadable_image(registry, repo, podman,
                                                    tmp_path):
    image = ib.make_image([*BASE, _layer("app/x")])
    registry.push_image(repo, image, "v1")
    target = tmp_path / "extracted"
    ok("fetch-to-extracted", registry.host, repo, "v1", str(target))
    ok("fetch-to-tarfile", registry.host, repo, "v1",
       str(tmp_path / "direct.tar"))

    # The seed's promise: cd DIR; tar -cf ../x.tar *
    subprocess.run("tar -cf ../x.tar *", shell=True, cwd=target, check=True)
    name = f"{registry.host}/{repo}:v1"
    assert podman.load(tmp_path / "x.tar") == [name]
    loaded = podman.inspect(name)
    assert loaded["Id"] == image.config_digest.split(":")[1]
    assert loaded["RootFS"]["Layers"] == image.diff_ids

    with tarfile.open(tmp_path / "direct.tar") as direct:
        members = {m.name for m in direct.getmembers() if m.isfile()}
        manifest = direct.extractfile("manifest.json").read()
    on_disk = {str(p.relative_to(target)) for p in target.rglob("*")
               if p.is_file()}
    assert on_disk == members
    assert (target / "manifest.json").read_bytes() == manifest


def test_plain_directory_refuses_a_second_image(registry, repo, tmp_path):
    first = ib.make_image([_layer("one")])
    second = ib.make_image([_layer("two")])
    registry.push_image(repo, first, "first")
    registry.push_image(repo, second, "second")
    target = tmp_path / "single"
    ok("fetch-to-extracted", registry.host, repo, "first", str(target))
    before = sorted(p.name for p in target.iterdir())

    result = occystrap("fetch-to-extracted", registry.host, repo, "second",
                       str(target))
    assert_error(result, f"already holds {registry.host}/{repo}:first",
                 "--use-unique-names")
    assert sorted(p.name for p in target.iterdir()) == before
    # The same image again is fine, and downloads nothing it has.
    again = ok("fetch-to-extracted", registry.host, repo, "first",
               str(target))
    assert "1 already present" in again.stderr


def test_three_images_share_one_directory(registry, repo, podman, tmp_path,
                                          blob_requests):
    images = _family(registry, repo)
    merged = tmp_path / "merged_images"
    fetched_blobs = []
    for tag in images:
        blob_requests.clear()
        ok("fetch-to-extracted", "--use-unique-names", registry.host, repo,
           tag, str(merged))
        fetched_blobs.append(list(blob_requests))

    own = {tag: img.layers[2].digest.split(":")[1]
           for tag, img in images.items()}
    configs = {tag: img.config_digest.split(":")[1]
               for tag, img in images.items()}
    assert sorted(fetched_blobs[0]) == sorted(
        [f"sha256:{d.digest.split(':')[1]}" for d in images["latest"].layers]
        + [f"sha256:{configs['latest']}"])
    for blobs, tag in zip(fetched_blobs[1:], ["stable", "2021.3"]):
        # Only the config and the image's own layer cross the network.
        assert sorted(blobs) == sorted([f"sha256:{own[tag]}",
                                        f"sha256:{configs[tag]}"])

    assert len(_layer_dirs(merged)) == 5
    flat = repo.replace("/", "_")
    catalog = json.loads((merged / "catalog.json").read_text())
    assert catalog == {repo: {tag: f"manifest-{flat}-{tag}.json"
                              for tag in images}}
    assert not (merged / "manifest.json").exists()

    for tag, image in images.items():
        out = tmp_path / f"{tag}.tar"
        ok("recreate-image", str(merged), repo, tag, str(out))
        name = f"{registry.host}/{repo}:{tag}"
        assert podman.load(out) == [name]
        loaded = podman.inspect(name)
        assert loaded["Id"] == configs[tag]
        assert loaded["RootFS"]["Layers"] == image.diff_ids


def test_fetching_a_tag_again_replaces_its_entry(registry, repo, tmp_path):
    merged = tmp_path / "m"
    registry.push_image(repo, ib.make_image([_layer("v1")]), "moving")
    ok("fetch-to-extracted", "--use-unique-names", registry.host, repo,
       "moving", str(merged))
    newer = ib.make_image([_layer("v2")])
    registry.push_image(repo, newer, "moving")
    ok("fetch-to-extracted", "--use-unique-names", registry.host, repo,
       "moving", str(merged))
    catalog = json.loads((merged / "catalog.json").read_text())
    assert list(catalog[repo]) == ["moving"]
    manifest = json.loads((merged / catalog[repo]["moving"]).read_text())
    assert manifest[0]["Config"] == newer.config_digest.split(":")[1] + ".json"


def test_damaged_layer_is_refetched(registry, repo, tmp_path, blob_requests):
    image = ib.make_image([*BASE])
    registry.push_image(repo, image, "v1")
    merged = tmp_path / "m"
    ok("fetch-to-extracted", "--use-unique-names", registry.host, repo, "v1",
       str(merged))
    damaged = merged / image.diff_ids[1].split(":")[1] / "layer.tar"
    with open(damaged, "r+b") as f:
        f.truncate(1000)  # what a crash mid-copy could leave

    blob_requests.clear()
    ok("fetch-to-extracted", "--use-unique-names", registry.host, repo, "v1",
       str(merged))
    assert f"sha256:{image.layers[1].digest.split(':')[1]}" in blob_requests
    assert f"sha256:{image.layers[0].digest.split(':')[1]}" \
        not in blob_requests
    assert ib.sha256(damaged.read_bytes()) == image.diff_ids[1]


def test_recreate_refuses_a_damaged_store(registry, repo, tmp_path):
    image = ib.make_image([*BASE])
    registry.push_image(repo, image, "v1")
    merged = tmp_path / "m"
    ok("fetch-to-extracted", "--use-unique-names", registry.host, repo, "v1",
       str(merged))
    damaged = merged / image.diff_ids[0].split(":")[1] / "layer.tar"
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out" / "x.tar"
    out.parent.mkdir()

    result = occystrap("recreate-image", str(merged), repo, "v1", str(out))
    message = assert_error(result, str(damaged))
    assert message.startswith("Error: digest mismatch for layer 1 ")
    assert list(out.parent.iterdir()) == []

    damaged.unlink()
    result = occystrap("recreate-image", str(merged), repo, "v1", str(out))
    assert_error(result, "is missing; fetch the image again")
    assert list(out.parent.iterdir()) == []


def test_recreate_from_a_plain_directory(registry, repo, podman, tmp_path):
    image = ib.make_image([*BASE])
    registry.push_image(repo, image, "v1")
    plain = tmp_path / "plain"
    ok("fetch-to-extracted", registry.host, repo, "v1", str(plain))
    ok("recreate-image", str(plain), repo, "v1", str(tmp_path / "p.tar"))
    assert podman.load(tmp_path / "p.tar") == [f"{registry.host}/{repo}:v1"]


@pytest.mark.parametrize("setup, image, complaint", [
    ("merged", "other/image", "other/image:v1 is not in"),
    ("plain", "other/image", "not other/image:v1"),
    ("empty", "x/y", "is not an occystrap directory"),
    ("missing", "x/y", "is not a directory"),
])
def test_recreate_errors(registry, repo, tmp_path, setup, image, complaint):
    registry.push_image(repo, ib.make_image([_layer("e")]), "v1")
    store = tmp_path / "store"
    if setup == "merged":
        ok("fetch-to-extracted", "--use-unique-names", registry.host, repo,
           "v1", str(store))
    elif setup == "plain":
        ok("fetch-to-extracted", registry.host, repo, "v1", str(store))
    elif setup == "empty":
        store.mkdir()
    result = occystrap("recreate-image", str(store), image, "v1",
                       str(tmp_path / "x.tar"))
    message = assert_error(result, complaint)
    if setup == "merged":
        assert f"it holds {repo}: v1" in message
    assert not (tmp_path / "x.tar").exists()


def test_failed_fetch_leaves_no_directory(registry, repo, tmp_path):
    registry.push_image(repo, ib.make_image([_layer("f")]), "v1")
    for flags in ([], ["--use-unique-names"]):
        target = tmp_path / f"new{len(flags)}"
        result = occystrap("fetch-to-extracted", *flags, registry.host, repo,
                           "nope", str(target))
        assert_error(result, "tag 'nope' not found")
        assert list(tmp_path.iterdir()) == []


def test_failed_fetch_keeps_an_existing_store_intact(registry, repo,
                                                     tmp_path):
    good = ib.make_image([*BASE])
    registry.push_image(repo, good, "good")
    merged = tmp_path / "m"
    ok("fetch-to-extracted", "--use-unique-names", registry.host, repo,
       "good", str(merged))
    snapshot = {p: p.read_bytes() for p in merged.rglob("*") if p.is_file()}
    # A layer the registry lies about: its blob does not match its digest.
    # Uncompressed, so the blob digest (not gzip's own CRC) catches it.
    bad_layer = ib.make_layer([ib.file("bad", ib.random_bytes(5000))],
                              "none")
    bad = ib.make_image([*BASE, bad_layer])
    registry.push_image(repo, bad, "bad")
    blob = (registry.storage / "docker/registry/v2/blobs/sha256"
            / bad_layer.digest[7:9] / bad_layer.digest[7:] / "data")
    corrupt = bytearray(blob.read_bytes())
    corrupt[-20] ^= 0xFF
    blob.write_bytes(bytes(corrupt))

    result = occystrap("fetch-to-extracted", "--use-unique-names",
                       registry.host, repo, "bad", str(merged))
    assert_error(result, "digest mismatch")
    after = {p: p.read_bytes() for p in merged.rglob("*") if p.is_file()}
    assert after == snapshot
    assert not any(p.name.endswith(".tmp") for p in merged.rglob("*"))


def test_concurrent_fetches_into_one_directory(registry, repo, tmp_path):
    images = _family(registry, repo)
    merged = tmp_path / "shared"
    env = {**os.environ, "OCCYSTRAP_RETRY_DELAY": "0"}
    runs = [subprocess.Popen(
        [sys.executable, "-m", "occystrap", "fetch-to-extracted",
         "--use-unique-names", registry.host, repo, tag, str(merged)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for tag in images]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
    catalog = json.loads((merged / "catalog.json").read_text())
    assert sorted(catalog[repo]) == sorted(images)
    for tag in images:
        ok("recreate-image", str(merged), repo, tag,
           str(tmp_path / f"{tag}.tar"))
    assert len(_layer_dirs(merged)) == 5
