"""What every page shares: the cached model, the sidebar's checkpoint path and prompt, formatting."""

from __future__ import annotations

import html
import os
from pathlib import Path

import streamlit as st

from mtp_ref import MtpRefError, load_model
from mtp_ref.model import BUNDLED, Model

ROOT = Path(__file__).resolve().parent.parent
ENV_MODEL = "MTP_REF_MODEL"          # checkpoint directory the app opens by default (tests point it at a tiny one)
DEFAULT_PROMPT = "Once upon a time, there was a little girl named Lily. She"


@st.cache_resource(show_spinner="Loading checkpoint ...", max_entries=4)
def _load(path: str) -> Model:
    """One Model per checkpoint path, shared by all sessions (it holds weights only; state lives in caches)."""
    return load_model(path or None)


def default_path() -> str:
    return os.environ.get(ENV_MODEL, "")


def load(path: str) -> tuple[Model | None, str | None]:
    """(model, None) or (None, a one-paragraph reason). Never raises."""
    try:
        return _load(path.strip()), None
    except MtpRefError as e:
        return None, str(e)
    except (OSError, ValueError, KeyError) as e:  # an unreadable file the engine did not anticipate
        return None, f"{path or BUNDLED}: cannot be read ({type(e).__name__}: {e})"


def model_or_none() -> Model | None:
    return load(st.session_state.get("ckpt_path", default_path()))[0]


def require_model() -> Model:
    """The loaded model, or show the load error in the page and stop rendering it."""
    model, err = load(st.session_state.get("ckpt_path", default_path()))
    if model is None:
        st.error(f"**The checkpoint could not be loaded.** {err}")
        st.markdown("Fix the path in the sidebar; leave it empty for the bundled model.")
        st.stop()
    return model


def prompt_text() -> str:
    return st.session_state.get("prompt", DEFAULT_PROMPT)


def prompt_ids_or_error(model: Model) -> tuple[list[int], str | None]:
    """Token ids of the sidebar prompt (comma-separated ids when the checkpoint has no tokenizer)."""
    text = prompt_text()
    try:
        if model.tokenizer is None:
            ids = [int(x) for x in text.replace(" ", "").split(",") if x]
        else:
            ids = model.encode(text)
    except (MtpRefError, ValueError) as e:
        return [], f"The prompt cannot be encoded: {e}. Without tokenizer.json, give comma-separated token ids."
    if not ids:
        return [], "The prompt is empty: give at least one token in the sidebar."
    bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
    if bad:
        return [], f"Token id {bad[0]} is outside the vocabulary [0, {model.config.vocab_size})."
    limit = model.config.max_position_embeddings
    if len(ids) + 80 > limit:
        return [], f"The prompt has {len(ids)} tokens; this model's context (max_position_embeddings) is {limit}."
    return ids, None


def prompt_ids(model: Model) -> list[int]:
    """The sidebar prompt's ids, or show why not in the page and stop rendering it."""
    ids, err = prompt_ids_or_error(model)
    if err:
        st.error(err)
        st.stop()
    return ids


def token_str(model: Model, t: int) -> str:
    """A token as visible text: the decoded piece with spaces and newlines made visible."""
    s = model.decode([t]) if model.tokenizer is not None else str(t)
    return s.replace("\n", "\u21b5").replace(" ", "\u2423") or f"<{t}>"


def token_html(model: Model, t: int, color: str, title: str = "") -> str:
    s = model.decode([t]) if model.tokenizer is not None else f" {t}"
    s = html.escape(s).replace("\n", "\u21b5<br>")
    return (f'<span title="{html.escape(title)}" style="background:{color};border-radius:3px;'
            f'padding:0 1px;margin:0 1px;white-space:pre-wrap">{s}</span>')


def fmt_bytes(b: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_count(n: float) -> str:
    for unit, f in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.3g}{unit}"
    return f"{n:.0f}"


@st.cache_data(show_spinner=False)
def loaded_cost(key: str, _model: Model):
    """The bandwidth cost model of the loaded checkpoint, counted from its tensors (see roofline.py)."""
    from explainer import roofline
    return roofline.from_checkpoint(_model)


def model_key(model: Model) -> str:
    """A hashable identity of the loaded checkpoint for st.cache_data keys."""
    p = Path(model.path)
    files = sorted(p.glob("*.safetensors"))
    return f"{p.resolve()}|{sum(f.stat().st_mtime_ns for f in files)}"


