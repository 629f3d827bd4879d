"""Turns at the CPU: as many holders as slots, the earliest rank first."""

from __future__ import annotations

import threading
import time

from occystrap.turns import Turns, cores


def _wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_waiters_go_in_the_order_of_their_ranks_not_their_arrival() -> None:
    turns = Turns(1)
    ranks = [turns.rank() for _ in range(4)]
    served: list[int] = []
    waiting: list[int] = []

    def take(rank: int) -> None:
        waiting.append(rank)
        with turns.turn(rank):
            served.append(rank)

    with turns.turn(ranks[0]):
        threads = []
        for rank in (ranks[3], ranks[1], ranks[2]):
            thread = threading.Thread(target=take, args=(rank,))
            thread.start()
            threads.append(thread)
            _wait_for(lambda: rank in waiting)
        time.sleep(0.05)
        assert served == []
    for thread in threads:
        thread.join(5)
    assert served == [ranks[1], ranks[2], ranks[3]]


def test_as_many_hold_a_turn_at_once_as_there_are_slots() -> None:
    turns = Turns(2)
    inside = threading.Semaphore(0)
    leave = threading.Event()
    most = [0]
    holding = [0]
    lock = threading.Lock()

    def hold() -> None:
        with turns.turn(turns.rank()):
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
            inside.release()
            leave.wait(5)
            with lock:
                holding[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert inside.acquire(timeout=5) and inside.acquire(timeout=5)
    assert not inside.acquire(timeout=0.1)
    leave.set()
    for thread in threads:
        thread.join(5)
    assert most[0] == 2


def test_a_turn_is_given_back_when_its_holder_fails() -> None:
    turns = Turns(1)
    try:
        with turns.turn(turns.rank()):
            raise ValueError("in the turn")
    except ValueError:
        pass
    done = threading.Event()

    def take() -> None:
        with turns.turn(turns.rank()):
            done.set()

    threading.Thread(target=take).start()
    assert done.wait(5)


def test_there_is_at_least_one_core() -> None:
    assert cores() >= 1
