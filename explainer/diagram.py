"""One MTP cycle as an SVG diagram, drawn from the engine's StepRecord, one phase at a time.

Phases of a cycle with k drafts: 1..k = draft d_j (one MTP forward each), k+1 = verify (ONE trunk forward over
[pending, d_1..d_k]), k+2 = accept / reject, k+3 = rollback of the main and MTP caches. Everything is plain SVG
with CSS animations: no script, no external URL, so it runs offline and in any browser.
"""

from __future__ import annotations

import html
from typing import Callable

from explainer import stepper

W, H = 960, 520
FONT = 20                       # viewBox units: >= 16 px on screen down to a 770 px wide drawing
INK, MUTED = "#1f2328", "#3d4650"
FILL = {"old": "#d0d7de", "kept": "#8fd19e", "cut": "#ffb3b3", "empty": "#ffffff", "draft": "#d8c8ff",
        "pending": "#ffe08a", "ok": "#8fd19e", "bad": "#ffb3b3", "skip": "#eef1f4", "bonus": "#a5d8ff"}
STYLE = f"""<style>
.mtp-svg text {{ font-family: Helvetica, Arial, sans-serif; font-size: {FONT}px; fill: {INK}; }}
.mtp-svg .mono {{ font-family: Menlo, Consolas, monospace; }}
.mtp-svg .dim {{ opacity: 0.28; }}
.mtp-svg .active rect.frame {{ stroke: #0b5cad; stroke-width: 4; animation: mtp-pulse 1.2s ease-in-out infinite; }}
.mtp-svg .flow {{ stroke-dasharray: 8 6; animation: mtp-flow 0.8s linear infinite; }}
@keyframes mtp-pulse {{ 0%, 100% {{ stroke-opacity: 1; }} 50% {{ stroke-opacity: 0.35; }} }}
@keyframes mtp-flow {{ to {{ stroke-dashoffset: -28; }} }}
</style>"""


def phases(k: int) -> list[str]:
    return [f"draft d{j + 1}" for j in range(k)] + ["verify", "accept", "rollback"]


def _t(x, y, s, anchor="middle", cls="", weight="normal", size=None) -> str:
    fs = f' style="font-size:{size}px"' if size else ""
    return (f'<text x="{x:.0f}" y="{y:.0f}" text-anchor="{anchor}" font-weight="{weight}" class="{cls}"{fs}>'
            f"{html.escape(s)}</text>")


def _chip(x, y, w, h, label, fill, stroke=MUTED) -> str:
    return (f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="6" fill="{fill}" stroke="{stroke}"/>'
            + _t(x + w / 2, y + h / 2 + FONT * 0.35, label, cls="mono"))


def _arrow(x1, y1, x2, y2, live: bool) -> str:
    return (f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{MUTED}" stroke-width="2.5" '
            f'marker-end="url(#mtp-arrow)" class="{"flow" if live else ""}"/>')


def _group(body: str, phase_of_group: tuple[int, int], phase: int, x, y, w, h, title: str) -> str:
    """A titled frame; dim while its phase has not come, pulsing while it is the current phase."""
    lo, hi = phase_of_group
    cls = "dim" if phase < lo else ("active" if lo <= phase <= hi else "")
    return (f'<g class="{cls}"><rect class="frame" x="{x}" y="{y}" width="{w}" height="{h}" rx="10" fill="none" '
            f'stroke="#8c959f" stroke-width="1.5"/>' + _t(x + 12, y + FONT + 4, title, anchor="start", weight="bold")
            + body + "</g>")


