"""occystrap.layers: changeset rules, hostile layers, and `umoci unpack` as the reference."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import need_tool, umoci_unpack
from layertrees import (
    MTIME, NS, ROOT, Entry, assert_same_as_umoci, chardev, crafted_layers, dir_, fifo, hard,
    PASSWD, PYTHON, inventory, make_layer, realistic_layers, reg, sym, tar_info, walk, wh)
from occystrap.errors import LayerError
from occystrap.layers import LayerStats, apply_layer, extract_layer

NOBODY = 65534

needs_root = pytest.mark.skipif(not ROOT, reason="needs root (ownership, device nodes)")


class Stream(io.RawIOBase):
    """A non-seekable reader handing out odd-sized pieces, like a network stream."""

    def __init__(self, source: bytes | io.BufferedIOBase, piece: int = 7919) -> None:
        self._source = io.BytesIO(source) if isinstance(source, bytes) else source
        self._piece = piece
        self.exhausted = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._source.readinto(memoryview(buffer)[:self._piece])
        if not count:
            self.exhausted = True
        return count


def apply(root: Path, *layers: bytes) -> list[LayerStats]:
    results = []
    for data in layers:
        stream = Stream(data)
        results.append(apply_layer(stream, root))
        assert stream.exhausted, "apply_layer must read its stream to the end"
    return results


# -- looking at trees -------------------------------------------------------------

def describe(path: Path) -> str:
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"-> {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"d {mode:04o}"
    if stat.S_ISREG(st.st_mode):
        return f"f {mode:04o} {path.read_bytes().decode()}"
    if stat.S_ISFIFO(st.st_mode):
        return f"p {mode:04o}"
    if stat.S_ISCHR(st.st_mode):
        return f"c {mode:04o} {os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    return f"? {st.st_mode:o}"


def listing(root: Path) -> dict[str, str]:
    """Every path below root: type, permission bits, content or link target."""
    return {path.relative_to(root).as_posix(): describe(path) for path in walk(root)}


def _snapshot(top: Path, skip: Callable[[str], bool]) -> dict[str, tuple]:
    """Everything about a tree a hostile layer could change (ctime catches any chmod/chown)."""
    shot = {}
    st = os.lstat(top)
    shot["."] = (st.st_mode, st.st_mtime_ns, st.st_ctime_ns,
                 sorted(name for name in os.listdir(top)))
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == top:
            dirnames[:] = [name for name in dirnames if not skip(name)]
            filenames = [name for name in filenames if not skip(name)]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            content = link = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            if stat.S_ISLNK(st.st_mode):
                link = os.readlink(path)
            shot[path.relative_to(top).as_posix()] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_ino,
                st.st_mtime_ns, st.st_ctime_ns, content, link,
                sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else None)
    return shot


@dataclasses.dataclass
class Box:
    """A root to unpack into, with a victim directory beside it that must stay untouched."""

    top: Path
    root: Path
    victim: Path

    def __post_init__(self) -> None:
        self.before = self.outside()

    @property
    def victim_abs(self) -> str:
        return str(self.victim)

    def rerooted(self, absolute: str) -> Path:
        """Where an absolute path from the layer must land: inside the root."""
        return self.root / absolute.lstrip("/")

    def outside(self) -> dict[str, tuple]:
        return _snapshot(self.top, lambda name: name == "root")

    def assert_untouched(self) -> None:
        assert self.outside() == self.before, "something outside the root changed"


def _make_victim(top: Path) -> Path:
    victim = top / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "secret").write_bytes(b"top secret")
    (victim / "sub" / "file").write_bytes(b"victim file")
    (victim / "link").symlink_to("secret")
    (victim / "empty").mkdir()
    os.utime(victim / "secret", ns=(NS, NS))
    return victim


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    victim = _make_victim(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    made = Box(tmp_path, root, victim)
    yield made
    made.assert_untouched()


UNPACKERS = pytest.mark.parametrize("unpack", [apply_layer, extract_layer],
                                    ids=["apply", "extract"])


def unpack_all(unpack, root: Path, *layers: bytes) -> None:
    for data in layers:
        unpack(Stream(data), root)


# -- the changeset rules ------------------------------------------------------------

def test_entry_types_and_metadata(box: Box) -> None:
    apply(box.root, make_layer(
        dir_("./", mode=0o755, mtime=MTIME + 9),
        dir_("bin", mode=0o755, mtime=MTIME + 1),
        reg("bin/su", b"su", mode=0o4755, mtime=MTIME + 2),
        reg("bin/wall", b"wall", mode=0o2755, mtime=MTIME + 3),
        dir_("tmp", mode=0o1777, mtime=MTIME + 4),
        reg("etc/passwd", b"root:x:0:0", mode=0o600, mtime=MTIME + 5),
        sym("bin/sh", "dash", mtime=MTIME + 6),
        fifo("run.fifo", mode=0o620, mtime=MTIME + 7),
        hard("bin/su2", "bin/su"),
    ))
    assert listing(box.root) == {
        "bin": "d 0755", "bin/sh": "-> dash", "bin/su": "f 4755 su", "bin/su2": "f 4755 su",
        "bin/wall": "f 2755 wall", "etc": "d 0755", "etc/passwd": "f 0600 root:x:0:0",
        "run.fifo": "p 0620", "tmp": "d 1777",
    }
    mtimes = {path: os.lstat(box.root / path).st_mtime_ns // NS - MTIME
              for path in ("bin", "bin/su", "bin/wall", "tmp", "etc/passwd", "bin/sh",
                           "run.fifo")}
    # Directory mtimes survive the entries written into them afterwards.
    assert mtimes == {"bin": 1, "bin/su": 2, "bin/wall": 3, "tmp": 4, "etc/passwd": 5,
                      "bin/sh": 6, "run.fifo": 7}
    assert os.lstat(box.root).st_mtime_ns == (MTIME + 9) * NS
    assert os.lstat(box.root / "bin/su").st_ino == os.lstat(box.root / "bin/su2").st_ino


def test_missing_parents_are_created_0755(box: Box) -> None:
    old = os.umask(0o077)
    try:
        apply(box.root, make_layer(reg("a/b/c/file", b"x", mode=0o640)))
    finally:
        os.umask(old)
    assert listing(box.root) == {"a": "d 0755", "a/b": "d 0755", "a/b/c": "d 0755",
                                 "a/b/c/file": "f 0640 x"}


def test_symlink_targets_are_stored_verbatim(box: Box) -> None:
    apply(box.root, make_layer(
        sym("etc/alternatives/awk", "/usr/bin/mawk"),
        sym("rel", "../../../../outside"),
        sym("dot", "."),
        sym("weird", "a//b/./c/"),
    ))
    names = ("etc/alternatives/awk", "rel", "dot", "weird")
    assert {name: os.readlink(box.root / name) for name in names} == {
        "etc/alternatives/awk": "/usr/bin/mawk", "rel": "../../../../outside", "dot": ".",
        "weird": "a//b/./c/"}


def test_entries_under_an_absolute_symlinked_directory_land_inside_root(box: Box) -> None:
    apply(box.root,
          make_layer(dir_("usr"), dir_("usr/lib"), sym("lib", "/usr/lib"),
                     reg("lib/x.so", b"x"), sym("opt/app/lib", "/usr/lib"),
                     reg("opt/app/lib/w.so", b"w")),
          make_layer(reg("lib/y.so", b"y"), dir_("lib/sub"), reg("lib/sub/z", b"z")))
    assert listing(box.root) == {
        "lib": "-> /usr/lib", "opt": "d 0755", "opt/app": "d 0755",
        "opt/app/lib": "-> /usr/lib", "usr": "d 0755", "usr/lib": "d 0755",
        "usr/lib/sub": "d 0755", "usr/lib/sub/z": "f 0644 z", "usr/lib/w.so": "f 0644 w",
        "usr/lib/x.so": "f 0644 x", "usr/lib/y.so": "f 0644 y"}


def test_whiteouts_delete_files_directories_and_symlinks_from_lower_layers(box: Box) -> None:
    apply(box.root,
          make_layer(reg("keep", b"k"), reg("gone", b"g"), dir_("tree"),
                     reg("tree/a/b/c", b"c"), sym("tree/link", "/keep"), sym("alias", "keep"),
                     reg("foobar", b"f"), reg("foo", b"f")),
          make_layer(wh(".wh.gone"), wh(".wh.tree"), wh(".wh.alias"), wh(".wh.foo"),
                     wh(".wh.not-there"), wh("no/such/dir/.wh.x")))
    # The symlink went, not what it pointed to; "foo" never matched "foobar".
    assert listing(box.root) == {"foobar": "f 0644 f", "keep": "f 0644 k"}


def test_whiteout_never_removes_entries_of_its_own_layer(box: Box) -> None:
    apply(box.root,
          make_layer(reg("a", b"lower a"), dir_("d"), reg("d/lower", b"l"), reg("b", b"lb")),
          make_layer(reg("a", b"upper a"), wh(".wh.a"),        # whiteout after the entry
                     wh(".wh.b"), reg("b", b"upper b"),         # whiteout before it
                     dir_("d"), reg("d/new", b"n"), wh(".wh.d")))
    # d was re-created by this layer: only what the lower layer had inside is hidden.
    assert listing(box.root) == {"a": "f 0644 upper a", "b": "f 0644 upper b", "d": "d 0755",
                                 "d/new": "f 0644 n"}


@pytest.mark.parametrize("marker_first", [True, False], ids=["marker-first", "marker-last"])
def test_opaque_directory_hides_lower_contents_only(box: Box, marker_first: bool) -> None:
    lower = make_layer(dir_("o"), reg("o/lower", b"l"), dir_("o/sub"), reg("o/sub/old", b"old"),
                       dir_("o/gone"), reg("o/gone/x", b"x"), sym("o/ln", "/etc"),
                       reg("sibling", b"s"))
    body = [reg("o/new", b"n"), dir_("o/sub"), reg("o/sub/fresh", b"f")]
    marker = [wh("o/.wh..wh..opq")]
    apply(box.root, lower, make_layer(dir_("o", mode=0o750),
                                      *(marker + body if marker_first else body + marker)))
    assert listing(box.root) == {"o": "d 0750", "o/new": "f 0644 n", "o/sub": "d 0755",
                                 "o/sub/fresh": "f 0644 f", "sibling": "f 0644 s"}


def test_opaque_marker_without_directory_entry_and_at_root(box: Box) -> None:
    apply(box.root,
          make_layer(reg("x", b"x"), dir_("o"), reg("o/a", b"a")),
          make_layer(reg("o/b", b"b"), wh("o/.wh..wh..opq")),
          make_layer(reg("y", b"y"), wh("./.wh..wh..opq")))
    assert listing(box.root) == {"y": "f 0644 y"}


def test_opaque_directory_created_in_the_same_layer_is_kept_whole(box: Box) -> None:
    apply(box.root, make_layer(dir_("o"), reg("o/a", b"a"), dir_("o/s"), reg("o/s/b", b"b"),
                               wh("o/.wh..wh..opq"), wh("o/s/.wh..wh..opq")))
    assert listing(box.root) == {"o": "d 0755", "o/a": "f 0644 a", "o/s": "d 0755",
                                 "o/s/b": "f 0644 b"}


def test_whiteout_names_match_whole_components_and_never_appear(box: Box) -> None:
    stats = apply(box.root,
                  make_layer(reg("foo", b"1"), reg("foo.bar", b"2"), reg("a.wh.foo", b"3"),
                             dir_("dir.wh.x"), reg("x", b"4")),
                  make_layer(wh(".wh.foo"), wh(".wh..wh.plnk"), wh(".wh..wh.aufs"),
                             reg(".wh.dir/inside", b"5")))
    assert listing(box.root) == {"a.wh.foo": "f 0644 3", "dir.wh.x": "d 0755",
                                 "foo.bar": "f 0644 2", "x": "f 0644 4"}
    assert (stats[1].whiteouts, stats[1].skipped) == (1, 3)


@pytest.mark.parametrize("lower, upper, expected", [
    ([reg("p", b"file")], [dir_("p"), reg("p/c", b"c")], {"p": "d 0755", "p/c": "f 0644 c"}),
    ([dir_("p"), reg("p/c", b"c"), dir_("p/d")], [reg("p", b"file")], {"p": "f 0644 file"}),
    ([reg("t", b"t"), sym("p", "t")], [reg("p", b"file")], {"p": "f 0644 file", "t": "f 0644 t"}),
    ([dir_("p"), reg("p/c", b"c"), dir_("t")], [sym("p", "t")], {"p": "-> t", "t": "d 0755"}),
    ([dir_("t"), sym("p", "t")], [dir_("p", mode=0o700)], {"p": "d 0700", "t": "d 0755"}),
    ([reg("p", b"file")], [sym("p", "/elsewhere")], {"p": "-> /elsewhere"}),
    ([fifo("p")], [reg("p", b"file")], {"p": "f 0644 file"}),
    ([reg("p", b"file")], [fifo("p", mode=0o644)], {"p": "p 0644"}),
    ([reg("t", b"t"), reg("p", b"p")], [hard("p", "t")], {"p": "f 0644 t", "t": "f 0644 t"}),
], ids=["file-dir", "dir-file", "symlink-file", "dir-symlink", "symlink-dir", "file-symlink",
        "fifo-file", "file-fifo", "file-hardlink"])
@pytest.mark.parametrize("same_layer", [False, True], ids=["next-layer", "same-layer"])
def test_an_entry_that_changes_type_replaces_what_was_there(
        box: Box, lower: list[Entry], upper: list[Entry], expected: dict[str, str],
        same_layer: bool) -> None:
    if same_layer:
        apply(box.root, make_layer(*lower, *upper))
    else:
        apply(box.root, make_layer(*lower), make_layer(*upper))
    assert listing(box.root) == expected


def test_redeclared_directory_keeps_contents_and_takes_new_metadata(box: Box) -> None:
    apply(box.root,
          make_layer(dir_("d", mode=0o755, mtime=MTIME), reg("d/a", b"a")),
          make_layer(dir_("d", mode=0o1770, mtime=MTIME + 50), reg("d/b", b"b")))
    assert listing(box.root) == {"d": "d 1770", "d/a": "f 0644 a", "d/b": "f 0644 b"}
    assert os.lstat(box.root / "d").st_mtime_ns == (MTIME + 50) * NS


def test_lower_directory_mtimes_survive_later_layers(box: Box) -> None:
    apply(box.root,
          make_layer(dir_("d", mtime=MTIME + 1), reg("d/a", b"a"), reg("d/b", b"b"),
                     dir_("d/sub", mtime=MTIME + 2), reg("d/sub/x", b"x")),
          make_layer(reg("d/c", b"c"), wh("d/.wh.a"), wh("d/sub/.wh..wh..opq"),
                     sym("d/l", "c")))
    assert os.lstat(box.root / "d").st_mtime_ns == (MTIME + 1) * NS
    assert os.lstat(box.root / "d/sub").st_mtime_ns == (MTIME + 2) * NS
    assert listing(box.root) == {"d": "d 0755", "d/b": "f 0644 b", "d/c": "f 0644 c",
                                 "d/l": "-> c", "d/sub": "d 0755"}


def test_hardlinks_to_lower_layers_and_to_symlinks(box: Box) -> None:
    apply(box.root,
          make_layer(reg("lib/a", b"shared", mode=0o755), sym("lib/s", "/nowhere")),
          make_layer(hard("bin/a", "lib/a"), hard("bin/s", "/lib/s"), hard("bin/a2", "./bin/a")))
    ino = {p: os.lstat(box.root / p).st_ino for p in ("lib/a", "bin/a", "bin/a2", "lib/s",
                                                      "bin/s")}
    assert ino["lib/a"] == ino["bin/a"] == ino["bin/a2"]
    assert ino["lib/s"] == ino["bin/s"]
    assert os.lstat(box.root / "lib/a").st_nlink == 3
    assert listing(box.root)["bin/s"] == "-> /nowhere"


def test_replacing_a_file_breaks_its_lower_hardlinks_like_umoci(box: Box) -> None:
    apply(box.root, make_layer(reg("a", b"old"), hard("b", "a")), make_layer(reg("a", b"new")))
    assert listing(box.root) == {"a": "f 0644 new", "b": "f 0644 old"}


@needs_root
def test_ownership_devices_and_xattrs_as_root(box: Box) -> None:
    apply(box.root, make_layer(
        dir_("home", uid=1000, gid=1000),
        reg("home/f", b"f", mode=0o4750, uid=1000, gid=50),
        sym("home/l", "f", uid=1001, gid=1002),
        chardev("dev/null", 1, 3, mode=0o666, uid=0, gid=0),
        fifo("dev/initctl", uid=7, gid=8),
        reg("ping", b"elf", mode=0o755, pax={
            "SCHILY.xattr.user.note": "hello",
            "SCHILY.xattr.security.capability":
                bytes.fromhex("0100000200200000000000000000000000000000").decode(
                    "utf-8", "surrogateescape")}),
    ))
    owners = {p: (os.lstat(box.root / p).st_uid, os.lstat(box.root / p).st_gid)
              for p in ("home", "home/f", "home/l", "dev/initctl")}
    assert owners == {"home": (1000, 1000), "home/f": (1000, 50), "home/l": (1001, 1002),
                      "dev/initctl": (7, 8)}
    # chown clears setuid; the mode is applied after it.
    assert listing(box.root)["home/f"] == "f 4750 f"
    assert listing(box.root)["dev/null"] == "c 0666 1,3"
    assert os.getxattr(box.root / "ping", "user.note") == b"hello"
    assert os.getxattr(box.root / "ping", "security.capability") == bytes.fromhex(
        "0100000200200000000000000000000000000000")


def test_fractional_pax_mtimes_are_exact(box: Box) -> None:
    apply(box.root, make_layer(
        reg("f", b"f", pax={"mtime": "1600000000.123456789123"}),
        dir_("d", pax={"mtime": "1600000001.5"}),
        sym("l", "f", pax={"mtime": "-1.25"}),
    ))
    assert os.lstat(box.root / "f").st_mtime_ns == 1600000000_123456789
    assert os.lstat(box.root / "d").st_mtime_ns == 1600000001_500000000
    assert os.lstat(box.root / "l").st_mtime_ns == -1_250000000


def test_large_files_stream_in_chunks_and_stats_add_up(box: Box) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    (stats,) = apply(box.root, make_layer(
        dir_("d"), reg("d/big", big), reg("d/small", b"abc"), sym("d/l", "big"),
        hard("d/h", "d/big"), fifo("d/p"), wh("d/.wh.nothing"), reg("../up", b"u")))
    assert (box.root / "d/big").read_bytes() == big
    assert stats == LayerStats(entries=8, files=3, directories=1, symlinks=1, hardlinks=1,
                               specials=1, bytes_written=len(big) + 4, whiteouts=1,
                               skipped=0, rerooted=1)
    assert stats + stats == LayerStats(**{k: 2 * v for k, v in
                                          dataclasses.asdict(stats).items()})


def test_trailing_padding_is_read_to_the_end(box: Box) -> None:
    stream = Stream(make_layer(reg("f", b"f")) + b"\0" * 50_000)
    apply_layer(stream, box.root)
    assert stream.exhausted


# -- broken layers and errors ---------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    (b"", "not a valid tar"),
    (b"this is not a tar archive at all" * 40, "not a valid tar"),
    (make_layer(reg("f", b"x" * 100_000))[:30_000], "truncated"),
    (make_layer(reg("f", b"x"), reg("g", b"y"))[:1200], "truncated"),
], ids=["empty", "garbage", "truncated-data", "truncated-header"])
def test_broken_streams_raise_layer_error(box: Box, data: bytes, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        apply(box.root, data)


def test_stream_errors_pass_through_unchanged(box: Box) -> None:
    class Boom(Exception):
        pass

    class Failing(Stream):
        def readinto(self, buffer) -> int:
            if self._source.tell() > 2048:
                raise Boom("network went away")
            return super().readinto(buffer)

    with pytest.raises(Boom, match="network went away"):
        apply_layer(Failing(make_layer(reg("f", b"x" * 100_000)), piece=512), box.root)


@pytest.mark.parametrize("entries, message", [
    ([hard("h", "missing")], "neither in this layer"),
    ([dir_("d"), hard("h", "d")], "hardlinks to directories"),
    ([reg("f", b"f"), hard("f", "f")], "hardlink to itself"),
    ([reg("f", b"f"), reg("f/x", b"x")], "is not a directory"),
    ([sym("loop", "loop"), reg("loop/x", b"x")], "too many levels of symbolic links"),
    ([sym("a", "b"), sym("b", "a/c"), reg("a/x", b"x")], "too many levels of symbolic links"),
], ids=["hardlink-missing", "hardlink-dir", "hardlink-self", "file-as-parent", "loop",
        "loop2"])
def test_impossible_entries_raise_layer_error_naming_the_entry(
        box: Box, entries: list[Entry], message: str) -> None:
    with pytest.raises(LayerError, match=message) as caught:
        apply(box.root, make_layer(*entries))
    assert repr(entries[-1][0].name) in str(caught.value)


def test_unsupported_entry_types_are_skipped_with_a_warning(
        box: Box, caplog: pytest.LogCaptureFixture) -> None:
    odd = tar_info("volume", b"V", 0o644)
    with caplog.at_level(logging.WARNING, logger="occystrap.layers"):
        (stats,) = apply(box.root, make_layer((odd, None), reg("f", b"f")))
    assert listing(box.root) == {"f": "f 0644 f"}
    assert stats.skipped == 1
    assert "volume" in caplog.text


# -- extract_layer: one layer as it is ------------------------------------------------

def test_extract_layer_keeps_whiteouts_visible(box: Box, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    with caplog.at_level(logging.WARNING, logger="occystrap.layers"):
        stats = extract_layer(Stream(make_layer(
            dir_("o"), wh("o/.wh..wh..opq"), reg("o/new", b"n"), wh(".wh.gone"),
            hard("h", "from/a/lower/layer"), reg("f", b"f"), hard("g", "f"))), box.root)
    assert listing(box.root) == {".wh.gone": "f 0644 ", "f": "f 0644 f", "g": "f 0644 f",
                                 "o": "d 0755", "o/.wh..wh..opq": "f 0644 ",
                                 "o/new": "f 0644 n"}
    assert (stats.whiteouts, stats.skipped, stats.hardlinks) == (0, 1, 1)
    assert "from/a/lower/layer" in caplog.text


def test_extract_layer_creates_dest(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "layer"
    extract_layer(Stream(make_layer(reg("f", b"f"))), dest)
    assert listing(dest) == {"f": "f 0644 f"}


# -- hostile layers ---------------------------------------------------------------------

@UNPACKERS
def test_dotdot_names_are_rerooted(box: Box, unpack, caplog: pytest.LogCaptureFixture
                                   ) -> None:
    with caplog.at_level(logging.WARNING, logger="occystrap.layers"):
        stats = unpack(Stream(make_layer(
            reg("../victim/secret", b"pwned"), reg("../../../../../../victim/sub/file", b"p2"),
            dir_("a/../../x"), reg("a/../../../victim/new", b"p3"))), box.root)
    assert listing(box.root) == {"victim": "d 0755",
                                 "victim/new": "f 0644 p3", "victim/secret": "f 0644 pwned",
                                 "victim/sub": "d 0755", "victim/sub/file": "f 0644 p2",
                                 "x": "d 0755"}
    assert stats.rerooted == 4
    assert "climbs above the root" in caplog.text
    box.assert_untouched()


@UNPACKERS
def test_absolute_names_are_rerooted(box: Box, unpack) -> None:
    unpack(Stream(make_layer(reg(box.victim_abs + "/secret", b"pwned"),
                             reg("/" + box.victim_abs + "/new", b"new"))), box.root)
    assert (box.rerooted(box.victim_abs) / "secret").read_bytes() == b"pwned"
    assert (box.rerooted(box.victim_abs) / "new").read_bytes() == b"new"
    box.assert_untouched()


def _symlink_target(box: Box, kind: str) -> tuple[str, Path]:
    """A symlink target aiming outside the root, and where writes through it must land."""
    victim = box.victim_abs
    return {
        "absolute": (victim, box.rerooted(victim)),
        "relative": ("../victim", box.root / "victim"),
        "deep-relative": ("../../../../../../.." + victim, box.rerooted(victim)),
        "messy": ("/../..//" + victim.lstrip("/") + "/.", box.rerooted(victim)),
    }[kind]


@UNPACKERS
@pytest.mark.parametrize("kind", ["absolute", "relative", "deep-relative", "messy"])
@pytest.mark.parametrize("same_layer", [True, False], ids=["same-layer", "later-layer"])
def test_writes_through_symlinks_stay_inside_root(box: Box, unpack, kind: str,
                                                  same_layer: bool) -> None:
    target, landed = _symlink_target(box, kind)
    link = [sym("evil", target)]
    writes = [reg("evil/secret", b"pwned"), dir_("evil/newdir", mode=0o777),
              reg("evil/newdir/f", b"f"), reg("evil/sub/file", b"pwned too"),
              fifo("evil/fifo"), sym("evil/link", "/etc/shadow"), dir_("evil/empty", mode=0o700)]
    if same_layer:
        unpack_all(unpack, box.root, make_layer(*link, *writes))
    else:
        unpack_all(unpack, box.root, make_layer(*link), make_layer(*writes))
    assert os.readlink(box.root / "evil") == target
    assert listing(landed) == {
        "empty": "d 0700", "fifo": "p 0600", "link": "-> /etc/shadow", "newdir": "d 0777",
        "newdir/f": "f 0644 f", "secret": "f 0644 pwned", "sub": "d 0755",
        "sub/file": "f 0644 pwned too"}
    box.assert_untouched()


@UNPACKERS
def test_symlink_chains_and_root_symlinks_are_resolved_inside(box: Box, unpack) -> None:
    unpack_all(unpack, box.root, make_layer(
        sym("a", "b/c"), sym("b", "."), sym("c", "../../.."), reg("a/x", b"x"),
        sym("up", "/"), reg("up/etc/y", b"y"), sym("fileish", box.victim_abs + "/secret"),
        reg("fileish/z", b"z")))
    assert (box.root / "x").read_bytes() == b"x"
    assert (box.root / "etc/y").read_bytes() == b"y"
    assert (box.rerooted(box.victim_abs) / "secret/z").read_bytes() == b"z"
    box.assert_untouched()


@UNPACKERS
@pytest.mark.parametrize("linkname", ["../victim/secret", "VICTIM/secret",
                                      "evil/secret", "evil/../evil/secret"])
def test_hardlinks_never_point_outside(box: Box, unpack, linkname: str) -> None:
    linkname = linkname.replace("VICTIM", box.victim_abs)
    setup = make_layer(sym("evil", box.victim_abs))
    # apply_layer refuses a dangling hardlink; extract_layer skips it (lower layers
    # are not there to link to).
    with pytest.raises(LayerError) if unpack is apply_layer else contextlib.nullcontext():
        unpack_all(unpack, box.root, setup, make_layer(hard("h", linkname)))
    assert not (box.root / "h").exists()
    box.assert_untouched()
    # With the re-rooted twin present, the hardlink binds to it, inside the root.
    inner = box.root / "victim/secret" if linkname.startswith("..") \
        else box.rerooted(box.victim_abs) / "secret"
    inner.parent.mkdir(parents=True, exist_ok=True)
    inner.write_bytes(b"inner")
    unpack_all(unpack, box.root, make_layer(hard("h", linkname)))
    assert os.lstat(box.root / "h").st_ino == os.lstat(inner).st_ino
    box.assert_untouched()


@UNPACKERS
def test_hardlink_to_outside_pointing_symlink_links_the_symlink(box: Box, unpack) -> None:
    unpack_all(unpack, box.root,
               make_layer(sym("s", box.victim_abs + "/secret"), hard("h", "s")),
               make_layer(reg("h", b"replaced")))
    assert listing(box.root) == {"h": "f 0644 replaced", "s": "-> " + box.victim_abs + "/secret"}
    box.assert_untouched()


@UNPACKERS
@pytest.mark.parametrize("same_layer", [False, True], ids=["later-layer", "same-layer"])
def test_symlink_at_the_final_component_is_replaced_never_followed(
        box: Box, unpack, same_layer: bool) -> None:
    links = [sym("f", box.victim_abs + "/secret"), sym("g", "../victim/secret"),
             sym("d", box.victim_abs), sym("e", "../victim/empty"), sym("p", "../victim/sub"),
             sym("h", "../victim/link"), reg("t", b"t")]
    writes = [reg("f", b"file f", mode=0o600), reg("g", b"file g"), dir_("d", mode=0o700),
              dir_("e", mode=0o777), fifo("p"), hard("h", "t")]
    if same_layer:
        unpack_all(unpack, box.root, make_layer(*links, *writes))
    else:
        unpack_all(unpack, box.root, make_layer(*links), make_layer(*writes))
    assert listing(box.root) == {"d": "d 0700", "e": "d 0777", "f": "f 0600 file f",
                                 "g": "f 0644 file g", "h": "f 0644 t", "p": "p 0600",
                                 "t": "f 0644 t"}
    box.assert_untouched()


@UNPACKERS
def test_parents_are_resolved_again_after_they_change_type(box: Box, unpack) -> None:
    # Each parent was resolved once already; after it turns into a symlink (or a
    # different symlink) the next entry must be resolved afresh, inside the root.
    unpack_all(unpack, box.root, make_layer(
        dir_("d"), reg("d/a", b"a"), sym("d", box.victim_abs), reg("d/b", b"b"),
        dir_("usr"), dir_("usr/lib"), sym("lib", "/usr/lib"), reg("lib/a", b"a"),
        sym("lib", "../victim"), reg("lib/b", b"b"),
        sym("s", "usr"), reg("s/c", b"c"), dir_("s"), reg("s/d", b"d")))
    assert listing(box.rerooted(box.victim_abs)) == {"b": "f 0644 b"}
    assert listing(box.root / "victim") == {"b": "f 0644 b"}
    assert listing(box.root / "usr") == {"c": "f 0644 c", "lib": "d 0755",
                                         "lib/a": "f 0644 a"}
    assert listing(box.root / "s") == {"d": "f 0644 d"}
    box.assert_untouched()


@UNPACKERS
def test_directory_metadata_is_not_applied_through_a_later_symlink(box: Box, unpack) -> None:
    # The mode and mtime of "d" wait for the end of the layer; by then "d" is a
    # symlink to the victim, which must not receive them.
    unpack_all(unpack, box.root, make_layer(
        dir_("d", mode=0o777, mtime=5), dir_("d/sub", mode=0o777, mtime=5),
        sym("d", box.victim_abs), sym("x", "../victim"), dir_("x/sub", mode=0o777)))
    assert listing(box.root)["d"] == "-> " + box.victim_abs
    assert listing(box.root)["victim/sub"] == "d 0777"
    box.assert_untouched()


def test_whiteouts_through_symlinks_stay_inside_root(box: Box) -> None:
    inner = box.rerooted(box.victim_abs)
    apply(box.root,
          make_layer(sym("evil", box.victim_abs), sym("rel", "../victim"),
                     reg("evil/secret", b"inner secret"), reg("evil/other", b"o"),
                     reg("rel/secret", b"rel secret"), reg("rel/keep", b"k")),
          make_layer(wh("evil/.wh.secret"), wh("rel/.wh.secret"), wh("evil/.wh.sub"),
                     wh("rel/.wh.link")),
          make_layer(wh("evil/.wh..wh..opq"), wh("../victim/.wh.keep"),
                     wh(box.victim_abs + "/.wh.sub")))
    assert not (inner / "secret").exists()
    assert listing(inner) == {}
    assert listing(box.root / "victim") == {}
    assert os.readlink(box.root / "evil") == box.victim_abs
    box.assert_untouched()


def test_removing_trees_never_follows_symlinks_inside_them(box: Box) -> None:
    def tree(name: str) -> list[Entry]:
        return [dir_(name), sym(f"{name}/abs", box.victim_abs), sym(f"{name}/rel", "../../victim"),
                sym(f"{name}/file", box.victim_abs + "/secret"), dir_(f"{name}/sub"),
                sym(f"{name}/sub/up", "../../../victim/sub")]
    apply(box.root,
          make_layer(*tree("w"), *tree("t"), *tree("o"), *tree("s")),
          make_layer(wh(".wh.w"), reg("t", b"now a file"), wh("o/.wh..wh..opq"),
                     sym("s", box.victim_abs)),
          make_layer(wh(".wh.s")))
    assert listing(box.root) == {"o": "d 0755", "t": "f 0644 now a file"}
    box.assert_untouched()


def test_whiteout_escaping_by_name_stays_inside_root(box: Box) -> None:
    apply(box.root, make_layer(dir_("victim"), reg("victim/secret", b"inner")),
          make_layer(wh("../.wh.victim"), wh("../../.wh.victim")))
    assert listing(box.root) == {}
    box.assert_untouched()


@pytest.mark.parametrize("name", [".wh..", ".wh...", ".wh.", "sub/.wh...", "../.wh..."])
def test_whiteouts_of_dot_and_dotdot_are_refused(box: Box, name: str) -> None:
    apply(box.root, make_layer(dir_("sub"), reg("sub/f", b"f")))
    with pytest.raises(LayerError, match="names no entry") as caught:
        apply(box.root, make_layer(wh(name)))
    assert repr(name) in str(caught.value)
    assert listing(box.root) == {"sub": "d 0755", "sub/f": "f 0644 f"}
    box.assert_untouched()


@UNPACKERS
@pytest.mark.parametrize("name", [".", "./", "/", "..", "a/../..", ""])
@pytest.mark.parametrize("kind", ["symlink", "file", "hardlink", "fifo"])
def test_root_cannot_change_type(box: Box, unpack, name: str, kind: str) -> None:
    entry = {"symlink": sym(name, box.victim_abs), "file": reg(name, b"x"),
             "hardlink": hard(name, "f"), "fifo": fifo(name)}[kind]
    with pytest.raises(LayerError, match="replace the root directory"):
        unpack(Stream(make_layer(reg("f", b"f"), entry, reg("after", b"a"))), box.root)
    assert not (box.root / "after").exists()
    assert stat.S_ISDIR(os.lstat(box.root).st_mode)
    box.assert_untouched()


def test_nul_bytes_in_names_are_refused(box: Box) -> None:
    with pytest.raises(LayerError):
        apply(box.root, make_layer(reg("ok", b"x", pax={"path": "evil\x00/../../x"})))
    box.assert_untouched()


# -- unprivileged ---------------------------------------------------------------------

def as_unprivileged(work: Callable[[], object]) -> object:
    """Run work as an ordinary user: directly when we are one, else in a forked child."""
    if not ROOT:
        return work()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: never returns into pytest
        status = 1
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = {"ok": work()}
            status = 0
        except BaseException:  # the child must report anything, then exit
            payload = {"error": traceback.format_exc()}
        finally:
            with os.fdopen(writer, "w") as out:
                json.dump(payload, out)
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader) as incoming:
        payload = json.load(incoming)
    os.waitpid(pid, 0)
    if "error" in payload:
        pytest.fail("unprivileged run failed:\n" + payload["error"])
    return payload["ok"]


@pytest.fixture
def open_tmp(tmp_path: Path) -> Iterator[Path]:
    """A directory an unprivileged child can use (pytest's tmp_path is root-only)."""
    if not ROOT:
        yield tmp_path
        return

    def reachable(directory: Path) -> bool:
        return all(os.stat(path).st_mode & stat.S_IXOTH for path in [directory, *directory.parents])

    candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/dev/shm")]
    usable = [path for path in candidates if path.is_dir() and reachable(path)]
    if not usable:
        pytest.skip("no temporary directory an unprivileged user can reach")
    base = Path(tempfile.mkdtemp(prefix="occystrap-layers-", dir=usable[0]))
    try:
        os.chown(base, NOBODY, NOBODY)
        yield base
    finally:
        shutil.rmtree(base)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_unprivileged_apply_handles_read_only_dirs_devices_and_owners(open_tmp: Path) -> None:
    root = open_tmp / "root"
    layers = [
        make_layer(dir_("./", mode=0o555), dir_("usr", mode=0o555, mtime=MTIME + 1),
                   dir_("usr/bin", mode=0o555), reg("usr/bin/a", b"a", mode=0o555, uid=0),
                   dir_("secret", mode=0o000), dir_("ro", mode=0o500),
                   dir_("ro/deep", mode=0o500), reg("ro/deep/f", b"f", mode=0o400),
                   reg("suid", b"s", mode=0o4755),
                   chardev("dev/null", 1, 3)),
        make_layer(reg("usr/bin/b", b"b", mode=0o755), wh(".wh.ro"), reg("secret/x", b"x"),
                   dir_("usr/bin", mode=0o555, mtime=MTIME + 2)),
        make_layer(wh("usr/bin/.wh.a"), wh(".wh.secret")),
    ]

    def work() -> dict:
        handler = _Collect()
        logging.getLogger("occystrap.layers").addHandler(handler)
        stats = [dataclasses.asdict(apply_layer(Stream(layer), root)) for layer in layers]
        return {"stats": stats, "warnings": handler.messages}

    result = as_unprivileged(work)
    assert any("dev/null" in message and "device" in message for message in result["warnings"])
    assert result["stats"][0]["skipped"] == 1
    assert listing(root) == {"suid": "f 4755 s", "usr": "d 0555",
                             "usr/bin": "d 0555", "usr/bin/b": "f 0755 b"}
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o555
    assert os.lstat(root / "usr").st_mtime_ns == (MTIME + 1) * NS
    assert os.lstat(root / "usr/bin").st_mtime_ns == (MTIME + 2) * NS
    me = os.geteuid() if not ROOT else NOBODY
    assert {os.lstat(path).st_uid for path in walk(root)} == {me}


# -- umoci as the reference -------------------------------------------------------------

def write_oci_layout(path: Path, layers: list[Path], gzipped: list[bool]) -> str:
    """Write a one-image OCI layout from uncompressed layer files; returns its tag."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    descriptors, diff_ids = [], []
    for layer, zipped in zip(layers, gzipped, strict=True):
        data = layer.read_bytes()
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
        descriptors.append({
            "mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if zipped else ""),
            **put(gzip.compress(data, compresslevel=1, mtime=0) if zipped else data)})
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())},
                "layers": descriptors}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "test"}}]}
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return "test"


def _write_layers(directory: Path, layers: list[bytes]) -> list[Path]:
    directory.mkdir()
    paths = []
    for number, data in enumerate(layers):
        path = directory / f"layer{number}.tar"
        path.write_bytes(data)
        paths.append(path)
    return paths


def compare_with_umoci(tmp: Path, layers: list[Path], gzipped: list[bool],
                       ignore_mtime: frozenset[str] = frozenset()) -> Path:
    """Unpack with umoci and with apply_layer; assert the trees are identical."""
    tag = write_oci_layout(tmp / "oci", layers, gzipped)
    theirs = umoci_unpack(tmp / "oci", tag, tmp / "bundle")
    ours = tmp / "ours"
    ours.mkdir()
    for layer in layers:
        with layer.open("rb") as raw:
            stream = Stream(raw, piece=65536)
            apply_layer(stream, ours)
            assert stream.exhausted
    assert_same_as_umoci(ours, theirs, ignore_mtime)
    return ours


def test_crafted_image_matches_umoci(tmp_path: Path) -> None:
    layers = _write_layers(tmp_path / "layers", crafted_layers())
    ours = compare_with_umoci(tmp_path, layers, gzipped=[False, True, False])
    # Spot checks that the comparison compared something real.
    expected = {"opq": "d 0770", "opq/new": "f 0644 new", "opq/lowerdir": "d 0755",
                "opq/lowerdir/g": "f 0644 g", "opq2": "d 0755", "opq2/newfile": "f 0644 nf",
                "f2d": "d 0755", "d2f": "f 0644 dir to file", "wipe": "d 0701",
                "wipe/fresh": "f 0644 fresh", "data": "d 0755", "data/keep": "f 0644 upper keep",
                "data/sub": "d 0755", "lib": "-> /usr/lib", "usr/lib/libx.so": "f 0644 libx",
                "usr/lib/liby.so": "f 0644 liby", "bin/su": None, "d2s": None, "link-to-del": None}
    seen = listing(ours)
    assert {path: seen.get(path) for path in expected} == expected


_R = dir_("./", mtime=MTIME)


@pytest.mark.parametrize("layers, umoci_now, ours", [
    ([[_R, dir_("a", mtime=MTIME + 1)], [reg("a/b/c/f", b"f")]],
     {"a", "a/b", "a/b/c"}, {"a": MTIME + 1}),
    ([[_R, reg("d/f", b"f"), dir_("d", mode=0o700, mtime=MTIME + 5)]],
     {"."}, {".": MTIME, "d": MTIME + 5}),
    ([[_R, dir_("o", mtime=MTIME + 1), dir_("o/sub", mtime=MTIME + 2), reg("o/sub/old", b"o")],
      [dir_("o/sub", mtime=MTIME + 3), reg("o/sub/new", b"n"), wh("o/.wh..wh..opq")]],
     {"o/sub"}, {"o": MTIME + 1, "o/sub": MTIME + 3}),
    ([[_R, dir_("d", mtime=MTIME + 1), reg("d/x", b"x")], [reg("d/y", b"y"), wh(".wh.d")]],
     {"d"}, {"d": MTIME + 1}),
], ids=["implicit-parents", "dir-after-children", "opaque-into-kept-dir",
        "whiteout-into-kept-dir"])
def test_directory_mtimes_umoci_leaves_at_now(tmp_path: Path, layers: list[list[Entry]],
                                              umoci_now: set[str], ours: dict[str, int]) -> None:
    """umoci restores only the entry's own parent, so some directories end up with the
    time of unpacking; everything else must still match, and ours must be deterministic
    (declared mtime, else the one from the layer below; implicit parents excepted)."""
    paths = _write_layers(tmp_path / "layers", [make_layer(*layer) for layer in layers])
    root = compare_with_umoci(tmp_path, paths, [False] * len(paths), frozenset(umoci_now))
    assert {path: os.lstat(root / path).st_mtime_ns // NS for path in ours} == ours


# -- a realistic root filesystem --------------------------------------------------------

def test_realistic_rootfs_matches_umoci(tmp_path: Path) -> None:
    need_tool("umoci")    # before spending time on building the layers
    layers = realistic_layers(tmp_path / "layers")
    ours = compare_with_umoci(tmp_path, layers, gzipped=[True, False, True, False])
    nodes, links = inventory(ours)
    assert len(nodes) > 2000
    kinds = Counter(node.kind for node in nodes.values())
    assert kinds["-"] > 1000 and kinds["d"] > 100 and kinds["l"] > 100, kinds
    assert len(links) > 200    # zoneinfo's posix/ tree
    # Replacing etc/passwd and os.py broke their links to the lower copies.
    assert (ours / "usr/lib/hl0").read_bytes() == PASSWD
    assert (ours / "etc/passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
    assert frozenset({"usr/lib/hl2", PYTHON + "/os-again.py"}) in links
    assert not (ours / PYTHON / "json").exists()
    assert os.readlink(ours / PYTHON / "http") == "/usr/share"
    assert sorted(os.listdir(ours / "etc/ssl")) == ["private"]
    assert not (ours / "usr/bin/su").exists()
    assert nodes["usr/bin/wall"].mode == "0755"
    assert (nodes["usr/bin/passwd"].mode, nodes["usr/bin/crontab"].mode) == ("4755", "2755")


# -- files and streams ----------------------------------------------------------------

class _Stream(io.RawIOBase):
    """A layer that can only be read forward, as from a hashing reader."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._data.readinto(buffer)
        self.taken += count
        return count


@pytest.mark.parametrize("which", ["crafted", "realistic"])
def test_a_stream_unpacks_as_a_file_does(tmp_path: Path, which: str) -> None:
    """Files are read in place, by offset; streams through tarfile's buffer:
    the same trees."""
    started = time.time_ns()

    def same(one: Path, other: Path) -> None:
        # Directories a layer implies without declaring them are made "now".
        now = frozenset(path for tree in (one, other)
                        for path, node in inventory(tree)[0].items()
                        if node.kind == "d" and (node.mtime_ns or 0) >= started)
        assert inventory(one, now) == inventory(other, now)

    if which == "crafted":
        blobs = crafted_layers()
    else:
        blobs = [path.read_bytes() for path in realistic_layers(tmp_path / "layers")]
        blobs = [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in blobs]
    for index, blob in enumerate(blobs):
        assert not _Stream(blob).seekable()
        on_disk = tmp_path / f"{index}.tar"
        on_disk.write_bytes(blob)
        with open(on_disk, "rb") as one, open(on_disk, "rb") as other:
            files = (extract_layer(one, tmp_path / "file" / str(index)),
                     apply_layer(other, tmp_path / "file-tree"))
        streams = (extract_layer(_Stream(blob), tmp_path / "stream" / str(index)),
                   apply_layer(_Stream(blob), tmp_path / "stream-tree"))
        assert streams == files
        same(tmp_path / "stream" / str(index), tmp_path / "file" / str(index))
    same(tmp_path / "stream-tree", tmp_path / "file-tree")
    assert len(inventory(tmp_path / "stream-tree")[0]) > 10


def test_a_stream_is_read_to_its_end(tmp_path: Path) -> None:
    # An upstream hashing reader must see every byte, end padding included.
    data = os.urandom(3 << 20)
    layer = make_layer(dir_("d"), reg("d/big", data), wh(".wh.gone"))
    stream = _Stream(layer)
    applied = apply_layer(stream, tmp_path / "tree")
    assert stream.taken == len(layer)
    assert (tmp_path / "tree" / "d" / "big").read_bytes() == data
    assert (applied.files, applied.whiteouts) == (1, 1)


@pytest.mark.parametrize("kind", ["file", "stream"])
def test_a_layer_cut_inside_a_file_is_truncated(tmp_path: Path, kind: str) -> None:
    layer = make_layer(reg("a", b"x" * 5000), reg("b", os.urandom(200_000)))
    cut = layer[:len(layer) // 2]
    path = tmp_path / "cut.tar"
    path.write_bytes(cut)
    with open(path, "rb") as f:
        source = f if kind == "file" else _Stream(cut)
        with pytest.raises(LayerError, match="truncated"):
            apply_layer(source, tmp_path / "tree")
    assert (tmp_path / "tree" / "a").read_bytes() == b"x" * 5000
