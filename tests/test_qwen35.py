"""Qwen3.5 / Qwen3.6 (qwen3_5, qwen3_5_moe) and Qwen3-Next (qwen3_next): hybrid Gated DeltaNet trunks with MTP.

* the delta rule: recurrent (reference) == chunked == transformers' torch implementations; the conv and the
  Qwen3-Next projection unpacking against transformers;
* main logits against transformers' Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM / Qwen3NextForCausalLM, and MTP
  logits against builders_qwen35.QwenMTPReference (transformers' own layer and norm classes), on tiny random
  checkpoints in the released layouts: max|a-b|/max|b| <= TOL = 1e-5;
* recurrent-state rollback: per-token snapshots (truncate) and checkpoint-and-redecode both leave the caches
  equal to a run that only ever saw the committed tokens; speculative greedy decoding is token-identical to
  plain decoding with partial acceptance (ForcedDrafts, see test_speculative.py);
* inspect / generate / trace, and the MTP tensor list the explainer draws.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import builders_qwen35 as bq
from mtp_ref import SpeculativeDecoder, generate, load_model, ops
from mtp_ref.cache import RecurrentCache
from mtp_ref.cli import main
from mtp_ref.errors import MtpRefError
from mtp_ref.families import mtp_tensors
from test_speculative import ForcedDrafts, _fresh_module_rows

# Measured on 2026-12-02 (x86 CPU, float32 both sides): main logits and hiddens 3.6e-7..2.9e-6, MTP logits
# 6.2e-7..2.7e-6 (qwen3_5_moe-vl the largest). Reading rms_norm_eps wrong (1e-5 for the configs' 1e-6) moves them by
# 5e-2 or more (the gated norm sees small activations): test_tolerance_catches_wrong_rms_norm_eps.
TOL = 1e-5
T = 12
VARIANTS = list(bq.VARIANTS)
MTP_CASES = [(v, d) for v, o in bq.VARIANTS.items() for d in range(o.get("mtp", 1))]
PROMPTS = [[5, 9, 2], [1, 2, 3, 4, 5, 6, 7, 8], [17, 3, 99, 12, 7, 7, 7, 31, 8, 2, 64, 90, 11, 4, 250, 6, 6, 19]]


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def prompt(seed: int = 1234, n: int = T) -> list[int]:
    return np.random.default_rng(seed).integers(0, 320, n).tolist()


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """variant -> (oracle, engine model); built once per module."""
    built: dict = {}

    def get(variant: str):
        if variant not in built:
            oracle = bq.build(variant, tmp_path_factory.mktemp(variant.replace("-", "_")))
            built[variant] = (oracle, load_model(oracle.path))
        return built[variant]

    return get


# --------------------------------------------------------------------------------------------------
# The pieces, against transformers' own functions
# --------------------------------------------------------------------------------------------------


def _torch(x):
    return torch.from_numpy(np.ascontiguousarray(x))[None]


@pytest.mark.parametrize("n", [1, 5, 37])
def test_delta_rule_recurrent_matches_transformers(n):
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_recurrent_gated_delta_rule

    q, k, v, g, beta, S0 = bq.random_delta_inputs(n, seed=n)
    o, states = ops.gated_delta_rule_recurrent(q, k, v, g, beta, S0)
    dk = q.shape[-1]
    # transformers scales q by dk^-1/2 inside; ours takes it pre-scaled (as the layer does)
    ref, S = torch_recurrent_gated_delta_rule(_torch(q * dk ** 0.5), _torch(k), _torch(v), _torch(g), _torch(beta),
                                              initial_state=_torch(S0), output_final_state=True)
    assert max_rel(o, ref[0].numpy()) < 1e-5
    assert max_rel(states[-1], S[0].numpy()) < 1e-5
    assert states.shape == (n + 1,) + S0.shape and np.array_equal(states[0], S0)


@pytest.mark.parametrize("n,chunk", [(37, 8), (100, 64)])
def test_delta_rule_chunked_matches_transformers(n, chunk):
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    q, k, v, g, beta, S0 = bq.random_delta_inputs(n, seed=7)
    o, S = ops.gated_delta_rule_chunked(q, k, v, g, beta, S0, chunk)
    ref, S_ref = torch_chunk_gated_delta_rule(_torch(q * q.shape[-1] ** 0.5), _torch(k), _torch(v), _torch(g),
                                              _torch(beta), chunk_size=chunk, initial_state=_torch(S0),
                                              output_final_state=True)
    assert max_rel(o, ref[0].numpy()) < 1e-5
    assert max_rel(S, S_ref[0].numpy()) < 1e-5


@pytest.mark.parametrize("n", [1, 7, 16, 37, 100])
@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_delta_rule_chunked_equals_recurrent(n, chunk):
    """The parallel (chunked) form is the recurrence: same outputs, and its final state over the first t tokens
    is the recurrent form's state after token t (what a snapshot holds)."""
    q, k, v, g, beta, S0 = bq.random_delta_inputs(n, seed=100 + n)
    o_r, states = ops.gated_delta_rule_recurrent(q, k, v, g, beta, S0)
    o_c, S = ops.gated_delta_rule_chunked(q, k, v, g, beta, S0, chunk)
    assert o_c.shape == o_r.shape and o_c.dtype == np.float32
    assert max_rel(o_c, o_r) < 1e-5
    assert max_rel(S, states[-1]) < 1e-5
    for t in sorted({1, n // 2, n - 1} - {0}):
        _, S_t = ops.gated_delta_rule_chunked(q[:t], k[:t], v[:t], g[:t], beta[:t], S0, chunk)
        assert max_rel(S_t, states[t]) < 1e-5


def test_causal_conv1d_matches_transformers_and_continues():
    from transformers.models.qwen3_next.modeling_qwen3_next import causal_conv1d_fn

    rng = np.random.default_rng(3)
    n, C, K = 11, 6, 4
    x = rng.standard_normal((n, C)).astype(np.float32)
    w = rng.standard_normal((C, K)).astype(np.float32)
    out, window = ops.causal_conv1d(x, np.zeros((K - 1, C), np.float32), w)
    ref = causal_conv1d_fn(torch.from_numpy(x.T.copy())[None], torch.from_numpy(w), None, activation="silu")
    assert max_rel(out, ref[0].numpy().T) < 1e-6
    # continuing from the state (last K-1 inputs) equals one pass over everything
    a, win_a = ops.causal_conv1d(x[:5], np.zeros((K - 1, C), np.float32), w)
    b, _ = ops.causal_conv1d(x[5:], win_a[5:], w)
    np.testing.assert_allclose(np.concatenate([a, b]), out, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(window[5 : 5 + K - 1], win_a[5:])


def test_unpack_qkvz_ba_matches_transformers(qwen):
    """Qwen3-Next's per-key-head grouped in_proj_qkvz / in_proj_ba, against Qwen3NextGatedDeltaNet's own unpacking."""
    oracle, model = qwen("qwen3_next")
    layer = oracle.model.model.layers[0].linear_attn
    cfg = model.config
    nk, nv, dk, dv = cfg.linear_dims
    rng = np.random.default_rng(5)
    qkvz = rng.standard_normal((3, nk * (2 * dk + 2 * dv * nv // nk))).astype(np.float32)
    ba = rng.standard_normal((3, 2 * nv)).astype(np.float32)
    qkv, z, b, a = ops.unpack_qkvz_ba(qkvz, ba, nk, nv, dk, dv)
    tq, tk, tv, tz, tb, ta = layer.fix_query_key_value_ordering(torch.from_numpy(qkvz)[None],
                                                                torch.from_numpy(ba)[None])
    want_qkv = torch.cat([t.reshape(1, 3, -1) for t in (tq, tk, tv)], -1)[0].numpy()
    np.testing.assert_array_equal(qkv, want_qkv)
    np.testing.assert_array_equal(z, tz.reshape(3, -1).numpy())
    np.testing.assert_array_equal(b, tb[0].numpy())
    np.testing.assert_array_equal(a, ta[0].numpy())


# --------------------------------------------------------------------------------------------------
# Builders vs transformers' own loaders, then the engine vs the oracles
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_loads_in_transformers(variant, qwen):
    """The released files, loaded by transformers (prefix stripping, fused/per-expert merging, tying), give the
    oracle's logits; MTP tensors are exactly the reference module's parameters."""
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    oracle, _ = qwen(variant)
    ids = prompt()
    loaded = type(oracle.model).from_pretrained(str(oracle.path), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        got = loaded.eval()(torch.tensor([ids])).logits[0].numpy()
    assert max_rel(got, oracle.logits(ids)) <= 1e-6
    files = {k: v for f in oracle.path.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    mtp_sd = oracle.mtp.state_dict()
    stored = {k[len("mtp."):]: v for k, v in files.items() if k.startswith("mtp.")}
    if bq.splits_experts(variant):  # per expert in the file, fused in the module
        for key in [k for k in mtp_sd if k.endswith("experts.gate_up_proj")]:
            p = key[: -len("gate_up_proj")]
            E = mtp_sd[key].shape[0]
            stored[key] = torch.stack([torch.cat([stored.pop(f"{p}{e}.gate_proj.weight"),
                                                  stored.pop(f"{p}{e}.up_proj.weight")]) for e in range(E)])
            stored[p + "down_proj"] = torch.stack([stored.pop(f"{p}{e}.down_proj.weight") for e in range(E)])
    assert sorted(stored) == sorted(mtp_sd)
    for k, want in mtp_sd.items():
        np.testing.assert_array_equal(stored[k].float().numpy(), want.numpy(), err_msg=k)


@pytest.mark.parametrize("variant", VARIANTS)
def test_main_logits(variant, qwen, record_error):
    oracle, model = qwen(variant)
    ids = prompt()
    h, logits = model.forward(np.asarray(ids), model.new_cache())
    assert logits.dtype == np.float32 and logits.shape == (T, oracle.vocab_size)
    err = max_rel(logits, oracle.logits(ids))
    record_error(f"{variant} main", err)
    assert err <= TOL
    assert max_rel(h, oracle.forward(ids)[1].numpy()) <= TOL


@pytest.mark.parametrize("variant", ["qwen3_5-vl", "qwen3_next"])
def test_main_logits_both_delta_rule_forms(variant, qwen, record_error):
    """Forced recurrent form, and the chunked form with chunks of 4 (3 chunks over 12 tokens), both match."""
    oracle, model = qwen(variant)
    ids, ref = prompt(), oracle.logits(prompt())
    saved = model.delta_rule, model.delta_chunk
    try:
        outs = {}
        for form, chunk in (("recurrent", 64), ("chunked", 4)):
            model.delta_rule, model.delta_chunk = form, chunk
            outs[form] = model.forward(np.asarray(ids), model.new_cache())[1]
            err = max_rel(outs[form], ref)
            record_error(f"{variant} main ({form})", err)
            assert err <= TOL
        assert max_rel(outs["chunked"], outs["recurrent"]) < 1e-5
    finally:
        model.delta_rule, model.delta_chunk = saved


@pytest.mark.parametrize("variant,depth", MTP_CASES, ids=[f"{v}-depth{d}" for v, d in MTP_CASES])
def test_mtp_logits(variant, depth, qwen, record_error):
    from mtp_ref.trace import build_trace

    oracle, model = qwen(variant)
    ids = prompt()
    assert model.config.num_mtp_modules == oracle.num_mtp
    tr = build_trace(model, ids, intermediates=False)
    got = tr[f"mtp.{depth}.logits"]
    assert got.shape == (T - 1 - depth, oracle.vocab_size)
    err = max_rel(got, oracle.mtp_logits(ids)[depth])
    record_error(f"{variant} mtp depth {depth}", err)
    assert err <= TOL


@pytest.mark.parametrize("variant", ["qwen3_5-vl", "qwen3_next"])
def test_tolerance_separates_conventions(variant, qwen):
    """The tolerance sees the concat order and the zero-centred (1 + w) norms: an engine getting either
    wrong fails test_main_logits / test_mtp_logits."""
    oracle, model = qwen(variant)
    ids = prompt()
    ref_mtp = oracle.mtp_logits(ids)[0]
    assert max_rel(oracle.mtp_logits(ids, swap_concat=True)[0], ref_mtp) > 100 * TOL
    assert max_rel(oracle.mtp_logits(ids)[0], ref_mtp) == 0.0  # the swap was undone
    spec = model.spec
    try:
        model.spec = dataclasses.replace(spec, norm_offset=0.0)
        plain_norms = model.forward(np.asarray(ids), model.new_cache())[1]
    finally:
        model.spec = spec
    assert max_rel(plain_norms, oracle.logits(ids)) > 100 * TOL



@pytest.mark.parametrize("variant", ["qwen3_5-vl", "qwen3_next"])
def test_tolerance_catches_wrong_rms_norm_eps(variant, qwen):
    """Control for TOL: the engine run with rms_norm_eps = 1e-5 (a common default) where config.json says 1e-6
    fails the main and MTP comparisons. Measured 2026-12-02: 1.5e-1..2.5e-1."""
    from mtp_ref.trace import build_trace

    oracle, model = qwen(variant)
    ids = prompt()
    cfg = model.config
    assert cfg.rms_norm_eps == 1e-6
    try:
        model.config = dataclasses.replace(cfg, rms_norm_eps=1e-5)
        tr = build_trace(model, ids, intermediates=False)
    finally:
        model.config = cfg
    assert max_rel(tr["logits"], oracle.logits(ids)) > TOL
    assert max_rel(tr["mtp.0.logits"], oracle.mtp_logits(ids)[0]) > TOL

def test_rotary_and_config_details(qwen):
    """Partial RoPE 0.25 of head_dim (also transformers' default when config.json omits it), the hybrid layer
    pattern, the outer config's tie_word_embeddings, and MoE/dense layer choice."""
    for variant in VARIANTS:
        oracle, model = qwen(variant)
        cfg = model.config
        assert cfg.rotary_dim == oracle.model.model.rotary_emb.inv_freq.numel() * 2 == cfg.head_dim // 4
        assert [cfg.layer_type(i) for i in range(cfg.num_hidden_layers)] == list(oracle.model.config.layer_types)
        assert cfg.layer_type(cfg.num_hidden_layers) == "full_attention"  # the MTP block
        assert cfg.tie_word_embeddings == bool(oracle.model.config.tie_word_embeddings)
        dense = [i for i in range(cfg.num_hidden_layers) if not (model.spec.moe and cfg.is_moe_layer(i))]
        want = [i for i, layer in enumerate(oracle.model.model.layers) if not hasattr(layer.mlp, "experts")]
        assert dense == want
    assert qwen("qwen3_next")[1].config.is_moe_layer(1) is False  # mlp_only_layers [1]


def test_config_unwraps_text_config(tmp_path):
    from mtp_ref.config import load_config

    text = bq._qwen3_5_text_config(moe=False)
    raw = bq._vl_wrap(text, moe=False, tie=True)
    raw["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = load_config(tmp_path)
    assert cfg.model_type == "qwen3_5_text" and cfg.hidden_size == 64 and cfg.num_nextn_predict_layers == 1
    assert cfg.tie_word_embeddings is True and cfg.quantization_config["quant_method"] == "fp8"
    assert cfg.layer_types == text["layer_types"] and cfg.linear_num_value_heads == 4
    del raw["text_config"]["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert load_config(tmp_path).model_type == "qwen3_5"


def test_bad_hybrid_configs_are_reported():
    from mtp_ref.config import config_from_dict

    text = bq._qwen3_5_text_config(moe=False)
    with pytest.raises(MtpRefError, match="linear_num_value_heads"):
        config_from_dict({k: v for k, v in text.items() if k != "linear_num_value_heads"})
    with pytest.raises(MtpRefError, match="layer_types"):
        config_from_dict({**text, "layer_types": ["linear_attention", "mamba", "linear_attention", "full_attention"]})
    with pytest.raises(MtpRefError, match="layer_types"):
        config_from_dict({**text, "layer_types": ["full_attention"]})
    with pytest.raises(MtpRefError, match="not a multiple"):
        config_from_dict({**text, "linear_num_value_heads": 3})
    qwen3 = {"model_type": "qwen3", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 4, "num_attention_heads": 2}
    from mtp_ref.families import family_for

    with pytest.raises(MtpRefError, match="linear_attention"):
        family_for(config_from_dict({**qwen3, **{k: text[k] for k in text if k.startswith("linear_")},
                                     "layer_types": text["layer_types"]}))


# --------------------------------------------------------------------------------------------------
# Caches: incremental decoding, snapshots, rollback
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_incremental_decoding_matches_full_forward(variant, qwen):
    """A chunked 20-token prefill, then 1-token and 3-token steps (recurrent form) continuing the conv and delta
    states, give the logits of one forward over everything."""
    _, model = qwen(variant)
    ids = prompt(seed=9, n=27)
    _, full = model.forward(np.asarray(ids), model.new_cache())
    cache = model.new_cache()
    parts = [model.forward(np.asarray(ids[:20]), cache)[1]]
    for a, b in ((20, 21), (21, 24), (24, 25), (25, 27)):
        parts.append(model.forward(np.asarray(ids[a:b]), cache)[1])
    assert cache.length == 27
    assert max_rel(np.concatenate(parts), full) < TOL              # measured <= 9.5e-7


def test_recurrent_truncate_restores_per_token_snapshots(qwen):
    """After a 5-token forward, truncate(L) for every L in the window gives exactly the state of a run over
    the first L tokens; outside the window, or without snapshots, it refuses."""
    _, model = qwen("qwen3_5-vl")
    ids = prompt(seed=4, n=10)
    lin = [i for i in range(model.config.num_hidden_layers) if model.config.layer_type(i) == "linear_attention"]
    for L in range(5, 11):
        cache = model.new_cache()
        model.forward(np.asarray(ids[:5]), cache)
        model.forward(np.asarray(ids[5:]), cache)
        cache.truncate(L)
        ref = model.new_cache()
        model.forward(np.asarray(ids[:L]), ref)
        for i in lin:
            for name in ("conv", "state"):
                np.testing.assert_allclose(cache.layers[i].view(name), ref.layers[i].view(name), rtol=1e-5, atol=1e-6)
    cache = model.new_cache()
    model.forward(np.asarray(ids[:5]), cache)
    model.forward(np.asarray(ids[5:]), cache)
    with pytest.raises(ValueError, match="recurrent"):
        cache.truncate(4)                                  # before the last forward: no snapshot
    plain = model.new_cache(keep_snapshots=False)
    model.forward(np.asarray(ids), plain)
    with pytest.raises(ValueError, match="recurrent"):
        plain.truncate(9)
    assert isinstance(plain.layers[lin[0]], RecurrentCache)


def _assert_caches_equal_fresh_run(model, dec):
    """Main cache (attention rows, conv + delta states) and hiddens == one forward over the committed tokens;
    MTP caches == teacher-forced rows over the committed sequence."""
    fresh = model.new_cache()
    h, _ = model.forward(np.asarray(dec.tokens), fresh)
    assert dec.cache.length == len(dec.tokens)
    # engine vs engine, batched differently (verify blocks vs one prefill): measured 2026-12-02 at most 0.46 of the
    # rtol=1e-4 / atol=1e-5 allowance (|diff| <= 9.8e-6, 2.8e-6 of the largest entry); a rollback that ignores the
    # recurrent state moves them by 1.5 of the largest entry (test_a_rollback_that_ignores_the_recurrent_state...)
    for got, want in zip(dec.cache.snapshot(), fresh.snapshot(), strict=True):
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(dec.h, h, rtol=1e-4, atol=1e-5)
    seq = dec.tokens + [dec.pending]
    rows = [c.length for c in dec.mtp_caches]
    ref = _fresh_module_rows(model, seq, h, len(rows) - 1, rows)
    for got, want in zip(dec.mtp_caches, ref):
        for name in want.names():
            np.testing.assert_allclose(got.view(name), want.view(name), rtol=1e-4, atol=1e-5)


ROLLBACK_CASES = [(v, m, r) for v in ("qwen3_5-vl", "qwen3_5_text-tied-mtp2", "qwen3_5_moe-vl", "qwen3_next")
                  for m in ("chain", "recursive") for r in ("snapshot", "redecode")
                  if not (m == "chain" and v != "qwen3_5_text-tied-mtp2")]


@pytest.mark.parametrize("variant,mode,rollback", ROLLBACK_CASES)
def test_rollback_leaves_the_state_of_plain_decoding(variant, mode, rollback, qwen):
    """Partial acceptance (ForcedDrafts): after every cycle the caches equal a run that saw only the committed
    tokens, and the output is token-identical to plain decoding, with either rollback."""
    _, model = qwen(variant)
    k = model.config.num_mtp_modules if mode == "chain" else 3
    p = PROMPTS[1]
    base = generate(model, p, 30).token_ids
    dec = SpeculativeDecoder(ForcedDrafts(model, p + base, 0.6, salt=7), k, mode, rollback=rollback)
    dec.prefill(p)
    hist = np.zeros(k + 1, int)
    while len(dec.generated) < 24:
        hist[dec.step().accepted] += 1
        _assert_caches_equal_fresh_run(model, dec)
    assert dec.generated[:24] == base[:24]
    assert hist[:-1].sum() > 0 and hist[1:].sum() > 0, hist          # rejections and acceptances both happened
    redecodes = dec.stats.redecode_forwards
    assert redecodes == (hist[:-1].sum() if rollback == "redecode" else 0)


def test_a_rollback_that_ignores_the_recurrent_state_is_caught(qwen, monkeypatch):
    """Control: if truncate only moved the length (as for attention rows), the comparison above fails."""
    _, model = qwen("qwen3_5-vl")
    p = PROMPTS[1]
    base = generate(model, p, 30).token_ids

    def length_only(self, length):
        self.length = length

    monkeypatch.setattr(RecurrentCache, "truncate", length_only)
    dec = SpeculativeDecoder(ForcedDrafts(model, p + base, 0.6, salt=7), 3, "recursive")
    dec.prefill(p)
    with pytest.raises(AssertionError):
        while len(dec.generated) < 24:
            dec.step()
            _assert_caches_equal_fresh_run(model, dec)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rollback", ["snapshot", "redecode"])
def test_greedy_lossless(variant, rollback, qwen):
    """Real drafts (acceptance ~0 on random weights) and forced drafts at 90%: every k, both modes, plain tokens."""
    _, model = qwen(variant)
    n_mod = model.config.num_mtp_modules
    accepted_all = 0
    for i, p in enumerate(PROMPTS):
        base = generate(model, p, 16).token_ids
        forced = ForcedDrafts(model, p + base, 0.9, salt=i)
        for k, mode in sorted({(1, "chain"), (n_mod, "chain"), (3, "recursive")}):
            assert generate(model, p, 16, k, mode, rollback=rollback).token_ids == base, (p, k, mode)
            res = generate(forced, p, 16, k, mode, rollback=rollback)
            assert res.token_ids == base, (p, k, mode)
            accepted_all += res.stats["accepted_length_histogram"][-1]
    assert accepted_all > 0


def test_snapshot_window_limit(qwen):
    _, model = qwen("qwen3_5-vl")
    with pytest.raises(MtpRefError, match="redecode"):
        SpeculativeDecoder(model, model.recurrent_max_tokens, "recursive")
    SpeculativeDecoder(model, model.recurrent_max_tokens, "recursive", rollback="redecode")
    SpeculativeDecoder(model, model.recurrent_max_tokens - 1, "recursive")


# --------------------------------------------------------------------------------------------------
# Tools: inspect, generate, trace, the MTP tensor list
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["qwen3_5-vl", "qwen3_next"])
def test_cli_inspect_generate_trace(variant, qwen, capsys, tmp_path):
    oracle, model = qwen(variant)
    assert main(["inspect", str(oracle.path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["family"] == variant.split("-")[0] and s["linear_attention_layers"] == 3 and not s["warnings"]
    assert s["mtp_present"] == 1 and s["mtp_modules"][0]["prefix"] == "mtp."
    assert s["mtp_declared"] == (1 if variant == "qwen3_5-vl" else 0)          # Qwen3-Next's config has no key
    assert s["unused_tensors"] == (["model.visual.patch_embed.proj.weight"] if variant.endswith("vl") else [])
    if s["routed_experts"]:  # qwen3_next: layer 1 is dense (mlp_only_layers); one gated shared expert
        assert s["moe_layers"] == 3 and s["shared_experts"] == 1 and s["bytes_per_token_trunk"] > 0
    outs = []
    for extra in ([], ["--draft", "2", "--mode", "recursive"], ["--draft", "2", "--mode", "recursive",
                                                                "--rollback", "redecode"]):
        assert main(["generate", "--model", str(oracle.path), "--prompt", "Once upon a time", "--max-new-tokens",
                     "10", "--json"] + extra) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["token_ids"] == outs[1]["token_ids"] == outs[2]["token_ids"] and len(outs[0]["token_ids"]) == 10
    assert outs[1]["stats"]["mtp_forwards"] == 2 * outs[1]["stats"]["target_forwards"]
    out = tmp_path / "trace.safetensors"
    assert main(["trace", "--model", str(oracle.path), "--prompt-ids", "1,2,3,4,5,6", "--out", str(out)]) == 0
    from mtp_ref.safetensors_io import read_header, read_tensor

    hdr = read_header(out)
    assert {"logits", "hidden", "mtp.0.logits", "mtp.0.hidden", "layers.0.out"} <= set(hdr)
    ref = oracle.mtp_logits([1, 2, 3, 4, 5, 6])[0]
    assert max_rel(read_tensor(hdr["mtp.0.logits"]), ref) <= TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_mtp_tensor_list(variant, qwen):
    """families.mtp_tensors (what inspect and the explainer's draft-heads page list) names every mtp.* tensor of
    the release with its shape: shared glue plus the block of each module."""
    oracle, model = qwen(variant)
    cfg, ck = model.config, model.ckpt
    listed = {}
    for j in range(cfg.num_mtp_modules):
        t = mtp_tensors(cfg, model.spec, j)
        for name, shape in t.items():
            assert tuple(ck.shape(name)) == tuple(shape), name
        listed.update(t)
        assert f"mtp.layers.{j}.self_attn.q_proj.weight" in t and "mtp.fc.weight" in t
        assert not any(n.startswith(f"mtp.layers.{1 - j}.") for n in t)
    assert sorted(listed) == sorted(n for n in oracle.tensor_names if n.startswith("mtp."))
    H, nh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    assert listed["mtp.fc.weight"] == (H, 2 * H)
    assert listed["mtp.layers.0.self_attn.q_proj.weight"] == (2 * nh * hd, H)   # query and gate
    if model.spec.moe:
        assert model.spec.expert_layout == ("per_expert" if bq.splits_experts(variant) else "fused")
        assert "mtp.layers.0.mlp.shared_expert_gate.weight" in listed
        if bq.splits_experts(variant):
            assert listed["mtp.layers.0.mlp.experts.7.down_proj.weight"] == (H, 32)
        else:
            assert listed["mtp.layers.0.mlp.experts.gate_up_proj"] == (8, 64, H)


def test_checkpoint_without_mtp_weights(qwen, tmp_path):
    """A conversion that dropped mtp.*: zero modules, an inspect warning, and drafting refuses."""
    from safetensors.torch import load_file, save_file

    oracle, _ = qwen("qwen3_5-vl")
    for f in oracle.path.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / f.name)
    kept = {}
    for f in oracle.path.glob("*.safetensors"):
        kept.update({k: v for k, v in load_file(str(f)).items() if not k.startswith("mtp.")})
    save_file(kept, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors.index.json").unlink(missing_ok=True)
    model = load_model(tmp_path)
    assert model.config.num_mtp_modules == 0 and model.config.num_nextn_predict_layers == 1
    from mtp_ref.inspect_ckpt import summarize

    assert "mtp." in summarize(model)["warnings"][0]
    with pytest.raises(MtpRefError, match="no MTP module"):
        generate(model, [1, 2, 3], 4, draft_depth=1)
