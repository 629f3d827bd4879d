"""What an offline source holds: its images, its files, what is wrong with it.

Every format occystrap reads from disk (docker-save tarballs, extracted
directories, bundles, and tars of those) is a set of named files plus a
format that says which of them make which image. The files come from a
directory or a tar (`Files`); the format readers turn them into
`SourceImage` values and report what they could not make sense of as
`Finding`s instead of stopping, so that verify can name every problem.
"""

import dataclasses
import os
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from occystrap import safefile
from occystrap.digest import Digest
from occystrap.errors import ManifestError, StoreError
from occystrap.manifest import (
    MAX_CONFIG_SIZE, ImageConfig, Platform, parse_config)

READ_CHUNK = 1 << 20

# What a finding says is wrong, as verify prints it.
MISSING = "missing"
WRONG_DIGEST = "wrong digest"
TRUNCATED = "truncated"
NOT_A_TAR = "not a tar"
INCONSISTENT = "inconsistent"
UNREADABLE = "unreadable"
# Warnings: not damage, but not what a finished source holds either.
PARTIAL = "partial"
UNKNOWN = "unknown file"
UNREFERENCED = "unreferenced"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing wrong with one file of a source, for one image or all."""

    file: str
    what: str
    detail: str
    image: str | None = None

    def __str__(self) -> str:
        image = f"{self.image}: " if self.image else ""
        return f"{image}{self.file}: {self.what}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class StoredLayer:
    path: str
    # What the stored bytes hash to. For an uncompressed layer.tar that is
    # the diff_id; None when the format does not say and no config does.
    digest: Digest | None
    diff_id: Digest | None
    # The size the format promises (a descriptor's), else the file's.
    size: int | None
    media_type: str | None = None
    # True when `size` comes from a descriptor: a shorter file is cut.
    size_promised: bool = False


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One image a source holds, as far as its metadata could be read."""

    names: tuple[str, ...]
    platform: Platform | None
    config_digest: Digest
    config_path: str
    # The config's bytes, verified against config_digest; None if missing
    # or damaged (a finding says which).
    config: bytes | None
    created: str | None
    layers: tuple[StoredLayer, ...]
    # Only formats that keep the original manifest have these.
    manifest_digest: Digest | None = None
    manifest_path: str | None = None
    manifest_media_type: str | None = None
    manifest: bytes | None = None
    # The index the image was listed in, when the name points at one.
    index_digest: Digest | None = None

    @property
    def label(self) -> str:
        """How messages name the image."""
        if self.names:
            name = self.names[0]
        else:
            name = f"untagged image {self.manifest_digest or self.config_digest}"
        # One name, many platforms: the platform tells them apart.
        if self.index_digest is not None and self.platform is not None:
            return f"{name} ({self.platform})"
        return name

    @property
    def size(self) -> int | None:
        sizes = [layer.size for layer in self.layers]
        return sum(s for s in sizes if s is not None) \
            if all(s is not None for s in sizes) else None


class FileMissing(StoreError):
    pass


class Files(Protocol):
    """Named files of a directory or a tar, read in place."""

    where: str

    def names(self) -> dict[str, int]:
        """Every regular file, by its '/'-separated name, with its size."""

    def read(self, name: str, limit: int) -> bytes:
        """A small file's bytes; FileMissing if absent, StoreError if over
        `limit` bytes or unreadable."""

    def chunks(self, name: str) -> Iterator[bytes]:
        """A file's bytes, streamed; FileMissing if absent."""

    def truncated(self) -> dict[str, int]:
        """Files cut short by the container itself (a cut tar): name ->
        the bytes actually there."""

    def close(self) -> None:
        ...


