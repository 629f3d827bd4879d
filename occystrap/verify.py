"""Checks every byte of a source offline, and names every file that is wrong.

The metadata (index, manifests, configs, catalogs) is read and checked by
the source's scan; here every layer is streamed once, in parallel, hashed
as stored and, inflated, against the config's diff_id, and checked to be
a tar. Memory stays flat whatever the size: a chunk at a time per thread.
Nothing is ever written.
"""

import concurrent.futures
import dataclasses
import logging
import re
import threading
from typing import Callable, Iterator

from occystrap import layout, store
from occystrap.compression import decompress
from occystrap.digest import Hasher
from occystrap.errors import Cancelled, LayerError, OccystrapError
from occystrap.inputs.offline import (
    MISSING, NOT_A_TAR, PARTIAL, TRUNCATED, UNKNOWN, UNREADABLE,
    UNREFERENCED, WRONG_DIGEST, FileMissing, Finding, SourceImage,
    StoredLayer)
from occystrap.sources import Source
from occystrap.tarcheck import check_tar

LOG = logging.getLogger(__name__)
DEFAULT_PARALLEL = 4
# Left behind by an interrupted write: hidden temporaries and partial blobs.
_PARTIAL = re.compile(r"(^|/)\.[^/]+\.(tmp|old)(/|$)|\.partial$")
# fetch-to-tarfile's filler members, where a layer turned out smaller or
# larger than planned; harmless by design.
_FILLER = ".occystrap-unused-"
# What --expand adds beside a layer.tar: the layer unpacked.
_EXPANDED_LAYER = "layer"


@dataclasses.dataclass(frozen=True)
class Planned:
    """Verification of `files` files, `total` bytes in all, begins."""

    files: int
    total: int


@dataclasses.dataclass(frozen=True)
class BytesChecked:
    path: str
    count: int


@dataclasses.dataclass(frozen=True)
class FileChecked:
    path: str


Event = Planned | BytesChecked | FileChecked
Callback = Callable[[Event], None]


def ignore(event: Event) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Report:
    images: tuple[SourceImage, ...]
    problems: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    files_checked: int
    bytes_checked: int

    @property
    def good(self) -> bool:
        return not self.problems


def verify(source: Source, parallel: int = DEFAULT_PARALLEL,
           report: Callback = ignore) -> Report:
    scan = source.scan()
    problems = list(scan.findings)
    cut = source.files.truncated()
    layers: dict[str, tuple[StoredLayer, list[str]]] = {}
    for image in scan.images:
        for layer in image.layers:
            layers.setdefault(layer.path, (layer, []))[1].append(image.label)
    for name, there in cut.items():
        if name not in layers and not any(p.file == name for p in problems):
            problems.append(Finding(
                name, TRUNCATED, f"the archive ends after {there} of its "
                f"{source.files.names()[name]} bytes"))
    sizes = source.files.names()
    jobs = sorted(layers.values(),
                  key=lambda job: -(sizes.get(job[0].path) or 0))
    total = sum(sizes.get(layer.path) or 0 for layer, _ in jobs)
    report(Planned(len(jobs), total))
    stop = threading.Event()

    def check(job: tuple[StoredLayer, list[str]]) -> list[Finding]:
        layer, labels = job
        try:
            return _check_layer(source, layer, ", ".join(labels), cut,
                                stop, report)
        finally:
            report(FileChecked(layer.path))

    pool = concurrent.futures.ThreadPoolExecutor(
        max(1, min(parallel, len(jobs) or 1)),
        thread_name_prefix="occystrap-verify")
    try:
        for found in pool.map(check, jobs):
            problems += found
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    # Without a readable index every blob looks unused: say nothing then.
    blind = any(f.file in (layout.INDEX, layout.DOCKER_MANIFEST)
                for f in scan.findings)
    warnings = _stray_files(source, scan.used | set(layers), scan.images,
                            blind)
    return Report(scan.images, tuple(problems), tuple(warnings), len(jobs),
                  total)


