"""Tar header blocks, read as tarfile reads them, in a third of the time.

A layer of small files is mostly headers, and tarfile spent most of a
header's time on its checksum: it unpacks the block into 504 integers
twice with struct, once for the unsigned sum and once for the signed one
that a few old tars (Sun, NeXT) wrote. Here the unsigned sum is one
C-level sum() over the bytes, and the signed sum is only made when the
unsigned one does not match. Unpacking reads headers through this
module's TarInfo, with tarfile's rules and errors otherwise unchanged; the
check of a stream, which only steps from header to header, reads just a
header's type and size (kind_and_size), validating the rest as tarfile
would, and builds no TarInfo at all.

Then the fields: most headers hold numbers exactly as GNU tar, Go's
archive/tar and Python's tarfile write them, octal digits filling each
field up to a closing NUL or space (or, for device numbers, all NULs).
Two regular expressions read all eight such fields, where reading them
one by one took eight calls. Any other form goes field by field, as
tarfile reads it.
"""

import re
import struct
import tarfile
from typing import Any

_NUL = b"\0"
# Undocumented, so typeshed leaves them out; present since Python 3.3.
_EMPTY = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_TRUNCATED = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]
_END = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_INVALID = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_SUBSEQUENT = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]
_PAX_NAME_FIELDS = tarfile.PAX_NAME_FIELDS
_SUPPORTED_TYPES = tarfile.SUPPORTED_TYPES
# A record's length: decimal digits, as many as a 64-bit size has.
_MAX_LENGTH_DIGITS = 20
_FIELD_SPACES = 8 * 0x20   # the checksum field counts as eight spaces
# mode, uid, gid, size and mtime, each closed by a NUL or a space, then
# the checksum's six digits, NUL and space: bytes 100 to 156.
_PLAIN_NUMBERS = re.compile(
    rb"([0-7]{7})[\0 ]([0-7]{7})[\0 ]([0-7]{7})[\0 ]([0-7]{11})[\0 ]"
    rb"([0-7]{11})[\0 ]([0-7]{6})\0 ")
# devmajor and devminor, bytes 329 to 345: digits, or (most files) nothing.
_PLAIN_DEVICES = re.compile(rb"([0-7]{7})[\0 ]([0-7]{7})[\0 ]")
_NO_DEVICES = bytes(16)


def checksum_matches(block: bytes, stored: int) -> bool:
    """Whether `stored` is the block's checksum, unsigned or signed."""
    # A header is mostly NULs, which add nothing: summing the rest is
    # the same sum in half the time.
    unsigned = sum(block.translate(None, _NUL)) - sum(block[148:156]) \
        + _FIELD_SPACES
    if stored == unsigned:
        return True
    signed = _FIELD_SPACES + sum(struct.unpack_from("148b8x356b", block))
    return stored == signed


