"""The Streamlit lesson, driven headless with streamlit.testing.v1.AppTest.

The app opens $MTP_REF_MODEL: the bundled model when it is complete, else a tiny random deepseek_v3
checkpoint with 2 MTP modules (conftest's tiny_checkpoint). Chapter 5 reads $MTP_REF_PROMPTS when the
bundled evaluation prompts are absent. Every check below reads what the page computed (session state, chart
specs, the numbers in its text) and can fail.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from explainer import diagram, heads, roofline, scenario, stepper  # noqa: E402
from explainer.common import CHART_FONT, DEFAULT_PROMPT, fmt_bytes  # noqa: E402
from explainer.presets import HARDWARE, MODELS, PRECISIONS  # noqa: E402
from mtp_ref import generate, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "explainer" / "app.py")
BUNDLED = ROOT / "mtp_ref" / "checkpoints" / "mtp-tiny"
START = "views/start.py"
LESSON = ["views/why_slow.py", "views/guess_check.py", "views/draft_heads.py", "views/verification.py",
          "views/acceptance.py", "views/limits.py"]
LAB = ["views/inspect_page.py", "views/port_it.py"]
TITLES = {START: "Multi-token prediction", "views/why_slow.py": "1 · The wait",
          "views/guess_check.py": "2 · Guess and check", "views/draft_heads.py": "3 · Where the guesses come from",
          "views/verification.py": "4 · Keeping the output exact", "views/acceptance.py": "5 · How much faster",
          "views/limits.py": "6 · Where it stops paying", "views/inspect_page.py": "Lab · Inspect a checkpoint",
          "views/port_it.py": "Lab · Port it"}
TIMEOUT = 120


def bundled_ready() -> bool:
    return (BUNDLED / "config.json").exists() and any(BUNDLED.glob("*.safetensors"))


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> Path:
    return BUNDLED if bundled_ready() else tiny_checkpoint("deepseek_v3")


@pytest.fixture
def app(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_REF_MODEL", str(ckpt))
    if not (ROOT / "mtp_ref" / "eval" / "prompts.jsonl").exists():
        p = tmp_path / "prompts.jsonl"
        rows = [("stories", "s0", "Once upon a time, there was a little girl named Lily."),
                ("stories", "s1", "The dog ran to the park. He"),
                ("code", "c0", "def add(a, b):\n    return"), ("prose", "p0", "It was the best of times, it was")]
        p.write_text("".join(json.dumps({"category": c, "id": i, "text": t}) + "\n" for c, i, t in rows))
        monkeypatch.setenv("MTP_REF_PROMPTS", str(p))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def text_of(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error]
                     + [w.value for w in at.warning] + [i.value for i in at.info])


def charts(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def arr(x) -> np.ndarray:
    """A plotly array from a chart spec: a list, or plotly's typed-array form {"dtype", "bdata"}."""
    if isinstance(x, dict):
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
    return np.asarray(x)


# ---------------------------------------------------------------------- the guided path

def test_landing_page_says_what_the_lesson_teaches(app):
    assert TITLES[START] in titles(app)[0]
    body = text_of(app)
    items = re.findall(r"^\d\. \*\*", body, flags=re.M)
    assert len(items) == 5, body                       # five lines: what the lesson teaches
    assert app.button(key=f"next_{LESSON[0]}")


@pytest.mark.parametrize("page", [START] + LESSON + LAB)
def test_every_page_renders_with_a_takeaway_and_no_exception(app, page):
    goto(app, page)
    assert TITLES[page] in titles(app)[0]
    assert not app.error, [e.value for e in app.error]
    takeaway = [m.value for m in app.markdown if "class=\"mtp-takeaway\"" in m.value]
    assert len(takeaway) == 1 and len(re.sub("<[^>]+>", "", takeaway[0])) > 80
    body = text_of(app)
    for internal in ("shared/reference", "anchors A", "ModuleNotFoundError", "Traceback"):
        assert internal not in body, (page, internal)
    if page in LESSON:
        assert any(s.value == "Predict, then reveal" for s in app.subheader), page


def test_next_buttons_walk_the_whole_lesson_in_order(app):
    order = [START] + LESSON + LAB
    for here, there in zip(order, order[1:]):
        assert TITLES[here] in titles(app)[0], (here, titles(app))
        app.button(key=f"next_{there}").click().run()
        assert not app.exception, [e.value for e in app.exception]
    assert TITLES[order[-1]] in titles(app)[0]
    assert not any(b.key and b.key.startswith("next_") for b in app.button)   # the last page has no Next


