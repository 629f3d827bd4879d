"""The one streaming pipeline: input -> (inflate -> check) -> writer.

The writer chooses the flow: the layer flow inflates each blob, checks it
is tar and hashes it to the config's diff_id; the blob flow passes the
stored bytes through untouched, checked against their digest by the input.
Layers travel in parallel, each on its own thread: fetching, inflating,
hashing and writing all release the GIL, so two cores stay busy.
"""

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from typing import Callable, Iterable, Iterator, cast

from occystrap import progress
from occystrap.compression import opened
from occystrap.digest import Digest, verify
from occystrap.errors import Cancelled, LayerError, OutputError
from occystrap.image import (
    BlobWriter, Flow, Image, ImageSource, ImageWriter, Layer)
from occystrap.tarcheck import check_tar

LOG = logging.getLogger(__name__)
DEFAULT_PARALLEL = 4


@dataclasses.dataclass(frozen=True)
class Summary:
    image: Image
    layers_fetched: int
    layers_skipped: int
    bytes_transferred: int
    seconds: float


class _Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fetched = self.skipped = self.transferred = 0

    def add(self, fetched: int = 0, skipped: int = 0,
            transferred: int = 0) -> None:
        with self._lock:
            self.fetched += fetched
            self.skipped += skipped
            self.transferred += transferred


def run(source: ImageSource, writer: ImageWriter,
        report: progress.Callback = progress.ignore,
        parallel: int = DEFAULT_PARALLEL) -> Summary:
    """Copy one image from source to writer; on any failure, abort writer."""
    with destination(writer):
        return copy_image(source, writer, report, parallel)


@contextlib.contextmanager
def destination(writer: ImageWriter) -> Iterator[ImageWriter]:
    """The writer opened for the block and closed after it; aborted on any
    failure (Ctrl-C included), so nothing unfinished is left behind."""
    try:
        writer.open()
        yield writer
        writer.close()
    except BaseException:
        writer.abort()
        raise


def copy_image(source: ImageSource, writer: ImageWriter,
               report: progress.Callback = progress.ignore,
               parallel: int = DEFAULT_PARALLEL) -> Summary:
    """Copy one image into an open writer; the caller aborts on failure."""
    started = time.monotonic()
    tally = _Tally()
    stop = threading.Event()
    try:
        image = source.resolve()
        report(progress.ImageResolved(image))
        writer.begin(image)
        unique: dict[Digest, Layer] = {}
        for layer in image.layers:
            unique.setdefault(_identity(layer, writer.flow), layer)

        def survey(layer: Layer) -> tuple[Layer, bool, int | None]:
            if writer.has_layer(layer):
                return layer, True, None
            hint = source.size_hint(layer) if writer.wants_size_hints \
                else None
            return layer, False, hint

        surveyed = _parallel_map(survey, list(unique.values()), parallel,
                                 stop)
        pending = []
        for layer, present, hint in surveyed:
            if present:
                tally.add(skipped=1)
                report(progress.LayerSkipped(layer))
            else:
                pending.append((layer, hint))
        writer.plan(pending)

        def copy(item: tuple[Layer, int | None]) -> None:
            _copy_layer(source, writer, item[0], report, tally, stop)

        _parallel_map(copy, pending, parallel, stop)
        writer.commit(image)
    except BaseException:
        stop.set()
        raise
    return Summary(image, tally.fetched, tally.skipped, tally.transferred,
                   time.monotonic() - started)


def _identity(layer: Layer, flow: Flow) -> Digest:
    """What makes two layers of an image the same for this flow."""
    if flow is Flow.BLOB:
        if layer.descriptor is None:
            raise OutputError(
                "this source keeps no original layer blobs (only "
                "uncompressed tars), so it cannot be copied byte for byte")
        return layer.descriptor.digest
    return layer.diff_id


def _copy_layer(source: ImageSource, writer: ImageWriter, layer: Layer,
                report: progress.Callback, tally: _Tally,
                stop: threading.Event) -> None:
    report(progress.LayerStarted(layer))
    what = source.describe(layer)
    if writer.flow is Flow.BLOB:
        have = cast(BlobWriter, writer).resume_from(layer)
        counted = _counted(source.layer_chunks(layer, have), layer, report,
                           tally, stop, have.size if have else 0)
        writer.write_layer(layer, counted)
    else:
        counted = _counted(source.layer_chunks(layer), layer, report, tally,
                           stop)
        checked = layer.descriptor.digest if layer.descriptor else None
        writer.write_layer(layer, layer_tar(counted, layer.diff_id, what,
                                            checked))
    tally.add(fetched=1)
    report(progress.LayerDone(layer))


