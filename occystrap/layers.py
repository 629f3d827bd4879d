"""Apply image layers (tar changesets) to a directory; every layer is hostile.

Semantics follow the OCI image-spec "layer changesets" rules the way umoci and
containerd implement them: entries replace whatever was at their path (a
directory re-declared as a directory keeps its contents and takes the new
metadata); ``.wh.NAME`` deletes NAME and ``.wh..wh..opq`` empties its
directory, but only of what lower layers put there, never of what the same
layer created.

Hostile-input policy: re-root, like umoci (and a chroot). Nothing is created,
changed or deleted outside the root, and no hardlink points outside it.

* Entry names and hardlink targets are cleaned lexically: leading ``/`` and
  ``.`` components are dropped and ``..`` is resolved, never climbing above the
  root (``../../etc/x`` and ``/etc/x`` both become ``ROOT/etc/x``, with a
  warning and ``LayerStats.rerooted`` counted for the ``..`` case).
* Parent directories are walked one component at a time inside the root. A
  symlink met on the way is followed with chroot semantics: an absolute target
  starts again at the root and ``..`` stops at the root, so ``lib -> /usr/lib``
  then ``lib/x.so`` writes ``ROOT/usr/lib/x.so``. Symlinks are stored verbatim.
* The last component is never followed: files are opened with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` after removing whatever was there, so a
  symlink left by any layer is replaced, not written through. Hardlinks link
  to the target entry itself (even if it is a symlink), never through it.
* Entries that cannot be re-rooted into anything meaningful raise
  ``LayerError`` naming the entry: a non-directory entry for the root itself
  (umoci refuses this too), whiteouts of ``.``/``..``/nothing, symlink loops, a
  hardlink to a missing path or a directory, a parent that is a regular file.

Entries that make no sense in an applied tree are skipped with a warning and
counted in ``LayerStats.skipped``: device nodes when we may not mknod, unknown
entry types, AUFS bookkeeping (``.wh..wh.*``) and anything below a ``.wh.``
directory (so no ``.wh.`` name ever appears in an applied tree).

Metadata: permission bits (setuid/setgid/sticky too), nanosecond mtimes (also
of symlinks), ``SCHILY.xattr.*`` extended attributes, and numeric ownership
when running as root. A directory gets its entry's mode and mtime once the
layer is done, so its own children do not disturb them; a directory the layer
changes without declaring it keeps the mtime it had.

Threat model: the layer is the attacker. Concurrent changes to the tree by
other processes while a layer is applied are not defended against.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import re
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from occystrap.errors import LayerError
from occystrap.fsutil import write_all
from occystrap.tarheader import TarInfo

LOG = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
# Docker and AUFS keep their own bookkeeping (.wh..wh.plnk, .wh..wh.aufs) under
# this prefix; it never names a path to delete.
_WHITEOUT_META_PREFIX = ".wh..wh."

_CHUNK = 1 << 20
# filepath-securejoin, which umoci and runc use for the same walk, gives up
# after 255 links; matching it keeps the answer the same for looping layers.
_MAX_SYMLINKS = 255
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
_XATTR_PAX_PREFIX = "SCHILY.xattr."
# Host policy labels and overlayfs internals are never the image's to set
# (umoci ignores the same ones).
_IGNORED_XATTRS = frozenset({"security.selinux"})
_IGNORED_XATTR_PREFIXES = ("trusted.overlay.",)
# Errors that mean "this filesystem or this user cannot have that xattr".
_XATTR_SOFT_ERRNOS = frozenset(
    {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP})
_PAX_TIME = re.compile(r"([+-]?[0-9]+)(?:\.([0-9]*))?")

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class _DirMetadata:
    """What a directory entry asks for, applied when the layer is done."""

    mode: int
    atime_ns: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """What unpacking one layer did."""

    entries: int = 0        # tar members read, whatever became of them
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0       # FIFOs and device nodes created
    bytes_written: int = 0  # regular file content
    whiteouts: int = 0      # whiteout and opaque markers applied
    # Entries not created (devices when unprivileged, ...).
    skipped: int = 0
    # Names or link targets whose ".." climbed above the root.
    rerooted: int = 0

    def __add__(self, other: LayerStats) -> LayerStats:
        return LayerStats(**{
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)})


def extract_layer(fileobj: BinaryIO, dest: Path) -> LayerStats:
    """Unpack one layer tar into dest as it is: whiteouts stay plain files.

    Same safety rules as apply_layer. A hardlink to a file only a lower layer
    has is skipped with a warning. fileobj is read sequentially, to its end, so
    an upstream hashing reader sees every byte. dest is created if missing.
    Raises LayerError for a broken or malicious layer.
    """
    return _unpack(fileobj, _Unpacker(dest, apply_whiteouts=False))


def apply_layer(fileobj: BinaryIO, root: Path) -> LayerStats:
    """Apply one layer's changeset onto root; once per layer, lowest first.

    fileobj is read sequentially, to its end, so an upstream hashing reader
    sees every byte; exceptions it raises pass through unchanged. root is
    created if missing. Raises LayerError for a broken or malicious layer,
    after which the state of root is undefined (as with umoci).
    """
    return _unpack(fileobj, _Unpacker(root, apply_whiteouts=True))


def _unpack(fileobj: BinaryIO, unpacker: _Unpacker) -> LayerStats:
    """Drive an unpacker through one reading of a layer tar."""
    # A file is read in place. A stream goes through tarfile's own
    # buffer, whose every header read copies what is left of a 10 KiB
    # record: a fifth of the time of a layer of small files.
    seekable = fileobj.seekable()
    try:
        # Opening already reads the first header, hence outside the `with`.
        archive = tarfile.open(
            fileobj=fileobj, mode="r:" if seekable else "r|",
            encoding="utf-8", errors="surrogateescape", tarinfo=_TarInfo)
    except tarfile.TarError as err:
        raise LayerError(
            f"layer is not a valid tar stream: {err}") from err
    buffer = bytearray(_CHUNK)   # one copy buffer for every file
    in_place = _descriptor(fileobj) if seekable else None
    with archive:
        while True:
            try:
                member = archive.next()
            except (tarfile.TarError, UnicodeError) as err:
                raise LayerError(
                    "layer tar stream is damaged or truncated: "
                    f"{err}") from err
            if member is None:
                if getattr(archive, _TRUNCATED, False):
                    raise LayerError("layer tar stream is truncated: "
                                     "it ends inside a header")
                break
            # A stream is never revisited: dropping parsed headers keeps
            # memory flat however many entries the layer has.
            # (TarFile.members is undocumented, hence not in typeshed.)
            archive.members.clear()  # type: ignore[attr-defined]
            _member(archive, member, unpacker, buffer, in_place)
        unpacker.guarded(None, unpacker.finish)
    # Read any end padding so a verifying reader upstream hashes every
    # byte.
    while not seekable and fileobj.read(_CHUNK):
        pass
    return unpacker.stats()


def _descriptor(fileobj: BinaryIO) -> int | None:
    """The descriptor of a layer that is a real file, to copy from."""
    try:
        return fileobj.fileno()
    except (OSError, ValueError):   # io.UnsupportedOperation is both
        return None


def _member(archive: tarfile.TarFile, member: tarfile.TarInfo,
            unpacker: _Unpacker, buffer: bytearray,
            in_place: int | None) -> None:
    """One tar entry into the tree."""
    fd = unpacker.guarded(member.name, unpacker.entry, member)
    if fd is None:
        return  # tarfile skips unread content itself
    try:
        if in_place is not None and not member.issparse():
            # Straight from the layer file, by offset: no reader objects
            # per file.
            written = unpacker.guarded(
                member.name, _copy_range, in_place, member.offset_data,
                member.size, fd, buffer)
        else:
            source = archive.extractfile(member)
            # Always an io.BufferedReader for a regular file.
            assert isinstance(source, io.BufferedIOBase)
            written = unpacker.guarded(member.name, _copy, source, fd, buffer)
        unpacker.guarded(member.name, unpacker.file_done, member, fd, written)
    finally:
        os.close(fd)


_TRUNCATED = "_occystrap_truncated"


class _TarInfo(TarInfo):
    """Notes a header cut short, which tarfile takes for the end.

    Go's tar does not, so neither do we.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> _TarInfo:
        try:
            return super().fromtarfile(archive)
        # Undocumented, so typeshed leaves it out; present since Python 3.3.
        except tarfile.TruncatedHeaderError:  # type: ignore[attr-defined]
            setattr(archive, _TRUNCATED, True)
            raise


