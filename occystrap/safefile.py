"""Reading files of a directory that may have been tampered with.

A directory that crossed an air gap is input like any other: a file in it
may be a FIFO (reading it hangs), a device or a link to /dev/zero (reading
never ends), a sparse file of gigabytes, or a link to somewhere outside the
directory. These helpers open regular files only, never follow a link out
of the directory, and count bytes as they read them: `st_size` is only
what the file claims.
"""

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator

from occystrap.errors import StoreError

READ_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW


def inside(path: Path, root: Path) -> bool:
    """Does path, symbolic links followed, stay inside root?"""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip("/") + "/")


def open_regular(path: Path, root: Path | None = None) -> int:
    """A read-only descriptor of path, which must be a regular file.

    With root, path must not lead out of root through a link. A missing
    file raises FileNotFoundError; other open failures their OSError;
    anything but a regular file inside root raises StoreError.
    """
    target = path
    if root is not None:
        if not inside(path, root):
            raise StoreError(
                f"{path} leads outside {root} (a symbolic link): the "
                "directory has been tampered with; fetch the image again")
        # The links checked above resolved; O_NOFOLLOW then refuses a
        # link swapped in since as the last component.
        target = Path(os.path.realpath(path))
    try:
        fd = os.open(target, _FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link where a file "
                             "belongs; fetch the image again") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StoreError(
                f"{path} is not a regular file (it is {_kind(mode)}): the "
                "directory has been tampered with; fetch the image again")
        # O_NONBLOCK was for the open (a FIFO would wait for a writer);
        # reads of a regular file should block as usual.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(path: Path, limit: int, root: Path | None = None) -> bytes:
    """A small regular file's bytes; StoreError past `limit` bytes.

    OSError (FileNotFoundError included) when it cannot be opened or read.
    """
    fd = open_regular(path, root)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise StoreError(
            f"{path} is larger than {limit} bytes, more than such a file "
            "ever holds: the directory is damaged; fetch the image again")
    return data


def chunks(path: Path, root: Path | None = None) -> Iterator[bytes]:
    """A regular file's bytes in chunks, opened before the first is asked.

    Open failures raise at once, not at the first next().
    """
    fd = open_regular(path, root)
    return _chunks(os.fdopen(fd, "rb"))


def _chunks(f) -> Iterator[bytes]:
    with f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def loads(data: bytes | str) -> Any:
    """json.loads, with absurd nesting as the ValueError it is.

    json.loads recurses once per level of nesting, so deep input exhausts
    the interpreter's stack; no document occystrap reads nests that deep.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def load_json(path: Path, limit: int, root: Path | None = None) -> Any:
    """A JSON file of at most `limit` bytes; ValueError if not JSON."""
    return loads(read_capped(path, limit, root))


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"
