"""Chapter 2, guess and check: draft k tokens cheaply, verify them in one trunk forward, keep the agreeing prefix."""

from __future__ import annotations

import html

import plotly.graph_objects as go
import streamlit as st
import streamlit.components.v1 as components

from explainer import common, diagram, race, stepper
from mtp_ref import MtpRefError
from mtp_ref.sampling import SamplingParams

RACE_TOKENS = 48


# ---------------------------------------------------------------------- the cycle diagram

def cycle_state(model, ids: list[int], k: int) -> dict:
    key = (common.model_key(model), tuple(ids), k)
    st_ = st.session_state.get("g_cycle")
    if st_ is None or st_["key"] != key:
        dec = stepper.RecordingDecoder(model, k, "chain", SamplingParams(0.0), 0)
        dec.prefill(list(ids))
        st_ = {"key": key, "dec": dec, "view": None, "phase": 0, "cycles": 0}
        st.session_state["g_cycle"] = st_
    return st_


def advance(model) -> None:
    s = st.session_state["g_cycle"]
    k = s["dec"].k
    if s["view"] is None or s["phase"] >= k + 3:
        dec = s["dec"]
        if len(dec.tokens) + k + 2 > model.config.max_position_embeddings:
            return
        before, start = list(dec.tokens), dec.cache_lengths()
        rec = dec.step()
        s.update(view=stepper.view_of(dec, rec, before, start), phase=1, cycles=s["cycles"] + 1)
    else:
        s["phase"] += 1


def cycle_section(model, ids: list[int]) -> None:
    st.subheader("One cycle, phase by phase")
    cfg = model.config
    k = min(3, cfg.num_mtp_modules)
    s = cycle_state(model, ids, k)
    with st.container(key="buttons_cycle"):
        b1, b2, b3 = st.columns([1, 1, 4])
        b1.button("Step", key="g_step", type="primary", on_click=advance, args=(model,))
        b2.button("Reset", key="g_reset", on_click=lambda: st.session_state.pop("g_cycle", None))
    if s["view"] is None:
        st.markdown(f"The trunk has read the prompt and chosen the next token, **'"
                    f"{common.token_str(model, s['dec'].pending)}'** (the *pending* token: chosen, not yet fed "
                    f"back). Press **Step** to walk through one cycle with k = {k} drafts.")
        return
    view, phase = s["view"], s["phase"]
    tok = lambda t: common.token_str(model, t)  # noqa: E731
    names = diagram.phases(k)
    components.html(diagram.cycle_svg(view, phase, "chain", tok), height=diagram.H + 16)
    st.markdown(f"Cycle {s['cycles']}, phase {phase} of {len(names)}: " + diagram.phase_sentence(view, phase, "chain",
                                                                                                  tok))


# ---------------------------------------------------------------------- the race

@st.cache_data(show_spinner="Running plain decoding and MTP drafting on your prompt ...", max_entries=16)
def lanes(key: str, ids: tuple, k: int, _model) -> tuple[race.Lane, race.Lane]:
    return (race.run_lane(_model, list(ids), RACE_TOKENS, 0),
            race.run_lane(_model, list(ids), RACE_TOKENS, k))


def race_figure(model, plain: race.Lane, mtp: race.Lane) -> go.Figure:
    """Animated bars: tokens written after f trunk forwards. Plotly frames: plays in the browser, offline."""
    F = plain.forwards
    names = [plain.name, mtp.name]

    def frame_data(f: int):
        counts = [plain.tokens_after(f), mtp.tokens_after(f)]
        byts = [plain.bytes_after[min(f, plain.forwards) - 1] if f else 0,
                mtp.bytes_after[min(f, mtp.forwards) - 1] if f else 0]
        text = [f"{c} tokens · {common.fmt_bytes(b)} read" for c, b in zip(counts, byts)]
        return go.Bar(x=counts, y=names, orientation="h", text=text, textposition="outside", cliponaxis=False,
                      marker_color=[common.SERIES[0], common.SERIES[2]],
                      textfont=dict(size=common.CHART_FONT + 2, color=common.INK))

    # the figure opens at the forward where MTP finished (the telling moment); Play replays from forward 0
    shown = min(mtp.forwards, F)
    fig = go.Figure(data=[frame_data(shown)], frames=[go.Frame(data=[frame_data(f)], name=str(f))
                                                      for f in range(F + 1)])
    steps = [dict(method="animate", label=str(f) if f % 5 == 0 or f == F else "", args=[[str(f)], dict(
                  mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))])
             for f in range(F + 1)]
    fig.update_layout(
        xaxis=dict(title="tokens written", range=[0, RACE_TOKENS * 1.7]), yaxis=dict(autorange="reversed"),
        updatemenus=[dict(type="buttons", showactive=False, x=0, y=-0.32, xanchor="left", yanchor="top",
                          buttons=[dict(label="▶ Play", method="animate",
                                        args=[[str(f) for f in range(F + 1)], dict(frame=dict(duration=180,
                                              redraw=True), mode="immediate", transition=dict(duration=0))])])],
        sliders=[dict(active=shown, steps=steps, x=0.12, len=0.88, y=-0.25, yanchor="top",
                      currentvalue=dict(prefix="trunk forwards: ", font=dict(size=common.CHART_FONT)),
                      font=dict(size=common.CHART_FONT - 2))])
    return common.style(fig, "The race: tokens written after each trunk forward", height=360, legend_below=False)