def number(field: bytes) -> int:
    """A numeric field, octal or base-256, as tarfile.nti reads it."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0o377:
            value -= 256 ** (len(field) - 1)
        return value
    end = field.find(_NUL)
    if end != -1:
        field = field[:end]
    try:
        return int(field.decode("ascii").strip() or "0", 8)
    except ValueError:
        raise _INVALID("invalid header") from None


def _plain_numbers(block: bytes) -> tuple[int, ...] | None:
    """mode, uid, gid, size, mtime and chksum, if all are plain octal.

    Then number() would read each the same and none can fail, so which
    field tarfile reads first no longer matters.
    """
    plain = _PLAIN_NUMBERS.match(block, 100)
    if plain is None:
        return None
    mode, uid, gid, size, mtime, chksum = plain.groups()
    return (int(mode, 8), int(uid, 8), int(gid, 8), int(size, 8),
            int(mtime, 8), int(chksum, 8))


def _devices(block: bytes) -> tuple[int, int]:
    """devmajor and devminor, read as number() reads them."""
    field = block[329:345]
    if field == _NO_DEVICES:
        return 0, 0
    plain = _PLAIN_DEVICES.fullmatch(field)
    if plain is not None:
        return int(plain[1], 8), int(plain[2], 8)
    return number(block[329:337]), number(block[337:345])


def _text(field: bytes, encoding: str, errors: str) -> str:
    end = field.find(_NUL)
    if end != -1:
        field = field[:end]
    return field.decode(encoding, errors)


def kind_and_size(block: bytes) -> tuple[bytes, int]:
    """A header's type and size field, checked as frombuf checks it all.

    For a reader that only steps from header to header: no TarInfo, no
    names decoded (they cannot fail). Raises what frombuf raises.
    """
    if len(block) != tarfile.BLOCKSIZE:
        raise (_EMPTY("empty header") if not block
               else _TRUNCATED("truncated header"))
    if block.count(_NUL) == tarfile.BLOCKSIZE:
        raise _END("end of file header")
    numbers = _plain_numbers(block)
    if numbers is None:
        if not checksum_matches(block, number(block[148:156])):
            raise _INVALID("bad checksum")
        for start, end in _NUMBERS:
            number(block[start:end])
        size = number(block[124:136])
    else:
        if not checksum_matches(block, numbers[5]):
            raise _INVALID("bad checksum")
        _devices(block)
        size = numbers[3]
    kind = block[156:157]
    if kind == tarfile.AREGTYPE:
        name = block[0:100]
        cut = name.find(_NUL)
        if (name[:cut] if cut != -1 else name).endswith(b"/"):
            kind = tarfile.DIRTYPE
    elif kind == tarfile.GNUTYPE_SPARSE:
        for pos in (386, 398, 410, 422, 434, 446, 458, 470, 483):
            number(block[pos:pos + 12])
    return kind, size


# mode, uid, gid, mtime, devmajor, devminor: frombuf reads them all.
_NUMBERS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337),
            (337, 345))


class TarInfo(tarfile.TarInfo):
    """tarfile.TarInfo with a faster frombuf; everything else is tarfile's."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        # tarfile.TarInfo.frombuf (Python 3.10 to 3.13), but for the sums.
        if len(buf) == 0:
            raise _EMPTY("empty header")
        if len(buf) != tarfile.BLOCKSIZE:
            raise _TRUNCATED("truncated header")
        if buf.count(_NUL) == tarfile.BLOCKSIZE:
            raise _END("end of file header")
        numbers = _plain_numbers(buf)
        chksum = number(buf[148:156]) if numbers is None else numbers[5]
        if not checksum_matches(buf, chksum):
            raise _INVALID("bad checksum")

        obj = cls()
        obj.name = _text(buf[0:100], encoding, errors)
        if numbers is None:
            obj.mode = number(buf[100:108])
            obj.uid = number(buf[108:116])
            obj.gid = number(buf[116:124])
            obj.size = number(buf[124:136])
            obj.mtime = number(buf[136:148])
        else:
            obj.mode, obj.uid, obj.gid, obj.size, obj.mtime = numbers[:5]
        obj.chksum = chksum
        obj.type = buf[156:157]
        # A field that starts with its NUL is empty, as most of these are.
        obj.linkname = _text(buf[157:257], encoding, errors) \
            if buf[157] else ""
        obj.uname = _text(buf[265:297], encoding, errors) if buf[265] else ""
        obj.gname = _text(buf[297:329], encoding, errors) if buf[297] else ""
        obj.devmajor, obj.devminor = _devices(buf)
        prefix = _text(buf[345:500], encoding, errors) if buf[345] else ""

        # Old V7 tars write a directory as a regular file named with a /.
        if obj.type == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE

        # Old GNU sparse files keep up to four sparse structures here, for
        # tarfile's _proc_sparse.
        if obj.type == tarfile.GNUTYPE_SPARSE:
            pos = 386
            structs = []
            for _ in range(4):
                try:
                    offset = number(buf[pos:pos + 12])
                    numbytes = number(buf[pos + 12:pos + 24])
                except ValueError:
                    break
                structs.append((offset, numbytes))
                pos += 24
            isextended = bool(buf[482])
            origsize = number(buf[483:495])
            obj._sparse_structs = (  # type: ignore[attr-defined]
                structs, isextended, origsize)

        if obj.isdir():
            obj.name = obj.name.rstrip("/")
        # A ustar name too long for its field continues in the prefix.
        if prefix and obj.type not in tarfile.GNU_TYPES:
            obj.name = prefix + "/" + obj.name
        return obj

    def _proc_pax(self, archive):
        # tarfile's own (Python 3.10 to 3.13) but for reading the records:
        # before 3.11.10 and 3.12.6 its regular expressions take quadratic
        # time over a crafted header (CVE-2024-6232), some half an hour
        # for one of the 1 MiB that the stream check lets through. Here one
        # pass reads them, as strictly as the fixed versions do.
        # tarfile's private helpers, which typeshed leaves out.
        this: Any = self
        buf = archive.fileobj.read(this._block(self.size))
        if self.type == tarfile.XGLTYPE:
            pax_headers = archive.pax_headers
        else:
            pax_headers = archive.pax_headers.copy()
        records = pax_records(buf)

        # hdrcharset=BINARY: names are in the archive's encoding, not UTF-8.
        charset = next((value for keyword, value in records
                        if keyword == b"hdrcharset"), None)
        binary = (charset == b"BINARY" if charset is not None
                  else pax_headers.get("hdrcharset") == "BINARY")
        encoding = archive.encoding if binary else "utf-8"
        for keyword, value in records:
            key = this._decode_pax_field(keyword, "utf-8", "utf-8",
                                         archive.errors)
            if key in _PAX_NAME_FIELDS:
                pax_headers[key] = this._decode_pax_field(
                    value, encoding, archive.encoding, archive.errors)
            else:
                pax_headers[key] = this._decode_pax_field(
                    value, "utf-8", "utf-8", archive.errors)

        try:
            member: Any = self.fromtarfile(archive)
        except tarfile.HeaderError as e:
            raise _SUBSEQUENT(str(e)) from None

        # GNU's sparse files in pax form, versions 0.1, 0.0 and 1.0.
        if "GNU.sparse.map" in pax_headers:
            this._proc_gnusparse_01(member, pax_headers)
        elif "GNU.sparse.size" in pax_headers:
            member.sparse = _sparse_00(records)
        elif pax_headers.get("GNU.sparse.major") == "1" \
                and pax_headers.get("GNU.sparse.minor") == "0":
            this._proc_gnusparse_10(member, pax_headers, archive)

        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            member._apply_pax_info(pax_headers, archive.encoding,
                                   archive.errors)
            member.offset = self.offset
            if "size" in pax_headers:
                # The real size moves where the next header starts.
                offset = member.offset_data
                if member.isreg() or member.type not in _SUPPORTED_TYPES:
                    offset += member._block(member.size)
                archive.offset = offset
        return member


