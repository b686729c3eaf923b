"""GLM-4.7-Flash (glm4_moe_lite), DeepSeek-V3.2 (deepseek_v32), GLM-5 (glm_moe_dsa) and MiniMax-M2 (minimax_m2)
against transformers 5.23 on tiny random checkpoints in their released layouts (tests/builders_dsa.py).

* main logits and every MTP depth (teacher forced, builders.Oracle.mtp_logits' convention) within
  max|a-b|/max|b| <= 1e-4; the files load in transformers' own from_pretrained / MtpModel.from_pretrained;
* DSA: index_topk (4) is smaller than the prompt (12), so the sparse selection changes the logits far beyond
  the tolerance (dense MLA, the naive twin, is then wrong), and equals dense MLA once index_topk >= the length;
  the gathered, masked and naive forms of the indexer maths agree;
* greedy drafting is token-identical to plain decoding; after every partially accepted round the caches
  (c_kv, k_pe and the indexer keys idx_k) equal a run that never drafted;
* inspect, including MiniMax-M2's declared-but-absent MTP (use_mtp + num_mtp_modules, no mtp.* tensors).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import builders
import builders_dsa as bd
from mtp_ref import SpeculativeDecoder, generate, load_model, ops_dsa
from mtp_ref.cli import main
from mtp_ref.errors import MtpRefError
from mtp_ref.trace import build_trace
from test_speculative import ForcedDrafts, _fresh_module_rows

TOL = 1e-4
T = 12
VARIANTS = list(bd.VARIANTS)
MTP_CASES = [("glm4_moe_lite", 0), ("glm4_moe_lite", 1), ("deepseek_v32", 0), ("deepseek_v32", 1), ("glm_moe_dsa", 0),
             ("deepseek_v32-fp8", 0)]
DSA = ["deepseek_v32", "glm_moe_dsa"]
PROMPTS = [[5, 9, 2], [17, 3, 99, 12, 7, 7, 7, 31, 8, 2, 64, 90, 11, 4]]


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def prompt(seed: int = 1234) -> list[int]:
    return np.random.default_rng(seed).integers(0, 320, T).tolist()


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """variant -> (oracle, engine model, engine trace of prompt()); built once per module."""
    built: dict = {}

    def get(variant: str):
        if variant not in built:
            oracle = bd.build(variant, tmp_path_factory.mktemp(variant))
            model = load_model(oracle.path)
            built[variant] = (oracle, model, build_trace(model, prompt()))
        return built[variant]

    return get


# --------------------------------------------------------------------------------------------------
# The files, in transformers' own loaders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.endswith("fp8")])
def test_checkpoint_loads_in_transformers(variant, fam):
    """(FP8 variants: transformers 5.23's FP8 loader mis-sizes partial 128-blocks, mtp_families.md 9.3; their
    files are checked in test_released_tensor_names and through the engine's logits.)"""
    from transformers.modeling_layers import MtpModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    oracle, _, _ = fam(variant)
    ids = prompt()
    loaded = type(oracle.model).from_pretrained(str(oracle.path), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        err = max_rel(loaded.eval()(torch.tensor([ids])).logits[0].numpy(), oracle.logits(ids))
    assert err <= 1e-6, err
    if oracle.mtp is None:
        return
    L = loaded.config.num_hidden_layers  # transformers 5.23 hard-codes the released index (47 / 61 / 78)
    loaded._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{L + j}\..*" for j in range(oracle.num_mtp)]
    bd.patch_mtp_config(loaded.config, oracle.num_mtp)
    mtp = MtpModel.from_pretrained(loaded).eval()
    mtp.config._attn_implementation = "eager"
    bd.patch_mtp_model(mtp)
    again = builders.Oracle(oracle.family, oracle.path, loaded, mtp, oracle.num_mtp)
    for a, b in zip(again.mtp_logits(ids), oracle.mtp_logits(ids), strict=True):
        assert max_rel(a, b) <= 1e-6


def test_released_tensor_names(fam):
    """The names vLLM / SGLang / llama.cpp load: the indexer in every full block and the MTP block, none in
    GLM-5's shared layer; MiniMax-M2's block_sparse_moe.* and no mtp.*."""
    names = set(fam("deepseek_v32")[0].tensor_names)
    for i in (0, 1, 2, 3):  # trunk layers 0-1, MTP modules at 2-3
        assert f"model.layers.{i}.self_attn.indexer.k_norm.bias" in names
        assert f"model.layers.{i}.self_attn.indexer.weights_proj.weight" in names
    assert "model.layers.2.eh_proj.weight" in names and "model.layers.3.shared_head.head.weight" in names
    names = set(fam("glm_moe_dsa")[0].tensor_names)
    assert [i for i in range(4) if f"model.layers.{i}.self_attn.indexer.wk.weight" in names] == [0, 1, 3]
    names = set(fam("minimax_m2")[0].tensor_names)
    assert "model.layers.1.block_sparse_moe.experts.7.w2.weight" in names
    assert "model.layers.0.block_sparse_moe.e_score_correction_bias" in names
    assert not any(n.startswith("mtp") or ".mlp." in n for n in names)
    names = set(fam("glm4_moe_lite")[0].tensor_names)
    assert "model.layers.3.enorm.weight" in names and not any("indexer" in n for n in names)


@pytest.mark.parametrize("variant", ["deepseek_v32-fp8", "minimax_m2-fp8"])
def test_fp8_files(variant, fam):
    """The FP8 releases: e4m3 linears with float32 `weight_scale_inv` [ceil(M/128), ceil(N/128)]; the indexer's
    weights_proj, routers, correction biases, norms, embeddings and heads stay unquantised."""
    from mtp_ref.weights import Checkpoint

    oracle, model, _ = fam(variant)
    ck = Checkpoint(oracle.path)  # the file names, before any rename
    fp8 = {n for n in ck.names() if ck.dtype(n) == "F8_E4M3"}
    assert fp8 and all(ck.dtype(n + "_scale_inv") == "F32" for n in fp8)
    assert all(tuple(ck.shape(n + "_scale_inv")) == tuple(-(-d // 128) for d in ck.shape(n)) for n in fp8)
    if variant.startswith("deepseek"):
        assert {"model.layers.0.self_attn.indexer.wq_b.weight", "model.layers.2.self_attn.indexer.wk.weight",
                "model.layers.1.mlp.experts.0.up_proj.weight"} <= fp8
        assert ck.dtype("model.layers.2.self_attn.indexer.weights_proj.weight") == "BF16"
    else:
        assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in fp8
        assert ck.dtype("model.layers.0.block_sparse_moe.gate.weight") == "BF16"
    assert not any(n.endswith(("norm.weight", "norm.bias", "gate.weight", "correction_bias", "embed_tokens.weight",
                               "lm_head.weight", "head.weight", "eh_proj.weight")) for n in fp8)
    assert model.config.quantization_config["quant_method"] == "fp8"


# --------------------------------------------------------------------------------------------------
# Engine vs transformers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_main_logits(variant, fam, record_error):
    oracle, model, tr = fam(variant)
    err = max_rel(tr["logits"], oracle.logits(prompt()))
    record_error(f"{variant} main", err)
    assert err <= TOL
    assert model.config.num_mtp_modules == oracle.num_mtp


@pytest.mark.parametrize("variant,depth", MTP_CASES, ids=[f"{v}-depth{d}" for v, d in MTP_CASES])
def test_mtp_logits(variant, depth, fam, record_error):
    oracle, model, tr = fam(variant)
    want = oracle.mtp_logits(prompt())[depth]
    err = max_rel(tr[f"mtp.{depth}.logits"], want)
    record_error(f"{variant} mtp depth {depth}", err)
    assert tr[f"mtp.{depth}.logits"].shape == (T - 1 - depth, oracle.vocab_size)
    assert err <= TOL


@pytest.mark.parametrize("variant", DSA)
def test_sparse_selection_matters_and_dense_is_its_twin(variant, fam):
    """index_topk 4 < 12 tokens: dense MLA (llama.cpp's V3.2 MTP layer) misses the oracle by far; the masked
    form equals the gathered one; absorbed and naive MLA agree; with index_topk >= T, dense == sparse."""
    oracle, model, tr = fam(variant)
    ids = prompt()
    ref, ref_mtp = oracle.logits(ids), oracle.mtp_logits(ids)[0]
    try:
        model.dsa_impl = "dense"
        dense = build_trace(model, ids, intermediates=False)
        assert max_rel(dense["logits"], ref) > 100 * TOL and max_rel(dense["mtp.0.logits"], ref_mtp) > 100 * TOL
        model.dsa_impl, model.attn_impl = "masked", "naive"
        masked = build_trace(model, ids, intermediates=False)
        assert max_rel(masked["logits"], tr["logits"]) < 1e-5
        assert max_rel(masked["mtp.0.logits"], tr["mtp.0.logits"]) < 1e-5
        model.dsa_impl, model.attn_impl = "sparse", "absorbed"
        model.dsa = dataclasses.replace(model.dsa, index_topk=T)
        wide = build_trace(model, ids, intermediates=False)
        for k in ("logits", "mtp.0.logits"):
            assert max_rel(wide[k], dense[k]) < 1e-5
    finally:
        model.dsa_impl, model.attn_impl = "sparse", "absorbed"
        model.dsa = ops_dsa.dsa_config(model.config)


def test_indexer_forms_agree():
    """index_scores / select_topk / gathered_attention against their naive twins, for a prefill (start 0,
    fewer visible tokens than k in the first rows) and a 3-token verify window over a cache of 10."""
    rng = np.random.default_rng(0)
    for n, T_, topk in ((9, 9, 4), (3, 13, 5), (2, 6, 8)):
        start = T_ - n
        q, k, w = rng.standard_normal((n, 8, 16)), rng.standard_normal((T_, 16)), rng.standard_normal((n, 8))
        s = ops_dsa.index_scores(q.astype(np.float32), k.astype(np.float32), w.astype(np.float32))
        np.testing.assert_allclose(s, ops_dsa.index_scores_naive(q, k, w), rtol=1e-5, atol=1e-5)
        idx, valid = ops_dsa.select_topk(s, start, topk)
        got = [set(idx[i][valid[i]].tolist()) for i in range(n)]
        assert got == ops_dsa.select_topk_naive(s, start, topk)
        assert all(len(g) == min(topk, start + i + 1) for i, g in enumerate(got))
        qa, ka, va = rng.standard_normal((n, 4, 6)), rng.standard_normal((T_, 2, 6)), rng.standard_normal((T_, 2, 5))
        keep = ops_dsa.keep_mask(idx, valid, T_)
        a = ops_dsa.gathered_attention(qa, ka, va, 0.3, idx, valid)
        np.testing.assert_allclose(a, ops_dsa.masked_attention(qa, ka, va, 0.3, keep), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(a, ops_dsa.gathered_attention(qa, ka, va, 0.3, idx, valid, rows_per_block=2))
        for i in range(n):  # one query by hand: softmax over its selected keys only
            for h in range(4):
                sel = sorted(got[i])
                sc = ka[sel, h // 2] @ qa[i, h] * 0.3
                p = np.exp(sc - sc.max())
                np.testing.assert_allclose(a[i, h * 5:(h + 1) * 5], p @ va[sel, h // 2] / p.sum(), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Decoding: lossless, rollback
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["glm4_moe_lite", "deepseek_v32", "glm_moe_dsa"])
def test_greedy_lossless(variant, fam):
    _, model, _ = fam(variant)
    n_mod = model.config.num_mtp_modules
    accepted = 0
    for i, p in enumerate(PROMPTS):
        base = generate(model, p, 14).token_ids
        forced = ForcedDrafts(model, p + base, 0.8, salt=i)
        for k, mode in sorted({(n_mod, "chain"), (3, "recursive")}):
            assert generate(model, p, 14, k, mode).token_ids == base, (p, k, mode)
            res = generate(forced, p, 14, k, mode)
            assert res.token_ids == base, (p, k, mode)
            accepted += res.stats["accepted_length_histogram"][-1]
    assert accepted > 0


@pytest.mark.parametrize("variant,mode", [("deepseek_v32", "chain"), ("glm_moe_dsa", "recursive"),
                                          ("glm4_moe_lite", "recursive")])
def test_rollback_leaves_the_caches_of_plain_decoding(variant, mode, fam):
    """Partial acceptance: after every round the main cache (incl. the indexer keys) and the MTP caches equal
    a run over the committed tokens only; prompts longer than index_topk so the selection is live."""
    _, model, _ = fam(variant)
    k = model.config.num_mtp_modules if mode == "chain" else 3
    p = PROMPTS[1]
    base = generate(model, p, 24).token_ids
    dec = SpeculativeDecoder(ForcedDrafts(model, p + base, 0.6, salt=7), k, mode)
    dec.prefill(p)
    hist = np.zeros(k + 1, int)
    while len(dec.generated) < 18:
        hist[dec.step().accepted] += 1
        fresh = model.new_cache()
        h, _ = model.forward(np.asarray(dec.tokens), fresh)
        for got, want in zip(dec.cache.snapshot(), fresh.snapshot(), strict=True):
            assert sorted(got) == sorted(want)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
        rows = [c.length for c in dec.mtp_caches]
        for got, want in zip(dec.mtp_caches, _fresh_module_rows(model, dec.tokens + [dec.pending], h,
                                                                len(rows) - 1, rows)):
            for name in want.names():
                np.testing.assert_allclose(got.view(name), want.view(name), rtol=1e-4, atol=1e-5, err_msg=name)
    assert dec.generated[:18] == base[:18]
    assert hist[:-1].sum() > 0 and hist[1:].sum() > 0, hist
    if model.spec.indexer:
        assert "idx_k" in dec.cache.snapshot()[0] and "idx_k" in dec.mtp_caches[0].names()


def _recursive_draft_logits(model, p: list[int], k: int) -> np.ndarray:
    """The k greedy draft logits [k, V] of the first recursive round after prefilling p."""
    dec = SpeculativeDecoder(model, k, "recursive")
    dec.prefill(p)
    ext, out = dec.tokens + [dec.pending], []
    for j in range(k):
        out.append(dec.drafter.logits(dec, j, ext))
        ext = ext + [int(np.argmax(out[-1]))]
    return np.stack(out)


def test_index_share_for_mtp_iteration(fam):
    """GLM-5.x index_share_for_mtp_iteration: recursive draft steps >= 1 skip the MTP indexer and attend to
    step 0's last-row top-k (vLLM llm_base_proposer). The default follows config.json; with index_topk 4 <
    the 14-token prompt step 0 is unchanged and later steps' drafts move (rel. change > 1e-3); the masked twin
    agrees (1e-5); greedy output equals plain decoding either way, and rollback leaves the MTP cache of a run
    that never drafted."""
    _, model, _ = fam("glm_moe_dsa")
    assert "index_share_for_mtp_iteration" not in model.config.raw and model.mtp_index_share is False
    for flag in (True, False):
        raw = dict(model.config.raw, index_share_for_mtp_iteration=flag)
        assert ops_dsa.dsa_config(dataclasses.replace(model.config, raw=raw)).mtp_index_share is flag
    with pytest.raises(MtpRefError, match="index_share_for_mtp_iteration"):
        ops_dsa.dsa_config(dataclasses.replace(model.config, raw=dict(model.config.raw,
                                                                       index_share_for_mtp_iteration="yes")))
    p, k = PROMPTS[1], 3
    base = generate(model, p, 14).token_ids
    try:
        off = _recursive_draft_logits(model, p, k)
        model.mtp_index_share = True
        on = _recursive_draft_logits(model, p, k)
        np.testing.assert_array_equal(on[0], off[0])
        assert all(max_rel(on[j], off[j]) > 1e-3 for j in range(1, k)), [max_rel(on[j], off[j]) for j in range(k)]
        model.dsa_impl = "masked"
        assert max_rel(_recursive_draft_logits(model, p, k), on) < 1e-5
        model.dsa_impl = "sparse"
        for share in (True, False):
            model.mtp_index_share = share
            assert generate(model, p, 14, k, "recursive").token_ids == base, share
        model.mtp_index_share = True
        dec = SpeculativeDecoder(model, k, "recursive")
        dec.prefill(p)
        while len(dec.generated) < 10:
            dec.step()
            h, _ = model.forward(np.asarray(dec.tokens), model.new_cache())
            want = _fresh_module_rows(model, dec.tokens + [dec.pending], h, 0, [dec.mtp_caches[0].length])[0]
            for name in want.names():
                np.testing.assert_allclose(dec.mtp_caches[0].view(name), want.view(name), rtol=1e-4, atol=1e-5,
                                           err_msg=name)
    finally:
        model.mtp_index_share, model.dsa_impl = False, "sparse"


# --------------------------------------------------------------------------------------------------
# Tools: trace, generate, inspect
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["deepseek_v32", "glm4_moe_lite"])
def test_cli_trace_and_generate(variant, fam, tmp_path, capsys):
    from mtp_ref.safetensors_io import read_header, read_tensor

    oracle, _, _ = fam(variant)
    ids = prompt()
    out = tmp_path / "trace.safetensors"
    assert main(["trace", "--model", str(oracle.path), "--prompt-ids", ",".join(map(str, ids)), "--out", str(out)]) == 0
    capsys.readouterr()
    hdr = read_header(out)
    want = [("logits", oracle.logits(ids))] + [(f"mtp.{d}.logits", r) for d, r in enumerate(oracle.mtp_logits(ids))]
    assert len(want) == 3
    for key, ref in want:
        assert max_rel(read_tensor(hdr[key]), ref) <= TOL, key
    runs = []
    for extra in ([], ["--draft", "2", "--mode", "chain"], ["--draft", "3", "--mode", "recursive"]):
        assert main(["generate", "--model", str(oracle.path), "--prompt-ids", ",".join(map(str, ids)),
                     "--max-new-tokens", "8", "--json"] + extra) == 0
        runs.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 8



@pytest.mark.parametrize("variant", VARIANTS)
def test_inspect(variant, fam, capsys):
    oracle, model, _ = fam(variant)
    assert main(["inspect", str(oracle.path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    family = variant.split("-")[0]
    assert s["family"] == family and s["mtp_present"] == oracle.num_mtp and s["unused_tensors"] == []
    assert s["attention"] == ("gqa" if family == "minimax_m2" else "mla")
    assert s["fp8_block"] == variant.endswith("fp8")
    if family != "minimax_m2":
        assert not s["warnings"] and s["mtp_declared"] == oracle.num_mtp
        assert s["mtp_modules"][0]["prefix"] == f"model.layers.{model.config.num_hidden_layers}."
        return
    # MiniMax-M2: the release config declares three modules, the weights hold none: say so, refuse to draft
    assert s["mtp_declared"] == 3 and s["mtp_present"] == 0 and s["moe_layers"] == 2
    assert len(s["warnings"]) == 1 and "use_mtp=true, num_mtp_modules=3" in s["warnings"][0]
    with pytest.raises(MtpRefError, match="use_mtp=true, num_mtp_modules=3"):
        generate(model, [1, 2, 3], 4, draft_depth=1)
    assert main(["generate", "--model", str(oracle.path), "--prompt-ids", "1,2,3", "--max-new-tokens", "3",
                 "--draft", "1"]) == 2
    assert "use_mtp=true, num_mtp_modules=3" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Spec fields that the tolerance sees, and configs the engine refuses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,field,value", [("deepseek_v32", "indexer", "interleaved"),
                                                 ("glm_moe_dsa", "indexer", "half"),
                                                 ("glm4_moe_lite", "rope_style", "half")])
def test_spec_fields_are_seen_by_the_tolerance(variant, field, value, fam):
    """V3.2's indexer RoPE is half-split, GLM-5's interleaved, GLM-4.7-Flash's MLA RoPE interleaved (transformers'
    rope_interleave default): the other choice misses the oracle by far."""
    oracle, model, _ = fam(variant)
    saved = model.spec
    try:
        model.spec = dataclasses.replace(saved, **{field: value})
        tr = build_trace(model, prompt(), intermediates=False)
    finally:
        model.spec = saved
    assert max_rel(tr["logits"], oracle.logits(prompt())) > 100 * TOL


@pytest.mark.parametrize("variant", ["glm4_moe_lite", "glm_moe_dsa"])
def test_latent_norm_eps(variant, fam):
    """GLM's rms_norm_eps is 1e-5, but transformers (and DeepSeek's reference) build the q_a / kv_a latent norms with
    eps 1e-6 (vLLM uses rms_norm_eps): a small effect, measured here against the engine's float32 noise."""
    oracle, model, tr = fam(variant)
    ref = oracle.logits(prompt())
    saved = model.spec
    try:
        model.spec = dataclasses.replace(saved, latent_norm_eps=None)
        vllm_like = max_rel(build_trace(model, prompt(), intermediates=False)["logits"], ref)
    finally:
        model.spec = saved
    assert max_rel(tr["logits"], ref) < 3e-6 < vllm_like


@pytest.mark.parametrize("variant,key,value,match", [
    ("glm_moe_dsa", "indexer_rope_interleave", False, "indexer_rope_interleave=False"),
    ("glm4_moe_lite", "rope_interleave", False, "rope_interleave=False"),
    ("deepseek_v32", "index_n_heads", None, "index_n_heads"),
    ("glm_moe_dsa", "index_topk_pattern", "SFF", "indexer_types"),
    ("minimax_m2", "attn_type_list", [0, 1], "lightning"),
])
def test_bad_configs_are_refused(variant, key, value, match, fam, tmp_path, capsys):
    import shutil

    oracle, _, _ = fam(variant)
    d = tmp_path / "ckpt"
    shutil.copytree(oracle.path, d)
    raw = json.loads((d / "config.json").read_text())
    raw[key] = value
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MtpRefError, match=match):
        load_model(d)
    assert main(["generate", "--model", str(d), "--prompt-ids", "1,2", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0]


@pytest.mark.parametrize("variant", ["glm4_moe_lite", "deepseek_v32", "minimax_m2"])
def test_cuda_backend_refuses_what_it_lacks(variant, fam):
    """The CUDA backend has no indexer, no all-heads q/k norm and one eps for every norm: it must refuse these
    families rather than compute dense MLA / per-head norms silently."""
    backend = pytest.importorskip("kernels_cuda.backend")
    _, model, _ = fam(variant)
    with pytest.raises(MtpRefError, match="CUDA backend does not implement"):
        backend._check_supported(model.spec, model.config)


@pytest.mark.parametrize("variant", ["minimax_m2-fp8", "deepseek_v32-fp8"])
def test_inspect_from_the_index_alone(variant, fam, tmp_path, capsys):
    """What a porter runs before downloading 230 GB (MiniMax-M2) or 690 GB (V3.2): config.json + the index. The
    released names are mapped as the loader maps them (MiniMax's w1/w2/w3), FP8 scales are not 'unused'."""
    import shutil

    oracle, _, _ = fam(variant)
    for f in ("config.json", "model.safetensors.index.json"):
        shutil.copy(oracle.path / f, tmp_path / f)
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "safetensors-index" and s["unused_tensors"] == []
    if variant.startswith("minimax"):
        assert (s["mtp_declared"], s["mtp_present"]) == (3, 0) and len(s["warnings"]) == 1
        assert "use_mtp=true, num_mtp_modules=3" in s["warnings"][0]
    else:
        assert (s["mtp_declared"], s["mtp_present"]) == (1, 1) and not s["warnings"]
