"""The one layer-streaming pipeline: input -> decompress -> verify -> writer."""

import dataclasses
import logging
import time
from typing import Iterable, Iterator

from occystrap import progress
from occystrap.compression import decompress
from occystrap.digest import Digest, verify
from occystrap.image import Image, ImageSource, ImageWriter, Layer

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Summary:
    image: Image
    layers_fetched: int
    layers_skipped: int
    bytes_transferred: int
    seconds: float


def run(source: ImageSource, writer: ImageWriter,
        report: progress.Callback = progress.ignore) -> Summary:
    """Copy one image from source to writer; on any failure, abort writer."""
    started = time.monotonic()
    transferred = fetched = skipped = 0
    try:
        image = source.resolve()
        report(progress.ImageResolved(image))
        writer.begin(image)
        for layer in image.layers:
            if writer.has_layer(layer):
                skipped += 1
                report(progress.LayerSkipped(layer))
                continue
            report(progress.LayerStarted(layer))
            counter = _Counter(source.layer_chunks(layer), layer, report)
            what = source.describe(layer)
            writer.write_layer(
                layer, verified_tar(decompress(counter, what), layer.diff_id,
                                    what))
            transferred += counter.total
            fetched += 1
            report(progress.LayerDone(layer))
        writer.commit(image)
    except BaseException:
        writer.abort()
        raise
    return Summary(image, fetched, skipped, transferred,
                   time.monotonic() - started)


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


class _Counter:
    """Counts bytes as they arrive, reporting progress."""

    def __init__(self, chunks: Iterable[bytes], layer: Layer,
                 report: progress.Callback) -> None:
        self._chunks = chunks
        self._layer = layer
        self._report = report
        self.total = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.total += len(chunk)
            self._report(progress.LayerBytes(self._layer, self.total))
            yield chunk