def _check_layer(source: Source, layer: StoredLayer, image: str,
                 cut: dict[str, int], stop: threading.Event,
                 report: Callback) -> list[Finding]:
    path = layer.path

    def finding(what: str, detail: str) -> list[Finding]:
        return [Finding(path, what, detail, image)]

    if path in cut:
        return finding(TRUNCATED, f"the archive ends after {cut[path]} of "
                       f"its {source.files.names()[path]} bytes")
    try:
        chunks = source.chunks(path)
    except FileMissing:
        return finding(MISSING, "the layer is not in the source")
    except OccystrapError as e:
        return finding(UNREADABLE, str(e))
    algorithm = layer.digest.algorithm if layer.digest else "sha256"
    stored = Hasher(algorithm)
    # A plain layer.tar's bytes are its content: hash them once.
    content = Hasher(layer.diff_id.algorithm) \
        if layer.diff_id and layer.diff_id != layer.digest else None

    def counted() -> Iterator[bytes]:
        for chunk in chunks:
            if stop.is_set():
                raise Cancelled("cancelled")
            stored.update(chunk)
            report(BytesChecked(path, len(chunk)))
            yield chunk

    raw = counted()
    tar_error: LayerError | None = None
    try:
        for chunk in check_tar(decompress(raw, path), path):
            if content is not None:
                content.update(chunk)
    except LayerError as e:
        tar_error = e
        for _ in raw:  # the stored digest still tells the cause best
            pass
    except OccystrapError as e:
        if isinstance(e, Cancelled):
            raise
        return finding(UNREADABLE, str(e))
    if layer.size_promised and layer.size is not None \
            and stored.size < layer.size:
        return finding(TRUNCATED, f"{stored.size} bytes, but its descriptor "
                       f"says {layer.size}")
    if layer.digest is not None and stored.digest() != layer.digest:
        if tar_error is not None and "truncated" in str(tar_error):
            return finding(TRUNCATED, f"{tar_error}; expected {layer.digest}")
        return finding(WRONG_DIGEST, f"expected {layer.digest}, got "
                       f"{stored.digest()}")
    if tar_error is not None:
        what = TRUNCATED if "truncated" in str(tar_error) else NOT_A_TAR
        return finding(what, str(tar_error))
    if content is not None and layer.diff_id is not None \
            and content.digest() != layer.diff_id:
        return finding(WRONG_DIGEST, f"its content hashes to "
                       f"{content.digest()}, but the config's diff_id is "
                       f"{layer.diff_id}")
    return []


def _stray_files(source: Source, used: frozenset[str] | set[str],
                 images: tuple[SourceImage, ...],
                 blind: bool) -> list[Finding]:
    """Files no image accounts for: partial writes, strays, old blobs."""
    expanded = {layer.path.rpartition("/")[0] + f"/{_EXPANDED_LAYER}/"
                for image in images for layer in image.layers
                if "/" in layer.path}
    # --expand builds each image's filesystem beside its manifest file.
    expanded |= {name.removesuffix(".json") + "/" for name in used
                 if name.startswith("manifest") and name.endswith(".json")}
    warnings = []
    for name in source.files.names():
        if name in used or name in (store.LOCK, layout.LOCK) \
                or name.startswith(_FILLER) \
                or any(name.startswith(tree) for tree in expanded):
            continue
        if _PARTIAL.search(name):
            warnings.append(Finding(name, PARTIAL, "left by an interrupted "
                                    "write; a rerun of the fetch resumes or "
                                    "removes it"))
        elif name.startswith(f"{layout.BLOBS}/"):
            if not blind:
                warnings.append(Finding(name, UNREFERENCED, "a blob no "
                                        "image in the source uses"))
        else:
            warnings.append(Finding(name, UNKNOWN, "not part of any image"))
    return warnings
