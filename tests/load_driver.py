"""Many browser sessions at once against a running app: the load test shared by the suite and the bench.

Each session opens the Diagnose page in its own browser context (its own Streamlit session),
switches model in the sidebar and uploads an X-ray right after (the sequence that used to lose
uploads), then waits for the reading and the heatmap. Loopback only; bounded in sessions and time.

Usage (from the tests or ``bench/load_test.py``):
    figures = run_load(url, image, sessions=10, model="xception", server_pid=pid)
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from browser_support import CHROMIUM, CHROMIUM_ARGS

START_TEXT = "Upload an X-ray or pick a sample to start."


async def _one_session(browser, url: str, image: Path, model: str, timeout_ms: int) -> dict:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    figures: dict = {"lost": True}
    try:
        started = time.perf_counter()
        await page.goto(url)
        await page.get_by_text(START_TEXT).wait_for()
        figures["page_load_s"] = time.perf_counter() - started
        await page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first.click()
        await page.get_by_role("option", name=model, exact=False).first.click()
        await page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(image))
        uploaded = time.perf_counter()
        await page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia").wait_for()
        figures["reading_s"] = time.perf_counter() - uploaded
        await page.get_by_test_id("stImage").nth(1).wait_for()
        figures["heatmap_s"] = time.perf_counter() - uploaded
        figures["lost"] = False
    except Exception as error:  # A timeout is the measured outcome here, not a crash of the driver.
        figures["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        figures["page_text"] = (await page.locator("body").inner_text())[-600:]
    finally:
        await context.close()
    return figures


async def _run(url: str, image: Path, sessions: int, model: str, timeout_ms: int) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(
                *(_one_session(browser, url, image, model, timeout_ms) for _ in range(sessions))
            )
        finally:
            await browser.close()


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"No VmHWM for process {pid}.")


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    array = np.asarray(values)
    return {
        "p50_s": round(float(np.median(array)), 3),
        "p95_s": round(float(np.percentile(array, 95)), 3),
        "max_s": round(float(array.max()), 3),
    }


def run_load(url: str, image: Path, sessions: int, model: str, server_pid: int, timeout_s: float = 120) -> dict:
    """Run ``sessions`` browser sessions at once and summarise their latencies and the server's memory.

    Returns:
        ``sessions``, ``lost`` (sessions that never showed a result), page-load, reading and
        heatmap percentiles (seconds from upload), the server's peak RSS and each session's errors.
    """
    # A thread of its own: the suite's synchronous Playwright keeps an event loop running in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        results = pool.submit(asyncio.run, _run(url, image, sessions, model, int(timeout_s * 1000))).result()
    return {
        "sessions": sessions,
        "model": model,
        "lost": sum(result["lost"] for result in results),
        "page_load": _percentiles([r["page_load_s"] for r in results if "page_load_s" in r]),
        "reading": _percentiles([r["reading_s"] for r in results if "reading_s" in r]),
        "heatmap": _percentiles([r["heatmap_s"] for r in results if "heatmap_s" in r]),
        "server_peak_rss_mb": round(peak_rss_mb(server_pid), 1),
        "errors": [r["error"] for r in results if "error" in r],
        "texts": [r["page_text"] for r in results if "page_text" in r],
    }
