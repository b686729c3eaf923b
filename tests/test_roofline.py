"""explainer/roofline.py: parameter counts through mtp_ref.families, memory needed, repeated timings.

Oracles, none of them mtp_ref's own tensor lists:
* the totals the model cards publish (a tolerance per row, with the difference measured when it was written);
* the numbers of the per-family formula chain that roofline.py used before it counted through
  mtp_ref.families (git ba2bdcc, explainer/roofline.py from_config), copied once as a golden record;
* element counts read straight from the safetensors headers (struct + json), for the bundled checkpoint
  and for tiny checkpoints that transformers wrote in the released layouts.
"""

from __future__ import annotations

import json
import math
import statistics
import struct
from pathlib import Path

import pytest

from explainer import roofline
from explainer.presets import HARDWARE, MODELS, PRECISIONS, Hardware, MixedRate
from mtp_ref import gemma4, load_model, ops_v4
from mtp_ref.families import FAMILIES, mtp_tensors

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "mtp_ref" / "checkpoints" / "mtp-tiny"


def header_numels(path: Path) -> dict[str, int]:
    """Elements per tensor, from the safetensors headers of a checkpoint directory (scales excluded)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__" and not name.endswith("_scale_inv"):
                out[name] = math.prod(info["shape"])
    return out


@pytest.fixture(scope="module")
def presets():
    return {name: roofline.from_config(name, c) for name, c in MODELS.items()}


# ------------------------------------------------------------------ published totals

def _mtp_unique(cm):  # DeepSeek's MTP file carries copies of the embedding and the head; its README excludes them
    return cm.mtp_params - 2 * cm.vocab * cm.hidden


# (preset, what, published value, relative tolerance, source); measured 2026-12-02 in the trailing comment
PUBLISHED = [
    ("DeepSeek-V3", lambda cm: cm.trunk_params(), 671e9, 0.005, "README: 671B main model"),          # +0.004%
    ("DeepSeek-V3", lambda cm: cm.total_params, 685e9, 0.005, "model card: 685B = 671B + 14B MTP"),  # -0.075%
    ("DeepSeek-V3", _mtp_unique, 11.5e9, 0.02, "README_WEIGHTS: MTP 11.5B unique params"),           # +0.96%
    ("DeepSeek-V3", lambda cm: cm.active_params(), 36.6e9, 0.005,
     "README_WEIGHTS: 36.6B activated incl. the 0.9B head"),                                          # +0.07%
    ("GLM-4.5-Air", lambda cm: cm.trunk_params(), 106e9, 0.01, "GLM-4.5 README: 106B total"),        # +0.80%
    ("Qwen3.6-27B", lambda cm: cm.trunk_params(), 27e9, 0.01, "model name: 27B"),                    # -0.39%
    ("Qwen3.6-27B", lambda cm: 2 * cm.mtp_params, 0.849e9, 0.001,
     "HF index dump: MTP 0.849 GB in bf16"),                                                         # +0.05%
    ("Gemma 4 31B", lambda cm: cm.trunk_params(), 30.7e9, 0.005, "model card: 30.7B"),               # -0.01%
    ("GLM-4.7-Flash", lambda cm: cm.trunk_params(), 30e9, 0.005, "model name: 30B-A3B"),             # -0.19%
    ("GLM-4.7-Flash", lambda cm: cm.total_params, 31e9, 0.02,
     "HF model page: 31B in the safetensors, MTP included (rounded to 1B)"),                         # +0.71%
    ("GLM-5", lambda cm: cm.trunk_params(), 744e9, 0.002, "transformers GlmMoeDsa doc: 744B"),        # -0.01%
    ("MiniMax-M2", lambda cm: cm.trunk_params(), 230e9, 0.01, "model card: 230B total"),              # -0.57%
    # V3.2's 685B is V3's 671B + 14B MTP plus the lightning indexers (62 blocks x 12.7M): trunk and MTP layer
    ("DeepSeek-V3.2", lambda cm: cm.total_params, 685e9, 0.001, "transformers doc: 685B backbone"),  # +0.052%
    # V4-Flash's 284B is the trunk (with the MTP module's 6.6B the count is 290.9B, +2.4%); the count holds
    # everything the engine reads, the 3 hash layers' tid2eid tables (2.3M integers) included
    ("DeepSeek-V4-Flash", lambda cm: cm.trunk_params(), 284e9, 0.002, "model card: 284B total"),     # +0.118%
    # active: the head and the non-expert weights (hyper-connection mixers, compressors, indexers, shared
    # experts) + 6 of 256 experts in all 43 layers (hash-routed layers pick 6 too), embedding row left out, as
    # V3's 36.6B counts; the card's 13B is rounded to 1B (+-3.8%), so the tolerance is that rounding's
    ("DeepSeek-V4-Flash", lambda cm: cm.active_params(), 13e9, 0.025,
     "model card: 13B active (rounded to 1B)"),                                                       # +2.10%
]


@pytest.mark.parametrize("name,get,published,tol,source", PUBLISHED, ids=[f"{p[0]}-{p[4][:24]}" for p in PUBLISHED])
def test_preset_counts_match_published(presets, name, get, published, tol, source):
    got = get(presets[name])
    assert abs(got / published - 1) <= tol, f"{name}: {got:.4g} vs {published:.4g} ({source})"


def test_qwen_mtp_is_fifteen_tensors():
    """The public dump of Qwen3.6-27B's index lists 15 MTP tensors (shared glue + one full-attention block)."""
    cfg, spec = roofline.preset_config("Qwen3.6-27B", MODELS["Qwen3.6-27B"])
    assert cfg.num_mtp_modules == 1
    assert len(mtp_tensors(cfg, spec, 0)) == 15


