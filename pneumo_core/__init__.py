"""pneumo_core: data, models, training, evaluation, Grad-CAM and image I/O for the
pneumonia chest X-ray app. It never imports streamlit.

Usage:
    python -m pneumo_core --help
"""

__version__ = "0.1.0"
