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
import random
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

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


# A made-up distribution, the same bytes on every host: a seeded generator
# gives it the shape that matters (thousands of small files, symlink farms,
# hardlinked zoneinfo, odd modes and names), not any real content.
PYTHON = "usr/lib/python3"
PASSWD = b"root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:\n"
_PACKAGES = (
    "asyncio", "collections", "concurrent", "ctypes", "curses", "dbm", "email", "encodings",
    "ensurepip", "html", "http", "idlelib", "importlib", "json", "lib2to3", "logging",
    "multiprocessing", "pydoc_data", "re", "sqlite3", "tkinter", "tomllib", "unittest",
    "urllib", "venv", "wsgiref", "xml", "xmlrpc", "zipfile", "zoneinfo")
_MODULES = ("abc", "argparse", "base64", "bisect", "calendar", "codecs", "contextlib", "copy",
            "csv", "dataclasses", "datetime", "enum", "fnmatch", "functools", "glob", "gzip",
            "hashlib", "heapq", "hmac", "inspect", "io", "ipaddress", "keyword", "locale",
            "mimetypes", "numbers", "operator", "os", "pathlib", "pickle", "platform",
            "queue", "random", "shlex", "shutil", "signal", "socket", "ssl", "stat", "string",
            "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "token",
            "traceback", "types", "typing", "uuid", "warnings", "weakref")
_REGIONS = ("Africa", "America", "Antarctica", "Asia", "Atlantic", "Australia", "Europe",
            "Indian", "Pacific")