def test_predict_then_reveal_needs_an_answer_first(app):
    goto(app, "views/why_slow.py")
    reveal = app.button(key="pr_wait_reveal")
    assert reveal.disabled                              # nothing to reveal before the student commits
    before = text_of(app)
    app.radio(key="pr_wait").set_value("About the same (under 1.5x)").run()
    assert not app.button(key="pr_wait_reveal").disabled
    app.button(key="pr_wait_reveal").click().run()
    after = text_of(app)
    h200 = next(d for d in scenario.load_gpu_results()[0] if "H200" in d["device"])
    ms4, ms1, ratio = scenario.verify_ratio(h200, 4, 512)
    assert f"{ms4:.2f} ms" in after and f"{ratio:.2f}x" in after and f"{ms4:.2f} ms** for 4" not in before
    assert after.count("Right.") == 1


def test_presenter_mode_from_the_address(ckpt, monkeypatch):
    monkeypatch.setenv("MTP_REF_MODEL", str(ckpt))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["presenter"] = "1"
    at.run()
    assert at.session_state["presenter"] is True
    assert any("font-size: 19px" in m.value for m in at.markdown)
    at.toggle(key="presenter").set_value(False).run()
    assert not any("font-size: 19px" in m.value for m in at.markdown)


# ---------------------------------------------------------------------- projector-ready charts

@pytest.mark.parametrize("page", LESSON)
def test_every_chart_has_a_title_and_projector_sized_text(app, page):
    goto(app, page)
    if page == "views/acceptance.py":
        run_small_grid(app)
    if page == "views/verification.py":
        app.button(key="p3_step").click().run()
    specs = charts(app)
    assert specs, page
    for spec in specs:
        lay = spec["layout"]
        title = lay.get("title", {}).get("text") or " ".join(a.get("text", "") for a in lay.get("annotations", []))
        assert title.strip(), (page, "a chart without a title")
        assert lay.get("font", {}).get("size", 0) >= CHART_FONT, (page, title)
        for ax in [v for k, v in lay.items() if k.startswith(("xaxis", "yaxis"))]:
            if ax.get("type") == "log":                 # decades only: minor labels read as values
                assert ax.get("dtick") == 1, (page, title)


# ---------------------------------------------------------------------- chapter 1: measurements with a spread

def test_chapter1_measures_with_a_spread_and_remeasures(app):
    goto(app, "views/why_slow.py")
    cpu = [s for s in charts(app) if "this computer" in s["layout"]["title"]["text"]]
    assert len(cpu) == 1
    trace = cpu[0]["data"][0]
    assert trace["error_y"]["visible"] and len(arr(trace["error_y"]["array"])) == len(arr(trace["x"]))
    gpu = [s for s in charts(app) if s["layout"]["title"]["text"].startswith("Measured on GPUs")]
    assert len(gpu) == 1 and all(" context " in t["name"] for t in gpu[0]["data"])   # GPU data on its own chart
    y0 = arr(trace["y"]).copy()
    app.button(key="p1_remeasure").click().run()
    trace2 = [s for s in charts(app) if "this computer" in s["layout"]["title"]["text"]][0]["data"][0]
    assert not np.array_equal(arr(trace2["y"]), y0)      # a new measurement, not the cached first one


def test_gpu_result_files_are_read_and_bad_ones_reported(tmp_path, monkeypatch):
    results, problems = scenario.load_gpu_results()
    devices = {d["device"] for d in results}
    assert any("H100" in d for d in devices) and any("H200" in d for d in devices), devices
    assert not problems
    for d in results:
        for s in d["verify_ms"]:
            assert len(s["n"]) == len(s["ms"]) and 1 in s["n"]
    (tmp_path / "good.json").write_text((ROOT / "benchmarks" / "results" / "h200.json").read_text())
    bad = json.loads((tmp_path / "good.json").read_text())
    bad["verify_ms"][0]["ms"] = bad["verify_ms"][0]["ms"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "other.json").write_text(json.dumps({"kind": "cpu eval"}))      # not a verify-cost file: ignored
    monkeypatch.setattr(scenario, "RESULTS", tmp_path)
    results, problems = scenario.load_gpu_results()        # keyed on the files' times: a new folder, a new read
    assert [d["file"].endswith("good.json") for d in results] == [True]
    assert len(problems) == 1 and "bad.json" in problems[0]


