"""A 7B-class model with MiMo-7B's shapes on the GPU: is verifying k+1 tokens as cheap as decoding one?

Qwen2 trunk (hidden 4096, 36 layers, 32 heads, 8 KV heads, intermediate 11008, vocab 151680) plus
one MiMo MTP layer; random bf16 weights generated ON the GPU in the released layout (keyed by the
released tensor names) and handed to CudaModel.from_device_weights: nothing is read from disk.

Measured (one GPU, one run; medians):
  * copy bandwidth (the roofline ceiling) and the roofline tokens/s = ceiling / weight bytes;
  * target forward over n = 1..8 tokens at context 512 and 4096: device time of the replayed CUDA
    graph, wall time of CudaModel.forward (graph + the logits copy to the host), and the eager
    path's wall and CPU time (one numba launch at a time);
  * plain greedy decode tokens/s (SpeculativeDecoder, draft 0) at context 512;
  * Hugging Face transformers Qwen2ForCausalLM (eager attention, bf16) with the same weights
    (copied from the same device tensors) on the same GPU: 1-token forward and greedy decode.

    python benchmarks/bench_model7b.py [--json out.json] [--layers 36] [--no-hf]
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

from numba import cuda  # noqa: E402

from benchmarks.bench_copy import copy_bandwidth, device_name, events_ms  # noqa: E402
from mtp_ref.config import config_from_dict  # noqa: E402
from mtp_ref.families import family_for, mtp_tensors, trunk_tensors  # noqa: E402

MIMO_7B = {
    "model_type": "mimo", "vocab_size": 151680, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
    "rope_theta": 640000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "attention_bias": True,
    "num_nextn_predict_layers": 1, "eos_token_id": 151643, "torch_dtype": "bfloat16",
}
CONTEXTS = (512, 4096)
NS = (1, 2, 3, 4, 5, 6, 7, 8)


def make_weights(cfg, spec, seed=0):
    """Random bf16 device tensors keyed by released names, O(1) activations (as tests/builders.py)."""
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = dict(trunk_tensors(cfg, spec))
    shapes.update(mtp_tensors(cfg, spec, 0))
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            t = (1.0 + 0.2 * torch.randn(shape, generator=g, device="cuda")) if not name.endswith(".bias") else \
                0.1 * torch.randn(shape, generator=g, device="cuda")
            out[name] = t.to(torch.bfloat16)
        else:
            t = torch.empty(shape, dtype=torch.bfloat16, device="cuda")
            t.normal_(0.0, 1.0 if name.endswith("embed_tokens.weight") else 1.0 / math.sqrt(shape[-1]), generator=g)
            out[name] = t
    torch.cuda.synchronize()
    return out


def wall_ms(fn, reps=10, warm=2):
    for _ in range(warm):
        fn()
    ts, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return float(np.median(ts)), float(np.median(cpu))


def fill_cache(cm, cache, ctx, seed=1):
    """Random K/V rows 0..ctx-1 (what a prefill would leave), without running one."""
    import torch
    for kc, vc in cache.layers:
        for buf in {id(kc): kc, id(vc): vc}.values():
            t = torch.as_tensor(buf, device="cuda")
            t.normal_(0.0, 1.0)
    torch.cuda.synchronize()
    cache.length = ctx


def bench_ours(cm, ceil_GBps, out):
    from mtp_ref.speculative import SpeculativeDecoder
    cfg = cm.config
    wbytes = cm.trunk_bytes
    out["weight_bytes_per_forward"] = wbytes
    out["roofline_ms"] = wbytes / ceil_GBps / 1e6
    out["roofline_tok_s"] = 1e3 / out["roofline_ms"]
    rng = np.random.default_rng(0)
    res = {}
    for ctx in CONTEXTS:
        cache = cm.new_cache()
        fill_cache(cm, cache, ctx)
        for n in NS:
            ids = rng.integers(0, cfg.vocab_size, n)

            def fwd():
                cache.length = ctx
                cm.forward(ids, cache)

            t0 = time.time()
            fwd()                                   # eager (compiles on first use of this n)
            t_first = time.time() - t0
            fwd()                                   # captured into a graph
            g = cache.graphs.get((("trunk",), n, cm._long))    # (kind, n, long context: attention_long)
            wall, cpu = wall_ms(fwd)
            if g is not None:
                dev_ms = events_ms(cm.stream, g.launch)
            else:
                dev_ms = float("nan")
            # eager path (one numba launch at a time): wall and CPU time
            ug, cm.use_graphs = cm.use_graphs, False
            e_wall, e_cpu = wall_ms(fwd, reps=3, warm=1)
            cm.use_graphs = ug
            r = dict(ctx=ctx, n=n, device_ms=dev_ms, forward_wall_ms=wall, forward_cpu_ms=cpu, eager_wall_ms=e_wall,
                     eager_cpu_ms=e_cpu, first_call_s=t_first, graph=g is not None)
            res[(ctx, n)] = r
            print(f"  ctx {ctx:5d} n={n}: graph device {dev_ms:6.2f} ms | forward() wall {wall:6.2f} ms cpu {cpu:5.2f} ms"
                  f" | eager wall {e_wall:6.1f} ms cpu {e_cpu:6.1f} ms | first call {t_first:5.1f} s", flush=True)
        del cache
    out["forward"] = [dict(v) for v in res.values()]
    for ctx in CONTEXTS:
        one = res[(ctx, 1)]["device_ms"]
        out[f"verify4_over_1_ctx{ctx}"] = res[(ctx, 4)]["device_ms"] / one
        out[f"verify4_over_1_wall_ctx{ctx}"] = res[(ctx, 4)]["forward_wall_ms"] / res[(ctx, 1)]["forward_wall_ms"]
    # plain greedy decode through the engine's decoder, context 512
    dec = SpeculativeDecoder(cm, 0)
    prompt = list(rng.integers(0, cfg.vocab_size, 512))
    t0 = time.perf_counter()
    dec.prefill(prompt)
    out["prefill_512_s"] = time.perf_counter() - t0
    for _ in range(3):
        dec.step()
    steps = 32
    cm.stream.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        dec.step()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    out["decode_tok_s"] = steps / dt
    out["decode_cpu_ms_per_token"] = dc / steps * 1e3
    out["decode_pct_roofline"] = 100 * out["decode_tok_s"] / out["roofline_tok_s"]
    out["decode_pct_roofline_device"] = 100 * out["roofline_ms"] / res[(512, 1)]["device_ms"]
    cache = cm.new_cache()
    fill_cache(cm, cache, 512)
    tok = 1
    for _ in range(3):
        _, am = cm.forward_greedy([tok], cache)
        tok = int(am[0])
    t0 = time.perf_counter()
    for _ in range(steps):
        _, am = cm.forward_greedy([tok], cache)
        tok = int(am[0])
    out["tight_decode_tok_s"] = steps / (time.perf_counter() - t0)
    del cache
    print(f"  greedy decode at ctx 512: {out['decode_tok_s']:.1f} tok/s ({out['decode_pct_roofline']:.0f}% of roofline "
          f"{out['roofline_tok_s']:.1f}); CPU {out['decode_cpu_ms_per_token']:.2f} ms/token; tight loop {out['tight_decode_tok_s']:.1f} tok/s", flush=True)
    return res


def bench_hf(cfg, weights, out):
    """transformers Qwen2ForCausalLM, eager attention, bf16, weights copied from the same tensors."""
    import torch
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM
    hc = Qwen2Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                     num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
                     rope_theta=cfg.rope.theta, rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=False,
                     attn_implementation="eager")
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(hc)
    finally:
        torch.set_default_dtype(prev)
    sd = {k: v for k, v in weights.items() if not k.startswith("model.mtp_layers.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    model.eval()
    out["hf_version"] = transformers.__version__
    out["hf_missing"] = [m for m in missing if "rotary" not in m][:5]
    out["hf_dtype"] = str(next(model.parameters()).dtype)
    out["hf_attn"] = model.config._attn_implementation
    res = {}
    ctx = 512
    ids = torch.randint(0, cfg.vocab_size, (1, ctx + 64), device="cuda")

    def crop(pkv, L):
        cur = pkv.get_seq_length()
        if cur != L:
            try:
                pkv.crop(L)
            except ValueError:
                pkv.crop(L - cur)

    with torch.no_grad():
        o = model(input_ids=ids[:, :ctx], use_cache=True)
        pkv = o.past_key_values
        for n in (1, 4):
            x = ids[:, ctx: ctx + n]

            def step():
                crop(pkv, ctx)
                model(input_ids=x, past_key_values=pkv, use_cache=True)
                torch.cuda.synchronize()

            ms, _ = wall_ms(step, reps=10, warm=2)
            res[n] = ms
            print(f"  HF eager bf16, ctx {ctx}, n={n}: {ms:.1f} ms per forward", flush=True)
        crop(pkv, ctx)
        nxt = ids[:, ctx: ctx + 1]
        steps = 16
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            lg = model(input_ids=nxt, past_key_values=pkv, use_cache=True).logits
            nxt = lg[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        out["hf_decode_tok_s"] = steps / (time.perf_counter() - t0)
    out["hf_forward_ms_ctx512_n1"] = res[1]
    out["hf_forward_ms_ctx512_n4"] = res[4]
    print(f"  HF greedy decode: {out['hf_decode_tok_s']:.1f} tok/s", flush=True)
    del model, pkv, o
    torch.cuda.empty_cache()


CONFIGS = {  # name -> CudaModel options (NOTES.md has each one's numbers)
    "v1": {"attention": "v1", "gemm_tuning": {}, "row_threads": 128,             # the first H100 run
           "fuse_norm": False, "fuse_rope_cache": False},
    "v2": {"attention": "v2", "gemm_tuning": "TUNED_H100", "row_threads": 128,   # unrolled attention, tuned GEMM
           "fuse_norm": False, "fuse_rope_cache": False},
    "v3": {"attention": "v3", "gemm_tuning": "TUNED_H100", "row_threads": 1024,  # warp-per-key attention, wide rows
           "fuse_norm": False, "fuse_rope_cache": False},
    "v4": {"attention": "v3", "gemm_tuning": "TUNED_H100", "row_threads": 1024,  # v3 + rope/cache-write fused
           "fuse_norm": False, "fuse_rope_cache": True, "rope_per_head": False},
    "v5": {"attention": "v4", "gemm_tuning": "TUNED_H100", "row_threads": 1024,  # GQA-group attention, RMSNorm in
           "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": False},  # the GEMMs
    "v5t": {"attention": "v4", "gemm_tuning": "auto", "row_threads": 1024,       # v5 + launch shapes measured per
            "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": False},  # weight shape (autotune.py)
    "v6r4": {"attention": "v5", "attention_v5_rows": 4, "gemm_tuning": "TUNED_H100",  # v5 + attention v5 (a warp
             "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True,       # per 8-key share), 1-token
             "rope_per_head": False},                                               # steps
    "v6": {"attention": "v5", "attention_v5_rows": 8, "gemm_tuning": "TUNED_H100",  # ... and 2-token steps
           "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True,        # (CudaModel's default, 11-26
           "rope_per_head": False},                                                # morning)
    "v6r16": {"attention": "v5", "attention_v5_rows": 16, "gemm_tuning": "TUNED_H100",  # ... and 3-4 tokens
              "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": False},
    "v7r": {"attention": "v6", "gemm_tuning": "TUNED_H100", "row_threads": 1024,  # v6 + attention v6 (v5 pipelined)
            "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": False},  # for <= 16 rows
    "v7": {"attention": "v6", "gemm_tuning": "TUNED_H100", "row_threads": 1024,   # ... + rope / cache writes a
           "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": True},    # block per head (default, 11-26)
    "v7r8": {"attention": "v6", "attention_v6_rows": 8, "gemm_tuning": "TUNED_H100",  # v7, 3-4-token steps on v4
             "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": True},
    "v8": {"attention": "v7", "gemm_tuning": "TUNED_H100", "row_threads": 1024,   # v7 + attention v7 (register
           "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": True},    # tiles) for 8-16 rows a group
    "v8r4": {"attention": "v7", "attention_v7_rows": 4, "gemm_tuning": "TUNED_H100",  # ... also for 1-token steps
             "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True, "rope_per_head": True},
    "v9": {"attention": "v6", "attention_long": "v7", "gemm_tuning": "TUNED_H100",  # v7 + attention v7 for
           "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True,       # caches of > 1536 keys
           "rope_per_head": True},                                                # (the default, 11-26 evening)
    "v10": {"attention": "v9", "attention_long": "v9", "gemm_tuning": "TUNED_H100",  # v9 with attention v9
            "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True,        # (tensor-core MMAs) for
            "rope_per_head": True},                                                 # every <= 16-row group
    "v10l": {"attention": "v6", "attention_long": "v9", "gemm_tuning": "TUNED_H100",  # v9 with attention v9
             "row_threads": 1024, "fuse_norm": True, "fuse_rope_cache": True,       # for caches of > 1536 keys
             "rope_per_head": True},
    "v11": {"attention": "v9", "attention_long": None, "combine": "v4",            # v10, one attention version at
            "gemm_tuning": "TUNED_H100", "row_threads": 1024, "fuse_norm": True,  # every length, shares merged by
            "fuse_rope_cache": True, "rope_per_head": True},                      # attn_combine_v4 (default)
    "v12": {"attention": "v9", "attention_long": None, "combine": "v4", "gemm_v3": True,  # v11 + the GEMMs of
            "gemm_tuning": "TUNED_H100", "row_threads": 1024, "fuse_norm": True,         # 5..8 tokens on the
            "fuse_rope_cache": True, "rope_per_head": True},                             # tensor cores (slower)
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--configs", default="v6,v7", help="comma-separated names of CONFIGS to measure")
    a = ap.parse_args()
    import gc

    import torch

    from kernels_cuda import gemm
    from kernels_cuda.backend import CudaModel
    t_start = time.time()
    out = {"device": device_name(), "date": time.strftime("%Y-%m-%d"), "configs": {}}
    cp = copy_bandwidth(2048)
    ceil = cp["memcpy_d2d_GBps"]
    out["copy"] = cp
    raw = dict(MIMO_7B, num_hidden_layers=a.layers)
    cfg = config_from_dict(raw, "MiMo-7B shapes")
    spec = family_for(cfg)
    cfg.num_mtp_modules = 1
    W = make_weights(cfg, spec)
    out["n_params"] = int(sum(t.numel() for t in W.values()))
    dev_w = {k: (v.view(torch.int16) if v.dtype == torch.bfloat16 else v) for k, v in W.items()}
    for name in a.configs.split(","):
        opts = dict(CONFIGS[name])
        opts.setdefault("attention_long", None)     # configs before v9 ran one attention version at every length
        opts.setdefault("combine", "v3")            # and before v11 merged the shares with attn_combine_v3
        opts.setdefault("gemm_v3", False)           # and before v12 ran every GEMM on gemm_v2
        auto = opts.get("gemm_tuning") == "auto"
        if isinstance(opts.get("gemm_tuning"), str):
            opts["gemm_tuning"] = gemm.TUNED_H100 if auto else getattr(gemm, opts["gemm_tuning"])
        t0 = time.time()
        cm = CudaModel.from_device_weights(cfg, spec, dev_w, max_context=max(CONTEXTS) + 16,
                                           path="random MiMo-7B shapes", **opts)
        oc = out["configs"][name] = {"options": CONFIGS[name], "build_s": time.time() - t0}
        if auto:
            from kernels_cuda.autotune import tune_gemms
            t1 = time.time()
            table, rows = tune_gemms(cm)
            cm.gemm_tuning.update(table)
            oc["tuning"] = {str(k): v for k, v in table.items()}
            oc["tuning_rows"] = rows
            oc["tune_s"] = time.time() - t1
            print(f"  autotune: {len(table)} shapes in {oc['tune_s']:.0f} s; table = {table!r}", flush=True)
        print(f"{out['device']} [{name} {CONFIGS[name]}]: {out['n_params'] / 1e9:.2f} B params, weights/forward "
              f"{cm.trunk_bytes / 1e9:.2f} GB, copy {ceil:.0f} GB/s", flush=True)
        bench_ours(cm, ceil, oc)
        report(oc, cm, ceil, name, out)
        if a.json:
            json.dump(out, open(a.json, "w"), indent=1, default=str)
        del cm
        gc.collect()
        torch.cuda.empty_cache()
    if not a.no_hf:
        try:
            bench_hf(cfg, W, out)
        except Exception as e:  # noqa: BLE001 - the rest of the report still stands
            out["hf_error"] = repr(e)
            print(f"  HF benchmark failed: {e!r}", flush=True)
    if "hf_decode_tok_s" in out:
        print(f"transformers {out['hf_version']} eager bf16 (same weights, same GPU, ctx 512): 1-token forward "
              f"{out['hf_forward_ms_ctx512_n1']:.1f} ms (n=4: {out['hf_forward_ms_ctx512_n4']:.1f} ms), greedy decode "
              f"{out['hf_decode_tok_s']:.1f} tok/s")
        for name, oc in out["configs"].items():
            f = {(r["ctx"], r["n"]): r for r in oc["forward"]}
            print(f"  ours [{name}]: {oc['decode_tok_s'] / out['hf_decode_tok_s']:.1f}x tokens/s (tight loop "
                  f"{oc['tight_decode_tok_s'] / out['hf_decode_tok_s']:.1f}x), "
                  f"{out['hf_forward_ms_ctx512_n1'] / f[(512, 1)]['forward_wall_ms']:.1f}x per 1-token forward")
    out["seconds"] = time.time() - t_start
    print(f"(seconds: {out['seconds']:.0f})")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1, default=str)


def report(out, cm, ceil, name, top):
    f = {(r["ctx"], r["n"]): r for r in out["forward"]}
    print(f"\n## 7B-class model (MiMo-7B shapes, random bf16 weights), config {name} {CONFIGS[name]}, "
          f"{top['device']}, {top['date']}")
    print(f"copy ceiling {ceil:.0f} GB/s; weights per forward {cm.trunk_bytes / 1e9:.2f} GB -> roofline "
          f"{out['roofline_ms']:.2f} ms/forward, {out['roofline_tok_s']:.1f} tok/s")
    print("| ctx | n | graph device ms | x n=1 | forward() wall ms | forward() CPU ms | eager wall ms | eager CPU ms |")
    print("|---|---|---|---|---|---|---|---|")
    for ctx in CONTEXTS:
        one = f[(ctx, 1)]["device_ms"]
        for n in NS:
            r = f[(ctx, n)]
            print(f"| {ctx} | {n} | {r['device_ms']:.2f} | {r['device_ms'] / one:.3f} | {r['forward_wall_ms']:.2f} | "
                  f"{r['forward_cpu_ms']:.2f} | {r['eager_wall_ms']:.1f} | {r['eager_cpu_ms']:.1f} |")
    print(f"verify n=4 / n=1 (device): ctx 512 {out['verify4_over_1_ctx512']:.3f}, ctx 4096 "
          f"{out['verify4_over_1_ctx4096']:.3f} (target <= 1.10)")
    print(f"plain greedy decode, ctx 512, through SpeculativeDecoder: {out['decode_tok_s']:.1f} tok/s = "
          f"{out['decode_pct_roofline']:.0f}% of roofline (graph device time of n=1: {out['decode_pct_roofline_device']:.0f}%);"
          f" CPU {out['decode_cpu_ms_per_token']:.2f} ms/token")
    print(f"tight greedy loop (CudaModel.forward_greedy: device argmax, no logits copy): {out['tight_decode_tok_s']:.1f} "
          f"tok/s = {100 * out['tight_decode_tok_s'] / out['roofline_tok_s']:.0f}% of roofline")


if __name__ == "__main__":
    main()
