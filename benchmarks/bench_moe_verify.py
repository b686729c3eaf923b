"""The verify cost of a mixture-of-experts model on the GPU: n tokens read the experts any of them picked.

Shape: DeepSeek-V2-Lite (deepseek-ai/DeepSeek-V2-Lite config.json, below): 27 layers, hidden 2048, MLA
(16 heads, kv_lora_rank 512, no q latent), layer 0 a dense MLP, layers 1-26 MoE with 64 routed experts, top-6, plus 2
shared experts. It runs through the engine's deepseek_v3 family (the CUDA backend has no deepseek_v2 family): the
same tensors and shapes; only the router's scoring differs (V3's sigmoid with e_score_correction_bias against V2's
softmax). With the correction bias 0 and one group, sigmoid and softmax are both increasing in the router logit, so
the top-6 a token picks is the same set either way; the gate weights differ, which changes no byte read.

Weights: random bf16, generated ON the GPU in the released layout (as bench_model7b) and handed to
CudaModel.from_device_weights; the KV cache is filled with random rows up to the context (no prefill).
Random routers fed random tokens route close to uniformly, which is what the explainer's model assumes
(roofline.CostModel.expected_experts: E (1 - (1 - k/E)^n) distinct experts per layer); the measured distinct
counts are printed beside that model, not assumed equal to it.

Measured, per context (512, then 4096 while the time budget lasts) and n = 1..8:
  * device ms of one forward over n tokens: CUDA-graph replay between two events, pooled over DRAWS draws of
    random token ids (REPS replays each), median and half the 10-90 % range;
  * distinct experts each MoE layer touched (the router kernel's count, meta[M_NACT], read back from the device
    after each forward), mean over layers x draws and its 10th / 90th percentiles;
  * weight bytes the forward read (the backend's meter: dense weights + the touched experts + embedding rows);
  * the explainer's uniform-routing model for the same n: expected distinct experts and the modelled cost ratio
    verify(n) / verify(1) (roofline.from_config on this config, on presets.HARDWARE's H200, bf16, batch 1).

    python benchmarks/bench_moe_verify.py [--json out.json] [--layers 27] [--contexts 512,4096] [--budget 120]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/bench_moe_verify.py --tiny     # the same code path on the CPU
    python benchmarks/bench_moe_verify.py --section out.json --command "..." [--merge-into benchmarks/results/h200.json]

`results_section(bench_json)` turns the --json output into the `moe_verify` section of
benchmarks/results/<device>.json (schema "mtp-ref verify-cost v1"), which explainer/scenario.py reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mtp_ref.config import config_from_dict  # noqa: E402
from mtp_ref.families import family_for, trunk_tensors  # noqa: E402

# deepseek-ai/DeepSeek-V2-Lite config.json (every key the engine reads), with model_type and scoring_func changed
# to the deepseek_v3 family's (see the module docstring); the released values were model_type "deepseek_v2",
# scoring_func "softmax", topk_method "greedy".
DEEPSEEK_V2_LITE = {
    "model_type": "deepseek_v3", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "num_hidden_layers": 27, "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_attention_heads": 16,
    "num_key_value_heads": 16, "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 64, "num_experts_per_tok": 6,
    "n_shared_experts": 2, "moe_intermediate_size": 1408, "n_group": 1, "topk_group": 1,
    "routed_scaling_factor": 1.0, "scoring_func": "sigmoid", "norm_topk_prob": False, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 163840, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "attention_bias": False, "tie_word_embeddings": False, "num_nextn_predict_layers": 0,
    "torch_dtype": "bfloat16",
}
SHAPE_NAME = "DeepSeek-V2-Lite shapes"
# --tiny: the same layout at simulator sizes (layer 0 dense, layer 1 MoE with 8 experts, top 2)
TINY = dict(DEEPSEEK_V2_LITE, vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
            v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
            max_position_embeddings=4096, rope_scaling=None)
NS = tuple(range(1, 9))
HW_NAME = "NVIDIA H200 SXM"          # the explainer's hardware preset the uniform-routing model is evaluated on
SCHEMA_KEYS = ("ctx", "n", "ms", "spread_ms", "distinct_mean", "distinct_p10", "distinct_p90", "weight_bytes")


def random_weights(cfg, spec, seed: int = 0, on_gpu: bool = True) -> dict:
    """Random bf16 tensors keyed by released names, O(1) activations (as bench_model7b.make_weights), trunk only.
    e_score_correction_bias is 0: a load-balancing bias learnt in training; random values would skew routing.
    on_gpu: torch tensors made on the GPU (their int16 views); else numba device arrays from NumPy (the simulator)."""
    shapes = dict(trunk_tensors(cfg, spec))
    out = {}
    if on_gpu:
        import torch
        g = torch.Generator(device="cuda").manual_seed(seed)
        for name, shape in shapes.items():
            if name.endswith("e_score_correction_bias"):
                out[name] = torch.zeros(shape, dtype=torch.float32, device="cuda")
            elif len(shape) == 1:
                out[name] = (1.0 + 0.2 * torch.randn(shape, generator=g, device="cuda")).to(torch.bfloat16)
            else:
                t = torch.empty(shape, dtype=torch.bfloat16, device="cuda")
                t.normal_(0.0, 1.0 if name.endswith("embed_tokens.weight") else 1.0 / math.sqrt(shape[-1]),
                          generator=g)
                out[name] = t
        torch.cuda.synchronize()
        return {k: (v.view(torch.int16) if v.dtype == torch.bfloat16 else v) for k, v in out.items()}
    from numba import cuda

    from kernels_cuda.backend import f32_to_bf16_bits
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        if name.endswith("e_score_correction_bias"):
            out[name] = cuda.to_device(np.zeros(shape, np.float32))
            continue
        if len(shape) == 1:
            a = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            std = 1.0 if name.endswith("embed_tokens.weight") else 1.0 / math.sqrt(shape[-1])
            a = rng.standard_normal(shape) * std
        out[name] = cuda.to_device(f32_to_bf16_bits(a.astype(np.float32)))
    return out


def fill_cache(cache, ctx: int, seed: int = 1) -> None:
    """Random K/V (MLA: latent) rows 0..ctx-1, what a prefill would leave, without running one."""
    rng = np.random.default_rng(seed)
    for buf in {id(b): b for pair in cache.layers for b in pair}.values():
        buf.copy_to_device(rng.standard_normal(buf.shape[0]).astype(np.float32))
    cache.length = ctx


def uniform_model(raw: dict, ns, ctx: int) -> dict:
    """The explainer's uniform-routing model of this shape (roofline.CostModel, imported, not re-derived):
    expected distinct experts per MoE layer and verify(n) / verify(1) on its H200 preset, bf16, batch 1."""
    from explainer import roofline
    from explainer.presets import HARDWARE
    cm = roofline.from_config(SHAPE_NAME, raw)
    hw = next(h for h in HARDWARE if h.name == HW_NAME)
    t = {n: cm.forward(n, 1, ctx, 2.0, hw.bandwidth_gbs * 1e9, hw.tflops * 1e12)["seconds"] for n in ns}
    return {"hardware": HW_NAME, "distinct": [cm.expected_experts(n) for n in ns],
            "ratio": [t[n] / t[1] for n in ns], "weight_bytes": [cm.weight_bytes(n, 2.0) for n in ns]}


def distinct_per_layer(cm) -> list[int]:
    """Distinct experts each MoE layer's router picked in the last forward (meta[M_NACT] of its slot)."""
    from kernels_cuda import kernels as K
    return [int(cm.moe[L["moe_slot"]]["nact"].copy_to_host(stream=cm.stream)[K.M_NACT])
            for L in cm.layers if "experts" in L]