def test_minimax_m2_preset_declares_mtp_but_counts_none():
    """MiniMax-M2's config declares use_mtp / num_mtp_modules 3; the release has no mtp.* tensor, so the preset
    counts no MTP parameters and no draft cost, and says why."""
    assert MODELS["MiniMax-M2"]["use_mtp"] and MODELS["MiniMax-M2"]["num_mtp_modules"] == 3
    cm = roofline.from_config("MiniMax-M2", MODELS["MiniMax-M2"])
    assert cm.mtp_params == 0 and cm.draft_params == 0 and cm.mtp_kv_layers == []
    assert any("no MTP weights" in n for n in cm.notes)


def test_glm5_preset_runs_an_indexer_in_every_layer():
    """GLM-5's config has no indexer_types: every trunk layer and the MTP layer hold the DSA indexer
    (wq_b [h_I d_I, q_lora], wk [d_I, H], k_norm weight + bias [d_I], weights_proj [h_I, H])."""
    from mtp_ref.families import trunk_tensors
    cfg, spec = roofline.preset_config("GLM-5", MODELS["GLM-5"])
    per = 32 * 128 * 2048 + 128 * 6144 + 2 * 128 + 32 * 6144
    idx = [n for k, n in {k: math.prod(s) for k, s in trunk_tensors(cfg, spec).items()}.items()
           if ".self_attn.indexer." in k]
    assert len(idx) == 5 * 78 and sum(idx) == 78 * per
    mtp = {k: math.prod(s) for k, s in mtp_tensors(cfg, spec, 0).items() if ".self_attn.indexer." in k}
    assert len(mtp) == 5 and sum(mtp.values()) == per


def test_dsa_presets_say_what_the_cost_model_leaves_out(presets):
    """DeepSeek-V3.2 and GLM-5 (DSA): the page says the model reads the whole MLA cache and leaves the indexer's
    keys out; the other MLA presets carry no such note."""
    for name in ("DeepSeek-V3.2", "GLM-5"):
        assert any("indexer's own key cache (128 values" in n for n in presets[name].notes), name
    assert not any("indexer" in n for n in presets["DeepSeek-V3"].notes + presets["GLM-4.7-Flash"].notes)


V4_EXPERT = 3 * 2048 * 4096               # w1, w3 [2048, 4096] + w2 [4096, 2048]


def test_v4_flash_counts_by_hand(presets):
    """DeepSeek-V4-Flash from config.json arithmetic: 43 MoE layers of 256 experts (6 a token), one MTP module
    whose block has 256 experts too and reads the trunk's head; no embedding or head copy in the module."""
    cm = presets["DeepSeek-V4-Flash"]
    assert (cm.moe_layers, cm.n_experts, cm.top_k, cm.expert_params) == (43, 256, 6, V4_EXPERT)
    assert not cm.tied
    assert cm.mtp_expert_params == 256 * V4_EXPERT and cm.draft_expert_params == 6 * V4_EXPERT
    # the draft reads the module's non-expert weights, 6 experts and the trunk's head [129280, 4096]
    assert cm.draft_params == cm.mtp_params - 250 * V4_EXPERT + 129280 * 4096
    assert cm.trunk_params() + cm.mtp_params == cm.total_params


