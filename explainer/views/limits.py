"""Chapter 6, where it stops paying: big batches, mixture-of-experts models, and the memory to hold them."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from explainer import common, roofline, scenario
from explainer.presets import PRECISIONS

CONTEXTS = [0, 1024, 4096, 32768]
BATCHES = np.unique(np.logspace(0, 14, 57, base=2).astype(int))


def n_devices(sc: scenario.Scenario) -> tuple[int, dict]:
    mem = roofline.memory_needed(sc.cm, sc.bpp, sc.context, sc.batch)
    return roofline.devices_needed(mem["total"], sc.hw), mem


def speedup_vs_batch(sc: scenario.Scenario, a: float, n_dev: int) -> tuple[go.Figure, dict]:
    """Modelled speedup of k drafts against batch size, one line per context; n_dev devices add bandwidth and
    FLOP/s (ideal tensor parallelism: no communication cost). Where the weights and the batch's KV cache no longer
    fit in the n_dev devices' memory, the line turns dotted."""
    bw, peak = sc.bw * n_dev, sc.peak * n_dev
    capacity = n_dev * sc.hw.memory_gb * 1e9
    fig, crossings = go.Figure(), {}
    for i, ctx in enumerate(sorted(set(CONTEXTS) | {sc.context})):
        s = np.array([roofline.mtp_speedup(sc.cm, a, sc.k, int(b), ctx, sc.bpp, bw, peak) for b in BATCHES])
        fits = np.array([roofline.memory_needed(sc.cm, sc.bpp, ctx, int(b))["total"] <= capacity for b in BATCHES])
        color = common.SERIES[i % len(common.SERIES)]
        last = int(np.nonzero(fits)[0][-1]) if fits.any() else -1
        fig.add_scatter(x=BATCHES[: last + 1], y=s[: last + 1], name=f"context {ctx:,}",
                        line=dict(width=3, color=color), legendgroup=str(ctx))
        if last + 1 < len(BATCHES):
            fig.add_scatter(x=BATCHES[max(last, 0):], y=s[max(last, 0):], showlegend=False, legendgroup=str(ctx),
                            line=dict(width=2, color=color, dash="dot"), hoverinfo="skip")
        below = [int(b) for b, v in zip(BATCHES, s) if v < 1.0]
        crossings[ctx] = below[0] if below else None
    fig.add_hline(y=1.0, line_dash="dot", line_color=common.MUTED)
    fig.update_layout(xaxis=dict(type="log", title="batch (sequences decoded together)"),
                      yaxis=dict(title="speedup vs plain decoding", rangemode="tozero"))
    return common.style(fig, f"Modelled: k = {sc.k} drafts, acceptance {a:.2f}, {sc.cm.name} on "
                             f"{n_dev} x {sc.hw.name}"), crossings


def experts_chart(sc: scenario.Scenario) -> go.Figure:
    cm = sc.cm
    ms = np.arange(1, 33)
    fig = go.Figure()
    fig.add_scatter(x=ms, y=[cm.weight_bytes(m, sc.bpp) / cm.weight_bytes(1, sc.bpp) for m in ms],
                    name="weight bytes read, vs 1 token (uniform routing)", line=dict(width=3, color=common.SERIES[0]))
    fig.add_scatter(x=ms, y=[cm.expected_experts(m) / cm.expected_experts(1) for m in ms],
                    name="distinct experts per layer, vs 1 token", line=dict(width=3, dash="dash",
                                                                          color=common.SERIES[1]))
    fig.update_layout(xaxis=dict(title="tokens in one forward"), yaxis=dict(title="x a 1-token forward",
                      rangemode="tozero"))
    return common.style(fig, f"Modelled: {cm.name}, {cm.top_k} of {cm.n_experts} experts per token, per layer")


