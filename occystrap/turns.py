"""Turns at the CPU for streams that compress as they send.

A push of a docker-save tarball compresses each layer as it uploads it,
in PATCHes. A stream takes a turn to make and send each PATCH's body and
gives it back before it waits for the registry's answer (a wait for its
disk, where a registry syncs each chunk). Turns are as many as the cores,
and a waiting stream that started earlier goes first: streams then finish
one after another rather than all at once, so the registry commits one
layer while the next is compressing. (Turns taken per compressed block
let every stream advance evenly and finish together: measured slower.)
Over a slow link this sends at most as many layers at once as there are
cores, the rest of -j waiting their turn.
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
