"""Small filesystem helpers: atomic files, locks, hashing files."""

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

from occystrap.digest import Digest, Hasher
from occystrap.errors import OutputError

READ_CHUNK = 1 << 20


def temp_path(target: Path) -> Path:
    """A hidden name beside target, so `tar -cf x.tar *` never picks it up."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                dir=target.parent)
    os.close(fd)
    return Path(name)


def write_atomic(target: Path, data: bytes) -> None:
    """Write data so that target is either absent/old or complete."""
    temp = temp_path(target)
    try:
        with open(temp, "wb") as f:
            f.write(data)
        os.chmod(temp, 0o644 & ~current_umask())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def file_digest(path: Path, algorithm: str = "sha256") -> Digest | None:
    """The digest of a file's content, or None if it cannot be read."""
    hasher = Hasher(algorithm)
    try:
        for chunk in file_chunks(path):
            hasher.update(chunk)
    except OSError:
        return None
    return hasher.digest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, held for the block, across processes."""
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """Turn OS errors while writing into one clear OutputError."""
    try:
        yield
    except OSError as e:
        raise OutputError(
            f"cannot write {path}: {e.strerror or e}") from e
