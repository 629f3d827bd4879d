"""Checks that a layer is a well-formed tar stream while its bytes pass.

A layer whose digests match can still be a broken tar (a registry that
stored a truncated upload, a buggy build tool). `docker load` would find
out on the far side of an air gap; this finds out while fetching. Only the
headers are read, as the bytes stream past: one pass, no buffering.

The rules follow what Go's archive/tar (docker, containerd) accepts: the
stream may end at a header boundary without the two zero blocks, data after
the first zero block is ignored, and entries that cannot carry data
(directories, links, devices, fifos) have none whatever their size says.
"""

import tarfile
from typing import Iterable, Iterator

from occystrap.errors import LayerError
from occystrap.tarheader import kind_and_size, pax_records

_BLOCK = tarfile.BLOCKSIZE
_HEADER_ONLY = {tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE,
                tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE}
# Extended headers are metadata; Go refuses ones above 1 MiB too.
_MAX_EXTENDED = 1 << 20


def check_tar(chunks: Iterable[bytes], what: str) -> Iterator[bytes]:
    """Pass chunks through, raising LayerError if they are not a tar stream."""
    checker = _Checker(what)
    for chunk in chunks:
        checker.feed(chunk)
        yield chunk
    checker.finish()


class _Checker:
    def __init__(self, what: str) -> None:
        self._what = what
        self._offset = 0           # of the next byte fed
        self._header = bytearray()
        self._data = 0             # data bytes left in the current entry
        self._padding = 0          # then padding bytes to the next header
        self._extended: bytearray | None = None  # a PAX header's records
        self._pax_size: int | None = None
        # An extended header (long name, PAX) promises an entry after it.
        self._entry_due = False
        self._sparse_blocks = False  # old GNU sparse maps continue in blocks
        self._ended = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and not self._ended:
            if self._data:
                taken = view[:self._data]
                if self._extended is not None:
                    self._extended += taken
                self._data -= len(taken)
                self._advance(len(taken))
                view = view[len(taken):]
                if not self._data and self._extended is not None:
                    self._read_pax(bytes(self._extended))
                    self._extended = None
            elif self._padding:
                skipped = min(self._padding, len(view))
                self._padding -= skipped
                self._advance(skipped)
                view = view[skipped:]
            else:
                taken = view[:_BLOCK - len(self._header)]
                self._header += taken
                self._advance(len(taken))
                view = view[len(taken):]
                if len(self._header) == _BLOCK:
                    if self._sparse_blocks:
                        # Byte 504 says whether yet another map block follows.
                        self._sparse_blocks = bool(self._header[504])
                    else:
                        self._parse_header(bytes(self._header))
                    self._header.clear()

    def finish(self) -> None:
        if self._ended:
            return
        # Ending between entries is what many tools write; ending inside a
        # header or inside an entry's data is a truncated layer. (A short
        # final padding Go reads as the end, and so do we.)
        if self._header or self._data or self._entry_due:
            raise LayerError(
                f"{self._what} is truncated: its tar stream ends inside an "
                f"entry, after {self._offset} bytes")

    def _advance(self, count: int) -> None:
        self._offset += count

    def _parse_header(self, block: bytes) -> None:
        at = self._offset - _BLOCK
        try:
            kind, size = kind_and_size(block)
        # Undocumented, so typeshed leaves it out; present since Python 3.3.
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]
            self._ended = True  # a zero block: the end of the archive
            return
        except tarfile.TarError as e:
            raise LayerError(
                f"{self._what} is not a valid tar stream: bad header at byte "
                f"{at} ({e})") from None
        if kind in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                    tarfile.GNUTYPE_LONGLINK, tarfile.XGLTYPE):
            if size > _MAX_EXTENDED:
                raise LayerError(
                    f"{self._what} is not a valid tar stream: a "
                    f"{size}-byte extended header at byte {at}")
            if kind == tarfile.XHDTYPE:
                self._extended = bytearray()
            self._entry_due = kind != tarfile.XGLTYPE
        else:
            self._entry_due = False
            if self._pax_size is not None:
                size, self._pax_size = self._pax_size, None
            if kind in _HEADER_ONLY:
                size = 0
        if size < 0:
            raise LayerError(
                f"{self._what} is not a valid tar stream: negative size at "
                f"byte {at}")
        if kind == tarfile.GNUTYPE_SPARSE and block[482]:
            self._sparse_blocks = True
        self._data = size
        self._padding = -size % _BLOCK
        if not size and self._extended is not None:
            self._extended = None

    def _read_pax(self, records: bytes) -> None:
        """Only the size matters here, but every record must be well
        formed: Go refuses a layer whose are not, and tarfile would take
        one for the end of the archive."""
        try:
            parsed = pax_records(records)
        except tarfile.TarError:
            raise LayerError(
                f"{self._what} is not a valid tar stream: a malformed pax "
                f"header before byte {self._offset}") from None
        for keyword, value in parsed:
            if keyword == b"size" and value.isdigit():
                self._pax_size = int(value)
