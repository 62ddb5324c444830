"""Browser benchmark of the served app: page ready after launch, and ten sessions at once.

Starts ``streamlit run app.py`` (the ``make run`` entry; the first page drawn starts the model warm-up) on a free
loopback port with the shipped models, drives Debian's Chromium through Playwright, and writes
``bench/load_test.json``:

- ``page_ready_after_launch_s``: from spawning the server to the Diagnose page being usable;
- ``warm_up_after_page_ready_s``: until the server is idle, its warm-up of the shipped models done;
- for cnn and xception, ten browser sessions that each switch to the model and upload their own copy of a
  sample at once: reading and heatmap latency p50/p95 (from upload), lost uploads (the upload vanished), slow
  sessions (no result within the time limit, upload still in place), websocket reconnects, the server's peak
  RSS, and the CPU the server and the whole machine used during the wave (the browsers share the server's cores);
- ``client``: the same ten sessions at once through Streamlit's websocket protocol instead of browsers
  (``tests/client_driver.py``): what the server delivers when the doctors' browsers run on their own machines.

Usage:
    .venv/bin/python bench/load_test.py [--sessions 10] [--out bench/load_test.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from browser_support import SAMPLES_DIR, chromium_browser, streamlit_server  # noqa: E402
from client_driver import run_client_load  # noqa: E402
from load_driver import START_TEXT, distinct_copies, peak_rss_mb, run_load  # noqa: E402

SAMPLE = SAMPLES_DIR / "person1371_virus_2361.jpeg"


def page_ready_seconds(url: str, launched: float) -> float:
    """Seconds from the server's launch until a browser shows the Diagnose page's uploader."""
    with chromium_browser() as browser:
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.get_by_text(START_TEXT).wait_for()
        page.get_by_test_id("stFileUploaderDropzoneInput").wait_for(state="attached")
        return time.perf_counter() - launched


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, quiet_s: float = 3.0, limit_s: float = 300.0) -> float:
    """Wait until the server has used under a tenth of a core for ``quiet_s`` seconds in a row.

    That is when its start-up warm-up has finished, as it would have before a ward's first users.

    Returns:
        The seconds waited.
    """
    started = time.perf_counter()
    quiet_since, used = started, cpu_seconds(pid)
    while time.perf_counter() - quiet_since < quiet_s and time.perf_counter() - started < limit_s:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - used > 0.05:
            quiet_since = time.perf_counter()
        used = now
    return time.perf_counter() - started


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (Linux ``/proc/stat``)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measured_wave(url: str, model: str, sessions: int, pid: int) -> dict:
    """One wave of ``sessions`` browsers at once, with the CPU the server and the whole machine used meanwhile,
    then one wave of as many protocol clients (``client``).

    The browsers run on the same cores as the server, so ``server_cpu_share`` (the server's CPU seconds
    over all the CPU seconds the machine used during the wave) says how much of the machine the app got.
    """
    server_before, machine_before, started = cpu_seconds(pid), machine_busy_seconds(), time.perf_counter()
    figures = run_load(url, SAMPLE, sessions=sessions, model=model, server_pid=pid)
    server, machine = cpu_seconds(pid) - server_before, machine_busy_seconds() - machine_before
    figures["cpu"] = {
        "wall_s": round(time.perf_counter() - started, 1),
        "server_cpu_s": round(server, 1),
        "machine_busy_cpu_s": round(machine, 1),
        "server_cpu_share": round(server / machine, 2) if machine else None,
    }
    with tempfile.TemporaryDirectory() as folder:
        images = distinct_copies(SAMPLE, sessions, Path(folder), first=sessions)  # Not the browsers' copies.
        figures["client"] = run_client_load(url, images, model)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "load_test.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    launched = time.perf_counter()
    with streamlit_server(REPO_ROOT / "models", "bench_load_server.log", script="app.py") as server:
        ready = page_ready_seconds(server.url, launched)
        warm_up = wait_until_idle(server.process.pid)
        runs = {
            model: measured_wave(server.url, model, args.sessions, server.process.pid) for model in ("cnn", "xception")
        }
        peak = peak_rss_mb(server.process.pid)
    report = {
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "page_ready_after_launch_s": round(ready, 2),
        "warm_up_after_page_ready_s": round(warm_up, 1),
        "sessions": runs,
        "server_peak_rss_mb": round(peak, 1),
    }
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, indent=2))
    complete = all(run["client"]["done"] == run["sessions"] for run in runs.values())
    return 0 if complete and all(run["lost"] == 0 and run["slow"] == 0 for run in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