# ---------------------------------------------------------------------- chapter 2: the cycle and the race

def test_chapter2_steps_through_every_phase_of_a_real_cycle(app, ckpt):
    goto(app, "views/guess_check.py")
    k = min(3, load_model(ckpt).config.num_mtp_modules)
    seen = []
    for _ in range(k + 4):
        app.button(key="g_step").click().run()
        assert not app.exception
        s = app.session_state["g_cycle"]
        seen.append((s["cycles"], s["phase"]))
    assert seen[: k + 3] == [(1, p) for p in range(1, k + 4)] and seen[k + 3] == (2, 1), seen
    view = app.session_state["g_cycle"]["view"]
    svg = diagram.cycle_svg(view, k + 3, "chain", str)
    assert svg.count("<svg") == 1 and "http" not in svg.replace("http://www.w3.org", "")   # self-contained
    assert all(str(d.token) in svg for d in view.rec.drafts)         # drawn from the record's real drafts


def test_chapter2_race_counts_what_the_engine_did(app, ckpt):
    goto(app, "views/guess_check.py")
    model = load_model(ckpt)
    k = min(3, model.config.num_mtp_modules)
    ids = model.encode(DEFAULT_PROMPT)
    from explainer import race
    plain, mtp = race.run_lane(model, ids, 48, 0), race.run_lane(model, ids, 48, k)
    assert plain.tokens == mtp.tokens == generate(model, ids, 48, 0, stop_at_eos=False).token_ids[:48]
    assert plain.forwards == 47 and mtp.forwards < plain.forwards
    assert mtp.bytes_after[-1] < plain.bytes_after[-1]
    body = text_of(app)
    assert f"**{plain.forwards} trunk forwards**" in body and f"needs **{mtp.forwards}**" in body
    spec = [s for s in charts(app) if "race" in s["layout"]["title"]["text"]][0]
    assert len(spec["frames"]) == plain.forwards + 1                  # one frame per trunk forward, offline


# ---------------------------------------------------------------------- chapter 3: the recompute, in numbers

def test_chapter3_recompute_matches_the_engine_in_numbers(app, ckpt):
    goto(app, "views/draft_heads.py")
    model = load_model(ckpt)
    live = heads.live_values(model, model.encode(DEFAULT_PROMPT))
    diffs = [m["max_abs_diff"] for m in live["modules"]]
    assert len(diffs) == model.config.num_mtp_modules and max(diffs) <= 1e-4, diffs
    shown = [m.value for m in app.markdown if "mtp_forward" in m.value]
    assert shown and "matches" in shown[0] and "DOES NOT MATCH" not in shown[0]
    assert float(re.search(r"max \|difference\| = ([0-9.e+-]+)", shown[0]).group(1)) <= 1e-4
    app.segmented_control(key="p2_module").set_value(1).run()
    assert not app.exception


# ---------------------------------------------------------------------- chapter 4: the verdict

def autoplay_to_the_end(app, mode: str, k: int) -> None:
    app.radio(key="_w_v_mode").set_value(mode).run()
    app.slider(key="_w_v_k").set_value(k).run()
    app.button(key="p3_auto").click().run()
    for _ in range(80):                 # AppTest does not fire the fragment's timer: each run is one tick
        if not app.session_state["v_auto"]:
            break
        app.run()
        assert not app.exception, [e.value for e in app.exception]
    assert not app.session_state["v_auto"], "auto-play never finished"


@pytest.mark.parametrize("mode,k", [("chain", 3), ("recursive", 8)])
def test_autoplay_to_the_end_says_identical_and_the_counts_agree(app, ckpt, mode, k):
    goto(app, "views/verification.py")
    k = min(k, load_model(ckpt).config.num_mtp_modules) if mode == "chain" else k
    autoplay_to_the_end(app, mode, k)
    dec = app.session_state["v_dec"]
    n = len(dec.generated)
    assert n >= 64      # (on the bundled model both settings overshoot to 65: the case the verdict once got wrong)
    body = text_of(app)
    assert f"the first {n} tokens are **identical**" in body, body[-2000:]
    assert "DIFFERENT" not in body
    done = re.search(r"\*\*Done\*\*: stopped after (\d+) tokens", body)
    assert done and int(done.group(1)) == n
    assert {m.label: m.value for m in app.metric}["Tokens written"] == str(n)
    model = load_model(ckpt)
    assert dec.generated == generate(model, list(app.session_state["v_settings"]["ids"]), n, 0,
                                     stop_at_eos=False).token_ids


