"""Safe deployment defaults: what a fresh `make run` exposes, and sign-in when a team server asks for it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())


def test_server_listens_on_this_machine_only_by_default():
    """The server binds to localhost; serving a network is an explicit `make run ADDRESS=...`."""
    assert CONFIG["server"]["address"] == "localhost"
    assert "ADDRESS ?= localhost" in (REPO_ROOT / "Makefile").read_text()


def test_browser_never_sees_tracebacks():
    """Error details stay in the server log: the browser gets a generic message, never a stack trace."""
    assert CONFIG["client"]["showErrorDetails"] == "none"


def test_no_file_watcher_in_the_served_app():
    """No file watcher walks the .venv on the event loop, and code is never reloaded under users."""
    assert CONFIG["server"]["fileWatcherType"] == "none"
    assert CONFIG["server"]["runOnSave"] is False


def test_upload_limit_matches_the_decoder():
    """Streamlit's upload cap is the decoder's size limit, so both say the same number."""
    from pneumo_core.imaging import MAX_UPLOAD_MB

    assert CONFIG["server"]["maxUploadSize"] == MAX_UPLOAD_MB


def test_sign_in_is_required_when_the_server_has_an_auth_section(trained_models_dir, monkeypatch):
    """With an [auth] section in the secrets, a signed-out visitor sees only the sign-in button."""
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(trained_models_dir))
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "test-only-secret",
        "client_id": "pneumo",
        "client_secret": "test-only",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
    }
    at.run()
    assert not at.exception, at.exception
    assert [button.key for button in at.button] == ["sign_in"]
    assert not at.file_uploader


def test_no_sign_in_without_an_auth_section(trained_models_dir, monkeypatch):
    """Without secrets (the default, on localhost), the Diagnose page opens directly."""
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(trained_models_dir))
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert len(at.file_uploader) == 1
