"""The Streamlit explainer: `streamlit run explainer/app.py`."""
