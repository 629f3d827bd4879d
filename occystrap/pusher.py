"""Pushes every image of an offline source into a registry, one by one.

Each image goes to the repository its name gives, without the registry
it came from: `127.0.0.1:5555/shared/app:stable` to `shared/app:stable`,
`busybox:latest` to `library/busybox:latest`, and all of them under
--prefix when one is given. A bundle's images go up byte for byte, and an
index it keeps whole goes up whole: platform manifests and whatever rides
with them (attestations) first, then the index. Images from docker-save
sources get a new manifest (see outputs/push.py).
"""

import dataclasses
import functools
import logging
import time
from typing import Iterator

from occystrap import layout, pipeline, progress
from occystrap.digest import Digest
from occystrap.errors import InvalidReference, StoreError
from occystrap.image import Flow
from occystrap.inputs.offline import SourceImage
from occystrap.inputs.offline_image import SourceInput
from occystrap.manifest import Platform, artifact_blobs
from occystrap.outputs.push import BlobCounts, PushWriter
from occystrap.reference import ImageReference, Registry, parse_repository
from occystrap.sources import Source

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    """One name to push: an image or a whole index, and where it goes."""

    # How the source names it (None: it has no name).
    name: str | None
    repository: str
    # None: pushed by digest only.
    tag: str | None
    images: tuple[SourceImage, ...]
    # The index the images make up, when it goes up whole.
    index: Digest | None = None
    # Why the index did not go up whole, if it did not.
    note: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"untagged image {self.images[0].config_digest}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    target: Target
    # What the name (or digest) points at in the registry now.
    digest: Digest
    media_type: str
    platforms: tuple[Platform, ...]
    # True when the manifest was written here (layers compressed on the
    # way), so its digest is not the one the image had at its origin.
    new_manifest: bool
    uploaded: int
    mounted: int
    present: int
    bytes_uploaded: int
    seconds: float


def plan(source: Source, prefix: str | None = None,
         wanted: tuple[str, ...] = (), platform: Platform | None = None
         ) -> list[Target]:
    """Every push the source asks for, checked before anything goes up."""
    images = source.images()
    if not images:
        raise StoreError(f"{source.path} holds no image to push")
    if prefix is not None:
        _check_prefix(prefix)
    groups = _groups(source, images)
    targets: list[Target] = []
    seen: set[tuple[str, str | None, Digest | None]] = set()
    for names, members, index in groups:
        for name in names or (None,):
            for target in _targets(source, name, members, index, prefix,
                                   platform):
                key = (target.repository, target.tag,
                       target.index or target.images[0].config_digest)
                if key not in seen:
                    seen.add(key)
                    targets.append(target)
    if wanted:
        targets = _pick(targets, wanted, source)
    return targets


def push(source: Source, writer: PushWriter, targets: list[Target],
         report: progress.Callback = progress.ignore,
         parallel: int = pipeline.DEFAULT_PARALLEL) -> list[Outcome]:
    """Push every target; the first failure stops the run and is raised."""
    outcomes = []
    with pipeline.destination(writer):
        for number, target in enumerate(targets):
            report(progress.ImageStarted(number, len(targets)))
            outcomes.append(_push_one(source, writer, target, report,
                                      parallel))
    return outcomes


def _push_one(source: Source, writer: PushWriter, target: Target,
              report: progress.Callback, parallel: int) -> Outcome:
    started = time.monotonic()
    before = len(writer.pushed)
    whole = target.index is not None
    extra = BlobCounts()
    for image in target.images:
        found = SourceInput(source, image)
        writer.aim(target.repository, None if whole else target.tag,
                   found.stored_chunks)
        pipeline.copy_image(found, writer, report, parallel)
    pushed = writer.pushed[before:]
    if target.index is not None:
        index = source.index(target.index)
        for attached in index.attached:
            _push_attached(source, writer, target.repository, attached.digest,
                           attached.media_type, extra)
        digest = writer.put_manifest(target.repository, target.tag,
                                     index.data, index.media_type)
        media_type = index.media_type
    else:
        (only,) = pushed
        digest, media_type = only.digest, only.media_type
    return Outcome(
        target, digest, media_type,
        tuple(i.platform for i in target.images if i.platform is not None),
        new_manifest=writer.flow is Flow.LAYER,
        uploaded=sum(p.uploaded for p in pushed) + extra.uploaded,
        mounted=sum(p.mounted for p in pushed) + extra.mounted,
        present=sum(p.present for p in pushed) + extra.present,
        bytes_uploaded=sum(p.bytes_uploaded for p in pushed) + extra.bytes,
        seconds=time.monotonic() - started)


