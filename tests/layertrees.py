"""Layer tars built entry by entry, and what unpacking them must give.

Shared by the unit tests of occystrap.layers and the end-to-end tests of
fetch-to-extracted --expand; umoci (conftest.umoci_unpack) is the reference
both are judged against, with assert_same_as_umoci.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0
MTIME = 1_600_000_000
NS = 1_000_000_000


# -- building layers ------------------------------------------------------------

Entry = tuple[tarfile.TarInfo, bytes | None]


def tar_info(name: str, kind: bytes, mode: int, mtime: float = MTIME, uid: int = 0,
             gid: int = 0, pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    """A bare header: no user or group names, as image builders write them."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    if pax:
        info.pax_headers = dict(pax)
    return info


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw) -> Entry:
    info = tar_info(name, tarfile.REGTYPE, mode, **kw)
    info.size = len(data)
    return info, data


def dir_(name: str, mode: int = 0o755, **kw) -> Entry:
    return tar_info(name, tarfile.DIRTYPE, mode, **kw), None


def sym(name: str, target: str, **kw) -> Entry:
    info = tar_info(name, tarfile.SYMTYPE, 0o777, **kw)
    info.linkname = target
    return info, None


def hard(name: str, target: str, **kw) -> Entry:
    info = tar_info(name, tarfile.LNKTYPE, 0o644, **kw)
    info.linkname = target
    return info, None


def fifo(name: str, mode: int = 0o600, **kw) -> Entry:
    return tar_info(name, tarfile.FIFOTYPE, mode, **kw), None


def chardev(name: str, major: int, minor: int, mode: int = 0o666, **kw) -> Entry:
    info = tar_info(name, tarfile.CHRTYPE, mode, **kw)
    info.devmajor, info.devminor = major, minor
    return info, None


def wh(name: str) -> Entry:
    """A whiteout marker: an empty regular file, as Docker and umoci write them."""
    return reg(name, b"", 0o644)


def make_layer(*entries: Entry) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


# -- comparing trees --------------------------------------------------------------

def walk(top: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield Path(dirpath, name)


@dataclasses.dataclass(frozen=True)
class Node:
    kind: str
    mode: str
    owner: tuple[int, int] | None
    size: int
    sha256: str | None
    target: str | None
    rdev: tuple[int, int] | None
    mtime_ns: int | None
    xattrs: tuple[tuple[str, bytes], ...]


_NOT_OURS = ("security.selinux", "user.rootlesscontainers")


def inventory(root: Path, ignore_mtime: frozenset[str] = frozenset()
              ) -> tuple[dict[str, Node], set[frozenset[str]]]:
    """Everything umoci preserves about each path, and which paths share an inode."""
    nodes: dict[str, Node] = {}
    inodes: dict[int, set[str]] = {}
    for path in [root, *walk(root)]:
        rel = path.relative_to(root).as_posix()
        st = os.lstat(path)
        kind = stat.filemode(st.st_mode)[0]
        digest = None
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, set()).add(rel)
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            names = []
        xattrs = tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False))
                              for name in names if name not in _NOT_OURS))
        nodes[rel] = Node(
            kind=kind, mode=f"{stat.S_IMODE(st.st_mode):04o}",
            owner=(st.st_uid, st.st_gid) if ROOT else None,
            size=st.st_size if kind != "d" else 0, sha256=digest,
            target=os.readlink(path) if kind == "l" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in "cb" else None,
            mtime_ns=None if rel in ignore_mtime else st.st_mtime_ns, xattrs=xattrs)
    return nodes, {frozenset(group) for group in inodes.values()}


def assert_same_as_umoci(ours: Path, theirs: Path,
                         ignore_mtime: frozenset[str] = frozenset()) -> None:
    our_nodes, our_links = inventory(ours, ignore_mtime)
    their_nodes, their_links = inventory(theirs, ignore_mtime)
    differences = [f"{path}:\n   ours  {our_nodes.get(path)}\n   umoci {their_nodes.get(path)}"
                   for path in sorted(set(our_nodes) | set(their_nodes))
                   if our_nodes.get(path) != their_nodes.get(path)]
    assert not differences, f"{len(differences)} differences:\n" + "\n".join(differences[:40])
    assert our_links == their_links
    assert len(our_nodes) == len(their_nodes)


# -- layers worth comparing --------------------------------------------------------

