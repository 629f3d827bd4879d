"""verify and inspect over every source format, good and damaged, for real.

Each source is made the way a user makes it: occystrap's own fetch
commands against the real registry, tar, and skopeo for the formats other
tools write. Damage is done to copies, one kind at a time.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import imagebuild as ib
from conftest import need_tool, occystrap, skopeo_copy
from occystrap.sources import open_source

REPO = "verify/app"


def ok(*args: str):
    result = occystrap(*args)
    assert result.exit_code == 0, result.output
    return result


def _images() -> dict[str, ib.Image]:
    base = ib.make_layer([ib.directory("etc"), ib.file("etc/os-release", b"ID=test\n")])
    return {
        "1.0": ib.make_image([base, ib.make_layer(
            [ib.file("app/one", ib.random_bytes(300_000, "one"))])]),
        "1.1": ib.make_image([
            ib.make_layer([ib.directory("etc"), ib.file("etc/os-release", b"ID=test\n")],
                          oci=True),
            ib.make_layer([ib.file("app/two", ib.random_bytes(300_000, "two"))], "zstd",
                          oci=True)], oci=True),
    }


@pytest.fixture(scope="module")
def pushed(registry):
    images = _images()
    for tag, image in images.items():
        registry.push_image(REPO, image, tag)
    return images


def _tar(directory: Path, target: Path, inside: bool) -> Path:
    """`tar -cf T -C DIR .` (inside) or `tar -cf T DIR`, as users make them."""
    if inside:
        command = ["tar", "-cf", str(target), "-C", str(directory), "."]
    else:
        command = ["tar", "-cf", str(target), "-C", str(directory.parent), directory.name]
    subprocess.run(command, check=True)
    return target


@pytest.fixture(scope="module")
def sources(registry, pushed, tmp_path_factory) -> dict[str, Path]:
    """Every format, made once; tests damage copies."""
    work = tmp_path_factory.mktemp("sources")
    host = registry.host
    made = {
        "tarball": work / "tarball.tar",
        "single": work / "single",
        "shared": work / "shared",
        "recreated": work / "recreated.tar",
        "bundle": work / "bundle",
    }
    ok("fetch-to-tarfile", host, REPO, "1.0", str(made["tarball"]))
    ok("fetch-to-extracted", host, REPO, "1.1", str(made["single"]))
    for tag in ("1.0", "1.1"):
        ok("fetch-to-extracted", "--use-unique-names", host, REPO, tag, str(made["shared"]))
    ok("recreate-image", str(made["shared"]), REPO, "1.1", str(made["recreated"]))
    ok("fetch-to-bundle", f"{host}/{REPO}:1.0", f"{host}/{REPO}:1.1", str(made["bundle"]))
    made["bundle-tar"] = _tar(made["bundle"], work / "bundle.tar", inside=True)
    made["shared-tar"] = _tar(made["shared"], work / "shared.tar", inside=False)
    skopeo_copy(f"docker://{host}/{REPO}:1.0", f"docker-archive:{work}/skopeo.tar:{REPO}:1.0",
                "--src-tls-verify=false")
    made["skopeo-archive"] = work / "skopeo.tar"
    skopeo_copy(f"docker://{host}/{REPO}:1.1", f"oci:{work}/skopeo-oci:1.1",
                "--src-tls-verify=false")
    made["skopeo-oci"] = work / "skopeo-oci"
    return made


FORMATS = ["tarball", "single", "shared", "recreated", "bundle", "bundle-tar", "shared-tar",
           "skopeo-archive", "skopeo-oci"]
# What each holds: tags, and whether the original manifests are kept.
HOLDS = {"tarball": ["1.0"], "single": ["1.1"], "shared": ["1.0", "1.1"],
         "recreated": ["1.1"], "bundle": ["1.0", "1.1"], "bundle-tar": ["1.0", "1.1"],
         "shared-tar": ["1.0", "1.1"], "skopeo-archive": ["1.0"], "skopeo-oci": ["1.1"]}
KEEPS_MANIFESTS = {"bundle", "bundle-tar", "skopeo-oci"}


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target


def _layer_file(source: Path) -> str:
    """The name, inside the source, of its last image's largest layer."""
    with open_source(source) as opened:
        image = opened.scan().images[-1]
        sizes = opened.files.names()
        return max((layer.path for layer in image.layers), key=lambda p: sizes[p])


