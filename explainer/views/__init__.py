"""One module per explainer page; app.py registers them with st.navigation."""
