"""The map from uncompressed layers to what they were pushed as."""

from __future__ import annotations

from pathlib import Path

import pytest

from occystrap.blobcache import CompressedBlobs, Remembered, default_root
from occystrap.digest import Digest
from occystrap.manifest import Descriptor

GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DIFF_ID = Digest.of(b"a layer tar")


def _blob(n: int) -> Descriptor:
    return Descriptor(GZIP, Digest.of(b"compressed %d" % n), 100 + n)


def test_what_is_put_is_got_back_newest_first_and_only_the_last_four(tmp_path: Path) -> None:
    cache = CompressedBlobs(tmp_path / "cache")
    assert cache.get(DIFF_ID) == []
    for n in range(6):
        cache.put(DIFF_ID, _blob(n), "registry:5000/one")
    cache.put(DIFF_ID, _blob(4), "registry:5000/two")
    assert [r.descriptor for r in cache.get(DIFF_ID)] == [_blob(4), _blob(5), _blob(3), _blob(2)]
    assert cache.get(DIFF_ID)[0] == Remembered(
        _blob(4), ("registry:5000/two", "registry:5000/one"))
    assert cache.get(Digest.of(b"another layer")) == []
    # Written whole and renamed: no temporary is left beside the entries.
    assert [p.name for p in (tmp_path / "cache" / "sha256").iterdir()] == [DIFF_ID.hex]


def test_the_places_a_blob_went_are_kept_newest_first_and_only_the_last_eight(
        tmp_path: Path) -> None:
    cache = CompressedBlobs(tmp_path)
    for n in range(10):
        cache.put(DIFF_ID, _blob(1), f"host/repo{n}")
    cache.put(DIFF_ID, _blob(1), "host/repo5")
    (remembered,) = cache.get(DIFF_ID)
    assert remembered.places == ("host/repo5", "host/repo9", "host/repo8", "host/repo7",
                                 "host/repo6", "host/repo4", "host/repo3", "host/repo2")


@pytest.mark.parametrize("content", [
    b"{damaged", b"{}", b"[1]", b'[{"mediaType": "x", "digest": "sha256:12", "size": 1}]',
    b'[{"mediaType": "x", "digest": "md5:' + b"0" * 32 + b'", "size": 1}]',
    b'[{"mediaType": "x", "size": -1, "digest": "sha256:' + b"0" * 64 + b'"}]',
    b"\xff\xfe", b"[" * 100_000,
    b'[{"mediaType": "x", "size": 1, "places": [1], "digest": "sha256:' + b"0" * 64 + b'"}]',
])
def test_a_damaged_entry_is_no_entry_and_is_replaced(tmp_path: Path, content: bytes) -> None:
    cache = CompressedBlobs(tmp_path)
    path = tmp_path / "sha256" / DIFF_ID.hex
    path.parent.mkdir()
    path.write_bytes(content)
    assert cache.get(DIFF_ID) == []
    cache.put(DIFF_ID, _blob(1), "host/repo")
    assert cache.get(DIFF_ID) == [Remembered(_blob(1), ("host/repo",))]


def test_a_cache_that_cannot_be_written_costs_nothing_but_itself(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    cache = CompressedBlobs(blocked / "cache")
    cache.put(DIFF_ID, _blob(1), "host/repo")
    assert cache.get(DIFF_ID) == []
    CompressedBlobs(None).put(DIFF_ID, _blob(1), "host/repo")
    assert CompressedBlobs(None).get(DIFF_ID) == []


def test_the_cache_lives_under_xdg_cache_home_or_the_home_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_root() == tmp_path / "occystrap" / "compressed"
    # A relative XDG_CACHE_HOME is to be ignored, as the spec says.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "occystrap" / "compressed"
