"""Drawing download progress on a terminal; used only by the CLI."""

import re
import threading
import time
from typing import Callable, TextIO

from occystrap import progress
from occystrap.humanize import human_duration, human_size
from occystrap.image import Layer

_REDRAW_EVERY = 0.1
_BAR_WIDTH = 24
# Beyond this many layers only the active ones get a line of their own.
_MAX_LINES = 12
# C0 and C1 controls and DEL: in a name read from a file, an escape
# sequence could clear the screen, rewrite lines or retitle the window.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, keep_newlines: bool = False) -> str:
    """text with every control character shown as '?'.

    For anything printed that came from input: names in a directory's
    files, a registry's answers, the paths a user typed.
    """
    if keep_newlines:
        return "\n".join(_CONTROL_RE.sub("?", line)
                         for line in text.split("\n"))
    return _CONTROL_RE.sub("?", text)


class _LayerState:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.total = layer.size
        self.done = 0
        self.status = "waiting"
        self.started: float | None = None


class ProgressDisplay:
    """Per-layer bars and an overall line, redrawn in place on stderr.

    Events arrive from the download threads, so all state is under a lock.
    """

    def __init__(self, stream: TextIO,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()
        self._layers: dict = {}
        self._order: list = []
        self._drawn_lines = 0
        self._last_draw = 0.0
        self._started = clock()
        # In a run of many images: which one is under way, of how many.
        self._image: progress.ImageStarted | None = None

    def __call__(self, event: progress.Event) -> None:
        with self._lock:
            force = self._update(event)
            now = self._clock()
            if force or now - self._last_draw >= _REDRAW_EVERY:
                self._draw(now)

    def _update(self, event: progress.Event) -> bool:
        if isinstance(event, progress.ImageStarted):
            self._image = event
            return True
        if isinstance(event, progress.ImageResolved):
            for layer in event.image.layers:
                if layer.diff_id not in self._layers:
                    self._layers[layer.diff_id] = _LayerState(layer)
                    self._order.append(layer.diff_id)
            return True
        state = self._layers.get(event.layer.diff_id)
        if state is None:
            return False
        if isinstance(event, progress.LayerSkipped):
            state.status = "already present"
        elif isinstance(event, progress.LayerStarted):
            state.status = "downloading"
            state.started = self._clock()
        elif isinstance(event, progress.LayerBytes):
            state.done = event.transferred
            return False
        elif isinstance(event, progress.LayerDone):
            state.status = "done"
            if state.total is not None:
                state.done = state.total
        return True

    def close(self) -> None:
        with self._lock:
            if self._layers:
                self._draw(self._clock())

    def _draw(self, now: float) -> None:
        self._last_draw = now
        states = [self._layers[d] for d in self._order]
        shown = states if len(states) <= _MAX_LINES else [
            s for s in states if s.status == "downloading"]
        lines = [self._layer_line(s, now) for s in shown]
        lines.append(self._overall_line(states, now))
        out = []
        if self._drawn_lines:
            out.append(f"\x1b[{self._drawn_lines}F")
        for line in lines:
            out.append(f"\x1b[2K{line}\n")
        # Clear lines left over from a taller previous drawing.
        extra = self._drawn_lines - len(lines)
        if extra > 0:
            out.append("\x1b[2K\n" * extra + f"\x1b[{extra}F")
        self._drawn_lines = len(lines)
        self._stream.write("".join(out))
        self._stream.flush()

    def _layer_line(self, state: _LayerState, now: float) -> str:
        name = state.layer.descriptor.digest.short() \
            if state.layer.descriptor else state.layer.diff_id.short()
        if state.status != "downloading":
            size = f" {human_size(state.total)}" \
                if state.total and state.status == "done" else ""
            return f"{name}  {state.status}{size}"
        total = state.total
        if not total:
            return f"{name}  {human_size(state.done)}"
        fraction = min(1.0, state.done / total)
        filled = int(fraction * _BAR_WIDTH)
        bar = "=" * filled + (">" if filled < _BAR_WIDTH else "") \
            + " " * (_BAR_WIDTH - filled - 1)
        elapsed = now - (state.started or now)
        rate = state.done / elapsed if elapsed > 0.2 else 0
        speed = f"  {human_size(rate)}/s  ETA " \
            f"{human_duration((total - state.done) / rate)}" if rate else ""
        return (f"{name}  [{bar[:_BAR_WIDTH]}] {human_size(state.done)} / "
                f"{human_size(total)}{speed}")

    def _overall_line(self, states: list, now: float) -> str:
        finished = sum(s.status in ("done", "already present")
                       for s in states)
        fetched = [s for s in states if s.status != "already present"]
        done = sum(s.done for s in fetched)
        total = sum(s.total or 0 for s in fetched)
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0.2 else 0
        speed = f"  {human_size(rate)}/s" if rate else ""
        if rate and total > done:
            speed += f"  ETA {human_duration((total - done) / rate)}"
        images = (f"image {self._image.number + 1}/{self._image.total}  "
                  if self._image and self._image.total > 1 else "")
        return (f"{images}{finished}/{len(states)} layers  "
                f"{human_size(done)} / {human_size(total)}{speed}")
