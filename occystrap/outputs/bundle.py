"""Writes images into a bundle (see layout.py) with their original bytes.

Each blob grows under a hidden partial name, locked while it grows, and
takes its real name only once it hashes to its digest. A partial that a
killed run left behind is resumed from the byte it reached, and a second
run wanting the same blob waits for the first instead of fetching it too.
index.json and manifest.json change together, under the bundle's lock,
only after every blob of an image is in place.
"""

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from occystrap import layout
from occystrap.digest import Digest, Hasher
from occystrap.errors import OutputError, StoreError, VerificationError
from occystrap.fsutil import (
    current_umask, file_digest, locked, output_errors, write_all,
    write_atomic)
from occystrap.image import Flow, Image, Layer
from occystrap.manifest import (
    Descriptor, ImageIndex, Platform, parse_manifest)

LOG = logging.getLogger(__name__)
_READ_CHUNK = 1 << 20
# How much of a blob is written before its writing to disk is started.
_WRITE_BACK = 8 << 20
# Blobs synced to disk at once, each on its own thread.
_SETTLERS = 4
# Times open() makes the directory again after another run removed it.
_CLAIM_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Committed:
    """What commit() recorded: the name and what it now points at."""

    name: str
    digest: Digest
    replaced: Digest | None


class BundleWriter:
    flow = Flow.BLOB
    wants_size_hints = False

    def __init__(self, path: Path, platform: Platform,
                 all_platforms: bool = False) -> None:
        self.path = path
        self._platform = platform
        self._all_platforms = all_platforms
        self._created = False
        self._in_use: int | None = None
        self._verified: set[Digest] = set()
        # Blobs this run holds the lock of, by digest: (descriptor, file).
        self._claims: dict[Digest, int] = {}
        self._claims_lock = threading.Lock()
        # Platform images of an index fetched whole, until all are here.
        self._pending: dict[Digest, dict[Digest, Image]] = {}
        self.committed: list[Committed] = []
        self.new_blobs = 0
        self.present_bytes = 0
        # Blobs written whole, being synced and renamed (see _settle).
        self._settler: concurrent.futures.ThreadPoolExecutor | None = None
        self._settling: list[concurrent.futures.Future[None]] = []

    # -- the destination -----------------------------------------------------

    def open(self) -> None:
        with output_errors(self.path):
            # A run that made the directory and found nothing to keep may
            # remove it while we start: then we make it again.
            for attempt in range(_CLAIM_ATTEMPTS):
                try:
                    return self._claim()
                except FileNotFoundError:
                    if attempt == _CLAIM_ATTEMPTS - 1:
                        raise

    def _claim(self) -> None:
        path = self.path
        # One look (not exists() then is_dir()): another run may be
        # making or removing it meanwhile.
        try:
            is_other = not stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            is_other = False
        if is_other:
            raise OutputError(f"{path} exists and is not a directory")
        if not path.parent.is_dir():
            raise OutputError(f"cannot write {path}: directory "
                              f"{path.parent} does not exist")
        try:
            path.mkdir()
            self._created = True
        except FileExistsError:
            # Someone else's files: refuse before leaving a lock in them.
            # A directory holding our lock is a bundle, perhaps being made
            # by another run this very moment.
            names = {p.name for p in path.iterdir()}
            if names and not names & {layout.OCI_LAYOUT, layout.LOCK}:
                raise _not_a_bundle(path) from None
        with _locked_as_named(path / layout.LOCK):
            # Under the lock, a run that made the bundle has finished.
            if not (path / layout.OCI_LAYOUT).is_file():
                if any(p.name != layout.LOCK for p in path.iterdir()):
                    raise _not_a_bundle(path)
                write_atomic(path / layout.OCI_LAYOUT, layout.layout_json())
            (path / layout.BLOBS / "sha256").mkdir(parents=True,
                                                   exist_ok=True)
            if not (path / layout.INDEX).exists():
                self._write_entries([])
            # Held shared while this run uses the bundle, so that no other
            # run removes it as unused meanwhile (see _discard_unused).
            self._in_use = os.open(path, os.O_RDONLY | os.O_DIRECTORY
                                   | os.O_CLOEXEC)
            fcntl.flock(self._in_use, fcntl.LOCK_SH)

    def close(self) -> None:
        try:
            self._settled()
        finally:
            self._release_all()
            # Every image failed (--keep-going): a new bundle with nothing
            # in it is no output.
            self._finish()

    def abort(self) -> None:
        try:
            self._settled()
        except Exception as e:
            LOG.debug("while abandoning %s: %s", self.path, e)
        finally:
            self._release_all()
            self._finish()

    def _finish(self) -> None:
        """Let go of the bundle; remove the directory if this run made it
        and nothing in it is worth keeping."""
        if self._settler is not None:
            self._settler.shutdown()
            self._settler = None
        if self._in_use is not None:
            os.close(self._in_use)
            self._in_use = None
        if self._created and not self.committed:
            self._discard_unused()
        self._created = False

    def _discard_unused(self) -> None:
        """Remove the bundle if it holds no image, no blob and no partial,
        and no other run is using it."""
        path = self.path
        try:
            with _locked_as_named(path / layout.LOCK):
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY
                             | os.O_CLOEXEC)
                try:
                    # Fails while another run holds it shared (see _claim).
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if read_entries(path) or any(
                            (path / layout.BLOBS / "sha256").iterdir()):
                        return
                    # Moved aside first, so nothing can write into a
                    # half-removed tree.
                    aside = Path(tempfile.mkdtemp(
                        prefix=f".{path.name}.removed-", dir=path.parent))
                    try:
                        os.rename(path, aside)
                    except OSError:
                        aside.rmdir()
                        raise
                finally:
                    os.close(fd)
        except (OSError, StoreError):
            return
        shutil.rmtree(aside, ignore_errors=True)

    # -- images ----------------------------------------------------------------

    def entries(self) -> list[layout.Entry]:
        """What the bundle holds now."""
        return read_entries(self.path)

    def begin(self, image: Image) -> None:
        if image.manifest is None or image.manifest_digest is None:
            raise OutputError(
                f"{image.source or image.repository}: the source keeps no "
                "original manifest, so it cannot go into a bundle")

    def plan(self, layers: list[tuple[Layer, int | None]]) -> None:
        pass

    def has_layer(self, layer: Layer) -> bool:
        assert layer.descriptor is not None
        return self._has_blob(layer.descriptor)

    def _has_blob(self, descriptor: Descriptor) -> bool:
        """A blob counts as present only if it hashes right (once a run)."""
        digest = descriptor.digest
        if digest in self._verified:
            return True
        target = self.path / layout.blob_path(digest)
        if file_digest(target, digest.algorithm) != digest:
            return False
        self._verified.add(digest)
        return True

    def resume_from(self, layer: Layer) -> Hasher | None:
        assert layer.descriptor is not None
        descriptor = layer.descriptor
        digest = descriptor.digest
        partial = self.path / layout.partial_path(digest)
        with output_errors(partial):
            fd = _lock_partial(partial, digest, self.path)
            with self._claims_lock:
                self._claims[digest] = fd
            if self._has_blob(descriptor):
                # Another run finished it while we waited.
                return _hashed(self.path / layout.blob_path(digest), digest)
            if os.fstat(fd).st_size > descriptor.size:
                os.ftruncate(fd, 0)
            have = _hashed_fd(fd, digest)
        if have.size:
            LOG.info("resuming blob %s at byte %d of %d", digest.short(),
                     have.size, descriptor.size)
        return have if have.size else None

    def write_layer(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        assert layer.descriptor is not None
        digest = layer.descriptor.digest
        with self._claims_lock:
            fd = self._claims[digest]
        partial = self.path / layout.partial_path(digest)
        target = self.path / layout.blob_path(digest)
        settling = False
        try:
            with output_errors(partial):
                flushed = os.lseek(fd, 0, os.SEEK_END)
                written = flushed
                wrote = False
                try:
                    for chunk in chunks:
                        write_all(fd, chunk)
                        wrote = True
                        written += len(chunk)
                        if written - flushed >= _WRITE_BACK:
                            _write_back(fd, flushed, written - flushed)
                            flushed = written
                except VerificationError:
                    # What we kept does not lead to the right blob: start
                    # afresh next time rather than resume into it again.
                    os.ftruncate(fd, 0)
                    raise
                if not wrote and target.exists():
                    partial.unlink(missing_ok=True)
                    return
            self._settle_soon(digest, fd, partial, target)
            settling = True
        finally:
            if not settling:
                self._release(digest)

    def _settle_soon(self, digest: Digest, fd: int, partial: Path,
                     target: Path) -> None:
        """Sync and rename a verified blob on another thread.

        The layer's thread starts its next download meanwhile, instead of
        every thread waiting on the disk at once; commit() waits for it
        all before an image is recorded.
        """
        with self._claims_lock:
            if self._settler is None:
                self._settler = concurrent.futures.ThreadPoolExecutor(
                    _SETTLERS, thread_name_prefix="occystrap-settle")
            self._settling.append(self._settler.submit(
                self._settle, digest, fd, partial, target))

    def _settle(self, digest: Digest, fd: int, partial: Path,
                target: Path) -> None:
        try:
            with output_errors(partial):
                os.fsync(fd)
                os.chmod(partial, 0o644 & ~current_umask())
                os.replace(partial, target)
            with self._claims_lock:
                self._verified.add(digest)
                self.new_blobs += 1
        finally:
            self._release(digest)

    def _settled(self) -> None:
        """Wait for every blob being settled; raise the first failure."""
        with self._claims_lock:
            pending, self._settling = self._settling, []
        failures = [f.exception() for f in pending]
        for failure in failures:
            if failure is not None:
                raise failure

    def put_blob(self, descriptor: Descriptor,
                 chunks: Iterator[bytes]) -> None:
        """Store one blob from digest-checked chunks, unless it is here."""
        if self._has_blob(descriptor):
            return
        layer = Layer(0, descriptor.digest, descriptor)
        self.resume_from(layer)
        if self._has_blob(descriptor):
            # Another run stored it while we waited for its lock.
            self._release(descriptor.digest)
            return
        # Small blobs: a partial from an earlier run is simply redone.
        with self._claims_lock:
            fd = self._claims[descriptor.digest]
        os.ftruncate(fd, 0)
        self.write_layer(layer, chunks)
        self._settled()

    def commit(self, image: Image) -> None:
        assert image.manifest is not None and image.manifest_digest
        self._settled()
        with output_errors(self.path):
            self._put_blob(image.config_digest, image.config)
            self._put_blob(image.manifest_digest, image.manifest)
            if self._all_platforms and image.index is not None \
                    and image.index_digest is not None:
                self._collect(image)
                return
            descriptor = Descriptor(
                image.manifest_media_type or "", image.manifest_digest,
                len(image.manifest), image.platform)
            self._record(image, descriptor, image)

    def _collect(self, image: Image) -> None:
        """Record an index once every platform image of it is here."""
        assert image.index is not None and image.index_digest is not None
        images = self._pending.setdefault(image.index_digest, {})
        assert image.manifest_digest is not None
        images[image.manifest_digest] = image
        index = parse_manifest(image.index, image.index_media_type)
        assert isinstance(index, ImageIndex)
        wanted = {d.digest for d in index.images()}
        if not wanted <= set(images):
            return
        del self._pending[image.index_digest]
        self._put_blob(image.index_digest, image.index)
        chosen = index.select(self._platform).digest \
            if any(self._platform.matches(d.platform)
                   for d in index.images()) else sorted(wanted, key=str)[0]
        descriptor = Descriptor(image.index_media_type or "",
                                image.index_digest, len(image.index))
        self._record(image, descriptor, images[chosen])

    def _record(self, image: Image, descriptor: Descriptor,
                loadable: Image) -> None:
        name = image.full_name or image.source or image.repository
        entry = layout.Entry(
            descriptor, name, image.repo_tag, loadable.config_digest,
            tuple(layer.descriptor.digest for layer in loadable.layers
                  if layer.descriptor is not None),
            image.index_digest or image.manifest_digest)
        with locked(self.path / layout.LOCK):
            entries = read_entries(self.path)
            replaced = next((e.descriptor.digest for e in entries
                             if e.name == name), None)
            entries = [e for e in entries if e.name != name] + [entry]
            self._write_entries(entries)
        self.committed.append(Committed(
            name, descriptor.digest,
            replaced if replaced != descriptor.digest else None))

    def _write_entries(self, entries: list[layout.Entry]) -> None:
        # manifest.json first: a reader that finds index.json new finds
        # the docker side new too. Both are written under the lock.
        write_atomic(self.path / layout.DOCKER_MANIFEST,
                     layout.docker_manifest_json(entries))
        write_atomic(self.path / layout.REPOSITORIES,
                     layout.repositories_json(entries))
        write_atomic(self.path / layout.INDEX, layout.index_json(entries))

    def _put_blob(self, digest: Digest, data: bytes) -> None:
        target = self.path / layout.blob_path(digest)
        if digest in self._verified or (
                target.is_file() and file_digest(target) == digest):
            self._verified.add(digest)
            return
        if Digest.of(data, digest.algorithm) != digest:
            raise VerificationError(f"blob {digest} does not hash to its "
                                    "digest; refusing to store it")
        write_atomic(target, data)
        self._verified.add(digest)

    # -- locks -----------------------------------------------------------------

    def _release(self, digest: Digest) -> None:
        with self._claims_lock:
            fd = self._claims.pop(digest, None)
        if fd is not None:
            self._unclaim(digest, fd)

    def _release_all(self) -> None:
        with self._claims_lock:
            claims, self._claims = self._claims, {}
        for digest, fd in claims.items():
            self._unclaim(digest, fd)

    def _unclaim(self, digest: Digest, fd: int) -> None:
        """Let go of a blob's lock; a partial with nothing in it goes too
        (under the lock, which is why waiters check what they locked)."""
        try:
            if os.fstat(fd).st_size == 0:
                (self.path / layout.partial_path(digest)).unlink(
                    missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked_as_named(lock: Path) -> Iterator[None]:
    """The bundle's lock, as fsutil.locked(); FileNotFoundError if the
    bundle was moved away while we waited (see _discard_unused)."""
    with open(lock, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        if os.stat(lock).st_ino != os.fstat(f.fileno()).st_ino:
            raise FileNotFoundError(lock)
        yield


def _not_a_bundle(path: Path) -> OutputError:
    return OutputError(f"{path} is not empty and is not a bundle; choose a "
                       "new or empty directory")


def _lock_partial(partial: Path, digest: Digest, root: Path) -> int:
    """Open and lock a blob's partial file, waiting for another run.

    The file locked must still be the one at that name: a run that held
    it may have renamed it into place, or removed it, meanwhile.
    """
    while True:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644 & ~current_umask())
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                LOG.warning("waiting for another occystrap run that is "
                            "fetching blob %s into %s", digest.short(), root)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(partial).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def read_entries(path: Path) -> list[layout.Entry]:
    index, docker = path / layout.INDEX, path / layout.DOCKER_MANIFEST
    try:
        return layout.parse_entries(index.read_bytes(), docker.read_bytes(),
                                    str(path))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from None


def _write_back(fd: int, offset: int, length: int) -> None:
    """Start writing a range to disk now, without waiting for it.

    The kernel would otherwise hold a blob's pages until the fsync that
    makes it final, and the disk would idle while the download runs and
    the download while the disk catches up. (Pages being written stay;
    clean ones leave the cache, which a bundle's next reader will not
    miss.)
    """
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _hashed_fd(fd: int, digest: Digest) -> Hasher:
    hasher = digest.hasher()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, _READ_CHUNK):
        hasher.update(chunk)
    return hasher


def _hashed(path: Path, digest: Digest) -> Hasher:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _hashed_fd(fd, digest)
    finally:
        os.close(fd)
