"""Chapter 5, how much faster: acceptance and speed measured on the bundled prompts, with their spread,
next to what the same acceptance would give on a GPU whose verify cost this project measured."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explainer import common, evaluation, scenario, stepper
from mtp_ref import MtpRefError, generate
from mtp_ref.sampling import SamplingParams

REPEATS = 3
LIVE_TOKENS = 48


# ---------------------------------------------------------------------- runs

def run_grid(model, prompts: dict, s: dict) -> list[dict]:
    """Every (prompt, T, k) generation, REPEATS times, the repeats interleaved so a burst of load on this
    machine hits all settings alike. Counts are the same in every repeat (same seed); only the seconds vary."""
    jobs = [(cat, p, k, t) for cat, ps in sorted(prompts.items()) for p in ps[: s["n"]]
            for t in s["temps"] for k in s["ks"]]
    total = len(jobs) * REPEATS
    bar = st.progress(0.0, text=f"0 / {total} generations")
    runs = []
    for rep in range(REPEATS):
        for i, (cat, p, k, t) in enumerate(jobs):
            ids = model.encode(p["text"])[-(model.config.max_position_embeddings - s["max_new"] - k - 1):]
            r = generate(model, ids, s["max_new"], k, s["mode"], t, 0, 1.0, 0).stats
            runs.append({"repeat": rep, "category": cat, "prompt": p["id"], "k": k, "temperature": t,
                         "generated": r["generated_tokens"], "target_forwards": r["target_forwards"],
                         "seconds": r["seconds"], "prefill_seconds": r["prefill_seconds"],
                         "hist": r["accepted_length_histogram"]})
            done = rep * len(jobs) + i + 1
            bar.progress(done / total, text=f"{done} / {total} generations (repeat {rep + 1} of {REPEATS})")
    bar.empty()
    return runs


def summarise(runs: list[dict]) -> pd.DataFrame:
    """Per (category, T, k): counts from repeat 0, and the speedup's median, min and max over the repeats."""
    per_rep = [evaluation.aggregate([r for r in runs if r["repeat"] == rep]) for rep in sorted({r["repeat"] for r in runs})]
    base = per_rep[0].copy()
    sp = np.array([d["speedup"].to_numpy() for d in per_rep])          # [repeats, rows]
    tps = np.array([d["tokens_per_second"].to_numpy() for d in per_rep])
    base["speedup"] = np.median(sp, axis=0)
    base["speedup_min"], base["speedup_max"] = sp.min(axis=0), sp.max(axis=0)
    base["tokens_per_second"] = np.median(tps, axis=0)
    base["repeats"] = len(per_rep)
    return base


# ---------------------------------------------------------------------- charts

def color(cats: list[str], cat: str) -> str:
    return common.SERIES[cats.index(cat) % len(common.SERIES)]


def acceptance_chart(df: pd.DataFrame, k: int, temp: float) -> go.Figure:
    cats = sorted(df.category.unique())
    fig = go.Figure()
    for r in df[(df.k == k) & (df.temperature == temp)].itertuples():
        fig.add_scatter(x=list(range(1, k + 1)), y=r.acceptance_per_depth, mode="lines+markers", name=r.category,
                        line=dict(color=color(cats, r.category), width=3), marker=dict(size=10))
    fig.update_layout(xaxis=dict(title="draft depth", dtick=1), yaxis=dict(title="share of cycles kept",
                      range=[0, 1.02], tickformat=".0%"))
    return common.style(fig, f"How often the draft at each depth is kept (k = {k}, T = {temp:g})")