def safe_name(name: object) -> str | None:
    """A relative name that stays inside the source, normalised; or None.

    Names come from the source's own JSON, which may be hostile.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        return None
    return "/".join(parts)


class DirectoryFiles:
    """A directory's files, read with plain file I/O."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        self._names: dict[str, int] | None = None

    def names(self) -> dict[str, int]:
        if self._names is None:
            found: dict[str, int] = {}
            for top, dirs, files in os.walk(self.root):
                dirs.sort()
                relative = Path(top).relative_to(self.root)
                for name in sorted(files):
                    path = Path(top) / name
                    try:
                        if path.is_file():
                            found[(relative / name).as_posix()] = \
                                path.stat().st_size
                    except OSError:
                        continue
            self._names = found
        return self._names

    def _path(self, name: str) -> Path:
        safe = safe_name(name)
        if safe is None:
            raise StoreError(f"{self.where}: {name!r} is not a file name "
                             "inside the source")
        return self.root / safe

    def read(self, name: str, limit: int) -> bytes:
        with self._open(name) as f:
            try:
                data = f.read(limit + 1)
            except OSError as e:
                raise StoreError(f"{name} is unreadable: {e.strerror}") \
                    from None
        if len(data) > limit:
            raise StoreError(f"{name} is larger than {limit} bytes")
        return data

    def chunks(self, name: str) -> Iterator[bytes]:
        return _file_chunks(self._open(name), name)

    def _open(self, name: str) -> BinaryIO:
        """Only a regular file: a FIFO or device planted in a source must
        neither hang nor read forever."""
        path = self._path(name)
        try:
            fd = safefile.open_regular(path, self.root)
        except (FileNotFoundError, NotADirectoryError):
            raise FileMissing(f"{name} is missing") from None
        except OSError as e:
            raise StoreError(f"{name} is unreadable: {e.strerror}") from None
        except StoreError:
            raise StoreError(f"{name} is not a regular file inside "
                             f"{self.where}") from None
        return os.fdopen(fd, "rb")

    def truncated(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def _file_chunks(f: BinaryIO, name: str) -> Iterator[bytes]:
    with f:
        try:
            while chunk := f.read(READ_CHUNK):
                yield chunk
        except OSError as e:
            raise StoreError(f"{name} is unreadable: {e.strerror}") from None


class Reader:
    """Reads a source's metadata files, noting each one it used and
    turning what is wrong with them into findings rather than errors."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.findings: list[Finding] = []
        self.used: set[str] = set()

    def note(self, file: str, what: str, detail: str,
             image: str | None = None) -> None:
        self.findings.append(Finding(file, what, detail, image))

    def load(self, name: str, limit: int, image: str | None = None,
             expected: Digest | None = None) -> bytes | None:
        """A small file's bytes, checked against `expected` if given; None
        (with a finding) if it is missing, too large or damaged."""
        self.used.add(name)
        try:
            data = self.files.read(name, limit)
        except FileMissing:
            self.note(name, MISSING, "the file is not in the source", image)
            return None
        except StoreError as e:
            self.note(name, UNREADABLE, str(e), image)
            return None
        cut = self.files.truncated().get(name)
        if cut is not None:
            self.note(name, TRUNCATED, f"the archive ends after {cut} of its "
                      f"{self.files.names()[name]} bytes", image)
            return None
        if expected is not None:
            actual = Digest.of(data, expected.algorithm)
            if actual != expected:
                self.note(name, WRONG_DIGEST,
                          f"expected {expected}, got {actual}", image)
                return None
        return data

    def config(self, path: str, digest: Digest, image: str | None
               ) -> tuple[bytes | None, ImageConfig | None, str | None]:
        """An image config: its bytes, what it says, and its created date."""
        data = self.load(path, MAX_CONFIG_SIZE, image, digest)
        if data is None:
            return None, None, None
        try:
            config = parse_config(data)
        except ManifestError as e:
            self.note(path, INCONSISTENT, f"not a usable image config: {e}",
                      image)
            return None, None, None
        created = safefile.loads(data).get("created")
        return data, config, created if isinstance(created, str) else None
