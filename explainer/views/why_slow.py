"""Page 1: decoding is memory-bound; verifying k+1 tokens costs about one forward; where that stops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explainer import common, roofline
from explainer.presets import HARDWARE, MODELS, PRECISIONS, Hardware

LOADED = "Loaded checkpoint"
CUSTOM = "Custom"


# ---------------------------------------------------------------------- inputs

def pick_hardware() -> Hardware:
    names = [h.name for h in HARDWARE] + [CUSTOM]
    choice = st.selectbox("Hardware", names, key=common.widget_key("p1_hw", names[0], lambda v: v in names))
    common.remember("p1_hw")
    if choice != CUSTOM:
        return next(h for h in HARDWARE if h.name == choice)
    c1, c2 = st.columns(2)
    bw = c1.number_input("Bandwidth (GB/s)", 1.0, 100000.0, key=common.widget_key("p1_bw", 1000.0))
    tf = c2.number_input("Peak TFLOP/s", 0.01, 100000.0, key=common.widget_key("p1_tf", 100.0))
    common.remember("p1_bw"), common.remember("p1_tf")
    return Hardware("Custom", bw, tf, "set by you")


def pick_model(model) -> tuple[roofline.CostModel, list[str]]:
    names = ([LOADED] if model is not None else []) + list(MODELS)
    choice = st.selectbox("Model", names, key=common.widget_key("p1_model", "MiMo-7B", lambda v: v in names))
    common.remember("p1_model")
    if choice == LOADED:
        return common.loaded_cost(common.model_key(model), model), ["as stored"] + list(PRECISIONS)
    return roofline.from_config(choice, MODELS[choice]), list(PRECISIONS)


def bytes_per_param(cm: roofline.CostModel, precision: str) -> float:
    return cm.stored_bpp if precision == "as stored" else PRECISIONS[precision].bytes_per_param


# ---------------------------------------------------------------------- charts

def vline_log(fig: go.Figure, x: float, text: str, color: str) -> None:
    """A labelled vertical line on a log x axis (annotations there take log10 coordinates)."""
    fig.add_vline(x=x, line_dash="dot", line_color=color)
    fig.add_annotation(x=np.log10(x), y=0, yref="paper", text=text, showarrow=False, xanchor="left",
                       yanchor="bottom", font=dict(color=color))


def roofline_chart(cm, hw, bpp, context, batch) -> go.Figure:
    bw, peak = hw.bandwidth_gbs * 1e9, hw.tflops * 1e12
    ns = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]  # tokens per sequence
    pts = [cm.forward(n, batch, context, bpp, bw, peak) for n in ns]
    ai = np.logspace(-1, 4.5, 200)
    fig = go.Figure()
    fig.add_scatter(x=ai, y=np.minimum(peak, ai * bw) / 1e12, name="roof: min(peak, AI x bandwidth)",
                    line=dict(color="#888"))
    fig.add_scatter(x=[p["intensity"] for p in pts], y=[p["flops"] / p["seconds"] / 1e12 for p in pts],
                    mode="markers+text", text=[str(n) if n in (1, 4, 16, 64, 256, 2048) else "" for n in ns],
                    textposition="middle left",
                    name=f"one forward, {batch} seq x n tokens", marker=dict(size=9, color="#d62728"))
    vline_log(fig, peak / bw, f"ridge {peak / bw:.0f} FLOP/B", "black")
    fig.update_layout(xaxis=dict(type="log", title="arithmetic intensity (FLOP / byte)"),
                      yaxis=dict(type="log", title="attained TFLOP/s"), height=380,
                      margin=dict(t=30, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def forward_time_chart(cm, hw, bpp, context, batch, k) -> go.Figure:
    bw, peak = hw.bandwidth_gbs * 1e9, hw.tflops * 1e12
    ns = np.unique(np.logspace(0, 11, 60, base=2).astype(int))
    res = [cm.forward(int(n), batch, context, bpp, bw, peak) for n in ns]
    fig = go.Figure()
    fig.add_scatter(x=ns, y=[r["seconds"] * 1e3 for r in res], name="time (roofline)", line=dict(width=3))
    fig.add_scatter(x=ns, y=[r["t_mem"] * 1e3 for r in res], name="bytes / bandwidth", line=dict(dash="dot"))
    fig.add_scatter(x=ns, y=[r["t_compute"] * 1e3 for r in res], name="FLOPs / peak", line=dict(dash="dot"))
    vline_log(fig, k + 1, f"verify k+1 = {k + 1}", "green")
    fig.update_layout(xaxis=dict(type="log", title=f"tokens per sequence in one forward (batch {batch})"),
                      yaxis=dict(type="log", title="ms per forward"), height=380, margin=dict(t=30, b=10),
                      legend=dict(orientation="h", y=-0.25))
    return fig


CONTEXTS = [0, 1024, 4096, 32768]


def speedup_vs_batch_chart(cm, hw, bpp, k, a) -> tuple[go.Figure, dict]:
    """Modelled speedup of k drafts against batch size, one line per context length."""
    bw, peak = hw.bandwidth_gbs * 1e9, hw.tflops * 1e12
    batches = np.unique(np.logspace(0, 14, 60, base=2).astype(int))
    fig, crossings = go.Figure(), {}
    for ctx in CONTEXTS:
        s = [roofline.mtp_speedup(cm, a, k, int(b), ctx, bpp, bw, peak) for b in batches]
        fig.add_scatter(x=batches, y=s, name=f"context {ctx:,}")
        below = [int(b) for b, v in zip(batches, s) if v < 1.0]
        crossings[ctx] = below[0] if below else None
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(xaxis=dict(type="log", title="batch size (sequences decoded together)"),
                      yaxis=dict(title="modelled speedup vs plain decoding"), height=360,
                      margin=dict(t=30, b=10), legend=dict(orientation="h", y=-0.25))
    return fig, crossings


def experts_chart(cm, bpp) -> go.Figure:
    ms = np.arange(1, 65)
    fig = go.Figure()
    fig.add_scatter(x=ms, y=[cm.expected_experts(m) for m in ms], name="distinct experts per MoE layer")
    fig.add_scatter(x=ms, y=[cm.weight_bytes(m, bpp) / cm.weight_bytes(1, bpp) for m in ms], yaxis="y2",
                    name="weight bytes vs 1 token", line=dict(dash="dash"))
    fig.update_layout(xaxis=dict(title="tokens in the forward (m)"),
                      yaxis=dict(title=f"E(1-(1-k/E)^m), E={cm.n_experts}, k={cm.top_k}"),
                      yaxis2=dict(title="x bytes of a 1-token forward", overlaying="y", side="right"),
                      height=340, margin=dict(t=30, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def measured_chart(rows, cm, copy_bw, cuda_rows=None) -> go.Figure:
    ns = [r["n"] for r in rows]
    f32 = [r["bytes_read"] / cm.stored_bpp * 4 for r in rows]
    fig = go.Figure()
    fig.add_scatter(x=ns, y=[r["seconds"] * 1e3 for r in rows], mode="lines+markers", name="measured (NumPy, best of 5)")
    if cuda_rows:
        fig.add_scatter(x=[r["n"] for r in cuda_rows], y=[r["seconds"] * 1e3 for r in cuda_rows],
                        mode="lines+markers", name="measured (CUDA, best of 3)")
    fig.add_scatter(x=ns, y=[b / copy_bw * 1e3 for b in f32], name="float32 weight bytes / copy bandwidth",
                    line=dict(dash="dot"))
    fig.update_layout(xaxis=dict(title="tokens in one trunk forward (n)", dtick=1),
                      yaxis=dict(title="ms", rangemode="tozero"), height=340, margin=dict(t=30, b=10),
                      legend=dict(orientation="h", y=-0.3))
    return fig


# ---------------------------------------------------------------------- measurements (cached)

@st.cache_data(show_spinner="Timing forwards of the loaded model on this machine ...")
def measure(key: str, ids: tuple, _model, nonce: int) -> list[dict]:
    return roofline.time_forwards(_model, list(ids), list(range(1, 17)), repeats=5)


@st.cache_data(show_spinner=False)
def machine_bandwidth(nonce: int) -> float:
    return roofline.copy_bandwidth()


@st.cache_data(show_spinner=False)
def cuda_status() -> str:
    try:
        from numba import config as numba_config, cuda
        if numba_config.ENABLE_CUDASIM or not cuda.is_available():  # the simulator is no GPU to time
            return "CUDA: no GPU visible to numba on this machine, so only the NumPy curve is shown."
        from kernels_cuda.backend import CudaModel  # noqa: F401
    except Exception as e:  # noqa: BLE001 - optional extra: report why it is off, never fail the page
        return f"CUDA: not available here ({type(e).__name__}: {e})."
    return "CUDA available"


@st.cache_data(show_spinner="Timing CUDA forwards ...")
def measure_cuda(key: str, ids: tuple, _model) -> list[dict]:
    from kernels_cuda.backend import CudaModel
    return roofline.time_forwards(CudaModel(_model), list(ids), list(range(1, 17)), repeats=3)


# ---------------------------------------------------------------------- sections

def reference_tables(cm) -> None:
    with st.expander("Reference values and sources"):
        st.markdown("**Hardware** (datasheet values; *derivation* = arithmetic applied to them)")
        st.dataframe(pd.DataFrame([{"hardware": h.name, "GB/s": h.bandwidth_gbs, "dense 16-bit TFLOP/s": h.tflops,
                                    "source": h.source, "derivation": h.derivation} for h in HARDWARE]),
                     hide_index=True)
        st.markdown("**Models**: parameters computed here from the released config values; compare with the "
                    "published figure.")
        rows = []
        for name, c in MODELS.items():
            m = roofline.from_config(name, c)
            rows.append({"model": name, "trunk params (computed)": common.fmt_count(m.trunk_params()),
                         "MTP params (computed)": common.fmt_count(m.mtp_params),
                         "active / token (computed)": common.fmt_count(m.active_params()),
                         "published": c["published"], "config source": c["source"]})
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        st.markdown("**Weight formats**: " + "; ".join(f"{p.name} = {p.bytes_per_param:.4g} B/param ({p.source})"
                                                      for p in PRECISIONS.values()))
        if cm.notes:
            st.caption(" ".join(cm.notes))


def measurements(model, ids) -> tuple[list[dict], float]:
    """Timed before anything is drawn, so the browser's rendering does not compete for the CPU."""
    nonce = st.session_state.get("p1_nonce", 0)
    return measure(common.model_key(model), tuple(ids[:32]), model, nonce), machine_bandwidth(nonce)