def speedup_chart(df: pd.DataFrame, temp: float) -> go.Figure:
    """Measured on this CPU: median speedup with the fastest-to-slowest spread of the repeats."""
    cats = sorted(df.category.unique())
    sub = df[df.temperature == temp]
    fig = go.Figure()
    for cat in cats:
        g = sub[sub.category == cat].sort_values("k")
        fig.add_scatter(x=g.k, y=g.speedup, mode="lines+markers", name=cat, line=dict(color=color(cats, cat), width=3),
                        marker=dict(size=10), error_y=dict(type="data", array=g.speedup_max - g.speedup,
                                                           arrayminus=g.speedup - g.speedup_min, thickness=2))
    fig.add_hline(y=1.0, line_dash="dot", line_color=common.MUTED)
    fig.update_layout(xaxis=dict(title="draft depth k (0 = plain decoding)", dtick=1),
                      yaxis=dict(title="speedup vs plain", rangemode="tozero"))
    return common.style(fig, f"Measured on this CPU: speedup, median of {REPEATS} (bars: slowest to fastest)")


def gpu_chart(df: pd.DataFrame, temp: float, gpu: dict, c: float) -> go.Figure:
    """Modelled: this acceptance with the verify cost measured on a GPU; not a measurement of a GPU run."""
    v = scenario.verify_costs(gpu)
    cats = sorted(df.category.unique())
    sub = df[(df.temperature == temp) & (df.k > 0)]
    fig = go.Figure()
    for cat in cats:
        g = sub[sub.category == cat]
        if not len(g):
            continue
        a = evaluation.fitted_acceptance(g.sort_values("k").iloc[-1])
        ks = sorted(v)
        fig.add_scatter(x=[0] + ks, y=[1.0] + evaluation.analytic_speedup(a, c, ks, v), mode="lines+markers",
                        name=f"{cat} (a = {a:.2f})", line=dict(color=color(cats, cat), width=3, dash="dash"),
                        marker=dict(size=9))
    fig.add_hline(y=1.0, line_dash="dot", line_color=common.MUTED)
    fig.update_layout(xaxis=dict(title="draft depth k", dtick=1), yaxis=dict(title="speedup vs plain",
                      rangemode="tozero"))
    return common.style(fig, f"Modelled for the {gpu['device']}: this acceptance, its measured verify cost")


# ---------------------------------------------------------------------- live view: which tokens are kept

def entropy(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log2(nz)).sum())


@st.cache_data(show_spinner="Drafting and verifying ...", max_entries=32)
def live_run(key: str, ids: tuple, k: int, _model) -> list[dict]:
    """Per written token: the trunk's entropy at its verify row (bits, T = 1) and whether it was a kept draft;
    per tested draft: (entropy of the row that tested it, kept?)."""
    dec = stepper.RecordingDecoder(_model, k, "chain", SamplingParams(0.0), 0)
    dec.prefill(list(ids))
    out = []
    while len(out) < LIVE_TOKENS:
        rec = dec.step()
        H = [entropy(p) for p in dec.last_p]
        for j, t in enumerate(rec.new_tokens):
            out.append({"token": t, "entropy": H[j], "kept_draft": j < rec.accepted,
                        "tested": j < len(rec.drafts), "kept": j < rec.accepted})
    return out[:LIVE_TOKENS]


def live_html(model, rows: list[dict]) -> str:
    parts = []
    for r in rows:
        x = min(r["entropy"] / 4.0, 1.0)               # 0 bits = white, >= 4 bits = full orange
        bg = f"rgba(247, 140, 30, {0.08 + 0.72 * x:.2f})"
        deco = "border-bottom:4px solid #1a7f37;" if r["kept_draft"] else ""
        s = html.escape(model.decode([r["token"]])).replace("\n", "↵")
        parts.append(f'<span title="{r["entropy"]:.2f} bits" style="background:{bg};{deco}white-space:pre-wrap;'
                     f'color:#1f2328">{s}</span>')
    return f'<div style="font-family:monospace;font-size:1.1rem;line-height:2.1">{"".join(parts)}</div>'