def moe_modelled(sec: dict, s: dict, hw) -> tuple[list[float], list[float]]:
    """The uniform-routing model of the measured shape at the series' context and n: (verify(n) / verify(1) on the
    roofline of `hw` at bf16, expected distinct experts per MoE layer)."""
    cm = scenario.moe_cost_model(sec)
    bpp = PRECISIONS["bf16"].bytes_per_param
    t = [cm.forward(n, 1, s["ctx"], bpp, hw.bandwidth_gbs * 1e9, hw.tflops * 1e12)["seconds"] for n in s["n"]]
    return [x / t[0] for x in t], [cm.expected_experts(n) for n in s["n"]]


def measured_moe_charts(sec: dict, hw) -> tuple[go.Figure, go.Figure]:
    """Measured verify(n) / verify(1) and distinct experts per MoE layer, each beside the uniform-routing model."""
    cost, experts = go.Figure(), go.Figure()
    for i, s in enumerate(sec["series"]):
        ratio, distinct = moe_modelled(sec, s, hw)
        one = s["ms"][0]
        c = common.SERIES[i % 3]
        cost.add_scatter(x=s["n"], y=[m / one for m in s["ms"]], mode="lines+markers",
                         name=f"measured, context {s['ctx']:,} (bars: spread of the n-token time)",
                         error_y=dict(type="data", array=[e / one for e in s["spread_ms"]], visible=True, thickness=2),
                         line=dict(width=3, color=c), marker=dict(size=10))
        cost.add_scatter(x=s["n"], y=ratio, mode="lines", name=f"uniform-routing model, context {s['ctx']:,}",
                         line=dict(width=3, dash="dash", color=c))
        mean = np.asarray(s["distinct_mean"], float)
        experts.add_scatter(x=s["n"], y=mean, mode="lines+markers",
                            name=f"measured, context {s['ctx']:,} (bars: 10th to 90th percentile of layers x draws)",
                            error_y=dict(type="data", array=np.asarray(s["distinct_p90"]) - mean,
                                         arrayminus=mean - np.asarray(s["distinct_p10"]), visible=True, thickness=2),
                            line=dict(width=3, color=c), marker=dict(size=10))
        if i == 0:                       # the expected count does not depend on the context
            experts.add_scatter(x=s["n"], y=distinct, mode="lines", name="uniform routing: E (1 - (1 - k/E)^n)",
                                line=dict(width=3, dash="dash", color=common.SERIES[3]))
    cost.add_hline(y=1.0, line_dash="dot", line_color=common.MUTED)
    cost.update_layout(xaxis=dict(title="tokens in one forward (n)", dtick=1),
                       yaxis=dict(title="time / time of 1 token", rangemode="tozero"))
    experts.update_layout(xaxis=dict(title="tokens in one forward (n)", dtick=1),
                          yaxis=dict(title="distinct experts per MoE layer", rangemode="tozero"))
    name = sec["model"].split(" (")[0]
    return (common.style(cost, f"Measured on an {sec['device'].split(' (')[0]}: {name}, one forward over n tokens"),
            common.style(experts, f"Measured: experts one forward over n tokens reads ({sec['top_k']} of "
                                  f"{sec['n_experts']} per token)"))


def memory_section(sc: scenario.Scenario) -> int:
    need, mem = n_devices(sc)
    st.subheader("First: does it fit?")
    one = sc.forward(1)
    per_seq = 1 / one["seconds"]
    txt = (f"**{sc.cm.name}** at {sc.bpp:.3g} bytes per weight needs **{common.fmt_bytes(mem['weights'])}** for its "
           f"weights and **{common.fmt_bytes(mem['kv'])}** of KV cache for {sc.batch} sequence(s) of "
           f"{sc.context:,} tokens: **{common.fmt_bytes(mem['total'])}** in all. One {sc.hw.name} holds "
           f"{sc.hw.memory_gb:g} GB, so it takes **{need} device{'s' if need > 1 else ''}**.")
    if need > 1:
        st.warning(txt + f" The speeds below assume the {need} devices split every weight matrix and read their "
                   "shares at the same time (bandwidths add; the time to exchange results between devices is left "
                   "out, so real numbers are lower).")
    else:
        st.markdown(txt)
    bw_all, peak_all = sc.bw * need, sc.peak * need
    f = sc.cm.forward(1, sc.batch, sc.context, sc.bpp, bw_all, peak_all)
    per_seq = 1 / f["seconds"]
    with st.container(key="stack_metrics"):
        m = st.columns(3)
        m[0].metric("Tokens/s per sequence (ceiling)", f"{per_seq:,.0f}")
        m[1].metric(f"Tokens/s summed over the batch of {sc.batch}", f"{per_seq * sc.batch:,.0f}")
        m[2].metric("Bound by", f["bound"], help="memory: waiting on bytes; compute: waiting on arithmetic.")
    return need


