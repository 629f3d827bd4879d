"""An image source that reads an extracted (maybe shared) directory."""

import re
from pathlib import Path
from typing import Iterator

from occystrap import dockersave, safefile
from occystrap.digest import Digest, Hasher, verify
from occystrap.errors import ManifestError, StoreError, VerificationError
from occystrap.image import Image, Layer
from occystrap.manifest import MAX_CONFIG_SIZE, parse_config
from occystrap.store import Store, single_manifest

_CONFIG_NAME = re.compile(r"^([a-f0-9]{64})\.json\Z")


class DirectoryInput:
    def __init__(self, root: Path, repository: str, tag: str) -> None:
        self._store = Store(root)
        self._repository = repository
        self._tag = tag

    def resolve(self) -> Image:
        manifest = self._store.manifest_for(self._repository, self._tag)
        entry = single_manifest(manifest, self._store.root)
        match = _CONFIG_NAME.match(str(entry.get("Config")))
        if not match:
            raise StoreError(f"{manifest} names no valid config file")
        digest = Digest("sha256", match.group(1))
        config_path = self._store.config_file(digest)
        try:
            config_bytes = safefile.read_capped(config_path, MAX_CONFIG_SIZE,
                                                self._store.root)
        except OSError as e:
            raise StoreError(
                f"config {config_path} is missing or unreadable "
                f"({e.strerror}); fetch the image again") from None
        try:
            verify(f"config {config_path}", digest, Digest.of(config_bytes))
            config = parse_config(config_bytes)
        except (VerificationError, ManifestError) as e:
            raise StoreError(f"{e}; fetch the image again") from None
        expected = [dockersave.layer_path(d) for d in config.diff_ids]
        if entry.get("Layers") != expected:
            raise StoreError(
                f"{manifest} does not list the layers its config describes; "
                "fetch the image again")
        tags = entry.get("RepoTags") or []
        return Image(
            repository=self._repository,
            tag=self._tag,
            # The store checked that the names mean what was asked for.
            repo_tag=tags[0] if isinstance(tags, list) and tags
            and isinstance(tags[0], str) else None,
            platform=config.platform,
            config=config_bytes,
            config_digest=digest,
            layers=tuple(Layer(i, d) for i, d in enumerate(config.diff_ids)))

    def layer_chunks(self, layer: Layer,
                     have: Hasher | None = None) -> Iterator[bytes]:
        # Layers here are uncompressed tars: there is no blob to resume.
        assert have is None
        path = self._store.layer_tar(layer.diff_id)
        try:
            chunks = safefile.chunks(path, self._store.root)
        except FileNotFoundError:
            raise StoreError(
                f"{self.describe(layer)} is missing; fetch the image again") \
                from None
        except OSError as e:
            raise StoreError(
                f"cannot read {self.describe(layer)}: {e.strerror}; check "
                "its permissions") from None
        return _read_errors(chunks, self.describe(layer))

    def describe(self, layer: Layer) -> str:
        return (f"layer {layer.index + 1} "
                f"({self._store.layer_tar(layer.diff_id)})")

    def size_hint(self, layer: Layer) -> int | None:
        try:
            return self._store.layer_tar(layer.diff_id).stat().st_size
        except OSError:
            return None


def _read_errors(chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    try:
        yield from chunks
    except OSError as e:
        raise StoreError(f"cannot read {what}: {e.strerror}") from None
