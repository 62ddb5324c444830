"""Shared helpers for the real-browser tests: a Streamlit server subprocess, Chromium, page actions.

Used by ``test_browser.py`` and ``test_privacy.py``; each module wraps these context managers
in its own module-scoped fixtures, so every module gets a fresh server (and its own log file).

Chromium is Debian's ``/usr/bin/chromium`` (``make chromium`` installs it). When it is missing
the browser tests are skipped locally but fail under ``CI=true``, so CI cannot go green by
silently skipping them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_DIR = REPO_ROOT / "tests" / "artifacts"
SCREENSHOTS_DIR = ARTIFACTS_DIR / "screenshots"
SAMPLES_DIR = REPO_ROOT / "assets" / "samples"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 90
# The first prediction loads TensorFlow models and builds the heatmap explainer; on a busy
# two-core machine that can take well over ten seconds.
RESULT_TIMEOUT_MS = 90_000
UI_TIMEOUT_MS = 30_000


def require_chromium() -> None:
    """Skip (locally) or fail (under ``CI=true``) when Chromium or Playwright is unavailable."""
    problems = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"{CHROMIUM} is missing: install it with `make chromium` (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright Python package is not installed (pip install -r requirements.txt)")
    if not problems:
        return
    reason = "; ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(f"Browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"Browser tests skipped: {reason}")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class StreamlitServer:
    """A running ``streamlit run app.py`` subprocess."""

    url: str
    log_path: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200 and response.read().strip() == b"ok"
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def streamlit_server(models_dir: Path, log_name: str, script: str = "app.py") -> Iterator[StreamlitServer]:
    """Run the app (``script``, ``app.py`` by default) on a free port until the block exits.

    The models come from ``PNEUMO_MODELS_DIR=models_dir``.
    Stdout and stderr go to ``tests/artifacts/<log_name>``. The server is stopped (terminate,
    then kill) by its own process id when the block exits, even on failure.
    """
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS_DIR / log_name
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        script,
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
    ]
    env = {**os.environ, "PNEUMO_MODELS_DIR": str(models_dir), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = StreamlitServer(url, log_path, process)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with code {process.returncode}:\n{server.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit not healthy after {SERVER_START_TIMEOUT_S} s:\n{server.log_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@contextmanager
def chromium_browser():
    """A headless Debian Chromium driven by Playwright (call :func:`require_chromium` first)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def app_page(browser, url: str, screenshot_name: str):
    """A fresh browser page (new context, so a new Streamlit session) on the app's Diagnose page.

    A full-page screenshot is saved to ``tests/artifacts/screenshots/<screenshot_name>.png``
    when the block exits, whether the test passed or failed.
    """
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page.goto(url)
        page.get_by_text("Upload an X-ray or pick a sample to start.").wait_for()
        yield page
    finally:
        try:
            save_screenshot(page, screenshot_name)
        finally:
            context.close()


def save_screenshot(page, name: str) -> Path:
    """Save a full-page screenshot to ``tests/artifacts/screenshots/<name>.png``.

    Streamlit scrolls inside its main container, not the document, so Playwright's
    ``full_page`` alone would capture one viewport: the viewport is first stretched to
    the height of the content.
    """
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS_DIR / f"{name}.png"
    height = page.evaluate(
        "() => Math.max(document.body.scrollHeight,"
        " ...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stSidebarContent]')]"
        ".map(element => element.scrollHeight))"
    )
    page.set_viewport_size({"width": page.viewport_size["width"], "height": min(max(int(height), 600), 8000)})
    page.screenshot(path=str(path), full_page=True)
    return path


def upload(page, path: Path) -> None:
    """Put one file into the Diagnose page's uploader, as a user picking it in the file dialog."""
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))


def wait_for_result(page) -> None:
    """Wait until the prediction metrics and both images (original and heatmap overlay) are shown."""
    page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia").wait_for(timeout=RESULT_TIMEOUT_MS)
    page.get_by_test_id("stImage").nth(1).wait_for(timeout=RESULT_TIMEOUT_MS)
    wait_until_idle(page)


def wait_until_idle(page) -> None:
    """Wait until Streamlit has finished the current script run (no running status widget)."""
    page.get_by_test_id("stStatusWidget").wait_for(state="detached", timeout=RESULT_TIMEOUT_MS)


def choose_model(page, name: str) -> None:
    """Pick a model in the sidebar's "Model" selectbox."""
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name=name, exact=False).first.click()
