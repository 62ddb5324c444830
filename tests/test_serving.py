"""The work queue that shares the cores between browser sessions."""

from __future__ import annotations

import threading
import time

import pytest

from pneumo_core.serving import SharedCache, WorkQueue


def run_in_threads(queue: WorkQueue, jobs: int, seconds: float, positions: dict) -> tuple[list[int], int]:
    """Start ``jobs`` threads one after another; return the order they ran in and the peak concurrency."""
    order, lock, running, peak = [], threading.Lock(), [0], [0]

    def job(index: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            order.append(index)
        time.sleep(seconds)
        with lock:
            running[0] -= 1

    threads = []
    for index in range(jobs):
        told = positions.setdefault(index, [])
        thread = threading.Thread(target=queue.run, args=(lambda i=index: job(i), told.append))
        thread.start()
        threads.append(thread)
        time.sleep(0.02)  # Arrival order is the start order.
    for thread in threads:
        thread.join(timeout=10)
    return order, peak[0]


def test_one_slot_runs_jobs_one_at_a_time_in_arrival_order():
    """With one slot, jobs never overlap and start first-come, first-served."""
    positions: dict = {}
    order, peak = run_in_threads(WorkQueue(1), jobs=4, seconds=0.1, positions=positions)
    assert order == [0, 1, 2, 3]
    assert peak == 1


def test_waiting_jobs_are_told_their_position_as_it_shrinks():
    """The last of four jobs is told 3 ahead, then 2, then 1; the first is never told to wait."""
    positions: dict = {}
    run_in_threads(WorkQueue(1), jobs=4, seconds=0.1, positions=positions)
    assert positions[0] == []
    assert positions[3] == [3, 2, 1]


def test_two_slots_run_two_jobs_at_once():
    """With two slots, two jobs overlap but never three."""
    order, peak = run_in_threads(WorkQueue(2), jobs=5, seconds=0.1, positions={})
    assert peak == 2
    assert sorted(order) == list(range(5))


def test_an_abandoned_wait_does_not_block_the_queue():
    """A waiter interrupted while told its position (a page rerun) leaves the queue usable."""
    queue = WorkQueue(1)
    release = threading.Event()
    holder = threading.Thread(target=queue.run, args=(release.wait,))
    holder.start()
    time.sleep(0.05)

    def interrupted(_ahead: int) -> None:
        raise RuntimeError("rerun requested")

    with pytest.raises(RuntimeError):
        queue.run(lambda: None, on_wait=interrupted)
    release.set()
    holder.join(timeout=5)
    assert queue.run(lambda: "ran") == "ran"


def test_a_failing_job_frees_its_slot():
    """An exception inside a job propagates and the next job still runs."""
    queue = WorkQueue(1)
    with pytest.raises(ValueError):
        queue.run(lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert queue.run(lambda: 42) == 42


def test_a_queue_needs_a_slot():
    """Zero slots is refused with a clear message."""
    with pytest.raises(ValueError, match="at least one slot"):
        WorkQueue(0)


def test_shared_cache_evicts_the_least_recently_used():
    """A full cache drops the entry used longest ago, keeping recently read ones."""
    cache = SharedCache(max_items=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used.
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c"), len(cache)) == (1, 3, 2)