class _SourceFailure(Exception):
    """Carries an exception from the caller's stream past OSError handling."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Unpacker:
    """One layer's worth of state.

    Paths are real (symlink-free) and relative to root.
    """

    def __init__(self, root: Path, apply_whiteouts: bool) -> None:
        self._root = os.path.abspath(os.fspath(root))
        try:
            os.makedirs(self._root, exist_ok=True)
        except OSError as err:
            raise LayerError(
                f"cannot create {self._root}: {_describe(err)}") from err
        if not os.path.isdir(self._root):
            raise LayerError(f"{self._root} is not a directory; "
                             "choose an empty directory")
        self._apply_whiteouts = apply_whiteouts
        self._privileged = os.geteuid() == 0
        self._chown = self._privileged
        self._counts = {f.name: 0 for f in dataclasses.fields(LayerStats)}
        # Logical directory (as spelled in the tar) -> real directory. Only
        # ever holds paths whose every component was seen to be a directory;
        # it is dropped whenever a directory or symlink is removed.
        self._dirs: dict[str, str] = {"": ""}
        # Real paths this layer created, plus their ancestors: whiteouts and
        # opaque markers must leave these alone (as umoci's upperPaths).
        self._upper: set[str] = set()
        # Directories declared by this layer, applied at the end so their own
        # children do not disturb the mtime.
        self._declared: dict[str, _DirMetadata] = {}
        # Directories this layer changed, as they were before; put back at the
        # end unless declared, so a later layer does not rewrite a lower one's
        # mtime.
        self._saved: dict[str, os.stat_result] = {}
        self._warned: set[object] = set()

    # -- driving the stream -------------------------------------------------

    def stats(self) -> LayerStats:
        return LayerStats(**self._counts)

    def guarded(self, name: str | None, step: Callable[..., _T],
                *args: object) -> _T:
        """Run one step, turning OS errors into LayerErrors naming the entry."""
        failure: BaseException | None = None
        try:
            return step(*args)
        except _SourceFailure as carried:
            failure = carried.error
        except (OSError, ValueError) as err:
            where = (f"layer entry {_shown(name)}" if name is not None
                     else "layer")
            raise LayerError(
                f"cannot unpack {where}: {_describe(err)}") from err
        # Raised outside the except block so the caller's exception arrives
        # exactly as its stream raised it.
        assert failure is not None
        raise failure

    def entry(self, member: tarfile.TarInfo) -> int | None:
        """Apply one entry; for a regular file, the open fd to fill."""
        self._counts["entries"] += 1
        parts = self._clean(member.name, member)
        if not parts:
            if not member.isdir():
                # A root turned into a symlink would carry every later entry
                # outside it (umoci's CVE-2021-29136); umoci refuses this too.
                raise LayerError(
                    f"layer entry {_shown(member.name)} would replace the "
                    "root directory with a non-directory; refusing this "
                    "malicious or broken layer")
            self._directory("", member)
            return None
        parents, name = parts[:-1], parts[-1]
        if self._apply_whiteouts:
            if any(part.startswith(WHITEOUT_PREFIX) for part in parents):
                self._skip(member, "a whiteout marker cannot contain entries")
                return None
            if name.startswith(WHITEOUT_PREFIX):
                self._whiteout(parents, name, member)
                return None
        if not (member.isreg() or member.isdir() or member.issym()
                or member.islnk() or member.isfifo() or member.ischr()
                or member.isblk()):
            self._skip(member, f"unsupported tar entry type {member.type!r}")
            return None
        if (member.ischr() or member.isblk()) and not self._privileged:
            self._skip(member, "device nodes need root")
            return None
        parent = self._resolve(parents, create=True, member=member)
        assert parent is not None
        path = _join(parent, name)
        self._touch(parent)
        fd = None
        if member.isreg():
            fd = self._create(
                path, lambda target: os.open(target, _CREATE_FLAGS, 0o600))
        elif member.isdir():
            self._directory(path, member)
        elif member.issym():
            self._symlink(path, member)
        elif member.islnk():
            if not self._hardlink(path, member):
                return None
        elif not self._node(path, member):
            return None
        if self._apply_whiteouts:
            self._mark_upper(path)
        return fd

    def _skip(self, member: tarfile.TarInfo, why: str) -> None:
        self._counts["skipped"] += 1
        LOG.warning("skipping layer entry %s: %s", _shown(member.name), why)

    # -- paths ----------------------------------------------------------------

    def _abs(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

    def _clean(self, name: str, member: tarfile.TarInfo) -> list[str]:
        """Split a tar name into components lexically, never above root."""
        if "\x00" in name:
            raise LayerError(f"layer entry {_shown(member.name)} has a NUL "
                             "byte in a path")
        parts: list[str] = []
        climbed = False
        for part in name.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                else:
                    climbed = True
                continue
            parts.append(part)
        if climbed:
            self._counts["rerooted"] += 1
            LOG.warning("layer entry %s: path %s climbs above the root; "
                        "keeping it inside", _shown(member.name), _shown(name))
        return parts

    def _resolve(self, parts: list[str], create: bool,
                 member: tarfile.TarInfo) -> str | None:
        """Map a logical directory to a real one inside the root, chroot-style.

        With create, missing directories are made (mode 0755); without, a
        missing or non-directory component gives None.
        """
        known = self._dirs
        keys: list[str] = []
        key = ""
        for part in parts:
            key = f"{key}/{part}" if key else part
            keys.append(key)
        start = len(keys)
        while start and keys[start - 1] not in known:
            start -= 1
        real = known[keys[start - 1]] if start else ""
        for index in range(start, len(parts)):
            found = self._step(real, parts[index], create, member)
            if found is None:
                return None
            real = known[keys[index]] = found
        return real

    def _step(self, base: str, component: str, create: bool,
              member: tarfile.TarInfo) -> str | None:
        """Resolve one logical component inside the real directory base."""
        stack = base.split("/") if base else []
        todo = [component]          # still to walk, next one last
        kinds: dict[str, int] = {}  # real path -> S_IFMT seen, 0 when missing
        links = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if stack:   # the root is its own parent, as in a chroot
                    stack.pop()
                continue
            stack.append(part)
            path = "/".join(stack)
            try:
                st = os.lstat(self._abs(path))
            except (FileNotFoundError, NotADirectoryError):
                kinds[path] = 0     # like securejoin: carry on lexically
                continue
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFLNK:
                links += 1
                if links > _MAX_SYMLINKS:
                    raise LayerError(
                        f"layer entry {_shown(member.name)}: too many levels "
                        f"of symbolic links under {_shown('/'.join(stack))}")
                target = os.readlink(self._abs(path))
                stack.pop()
                if target.startswith("/"):
                    # Absolute targets start at the root, not the host's /.
                    stack.clear()
                todo.extend(reversed(target.split("/")))
                continue
            kinds[path] = kind
            if (kind == stat.S_IFDIR and not self._privileged
                    and st.st_mode & 0o700 != 0o700):
                self._touch(path, st)
        # The stack is now free of symlinks; every component must be a
        # directory.
        path = ""
        for part in stack:
            parent, path = path, _join(path, part)
            # Unvisited ones are prefixes of base.
            kind = kinds.get(path, stat.S_IFDIR)
            if kind == stat.S_IFDIR:
                continue
            if not create:
                return None
            if kind:
                raise LayerError(
                    f"layer entry {_shown(member.name)}: {_shown(path)} is "
                    "in the way and is not a directory")
            self._touch(parent)
            target = self._abs(path)
            os.mkdir(target, 0o755)
            # Undo the umask, but keep a setgid bit inherited from the parent.
            mode = os.lstat(target).st_mode
            if mode & 0o777 != 0o755:
                os.chmod(target, (mode & stat.S_ISGID) | 0o755)
            kinds[path] = stat.S_IFDIR
        return path

    def _touch(self, path: str, st: os.stat_result | None = None) -> None:
        """Remember a directory's state before this layer first changes it."""
        if path in self._saved:
            return
        if st is None:
            st = os.lstat(self._abs(path))
        self._saved[path] = st
        if not self._privileged and st.st_mode & 0o700 != 0o700:
            # An unprivileged owner needs rwx to look up, add or remove
            # entries; the image's mode comes back at the end of the layer.
            os.chmod(self._abs(path), stat.S_IMODE(st.st_mode) | 0o700)

    def _mark_upper(self, path: str) -> None:
        upper = self._upper
        while path and path not in upper:
            upper.add(path)
            path = _parent(path)

    # -- creating -------------------------------------------------------------

    def _create(self, path: str, make: Callable[[str], _T]) -> _T:
        target = self._abs(path)
        try:
            return make(target)
        except FileExistsError:
            pass
        # Whatever was there (file, symlink, directory tree) is replaced, never
        # followed: every `make` refuses to reuse an existing name.
        self._remove(path)
        return make(target)

    def file_done(self, member: tarfile.TarInfo, fd: int,
                  written: int) -> None:
        """Finish a file entry() opened, once its content is written."""
        if written != member.size:
            raise LayerError(
                f"layer entry {_shown(member.name)} is truncated: "
                f"{written} of {member.size} bytes")
        self._own(member, fd)
        # After chown, which clears setuid/setgid bits.
        os.fchmod(fd, member.mode & 0o7777)
        self._set_xattrs(member, fd)
        os.utime(fd, ns=_times(member))
        self._counts["files"] += 1
        self._counts["bytes_written"] += written

    def _directory(self, path: str, member: tarfile.TarInfo) -> None:
        target = self._abs(path)
        existed = True
        if path:
            try:
                os.mkdir(target, 0o700)
                existed = False
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    self._remove(path)
                    os.mkdir(target, 0o700)
                    existed = False
        self._own(member, target)
        self._set_xattrs(member, target, clear=existed)
        # Mode and times wait for the end of the layer: entries written below
        # would bump the mtime, and an unprivileged owner cannot write into a
        # 0555 dir.
        self._declared[path] = _DirMetadata(member.mode & 0o7777,
                                            *_times(member))
        self._counts["directories"] += 1

    def _symlink(self, path: str, member: tarfile.TarInfo) -> None:
        self._create(path, lambda target: os.symlink(member.linkname, target))
        target = self._abs(path)
        self._own(member, target)
        self._set_xattrs(member, target)
        os.utime(target, ns=_times(member), follow_symlinks=False)
        self._counts["symlinks"] += 1

    def _hardlink(self, path: str, member: tarfile.TarInfo) -> bool:
        parts = self._clean(member.linkname, member)
        source: str | None = None
        if parts:
            parent = self._resolve(parts[:-1], create=False, member=member)
            if parent is not None:
                # The last component is not resolved: a link to a symlink links
                # the symlink itself.
                source = _join(parent, parts[-1])
        st = None
        if source is not None:
            try:
                st = os.lstat(self._abs(source))
            except (FileNotFoundError, NotADirectoryError):
                pass
        if source is None or st is None:
            if not self._apply_whiteouts:
                # A layer on its own may link to files its lower layers hold.
                self._skip(member, f"hardlink target "
                           f"{_shown(member.linkname)} is not in this layer")
                return False
            raise LayerError(
                f"layer entry {_shown(member.name)} is a hardlink to "
                f"{_shown(member.linkname)}, which is neither in this layer "
                "(before it) nor in the layers below")
        if stat.S_ISDIR(st.st_mode):
            raise LayerError(
                f"layer entry {_shown(member.name)} is a hardlink to "
                f"directory {_shown(member.linkname)}; hardlinks to "
                "directories are not allowed")
        if source == path:
            raise LayerError(
                f"layer entry {_shown(member.name)} is a hardlink to itself")
        self._create(path, lambda target: os.link(self._abs(source), target,
                                                  follow_symlinks=False))
        # Like umoci: a hardlink has no metadata of its own to apply.
        self._counts["hardlinks"] += 1
        return True

    def _node(self, path: str, member: tarfile.TarInfo) -> bool:
        if member.isfifo():
            kind, device = stat.S_IFIFO, 0
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
        try:
            self._create(
                path, lambda target: os.mknod(target, kind | 0o600, device))
        except PermissionError:
            if kind == stat.S_IFIFO:
                raise
            # Root inside a user namespace usually may not mknod either.
            self._skip(member, "this process may not create device nodes")
            return False
        target = self._abs(path)
        self._own(member, target)
        os.chmod(target, member.mode & 0o7777)
        self._set_xattrs(member, target)
        os.utime(target, ns=_times(member), follow_symlinks=False)
        self._counts["specials"] += 1
        return True

    def _own(self, member: tarfile.TarInfo, target: str | int) -> None:
        if not self._chown:
            return   # unprivileged: everything simply belongs to us
        try:
            if isinstance(target, int):
                os.fchown(target, member.uid, member.gid)
            else:
                os.chown(target, member.uid, member.gid, follow_symlinks=False)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EINVAL):
                raise
            # Root in a user namespace cannot own ids outside its mapping.
            self._chown = False
            LOG.warning("cannot set ownership %d:%d of layer entry %s (%s); "
                        "leaving files owned by the current user",
                        member.uid, member.gid, _shown(member.name),
                        err.strerror)

    def _set_xattrs(self, member: tarfile.TarInfo, target: str | int,
                    clear: bool = False) -> None:
        wanted: dict[str, bytes] = {}
        for key, text in member.pax_headers.items():
            if key.startswith(_XATTR_PAX_PREFIX):
                name = key[len(_XATTR_PAX_PREFIX):]
                if not _ignored_xattr(name):
                    wanted[name] = text.encode("utf-8", "surrogateescape")
        if not wanted and not clear:
            return
        # follow_symlinks only applies to paths; an fd is the file itself.
        nofollow = ({} if isinstance(target, int)
                    else {"follow_symlinks": False})
        if clear:
            try:
                present = os.listxattr(target, **nofollow)
            except OSError as err:
                if err.errno not in _XATTR_SOFT_ERRNOS:
                    raise
                present = []
            for name in present:
                if name not in wanted and not _ignored_xattr(name):
                    os.removexattr(target, name, **nofollow)
        for name, value in wanted.items():
            try:
                os.setxattr(target, name, value, **nofollow)
            except OSError as err:
                if err.errno not in _XATTR_SOFT_ERRNOS:
                    raise
                if (name, err.errno) not in self._warned:
                    self._warned.add((name, err.errno))
                    LOG.warning("cannot set extended attribute %s (first on "
                                "%s): %s; continuing without it", name,
                                _shown(member.name), err.strerror)

    # -- deleting -------------------------------------------------------------

    def _whiteout(self, parents: list[str], name: str,
                  member: tarfile.TarInfo) -> None:
        opaque = name == OPAQUE_WHITEOUT
        victim = name[len(WHITEOUT_PREFIX):]
        if not opaque:
            if victim in ("", ".", ".."):
                raise LayerError(
                    f"layer entry {_shown(member.name)} is a whiteout that "
                    f"names no entry ({victim!r}); refusing this malicious "
                    "or broken layer")
            if name.startswith(_WHITEOUT_META_PREFIX):
                LOG.debug("ignoring AUFS/Docker metadata entry %s",
                          _shown(member.name))
                self._counts["skipped"] += 1
                return
        self._counts["whiteouts"] += 1
        parent = self._resolve(parents, create=False, member=member)
        if parent is None:
            return      # nothing below to hide
        if opaque:
            self._prune(parent, keep=True)
        else:
            self._prune(_join(parent, victim))

    def _prune(self, path: str, keep: bool = False) -> None:
        """Remove path and what is below it, except what this layer created."""
        todo = [path]
        while todo:
            current = todo.pop()
            if current not in self._upper and not (keep and current == path):
                self._remove(current)
                continue
            try:
                st = os.lstat(self._abs(current))
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            # Kept (or holding entries this layer created): hide only what
            # lower layers put inside.
            self._touch(current, st)
            with os.scandir(self._abs(current)) as entries:
                todo.extend(_join(current, entry.name) for entry in entries)

    def _remove(self, path: str) -> None:
        target = self._abs(path)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        self._touch(_parent(path))
        if stat.S_ISDIR(st.st_mode):
            self._rmtree(path)
            self._dirs = {"": ""}
        else:
            os.unlink(target)
            if stat.S_ISLNK(st.st_mode):
                # A cached resolution may have gone through it.
                self._dirs = {"": ""}

    def _rmtree(self, path: str) -> None:
        """Delete a real directory tree without following any symlink in it."""
        todo = [(path, False)]
        while todo:
            current, emptied = todo.pop()
            target = self._abs(current)
            if emptied:
                os.rmdir(target)
                self._declared.pop(current, None)
                self._saved.pop(current, None)
                continue
            if not self._privileged:
                mode = os.lstat(target).st_mode
                if mode & 0o700 != 0o700:
                    os.chmod(target, stat.S_IMODE(mode) | 0o700)
            todo.append((current, True))
            with os.scandir(target) as entries:
                for entry in entries:
                    child = f"{current}/{entry.name}"
                    if entry.is_dir(follow_symlinks=False):
                        todo.append((child, False))
                    else:
                        os.unlink(self._abs(child))

    # -- end of layer ---------------------------------------------------------

    def finish(self) -> None:
        work: list[tuple[str, _DirMetadata]] = [
            (path, _DirMetadata(stat.S_IMODE(before.st_mode),
                                before.st_atime_ns, before.st_mtime_ns))
            for path, before in self._saved.items()
            if path not in self._declared]
        work.extend(self._declared.items())
        # Deepest first: an unprivileged owner must still be able to reach a
        # directory when its parent gets a restrictive mode back.
        work.sort(key=lambda item: _depth(item[0]), reverse=True)
        for path, wanted in work:
            target = self._abs(path)
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            before = self._saved.get(path)
            if path not in self._declared and before is not None and (
                    (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino)):
                # Replaced since; its remembered state is not its own.
                continue
            if stat.S_IMODE(st.st_mode) != wanted.mode:
                os.chmod(target, wanted.mode)
            os.utime(target, ns=(wanted.atime_ns, wanted.mtime_ns),
                     follow_symlinks=False)