def live_section(model, prompts: dict) -> None:
    st.subheader("Which tokens get kept?")
    st.markdown("Each token below is shaded by how unsure the trunk was when it wrote it (its entropy: white = "
                "certain, deep orange = 4 bits or more, about 16 equally likely choices). "
                "<span style='border-bottom:4px solid #1a7f37'>Underlined</span> tokens were MTP drafts the trunk "
                "kept.", unsafe_allow_html=True)
    options = {f"{cat}: {ps[0]['text'][:40]}…": ps[0]["text"] for cat, ps in sorted(prompts.items())}
    options["your prompt (sidebar)"] = common.prompt_text()
    choice = st.radio("Text", list(options), horizontal=True, key=common.widget_key("e_live", list(options)[0],
                                                                                     lambda v: v in options))
    common.remember("e_live")
    k = min(3, model.config.num_mtp_modules)
    ids = model.encode(options[choice])[-(model.config.max_position_embeddings - LIVE_TOKENS - k - 2):]
    if not ids:
        st.warning("The text is empty.")
        return
    rows = live_run(common.model_key(model), tuple(ids), k, model)
    st.html(live_html(model, rows))
    tested = [r for r in rows if r["tested"]]
    kept = [r["entropy"] for r in tested if r["kept"]]
    rejected = [r["entropy"] for r in tested if not r["kept"]]
    if kept and rejected:
        st.markdown(f"Where a draft was **kept**, the trunk's entropy at that row was **{np.median(kept):.2f} bits** "
                    f"(median of {len(kept)}); where one was **rejected**, **{np.median(rejected):.2f} bits** "
                    f"(median of {len(rejected)}). Predictable text is where guesses land.")


# ---------------------------------------------------------------------- sections

def controls(model, prompts: dict) -> dict:
    cfg = model.config
    most = max(len(v) for v in prompts.values())
    with st.container(key="stack_controls"):
        c1, c2, c3 = st.columns(3)
        if most > 1:
            n = c1.slider("Prompts per category", 1, most,
                          key=common.widget_key("e_n", min(2, most), lambda v: 1 <= v <= most))
            common.remember("e_n")
        else:
            n = 1
            c1.markdown("One prompt per category in the file.")
        max_new = c2.select_slider("Tokens to write", [8, 16, 32, 48, 64, 96], key=common.widget_key("e_max", 32))
        common.remember("e_max")
        mode = c3.radio("Mode", ["chain", "recursive"], horizontal=True, key=common.widget_key("e_mode", "chain"))
        common.remember("e_mode")
        kmax = cfg.num_mtp_modules if mode == "chain" else 6
        c4, c5 = st.columns(2)
        ks = c4.multiselect("Draft depths k (k = 0, plain decoding, always runs)", list(range(1, kmax + 1)),
                            key=common.widget_key("e_ks", list(range(1, kmax + 1))[:3],
                                                  lambda v: all(1 <= x <= kmax for x in v)))
        common.remember("e_ks")
        temps = c5.multiselect("Temperatures", [0.0, 0.3, 0.6, 1.0, 1.5], key=common.widget_key("e_temps", [0.0]))
        common.remember("e_temps")
    return {"model": common.model_key(model), "n": n, "max_new": max_new, "mode": mode, "ks": [0] + sorted(ks),
            "temps": sorted(temps) or [0.0]}


