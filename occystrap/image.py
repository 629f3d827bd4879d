"""The values that flow from an input, through the pipeline, to a writer."""

import dataclasses
from typing import Iterator, Protocol

from occystrap.digest import Digest
from occystrap.manifest import Descriptor, Platform


@dataclasses.dataclass(frozen=True)
class Layer:
    index: int
    diff_id: Digest
    # Where the input finds the layer's bytes: a registry blob descriptor,
    # or None when the input holds the uncompressed tar itself.
    descriptor: Descriptor | None = None

    @property
    def size(self) -> int | None:
        return self.descriptor.size if self.descriptor else None


@dataclasses.dataclass(frozen=True)
class Image:
    repository: str
    tag: str
    # The name `docker load` gives the image; None for a digest pull.
    repo_tag: str | None
    platform: Platform
    config: bytes
    config_digest: Digest
    layers: tuple[Layer, ...]
    manifest_digest: Digest | None = None
    # Where it came from, for messages: host/repository:tag or @digest.
    source: str | None = None


class ImageSource(Protocol):
    def resolve(self) -> Image:
        """Fetch and verify the manifest and config."""

    def layer_chunks(self, layer: Layer) -> Iterator[bytes]:
        """The layer's bytes as stored (maybe compressed), digest-checked."""

    def describe(self, layer: Layer) -> str:
        """Names the layer and where it comes from, for error messages."""

    def size_hint(self, layer: Layer) -> int | None:
        """The uncompressed size the layer probably has, if cheaply known."""


class ImageWriter(Protocol):
    # Writers that place layers by size want hints before layers arrive.
    wants_size_hints: bool

    def begin(self, image: Image) -> None:
        """Check the destination can take this image, before any download."""

    def plan(self, layers: list[tuple[Layer, int | None]]) -> None:
        """The layers about to be written, in order, with size hints."""

    def has_layer(self, layer: Layer) -> bool:
        """True when the layer is already at the destination, verified."""

    def write_layer(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        """Consume uncompressed tar bytes; the iterator raises on bad data.

        Called from several threads at once, for different layers.
        """

    def commit(self, image: Image) -> None:
        """Write the metadata and make the output appear, atomically."""

    def abort(self) -> None:
        """Remove everything this writer left unfinished."""
