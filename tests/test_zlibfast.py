"""The gzip seam: the same answers from ISA-L, zlib-ng and zlib."""

import gzip
import importlib
import os
import sys

import pytest

from occystrap import compression, zlibfast
from occystrap.errors import LayerError

from conftest import occystrap

# The fast libraries are an extra; the test extra installs them, so a run
# that must exercise everything fails rather than skips without them.
REQUIRED = os.environ.get("OCCYSTRAP_REQUIRE_INTEGRATION") == "1"
MIB = 1 << 20


def _backend(name):
    if name == "zlib":
        return zlibfast.ZLIB
    for module_name, backend_name, level in zlibfast._CANDIDATES:
        if backend_name == name:
            try:
                return zlibfast.Backend(name, importlib.import_module(module_name), level)
            except ImportError:
                if REQUIRED:
                    raise
                pytest.skip(f"{name} is not installed (pip install 'occystrap[fast]')")
    raise AssertionError(name)


@pytest.fixture(params=["isal", "zlib-ng", "zlib"])
def backend(request, monkeypatch):
    """Each library in turn, as the one the whole process uses."""
    chosen = _backend(request.param)
    monkeypatch.setattr(zlibfast, "BACKEND", chosen)
    return chosen


def _block(monkeypatch, *module_names):
    for name in module_names:
        # None in sys.modules makes `import name` raise ImportError.
        monkeypatch.setitem(sys.modules, name, None)


def test_prefers_isal_then_zlib_ng_then_zlib(monkeypatch):
    if REQUIRED:
        assert zlibfast.choose().name == "isal"
    _block(monkeypatch, "isal.isal_zlib")
    assert zlibfast.choose().name in ("zlib-ng", "zlib")
    if REQUIRED:
        assert zlibfast.choose().name == "zlib-ng"
    _block(monkeypatch, "zlib_ng.zlib_ng")
    assert zlibfast.choose() is zlibfast.ZLIB


def _gunzip(blob, step=64 * 1024, what="layer x"):
    pieces = (blob[i:i + step] for i in range(0, len(blob), step))
    return list(compression.decompress(pieces, what))


def _content():
    # Incompressible, compressible and long runs: stored, Huffman and
    # match-heavy deflate blocks.
    return os.urandom(300_000) + b"occystrap " * 200_000 + bytes(3 * MIB)


@pytest.mark.parametrize("step", [1, 4096, 1 << 20, 1 << 30])
def test_round_trip_in_any_chunking(backend, step):
    data = _content()[:200_000] if step == 1 else _content()
    blob = b"".join(zlibfast.gzip_chunks([data[i:i + 100_000]
                                         for i in range(0, len(data), 100_000)]))
    assert gzip.decompress(blob) == data   # any gzip reader takes it
    assert b"".join(_gunzip(blob, step)) == data


def test_compressed_output_is_deterministic_and_anonymous(backend):
    data = _content()
    first = b"".join(zlibfast.gzip_chunks([data]))
    for step in (3000, MIB, MIB + 1, 3 * MIB):
        again = zlibfast.gzip_chunks(data[i:i + step] for i in range(0, len(data), step))
        assert b"".join(again) == first, step
    assert first[:4] == b"\x1f\x8b\x08\x00"   # deflate, no FNAME/FCOMMENT/FEXTRA
    assert first[4:8] == b"\0\0\0\0"          # mtime 0
    assert len(first) < len(data) // 2


@pytest.mark.parametrize("level", [1, 6, 9])
def test_every_level_round_trips(backend, level):
    data = _content()
    assert gzip.decompress(b"".join(zlibfast.gzip_chunks([data], level))) == data


@pytest.mark.parametrize("level", [0, 10, -1])
def test_levels_outside_1_to_9_are_refused(level):
    with pytest.raises(ValueError, match="1 to 9"):
        list(zlibfast.gzip_chunks([b"x"], level))


def test_empty_input_is_an_empty_member(backend):
    blob = b"".join(zlibfast.gzip_chunks([]))
    assert gzip.decompress(blob) == b""
    assert _gunzip(blob) == []


def test_output_per_step_is_bounded(backend):
    # 256 MiB of zeros compress to about 256 KiB; it must not come out as
    # one 256 MiB buffer.
    blob = b"".join(zlibfast.gzip_chunks(bytes(16 * MIB) for _ in range(16)))
    total = 0
    for chunk in compression.decompress([blob], "bomb"):
        assert len(chunk) <= MIB
        total += len(chunk)
    assert total == 256 * MIB


