"""Speed and memory of occystrap against skopeo (+ umoci), on loopback.

Starts the real distribution registry in a temporary directory, pushes a
deterministic 8-layer image (1 GiB as tar, half random and half
compressible content), a 2 GiB single-layer image and a root filesystem
made of this machine's own trees, then runs each tool alternately
(A B A B ...) and prints median wall time, the ratio, and peak RSS. Every
output is loaded or checked by another tool afterwards, so speed can never
come from skipping work. `verify` of a bundle is timed against
`sha256sum -c` over its blobs. Each push goes to a registry started empty
for that run alone, so neither tool can skip or mount a blob.

    python benchmarks/bench.py [--runs 3] [--cases tarfile,bundle,...]
"""

import argparse
import concurrent.futures
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import imagebuild as ib  # noqa: E402
from conftest import Podman, start_registry  # noqa: E402

MIB = 1 << 20
CASES = ("tarfile", "bundle", "push", "pushtar", "verify", "expand", "shared")
# One generator for all the words: a new Random(7) per word made 4096 copies
# of one word, text that deflates to almost nothing.
_WORD_SOURCE = random.Random(7)
WORDS = [b"%x" % _WORD_SOURCE.getrandbits(40) for _ in range(4096)]


def compressible(size: int, seed: int) -> bytes:
    """Text that gzip shrinks to about 0.41 of its size at level 6 (0.47
    at level 1), near what it does to binaries and documentation."""
    rng = random.Random(seed)
    out = io.BytesIO()
    while out.tell() < size:
        out.write(b" ".join(rng.choices(WORDS, k=12)) + b"\n")
    return out.getvalue()[:size]