class _Rootfs:
    """Entries for one layer at a time, with plausible sizes, modes and times."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.entries: list[Entry] = []

    def take(self) -> bytes:
        layer, self.entries = make_layer(*self.entries), []
        return layer

    def mtime(self) -> int:
        return MTIME + self.rng.randrange(10_000_000)

    def text(self, low: int = 40, high: int = 6000) -> bytes:
        words = ("import", "def", "return", "self", "class", "value", "if", "else", "None",
                 "for", "in", "yield", "raise", "with", "as", "not", "and", "or")
        size = self.rng.randrange(low, high)
        out = " ".join(self.rng.choice(words) for _ in range(size // 5))
        return out.encode()[:size] + b"\n"

    def dir(self, name: str, mode: int = 0o755, **kw) -> str:
        self.entries.append(dir_(name, mode=mode, mtime=self.mtime(), **kw))
        return name

    def file(self, name: str, data: bytes | None = None, mode: int = 0o644, **kw) -> str:
        kw.setdefault("mtime", self.mtime())
        self.entries.append(reg(name, self.text() if data is None else data, mode=mode, **kw))
        return name

    def link(self, name: str, target: str) -> str:
        self.entries.append(sym(name, target, mtime=self.mtime()))
        return name

    def hardlink(self, name: str, target: str) -> str:
        self.entries.append(hard(name, target))
        return name


def _base(fs: _Rootfs) -> None:
    """/etc with its symlink farms, binaries with special bits, odd corners."""
    for name in ("usr", "usr/lib", "usr/share", "usr/bin", "usr/sbin", "var", "var/lib",
                 "etc"):
        fs.dir(name)
    fs.dir("tmp", mode=0o1777)
    fs.dir("root", mode=0o700)
    fs.dir("dev")
    fs.entries.append(fifo("dev/initctl", mtime=fs.mtime()))
    if ROOT:
        fs.entries.append(chardev("dev/null", 1, 3, mtime=fs.mtime()))
        fs.entries.append(chardev("dev/tty", 5, 0, mode=0o620, gid=5, mtime=fs.mtime()))
    fs.file("etc/passwd", PASSWD)
    fs.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o640, gid=42)
    fs.file("etc/sudoers", b"root ALL=(ALL:ALL) ALL\n", mode=0o440)
    fs.file("etc/hostname", b"")
    fs.link("etc/localtime", "/usr/share/zoneinfo/Etc/UTC")
    # Binaries, a few with setuid/setgid bits and capabilities.
    fs.dir("etc/alternatives")
    for number in range(60):
        name = f"usr/bin/tool{number:02d}"
        fs.file(name, fs.rng.randbytes(fs.rng.randrange(100, 20_000)), mode=0o755)
        if number % 3 == 0:
            fs.link(f"etc/alternatives/alt{number:02d}", "/" + name)
            fs.link(f"usr/bin/alt{number:02d}", f"/etc/alternatives/alt{number:02d}")
    fs.file("usr/bin/su", fs.rng.randbytes(5000), mode=0o4755)
    fs.file("usr/bin/passwd", fs.rng.randbytes(5000), mode=0o4755)
    fs.file("usr/bin/wall", fs.rng.randbytes(3000), mode=0o2755, gid=5)
    fs.file("usr/bin/crontab", fs.rng.randbytes(3000), mode=0o2755, gid=5)
    capability = bytes.fromhex("0100000200200000000000000000000000000000")
    fs.file("usr/bin/ping", fs.rng.randbytes(4000), mode=0o755, pax={
        "SCHILY.xattr.security.capability": capability.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.origin": "ping from iputils"} if ROOT else None)
    fs.file("usr/lib/libbig.so.1", fs.rng.randbytes(3 << 20), mode=0o755)
    fs.link("usr/lib/libbig.so", "libbig.so.1")
    # CA certificates: files, links to them, and hash links to the links.
    fs.dir("usr/share/ca-certificates")
    fs.dir("etc/ssl")
    fs.dir("etc/ssl/certs")
    for number in range(120):
        name = f"Authority_{number:03d}"
        fs.file(f"usr/share/ca-certificates/{name}.crt", fs.text(800, 2000))
        fs.link(f"etc/ssl/certs/{name}.pem", f"/usr/share/ca-certificates/{name}.crt")
        fs.link(f"etc/ssl/certs/{fs.rng.getrandbits(32):08x}.0", f"{name}.pem")
    # Services, and the runlevel links to them.
    fs.dir("etc/init.d")
    for number in range(15):
        fs.file(f"etc/init.d/service{number}", fs.text(), mode=0o755)
    for level in range(7):
        fs.dir(f"etc/rc{level}.d")
        for number in range(0, 15, 2):
            fs.link(f"etc/rc{level}.d/S{number:02d}service{number}",
                    f"../init.d/service{number}")
    # Configuration, some of it private to its owner.
    for number in range(25):
        package = fs.dir(f"etc/package{number}", mode=0o750 if number % 7 == 0 else 0o755,
                         gid=4 if number % 7 == 0 else 0)
        for item in range(fs.rng.randrange(1, 8)):
            fs.file(f"{package}/setting{item}.conf", mode=0o600 if item == 0 else 0o644)
    # Corners: a home owned by a user, a read-only directory with files in it,
    # names past tar's 100 bytes, non-ASCII names, times finer than a second.
    fs.dir("home")
    fs.dir("home/user", mode=0o750, uid=1000, gid=1000)
    fs.file("home/user/.profile", uid=1000, gid=1000)
    fs.link("home/user/link", ".profile")
    fs.dir("usr/share/readonly", mode=0o555)
    for number in range(5):
        fs.file(f"usr/share/readonly/file{number}", mode=0o444)
    deep = "usr/share/doc"
    fs.dir(deep)
    for part in ("a-rather-long-directory-name-for-documentation",
                 "with-another-long-component-below-it", "and-a-third-one-to-pass-100"):
        deep = fs.dir(f"{deep}/{part}")
    fs.file(f"{deep}/README.with.a.long.name.too")
    fs.link("usr/share/doc/shortcut", "/" + deep + "/README.with.a.long.name.too")
    fs.dir("usr/share/doc/naïve café")
    fs.file("usr/share/doc/naïve café/Ünïcödé ✓.txt")
    fs.file("usr/share/doc/precise", pax={"mtime": "1600000000.123456789",
                                          "atime": "1600000001.5"})
    fs.file("usr/share/doc/empty", b"")


def _python(fs: _Rootfs, keep: Callable[[str], bool], top: bool) -> None:
    """The standard library's names that `keep` picks: modules, packages and bytecode."""
    if top:
        fs.dir(PYTHON)
    for module in _MODULES:
        if keep(module):
            fs.file(f"{PYTHON}/{module}.py")
    for package in _PACKAGES:
        if not keep(package):
            continue
        root = fs.dir(f"{PYTHON}/{package}")
        for sub in ("", *(f"/sub{n}" for n in range(fs.rng.randrange(0, 3)))):
            where = root + sub
            if sub:
                fs.dir(where)
            cache = fs.dir(f"{where}/__pycache__")
            for number in range(fs.rng.randrange(3, 25)):
                name = "__init__" if number == 0 else f"module{number}"
                fs.file(f"{where}/{name}.py")
                fs.file(f"{cache}/{name}.cpython-3.pyc", fs.rng.randbytes(
                    fs.rng.randrange(100, 8000)))