def samples_ms(stream, fn, reps: int) -> list[float]:
    """Device ms of fn() between two events (graphs.events_samples); the simulator has no event timer, so there
    it is host wall time, which --tiny reports only to run the code path."""
    from kernels_cuda.graphs import events_samples
    from kernels_cuda.intrinsics import SIM
    if not SIM:
        return events_samples(stream, fn, reps, 1)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def measure(cm, ctx: int, ns, draws: int, reps: int, seed: int = 0) -> list[dict]:
    """Per n: device ms pooled over `draws` random token draws x `reps` replays; distinct experts per MoE layer
    after each draw; the weight bytes the backend metered for the forward."""
    rng = np.random.default_rng(seed)
    cache = cm.new_cache()
    fill_cache(cache, ctx)
    rows = []
    for n in ns:
        t0 = time.time()
        ms, counts, nbytes = [], [], []
        key = (("trunk",), n)
        for d in range(draws):
            ids = rng.integers(0, cm.config.vocab_size, n)
            runs = 3 if d == 0 and cm.use_graphs else 1   # first draw of this n: eager (compiles), capture, replay
            for _ in range(runs):
                cache.length = ctx
                cm.reset_meter()
                cm.forward(ids, cache)            # sets the ids on the device and runs (replays) the forward
            if d == 0:
                first_s = time.time() - t0           # includes numba's compiles for this n (first context only)
            counts.append(distinct_per_layer(cm))
            nbytes.append(cm.bytes_read)
            g = cache.graphs.get(key)
            # graph replays re-run the same ids (same routing); without a graph (simulator) the eager forward
            fn = g.launch if g is not None else (lambda: (setattr(cache, "length", ctx), cm.forward(ids, cache)))
            ms += samples_ms(cm.stream, fn, reps)
        c = np.asarray(counts, dtype=float)               # [draws, moe layers]
        lo, hi = np.percentile(ms, [10, 90])
        r = dict(ctx=ctx, n=n, ms=float(np.median(ms)), spread_ms=float(hi - lo) / 2, samples=len(ms),
                 graph=cache.graphs.get(key) is not None, distinct_mean=float(c.mean()),
                 distinct_p10=float(np.percentile(c, 10)), distinct_p90=float(np.percentile(c, 90)),
                 distinct_std=float(c.std()), distinct_per_layer=c.mean(axis=0).round(2).tolist(),
                 weight_bytes=float(np.mean(nbytes)), seconds=time.time() - t0, first_draw_s=first_s)
        rows.append(r)
        print(f"  ctx {ctx:5d} n={n}: {r['ms']:7.3f} +- {r['spread_ms']:.3f} ms ({r['samples']} samples) | distinct "
              f"experts/layer {r['distinct_mean']:5.2f} (p10 {r['distinct_p10']:.0f}, p90 {r['distinct_p90']:.0f}) | "
              f"{r['weight_bytes'] / 1e9:6.3f} GB | {r['seconds']:4.1f} s", flush=True)
    del cache
    return rows


