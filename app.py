"""Pneumonia chest X-ray decision support: the Streamlit entry point.

Usage:
    streamlit run app.py
"""

import streamlit as st

st.set_page_config(page_title="Pneumonia X-ray assistant", page_icon="🫁", layout="wide")

navigation = st.navigation(
    [
        st.Page("pages/diagnose.py", title="Diagnose", icon=":material/radiology:", default=True),
        st.Page("pages/compare.py", title="Compare models", icon=":material/monitoring:"),
        st.Page("pages/cards.py", title="Model cards", icon=":material/description:"),
    ]
)
navigation.run()
