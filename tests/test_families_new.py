"""Issue 19 families (MiMo-V2-Flash) against transformers 5.23, on tiny random checkpoints in the released layout.

Tolerance: main logits and every MTP depth to max|a-b|/max|b| <= 1e-4 (float32 oracle on the stored bf16
values). The oracle and its transformers 5.23 work-arounds are described in builders_new.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import builders_new
from test_speculative import ForcedDrafts, _fresh_module_rows, plain

from mtp_ref import SpeculativeDecoder, generate, load_model
from mtp_ref.cache import LayerCache
from mtp_ref.cli import main
from mtp_ref.drafter_paired import TrunkPairedDrafter
from mtp_ref.ops_sinks import attention_sinks, attention_sinks_naive
from mtp_ref.trace import build_trace

TOL = 1e-4
T = 12


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def mimo_v2(tmp_path_factory):
    oracle = builders_new.build_mimo_v2_flash(tmp_path_factory.mktemp("mimo_v2_flash"))
    ids = np.random.default_rng(1234).integers(0, oracle.vocab_size, T).tolist()
    return oracle, load_model(oracle.path), ids


def test_mimo_v2_checkpoint_loads_in_transformers(mimo_v2):
    """The written files load with from_pretrained (release names: attention_sink_bias, per-expert tensors)
    and give the oracle's logits; the MTP tensors are the ones transformers ignores (^model.mtp.)."""
    from transformers import MiMoV2FlashForCausalLM

    oracle, _, ids = mimo_v2
    cfg = builders_new.mimo_v2_hf_config(json.loads((oracle.path / "config.json").read_text()))
    hf = MiMoV2FlashForCausalLM.from_pretrained(oracle.path, config=cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(input_ids=torch.tensor(ids)[None]).logits[0].numpy()
    assert max_rel(got, oracle.forward(ids)[0]) < 1e-6
    assert any(n.endswith("self_attn.attention_sink_bias") for n in oracle.tensor_names)
    assert any(n.startswith("model.mtp.layers.2.") for n in oracle.tensor_names)


def test_mimo_v2_matches_transformers(mimo_v2, record_error):
    oracle, model, ids = mimo_v2
    assert model.config.num_mtp_modules == 3 and model.config.num_nextn_predict_layers == 0
    tr = build_trace(model, ids)
    err = max_rel(tr["logits"], oracle.forward(ids)[0])
    record_error("mimo_v2_flash logits", err)
    assert err <= TOL
    want = oracle.mtp_logits(ids)
    assert len(want) == 3
    for d, w in enumerate(want):
        err = max_rel(tr[f"mtp.{d}.logits"], w)
        record_error(f"mimo_v2_flash mtp.{d}.logits", err)
        assert err <= TOL, (d, err)


def test_mimo_v2_fp8_release(tmp_path, record_error):
    """The FP8 release form (e4m3 + 128x128 `_scale_inv`, as MiMo-V2-Flash ships): the oracle computes on the
    dequantised values the files hold."""
    oracle = builders_new.build_mimo_v2_flash(tmp_path, seed=1, dtype="fp8")
    assert any(n.endswith("self_attn.q_proj.weight_scale_inv") for n in oracle.tensor_names)
    model = load_model(oracle.path)
    ids = np.random.default_rng(7).integers(0, oracle.vocab_size, T).tolist()
    tr = build_trace(model, ids)
    errs = [max_rel(tr["logits"], oracle.forward(ids)[0])]
    errs += [max_rel(tr[f"mtp.{d}.logits"], w) for d, w in enumerate(oracle.mtp_logits(ids))]
    record_error("mimo_v2_flash fp8 logits / worst mtp depth", max(errs))
    assert len(errs) == 4 and max(errs) <= TOL, errs


def test_mimo_v2_conventions_are_tested(mimo_v2):
    """The choices this family fixes move the numbers: window sliding_window_size + 1 keys (vLLM: no +1),
    the sinks, and which output feeds the next depth (post-norm here; pre-norm as vLLM/SGLang chain)."""
    oracle, model, ids = mimo_v2
    logits = oracle.forward(ids)[0]
    try:
        model.swa_extra_keys = 0
        assert max_rel(build_trace(model, ids)["logits"], logits) > 1e-2
    finally:
        model.swa_extra_keys = 1
    for lt in ("full_attention", "sliding_attention"):
        model.geometry(lt)
    saved = dict(model._geometry)
    try:  # the sinks are read and matter: dropping them moves the logits
        model._geometry = {k: dataclasses.replace(g, sinks=False) for k, g in saved.items()}
        assert max_rel(build_trace(model, ids)["logits"], logits) > 1e-2
    finally:
        model._geometry = saved
    pre = oracle.mtp_logits(ids, chain="pre_norm")
    post = oracle.mtp_logits(ids)
    assert max_rel(pre[1], post[1]) > 1e-2
    try:
        model.mtp_chain = "pre_norm"
        tr = build_trace(model, ids)
    finally:
        model.mtp_chain = "post_norm"
    for d in range(3):
        assert max_rel(tr[f"mtp.{d}.logits"], pre[d]) <= TOL


def test_sinks_fast_equals_naive():
    rng = np.random.default_rng(0)
    n, T, h, g, d, dv = 3, 9, 4, 2, 8, 5
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((n, h, d), (T, g, d), (T, g, dv)))
    sinks = rng.standard_normal(h).astype(np.float32) * 2
    for window in (None, 1, 4, 20):
        for s in (None, sinks):
            a = attention_sinks(q, k, v, 0.3, T - n, window, s)
            b = attention_sinks_naive(q, k, v, 0.3, T - n, window, s)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a sink takes probability mass: outputs shrink toward 0 as the sink logit grows
    big = attention_sinks_naive(q, k, v, 0.3, T - n, None, np.full(h, 30.0, np.float32))
    assert np.abs(big).max() < 1e-6


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    oracle = builders_new.build_step3p7(tmp_path_factory.mktemp("step3p7"))
    ids = np.random.default_rng(1234).integers(0, oracle.vocab_size, T).tolist()
    return oracle, load_model(oracle.path), ids