def widget_key(key: str, default, valid=None) -> str:
    """Key for a widget whose value must survive page switches (Streamlit drops a page's widget state).

    The value lives in st.session_state[key]; the widget uses "_w_" + key and is re-seeded from it.
    Call remember(key) after creating the widget.
    """
    st.session_state.setdefault(key, default)
    wk = "_w_" + key
    if valid is not None and not valid(st.session_state.get(wk, st.session_state[key])):
        st.session_state[key] = st.session_state[wk] = default
    if wk not in st.session_state:
        st.session_state[wk] = st.session_state[key]
    return wk


def remember(key: str):
    st.session_state[key] = st.session_state["_w_" + key]
    return st.session_state[key]


# ---------------------------------------------------------------------- the lesson's frame

INK = "#1f2328"            # body and chart text: 15.8:1 on white
MUTED = "#3d4650"          # secondary text: 9.9:1 on white (Streamlit's default caption grey is ~4:1)
GRID = "#d0d7de"
SERIES = ["#0b5cad", "#b3261e", "#1a7f37", "#8250df", "#9a6700", "#0a7d8c"]   # each >= 4.5:1 on white
CHART_FONT = 16            # px: the smallest text on a chart, readable from the back of a room


def style(fig, title: str, height: int = 400, legend_below: bool = True):
    """Projector style for every chart: a title, 16 px text in dark ink, no minor log-axis labels.

    legend_below=True puts the legend under the x-axis title: about 95 px below the plot area, whatever the
    height (plotly places legends in fractions of the plot area and grows the bottom margin to fit them)."""
    fig.update_layout(
        title=dict(text=title, font=dict(size=CHART_FONT + 4, color=INK), x=0, xanchor="left"),
        font=dict(size=CHART_FONT, color=INK), height=height, template="plotly_white",
        margin=dict(t=60, b=10, l=10, r=10), hoverlabel=dict(font_size=CHART_FONT),
        legend=dict(orientation="h", y=-95 / max(height - 150, 100), yanchor="top", x=0, font=dict(size=CHART_FONT))
        if legend_below else dict(font=dict(size=CHART_FONT)))
    for ax in (fig.layout.xaxis, fig.layout.yaxis):
        ax.update(tickfont=dict(size=CHART_FONT, color=INK), title_font=dict(size=CHART_FONT, color=INK),
                  gridcolor=GRID, linecolor=MUTED, zerolinecolor=GRID)
        if ax.type == "log":
            ax.update(dtick=1, minor=dict(showgrid=False, ticks=""), exponentformat="power")
    fig.update_annotations(font_size=CHART_FONT)
    return fig


CSS = """
<style>
/* a lesson page must show its first evidence on a 1280x720 projector: less empty space above the title */
[data-testid="stMainBlockContainer"] { padding-top: 2.2rem; }
h1 { font-size: 2.3rem !important; padding-top: 0.2rem !important; }
/* captions in readable ink, not light grey */
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p { color: %(muted)s !important; }
.mtp-takeaway { font-size: 1.22rem; line-height: 1.5; border-left: 6px solid #0b5cad; padding: 0.4rem 0 0.4rem 1rem;
  margin: 0.2rem 0 1rem 0; color: %(ink)s; }
.mtp-chip { display: inline-block; border-radius: 4px; padding: 0 4px; margin: 1px; font-family: monospace;
  border: 1px solid #8c959f; color: %(ink)s; }
/* side-by-side blocks stack in narrow windows (projectors at 1024 px), except rows of buttons */
@media (max-width: 1200px) {
  [class*="st-key-stack"] [data-testid="stHorizontalBlock"] { flex-wrap: wrap !important; }
  [class*="st-key-stack"] [data-testid="stColumn"] { min-width: 100%% !important; flex: 1 1 100%% !important; }
}
[class*="st-key-buttons"] button p { white-space: nowrap; }
%(presenter)s
</style>
"""
PRESENTER_CSS = """
html { font-size: 19px; }
[data-testid="stMainBlockContainer"] { padding-top: 1.2rem; max-width: 100%; }
"""


