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
import time
from pathlib import Path

import pytest
import requests

import imagebuild as ib
from conftest import assert_error, occystrap, skopeo_inspect
from faultproxy import FaultProxy, Rewrite, Status, Trickle, corrupt

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def _image(seed: int, compression: str = "gzip", oci: bool = False, size: int = 30_000,
           **kwargs) -> ib.Image:
    base = ib.make_layer([ib.directory("etc"), ib.file("etc/os-release", b"ID=t\n")],
                         compression, oci=oci)
    data = ib.make_layer([ib.file(f"data/{seed}", ib.random_bytes(size, seed))],
                         compression, oci=oci)
    return ib.make_image([base, data], oci=oci, **kwargs)


def _ok(*args: str, input: str | None = None):
    result = occystrap(*args, input=input)
    assert result.exit_code == 0, result.output
    return result


def _registry_manifest(registry, repo: str, reference: str) -> tuple[bytes, str]:
    response = requests.get(f"{registry.url}/v2/{repo}/manifests/{reference}",
                            headers={"Accept": ACCEPT}, timeout=10)
    response.raise_for_status()
    return response.content, response.headers["Docker-Content-Digest"]


def _index(bundle: Path) -> list[dict]:
    return json.loads((bundle / "index.json").read_text())["manifests"]


