"""DeepSeek-V4 (deepseek_v4) against transformers 5.23 on a tiny random checkpoint in the released layout
(tests/builders_v4.py; 4 layers: CSA, HCA, CSA, sliding-only; MTP block sliding-only, as released).

* the files load in transformers' DeepseekV4ForCausalLM.from_pretrained with nothing missing or unexpected;
* main logits, prefill of 40 tokens AND token-by-token decode through transformers' own V4 cache, within
  max|a-b|/max|b| <= 1e-4; with 40 tokens the window (8 keys), the CSA pools (4 tokens, 10 entries, indexer
  top-3) and the HCA pools (8 tokens) all change the logits far beyond the tolerance (checked);
* MTP depth 0 (teacher forced) against an oracle composed from transformers' V4 modules per DeepSeek's released
  MTPBlock (builders_v4.MtpOracle: transformers has no V4 MTP class);
* rollback to any length equals a fresh decode (compressed entries recomputed from the kept rows);
* greedy drafting (chain 1, recursive 3) is token-identical to plain decoding; trace keys; inspect, including a
  copy whose config declares the MTP module and whose weights hold none;
* the vectorised maths equals its naive twins; the CUDA backend refuses the family.
transformers 5.23 problems met (patched in test code only): no V4 MTP class (MtpOracle), save_pretrained writes
wrong released names (the checkpoint is written from the released names, never by transformers).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import builders_v4 as bv
from mtp_ref import SpeculativeDecoder, generate, load_model
from mtp_ref import ops_v4
from mtp_ref.cli import main
from mtp_ref.errors import MtpRefError
from mtp_ref.trace import build_trace
from test_speculative import ForcedDrafts

TOL = 1e-4
T = 40


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def prompt(n: int = T, seed: int = 1234) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, n).tolist()


@pytest.fixture(scope="module")
def v4(tmp_path_factory):
    """(dir, engine model, transformers model, engine trace of prompt())."""
    d = bv.write_v4(tmp_path_factory.mktemp("v4"))
    model = load_model(d)
    return d, model, bv.hf_model(d), build_trace(model, prompt())


@pytest.fixture(scope="module")
def hf_ref(v4):
    """transformers' logits and streams over prompt()."""
    _, _, hf, _ = v4
    return bv.hf_streams(hf, torch.tensor([prompt()]))


# --------------------------------------------------------------------------------------------------
# The files, and the trunk against transformers
# --------------------------------------------------------------------------------------------------


def test_checkpoint_loads_in_transformers(v4):
    from safetensors.torch import load_file
    from transformers import DeepseekV4ForCausalLM

    d, model, _, _ = v4
    hf, info = DeepseekV4ForCausalLM.from_pretrained(str(d), dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    raw = load_file(str(d / "model.safetensors"))
    sd = hf.state_dict()
    pairs = {"layers.0.attn.indexer.compressor.wkv.weight":
             "model.layers.0.self_attn.compressor.indexer.kv_proj.weight",
             "layers.1.attn.compressor.ape": "model.layers.1.self_attn.compressor.position_bias",
             "layers.0.ffn.gate.tid2eid": "model.layers.0.mlp.gate.tid2eid",
             "layers.2.attn.attn_sink": "model.layers.2.self_attn.sinks", "hc_head_fn": "model.hc_head.hc_fn"}
    for ours, theirs in pairs.items():
        assert torch.equal(raw[ours].to(sd[theirs].dtype), sd[theirs]), ours
    assert model.config.layer_types == list(hf.config.layer_types)
    assert model.config.compress_rates == {"csa": 4, "hca": 8} and model.config.num_mtp_modules == 1
    assert all(k.startswith(("embed", "head", "norm", "hc_head_", "layers.", "mtp.0.")) for k in raw)


def test_main_logits_prefill(v4, hf_ref, record_error):
    _, _, _, tr = v4
    err = max_rel(tr["logits"], hf_ref[1][0].numpy())
    record_error("deepseek_v4 main (prefill 40)", err)
    assert err <= TOL
    assert max_rel(tr["hidden"], hf_ref[0][0].numpy()) <= TOL     # the streams MTP depth 0 takes


@pytest.mark.parametrize("field,value", [("sliding_window", 10**6), ("index_topk", 10**6),
                                         ("compress_rates", {"csa": 4, "hca": 10**6})])
def test_window_selection_and_pools_matter(v4, hf_ref, field, value):
    """Each of the three mechanisms moves the logits far beyond the tolerance on this prompt."""
    _, model, _, _ = v4
    saved = getattr(model.config, field)
    try:
        setattr(model.config, field, value)
        logits = model.forward(np.asarray(prompt()), model.new_cache())[1]
    finally:
        setattr(model.config, field, saved)
    assert max_rel(logits, hf_ref[1][0].numpy()) > 100 * TOL


def test_compress_rope_is_yarn_with_unscaled_cos_sin(v4, hf_ref):
    """CSA / HCA layers rotate with compress_rope_theta + the config's YaRN, cos/sin not multiplied by YaRN's
    mscale (transformers' attention_factor 1): plain RoPE, or YaRN's default factor 0.1 ln(16) + 1, misses."""
    _, model, _, _ = v4
    saved = model._inv_freq["compress"]
    ref = hf_ref[1][0].numpy()
    try:
        plain = 160000.0 ** -(np.arange(0, 8, 2) / 8)                  # compress_rope_theta, dr = 8, no YaRN
        for inv, att in ((plain, 1.0), (saved[0], 0.1 * np.log(16) + 1)):
            model._inv_freq["compress"] = (inv, att)
            assert max_rel(model.forward(np.asarray(prompt()), model.new_cache())[1], ref) > 100 * TOL
    finally:
        model._inv_freq["compress"] = saved
    assert saved[1] == 1.0


def test_decode_token_by_token(v4, record_error):
    """Prefill 24 tokens, then one token at a time through transformers' own V4 caches (sliding window, compressor
    buffers and overlap state): CSA windows close at positions 27 and 31, an HCA window at 31."""
    _, model, hf, _ = v4
    ids, n0, n1 = prompt(), 24, 34
    with torch.no_grad():
        out = hf(torch.tensor([ids[:n0]]), use_cache=True)
        pkv, ref = out.past_key_values, [out.logits[0].numpy()]
        for t in range(n0, n1):
            out = hf(torch.tensor([ids[t:t + 1]]), past_key_values=pkv, use_cache=True)
            pkv = out.past_key_values
            ref.append(out.logits[0].numpy())
    cache = model.new_cache()
    got = [model.forward(np.asarray(ids[:n0]), cache)[1]]
    got += [model.forward(np.asarray(ids[t:t + 1]), cache)[1] for t in range(n0, n1)]
    err = max_rel(np.concatenate(got), np.concatenate(ref))
    record_error("deepseek_v4 main (decode 24 + 10)", err)
    assert err <= TOL


def test_rollback_equals_fresh_decode(v4):
    """Truncating a cache of 37 tokens to 22 (mid-window for every pool) and decoding 8 more gives what a cache
    that never saw the dropped tokens gives; the kept rows and compressed entries are those of a fresh prefill."""
    _, model, _, _ = v4
    ids = np.asarray(prompt())
    fresh = model.new_cache()
    want = model.forward(ids[:30], fresh)[1]
    c = model.new_cache()
    model.forward(ids[:37], c)
    c.truncate(22)
    got = model.forward(ids[22:30], c)[1]
    np.testing.assert_allclose(got, want[22:], rtol=0, atol=1e-5 * np.abs(want).max())
    for a, b in zip(c.layers, fresh.layers, strict=True):
        assert a.n_entries == b.n_entries
        for name in b.names():
            np.testing.assert_allclose(a.view(name), b.view(name), rtol=1e-4, atol=1e-5, err_msg=name)
        for name, k in b.n_entries.items():   # entries kept from before the cut, and recomputed ones
            np.testing.assert_allclose(a.entries[name][:k], b.entries[name][:k], rtol=1e-4, atol=1e-5, err_msg=name)
    assert sum(b.n_entries.get("comp", 0) for b in fresh.layers) > 0


# --------------------------------------------------------------------------------------------------
# MTP
# --------------------------------------------------------------------------------------------------


def test_mtp_logits(v4, hf_ref, record_error):
    d, _, hf, tr = v4
    oracle = bv.MtpOracle(hf, d, 0)
    ids = torch.tensor([prompt()])
    streams, logits = oracle(ids[:, 1:], hf_ref[0][:, :-1], torch.arange(1, T)[None])
    err = max_rel(tr["mtp.0.logits"], logits[0].numpy())
    record_error("deepseek_v4 mtp depth 0", err)
    assert tr["mtp.0.logits"].shape == (T - 1, 256) and err <= TOL
    assert max_rel(tr["mtp.0.hidden"], streams[0].numpy()) <= TOL
    assert tr["mtp.0.input_ids"].tolist() == prompt()[1:] and tr["mtp.0.positions"].tolist() == list(range(1, T))


def test_mtp_positions_shift_and_hnorm_per_stream(v4):
    """The MTP block is sliding-window RoPE attention: our rows at positions i+1 (transformers' MtpModel) and
    vLLM's at i give the same logits; hnorm normalises each stream on its own (not the flattened S*H vector)."""
    _, model, _, tr = v4
    ids, h = prompt()[1:], tr["hidden"][:-1]
    _, shifted = model.mtp_forward(0, ids, h, model.new_mtp_cache(), np.arange(0, T - 1))
    assert max_rel(shifted, tr["mtp.0.logits"]) <= 1e-5
    _, scaled = model.mtp_forward(0, ids, h * np.array([1, 3, 5, 7], np.float32)[None, :, None],
                                  model.new_mtp_cache(), np.arange(1, T))
    assert max_rel(scaled, tr["mtp.0.logits"]) <= 1e-5     # per-stream RMSNorm removes per-stream scales


def test_mtp_zero_pos0_option(v4):
    """vLLM zeroes the MTP embedding of the first row (its position 0, our 1); the release does not (default)."""
    _, model, _, tr = v4
    model.mtp_zero_pos0 = True
    try:
        _, z = model.mtp_forward(0, prompt()[1:], tr["hidden"][:-1], model.new_mtp_cache(), np.arange(1, T))
    finally:
        model.mtp_zero_pos0 = False
    assert max_rel(z[0], tr["mtp.0.logits"][0]) > 100 * TOL
    assert max_rel(z[model.config.sliding_window:], tr["mtp.0.logits"][model.config.sliding_window:]) <= 1e-6


def test_greedy_lossless(v4):
    _, model, _, _ = v4
    accepted = 0
    for i, p in enumerate([prompt(5, 7), prompt(18, 8)]):
        base = generate(model, p, 12).token_ids
        forced = ForcedDrafts(model, p + base, 0.8, salt=i)
        for k, mode in ((1, "chain"), (3, "recursive")):
            assert generate(model, p, 12, k, mode).token_ids == base, (p, k, mode)
            assert generate(model, p, 12, k, mode, rollback="redecode").token_ids == base, (p, k, mode)
            res = generate(forced, p, 12, k, mode)
            assert res.token_ids == base, (p, k, mode)
            accepted += res.stats["accepted_length_histogram"][-1]
    assert accepted > 0


def test_rollback_in_drafting_leaves_the_caches_of_plain_decoding(v4):
    _, model, _, _ = v4
    p = prompt(14, 9)
    base = generate(model, p, 20).token_ids
    dec = SpeculativeDecoder(ForcedDrafts(model, p + base, 0.6, salt=7), 3, "recursive")
    dec.prefill(p)
    hist = np.zeros(4, int)
    while len(dec.generated) < 16:
        hist[dec.step().accepted] += 1
        fresh = model.new_cache()
        model.forward(np.asarray(dec.tokens), fresh)
        for got, want in zip(dec.cache.layers, fresh.layers, strict=True):
            assert got.length == want.length and got.n_entries == want.n_entries
            for name in want.names():
                np.testing.assert_allclose(got.view(name), want.view(name), rtol=1e-4, atol=1e-5, err_msg=name)
    assert dec.generated[:16] == base[:16]
    assert hist[:-1].sum() > 0 and hist[1:].sum() > 0, hist


def test_cli_trace_and_generate(v4, hf_ref, tmp_path, capsys):
    from mtp_ref.safetensors_io import read_header, read_tensor

    d, _, _, _ = v4
    ids = prompt()
    out = tmp_path / "trace.safetensors"
    assert main(["trace", "--model", str(d), "--prompt-ids", ",".join(map(str, ids)), "--out", str(out)]) == 0
    capsys.readouterr()
    hdr = read_header(out)
    assert max_rel(read_tensor(hdr["logits"]), hf_ref[1][0].numpy()) <= TOL
    assert read_tensor(hdr["hidden"]).shape == (T, 4, 64) and "mtp.0.logits" in hdr and "mtp.1.logits" not in hdr
    runs = []
    for extra in ([], ["--draft", "1", "--mode", "chain"], ["--draft", "3", "--mode", "recursive"]):
        assert main(["generate", "--model", str(d), "--prompt-ids", ",".join(map(str, ids[:9])),
                     "--max-new-tokens", "6", "--json"] + extra) == 0
        runs.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 6


# --------------------------------------------------------------------------------------------------
# inspect, bad input, the CUDA backend
# --------------------------------------------------------------------------------------------------


def test_inspect(v4, capsys):
    d, _, _, _ = v4
    assert main(["inspect", str(d), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["family"] == "deepseek_v4" and s["mtp_declared"] == 1 and s["mtp_present"] == 1
    assert s["mtp_modules"][0]["prefix"] == "mtp.0." and s["unused_tensors"] == [] and not s["warnings"]
    assert s["layers"] == 4 and s["routed_experts"] == 8


def test_declared_but_absent(tmp_path, capsys):
    """The released config (num_nextn_predict_layers 1) over weights that hold no mtp.* tensor."""
    d = bv.write_v4(tmp_path / "nomtp", mtp=False)
    assert main(["inspect", str(d), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["mtp_declared"] == 1 and s["mtp_present"] == 0 and len(s["warnings"]) == 1
    assert "num_nextn_predict_layers=1" in s["warnings"][0] and "'mtp.0.*'" in s["warnings"][0]
    model = load_model(d)
    with pytest.raises(MtpRefError, match="num_nextn_predict_layers=1"):
        generate(model, [1, 2, 3], 2, draft_depth=1)
    assert main(["generate", "--model", str(d), "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--draft", "1"]) == 2
    assert "num_nextn_predict_layers=1" in capsys.readouterr().err


@pytest.mark.parametrize("key,value,match", [("compress_ratios", [4, 128], "compress_ratios"),
                                             ("num_key_value_heads", 2, "num_key_value_heads"),
                                             ("scoring_func", "tanh", "scoring_func"),
                                             ("o_groups", 3, "o_groups")])
def test_bad_configs_are_refused(v4, key, value, match, tmp_path, capsys):
    import shutil

    d0, _, _, _ = v4
    d = tmp_path / "ckpt"
    shutil.copytree(d0, d)
    raw = json.loads((d / "config.json").read_text())
    raw[key] = value
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MtpRefError, match=match):
        load_model(d)
    assert main(["generate", "--model", str(d), "--prompt-ids", "1,2", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0]


def test_missing_tensor_is_named(v4, tmp_path):
    d0, _, _, _ = v4
    c = bv.v4_config()
    t = bv.v4_tensors(c)
    del t["layers.2.attn.indexer.weights_proj.weight"]
    d = bv.write_v4(tmp_path / "broken", tensors=t)
    with pytest.raises(MtpRefError, match=r"layers\.2\.attn\.indexer\.weights_proj\.weight"):
        load_model(d)


def test_cuda_backend_refuses(v4):
    backend = pytest.importorskip("kernels_cuda.backend")
    _, model, _, _ = v4
    with pytest.raises(MtpRefError, match="CUDA backend does not implement"):
        backend._check_supported(model.spec, model.config)


# --------------------------------------------------------------------------------------------------
# naive twins
# --------------------------------------------------------------------------------------------------


def test_pool_windows_twin():
    rng = np.random.default_rng(3)
    for overlap, m, d in ((False, 8, 6), (True, 4, 5)):
        w = 2 if overlap else 1
        kv, gate = rng.standard_normal((5 * m + 2, w * d)), rng.standard_normal((5 * m + 2, w * d))
        ape = rng.standard_normal((m, w * d))
        kv, gate, ape = (a.astype(np.float32) for a in (kv, gate, ape))
        naive = np.stack([ops_v4.pool_window_naive(kv, gate, ape, m, i, overlap) for i in range(5)])
        np.testing.assert_allclose(ops_v4.pool_windows(kv, gate, ape, m, 0, 5, overlap), naive, atol=1e-5)
        np.testing.assert_allclose(ops_v4.pool_windows(kv, gate, ape, m, 2, 3, overlap), naive[2:], atol=1e-5)
        if overlap:  # window w-1 really takes part
            assert np.abs(naive[1] - ops_v4.pool_window_naive(kv, gate, ape, m, 1, False)[:d]).max() > 1e-3


def test_attention_twin_and_engine_forms(v4, hf_ref):
    rng = np.random.default_rng(4)
    n, h, D, Tc = 5, 3, 8, 4
    q, kv, comp = (rng.standard_normal(s).astype(np.float32) for s in ((n, h, D), (12, D), (Tc, D)))
    vis, rows, sinks = rng.random((n, Tc)) < 0.5, np.arange(7, 12), rng.standard_normal(h).astype(np.float32)
    np.testing.assert_allclose(ops_v4.v4_attention(q, kv, comp, vis, rows, 4, sinks, 0.3),
                               ops_v4.v4_attention_naive(q, kv, comp, vis, rows, 4, sinks, 0.3), atol=1e-5)
    _, model, _, _ = v4
    model.attn_impl = "naive"
    try:
        logits = model.forward(np.asarray(prompt()), model.new_cache())[1]
    finally:
        model.attn_impl = "vectorised"
    assert max_rel(logits, hf_ref[1][0].numpy()) <= TOL


def test_sinkhorn_is_doubly_stochastic():
    """The last pass normalises columns exactly; 20 passes leave the rows within 1e-2 of 1 (not converged for
    peaked logits: the definition, not a bug; transformers and the reference stop at hc_sinkhorn_iters too)."""
    c = ops_v4.sinkhorn(np.random.default_rng(5).standard_normal((3, 4, 4)).astype(np.float32) * 3, 20, 1e-6)
    np.testing.assert_allclose(c.sum(-2), 1, atol=1e-5)
    np.testing.assert_allclose(c.sum(-1), 1, atol=1e-2)
    assert np.abs(ops_v4.sinkhorn(np.zeros((4, 4), np.float32), 20, 1e-6) - 0.25).max() < 1e-5


# --------------------------------------------------------------------------------------------------
# The released FP8 linears and MXFP4 experts
# --------------------------------------------------------------------------------------------------

QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
         "weight_block_size": [32, 32]}   # the release's is [128, 128]: 32 gives several blocks at these dims


@pytest.fixture(scope="module")
def v4_quant(tmp_path_factory):
    """(FP8/FP4 dir, its engine model, the dequantised bf16 dir, transformers on that dir, quantised tensors).
    The dequantisation oracle is transformers' own Fp8Dequantize (its FP8 and expert_dtype "fp4" path; its
    from_pretrained of an FP8 checkpoint needs an accelerator, so it is applied to the tensors directly); the
    dequantised values are exact in bf16 (e4m3 / e2m1 times a power of two)."""
    c = bv.v4_config(quantization_config=QUANT, expert_dtype="fp4")
    q, d = bv.quantized_v4(bv.v4_tensors(c, seed=5), 32)
    qdir = bv.write_v4(tmp_path_factory.mktemp("v4q"), tensors=q, quantization_config=QUANT, expert_dtype="fp4")
    ddir = bv.write_v4(tmp_path_factory.mktemp("v4d"), tensors=d)
    return qdir, load_model(qdir), ddir, bv.hf_model(ddir), q, d


def test_fp8_fp4_dequantised_as_transformers(v4_quant):
    qdir, model, _, _, q, d = v4_quant
    scaled = [n[: -len(".scale")] + ".weight" for n in q if n.endswith(".scale")]
    assert {str(q[n].dtype) for n in scaled} == {"torch.float8_e4m3fn", "torch.int8"}
    assert "mtp.0.ffn.experts.0.w2.weight" in scaled and "mtp.0.e_proj.weight" in scaled
    assert q["layers.0.attn.wq_b.scale"].shape == (4, 1) and q["layers.0.ffn.experts.1.w1.scale"].shape == (32, 2)
    for n in scaled:
        np.testing.assert_array_equal(model.ckpt.get(n), d[n].float().numpy(), err_msg=n)
    assert tuple(model.ckpt.logical_shape("layers.0.ffn.experts.1.w1.weight")) == (32, 64)


def test_fp8_fp4_logits(v4_quant, record_error):
    qdir, model, ddir, hf, _, _ = v4_quant
    ids = prompt(seed=11)
    tr = build_trace(model, ids, intermediates=False)
    S, ref = bv.hf_streams(hf, torch.tensor([ids]))
    err = max_rel(tr["logits"], ref[0].numpy())
    _, mtp = bv.MtpOracle(hf, ddir, 0)(torch.tensor([ids[1:]]), S[:, :-1], torch.arange(1, T)[None])
    err_mtp = max_rel(tr["mtp.0.logits"], mtp[0].numpy())
    record_error("deepseek_v4-fp8/fp4 main", err)
    record_error("deepseek_v4-fp8/fp4 mtp depth 0", err_mtp)
    assert err <= TOL and err_mtp <= TOL


def test_fp8_inspect_and_bad_scale(v4_quant, tmp_path, capsys):
    qdir, _, _, _, q, _ = v4_quant
    assert main(["inspect", str(qdir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["fp8_block"] and s["unused_tensors"] == [] and s["mtp_present"] == 1
    assert {"F8_E4M3", "I8", "U8"} <= set(s["dtypes"]) and s["bits_per_weight"]["trunk"] < 16
    bad = dict(q)
    bad["layers.1.ffn.experts.2.w3.scale"] = bad["layers.1.ffn.experts.2.w3.scale"][:, :1].contiguous()
    d = bv.write_v4(tmp_path / "badscale", tensors=bad, quantization_config=QUANT, expert_dtype="fp4")
    with pytest.raises(MtpRefError, match=r"layers\.1\.ffn\.experts\.2\.w3\.scale' has shape \[32, 1\]"):
        load_model(d).ckpt.get("layers.1.ffn.experts.2.w3.weight")


def test_inspect_from_the_index_alone(v4_quant, tmp_path, capsys):
    """What a porter runs before downloading the release: config.json + the index (MTP in its own last shard, as
    DeepSeek ships it); then the same index with the mtp.* entries dropped (a conversion that lost them)."""
    from builders import write_safetensors

    _, _, _, _, q, _ = v4_quant
    d = tmp_path / "idx"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(bv.v4_config(quantization_config=QUANT, expert_dtype="fp4")))
    write_safetensors(d, q, num_shards=3, last_shard_keys=[k for k in q if k.startswith("mtp.")])
    index = json.loads((d / "model.safetensors.index.json").read_text())
    (d / "model-00001-of-00003.safetensors").unlink()
    assert main(["inspect", str(d), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "safetensors-index" and s["missing_shards"] == ["model-00001-of-00003.safetensors"]
    assert s["mtp_present"] == 1 and not s["warnings"] and s["unused_tensors"] == [] and s["parameters"] is None
    assert s["mtp_modules"][0]["bytes"] > 0 and s["bits_per_weight"]["mtp"] < 16
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("mtp.")}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["inspect", str(d), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["mtp_present"] == 0 and len(s["warnings"]) == 1 and "num_nextn_predict_layers=1" in s["warnings"][0]


def test_scales_stored_as_f8_e8m0(v4_quant, tmp_path, monkeypatch):
    """The release stores `.scale` as F8_E8M0 (torch.float8_e8m0fnu), a dtype mtp_ref.safetensors_io does not list
    yet: registered here as one byte (what `_STORAGE["F8_E8M0"] = np.dtype("u1")` would do there), the same bytes
    decode to the same weights as the U8 copy."""
    from mtp_ref import safetensors_io

    monkeypatch.setitem(safetensors_io._STORAGE, "F8_E8M0", np.dtype("u1"))
    _, model, _, _, q, _ = v4_quant
    e8 = {k: (v.view(torch.float8_e8m0fnu) if k.endswith(".scale") else v) for k, v in q.items()}
    d = bv.write_v4(tmp_path / "e8m0", tensors=e8, quantization_config=QUANT, expert_dtype="fp4")
    m = load_model(d)
    assert m.ckpt.dtype("layers.0.attn.wq_a.scale") == "F8_E8M0"
    for n in ("layers.0.attn.wq_a.weight", "layers.3.ffn.experts.5.w2.weight", "mtp.0.h_proj.weight"):
        np.testing.assert_array_equal(m.ckpt.get(n), model.ckpt.get(n), err_msg=n)


# deepseek-ai/DeepSeek-V4-Flash config.json (its keys and values as published; compress_ratios: 43 layers + the MTP
# block's 0)
OFFICIAL_V4_FLASH = {
    "architectures": ["DeepseekV4ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 0,
    "eos_token_id": 1, "expert_dtype": "fp4", "hc_eps": 1e-06, "hc_mult": 4, "hc_sinkhorn_iters": 20, "head_dim": 512,
    "hidden_act": "silu", "hidden_size": 4096, "index_head_dim": 128, "index_n_heads": 64, "index_topk": 512,
    "initializer_range": 0.02, "max_position_embeddings": 1048576, "model_type": "deepseek_v4",
    "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 64, "num_experts_per_tok": 6, "num_hidden_layers": 43, "num_hash_layers": 3,
    "num_key_value_heads": 1, "num_nextn_predict_layers": 1, "o_groups": 8, "o_lora_rank": 1024, "q_lora_rank": 1024,
    "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 65536,
                     "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus", "sliding_window": 128,
    "swiglu_limit": 10.0, "tie_word_embeddings": False, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 129280, "compress_rope_theta": 160000,
    "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0]}


def test_official_config():
    """The release's config.json: 2 sliding-only layers, 21 CSA, 20 HCA; hash routing on layers 0-2; the MTP block
    sliding-only with learned routing. Its MTP module then has 797 tensors, plus a `.scale` for each of the 768
    MXFP4 experts and the 10 FP8 linears (wq_a, wq_b, wkv, wo_a, wo_b, shared w1-w3, e_proj, h_proj): 1,575, the
    count a public listing of the release's last shard reports for `mtp.0.*`."""
    cfg = ops_v4.config_from_raw(OFFICIAL_V4_FLASH)
    assert cfg.layer_types.count("sliding_attention") == 2 and cfg.layer_types[:4] == [
        "sliding_attention", "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
    assert cfg.layer_types.count("compressed_sparse_attention") == 21 and cfg.compress_rates == {"csa": 4, "hca": 128}
    assert [cfg.is_hash(i) for i in (0, 2, 3, 43)] == [True, True, False, False] and cfg.ratio(43) == 0
    mtp = ops_v4.mtp_tensors(cfg, 0)
    assert "mtp.0.ffn.gate.bias" in mtp and "mtp.0.attn.compressor.wkv.weight" not in mtp
    assert mtp["mtp.0.attn.wo_a.weight"] == (8192, 4096) and mtp["mtp.0.hc_attn_fn"] == (24, 16384)
    fp8 = [n for n in mtp if n.endswith(bv.FP8_NAMES) or ".ffn.experts." in n]
    assert len(mtp) == 797 and len(mtp) + len(fp8) == 1575
    t = ops_v4.block_tensors(cfg, 2)
    assert "ffn.gate.tid2eid" in t and t["attn.indexer.compressor.ape"] == (4, 256)
    assert ops_v4.block_tensors(cfg, 3)["attn.compressor.ape"] == (128, 512)
    inv, att = ops_v4.rope_inv_freq_v4(cfg, "compress")
    assert att == 1.0 and inv.shape == (32,) and inv[-1] < 160000.0 ** (-62 / 64)   # YaRN slows the low band
