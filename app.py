"""Pneumonia chest X-ray decision support: the Streamlit entry point.

Usage:
    streamlit run app.py            # or `make run`; see README, "Deploying for a team"

The shipped models (the recommended one first) are loaded and warmed in the background once the first page
has been drawn. Before anything else, two work-arounds are installed: for Streamlit losing uploads under load, and
for it resetting Keras after every run.
"""

import streamlit as st

from pages.common import (
    keep_keras_state_across_reruns,
    keep_upload_replies_across_reruns,
    mark_app_entry,
    start_warm_up,
)

keep_upload_replies_across_reruns()  # Process-wide and idempotent; see its docstring.
keep_keras_state_across_reruns()  # Idem: no Keras reset (a full garbage collection) after every run.
st.set_page_config(page_title="Pneumonia X-ray assistant", page_icon="🫁", layout="wide")


def sign_in_required() -> bool:
    """Sign-in is required when ``.streamlit/secrets.toml`` has an ``[auth]`` (OpenID Connect) section."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:
        return False


if sign_in_required() and not st.user.get("is_logged_in", False):
    st.title("Pneumonia X-ray assistant")
    st.info("This server requires you to sign in with your organisation's account.")
    st.button("Sign in", on_click=st.login, key="sign_in", type="primary")
    st.stop()
if sign_in_required():
    st.sidebar.button("Sign out", on_click=st.logout, key="sign_out")

navigation = st.navigation(
    [
        st.Page("pages/diagnose.py", title="Diagnose", icon=":material/radiology:", default=True),
        st.Page("pages/batch.py", title="Batch and local validation", icon=":material/stacks:"),
        st.Page("pages/compare.py", title="Compare models", icon=":material/monitoring:"),
        st.Page("pages/cards.py", title="Model cards", icon=":material/description:"),
    ]
)
mark_app_entry()  # Each page checks it (pages.common.require_app_entry): no page bypasses sign-in.
try:
    navigation.run()
finally:  # After the first page is drawn: its imports would otherwise wait behind TensorFlow's for the GIL.
    start_warm_up()
