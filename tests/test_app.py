"""The Streamlit explainer, driven headless with streamlit.testing.v1.AppTest.

The app opens $MTP_REF_MODEL: the bundled model when it is complete, else a tiny random deepseek_v3
checkpoint with 2 MTP modules (conftest's tiny_checkpoint). Page 4 reads $MTP_REF_PROMPTS when the
bundled evaluation prompts are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from explainer.common import DEFAULT_PROMPT  # noqa: E402
from mtp_ref import generate, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "explainer" / "app.py")
BUNDLED = ROOT / "mtp_ref" / "checkpoints" / "mtp-tiny"
PAGES = {"views/why_slow.py": "Why decoding is slow", "views/draft_heads.py": "Draft heads",
         "views/verification.py": "Step-by-step verification", "views/acceptance.py": "Acceptance and speedup",
         "views/port_it.py": "Port it"}
TIMEOUT = 60


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


# ---------------------------------------------------------------------- every page

def test_every_page_renders_without_exception(app):
    assert titles(app) == [PAGES["views/why_slow.py"]]
    for page, title in PAGES.items():
        goto(app, page)
        assert title in titles(app)
        assert not app.error, [e.value for e in app.error]


def test_page1_presets_and_custom_hardware(app):
    for model in ("DeepSeek-V3", "GLM-4.5-Air", "Qwen3.6-27B", "Gemma 4 31B", "Loaded checkpoint"):
        app.selectbox(key="_w_p1_model").set_value(model).run()
        assert not app.exception, (model, app.exception)
    app.selectbox(key="_w_p1_hw").set_value("Custom").run()
    app.number_input(key="_w_p1_bw").set_value(100.0).run()
    assert not app.exception
    goto(app, "views/port_it.py")
    goto(app, "views/why_slow.py")
    assert app.selectbox(key="_w_p1_hw").value == "Custom"        # settings survive a page switch
    labels = {m.label: m.value for m in app.metric}
    assert "Tokens/s ceiling" in labels
    assert any("Measured on this machine" in h.value for h in app.subheader)


# ---------------------------------------------------------------------- page 3: stepping

def test_step_grows_output_and_greedy_equals_plain_decoding(app, ckpt):
    goto(app, "views/verification.py")
    model = load_model(ckpt)
    ids = list(app.session_state["v_settings"]["ids"])
    assert ids == model.encode(DEFAULT_PROMPT)
    assert app.session_state["v_dec"].generated and len(app.session_state["v_dec"].generated) == 1
    plain = generate(model, ids, 64, draft_depth=0, temperature=0.0, stop_at_eos=False).token_ids
    lengths = [1]
    for _ in range(4):
        app.button(key="p3_step").click().run()
        assert not app.exception, app.exception
        gen = app.session_state["v_dec"].generated
        lengths.append(len(gen))
        assert gen == plain[: len(gen)]
    assert all(b > a for a, b in zip(lengths, lengths[1:])), lengths
    assert len(app.session_state["v_views"]) == 4
    assert any("identical" in m.value for m in app.markdown)
    assert any("Rollback" in m.value for m in app.markdown)


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
    assert all(q is not None for q in v.q)
    assert abs(float(np.sum(v.p[0])) - 1.0) < 1e-9
    for j, d in enumerate(v.rec.drafts[: v.rec.accepted + 1]):
        assert abs(v.p[j][d.token] - v.rec.p_of_draft[j]) < 1e-12 and abs(v.q[j][d.token] - d.q) < 1e-12
    if any(v.rec.accepted < len(v.rec.drafts) for v in views[-1:]):
        assert any("residual" in m.value for m in app.markdown)
    app.button(key="p3_reset").click().run()
    assert len(app.session_state["v_dec"].generated) == 1 and app.session_state["v_views"] == []


def test_recursive_mode_drafts_beyond_the_module_count(app, ckpt):
    goto(app, "views/verification.py")
    app.radio(key="_w_v_mode").set_value("recursive").run()
    n_mod = load_model(ckpt).config.num_mtp_modules
    app.slider(key="_w_v_k").set_value(n_mod + 1).run()
    app.button(key="p3_step").click().run()
    assert not app.exception
    rec = app.session_state["v_views"][-1].rec
    assert len(rec.drafts) == n_mod + 1 and len(rec.cache_before["mtp"]) == 1


def test_state_survives_a_page_switch(app):
    goto(app, "views/verification.py")
    app.button(key="p3_step").click().run()
    n = len(app.session_state["v_dec"].generated)
    goto(app, "views/port_it.py")
    goto(app, "views/verification.py")
    assert len(app.session_state["v_dec"].generated) == n


# ---------------------------------------------------------------------- pages 2, 4, 5

def test_draft_heads_recompute_matches_engine(app):
    goto(app, "views/draft_heads.py")
    assert any("matches the engine's mtp_forward" in c.value for c in app.caption)
    app.segmented_control(key="p2_module").set_value(1).run()
    assert not app.exception


def test_acceptance_page_runs_a_small_grid(app):
    goto(app, "views/acceptance.py")
    app.select_slider(key="_w_e_max").set_value(8).run()
    app.multiselect(key="_w_e_ks").set_value([1]).run()
    app.multiselect(key="_w_e_temps").set_value([0.0]).run()
    app.button(key="e_run").click().run()
    assert not app.exception, app.exception
    settings, df = app.session_state["e_results"]
    assert sorted(df.k.unique()) == [0, 1]
    assert (df[df.k == 0].tokens_per_forward == 1.0).all()
    assert any("Acceptance per depth" in m.value for m in app.markdown)


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
    for page in PAGES:
        goto(app, page)
        errors = [e.value for e in app.error]
        assert any(str(bad) in e for e in errors), (page, errors)
        assert "Traceback" not in " ".join(errors)