def random_content(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    # randbytes takes at most 256 MiB at a time.
    return b"".join(rng.randbytes(min(64 * MIB, size - done))
                    for done in range(0, size, 64 * MIB))


def layer_tar(parts: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in parts:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1600000000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_layer(args: tuple[int, int, int]) -> ib.Layer:
    index, random_size, text_size = args
    level = 6 if random_size <= 256 * MIB else 1  # the 2 GiB image is for memory
    tar = layer_tar([
        (f"layer{index}/random.bin", random_content(random_size, index)),
        (f"layer{index}/text.txt", compressible(text_size, index)),
    ])
    squeezer = zlib.compressobj(level, zlib.DEFLATED, 31)
    blob = squeezer.compress(tar) + squeezer.flush()
    return ib.Layer(tar, blob, ib.DOCKER_LAYER_GZIP, ib.sha256(blob), ib.sha256(tar), len(blob))


# Real trees from this machine stand in for a distribution's root filesystem:
# tens of thousands of entries, with symlinks and hardlinks as they are.
ROOTFS_LAYERS = [
    ["etc", "usr/lib/python3.11"],
    ["usr/share/zoneinfo", "usr/share/perl", "usr/lib/x86_64-linux-gnu/perl-base"],
    ["usr/share/doc"],
    ["usr/include"],
]


def rootfs_layer(tops: list[str]) -> ib.Layer:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for top in tops:
            if os.path.isdir("/" + top):
                tar.add("/" + top, arcname=top)
    data = buffer.getvalue()
    blob = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob = blob.compress(data) + blob.flush()
    return ib.Layer(data, blob, ib.DOCKER_LAYER_GZIP, ib.sha256(blob), ib.sha256(data),
                    len(blob))


def build_images(with_big: bool, cases: set[str]) -> dict[str, ib.Image]:
    """Only the images the chosen cases use: building them takes a while."""
    images = {}
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        if cases & {"tarfile", "bundle", "push", "pushtar", "verify", "shared"}:
            eight = pool.map(gzip_layer, [(i, 64 * MIB, 64 * MIB) for i in range(8)])
            images["8x128MiB"] = ib.make_image(list(eight))
        if with_big and "tarfile" in cases:
            big = pool.submit(gzip_layer, (100, 1024 * MIB, 1024 * MIB))
            images["1x2GiB"] = ib.make_image([big.result()])
        if "expand" in cases:
            rootfs = pool.map(rootfs_layer, ROOTFS_LAYERS)
            images["rootfs"] = ib.make_image(list(rootfs))
    return images


def push_images(url: str, with_big: bool, cases: set[str]) -> None:
    images = build_images(with_big, cases)
    for name, image in images.items():
        ib.push_image(url, "bench/" + name.lower(), image, "v1")
        # What the layers hold shows here: how much of them compresses.
        tar = sum(len(layer.tar) for layer in image.layers) / MIB
        blobs = sum(layer.size for layer in image.layers) / MIB
        print(f"  {name.lower()}: {len(image.layers)} layers, {tar:.1f} MiB of tar "
              f"in {blobs:.1f} MiB of gzip", flush=True)
    if "8x128MiB" in images:
        # A second image sharing the first seven layers, for the merged case.
        eight = images["8x128MiB"]
        sibling = ib.make_image([*eight.layers[:7], gzip_layer((50, 8 * MIB, 8 * MIB))])
        ib.push_image(url, "bench/8x128mib", sibling, "v2")


def measure(command: list[str], env: dict | None = None) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes) and CPU seconds of one run of command."""
    # Earlier runs' dirty pages must not be written back on this run's time.
    os.sync()
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{error}")
    return elapsed, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def compare(title: str, commands: dict[str, callable], runs: int) -> dict:
    results = {name: [] for name in commands}
    for _ in range(runs):
        for name, make in commands.items():
            results[name].append(measure(make()))
    names = list(commands)
    medians = {n: statistics.median(t for t, _, _ in results[n]) for n in names}
    peaks = {n: max(r for _, r, _ in results[n]) for n in names}
    cpu = {n: statistics.median(c for _, _, c in results[n]) for n in names}
    ours, peer = names
    print(f"\n{title}")
    for n in names:
        times = " ".join(f"{t:.2f}" for t, _, _ in results[n])
        print(f"  {n:<32} median {medians[n]:6.2f}s  CPU {cpu[n]:6.2f}s  "
              f"peak RSS {peaks[n] / MIB:6.1f} MiB  (runs: {times})")
    print(f"  ratio {ours}/{peer}: {medians[ours] / medians[peer]:.2f}")
    return {"ratio": medians[ours] / medians[peer], "peak": peaks[ours],
            "peer": medians[peer]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=None,
                        help="pass -j N to occystrap")
    parser.add_argument("--skip-big", action="store_true",
                        help="skip the 2 GiB single-layer image")
    parser.add_argument("--expand-dir", default="/dev/shm" if os.path.isdir("/dev/shm")
                        else tempfile.gettempdir(),
                        help="where the --expand case writes (default: tmpfs)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases to run (default: all of {','.join(CASES)})")
    options = parser.parse_args()
    options.cases = set(options.cases.split(","))
    if options.cases - set(CASES):
        parser.error(f"unknown case(s) {', '.join(sorted(options.cases - set(CASES)))}; "
                     f"choose from {', '.join(CASES)}")
    occystrap = occystrap_command()
    print(f"occystrap under test: {' '.join(occystrap)}")
    if options.parallel:
        occystrap += ["--parallel", str(options.parallel)]
    work = Path(tempfile.mkdtemp(prefix="occystrap-bench-"))
    # What push remembers of compressed layers stays with the benchmark.
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    try:
        with start_registry(work / "registry") as registry:
            print("building and pushing images ...", flush=True)
            # In a separate process: a child forked from a parent holding
            # gigabytes of image data would report that as its peak RSS.
            builder = multiprocessing.get_context("spawn").Process(
                target=push_images, args=(registry.url, not options.skip_big, options.cases))
            builder.start()
            builder.join()
            if builder.exitcode != 0:
                raise SystemExit("building the benchmark images failed")
            run_cases(registry, occystrap, work, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def occystrap_command() -> list[str]:
    """occystrap as a user runs it: the command installed beside this
    Python (tox installs this checkout there, its bytecode compiled as pip
    compiles it), else this checkout's modules. Run from the checkout in a
    PYTHONDONTWRITEBYTECODE environment, every run would compile every
    module first: 0.06 s a push here, which no installed copy spends."""
    installed = Path(sys.executable).parent / "occystrap"
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", "occystrap"]


def run_cases(registry, occystrap, work: Path, options) -> None:
    skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]
    out = work / "out"
    out.mkdir()
    summary = []
    names = ["8x128mib"] + ([] if options.skip_big else ["1x2gib"])
    if "tarfile" not in options.cases:
        names = []
    for name in names:
        repo = f"bench/{name}"
        ours_tar, peer_tar = out / f"{name}-occystrap.tar", out / f"{name}-skopeo.tar"

        # Both start with no output: replacing a 1 GiB file costs its
        # unlink (and, with the discard mount option, a TRIM) on the clock.
        def ours():
            ours_tar.unlink(missing_ok=True)
            return [*occystrap, "fetch-to-tarfile", registry.host, repo, "v1", str(ours_tar)]

        def peer():
            peer_tar.unlink(missing_ok=True)
            return [*skopeo, f"docker://{registry.host}/{repo}:v1",
                    f"docker-archive:{peer_tar}:{repo}:v1"]

        result = compare(f"fetch-to-tarfile {name}", {
            "occystrap fetch-to-tarfile": ours,
            "skopeo copy docker-archive:": peer,
        }, options.runs)
        summary.append((f"tarfile {name}", result))
        check_loads(work, ours_tar, peer_tar)

    source = f"{registry.host}/bench/8x128mib:v1"
    if "bundle" in options.cases:
        summary.append(("bundle 8x128mib", compare_bundle(source, occystrap, out, options)))
    if "push" in options.cases:
        summary.append(("push bundle", compare_push_bundle(source, occystrap, work, options)))
    if "pushtar" in options.cases:
        summary.append(("push tarball", compare_push_tarball(registry.host, occystrap, work,
                                                             options)))
    if "verify" in options.cases:
        summary.append(("verify bundle", compare_verify(registry, occystrap, out, options)))
    if "expand" in options.cases:
        result = compare_expand(registry, occystrap, options)
        if result:
            summary.append(("expand rootfs", result))
    if "shared" in options.cases:
        shared_directory(registry, occystrap, out)

    print("\nsummary")
    for title, result in summary:
        print(f"  {title:<22} ratio {result['ratio']:.2f}  occystrap peak RSS "
              f"{result['peak'] / MIB:.1f} MiB")


def compare_verify(registry, occystrap, out: Path, options) -> dict:
    # verify reads every blob, inflates every layer and hashes it again to
    # its diff_id; sha256sum only hashes the stored blobs, once, on one core.
    bundle = out / "bundle"
    subprocess.run([*occystrap, "fetch-to-bundle", f"{registry.host}/bench/8x128mib:v1",
                    str(bundle)], capture_output=True, check=True)
    blobs = bundle / "blobs" / "sha256"
    result = compare("verify bundle 8x128mib", {
        "occystrap verify": lambda: [*occystrap, "verify", str(bundle)],
        "sha256sum -c over its blobs": lambda: [
            "sh", "-c", f'cd {blobs} && for f in *; do echo "$f  $f"; done '
                        "| sha256sum -c --quiet"],
    }, options.runs)
    shutil.rmtree(bundle)
    return result


def compare_expand(registry, occystrap, options) -> dict | None:
    skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]

    repo = "bench/rootfs"
    # Creating tens of thousands of files on this kind of virtual disk takes
    # two to three times longer on some runs than on others; tmpfs shows
    # the tools' own cost. Both write to the same place.
    unpack = Path(tempfile.mkdtemp(prefix="occystrap-bench-", dir=options.expand_dir))
    expanded, oci, bundle = unpack / "expanded", unpack / "oci", unpack / "bundle"

    def ours_expand():
        shutil.rmtree(expanded, ignore_errors=True)
        return [*occystrap, "fetch-to-extracted", "--expand", registry.host, repo, "v1",
                str(expanded)]

    def peer_expand():
        shutil.rmtree(oci, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
        script = (f"{' '.join(skopeo)} docker://{registry.host}/{repo}:v1 oci:{oci}:v1 && "
                  f"umoci unpack --image {oci}:v1 {bundle}")
        return ["sh", "-c", script]

    result = None
    if expand_supported(occystrap):
        result = compare(f"fetch-to-extracted --expand rootfs (outputs in {options.expand_dir})", {
            "occystrap --expand": ours_expand,
            "skopeo copy oci: + umoci unpack": peer_expand,
        }, options.runs)
        print("  (--expand unpacks in two worker processes; peak RSS is the largest of "
              "the three)")
    shutil.rmtree(unpack, ignore_errors=True)
    return result


def shared_directory(registry, occystrap, out: Path) -> None:
    repo = "bench/8x128mib"
    merged = out / "merged"
    said = []
    for tag in ("v1", "v2"):
        done = subprocess.run([*occystrap, "fetch-to-extracted", "--use-unique-names",
                               registry.host, repo, tag, str(merged)],
                              capture_output=True, text=True, check=True)
        said.append(done.stderr.strip().splitlines()[-1])
    print("\nshared directory: the second image shares 7 of its 8 layers")
    for line in said:
        print(f"  {line}")


SKOPEO = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
          "--dest-tls-verify=false"]


def compare_bundle(source: str, occystrap, out: Path, options) -> dict:
    """fetch-to-bundle against skopeo copy into its own OCI layout.

    Both keep the registry's blobs as they are and sync each one to disk.
    """
    ours, peer = out / "bundle-occystrap", out / "bundle-skopeo"

    def ours_command():
        shutil.rmtree(ours, ignore_errors=True)
        return [*occystrap, "fetch-to-bundle", source, str(ours)]

    def peer_command():
        shutil.rmtree(peer, ignore_errors=True)
        return [*SKOPEO, f"docker://{source}", f"oci:{peer}:v1"]

    result = compare("fetch-to-bundle 8x128mib", {
        "occystrap fetch-to-bundle": ours_command,
        "skopeo copy oci:": peer_command,
    }, options.runs)
    tarball = out / "bundle-occystrap.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(ours), "."], check=True)
    check_loads(out, tarball)
    for path in (ours, peer, tarball):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    return result


class FreshRegistries:
    """A new, empty registry for each call; the one before is stopped."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.count = 0
        self.running: contextlib.ExitStack | None = None
        self.host = ""

    def next(self) -> str:
        self.stop()
        self.count += 1
        self.running = contextlib.ExitStack()
        registry = self.running.enter_context(
            start_registry(self.work / f"far{self.count}"))
        self.host = registry.host
        return self.host

    def stop(self) -> None:
        if self.running is not None:
            self.running.close()
            self.running = None
            shutil.rmtree(self.work / f"far{self.count}", ignore_errors=True)


def compare_push(title: str, ours: list[str], peer: list[str], work: Path,
                 options) -> tuple[dict, str]:
    """Time `ours REGISTRY` against `peer docker://REGISTRY/bench/8x128mib:v1`,
    each into a registry of its own; the last of ours stays up to check."""
    registries = FreshRegistries(work)
    try:
        result = compare(title, {
            "occystrap push": lambda: [*ours, registries.next()],
            "skopeo copy docker://": lambda: [
                *peer, f"docker://{registries.next()}/bench/8x128mib:v1"],
        }, options.runs)
        # What ours pushed, read back and checked by skopeo.
        registries.next()
        host = registries.host
        subprocess.run([*ours, host], check=True, capture_output=True)
        copied = work / "pushed-back"
        subprocess.run([*SKOPEO, f"docker://{host}/bench/8x128mib:v1", f"oci:{copied}:v1"],
                       check=True)
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{host}/bench/8x128mib:v1"],
                             check=True, capture_output=True).stdout
        shutil.rmtree(copied)
    finally:
        registries.stop()
    return result, "sha256:" + hashlib.sha256(raw).hexdigest()


