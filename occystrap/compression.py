"""Streaming decompression of layer blobs, chosen by their magic bytes.

Media types say what a layer should be, but registries and old clients get
them wrong often enough that the bytes themselves are the better witness.
"""

import io
from typing import IO, Iterable, Iterator, cast

from occystrap import zlibfast
from occystrap.errors import LayerError

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OUT_CHUNK = 1 << 20


def decompress(chunks: Iterable[bytes], what: str) -> Iterator[bytes]:
    """Yield the uncompressed bytes of a gzip, zstd or plain stream."""
    source = iter(chunks)
    head = b""
    for chunk in source:
        head += chunk
        if len(head) >= 4:
            break
    if head.startswith(_GZIP_MAGIC):
        return _gunzip(head, source, what)
    if head.startswith(_ZSTD_MAGIC):
        return _unzstd(head, source, what)
    return _plain(head, source)


def _plain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _gunzip(head: bytes, rest: Iterator[bytes], what: str) -> Iterator[bytes]:
    # Looked up per stream, so tests can swap the library.
    backend = zlibfast.BACKEND
    inflater = backend.decompressobj()
    pending = head
    try:
        while True:
            while pending:
                # Bounded output per call: a small hostile input must not
                # inflate into one huge buffer.
                out = inflater.decompress(pending, _OUT_CHUNK)
                if out:
                    yield out
                if inflater.eof:
                    # Concatenated gzip members are one valid stream.
                    pending = inflater.unused_data
                    if pending:
                        inflater = backend.decompressobj()
                    continue
                pending = inflater.unconsumed_tail
            chunk = next(rest, None)
            if chunk is None:
                break
            pending = chunk
        tail = inflater.flush()
        if tail:
            yield tail
    except backend.error as e:
        raise LayerError(f"{what} is not valid gzip data: {e}") from None
    if not inflater.eof:
        raise LayerError(f"{what} is truncated: the gzip stream ends early")


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks."""

    def __init__(self, head: bytes, rest: Iterator[bytes]) -> None:
        self._buffer = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            chunk = next(self._rest, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _unzstd(head: bytes, rest: Iterator[bytes], what: str) -> Iterator[bytes]:
    try:
        import zstandard
    except ImportError:
        raise LayerError(
            f"{what} is zstd-compressed; install zstd support with "
            "pip install 'occystrap[zstd]'") from None
    # zstandard only calls read(); its stubs ask for a whole IO[bytes].
    source = cast("IO[bytes]", _ChunkReader(head, rest))
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_across_frames=True)
    try:
        while True:
            out = reader.read(_OUT_CHUNK)
            if not out:
                break
            yield out
    except zstandard.ZstdError as e:
        raise LayerError(f"{what} is not valid zstd data: {e}") from None
