"""The values that flow from an input, through the pipeline, to a writer."""

import dataclasses
import enum
from typing import Iterator, Protocol

from occystrap.digest import Digest, Hasher
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
    # The manifest exactly as stored, so its digest survives the copy;
    # None where the input keeps no original (an extracted directory).
    manifest: bytes | None = None
    manifest_media_type: str | None = None
    # The index this image was chosen from, when there was one.
    index: bytes | None = None
    index_media_type: str | None = None
    index_digest: Digest | None = None
    # The config's descriptor in the manifest (its media type may matter).
    config_media_type: str | None = None
    # The fully qualified name containerd gives it: docker.io/library/
    # busybox:1.36, or REPO@sha256:… when pulled by digest alone.
    full_name: str | None = None


class Flow(enum.Enum):
    """What a writer receives for each layer.

    LAYER: the uncompressed tar, checked to be tar and to hash to the
    config's diff_id (the seed's docker-save outputs need that).
    BLOB: the bytes exactly as stored, checked against the blob digest and
    never inflated (bundles and pushes keep every digest).
    """

    LAYER = "layer"
    BLOB = "blob"


class ImageSource(Protocol):
    def resolve(self) -> Image:
        """Fetch and verify the manifest and config."""

    def layer_chunks(self, layer: Layer,
                     have: Hasher | None = None) -> Iterator[bytes]:
        """The layer's bytes as stored (maybe compressed), digest-checked.

        With `have` (the blob's first bytes, hashed), only the rest.
        Nothing is read before the first chunk is asked for.
        """

    def describe(self, layer: Layer) -> str:
        """Names the layer and where it comes from, for error messages."""

    def size_hint(self, layer: Layer) -> int | None:
        """The uncompressed size the layer probably has, if cheaply known."""


class ImageWriter(Protocol):
    """A destination for one or more images.

    Constructors only remember their arguments: everything that claims the
    destination (temporary files, locks) happens in open(), so abort()
    always knows what there is to undo.
    """

    flow: Flow
    # Writers that place layers by size want hints before layers arrive.
    wants_size_hints: bool

    def open(self) -> None:
        """Claim the destination, once, before the first image."""

    def begin(self, image: Image) -> None:
        """Check the destination can take this image, before any download."""

    def plan(self, layers: list[tuple[Layer, int | None]]) -> None:
        """The layers about to be written, in order, with size hints."""

    def has_layer(self, layer: Layer) -> bool:
        """True when the layer is already at the destination, verified."""

    def write_layer(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        """Consume the layer's bytes, as the flow says; the iterator raises
        on bad data before it ends.

        Called from several threads at once, for different layers.
        """

    def commit(self, image: Image) -> None:
        """This image is complete: record its metadata."""

    def close(self) -> None:
        """Make the destination appear, atomically, after the last image."""

    def abort(self) -> None:
        """Remove everything this writer left unfinished; safe at any time."""


class BlobWriter(ImageWriter, Protocol):
    """A writer of original blobs, which may hold some of one already."""

    def resume_from(self, layer: Layer) -> Hasher | None:
        """The part of the layer's blob already here, hashed, if any.

        May wait while another process fetches the same blob; then the
        whole blob may be here, and nothing more is downloaded.
        """