def test_step_checkpoint_loads_in_transformers(step):
    """The Step-3.7 layout (text_config / vision_config, moe.* 3-D experts, router_bias, share_expert,
    transformer.shared_head.*) loads with from_pretrained; only the vision tower we do not write is missing."""
    from transformers import Step3p7ForConditionalGeneration

    oracle, _, ids = step
    hf, info = Step3p7ForConditionalGeneration.from_pretrained(oracle.path, dtype=torch.float32,
                                                               attn_implementation="eager", output_loading_info=True)
    assert info["missing_keys"] and all(k.startswith(("model.vision_model.", "model.multi_modal_projector."))
                                        for k in info["missing_keys"]), info["missing_keys"]
    with torch.no_grad():
        got = hf(input_ids=torch.tensor(ids)[None]).logits[0].numpy()
    assert max_rel(got, oracle.forward(ids)[0]) < 1e-6
    assert "model.layers.6.transformer.shared_head.output.weight" in oracle.tensor_names


def test_step_matches_transformers(step, record_error):
    oracle, model, ids = step
    assert model.config.num_mtp_modules == 3 == model.config.num_nextn_predict_layers
    tr = build_trace(model, ids)
    err = max_rel(tr["logits"], oracle.forward(ids)[0])
    record_error("step3p7 logits", err)
    assert err <= TOL
    for d, w in enumerate(oracle.mtp_logits(ids)):
        err = max_rel(tr[f"mtp.{d}.logits"], w)
        record_error(f"step3p7 mtp.{d}.logits", err)
        assert err <= TOL, (d, err)