def _zoneinfo(fs: _Rootfs) -> None:
    """Zone files, with posix/ hardlinked to them and aliases as symlinks."""
    zoneinfo = fs.dir("usr/share/zoneinfo")
    fs.dir(f"{zoneinfo}/Etc")
    fs.file(f"{zoneinfo}/Etc/UTC", fs.rng.randbytes(114))
    fs.link(f"{zoneinfo}/UTC", "Etc/UTC")
    zones = []
    for region in _REGIONS:
        fs.dir(f"{zoneinfo}/{region}")
        for number in range(fs.rng.randrange(15, 40)):
            zones.append(fs.file(f"{zoneinfo}/{region}/City_{number}",
                                 fs.rng.randbytes(fs.rng.randrange(100, 3000))))
    fs.dir(f"{zoneinfo}/posix")
    for region in _REGIONS:
        fs.dir(f"{zoneinfo}/posix/{region}")
    for zone in zones:
        fs.hardlink(zone.replace(zoneinfo, f"{zoneinfo}/posix", 1), zone)
    for zone in fs.rng.sample(zones, 30):
        fs.link(f"{zoneinfo}/Alias_{zone.rsplit('/', 2)[1]}_{zone.rsplit('_', 1)[1]}",
                zone.removeprefix(zoneinfo + "/"))


def realistic_layers(directory: Path) -> list[Path]:
    """A few thousand entries split into layers, then a layer of deletions and changes."""
    fs = _Rootfs(seed=11)
    fs.entries.append(dir_("./", mtime=MTIME))
    _base(fs)
    layers = [fs.take()]
    _python(fs, keep=lambda name: name < "j", top=True)
    layers.append(fs.take())
    _python(fs, keep=lambda name: name >= "j", top=False)
    _zoneinfo(fs)
    # Hardlinks across layers and within this one.
    for number, target in enumerate(("etc/passwd", PYTHON + "/abc.py", PYTHON + "/os.py")):
        fs.hardlink(f"usr/lib/hl{number}", target)
    fs.hardlink(PYTHON + "/os-again.py", "usr/lib/hl2")
    layers.append(fs.take())
    python = PYTHON
    for package in _PACKAGES:
        if package < "e":
            fs.entries.append(wh(f"{python}/{package}/.wh.__pycache__"))
    for name in ("json", "email", "asyncio", "nonexistent"):
        fs.entries.append(wh(f"{python}/.wh.{name}"))
    fs.dir(python + "/logging", mode=0o750)
    fs.entries.append(wh(python + "/logging/.wh..wh..opq"))
    fs.file(python + "/logging/__init__.py", b"# replaced\n")
    fs.entries.append(wh("etc/.wh.passwd"))
    fs.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    fs.link(python + "/http", "/usr/share")
    fs.file(python + "/os.py", b"# new os\n")
    fs.entries.append(wh(python + "/.wh.abc.py"))
    fs.entries.append(wh("etc/ssl/.wh..wh..opq"))
    fs.dir("etc/ssl/private", mode=0o700)
    fs.entries.append(wh("usr/share/readonly/.wh.file0"))
    fs.entries.append(wh("usr/bin/.wh.su"))
    fs.file("usr/bin/wall", fs.rng.randbytes(3100), mode=0o755)
    layers.append(fs.take())
    directory.mkdir()
    paths = []
    for name, data in zip(("base", "python-a", "python-b", "changes"), layers, strict=True):
        path = directory / f"{name}.tar"
        path.write_bytes(data)
        paths.append(path)
    return paths
