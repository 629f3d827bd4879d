"""--expand: each layer unpacked beside its layer.tar, and the image's
final filesystem built by applying the layers in order.

Both appear atomically (built under a hidden temporary name, then renamed),
so a directory that is there is complete; an interrupted run leaves none.

Unpacking is mostly tar parsing and file creation, Python work that threads
would take turns at, so it runs in two worker processes while layers are
still downloading: one unpacks each layer beside its layer.tar as soon as
it is there, in any order; the other applies the layers to the final tree,
in order. Each parses the tar, but the two run on two cores at once: on
the benchmark's root filesystem that took 3.8 s as one worker parsing once.

The workers are ours to the end: each reads its jobs from a pipe only this
process holds, so it ends when this process does, however that ends (even
by SIGKILL or the OOM killer), and every way out of a run waits for both.
"""

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from occystrap import dockersave
from occystrap.digest import Digest
from occystrap.errors import LayerError, OutputError
from occystrap.image import Image
from occystrap.layers import apply_layer, extract_layer

LOG = logging.getLogger(__name__)

# Beside <diff_id>/layer.tar; whiteout markers stay visible in it.
EXPANDED_LAYER = "layer"
# How long an aborted worker may take to remove its half-built layer
# directory before it is killed outright.
_STOP_GRACE = 10.0


def unpack_beside(layer_tar: Path) -> None:
    """Unpack a verified layer.tar into the directory beside it.

    A layer directory built whole earlier, from the same verified content,
    is kept.
    """
    target = layer_tar.parent / EXPANDED_LAYER
    if target.is_dir():
        return
    temp = Path(tempfile.mkdtemp(prefix=f".{EXPANDED_LAYER}.", suffix=".tmp",
                                 dir=layer_tar.parent))
    try:
        with open(layer_tar, "rb") as f:
            extract_layer(f, temp)
        _replace_dir(temp, target)
    finally:
        _remove(temp)


def apply_to_tree(layer_tar: Path, tree: Path) -> None:
    """Apply a verified layer.tar to the tree the layers below it built."""
    with open(layer_tar, "rb") as f:
        apply_layer(f, tree)


# What a worker may be asked to do, by name (jobs cross a pipe).
_JOBS: dict[str, Callable[..., None]] = {
    "unpack": unpack_beside,
    "apply": apply_to_tree,
}


class Expander:
    """Schedules the unpacking of one image's layers in two worker processes."""

    def __init__(self, root: Path, image: Image) -> None:
        self._root = root
        self._layers = [layer.diff_id for layer in image.layers]
        self._ready: set[Digest] = set()
        self._next = 0
        self._lock = threading.Lock()
        self._tree = Path(tempfile.mkdtemp(prefix=".filesystem.",
                                           suffix=".tmp", dir=root))
        os.chmod(self._tree, 0o755)
        self._workers: list[_Worker] = []
        try:
            self._unpacker = self._start()
            self._applier = self._start()
        except BaseException:
            self.abort()
            raise

    def _start(self) -> "_Worker":
        worker = _Worker()
        self._workers.append(worker)
        return worker

    def ready(self, diff_id: Digest) -> None:
        """The layer's verified layer.tar is in place."""
        with self._lock:
            if diff_id not in self._ready:
                self._unpacker.submit("unpack", self._tar(diff_id))
            self._ready.add(diff_id)
            while self._next < len(self._layers) \
                    and self._layers[self._next] in self._ready:
                self._applier.submit(
                    "apply", self._tar(self._layers[self._next]), self._tree)
                self._next += 1

    def present_except(self, pending: set[Digest]) -> None:
        """Layers the destination already held are ready from the start."""
        for diff_id in dict.fromkeys(self._layers):
            if diff_id not in pending:
                self.ready(diff_id)

    def wait(self) -> None:
        """Wait for the workers; raise the first error they met."""
        if self._next != len(self._layers):
            self._stop()
            raise AssertionError("wait() before every layer was ready")
        try:
            for worker in self._workers:
                worker.finish()
        finally:
            self._stop()

    def place(self, target: Path) -> None:
        """Put the finished tree at target, replacing an earlier one."""
        _replace_dir(self._tree, target)

    def abort(self) -> None:
        self._stop()
        _remove(self._tree)

    def _stop(self) -> None:
        for worker in self._workers:
            worker.stop()

    def _tar(self, diff_id: Digest) -> Path:
        return self._root / dockersave.layer_path(diff_id)