def test_step_conventions_are_tested(step):
    """Each depth's own shared_head.output (transformers 5.23 drafts with lm_head: different numbers), the
    swiglu clamps and the llama3 scaling of the full-attention RoPE all move the logits; the pre-norm
    chaining option matches an oracle chained that way."""
    oracle, model, ids = step
    own, lm = oracle.mtp_logits(ids), oracle.mtp_logits(ids, head="lm_head")
    assert all(max_rel(a, b) > 1e-1 for a, b in zip(own, lm))
    logits = oracle.forward(ids)[0]
    raw = model.config.raw
    for key in ("swiglu_limits", "swiglu_limits_shared"):
        saved = raw[key]
        try:
            raw[key] = [0] * len(saved)
            assert max_rel(build_trace(model, ids)["logits"], logits) > 1e-3, key
        finally:
            raw[key] = saved
    kind = model.config.rope.kind
    try:
        model.config.rope.kind = "default"
        assert max_rel(build_trace(model, ids)["logits"], logits) > 1e-3
    finally:
        model.config.rope.kind = kind
    pre = oracle.mtp_logits(ids, chain="pre_norm")
    try:
        model.mtp_chain = "pre_norm"
        tr = build_trace(model, ids)
    finally:
        model.mtp_chain = "post_norm"
    assert max_rel(pre[2], own[2]) > 1e-2
    for d in range(3):
        assert max_rel(tr[f"mtp.{d}.logits"], pre[d]) <= TOL


@pytest.fixture(scope="module", params=["mimo_v2_flash", "step3p7"])
def fam(request, mimo_v2, step):
    return {"mimo_v2_flash": mimo_v2, "step3p7": step}[request.param]


@pytest.mark.parametrize("mode,k", [("chain", 3), ("recursive", 2)])
def test_greedy_lossless(fam, mode, k):
    _, model, _ = fam
    prompt = [5, 9, 2, 7, 7, 1]
    base = plain(model, prompt, 16)
    assert generate(model, prompt, 16, draft_depth=k, mode=mode).token_ids == base
    forced = ForcedDrafts(model, prompt + base, 0.6, salt=3)
    assert generate(forced, prompt, 16, draft_depth=k, mode=mode).token_ids == base


def test_rollback(fam):
    """After every round (some rejected), main and MTP caches equal a run that never drafted."""
    _, model, _ = fam
    prompt, k = [1, 2, 3, 4, 5, 6, 7, 8], 3
    base = plain(model, prompt, 24)
    dec = SpeculativeDecoder(ForcedDrafts(model, prompt + base, 0.6, salt=7), k, "chain")
    dec.prefill(prompt)
    rejected = 0
    while len(dec.generated) < 18:
        rejected += dec.step().accepted < k
        seq = dec.tokens + [dec.pending]
        fresh = model.new_cache()
        h, _ = model.forward(np.asarray(dec.tokens), fresh)
        for got, want in zip(dec.cache.snapshot(), fresh.snapshot()):
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
        rows = [c.length for c in dec.mtp_caches]
        ref = _fresh_module_rows(model, seq, h, len(rows) - 1, rows)
        for got, want in zip(dec.mtp_caches, ref):
            for name in want.names():
                np.testing.assert_allclose(got.view(name), want.view(name), rtol=1e-4, atol=1e-5)
    assert dec.generated[:18] == base[:18] and rejected > 0


