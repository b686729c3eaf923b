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
        st.caption("Fix the path in the sidebar; leave it empty for the bundled model.")
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