def live_section(model, ids, cm_loaded, rows, copy_bw) -> float:
    """Plot the measurement; returns the share of the copy bandwidth a 1-token forward reaches."""
    st.subheader("Measured on this machine")
    st.button("Measure again", key="p1_remeasure",
              on_click=lambda: st.session_state.update(p1_nonce=st.session_state.get("p1_nonce", 0) + 1))
    cuda_rows, status = None, cuda_status()
    if status == "CUDA available":
        try:
            cuda_rows = measure_cuda(common.model_key(model), tuple(ids[:32]), model)
            status = "CUDA: the numba-cuda backend, timed the same way."
        except Exception as e:  # noqa: BLE001 - optional extra: report, never fail the page
            status = f"CUDA timing failed: {type(e).__name__}: {e}"
    st.plotly_chart(measured_chart(rows, cm_loaded, copy_bw, cuda_rows), key="p1_measured")
    r1, r16 = rows[0], rows[-1]
    f32 = r1["bytes_read"] / cm_loaded.stored_bpp * 4
    achieved = f32 / r1["seconds"]
    st.markdown(
        f"One forward of the loaded model: **{r1['seconds'] * 1e3:.1f} ms** for 1 token, "
        f"**{r16['seconds'] * 1e3:.1f} ms** for 16 ({r16['seconds'] / r1['seconds']:.1f}x the time for 16x the tokens). "
        f"At n = 1 it streams {common.fmt_bytes(f32)} of float32 weights, i.e. **{achieved / 1e9:.1f} GB/s**, "
        f"against **{copy_bw / 1e9:.1f} GB/s** measured for a NumPy copy here "
        f"({achieved / copy_bw:.0%}). Stored weight bytes touched: {common.fmt_bytes(r1['bytes_read'])} at n = 1, "
        f"{common.fmt_bytes(r16['bytes_read'])} at n = 16"
        + (" (more routed experts picked)." if cm_loaded.n_experts else " (16 embedding rows instead of 1)."))
    st.caption(status)
    return achieved / copy_bw