def test_mimo_v2_inspect(mimo_v2, capsys):
    oracle, _, _ = mimo_v2
    assert main(["inspect", str(oracle.path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["family"] == "mimo_v2_flash" and s["attention"] == "gqa_hybrid"
    assert (s["mtp_declared"], s["mtp_present"]) == (0, 3) and not s["warnings"]
    assert [m["prefix"] for m in s["mtp_modules"]] == [f"model.mtp.layers.{j}." for j in range(3)]
    assert s["unused_tensors"] == [] and s["moe_layers"] == 3


def test_cli_mtp_chain_option(step, tmp_path, capsys):
    """--mtp-chain pre_norm reaches the trace: depth 1 logits change, depth 0 does not."""
    from safetensors.numpy import load_file

    oracle, _, ids = step
    outs = {}
    for chain in ("post_norm", "pre_norm"):
        out = tmp_path / f"{chain}.safetensors"
        assert main(["trace", "--model", str(oracle.path), "--prompt-ids", ",".join(map(str, ids)), "--out", str(out),
                     "--mtp-chain", chain]) == 0
        outs[chain] = load_file(str(out))
    capsys.readouterr()
    np.testing.assert_array_equal(outs["post_norm"]["mtp.0.logits"], outs["pre_norm"]["mtp.0.logits"])
    assert max_rel(outs["pre_norm"]["mtp.1.logits"], outs["post_norm"]["mtp.1.logits"]) > 1e-2
    assert max_rel(outs["pre_norm"]["mtp.1.logits"], oracle.mtp_logits(ids, chain="pre_norm")[1]) <= TOL


def test_step_bad_configs_give_one_error_line(step, tmp_path, capsys):
    """Per-layer lists that differ within a layer type, and a module without its own head: one `error:` line."""
    oracle, _, _ = step
    for f in oracle.path.iterdir():
        if f.name != "config.json":
            (tmp_path / f.name).symlink_to(f)
    cfg = json.loads((oracle.path / "config.json").read_text())
    cfg["text_config"]["rope_theta"][2] = 1234.0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["generate", "--model", str(tmp_path), "--prompt-ids", "1,2", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "rope_theta" in err[0] and "sliding_attention" in err[0]


def test_step_inspect(step, capsys):
    oracle, _, _ = step
    assert main(["inspect", str(oracle.path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["family"] == "step3p7" and s["model_type"] == "step3p5"
    assert (s["mtp_declared"], s["mtp_present"]) == (3, 3) and not s["warnings"]
    assert [m["prefix"] for m in s["mtp_modules"]] == [f"model.layers.{4 + j}." for j in range(3)]
    assert s["unused_tensors"] == [] and s["moe_layers"] == 2


def test_step_trunk_paired_drafter(step):
    """llama.cpp's multi-module pairing (TrunkPairedDrafter): lossless, every module's committed rows are
    (trunk h_i, t[i+1]) at position i+1, and those rows differ from our chain's for modules j >= 1."""
    _, model, _ = step
    prompt, k = [1, 2, 3, 4, 5, 6, 7, 8], 3
    base = plain(model, prompt, 20)
    drafter = TrunkPairedDrafter(model, k)
    forced = ForcedDrafts(model, prompt + base, 0.6, salt=5)
    drafter.model = forced
    dec = SpeculativeDecoder(forced, k, "chain", drafter=drafter)
    dec.prefill(prompt)
    rejected = 0
    while len(dec.generated) < 14:
        rejected += dec.step().accepted < k
    assert dec.generated[:14] == base[:14] and rejected > 0
    seq = dec.tokens + [dec.pending]
    h = dec.h
    chain = _fresh_module_rows(model, seq, h, k - 1, [min(c.length, len(seq) - 1 - j)
                                                      for j, c in enumerate(drafter.caches)])
    for j, c in enumerate(drafter.caches):
        n = c.length
        assert n == len(dec.tokens) - 1 or n == len(dec.tokens)
        fresh = LayerCache()
        model.mtp_forward(j, seq[1:n + 1], h[:n], fresh, np.arange(n) + 1)
        for name in fresh.names():
            np.testing.assert_allclose(c.view(name), fresh.view(name), rtol=1e-4, atol=1e-5)
            if j > 0:
                m = chain[j].length
                assert m > 0 and max_rel(c.view(name)[1:m], chain[j].view(name)[1:m]) > 1e-3
    assert generate(model, prompt, 20, draft_depth=k, drafter=TrunkPairedDrafter(model, k)).token_ids == base
