"""fetch-to-extracted --expand, end to end, judged against umoci."""

import os
import tarfile
from pathlib import Path

import pytest

import imagebuild as ib
from conftest import assert_error, occystrap, skopeo_copy, umoci_unpack
from layertrees import (
    assert_same_as_umoci, crafted_layers, dir_, make_layer, realistic_layers,
    reg, sym, wh)


def _push(registry, repo, tars: list[bytes], tag="v1") -> ib.Image:
    layers = [ib.make_layer(tar, "gzip" if n % 2 else "none")
              for n, tar in enumerate(tars)]
    image = ib.make_image(layers)
    registry.push_image(repo, image, tag)
    return image


def _umoci_tree(registry, repo, tmp_path: Path, tag="v1") -> Path:
    layout = tmp_path / "oci"
    skopeo_copy(f"docker://{registry.host}/{repo}:{tag}", f"oci:{layout}:{tag}",
                "--src-tls-verify=false")
    return umoci_unpack(layout, tag, tmp_path / "bundle")


def _snapshot(top: Path) -> dict:
    return {str(p.relative_to(top)): (p.is_symlink(), os.lstat(p).st_mode,
                                      p.read_bytes() if p.is_file()
                                      and not p.is_symlink() else None)
            for p in sorted(top.rglob("*"))}


def test_crafted_image_equals_umoci(registry, repo, tmp_path):
    tars = crafted_layers()
    image = _push(registry, repo, tars)
    target = tmp_path / "out"
    result = occystrap("fetch-to-extracted", "--expand", registry.host, repo,
                       "v1", str(target))
    assert result.exit_code == 0, result.output
    assert_same_as_umoci(target / "manifest", _umoci_tree(registry, repo,
                                                          tmp_path))
    # Each layer is also unpacked beside its layer.tar, whiteouts visible.
    second = target / image.diff_ids[1].split(":")[1] / "layer"
    assert (second / "data" / ".wh.gone").is_file()
    assert not any(p.name.startswith(".wh.")
                   for p in (target / "manifest").rglob("*"))
    # The seed's promise still holds with expanded trees present.
    recreated = tmp_path / "again.tar"
    result = occystrap("recreate-image", str(target), repo, "v1",
                       str(recreated))
    assert result.exit_code == 0, result.output
    with tarfile.open(recreated) as archive:
        assert not any(n.endswith("/layer") or "manifest/" in n
                       for n in archive.getnames())


def test_realistic_rootfs_equals_umoci(registry, repo, tmp_path):
    paths = realistic_layers(tmp_path / "layers")
    _push(registry, repo, [p.read_bytes() for p in paths])
    merged = tmp_path / "merged"
    result = occystrap("fetch-to-extracted", "--expand", "--use-unique-names",
                       registry.host, repo, "v1", str(merged))
    assert result.exit_code == 0, result.output
    final = merged / f"manifest-{repo.replace('/', '_')}-v1"
    assert_same_as_umoci(final, _umoci_tree(registry, repo, tmp_path))
    assert sum(1 for _ in final.rglob("*")) > 2000


def test_hostile_layers_stay_inside(registry, repo, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    before = _snapshot(victim)
    tars = [
        make_layer(dir_("./"), sym("escape", "../../victim"),
                   sym("abs", str(victim)), reg("../victim/dotdot", b"x"),
                   reg("escape/through-link", b"x"), reg("/abs-name", b"x")),
        make_layer(reg("abs/later-layer", b"x"), wh("escape/.wh.precious"),
                   reg("escape", b"now a file")),
    ]
    _push(registry, repo, tars)
    target = work / "out"
    result = occystrap("fetch-to-extracted", "--expand", registry.host, repo,
                       "v1", str(target))
    # Re-rooted, like umoci: the names land inside the image's tree.
    assert result.exit_code == 0, result.output
    assert _snapshot(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim", "work"]
    final = target / "manifest"
    assert (final / "victim" / "dotdot").read_bytes() == b"x"
    assert (final / "escape").read_bytes() == b"now a file"
    assert os.readlink(final / "abs") == str(victim)
    assert (final / str(victim).lstrip("/") / "later-layer").exists()


def test_unusable_layer_fails_cleanly(registry, repo, tmp_path):
    tars = [make_layer(sym("loop", "loop"), reg("loop/x", b"x"))]
    _push(registry, repo, tars)
    target = tmp_path / "out"
    result = occystrap("fetch-to-extracted", "--expand", registry.host, repo,
                       "v1", str(target))
    assert_error(result, "loop")
    assert list(tmp_path.iterdir()) == []


def test_unusable_layer_leaves_a_shared_directory_as_it_was(registry, repo, tmp_path):
    _push(registry, repo, [make_layer(reg("fine", b"ok"))], tag="good")
    _push(registry, repo, [make_layer(sym("loop", "loop"), reg("loop/x", b"x"))],
          tag="bad")
    merged = tmp_path / "merged"
    flags = ["fetch-to-extracted", "--expand", "--use-unique-names", registry.host, repo]
    assert occystrap(*flags, "good", str(merged)).exit_code == 0
    catalog = (merged / "catalog.json").read_bytes()
    result = occystrap(*flags, "bad", str(merged))
    assert_error(result, "loop")
    assert (merged / "catalog.json").read_bytes() == catalog
    assert sorted(p.name for p in merged.iterdir() if p.name.startswith("manifest-")) == [
        f"manifest-{repo.replace('/', '_')}-good", f"manifest-{repo.replace('/', '_')}-good.json"]
    assert not [p for p in merged.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("unique", [False, True])
def test_fetching_again_rebuilds_the_tree(registry, repo, tmp_path, unique):
    flags = ["--use-unique-names"] if unique else []
    _push(registry, repo, [make_layer(reg("v", b"1"))])
    target = tmp_path / "out"
    for _ in range(2):
        result = occystrap("fetch-to-extracted", "--expand", *flags,
                           registry.host, repo, "v1", str(target))
        assert result.exit_code == 0, result.output
    name = f"manifest-{repo.replace('/', '_')}-v1" if unique else "manifest"
    assert (target / name / "v").read_bytes() == b"1"
    assert not [p for p in target.iterdir() if p.name.startswith(".")
                and p.name != ".occystrap.lock"]
