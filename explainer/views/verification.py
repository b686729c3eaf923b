"""Chapter 4, keeping the output exact: one draft -> verify -> accept -> rollback cycle at a time, live."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from explainer import common, stepper
from mtp_ref import MtpRefError, generate
from mtp_ref.sampling import SamplingParams

MAX_NEW = 64        # cycles stop once this many tokens are written; the last cycle may write up to k+1 at once
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
        n = len(dec.generated)
        return (f"stopped after {n} tokens" + (f" (the limit is {MAX_NEW}; the last cycle wrote {n - MAX_NEW + 1} "
                f"past it, as a cycle writes its accepted drafts and one more token at once)" if n > MAX_NEW else ""))
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
    """Far enough for the longest overshoot: the last cycle may write k+1 <= 9 tokens past MAX_NEW - 1."""
    n = min(MAX_NEW + 9, _model.config.max_position_embeddings - len(ids))
    return generate(_model, list(ids), n, draft_depth=0, temperature=0.0, stop_at_eos=False).token_ids


# ---------------------------------------------------------------------- charts and tables

def sequence_html(model, ids, history) -> str:
    parts = [common.token_html(model, t, COLORS["prompt"], "prompt") for t in ids]
    parts += [common.token_html(model, t, COLORS[kind], LEGEND.get(kind, kind)) for t, kind in history]
    legend = " ".join(f'<span style="background:{COLORS[k]};padding:0 4px;border-radius:3px">{v}</span>'
                      for k, v in LEGEND.items())
    return f'<div style="line-height:1.9;font-family:monospace">{"".join(parts)}</div><div>{legend}</div>'


def accept_table(model, view: stepper.StepView) -> str:
    """The accept test per draft as a compact HTML table: every column stays visible in a 1024 px window."""
    rec = view.rec
    if view.greedy:
        cols = ["draft", "trunk's choice", "result"]
    else:   # seven numbers a row in a half-width column: short cells, the rule in the column heads
        cols = ["draft", "p(d)", "q(d)", "min(1, p/q)", "u", "result"]
    rows = []
    for j, d in enumerate(rec.drafts):
        row = {"draft": f"d{j + 1} {common.token_str(model, d.token)}",
               "trunk's choice": common.token_str(model, rec.target_argmax[j])}
        if j > rec.accepted:
            row["result"] = "not tested"
        elif view.greedy:
            row["result"] = "keep (equal)" if d.token == rec.target_argmax[j] else "reject (differ)"
        else:
            p, q, u = rec.p_of_draft[j], d.q, rec.accept_u[j]
            ratio = min(1.0, p / q)
            row.update({"p(d)": f"{p:.2f}", "q(d)": f"{q:.2f}", "min(1, p/q)": f"{ratio:.2f}", "u": f"{u:.2f}",
                        "result": "keep" if u < ratio else "reject"})
        rows.append(row)
    th = "".join(f'<th style="padding:4px 5px;text-align:left;border-bottom:2px solid #3d4650">{html.escape(c)}</th>'
                 for c in cols)
    body = ""
    for r in rows:
        bg = "#d3f3da" if r["result"].startswith("keep") else "#ffd7d7" if r["result"].startswith("reject") else "#fff"
        body += f'<tr style="background:{bg}">' + "".join(
            f'<td style="padding:4px 5px;font-family:monospace">{html.escape(str(r.get(c, "")))}</td>' for c in cols) + "</tr>"
    return (f'<table class="mtp-accept" data-testid="mtp-accept-table" style="border-collapse:collapse;'
            f'font-size:0.95rem;color:#1f2328;width:100%"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>')


def verify_chart(model, view: stepper.StepView) -> go.Figure:
    """Per draft: its q and the target's p. Greedy compares argmaxes, so also p of the target's argmax."""
    rec = view.rec
    labels = [f"d{j + 1} {common.token_str(model, d.token)}" for j, d in enumerate(rec.drafts)]
    p_d = [float(view.p[j][d.token]) for j, d in enumerate(rec.drafts)]
    fig = go.Figure()
    if view.greedy:
        q_d = [d.top[0][1] for d in rec.drafts]  # the draft is q's argmax: its T=1 probability
        p_max = [float(view.p[j][rec.target_argmax[j]]) for j in range(len(rec.drafts))]
        fig.add_bar(x=labels, y=q_d, name="q(d): the MTP module", marker_color=common.SERIES[3])
        fig.add_bar(x=labels, y=p_d, name="p(d): the trunk", marker_color=common.SERIES[0])
        fig.add_bar(x=labels, y=p_max, name="p of the trunk's own choice", marker_color="#6e7781")
        title = "Greedy: keep d if it IS the trunk's choice"
    else:
        q_d = [float(view.q[j][d.token]) for j, d in enumerate(rec.drafts)]
        fig.add_bar(x=labels, y=q_d, name="q(d): the MTP module", marker_color=common.SERIES[3])
        fig.add_bar(x=labels, y=p_d, name="p(d): the trunk", marker_color=common.SERIES[0])
        ratio = [min(1.0, p / q) for p, q in zip(p_d, q_d)]
        fig.add_scatter(x=labels, y=ratio, mode="markers", name="min(1, p/q): chance to keep",
                        marker=dict(symbol="line-ew-open", size=44, line=dict(width=4, color=common.INK)))
        fig.add_scatter(x=labels[: len(rec.accept_u)], y=rec.accept_u, mode="markers", name="u: the random draw",
                        marker=dict(symbol="x", size=16, color=common.SERIES[1]))
        title = "Sampling: keep d if u < min(1, p/q)"
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.05], title="probability"))
    return common.style(fig, title, height=360)


def residual_chart(model, view: stepper.StepView) -> go.Figure | None:
    rec = view.rec
    a = rec.accepted
    if view.greedy or a == len(rec.drafts) or not view.q or view.q[a] is None:
        return None
    p, q = view.p[a], view.q[a]
    r = stepper.residual(p, q)
    toks = list(dict.fromkeys(list(np.argsort(-p)[:5]) + list(np.argsort(-q)[:5]) + list(np.argsort(-r)[:5])))
    toks.sort(key=lambda t: -r[t])
    toks = toks[:8]
    labels = [common.token_str(model, t) for t in toks]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[p[t] for t in toks], name="p: the trunk", marker_color=common.SERIES[0])
    fig.add_bar(x=labels, y=[q[t] for t in toks], name="q: the MTP module", marker_color=common.SERIES[3])
    fig.add_bar(x=labels, y=[r[t] for t in toks], name="max(p − q, 0), normalised", marker_color=common.SERIES[4])
    fig.update_layout(barmode="group", yaxis=dict(title="probability"))
    corr = common.token_str(model, rec.new_tokens[-1])
    return common.style(fig, f"The correction is drawn from the residual: it drew '{corr}'", height=380)


def cache_chart(model, view: stepper.StepView, mode: str) -> go.Figure:
    rows = stepper.cache_rows(view, mode)
    lo = max(0, view.start["main"] - 4)
    hi = max(r["before"] for r in rows)
    cols = list(range(lo, hi))
    names, z, text = [], [], []
    for r in rows:
        for stage in ("before", "after"):
            names.append(f"{r['cache']}, {'after verify' if stage == 'before' else 'after rollback'}")
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
                tr.append("" if code in (0, 4) or tok is None else common.token_str(model, tok)[:5])
            z.append(zr)
            text.append(tr)
    scale = [[0.0, "#ffffff"], [0.2, "#ffffff"], [0.2, "#d0d7de"], [0.4, "#d0d7de"], [0.4, "#8fd19e"],
             [0.6, "#8fd19e"], [0.6, "#ffb3b3"], [0.8, "#ffb3b3"], [0.8, "#f6f8fa"], [1.0, "#f6f8fa"]]
    fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in cols], y=names, zmin=-0.5, zmax=4.5, colorscale=scale,
                               text=text, texttemplate="%{text}", textfont=dict(size=common.CHART_FONT),
                               showscale=False, xgap=2, ygap=2, hovertemplate="row %{x}: %{text}<extra>%{y}</extra>"))
    fig.update_layout(yaxis=dict(autorange="reversed"), xaxis=dict(title="cache row (= position in the text)"))
    return common.style(fig, "The caches: grey = earlier, green = written and kept, red = written and cut",
                        height=110 + 40 * len(names))


# ---------------------------------------------------------------------- panels

def why_rollback(mode: str, greedy: bool) -> None:
    st.markdown("**Why the MTP caches trail the main cache.** Module j's row i combines the hidden state at "
                "position i with the token at position i+j+1, which is only known once that token is written. So "
                "module j's cache is j+1 rows behind the main one, and fills in as tokens are kept.")
    if mode == "recursive":
        st.markdown("**Why kept rows are cut too, in recursive mode.** Module 0 drafted depth 2, 3, ... from its "
                    "own output instead of the trunk's hidden state. Those rows are provisional: even when their "
                    "drafts are kept, they are cut and recomputed next cycle from the trunk's real hidden states, "
                    "which the verify forward has just produced.")
    if not greedy:
        st.markdown("**Why a draft equal to the trunk's most likely token can still be rejected.** When sampling, the "
                    "rule is not \"is it the argmax\" but \"keep with probability min(1, p/q)\": if the module was "
                    "more sure of the token than the trunk (q > p), the draft is kept only part of the time. That "
                    "is what makes the output distributed exactly as the trunk alone would sample it.")


def last_step(model, view: stepper.StepView, mode: str) -> None:
    """The cycle's head: what happened in one line, then the verify chart and the accept table."""
    rec = view.rec
    k, a = len(rec.drafts), rec.accepted
    new = ", ".join(f"'{common.token_str(model, t)}'" for t in rec.new_tokens)
    ending = ("all drafts kept, plus a **bonus** token from the last verify row" if a == k else
              f"draft {a + 1} rejected, replaced by the trunk's **correction**")
    st.markdown(f"**Cycle {len(st.session_state['v_views'])}** at position {rec.position}: "
                f"{k} drafts, **{a} kept**; {ending}. Written: {new}.")
    how = "the module's most likely token" if view.greedy else "sampled from the module's q"
    with st.container(key="stack_verify"):
        c1, c2 = st.columns([3, 2] if view.greedy else [1, 1])
        c1.plotly_chart(verify_chart(model, view), key="p3_verify", config={"displayModeBar": False})
        c2.markdown(f"**1. Draft** ({how}): " + ", ".join(
            f"d{j + 1} = '{common.token_str(model, d.token)}'" for j, d in enumerate(rec.drafts)) + ".")
        c2.markdown(f"**2. Verify**: one trunk forward over ['{common.token_str(model, rec.pending)}', "
                    f"d1 .. d{k}] gives the trunk's p at all {k + 1} rows.")
        c2.markdown("**3. Accept**" + (": keep while the draft equals the trunk's choice" if view.greedy else
                                       ": keep d with probability min(1, p(d)/q(d))"))
        c2.html(accept_table(model, view))