def _copy_range(source: int, offset: int, size: int, fd: int,
                buffer: bytearray) -> int:
    """Copy `size` bytes at `offset` of a file to fd; the bytes there
    (fewer when the file ends first: a truncated layer)."""
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = os.preadv(source, [view[:min(len(view), size - done)]],
                          offset + done)
        if not count:
            break
        write_all(fd, view[:count])
        done += count
    return done


def _copy(source: io.BufferedIOBase, fd: int, buffer: bytearray) -> int:
    view = memoryview(buffer)
    total = 0
    while True:
        try:
            count = source.readinto(buffer)
        except tarfile.TarError as err:
            raise LayerError(f"layer tar stream is truncated: {err}") from err
        except Exception as err:
            raise _SourceFailure(err) from err
        if not count:
            return total
        write_all(fd, view[:count])
        total += count


def _times(member: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns, exact to the PAX header.

    atime defaults to mtime, as in umoci.
    """
    mtime = _pax_time(member.pax_headers.get("mtime"))
    if mtime is None:
        mtime = int(member.mtime) * 1_000_000_000
    atime = _pax_time(member.pax_headers.get("atime"))
    return (mtime if atime is None else atime), mtime


def _pax_time(text: str | None) -> int | None:
    """Parse a PAX time to ns as Go's archive/tar does (truncating at 1 ns)."""
    if not text:
        return None
    match = _PAX_TIME.fullmatch(text)
    if match is None:
        return None
    seconds, fraction = match.group(1), match.group(2) or ""
    nanos = int((fraction + "000000000")[:9])
    if seconds.startswith("-"):
        return int(seconds) * 1_000_000_000 - nanos
    return int(seconds) * 1_000_000_000 + nanos


def _ignored_xattr(name: str) -> bool:
    return name in _IGNORED_XATTRS or name.startswith(_IGNORED_XATTR_PREFIXES)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


def _shown(name: str) -> str:
    """A tar name for messages: hostile ones can be kilobytes long."""
    return repr(name if len(name) <= 200 else name[:120] + "..." + name[-60:])


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return (f"{err.strerror}: {err.filename}" if err.filename
                else err.strerror)
    return str(err)
