"""Fetches a list of images into one bundle, one image after another.

An image the bundle already holds, unchanged in the registry, costs one
manifest HEAD (free against Docker Hub's pull limit) and no download.
"""

import dataclasses
import logging
from pathlib import Path
from typing import Callable

from occystrap import layout, pipeline, progress
from occystrap.digest import Digest
from occystrap.errors import OccystrapError
from occystrap.image import Image
from occystrap.inputs.registry import RegistryInput
from occystrap.manifest import (
    Descriptor, ImageIndex, Platform, artifact_blobs, parse_manifest)
from occystrap.outputs.bundle import BundleWriter
from occystrap.reference import ImageReference
from occystrap.registry import RegistryClient

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one reference."""

    reference: ImageReference
    # The platform images fetched (none when skipped or failed).
    images: tuple[Image, ...] = ()
    # What the name points at in the bundle now.
    digest: Digest | None = None
    platforms: tuple[Platform, ...] = ()
    skipped: bool = False
    error: OccystrapError | None = None
    bytes_read: int = 0
    layers_present: int = 0


@dataclasses.dataclass(frozen=True)
class Request:
    platform: Platform
    platform_required: bool = False
    all_platforms: bool = False
    keep_going: bool = False
    parallel: int = pipeline.DEFAULT_PARALLEL


def fetch_all(references: list[ImageReference], writer: BundleWriter,
              client_for: Callable[[ImageReference], RegistryClient],
              request: Request,
              report: progress.Callback = progress.ignore) -> list[Outcome]:
    """Fetch every reference into the bundle; return what became of each.

    Without keep_going the first failure is raised, after the images
    before it were recorded; with it, failures are returned as outcomes.
    """
    outcomes: list[Outcome] = []
    with pipeline.destination(writer):
        for number, reference in enumerate(references):
            report(progress.ImageStarted(number, len(references)))
            try:
                outcome = _fetch_one(reference, writer,
                                     client_for(reference), request, report)
            except OccystrapError as e:
                if not request.keep_going:
                    raise
                LOG.debug("%s failed: %s", reference, e)
                outcome = Outcome(reference, error=e)
            outcomes.append(outcome)
    return outcomes


def _fetch_one(reference: ImageReference, writer: BundleWriter,
               client: RegistryClient, request: Request,
               report: progress.Callback) -> Outcome:
    held = _held(writer, reference)
    if held is not None and _answers(held, request) \
            and _unchanged(held, reference, client) \
            and _complete(writer.path, held):
        LOG.info("%s is already in the bundle as %s", reference,
                 held.descriptor.digest)
        return Outcome(reference, digest=held.descriptor.digest,
                       skipped=True)
    top = client.get_manifest(reference.repository, reference.reference,
                              reference.digest)
    parsed = parse_manifest(top.data, top.content_type)
    if isinstance(parsed, ImageIndex) and request.all_platforms:
        # Entries that are not runnable images (build attestations) go in
        # first, so the index, kept byte for byte, resolves whole.
        images_in = parsed.images()
        for entry in parsed.manifests:
            if entry not in images_in:
                _copy_artifact(client, reference, entry, writer)
        inputs = [RegistryInput(client, reference, request.platform,
                                top=top, entry=entry)
                  for entry in images_in]
    else:
        inputs = [RegistryInput(client, reference, request.platform,
                                request.platform_required, top=top)]
    images, read, present = [], 0, 0
    for source in inputs:
        summary = pipeline.copy_image(source, writer, report,
                                      request.parallel)
        images.append(summary.image)
        read += summary.bytes_transferred
        present += summary.layers_skipped
    recorded = _held(writer, reference)
    return Outcome(reference, tuple(images),
                   recorded.descriptor.digest if recorded else None,
                   tuple(image.platform for image in images),
                   bytes_read=read, layers_present=present)


def _copy_artifact(client: RegistryClient, reference: ImageReference,
                   entry: Descriptor, writer: BundleWriter) -> None:
    """An index entry that is no image (an attestation): its manifest and
    every blob it names, as they are, digests checked."""
    repository = reference.repository
    fetched = client.get_manifest(repository, str(entry.digest), entry.digest)
    for blob in artifact_blobs(fetched.data, f"{reference} entry "
                               f"{entry.digest.short()}"):
        writer.put_blob(blob, client.blob_chunks(repository, blob))
    writer.put_blob(entry, iter([fetched.data]))


def _held(writer: BundleWriter, reference: ImageReference
          ) -> layout.Entry | None:
    return next((e for e in writer.entries()
                 if e.name == reference.full_name), None)


def _answers(held: layout.Entry, request: Request) -> bool:
    """Does what the bundle holds under the name answer this request?

    An entry that is one platform taken from an index is not enough for
    --all-platforms, and is the wrong image for another --platform; a
    whole index holds every platform.
    """
    if held.source is None or held.descriptor.digest == held.source:
        return True
    return not request.all_platforms \
        and request.platform.matches(held.descriptor.platform)


def _unchanged(held: layout.Entry, reference: ImageReference,
               client: RegistryClient) -> bool:
    if reference.digest is not None:
        # A pinned reference cannot have moved.
        return held.source == reference.digest
    current = client.head_manifest(reference.repository, reference.reference)
    return current is not None and current == held.source


def _complete(root: Path, held: layout.Entry) -> bool:
    """Every blob the entry needs to load is in place (sizes are checked
    when the blobs are written, digests by verify)."""
    needed = [held.descriptor.digest, held.config, *held.layers]
    return all((root / layout.blob_path(d)).is_file() for d in needed)
