"""A bounded load test: several browser sessions at once on loopback, none may lose its upload.

Each session switches model and uploads right after (the sequence that once lost 7 uploads in
30), then must see the reading and the heatmap. The ten-session figures for the shipped models
are written by ``bench/load_test.py``.
"""

from __future__ import annotations

import pytest
from browser_support import SAMPLES_DIR, require_chromium, streamlit_server
from load_driver import run_load

pytestmark = pytest.mark.browser

SESSIONS = 4


def test_simultaneous_sessions_all_get_their_reading(trained_models_dir):
    """Four sessions that switch model then upload at once all get a reading and a heatmap."""
    require_chromium()
    with streamlit_server(trained_models_dir, "load_server.log") as server:
        figures = run_load(
            server.url,
            SAMPLES_DIR / "person1371_virus_2361.jpeg",
            sessions=SESSIONS,
            model="mlp",
            server_pid=server.process.pid,
        )
    assert figures["lost"] == 0, figures["errors"]
    assert figures["heatmap"]["max_s"] is not None
    assert figures["server_peak_rss_mb"] > 0
