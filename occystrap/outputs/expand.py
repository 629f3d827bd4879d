"""--expand: each layer unpacked beside its layer.tar, and the image's
final filesystem built by applying the layers in order.

Both appear atomically (built under a hidden temporary name, then renamed),
so a directory that is there is complete; an interrupted run leaves none.

Unpacking is mostly tar parsing, Python work that threads would take turns
at, so it runs in two worker processes while layers are still downloading:
one unpacks each layer as it arrives, the other applies layers to the final
tree in order, each as soon as it and the layers below it are there.
"""

import concurrent.futures
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from pathlib import Path

from occystrap import dockersave
from occystrap.digest import Digest
from occystrap.image import Image
from occystrap.layers import apply_layer, extract_layer

LOG = logging.getLogger(__name__)

# Beside <diff_id>/layer.tar; whiteout markers stay visible in it.
EXPANDED_LAYER = "layer"


def expand_layer(layer_tar: Path) -> None:
    """Unpack one verified layer.tar into the directory beside it."""
    target = layer_tar.parent / EXPANDED_LAYER
    if target.is_dir():
        return  # built whole earlier, from the same verified content
    temp = Path(tempfile.mkdtemp(prefix=f".{EXPANDED_LAYER}.", suffix=".tmp",
                                 dir=layer_tar.parent))
    try:
        with open(layer_tar, "rb") as f:
            extract_layer(f, temp)
        _replace_dir(temp, target)
    finally:
        _remove(temp)


def apply_layer_file(layer_tar: Path, tree: Path) -> None:
    with open(layer_tar, "rb") as f:
        apply_layer(f, tree)


class Expander:
    """Schedules the unpacking of one image's layers in worker processes."""

    def __init__(self, root: Path, image: Image) -> None:
        self._root = root
        self._layers = [layer.diff_id for layer in image.layers]
        self._ready: set[Digest] = set()
        self._next = 0
        self._lock = threading.Lock()
        self._futures: list[concurrent.futures.Future] = []
        self._tree = Path(tempfile.mkdtemp(prefix=".filesystem.",
                                           suffix=".tmp", dir=root))
        os.chmod(self._tree, 0o755)
        context = multiprocessing.get_context("spawn")
        level = logging.getLogger("occystrap").getEffectiveLevel()
        self._pools = [concurrent.futures.ProcessPoolExecutor(
            1, context, initializer=_worker_logging, initargs=(level,))
            for _ in range(2)]

    def ready(self, diff_id: Digest) -> None:
        """The layer's verified layer.tar is in place."""
        unpack, apply = self._pools
        with self._lock:
            if diff_id in self._ready:
                return
            self._ready.add(diff_id)
            self._futures.append(unpack.submit(
                expand_layer, self._tar(diff_id)))
            while self._next < len(self._layers) \
                    and self._layers[self._next] in self._ready:
                self._futures.append(apply.submit(
                    apply_layer_file, self._tar(self._layers[self._next]),
                    self._tree))
                self._next += 1

    def present_except(self, pending: set[Digest]) -> None:
        """Layers the destination already held are ready from the start."""
        for diff_id in dict.fromkeys(self._layers):
            if diff_id not in pending:
                self.ready(diff_id)

    def wait(self) -> None:
        """Wait for the workers; raise the first error one met."""
        try:
            for future in self._futures:
                future.result()
        finally:
            self._shutdown()
        if self._next != len(self._layers):
            raise AssertionError("wait() before every layer was ready")

    def place(self, target: Path) -> None:
        """Put the finished tree at target, replacing an earlier one."""
        _replace_dir(self._tree, target)

    def abort(self) -> None:
        self._shutdown()
        _remove(self._tree)

    def _shutdown(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def _tar(self, diff_id: Digest) -> Path:
        return self._root / dockersave.layer_path(diff_id)


def _worker_logging(level: int) -> None:
    """Workers report warnings as the CLI would: on stderr, prefixed."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("occystrap")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _replace_dir(source: Path, target: Path) -> None:
    """Put source at target, moving any earlier version out of the way."""
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                    dir=target.parent))
        os.rename(target, old / "previous")
        os.rename(source, target)
        _remove(old)
    else:
        os.rename(source, target)


def _remove(path: Path) -> None:
    """Remove a tree we built, even where layers left it unwritable."""
    if not path.exists():
        return

    def make_writable(function, name, _error):
        parent = os.path.dirname(name)
        os.chmod(parent, 0o700)
        if os.path.isdir(name) and not os.path.islink(name):
            os.chmod(name, 0o700)
        function(name)

    shutil.rmtree(path, onerror=make_writable)
