"""Page 4: acceptance and speedup measured on the bundled evaluation prompts, against the analytic curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explainer import common, evaluation
from mtp_ref import MtpRefError, generate

PALETTE = ["#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599"]


@st.cache_data(show_spinner=False, max_entries=5000)
def run_one(key: str, ids: tuple, k: int, mode: str, temperature: float, max_new: int, seed: int, _model) -> dict:
    """One generation; cached per setting, so re-running the same grid is instant."""
    res = generate(_model, list(ids), max_new, k, mode, temperature, 0, 1.0, seed)
    s = res.stats
    return {"generated": s["generated_tokens"], "target_forwards": s["target_forwards"], "seconds": s["seconds"],
            "prefill_seconds": s["prefill_seconds"], "hist": s["accepted_length_histogram"]}


@st.cache_data(show_spinner="Timing trunk and MTP forwards on this machine ...")
def measured_costs(key: str, ids: tuple, kmax: int, _model) -> dict:
    return evaluation.forward_costs(_model, list(ids), kmax)


# ---------------------------------------------------------------------- charts

def color(cats: list[str], cat: str) -> str:
    return PALETTE[cats.index(cat) % len(PALETTE)]


def acceptance_chart(df: pd.DataFrame, k: int, temp: float) -> go.Figure:
    cats = sorted(df.category.unique())
    fig = go.Figure()
    for r in df[(df.k == k) & (df.temperature == temp)].itertuples():
        fig.add_scatter(x=list(range(1, k + 1)), y=r.acceptance_per_depth, mode="lines+markers", name=r.category,
                        line=dict(color=color(cats, r.category)))
    fig.update_layout(xaxis=dict(title="draft depth d", dtick=1), yaxis=dict(title="rounds where d_d was accepted",
                      range=[0, 1]), height=320, margin=dict(t=20, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def histogram_chart(df: pd.DataFrame, k: int, temp: float) -> go.Figure:
    cats = sorted(df.category.unique())
    fig = go.Figure()
    for r in df[(df.k == k) & (df.temperature == temp)].itertuples():
        h = np.asarray(r.hist, float)
        fig.add_bar(x=list(range(k + 1)), y=h / h.sum() if h.sum() else h, name=r.category,
                    marker_color=color(cats, r.category))
    fig.update_layout(barmode="group", xaxis=dict(title="drafts accepted in a round", dtick=1),
                      yaxis=dict(title="share of rounds"), height=320, margin=dict(t=20, b=10),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def vs_k_chart(df: pd.DataFrame, temp: float, c: float, what: str, verify_cost=None) -> go.Figure:
    """Measured points per category, analytic curve with the category's fitted a (dashed)."""
    cats = sorted(df.category.unique())
    sub = df[df.temperature == temp]
    kmax = int(sub.k.max())
    ks = np.arange(0, kmax + 1)
    fig = go.Figure()
    for cat in cats:
        g = sub[sub.category == cat].sort_values("k")
        y = g.tokens_per_forward if what == "tokens" else g.speedup
        fig.add_scatter(x=g.k, y=y, mode="markers", name=f"{cat} measured", marker=dict(size=10, color=color(cats, cat)))
        deepest = g[g.k == g.k.max()]
        if len(deepest) and deepest.iloc[0].k > 0:
            a = evaluation.fitted_acceptance(deepest.iloc[0])
            curve = (evaluation.analytic_tokens(a, ks) if what == "tokens" else
                     evaluation.analytic_speedup(a, c, ks, verify_cost))
            fig.add_scatter(x=ks, y=curve, mode="lines", name=f"{cat} analytic, a = {a:.2f}",
                            line=dict(dash="dash", color=color(cats, cat)))
    title = "tokens per target forward" if what == "tokens" else "wall-clock speedup vs k = 0"
    fig.update_layout(xaxis=dict(title="draft depth k", dtick=1), yaxis=dict(title=title), height=360,
                      margin=dict(t=20, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def vs_temperature_chart(df: pd.DataFrame, k: int) -> go.Figure:
    cats = sorted(df.category.unique())
    fig = go.Figure()
    for cat in cats:
        g = df[(df.category == cat) & (df.k == k)].sort_values("temperature")
        fig.add_scatter(x=g.temperature, y=g.tokens_per_forward, mode="lines+markers", name=cat,
                        line=dict(color=color(cats, cat)))
    fig.update_layout(xaxis=dict(title="temperature"), yaxis=dict(title=f"tokens per target forward (k = {k})"),
                      height=320, margin=dict(t=20, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


# ---------------------------------------------------------------------- sections

def controls(model, prompts: dict) -> dict:
    cfg = model.config
    most = max(len(v) for v in prompts.values())
    c1, c2, c3 = st.columns(3)
    if most > 1:
        n = c1.slider("Prompts per category", 1, most, key=common.widget_key("e_n", min(2, most), lambda v: 1 <= v <= most))
        common.remember("e_n")
    else:
        n = 1
        c1.caption("One prompt per category in the file.")
    max_new = c2.select_slider("Max new tokens", [8, 16, 32, 48, 64, 96], key=common.widget_key("e_max", 32))
    common.remember("e_max")
    mode = c3.radio("Mode", ["chain", "recursive"], horizontal=True, key=common.widget_key("e_mode", "chain"))
    common.remember("e_mode")
    kmax = cfg.num_mtp_modules if mode == "chain" else 6
    c4, c5 = st.columns(2)
    ks = c4.multiselect("Draft depths k (k = 0 is the baseline, always run)", list(range(1, kmax + 1)),
                        key=common.widget_key("e_ks", list(range(1, kmax + 1))[:3],
                                              lambda v: all(1 <= x <= kmax for x in v)))
    common.remember("e_ks")
    temps = c5.multiselect("Temperatures", [0.0, 0.3, 0.6, 1.0, 1.5], key=common.widget_key("e_temps", [0.0, 1.0]))
    common.remember("e_temps")
    return {"model": common.model_key(model), "n": n, "max_new": max_new, "mode": mode, "ks": [0] + sorted(ks),
            "temps": sorted(temps) or [0.0]}


def run_grid(model, prompts: dict, s: dict) -> list[dict]:
    jobs = [(cat, p, k, t) for cat, ps in sorted(prompts.items()) for p in ps[: s["n"]]
            for t in s["temps"] for k in s["ks"]]
    bar = st.progress(0.0, text=f"0 / {len(jobs)} generations")
    runs = []
    key = common.model_key(model)
    for i, (cat, p, k, t) in enumerate(jobs):
        ids = model.encode(p["text"])[-(model.config.max_position_embeddings - s["max_new"] - k - 1):]
        r = run_one(key, tuple(ids), k, s["mode"], t, s["max_new"], 0, model)
        runs.append({"category": cat, "prompt": p["id"], "k": k, "temperature": t, **r})
        bar.progress((i + 1) / len(jobs), text=f"{i + 1} / {len(jobs)} generations ({cat}, k = {k}, T = {t})")
    bar.empty()
    return runs


def results(model, df: pd.DataFrame, s: dict) -> None:
    ks = [k for k in s["ks"] if k > 0]
    if not ks:
        st.info("Pick at least one draft depth k > 0.")
        return
    kd = max(ks)
    t0 = s["temps"][0]
    costs = measured_costs(common.model_key(model), tuple(common.prompt_ids(model)[:32]), kd, model)
    bytes_c = common.loaded_cost(common.model_key(model), model).draft_ratio()
    c1, c2 = st.columns([1, 2])
    here = c1.radio("Cost model of the analytic speedup", ["this machine", "memory-bound GPU"], key="e_costmodel",
                    help="this machine: verify and draft costs timed here. memory-bound GPU: verifying k+1 tokens "
                         "costs one forward and a draft costs its share of the weight bytes.") == "this machine"
    c = c2.slider("Draft cost ratio c (one MTP forward / one trunk forward)", 0.0, 1.5,
                  float(round(costs["c"] if here else bytes_c, 2)), 0.01, key=f"e_c_{here}")
    verify = costs["v"] if here else None
    t1 = costs["trunk_seconds"][1]
    st.caption(
        f"Timed here: trunk forward {t1 * 1e3:.2f} ms for 1 token, "
        + ", ".join(f"{(k + 1)} tokens {v:.2f}x" for k, v in costs["v"].items() if k) +
        f"; one MTP row {costs['mtp_seconds'] * 1e3:.2f} ms (c = {costs['c']:.2f}). From weight bytes: c = {bytes_c:.2f}. "
        f"Analytic: E[tokens per round] = (1 − a^(k+1)) / (1 − a); speedup = E / (v_k + k·c) with v_k = "
        f"{'the measured verify cost' if here else '1'}; a is fitted per category as the depth-1 acceptance at "
        f"k = {kd}. Measured points count the decode phase only (tokens after the prefill's first, per target "
        "forward and per second). A gap below the curve is per-round work the formula leaves out (sampling, "
        "bookkeeping, MTP catch-up rows after accepted drafts).")
    g1, g2 = st.columns(2)
    g1.markdown(f"**Acceptance per depth** (k = {kd}, T = {t0})")
    g1.plotly_chart(acceptance_chart(df, kd, t0), key="p4_acc")
    g2.markdown(f"**Accepted-length histogram** (k = {kd}, T = {t0})")
    g2.plotly_chart(histogram_chart(df, kd, t0), key="p4_hist")
    g3, g4 = st.columns(2)
    g3.markdown(f"**Tokens per target forward vs k** (T = {t0})")
    g3.plotly_chart(vs_k_chart(df, t0, c, "tokens"), key="p4_tok")
    g4.markdown(f"**Measured wall-clock speedup vs k** (T = {t0})")
    g4.plotly_chart(vs_k_chart(df, t0, c, "speedup", verify), key="p4_speed")
    if len(s["temps"]) > 1:
        st.markdown(f"**Against temperature** (k = {kd})")
        st.plotly_chart(vs_temperature_chart(df, kd), key="p4_temp")
    table = df.drop(columns=["hist"]).copy()
    table["acceptance_per_depth"] = table["acceptance_per_depth"].map(lambda v: ", ".join(f"{x:.2f}" for x in v))
    with st.expander("All measurements"):
        st.dataframe(table.round(3), hide_index=True)


def main() -> None:
    st.title("Acceptance and speedup")
    model = common.require_model()
    if model.config.num_mtp_modules == 0:
        st.warning("This checkpoint holds no MTP module: there is no acceptance to measure.")
        return
    path = evaluation.prompts_path()
    try:
        prompts = evaluation.load_prompts(path)
    except MtpRefError as e:
        st.error(str(e))
        return
    if model.tokenizer is None:
        st.error(f"{model.path}: no tokenizer.json, so the text prompts cannot be encoded.")
        return
    st.markdown("Acceptance depends on how predictable the text is. Run the bundled held-out prompts ("
                + ", ".join(f"**{c}**: {len(v)}" for c, v in sorted(prompts.items()))
                + f"; `{path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path}`) "
                "with plain decoding (k = 0) and with k drafts, and compare.")
    s = controls(model, prompts)
    n_jobs = len(prompts) * s["n"] * len(s["temps"]) * len(s["ks"])
    if st.button(f"Run {n_jobs} generations", key="e_run", type="primary"):
        try:
            st.session_state["e_results"] = (s, evaluation.aggregate(run_grid(model, prompts, s)))
        except MtpRefError as e:
            st.error(str(e))
    stored = st.session_state.get("e_results")
    if stored is None or stored[0]["model"] != s["model"]:
        st.info("Press **Run**. Results are cached per setting: running the same grid again is instant.")
        return
    ran, df = stored
    if ran != s:
        st.caption("Showing the last run; the settings above have changed since.")
    results(model, df, ran)


main()
