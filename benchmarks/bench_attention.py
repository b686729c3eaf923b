"""Decode / verify attention over the KV cache at MiMo-7B shapes (32 query heads over 8 KV heads of 128, fp32
cache): the partial kernel + the chunk merge, per attention version, against the bytes of the cache it must read.

Each case is checked against the NumPy reference (mtp_ref.ops.causal_attention) before it is timed; times are the
median device time of a CUDA graph of 20 (partial + merge) launch pairs over 20 distinct layers' caches (so the
cache comes from HBM, as in a forward), divided by 20; the "partial" / "merge" variants time one of the two kernels
alone, the "split" ones with a fraction / multiple of the default number of blocks per KV group.

    python benchmarks/bench_attention.py [--json out.json] [--contexts 512,4096] [--ns 1,2,4,8] [--variants v4,v5,v5-rw2]
    python benchmarks/bench_attention.py --ns 1,2,3,4,5,6,7,8 --variants v4,v9,v10      (issue 16: verifies of 5-8)
(a variant's spaces may be written as hyphens)
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
from kernels_cuda import gemm, kernels as K  # noqa: E402
from kernels_cuda.dev import attention as LA  # noqa: E402  (the lab versions it times beside the production ones)
from kernels_cuda.graphs import CudaGraph  # noqa: E402
from mtp_ref import ops  # noqa: E402

NH, NKV, HD = 32, 8, 128
LAYERS = 20
# name -> version and options: maxreg (v4 / v5 register cap), split (factor on the default blocks / warps per KV group),
# what is timed ("both" = partial + merge, "partial", "merge"), v5 / v6's query rows per warp (rw), the merge kernel
# (combine: attn_combine_v2 / v3 / v4), v9's accumulator sets (asets)
V4 = dict(version="v4", maxreg=K.ATT4_MAXREG)
V5 = dict(version="v5", rw=LA.ATT5_RW, maxreg=None)            # None: the backend's cap for the number of rows
V6 = dict(version="v6", rw=LA.ATT6_RW, maxreg=None, combine="v3")
V7 = dict(version="v7", nw=LA.ATT7_NW, maxreg=None, combine="v3")
V9 = dict(version="v9", nw=K.ATT9_NW, maxreg=None, combine="v4", asets=2)
V10 = dict(version="v10", nw=K.ATT9_NW, maxreg=None, combine="v4", vpre=1, dsplit=1)   # make_attention_v10's VPRE, DSPLIT
VARIANTS = {"v3": dict(version="v3"), "v4 no cap": dict(V4, maxreg=0), "v4": V4,
            "v4 partial": dict(V4, what="partial"), "v4 merge": dict(V4, what="merge"),
            "v4 split/2": dict(V4, split=0.5), "v4 split x2": dict(V4, split=2),
            "v5": V5, "v5 partial": dict(V5, what="partial"), "v5 merge": dict(V5, what="merge"),
            "v5 rw2": dict(V5, rw=2), "v5 rw8": dict(V5, rw=8), "v5 split/2": dict(V5, split=0.5),
            "v5 split/4": dict(V5, split=0.25), "v5 cap 128": dict(V5, maxreg=128), "v5 no cap": dict(V5, maxreg=0),
            "v5 c3": dict(V5, combine="v3"),
            "v6": V6, "v6 partial": dict(V6, what="partial"), "v6 merge": dict(V6, what="merge"),
            "v6 c2": dict(V6, combine="v2"), "v6 x2": dict(V6, split=2), "v6 x4": dict(V6, split=4),
            "v6 split/2": dict(V6, split=0.5), "v6 split/4": dict(V6, split=0.25), "v6 rw1": dict(V6, rw=1),
            "v6 rw4": dict(V6, rw=4), "v6 x0.75": dict(V6, split=0.75), "v6 x1.25": dict(V6, split=1.25),
            "v6 x1.5": dict(V6, split=1.5),
            "v6 cap 128": dict(V6, maxreg=128), "v6 cap 168": dict(V6, maxreg=168),
            "v6 rw4 cap 168": dict(V6, rw=4, maxreg=168),
            "v7": V7, "v7 partial": dict(V7, what="partial"), "v7 cap 168": dict(V7, maxreg=168),
            "v7 cap 200": dict(V7, maxreg=200), "v7 cap 128": dict(V7, maxreg=128), "v7 x0.5": dict(V7, split=0.5),
            "v7 x2": dict(V7, split=2), "v7 nw2": dict(V7, nw=2), "v7 nw2 x2": dict(V7, nw=2, split=2),
            "v9": V9, "v9 partial": dict(V9, what="partial"), "v9 merge": dict(V9, what="merge"),
            "v9 c3": dict(V9, combine="v3"), "v9 c3 merge": dict(V9, combine="v3", what="merge"),
            "v6 c4": dict(V6, combine="v4"), "v7 c4": dict(V7, combine="v4"), "v9 as1": dict(V9, asets=1),
            "v9 x0.5": dict(V9, split=0.5), "v9 x1.5": dict(V9, split=1.5), "v9 x2": dict(V9, split=2),
            "v9 nw2": dict(V9, nw=2), "v9 nw8": dict(V9, nw=8), "v9 cap 168": dict(V9, maxreg=168),
            "v9 cap 200": dict(V9, maxreg=200),
            "v10": V10, "v10 partial": dict(V10, what="partial"), "v10 vpre0": dict(V10, vpre=0),
            "v10 x0.5": dict(V10, split=0.5), "v10 x2": dict(V10, split=2), "v10 nw2": dict(V10, nw=2),
            "v10 nw8": dict(V10, nw=8), "v10 ds2": dict(V10, dsplit=2), "v10 ds2 nw8": dict(V10, dsplit=2, nw=8),
            "v10 ds2 x2": dict(V10, dsplit=2, split=2), "v10 ds2 vpre0": dict(V10, dsplit=2, vpre=0),
}
_KERNELS: dict = {}


def kernel(make, *args):
    """make(*args), built (and compiled) once per run: every context reuses it."""
    if (make, args) not in _KERNELS:
        _KERNELS[make, args] = make(*args)
    return _KERNELS[make, args]


def split_for(v: dict, S: int, sms: int, n: int = 1) -> int:
    """As CudaModel: v4 ~4 blocks per SM, v5 ~ATT5_BLOCKS_PER_SM blocks per SM, over the KV groups; v6
    ATT6_WARPS_PER_SM warps per SM over the groups' blocks of ceil(rows / rw) warps (counted up to ATT6_SPLIT_NW)."""
    if v["version"] in ("v7", "v9", "v10"):  # shares = warps a block x blocks per group
        per_sm = {"v7": LA.ATT7_WARPS_PER_SM, "v9": K.ATT9_WARPS_PER_SM, "v10": K.ATT9_WARPS_PER_SM}[v["version"]]
        shares = v["nw"] // v.get("dsplit", 1)  # v10 DSPLIT: warps of a share
        return shares * max(1, math.ceil(per_sm * sms * v.get("split", 1) / (NKV * v["nw"])))
    if v["version"] == "v6":
        nw = math.ceil(K.attn_v4_qmax(NH // NKV, gemm.nmax_for(n)) / v["rw"])
        return max(1, min(S, math.ceil(LA.ATT6_WARPS_PER_SM * sms * v.get("split", 1) /
                                       (NKV * min(nw, LA.ATT6_SPLIT_NW)))))
    per_sm = LA.ATT5_BLOCKS_PER_SM if v["version"] == "v5" else 4
    return max(1, min(S, math.ceil(per_sm * sms * v.get("split", 1) / NKV)))


def launches_for(stream, v, n, cap, qd, kcs, vcs, po, pml, out, meta, split, nt=128):
    """([partial launch per layer], [merge launch per layer]) of variant v"""
    nq = gemm.nmax_for(n)
    rep = NH // NKV
    scale = HD ** -0.5
    parts, merges = [], []
    if v["version"] in ("v4", "v5", "v6", "v7", "v9", "v10"):
        qmax = K.attn_v4_qmax(rep, nq)
        if v["version"] == "v10":
            if rep * n > 32:
                raise ValueError("v10 holds <= 32 query rows per KV group")
            cap = v["maxreg"] if v["maxreg"] is not None else K.ATT10_MAXREG
            kern = kernel(K.make_attention_v10, HD, HD, v["nw"], cap, v["vpre"], v["dsplit"])
            nt = 32 * v["nw"]
            smem, grid, unit = K.attn_v10_smem(HD), NKV * (split // (v["nw"] // v["dsplit"])), K.ATT9_KS
        elif v["version"] == "v9":
            if rep * n > 16:
                raise ValueError("v9 holds <= 16 query rows per KV group")
            cap = v["maxreg"] if v["maxreg"] is not None else K.ATT9_MAXREG
            kern = kernel(K.make_attention_v9, HD, HD, v["nw"], cap, v["asets"])
            nt = 32 * v["nw"]
            smem, grid, unit = K.attn_v9_smem(HD), NKV * (split // v["nw"]), K.ATT9_KS
        elif v["version"] == "v7":
            qmax = LA.attn_v7_qmax(rep, nq)
            if qmax > 16:
                raise ValueError("v7 holds <= 16 query rows per KV group")
            cap = v["maxreg"] if v["maxreg"] is not None else LA.ATT7_MAXREG
            kern = kernel(LA.make_attention_v7, qmax, v["nw"], cap)
            nt = 32 * v["nw"]
            smem, grid, unit = LA.attn_v7_smem(qmax, HD, v["nw"]), NKV * (split // v["nw"]), LA.ATT7_KT
        elif v["version"] == "v4":
            kern = kernel(K.make_attention_v4, qmax, math.ceil(HD / nt), nt // 32, v["maxreg"])
            smem, grid, unit = K.attn_v4_smem(qmax, HD), NKV * split, K.ATT4_SUB
        else:
            if rep * nq > LA.ATT5_MAXQ:
                raise ValueError(f"v5 / v6 hold <= {LA.ATT5_MAXQ} query rows per KV group")
            rw = min(qmax, v["rw"])
            if v["version"] == "v5":
                cap = v["maxreg"] if v["maxreg"] is not None else (LA.ATT5_MAXREG if qmax <= LA.ATT5_RW else
                                                                   LA.ATT5_MAXREG_WIDE)
                kern = kernel(LA.make_attention_v5, qmax, rw, math.ceil(HD / 128), cap)
            else:
                cap = v["maxreg"] if v["maxreg"] is not None else (LA.ATT6_MAXREG if qmax <= rw else
                                                                   LA.ATT6_MAXREG_WIDE)
                kern = kernel(LA.make_attention_v6, qmax, rw, HD // 16, math.ceil(HD / 128), cap)
            nt = 32 * kern.NW
            smem, grid, unit = LA.attn_v5_smem(qmax, HD, rw), NKV * split, LA.ATT5_SUB
        for kc, vc in zip(kcs, vcs):
            parts.append(lambda kc=kc, vc=vc: kern[grid, nt, stream, smem](
                qd, NH * HD, 0, kc, NKV * HD, vc, NKV * HD, po, pml, meta, n, NH, rep, HD, HD, scale, split))
            if v.get("combine", "v2") == "v4":
                merges.append(lambda: K.attn_combine_v4[n * NH, 32 * K.COMBINE4_SL, stream](
                    po, pml, out, NH * HD, 0, meta, n, NH, HD, unit, split))
            elif v.get("combine", "v2") == "v3":
                merges.append(lambda: LA.attn_combine_v3[n * NH, 32 * LA.COMBINE3_SL, stream](
                    po, pml, out, NH * HD, 0, meta, n, NH, HD, unit, split))
            else:
                merges.append(lambda: K.attn_combine_v2[n * NH, 128, stream](po, pml, out, NH * HD, 0, meta, n, NH,
                                                                             HD, unit, split))
    else:
        C = 32
        S = math.ceil(cap / C)
        kern = kernel(K.make_attention_v3, nq)
        for kc, vc in zip(kcs, vcs):
            parts.append(lambda kc=kc, vc=vc: kern[NH * S, nt, stream, (nq * HD + nq * C) * 4](
                qd, NH * HD, 0, kc, NKV * HD, vc, NKV * HD, po, pml, meta, n, NH, rep, HD, HD, scale, C, S, 1))
            merges.append(lambda: K.attn_combine_v2[n * NH, nt, stream](po, pml, out, NH * HD, 0, meta, n, NH, HD, C, 0))
    return parts, merges


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--contexts", default="512,4096")
    ap.add_argument("--ns", default="1,2,4,8")
    ap.add_argument("--variants", default=None, help="comma-separated names of VARIANTS (default: all)")
    a = ap.parse_args()
    asked = None if a.variants is None else [x.replace("-", " ") for x in a.variants.split(",")]  # v5-kb4 = "v5 kb4"
    if asked is not None and set(asked) - set(VARIANTS):
        sys.exit(f"unknown variants {sorted(set(asked) - set(VARIANTS))}; known: {list(VARIANTS)}")
    variants = [k for k in VARIANTS if asked is None or k in asked]
    t_start = time.time()
    cp = copy_bandwidth(1024)
    ceil = cp["memcpy_d2d_GBps"]
    ctxs = [int(c) for c in a.contexts.split(",")]
    ns = [int(c) for c in a.ns.split(",")]
    cap = max(ctxs) + 16
    rng = np.random.default_rng(0)
    kh = [rng.standard_normal((cap, NKV * HD)).astype(np.float32) for _ in range(2)]
    vh = [rng.standard_normal((cap, NKV * HD)).astype(np.float32) for _ in range(2)]
    kcs = [cuda.to_device(kh[i % 2].ravel()) for i in range(LAYERS)]
    vcs = [cuda.to_device(vh[i % 2].ravel()) for i in range(LAYERS)]
    S = math.ceil(cap / 32)
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    SP = max([S] + [split_for(VARIANTS[k], S, sms) for k in variants])   # v7 / v9 shares do not depend on S
    po = cuda.to_device(np.zeros(SP * NH * 16 * HD, np.float32))
    pml = cuda.to_device(np.zeros(SP * NH * 16 * 2, np.float32))
    out = cuda.to_device(np.zeros(16 * NH * HD, np.float32))
    split = split_for(VARIANTS["v4"], S, sms)
    stream = cuda.stream()              # the legacy default stream cannot be captured into a graph
    rows = []
    print(f"{device_name()}: copy {ceil:.0f} GB/s; GQA {NH}/{NKV} x {HD}, fp32 cache, v4 split {split}", flush=True)
    for ctx in ctxs:
        for n in ns:
            start = ctx - n
            q = rng.standard_normal((n, NH * HD)).astype(np.float32)
            qd = cuda.to_device(np.concatenate([q, np.zeros((16 - n, NH * HD), np.float32)]).ravel())
            m = np.zeros(K.META_LEN, np.int32)
            m[K.M_START], m[K.M_N] = start, n
            meta = cuda.to_device(m)
            want = ops.causal_attention(q.reshape(n, NH, HD), kh[1][:ctx].reshape(ctx, NKV, HD),
                                        vh[1][:ctx].reshape(ctx, NKV, HD), HD ** -0.5, start)
            kv_bytes = 2 * ctx * NKV * HD * 4
            r = dict(ctx=ctx, n=n, kv_MB=kv_bytes / 1e6)
            for name in variants:
                v = VARIANTS[name]
                try:
                    sp = split_for(v, S, sms, n)
                    parts, merges = launches_for(stream, v, n, cap, qd, kcs, vcs, po, pml, out, meta, sp)
                    parts[1]()
                    merges[1]()
                    stream.synchronize()
                    got = out.copy_to_host()[: n * NH * HD].reshape(n, NH * HD)
                    err = float(np.abs(got - want).max() / np.abs(want).max())
                    fns = {"both": [f for pm in zip(parts, merges) for f in pm], "partial": parts,
                           "merge": merges}[v.get("what", "both")]
                    g = CudaGraph.capture(stream, lambda: [f() for f in fns])
                    us = events_ms(stream, g.launch) * 1e3 / LAYERS
                    r[name] = dict(us=us, GBps=kv_bytes / us / 1e3, err=err, split=sp)
                except Exception as e:  # noqa: BLE001 - report the variant's failure, keep the others
                    r[name] = dict(error=repr(e)[:300])
            rows.append(r)
            print(f"  ctx {ctx:5d} n={n}: " + " | ".join(
                f"{k} {v['us']:6.1f} us {100 * v['GBps'] / ceil:3.0f}% err {v['err']:.0e}" if "us" in v else
                f"{k} ERROR {v['error']}" for k, v in r.items() if isinstance(v, dict)), flush=True)
    print(f"\n## Attention over the KV cache (MiMo-7B: {NH} heads / {NKV} KV heads x {HD}, fp32 cache), {device_name()}, "
          f"copy {ceil:.0f} GB/s, {time.strftime('%Y-%m-%d')}: us per layer (partial + merge unless named), % of copy for the cache bytes; v4 split {split} unless named")
    names = list(variants)
    print("| ctx | n | cache MB | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for r in rows:
        cells = [f"{r[k]['us']:.1f} ({100 * r[k]['GBps'] / ceil:.0f}%)" if "us" in r[k] else "error" for k in names]
        print(f"| {r['ctx']} | {r['n']} | {r['kv_MB']:.1f} | " + " | ".join(cells) + " |")
    print(f"(seconds: {time.time() - t_start:.0f})")
    if a.json:
        json.dump(dict(device=device_name(), copy=cp, split=split, rows=rows), open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
