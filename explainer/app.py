"""MTP self-speculative decoding, a lesson on a live model.   streamlit run explainer/app.py

The entrypoint is the router and the frame: the sidebar (checkpoint path, prompt, presenter mode) and
st.navigation with the lesson's chapters and the lab. The checkpoint path defaults to $MTP_REF_MODEL,
else the bundled tiny MTP model. ?presenter=1 in the URL starts in presenter mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from explainer import common  # noqa: E402

# One module per page: (file, title, url path, icon). The folder is not called "pages": Streamlit treats a
# pages/ folder next to the entrypoint as a legacy (v1) multipage app, which breaks deep links to custom URL
# paths on a fresh server and AppTest.switch_page.
START = ("views/start.py", "Start here", "start", ":material/school:")
LESSON = [
    ("views/why_slow.py", "1 · The wait", "wait", ":material/hourglass_top:"),
    ("views/guess_check.py", "2 · Guess and check", "guess-and-check", ":material/fact_check:"),
    ("views/draft_heads.py", "3 · Where the guesses come from", "draft-heads", ":material/call_split:"),
    ("views/verification.py", "4 · Keeping the output exact", "exact", ":material/verified:"),
    ("views/acceptance.py", "5 · How much faster", "faster", ":material/speed:"),
    ("views/limits.py", "6 · Where it stops paying", "limits", ":material/trending_down:"),
]
LAB = [
    ("views/inspect_page.py", "Inspect a checkpoint", "inspect", ":material/search:"),
    ("views/port_it.py", "Port it", "port", ":material/construction:"),
]
PAGES = [START] + LESSON + LAB


def sidebar() -> None:
    st.session_state.setdefault("ckpt_path", common.default_path())
    st.session_state.setdefault("prompt", common.DEFAULT_PROMPT)
    with st.sidebar:
        st.toggle("Presenter mode", key="presenter", help="Larger type and the sidebar collapsed, for a projector. "
                  "Also: add ?presenter=1 to the address.")
        st.text_input("Checkpoint directory", key="ckpt_path",
                      placeholder="empty = the bundled tiny MTP model",
                      help="A Hugging Face checkpoint directory (config.json + safetensors).")
        model, err = common.load(st.session_state["ckpt_path"])
        if model is None:
            st.error("Checkpoint not loaded (details on the page).")
        else:
            c = model.config
            st.markdown(f"**{c.model_type}** · {c.num_hidden_layers} layers · hidden {c.hidden_size} · "
                        f"vocab {c.vocab_size} · {c.num_mtp_modules} MTP module(s)")
        st.text_area("Prompt", key="prompt", height=90, help="The text the chapters continue.")


def run() -> None:
    presenter = common.presenter()
    # the icon is a file of ours: a Material-symbol icon would be fetched from a font server, which fails offline
    st.set_page_config(page_title="MTP explained", page_icon=str(Path(__file__).parent / "icon.png"), layout="wide",
                       initial_sidebar_state="collapsed" if presenter else "auto")
    common.inject_css()
    sidebar()
    page = lambda p, t, u, i: st.Page(p, title=t, url_path=u, icon=i, default=(u == "start"))  # noqa: E731
    nav = st.navigation({"": [page(*START)], "Lesson": [page(*p) for p in LESSON],
                         "Lab": [page(*p) for p in LAB]})
    nav.run()


run()
