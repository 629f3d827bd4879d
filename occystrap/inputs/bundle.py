"""An image source that reads a bundle directory (see layout.py).

A bundle may have crossed an air gap: every blob is hashed as it is read
and checked against its digest before the last chunk is handed on.
"""

import os
import stat
from pathlib import Path
from typing import Iterator

from occystrap import layout
from occystrap.digest import Hasher, verify
from occystrap.errors import ManifestError, StoreError, VerificationError
from occystrap.image import Image, Layer
from occystrap.manifest import (
    MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, Descriptor, ImageIndex,
    ImageManifest, Platform, check_layers, check_platform, parse_config,
    parse_manifest)
from occystrap.outputs.bundle import read_entries
from occystrap.store import candidates

_CHUNK = 1 << 20


def is_bundle(root: Path) -> bool:
    return (root / layout.OCI_LAYOUT).is_file() \
        and (root / layout.INDEX).is_file()


class BundleInput:
    """One image of a bundle, chosen by name (as docker or containerd
    names it, with or without the tag) or by entry."""

    def __init__(self, root: Path, entry: layout.Entry,
                 platform: Platform = Platform(),
                 platform_required: bool = False) -> None:
        self._root = root
        self._entry = entry
        self._platform = platform
        self._platform_required = platform_required

    @classmethod
    def find(cls, root: Path, repository: str, tag: str,
             platform: Platform = Platform(),
             platform_required: bool = False) -> "BundleInput":
        entries = read_entries(root)
        wanted = {f"{name}:{tag}" for name in candidates(repository)}
        for entry in entries:
            names = {entry.name, entry.repo_tag}
            if names & wanted or any(n and n.endswith(tuple(
                    "/" + w for w in wanted)) for n in names):
                return cls(root, entry, platform, platform_required)
        held = ", ".join(e.repo_tag or e.name for e in entries) or "nothing"
        raise StoreError(f"{repository}:{tag} is not in the bundle {root}; "
                         f"it holds {held}")

    @property
    def entry(self) -> layout.Entry:
        return self._entry

    def resolve(self) -> Image:
        entry = self._entry
        what = entry.repo_tag or entry.name
        top = entry.descriptor
        data = self._small_blob(top, MAX_MANIFEST_SIZE)
        parsed = parse_manifest(data, top.media_type)
        index, index_data = None, None
        manifest_descriptor = top
        if isinstance(parsed, ImageIndex):
            index, index_data = parsed, data
            manifest_descriptor = parsed.select(self._platform)
            data = self._small_blob(manifest_descriptor, MAX_MANIFEST_SIZE)
            parsed = parse_manifest(data, manifest_descriptor.media_type)
        if not isinstance(parsed, ImageManifest):
            raise StoreError(f"{what}: index entry "
                             f"{manifest_descriptor.digest} is itself an "
                             "index; nested indexes are not supported")
        config_bytes = self._small_blob(parsed.config, MAX_CONFIG_SIZE)
        try:
            config = parse_config(config_bytes)
            check_layers(parsed, config, what)
        except ManifestError as e:
            raise StoreError(f"{self._root}: {e}") from None
        check_platform(self._platform, config.platform,
                       self._platform_required, what)
        repository, tag = _split(entry)
        return Image(
            repository=repository,
            tag=tag,
            repo_tag=entry.repo_tag,
            platform=config.platform,
            config=config_bytes,
            config_digest=parsed.config.digest,
            layers=tuple(Layer(i, diff_id, descriptor)
                         for i, (diff_id, descriptor) in enumerate(
                             zip(config.diff_ids, parsed.layers))),
            manifest_digest=manifest_descriptor.digest,
            source=f"{what} in {self._root}",
            manifest=data,
            manifest_media_type=parsed.media_type,
            index=index_data,
            index_media_type=index.media_type if index else None,
            index_digest=top.digest if index else None,
            config_media_type=parsed.config.media_type or None,
            full_name=entry.name)

    def layer_chunks(self, layer: Layer,
                     have: Hasher | None = None) -> Iterator[bytes]:
        assert layer.descriptor is not None
        return self.blob_chunks(layer.descriptor, have)

    def blob_chunks(self, descriptor: Descriptor,
                    have: Hasher | None = None) -> Iterator[bytes]:
        """A blob's bytes, checked against its size and digest as read."""
        path = self._root / layout.blob_path(descriptor.digest)
        what = f"blob {path}"
        hasher = have or descriptor.digest.hasher()
        with _open_regular(path, what) as f:
            f.seek(hasher.size)
            while chunk := f.read(_CHUNK):
                if hasher.size + len(chunk) > descriptor.size:
                    raise VerificationError(
                        f"{what} is longer than the {descriptor.size} bytes "
                        "its descriptor promises; the bundle is damaged")
                hasher.update(chunk)
                yield chunk
        if hasher.size != descriptor.size:
            raise VerificationError(
                f"{what} is truncated: {hasher.size} of {descriptor.size} "
                "bytes; the bundle is damaged")
        verify(what, descriptor.digest, hasher.digest())

    def describe(self, layer: Layer) -> str:
        digest = layer.descriptor.digest if layer.descriptor \
            else layer.diff_id
        return (f"layer {layer.index + 1} ({digest.short()}) of "
                f"{self._entry.repo_tag or self._entry.name}")

    def size_hint(self, layer: Layer) -> int | None:
        return None

    def _small_blob(self, descriptor: Descriptor, cap: int) -> bytes:
        if descriptor.size > cap:
            raise StoreError(f"blob {descriptor.digest} claims "
                             f"{descriptor.size} bytes, more than the {cap} "
                             "allowed for it; the bundle is damaged")
        return b"".join(self.blob_chunks(descriptor))


def _split(entry: layout.Entry) -> tuple[str, str]:
    """Repository and tag (or digest) for messages and names."""
    name = entry.name
    if "@" in name:
        return name.split("@", 1)[0], name.split("@", 1)[1]
    repository, _, tag = name.rpartition(":")
    return repository, tag


class _open_regular:
    """Open a file for reading only if it is a regular file: a FIFO or a
    device planted in a bundle must neither hang nor read forever."""

    def __init__(self, path: Path, what: str) -> None:
        self._path, self._what = path, what

    def __enter__(self):
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK
                         | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"{self._what} is missing; the bundle is "
                             "incomplete") from None
        except OSError as e:
            raise StoreError(f"cannot read {self._what}: {e.strerror}") \
                from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{self._what} is not a regular file; the "
                             "bundle is damaged")
        os.set_blocking(fd, True)
        self._file = os.fdopen(fd, "rb")
        return self._file

    def __exit__(self, *exc) -> None:
        self._file.close()
