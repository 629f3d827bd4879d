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
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

LOG = logging.getLogger(__name__)

# gzip wrapper around deflate, with the largest window: what layers use.
GZIP_WBITS = 16 + zlib.MAX_WBITS
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
        """A gzip deflater: no file name, mtime 0, as zlib's own wrapper."""
        return self.module.compressobj(self.level(level), self.module.DEFLATED,
                                       GZIP_WBITS)


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
                backend: Backend | None = None) -> Iterator[bytes]:
    """Compress a stream of bytes into one gzip member, chunk by chunk.

    The output depends only on the bytes, not on how they are chunked, for
    a given library and version: no file name and mtime 0, as zlib's own
    gzip wrapper writes. Different libraries (or versions) give different,
    equally valid, bytes. level is on zlib's 1-9 scale.
    """
    if not 1 <= level <= 9:
        raise ValueError(f"gzip level must be 1 to 9, not {level}")
    deflater = (backend or BACKEND).compressobj(level)
    pending = bytearray()
    for chunk in chunks:
        if pending:
            # Top the pending block up; what is left is a new chunk.
            taken = _DEFLATE_BLOCK - len(pending)
            pending += chunk[:taken]
            chunk = chunk[taken:]
            if len(pending) < _DEFLATE_BLOCK:
                continue
            out = deflater.compress(pending)
            pending.clear()
            if out:
                yield out
        # Whole blocks straight from the chunk, without copying them.
        whole = len(chunk) - len(chunk) % _DEFLATE_BLOCK
        with memoryview(chunk) as view:
            for start in range(0, whole, _DEFLATE_BLOCK):
                out = deflater.compress(view[start:start + _DEFLATE_BLOCK])
                if out:
                    yield out
            pending += view[whole:]
    yield deflater.compress(pending) + deflater.flush()
