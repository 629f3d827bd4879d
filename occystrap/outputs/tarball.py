"""Writes an image as a `docker load`-able tarball, atomically, in one pass.

Tar members may come in any order, so each layer whose size can be
predicted gets its own region of the file up front, and layers stream into
their regions in parallel. Layers of unknown size are appended at the end,
one at a time and in manifest order, so the output stays deterministic.
A wrong prediction costs a little speed, never correctness: the region
becomes an unused filler member and the layer moves to the end.

An image pulled by digest alone has no tag for manifest.json, and
containerd's importer makes no image at all of an entry without one. Such
a tarball takes the shape Docker 25+ gives `docker save`: layers and the
config under `blobs/sha256/`, an OCI manifest of the uncompressed layers,
and an `oci-layout` and `index.json` that name it REPO@sha256:… (which
containerd reads instead of manifest.json; docker still reads the latter).

A TARFILE that is not a regular file (`-` for standard output,
/dev/stdout, a FIFO, a tape) cannot take regions out of order, nor be
replaced by a rename: the tarball is built in an anonymous temporary file
(in TMPDIR, gone however the process ends) and streamed out once complete.
"""

import contextlib
import dataclasses
import json
import os
import re
import stat
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Final, Iterator

from occystrap import dockersave, layout
from occystrap.digest import Digest
from occystrap.errors import OutputError
from occystrap.fsutil import (
    claim_temp, current_umask, output_errors, sweep_stale, write_all)
from occystrap.image import Flow, Image, Layer
from occystrap.manifest import OCI_MANIFEST, Descriptor

_BLOCK = tarfile.BLOCKSIZE
# GNU headers hold any size in one block (base-256 past 8 GiB), so a header
# can be written before its size is final and rewritten in place.
_FORMAT: Final = tarfile.GNU_FORMAT
# Smaller than any real layer tar (two zero blocks end every archive).
_MIN_HINT = 2 * _BLOCK
_COPY_CHUNK = 1 << 20
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
STDOUT = "-"
# Names of an already open descriptor: writing there must not reopen it
# (a fresh open of a redirected file starts again at its first byte).
_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd|proc/\d+/fd)/(\d+)\Z")
_STD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


@dataclasses.dataclass(frozen=True)
class _Region:
    header_at: int
    size: int