def stops_paying_section(cm, hw, bpp, k, overhead_share: float | None) -> None:
    st.subheader("Where MTP stops paying")
    c1, c2 = st.columns(2)
    a = c1.slider("Acceptance per draft (a)", 0.0, 1.0, step=0.01, key=common.widget_key("p1_a", 0.85),
                  help="Default: DeepSeek-V3 report 5.4.3, 85-90 % acceptance of the second token.")
    common.remember("p1_a")
    c2.caption(f"One MTP draft reads c = {cm.draft_ratio():.3f} of a 1-token trunk forward's weight bytes. "
               "Speedup = E[tokens] x T(1) / (T(k+1) + k T_draft), E[tokens] = (1 - a^(k+1)) / (1 - a).")
    if cm.draft_params == 0:
        st.caption("This model drafts with a separate assistant model; its draft cost is not modelled (c = 0).")
    fig, cross = speedup_vs_batch_chart(cm, hw, bpp, k, a)
    st.markdown(f"**Large batches** (k = {k}): once the weights' FLOPs dominate, a forward over k+1 tokens per "
                "sequence costs k+1 times as much, and drafting loses. The KV cache is read once per forward "
                "whatever n is, so long contexts keep decode memory bound and push that point out.")
    st.plotly_chart(fig, key="p1_batch")
    st.caption("Speedup falls below 1: " + "; ".join(
        f"context {c:,}: from batch {b:,}" if b else f"context {c:,}: not up to batch {2 ** 14:,}"
        for c, b in cross.items()) + ".")
    if cm.n_experts:
        st.markdown(f"**MoE**: each token picks {cm.top_k} of {cm.n_experts} experts per layer, so a forward over "
                    f"m tokens reads more distinct experts: {cm.expected_experts(1):.1f} at m = 1, "
                    f"{cm.expected_experts(4):.1f} at m = 4, {cm.expected_experts(16):.1f} at m = 16 "
                    "(uniform routing).")
        st.plotly_chart(experts_chart(cm, bpp), key="p1_experts")
    if overhead_share is not None:
        st.markdown(f"**Tiny models** are overhead bound: the loaded model's 1-token forward reaches "
                    f"{overhead_share:.0%} of this machine's copy bandwidth (measured above), so its time is per-call "
                    "overhead, which each draft forward pays again whatever its bytes. Page 4 measures that draft "
                    "cost ratio.")


