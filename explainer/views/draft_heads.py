"""Chapter 3, where the guesses come from: the loaded checkpoint's MTP modules, their tensors and live values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import streamlit.components.v1 as components
from plotly.subplots import make_subplots

from explainer import common, diagram, heads
from mtp_ref import MtpRefError, generate

RECOMPUTE_TOL = 1e-4   # float32: the page and the engine do the same operations, in the same order


@st.cache_data(show_spinner="Running the MTP modules on the prompt ...")
def live(key: str, ids: tuple, _model) -> dict:
    return heads.live_values(_model, list(ids))


@st.cache_data(show_spinner=False)
def tensors(key: str, j: int, _model) -> tuple[list[dict], dict]:
    return heads.module_tensors(_model, j), heads.copies_of_main(_model, j)


# ---------------------------------------------------------------------- charts

def flow_boxes(model, j: int) -> dict[str, tuple[str, str]]:
    """Module j's stages, each as (short tensor name, shape) from the checkpoint (diagram.module_svg draws them)."""
    cfg, lay, ck = model.config, model.spec.mtp, model.ckpt
    p = lay.module_prefix(cfg, j)

    def t(suffix: str | None, fallback: str) -> tuple[str, str]:
        own = bool(suffix) and p + suffix in ck
        name = p + suffix if own else fallback
        short = (suffix if own else "trunk's " + fallback.removeprefix("model.")).removesuffix(".weight")
        return short, str(list(ck.shape(name)))

    main_head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    mlp = "MoE" if model.spec.moe and cfg.is_moe_layer(cfg.num_hidden_layers + j) else "MLP"
    return {"emb": t(lay.embed, "model.embed_tokens.weight"), "en": t(lay.emb_norm, ""), "hn": t(lay.hid_norm, ""),
            "proj": t(lay.proj, ""), "blk": (f"block (layer {cfg.num_hidden_layers + j})",
                                             f"{model.spec.attention.upper()} + {mlp}"),
            "norm": t(lay.out_norm, ""), "head": t(lay.head, main_head)}


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
    fig.update_annotations(font_size=common.CHART_FONT)
    fig.update_layout(height=420, margin=dict(t=60, b=10, l=10, r=10), font=dict(size=common.CHART_FONT),
                      title=dict(text="One row of each intermediate vector (blue < 0 < red)",
                                 font=dict(size=common.CHART_FONT + 4, color=common.INK), x=0))
    return fig


def drafts_chart(model, live_v: dict) -> go.Figure:
    """Top-5 of the main model's next token and of each draft depth (probabilities at T = 1)."""
    tops = [("trunk: next token", live_v["main_top"])] + [
        (f"depth {j + 1} (module {j})", top) for j, top in enumerate(live_v["draft_top"])]
    fig = make_subplots(rows=1, cols=len(tops), subplot_titles=[t for t, _ in tops], shared_yaxes=True)
    for i, (_, top) in enumerate(tops, 1):
        fig.add_bar(x=[f"{r + 1}. {common.token_str(model, t)}" for r, (t, _) in enumerate(top)],
                    y=[p for _, p in top], marker_color="#1c7ed6" if i == 1 else "#845ef7", showlegend=False,
                    text=[f"{p:.2f}" for _, p in top], textposition="outside", cliponaxis=False, row=1, col=i)
    fig.update_yaxes(title_text="probability (T = 1)", row=1, col=1, range=[0, 1.15])
    fig.update_xaxes(tickangle=-35)
    fig.update_annotations(font_size=common.CHART_FONT)
    fig.update_layout(height=400, margin=dict(t=70, b=10), font=dict(size=common.CHART_FONT, color=common.INK),
                      template="plotly_white",
                      title=dict(text="Top-5 guesses: the trunk's next token, then each MTP depth",
                                 font=dict(size=common.CHART_FONT + 4, color=common.INK), x=0))
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
        same = list(copies.values())
        rows.append({"module": j, "prefix": model.spec.mtp.module_prefix(cfg, j), "tensors": len(t),
                     "bytes": common.fmt_bytes(b), "share of checkpoint": f"{b / total:.1%}",
                     "own embedding / head": (f"stored ({common.fmt_bytes(b_copies)}), "
                                              + ("identical to the trunk's" if all(same) else
                                                 "differs from the trunk's") if copies else "none: uses the trunk's")})
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.markdown(f"config.json declares {cfg.num_nextn_predict_layers} MTP module(s) "
                f"(`num_nextn_predict_layers`); the weights hold {cfg.num_mtp_modules}. Some releases (DeepSeek-V3) "
                f"store a copy of the embedding and output head inside each module; the engine checks whether the "
                f"copy equals the trunk's. The whole checkpoint: {common.fmt_bytes(total)}.")