class TarballWriter:
    flow = Flow.LAYER
    wants_size_hints = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._temp: Path | None = None
        # Guards the descriptor: no thread writes once abort closed it.
        self._io = threading.Lock()
        self._closed = True
        self._end = 0
        self._regions: dict[Digest, _Region] = {}
        self._tail_rank: dict[Digest, int] = {}
        self._tail = threading.Condition()
        self._tail_busy = False
        self._tail_next = 0
        self._moving = 0
        self._fillers = 0
        self._images: list[Image] = []
        self._written: set[Digest] = set()
        # Decided by the first image: an OCI layout inside (see above).
        self._oci: bool | None = None
        self._sizes: dict[Digest, int] = {}
        self._entries: list[layout.Entry] = []
        # Streaming to a non-regular TARFILE: how to reach it at the end.
        self._stream: _Stream | None = None

    def open(self) -> None:
        with output_errors(self.path):
            self._open()

    def _open(self) -> None:
        path = self.path
        self._stream = _stream_for(path)
        if self._stream is not None:
            # Unlinked at once: nothing to clean up, even after SIGKILL.
            with tempfile.TemporaryFile(prefix=".occystrap-") as f:
                self._fd = os.dup(f.fileno())
            self._closed = False
            return
        if path.is_dir():
            raise OutputError(f"{path} is a directory; give a file name for "
                              "the tarball")
        parent = path.parent
        if not parent.is_dir():
            raise OutputError(f"cannot write {path}: directory {parent} "
                              "does not exist")
        # What runs killed outright left; a live run holds its lock.
        sweep_stale(parent, f".{path.name}.")
        try:
            self._fd, self._temp = claim_temp(path)
        except OSError as e:
            raise OutputError(f"cannot write in {parent}: {e.strerror}") \
                from None
        self._closed = False

    def begin(self, image: Image) -> None:
        if self._oci is None:
            self._oci = image.repo_tag is None and image.full_name is not None

    def _layer_path(self, diff_id: Digest) -> str:
        if self._oci:
            return layout.blob_path(diff_id)
        return dockersave.layer_path(diff_id)

    def has_layer(self, layer: Layer) -> bool:
        # Images in one tarball share their common layers' members.
        return layer.diff_id in self._written

    def plan(self, layers: list[tuple[Layer, int | None]]) -> None:
        self._tail_rank.clear()
        self._tail_next = 0
        with output_errors(self.path):
            for layer, hint in layers:
                if not self._oci:
                    name = dockersave.layer_dir(layer.diff_id)
                    self._append_member(f"{name}/", None)
                    self._append_member(f"{name}/VERSION",
                                        dockersave.LAYER_VERSION)
                if hint is not None and hint >= _MIN_HINT:
                    region = _Region(self._end, hint)
                    self._pwrite(_header(self._layer_path(layer.diff_id),
                                         hint), region.header_at)
                    self._end += _BLOCK + _padded(hint)
                    self._regions[layer.diff_id] = region
                else:
                    self._tail_rank[layer.diff_id] = len(self._tail_rank)

    def write_layer(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        with output_errors(self.path):
            region = self._regions.get(layer.diff_id)
            if region is not None:
                self._fill(layer, region, iter(chunks))
            else:
                with self._tail_turn(self._tail_rank[layer.diff_id]):
                    self._append_stream(layer, iter(chunks), b"", 0)

    def _fill(self, layer: Layer, region: _Region,
              chunks: Iterator[bytes]) -> None:
        start = region.header_at + _BLOCK
        written = 0
        for chunk in chunks:
            if written + len(chunk) > region.size:
                self._move_to_tail(layer, region, written, chunk, chunks)
                return
            self._pwrite(chunk, start + written)
            written += len(chunk)
        self._sizes[layer.diff_id] = written
        if written == region.size:
            return
        # Shorter than predicted: keep the layer here and mark the rest
        # of the region as filler, so the archive stays well-formed.
        name = self._layer_path(layer.diff_id)
        self._pwrite(_header(name, written), region.header_at)
        spare = _padded(region.size) - _padded(written)
        if spare:
            self._pwrite(self._filler_header(spare - _BLOCK),
                         start + _padded(written))

    def _move_to_tail(self, layer: Layer, region: _Region, written: int,
                      chunk: bytes, rest: Iterator[bytes]) -> None:
        """Longer than predicted: continue at the end of the archive."""
        with self._tail_turn(None):
            self._append_stream(layer, rest, chunk,
                                region.header_at + _BLOCK, written)
        self._pwrite(self._filler_header(_padded(region.size)),
                     region.header_at)

    def _append_stream(self, layer: Layer, chunks: Iterator[bytes],
                       first: bytes, moved_from: int,
                       moved: int = 0) -> None:
        """Stream a layer to the end; the caller holds the tail."""
        header_at = self._end
        name = self._layer_path(layer.diff_id)
        self._pwrite(_header(name, 0), header_at)
        position = header_at + _BLOCK
        for offset in range(0, moved, _COPY_CHUNK):
            size = min(_COPY_CHUNK, moved - offset)
            self._pwrite(os.pread(self._fd, size, moved_from + offset),
                         position + offset)
        position += moved
        if first:
            self._pwrite(first, position)
            position += len(first)
        for chunk in chunks:
            self._pwrite(chunk, position)
            position += len(chunk)
        size = position - header_at - _BLOCK
        self._sizes[layer.diff_id] = size
        self._pwrite(_header(name, size), header_at)
        self._end = header_at + _BLOCK + _padded(size)
        self._pwrite(b"\0" * (self._end - position), position)

    @contextlib.contextmanager
    def _tail_turn(self, rank: int | None) -> Iterator[None]:
        """Exclusive use of the archive's end: planned layers in order,
        layers moved after a wrong prediction first."""
        with self._tail:
            if rank is None:
                self._moving += 1
            try:
                while self._tail_busy or (rank is not None and (
                        rank != self._tail_next or self._moving)):
                    if self._closed:
                        raise OutputError("the output was abandoned")
                    self._tail.wait(0.2)
            finally:
                if rank is None:
                    self._moving -= 1
            self._tail_busy = True
        try:
            yield
        finally:
            with self._tail:
                self._tail_busy = False
                if rank is not None:
                    self._tail_next += 1
                self._tail.notify_all()

    def commit(self, image: Image) -> None:
        # A layer or config that an earlier image brought is there once.
        known = {dockersave.layer_dir(d) for d in self._written}
        with output_errors(self.path):
            if not self._oci:
                for name, data in dockersave.legacy_layer_files(image):
                    if name.split("/")[0] not in known:
                        self._append_member(name, data)
            if image.config_digest not in {i.config_digest
                                           for i in self._images}:
                self._append_member(
                    layout.blob_path(image.config_digest) if self._oci
                    else dockersave.config_name(image.config_digest),
                    image.config)
            if self._oci:
                self._entries.append(self._oci_entry(image))
        self._written.update(layer.diff_id for layer in image.layers)
        self._images.append(image)

    def _oci_entry(self, image: Image) -> layout.Entry:
        """The image's OCI manifest, written as a blob, and its index entry."""
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": _OCI_CONFIG,
                       "digest": str(image.config_digest),
                       "size": len(image.config)},
            "layers": [{"mediaType": _OCI_LAYER, "digest": str(layer.diff_id),
                        "size": self._sizes[layer.diff_id]}
                       for layer in image.layers],
        }, separators=(",", ":")).encode()
        digest = Digest.of(manifest)
        if digest not in {e.descriptor.digest for e in self._entries}:
            self._append_member(layout.blob_path(digest), manifest)
        descriptor = Descriptor(OCI_MANIFEST, digest, len(manifest),
                                image.platform)
        return layout.Entry(
            descriptor, image.full_name or image.source or image.repository,
            image.repo_tag, image.config_digest,
            tuple(layer.diff_id for layer in image.layers))

    def close(self) -> None:
        assert not self._closed, "open() comes first"
        with output_errors(self.path):
            if self._oci:
                self._append_member(layout.OCI_LAYOUT, layout.layout_json())
                self._append_member(layout.INDEX,
                                    layout.index_json(self._entries))
                self._append_member(
                    layout.DOCKER_MANIFEST,
                    layout.docker_manifest_json(self._entries))
            else:
                self._append_member(dockersave.MANIFEST,
                                    dockersave.manifest_json(*self._images))
            repositories = dockersave.repositories_json(*self._images)
            if repositories:
                self._append_member(dockersave.REPOSITORIES, repositories)
            self._pwrite(b"\0" * (2 * _BLOCK), self._end)
            if self._stream is not None:
                self._stream_out(self._stream, self._end + 2 * _BLOCK)
                with self._io:
                    self._closed = True
                    os.close(self._fd)
                return
            assert self._temp is not None
            # No fsync, as docker save and skopeo's docker-archive: waiting
            # for the disk would double the time of a fast fetch. A killed
            # run still leaves nothing behind, and the rename keeps readers
            # from seeing a half-written tarball; after a power cut only
            # what the kernel had written survives (`sync` settles it).
            os.fchmod(self._fd, 0o644 & ~current_umask())
            # Renamed while still open, and so locked: no other run's
            # sweep can take it for stale in between.
            os.replace(self._temp, self.path)
            with self._io:
                self._closed = True
                os.close(self._fd)

    def _stream_out(self, stream: "_Stream", size: int) -> None:
        """Copy the finished tarball to the stream, in order."""
        out = stream.open()
        try:
            offset = 0
            while offset < size:
                chunk = os.pread(self._fd, min(_COPY_CHUNK, size - offset),
                                 offset)
                write_all(out, chunk)
                offset += len(chunk)
        finally:
            os.close(out)

    def abort(self) -> None:
        with self._io:
            if not self._closed:
                self._closed = True
                os.close(self._fd)
        with self._tail:
            self._tail.notify_all()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        with self._io:
            if self._closed:
                raise OutputError("the output was abandoned")
            while view:
                done = os.pwrite(self._fd, view, offset)
                view, offset = view[done:], offset + done

    def _append_member(self, name: str, data: bytes | None) -> None:
        if data is None:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            self._pwrite(info.tobuf(_FORMAT, "utf-8", "strict"), self._end)
            self._end += _BLOCK
            return
        self._pwrite(_header(name, len(data)) + data + _padding(len(data)),
                     self._end)
        self._end += _BLOCK + _padded(len(data))

    def _filler_header(self, size: int) -> bytes:
        with self._tail:
            self._fillers += 1
            number = self._fillers
        return _header(f".occystrap-unused-{number}", size)