def _push_attached(source: Source, writer: PushWriter, repository: str,
                   digest: Digest, media_type: str,
                   counts: BlobCounts) -> None:
    """An index entry that is no image (an attestation): its blobs, then
    its manifest, as they are."""
    data = source.blob(digest)
    for blob in artifact_blobs(data, f"{source.path}: entry {digest}"):
        writer.put_blob(repository, blob,
                        functools.partial(_blob_from, source, blob.digest),
                        counts)
    writer.put_manifest(repository, str(digest), data, media_type)


def _blob_from(source: Source, digest: Digest, offset: int
               ) -> Iterator[bytes]:
    return source.blob_chunks(digest, offset)


def _groups(source: Source, images: list[SourceImage]
            ) -> list[tuple[tuple[str, ...], tuple[SourceImage, ...],
                            Digest | None]]:
    """The images as the source names them: one each, except the platform
    images of one index kept whole, which go together."""
    groups: list[tuple[tuple[str, ...], tuple[SourceImage, ...],
                       Digest | None]] = []
    by_index: dict[Digest, int] = {}
    for image in images:
        if image.index_digest is None:
            groups.append((image.names, (image,), None))
            continue
        at = by_index.get(image.index_digest)
        if at is None:
            by_index[image.index_digest] = len(groups)
            groups.append((image.names, (image,), image.index_digest))
        else:
            names, members, index = groups[at]
            merged = names + tuple(n for n in image.names if n not in names)
            groups[at] = (merged, members + (image,), index)
    return groups


def _targets(source: Source, name: str | None,
             members: tuple[SourceImage, ...], index: Digest | None,
             prefix: str | None, platform: Platform | None
             ) -> Iterator[Target]:
    repository, tag = destination(name, prefix, members[0])
    if index is None:
        yield Target(name, repository, tag, members)
        return
    held = source.index(index)
    have = {image.manifest_digest for image in members}
    missing = [d for d in held.images if d.digest not in have]
    absent = [d for d in held.attached if not _has_blob(source, d.digest)]
    if not missing and not absent:
        yield Target(name, repository, tag, members, index)
        return
    # Without every platform the index cannot go up as it was: the tag
    # goes to the platform asked for (or the first), the rest by digest.
    note = (f"the source holds {len(held.images) - len(missing)} of the "
            f"{len(held.images)} platforms of index {index}, so the index "
            "was not pushed")
    chosen = next((m for m in members if platform is not None
                   and platform.matches(m.platform)), members[0])
    for image in members:
        yield Target(name, repository, tag if image is chosen else None,
                     (image,), note=note)


def _has_blob(source: Source, digest: Digest) -> bool:
    return layout.blob_path(digest) in source.files.names()


def destination(name: str | None, prefix: str | None,
                image: SourceImage | None) -> tuple[str, str | None]:
    """Where a name puts an image in the registry: (repository, tag)."""
    if name is None:
        if prefix is None:
            what = image.label if image else "an image"
            raise InvalidReference(
                f"{what} has no name, so it has no repository to go "
                "to; give --prefix REPOSITORY to push it there by digest, "
                "or choose named images with --image")
        return prefix, None
    reference = ImageReference.parse_name(name)
    repository = reference.repository
    if prefix is not None:
        repository = f"{prefix}/{repository}"
        # The whole name must still be a repository name.
        parse_repository(repository, _ANYWHERE)
    return repository, reference.tag


# A registry that is not Docker Hub: names are checked, not rewritten.
_ANYWHERE = Registry("registry.invalid")


def _check_prefix(prefix: str) -> None:
    try:
        parse_repository(prefix, _ANYWHERE)
    except InvalidReference:
        raise InvalidReference(
            f"invalid --prefix {prefix!r}: use lowercase path components "
            "separated by '/', e.g. mirror or team/mirror") from None


def _pick(targets: list[Target], wanted: tuple[str, ...],
          source: Source) -> list[Target]:
    """Only the targets --image names, in the source's order."""
    picked: list[Target] = []
    for text in wanted:
        reference = ImageReference.parse_name(text)
        explicit = text.split("/", 1)[0] != text and _looks_like_host(
            text.split("/", 1)[0])
        found = [t for t in targets if t.name is not None
                 and _names(t.name, reference, explicit)]
        if not found:
            held = ", ".join(t.label for t in targets) or "nothing"
            raise StoreError(f"{text} is not in {source.path}; it holds "
                             f"{held}")
        picked += [t for t in found if t not in picked]
    return [t for t in targets if t in picked]


def _looks_like_host(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost"


def _names(name: str, wanted: ImageReference, explicit: bool) -> bool:
    held = ImageReference.parse_name(name)
    if explicit and held.registry.host != wanted.registry.host:
        return False
    if held.repository != wanted.repository:
        return False
    if wanted.digest is not None and wanted.tag is None:
        return held.digest == wanted.digest
    return held.tag == wanted.tag
