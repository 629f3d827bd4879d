"""Nothing lost, nothing hung: tampered directories, odd paths, signals, locks.

A directory that crossed an air gap is input like any other. These tests
plant what an attacker (or an accident) could: FIFOs, devices, links out
of the directory, sparse files, renamed tags, escape sequences; and run
occystrap as a separate process with a memory limit and a timeout, so a
hang or an unbounded read fails the test instead of the machine.
"""

import fcntl
import io
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import imagebuild as ib
from conftest import assert_error, occystrap

HANG = 60          # seconds: far more than any of these runs needs
MEMORY = 1 << 30   # bytes of address space: a whole-file read of 2 GiB fails
SPARSE = 2 << 30


def run(*args: str, timeout: float = HANG, unprivileged: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """`python -m occystrap ARGS`, bounded in time and memory."""
    command = [sys.executable, "-m", "occystrap", "--retry-delay", "0",
               "--retries", "1", *args]
    if unprivileged and os.geteuid() == 0:
        # Root reads anything; without its capabilities, file modes count.
        command = [_tool("setpriv"), "--bounding-set=-all", *command]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        command, stderr=subprocess.PIPE, timeout=timeout, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS,
                                              (MEMORY, MEMORY)), **kwargs)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("OCCYSTRAP_REQUIRE_INTEGRATION"):
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return found


