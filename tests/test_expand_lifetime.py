"""--expand's worker process lives no longer than the run that started it."""

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import imagebuild as ib

# Enough entries that unpacking one layer takes the worker a few seconds.
_ENTRIES = 6_000


@pytest.fixture(scope="module")
def slow_image():
    return ib.make_image([
        ib.make_layer([ib.file(f"a/{i // 100}/f{i}", b"x") for i in range(_ENTRIES)]),
        ib.make_layer([ib.file(f"b/{i // 100}/f{i}", b"y") for i in range(_ENTRIES)]),
    ])


def _group(pgid: int) -> list[str]:
    """Processes in a process group, as `cmdline` strings."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # pgrp is the 5th field, after "pid (comm) state ppid".
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        words = cmdline.replace(b"\0", b" ").decode(errors="replace")
        found.append(f"{entry}: {words}")
    return found


def _start(registry, repo, out: Path, *flags: str) -> subprocess.Popen:
    # Its own process group, so what it leaves behind can be found; both
    # outputs into pipes, as `occystrap ... | cat` would have them.
    return subprocess.Popen(
        [sys.executable, "-m", "occystrap", *flags, "fetch-to-extracted", "--expand",
         registry.host, repo, "v1", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _half_built(where: Path) -> list[Path]:
    """Layer directories being unpacked (not layer.tar files being written)."""
    return [path for path in where.rglob(".layer.*.tmp") if path.is_dir()]


def _wait_for_unpacking(run: subprocess.Popen, where: Path) -> None:
    """Until the worker is half-way through building a layer directory."""
    deadline = time.monotonic() + 60
    while not _half_built(where):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the worker never started a layer"
        time.sleep(0.02)


def _read_to_end(stream, seconds: float) -> bool:
    """True if every writer of the pipe closed it within the time."""
    deadline = time.monotonic() + seconds
    fd = stream.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([fd], [], [], left)
        if readable and not os.read(fd, 65536):
            return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_workers_die_when_the_run_is_killed(registry, repo, tmp_path, slow_image):
    registry.push_image(repo, slow_image, "v1")
    run = _start(registry, repo, tmp_path / "out")
    try:
        _wait_for_unpacking(run, tmp_path)
        assert len(_group(run.pid)) >= 2, "no worker process to test with"
        run.kill()   # as the OOM killer would: no cleanup of its own
        run.wait()
        # The pipes close: `occystrap ... | cat` ends.
        assert _read_to_end(run.stderr, 10), _group(run.pid)
        assert _read_to_end(run.stdout, 1)
        deadline = time.monotonic() + 10
        while _group(run.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group(run.pid) == []
        # The worker removed the layer directory it was building.
        assert _half_built(tmp_path) == []
    finally:
        _kill_group(run.pid)
        run.communicate()


def _finished(run: subprocess.Popen, seconds: float = 60) -> tuple[int, str]:
    # Its output is a few lines: the pipes cannot fill while it runs.
    run.wait(seconds)
    # Nothing of the run may be left once it has exited, not even for a
    # moment (reading its pipes to the end first would wait for them).
    left = _group(run.pid)
    _, stderr = run.communicate(timeout=10)
    assert left == [], stderr
    return run.returncode, stderr.decode()


def test_workers_are_joined_on_success(registry, repo, tmp_path):
    image = ib.make_image([ib.make_layer([ib.file(f"a/f{i}", b"x") for i in range(300)]),
                           ib.make_layer([ib.file(f"b/f{i}", b"y") for i in range(300)])])
    registry.push_image(repo, image, "v1")
    run = _start(registry, repo, tmp_path / "out")
    try:
        code, stderr = _finished(run)
    finally:
        _kill_group(run.pid)
    assert code == 0, stderr
    assert (tmp_path / "out" / "manifest" / "b" / "f299").read_bytes() == b"y"


def test_workers_are_joined_on_error(registry, repo, tmp_path):
    image = ib.make_image([
        ib.make_layer([ib.file(f"a/f{i}", b"x") for i in range(300)]),
        # Replaces the root with a symlink: refused.
        ib.make_layer([ib.symlink(".", "/tmp")]),
    ])
    registry.push_image(repo, image, "v1")
    run = _start(registry, repo, tmp_path / "out")
    try:
        code, stderr = _finished(run)
    finally:
        _kill_group(run.pid)
    assert code == 1, stderr
    assert "would replace the root directory" in stderr
    assert list(tmp_path.iterdir()) == []


def test_workers_are_joined_on_ctrl_c(registry, repo, tmp_path, slow_image):
    registry.push_image(repo, slow_image, "v1")
    run = _start(registry, repo, tmp_path / "out")
    try:
        _wait_for_unpacking(run, tmp_path)
        # The terminal sends Ctrl-C to the whole foreground group.
        os.killpg(run.pid, signal.SIGINT)
        code, stderr = _finished(run, 20)
    finally:
        _kill_group(run.pid)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []
