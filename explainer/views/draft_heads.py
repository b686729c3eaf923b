"""Page 2: the loaded checkpoint's MTP modules, from its tensors, with live values for the current token."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from explainer import common, heads
from mtp_ref import MtpRefError


@st.cache_data(show_spinner="Running the MTP modules on the prompt ...")
def live(key: str, ids: tuple, _model) -> dict:
    return heads.live_values(_model, list(ids))


@st.cache_data(show_spinner=False)
def tensors(key: str, j: int, _model) -> tuple[list[dict], dict]:
    return heads.module_tensors(_model, j), heads.copies_of_main(_model, j)


# ---------------------------------------------------------------------- charts

def flow_dot(model, j: int, token: str) -> str:
    """Graphviz source of module j's data flow, labelled with its real tensor names and shapes."""
    cfg, lay, ck = model.config, model.spec.mtp, model.ckpt
    p = lay.module_prefix(cfg, j)

    def t(suffix: str | None, fallback: str) -> str:
        name = p + suffix if suffix and p + suffix in ck else fallback
        return f"{name}\\n{list(ck.shape(name))}"

    main_head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    prev = "h (trunk, final norm)" if j == 0 else f"g from module {j - 1}"
    order = "[hid_norm(h), emb_norm(e)]" if lay.hidden_first else "[emb_norm(e), hid_norm(h)]"
    block = f"decoder block, layer {cfg.num_hidden_layers + j}\\n{model.spec.attention.upper()} attention"
    block += " + MoE" if model.spec.moe and cfg.is_moe_layer(cfg.num_hidden_layers + j) else " + MLP"
    nodes = {
        "tok": (f"token {token}", "ellipse"), "prev": (prev, "ellipse"),
        "emb": (t(lay.embed, "model.embed_tokens.weight"), "box"), "en": (t(lay.emb_norm, ""), "box"),
        "hn": (t(lay.hid_norm, ""), "box"), "cat": (f"concat {order}\\n[{2 * cfg.hidden_size}]", "box"),
        "proj": (t(lay.proj, ""), "box"), "blk": (block + "\\nits own KV cache", "box3d"),
        "norm": (t(lay.out_norm, ""), "box"), "head": (t(lay.head, main_head), "box"),
        "q": ("q: next-next token\\n-> draft", "ellipse"), "g": (f"g -> module {j + 1}", "ellipse"),
    }
    lines = ["digraph { rankdir=TB; nodesep=0.25; ranksep=0.3; node [fontsize=11, fontname=Helvetica];"]
    for k, (label, shape) in nodes.items():
        lines.append(f'{k} [label="{label}", shape={shape}];')
    for a, b in (("tok", "emb"), ("emb", "en"), ("prev", "hn"), ("en", "cat"), ("hn", "cat"), ("cat", "proj"),
                 ("proj", "blk"), ("blk", "norm"), ("norm", "head"), ("head", "q"), ("norm", "g")):
        lines.append(f"{a} -> {b};")
    lines.append("}")
    return "\n".join(lines)