def failed(result: subprocess.CompletedProcess, *phrases: str,
           code: int = 1) -> str:
    """Exit `code`, and the last line of stderr a clear `Error:` naming
    every phrase: not an internal error, not a traceback."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == code, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, \
        stderr
    for phrase in phrases:
        assert phrase in last, last
    return last


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def _layer(name: str, size: int = 30_000) -> ib.Layer:
    return ib.make_layer([ib.file(name, ib.random_bytes(size, name))])


def shared(registry, repo: str, tmp_path: Path, tag: str = "v1"
           ) -> tuple[Path, ib.Image]:
    """A shared directory holding repo:tag."""
    image = ib.make_image([_layer("base"), _layer(f"app/{tag}")])
    registry.push_image(repo, image, tag)
    store = tmp_path / "shared"
    ok(run("fetch-to-extracted", "--use-unique-names", registry.host, repo,
           tag, str(store)))
    return store, image


def manifest_file(store: Path, repo: str, tag: str) -> Path:
    catalog = json.loads((store / "catalog.json").read_text())
    return store / catalog[repo][tag]


def config_file(store: Path, manifest: Path) -> Path:
    return store / json.loads(manifest.read_text())[0]["Config"]


def layer_tar(store: Path, diff_id: str) -> Path:
    return store / diff_id.split(":")[1] / "layer.tar"


def plant(path: Path, kind: str, outside: Path) -> None:
    """Replace path by what a tampered directory could hold instead."""
    content = path.read_bytes()
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(SPARSE)
    elif kind == "outside":
        # The same bytes, but outside the directory: still not to be read.
        outside.write_bytes(content)
        path.symlink_to(outside)
    elif kind == "nested":
        path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    else:
        raise AssertionError(kind)


# --- 4: what a directory's JSON files may be ---------------------------------


@pytest.mark.parametrize("layout, target, kind", [
    ("shared", "catalog", "fifo"),
    ("shared", "catalog", "zero"),
    ("shared", "catalog", "sparse"),
    ("shared", "catalog", "outside"),
    ("shared", "catalog", "nested"),
    ("shared", "manifest", "fifo"),
    ("shared", "manifest", "zero"),
    ("shared", "manifest", "sparse"),
    ("shared", "manifest", "nested"),
    ("single", "manifest", "fifo"),
    ("single", "manifest", "zero"),
    ("single", "manifest", "sparse"),
    ("single", "manifest", "outside"),
    ("single", "manifest", "nested"),
    ("shared", "config", "fifo"),
    ("shared", "config", "zero"),
    ("shared", "config", "outside"),
])
def test_recreate_reads_only_regular_small_files_inside_dir(
        registry, repo, tmp_path, layout, target, kind):
    image = ib.make_image([_layer("base")])
    registry.push_image(repo, image, "v1")
    store = tmp_path / "store"
    flags = ["--use-unique-names"] if layout == "shared" else []
    ok(run("fetch-to-extracted", *flags, registry.host, repo, "v1",
           str(store)))
    manifest = manifest_file(store, repo, "v1") if layout == "shared" \
        else store / "manifest.json"
    path = {"catalog": store / "catalog.json", "manifest": manifest,
            "config": config_file(store, manifest)}[target]
    plant(path, kind, tmp_path / "elsewhere.json")
    out = tmp_path / "out" / "x.tar"
    out.parent.mkdir()

    result = run("recreate-image", str(store), repo, "v1", str(out))
    failed(result, str(path))
    assert list(out.parent.iterdir()) == []


def test_verify_does_not_follow_a_link_out_of_the_directory(
        registry, repo, tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    manifest = manifest_file(store, repo, "v1")
    plant(manifest, "outside", tmp_path / "elsewhere.json")
    result = run("verify", str(store))
    assert result.returncode == 1, result.stderr.decode()
    assert f"{manifest.name}: unreadable" in result.stdout.decode()
    assert "not a regular file inside" in result.stdout.decode()


# --- 5: what a shared directory's layers may be, when fetching into it -------


@pytest.mark.parametrize("kind", ["fifo", "zero", "outside"])
def test_a_planted_layer_is_fetched_again_not_read(registry, repo, tmp_path,
                                                   kind):
    store, image = shared(registry, repo, tmp_path)
    planted = layer_tar(store, image.diff_ids[0])
    plant(planted, kind, tmp_path / "elsewhere.tar")
    other = ib.make_image([image.layers[0], _layer("app/v2")])
    registry.push_image(repo, other, "v2")

    ok(run("fetch-to-extracted", "--use-unique-names", registry.host, repo,
           "v2", str(store)))
    assert planted.is_file() and not planted.is_symlink()
    assert ib.sha256(planted.read_bytes()) == image.diff_ids[0]


# --- 6, 7, 13: names from a directory's files --------------------------------


def test_a_renamed_image_in_a_shared_directory_is_refused(registry, repo,
                                                          tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    manifest = manifest_file(store, repo, "v1")
    doc = json.loads(manifest.read_text())
    doc[0]["RepoTags"] = ["trusted/base:release"]
    manifest.write_text(json.dumps(doc))
    out = tmp_path / "x.tar"

    result = run("recreate-image", str(store), repo, "v1", str(out))
    failed(result, "names trusted/base:release", f"as {repo}:v1",
           "tampered")
    assert not out.exists()


def test_repo_tags_without_a_colon_are_refused_clearly(registry, repo,
                                                       tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    manifest = manifest_file(store, repo, "v1")
    doc = json.loads(manifest.read_text())
    doc[0]["RepoTags"] = [repo]
    manifest.write_text(json.dumps(doc))
    failed(run("recreate-image", str(store), repo, "v1",
               str(tmp_path / "x.tar")), "tampered")


def test_a_tarball_names_its_image_by_the_name_asked_for(registry, repo,
                                                         tmp_path, podman):
    """A docker-save tarball whose first name has no tag: the image found
    by its second name is saved under that one."""
    image = ib.make_image([_layer("t")])
    registry.push_image(repo, image, "v1")
    tar = tmp_path / "in.tar"
    ok(run("fetch-to-tarfile", registry.host, repo, "v1", str(tar)))
    edited = tmp_path / "edited.tar"
    with tarfile.open(tar) as source, tarfile.open(edited, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json":
                doc = json.load(data)
                doc[0]["RepoTags"] = ["untagged", *doc[0]["RepoTags"]]
                raw = json.dumps(doc).encode()
                member.size = len(raw)
                data = io.BytesIO(raw)
            target.addfile(member, data)
    out = tmp_path / "out.tar"
    ok(run("recreate-image", str(edited), repo, "v1", str(out)))
    assert podman.load(out) == [f"{registry.host}/{repo}:v1"]


ESCAPE = "\x1b]0;owned\x07\x1b[2J"


def test_names_from_a_directory_reach_the_terminal_without_controls(
        registry, repo, tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    catalog = json.loads((store / "catalog.json").read_text())
    catalog[f"evil{ESCAPE}"] = catalog[repo]
    (store / "catalog.json").write_text(json.dumps(catalog))
    manifest = manifest_file(store, repo, "v1")
    doc = json.loads(manifest.read_text())
    doc[0]["RepoTags"] = [f"x{ESCAPE}:v1"]
    manifest.write_text(json.dumps(doc))

    for image in ("other/image", repo):
        result = run("--verbose", "recreate-image", str(store), image, "v1",
                     str(tmp_path / "x.tar"))
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr
        assert "evil" in stderr or "x?]0;owned" in stderr, stderr
        assert "\x1b" not in stderr and "\x07" not in stderr, repr(stderr)
    result = run("inspect", str(store))
    assert "\x1b" not in result.stdout.decode() + result.stderr.decode()


# --- 3: an output inside its source ------------------------------------------


@pytest.mark.parametrize("inside", ["catalog.json", "sub/new.tar",
                                    "sub/../../shared/x.tar"])
def test_an_output_inside_the_source_is_refused(registry, repo, tmp_path,
                                                inside):
    store, _ = shared(registry, repo, tmp_path)
    (store / "sub").mkdir()
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    target = store / inside
    result = run("recreate-image", str(store), repo, "v1", str(target))
    assert result.returncode == 2, result.stderr.decode()
    assert "inside the source" in result.stderr.decode()
    after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before


# --- 12, 13, 14: names on the command line -----------------------------------


@pytest.mark.parametrize("registry_arg, image, tag, complaint", [
    (None, "app", "latest\n", "invalid tag"),
    (None, "app\n", "latest", "invalid image"),
    ("host:99999", "app", "v1", "not between 1 and 65535"),
    ("host:65536", "app", "v1", "not between 1 and 65535"),
    ("host:0", "app", "v1", "not between 1 and 65535"),
    ("[:::::]", "app", "v1", "not an IPv6 address"),
    ("a" * 300, "app", "v1", "invalid registry"),
    ("http://user:pw-SECRET@host:5000", "app", "v1", "--password-stdin"),
])
def test_malformed_names_are_a_usage_error(registry, tmp_path, registry_arg,
                                           image, tag, complaint):
    result = occystrap("fetch-to-tarfile", registry_arg or registry.host,
                       image, tag, str(tmp_path / "x.tar"))
    assert result.exit_code == 2, result.output
    assert complaint in result.stderr
    assert "SECRET" not in result.output and "internal" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_fetch_to_bundle_names_are_a_usage_error(tmp_path):
    result = occystrap("fetch-to-bundle", "host:0/app:1", str(tmp_path / "b"))
    assert result.exit_code == 2, result.output
    assert "port 0" in result.stderr


def test_an_unreadable_layer_is_a_clear_error(registry, repo, tmp_path):
    store, image = shared(registry, repo, tmp_path)
    layer = layer_tar(store, image.diff_ids[1])
    layer.chmod(0)
    out = tmp_path / "x.tar"
    result = run("recreate-image", str(store), repo, "v1", str(out),
                 unprivileged=True)
    failed(result, str(layer), "Permission denied")
    assert not out.exists()


def test_an_output_directory_that_cannot_be_entered(registry, repo, tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0)
    result = run("recreate-image", str(store), repo, "v1",
                 str(closed / "x.tar"), unprivileged=True)
    failed(result, str(closed), "Permission denied")


# --- 15: a layer of the wrong size -------------------------------------------


def test_a_bundle_layer_of_the_wrong_size_stops_at_once(registry, repo,
                                                        tmp_path,
                                                        monkeypatch):
    """An uncompressed layer grown into a 2 GiB sparse file: reading stops
    as soon as it passes the size its descriptor gives."""
    image = ib.make_image([ib.make_layer(
        [ib.file("plain", ib.random_bytes(30_000, "plain"))], "none")])
    registry.push_image(repo, image, "v1")
    bundle = tmp_path / "bundle"
    ok(run("fetch-to-bundle", f"{registry.host}/{repo}:v1", str(bundle)))
    blob = bundle / "blobs" / "sha256" / image.layers[0].digest.split(":")[1]
    os.truncate(blob, SPARSE)

    from occystrap import sources
    read = []
    real = sources.Source.chunks

    def counted(self, name):
        for chunk in real(self, name):
            read.append(len(chunk))
            yield chunk

    monkeypatch.setattr(sources.Source, "chunks", counted)
    out = tmp_path / "x.tar"
    result = occystrap("recreate-image", str(bundle), repo, "v1", str(out))
    assert_error(result, "more than the", "damaged")
    assert sum(read) < 4 << 20, sum(read)
    assert not out.exists()


# --- 2: a TARFILE that is not a regular file ----------------------------------


def _members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getnames()


@pytest.mark.parametrize("target", ["-", "/dev/stdout", "/dev/fd/1"])
def test_a_tarball_streams_to_standard_output(registry, repo, tmp_path,
                                              target):
    image = ib.make_image([_layer("s")])
    registry.push_image(repo, image, "v1")
    # As a shell's redirect leaves it: a file already open, some bytes in.
    out = tmp_path / "redirected.tar"
    with open(out, "wb") as f:
        result = run("fetch-to-tarfile", registry.host, repo, "v1", target,
                     stdout=f, cwd=tmp_path)
    ok(result)
    assert "manifest.json" in _members(out.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redirected.tar"]


def test_a_tarball_streams_into_a_pipe(registry, repo, tmp_path, podman):
    image = ib.make_image([_layer("p")])
    registry.push_image(repo, image, "v1")
    result = run("fetch-to-tarfile", registry.host, repo, "v1", "-")
    ok(result)
    out = tmp_path / "piped.tar"
    out.write_bytes(result.stdout)
    assert podman.load(out) == [f"{registry.host}/{repo}:v1"]


def test_recreate_streams_into_a_fifo_and_a_device(registry, repo, tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = tmp_path / "received.tar"
    reader = subprocess.Popen(["cat", str(fifo)],
                              stdout=open(received, "wb"))
    try:
        ok(run("recreate-image", str(store), repo, "v1", str(fifo)))
        reader.wait(timeout=HANG)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert fifo.is_fifo()
    assert "manifest.json" in _members(received.read_bytes())
    # A link to a device: the device is written, the link stays.
    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    ok(run("recreate-image", str(store), repo, "v1", str(null)))
    assert null.is_symlink() and null.is_char_device()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_tarball_is_not_written_to_a_terminal(registry, repo, tmp_path):
    import pty
    registry.push_image(repo, ib.make_image([_layer("t")]), "v1")
    leader, follower = pty.openpty()
    try:
        result = run("fetch-to-tarfile", registry.host, repo, "v1", "-",
                     stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    failed(result, "is a terminal")


# --- 5: a layer directory that leads out of DIR -------------------------------


def test_a_linked_layer_directory_is_not_written_through(registry, repo,
                                                         tmp_path):
    store, image = shared(registry, repo, tmp_path)
    directory = layer_tar(store, image.diff_ids[0]).parent
    shutil.rmtree(directory)
    outside = tmp_path / "outside"
    outside.mkdir()
    directory.symlink_to(outside)
    registry.push_image(repo, ib.make_image([image.layers[0],
                                             _layer("app/v3")]), "v3")

    result = run("fetch-to-extracted", "--use-unique-names", registry.host,
                 repo, "v3", str(store))
    failed(result, str(directory), "tampered")
    assert list(outside.iterdir()) == []


# --- 1: a failed fetch and the layers another run catalogued ------------------


@pytest.fixture
def proxy(registry):
    from faultproxy import FaultProxy
    with FaultProxy(registry.url) as running:
        yield running


def _slow(proxy, layer: ib.Layer) -> None:
    from faultproxy import Trickle
    proxy.add(Trickle(f"/blobs/{layer.digest}", piece=8192, interval=0.1))


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
           "OCCYSTRAP_RETRY_DELAY": "0"}
    env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
    return subprocess.Popen(
        [sys.executable, "-m", "occystrap", "--timeout", "30", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _until(condition, what: str, process: subprocess.Popen | None = None,
           timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the run ended first: "
                                 f"{process.communicate()[1].decode()}")
        assert time.monotonic() < deadline, f"{what}: never happened"
        time.sleep(0.05)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=HANG)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr.decode()


def test_a_failed_fetch_keeps_layers_another_run_catalogued(
        registry, proxy, repo, tmp_path):
    base = _layer("base")
    big = _layer("big", 600_000)
    registry.push_image(repo, ib.make_image([base, big]), "slow")
    quick = ib.make_image([base, _layer("quick")])
    registry.push_image(repo, quick, "quick")
    _slow(proxy, big)
    store = tmp_path / "shared"
    # Run A starts the directory; its base layer lands, its big one crawls.
    first = _start("fetch-to-extracted", "--use-unique-names", proxy.url,
                   repo, "slow", str(store))
    try:
        _until(lambda: layer_tar(store, base.diff_id).exists(),
               "run A's base layer", first)
        # Run B finds the base layer there, and catalogues its image.
        ok(run("fetch-to-extracted", "--use-unique-names", registry.host,
               repo, "quick", str(store)))
        first.send_signal(signal.SIGINT)
    finally:
        code, stderr = _finish(first)
    assert code == 130, stderr
    ok(run("recreate-image", str(store), repo, "quick",
           str(tmp_path / "quick.tar")))
    assert _layer_dirs(store) == {d.split(":")[1] for d in quick.diff_ids}


def _layer_dirs(store: Path) -> set[str]:
    return {p.name for p in store.iterdir() if (p / "layer.tar").exists()}


# --- 9, 10: signals, kills, and what they leave -------------------------------


def _temporaries(*places: Path) -> list[Path]:
    return [p for place in places for p in place.rglob(".*.tmp")]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("command, flags", [
    ("fetch-to-tarfile", []),
    ("fetch-to-extracted", ["--use-unique-names"]),
])
def test_sigterm_and_sighup_clean_up_as_ctrl_c_does(
        registry, proxy, repo, tmp_path, number, command, flags):
    big = _layer("big", 600_000)
    image = ib.make_image([_layer("small"), big])
    registry.push_image(repo, image, "v1")
    _slow(proxy, big)
    out = tmp_path / "out" / ("image.tar" if flags == [] else "shared")
    out.parent.mkdir()
    process = _start(command, *flags, proxy.url, repo, "v1", str(out))
    try:
        _until(lambda: any(s.sent for s in proxy.requests(big.digest)),
               "the download", process)
        time.sleep(0.3)
        process.send_signal(number)
    finally:
        code, stderr = _finish(process)
    assert code == 128 + number, stderr
    assert f"Interrupted by {signal.Signals(number).name}" in stderr
    assert "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("command, flags, existing", [
    ("fetch-to-tarfile", [], False),
    ("fetch-to-extracted", ["--use-unique-names"], False),
    # 10: an empty directory a killed run filled is empty again to a rerun.
    ("fetch-to-extracted", [], True),
])
def test_the_next_run_removes_what_a_killed_run_left(
        registry, proxy, repo, tmp_path, command, flags, existing):
    big = _layer("big", 600_000)
    image = ib.make_image([_layer("small"), big])
    registry.push_image(repo, image, "v1")
    _slow(proxy, big)
    out = tmp_path / "out" / ("image.tar" if command == "fetch-to-tarfile"
                              else "dir")
    out.parent.mkdir()
    if existing:
        out.mkdir()
    process = _start(command, *flags, proxy.url, repo, "v1", str(out))
    try:
        _until(lambda: any(s.sent > 100_000
                           for s in proxy.requests(big.digest)),
               "the download", process)
        process.send_signal(signal.SIGKILL)
    finally:
        _finish(process)
    assert _temporaries(out.parent), "the kill left nothing to clean up"

    ok(run(command, *flags, registry.host, repo, "v1", str(out)))
    assert _temporaries(out.parent) == []
    if command == "fetch-to-extracted":
        ok(run("recreate-image", str(out), repo, "v1",
               str(tmp_path / "check.tar")))


def test_a_live_runs_temporaries_are_left_alone(registry, proxy, repo,
                                                tmp_path):
    big = _layer("big", 600_000)
    registry.push_image(repo, ib.make_image([big]), "slow")
    registry.push_image(repo, ib.make_image([_layer("q")]), "quick")
    _slow(proxy, big)
    store = tmp_path / "shared"
    slow = _start("fetch-to-extracted", "--use-unique-names", proxy.url,
                  repo, "slow", str(store))
    try:
        _until(lambda: _temporaries(store), "run A's temporary", slow)
        ok(run("fetch-to-extracted", "--use-unique-names", registry.host,
               repo, "quick", str(store)))
        assert _temporaries(store)
    finally:
        code, stderr = _finish(slow)
    assert code == 0, stderr
    ok(run("recreate-image", str(store), repo, "slow",
           str(tmp_path / "slow.tar")))


# --- 11: the lock -------------------------------------------------------------


def test_the_lock_cannot_be_taken_by_a_reader(registry, repo, tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    lock = store / ".occystrap.lock"
    # Another user's directory, which we (root without its powers) may
    # read but not write.
    os.chown(store, 12345, 12345)
    os.chown(lock, 12345, 12345)
    store.chmod(0o755)
    command = [sys.executable, "-c",
               "import fcntl, sys\n"
               "f = open(sys.argv[1], 'rb')\n"
               "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
               str(lock)]
    if os.geteuid() == 0:
        command = [_tool("setpriv"), "--bounding-set=-all", *command]
    result = subprocess.run(command, capture_output=True, timeout=HANG)
    assert result.returncode != 0, "a reader took the lock"
    assert b"PermissionError" in result.stderr, result.stderr


def test_a_run_says_what_lock_it_waits_for(registry, repo, tmp_path):
    store, _ = shared(registry, repo, tmp_path)
    registry.push_image(repo, ib.make_image([_layer("w")]), "v2")
    with open(store / ".occystrap.lock", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        process = _start("fetch-to-extracted", "--use-unique-names",
                         registry.host, repo, "v2", str(store))
        try:
            ready, _, _ = select.select([process.stderr], [], [], HANG)
            assert ready, "nothing said while waiting for the lock"
            line = process.stderr.readline().decode()
            assert "waiting for the lock" in line, line
            assert str(store / ".occystrap.lock") in line
            assert f"process {os.getpid()}" in line
        except BaseException:
            process.kill()
            raise
        fcntl.flock(held, fcntl.LOCK_UN)
    code, stderr = _finish(process)
    assert code == 0, stderr