def lane_html(model, lane: race.Lane) -> str:
    """The lane's text; MTP tokens shaded by the cycle that wrote them, accepted drafts underlined."""
    parts = []
    for t, c, acc in zip(lane.tokens, lane.cycle_of, lane.accepted_draft):
        bg = "#dbe9f7" if c % 2 else "#fff3bf"
        deco = "border-bottom:3px solid #1a7f37;" if acc else ""
        s = html.escape(model.decode([t]) if model.tokenizer is not None else f" {t}").replace("\n", "↵")
        parts.append(f'<span style="background:{bg};{deco}white-space:pre-wrap;color:#1f2328">{s}</span>')
    return f'<div style="font-family:monospace;font-size:1.05rem;line-height:2">{"".join(parts)}</div>'


def race_section(model, ids: list[int]) -> tuple[race.Lane, race.Lane] | None:
    cfg = model.config
    k = min(3, cfg.num_mtp_modules)
    st.subheader("The race: plain decoding against MTP, same prompt")
    try:
        plain, mtp = lanes(common.model_key(model), tuple(ids), k, model)
    except MtpRefError as e:
        st.error(str(e))
        return None
    same = plain.tokens == mtp.tokens
    st.markdown(
        f"Both write {RACE_TOKENS} tokens after your prompt. Plain decoding needs **{plain.forwards} trunk "
        f"forwards** (one per token after the first); MTP with k = {k} needs **{mtp.forwards}**, plus "
        f"{mtp.mtp_forwards} small MTP forwards. Weight bytes read (the engine's meter, float32 weights): "
        f"**{common.fmt_bytes(plain.bytes_after[-1])}** against **{common.fmt_bytes(mtp.bytes_after[-1])}**. "
        f"The two texts are **{'identical' if same else 'DIFFERENT'}**"
        + (" token for token: greedy MTP changes the speed, never the output." if same else "."))
    st.plotly_chart(race_figure(model, plain, mtp), key="g_race", config={"displayModeBar": False})
    st.markdown("**MTP's text**, shaded by the cycle that wrote it (alternating blue / yellow: one trunk forward "
                "each); <span style='border-bottom:3px solid #1a7f37'>underlined</span> tokens are drafts the trunk "
                "accepted:", unsafe_allow_html=True)
    st.html(lane_html(model, mtp))
    return plain, mtp


def question(res, k: int) -> None:
    if res is None:
        return
    plain, mtp = res
    per = (len(mtp.tokens) - 1) / max(mtp.forwards, 1)
    options = ["1 to 2", "2 to 3", f"3 to {k + 1}"] if k >= 3 else [f"1 to {k + 1}", "more"]

    def reveal(choice: str) -> None:
        lo = int(choice.split()[0]) if choice[0].isdigit() else k + 1
        hi = int(choice.split()[-1]) if choice[-1].isdigit() else 99
        verdict = "Right." if lo <= per <= hi else "Not quite."
        st.markdown(f"{verdict} Measured above: {len(mtp.tokens) - 1} tokens after the first took {mtp.forwards} "
                    f"trunk forwards, **{per:.2f} tokens per forward**. The most is k+1 = {k + 1}, when every "
                    "draft is accepted; a rejection throws away the rest of that cycle's drafts.")

    common.predict_then_reveal("guess", f"With k = {k} drafts per cycle, how many tokens does MTP write per trunk "
                               "forward on average, on this prompt?", options, reveal)


def main() -> None:
    common.chapter(2, "Guess and check",
                   "Guess the next k tokens with something cheap, then let the full model check all k guesses in "
                   "ONE forward: it keeps the guesses it agrees with plus one token of its own, so each expensive "
                   "forward writes between 1 and k+1 tokens.")
    model = common.require_model()
    if model.config.num_mtp_modules == 0:
        st.warning("This checkpoint holds no MTP module, so it cannot draft here. Load one with MTP weights, or clear "
                   "the checkpoint path in the sidebar for the bundled model. (Gemma 4 drafts with a separate "
                   "assistant checkpoint instead: `python -m mtp_ref generate --model TARGET --drafter ASSISTANT "
                   "--draft K`.)")
        return
    ids = common.prompt_ids(model)
    cycle_section(model, ids)
    res = race_section(model, ids)
    question(res, min(3, model.config.num_mtp_modules))
    common.glossary(["pending token", "draft (d1 .. dk)", "verify", "accept / reject", "correction / bonus token",
                     "rollback", "KV cache", "MTP module"])
    common.next_chapter("views/draft_heads.py", "3 · Where the guesses come from")


main()
