"""Skinny GEMM y[n, N] = x[n, K] @ W[N, K]^T with bf16 weights: achieved GB/s of weight traffic
against the device copy bandwidth (measured in the same run) and torch.matmul (cuBLAS, bf16).

Every number is the median over graph replays of `copies` back-to-back launches that rotate over
several weight copies (more than 4x the L2 in total, so the weights come from HBM), divided by
the number of launches. GB/s = weight bytes / time (x and y are < 1% of the traffic).

    python benchmarks/bench_gemv.py [--json out.json] [--quick] [--ns 1,2,4,8,16] [--no-v1]

For 5..8 tokens the tensor-core kernel v3 (gemm.make_gemm_v3) is timed and checked too (variant "v3").
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
from kernels_cuda import gemm  # noqa: E402
from kernels_cuda.dev import gemm as LG  # noqa: E402  (the lab versions v1 / v3 it times beside v2)
from kernels_cuda.graphs import CudaGraph  # noqa: E402

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192)]   # (N, K): W is [N, K]
NS = [1, 2, 4, 8, 16]
VARIANTS = [  # (R rows per warp, U chunks in flight, WARPS per block); None = the default of gemm.py
    None, (2, 2, 4), (8, 2, 4), (4, 2, 8),
]


def time_numba(stream, launches, reps=15):
    """Median ms per launch of a list of launches, replayed as one CUDA graph (eager fallback)."""
    def run():
        for f in launches:
            f()
    run()
    stream.synchronize()
    mode = "graph"
    try:
        g = CudaGraph.capture(stream, run)
        fn = g.launch
    except Exception as e:  # noqa: BLE001 - report and fall back to eager launches
        print(f"  (graph capture failed: {e!r}; timing eager launches)")
        fn, mode = run, "eager"
    return events_ms(stream, fn, reps=reps, warm=1) / len(launches), mode


def time_torch(fns, reps=15):
    import torch
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / len(fns))
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="default variant only (and v3)")
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="token counts")
    ap.add_argument("--no-v1", action="store_true", help="skip the naive v1 point")
    a = ap.parse_args()
    ns = [int(v) for v in a.ns.split(",")]
    import torch

    t_start = time.time()
    cp = copy_bandwidth(2048)
    ceil = cp["memcpy_d2d_GBps"]
    print(f"{device_name()}: copy {cp['memcpy_d2d_GBps']:.0f} GB/s (memcpy), {cp['numba_copy16_GBps']:.0f} "
          f"(numba 16 B), {cp.get('torch_copy_GBps', float('nan')):.0f} (torch); ceiling = memcpy", flush=True)
    stream = cuda.stream()
    rows = []
    variants = [None] if a.quick else VARIANTS
    for (N, K) in SHAPES:
        wbytes = N * K * 2
        copies = max(2, math.ceil(4 * 50e6 / wbytes))
        wt = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / math.sqrt(K) for _ in range(copies)]
        wd = [cuda.as_cuda_array(w.view(torch.int16)).view(np.uint16).reshape(N * K) for w in wt]
        torch.cuda.synchronize()
        for n in ns:
            NM = gemm.nmax_for(n)
            xt = torch.randn(NM, K, device="cuda", dtype=torch.float32)
            x = cuda.as_cuda_array(xt).reshape(NM * K)
            torch.cuda.synchronize()
            y = cuda.device_array(NM * N, np.float32)
            res = {}
            for v in variants:
                R, U, Wp = v if v is not None else (4, None, 4)
                if (R or 4) * NM > 64 or Wp * 32 * (R * NM + 1) * 4 > 48 * 1024:
                    continue                        # too many accumulators / too much shared memory
                k = gemm.get_gemm_v2("bf16", NM, R, Wp, U)
                blocks = gemm.gemm_v2_blocks(N, gemm.MODE_STORE, R, Wp)
                launches = [(lambda w=w: k[blocks, 32 * Wp, stream](x, K, w, y, y, N, y, y, n, K, N, 0, 0, y, 0.0))
                            for w in wd]
                ms, mode = time_numba(stream, launches)
                res["default" if v is None else f"R{R}U{U}W{Wp}"] = (ms, mode)
            # correctness spot check of the default kernel against torch on the last weight copy
            yt = torch.as_tensor(y, device="cuda").view(NM, N)[:n]
            want = xt[:n] @ wt[-1].float().t()
            err = float((yt - want).abs().max() / want.abs().max())
            err3 = None
            if LG.gemm_v3_ok("bf16", n, K, K):
                k3 = LG.get_gemm_v3()
                b3 = LG.gemm_v3_blocks(N)
                launches = [(lambda w=w: k3[b3, 32 * LG.GEMM3_KW, stream](x, K, w, y, y, N, y, y, n, K, N, 0, 0, y,
                                                                            0.0)) for w in wd]
                ms, mode = time_numba(stream, launches)
                res["v3"] = (ms, mode)
                yt = torch.as_tensor(y, device="cuda").view(NM, N)[:n]
                err3 = float((yt - want).abs().max() / want.abs().max())
            xb = xt[:n].to(torch.bfloat16)
            tms = time_torch([(lambda w=w: torch.matmul(xb, w.t())) for w in wt])
            best_k = min(res, key=lambda q: res[q][0])
            r = dict(N=N, K=K, n=n, MB=wbytes / 1e6, default_us=res["default"][0] * 1e3,
                     default_GBps=wbytes / res["default"][0] / 1e6, best=best_k, best_us=res[best_k][0] * 1e3,
                     best_GBps=wbytes / res[best_k][0] / 1e6, cublas_us=tms * 1e3, cublas_GBps=wbytes / tms / 1e6,
                     rel_err=err, rel_err_v3=err3, mode=res["default"][1],
                     variants={q: v[0] * 1e3 for q, v in res.items()})
            r["default_pct_copy"] = 100 * r["default_GBps"] / ceil
            r["best_pct_copy"] = 100 * r["best_GBps"] / ceil
            r["default_vs_cublas"] = r["default_GBps"] / r["cublas_GBps"]
            rows.append(r)
            print(f"  W {N}x{K} n={n:2d}: default {r['default_us']:7.1f} us {r['default_GBps']:6.0f} GB/s "
                  f"({r['default_pct_copy']:3.0f}% copy) best {best_k} {r['best_GBps']:6.0f} GB/s | cuBLAS "
                  f"{r['cublas_us']:7.1f} us {r['cublas_GBps']:6.0f} GB/s | err {err:.1e}"
                  + (f" | v3 {wbytes / res['v3'][0] / 1e6:6.0f} GB/s ({100 * wbytes / res['v3'][0] / 1e6 / ceil:3.0f}%) "
                     f"err {err3:.1e}" if err3 is not None else ""), flush=True)
        del wt, wd
        torch.cuda.empty_cache()
    v1 = {}
    if a.no_v1:
        ns_v1 = ()
    else:
        ns_v1 = (1, 4)
    # v1 (naive, one thread per output): one point, for the NOTES
    N, K = 4096, 4096
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    wd = cuda.as_cuda_array(w.view(torch.int16)).view(np.uint16).reshape(N * K)
    torch.cuda.synchronize()
    xt1 = torch.randn(4, K, device="cuda")
    torch.cuda.synchronize()
    x = cuda.as_cuda_array(xt1).reshape(4 * K)
    y = cuda.device_array(N * 4, np.float32)
    k1 = LG.make_gemm_v1("bf16")
    for n in ns_v1:
        ms, _ = time_numba(stream, [lambda: k1[(N // 128, n), 128, stream](x, wd, y, y, n, K, N)], reps=5)
        v1[n] = dict(us=ms * 1e3, GBps=N * K * 2 / ms / 1e6)
    if v1:
        print(f"  v1 naive 4096x4096: n=1 {v1[1]['GBps']:.0f} GB/s, n=4 {v1[4]['GBps']:.0f} GB/s")

    print(f"\n## Skinny GEMM, bf16 weights, {device_name()}, copy ceiling {ceil:.0f} GB/s "
          f"(memcpy D2D, read+write), {time.strftime('%Y-%m-%d')}")
    print("| W [N x K] | MB | n | v2 default us | GB/s | % copy | best variant | GB/s | % copy | cuBLAS us | GB/s | "
          "v2/cuBLAS | v3 GB/s (% copy) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['N']}x{r['K']} | {r['MB']:.0f} | {r['n']} | {r['default_us']:.1f} | {r['default_GBps']:.0f} | "
              f"{r['default_pct_copy']:.0f}% | {r['best']} | {r['best_GBps']:.0f} | {r['best_pct_copy']:.0f}% | "
              f"{r['cublas_us']:.1f} | {r['cublas_GBps']:.0f} | {r['default_vs_cublas']:.2f}x | "
              + (f"{r['MB'] * 1e3 / r['variants']['v3']:.0f} ({100 * r['MB'] * 1e3 / r['variants']['v3'] / ceil:.0f}%) |"
                 if "v3" in r["variants"] else "- |"))
    print(f"(seconds: {time.time() - t_start:.0f})")
    if a.json:
        json.dump(dict(device=device_name(), copy=cp, rows=rows, v1=v1), open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
