"""The files of a tar archive, read in place: nothing is extracted.

One pass over the headers (tarfile seeks past each member's data) gives
every member's offset and size; after that any member is read at its
offset, from any thread, with positional reads. So a tarball of many
gigabytes is listed in a moment and checked in flat memory, and a docker
save, a fetch-to-tarfile output and a tar of a bundle or of an extracted
directory all read alike.
"""

import dataclasses
import logging
import os
import tarfile
from pathlib import Path
from typing import Iterator

from occystrap.errors import StoreError
from occystrap.inputs.offline import READ_CHUNK, FileMissing, safe_name

LOG = logging.getLogger(__name__)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Files whose presence at the top marks a source's root.
_ROOT_MARKERS = ("manifest.json", "index.json", "catalog.json")


@dataclasses.dataclass(frozen=True)
class _Member:
    offset: int
    size: int


class TarFiles:
    def __init__(self, path: Path) -> None:
        self.where = str(path)
        self._path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None
        try:
            self._length = os.fstat(self._fd).st_size
            self._members = self._index()
        except BaseException:
            os.close(self._fd)
            raise

    def _index(self) -> dict[str, _Member]:
        head = os.pread(self._fd, 4, 0)
        if head.startswith(_GZIP_MAGIC) or head.startswith(_ZSTD_MAGIC):
            raise StoreError(
                f"{self._path} is a compressed tar; decompress it first "
                "(gunzip or unzstd), so it can be read in place")
        members: dict[str, _Member] = {}
        with open(self._path, "rb") as f:
            try:
                archive = tarfile.open(fileobj=f, mode="r:")
            except tarfile.TarError:
                raise StoreError(
                    f"{self._path} is not a tar archive, nor a directory; "
                    "give a tarball, a bundle or an extracted directory") \
                    from None
            try:
                while True:
                    try:
                        info = archive.next()
                    except tarfile.TarError as e:
                        # A cut archive: what came before is still listed,
                        # and the member that runs past the end shows it.
                        LOG.debug("%s: reading stopped: %s", self._path, e)
                        break
                    if info is None:
                        break
                    name = safe_name(info.name)
                    if name and info.isreg():
                        members[name] = _Member(info.offset_data, info.size)
            finally:
                archive.close()
        return _strip_top(members)

    def names(self) -> dict[str, int]:
        return {name: m.size for name, m in self._members.items()}

    def truncated(self) -> dict[str, int]:
        return {name: max(0, self._length - m.offset)
                for name, m in self._members.items()
                if m.offset + m.size > self._length}

    def read(self, name: str, limit: int) -> bytes:
        member = self._member(name)
        if member.size > limit:
            raise StoreError(f"{name} is larger than {limit} bytes")
        return b"".join(self.chunks(name))

    def chunks(self, name: str) -> Iterator[bytes]:
        return self._chunks(name, self._member(name))

    def _chunks(self, name: str, member: _Member) -> Iterator[bytes]:
        position, end = member.offset, member.offset + member.size
        while position < end:
            try:
                chunk = os.pread(self._fd, min(READ_CHUNK, end - position),
                                 position)
            except OSError as e:
                raise StoreError(f"{self.where}: {name} is unreadable: "
                                 f"{e.strerror}") from None
            if not chunk:
                return  # the archive is cut here; sizes tell the caller
            position += len(chunk)
            yield chunk

    def _member(self, name: str) -> _Member:
        member = self._members.get(safe_name(name) or "")
        if member is None:
            raise FileMissing(f"{name} is missing")
        return member

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _strip_top(members: dict[str, _Member]) -> dict[str, _Member]:
    """`tar -cf x.tar transfer` puts everything under `transfer/`: read it
    as if the archive had been made inside the directory."""
    if any(name in members for name in _ROOT_MARKERS):
        return members
    tops = {name.split("/", 1)[0] for name in members}
    if len(tops) != 1 or not all("/" in name for name in members):
        return members
    cut = len(tops.pop()) + 1
    return {name[cut:]: member for name, member in members.items()}
