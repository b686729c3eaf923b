"""MTP self-speculative decoding, explained on a live model.   streamlit run explainer/app.py

The entrypoint is the router and the frame: sidebar (checkpoint path, prompt) + st.navigation.
The checkpoint path defaults to $MTP_REF_MODEL, else the bundled tiny MTP model.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from explainer import common  # noqa: E402

# One module per page. The folder is not called "pages": Streamlit treats a pages/ folder next to the
# entrypoint as a legacy (v1) multipage app, which breaks deep links to custom URL paths on a fresh
# server and AppTest.switch_page.
PAGES = [
    ("views/why_slow.py", "Why decoding is slow", "why-slow", ":material/speed:"),
    ("views/draft_heads.py", "Draft heads", "draft-heads", ":material/call_split:"),
    ("views/verification.py", "Step-by-step verification", "verify", ":material/fact_check:"),
    ("views/acceptance.py", "Acceptance and speedup", "acceptance", ":material/monitoring:"),
    ("views/port_it.py", "Port it", "port", ":material/construction:"),
]


def sidebar() -> None:
    st.session_state.setdefault("ckpt_path", common.default_path())
    st.session_state.setdefault("prompt", common.DEFAULT_PROMPT)
    with st.sidebar:
        st.text_input("Checkpoint directory", key="ckpt_path",
                      placeholder="empty = bundled mtp_ref/checkpoints/mtp-tiny",
                      help="A Hugging Face checkpoint directory (config.json + safetensors).")
        model, err = common.load(st.session_state["ckpt_path"])
        if model is None:
            st.error("Checkpoint not loaded (details on the page).")
        else:
            c = model.config
            st.caption(f"**{c.model_type}** · {c.num_hidden_layers} layers · hidden {c.hidden_size} · "
                       f"vocab {c.vocab_size} · {c.num_mtp_modules} MTP module(s)")
        st.text_area("Prompt", key="prompt", height=90, help="Used by Draft heads, Verification and Port it.")


def run() -> None:
    st.set_page_config(page_title="MTP explained", page_icon=":material/fast_forward:", layout="wide")
    sidebar()
    nav = st.navigation([st.Page(p, title=t, url_path=u, icon=i, default=(u == "why-slow")) for p, t, u, i in PAGES])
    nav.run()


run()
