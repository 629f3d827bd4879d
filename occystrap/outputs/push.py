"""The registry as an output: blobs up, then each image's manifest.

Every blob is first checked with a HEAD and skipped when the repository
holds it; one pushed earlier in the run to another repository of the same
registry is mounted from there instead of sent again; the rest go up
through the BlobUploader. Manifests go up only after every blob they name.

The writer's flow says what a manifest is made of. With Flow.BLOB (a
bundle: original bytes) blobs and manifest go up exactly as stored, so
every digest stays what it was. With Flow.LAYER (docker-save sources:
uncompressed layer.tar) each layer is gzip-compressed as it is sent, and
a new Docker v2 manifest names the compressed layers and the unchanged
config.

A layer compressed as it is sent has no digest until it is all sent, so
the HEAD that skips a blob the registry holds cannot come first. What
each layer compressed to before is remembered (blobcache), as docker and
skopeo do: a layer pushed earlier from this machine is found by that
digest and skipped or mounted. The compression is deterministic (no name,
no time, fixed blocks), so a cut upload resumes by compressing the layer
again and skipping what the registry holds. Layers take turns at the CPU
(turns), as many at once as there are cores.
"""

import dataclasses
import json
import logging
import threading
from typing import Callable, Iterable, Iterator

from occystrap import pipeline, zlibfast
from occystrap.blobcache import CompressedBlobs
from occystrap.digest import Digest, Hasher
from occystrap.errors import OutputError
from occystrap.image import Flow, Image, Layer
from occystrap.manifest import DOCKER_MANIFEST, Descriptor
from occystrap.turns import Turns
from occystrap.upload import BlobUploader

LOG = logging.getLogger(__name__)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# docker's own default: a fair size for a fair cost in CPU.
GZIP_LEVEL = 6
# Repositories a remembered blob is tried in, at most: each try is a
# request, and where it went most recently is likeliest to still hold it.
_MOUNT_TRIES = 2

# Reads a layer's stored bytes again from an offset (an upload resumed).
Reopen = Callable[[Layer, int], Iterator[bytes]]


@dataclasses.dataclass(frozen=True)
class Pushed:
    """One manifest (or index) now in the registry, and what it took."""

    repository: str
    # The tag it went up under; None when pushed by digest alone.
    tag: str | None
    digest: Digest
    media_type: str
    uploaded: int = 0
    mounted: int = 0
    present: int = 0
    bytes_uploaded: int = 0