def cycle_svg(view: stepper.StepView, phase: int, mode: str, tok: Callable[[int], str]) -> str:
    """The cycle of `view` drawn up to `phase` (1-based, see phases())."""
    rec = view.rec
    k, a = len(rec.drafts), rec.accepted
    P_VERIFY, P_ACCEPT, P_ROLL = k + 1, k + 2, k + 3
    cols = k + 1
    left, cw = 170, min(120, (W - 190) / cols)
    chip_w, chip_h = cw - 12, 34

    def cx(c):               # left edge of column c (c = 0: the pending token, c = j: draft d_j)
        return left + c * cw + 6

    fit = max(3, int(chip_w / (FONT * 0.62)))        # monospace characters that fit in a chip

    def short(t):
        s = tok(t)
        return s if len(s) <= fit else s[: fit - 1] + "…"

    out = []
    # --- draft: one MTP forward per depth
    body = [_t(24, 88, "MTP", anchor="start", weight="bold"), _t(24, 112, "modules", anchor="start")]
    body.append(_chip(cx(0), 60, chip_w, chip_h, short(rec.pending), FILL["pending"]))
    for j, d in enumerate(rec.drafts):
        shown = phase >= j + 1
        module = j if mode == "chain" else 0
        body.append(_t(cx(j + 1) + chip_w / 2, 118, f"module {module}", size=FONT - 2))
        body.append(_arrow(cx(j) + chip_w, 77, cx(j + 1) - 2, 77, live=phase == j + 1))
        body.append(_chip(cx(j + 1), 60, chip_w, chip_h, short(d.token) if shown else "?",
                          FILL["draft"] if shown else FILL["empty"]))
    out.append(_group("".join(body), (1, k), phase, 12, 28, W - 24, 104,
                      f"1. Draft: {k} small forwards guess d1 .. d{k}"))
    # --- verify: ONE trunk forward over pending + drafts
    body = [_t(24, 228, "trunk", anchor="start", weight="bold"), _t(24, 252, "(all layers)", anchor="start")]
    for c in range(cols):
        label = short(rec.pending) if c == 0 else short(rec.drafts[c - 1].token)
        body.append(_chip(cx(c), 170, chip_w, chip_h, label, FILL["pending"] if c == 0 else FILL["draft"]))
        body.append(_arrow(cx(c) + chip_w / 2, 206, cx(c) + chip_w / 2, 222, live=phase == P_VERIFY))
        if phase >= P_VERIFY:
            body.append(_chip(cx(c), 224, chip_w, chip_h, short(rec.target_argmax[c]), "#ffffff", stroke=INK))
    body.append(_t(left - 10, 193, "in", anchor="end", size=FONT - 2))
    body.append(_t(left - 10, 247, "out", anchor="end", size=FONT - 2))
    out.append(_group("".join(body), (P_VERIFY, P_VERIFY), phase, 12, 136, W - 24, 128,
                      f"2. Verify: ONE forward over {k + 1} tokens; row j = the trunk's choice after it"))
    # --- accept: compare each draft with the trunk's choice at the row before it
    body = []
    if phase >= P_ACCEPT:
        for j in range(k):
            x = cx(j + 1)
            if j < a:
                body.append(_chip(x, 304, chip_w, chip_h, "✓ keep", FILL["ok"]))
            elif j == a:
                body.append(_chip(x, 304, chip_w, chip_h, "✗ reject", FILL["bad"]))
            else:
                body.append(_chip(x, 304, chip_w, chip_h, "skipped", FILL["skip"]))
        last = rec.new_tokens[-1]
        kind = "bonus" if a == k else "correction"
        body.append(_t(24, 328, f"+{a + 1} tokens", anchor="start", weight="bold"))
        body.append(_t(W - 30, 358, f"kept {a} draft(s) + 1 {kind} token '{tok(last)[:10]}'", anchor="end",
                       size=FONT - 1))
    out.append(_group("".join(body), (P_ACCEPT, P_ACCEPT), phase, 12, 266, W - 24, 100,
                      "3. Accept: keep drafts while they match, then take the trunk's own token"))
    # --- rollback: main and MTP caches, rows kept / cut
    body = []
    rows = stepper.cache_rows(view, mode)
    lo = max(0, view.start["main"] - 2)
    hi = max(r["before"] for r in rows)
    n = max(hi - lo, 1)
    cell = min(44, (W - 220) / n)
    for i, r in enumerate(rows[:4]):
        y = 402 + i * 27 if len(rows) > 1 else 412
        body.append(_t(200, y + 17, r["cache"], anchor="end", size=FONT - 3))
        for c in range(lo, hi):
            x = 210 + (c - lo) * cell
            if c >= r["before"]:
                fill = FILL["empty"]
            elif c < r["first_new"]:
                fill = FILL["old"]
            elif phase >= P_ROLL and c >= r["after"]:
                fill = FILL["cut"]
            else:
                fill = FILL["kept"] if phase >= P_ROLL else FILL["draft"]
            body.append(f'<rect x="{x:.0f}" y="{y}" width="{cell - 3:.0f}" height="23" fill="{fill}" '
                        f'stroke="#8c959f"/>')
    if phase >= P_ROLL:
        cut = rec.cache_before["main"] - rec.cache_after["main"]
        body.append(_t(W - 30, 392, f"main cache {rec.cache_before['main']} → {rec.cache_after['main']} rows "
                                    f"({cut} cut)", anchor="end", size=FONT - 1))
    out.append(_group("".join(body), (P_ROLL, P_ROLL), phase, 12, 368, W - 24, 146 if len(rows) > 1 else 84,
                      "4. Rollback: cut cache rows of rejected drafts"))
    defs = ('<defs><marker id="mtp-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{MUTED}"/></marker></defs>')
    return (f'<div style="max-width:1000px">{STYLE}<svg class="mtp-svg" viewBox="0 0 {W} {H}" width="100%" '
            f'role="img" aria-label="one MTP cycle, phase {phase}">{defs}{"".join(out)}</svg></div>')