def results(model, df: pd.DataFrame, s: dict) -> None:
    ks = [k for k in s["ks"] if k > 0]
    if not ks:
        st.info("Pick at least one draft depth k > 0.")
        return
    kd, t0 = max(ks), s["temps"][0]
    cost = common.loaded_cost(common.model_key(model), model)
    best = df[(df.temperature == t0) & (df.k == kd)]
    tpf = ", ".join(f"{r.category} {r.tokens_per_forward:.2f}" for r in best.itertuples())
    st.markdown(f"With k = {kd}, each trunk forward wrote on average **{tpf}** tokens (categories), against exactly "
                "1 for plain decoding.")
    with st.container(key="stack_results"):
        g1, g2 = st.columns(2)
        g1.plotly_chart(acceptance_chart(df, kd, t0), key="p4_acc", config={"displayModeBar": False})
        g2.plotly_chart(speedup_chart(df, t0), key="p4_speed", config={"displayModeBar": False})
    slow = df[(df.temperature == t0) & (df.k > 0) & (df.speedup_max < 1.0)]
    sub = df[(df.temperature == t0) & (df.k > 0)]
    if len(slow):
        st.warning(f"**Measured slower than plain decoding** for {', '.join(sorted(set(slow.category)))} at some k, "
                   "although more tokens were written per trunk forward. Why: the bundled model is tiny, so on a CPU "
                   "each forward costs mostly fixed per-call overhead (Python, launching each matrix product), not "
                   "reading weights. Every MTP draft pays that overhead again, and a forward over k+1 tokens is "
                   "not free here (chapter 1 measured it). The saving MTP is built on, one weight read for k+1 "
                   "tokens, only shows where reading weights is the cost: big models on GPUs, below.")
    elif len(sub):
        st.markdown(f"On this CPU the median speedup ranged from **{sub.speedup.min():.2f}x** to "
                    f"**{sub.speedup.max():.2f}x**; the bars show how much it moved between the {REPEATS} repeats. "
                    "This machine is overhead bound (chapter 1), so these numbers understate what a memory-bound GPU "
                    "gains.")
    results_gpu, _ = scenario.load_gpu_results()
    usable = [d for d in results_gpu if any(scenario.ours(x) and 1 in x["n"] and len(x["n"]) > 1
                                            for x in d["verify_ms"])]
    gpu = next((d for d in usable if "H200" in d["device"]), usable[0] if usable else None)
    if gpu is not None:
        c = cost.draft_ratio()
        st.markdown(f"**The same acceptance on a GPU.** The {gpu['device']} verify costs this project measured for a "
                    f"7B model, and a draft costing c = {c:.2f} of a trunk forward (the weight bytes one MTP forward "
                    "reads, relative to the trunk): expected speedup = E[tokens per cycle] / (verify cost + k c).")
        st.plotly_chart(gpu_chart(df, t0, gpu, c), key="p4_gpu", config={"displayModeBar": False})
        st.caption(scenario.cite(gpu))
        end_to_end(gpu)
    table = df.drop(columns=["hist"]).copy()
    table["acceptance_per_depth"] = table["acceptance_per_depth"].map(lambda v: ", ".join(f"{x:.2f}" for x in v))
    with st.expander("All measurements"):
        st.dataframe(table.round(3), hide_index=True)


def end_to_end(gpu: dict) -> None:
    """The one end-to-end GPU measurement of whole cycles, against what the formula predicts for it."""
    runs = [r for r in gpu.get("speculative", []) if {"k", "acceptance_per_depth", "speedup"} <= set(r)]
    if not runs:
        return
    from explainer import roofline
    from explainer.presets import MODELS
    r0 = runs[0]
    k, a = int(r0["k"]), float(r0["acceptance_per_depth"])
    v = scenario.verify_costs(gpu)
    if k not in v or "MiMo-7B" not in MODELS:
        return
    c = roofline.from_config("MiMo-7B", MODELS["MiMo-7B"]).draft_ratio()
    predicted = evaluation.analytic_speedup(a, c, [k], v)[0]
    cost = v[k] + k * c              # the formula's denominator: one verify and k drafts, in plain forwards

    def realised(r: dict) -> str:
        """The run's own tokens per cycle (its accepted-length histogram) and what the formula gives for them."""
        h = r.get("accepted_length_histogram") or []
        if not sum(h):
            return ""
        tpc = sum((i + 1) * x for i, x in enumerate(h)) / sum(h)
        return f"; its forced draws kept {tpc:.2f} tokens a cycle, for which the formula gives {tpc / cost:.2f}x"

    def rate(r: dict) -> str:
        return f"{r['tok_s']:.0f}" + (f" +- {r['tok_s_spread']:.0f}" if r.get("tok_s_spread") is not None else "")

    got = "; ".join(f"**{r['speedup']:.2f}x** with {r.get('engine', 'ours').split(', ')[-1]} ({rate(r)} against "
                    f"{r['plain_tok_s']:.0f} tokens/s{realised(r)})" for r in runs)
    st.markdown(f"**Measured end to end on the {gpu['device']}** (whole cycles on the same 7B model, drafts forced to "
                f"be kept with probability {a:.1f} per depth, k = {k}): {got}. For that acceptance the formula "
                f"predicts **{predicted:.2f}x** ({roofline.expected_tokens(a, k):.2f} tokens a cycle on average). "
                "The formula counts only the GPU's time for the forwards. A loop that keeps the tokens on the GPU "
                "(the device loop) lands near it; one that brings every cycle back to Python to draft, test and "
                "roll back (host-driven) also pays that host work, and on a card this fast the host is a large "
                "share of every step. A measurement below the model is the model telling you where the time goes. "
                "(Source: `" + r0.get("source", gpu["file"]) + "`.)")