def presenter() -> bool:
    """Presenter mode: larger type, sidebar collapsed. On with ?presenter=1 or the toggle."""
    if "presenter" not in st.session_state:
        st.session_state["presenter"] = st.query_params.get("presenter", "0") in ("1", "true", "yes")
    return bool(st.session_state["presenter"])


def inject_css() -> None:
    st.markdown(CSS % {"muted": MUTED, "ink": INK, "presenter": PRESENTER_CSS if presenter() else ""},
                unsafe_allow_html=True)


def chapter(number: int | str, title: str, takeaway: str) -> None:
    """A chapter's head: its number and title, then its one takeaway sentence in body text."""
    st.title(f"{number} · {title}" if number != "" else title)
    st.markdown(f'<div class="mtp-takeaway">{takeaway}</div>', unsafe_allow_html=True)


def predict_then_reveal(key: str, question: str, options: list[str], reveal) -> str | None:
    """The student commits to an answer before the app shows the evidence; reveal(choice) draws it."""
    st.subheader("Predict, then reveal")
    st.markdown(f"**{question}**")
    choice = st.radio("Your prediction", options, index=None, key=f"pr_{key}", label_visibility="collapsed")
    shown = st.session_state.get(f"pr_{key}_shown", False)
    if not shown:
        if st.button("Reveal the answer", key=f"pr_{key}_reveal", disabled=choice is None,
                     help="Pick an answer first."):
            st.session_state[f"pr_{key}_shown"] = True
            st.rerun()
        return None
    reveal(choice)
    return choice


def next_chapter(page: str, label: str) -> None:
    """The Next button at the bottom of a chapter."""
    st.divider()
    if st.button(f"Next: {label}  →", key=f"next_{page}", type="primary"):
        st.switch_page(page)


GLOSSARY = {
    "token": "a piece of text the model reads or writes (a word, part of a word, a space). "
             "On screen, ␣ stands for a space and ↵ for a new line.",
    "forward (pass)": "one run of the model over some tokens; it reads every weight from memory once.",
    "trunk / target": "the full model, whose output we must reproduce exactly.",
    "MTP module": "a small extra block shipped with the model that guesses the token after the next one "
                  "from the trunk's hidden state and the next token's embedding.",
    "draft (d1 .. dk)": "the k guessed tokens of one cycle; k is the draft depth.",
    "pending token": "the token the trunk already chose but has not fed back in yet; every verify forward starts "
                     "with it.",
    "verify": "ONE trunk forward over [pending, d1 .. dk]; row j tells what the trunk would write after d_j.",
    "accept / reject": "greedy: keep a draft while it equals the trunk's choice; sampling: keep it with "
                       "probability min(1, p/q).",
    "correction / bonus token": "after the first rejected draft, the trunk's own token replaces it (correction); "
                                "if all k drafts pass, the last verify row gives one more token for free (bonus).",
    "KV cache": "the keys and values of every past token, kept so that a forward only processes new tokens.",
    "rollback": "cutting cache rows written for drafts that were rejected; the rows stay in memory and are "
                "overwritten next cycle.",
    "chain / recursive": "chain: module j drafts depth j+1; recursive: module 0 drafts every depth, fed its own "
                         "output.",
    "acceptance rate": "the share of cycles in which the draft at a given depth was kept.",
    "memory-bound": "the chip waits for weights to arrive from memory, not for arithmetic.",
}


def glossary(terms: list[str] | None = None) -> None:
    with st.expander("Words used here"):
        for t in terms or list(GLOSSARY):
            st.markdown(f"**{t}**: {GLOSSARY[t]}")


@st.cache_data(show_spinner=False)
def cuda_line() -> str:
    """One plain sentence on whether this computer can time the numba-CUDA backend. Never raises."""
    try:
        from numba import config as numba_config
        from numba import cuda
    except ImportError:
        return "CUDA: numba-cuda is not installed here (`make test` installs it), so only the CPU is timed."
    try:
        if numba_config.ENABLE_CUDASIM or not cuda.is_available():   # the simulator is no GPU to time
            return "CUDA: no NVIDIA GPU found on this computer, so only the CPU is timed."
    except Exception:  # noqa: BLE001 - a broken driver install is also "no GPU" for a lesson
        return "CUDA: no NVIDIA GPU found on this computer, so only the CPU is timed."
    return "CUDA: an NVIDIA GPU is available"