def batch_section(sc: scenario.Scenario, need: int) -> tuple[float, dict]:
    st.subheader("Big batches: the spare arithmetic runs out")
    a = st.slider("Acceptance per draft (a)", 0.0, 1.0, step=0.01, key=common.widget_key("p1_a", 0.85),
                  help="DeepSeek-V3's report gives 85-90 % acceptance for the second token.")
    common.remember("p1_a")
    st.markdown("A server decodes many sequences at once. Each forward still reads the weights once, but now does "
                "the arithmetic for every sequence; past some batch size the chip is busy computing, and verifying "
                "k+1 tokens per sequence costs k+1 times as much: drafting then loses. Long contexts push that point "
                "out, because every sequence's KV cache must still be read. Where a line turns dotted, the weights and "
                f"that many sequences' KV caches no longer fit in {need} x {sc.hw.memory_gb:g} GB: a real server "
                "cannot run there.")
    fig, cross = speedup_vs_batch(sc, a, need)
    st.plotly_chart(fig, key="p6_batch", config={"displayModeBar": False})
    st.markdown("Speedup falls below 1: " + "; ".join(
        f"context {c:,}: from batch {b:,}" if b else f"context {c:,}: not up to batch {int(BATCHES[-1]):,}"
        for c, b in cross.items()) + ".")
    return a, cross


def moe_section(sc: scenario.Scenario) -> None:
    st.subheader("Mixture of experts: more tokens, more experts")
    if not sc.cm.n_experts:
        st.markdown(f"**{sc.cm.name} is dense**: every token uses every weight, so extra tokens in a forward add "
                    "no weight bytes. Pick DeepSeek-V3 or GLM-4.5-Air above to see the mixture-of-experts model.")
    else:
        e1, e4 = sc.cm.expected_experts(1), sc.cm.expected_experts(sc.k + 1)
        r = sc.forward(sc.k + 1, batch=1)["seconds"] / sc.forward(1, batch=1)["seconds"]
        st.markdown(f"Each token reads only {sc.cm.top_k} of the {sc.cm.n_experts} experts of a layer. A forward over "
                    f"k+1 = {sc.k + 1} tokens reads the experts *any* of them picked: {e4:.1f} per layer instead of "
                    f"{e1:.0f}, if routing were uniform. So verifying costs **{r:.2f}x** a 1-token forward here, not "
                    "1x: MTP still pays when acceptance is high, but less.")
        st.plotly_chart(experts_chart(sc), key="p6_experts", config={"displayModeBar": False})
    moe_measured_section(sc)


