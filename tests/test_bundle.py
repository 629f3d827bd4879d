"""fetch-to-bundle against the real registry, judged by podman and skopeo.

Docker and containerd loading is in test_engines.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

import imagebuild as ib
from occystrap.digest import Digest
from occystrap.manifest import Descriptor, Platform
from occystrap.outputs.bundle import BundleWriter
from conftest import assert_error, occystrap, skopeo_inspect, skopeo_inspect_raw
from faultproxy import FaultProxy, Rewrite, Status, Trickle, corrupt


def _ok(*args: str, input: str | None = None):
    result = occystrap(*args, input=input)
    assert result.exit_code == 0, result.output
    return result


def _registry_manifest(registry, repo: str, reference: str) -> tuple[bytes, str]:
    response = requests.get(f"{registry.url}/v2/{repo}/manifests/{reference}",
                            headers={"Accept": ib.ACCEPT}, timeout=10)
    response.raise_for_status()
    return response.content, response.headers["Docker-Content-Digest"]


def _index(bundle: Path) -> list[dict]:
    return json.loads((bundle / "index.json").read_text())["manifests"]


def _blobs_hash_to_their_names(bundle: Path) -> None:
    blobs = bundle / "blobs" / "sha256"
    for blob in blobs.iterdir():
        assert not blob.name.startswith("."), f"left behind: {blob.name}"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


@pytest.fixture(scope="module")
def six(registry, tmp_path_factory):
    """Six images fetched into one bundle, named every way a list names them.

    Docker and OCI manifests, gzip and plain layers, a zstd image, a
    multi-platform index with attestations, a pin by digest alone and a tag
    pinned by digest; from arguments, a list file and standard input.
    """
    repo = "test-bundle/six"
    docker_gzip, oci_plain = ib.small_image(1), ib.small_image(2, "none", oci=True)
    zstd = ib.small_image(3, "zstd", oci=True)
    amd = ib.small_image(4, oci=True)
    arm = ib.small_image(5, oci=True, architecture="arm64", variant="v8")
    index = ib.make_index([amd, arm], oci=True, attestations=True)
    registry.push_image(f"{repo}/docker", docker_gzip, "1.0")
    registry.push_image(f"{repo}/oci", oci_plain, "2.0")
    registry.push_image(f"{repo}/zstd", zstd, "3.0")
    registry.push_index(f"{repo}/multi", index, "4.0")
    pinned = registry.push_image(f"{repo}/pinned", ib.small_image(6), "x")
    named = registry.push_image(f"{repo}/named", ib.small_image(7), "5.0")
    host = registry.host
    work = tmp_path_factory.mktemp("six")
    listed = work / "images.txt"
    listed.write_text(f"# our release\n\n{host}/{repo}/zstd:3.0  # zstd\n"
                      f"{host}/{repo}/multi:4.0\n")
    bundle = work / "bundle"
    result = _ok("fetch-to-bundle", "--images-from", str(listed), "--images-from", "-",
                 f"{host}/{repo}/docker:1.0", f"{host}/{repo}/oci:2.0", str(bundle),
                 input=f"\n# pinned\n{host}/{repo}/pinned@{pinned}\n"
                       f"{host}/{repo}/named:5.0@{named}\n")
    assert "6 images saved" in result.output
    tar = work / "bundle.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(bundle), "."], check=True)
    # name -> (repository, what to ask the registry for, the image docker loads)
    images = {
        f"{host}/{repo}/docker:1.0": (f"{repo}/docker", "1.0", docker_gzip),
        f"{host}/{repo}/oci:2.0": (f"{repo}/oci", "2.0", oci_plain),
        f"{host}/{repo}/zstd:3.0": (f"{repo}/zstd", "3.0", zstd),
        f"{host}/{repo}/multi:4.0": (f"{repo}/multi", amd.manifest_digest, amd),
        f"{host}/{repo}/pinned@{pinned}": (f"{repo}/pinned", pinned, ib.small_image(6)),
        f"{host}/{repo}/named:5.0": (f"{repo}/named", "5.0", ib.small_image(7)),
    }
    return {"bundle": bundle, "tar": tar, "images": images, "index": index}


def test_a_list_lands_with_every_registry_digest(six, registry):
    bundle = six["bundle"]
    entries = {e["annotations"]["io.containerd.image.name"]: e for e in _index(bundle)}
    assert sorted(entries) == sorted(six["images"])
    docker_side = {tuple(e["RepoTags"]): e
                   for e in json.loads((bundle / "manifest.json").read_text())}
    assert sorted(docker_side) == sorted(
        [()] + [(name,) for name in six["images"] if "@" not in name])
    for name, (repository, asked, _) in six["images"].items():
        data, digest = _registry_manifest(registry, repository, asked)
        entry = entries[name]
        assert entry["digest"] == digest, name
        assert entry["size"] == len(data)
        assert (bundle / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == data
        tag = name.rsplit(":", 1)[1] if "@" not in name else None
        assert entry["annotations"].get("org.opencontainers.image.ref.name") == tag, name
        # manifest.json points docker at the very config and layers the
        # registry's manifest names, in its order.
        manifest = json.loads(data)
        loads = docker_side[(name,) if tag else ()]
        assert loads["Config"] == "blobs/sha256/" + manifest["config"]["digest"][7:]
        assert loads["Layers"] == ["blobs/sha256/" + layer["digest"][7:]
                                   for layer in manifest["layers"]]
    # Without --all-platforms, the index's linux/amd64 manifest, as served.
    multi = entries[[n for n in entries if "/multi:" in n][0]]
    assert multi["platform"] == {"architecture": "amd64", "os": "linux"}
    assert not (bundle / "blobs" / "sha256" / six["index"].manifest_digest[7:]).exists()
    _blobs_hash_to_their_names(bundle)
    assert _ok("verify", str(bundle)).exit_code == 0


def test_the_tar_loads_in_podman_with_every_name(six, podman):
    names = podman.load(six["tar"])
    pinned = [n for n in six["images"] if "@" in n]
    tagged = [n for n in six["images"] if "@" not in n]
    assert sorted(n for n in names if not n.startswith("sha256:")) == sorted(tagged)
    for name in tagged:
        image = six["images"][name][2]
        assert podman.inspect(name)["Id"] == image.config_digest[7:], name
    # Pulled by digest alone: loaded, by its ID, without a name.
    (untagged,) = [n for n in names if n.startswith("sha256:")]
    assert untagged == six["images"][pinned[0]][2].config_digest
    assert podman.inspect(untagged[7:])["RepoTags"] == []


def test_skopeo_reads_the_directory_and_its_tar(six, registry):
    bundle, tar = six["bundle"], six["tar"]
    for name, (repository, asked, image) in six["images"].items():
        if image.manifest_media_type != "application/vnd.oci.image.manifest.v1+json":
            # skopeo's oci: transport looks only at OCI-typed entries of
            # index.json; docker-typed images are read through manifest.json.
            if "@" not in name:
                # (which it reports by diff_id: it sees the layers as tars)
                seen = skopeo_inspect(f"docker-archive:{tar}:{name}")
                assert seen["Layers"] == [layer.diff_id for layer in image.layers], name
            continue
        tag = name.rsplit(":", 1)[1]
        _, digest = _registry_manifest(registry, repository, asked)
        for where in (f"oci:{bundle}:{tag}", f"oci-archive:{tar}:{tag}"):
            assert skopeo_inspect(where)["Digest"] == digest, where


def test_all_platforms_keeps_the_index_byte_for_byte(registry, repo, podman, tmp_path):
    amd = ib.small_image(10, oci=True)
    arm = ib.small_image(11, oci=True, architecture="arm64", variant="v8")
    index = ib.make_index([amd, arm], oci=True, attestations=True)
    registry.push_index(repo, index, "v1")
    bundle = tmp_path / "bundle"
    name = f"{registry.host}/{repo}:v1"
    _ok("fetch-to-bundle", "--all-platforms", name, str(bundle))
    (entry,) = _index(bundle)
    assert entry["digest"] == index.manifest_digest and "platform" not in entry
    blobs = bundle / "blobs" / "sha256"
    assert (blobs / index.manifest_digest.split(":")[1]).read_bytes() == index.manifest
    for child in index.children:  # both platforms and their attestations
        for digest, data in child.blobs():
            assert (blobs / digest.split(":")[1]).read_bytes() == data
    # docker load reads manifest.json: it gets the --platform image.
    (docker_entry,) = json.loads((bundle / "manifest.json").read_text())
    assert docker_entry["Config"] == f"blobs/sha256/{amd.config_digest.split(':')[1]}"
    assert docker_entry["RepoTags"] == [name]
    _blobs_hash_to_their_names(bundle)
    assert skopeo_inspect_raw(f"oci:{bundle}:v1") == index.manifest
    assert skopeo_inspect(f"oci:{bundle}:v1", "--override-arch", "arm64")["Digest"] == \
        index.manifest_digest
    tar = tmp_path / "bundle.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(bundle), "."], check=True)
    assert podman.load(tar) == [name]
    assert podman.inspect(name)["Id"] == amd.config_digest.split(":")[1]


def test_a_rerun_for_another_platform_or_all_platforms_is_not_skipped(
        registry, repo, tmp_path):
    amd = ib.small_image(12, oci=True)
    arm = ib.small_image(13, oci=True, architecture="arm64", variant="v8")
    index = ib.make_index([amd, arm], oci=True)
    registry.push_index(repo, index, "v1")
    bundle = tmp_path / "bundle"
    name = f"{registry.host}/{repo}:v1"
    _ok("fetch-to-bundle", name, str(bundle))
    assert [e["digest"] for e in _index(bundle)] == [amd.manifest_digest]
    _ok("--platform", "linux/arm64", "fetch-to-bundle", name, str(bundle))
    assert [e["digest"] for e in _index(bundle)] == [arm.manifest_digest]
    _ok("fetch-to-bundle", "--all-platforms", name, str(bundle))
    assert [e["digest"] for e in _index(bundle)] == [index.manifest_digest]
    # The whole index holds every platform: a later plain run keeps it.
    assert "1 already present" in _ok("fetch-to-bundle", name, str(bundle)).output
    assert [e["digest"] for e in _index(bundle)] == [index.manifest_digest]


def test_a_rerun_adds_skips_what_is_unchanged_and_replaces_a_moved_tag(registry, repo,
                                                                       tmp_path):
    one, two, other = ib.small_image(20), ib.small_image(21), ib.small_image(22, oci=True)
    registry.push_image(repo, one, "v1")
    registry.push_image(repo, other, "v2")
    bundle = tmp_path / "bundle"
    with FaultProxy(registry.url) as proxy:
        name, added = f"{proxy.host}/{repo}:v1", f"{proxy.host}/{repo}:v2"
        _ok("fetch-to-bundle", name, str(bundle))
        index_before = (bundle / "index.json").read_bytes()
        before = len(proxy.requests())
        result = _ok("fetch-to-bundle", name, str(bundle))
        assert "0 images saved, 1 already present, 0 new blobs" in result.output
        rerun = proxy.requests()[before:]
        assert [(r.method, r.path) for r in rerun if "/manifests/" in r.path] == [
            ("HEAD", f"/v2/{repo}/manifests/v1")]
        assert not [r for r in rerun if "/blobs/" in r.path]
        assert (bundle / "index.json").read_bytes() == index_before

        before = len(proxy.requests())
        result = _ok("fetch-to-bundle", name, added, str(bundle))
        assert "1 image saved, 1 already present" in result.output
        assert [r.method for r in proxy.requests()[before:]
                if f"{repo}/manifests/v1" in r.path] == ["HEAD"]
        assert [e["annotations"]["io.containerd.image.name"] for e in _index(bundle)] == [
            name, added]

        registry.push_image(repo, two, "v1")
        _ok("fetch-to-bundle", name, str(bundle))
    entries = {e["annotations"]["io.containerd.image.name"]: e["digest"]
               for e in _index(bundle)}
    assert entries == {name: two.manifest_digest, added: other.manifest_digest}
    assert [e["RepoTags"] for e in json.loads((bundle / "manifest.json").read_text())] == [
        [added], [name]]
    # The old image's blobs stay: nothing is ever deleted.
    assert (bundle / "blobs" / "sha256" / one.manifest_digest.split(":")[1]).exists()
    _blobs_hash_to_their_names(bundle)


def test_a_tag_pinned_by_digest_keeps_the_pinned_image(registry, repo, tmp_path):
    old, new = ib.small_image(23), ib.small_image(24)
    pinned = registry.push_image(repo, old, "v1")
    registry.push_image(repo, new, "v1")
    bundle = tmp_path / "bundle"
    name = f"{registry.host}/{repo}:v1"
    _ok("fetch-to-bundle", f"{name}@{pinned}", str(bundle))
    (entry,) = _index(bundle)
    assert entry["digest"] == pinned == old.manifest_digest
    assert entry["annotations"]["io.containerd.image.name"] == name
    # Then named by the tag alone: the tag has moved, so the entry follows it.
    _ok("fetch-to-bundle", name, str(bundle))
    assert [e["digest"] for e in _index(bundle)] == [new.manifest_digest]


def _partial(bundle: Path) -> Path | None:
    blobs = bundle / "blobs" / "sha256"
    found = [p for p in blobs.glob(".*.partial") if p.stat().st_size] if blobs.exists() else []
    return found[0] if found else None


def test_a_killed_run_resumes_from_the_byte_it_reached(registry, repo, tmp_path):
    image = ib.small_image(30, "none", size=3_000_000)
    registry.push_image(repo, image, "v1")
    big = image.layers[1].digest
    bundle = tmp_path / "bundle"
    with FaultProxy(registry.url) as proxy:
        proxy.add(Trickle(f"/blobs/{big}", piece=64 << 10, interval=0.05, times=1))
        run = subprocess.Popen(
            [sys.executable, "-m", "occystrap", "fetch-to-bundle",
             f"{proxy.host}/{repo}:v1", str(bundle)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "NO_PROXY": "*"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partial = _partial(bundle)
            if partial is not None and partial.stat().st_size > 256 << 10:
                break
            time.sleep(0.05)
        else:
            run.kill()
            pytest.fail("the partial blob never grew")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        kept = partial.stat().st_size
        assert 0 < kept < len(image.layers[1].blob)
        assert [e for e in _index(bundle)] == []

        before = len(proxy.requests())
        _ok("fetch-to-bundle", f"{proxy.host}/{repo}:v1", str(bundle))
        rerun = [r for r in proxy.requests()[before:] if big in r.path and r.method == "GET"]
        assert [r.headers.get("range") for r in rerun] == [f"bytes={kept}-"]
        assert rerun[0].status == 206 and rerun[0].sent == len(image.layers[1].blob) - kept
    (entry,) = _index(bundle)
    assert entry["digest"] == image.manifest_digest
    _blobs_hash_to_their_names(bundle)


def _seed(registry, repo: str) -> str:
    """An image that makes the bundle exist before the one a test is about."""
    registry.push_image(repo, ib.small_image(99), "seed")
    return f"{registry.host}/{repo}:seed"


def _blob_path(bundle: Path, digest: str, partial: bool = False) -> Path:
    hexpart = digest.split(":")[1]
    return bundle / "blobs" / "sha256" / (f".{hexpart}.partial" if partial else hexpart)


def test_a_whole_partial_left_before_its_rename_is_not_fetched_again(registry, repo,
                                                                     tmp_path):
    image = ib.small_image(31)
    registry.push_image(repo, image, "v1")
    bundle = tmp_path / "bundle"
    layer = image.layers[1]
    _ok("fetch-to-bundle", _seed(registry, repo), str(bundle))
    # As if killed after the last byte, before the rename.
    _blob_path(bundle, layer.digest, partial=True).write_bytes(layer.blob)
    with FaultProxy(registry.url) as proxy:
        before = len(proxy.requests())
        _ok("fetch-to-bundle", f"{proxy.host}/{repo}:v1", str(bundle))
        assert not [r for r in proxy.requests()[before:] if layer.digest in r.path]
    assert _blob_path(bundle, layer.digest).read_bytes() == layer.blob
    assert [e["digest"] for e in _index(bundle)][1:] == [image.manifest_digest]
    _blobs_hash_to_their_names(bundle)


def test_a_damaged_partial_is_discarded_and_fetched_afresh(registry, repo, tmp_path):
    image = ib.small_image(32, size=200_000)
    registry.push_image(repo, image, "v1")
    bundle = tmp_path / "bundle"
    layer = image.layers[1]
    _ok("fetch-to-bundle", _seed(registry, repo), str(bundle))
    index_before = (bundle / "index.json").read_bytes()
    # A partial whose kept bytes are wrong (a disk that lost them).
    _blob_path(bundle, layer.digest, partial=True).write_bytes(b"\0" * 1000)
    with FaultProxy(registry.url) as proxy:
        result = occystrap("fetch-to-bundle", f"{proxy.host}/{repo}:v1", str(bundle))
        assert_error(result, "digest mismatch", layer.digest.split(":")[1][:12])
        assert not list((bundle / "blobs" / "sha256").glob(".*"))
        assert (bundle / "index.json").read_bytes() == index_before
        before = len(proxy.requests())
        _ok("fetch-to-bundle", f"{proxy.host}/{repo}:v1", str(bundle))
        assert [r.headers.get("range") for r in proxy.requests()[before:]
                if layer.digest in r.path and r.method == "GET"] == [None]
    assert [e["digest"] for e in _index(bundle)][1:] == [image.manifest_digest]
    _blobs_hash_to_their_names(bundle)


def test_two_runs_at_once_fetch_a_shared_blob_once(registry, repo, tmp_path):
    one, two = ib.small_image(40, "none", size=2_000_000), None
    registry.push_image(repo, one, "a")
    two = ib.make_image([one.layers[1], ib.make_layer([ib.file("b", b"b")], "gzip")])
    registry.push_image(repo, two, "b")
    shared = one.layers[1].digest
    # Not made beforehand: both runs start by making it.
    bundle = tmp_path / "bundle"
    with FaultProxy(registry.url) as proxy:
        proxy.add(Trickle(f"/blobs/{shared}", piece=128 << 10, interval=0.02))
        runs = [subprocess.Popen(
            [sys.executable, "-m", "occystrap", "fetch-to-bundle",
             f"{proxy.host}/{repo}:{tag}", str(bundle)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in ("a", "b")]
        for run in runs:
            _, err = run.communicate(timeout=60)
            assert run.returncode == 0, err.decode()
        downloads = [r for r in proxy.requests(f"/blobs/{shared}") if r.method == "GET"]
    assert len(downloads) == 1 and downloads[0].sent == len(one.layers[1].blob)
    assert sorted(e["digest"] for e in _index(bundle)) == sorted(
        [one.manifest_digest, two.manifest_digest])
    _blobs_hash_to_their_names(bundle)
    assert _ok("verify", str(bundle)).exit_code == 0


def _open_at_once(path: Path, count: int) -> list[BaseException]:
    """Open `count` writers on one directory at the same moment; close each."""
    barrier = threading.Barrier(count)
    failures: list[BaseException] = []

    def run() -> None:
        writer = BundleWriter(path, Platform())
        barrier.wait()
        try:
            writer.open()
            writer.close()
        except BaseException as e:  # reported below, with the round
            failures.append(e)
    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_runs_making_one_new_bundle_at_once_all_succeed(tmp_path):
    # Making the directory raced: a run could find it half made and refuse
    # it as "not a bundle". Each round races four runs to make it.
    for round in range(30):
        path = tmp_path / f"bundle{round}"
        failures = _open_at_once(path, 4)
        assert not failures, f"round {round}: {failures}"


def test_a_run_removing_its_empty_new_bundle_spares_another_using_it(tmp_path):
    path = tmp_path / "bundle"
    maker, other = BundleWriter(path, Platform()), BundleWriter(path, Platform())
    maker.open()
    other.open()
    maker.abort()  # failed before any byte: would remove what it made
    assert (path / "index.json").is_file()
    other.put_blob(_descriptor(b"kept"), iter([b"kept"]))
    other.close()
    assert _blob_path(path, str(Digest.of(b"kept"))).read_bytes() == b"kept"


def _descriptor(data: bytes) -> Descriptor:
    return Descriptor("application/octet-stream", Digest.of(data), len(data))


def test_a_corrupt_blob_keeps_the_earlier_bundle(registry, repo, tmp_path):
    good, bad = ib.small_image(50), ib.small_image(51)
    registry.push_image(repo, good, "good")
    registry.push_image(repo, bad, "bad")
    bundle = tmp_path / "bundle"
    with FaultProxy(registry.url) as proxy:
        _ok("fetch-to-bundle", f"{proxy.host}/{repo}:good", str(bundle))
        index_before = (bundle / "index.json").read_bytes()
        proxy.add(Rewrite(f"/blobs/{bad.layers[1].digest}", corrupt(10)))
        result = occystrap("fetch-to-bundle", f"{proxy.host}/{repo}:bad", str(bundle))
    assert_error(result, "digest mismatch", bad.layers[1].digest.split(":")[1][:12])
    assert (bundle / "index.json").read_bytes() == index_before
    assert not _blob_path(bundle, bad.layers[1].digest).exists()
    assert not list((bundle / "blobs" / "sha256").glob(".*"))
    _blobs_hash_to_their_names(bundle)


def test_a_bad_line_names_the_file_and_line_before_any_request(registry, repo, tmp_path):
    listed = tmp_path / "images.txt"
    listed.write_text(f"{registry.host}/{repo}:v1\n\nBad/Name:1\n")
    with FaultProxy(registry.url) as proxy:
        result = occystrap("fetch-to-bundle", "--images-from", str(listed),
                           f"{proxy.host}/{repo}:v1", str(tmp_path / "bundle"))
        assert proxy.requests() == []
    assert result.exit_code != 0
    assert f"{listed}, line 3" in result.output and "Bad/Name" in result.output
    assert not (tmp_path / "bundle").exists()
    result = occystrap("fetch-to-bundle", "--images-from", "-", str(tmp_path / "bundle"),
                       input="# fine\nnot a reference\n")
    assert result.exit_code != 0 and "<stdin>, line 2" in result.output, result.output
    assert not (tmp_path / "bundle").exists()


def test_keep_going_fetches_the_rest_and_names_each_failure(registry, repo, tmp_path):
    registry.push_image(repo, ib.small_image(60), "here")
    bundle = tmp_path / "bundle"
    host = registry.host
    result = occystrap("fetch-to-bundle", "--keep-going", f"{host}/{repo}:gone",
                       f"{host}/{repo}:here", str(bundle))
    assert result.exit_code == 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(failures) == 1 and f"{host}/{repo}:gone" in failures[0]
    assert [e["annotations"]["io.containerd.image.name"] for e in _index(bundle)] == [
        f"{host}/{repo}:here"]


def test_without_keep_going_the_first_failure_stops_the_run(registry, repo, tmp_path):
    registry.push_image(repo, ib.small_image(61), "here")
    bundle = tmp_path / "bundle"
    host = registry.host
    result = occystrap("fetch-to-bundle", f"{host}/{repo}:here", f"{host}/{repo}:gone",
                       f"{host}/{repo}:here2", str(bundle))
    assert_error(result, "'gone' not found")
    assert len(_index(bundle)) == 1


def test_a_long_rate_limit_stops_keeping_what_is_done(registry, repo, tmp_path):
    registry.push_image(repo, ib.small_image(70), "one")
    registry.push_image(repo, ib.small_image(71), "two")
    bundle = tmp_path / "bundle"
    with FaultProxy(registry.url) as proxy:
        proxy.add(Status(f"{repo}/manifests/two", 429, {"Retry-After": "3600"}))
        result = occystrap("fetch-to-bundle", f"{proxy.host}/{repo}:one",
                           f"{proxy.host}/{repo}:two", str(bundle))
        assert_error(result, "asks to wait 1h00m")
        assert len(_index(bundle)) == 1
        proxy.faults.clear()
        result = _ok("fetch-to-bundle", f"{proxy.host}/{repo}:one",
                     f"{proxy.host}/{repo}:two", str(bundle))
        assert "1 image saved, 1 already present" in result.output
    assert len(_index(bundle)) == 2


def test_a_failure_before_any_byte_leaves_no_new_directory(registry, repo, tmp_path):
    result = occystrap("fetch-to-bundle", f"{registry.host}/{repo}:missing",
                       str(tmp_path / "bundle"))
    assert_error(result, "not found")
    assert list(tmp_path.iterdir()) == []


def test_a_new_bundle_where_every_image_failed_is_removed(registry, repo, tmp_path):
    result = occystrap("fetch-to-bundle", "--keep-going", f"{registry.host}/{repo}:gone",
                       f"{registry.host}/{repo}:missing", str(tmp_path / "bundle"))
    assert result.exit_code == 1
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error:")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_an_existing_empty_directory_is_kept_after_a_failure(registry, repo, tmp_path):
    (tmp_path / "bundle").mkdir()
    result = occystrap("fetch-to-bundle", f"{registry.host}/{repo}:missing",
                       str(tmp_path / "bundle"))
    assert_error(result, "not found")
    assert (tmp_path / "bundle").is_dir()


def test_a_directory_that_is_not_a_bundle_is_refused(registry, repo, tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("mine")
    result = occystrap("fetch-to-bundle", f"{registry.host}/{repo}:v1", str(tmp_path / "dir"))
    assert_error(result, "is not empty and is not a bundle")
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["notes.txt"]


def test_ctrl_c_says_the_bundle_keeps_what_it_verified(registry, repo, tmp_path, monkeypatch):
    registry.push_image(repo, ib.small_image(77), "v1")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("occystrap.pipeline._copy_layer", interrupted)
    result = occystrap("fetch-to-bundle", f"{registry.host}/{repo}:v1", str(tmp_path / "b"))

    assert result.exit_code == 130
    assert "Interrupted; the bundle keeps every blob it verified" in result.stderr
