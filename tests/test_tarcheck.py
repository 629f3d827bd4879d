"""The streaming tar check: valid layers pass whole and in any chunking; cut ones fail."""

import io
import random
import tarfile

import pytest

from occystrap.errors import LayerError
from occystrap.tarcheck import check_tar


def _archive(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **extra):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("etc", tarfile.DIRTYPE)
        add("etc/" + "long-name-" * 15, data=b"x" * 700)  # GNU longname / PAX path
        add("etc/link", tarfile.SYMTYPE, linkname="../" + "target-" * 20)
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/" + "long-name-" * 15)
        add("etc/fifo", tarfile.FIFOTYPE)
        add("empty")
        add("big", data=random.Random(1).randbytes(5000))
    return buf.getvalue()


def _check(data: bytes, sizes: int | None = None) -> None:
    rng = random.Random(sizes)
    chunks, at = [], 0
    while at < len(data):
        step = rng.randint(1, 2000) if sizes else len(data)
        chunks.append(data[at:at + step])
        at += step
    assert b"".join(check_tar(iter(chunks), "layer 1")) == data


def _entries_end(data: bytes) -> int:
    """Where the last entry's padding ends and the zero blocks begin."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


# Long names need GNU or PAX extended headers: both kinds are walked.
FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_valid_archives_pass_in_any_chunking(fmt):
    data = _archive(fmt)
    for seed in (None, 1, 2, 3):
        _check(data, seed)
    # Many tools end a layer without the two zero blocks; Go accepts that.
    _check(data[:_entries_end(data)])
    # Whatever follows the end of the archive is not looked at.
    _check(data + b"trailing garbage")
    _check(b"")


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_a_cut_inside_an_entry_is_truncation(fmt):
    data = _archive(fmt)
    end = _entries_end(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        boundaries = {m.offset for m in tar.getmembers()} | {end}
        # Between the end of an entry's data and the next block boundary.
        paddings = [(m.offset_data + m.size, m.offset_data + -(-m.size // 512) * 512)
                    for m in tar.getmembers() if m.size % 512]
    for cut in range(1, end, 97):
        if cut in boundaries:
            continue
        if any(start <= cut < stop for start, stop in paddings):
            _check(data[:cut])  # a short last padding reads as the end, as in Go
            continue
        with pytest.raises(LayerError, match="layer 1 is truncated"):
            _check(data[:cut], cut)


def test_bad_checksum_is_not_a_tar():
    data = bytearray(_archive(tarfile.GNU_FORMAT))
    data[0] ^= 0x01
    with pytest.raises(LayerError, match="not a valid tar stream: bad header at byte 0"):
        _check(bytes(data))
    with pytest.raises(LayerError, match="not a valid tar stream"):
        _check(random.Random(2).randbytes(3000))


def test_a_pax_size_overrides_the_header_size():
    """How sizes above 8 GiB are written: the ustar field cannot hold them."""
    info = tarfile.TarInfo("huge")
    info.size = 1000
    info.pax_headers = {"size": "1000"}
    header = bytearray(info.tobuf(tarfile.PAX_FORMAT))
    ustar = len(header) - 512
    header[ustar + 124:ustar + 136] = b"00000000000\0"
    header[ustar + 148:ustar + 156] = b" " * 8
    checksum = sum(header[ustar:ustar + 512])
    header[ustar + 148:ustar + 156] = b"%06o\0 " % checksum
    data = bytes(header) + b"y" * 1000 + b"\0" * (24 + 1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("huge").read() == b"y" * 1000
    _check(data)
    with pytest.raises(LayerError, match="truncated"):
        _check(data[:len(header) + 600])


@pytest.mark.parametrize("records", [b"1" * 3000, b"30 path=a\n", b"9 patha\n\n"])
def test_a_malformed_pax_header_is_not_a_tar(records):
    # tarfile would take it for the end of the archive and drop the rest.
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    entry = tarfile.TarInfo("file")
    data = (info.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512)
            + entry.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024)
    with pytest.raises(LayerError, match="malformed pax header"):
        _check(data)
