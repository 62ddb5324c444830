"""Many browser sessions at once against a running app: the load test shared by the suite and the bench.

Each session opens the Diagnose page in its own browser context (its own Streamlit session). Once
every page has loaded, all sessions at once switch model in the sidebar and upload an X-ray right
after (the sequence that used to lose uploads), then wait for the reading and the heatmap. Every
session uploads its own copy of the image (one pixel changed), so no session gets another one's
cached result. Loopback only; bounded in sessions and time.

A session that gets no result is **lost** when its upload is gone (the uploader shows no file and
the page is back at its start, idle), and **slow** when it ran out of time with the upload still
in place (still working). Both are counted; only lost uploads are the race this test guards against.

Usage (from the tests or ``bench/load_test.py``):
    figures = run_load(url, image, sessions=10, model="xception", server_pid=pid)
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from browser_support import CHROMIUM, CHROMIUM_ARGS
from PIL import Image

START_TEXT = "Upload an X-ray or pick a sample to start."
READING_LABEL = "Probability of pneumonia"
# An upload counts as lost once the page has shown no file, no result and no running script for this long.
LOST_AFTER_S = 15
POLL_S = 1.0
BROWSER_NICE = 10
# One round trip per poll: what the page shows (DOM presence; Streamlit renders elements as they arrive).
PAGE_STATE_JS = """([start, label]) => ({
    reading: [...document.querySelectorAll('[data-testid=stMetric]')].some(e => e.textContent.includes(label)),
    images: document.querySelectorAll('[data-testid=stImage]').length,
    file: document.querySelectorAll('[data-testid=stFileChip]').length > 0,
    start: document.body.textContent.includes(start),
    running: document.querySelectorAll('[data-testid=stStatusWidget]').length > 0,
})"""


def distinct_copies(image: Path, count: int, folder: Path, first: int = 0) -> list[Path]:
    """``count`` PNG copies of ``image``, each with one pixel changed, so each has its own hash.

    Copies made with different ``first`` (the first copy's number) differ from each other too, so a
    second wave is not served the first wave's cached results.
    """
    pixels = np.asarray(Image.open(image).convert("L")).copy()
    copies = []
    for index in range(first, first + count):
        variant = pixels.copy()
        variant[0, 0] = (int(variant[0, 0]) + index + 1) % 256
        path = folder / f"session_{index}.png"
        Image.fromarray(variant).save(path)
        copies.append(path)
    return copies


class DeliveryClock:
    """When the server's reading and heatmap reach this page's websocket (before the browser renders them).

    On the bench the ten browsers share the server's two cores, so rendering is slowed by the load test
    itself; the delivery time is what the server controls (on a ward every browser has its own machine).
    """

    def __init__(self) -> None:
        self.since: float | None = None
        self.reading: float | None = None
        self.heatmap: float | None = None
        self._images = 0

    def watch(self, socket) -> None:
        if "_stcore/stream" in socket.url:
            socket.on("framereceived", self._on_frame)

    def _on_frame(self, payload: bytes | str) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if self.since is None or self.heatmap is not None or not isinstance(payload, bytes):
            return
        msg = ForwardMsg.FromString(payload)
        if msg.WhichOneof("type") != "delta" or msg.delta.WhichOneof("type") != "new_element":
            return
        element = msg.delta.new_element
        kind = element.WhichOneof("type")
        if kind == "metric" and element.metric.label == READING_LABEL and self.reading is None:
            self.reading = time.perf_counter() - self.since
        elif kind == "imgs":
            self._images += 1
            if self._images == 2:  # The original, then the heatmap overlay (as the page shows them).
                self.heatmap = time.perf_counter() - self.since


async def _wait_for_result(page, figures: dict, uploaded: float, timeout_s: float) -> str:
    """``"done"`` once the heatmap shows, ``"lost"`` when the upload is gone, ``"slow"`` at the time limit.

    Records ``reading_s`` and ``heatmap_s`` (seconds from the upload until the page shows them) on the way.
    """
    gone_since = None
    while (now := time.perf_counter()) - uploaded < timeout_s:
        state = await page.evaluate(PAGE_STATE_JS, [START_TEXT, READING_LABEL])
        if state["reading"]:
            figures.setdefault("reading_s", now - uploaded)
            if state["images"] >= 2:
                figures["heatmap_s"] = now - uploaded
                return "done"
        gone = not (state["file"] or state["reading"] or state["running"]) and state["start"]
        gone_since = (gone_since or now) if gone else None
        if gone_since is not None and now - gone_since >= LOST_AFTER_S:
            return "lost"
        await asyncio.sleep(POLL_S)
    return "slow"


async def _one_session(browser, url: str, image: Path, model: str, timeout_s: float, start: asyncio.Barrier) -> dict:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    sockets, clock = [], DeliveryClock()
    page.on("websocket", lambda socket: (sockets.append(socket), clock.watch(socket)))
    figures: dict = {"outcome": "slow"}
    try:
        started = time.perf_counter()
        await page.goto(url)
        await page.get_by_text(START_TEXT).wait_for()
        figures["page_load_s"] = time.perf_counter() - started
        await asyncio.wait_for(start.wait(), timeout_s)  # Every page loaded: now all switch and upload at once.
        await page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first.click()
        await page.get_by_role("option", name=model, exact=False).first.click()
        clock.since = time.perf_counter()
        await page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(image))
        figures["outcome"] = await _wait_for_result(page, figures, clock.since, timeout_s)
    except Exception as error:  # A timeout is the measured outcome here, not a crash of the driver.
        await start.abort()  # Do not keep the other sessions waiting for this one.
        figures["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    finally:
        figures.update(reading_delivered_s=clock.reading, heatmap_delivered_s=clock.heatmap)
        if figures["outcome"] != "done":
            figures.setdefault("error", f"no result: {figures['outcome']}")
            figures["page_text"] = (await page.locator("body").inner_text())[-600:]
        figures["websockets"] = sum("_stcore/stream" in socket.url for socket in sockets)
        await context.close()
    return figures


async def _run(url: str, images: list[Path], model: str, timeout_s: float) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            start = asyncio.Barrier(len(images))
            sessions = (_one_session(browser, url, image, model, timeout_s, start) for image in images)
            return await asyncio.gather(*sessions)
        finally:
            await browser.close()


def run_on_own_thread(sessions: Coroutine, niceness: int = 0) -> list[dict]:
    """Run ``sessions`` to completion in a new event loop on a thread of its own, at ``niceness``.

    A thread of its own: the suite's synchronous Playwright keeps an event loop running in the caller's.
    Processes started from that thread (the browsers) inherit its niceness (Linux: per thread).
    """

    def run() -> list[dict]:
        if niceness:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        return asyncio.run(sessions)

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"No VmHWM for process {pid}.")


def percentiles(seconds: list[float]) -> dict:
    """p50, p95 and max of ``seconds`` (None each when there are none)."""
    if not seconds:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    array = np.asarray(seconds)
    return {
        "p50_s": round(float(np.median(array)), 3),
        "p95_s": round(float(np.percentile(array, 95)), 3),
        "max_s": round(float(array.max()), 3),
    }


def values(results: list[dict], name: str) -> list[float]:
    """The ``name`` figure of every session that has one."""
    return [result[name] for result in results if result.get(name) is not None]


def run_load(url: str, image: Path, sessions: int, model: str, server_pid: int, timeout_s: float = 120) -> dict:
    """Run ``sessions`` browser sessions at once and summarise their latencies and the server's memory.

    Returns:
        ``sessions``; ``lost`` (the upload vanished: no file, no result, page idle at its start) and
        ``slow`` (no result within ``timeout_s`` but the upload still in place); ``reconnects`` (extra
        websocket connections); percentiles of the page load and, from the upload, of the reading and
        heatmap as shown on the page and as delivered to its websocket (``*_delivered``); the server's
        peak RSS; each failed session's error and page text.
    """
    with tempfile.TemporaryDirectory() as folder:
        images = distinct_copies(image, sessions, Path(folder))
        # Niced, the browsers (stand-ins for the doctors' own machines) take the cores the server does not need.
        results = run_on_own_thread(_run(url, images, model, timeout_s), niceness=BROWSER_NICE)
    return {
        "sessions": sessions,
        "model": model,
        "lost": sum(result["outcome"] == "lost" for result in results),
        "slow": sum(result["outcome"] not in ("done", "lost") for result in results),
        "reconnects": sum(max(0, result["websockets"] - 1) for result in results),
        "page_load": percentiles(values(results, "page_load_s")),
        "reading": percentiles(values(results, "reading_s")),
        "heatmap": percentiles(values(results, "heatmap_s")),
        "reading_delivered": percentiles(values(results, "reading_delivered_s")),
        "heatmap_delivered": percentiles(values(results, "heatmap_delivered_s")),
        "server_peak_rss_mb": round(peak_rss_mb(server_pid), 1),
        "errors": [r["error"] for r in results if "error" in r],
        "texts": [r["page_text"] for r in results if "page_text" in r],
    }