def test_v4_flash_cache_and_attention_by_hand(presets):
    """Cache: every block keeps a 128-token window of the one 512-wide K=V head; 21 CSA layers (ratio 4) add a
    512-wide entry and the indexer's 128-wide one per 4 tokens, 20 HCA layers (ratio 128) a 512-wide entry per 128
    tokens; the MTP block (ratio 0) the window only. FLOPs per query: q.k and p.v over 64 heads x 512, the CSA
    query over its indexer's top 512 entries, the indexer's 64 heads x 128 over every entry."""
    cm, ctx = presets["DeepSeek-V4-Flash"], 8192
    elems = 43 * 512 * 128 + 21 * (512 + 128) * ctx // 4 + 20 * 512 * ctx // 128
    assert cm.kv_bytes(ctx, 3) == 3 * 2 * elems
    assert cm.mtp_kv_layers == [(512, 128)]
    assert roofline.memory_needed(cm, 2.0, ctx, 3)["kv"] == 3 * 2 * (elems + 512 * 128)
    f = 4 * 64 * 512
    attn = 43 * f * 128 + 21 * (f * 512 + 2 * 64 * 128 * ctx // 4) + 20 * f * ctx // 128
    assert cm.flops(1, ctx) == pytest.approx(2 * cm.active_params() + attn, rel=1e-12)
    assert any("route by token id" in n for n in cm.notes) and any("CSA" in n for n in cm.notes)


def test_v4_flash_release_precision_splits_experts(presets):
    """'fp8 + mxfp4 experts': routed experts (trunk and MTP) at 17/32 bytes (MXFP4: 16 bytes of e2m1 + one
    E8M0 scale per 32), every other weight at 1 + 1/128^2 (e4m3 + one E8M0 byte per 128x128 block)."""
    cm, bpp = presets["DeepSeek-V4-Flash"], PRECISIONS["fp8 + mxfp4 experts"].bytes_per_param
    fp8, fp4 = 1 + 1 / 16384, 17 / 32
    assert (float(bpp), bpp.experts) == (fp8, fp4)
    experts = 44 * 256 * V4_EXPERT
    m = roofline.memory_needed(cm, bpp, 4096, 1)
    assert m["weights"] == pytest.approx((cm.total_params - experts) * fp8 + experts * fp4, rel=1e-12)
    assert 155e9 < m["weights"] < 160e9        # about half the 291 GB all-fp8 count
    one = cm.weight_bytes(1, bpp)
    assert one == pytest.approx((cm.dense_params + 4096) * fp8 + 43 * 6 * V4_EXPERT * fp4, rel=1e-12)
    assert cm.draft_bytes(bpp) == pytest.approx((cm.draft_params - 6 * V4_EXPERT) * fp8 + 6 * V4_EXPERT * fp4,
                                                rel=1e-12)
    # a mixed rate whose two rates agree is the plain rate
    same = MixedRate(0.75, 0.75)
    for name in ("DeepSeek-V3", "Qwen3.6-27B", "DeepSeek-V4-Flash"):
        c = presets[name]
        assert c.weight_bytes(5, same) == c.weight_bytes(5, 0.75)
        assert roofline.memory_needed(c, same, 4096, 2) == roofline.memory_needed(c, 0.75, 4096, 2)
        assert roofline.mtp_speedup(c, 0.7, 3, 4, 4096, same, 4.8e12, 989e12) == \
            roofline.mtp_speedup(c, 0.7, 3, 4, 4096, 0.75, 4.8e12, 989e12)


def test_mixed_rate_prints_both_rates():
    r = MixedRate(1 + 1 / 16384, 17 / 32)
    assert f"{r:.3g}" == "1 (0.531 for routed experts)"
    assert r * 2 == 2 + 2 / 16384 and type(r * 2) is float     # arithmetic sees the non-expert rate
    import copy
    back = copy.deepcopy(r)                                     # through __reduce__, as Streamlit's caches copy it
    assert (float(back), back.experts) == (float(r), r.experts)


# ------------------------------------------------------------------ the old per-family chain

# from_config of git ba2bdcc (the `if fam == ...` chain), per preset: dense, MTP, draft and total params,
# MoE layers, params per routed expert, KV bytes of one 4096-token sequence, recurrent state elements
OLD_CHAIN = {
    "DeepSeek-V3": (16190969344, 13463426304, 1614779648, 684489845504, 58, 44040192, 287834112, 0),
    "GLM-4.5-Air": (6574831232, 3616573568, 919636096, 110468824832, 45, 17301504, 771751936, 0),
    "MiMo-7B": (7001337856, 210790400, 832071680, 7833409536, 0, 0, 603979776, 0),
    "Qwen3.6-27B": (25624600064, 424699392, 1696097792, 27320697856, 0, 0, 425328640, 39223296),
    "Gemma 4 31B": (30697345280, 0, 0, 30697345280, 0, 0, 1006632960, 0),
}
# Where the old chain was wrong for Gemma 4 31B (mtp_ref.gemma4 holds the released tensor list and the cache):
# it left out the `layer_scalar` [1] of each of the 60 layers, and counted the 10 full (attention_k_eq_v) layers'
# cache once per position, but V there is rms(raw K), a tensor of its own next to the normed, rotated K.
GEMMA_FIX = {"dense": 60, "total": 60, "kv": 10 * 4 * 512 * 4096 * 2}


@pytest.mark.parametrize("name", list(OLD_CHAIN))
def test_preset_counts_equal_old_chain(presets, name):
    cm = presets[name]
    got = (cm.dense_params, cm.mtp_params, cm.draft_params, cm.total_params, cm.moe_layers, cm.expert_params,
           cm.kv_bytes(4096, 1), cm.state_elems)
    want = list(OLD_CHAIN[name])
    if name == "Gemma 4 31B":
        want[0] += GEMMA_FIX["dense"]
        want[3] += GEMMA_FIX["total"]
        want[6] += GEMMA_FIX["kv"]
    assert got == tuple(want)


def test_presets_build_the_engine_config():
    """Every preset is a config the engine accepts: a FamilySpec family, or Gemma 4's own engine module."""
    for name, c in MODELS.items():
        if c["model_type"] in gemma4.TARGET_TYPES:
            g = gemma4.target_text_config(c, name)
            assert g.layer_types == c["layer_types"] and g.hidden_size_per_layer_input == 0
            continue
        if c["model_type"] == ops_v4.MODEL_TYPE:
            v4 = ops_v4.config_from_raw(c, name)
            assert (v4.hidden_size, v4.num_hidden_layers, v4.vocab_size) == (
                c["hidden_size"], c["num_hidden_layers"], c["vocab_size"])
            assert v4.compress_ratios == c["compress_ratios"] and len(v4.compress_ratios) == v4.num_hidden_layers + 1
            continue
        cfg, spec = roofline.preset_config(name, c)
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (
            c["hidden_size"], c["num_hidden_layers"], c["vocab_size"])
        assert spec is FAMILIES[c["model_type"]]


# ------------------------------------------------------------------ loaded checkpoints

def _check_against_headers(cm, cfg, numels: dict[str, int]) -> None:
    L = cfg.num_hidden_layers
    mtp_prefixes = tuple(f"model.layers.{L + j}." for j in range(cfg.num_mtp_modules)) + ("model.mtp_layers.", "mtp.")
    mtp = sum(n for k, n in numels.items() if k.startswith(mtp_prefixes))
    trunk = {k: n for k, n in numels.items() if not k.startswith(mtp_prefixes)}
    assert cm.total_params == sum(numels.values())
    assert cm.mtp_params == mtp
    assert cm.trunk_params() == sum(trunk.values())            # every stored tensor is trunk or MTP
    experts = sum(n for k, n in trunk.items() if ".mlp.experts." in k)
    assert cm.moe_layers * cm.n_experts * cm.expert_params == experts
    assert cm.dense_params == sum(trunk.values()) - experts - (0 if cm.tied else cfg.vocab_size * cfg.hidden_size)


@pytest.mark.skipif(not any(BUNDLED.glob("*.safetensors")), reason="bundled checkpoint not present")
def test_bundled_checkpoint_counts_equal_its_tensors():
    model = load_model(None)
    cm = roofline.from_checkpoint(model)
    _check_against_headers(cm, model.config, header_numels(BUNDLED))
    assert cm.moe_layers == 9 and cm.n_experts == 4 and len(cm.mtp_kv_layers) == model.config.num_mtp_modules == 3


@pytest.mark.parametrize("family", ["bundled", "glm4_moe", "mimo"])
def test_released_layout_preset_path_equals_loaded_path(tiny_checkpoint, family):
    """A config counted as a preset and the same checkpoint counted from its files agree with its headers
    (the bundled model is deepseek_v3; the others are tiny checkpoints transformers wrote)."""
    if family == "bundled" and not any(BUNDLED.glob("*.safetensors")):
        pytest.skip("bundled checkpoint not present")
    path = BUNDLED if family == "bundled" else tiny_checkpoint(family)
    model = load_model(path)
    raw = json.loads((path / "config.json").read_text())
    as_preset = roofline.from_config("tiny", raw)
    loaded = roofline.from_checkpoint(model)
    _check_against_headers(loaded, model.config, header_numels(path))
    assert model.config.num_mtp_modules == model.config.num_nextn_predict_layers
    for f in ("dense_params", "mtp_params", "draft_params", "total_params", "moe_layers", "expert_params",
              "kv_layers", "attn_flops", "mtp_kv_layers", "tied"):
        assert getattr(as_preset, f) == getattr(loaded, f), f


# ------------------------------------------------------------------ memory

H200 = next(h for h in HARDWARE if h.name == "NVIDIA H200 SXM")
H100 = next(h for h in HARDWARE if h.name == "NVIDIA H100 SXM")


def test_memory_deepseek_fp8_needs_several_gpus(presets):
    cm, bpp = presets["DeepSeek-V3"], PRECISIONS["fp8"].bytes_per_param
    m = roofline.memory_needed(cm, bpp, context=4096, batch=1)
    assert m["weights"] == 684489845504 * bpp
    assert m["kv"] == (61 + 1) * 576 * 4096 * 2              # 61 trunk layers + 1 MTP layer, MLA latent, 2 bytes
    assert m["total"] == m["weights"] + m["kv"]
    assert roofline.devices_needed(m["total"], H200) == 5     # 684.9 GB / 141 GB
    assert roofline.devices_needed(m["total"], H100) == 9     # 684.9 GB / 80 GB


def test_memory_sliding_window_and_recurrent_state(presets):
    ctx, batch = 100_000, 2
    gemma = roofline.memory_needed(presets["Gemma 4 31B"], 2.0, ctx, batch)
    assert gemma["kv"] == batch * 2 * (50 * 8192 * 1024 + 10 * 4096 * ctx)   # sliding layers keep 1024 positions
    qwen = presets["Qwen3.6-27B"]
    q = roofline.memory_needed(qwen, 2.0, ctx, batch)
    state = 48 * (48 * 128 * 128 + (2 * 16 * 128 + 48 * 128) * 3)          # 48 DeltaNet layers: S + conv tail
    assert qwen.state_elems == state
    assert q["kv"] == batch * ((16 + 1) * 2048 * ctx * 2 + state * 4)      # 16 attention + 1 MTP layer, f32 state
    assert q["weights"] == 2.0 * 27320697856


def test_devices_needed_edges():
    assert roofline.devices_needed(0.0, H200) == 1
    assert roofline.devices_needed(141e9, H200) == 1
    assert roofline.devices_needed(141e9 + 1, H200) == 2
    with pytest.raises(ValueError, match="memory_gb"):
        roofline.devices_needed(1.0, Hardware("custom", 100, 10, "user input"))


def test_hardware_memory_from_datasheets():
    want = {"NVIDIA H100 SXM": 80, "NVIDIA H200 SXM": 141, "NVIDIA RTX 3090": 24, "NVIDIA RTX 4090": 24,
            "NVIDIA RTX 5090": 32, "NVIDIA RTX PRO 6000 Blackwell": 96, "Apple M4 Pro (20-core GPU)": 64,
            "Apple M4 Max (40-core GPU)": 128, "AMD Ryzen AI Max+ 395 (Strix Halo)": 128}
    assert {h.name: h.memory_gb for h in HARDWARE} == want
    assert all(h.memory_source for h in HARDWARE)


# ------------------------------------------------------------------ repeated timings

@pytest.mark.skipif(not any(BUNDLED.glob("*.safetensors")), reason="bundled checkpoint not present")
def test_time_forwards_repeated_keeps_every_sample():
    model = load_model(None)
    ids = model.encode("Once upon a time")
    rows = roofline.time_forwards_repeated(model, ids, [1, 3], repeats=3)
    assert [r["n"] for r in rows] == [1, 3]
    for r in rows:
        assert len(r["samples"]) == 3 and all(s > 0 for s in r["samples"])
        assert r["min"] == min(r["samples"]) and r["max"] == max(r["samples"])
        assert r["median"] == statistics.median(r["samples"])
    assert rows[1]["bytes_read"] >= rows[0]["bytes_read"] > 0   # 3 tokens pick at least the experts 1 token does
    best = roofline.time_forwards(model, ids, [1, 3], repeats=2)
    assert [(r["n"], r["bytes_read"]) for r in best] == [(r["n"], r["bytes_read"]) for r in rows]
    assert all(r["seconds"] > 0 for r in best)