def phase_sentence(view: stepper.StepView, phase: int, mode: str, tok: Callable[[int], str]) -> str:
    """What the current phase does, in one or two plain sentences, with this cycle's real tokens."""
    rec = view.rec
    k, a = len(rec.drafts), rec.accepted
    if phase <= k:
        j = phase - 1
        d = rec.drafts[j]
        src = ("the trunk's last hidden state and the pending token" if j == 0 else
               f"the hidden state module {j - 1 if mode == 'chain' else 0} just produced and the token d{j}")
        return (f"**Draft d{j + 1}**: {'module ' + str(j) if mode == 'chain' else 'module 0 (recursive)'} reads {src}, "
                f"and guesses **'{tok(d.token)}'** (its probability {d.top[0][1]:.2f} at T = 1). One small forward.")
    if phase == k + 1:
        return (f"**Verify**: the trunk runs ONCE over the pending token '{tok(rec.pending)}' and the {k} drafts. "
                f"Row j is what the trunk itself would write after the first j+1 of them; reading the weights "
                f"once serves all {k + 1} rows.")
    if phase == k + 2:
        if a == k:
            return (f"**Accept**: all {k} drafts equal the trunk's choices, so all are kept, and the last row adds "
                    f"a **bonus** token '{tok(rec.new_tokens[-1])}': {k + 1} tokens for one trunk forward.")
        return (f"**Accept**: drafts 1..{a} match; draft {a + 1} '{tok(rec.drafts[a].token)}' does not, so it and "
                f"everything after it are thrown away, and the trunk's own token '{tok(rec.new_tokens[-1])}' at that "
                f"row is kept instead (the **correction**): {a + 1} token(s) for one trunk forward.")
    kept = rec.cache_after["main"]
    return (f"**Rollback**: the verify forward wrote {k + 1} rows into the main cache; the rows of rejected drafts "
            f"are cut (the cache length goes back to {kept}). Each MTP module keeps its own small cache; those trail "
            "the main cache because module j's row i needs token i+j+1, which is only known later. "
            "Nothing is copied: rows past the length are simply overwritten next cycle.")


# ---------------------------------------------------------------------- one MTP module's data flow

def module_svg(boxes: dict[str, tuple[str, str]], token: str, prev: str, hidden_first: bool, j: int) -> str:
    """Module j's data flow in three rows that read left to right, each stage labelled with its tensor's short
    name (the module prefix and '.weight' dropped; the full names are in the page's tensor table) and shape.

    boxes: {"emb", "en", "hn", "proj", "blk", "norm", "head"} -> (label, shape or detail).
    """
    Wd, Hd, bw, bh = 900, 318, 160, 64

    def box(x, y, key, fill="#ffffff", w=bw):
        a, b = boxes[key]
        fit = int(w / (FONT * 0.52))
        a = a if len(a) <= fit else a[: fit - 1] + "…"
        b = b if len(b) <= fit else b[: fit - 1] + "…"
        return (f'<rect x="{x}" y="{y}" width="{w}" height="{bh}" rx="8" fill="{fill}" stroke="{MUTED}" '
                f'stroke-width="1.5"/>' + _t(x + w / 2, y + 27, a) + _t(x + w / 2, y + 53, b, cls="mono"))

    def pill(x, y, text, fill, w=bw):
        return (f'<rect x="{x}" y="{y}" width="{w}" height="{bh - 16}" rx="24" fill="{fill}" stroke="{MUTED}"/>'
                + _t(x + w / 2, y + 31, text))

    order = "[h, e]" if hidden_first else "[e, h]"
    out = [pill(6, 14, token, FILL["pending"]), box(196, 6, "emb"), box(386, 6, "en"),
           pill(6, 104, prev, "#eef1f4"), box(386, 96, "hn"),
           f'<rect x="576" y="51" width="110" height="{bh}" rx="8" fill="#fff3bf" stroke="{MUTED}"/>'
           + _t(631, 78, "concat") + _t(631, 104, order, cls="mono"),
           box(716, 51, "proj"),
           box(6, 216, "blk", "#d8c8ff", w=230), box(266, 216, "norm", w=180), box(476, 216, "head", w=180),
           pill(686, 196, "q → draft", FILL["draft"], w=200), pill(686, 262, f"g → module {j + 1}", "#eef1f4",
                                                                       w=200)]
    arrows = [(166, 38, 196, 38), (356, 38, 386, 38), (166, 128, 386, 128), (546, 38, 576, 66),
              (546, 128, 576, 100), (686, 83, 716, 83), (796, 115, 121, 216), (236, 248, 266, 248),
              (446, 248, 476, 248), (656, 240, 686, 222), (356, 280, 686, 286)]
    out += [_arrow(*a, live=False) for a in arrows]
    defs = ('<defs><marker id="mtp-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{MUTED}"/></marker></defs>')
    return (f'<div style="max-width:1000px">{STYLE}<svg class="mtp-svg" viewBox="0 0 {Wd} {Hd}" width="100%" '
            f'role="img" aria-label="data flow of MTP module {j}">{defs}{"".join(out)}</svg></div>')