# Run by the worker's interpreter: the parent's import path, then serve.
_BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1])\n"
    "from occystrap.outputs.expand import _serve; _serve(int(sys.argv[2]))\n")


class _Worker:
    """One worker process, its jobs in order, joined on every way out."""

    def __init__(self) -> None:
        jobs_read, jobs_write = os.pipe()
        results_read, results_write = os.pipe()
        level = logging.getLogger("occystrap").getEffectiveLevel()
        try:
            # Only this process holds jobs_write (os.pipe's ends are not
            # inherited), so the worker sees the end of its jobs when we end.
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(sys.path),
                 str(level)],
                stdin=jobs_read, stdout=results_write, close_fds=True)
        except BaseException:
            for fd in (jobs_read, jobs_write, results_read, results_write):
                os.close(fd)
            raise
        os.close(jobs_read)
        os.close(results_write)
        self._jobs = Connection(jobs_write, readable=False)
        self._results = Connection(results_read, writable=False)
        self._submitted = 0
        self._lock = threading.Lock()

    def submit(self, *job: Any) -> None:
        with self._lock:
            self._submitted += 1
            try:
                self._jobs.send(job)
            except OSError:
                pass  # it has ended; finish() says so

    def finish(self) -> None:
        """Wait for every job; raise the first error; end the worker."""
        try:
            for _ in range(self._submitted):
                try:
                    error = self._results.recv()
                except (EOFError, OSError):
                    code = self._process.wait()
                    raise OutputError(
                        f"the process unpacking layers ended unexpectedly "
                        f"(exit status {code}); see the messages above, or "
                        "free memory and try again") from None
                if error is not None:
                    raise error
            self._jobs.send(None)   # no more: end cleanly
            self._process.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        """End the worker now, letting it remove its half-built work."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._process.kill()
        # Also waits out an interrupted wait above.
        self._process.wait()
        self._jobs.close()
        self._results.close()


def _serve(level: int) -> None:
    """The worker: run jobs from stdin in order, one answer each on stdout."""
    _worker_logging(level)
    jobs = Connection(0, writable=False)
    results = Connection(os.dup(1), readable=False)
    # Nothing else may write into the answers.
    os.dup2(2, 1)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    main = threading.main_thread().ident
    assert main is not None
    queue: list[Any] = []
    arrived = threading.Condition()

    def listen() -> None:
        while True:
            try:
                job = jobs.recv()
            except (EOFError, OSError):
                # The parent ended without saying so: end too, removing
                # what is half-built, and surely within a moment.
                signal.pthread_kill(main, signal.SIGTERM)
                time.sleep(_STOP_GRACE)
                os._exit(1)
            with arrived:
                queue.append(job)
                arrived.notify()
            if job is None:
                return

    threading.Thread(target=listen, daemon=True).start()
    while True:
        with arrived:
            while not queue:
                arrived.wait()
            job = queue.pop(0)
        if job is None:
            return
        results.send(_run(*job))


def _run(name: str, *args: Any) -> BaseException | None:
    try:
        _JOBS[name](*args)
    except Exception as error:
        # Sent back whole, so the parent reports it as if it were its own
        # (an OSError becomes its OutputError there).
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            return LayerError(str(error))
        return error
    return None


def _exit_cleanly(signum: int, frame: object) -> None:
    # SystemExit unwinds through unpack_layer's cleanup.
    raise SystemExit(128 + signum)


def _worker_logging(level: int) -> None:
    """The worker reports warnings as the CLI would: on stderr, prefixed."""
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