def crafted_layers() -> list[bytes]:
    """Every rule at least once; the root is declared so its metadata is defined."""
    t = MTIME
    devices = [chardev("dev/null", 1, 3, mtime=t + 1), chardev("dev/zero", 1, 5, mode=0o640)] \
        if ROOT else []
    xattrs = {"SCHILY.xattr.user.note": "from the image",
              "SCHILY.xattr.security.capability":
                  bytes.fromhex("0100000200200000000000000000000000000000").decode(
                      "utf-8", "surrogateescape")} if ROOT else {}
    base = make_layer(
        dir_("./", mode=0o755, mtime=t), dir_("bin", mtime=t + 1),
        reg("bin/sh", b"#!sh", mode=0o755, mtime=t + 2),
        reg("bin/su", b"su", mode=0o4755, mtime=t + 3),
        reg("bin/wall", b"wall", mode=0o2755, gid=5, mtime=t + 4),
        reg("bin/ping", b"ping", mode=0o755, pax=xattrs, mtime=t + 5),
        dir_("tmp", mode=0o1777, mtime=t + 6), dir_("dev", mtime=t + 7), *devices,
        fifo("dev/initctl", mode=0o600, mtime=t + 8),
        dir_("etc", mtime=t + 9), dir_("etc/alternatives", mtime=t + 10),
        sym("etc/alternatives/awk", "/usr/bin/mawk", mtime=t + 11),
        dir_("usr", mtime=t + 12), dir_("usr/bin", mtime=t + 13),
        reg("usr/bin/mawk", b"mawk", mode=0o755, mtime=t + 14),
        dir_("usr/lib", mtime=t + 15), sym("lib", "/usr/lib", mtime=t + 16),
        reg("lib/libx.so", b"libx", mtime=t + 17),
        dir_("data", mtime=t + 18), reg("data/keep", b"keep", mtime=t + 19),
        reg("data/gone", b"gone", mtime=t + 20), dir_("data/sub", mtime=t + 21),
        reg("data/sub/deep", b"deep", mtime=t + 22),
        dir_("opq", mtime=t + 23), reg("opq/lower", b"lower", mtime=t + 24),
        dir_("opq/lowerdir", mtime=t + 25), reg("opq/lowerdir/f", b"f", mtime=t + 26),
        dir_("opq2", mtime=t + 27), reg("opq2/a", b"a", mtime=t + 28),
        reg("f2d", b"file to dir", mtime=t + 29),
        dir_("d2f", mtime=t + 30), reg("d2f/inner", b"inner", mtime=t + 31),
        sym("s2f", "data/keep", mtime=t + 32),
        dir_("d2s", mtime=t + 33), reg("d2s/x", b"x", mtime=t + 34),
        sym("link-to-del", "/data/gone", mtime=t + 35),
        reg("hard1", b"hard", mode=0o640, uid=3, gid=4, mtime=t + 36), hard("hard2", "hard1"),
        dir_("home", uid=1000, gid=1000, mode=0o750, mtime=t + 37),
        reg("home/owned", b"mine", uid=1000, gid=1000, mode=0o600, mtime=t + 38),
        sym("home/link", "owned", uid=1000, gid=1000, mtime=t + 39),
        reg("frac", b"frac", pax={"mtime": "1600000000.987654321"}),
        dir_("empty", mode=0o700, mtime=t + 40), reg("x.wh.y", b"not a whiteout", mtime=t + 41),
        dir_("wipe", mtime=t + 42), reg("wipe/old", b"old", mtime=t + 43),
    )
    changes = make_layer(
        dir_("./", mode=0o755, mtime=t + 100),
        wh("data/.wh.gone"), wh(".wh.link-to-del"),
        dir_("opq", mode=0o770, mtime=t + 101), wh("opq/.wh..wh..opq"),
        reg("opq/new", b"new", mtime=t + 102), dir_("opq/lowerdir", mtime=t + 103),
        reg("opq/lowerdir/g", b"g", mtime=t + 104),
        reg("opq2/newfile", b"nf", mtime=t + 105), wh("opq2/.wh..wh..opq"),
        dir_("f2d", mtime=t + 106), reg("f2d/child", b"child", mtime=t + 107),
        reg("d2f", b"dir to file", mtime=t + 108), reg("s2f", b"symlink to file", mtime=t + 109),
        sym("d2s", "/usr", mtime=t + 110), hard("hardlow", "hard1"),
        reg("bin/sh", b"#!new sh", mode=0o755, mtime=t + 111),
        wh("data/sub/.wh.deep"), reg("lib/liby.so", b"liby", mtime=t + 112),
        dir_("etc", mode=0o711, mtime=t + 113),
        reg("data/keep", b"upper keep", mtime=t + 114), wh("data/.wh.keep"),
        wh(".wh.nothing-here"), wh("no/such/.wh.thing"),
        wh(".wh.wipe"), dir_("wipe", mode=0o701, mtime=t + 115),
        reg("wipe/fresh", b"fresh", mtime=t + 116),
    )
    final = make_layer(
        wh(".wh.d2s"), wh("home/.wh.link"), hard("bin/sh2", "bin/sh"),
        wh("bin/.wh.su"), reg("tmp/new", b"t", mtime=t + 200),
    )
    return [base, changes, final]