def test_sampling_step_shows_the_accept_test_and_reset(app):
    goto(app, "views/verification.py")
    app.slider(key="_w_v_temp").set_value(1.0).run()
    for _ in range(6):
        app.button(key="p3_step").click().run()
        assert not app.exception, app.exception
    views = app.session_state["v_views"]
    assert len(views) == 6
    v = views[-1]                      # the drawn cycle keeps its full p (k+1 rows) and q (k drafts)
    assert len(v.p) == len(v.rec.drafts) + 1 and len(v.q) == len(v.rec.drafts)
    assert abs(float(np.sum(v.p[0])) - 1.0) < 1e-9
    for j, d in enumerate(v.rec.drafts[: v.rec.accepted + 1]):
        assert abs(v.p[j][d.token] - v.rec.p_of_draft[j]) < 1e-12 and abs(v.q[j][d.token] - d.q) < 1e-12
    table = [h.proto.body for h in app.get("html") if "mtp-accept" in h.proto.body]
    assert len(table) == 1
    for col in ("draft", "p(d)", "q(d)", "min(1, p/q)", "u", "result"):
        assert f">{col}</th>" in table[0].replace("&#x27;", "'"), col
    assert "draft equal to the trunk's most likely token can still be rejected" in text_of(app)
    app.button(key="p3_reset").click().run()
    assert len(app.session_state["v_dec"].generated) == 1 and app.session_state["v_views"] == []


def test_a_sampled_rejection_draws_from_the_residual(app, ckpt):
    """Seeds are stepped until a rejection happens: the precondition is asserted, never assumed."""
    goto(app, "views/verification.py")
    app.slider(key="_w_v_temp").set_value(1.5).run()
    for _ in range(30):
        app.button(key="p3_step").click().run()
        if app.session_state["v_views"][-1].rec.accepted < len(app.session_state["v_views"][-1].rec.drafts):
            break
    v = app.session_state["v_views"][-1]
    assert v.rec.accepted < len(v.rec.drafts), "no rejection in 30 sampled cycles"
    assert any("max(p − q, 0)" in m.value for m in app.markdown)
    r = stepper.residual(v.p[v.rec.accepted], v.q[v.rec.accepted])
    assert r[v.rec.new_tokens[-1]] > 0                  # the correction came from where the residual has mass


def test_recursive_mode_drafts_beyond_the_module_count(app, ckpt):
    goto(app, "views/verification.py")
    app.radio(key="_w_v_mode").set_value("recursive").run()
    n_mod = load_model(ckpt).config.num_mtp_modules
    app.slider(key="_w_v_k").set_value(n_mod + 1).run()
    app.button(key="p3_step").click().run()
    assert not app.exception
    rec = app.session_state["v_views"][-1].rec
    assert len(rec.drafts) == n_mod + 1 and len(rec.cache_before["mtp"]) == 1
    assert "Why kept rows are cut too, in recursive mode" in text_of(app)


def test_state_survives_a_page_switch(app):
    goto(app, "views/verification.py")
    app.button(key="p3_step").click().run()
    n = len(app.session_state["v_dec"].generated)
    goto(app, "views/port_it.py")
    goto(app, "views/verification.py")
    assert len(app.session_state["v_dec"].generated) == n


# ---------------------------------------------------------------------- chapter 5: repeats and spread

def run_small_grid(app) -> None:
    app.select_slider(key="_w_e_max").set_value(8).run()
    app.multiselect(key="_w_e_ks").set_value([1]).run()
    app.multiselect(key="_w_e_temps").set_value([0.0]).run()
    app.button(key="e_run").click().run()
    assert not app.exception, app.exception


