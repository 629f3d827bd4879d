"""Small filesystem helpers: atomic files, locks, hashing files."""

import contextlib
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from occystrap import safefile
from occystrap.digest import Digest, Hasher
from occystrap.errors import OccystrapError, OutputError

LOG = logging.getLogger(__name__)
READ_CHUNK = 1 << 20
# What mkstemp and mkdtemp make of prefix ".NAME." and suffix ".tmp".
_TEMP_RE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp\Z")


def temp_path(target: Path) -> Path:
    """A hidden name beside target, so `tar -cf x.tar *` never picks it up."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                dir=target.parent)
    os.close(fd)
    return Path(name)


def claim_temp(target: Path) -> tuple[int, Path]:
    """A new hidden temporary file beside target, open and locked.

    The lock, held as long as the descriptor is open, is what tells a
    later run that the file is still being written: one it can lock was
    left by a run that was killed (see sweep_stale).
    """
    while True:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.",
                                    suffix=".tmp", dir=target.parent)
        if _lock_as_named(fd, Path(name)):
            return fd, Path(name)


def claim_temp_dir(target: Path) -> tuple[int, Path]:
    """A new hidden temporary directory beside target, locked likewise."""
    while True:
        name = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                dir=target.parent)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if _lock_as_named(fd, Path(name)):
            return fd, Path(name)


def _lock_as_named(fd: int, path: Path) -> bool:
    """Lock fd; True if path still names it (a sweep of another run may
    have taken it for stale in the moment before the lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.lstat(path).st_ino == os.fstat(fd).st_ino:
            return True
    except (BlockingIOError, FileNotFoundError):
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return False


def sweep_stale(directory: Path, *prefixes: str) -> int:
    """Remove temporaries in directory that no live process holds.

    Only hidden `<prefix>….XXXXXXXX.tmp` entries, as claim_temp and
    claim_temp_dir name them (other temporaries carry no lock: name only
    prefixes of locked ones); a killed run (SIGKILL, a power cut) leaves
    them behind. Returns how many were removed.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name.startswith(prefixes) and _TEMP_RE.match(name):
            removed += _remove_if_stale(directory / name)
    return removed


def _remove_if_stale(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live run is writing it
        info = os.fstat(fd)
        # Still the entry that was locked, and of a kind we make.
        if os.lstat(path).st_ino != info.st_ino:
            return False
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        elif stat.S_ISREG(info.st_mode):
            path.unlink()
        else:
            return False
        LOG.info("removed %s, left behind by a run that was killed", path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of data at fd's position (os.write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(target: Path, data: bytes) -> None:
    """Write data so that target is either absent/old or complete."""
    fd, temp = claim_temp(target)
    try:
        write_all(fd, data)
        os.fchmod(fd, 0o644 & ~current_umask())
        # Renamed while still locked: a sweep never takes it for stale.
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def skipped(chunks: Iterable[bytes], count: int) -> Iterator[bytes]:
    """The chunks' bytes after the first `count` (a resumed read)."""
    for chunk in chunks:
        if count:
            cut = min(count, len(chunk))
            chunk, count = chunk[cut:], count - cut
            if not chunk:
                continue
        yield chunk


def file_digest(path: Path, algorithm: str = "sha256") -> Digest | None:
    """The digest of a regular file's content, or None if it cannot be
    read (a FIFO or a device is not read at all)."""
    hasher = Hasher(algorithm)
    try:
        for chunk in safefile.chunks(path):
            hasher.update(chunk)
    except (OSError, OccystrapError):
        return None
    return hasher.digest()


def lock_mode() -> int:
    """The umask's file mode, readable only by those who may write it.

    flock needs no write access: a lock file others can read is one they
    can hold forever, stalling every run.
    """
    mode = 0o666 & ~current_umask()
    writers = mode & 0o222
    return writers | writers << 1


def create_lock(path: Path) -> int:
    """Open (creating) a lock file for writing; OSError if not a writer."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 lock_mode())
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{path} is not a regular file; remove it")
        # Made readable to all by an older version: ours to fix.
        if info.st_uid == os.geteuid() \
                and stat.S_IMODE(info.st_mode) & ~lock_mode():
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & lock_mode())
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, held for the block, across processes.

    Waiting is said on stderr (a warning), with who holds the lock.
    """
    try:
        fd = create_lock(path)
    except OSError as e:
        raise OutputError(
            f"cannot lock {path}: {e.strerror}; only users who may write "
            "the directory can add to it") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOG.warning("waiting for the lock %s, held by %s", path,
                        lock_holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock_holder(fd: int) -> str:
    """Who holds the flock on fd's file, as far as /proc/locks says."""
    info = os.fstat(fd)
    wanted = (f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:"
              f"{info.st_ino}")
    try:
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END";
                # waiters carry a "->" field first.
                if "->" in fields or len(fields) < 6:
                    continue
                if fields[1] == "FLOCK" and fields[5] == wanted \
                        and fields[4] != str(os.getpid()):
                    return f"process {fields[4]}{_command(fields[4])}"
    except OSError:
        pass
    return "another process"


def _command(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read(4096).split(b"\0")
    except OSError:
        return ""
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return f" ({text[:200]})" if text else ""


@contextlib.contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """Turn OS errors while writing into one clear OutputError."""
    try:
        yield
    except OSError as e:
        raise OutputError(
            f"cannot write {path}: {e.strerror or e}") from e
