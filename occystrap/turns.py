"""Turns at the CPU for streams that compress as they send.

A push of a docker-save tarball compresses each layer as it uploads it.
Compressing is CPU work and sending mostly is not, so a stream takes a
turn for each block it compresses and gives it back while the block goes
out. Turns are at most as many as the cores, and a waiting stream that
started earlier goes first: streams then finish one after another rather
than all at once, so the registry commits one layer (on the local disk of
a registry on the same host, a wait for its sync) while the next layer is
compressing. Over a slow link, where a stream waits on its socket most of
the time, every stream in flight still sends.
"""

import contextlib
import heapq
import itertools
import os
import threading
from typing import Iterator


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Turns:
    """At most `slots` holders at once; the lowest waiting rank goes first."""

    def __init__(self, slots: int | None = None) -> None:
        self._slots = slots or cores()
        self._held = 0
        self._waiting: list[int] = []
        self._changed = threading.Condition()
        self._ranks = itertools.count()

    def rank(self) -> int:
        """A new stream's rank: after every stream ranked before it."""
        return next(self._ranks)

    @contextlib.contextmanager
    def turn(self, rank: int) -> Iterator[None]:
        with self._changed:
            heapq.heappush(self._waiting, rank)
            try:
                while self._held >= self._slots or self._waiting[0] != rank:
                    self._changed.wait()
            finally:
                self._waiting.remove(rank)
                heapq.heapify(self._waiting)
            self._held += 1
            if self._held < self._slots and self._waiting:
                self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._held -= 1
                self._changed.notify_all()
