"""The shared-directory store: a layer is checked by content, once a run."""

import os
from pathlib import Path

import pytest

import imagebuild as ib
from conftest import occystrap
from occystrap import pipeline, store
from occystrap.digest import Digest
from occystrap.inputs.directory import DirectoryInput
from occystrap.outputs.directory import DirectoryWriter
from occystrap.store import Store


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every layer file the store reads to hash, in order."""
    seen: list[Path] = []
    real = store.file_digest

    def spy(path, algorithm="sha256"):
        seen.append(path)
        return real(path, algorithm)

    monkeypatch.setattr(store, "file_digest", spy)
    return seen


def _layer(root: Path, content: bytes) -> tuple[Store, Digest, Path]:
    diff_id = Digest.parse(ib.sha256(content))
    layers = Store(root)
    path = layers.layer_tar(diff_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return layers, diff_id, path


def test_a_present_layer_is_hashed_once(tmp_path, hashed):
    layers, diff_id, path = _layer(tmp_path, b"layer" * 1000)
    assert layers.has_layer(diff_id)
    assert layers.has_layer(diff_id)
    assert hashed == [path]
    # Another run (another Store) checks it afresh.
    assert Store(tmp_path).has_layer(diff_id)
    assert hashed == [path, path]


def test_a_layer_changed_in_place_is_hashed_again(tmp_path, hashed):
    layers, diff_id, path = _layer(tmp_path, b"layer" * 1000)
    assert layers.has_layer(diff_id)
    with open(path, "r+b") as f:   # same inode, same size, other bytes
        f.write(b"LAYER")
    assert not layers.has_layer(diff_id)
    assert len(hashed) == 2


def test_a_replaced_or_removed_layer_is_hashed_again(tmp_path, hashed):
    content = b"layer" * 1000
    layers, diff_id, path = _layer(tmp_path, content)
    assert layers.has_layer(diff_id)
    stat = os.stat(path)
    other = path.with_name("other")
    other.write_bytes(content.upper())
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)
    assert not layers.has_layer(diff_id)
    path.unlink()
    assert not layers.has_layer(diff_id)
    path.write_bytes(content)
    assert layers.has_layer(diff_id)
    assert len(hashed) == 3   # a missing file is not read


def test_a_layer_shared_by_images_of_one_run_is_not_reread(registry, repo, tmp_path,
                                                           hashed):
    base = ib.make_layer([ib.file("base", ib.random_bytes(200_000, 1))], "gzip")
    one = ib.make_image([base, ib.make_layer([ib.file("one", b"1")], "none")])
    two = ib.make_image([base, ib.make_layer([ib.file("two", b"2")], "none")])
    registry.push_image(repo, one, "one")
    registry.push_image(repo, two, "two")
    source = tmp_path / "source"
    for tag in ("one", "two"):
        result = occystrap("fetch-to-extracted", "--use-unique-names",
                           registry.host, repo, tag, str(source))
        assert result.exit_code == 0, result.output
    hashed.clear()
    # Both images into one destination in one run, as a many-image fetch
    # does: the second finds the base layer the first has just written.
    writer = DirectoryWriter(tmp_path / "copy", shared=True)
    with pipeline.destination(writer):
        first = pipeline.copy_image(DirectoryInput(source, repo, "one"), writer)
        second = pipeline.copy_image(DirectoryInput(source, repo, "two"), writer)
    assert (first.layers_fetched, first.layers_skipped) == (2, 0)
    assert (second.layers_fetched, second.layers_skipped) == (1, 1)
    assert hashed == []
    for image in (one, two):
        for diff_id in image.diff_ids:
            assert Store(tmp_path / "copy").has_layer(Digest.parse(diff_id))