@pytest.mark.parametrize("step", [7, 1 << 20])
def test_concatenated_members_are_one_stream(backend, step):
    parts = [b"first " * 1000, b"", os.urandom(70_000), b"last"]
    blob = b"".join(gzip.compress(part, mtime=0) for part in parts)
    assert b"".join(_gunzip(blob, step)) == b"".join(parts)


def test_reads_what_stdlib_gzip_writes(backend):
    data = _content()
    for level in (1, 9):
        assert b"".join(_gunzip(gzip.compress(data, level))) == data


@pytest.mark.parametrize("cut", [3, 10, 11, 5000, -9, -8, -4, -1])
def test_truncated_streams_are_refused(backend, cut):
    blob = gzip.compress(_content(), mtime=0)
    with pytest.raises(LayerError, match="layer x is truncated"):
        _gunzip(blob[:cut])


def test_truncated_second_member_is_refused(backend):
    blob = gzip.compress(b"a" * 1000) + gzip.compress(os.urandom(5000))
    with pytest.raises(LayerError, match="truncated"):
        _gunzip(blob[:-100])


@pytest.mark.parametrize("where, how", [
    ("data", lambda blob: blob[:2000] + bytes([blob[2000] ^ 0x55]) + blob[2001:]),
    ("crc", lambda blob: blob[:-8] + bytes([blob[-8] ^ 1]) + blob[-7:]),
    ("size", lambda blob: blob[:-4] + bytes([blob[-4] ^ 1]) + blob[-3:]),
    ("method", lambda blob: blob[:2] + b"\x07" + blob[3:]),
    ("trailing garbage", lambda blob: blob + b"this is not gzip"),
])
def test_corrupt_streams_are_refused(backend, where, how):
    blob = gzip.compress(b"occystrap " * 50_000 + os.urandom(10_000), mtime=0)
    with pytest.raises(LayerError, match="layer x is not valid gzip data"):
        _gunzip(how(blob))


def test_corrupt_data_raises_before_the_stream_ends(backend):
    data = os.urandom(4 * MIB)
    blob = gzip.compress(data, mtime=0)
    out = compression.decompress([blob[:100], bytes(len(blob) - 100)], "layer x")
    with pytest.raises(LayerError, match="not valid gzip data"):
        list(out)


def test_the_library_choice_does_not_change_what_is_fetched(registry, repo, tmp_path,
                                                            monkeypatch):
    """End to end with zlib alone and with the preferred library."""
    import imagebuild as ib

    image = ib.make_image([ib.make_layer([ib.file("a/big", os.urandom(MIB) + bytes(MIB))]),
                           ib.make_layer([ib.file("b/text", b"occystrap\n" * 100_000)])])
    registry.push_image(repo, image, "v1")
    outputs = []
    for chosen in (zlibfast.choose(), zlibfast.ZLIB):
        monkeypatch.setattr(zlibfast, "BACKEND", chosen)
        target = tmp_path / f"{chosen.name}.tar"
        result = occystrap("fetch-to-tarfile", registry.host, repo, "v1", str(target))
        assert result.exit_code == 0, result.output
        outputs.append(target.read_bytes())
    assert outputs[0] == outputs[1]


def _mixed():
    # Whole blocks of packed content between compressible ones, ending on
    # a packed block: every change between stored and deflated blocks.
    text = b"occystrap layer text " * 60_000
    return (os.urandom(2 * MIB) + text + os.urandom(MIB + 12345) + text
            + bytes(MIB) + os.urandom(3 * MIB + 7))


def test_packed_content_is_stored_not_deflated(backend):
    data = os.urandom(4 * MIB)
    blob = b"".join(zlibfast.gzip_chunks([data]))
    assert gzip.decompress(blob) == data
    # Stored blocks: five bytes for each 64 KiB or less of each 1 MiB
    # block, and the gzip frame.
    assert len(blob) <= len(data) + 5 * 17 * (len(data) // MIB) + 32


@pytest.mark.parametrize("step", [3000, MIB, 5 * MIB])
def test_stored_and_deflated_blocks_mix_in_one_member(backend, step):
    data = _mixed()
    whole = b"".join(zlibfast.gzip_chunks([data]))
    again = b"".join(zlibfast.gzip_chunks(data[i:i + step]
                                          for i in range(0, len(data), step)))
    assert again == whole
    assert gzip.decompress(whole) == data
    assert b"".join(_gunzip(whole, 4096)) == data
    # The text and zeros shrink, the random bytes stay as they were.
    assert len(whole) < len(data) - 2 * MIB