def test_chapter5_repeats_every_timing_and_remeasures(app):
    goto(app, "views/acceptance.py")
    run_small_grid(app)
    _, df = app.session_state["e_results"]
    assert sorted(df.k.unique()) == [0, 1] and (df.repeats >= 3).all()
    assert (df[df.k == 0].tokens_per_forward == 1.0).all() and (df[df.k == 0].speedup == 1.0).all()
    k1 = df[df.k == 1]
    assert ((k1.speedup_min <= k1.speedup) & (k1.speedup <= k1.speedup_max)).all()
    assert (k1.tokens_per_forward > 1.0).all()
    first = app.session_state["e_results"][1]
    app.button(key="e_run").click().run()
    second = app.session_state["e_results"][1]
    assert second is not first                                     # a new measurement, not a cached one
    assert list(second.tokens_per_forward) == list(first.tokens_per_forward)   # counts do not depend on timing
    speed = [s for s in charts(app) if "this CPU" in s["layout"]["title"]["text"]]
    gpu = [s for s in charts(app) if s["layout"]["title"]["text"].startswith("Modelled for the")]
    assert len(speed) == 1 and len(gpu) == 1                       # CPU measurement and GPU model kept apart


def test_chapter5_live_view_marks_kept_drafts_by_entropy(app, ckpt):
    goto(app, "views/acceptance.py")
    html = [h.proto.body for h in app.get("html") if "bits" in h.proto.body]
    assert len(html) == 1
    kept = html[0].count("border-bottom:4px solid")
    assert kept > 0 and kept < html[0].count("<span")
    assert re.search(r"\*\*kept\*\*, the trunk's entropy at that row was \*\*[0-9.]+ bits", text_of(app))


# ---------------------------------------------------------------------- chapter 6: realism

def test_chapter6_memory_needs_devices_and_sums_throughput(app):
    goto(app, "views/limits.py")
    app.selectbox(key="_w_p1_model").set_value("DeepSeek-V3").run()
    app.selectbox(key="_w_p1_hw").set_value("NVIDIA H200 SXM").run()
    app.selectbox(key="_w_p1_prec").set_value("fp8").run()
    app.select_slider(key="_w_p1_batch_size").set_value(64).run()
    assert not app.exception
    hw = next(h for h in HARDWARE if h.name == "NVIDIA H200 SXM")
    cm = roofline.from_config("DeepSeek-V3", MODELS["DeepSeek-V3"])
    ctx = app.session_state["p1_ctx"]
    mem = roofline.memory_needed(cm, PRECISIONS["fp8"].bytes_per_param, ctx, 64)
    need = roofline.devices_needed(mem["total"], hw)
    assert need >= 5                                              # 670 GB of fp8 weights do not fit in 141 GB
    assert f"it takes **{need} devices**" in text_of(app)
    m = {x.label: x.value for x in app.metric}
    per_seq = float(m["Tokens/s per sequence (ceiling)"].replace(",", ""))
    summed = float(m["Tokens/s summed over the batch of 64"].replace(",", ""))
    assert abs(summed - 64 * per_seq) <= 64 * 0.5 + 1            # both rounded to whole tokens/s


def test_issue19_presets_render_in_chapter1_and_say_what_they_lack(app):
    """The presets added for issue 19 (tests/test_roofline.py checks their counts) on the other page that picks a
    preset; MiniMax-M2's caption says it ships no MTP weights, the others' do not."""
    goto(app, "views/why_slow.py")
    for model in ("GLM-4.7-Flash", "GLM-5", "MiniMax-M2"):
        app.selectbox(key="_w_p1_model").set_value(model).run()
        assert not app.exception, (model, app.exception)
        assert app.selectbox(key="_w_p1_model").value == model
        assert ("no MTP weights" in text_of(app)) == (model == "MiniMax-M2"), model