def layer_tar(stored: Iterator[bytes], diff_id: Digest, what: str,
              checked: Digest | None = None) -> Iterator[bytes]:
    """A stored layer blob as its verified, uncompressed tar.

    `checked` is the digest the source checks the stored bytes against
    before their stream ends. A plain tar's stored bytes are its content:
    when that digest is the diff_id, hashing them again would only repeat
    the source's check (a second 1 GiB of SHA-256 for a docker-save
    tarball's layers).
    """
    stored = iter(stored)
    content, compressed = opened(stored, what)
    tar = _drained_on_error(check_tar(content, what), stored)
    if not compressed and checked == diff_id:
        return tar
    return verified_tar(tar, diff_id, what)


def _drained_on_error(tar: Iterator[bytes],
                      stored: Iterator[bytes]) -> Iterator[bytes]:
    """On a bad stream, read the rest of the blob before failing.

    Bytes corrupted in transit then fail their digest check, which names
    the real cause better than "not valid gzip data" would.
    """
    try:
        yield from tar
    except LayerError:
        for _ in stored:
            pass
        raise


def verified_tar(chunks: Iterable[bytes], diff_id: Digest,
                 what: str) -> Iterator[bytes]:
    """Pass chunks through, failing at the end if they do not hash to diff_id.

    The check runs before the iterator is exhausted, so a writer that
    commits only after the last chunk never commits an unverified layer.
    """
    hasher = diff_id.hasher()
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk
    verify(f"{what} content (diff_id)", diff_id, hasher.digest())


def _counted(chunks: Iterable[bytes], layer: Layer,
             report: progress.Callback, tally: _Tally,
             stop: threading.Event, total: int = 0) -> Iterator[bytes]:
    """Count bytes for progress, and stop early once another layer failed."""
    for chunk in chunks:
        if stop.is_set():
            raise Cancelled("cancelled")
        total += len(chunk)
        tally.add(transferred=len(chunk))
        report(progress.LayerBytes(layer, total))
        yield chunk


def _parallel_map(work: Callable, items: list, parallel: int,
                  stop: threading.Event) -> list:
    """Run work(item) on up to `parallel` threads; results in item order.

    The first failure stops the rest (they see `stop`) and is re-raised
    here. Threads are daemons so that Ctrl-C never waits for a stalled
    socket.
    """
    if not items:
        return []
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for index in range(len(items)):
        todo.put(index)
    # A SimpleQueue, not a Semaphore: its waits are plain lock waits, which
    # Ctrl-C interrupts cleanly. A Condition interrupted mid-wait can end
    # in "release unlocked lock" instead of KeyboardInterrupt.
    finished: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while not stop.is_set():
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[index] = work(items[index])
            except BaseException as e:  # re-raised in the calling thread
                if not stop.is_set():
                    errors.append(e)
                stop.set()
            finally:
                finished.put(index)

    threads = [threading.Thread(target=worker, daemon=True,
                                name=f"occystrap-layer-{n}")
               for n in range(max(1, min(parallel, len(items))))]
    for thread in threads:
        thread.start()
    patience = 5.0
    try:
        for _ in items:
            # Short waits keep the main thread responsive to Ctrl-C.
            while True:
                try:
                    finished.get(timeout=0.2)
                    break
                except queue.Empty:
                    if stop.is_set() and not any(t.is_alive()
                                                 for t in threads):
                        break
            if stop.is_set():
                break
    except BaseException as e:
        stop.set()
        if isinstance(e, KeyboardInterrupt):
            # Someone is waiting at the terminal; a worker stuck in a
            # stalled read writes nothing more before the process ends.
            patience = 1.0
        raise
    finally:
        # Let workers notice `stop` before the writer cleans up under them.
        deadline = time.monotonic() + patience
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    if stop.is_set():
        raise Cancelled("cancelled")
    return results
