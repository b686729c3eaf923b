"""Page 3: one draft -> verify -> accept -> rollback cycle at a time, on the live model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explainer import common, stepper
from mtp_ref import MtpRefError, generate
from mtp_ref.sampling import SamplingParams

MAX_NEW = 64
COLORS = {"prompt": "#e9ecef", "prefill": "#dee2e6", "accepted": "#b2f2bb", "correction": "#ffd8a8",
          "bonus": "#a5d8ff", "plain": "#dee2e6"}
LEGEND = {"accepted": "accepted draft", "correction": "target's correction", "bonus": "bonus token",
          "prefill": "first token (prefill)"}


# ---------------------------------------------------------------------- state

def settings(model, ids) -> dict:
    cfg = model.config
    c1, c2, c3, c4 = st.columns(4)
    mode = c2.radio("Mode", ["chain", "recursive"], horizontal=True, key=common.widget_key("v_mode", "chain"),
                    help="chain: module j drafts depth j+1. recursive: module 0 drafts every depth.")
    common.remember("v_mode")
    kmax = cfg.num_mtp_modules if mode == "chain" else 8
    if kmax > 1:
        k = c1.slider("Draft depth k", 1, kmax, key=common.widget_key("v_k", 2, lambda v: 1 <= v <= kmax))
        common.remember("v_k")
    else:
        k = 1
        c1.caption("Draft depth k = 1 (one MTP module; use recursive mode for more).")
    temp = c3.slider("Temperature", 0.0, 1.5, step=0.05, key=common.widget_key("v_temp", 0.0),
                     help="0 = greedy: accept a draft iff it equals the target's argmax.")
    common.remember("v_temp")
    seed = c4.number_input("Seed", 0, 2**31 - 1, step=1, key=common.widget_key("v_seed", 0))
    common.remember("v_seed")
    return {"model": common.model_key(model), "ids": tuple(ids), "k": int(k), "mode": mode,
            "temperature": float(temp), "seed": int(seed)}


def reset(model, s: dict) -> None:
    st.session_state.update(v_dec=None, v_settings=s, v_views=[], v_auto=False, v_history=[], v_error=None)
    try:
        dec = stepper.RecordingDecoder(model, s["k"], s["mode"], SamplingParams(s["temperature"]), s["seed"])
        first = dec.prefill(list(s["ids"]))
    except MtpRefError as e:
        st.session_state["v_error"] = str(e)
        return
    st.session_state.update(v_dec=dec, v_history=[(first, "prefill")])


def finished(model) -> str | None:
    dec = st.session_state["v_dec"]
    cfg = model.config
    if len(dec.generated) >= MAX_NEW:
        return f"stopped after {MAX_NEW} tokens"
    if set(cfg.eos_token_id) & set(dec.generated):
        return "reached an end-of-sequence token"
    if len(dec.tokens) + dec.k + 2 > cfg.max_position_embeddings:
        return "reached max_position_embeddings"
    return None


def step_once(model) -> None:
    if finished(model):
        st.session_state["v_auto"] = False
        return
    dec = st.session_state["v_dec"]
    before, start = list(dec.tokens), dec.cache_lengths()
    try:
        rec = dec.step()
    except MtpRefError as e:
        st.session_state.update(v_error=str(e), v_auto=False)
        return
    view = stepper.view_of(dec, rec, before, start)
    views = st.session_state["v_views"]
    if views:  # only the last cycle is drawn: drop the older full distributions ([k+1, V] each)
        views[-1].p, views[-1].q = [], []
    views.append(view)
    st.session_state["v_history"].extend(zip(rec.new_tokens, view.kinds))


@st.cache_data(show_spinner="Plain greedy decoding, once, for comparison ...")
def plain_greedy(key: str, ids: tuple, _model) -> list[int]:
    return generate(_model, list(ids), MAX_NEW, draft_depth=0, temperature=0.0, stop_at_eos=False).token_ids


# ---------------------------------------------------------------------- charts and tables

def sequence_html(model, ids, history) -> str:
    parts = [common.token_html(model, t, COLORS["prompt"], "prompt") for t in ids]
    parts += [common.token_html(model, t, COLORS[kind], LEGEND.get(kind, kind)) for t, kind in history]
    legend = " ".join(f'<span style="background:{COLORS[k]};padding:0 4px;border-radius:3px">{v}</span>'
                      for k, v in LEGEND.items())
    return f'<div style="line-height:1.9;font-family:monospace">{"".join(parts)}</div><div>{legend}</div>'


def accept_table(model, view: stepper.StepView) -> pd.DataFrame:
    rec = view.rec
    rows = []
    for j, d in enumerate(rec.drafts):
        tok = common.token_str(model, d.token)
        row = {"depth": f"d{j + 1}", "draft": tok, "target argmax": common.token_str(model, rec.target_argmax[j])}
        if j > rec.accepted:
            row.update(result="skipped")
        elif view.greedy:
            ok = d.token == rec.target_argmax[j]
            row.update(result="accept (equal)" if ok else "reject (differ)")
        else:
            p, q, u = rec.p_of_draft[j], d.q, rec.accept_u[j]
            ratio = min(1.0, p / q)
            row.update(**{"p(d)": f"{p:.3g}", "q(d)": f"{q:.3g}", "min(1, p/q)": f"{ratio:.3g}", "u": f"{u:.3g}"},
                       result="accept (u < min)" if u < ratio else "reject (u ≥ min)")
        rows.append(row)
    return pd.DataFrame(rows).set_index("depth")


def verify_chart(model, view: stepper.StepView) -> go.Figure:
    """Per draft: its q and the target's p. Greedy compares argmaxes, so also p of the target's argmax."""
    rec = view.rec
    labels = [f"d{j + 1} '{common.token_str(model, d.token)}'" for j, d in enumerate(rec.drafts)]
    p_d = [float(view.p[j][d.token]) for j, d in enumerate(rec.drafts)]
    fig = go.Figure()
    if view.greedy:
        q_d = [d.top[0][1] for d in rec.drafts]  # the draft is q's argmax: its T=1 probability
        p_max = [float(view.p[j][rec.target_argmax[j]]) for j in range(len(rec.drafts))]
        fig.add_bar(x=labels, y=q_d, name="q(d), T=1: draft module", marker_color="#845ef7")
        fig.add_bar(x=labels, y=p_d, name="p(d), T=1: target", marker_color="#1c7ed6")
        fig.add_bar(x=labels, y=p_max, name="p(target argmax), T=1", marker_color="#adb5bd",
                    text=[f"'{common.token_str(model, t)}'" for t in rec.target_argmax[: len(labels)]],
                    textposition="outside")
        top = max(q_d + p_d + p_max + [1e-3]) * 1.25
    else:
        q_d = [float(view.q[j][d.token]) for j, d in enumerate(rec.drafts)]
        fig.add_bar(x=labels, y=q_d, name="q(d): draft module", marker_color="#845ef7")
        fig.add_bar(x=labels, y=p_d, name="p(d): target", marker_color="#1c7ed6")
        ratio = [min(1.0, p / q) for p, q in zip(p_d, q_d)]
        fig.add_scatter(x=labels, y=ratio, mode="markers", name="min(1, p/q)",
                        marker=dict(symbol="line-ew-open", size=40, line=dict(width=3, color="black")))
        fig.add_scatter(x=labels[: len(rec.accept_u)], y=rec.accept_u, mode="markers", name="u ~ U(0,1)",
                        marker=dict(symbol="x", size=12, color="#e03131"))
        top = 1.05
    fig.update_layout(barmode="group", height=320, margin=dict(t=20, b=10), yaxis=dict(range=[0, top]),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def residual_chart(model, view: stepper.StepView) -> go.Figure | None:
    rec = view.rec
    a = rec.accepted
    if view.greedy or a == len(rec.drafts) or not view.q or view.q[a] is None:
        return None
    p, q = view.p[a], view.q[a]
    r = stepper.residual(p, q)
    toks = list(dict.fromkeys(list(np.argsort(-p)[:6]) + list(np.argsort(-q)[:6]) + list(np.argsort(-r)[:6])))
    toks.sort(key=lambda t: -r[t])
    labels = [f"'{common.token_str(model, t)}'" for t in toks]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[p[t] for t in toks], name="p: target", marker_color="#1c7ed6")
    fig.add_bar(x=labels, y=[q[t] for t in toks], name="q: draft", marker_color="#845ef7")
    fig.add_bar(x=labels, y=[r[t] for t in toks], name="normalise(max(p - q, 0))", marker_color="#f59f00")
    corr = rec.new_tokens[-1]
    if corr in toks:
        fig.add_annotation(x=labels[toks.index(corr)], y=max(p[corr], q[corr], r[corr]), text="drawn",
                           showarrow=True, arrowhead=2)
    fig.update_layout(barmode="group", height=320, margin=dict(t=20, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def cache_chart(model, view: stepper.StepView, mode: str) -> go.Figure:
    rows = stepper.cache_rows(view, mode)
    lo = max(0, view.start["main"] - 6)
    hi = max(r["before"] for r in rows)
    cols = list(range(lo, hi))
    names, z, text = [], [], []
    for r in rows:
        for stage in ("before", "after"):
            names.append(f"{r['cache']}: {'after verify' if stage == 'before' else 'after rollback'}")
            zr, tr = [], []
            for i in cols:
                tok = r["tokens"][i] if i < len(r["tokens"]) else None
                new = i >= r["first_new"]
                if i >= r["before"]:
                    code = 0
                elif stage == "before":
                    code = 1 if not new else (2 if i < r["after"] else 3)
                else:
                    code = (1 if not new else 2) if i < r["after"] else 4
                zr.append(code)
                tr.append("" if code == 0 or tok is None else common.token_str(model, tok)[:6])
            z.append(zr)
            text.append(tr)
    scale = [[0.0, "#ffffff"], [0.2, "#ffffff"], [0.2, "#dee2e6"], [0.4, "#dee2e6"], [0.4, "#b2f2bb"],
             [0.6, "#b2f2bb"], [0.6, "#ffc9c9"], [0.8, "#ffc9c9"], [0.8, "#f8f9fa"], [1.0, "#f8f9fa"]]
    fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in cols], y=names, zmin=-0.5, zmax=4.5, colorscale=scale,
                               text=text, texttemplate="%{text}", showscale=False, xgap=2, ygap=2,
                               hovertemplate="row %{x}: %{text}<extra>%{y}</extra>"))
    fig.update_layout(height=60 + 34 * len(names), margin=dict(t=10, b=10, l=10, r=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="cache row (position)"))
    return fig


# ---------------------------------------------------------------------- panels

def last_step(model, view: stepper.StepView, mode: str) -> None:
    rec = view.rec
    k, a = len(rec.drafts), rec.accepted
    new = ", ".join(f"'{common.token_str(model, t)}'" for t in rec.new_tokens)
    ending = ("all drafts accepted, plus a **bonus** token from the last verify row" if a == k else
              f"draft {a + 1} rejected, replaced by the target's **correction**")
    st.markdown(f"**Cycle {len(st.session_state['v_views'])}** at position {rec.position}: "
                f"{k} drafts, **{a} accepted**; {ending}. Committed: {new}.")
    how = "argmax of q; q at T = 1" if view.greedy else "sampled from q"
    st.markdown(f"**1. Draft** ({how}) — " + "; ".join(
        f"d{j + 1} = '{common.token_str(model, d.token)}' (top: "
        + ", ".join(f"'{common.token_str(model, t)}' {pp:.3f}" for t, pp in d.top[:3]) + ")"
        for j, d in enumerate(rec.drafts)))
    st.markdown(f"**2. Verify** — one trunk forward over {k + 1} tokens "
                f"['{common.token_str(model, rec.pending)}', d1 .. d{k}] gives p at every row.")
    c1, c2 = st.columns([3, 2])
    c1.plotly_chart(verify_chart(model, view), key="p3_verify")
    c2.markdown("**3. Accept**" + (" (greedy: match the argmax)" if view.greedy else
                                   " (accept d with probability min(1, p(d)/q(d)))"))
    c2.table(accept_table(model, view))
    fig = residual_chart(model, view)
    if fig is not None:
        st.markdown(f"**Rejected at depth {a + 1}**: the correction is drawn from the residual "
                    "normalise(max(p − q, 0)), which makes the output exactly p-distributed.")
        st.plotly_chart(fig, key="p3_residual")
    st.markdown(f"**4. Rollback** — main cache {rec.cache_before['main']} → {rec.cache_after['main']} rows; "
                + ", ".join(f"MTP {j}: {b} → {af}" for j, (b, af) in
                            enumerate(zip(rec.cache_before['mtp'], rec.cache_after['mtp']))) +
                ". Rolled-back rows stay in memory and are overwritten by the next cycle.")
    st.plotly_chart(cache_chart(model, view, st.session_state["v_settings"]["mode"]), key="p3_cache",
                    config={"displayModeBar": False})
    st.caption("grey: written earlier · green: written this cycle, kept · red: written this cycle, rolled back · "
               "pale: stale row past the cache length")


def totals(model) -> None:
    dec, views = st.session_state["v_dec"], st.session_state["v_views"]
    s = dec.stats.as_dict()
    m = st.columns(5)
    m[0].metric("Generated tokens", len(dec.generated))
    m[1].metric("Verify forwards", s["target_forwards"])
    m[2].metric("MTP forwards", s["mtp_forwards"])
    committed = sum(len(v.rec.new_tokens) for v in views)
    m[3].metric("Tokens per verify forward", f"{committed / len(views):.2f}" if views else "–")
    m[4].metric("Mean accepted drafts", f"{s['mean_accepted_length']:.2f}" if views else "–")


def plain_comparison(model) -> None:
    s, dec = st.session_state["v_settings"], st.session_state["v_dec"]
    if s["temperature"] > 0:
        st.caption("With T > 0 the output is distributed exactly as plain sampling, but individual draws differ, "
                   "so no token-by-token comparison is shown. Set T = 0 to compare.")
        return
    plain = plain_greedy(s["model"], s["ids"], model)
    gen = dec.generated
    same = gen == plain[: len(gen)]
    st.markdown(f"**Plain greedy decoding** (no drafts, one forward per token), computed once: the first "
                f"{len(gen)} tokens are **{'identical' if same else 'DIFFERENT'}** "
                f"{'✓' if same else '✗'}.")
    st.markdown('<div style="line-height:1.9;font-family:monospace">'
                + "".join(common.token_html(model, t, COLORS["plain"] if i < len(gen) else "#ffffff", "plain")
                          for i, t in enumerate(plain)) + "</div>", unsafe_allow_html=True)


def panel(model) -> None:
    if st.session_state.get("v_auto"):
        step_once(model)
    done = finished(model)
    if st.session_state.get("v_error"):
        st.error(st.session_state["v_error"])
    st.markdown(sequence_html(model, st.session_state["v_settings"]["ids"], st.session_state["v_history"]),
                unsafe_allow_html=True)
    totals(model)
    views = st.session_state["v_views"]
    if views:
        last_step(model, views[-1], st.session_state["v_settings"]["mode"])
    else:
        st.info("Press **Step** to run one draft → verify → accept → rollback cycle.")
    plain_comparison(model)
    if done and st.session_state.get("v_auto"):
        st.session_state["v_auto"] = False
        st.rerun(scope="app")


def main() -> None:
    st.title("Step-by-step verification")
    model = common.require_model()
    if model.config.num_mtp_modules == 0:
        st.warning("This checkpoint holds no MTP module, so there is nothing to draft. Load one with MTP weights.")
        return
    ids = common.prompt_ids(model)
    s = settings(model, ids)
    if st.session_state.get("v_settings") != s or "v_dec" not in st.session_state:
        reset(model, s)
    if st.session_state["v_dec"] is None:
        st.error(st.session_state["v_error"])
        return
    b1, b2, b3, b4 = st.columns([1, 1, 1, 3])
    done = finished(model)
    b1.button("Step", key="p3_step", type="primary", on_click=step_once, args=(model,), disabled=bool(done))
    auto = st.session_state.get("v_auto", False)
    b2.button("Pause" if auto else "Auto-play", key="p3_auto", disabled=bool(done) and not auto,
              on_click=lambda: st.session_state.update(v_auto=not auto))
    b3.button("Reset", key="p3_reset", on_click=reset, args=(model, s))
    if done:
        b4.caption(f"Done: {done}. Reset to start again.")
    st.fragment(run_every=0.8 if auto else None)(panel)(model)


main()