def test_deepseek_v32_and_v4_flash_render_at_their_release_precisions(app):
    """DeepSeek-V3.2 (fp8) and DeepSeek-V4-Flash (fp8 + MXFP4 routed experts) on both pages that pick a preset:
    the bytes the text states are the cost model's at that precision (V4-Flash's printed at both rates), and the
    captions say what the model leaves out (DSA's indexer cache; V4's open compressor windows and hash routing)."""
    for page in ("views/why_slow.py", "views/limits.py"):
        goto(app, page)
        for model, prec in (("DeepSeek-V3.2", "fp8"), ("DeepSeek-V4-Flash", "fp8 + mxfp4 experts")):
            app.selectbox(key="_w_p1_model").set_value(model).run()
            app.selectbox(key="_w_p1_prec").set_value(prec).run()
            assert not app.exception, (page, model, app.exception)
            cm, bpp = roofline.from_config(model, MODELS[model]), PRECISIONS[prec].bytes_per_param
            ctx, text = app.session_state["p1_ctx"], text_of(app)
            assert f"**{model}** at {bpp:.3g} bytes per weight" in text, (page, model)
            assert ("0.531 for routed experts" in text) == (model == "DeepSeek-V4-Flash"), (page, model)
            if page == "views/limits.py":
                mem = roofline.memory_needed(cm, bpp, ctx, app.session_state["p1_batch_size"])
                assert f"needs **{fmt_bytes(mem['weights'])}** for its weights" in text, (page, model)
            else:
                assert f"reads **{fmt_bytes(cm.weight_bytes(1, bpp))}** of weights per token" in text
            assert ("indexer's own key cache" in text) == (model == "DeepSeek-V3.2"), (page, model)
            assert ("route by token id" in text) == ("windows not yet closed" in text) == (model != "DeepSeek-V3.2")


def test_chapter6_presets_all_render(app):
    goto(app, "views/limits.py")
    for model in MODELS:
        app.selectbox(key="_w_p1_model").set_value(model).run()
        assert not app.exception, (model, app.exception)
        assert "First: does it fit?" in [s.value for s in app.subheader]


def _results_with_moe(tmp_path, monkeypatch, moe: dict | None) -> None:
    """benchmarks/results/ as a folder holding the H200 file, with `moe` as its moe_verify section (or none)."""
    d = json.loads((ROOT / "benchmarks" / "results" / "h200.json").read_text())
    d.pop("moe_verify", None)
    if moe is not None:
        d["moe_verify"] = moe
    (tmp_path / "h200.json").write_text(json.dumps(d))
    monkeypatch.setattr(scenario, "RESULTS", tmp_path)


def test_chapter6_says_the_moe_curve_is_not_measured_without_a_section(app, tmp_path, monkeypatch):
    _results_with_moe(tmp_path, monkeypatch, None)
    goto(app, "views/limits.py")
    assert "has **not been measured**" in text_of(app)
    assert not [c for c in charts(app) if c["layout"]["title"]["text"].startswith("Measured")]


def test_chapter6_shows_the_measured_moe_curve_beside_the_model(app, tmp_path, monkeypatch):
    from benchmarks.bench_moe_verify import DEEPSEEK_V2_LITE
    # a FIXTURE, not a measurement: the display's plumbing only (the real section comes from bench_moe_verify)
    ns = [1, 2, 3, 4]
    ms = [3.0, 3.3, 3.9, 4.2]
    moe = {"model": "DeepSeek-V2-Lite shapes (27 layers, fixture)", "device": "NVIDIA H200 (132 SMs)",
           "date": "2000-01-01", "command": "fixture command", "config": DEEPSEEK_V2_LITE, "layers": 27,
           "moe_layers": 26, "n_experts": 64, "top_k": 6, "routing": "fixture routing", "source": "fixture",
           "series": [{"ctx": 512, "n": ns, "ms": ms, "spread_ms": [0.01, 0.02, 0.03, 0.04],
                       "distinct_mean": [6.0, 11.0, 15.5, 19.0], "distinct_p10": [6, 10, 14, 17],
                       "distinct_p90": [6, 12, 17, 21], "weight_bytes": [1, 2, 3, 4]}]}
    _results_with_moe(tmp_path, monkeypatch, moe)
    goto(app, "views/limits.py")
    app.slider(key="_w_p1_k").set_value(3).run()
    body = text_of(app)
    assert "not been measured" not in body
    cm = roofline.from_config("x", DEEPSEEK_V2_LITE)
    hw = next(h for h in HARDWARE if h.name == "NVIDIA H200 SXM")
    t = [cm.forward(n, 1, 512, 2.0, hw.bandwidth_gbs * 1e9, hw.tflops * 1e12)["seconds"] for n in ns]
    assert f"took {ms[3]:.2f} ms** (+- 0.04) against {ms[0]:.2f} ms (+- 0.01) for 1: **{ms[3] / ms[0]:.2f}x**" in body
    assert f"says **{t[3] / t[0]:.2f}x**" in body
    assert f"where uniform routing expects {64 * (1 - (1 - 6 / 64) ** 4):.1f}" in body
    assert "fixture command" in body and "2000-01-01" in body
    by_title = {c["layout"]["title"]["text"]: c for c in charts(app)}
    cost = next(c for k, c in by_title.items() if k.startswith("Measured on an NVIDIA H200"))
    np.testing.assert_allclose(arr(cost["data"][0]["y"]), np.array(ms) / ms[0])
    np.testing.assert_allclose(arr(cost["data"][1]["y"]), np.array(t) / t[0], rtol=1e-9)
    ex = next(c for k, c in by_title.items() if k.startswith("Measured: experts"))
    np.testing.assert_allclose(arr(ex["data"][0]["y"]), moe["series"][0]["distinct_mean"])
    np.testing.assert_allclose(arr(ex["data"][1]["y"]), [64 * (1 - (1 - 6 / 64) ** n) for n in ns], rtol=1e-9)