def last_step_rest(model, view: stepper.StepView, mode: str) -> None:
    """The cycle's tail: the residual draw after a sampled rejection, and the rollback of every cache."""
    rec = view.rec
    a = rec.accepted
    fig = residual_chart(model, view)
    if fig is not None:
        st.markdown(f"**Rejected at depth {a + 1}**: the replacement is drawn from max(p − q, 0), normalised: the "
                    "probability the trunk has and the module did not already give. This makes every written token "
                    "exactly p-distributed.")
        st.plotly_chart(fig, key="p3_residual", config={"displayModeBar": False})
    st.markdown(f"**4. Rollback**: main cache {rec.cache_before['main']} → {rec.cache_after['main']} rows; "
                + ", ".join(f"MTP module {j}: {b} → {af}" for j, (b, af) in
                            enumerate(zip(rec.cache_before['mtp'], rec.cache_after['mtp']))) +
                ". Cut rows stay in memory and are overwritten by the next cycle.")
    st.plotly_chart(cache_chart(model, view, st.session_state["v_settings"]["mode"]), key="p3_cache",
                    config={"displayModeBar": False})
    why_rollback(mode, view.greedy)


def totals(model) -> None:
    dec, views = st.session_state["v_dec"], st.session_state["v_views"]
    s = dec.stats.as_dict()
    m = st.columns(4)
    m[0].metric("Tokens written", len(dec.generated))
    m[1].metric("Trunk forwards", s["target_forwards"] + 1, help="Including the prefill forward over the prompt.")
    m[2].metric("MTP forwards", s["mtp_forwards"])
    committed = sum(len(v.rec.new_tokens) for v in views)
    m[3].metric("Tokens per verify forward", f"{committed / len(views):.2f}" if views else "–")