class BlobCounts:
    """Blobs uploaded, mounted or already there, for one image."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uploaded = self.mounted = self.present = self.bytes = 0

    def add(self, how: str, size: int = 0) -> None:
        with self.lock:
            if how == UPLOADED:
                self.uploaded += 1
                self.bytes += size
            elif how == MOUNTED:
                self.mounted += 1
            else:
                self.present += 1


UPLOADED, MOUNTED, PRESENT = "uploaded", "mounted", "present"


class PushWriter:
    """Pushes images into one registry, each where aim() says."""

    wants_size_hints = False

    def __init__(self, uploader: BlobUploader, flow: Flow,
                 cache: CompressedBlobs | None = None,
                 gzip_level: int = GZIP_LEVEL,
                 turns: Turns | None = None) -> None:
        self.uploader = uploader
        self.flow = flow
        self._cache = cache or CompressedBlobs(None)
        self._gzip_level = gzip_level
        self._turns = turns or Turns()
        self._lock = threading.Lock()
        # (repository, digest) pairs the registry holds, as far as we know.
        self._held: set[tuple[str, Digest]] = set()
        # Where in this registry each blob is, for mounting it elsewhere.
        self._homes: dict[Digest, str] = {}
        # The layer flow: each layer's compressed blob, by diff_id.
        self._compressed: dict[Digest, Descriptor] = {}
        self._repository: str | None = None
        self._tag: str | None = None
        self._reopen: Reopen | None = None
        self._counts = BlobCounts()
        self.pushed: list[Pushed] = []

    # -- the destination -----------------------------------------------------

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        # What went up stays: blobs no manifest names are harmless, and the
        # next push skips them. Manifests go up only when complete.
        pass

    # -- where the next image goes --------------------------------------------

    def aim(self, repository: str, tag: str | None,
            reopen: Reopen | None = None) -> None:
        """The next image goes to `repository`, under `tag` (None: by
        digest only); `reopen` reads a layer's stored bytes again from an
        offset, for an upload that must resume."""
        self._repository, self._tag, self._reopen = repository, tag, reopen

    @property
    def repository(self) -> str:
        if self._repository is None:
            raise AssertionError("aim() the writer before writing")
        return self._repository

    # -- images ----------------------------------------------------------------

    def begin(self, image: Image) -> None:
        if self.flow is Flow.BLOB and (image.manifest is None
                                       or image.manifest_media_type is None):
            raise OutputError(
                f"{image.source or image.repository}: the source keeps no "
                "original manifest, so it cannot be pushed byte for byte")
        self._counts = BlobCounts()

    def plan(self, layers: list[tuple[Layer, int | None]]) -> None:
        pass

    def has_layer(self, layer: Layer) -> bool:
        for descriptor, places in self._candidates(layer):
            how = self._find(self.repository, descriptor.digest) \
                or self._mount_remembered(descriptor.digest, places)
            if how is not None:
                self._counts.add(how)
                if self.flow is Flow.LAYER:
                    self._remember(layer, descriptor)
                return True
        return False

    def _candidates(self, layer: Layer
                    ) -> list[tuple[Descriptor, tuple[str, ...]]]:
        """The blobs that would be the layer, with the places (HOST/REPO)
        a remembered one went to: a bundle's stored blob; else the one it
        was compressed to in this run, or else before (blobcache)."""
        if self.flow is Flow.BLOB:
            assert layer.descriptor is not None
            return [(layer.descriptor, ())]
        with self._lock:
            known = self._compressed.get(layer.diff_id)
        if known is not None:
            return [(known, ())]
        return [(r.descriptor, r.places)
                for r in self._cache.get(layer.diff_id)]

    def resume_from(self, layer: Layer) -> Hasher | None:
        """Nothing is half here: the uploader resumes cut uploads itself."""
        return None

    def write_layer(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        if self.flow is Flow.BLOB:
            self._upload_stored(layer, chunks)
        else:
            self._upload_compressed(layer, chunks)

    def commit(self, image: Image) -> None:
        repository = self.repository
        config = Descriptor(
            image.config_media_type or DOCKER_CONFIG, image.config_digest,
            len(image.config))
        self.put_blob(repository, config, _bytes_from(image.config),
                      self._counts)
        if self.flow is Flow.BLOB:
            assert image.manifest is not None
            assert image.manifest_media_type is not None
            data, media_type = image.manifest, image.manifest_media_type
        else:
            data, media_type = self._new_manifest(image, config), \
                DOCKER_MANIFEST
        digest = self.put_manifest(repository, self._tag, data, media_type)
        counts = self._counts
        self.pushed.append(Pushed(
            repository, self._tag, digest, media_type, counts.uploaded,
            counts.mounted, counts.present, counts.bytes))

    # -- blobs and manifests, also for what is not an image ------------------

    def put_blob(self, repository: str, descriptor: Descriptor,
                 reopen: Callable[[int], Iterable[bytes]],
                 counts: BlobCounts | None = None,
                 prehashed: bool = False) -> str:
        """Make the repository hold the blob: present, mounted or uploaded
        (see BlobUploader.upload_blob for `prehashed`)."""
        how = self._find(repository, descriptor.digest)
        if how is None:
            self.uploader.upload_blob(repository, descriptor, reopen,
                                      prehashed=prehashed)
            self._holds(repository, descriptor.digest)
            how = UPLOADED
        if counts is not None:
            counts.add(how, descriptor.size)
        return how

    def put_manifest(self, repository: str, tag: str | None, data: bytes,
                     media_type: str) -> Digest:
        """A manifest or index, under its tag, or by its digest."""
        reference = tag or str(Digest.of(data))
        return self.uploader.put_manifest(repository, reference, data,
                                          media_type)

    def _find(self, repository: str, digest: Digest) -> str | None:
        """PRESENT or MOUNTED if the repository holds the blob now; None if
        it must be uploaded."""
        with self._lock:
            if (repository, digest) in self._held:
                return PRESENT
            home = self._homes.get(digest)
        if self.uploader.has_blob(repository, digest):
            self._holds(repository, digest)
            return PRESENT
        if home is not None and home != repository \
                and self.uploader.mount_blob(repository, digest, home):
            LOG.info("mounted %s into %s from %s", digest.short(),
                     repository, home)
            self._holds(repository, digest)
            return MOUNTED
        return None

    def _holds(self, repository: str, digest: Digest) -> None:
        with self._lock:
            self._held.add((repository, digest))
            self._homes.setdefault(digest, repository)

    # -- the blob flow: stored bytes as they are ------------------------------

    def _upload_stored(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        assert layer.descriptor is not None
        descriptor = layer.descriptor
        first: list[Iterator[bytes]] = [chunks]
        again = self._reopen
        reread: list[int] = []

        def reopen(offset: int) -> Iterator[bytes]:
            if offset == 0 and first:
                # The input's stream, checked and counted as it is read.
                return first.pop()
            reread.append(offset)
            if again is None:
                raise OutputError(
                    f"the upload of layer {layer.index + 1} to "
                    f"{self.repository} must start again, and this source "
                    "cannot be read twice; push again")
            return again(layer, offset)

        # The input's stream checks the digest when read to its end, which
        # the upload does before its closing PUT.
        self.uploader.upload_blob(self.repository, descriptor, reopen,
                                  prehashed=True)
        if first:
            raise AssertionError("the uploader never read the layer")
        if not reread:
            # The upload stops reading at the promised size; finish the
            # input's stream so that its own checks run at its end. (After
            # a resume the uploader and the registry checked the digest.)
            for _ in chunks:
                pass
        self._holds(self.repository, descriptor.digest)
        self._counts.add(UPLOADED, descriptor.size)

    # -- the layer flow: compressed on the way --------------------------------

    def _remember(self, layer: Layer, descriptor: Descriptor) -> None:
        """The repository holds the layer as this blob now: the manifest
        names it, and a later push can mount it from here."""
        with self._lock:
            self._compressed[layer.diff_id] = descriptor
        self._cache.put(layer.diff_id, descriptor,
                        f"{self.uploader.host}/{self.repository}")

    def _mount_remembered(self, digest: Digest, places: tuple[str, ...]
                          ) -> str | None:
        """MOUNTED if the repository could mount the blob from a place it
        was pushed to before, on this registry."""
        here = f"{self.uploader.host}/"
        for place in places[:_MOUNT_TRIES]:
            source = place.removeprefix(here)
            if source == place or source == self.repository:
                continue
            if self.uploader.mount_blob(self.repository, digest, source):
                LOG.info("mounted %s into %s from %s, where it was pushed "
                         "before", digest.short(), self.repository, source)
                self._holds(self.repository, digest)
                return MOUNTED
        return None

    def _upload_compressed(self, layer: Layer, chunks: Iterator[bytes]
                           ) -> None:
        first = [chunks]
        again = self._reopen
        rank = self._turns.rank()

        def produce() -> Iterator[bytes | bytearray]:
            if first:
                # The input's stream, checked against the diff_id at its end.
                tar = first.pop()
            elif again is None:
                raise OutputError(
                    f"the upload of layer {layer.index + 1} to "
                    f"{self.repository} must start again, and this source "
                    "cannot be read twice; push again")
            else:
                tar = pipeline.layer_tar(again(layer, 0), layer.diff_id,
                                         f"layer {layer.index + 1}")
            return zlibfast.gzip_chunks(tar, self._gzip_level)

        descriptor = self.uploader.stream_blob(
            self.repository, DOCKER_GZIP_LAYER, produce,
            lambda: self._turns.turn(rank))
        self._remember(layer, descriptor)
        self._holds(self.repository, descriptor.digest)
        self._counts.add(UPLOADED, descriptor.size)

    def _new_manifest(self, image: Image, config: Descriptor) -> bytes:
        with self._lock:
            layers = [self._compressed[layer.diff_id]
                      for layer in image.layers]
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": _descriptor_json(config),
            "layers": [_descriptor_json(d) for d in layers],
        }
        return json.dumps(doc, indent=3).encode()


def _descriptor_json(descriptor: Descriptor) -> dict:
    return {"mediaType": descriptor.media_type, "size": descriptor.size,
            "digest": str(descriptor.digest)}


def _bytes_from(data: bytes) -> Callable[[int], Iterator[bytes]]:
    return lambda offset: iter([data[offset:]])