def main() -> None:
    st.title("Why decoding is slow")
    st.markdown("Each new token needs one forward pass, and each forward reads **every weight once** "
                "(plus the KV cache) to do one multiply-add per weight: far fewer FLOPs per byte than the chip "
                "can do, so it waits on memory. A forward over **k+1 tokens reads the same weights**, so it costs "
                "about the same: that is what MTP drafting exploits.")
    model = common.model_or_none()
    ids, ids_err, measured = [], None, None
    if model is None:
        _, err = common.load(st.session_state.get("ckpt_path", common.default_path()))
        st.error(f"**The checkpoint could not be loaded.** {err} — the presets below still work.")
    else:
        ids, ids_err = common.prompt_ids_or_error(model)
        if not ids_err:
            measured = measurements(model, ids)
    c1, c2, c3 = st.columns(3)
    with c1:
        hw = pick_hardware()
    with c2:
        cm, precisions = pick_model(model)
    with c3:
        precision = st.selectbox("Weight precision", precisions,
                                 key=common.widget_key("p1_prec", precisions[0], lambda v: v in precisions))
        common.remember("p1_prec")
    c4, c5, c6 = st.columns(3)
    context = c4.select_slider("Context length (tokens in KV cache)", [0, 512, 1024, 4096, 16384, 65536, 131072],
                               key=common.widget_key("p1_ctx", 4096))
    batch = c5.select_slider("Batch size", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
                             key=common.widget_key("p1_batch_size", 1))
    k = c6.slider("Draft depth k", 1, 8, key=common.widget_key("p1_k", 3))
    for key in ("p1_ctx", "p1_batch_size", "p1_k"):
        common.remember(key)
    bpp = bytes_per_param(cm, precision)
    bw, peak = hw.bandwidth_gbs * 1e9, hw.tflops * 1e12
    one = cm.forward(1, batch, context, bpp, bw, peak)
    ver = cm.forward(k + 1, batch, context, bpp, bw, peak)
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Weight bytes (n=1)", common.fmt_bytes(one["weight_bytes"]),
              help="Weight bytes one forward over 1 token per sequence reads.")
    m2.metric("KV bytes", common.fmt_bytes(one["kv_bytes"]), help="KV cache bytes one forward reads.")
    m3.metric("Tokens/s ceiling", f"{1 / one['seconds']:,.0f}",
              help="Per sequence: 1 / max(bytes / bandwidth, FLOPs / peak), one token per forward.")
    m4.metric("FLOP/byte (n=1)", f"{one['intensity']:.1f}", help=f"Ridge point of this hardware: "
              f"{hw.tflops * 1e12 / (hw.bandwidth_gbs * 1e9):.0f} FLOP/B; below it the forward is memory bound.")
    m5.metric(f"Time, {k + 1} vs 1 token", f"{ver['seconds'] / one['seconds']:.2f}x",
              help=f"One forward over k+1 = {k + 1} tokens per sequence against one over 1 token; "
                   f"{ver['bound']} bound at k+1.")
    st.caption(f"{hw.name}: {hw.bandwidth_gbs:g} GB/s, {hw.tflops:g} TFLOP/s ({hw.source}). "
               f"{cm.name}: {common.fmt_count(cm.trunk_params())} trunk params, "
               f"{common.fmt_count(cm.active_params())} active per token, {bpp:.4g} bytes/param.")
    g1, g2 = st.columns(2)
    g1.plotly_chart(roofline_chart(cm, hw, bpp, context, batch), key="p1_roofline")
    g2.plotly_chart(forward_time_chart(cm, hw, bpp, context, batch, k), key="p1_time")
    reference_tables(cm)
    share = None
    if ids_err:
        st.warning(f"No measurement on this machine: {ids_err}")
    elif measured is not None:
        share = live_section(model, ids, common.loaded_cost(common.model_key(model), model), *measured)
    stops_paying_section(cm, hw, bpp, k, share)


main()