def verdict(dec, plain: list[int]) -> tuple[bool, int]:
    """(identical, n): the decoder's written tokens against plain greedy decoding over the same n tokens."""
    gen = dec.generated
    return gen == plain[: len(gen)], len(gen)


def plain_comparison(model) -> None:
    s, dec = st.session_state["v_settings"], st.session_state["v_dec"]
    if s["temperature"] > 0:
        st.markdown("With T > 0 the output is distributed exactly as plain sampling, but single draws differ, "
                    "so there is no token-by-token comparison. Set the temperature to 0 to compare.")
        return
    plain = plain_greedy(s["model"], s["ids"], model)
    same, n = verdict(dec, plain)
    st.markdown(f"**Against plain greedy decoding** (no drafts, one forward per token): the first {n} tokens are "
                f"**{'identical' if same else 'DIFFERENT'}** {'✓' if same else '✗'}.")
    with st.expander("Plain greedy decoding's text"):
        st.markdown('<div style="line-height:1.9;font-family:monospace">'
                    + "".join(common.token_html(model, t, COLORS["plain"] if i < n else "#ffffff", "plain")
                              for i, t in enumerate(plain[: max(n, MAX_NEW)])) + "</div>", unsafe_allow_html=True)


def panel(model) -> None:
    if st.session_state.get("v_auto"):
        step_once(model)
    done = finished(model)
    if st.session_state.get("v_error"):
        st.error(st.session_state["v_error"])
    if done:
        st.markdown(f"**Done**: {done}. Press Reset to start again.")
    views = st.session_state["v_views"]
    mode = st.session_state["v_settings"]["mode"]
    if views:
        last_step(model, views[-1], mode)
    else:
        st.info("Press **Step** to run one draft → verify → accept → rollback cycle.")
    totals(model)
    plain_comparison(model)
    st.markdown(sequence_html(model, st.session_state["v_settings"]["ids"], st.session_state["v_history"]),
                unsafe_allow_html=True)
    if views:
        last_step_rest(model, views[-1], mode)
    if done and st.session_state.get("v_auto"):
        st.session_state["v_auto"] = False
        st.rerun(scope="app")