_HOST_TREES = ("etc", "usr/lib/python3.11", "usr/share/zoneinfo")


def _readable(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """tarfile.add filter: leave out what this user cannot read (/etc/shadow when not root)."""
    wanted = os.R_OK | os.X_OK if info.isdir() else os.R_OK
    if (info.isdir() or info.isreg()) and not os.access("/" + info.name, wanted):
        return None
    return info


def _add_tree(archive: tarfile.TarFile, top: str, keep: Callable[[str], bool] = lambda _: True,
              with_top: bool = True) -> None:
    """Add host /top under its own name, symlinks and hardlinks kept as such.

    keep picks which of top's children (by name) go into this layer.
    """
    if with_top:
        archive.add("/" + top, arcname=top, recursive=False, filter=_readable)
    for name in sorted(os.listdir("/" + top)):
        if keep(name):
            archive.add(f"/{top}/{name}", arcname=f"{top}/{name}", filter=_readable)


def realistic_layers(directory: Path) -> list[Path]:
    """A few thousand real files split into layers, then a layer of deletions and changes."""
    directory.mkdir()
    present = [tree for tree in _HOST_TREES if os.path.isdir("/" + tree)]
    if len(present) < 2:
        pytest.skip("host trees to build a realistic rootfs from are missing")
    paths = []

    def layer(name: str) -> tarfile.TarFile:
        path = directory / name
        paths.append(path)
        return tarfile.open(path, "w", format=tarfile.PAX_FORMAT)

    with layer("base.tar") as archive:
        for name in ("", "usr", "usr/lib", "usr/share"):
            archive.add("/" + name, arcname=name or ".", recursive=False)
        _add_tree(archive, "etc")
    python = "usr/lib/python3.11"
    with layer("python-a.tar") as archive:
        _add_tree(archive, python, keep=lambda name: name < "j")
    with layer("python-b.tar") as archive:
        _add_tree(archive, python, keep=lambda name: name >= "j", with_top=False)
        if "usr/share/zoneinfo" in present:
            _add_tree(archive, "usr/share/zoneinfo")
        # Hardlinks across layers and within this one.
        for number, target in enumerate(("etc/passwd", python + "/abc.py", python + "/os.py")):
            info = tarfile.TarInfo(f"usr/lib/hl{number}")
            info.type, info.linkname = tarfile.LNKTYPE, target
            archive.addfile(info)
        info = tarfile.TarInfo(python + "/os-again.py")
        info.type, info.linkname = tarfile.LNKTYPE, "usr/lib/hl2"
        archive.addfile(info)
    with layer("changes.tar") as archive:
        def add(entry: Entry) -> None:
            archive.addfile(entry[0], io.BytesIO(entry[1]) if entry[1] is not None else None)
        for pycache in sorted(Path("/" + python).glob("[a-e]*/__pycache__")):
            add(wh(str(pycache.parent.relative_to("/")) + "/.wh.__pycache__"))
        for name in ("json", "email", "asyncio", "nonexistent"):
            add(wh(f"{python}/.wh.{name}"))
        add(dir_(python + "/logging", mode=0o750, mtime=MTIME))
        add(wh(python + "/logging/.wh..wh..opq"))
        add(reg(python + "/logging/__init__.py", b"# replaced\n"))
        add(wh("etc/.wh.passwd"))
        add(reg("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"))
        add(sym(python + "/http", "/usr/share"))
        add(reg(python + "/os.py", b"# new os\n"))
        add(wh(python + "/.wh.abc.py"))
    return paths
