"""An image source that pulls from a registry."""

import logging
import time
from typing import Iterator

from occystrap.digest import Digest, Hasher
from occystrap.errors import ManifestError, OccystrapError
from occystrap.image import Image, Layer
from occystrap.manifest import (
    GZIP_LAYER_TYPES, PLAIN_LAYER_TYPES, Descriptor, ImageIndex,
    ImageManifest, Platform, check_layers, check_platform, parse_config,
    parse_manifest)
from occystrap.reference import ImageReference
from occystrap.registry import FetchedManifest, RegistryClient

LOG = logging.getLogger(__name__)


class RegistryInput:
    def __init__(self, client: RegistryClient, reference: ImageReference,
                 platform: Platform, platform_required: bool = False, *,
                 top: FetchedManifest | None = None,
                 entry: Descriptor | None = None) -> None:
        self._client = client
        self._reference = reference
        self._platform = platform
        # A single-platform image of another platform is only an error when
        # the user asked for a platform; by default take what is there.
        self._platform_required = platform_required
        # What the reference points at, when already fetched, and the
        # index entry to take from it instead of choosing by platform.
        self._top = top
        self._entry = entry
        # Blobs whose size hint went unanswered, and since when: their
        # download gets what is left of the no-progress budget, no more.
        self._silent_since: dict[Digest, float] = {}
        # After one unanswered hint, ask for no more: each would cost its
        # timeout again before any download starts.
        self._hints_failed = False

    @property
    def reference(self) -> ImageReference:
        return self._reference

    def resolve(self) -> Image:
        ref = self._reference
        repo = ref.repository
        fetched = self._top or self._client.get_manifest(
            repo, ref.reference, ref.digest)
        parsed = parse_manifest(fetched.data, fetched.content_type)
        index: FetchedManifest | None = None
        if isinstance(parsed, ImageIndex):
            index = fetched
            chosen = self._entry or parsed.select(self._platform)
            LOG.info("index %s: chose %s for %s", fetched.digest,
                     chosen.digest, chosen.platform)
            fetched = self._client.get_manifest(repo, str(chosen.digest),
                                                chosen.digest)
            parsed = parse_manifest(fetched.data, fetched.content_type)
            if not isinstance(parsed, ImageManifest):
                raise ManifestError(
                    f"index entry {chosen.digest} of {ref} is itself an "
                    "index; nested indexes are not supported")
        config_bytes = self._client.fetch_blob(repo, parsed.config)
        config = parse_config(config_bytes)
        check_layers(parsed, config, str(ref))
        # An entry taken on purpose (every platform of an index) is no
        # mismatch with the platform asked for.
        if self._entry is None and not check_platform(
                self._platform, config.platform, self._platform_required,
                str(ref)):
            LOG.warning("%s is for %s, not %s", ref, config.platform,
                        self._platform)
        return Image(
            repository=repo,
            tag=ref.reference,
            repo_tag=ref.repo_tag,
            platform=config.platform,
            config=config_bytes,
            config_digest=parsed.config.digest,
            layers=tuple(Layer(i, diff_id, descriptor)
                         for i, (diff_id, descriptor) in enumerate(
                             zip(config.diff_ids, parsed.layers))),
            manifest_digest=fetched.digest,
            source=str(ref),
            manifest=fetched.data,
            manifest_media_type=parsed.media_type,
            index=index.data if index else None,
            index_media_type=(parse_manifest(index.data, index.content_type)
                              .media_type if index else None),
            index_digest=index.digest if index else None,
            config_media_type=parsed.config.media_type or None,
            full_name=ref.full_name)

    def layer_chunks(self, layer: Layer,
                     have: Hasher | None = None) -> Iterator[bytes]:
        assert layer.descriptor is not None
        return self._client.blob_chunks(
            self._reference.repository, layer.descriptor, have,
            self._silent_since.pop(layer.descriptor.digest, None))

    def describe(self, layer: Layer) -> str:
        digest = layer.descriptor.digest if layer.descriptor else layer.diff_id
        return (f"layer {layer.index + 1} ({digest.short()}) of "
                f"{self._reference}")

    def size_hint(self, layer: Layer) -> int | None:
        """The layer's likely uncompressed size, to plan the output with.

        Plain tar blobs are their own size; gzip records the size (modulo
        4 GiB) in its last four bytes. A wrong hint costs speed, never
        correctness: the writer checks it against what arrives.
        """
        descriptor = layer.descriptor
        assert descriptor is not None
        if descriptor.media_type in PLAIN_LAYER_TYPES:
            return descriptor.size
        if descriptor.media_type not in GZIP_LAYER_TYPES \
                or descriptor.size < 20:
            return None
        if self._hints_failed:
            return None
        asked = time.monotonic()
        try:
            tail = self._client.blob_range(self._reference.repository,
                                           descriptor, descriptor.size - 4, 4)
        except OccystrapError as e:
            LOG.debug("no size hint for %s: %s", descriptor.digest, e)
            self._silent_since[descriptor.digest] = asked
            self._hints_failed = True
            return None
        return int.from_bytes(tail, "little") if tail else None