def question(model) -> None:
    def reveal(choice: str) -> None:
        right = choice.startswith("Identical")
        st.markdown(f"{'Right.' if right else 'No.'} Run **Auto-play** at temperature 0 and read the verdict under "
                    "the counters: the text is identical to plain greedy decoding, token for token, for any k and "
                    "either mode. Every written token is the trunk's own choice given the text before it; drafts "
                    "only decide how many of those choices one forward can confirm. (On real hardware, a forward "
                    "over several tokens can sum in a different order than one over 1 token, so a near-tie between "
                    "two tokens can in rare cases flip; the algorithm itself changes nothing.)")

    common.predict_then_reveal("exact", "At temperature 0, with bad drafts (say half of them rejected), the text MTP "
                               "writes is ...", ["Identical to plain decoding", "Slightly different: the drafts "
                               "leak in", "Different whenever a draft is rejected"], reveal)


def main() -> None:
    common.chapter(4, "Keeping the output exact",
                   "A draft is kept only when the trunk would have written it anyway (greedy), or with exactly the "
                   "probability that keeps the trunk's distribution (sampling); then the caches are cut back to the "
                   "kept tokens. So MTP changes how fast the text comes, never what the text is.")
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
    with st.container(key="buttons_verify"):
        b1, b2, b3, _ = st.columns([1, 1, 1, 2])
        done = finished(model)
        b1.button("Step", key="p3_step", type="primary", on_click=step_once, args=(model,), disabled=bool(done))
        auto = st.session_state.get("v_auto", False)
        b2.button("Pause" if auto else "Auto-play", key="p3_auto", disabled=bool(done) and not auto,
                  on_click=lambda: st.session_state.update(v_auto=not auto))
        b3.button("Reset", key="p3_reset", on_click=reset, args=(model, s))
    st.fragment(run_every=0.8 if auto else None)(panel)(model)
    question(model)
    common.glossary(["pending token", "verify", "accept / reject", "correction / bonus token", "rollback",
                     "KV cache", "chain / recursive", "token"])
    common.next_chapter("views/acceptance.py", "5 · How much faster")


main()