def vectors_chart(vectors: dict[str, np.ndarray]) -> go.Figure:
    names = list(vectors)
    fig = make_subplots(rows=2, cols=4, subplot_titles=names, horizontal_spacing=0.04, vertical_spacing=0.12)
    for i, (name, v) in enumerate(vectors.items()):
        cols = 32 if v.size % 32 == 0 else v.size
        grid = v.reshape(-1, cols)
        lim = float(np.abs(v).max()) or 1.0
        fig.add_trace(go.Heatmap(z=grid, zmin=-lim, zmax=lim, colorscale="RdBu", showscale=False,
                                 hovertemplate=f"{name}<br>index %{{customdata}}<br>value %{{z:.3f}}<extra></extra>",
                                 customdata=np.arange(v.size).reshape(grid.shape)),
                      row=i // 4 + 1, col=i % 4 + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(height=380, margin=dict(t=40, b=10, l=10, r=10))
    return fig


def drafts_chart(model, live_v: dict) -> go.Figure:
    """Top-5 of the main model's next token and of each draft depth (probabilities at T = 1)."""
    tops = [("trunk: next token", live_v["main_top"])] + [
        (f"depth {j + 1} (module {j})", top) for j, top in enumerate(live_v["draft_top"])]
    fig = make_subplots(rows=1, cols=len(tops), subplot_titles=[t for t, _ in tops], shared_yaxes=True)
    for i, (_, top) in enumerate(tops, 1):
        fig.add_bar(x=[f"{r + 1}. {common.token_str(model, t)}" for r, (t, _) in enumerate(top)],
                    y=[p for _, p in top], marker_color="#1c7ed6" if i == 1 else "#845ef7", showlegend=False,
                    text=[f"{p:.2f}" for _, p in top], textposition="outside", row=1, col=i)
    fig.update_yaxes(title_text="probability (T = 1)", row=1, col=1)
    fig.update_layout(height=300, margin=dict(t=40, b=10))
    return fig


# ---------------------------------------------------------------------- sections

def modules_overview(model) -> None:
    cfg = model.config
    total = sum(i.nbytes for i in model.ckpt.infos.values())
    rows = []
    for j in range(cfg.num_mtp_modules):
        t, copies = tensors(common.model_key(model), j, model)
        b = sum(r["bytes"] for r in t)
        b_copies = sum(r["bytes"] for r in t if r["tensor"] in copies)
        rows.append({"module": j, "prefix": model.spec.mtp.module_prefix(cfg, j), "tensors": len(t),
                     "bytes": common.fmt_bytes(b), "share of checkpoint": f"{b / total:.1%}",
                     "of which embedding/head copies": common.fmt_bytes(b_copies) if copies else "none",
                     "copies equal to main": ", ".join("yes" if v else "NO" for v in copies.values())
                     or "uses the main ones"})
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.caption(f"config.json declares num_nextn_predict_layers = {cfg.num_nextn_predict_layers}; "
               f"the weights hold {cfg.num_mtp_modules} module(s). Checkpoint: {common.fmt_bytes(total)}.")


def module_detail(model, live_v: dict, j: int) -> None:
    mod = live_v["modules"][j]
    tok = common.token_str(model, mod["token_in"])
    c1, c2 = st.columns([2, 3])
    c1.graphviz_chart(flow_dot(model, j, f"'{tok}' (id {mod['token_in']})"))
    c2.markdown(f"Live values at the current row: module {j} reads token **'{tok}'** at position "
                f"{mod['position']} and the hidden from {'the trunk' if j == 0 else f'module {j - 1}'}; "
                "top-5 of its prediction: " + ", ".join(f"'{common.token_str(model, t)}' {p:.3f}" for t, p in mod["top"]))
    c2.plotly_chart(vectors_chart(mod["vectors"]), key=f"p2_vec_{j}", config={"displayModeBar": False})
    c2.caption(f"Recomputed step by step here; matches the engine's mtp_forward to max |diff| = "
               f"{mod['max_abs_diff']:.2g}. Blue < 0 < red; each panel scaled to its own max |value|.")
    t, _ = tensors(common.model_key(model), j, model)
    df = pd.DataFrame(t)
    df["bytes"] = df["bytes"].map(common.fmt_bytes)
    df["share of checkpoint"] = df["share of checkpoint"].map(lambda x: f"{x:.2%}")
    df["shape"] = df["shape"].map(str)
    with st.expander(f"Module {j}: {len(t)} tensors"):
        st.dataframe(df, hide_index=True)


def contrast(model) -> None:
    cfg = model.config
    cm = common.loaded_cost(common.model_key(model), model)
    st.subheader("Other ways to draft")
    rows = [
        {"drafter": "Separate draft model (assisted generation)",
         "what a draft sees": "its own forward over the whole context",
         "extra state": "a second model + its own KV cache",
         "drafts per round": "k sequential draft-model forwards"},
        {"drafter": "Medusa / Meta multi-token heads",
         "what a draft sees": "the trunk's last hidden only; heads run in parallel, none sees another's token",
         "extra state": "n-1 heads on the trunk",
         "drafts per round": "all heads at once from one trunk forward"},
        {"drafter": f"MTP, chained (this checkpoint: {cfg.num_mtp_modules} modules)",
         "what a draft sees": "previous depth's hidden + the embedding of the token just drafted",
         "extra state": f"one block + its KV cache per module (all modules here: {common.fmt_count(cm.mtp_params)} params)",
         "drafts per round": f"k sequential module forwards, each ~{cm.draft_ratio():.2f} of a trunk forward's bytes"},
        {"drafter": "MTP, recursive (DeepSeek-V3 in vLLM/SGLang)",
         "what a draft sees": "module 0 again, fed its own output",
         "extra state": "one module",
         "drafts per round": "k sequential forwards of module 0; trained for depth 1, so later depths accept less"},
    ]
    st.table(pd.DataFrame(rows).set_index("drafter"))
    st.caption("Sources: shared/reference/mtp_families.md sections 0, 1.8 and 2; anchors A6 (assisted generation), "
               "A7 (Medusa README).")


def main() -> None:
    st.title("Draft heads")
    model = common.require_model()
    cfg = model.config
    st.markdown("An MTP module is one extra decoder block that predicts the token **after** the next one. "
                "It takes the trunk's hidden state h_i and the embedding of token t_(i+1), normalises both, "
                "concatenates, projects back to H, runs its block and the shared head.")
    if cfg.num_mtp_modules == 0:
        st.warning(f"This checkpoint holds no MTP module (config declares {cfg.num_nextn_predict_layers}). "
                   "Nothing to draw here.")
        return
    modules_overview(model)
    ids = common.prompt_ids(model)
    try:
        live_v = live(common.model_key(model), tuple(ids), model)
    except MtpRefError as e:
        st.error(str(e))
        return
    nxt = common.token_str(model, live_v["pending"])
    st.subheader("Drafts after your prompt")
    st.markdown(f"The trunk picks **'{nxt}'** next; the modules draft "
                + ", ".join(f"depth {j + 1}: **'{common.token_str(model, d)}'**" for j, d in enumerate(live_v["drafts"]))
                + " (greedy, chain mode).")
    st.plotly_chart(drafts_chart(model, live_v), key="p2_drafts", config={"displayModeBar": False})
    st.subheader("Inside one module")
    j = st.segmented_control("Module", list(range(cfg.num_mtp_modules)), default=0, key="p2_module",
                             format_func=lambda x: f"module {x} (depth {x + 1})")
    module_detail(model, live_v, j if j is not None else 0)
    contrast(model)


main()