def compare_push_bundle(source: str, occystrap, work: Path, options) -> dict:
    """push of a bundle, byte for byte, against skopeo copy oci: docker://.

    skopeo reads its own OCI layout of the same image (its oci: transport
    skips the Docker media types a bundle keeps); both send the stored
    blobs as they are.
    """
    bundle, layout = work / "push-bundle", work / "push-oci"
    subprocess.run([*occystrap, "fetch-to-bundle", source, str(bundle)],
                   check=True, capture_output=True)
    subprocess.run([*SKOPEO, f"docker://{source}", f"oci:{layout}:v1"], check=True)
    result, pushed = compare_push(
        "push bundle 8x128mib into an empty registry",
        [*occystrap, "push", str(bundle)], [*SKOPEO, f"oci:{layout}:v1"], work, options)
    index = json.loads((bundle / "index.json").read_text())
    kept = {entry["digest"] for entry in index["manifests"]}
    print(f"  manifest digest kept: {pushed in kept} ({pushed})")
    if pushed not in kept:
        raise SystemExit("push changed the manifest's digest")
    shutil.rmtree(bundle)
    shutil.rmtree(layout)
    return result


def compare_push_tarball(host: str, occystrap, work: Path, options) -> dict:
    """push of a docker-save tarball, compressing every layer, against
    skopeo copy docker-archive: docker://."""
    tarball = work / "push.tar"
    subprocess.run([*occystrap, "fetch-to-tarfile", host, "bench/8x128mib", "v1", str(tarball)],
                   check=True, capture_output=True)
    result, pushed = compare_push(
        "push docker-save tarball 8x128mib into an empty registry",
        [*occystrap, "push", str(tarball)], [*SKOPEO, f"docker-archive:{tarball}"],
        work, options)
    print(f"  pushed {pushed}; read back and checked by skopeo")
    push_tarball_floor(host, occystrap, tarball, work, options, result["peer"])
    tarball.unlink()
    return result


