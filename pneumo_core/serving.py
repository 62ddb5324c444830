"""Sharing two CPU cores between many browser sessions: a small first-come, first-served work queue.

Heavy work (a prediction, a heatmap) runs through :data:`WORK_QUEUE`, which lets at most
``slots`` jobs run at once; the others wait in arrival order and are told their position, so a
page can show "waiting for the model (2 ahead of you)" instead of a frozen spinner, and ten
sessions do not thrash two cores. Readings by one model that wait together run as one batched
forward pass, and a request for work already queued under the same key waits for it instead of
repeating it.

Results are shared between sessions through :data:`RESULTS`, an in-memory LRU keyed by the hash
of the image bytes, the model and the setting, so a repeated image costs nothing (nothing is
written to disk).

Usage:
    result = WORK_QUEUE.run(lambda: reader.heatmap(xray, "Grad-CAM", 1), on_wait=lambda ahead: print(ahead, "ahead"))
    reading = WORK_QUEUE.run_batched(("read", "cnn"), xray, reader.read_many, key=("reading", xray.digest, "cnn"))
    RESULTS.put(("reading", xray.digest, "cnn"), reading)
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.25
# Lower runs first; the same priority runs first-come, first-served.
URGENT = 0  # Readings: what a clinician waits for, and cheap (batched).
NORMAL = 1  # Heatmaps and the rest.


def default_slots() -> int:
    """One heavy job per two cores: each TensorFlow call already uses two threads."""
    return max(1, (os.cpu_count() or 2) // 2)


class _Abandoned(Exception):
    """The caller that queued an item left (its page reran) before the item ran."""


class _Request:
    """One caller's item in the queue, and its result once some caller has run it."""

    def __init__(self, item: Any) -> None:
        self.item = item
        self.claimed = False  # Taken into a batch that is running or has run.
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class WorkQueue:
    """At most ``slots`` jobs run at once; the rest wait first-come, first-served, urgent ones first.

    Items of the same *batch* (readings by one model) that wait together run as one call, and a
    request for work already queued or running under the same *key* waits for that work instead of
    repeating it. Jobs run on the queue's own worker threads (one per slot) while their callers wait:
    TensorFlow's working memory then stays with those threads. Run from every session's own script
    thread, ten sessions' heatmaps grew the process by over 1 GB (a malloc arena per thread); from one
    worker, by 0.25 GB.
    """

    def __init__(self, slots: int, max_batch: int = 16) -> None:
        if slots < 1:
            raise ValueError(f"A work queue needs at least one slot, got {slots}.")
        if max_batch < 1:
            raise ValueError(f"A batch holds at least one item, got max_batch={max_batch}.")
        self.slots = slots
        self.max_batch = max_batch
        self._condition = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: list[tuple[int, int]] = []  # (priority, arrival), sorted.
        self._running = 0
        self._batches: dict[Hashable, list[_Request]] = {}
        self._in_flight: dict[Hashable, _Request] = {}
        self._workers = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="model-worker")

    def run(
        self,
        job: Callable[[], T],
        on_wait: Callable[[int], None] | None = None,
        key: Hashable = None,
        priority: int = NORMAL,
    ) -> T:
        """Run ``job`` when a slot is free and return its result.

        Args:
            job: The work to do.
            on_wait: Called in the caller's thread with the number of jobs ahead, whenever that
                number changes while the job waits (not called when a slot is free at once).
            key: When given, a caller asking for a ``key`` that is already queued or running gets
                that job's result instead of running ``job`` again.
            priority: :data:`URGENT` jobs go before waiting :data:`NORMAL` ones.
        """
        return self.run_batched(object(), None, lambda _items: [job()], on_wait=on_wait, key=key, priority=priority)

    def run_batched(
        self,
        batch: Hashable,
        item: Any,
        run_many: Callable[[list[Any]], list[T]],
        on_wait: Callable[[int], None] | None = None,
        key: Hashable = None,
        priority: int = NORMAL,
    ) -> T:
        """Run ``run_many`` on ``item`` together with the items of the same ``batch`` waiting by then.

        The first of those callers to get a slot runs up to ``max_batch`` of them in one call; every
        caller gets its own result (or the call's exception), and the others leave the queue.

        Args:
            batch: Which items may share a call (for example the model that reads them).
            item: This caller's item.
            run_many: Maps a list of items to the list of their results, in order.
            on_wait: As for :meth:`run`.
            key: As for :meth:`run`.
            priority: As for :meth:`run`.
        """
        while True:
            with self._condition:
                running_already = self._in_flight.get(key) if key is not None else None
                if running_already is None:
                    request = _Request(item)
                    self._batches.setdefault(batch, []).append(request)
                    if key is not None:
                        self._in_flight[key] = request
                    break
            try:
                return running_already.result()
            except _Abandoned:
                continue  # Its caller left before it ran: queue it anew.
        try:
            if self._take_slot(priority, on_wait, leave_when=lambda: request.claimed):
                try:
                    self._run_batch(batch, request, run_many)
                finally:
                    self._free_slot()
            return request.result()
        finally:
            self._forget(batch, request, key)

    def _take_slot(self, priority: int, on_wait: Callable[[int], None] | None, leave_when: Callable[[], bool]) -> bool:
        """Wait for a slot and take it (``True``), or leave the queue once ``leave_when()`` (``False``)."""
        with self._condition:
            ticket = (priority, next(self._tickets))
            bisect.insort(self._waiting, ticket)
            try:
                if not self._wait_for_slot(ticket, on_wait, leave_when):
                    return False
            finally:
                # Also when the wait is abandoned (a page rerun interrupts it): never block the queue.
                self._waiting.remove(ticket)
                self._condition.notify_all()
            self._running += 1
            return True

    def _free_slot(self) -> None:
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def _wait_for_slot(
        self, ticket: tuple[int, int], on_wait: Callable[[int], None] | None, leave_when: Callable[[], bool]
    ) -> bool:
        """Block (holding the condition) until ``ticket`` may start, telling ``on_wait`` the position."""
        last_told = None
        while not self._may_start(ticket):
            if leave_when():
                return False
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
        return True

    def _may_start(self, ticket: tuple[int, int]) -> bool:
        return self._running < self.slots and self._waiting[0] == ticket

    def _run_batch(self, batch: Hashable, own: _Request, run_many: Callable[[list[Any]], list[Any]]) -> None:
        """Run ``own`` with up to ``max_batch - 1`` other waiting items of ``batch`` in one call; hand out results."""
        with self._condition:
            if own.claimed:  # Another slot's batch took it: only its result is left to wait for.
                return
            others = [request for request in self._batches.pop(batch, []) if request is not own]
            requests, rest = [own, *others[: self.max_batch - 1]], others[self.max_batch - 1 :]
            if rest:
                self._batches[batch] = rest
            for request in requests:
                request.claimed = True
            self._condition.notify_all()  # Their callers stop waiting for a slot.
        try:
            values = self._workers.submit(run_many, [request.item for request in requests]).result()
            if len(values) != len(requests):
                raise ValueError(f"A batch of {len(requests)} items gave {len(values)} results.")
        except BaseException as error:
            for request in requests:
                request.finish(error=error)
            if not isinstance(error, Exception):
                raise
            return
        for request, value in zip(requests, values, strict=True):
            request.finish(value=value)

    def _forget(self, batch: Hashable, request: _Request, key: Hashable) -> None:
        """Drop an item whose caller left before it ran, and the in-flight entry of a settled key."""
        with self._condition:
            if not request.claimed:
                waiting = self._batches.get(batch, [])
                if request in waiting:
                    waiting.remove(request)
                if not waiting:
                    self._batches.pop(batch, None)
                request.finish(error=_Abandoned())  # Callers that joined it queue it anew.
            if key is not None and self._in_flight.get(key) is request:
                del self._in_flight[key]


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
