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
    (copied from the same device tensors) on the same GPU: 1-token forward and greedy decode;
  * with --spec: one speculative cycle end to end (MiMo's MTP layer recursively at k = 3, drafts forced to
    0.8 acceptance per depth) against plain greedy decode over the same tokens.

  * with --loop (or --loop-only): the device loop (kernels_cuda/loop.py), plain greedy at ctx 512 and the
    speculative cycle with drafts forced on the device (bench_loop).

    python benchmarks/bench_model7b.py [--json out.json] [--layers 36] [--no-hf] [--spec] [--loop | --loop-only]
        [--configs default,auto]
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

from benchmarks.bench_copy import copy_bandwidth, device_name  # noqa: E402
from kernels_cuda.graphs import events_samples  # noqa: E402
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


def events_stats(stream, fn, reps=20, warm=3):
    """Median device ms of fn() between two events, and its spread: half the 10th-90th percentile range."""
    ts = events_samples(stream, fn, reps, warm)
    lo, hi = np.percentile(ts, [10, 90])
    return float(np.median(ts)), float(hi - lo) / 2


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
            g = cache.graphs.get((("trunk",), n))              # (kind, n)
            wall, cpu = wall_ms(fwd)
            if g is not None:
                dev_ms, dev_spread = events_stats(cm.stream, g.launch)
            else:
                dev_ms = dev_spread = float("nan")
            # eager path (one numba launch at a time): wall and CPU time
            ug, cm.use_graphs = cm.use_graphs, False
            e_wall, e_cpu = wall_ms(fwd, reps=3, warm=1)
            cm.use_graphs = ug
            r = dict(ctx=ctx, n=n, device_ms=dev_ms, device_spread_ms=dev_spread, forward_wall_ms=wall, forward_cpu_ms=cpu, eager_wall_ms=e_wall,
                     eager_cpu_ms=e_cpu, first_call_s=t_first, graph=g is not None)
            res[(ctx, n)] = r
            print(f"  ctx {ctx:5d} n={n}: graph device {dev_ms:6.2f} +- {dev_spread:.2f} ms | forward() wall {wall:6.2f} ms cpu {cpu:5.2f} ms"
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
    steps, blocks = 16, 6
    cm.stream.synchronize()
    rates, dt, dc = [], 0.0, 0.0
    for _ in range(blocks):         # blocks of 16 steps: the spread is the std of their rates
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            dec.step()
        rates.append(steps / (time.perf_counter() - t0))
        dt, dc = dt + time.perf_counter() - t0, dc + time.process_time() - c0
    out["decode_tok_s"] = steps * blocks / dt
    out["decode_tok_s_spread"] = float(np.std(rates))
    out["decode_cpu_ms_per_token"] = dc / (steps * blocks) * 1e3
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
    print(f"  greedy decode at ctx 512: {out['decode_tok_s']:.1f} +- {out['decode_tok_s_spread']:.1f} tok/s ({out['decode_pct_roofline']:.0f}% of roofline "
          f"{out['roofline_tok_s']:.1f}); CPU {out['decode_cpu_ms_per_token']:.2f} ms/token; tight loop {out['tight_decode_tok_s']:.1f} tok/s", flush=True)
    return res


class ForcedDrafts:
    """The model, with the MTP logits bent toward a reference continuation at a chosen rate per depth (as
    tests/test_speculative.py's ForcedDrafts): random weights draft nothing a trunk would accept on its own."""

    def __init__(self, model, reference, hit_rate, salt=0):
        self._m, self.ref, self.hit_rate, self.salt = model, reference, hit_rate, salt

    def __getattr__(self, name):
        return getattr(self._m, name)

    def mtp_forward(self, j, ids, prev_h, cache, positions, last_only=False):
        import zlib
        g, logits = self._m.mtp_forward(j, ids, prev_h, cache, positions, last_only=last_only)
        logits = np.array(logits, copy=True)
        for r, p in enumerate(positions[-len(logits):]):
            target = int(p) + 1                      # the row at position p predicts token index p + 1
            u = zlib.crc32(f"{self.salt}-{j}-{target}".encode()) / 2**32
            if target < len(self.ref) and u < self.hit_rate:
                logits[r] = -10.0
                logits[r, self.ref[target]] = 10.0
        return g, logits


def bench_spec(cm, out, k=3, rate=0.8, prompt_len=64, steps=96):
    """One speculative cycle end to end: MiMo's MTP layer used recursively at depth k, drafts forced to the plain
    greedy continuation with probability `rate` per depth, against plain greedy decode over the same tokens."""
    from mtp_ref.speculative import generate
    rng = np.random.default_rng(2)
    prompt = [int(t) for t in rng.integers(0, cm.config.vocab_size, prompt_len)]
    generate(cm, prompt, 8, 0, stop_at_eos=False)                           # warm: compile, capture
    t0 = time.perf_counter()
    base = generate(cm, prompt, steps, 0, stop_at_eos=False)
    t_plain = time.perf_counter() - t0
    forced = ForcedDrafts(cm, prompt + base.token_ids, rate)
    generate(forced, prompt, 16, k, mode="recursive", stop_at_eos=False)    # warm the k + 1-token graphs
    t0 = time.perf_counter()
    res = generate(forced, prompt, steps, k, mode="recursive", stop_at_eos=False)
    t_spec = time.perf_counter() - t0
    assert res.token_ids == base.token_ids, "forced drafts changed the greedy tokens"
    hist = res.stats["accepted_length_histogram"]
    out["spec"] = dict(k=k, rate=rate, prompt_len=prompt_len, steps=steps, plain_s=t_plain, spec_s=t_spec,
                       hist=hist, tokens_per_cycle=steps / max(1, sum(hist)),
                       plain_tok_s=steps / t_plain, spec_tok_s=steps / t_spec, speedup=t_plain / t_spec)
    print(f"  speculative, recursive MTP k={k}, forced acceptance {rate} per depth, {steps} tokens after a "
          f"{prompt_len}-token prompt: {steps / t_spec:.1f} tok/s against plain {steps / t_plain:.1f} "
          f"({t_plain / t_spec:.2f}x); accepted-length histogram {hist}", flush=True)


def bench_loop(cm, out, k=3, rate=0.8, ctx=512, steps=128, spec_prompt=64, spec_steps=128):
    """kernels_cuda.loop (token feedback on the device): (a) plain greedy, `steps` tokens after a `ctx`-token context;
    (b) the speculative cycle (recursive MTP, k, drafts forced on the device to the plain greedy continuation with
    probability `rate` per depth: loop.ForcedDraftFilter, ForcedDrafts' crc32 decisions) against plain greedy on
    the same prompt, the same timing: wall, host CPU (process_time) and device (events around each burst / cycle)
    seconds after prefill, per committed token."""
    from kernels_cuda.loop import BURST, ForcedDraftFilter, generate_greedy
    rng = np.random.default_rng(3)

    def per_token(res):
        s = res.stats
        h = s["accepted_length_histogram"]
        toks = sum((a + 1) * c for a, c in enumerate(h)) if s["draft_depth"] else s["target_forwards"]
        return dict(tokens=toks, tok_s=toks / s["decode_seconds"], cpu_ms=1e3 * s["decode_cpu_seconds"] / toks,
                    work_ms=1e3 * (s["decode_cpu_seconds"] - s["decode_sync_cpu_seconds"]) / toks,
                    device_ms=1e3 * s["decode_device_seconds"] / toks, wall_ms=1e3 * s["decode_seconds"] / toks,
                    hist=h, cycles=sum(h) if s["draft_depth"] else toks)

    prompt = [int(t) for t in rng.integers(0, cm.config.vocab_size, ctx)]
    generate_greedy(cm, prompt, 24, 0, stop_at_eos=False)                  # warm: compile, capture
    a = per_token(generate_greedy(cm, prompt, steps, 0, stop_at_eos=False, timing=True))
    prompt = [int(t) for t in rng.integers(0, cm.config.vocab_size, spec_prompt)]
    generate_greedy(cm, prompt, 24, 0, stop_at_eos=False)
    base = generate_greedy(cm, prompt, spec_steps, 0, stop_at_eos=False, timing=True)
    p = per_token(base)
    filt = ForcedDraftFilter(prompt + base.token_ids, rate, 1)
    for _ in range(2):      # the same run twice: the first runs each (kind, n) eagerly, the second captures it
        generate_greedy(cm, prompt, spec_steps, k, "recursive", stop_at_eos=False, draft_filter=filt)
    res = generate_greedy(cm, prompt, spec_steps, k, "recursive", stop_at_eos=False, draft_filter=filt, timing=True)
    assert res.token_ids == base.token_ids, "device-forced drafts changed the greedy tokens"
    b = per_token(res)
    b["tokens_per_cycle"] = b["tokens"] / b["cycles"]
    b["speedup_vs_plain_same_prompt"] = b["tok_s"] / p["tok_s"]
    b["speedup_vs_plain_ctx"] = b["tok_s"] / a["tok_s"]
    out["loop"] = dict(burst=BURST, ctx=ctx, plain_ctx=a, plain_prompt=p, spec=b, k=k, rate=rate,
                       spec_prompt=spec_prompt, spec_steps=spec_steps, steps=steps)
    print(f"\n## device loop (kernels_cuda.loop), per committed token after prefill (burst {BURST})")
    print("| run | tokens | tok/s | wall ms | host CPU ms | of it outside syncs | device ms | tokens/cycle | histogram |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in ((f"plain, ctx {ctx}", a), (f"plain, {spec_prompt}-token prompt", p),
                    (f"recursive MTP k={k}, forced {rate}", b)):
        print(f"| {name} | {r['tokens']} | {r['tok_s']:.1f} | {r['wall_ms']:.2f} | {r['cpu_ms']:.3f} | "
              f"{r['work_ms']:.3f} | {r['device_ms']:.2f} | {r['tokens'] / r['cycles']:.2f} | {r['hist'] if r is b else ''} |")
    print(f"speculative / plain (same prompt, same timing): {b['speedup_vs_plain_same_prompt']:.2f}x; "
          f"/ plain at ctx {ctx}: {b['speedup_vs_plain_ctx']:.2f}x", flush=True)


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


# name -> CudaModel options. "default" is what CudaModel runs; the others are earlier rules, for a same-call
# comparison. The kernel versions the configs v1..v12 of 2026-11-25/26 chose
# between are in kernels_cuda/dev/ (docs/history/2026-11-26-benchmarks-diary.md has their tables).
CONFIGS = {"default": {},
           "auto": {"gemm_tuning": "auto"},     # launch shapes measured per weight shape on this card (autotune.py)
           "v2": {"pick": "v2"},                # the rule before gemm_v4: no tensor-core GEMM at 5-8 tokens
           "v4all": {"pick": "v4all"},          # gemm_v4 at every token count <= 8 (is it also faster at 1..4?)
           "attn-v4": {"attn_pick": "v4"},      # the attention rule before v10: v4 for 17-32 query rows a KV group
           "no-v5": {"gemm_tuning": "TUNED_BEFORE_V5"}}  # the GEMM launch table before gemm_v5 (gemm_v2 only)


def pick_attention_v4(rep, n, dk, dv, ldq, qoff, ldk, ldv):
    """pick_attention as before attn_partial_v10: v4 (else v3) where the rule now answers v10."""
    from kernels_cuda import kernels as K
    from kernels_cuda.gemm import nmax_for
    from kernels_cuda.pick import SMEM_LIMIT, pick_attention
    got = pick_attention(rep, n, dk, dv, ldq, qoff, ldk, ldv)
    if got[0] != "v10":
        return got
    qmax = K.attn_v4_qmax(rep, nmax_for(n))
    fits = rep * nmax_for(n) <= 32 and K.attn_v4_smem(qmax, dk) <= SMEM_LIMIT
    return ("v4", "attn_combine_v2") if fits else ("v3", "attn_combine_v2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--spec", action="store_true", help="also one speculative cycle end to end (bench_spec)")
    ap.add_argument("--configs", default="default", help="comma-separated names of CONFIGS to measure")
    ap.add_argument("--loop", action="store_true", help="also the device loop, plain and speculative (bench_loop)")
    ap.add_argument("--loop-only", action="store_true", help="only bench_loop (no forward tables, no HF)")
    ap.add_argument("--repeat", type=int, default=1, help="bench_loop runs per config (the spread of its tok/s)")
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
        import kernels_cuda.backend as kb
        import kernels_cuda.pick as kp
        # "pick" changes pick.py's GEMM rule in this process only: "v2" = the rule before gemm_v4 (gemm_v2 at every
        # token count), "v4all" = gemm_v4 from 1 token on; the graphs are captured per CudaModel, i.e. per config
        pick = opts.pop("pick", None)
        kb.pick_gemm_v4 = (lambda *a, **k: None) if pick == "v2" else kp.pick_gemm_v4
        kp.GEMM4_MIN_N = 1 if pick == "v4all" else 5
        # "attn_pick": "v4" = the attention rule before v10 (v4 for 5-8-token verifies), this process only
        kb.pick_attention = pick_attention_v4 if opts.pop("attn_pick", None) == "v4" else kp.pick_attention
        auto = opts.get("gemm_tuning") == "auto"
        if isinstance(opts.get("gemm_tuning"), str):
            from kernels_cuda.dev import gemm as lab
            opts["gemm_tuning"] = gemm.TUNED if auto else getattr(gemm, opts["gemm_tuning"], None) or getattr(
                lab, opts["gemm_tuning"])
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
        if not a.loop_only:
            bench_ours(cm, ceil, oc)
            report(oc, cm, ceil, name, out)
        if a.spec and not a.loop_only:
            bench_spec(cm, oc)
        if a.loop or a.loop_only:
            runs = []
            for _ in range(a.repeat):
                bench_loop(cm, oc)
                runs.append(oc["loop"])
            oc["loop_runs"] = runs
        if a.json:
            json.dump(out, open(a.json, "w"), indent=1, default=str)
        del cm
        gc.collect()
        torch.cuda.empty_cache()
    if not a.no_hf and not a.loop_only:
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