def pax_records(buf: bytes) -> list[tuple[bytes, bytes]]:
    """The (keyword, value) records of a pax extended header, in order.

    Each is "LENGTH KEYWORD=VALUE\\n", LENGTH counting the whole record; a
    NUL ends the list. Anything else is an invalid header.
    """
    records = []
    at = 0
    while at < len(buf) and buf[at] != 0:
        space = buf.find(b" ", at, at + _MAX_LENGTH_DIGITS + 1)
        digits = buf[at:space]
        if space == -1 or not digits.isdigit():
            raise _INVALID("invalid header")
        length = int(digits)
        end = at + length - 1           # where its newline must be
        # The shortest record is "5 x=\\n".
        if length < 5 or end >= len(buf) or buf[end] != 0x0A:
            raise _INVALID("invalid header")
        keyword, equals, value = buf[space + 1:end].partition(b"=")
        if not keyword or not equals:
            raise _INVALID("invalid header")
        records.append((keyword, value))
        at += length
    return records


def _sparse_00(records: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """GNU sparse 0.0: the map as repeated offset and numbytes records."""
    offsets: list[int] = []
    sizes: list[int] = []
    for keyword, value in records:
        if keyword in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            if not value.isdigit():
                raise _INVALID("invalid header")
            (offsets if keyword == b"GNU.sparse.offset" else sizes).append(
                int(value))
    return list(zip(offsets, sizes))