@dataclasses.dataclass(frozen=True)
class _Stream:
    """A TARFILE written in order: an open descriptor, or a node to open
    (a FIFO waits there for its reader, as a shell's `>` would)."""

    path: Path
    fd: int | None = None

    def open(self) -> int:
        if self.fd is not None:
            return os.dup(self.fd)
        # Never O_CREAT or O_TRUNC: the node is written to, not replaced.
        return os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)


def _stream_for(path: Path) -> _Stream | None:
    """How to write a TARFILE that is not a regular file, or None."""
    text = str(path)
    match = _FD_PATH.match(text)
    fd: int | None = None
    if text == STDOUT:
        fd = 1
    elif text in _STD_NAMES:
        fd = _STD_NAMES[text]
    elif match:
        fd = int(match.group(1))
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise OutputError(f"cannot write {path}: descriptor {fd} is "
                              "not open") from None
        if os.isatty(fd):
            raise OutputError(
                f"{path} is a terminal; redirect it to a file or a pipe "
                "(occystrap ... - > image.tar, or | docker load)")
        return _Stream(path, fd)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISSOCK(mode):
        raise OutputError(f"{path} is a socket; give a file, a FIFO or - "
                          "for standard output")
    return _Stream(path)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    header = info.tobuf(_FORMAT, "utf-8", "strict")
    assert len(header) == _BLOCK, "layer paths fit one header block"
    return header


def _padded(size: int) -> int:
    return size + (-size % _BLOCK)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)