def _blobs_hash_to_their_names(bundle: Path) -> None:
    blobs = bundle / "blobs" / "sha256"
    for blob in blobs.iterdir():
        assert not blob.name.startswith("."), f"left behind: {blob.name}"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_a_list_lands_with_every_registry_digest(registry, repo, podman, tmp_path):
    docker_gzip, oci_plain = _image(1), _image(2, "none", oci=True)
    zstd = _image(3, "zstd", oci=True)
    amd, arm = _image(4, oci=True), _image(5, oci=True, architecture="arm64", variant="v8")
    index = ib.make_index([amd, arm], oci=True, attestations=True)
    registry.push_image(f"{repo}/docker", docker_gzip, "1.0")
    registry.push_image(f"{repo}/oci", oci_plain, "2.0")
    registry.push_image(f"{repo}/zstd", zstd, "3.0")
    registry.push_index(f"{repo}/multi", index, "4.0")
    pinned = registry.push_image(f"{repo}/pinned", _image(6), "x")
    named = registry.push_image(f"{repo}/named", _image(7), "5.0")
    host = registry.host
    listed = tmp_path / "images.txt"
    listed.write_text(f"# our release\n\n{host}/{repo}/zstd:3.0  # zstd\n"
                      f"{host}/{repo}/multi:4.0\n")
    bundle = tmp_path / "bundle"
    result = _ok("fetch-to-bundle", "--images-from", str(listed), "--images-from", "-",
                 f"{host}/{repo}/docker:1.0", f"{host}/{repo}/oci:2.0", str(bundle),
                 input=f"{host}/{repo}/pinned@{pinned}\n{host}/{repo}/named:5.0@{named}\n")
    assert "6 images saved" in result.output

    entries = {e["annotations"]["io.containerd.image.name"]: e for e in _index(bundle)}
    for name, repository, tag in [
            (f"{host}/{repo}/docker:1.0", f"{repo}/docker", "1.0"),
            (f"{host}/{repo}/oci:2.0", f"{repo}/oci", "2.0"),
            (f"{host}/{repo}/zstd:3.0", f"{repo}/zstd", "3.0"),
            (f"{host}/{repo}/named:5.0", f"{repo}/named", "5.0"),
            (f"{host}/{repo}/pinned@{pinned}", f"{repo}/pinned", pinned)]:
        data, digest = _registry_manifest(registry, repository, tag)
        assert entries[name]["digest"] == digest
        assert (bundle / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == data
    # Without --all-platforms, the platform's own manifest, as served.
    data, digest = _registry_manifest(registry, f"{repo}/multi", amd.manifest_digest)
    assert entries[f"{host}/{repo}/multi:4.0"]["digest"] == digest == amd.manifest_digest
    assert "org.opencontainers.image.ref.name" not in entries[f"{host}/{repo}/pinned@{pinned}"][
        "annotations"]
    _blobs_hash_to_their_names(bundle)
    docker_side = json.loads((bundle / "manifest.json").read_text())
    assert sorted(tuple(e["RepoTags"]) for e in docker_side) == sorted([
        (f"{host}/{repo}/docker:1.0",), (f"{host}/{repo}/oci:2.0",),
        (f"{host}/{repo}/zstd:3.0",), (f"{host}/{repo}/multi:4.0",), (),
        (f"{host}/{repo}/named:5.0",)])
    assert _ok("verify", str(bundle)).exit_code == 0

    tar = tmp_path / "bundle.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(bundle), "."], check=True)
    names = podman.load(tar)
    assert {f"{host}/{repo}/docker:1.0", f"{host}/{repo}/zstd:3.0",
            f"{host}/{repo}/named:5.0"} <= set(names)
    assert podman.inspect(f"{host}/{repo}/zstd:3.0")["Id"] == zstd.config_digest.split(":")[1]
    seen = skopeo_inspect(f"oci-archive:{tar}:2.0")
    assert seen["Digest"] == oci_plain.manifest_digest


def test_all_platforms_keeps_the_index_byte_for_byte(registry, repo, tmp_path):
    amd, arm = _image(10, oci=True), _image(11, oci=True, architecture="arm64", variant="v8")
    index = ib.make_index([amd, arm], oci=True, attestations=True)
    registry.push_index(repo, index, "v1")
    bundle = tmp_path / "bundle"
    _ok("fetch-to-bundle", "--all-platforms", f"{registry.host}/{repo}:v1", str(bundle))
    (entry,) = _index(bundle)
    assert entry["digest"] == index.manifest_digest
    blobs = bundle / "blobs" / "sha256"
    assert (blobs / index.manifest_digest.split(":")[1]).read_bytes() == index.manifest
    for child in index.children:
        for digest, data in child.blobs():
            assert (blobs / digest.split(":")[1]).read_bytes() == data
    # docker load reads manifest.json: it gets the --platform image.
    (docker_entry,) = json.loads((bundle / "manifest.json").read_text())
    assert docker_entry["Config"] == f"blobs/sha256/{amd.config_digest.split(':')[1]}"
    _blobs_hash_to_their_names(bundle)


def test_a_rerun_skips_what_is_unchanged_and_replaces_a_moved_tag(registry, repo, tmp_path):
    one, two = _image(20), _image(21)
    registry.push_image(repo, one, "v1")
    bundle = tmp_path / "bundle"
    with FaultProxy(registry.url) as proxy:
        name = f"{proxy.host}/{repo}:v1"
        _ok("fetch-to-bundle", name, str(bundle))
        before = len(proxy.requests())
        result = _ok("fetch-to-bundle", name, str(bundle))
        assert "1 already present" in result.output
        rerun = proxy.requests()[before:]
        assert [r.method for r in rerun if "/manifests/" in r.path] == ["HEAD"]
        assert not [r for r in rerun if "/blobs/" in r.path]

        registry.push_image(repo, two, "v1")
        _ok("fetch-to-bundle", name, str(bundle))
    (entry,) = _index(bundle)
    assert entry["digest"] == two.manifest_digest
    # The old image's blobs stay: nothing is ever deleted.
    assert (bundle / "blobs" / "sha256" / one.manifest_digest.split(":")[1]).exists()


def _partial(bundle: Path) -> Path | None:
    blobs = bundle / "blobs" / "sha256"
    found = [p for p in blobs.glob(".*.partial") if p.stat().st_size] if blobs.exists() else []
    return found[0] if found else None


def test_a_killed_run_resumes_from_the_byte_it_reached(registry, repo, tmp_path):
    image = _image(30, "none", size=3_000_000)
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

        _ok("fetch-to-bundle", f"{proxy.host}/{repo}:v1", str(bundle))
        resumed = [r for r in proxy.requests(f"/blobs/{big}") if r.method == "GET"][-1]
        assert resumed.headers.get("range") == f"bytes={kept}-"
    (entry,) = _index(bundle)
    assert entry["digest"] == image.manifest_digest
    _blobs_hash_to_their_names(bundle)


def test_two_runs_at_once_fetch_a_shared_blob_once(registry, repo, tmp_path):
    one, two = _image(40, "none", size=2_000_000), None
    registry.push_image(repo, one, "a")
    two = ib.make_image([one.layers[1], ib.make_layer([ib.file("b", b"b")], "gzip")])
    registry.push_image(repo, two, "b")
    shared = one.layers[1].digest
    bundle = tmp_path / "bundle"
    bundle.mkdir()
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
    assert len(downloads) == 1
    assert len(_index(bundle)) == 2
    _blobs_hash_to_their_names(bundle)


def test_a_corrupt_blob_keeps_the_earlier_bundle(registry, repo, tmp_path):
    good, bad = _image(50), _image(51)
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
    assert _partial(bundle) is None
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


def test_keep_going_fetches_the_rest_and_names_each_failure(registry, repo, tmp_path):
    registry.push_image(repo, _image(60), "here")
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
    registry.push_image(repo, _image(61), "here")
    bundle = tmp_path / "bundle"
    host = registry.host
    result = occystrap("fetch-to-bundle", f"{host}/{repo}:here", f"{host}/{repo}:gone",
                       f"{host}/{repo}:here2", str(bundle))
    assert_error(result, "'gone' not found")
    assert len(_index(bundle)) == 1


def test_a_long_rate_limit_stops_keeping_what_is_done(registry, repo, tmp_path):
    registry.push_image(repo, _image(70), "one")
    registry.push_image(repo, _image(71), "two")
    bundle = tmp_path / "bundle"
    with FaultProxy(registry.url) as proxy:
        proxy.add(Status(f"{repo}/manifests/two", 429, {"Retry-After": "3600"}))
        result = occystrap("fetch-to-bundle", f"{proxy.host}/{repo}:one",
                           f"{proxy.host}/{repo}:two", str(bundle))
        assert_error(result, "asks to wait 1h00m")
        assert len(_index(bundle)) == 1
        proxy.faults.clear()
        _ok("fetch-to-bundle", f"{proxy.host}/{repo}:one", f"{proxy.host}/{repo}:two",
            str(bundle))
    assert len(_index(bundle)) == 2


def test_a_failure_before_any_byte_leaves_no_new_directory(registry, repo, tmp_path):
    result = occystrap("fetch-to-bundle", f"{registry.host}/{repo}:missing",
                       str(tmp_path / "bundle"))
    assert_error(result, "not found")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_not_a_bundle_is_refused(registry, repo, tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("mine")
    result = occystrap("fetch-to-bundle", f"{registry.host}/{repo}:v1", str(tmp_path / "dir"))
    assert_error(result, "is not empty and is not a bundle")
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["notes.txt"]