def question(prompts: dict) -> None:
    cats = sorted(prompts)

    def reveal(choice: str) -> None:
        df = st.session_state.get("e_results", (None, None))[1]
        if df is None:
            st.markdown("Press **Measure** above first; the answer is read from your measurement.")
            return
        sub = df[(df.k == df.k.max()) & (df.temperature == df.temperature.min())]
        best = sub.sort_values("tokens_per_forward").iloc[-1]
        st.markdown(f"In your measurement, **{best.category}** wrote the most tokens per trunk forward "
                    f"({best.tokens_per_forward:.2f} at k = {best.k}). "
                    + ("Right. " if choice == best.category else "")
                    + "Text with fixed patterns (code syntax, names repeated from the prompt, stock phrases) is easy "
                    "to guess; open-ended prose is not.")

    common.predict_then_reveal("faster", "Which kind of text gets the most tokens per trunk forward?", cats, reveal)


def main() -> None:
    common.chapter(5, "How much faster",
                   "The gain is the number of tokens each trunk forward writes, 1 plus the kept drafts, minus the "
                   "cost of drafting; it depends on how predictable the text is, and it only becomes wall-clock "
                   "speed where reading weights is what a forward costs.")
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
    live_section(model, prompts)
    st.subheader("Measure it")
    st.markdown("Run the bundled held-out prompts ("
                + ", ".join(f"**{c}**: {len(v)}" for c, v in sorted(prompts.items()))
                + f") with plain decoding (k = 0) and with k drafts. Every setting runs {REPEATS} times; the "
                "speedup shown is the median, with the spread.")
    s = controls(model, prompts)
    n_jobs = len(prompts) * s["n"] * len(s["temps"]) * len(s["ks"]) * REPEATS
    stored = st.session_state.get("e_results")
    label = f"Measure ({n_jobs} generations)" if stored is None else f"Measure again ({n_jobs} generations)"
    if st.button(label, key="e_run", type="primary"):
        try:
            st.session_state["e_results"] = (s, summarise(run_grid(model, prompts, s)))
            stored = st.session_state["e_results"]
        except MtpRefError as e:
            st.error(str(e))
    if stored is None or stored[0]["model"] != s["model"]:
        st.info("Press **Measure**. Each press is a new measurement; nothing is reused from an earlier run.")
    else:
        ran, df = stored
        if ran != s:
            st.markdown("*Showing the last measurement; the settings above have changed since.*")
        results(model, df, ran)
    question(prompts)
    common.glossary(["acceptance rate", "draft (d1 .. dk)", "verify", "forward (pass)"])
    common.next_chapter("views/limits.py", "6 · Where it stops paying")


main()
