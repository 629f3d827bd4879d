"""One way to read any source on disk: list its images, open its files.

`open_source(path)` recognises every format occystrap writes or loads: a
docker-save tarball (occystrap's, docker's, Docker 25+'s with its OCI
layout), an extracted directory (one image, or shared with catalog.json)
and a bundle (an OCI image layout, as a directory or a tar). verify,
inspect, recreate-image and push all read through the same `Source`.
"""

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from occystrap import dockersave, layout, store
from occystrap.digest import Digest
from occystrap.errors import ManifestError, StoreError, VerificationError
from occystrap.fsutil import skipped
from occystrap.inputs.ocilayout import scan_layout
from occystrap.inputs.offline import (
    DirectoryFiles, Files, Finding, Reader, SourceImage)
from occystrap.inputs.saved import scan_docker_save, scan_shared
from occystrap.inputs.tarball import TarFiles
from occystrap.manifest import (
    MAX_MANIFEST_SIZE, Descriptor, ImageIndex, parse_manifest)

# The formats, as inspect's JSON names them.
BUNDLE = "oci-layout"
DOCKER_SAVE = "docker-save"
SHARED = "shared-directory"


@dataclasses.dataclass(frozen=True)
class Scan:
    """What the metadata says: the images, and what was wrong reading it."""

    images: tuple[SourceImage, ...]
    findings: tuple[Finding, ...]
    # Every file the metadata accounts for.
    used: frozenset[str]


@dataclasses.dataclass(frozen=True)
class SourceIndex:
    """A multi-platform index a bundle keeps whole, exactly as stored."""

    digest: Digest
    media_type: str
    data: bytes
    # Every entry, in order: platform images and what rides along with
    # them (attestations), which are not images to run.
    manifests: tuple[Descriptor, ...]
    images: tuple[Descriptor, ...]

    @property
    def attached(self) -> tuple[Descriptor, ...]:
        return tuple(d for d in self.manifests if d not in self.images)


class Source:
    def __init__(self, path: Path, files: Files, format: str,
                 scanner: Callable[[Reader], list[SourceImage]]) -> None:
        self.path = path
        self.files = files
        self.format = format
        self._scanner = scanner
        self._scan: Scan | None = None

    @property
    def container(self) -> str:
        return "directory" if isinstance(self.files, DirectoryFiles) \
            else "tar"

    def scan(self) -> Scan:
        if self._scan is None:
            reader = Reader(self.files)
            images = self._scanner(reader)
            self._scan = Scan(tuple(images), tuple(reader.findings),
                              frozenset(reader.used))
        return self._scan

    def images(self) -> list[SourceImage]:
        """Every image, or StoreError naming the first damage found."""
        scan = self.scan()
        if scan.findings:
            raise StoreError(
                f"{self.path}: {scan.findings[0]}; run occystrap verify "
                f"{self.path} for the whole story")
        return list(scan.images)

    def read(self, name: str, limit: int) -> bytes:
        return self.files.read(name, limit)

    def chunks(self, name: str) -> Iterator[bytes]:
        return self.files.chunks(name)

    def blob(self, digest: Digest, limit: int = MAX_MANIFEST_SIZE) -> bytes:
        """A small blob of a bundle, checked against its digest."""
        path = layout.blob_path(digest)
        data = self.files.read(path, limit)
        if Digest.of(data, digest.algorithm) != digest:
            raise VerificationError(
                f"{self.path}: {path} does not hash to {digest}; the source "
                f"is damaged: run occystrap verify {self.path}")
        return data

    def blob_chunks(self, digest: Digest, offset: int = 0
                    ) -> Iterator[bytes]:
        """A bundle blob's stored bytes from `offset`, unchecked (the
        caller hashes them, or whoever receives them does)."""
        return skipped(self.files.chunks(layout.blob_path(digest)), offset)

    def index(self, digest: Digest) -> SourceIndex:
        """The index of that digest, kept whole in a bundle."""
        data = self.blob(digest)
        try:
            parsed = parse_manifest(data, None)
        except ManifestError as e:
            raise StoreError(f"{self.path}: index {digest} is damaged: {e}") \
                from None
        if not isinstance(parsed, ImageIndex):
            raise StoreError(f"{self.path}: {digest} is a manifest, not an "
                             "index")
        return SourceIndex(digest, parsed.media_type, data, parsed.manifests,
                           tuple(parsed.images()))

    def close(self) -> None:
        self.files.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_source(path: Path) -> Source:
    """The source at path, in whatever format it is; StoreError if none."""
    if path.is_dir():
        files: Files = DirectoryFiles(path)
    elif path.is_file():
        files = TarFiles(path)
    else:
        raise StoreError(f"{path} does not exist; give a tarball, a bundle "
                         "or an extracted directory")
    try:
        names = files.names()
        # Either file marks a layout; a cut tar may have lost the other.
        if layout.INDEX in names or layout.OCI_LAYOUT in names:
            return Source(path, files, BUNDLE, scan_layout)
        if store.CATALOG in names:
            return Source(path, files, SHARED, scan_shared)
        if dockersave.MANIFEST in names:
            return Source(path, files, DOCKER_SAVE, scan_docker_save)
    except BaseException:
        files.close()
        raise
    cut = files.truncated()
    files.close()
    if cut:
        # A cut tarball loses what was written last: often manifest.json.
        name, there = next(iter(cut.items()))
        raise StoreError(
            f"{path} is truncated: the archive ends inside {name}, after "
            f"{there} of its {names[name]} bytes, and holds no "
            f"{layout.INDEX}, {store.CATALOG} or {dockersave.MANIFEST}; copy "
            "it again")
    raise StoreError(
        f"{path} holds no {layout.INDEX}, {store.CATALOG} or "
        f"{dockersave.MANIFEST}; it is not an image source occystrap knows "
        "(or it is damaged)")