def module_detail(model, live_v: dict, j: int) -> None:
    mod = live_v["modules"][j]
    tok = common.token_str(model, mod["token_in"])
    prev = "h from the trunk" if j == 0 else f"g of module {j - 1}"
    components.html(diagram.module_svg(flow_boxes(model, j), f"token '{tok}'", prev, model.spec.mtp.hidden_first,
                                       j), height=330)
    c2 = st.container()
    c2.markdown(f"Live values at the current row: module {j} reads token **'{tok}'** at position "
                f"{mod['position']} and the hidden from {'the trunk' if j == 0 else f'module {j - 1}'}; "
                "top-5 of its prediction: " + ", ".join(f"'{common.token_str(model, t)}' {p:.3f}" for t, p in mod["top"]))
    c2.plotly_chart(vectors_chart(mod["vectors"]), key=f"p2_vec_{j}", config={"displayModeBar": False})
    ok = mod["max_abs_diff"] <= RECOMPUTE_TOL
    c2.markdown(f"Recomputed step by step on this page: {'matches' if ok else '**DOES NOT MATCH**'} the engine's "
                f"`mtp_forward` (max |difference| = {mod['max_abs_diff']:.2g}, tolerance {RECOMPUTE_TOL:g}). "
                "Each panel is scaled to its own largest value.")
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
    rows.append({"drafter": "Gemma 4 assistant (a separate small model)",
                 "what a draft sees": "the trunk's last hidden state and the trunk's own KV cache: its few layers "
                                      "compute queries only",
                 "extra state": "a small model, but no KV cache of its own: rollback only cuts the trunk's cache",
                 "drafts per round": "k sequential assistant forwards, carrying a projected hidden state"})
    st.table(pd.DataFrame(rows).set_index("drafter"))
    st.markdown("Assisted generation and Medusa are described in their authors' write-ups (the Hugging Face "
                "assisted-generation blog post, the Medusa paper); the MTP rows follow the DeepSeek-V3 report and "
                "the released checkpoints; the Gemma 4 row follows Google's assistant checkpoints as transformers "
                "runs them.")


def question(model, ids: list[int]) -> None:
    K = model.config.num_mtp_modules
    if K < 2:
        return

    def reveal(choice: str) -> None:
        r = generate(model, list(ids), 48, K, "chain", 0.0)
        acc = r.stats["acceptance_per_depth"]
        worst = int(np.argmin(acc)) + 1
        st.markdown(f"Measured on your prompt (48 tokens, k = {K}, chain mode): the draft at depth d was kept in "
                    + ", ".join(f"**{a:.0%}** of cycles at depth {d + 1}" for d, a in enumerate(acc))
                    + f". {'Right: ' if choice == f'Depth {worst}' else ''}Depth {worst} fares worst here. Deeper "
                    "guesses build on guesses, and a depth is only tested when every depth before it was kept, "
                    "so the later depths are usually kept less often.")

    common.predict_then_reveal("heads", f"This model has {K} modules, one per depth. Which depth's guesses does the "
                               "trunk keep least often?", [f"Depth {d + 1}" for d in range(K)], reveal)


def main() -> None:
    common.chapter(3, "Where the guesses come from",
                   "An MTP module is one extra transformer block, trained with the model, that reads the trunk's "
                   "hidden state plus the embedding of the next token and predicts the token after it; chained, "
                   "the modules guess several tokens ahead for a few percent of the model's weights.")
    model = common.require_model()
    cfg = model.config
    st.markdown("It takes the trunk's hidden state h_i and the embedding of token t_(i+1), normalises both, "
                "concatenates them, projects back to the hidden size, runs its block and the output head.")
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
    question(model, ids)
    common.glossary(["MTP module", "draft (d1 .. dk)", "chain / recursive", "acceptance rate", "token"])
    common.next_chapter("views/verification.py", "4 · Keeping the output exact")


main()
