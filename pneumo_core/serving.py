"""Sharing two CPU cores between many browser sessions: a small first-come, first-served work queue.

Heavy work (a prediction, a heatmap) runs through :data:`WORK_QUEUE`, which lets at most
``slots`` jobs run at once; the others wait in arrival order and are told their position, so a
page can show "waiting for the model (2 ahead of you)" instead of a frozen spinner, and ten
sessions do not thrash two cores.

Results are shared between sessions through :data:`RESULTS`, an in-memory LRU keyed by the hash
of the image bytes, the model and the setting, so a repeated image costs nothing (nothing is
written to disk).

Usage:
    result = WORK_QUEUE.run(lambda: reader.read(xray), on_wait=lambda ahead: print(ahead, "ahead"))
    RESULTS.put(("reading", xray.digest, "cnn"), result)
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.25


def default_slots() -> int:
    """One heavy job per two cores: each TensorFlow call already uses two threads."""
    return max(1, (os.cpu_count() or 2) // 2)


class WorkQueue:
    """At most ``slots`` jobs run at once; the rest wait first-come, first-served."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"A work queue needs at least one slot, got {slots}.")
        self.slots = slots
        self._condition = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: list[int] = []
        self._running = 0

    def run(self, job: Callable[[], T], on_wait: Callable[[int], None] | None = None) -> T:
        """Run ``job`` when a slot is free and return its result.

        Args:
            job: The work to do.
            on_wait: Called in the caller's thread with the number of jobs ahead, whenever that
                number changes while the job waits (not called when a slot is free at once).
        """
        with self._condition:
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            try:
                self._wait_for_slot(ticket, on_wait)
            finally:
                # Also when the wait is abandoned (a page rerun interrupts it): never block the queue.
                self._waiting.remove(ticket)
                self._condition.notify_all()
            self._running += 1
        try:
            return job()
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    def _wait_for_slot(self, ticket: int, on_wait: Callable[[int], None] | None) -> None:
        """Block (holding the condition) until ``ticket`` may start, telling ``on_wait`` the position."""
        last_told = None
        while not self._may_start(ticket):
            ahead = self._running + self._waiting.index(ticket)
            if on_wait is None or ahead == last_told:
                self._condition.wait(timeout=POLL_SECONDS)
                continue
            last_told = ahead
            self._condition.release()
            try:
                on_wait(ahead)
            finally:
                self._condition.acquire()

    def _may_start(self, ticket: int) -> bool:
        return self._running < self.slots and self._waiting[0] == ticket


class SharedCache:
    """A thread-safe, in-memory least-recently-used cache of at most ``max_items`` results."""

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"A cache needs room for at least one item, got {max_items}.")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The cached value, or ``None``."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Store a value, evicting the least recently used one when full."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


WORK_QUEUE = WorkQueue(default_slots())
# About 200 KB per heatmap: 256 entries stay under ~60 MB.
RESULTS = SharedCache(max_items=256)