def report(out: dict) -> None:
    m = out["shape"]
    print(f"\n## MoE verify cost ({out['model']}), {out['device']}, {out['date']}")
    print(f"{m['layers']} layers ({m['moe_layers']} MoE, {m['n_experts']} experts top-{m['top_k']}, "
          f"{m['n_shared']} shared); routing: random router weights, random token ids")
    print("| ctx | n | device ms | +- | x n=1 | model x n=1 (uniform) | distinct/layer | p10-p90 | model distinct "
          "(uniform) | weight GB | model GB (uniform) | weight GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in out["series"]:
        one = s["rows"][0]["ms"]
        for r, md, mr, mb in zip(s["rows"], s["model"]["distinct"], s["model"]["ratio"], s["model"]["weight_bytes"]):
            print(f"| {r['ctx']} | {r['n']} | {r['ms']:.3f} | {r['spread_ms']:.3f} | {r['ms'] / one:.3f} | {mr:.3f} | "
                  f"{r['distinct_mean']:.2f} | {r['distinct_p10']:.0f}-{r['distinct_p90']:.0f} | {md:.2f} | "
                  f"{r['weight_bytes'] / 1e9:.3f} | {mb / 1e9:.3f} | {r['weight_bytes'] / r['ms'] / 1e6:.0f} |")
        if m["layers"] != m["release_layers"]:
            print(f"(ctx {s['ctx']}: {m['layers']} of the release's {m['release_layers']} layers; per layer at n=1: "
                  f"{one / m['layers']:.4f} ms)")


def results_section(bench: dict, command: str) -> dict:
    """The `moe_verify` section of benchmarks/results/<device>.json from this script's --json output: per context
    the measured curve (ms, spread, distinct experts with their 10-90 % range, bytes) and the config it ran, so the
    explainer recomputes the uniform-routing model itself."""
    series = []
    for s in bench["series"]:
        rows = s["rows"]
        series.append({"ctx": s["ctx"], "n": [r["n"] for r in rows], "ms": [round(r["ms"], 4) for r in rows],
                       "spread_ms": [round(r["spread_ms"], 4) for r in rows],
                       "distinct_mean": [round(r["distinct_mean"], 3) for r in rows],
                       "distinct_p10": [r["distinct_p10"] for r in rows],
                       "distinct_p90": [r["distinct_p90"] for r in rows],
                       "weight_bytes": [int(r["weight_bytes"]) for r in rows]})
    m = bench["shape"]
    return {"model": bench["model"], "device": bench["device"], "date": bench["date"], "command": command,
            "config": bench["config"], "layers": m["layers"], "release_layers": m["release_layers"],
            "moe_layers": m["moe_layers"], "n_experts": m["n_experts"], "top_k": m["top_k"],
            "routing": "random router weights (e_score_correction_bias 0), random token ids; ms pooled over "
                       f"{bench['draws']} draws x {bench['reps']} graph replays: median, spread = half the 10-90 % "
                       "range; "
                       "distinct experts: mean over MoE layers x draws, p10/p90 of the same",
            "source": "benchmarks/bench_moe_verify.py", "series": series}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--layers", type=int, default=None, help="trunk layers (default: the release's 27)")
    ap.add_argument("--contexts", default="512,4096")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds; a further context starts only if the "
                    "last one fits in what is left")
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="tokens per forward, comma-separated")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="simulator sizes (NUMBA_ENABLE_CUDASIM=1): the code path, "
                    "not a measurement")
    ap.add_argument("--section", metavar="BENCH_JSON", help="no run: print the moe_verify results section made from "
                    "this script's --json output (with --command, the device command that made it)")
    ap.add_argument("--command", default="", help="with --section: the command to cite")
    ap.add_argument("--merge-into", metavar="RESULTS_JSON", help="with --section: also write the section into this "
                    "verify-cost result file (its key moe_verify)")
    a = ap.parse_args(argv)
    if a.section:
        sec = results_section(json.load(open(a.section)), a.command or f"python benchmarks/bench_moe_verify.py "
                              f"{' '.join(json.load(open(a.section)).get('argv', []))}")
        if a.merge_into:
            d = json.load(open(a.merge_into))
            d["moe_verify"] = sec
            with open(a.merge_into, "w") as f:
                json.dump(d, f, indent=1, ensure_ascii=False)      # the results files' own layout
        print(json.dumps(sec, indent=1))
        return sec
    t_start = time.time()
    from kernels_cuda import backend
    from kernels_cuda.backend import CudaModel
    from kernels_cuda.intrinsics import SIM
    if a.tiny:
        backend.ALLOW_SIMULATOR = True
    raw = dict(TINY if a.tiny else DEEPSEEK_V2_LITE)
    release_layers = raw["num_hidden_layers"]
    if a.layers:
        raw["num_hidden_layers"] = a.layers
    cfg = config_from_dict(raw, SHAPE_NAME)
    spec = family_for(cfg)
    cfg.num_mtp_modules = 0
    ctxs = [int(c) for c in a.contexts.split(",")]
    ns = [int(n) for n in a.ns.split(",")]
    if ns[0] != 1:
        raise SystemExit("error: --ns must start at 1 (every ratio is against n = 1)")
    W = random_weights(cfg, spec, on_gpu=not SIM)
    t_w = time.time() - t_start
    cm = CudaModel.from_device_weights(cfg, spec, W, max_context=max(ctxs) + 16, path=f"random {SHAPE_NAME}")
    del W
    if SIM:
        device = "numba CUDA simulator (CPU)"
    else:
        from benchmarks.bench_copy import device_name
        device = device_name()
    moe = [L for L in cm.layers if "experts" in L]
    out = {"model": f"{SHAPE_NAME} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, MLA, "
                    f"{cfg.n_routed_experts} routed experts top-{cfg.num_experts_per_tok} + {cfg.n_shared_experts} "
                    f"shared, layer 0 dense), random bf16 weights" + (", TINY simulator sizes" if a.tiny else ""),
           "device": device, "date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:] if argv is None else list(argv),
           "config": raw, "draws": a.draws, "reps": a.reps,
           "shape": {"layers": cfg.num_hidden_layers, "release_layers": release_layers, "moe_layers": len(moe),
                     "n_experts": cfg.n_routed_experts, "top_k": cfg.num_experts_per_tok,
                     "n_shared": cfg.n_shared_experts, "expert_bytes": moe[0]["experts"][4] if moe else 0,
                     "dense_bytes": cm.trunk_bytes},
           "weights_s": t_w, "build_s": time.time() - t_start - t_w, "series": []}
    print(f"{device}: {out['model']}; weights made in {t_w:.1f} s, model built in {out['build_s']:.1f} s; dense "
          f"weights {cm.trunk_bytes / 1e9:.3f} GB, one expert {out['shape']['expert_bytes'] / 1e6:.2f} MB", flush=True)
    for i, ctx in enumerate(ctxs):
        left = a.budget - (time.time() - t_start)
        # a further context compiles nothing: it costs about the last one without its first draws (and its fill)
        need = out["series"][-1]["seconds"] - sum(r["first_draw_s"] for r in out["series"][-1]["rows"]) if i else 0
        if i and left < 2 * need:
            print(f"  context {ctx} skipped: {left:.0f} s left of --budget {a.budget:.0f}, it needs about "
                  f"{need:.0f} s (twice that kept in hand)", flush=True)
            out.setdefault("skipped_contexts", []).append(ctx)
            continue
        t0 = time.time()
        rows = measure(cm, ctx, ns, a.draws, a.reps, seed=ctx)
        out["series"].append({"ctx": ctx, "rows": rows, "model": uniform_model(raw, ns, ctx),
                              "seconds": time.time() - t0})
        if a.json:
            json.dump(out, open(a.json, "w"), indent=1)
    report(out)
    out["seconds"] = time.time() - t_start
    print(f"(seconds: {out['seconds']:.0f})")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)
    return out


if __name__ == "__main__":
    main()
