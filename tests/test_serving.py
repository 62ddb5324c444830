"""The work queue that shares the cores between browser sessions."""

from __future__ import annotations

import threading
import time

import pytest

from pneumo_core.serving import URGENT, SharedCache, WorkQueue


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


def hold_the_only_slot(queue: WorkQueue) -> tuple[threading.Event, threading.Thread]:
    """Occupy a one-slot queue until the returned event is set, so that callers queue up behind."""
    release = threading.Event()
    holder = threading.Thread(target=queue.run, args=(release.wait,))
    holder.start()
    time.sleep(0.05)
    return release, holder


def start_callers(targets: list) -> tuple[list[threading.Thread], dict]:
    """Start one thread per ``(name, callable)``, in order; their return values land in the dict by name."""
    results, threads = {}, []
    for name, target in targets:
        thread = threading.Thread(target=lambda n=name, t=target: results.__setitem__(n, t()))
        thread.start()
        threads.append(thread)
        time.sleep(0.02)
    return threads, results


def test_items_of_one_batch_waiting_together_run_as_one_call():
    """Three readings by one model queued behind other work run in one call; each caller gets its own result."""
    queue, calls = WorkQueue(1), []

    def read_many(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [item * 10 for item in items]

    release, holder = hold_the_only_slot(queue)
    threads, results = start_callers([(i, lambda i=i: queue.run_batched("cnn", i, read_many)) for i in range(3)])
    release.set()
    for thread in [holder, *threads]:
        thread.join(timeout=5)
    assert calls == [[0, 1, 2]]
    assert results == {0: 0, 1: 10, 2: 20}


def test_a_batch_holds_at_most_max_batch_items_and_other_batches_stay_apart():
    """With max_batch=2, three cnn items run as two calls; an xception item never joins a cnn call."""
    queue, calls = WorkQueue(1, max_batch=2), []

    def read_many(items: list[str]) -> list[str]:
        calls.append(list(items))
        return items

    release, holder = hold_the_only_slot(queue)
    callers = [
        (f"{model}{i}", lambda m=model, i=i: queue.run_batched(m, f"{m}{i}", read_many))
        for model, i in [("cnn", 0), ("xception", 0), ("cnn", 1), ("cnn", 2)]
    ]
    threads, results = start_callers(callers)
    release.set()
    for thread in [holder, *threads]:
        thread.join(timeout=5)
    assert calls == [["cnn0", "cnn1"], ["xception0"], ["cnn2"]]
    assert all(results[name] == name for name, _ in callers)


def test_the_same_key_twice_runs_once():
    """A second request for work already queued under the same key gets that result without running it again."""
    queue, runs = WorkQueue(1), []

    def heatmap() -> str:
        runs.append(1)
        return "map"

    release, holder = hold_the_only_slot(queue)
    threads, results = start_callers([(i, lambda: queue.run(heatmap, key=("heatmap", "abc"))) for i in range(2)])
    release.set()
    for thread in [holder, *threads]:
        thread.join(timeout=5)
    assert (len(runs), results) == (1, {0: "map", 1: "map"})


def test_a_caller_that_joined_an_abandoned_request_still_gets_its_result():
    """When the session that queued a key reruns before it ran, a session waiting on the same key runs it."""
    queue = WorkQueue(1)
    release, holder = hold_the_only_slot(queue)

    def interrupted(_ahead: int) -> None:
        time.sleep(0.1)  # Meanwhile the second caller joins this caller's request.
        raise RuntimeError("rerun requested")

    def first() -> str:
        try:
            return queue.run(lambda: "from first", on_wait=interrupted, key="k")
        except RuntimeError:
            return "left"

    threads, results = start_callers([("first", first), ("second", lambda: queue.run(lambda: "from second", key="k"))])
    threads[0].join(timeout=5)
    release.set()
    for thread in [holder, *threads]:
        thread.join(timeout=5)
    assert results == {"first": "left", "second": "from second"}


def test_a_failing_batch_fails_every_caller_and_frees_the_slot():
    """The batch's exception reaches each of its callers; the queue keeps working."""
    queue = WorkQueue(1)

    def read_many(_items: list[int]) -> list[int]:
        raise ValueError("model refused")

    release, holder = hold_the_only_slot(queue)

    def call(i: int) -> str:
        try:
            queue.run_batched("cnn", i, read_many)
        except ValueError as error:
            return str(error)
        return "no error"

    threads, results = start_callers([(i, lambda i=i: call(i)) for i in range(2)])
    release.set()
    for thread in [holder, *threads]:
        thread.join(timeout=5)
    assert results == {0: "model refused", 1: "model refused"}
    assert queue.run(lambda: 42) == 42


def test_jobs_run_on_the_queues_own_worker_not_in_each_callers_thread():
    """Jobs from many callers' threads all run on one worker thread per slot (memory stays with it)."""
    queue, ran_on = WorkQueue(1), set()
    threads, _ = start_callers([(i, lambda: queue.run(lambda: ran_on.add(threading.get_ident()))) for i in range(5)])
    for thread in threads:
        thread.join(timeout=5)
    assert len(ran_on) == 1
    assert ran_on.isdisjoint(thread.ident for thread in threads)


def test_urgent_jobs_go_before_waiting_normal_ones_and_are_told_so():
    """A reading (urgent) queued after two heatmaps runs before them, and its position counts only the running job."""
    queue, order, told = WorkQueue(1), [], []
    release, holder = hold_the_only_slot(queue)
    callers = [
        ("heatmap 1", lambda: queue.run(lambda: order.append("heatmap 1"))),
        ("heatmap 2", lambda: queue.run(lambda: order.append("heatmap 2"))),
        ("reading", lambda: queue.run(lambda: order.append("reading"), on_wait=told.append, priority=URGENT)),
    ]
    threads, _ = start_callers(callers)
    release.set()
    for thread in [holder, *threads]:
        thread.join(timeout=5)
    assert order == ["reading", "heatmap 1", "heatmap 2"]
    assert told == [1]
