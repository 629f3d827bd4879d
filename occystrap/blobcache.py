"""What each uncompressed layer was compressed to when pushed before.

A push of a docker-save tarball compresses each layer as it sends it, so
the compressed blob's digest is known only once it is all sent. To skip a
layer the registry already holds, a later push must know that digest
before it starts: docker keeps the same map (its distribution metadata,
by diff_id), and skopeo its blob-info cache. Here it is one small file
per diff_id, written whole and renamed into place, so concurrent pushes
never see half a file.

It is a hint, nothing more: a compressed digest it names is used only if
the registry says it holds that blob (or mounts it from a repository it
was pushed to before, which is remembered too), and a cache that cannot
be read or written (a read-only home, a damaged file) only costs the
upload.
"""

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

from occystrap.digest import Digest
from occystrap.errors import InvalidReference
from occystrap.manifest import Descriptor

LOG = logging.getLogger(__name__)
# Compressed forms kept per layer (other libraries, levels or versions
# give other blobs); the newest first.
_KEEP = 4
# Places (HOST/REPOSITORY) kept per compressed blob, the newest first.
_PLACES = 8
_MOST_BYTES = 64 << 10


@dataclasses.dataclass(frozen=True)
class Remembered:
    """A compressed blob a layer was pushed as, and where it went."""

    descriptor: Descriptor
    places: tuple[str, ...] = ()


def default_root() -> Path | None:
    """$XDG_CACHE_HOME/occystrap/compressed, or under ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base and os.path.isabs(base):
        return Path(base) / "occystrap" / "compressed"
    try:
        return Path.home() / ".cache" / "occystrap" / "compressed"
    except RuntimeError:  # no home directory to be found
        return None


class CompressedBlobs:
    """diff_id -> the compressed blobs it was pushed as, newest first,
    each with the places (HOST/REPOSITORY) it was pushed to."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def get(self, diff_id: Digest) -> list[Remembered]:
        path = self._path(diff_id)
        if path is None:
            return []
        try:
            with open(path, "rb") as f:
                data = f.read(_MOST_BYTES)
        except OSError:
            return []
        try:
            return _parse(data)
        except (ValueError, TypeError, KeyError, RecursionError,
                InvalidReference) as e:
            LOG.debug("ignoring %s: %s", path, e)
            return []

    def put(self, diff_id: Digest, descriptor: Descriptor,
            place: str) -> None:
        path = self._path(diff_id)
        if path is None:
            return
        known = self.get(diff_id)
        before = next((r.places for r in known
                       if r.descriptor.digest == descriptor.digest), ())
        newest = Remembered(descriptor, (place, *(p for p in before
                                                  if p != place)))
        entries = [{"mediaType": r.descriptor.media_type,
                    "digest": str(r.descriptor.digest),
                    "size": r.descriptor.size,
                    "places": list(r.places[:_PLACES])}
                   for r in [newest, *(r for r in known
                                       if r.descriptor.digest
                                       != descriptor.digest)][:_KEEP]]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".new-")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(entries, f)
                os.replace(temp, path)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError as e:
            LOG.debug("cannot remember %s in %s: %s", diff_id.short(),
                      self.root, e)

    def _path(self, diff_id: Digest) -> Path | None:
        if self.root is None:
            return None
        return self.root / diff_id.algorithm / diff_id.hex


def _parse(data: bytes) -> list[Remembered]:
    entries = json.loads(data)
    if not isinstance(entries, list):
        raise ValueError("not a list")
    found = []
    for entry in entries:
        size = entry["size"]
        media_type = entry["mediaType"]
        places = entry.get("places", [])
        if not isinstance(size, int) or size < 0 \
                or not isinstance(media_type, str) \
                or not isinstance(places, list) \
                or not all(isinstance(p, str) for p in places):
            raise ValueError(f"bad entry {entry!r}")
        found.append(Remembered(
            Descriptor(media_type, Digest.parse(entry["digest"]), size),
            tuple(places)))
    return found
