"""The Gated DeltaNet verify-window kernels at Qwen3-Next-80B-A3B shapes (32 value heads, 16 key heads,
dk = dv = 128, conv channels 8192, kernel 4): device time per launch against the bytes floor.

Each configuration is a CUDA graph of `copies` launches rotating over that many state/snapshot buffers
(> 4x the 50 MB L2 in total, so the state comes from HBM); time = median replay / copies. Checks the
results against kernels_cuda/reference.py first (one launch, the same shapes).

    python -m kernels_cuda.bench_delta [--json out.json]
    NUMBA_ENABLE_CUDASIM=1 python -m kernels_cuda.bench_delta --sim    # tiny shapes, correctness only
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from numba import cuda

from . import kernels as K
from . import reference as ref


def floor_bytes(n, nk, nv, dk, dv):
    """Read S once, write n+1 snapshots, read q/k/v/g/beta, write o (fp32)."""
    state = nv * dk * dv * 4
    return state + (n + 1) * state + n * (2 * nk * dk + nv * dv + 2 * nv) * 4 + n * nv * dv * 4


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--sim", action="store_true", help="tiny shapes, no timing (CUDA simulator)")
    args = ap.parse_args(argv)
    nk, nv, dk, dv, threads, rg = (2, 4, 12, 10, 1, 1) if args.sim else (16, 32, 128, 128, 128, 4)
    ROWS, RG = K.delta_rule_shape(dk, threads, rg)
    kern = K.make_gated_delta_rule(ROWS, RG)
    tiles = math.ceil(dv / (threads // RG))
    rng = np.random.default_rng(0)
    meta = cuda.to_device(np.zeros(K.META_LEN, np.int32))
    rows = []
    print(f"## Gated delta rule, nv={nv} nk={nk} dk={dk} dv={dv}, ROWS={ROWS} RG={RG}, {threads} threads, "
          f"{nv * tiles} blocks")
    print("| n | floor MB | us/launch | GB/s | max rel err |")
    print("|---|---|---|---|---|")
    for n in (1, 2, 4, 8, 16):
        q, k, v, g, beta, S0 = ref.delta_rule_inputs(rng, n, nk, nv, dk, dv)
        W = 2 * nk * dk + nv * dv
        buf = np.concatenate([q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1)], 1)
        qkv, gd, bd = cuda.to_device(buf.ravel()), cuda.to_device(g.ravel()), cuda.to_device(beta.ravel())
        out = cuda.to_device(np.zeros(n * nv * dv, np.float32))
        fb = floor_bytes(n, nk, nv, dk, dv)
        copies = 1 if args.sim else max(2, math.ceil(4 * 50e6 / ((n + 2) * nv * dk * dv * 4)))
        s_ins = [cuda.to_device(S0.ravel()) for _ in range(copies)]
        snaps = [cuda.device_array((n + 1) * nv * dk * dv, np.float32) for _ in range(copies)]
        stream = cuda.stream()

        def launch(i):
            kern[nv * tiles, threads, stream](qkv, W, 0, qkv, W, nk * dk, qkv, W, 2 * nk * dk, gd, bd, s_ins[i],
                                              snaps[i], out, nv * dv, 0, meta, nv, nv // nk, dk, dv, n)

        launch(0)
        stream.synchronize()
        want_o, want_s = ref.gated_delta_rule(np.repeat(q, nv // nk, 1), np.repeat(k, nv // nk, 1), v, g, beta, S0)
        err = max(np.abs(out.copy_to_host().reshape(want_o.shape) - want_o).max() / np.abs(want_o).max(),
                  np.abs(snaps[0].copy_to_host().reshape(want_s.shape) - want_s).max() / np.abs(want_s).max())
        us = float("nan")
        if not args.sim:
            from .graphs import CudaGraph
            gr = CudaGraph.capture(stream, lambda: [launch(i) for i in range(copies)])
            e0, e1 = cuda.event(), cuda.event()
            ts = []
            for _ in range(20):
                e0.record(stream)
                gr.launch()
                e1.record(stream)
                e1.synchronize()
                ts.append(cuda.event_elapsed_time(e0, e1) * 1e3 / copies)
            us = float(np.median(ts))
        gbs = fb / us / 1e3 if us == us else float("nan")
        rows.append(dict(n=n, floor_bytes=fb, us=us, gbs=gbs, rel_err=float(err)))
        print(f"| {n} | {fb / 1e6:.1f} | {us:.2f} | {gbs:.0f} | {err:.1e} |")
        if err > 1e-4:
            raise SystemExit(f"n={n}: kernel differs from the reference (max rel err {err:.2e})")
    if args.json:
        json.dump(dict(shape=dict(nk=nk, nv=nv, dk=dk, dv=dv, rows=ROWS, rg=RG, threads=threads), rows=rows),
                  open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