# The work on a tarball's layers that no push of it can skip: SHA-256 of
# every layer tar (its diff_id) and deflating it, through occystrap's own
# gzip seam at push's level; this process's share of the layers.
_HASH_AND_DEFLATE = """
import hashlib, json, sys, tarfile
from occystrap import zlibfast
from occystrap.outputs.push import GZIP_LEVEL
tarball, part, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with tarfile.open(tarball) as outer:
    layers = json.load(outer.extractfile("manifest.json"))[0]["Layers"]
    for name in layers[part::parts]:
        member = outer.extractfile(name)
        digest = hashlib.sha256()
        def chunks():
            while block := member.read(1 << 20):
                digest.update(block)
                yield block
        for _ in zlibfast.gzip_chunks(chunks(), GZIP_LEVEL):
            pass
"""


# Side processes that share the layers' hashing and deflating.
_FLOOR_WORKERS = 2


def push_tarball_floor(host: str, occystrap, tarball: Path, work: Path, options,
                       peer: float) -> None:
    """Print what no push of the tarball can beat on this machine.

    The registry's part is the push of the same image's compressed layers
    as stored (a bundle: nothing to compress), which hashes every one as it
    reads it, as a tarball push hashes what it compresses. To it comes the
    work on the layer tars a tarball push cannot skip: SHA-256 against each
    diff_id, and deflating them. Here that work runs beside the bundle's
    push in two processes of its own at the lowest priority, so it takes
    from the push only what it must.
    """
    bundle = work / "floor-bundle"
    subprocess.run([*occystrap, "fetch-to-bundle", f"{host}/bench/8x128mib:v1", str(bundle)],
                   check=True, capture_output=True)
    registries = FreshRegistries(work)
    times = []
    try:
        for _ in range(options.runs):
            target = registries.next()
            started = time.monotonic()
            workers = [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c",
                                         _HASH_AND_DEFLATE, str(tarball), str(part),
                                         str(_FLOOR_WORKERS)])
                       for part in range(_FLOOR_WORKERS)]
            subprocess.run([*occystrap, "push", str(bundle), target], check=True,
                           capture_output=True)
            if any(worker.wait() for worker in workers):
                raise SystemExit("hashing and deflating beside the push failed")
            times.append(time.monotonic() - started)
    finally:
        registries.stop()
        shutil.rmtree(bundle)
    floor = statistics.median(times)
    runs = " ".join(f"{t:.2f}" for t in times)
    print(f"  floor here: the same layers pushed as stored, with only the hashing and "
          f"deflating a tarball push must do beside them: median {floor:.2f}s, ratio "
          f"{floor / peer:.2f} (runs: {runs})")


def expand_supported(occystrap: list[str]) -> bool:
    help_text = subprocess.run([*occystrap, "fetch-to-extracted", "--help"],
                               capture_output=True, text=True).stdout
    return "--expand" in help_text


def check_loads(work: Path, *tarballs: Path) -> None:
    """Load each output with podman, so no tool gets credit for skipping work."""
    root = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))
    try:
        (root / "tmp").mkdir()
        podman = Podman(shutil.which("podman"), root)
        for tarball in tarballs:
            names = podman.load(tarball)
            print(f"  podman load {tarball.name}: {', '.join(names)}")
            podman.run("rmi", "--all", "--force")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
