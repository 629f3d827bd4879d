"""occystrap as a person uses it: in a terminal, in a pipe, from the README."""

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import imagebuild as ib
from occystrap import __version__
from occystrap.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _image(seed: int, layers: int = 3) -> ib.Image:
    return ib.make_image([
        ib.make_layer([ib.file(f"l{n}", ib.random_bytes(400_000, seed * 10 + n))])
        for n in range(layers)])


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "occystrap", "--retry-delay", "0", *args]


def test_progress_is_drawn_in_a_terminal(registry, repo, tmp_path):
    registry.push_image(repo, _image(1), "v1")
    out = tmp_path / "x.tar"
    main, child = pty.openpty()
    process = subprocess.Popen(
        _command("fetch-to-tarfile", registry.host, repo, "v1", str(out)),
        stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            seen += data
        elif process.poll() is not None:
            break
    os.close(main)
    assert process.wait(timeout=30) == 0, seen
    text = seen.decode(errors="replace")
    assert "\x1b[" in text, "no progress drawn in a terminal"
    assert "3/3 layers" in text
    assert re.search(r"\[[=> ]+\]|done", text)
    assert f"Saved {registry.host}/{repo}:v1 (sha256:" in text


def test_pipes_get_no_control_characters(registry, repo, tmp_path):
    registry.push_image(repo, _image(2), "v1")
    done = subprocess.run(
        _command("fetch-to-extracted", "--use-unique-names", registry.host, repo, "v1",
                 str(tmp_path / "dir")),
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert not CONTROL.search(done.stderr.replace("\n", "")), repr(done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Saved ")


def test_quiet_prints_nothing_and_no_progress_overrides_a_terminal(registry, repo,
                                                                   tmp_path):
    registry.push_image(repo, _image(3), "v1")
    done = subprocess.run(
        _command("--quiet", "fetch-to-tarfile", registry.host, repo, "v1",
                 str(tmp_path / "q.tar")),
        capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    forced = subprocess.run(
        _command("--progress", "fetch-to-tarfile", registry.host, repo, "v1",
                 str(tmp_path / "p.tar")),
        capture_output=True, text=True, timeout=60)
    assert "\x1b[" in forced.stderr


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    group = runner.invoke(cli, ["--help"])
    assert group.exit_code == 0
    assert "OCCYSTRAP_PLATFORM" in group.output
    for name in cli.commands:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output, name
        assert f"occystrap {name}" in result.output, name


def test_version_and_usage_errors():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.strip() == \
        f"occystrap, version {__version__}"
    result = runner.invoke(cli, ["fetch-to-tarfile", "only-one-arg"])
    assert result.exit_code == 2
    assert "Missing argument" in result.output
    result = runner.invoke(cli, ["--platform", "linux", "fetch-to-tarfile", "a", "b", "c",
                                 "d"])
    assert result.exit_code == 2
    assert "OS/ARCH" in result.output


def test_interrupt_exits_130(registry, repo, tmp_path):
    """Ctrl-C: exit 130, a one-line message, nothing at the destination."""
    registry.push_image(repo, _image(4, layers=1), "v1")
    runner = CliRunner()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    target = tmp_path / "out" / "x.tar"
    target.parent.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("occystrap.pipeline._copy_layer", interrupted)
        result = runner.invoke(cli, ["fetch-to-tarfile", registry.host, repo, "v1",
                                     str(target)])
    assert result.exit_code == 130
    assert "Interrupted" in result.stderr
    assert list(target.parent.iterdir()) == []


def _readme_blocks() -> list[str]:
    """The shell blocks the README marks as tested, in order."""
    text = README.read_text()
    return re.findall(r"<!-- tested[^>]*-->\n```shell\n(.*?)```", text, re.S)


def test_readme_walkthrough_runs(registry, podman, tmp_path):
    blocks = _readme_blocks()
    assert len(blocks) >= 3, "the README's tested examples went missing"
    for tag, seed in (("1.0", 5), ("1.1", 6)):
        registry.push_image("myteam/app", _image(seed), tag)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "occystrap"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m occystrap "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    loaded = []
    for block in blocks:
        for line in block.strip().splitlines():
            line = line.replace("localhost:5000", registry.host)
            if line.startswith("docker load -i "):
                loaded += podman.load(work / line.split()[-1])
                continue
            done = subprocess.run(["sh", "-ec", line], cwd=work, capture_output=True,
                                  text=True, timeout=120,
                                  env={**os.environ,
                                       "PATH": f"{bin_dir}:{os.environ['PATH']}"})
            assert done.returncode == 0, f"{line}\n{done.stderr}"
    assert loaded == [f"{registry.host}/myteam/app:1.1"]
    assert (work / "app-1.0.tar").is_file()


def test_an_interrupt_that_broke_a_lock_still_exits_130(registry, repo, tmp_path):
    """Ctrl-C inside Condition.wait can surface as "release unlocked lock"."""
    registry.push_image(repo, _image(7, layers=1), "v1")

    def broken_lock(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")

    target = tmp_path / "out" / "x.tar"
    target.parent.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("occystrap.pipeline._copy_layer", broken_lock)
        result = CliRunner().invoke(cli, ["fetch-to-tarfile", registry.host, repo, "v1",
                                          str(target)])
    assert result.exit_code == 130, result.output
    assert "internal error" not in result.stderr
    assert list(target.parent.iterdir()) == []
