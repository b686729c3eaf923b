"""Chapter 1, the wait: decoding is memory-bound, so a forward over k+1 tokens costs about one over 1 token."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from explainer import common, roofline, scenario

NS_MEASURED = [1, 2, 3, 4, 6, 8, 12, 16]
REPEATS = 7


# ---------------------------------------------------------------------- charts

def modelled_chart(sc: scenario.Scenario) -> go.Figure:
    ns = np.unique(np.logspace(0, 11, 45, base=2).astype(int))
    res = [sc.forward(int(n)) for n in ns]
    fig = go.Figure()
    fig.add_scatter(x=ns, y=[r["seconds"] * 1e3 for r in res], name="time = max of the two", line=dict(width=4,
                    color=common.SERIES[0]))
    fig.add_scatter(x=ns, y=[r["t_mem"] * 1e3 for r in res], name="bytes / bandwidth",
                    line=dict(dash="dot", color=common.SERIES[2]))
    fig.add_scatter(x=ns, y=[r["t_compute"] * 1e3 for r in res], name="FLOPs / peak",
                    line=dict(dash="dot", color=common.SERIES[1]))
    fig.add_vline(x=sc.k + 1, line_dash="dash", line_color=common.INK)
    fig.add_annotation(x=np.log10(sc.k + 1), y=1, yref="paper", text=f" k+1 = {sc.k + 1}", showarrow=False,
                       xanchor="left", yanchor="top")
    fig.update_layout(xaxis=dict(type="log", title="tokens per sequence in one forward"),
                      yaxis=dict(type="log", title="ms per forward"))
    return common.style(fig, f"Modelled: {sc.cm.name} on one {sc.hw.name} (roofline, not a measurement)")


def gpu_chart(results: list[dict]) -> go.Figure:
    fig = go.Figure()
    i = 0
    for d in results:
        for s in d["verify_ms"]:
            if 1 not in s["n"]:
                continue
            base = s["ms"][s["n"].index(1)]
            peer = not scenario.ours(s)
            fig.add_scatter(x=s["n"], y=[m / base for m in s["ms"]], mode="lines+markers",
                            name=f"{scenario.engine_name(s)}, {d['device']}, context {s['ctx']:,}",
                            line=dict(color=common.SERIES[i % 6], dash="dash" if peer else "solid"),
                            marker=dict(size=10, symbol="diamond" if peer else "circle"))
            i += 1
    fig.add_hline(y=1.0, line_dash="dot", line_color=common.MUTED)
    fig.update_layout(xaxis=dict(title="tokens in one forward (n)", dtick=1),
                      yaxis=dict(title="time / time of 1 token", rangemode="tozero"))
    return common.style(fig, "Measured on GPUs: a 7B model, one forward over n tokens")


def cpu_chart(rows: list[dict], title: str = "Measured on this computer's CPU: the tiny model, one forward over "
              "n tokens") -> go.Figure:
    ns = [r["n"] for r in rows]
    med = np.array([r["median"] for r in rows]) * 1e3
    q1 = np.array([np.percentile(r["samples"], 25) for r in rows]) * 1e3
    q3 = np.array([np.percentile(r["samples"], 75) for r in rows]) * 1e3
    lo, hi = med - q1, q3 - med
    fig = go.Figure()
    fig.add_scatter(x=ns, y=med, mode="lines+markers", name=f"median of {REPEATS} runs; bars: middle half of them",
                    error_y=dict(type="data", array=hi, arrayminus=lo, visible=True, thickness=2),
                    line=dict(color=common.SERIES[0]), marker=dict(size=10))
    fig.update_layout(xaxis=dict(title="tokens in one forward (n)", dtick=2), yaxis=dict(title="ms",
                      rangemode="tozero"))
    return common.style(fig, title)


# ---------------------------------------------------------------------- measurements

@st.cache_data(show_spinner="Timing forwards of the loaded model on this computer ...", max_entries=8)
def measure(key: str, ids: tuple, _model, nonce: int) -> list[dict]:
    """Medians over REPEATS interleaved runs; `nonce` makes 'Measure again' a new measurement, not a cache hit."""
    return roofline.time_forwards_repeated(_model, list(ids), NS_MEASURED, repeats=REPEATS)


@st.cache_data(show_spinner="Timing forwards of the numba-CUDA backend ...", max_entries=4)
def measure_cuda(key: str, ids: tuple, _model, nonce: int) -> list[dict]:
    from kernels_cuda.backend import CudaModel
    return roofline.time_forwards_repeated(CudaModel(_model), list(ids), NS_MEASURED, repeats=REPEATS)


# ---------------------------------------------------------------------- sections

def modelled_section(model) -> scenario.Scenario:
    st.subheader("The model: bytes against FLOPs")
    st.markdown("A forward over n tokens must (a) stream every weight from memory once and (b) do about "
                "2 FLOPs per weight per token. The chip does both at once, so the slower one sets the time. "
                "Pick a chip and a released model:")
    sc = scenario.pick(model, with_batch=False)
    one, ver = sc.forward(1), sc.forward(sc.k + 1)
    ratio = ver["seconds"] / one["seconds"]
    moe = ""
    if sc.cm.n_experts:
        moe = (f" This model is a **mixture of experts**: each token reads only {sc.cm.top_k} of its "
               f"{sc.cm.n_experts} experts per layer, so {sc.k + 1} tokens read more experts than 1 "
               f"({sc.cm.expected_experts(sc.k + 1):.1f} instead of {sc.cm.expected_experts(1):.0f} per layer, "
               "if routing were uniform): that is why its cost is not flat (chapter 6).")
    st.markdown(f"On one **{sc.hw.name}**, **{sc.cm.name}** at {sc.bpp:.3g} bytes per weight reads "
                f"**{common.fmt_bytes(one['weight_bytes'])}** of weights per token: at most "
                f"**{1 / one['seconds']:,.0f} tokens/s** for one sequence, and only "
                f"{one['intensity']:.1f} FLOPs per byte where this chip could do "
                f"{sc.peak / sc.bw:.0f} before arithmetic becomes the limit. "
                f"A forward over **k+1 = {sc.k + 1} tokens costs {ratio:.2f}x** one over 1 token here." + moe)
    st.plotly_chart(modelled_chart(sc), key="p1_time", config={"displayModeBar": False})
    mem = roofline.memory_needed(sc.cm, sc.bpp, sc.context, 1)
    need = roofline.devices_needed(mem["total"], sc.hw)
    if need > 1:
        st.warning(f"{sc.cm.name} needs {common.fmt_bytes(mem['total'])} for its weights and cache: more than one "
                   f"{sc.hw.name} ({sc.hw.memory_gb:g} GB) holds. It needs **{need} of them**; chapter 6 shows "
                   "what that does to the numbers.")
    return sc


def gpu_section() -> dict | None:
    results, problems = scenario.load_gpu_results()
    st.subheader("The evidence on real GPUs")
    for p in problems:
        st.warning(p)
    if not results:
        st.info("No GPU measurement files in benchmarks/results/.")
        return None
    lines = []
    for d in results:
        r = scenario.verify_ratio(d, 4)
        if r:
            lines.append(f"on an **{d['device']}**, 4 tokens took **{r[0]:.2f} ms** against {r[1]:.2f} ms for 1 "
                         f"(**{r[2]:.2f}x**)")
    peers = [(d, s) for d in results for s in d["verify_ms"] if not scenario.ours(s) and 4 in s["n"] and 1 in s["n"]]
    for d, s in peers[:1]:
        r = s["ms"][s["n"].index(4)] / s["ms"][s["n"].index(1)]
        lines.append(f"llama.cpp on the same {d['device']} (dashed; its batches of several tokens run without the CUDA "
                     f"graphs its 1-token path uses): **{r:.2f}x** for 4 tokens at context {s['ctx']:,}")
    step = [d["device"] for d in results if (r5 := scenario.verify_ratio(d, 5)) and r5[2] > 1.3]
    st.markdown("This project's numba-CUDA kernels, timed on a 7B model (MiMo-7B shapes, bf16): "
                + "; ".join(lines) + "."
                + (" The jump past 4 tokens on " + " and ".join(step) + " is our kernels switching to a slower "
                   "code path for 5 to 8 tokens, a limit of the kernels, not of the chip: the roofline above has "
                   "no such step." if step else ""))
    st.plotly_chart(gpu_chart(results), key="p1_gpu", config={"displayModeBar": False})
    for d in results:
        st.caption(scenario.cite(d))
    return next((d for d in results if "H200" in d["device"]), results[-1])


def cpu_section(model) -> None:
    st.subheader("And on this computer")
    ids, err = common.prompt_ids_or_error(model)
    if err:
        st.warning(f"No measurement here: {err}")
        return
    nonce = st.session_state.get("p1_nonce", 0)
    rows = measure(common.model_key(model), tuple(ids[:32]), model, nonce)
    r1, r16 = rows[0], rows[-1]
    ratio = r16["median"] / r1["median"]
    st.markdown(f"The bundled model is tiny ({common.fmt_bytes(r1['bytes_read'])} of weights touched per token), "
                f"so on a CPU its time is mostly fixed per-call overhead (Python, launching each matrix product), "
                f"not memory traffic. Still, 16 tokens in one forward took **{ratio:.1f}x** the time of 1 token "
                f"(median {r16['median'] * 1e3:.1f} ms against {r1['median'] * 1e3:.1f} ms), not 16x.")
    st.plotly_chart(cpu_chart(rows), key="p1_cpu", config={"displayModeBar": False})
    st.button("Measure again", key="p1_remeasure",
              on_click=lambda: st.session_state.update(p1_nonce=st.session_state.get("p1_nonce", 0) + 1))
    line = common.cuda_line()
    if line == "CUDA: an NVIDIA GPU is available":
        try:
            rows = measure_cuda(common.model_key(model), tuple(ids[:32]), model, nonce)
        except Exception as e:  # noqa: BLE001 - the GPU backend is optional here: say why, never fail the page
            st.markdown(f"CUDA: the GPU backend could not run this model ({type(e).__name__}: {e}).")
            return
        st.plotly_chart(cpu_chart(rows, "Measured on this computer's GPU: the tiny model (numba-CUDA backend)"),
                        key="p1_cuda", config={"displayModeBar": False})
    else:
        st.markdown(line)


def question(h200: dict | None) -> None:
    r = scenario.verify_ratio(h200, 4, 512) if h200 else None
    if r is None:
        return

    def reveal(choice: str) -> None:
        right = choice.startswith("About the same")
        st.markdown(f"{'Right.' if right else 'Not quite.'} Measured on the {h200['device']} ({h200['date']}): "
                    f"**{r[0]:.2f} ms** for 4 tokens against **{r[1]:.2f} ms** for 1, **{r[2]:.2f}x**. The weights "
                    "are read once whatever the number of tokens; the extra tokens only add arithmetic the chip had "
                    "spare. Checking 3 guesses costs about as much as writing 1 token.")

    common.predict_then_reveal(
        "wait", f"On an {h200['device']}, one forward of a 7B model over 1 token takes {r[1]:.2f} ms. "
                "How long does one forward over 4 tokens take?",
        ["About the same (under 1.5x)", "About twice as long", "About four times as long"], reveal)


def main() -> None:
    common.chapter(1, "The wait",
                   "Writing one token means reading every weight of the model from memory, and the chip spends "
                   "most of that time waiting: so a forward over a few tokens costs about the same as over one, "
                   "for dense models (mixture-of-experts models pay more, chapter 6).")
    model = common.model_or_none()
    modelled_section(model)
    h200 = gpu_section()
    if model is None:
        _, err = common.load(st.session_state.get("ckpt_path", common.default_path()))
        st.error(f"**The checkpoint could not be loaded.** {err} The modelled charts above still work.")
    else:
        cpu_section(model)
    question(h200)
    common.glossary(["token", "forward (pass)", "memory-bound", "KV cache"])
    common.next_chapter("views/guess_check.py", "2 · Guess and check")


main()