def moe_measured_section(sc: scenario.Scenario) -> None:
    results, _ = scenario.load_gpu_results()
    found = scenario.moe_measurements(results)
    if not found:
        st.info("The MoE verify cost has **not been measured** on a GPU yet: no file in benchmarks/results/ has a "
                "`moe_verify` section (benchmarks/bench_moe_verify.py measures one). This page shows the "
                "uniform-routing model only.")
        return
    sec = found[0]
    hw = scenario.hardware_for(sec["device"], sc.hw)
    s = sec["series"][0]
    n = sc.k + 1 if sc.k + 1 in s["n"] else s["n"][-1]
    i = s["n"].index(n)
    ratio, distinct = moe_modelled(sec, s, hw)
    meas = s["ms"][i] / s["ms"][0]
    name = sec["model"].split(" (")[0]
    closer = "above" if meas > ratio[i] else "below"
    st.markdown(f"**Measured.** This project's kernels ran a model with **{name}** ({sec['moe_layers']} MoE layers, "
                f"{sec['top_k']} of {sec['n_experts']} experts per token; random weights) on an **{sec['device']}**. "
                f"At context {s['ctx']:,}, one forward over **{n} tokens took {s['ms'][i]:.2f} ms** "
                f"(+- {s['spread_ms'][i]:.2f}) against {s['ms'][0]:.2f} ms (+- {s['spread_ms'][0]:.2f}) for 1: "
                f"**{meas:.2f}x**, where the uniform-routing model on the {hw.name}'s "
                f"datasheet says **{ratio[i]:.2f}x** (measured {closer} the model). Its MoE layers read "
                f"**{s['distinct_mean'][i]:.1f} distinct experts** on average (10-90 %: {s['distinct_p10'][i]:.0f} to "
                f"{s['distinct_p90'][i]:.0f}) where uniform routing expects {distinct[i]:.1f}: random routers fed "
                "random tokens route close to uniformly, and a trained router need not. The model counts bytes "
                "only; the measured time also holds what the kernels do with the extra tokens.")
    cost, experts = measured_moe_charts(sec, hw)
    st.plotly_chart(cost, key="p6_moe_cost", config={"displayModeBar": False})
    st.plotly_chart(experts, key="p6_moe_experts", config={"displayModeBar": False})
    st.caption(f"{sec['device']}, {sec['date']}; {sec['model']}. {sec.get('routing', '')}. Model: "
               f"explainer/roofline.py on the {hw.name} preset, bf16, batch 1. Source: `{sec['file']}` "
               f"({sec.get('source', '')}). Command: `{sec['command']}`")


def question(sc: scenario.Scenario, cross: dict) -> None:
    b = cross.get(sc.context)
    options = ["Below 16", "16 to 255", "256 to 4,095", "4,096 or more, or never"]

    def bucket(x):
        return 3 if x is None or x >= 4096 else 2 if x >= 256 else 1 if x >= 16 else 0

    def reveal(choice: str) -> None:
        right = options.index(choice) == bucket(b)
        where = f"from batch **{b:,}**" if b else f"not up to batch {int(BATCHES[-1]):,}"
        st.markdown(f"{'Right.' if right else 'Not quite.'} In the model above ({sc.cm.name}, {sc.hw.name}, "
                    f"k = {sc.k}, context {sc.context:,}), MTP stops paying {where}. Below that, the chip has spare "
                    "arithmetic and the extra tokens ride along with the weight read; above it, they cost real time. "
                    "Longer contexts move the point out: reading the KV cache keeps the chip waiting on memory.")

    common.predict_then_reveal("limits", f"{sc.cm.name} on {sc.hw.name}, context {sc.context:,}, k = {sc.k}: from "
                               "what batch size on does MTP make decoding slower?", options, reveal)


def main() -> None:
    common.chapter(6, "Where it stops paying",
                   "MTP turns spare arithmetic into speed: it pays while each forward waits on memory, and stops "
                   "paying when a big batch already keeps the chip computing, or when extra tokens read extra weights "
                   "(mixture-of-experts models).")
    model = common.model_or_none()
    sc = scenario.pick(model)
    need = memory_section(sc)
    a, cross = batch_section(sc, need)
    moe_section(sc)
    question(sc, cross)
    common.glossary(["memory-bound", "KV cache", "acceptance rate", "forward (pass)"])
    st.divider()
    st.markdown("**That is the lesson.** The **Lab** pages are next: check a downloaded checkpoint for its MTP "
                "weights, and port the algorithm with a golden trace to diff against.")
    common.next_chapter("views/inspect_page.py", "Lab · Inspect a checkpoint")


main()
