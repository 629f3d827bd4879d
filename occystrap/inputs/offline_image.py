"""One image of any offline source (see sources.py) as a pipeline input.

Whatever the format on disk, the pipeline gets the same thing: the
config, the original manifest where the format kept one, and each layer's
stored bytes, checked against their digest and size as they are read.
"""

from typing import Iterator

from occystrap.digest import Hasher, verify
from occystrap.errors import StoreError, VerificationError
from occystrap.fsutil import skipped
from occystrap.image import Image, Layer
from occystrap.inputs.offline import SourceImage
from occystrap.manifest import PLAIN_LAYER_TYPES, Descriptor, Platform
from occystrap.sources import Source
from occystrap.store import candidates


class SourceInput:
    def __init__(self, source: Source, image: SourceImage,
                 name: str | None = None) -> None:
        self._source = source
        self._image = image
        # The name it was found by; else its first.
        self._name = name
        self._paths: dict[int, str] = {}

    @classmethod
    def find(cls, source: Source, repository: str, tag: str,
             platform: Platform | None = None) -> "SourceInput":
        """The image named repository:tag (Docker Hub's library/ or not,
        with or without the registry in front); of a name kept with every
        platform, the one for `platform` if there is one."""
        images = source.images()
        wanted = {f"{name}:{tag}" for name in candidates(repository)}

        def fits(name: str) -> bool:
            return name in wanted \
                or name.endswith(tuple(f"/{w}" for w in wanted))

        named = [image for image in images if any(map(fits, image.names))]
        if named:
            suited = [image for image in named if platform is not None
                      and image.platform is not None
                      and platform.matches(image.platform)]
            found = (suited or named)[0]
            return cls(source, found, next(filter(fits, found.names)))
        held = ", ".join(i.label for i in images) or "nothing"
        raise StoreError(f"{repository}:{tag} is not in {source.path}; it "
                         f"holds {held}")

    def resolve(self) -> Image:
        image = self._image
        if image.config is None or image.platform is None \
                or any(layer.diff_id is None for layer in image.layers):
            raise StoreError(f"{self._source.path}: {image.label} has a "
                             "damaged config; run occystrap verify on it")
        layers = []
        for index, stored in enumerate(image.layers):
            assert stored.diff_id is not None
            digest = stored.digest or stored.diff_id
            descriptor = Descriptor(stored.media_type or PLAIN_LAYER_TYPES[0],
                                    digest, stored.size or 0)
            layers.append(Layer(index, stored.diff_id, descriptor))
            self._paths[index] = stored.path
        name = self._name or (image.names[0] if image.names else None)
        repository, _, tag = (name or "").rpartition(":")
        return Image(
            repository=repository or str(image.config_digest),
            tag=tag, repo_tag=name if name and "@" not in name else None,
            platform=image.platform, config=image.config,
            config_digest=image.config_digest, layers=tuple(layers),
            manifest_digest=image.manifest_digest,
            source=f"{image.label} in {self._source.path}",
            manifest=image.manifest,
            manifest_media_type=image.manifest_media_type,
            index_digest=image.index_digest,
            full_name=name)

    def layer_chunks(self, layer: Layer,
                     have: Hasher | None = None) -> Iterator[bytes]:
        assert layer.descriptor is not None
        descriptor = layer.descriptor
        what = self.describe(layer)
        hasher = have or descriptor.digest.hasher()
        for chunk in skipped(self._source.chunks(self._paths[layer.index]),
                             hasher.size):
            hasher.update(chunk)
            # Stop at the first byte too many: a layer grown into a huge
            # (maybe sparse) file is not copied whole before the check.
            if descriptor.size and hasher.size > descriptor.size:
                raise VerificationError(
                    f"{what} holds more than the {descriptor.size} bytes "
                    "its manifest gives; the source is damaged")
            yield chunk
        if descriptor.size and hasher.size != descriptor.size:
            raise VerificationError(
                f"{what} is {hasher.size} bytes, not {descriptor.size}; the "
                "source is damaged")
        verify(what, descriptor.digest, hasher.digest())

    def stored_chunks(self, layer: Layer, offset: int = 0
                      ) -> Iterator[bytes]:
        """The layer's stored bytes again, from `offset`, unchecked: for a
        receiver that hashes them itself (an upload resumed mid-blob)."""
        return skipped(self._source.chunks(self._paths[layer.index]), offset)

    def describe(self, layer: Layer) -> str:
        return (f"layer {layer.index + 1} ({self._paths[layer.index]}) of "
                f"{self._image.label} in {self._source.path}")

    def size_hint(self, layer: Layer) -> int | None:
        stored = self._image.layers[layer.index]
        # Only a plain tar's stored size is its size once written out.
        return stored.size if stored.digest == stored.diff_id else None