def _member(archive: Path, name: str) -> tarfile.TarInfo:
    with tarfile.open(archive) as tar:
        for info in tar:
            if info.name.lstrip("./") == name or info.name.split("/", 1)[-1] == name:
                return info
    raise AssertionError(f"{name} not in {archive}")


def _flip_byte(source: Path, name: str) -> None:
    if source.is_dir():
        path, offset = source / name, (source / name).stat().st_size // 2
    else:
        info = _member(source, name)
        path, offset = source, info.offset_data + info.size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _truncate(source: Path, name: str) -> None:
    if source.is_dir():
        path = source / name
        os.truncate(path, path.stat().st_size // 2)
    else:
        info = _member(source, name)
        os.truncate(source, info.offset_data + info.size // 2)


def _remove(source: Path, name: str) -> None:
    if source.is_dir():
        (source / name).unlink()
        return
    copy = source.with_suffix(".new")
    with tarfile.open(source) as old, tarfile.open(copy, "w") as new:
        for info in old:
            if info.name.lstrip("./") == name or info.name.split("/", 1)[-1] == name:
                continue
            new.addfile(info, old.extractfile(info) if info.isreg() else None)
    copy.replace(source)


# --- good sources -----------------------------------------------------------


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_verifies_good(sources, pushed, registry, kind):
    result = ok("verify", str(sources[kind]))
    assert "no problems" in result.output
    assert "warning" not in result.output, result.output

    doc = json.loads(ok("inspect", "--json", str(sources[kind])).output)
    assert doc["schema"] == 1
    held = {(image["config_digest"], image["platform"]) for image in doc["images"]}
    assert held == {(pushed[tag].config_digest, "linux/amd64") for tag in HOLDS[kind]}
    for image in doc["images"]:
        tag = next(t for t in HOLDS[kind] if pushed[t].config_digest == image["config_digest"])
        assert [layer["diff_id"] for layer in image["layers"]] == pushed[tag].diff_ids
        assert image["created"] == ib.DEFAULT_CREATED
        if kind in KEEPS_MANIFESTS:
            assert image["manifest_digest"] == pushed[tag].manifest_digest
            assert [layer["digest"] for layer in image["layers"]] == \
                [layer.digest for layer in pushed[tag].layers]
        if kind.startswith(("tarball", "shared", "bundle")):
            assert f"{registry.host}/{REPO}:{tag}" in image["names"]


def test_inspect_table_names_every_image_and_layer(sources, pushed, registry):
    result = ok("inspect", str(sources["bundle"]))
    text = result.output
    assert "oci-layout directory, 2 images" in text
    for tag, image in pushed.items():
        assert f"{registry.host}/{REPO}:{tag}" in text
        assert image.manifest_digest in text and image.config_digest in text
        for layer in image.layers:
            assert layer.digest in text


# --- damaged sources --------------------------------------------------------


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("damage, what", [
    (_flip_byte, "wrong digest"), (_truncate, "truncated"), (_remove, "missing")])
def test_every_damage_is_named(sources, tmp_path, kind, damage, what):
    source = _copy(sources[kind], tmp_path)
    name = _layer_file(source)
    damage(source, name)
    result = occystrap("verify", str(source))
    assert result.exit_code == 1, result.output
    assert name in result.output
    assert what in result.output
    if result.output.startswith("Error: "):
        # A cut tarball can lose its manifest.json too: then one line says so.
        assert damage is _truncate and source.is_file()
        assert result.output.count("\n") == 1
    else:
        lines = [line for line in result.output.strip().splitlines()
                 if not line.startswith("warning: ")]
        assert lines[-1] == f"{len(lines) - 1} problem{'s' * (len(lines) > 2)} in {source}"


@pytest.mark.parametrize("kind", ["shared", "shared-tar"])
def test_a_catalog_naming_a_missing_manifest(sources, tmp_path, kind):
    source = _copy(sources[kind], tmp_path)
    with open_source(source) as opened:
        (name,) = [n for n in opened.files.names()
                   if n.startswith("manifest-") and n.endswith("-1.0.json")]
    _remove(source, name)
    result = occystrap("verify", str(source))
    assert result.exit_code == 1, result.output
    assert f"catalog.json: missing: {REPO}:1.0 names {name}" in result.output
    assert result.output.strip().endswith(f"1 problem in {source}")


def test_a_manifest_json_that_disagrees_with_index_json(sources, tmp_path):
    source = _copy(sources["bundle"], tmp_path)
    doc = json.loads((source / "manifest.json").read_text())
    doc[0]["Layers"] = doc[0]["Layers"][:-1]
    (source / "manifest.json").write_text(json.dumps(doc))
    result = occystrap("verify", str(source))
    assert result.exit_code == 1
    assert "manifest.json: inconsistent: lists other layers" in result.output


def test_a_config_with_the_wrong_digest(sources, tmp_path):
    source = _copy(sources["single"], tmp_path)
    (config,) = [p for p in source.glob("*.json") if p.name != "manifest.json"]
    config.write_bytes(config.read_bytes().replace(b'"amd64"', b'"arm64"'))
    result = occystrap("verify", str(source))
    assert result.exit_code == 1
    assert f"{config.name}: wrong digest: expected sha256:{config.stem}" in result.output


def test_partial_and_unknown_files_are_warnings(sources, tmp_path):
    source = _copy(sources["bundle"], tmp_path)
    (source / "blobs" / "sha256" / ("." + "a" * 64 + ".partial")).write_bytes(b"half")
    (source / "notes.txt").write_text("hello")
    result = ok("verify", str(source))
    assert "warning: blobs/sha256/.aaaa" in result.output
    assert "partial" in result.output
    assert "warning: notes.txt: unknown file" in result.output
    assert "no problems" in result.output
    assert ok("--quiet", "verify", str(source)).output == ""


def test_not_a_source(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello" * 1000)
    result = occystrap("verify", str(junk))
    assert result.exit_code == 1
    assert result.output == (f"Error: {junk} is not a tar archive, nor a directory; give a "
                             "tarball, a bundle or an extracted directory\n")


# --- bills of materials -----------------------------------------------------


def _bom(source: Path, target: Path) -> Path:
    target.write_text(ok("inspect", "--json", str(source)).output)
    return target


@pytest.mark.parametrize("kind", FORMATS)
def test_expect_accepts_the_same_images(sources, tmp_path, kind):
    bom = _bom(sources[kind], tmp_path / "bom.json")
    (tmp_path / "far").mkdir()
    moved = _copy(sources[kind], tmp_path / "far")
    result = ok("verify", "--expect", str(bom), str(moved))
    assert f"as {bom} lists" in result.output


@pytest.mark.parametrize("fetch", ["fetch-to-tarfile", "fetch-to-extracted", "fetch-to-bundle"])
def test_expect_catches_a_swapped_image(registry, tmp_path, fetch):
    """The tag moved between the BOM and the copy: same name, other image."""
    repo = f"verify/swap-{fetch}"
    before, after = (ib.make_image([ib.make_layer([ib.file("x", ib.random_bytes(1000, s))])])
                     for s in ("before", "after"))

    def fetched(target: Path) -> Path:
        if fetch == "fetch-to-bundle":
            ok(fetch, f"{registry.host}/{repo}:v1", str(target))
        else:
            ok(fetch, registry.host, repo, "v1", str(target))
        return target

    registry.push_image(repo, before, "v1")
    bom = _bom(fetched(tmp_path / "near"), tmp_path / "bom.json")
    registry.push_image(repo, after, "v1")
    far = fetched(tmp_path / "far")
    assert occystrap("verify", str(far)).exit_code == 0
    result = occystrap("verify", "--expect", str(bom), str(far))
    assert result.exit_code == 1
    assert f"{registry.host}/{repo}:v1 (linux/amd64): {far}: swapped: the BOM says " \
        in result.output
    assert before.config_digest in result.output and after.config_digest in result.output
    assert result.output.strip().endswith(f"1 problem in {far}")


def test_expect_catches_missing_and_added_images(sources, registry, tmp_path):
    bom = _bom(sources["bundle"], tmp_path / "bom.json")
    result = occystrap("verify", "--expect", str(bom), str(sources["skopeo-archive"]))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    for line, tag in zip(lines, ("1.0", "1.1")):
        assert line.startswith(f"{registry.host}/{REPO}:{tag} (linux/amd64): {bom}: missing: ")
    # skopeo names it without the registry: to the BOM, that is another image.
    assert f"{REPO}:1.0 (linux/amd64): {sources['skopeo-archive']}: added: " in result.output
    assert lines[-1] == f"3 problems in {sources['skopeo-archive']}"


def test_expect_refuses_what_is_not_a_bom(sources, tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_text('{"schema": 2, "images": []}')
    result = occystrap("verify", "--expect", str(bom), str(sources["bundle"]))
    assert result.exit_code == 1
    assert "is not a schema 1 BOM; write it with occystrap inspect --json" in result.output


# --- memory -----------------------------------------------------------------


# The child's own high-water mark: getrusage would also count the memory of
# the test process it was forked from (the kernel carries it across exec).
_MEASURED = """
import sys
from occystrap.cli import cli
try:
    cli(sys.argv[1:], prog_name="occystrap")
except SystemExit as e:
    code = e.code
with open("/proc/self/status") as status:
    peak = [line.split()[1] for line in status if line.startswith("VmHWM:")][0]
print(f"peak {peak} kB", file=sys.stderr)
sys.exit(code)
"""


def _peak_rss(*args: str) -> int:
    done = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stderr.split("peak ")[-1].split()[0]) << 10


def test_memory_does_not_grow_with_the_source(registry, tmp_path):
    """A 16 MiB and a 256 MiB layer verify in the same memory, as a bundle
    (gzip inflated on the way) and as a tarball (read in place)."""
    need_tool("tar")
    peaks = {}
    for size in (16, 256):
        repo = f"verify/memory-{size}"
        registry.push_image(repo, ib.make_image([ib.make_layer([ib.file("big",
                                                                        bytes(size << 20))])]),
                            "v1")
        bundle, tarball = tmp_path / f"bundle-{size}", tmp_path / f"image-{size}.tar"
        ok("fetch-to-bundle", f"{registry.host}/{repo}:v1", str(bundle))
        ok("fetch-to-tarfile", registry.host, repo, "v1", str(tarball))
        assert tarball.stat().st_size > size << 20
        peaks[size] = [_peak_rss("verify", str(bundle)), _peak_rss("verify", str(tarball))]
    for small, large in zip(peaks[16], peaks[256]):
        assert large - small < 8 << 20, peaks


def test_a_whole_index_with_attestations_verifies(registry, tmp_path):
    """--all-platforms keeps the index, each platform and the attestations."""
    images = [ib.make_image([ib.make_layer([ib.file("arch", arch.encode())])],
                            architecture=arch) for arch in ("amd64", "arm64")]
    index = ib.make_index(images, oci=True, attestations=True)
    registry.push_index("verify/multi", index, "v1")
    bundle = tmp_path / "bundle"
    ok("--platform", "linux/arm64", "fetch-to-bundle", "--all-platforms",
       f"{registry.host}/verify/multi:v1", str(bundle))
    result = ok("verify", str(bundle))
    assert "2 images" in result.output and "warning" not in result.output
    doc = json.loads(ok("inspect", "--json", str(bundle)).output)
    assert {(i["platform"], i["manifest_digest"], i["index_digest"]) for i in doc["images"]} \
        == {(f"linux/{i.platform.architecture}", i.manifest_digest, index.manifest_digest)
            for i in images}
    # One platform's layer damaged: only that platform is named.
    arm = bundle / "blobs" / "sha256" / images[1].layers[0].digest.split(":")[1]
    arm.write_bytes(arm.read_bytes()[:-1])
    result = occystrap("verify", str(bundle))
    assert result.exit_code == 1
    assert f"{registry.host}/verify/multi:v1 (linux/arm64): blobs/sha256/" in result.output
    assert "truncated" in result.output and "1 problem in" in result.output


def test_a_fifo_in_place_of_a_layer_is_refused_not_waited_for(sources, tmp_path):
    source = _copy(sources["single"], tmp_path)
    name = _layer_file(source)
    (source / name).unlink()
    os.mkfifo(source / name)
    result = occystrap("verify", str(source))
    assert result.exit_code == 1
    assert f"{name}: unreadable: {name} is not a regular file" in result.output


# --- the same sources feed the pipeline ----------------------------------------


@pytest.mark.parametrize("kind", ["bundle-tar", "shared-tar", "tarball", "single"])
def test_any_source_rebuilds_a_loadable_tarball(sources, pushed, podman, tmp_path, kind):
    """What push and recreate-image read: one image of any source, every
    layer checked against its digest as it streams."""
    from occystrap import pipeline
    from occystrap.inputs.offline_image import SourceInput
    from occystrap.outputs.tarball import TarballWriter

    tag = HOLDS[kind][-1]
    out = tmp_path / "out.tar"
    with open_source(sources[kind]) as opened:
        summary = pipeline.run(SourceInput.find(opened, REPO, tag), TarballWriter(out))
    assert str(summary.image.config_digest) == pushed[tag].config_digest
    (name,) = podman.load(out)
    assert podman.inspect(name)["RootFS"]["Layers"] == pushed[tag].diff_ids
    assert ok("verify", str(out)).exit_code == 0


def test_a_damaged_layer_stops_the_pipeline(sources, tmp_path):
    from occystrap import pipeline
    from occystrap.errors import VerificationError
    from occystrap.inputs.offline_image import SourceInput
    from occystrap.outputs.tarball import TarballWriter

    source = _copy(sources["bundle"], tmp_path)
    _flip_byte(source, _layer_file(source))
    with open_source(source) as opened, pytest.raises(VerificationError, match="digest mismatch"):
        pipeline.run(SourceInput.find(opened, REPO, "1.1"), TarballWriter(tmp_path / "x.tar"))
    assert not (tmp_path / "x.tar").exists()


def test_a_layer_whose_content_is_not_its_diff_id(registry, tmp_path):
    """The blob hashes right, but its content is not what the config says:
    a bundle keeps the registry's bytes as they are, verify still says so."""
    right = ib.make_layer([ib.file("a", b"right")])
    wrong = ib.make_layer([ib.file("a", b"wrong")])
    image = ib.make_image([right])
    lying = ib.make_image([dataclasses.replace(wrong, diff_id=right.diff_id)])
    registry.push_image("verify/lying", lying, "v1")
    bundle = tmp_path / "bundle"
    ok("fetch-to-bundle", f"{registry.host}/verify/lying:v1", str(bundle))
    result = occystrap("verify", str(bundle))
    assert result.exit_code == 1
    assert (f"blobs/sha256/{wrong.digest.split(':')[1]}: wrong digest: its content hashes to "
            f"{wrong.diff_id}, but the config's diff_id is {image.diff_ids[0]}") in result.output
