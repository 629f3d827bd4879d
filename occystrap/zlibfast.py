"""The one seam for gzip: ISA-L or zlib-ng when installed, else zlib.

Inflating is most of a layer's CPU time. Measured on the benchmark's gzip
layers, ISA-L (python-isal) and zlib-ng inflate in about half zlib's time,
and ISA-L deflates at zlib level 1's ratio in a tenth of its time, so ISA-L
comes first. All three share zlib's API (decompressobj with max_length and
unconsumed_tail, compressobj) and release the GIL while they work, so the
rest of occystrap does not care which one it got. The fast ones are an
optional extra (`pip install 'occystrap[fast]'`): the runtime core stays
click and requests.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

LOG = logging.getLogger(__name__)

# gzip wrapper around deflate, with the largest window: what layers use.
GZIP_WBITS = 16 + zlib.MAX_WBITS
# Raw deflate: gzip_chunks frames the gzip member itself.
RAW_WBITS = -zlib.MAX_WBITS
DEFAULT_LEVEL = 6
# ISA-L ends a deflate block where each compress() call's input ends, so the
# same bytes in other chunks give another blob; fixed-size input keeps the
# output a function of the bytes alone.
_DEFLATE_BLOCK = 1 << 20


def _isal_level(level: int) -> int:
    # ISA-L has levels 0-3 and no "stored" level; spread zlib's 1-9 over 1-3.
    # Its level 1 already matches zlib level 1's ratio (see the docstring).
    return 1 if level <= 3 else 2 if level <= 6 else 3


@dataclasses.dataclass(frozen=True)
class Backend:
    """One zlib-compatible library, as the seam uses it."""

    name: str
    module: Any
    # Maps zlib's 1-9 levels to the library's own.
    level: Callable[[int], int] = lambda level: level

    @property
    def error(self) -> type[Exception]:
        return self.module.error

    def decompressobj(self) -> Any:
        """A gzip inflater with zlib's decompressobj interface."""
        return self.module.decompressobj(GZIP_WBITS)

    def compressobj(self, level: int) -> Any:
        """A raw deflater, for gzip_chunks to frame."""
        return self.module.compressobj(self.level(level), self.module.DEFLATED,
                                       RAW_WBITS)

    def crc32(self, data: bytes | bytearray | memoryview,
              value: int = 0) -> int:
        return self.module.crc32(data, value)


# In order of preference: (importable module, name, level map).
_CANDIDATES: list[tuple[str, str, Callable[[int], int]]] = [
    ("isal.isal_zlib", "isal", _isal_level),
    ("zlib_ng.zlib_ng", "zlib-ng", lambda level: level),
]
ZLIB = Backend("zlib", zlib)


def choose() -> Backend:
    """The fastest installed library; zlib when no fast one imports."""
    for module_name, name, level in _CANDIDATES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return Backend(name, module, level)
    return ZLIB


BACKEND = choose()
LOG.debug("gzip through %s", BACKEND.name)


def gzip_chunks(chunks: Iterable[bytes], level: int = DEFAULT_LEVEL,
                backend: Backend | None = None
                ) -> Iterator[bytes | bytearray]:
    """Compress a stream of bytes into one gzip member, chunk by chunk.

    The output depends only on the bytes, not on how they are chunked, for
    a given library and version: no file name and mtime 0. Different
    libraries (or versions) give different, equally valid, bytes. level is
    on zlib's 1-9 scale.
    """
    if not 1 <= level <= 9:
        raise ValueError(f"gzip level must be 1 to 9, not {level}")
    member = _Member(backend or BACKEND, level)
    yield _GZIP_HEADER
    pending = bytearray()
    for chunk in chunks:
        if pending:
            # Top the pending block up; what is left is a new chunk.
            taken = _DEFLATE_BLOCK - len(pending)
            pending += chunk[:taken]
            chunk = chunk[taken:]
            if len(pending) < _DEFLATE_BLOCK:
                continue
            yield from member.block(pending)
            pending.clear()
        # Whole blocks straight from the chunk, without copying them.
        whole = len(chunk) - len(chunk) % _DEFLATE_BLOCK
        with memoryview(chunk) as view:
            for start in range(0, whole, _DEFLATE_BLOCK):
                yield from member.block(view[start:start + _DEFLATE_BLOCK])
            pending += view[whole:]
    yield from member.block(pending)
    yield member.end()


# ID, deflate, no flags, mtime 0, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# Parts of a block deflated to see whether the block is worth deflating.
_SAMPLE = 8 << 10
_SAMPLES = 3
# A sample that deflates to more than this share of itself: incompressible.
_NOT_WORTH = 0.97
# The most bytes one stored deflate block holds.
_STORED_MAX = 0xFFFF


class _Member:
    """One gzip member's deflate stream, block by fixed-size block.

    Blocks of already compressed content (packed files, images, archives:
    common in layers) go into the stream as stored blocks: deflating them
    costs several times copying them and gives nothing back, or a few bytes
    more. Before a stored block the deflater is fully flushed, which ends
    its output on a byte boundary and forgets its history, so nothing it
    writes later refers back across bytes it never saw.
    """

    def __init__(self, backend: Backend, level: int) -> None:
        self._backend = backend
        self._level = level
        self._deflater = backend.compressobj(level)
        # Whether the deflater holds input it has not flushed.
        self._open = False
        self._crc = 0
        self._size = 0

    def block(self, data: bytes | bytearray | memoryview
              ) -> Iterator[bytes | bytearray]:
        if not data:
            return
        self._crc = self._backend.crc32(data, self._crc)
        self._size += len(data)
        if self._worth_deflating(data):
            self._open = True
            out = self._deflater.compress(data)
            if out:
                yield out
            return
        if self._open:
            yield self._deflater.flush(self._backend.module.Z_FULL_FLUSH)
            self._open = False
        yield _stored(data)

    def end(self) -> bytes:
        trailer = struct.pack("<II", self._crc & 0xFFFFFFFF,
                              self._size & 0xFFFFFFFF)
        return self._deflater.flush() + trailer

    def _worth_deflating(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether samples from the start, middle and end of the block
        shrink; small blocks are always deflated."""
        if len(data) < _SAMPLE * _SAMPLES * 4:
            return True
        step = (len(data) - _SAMPLE) // (_SAMPLES - 1)
        for at in range(0, step * _SAMPLES, step):
            probe = self._backend.compressobj(self._level)
            sample = data[at:at + _SAMPLE]
            if len(probe.compress(sample) + probe.flush()) \
                    < len(sample) * _NOT_WORTH:
                return True
        return False


def _stored(data: bytes | bytearray | memoryview) -> bytearray:
    """Data as non-final stored deflate blocks, starting on a byte
    boundary: a header byte (BFINAL 0, BTYPE 00), LEN and NLEN, the bytes.
    Returned as built: a copy into bytes would double the block's cost."""
    out = bytearray()
    with memoryview(data) as view:
        for at in range(0, len(view), _STORED_MAX):
            piece = view[at:at + _STORED_MAX]
            out += struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF)
            out += piece
    return out