# ---------------------------------------------------------------------- lab

def test_inspect_page_gives_the_verdict(app, tmp_path):
    goto(app, "views/inspect_page.py")
    assert any("MTP heads present" in s.value for s in app.success), [s.value for s in app.success]
    app.text_input(key="_w_i_path").set_value(str(tmp_path / "nowhere")).run()
    assert not app.exception
    assert any(str(tmp_path / "nowhere") in e.value for e in app.error)


def test_port_page_offers_the_golden_trace(app):
    goto(app, "views/port_it.py")
    assert any("Golden trace" in h.value for h in app.subheader)
    assert len(app.latex) >= 5


# ---------------------------------------------------------------------- bad input

def make_bad(tmp_path: Path, kind: str) -> Path:
    bad = tmp_path / f"bad_{kind}"
    if kind != "missing":
        bad.mkdir()
    if kind == "bad_json":
        (bad / "config.json").write_text("{ not json")
    if kind == "bad_weights":
        (bad / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8, "hidden_size": 4,
                                                     "num_hidden_layers": 1, "num_attention_heads": 1}))
        (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return bad


@pytest.mark.parametrize("kind", ["missing", "no_config", "bad_json", "bad_weights"])
def test_bad_checkpoint_in_the_sidebar_gives_a_clear_message(app, tmp_path, kind):
    bad = make_bad(tmp_path, kind)
    goto(app, "views/why_slow.py")
    app.text_input(key="ckpt_path").set_value(str(bad)).run()
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert any(str(bad) in e for e in errors), errors
    assert "Traceback" not in " ".join(errors)
    assert app.selectbox(key="_w_p1_model").value  # the presets still work without a checkpoint
    app.text_input(key="ckpt_path").set_value("").run()
    assert not app.exception


@pytest.mark.parametrize("kind", ["missing", "bad_weights"])
def test_bad_checkpoint_gives_a_clear_message_on_every_page(app, tmp_path, kind):
    bad = make_bad(tmp_path, kind)
    app.text_input(key="ckpt_path").set_value(str(bad)).run()
    for page in [START] + LESSON + ["views/port_it.py"]:
        goto(app, page)
        errors = [e.value for e in app.error]
        if page != "views/limits.py":                # chapter 6 models released configs only
            assert any(str(bad) in e for e in errors), (page, errors)
        assert "Traceback" not in " ".join(errors)


def test_cuda_line_says_no_gpu_plainly(monkeypatch):
    """CI has no GPU (and may run the kernel tests under the simulator): the page says so in plain words."""
    from explainer import common
    from numba import cuda
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    common.cuda_line.clear()
    line = common.cuda_line()
    common.cuda_line.clear()
    assert line == "CUDA: no NVIDIA GPU found on this computer, so only the CPU is timed."


def test_every_page_survives_a_checkpoint_without_a_family_spec(tmp_path, monkeypatch):
    """A Gemma 4 target is loaded by its own module (no FamilySpec, no MTP modules, no tokenizer here): every page
    must say what it cannot show instead of failing."""
    pytest.importorskip("transformers")
    import builders_gemma4
    built = builders_gemma4.build("dense31", tmp_path)
    monkeypatch.setenv("MTP_REF_MODEL", str(built.target_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    for page in [START] + LESSON + LAB:
        goto(at, page)
        assert TITLES[page] in titles(at)[0]
    assert any("loaded by a module of its own" in m.value for m in at.markdown)   # the Port it page says why
