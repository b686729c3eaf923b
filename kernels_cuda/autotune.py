"""Measure the skinny-GEMM launch shape of each of a model's weight shapes on this GPU.

The best (R rows per warp, U chunks in flight, WARPS per block) of gemm_v2 depends on the weight shape, not only on
the token count: 4096-row weights (MiMo-7B's o_proj, down_proj) get only 256 blocks of 4 warps x 4 rows on 132 SMs
(docs/history/2026-11-26-kernels-notes.md), while 22016-row gate|up stacks stream near copy speed with the default. This times every candidate on
the model's own GEMMs, one CUDA graph of the same GEMM over all layers (distinct weights, so they come from HBM as
in a forward, not from L2), and returns a table keyed (N, K, NMAX) for CudaModel(gemm_tuning=...):

    from kernels_cuda.autotune import tune_gemms
    table, rows = tune_gemms(cm)          # cm: a CudaModel on the GPU
    cm.gemm_tuning.update(table)          # before the first forward is captured into a graph

Each candidate is a kernel compile (~1-2 s) the first time; the timings themselves take milliseconds.
"""

from __future__ import annotations

import time

from .gemm import MODE_RESID, MODE_STORE, MODE_SWIGLU, gemm_v5_smem, nmax_for
from .graphs import CudaGraph, events_ms
from .intrinsics import SIM

# (R, U, WARPS[, SPLITK]): gemm_v2 shapes, then gemm_v5 ones (the block's warps share R rows and split K)
CANDIDATES = ((4, None, 4), (2, 2, 4), (2, 1, 4), (4, 1, 4), (8, 2, 4), (8, 1, 4), (4, 2, 8), (2, 2, 8),
              (4, 2, 4, True), (4, 2, 2, True), (4, 1, 4, True), (4, 1, 2, True), (8, 1, 2, True))
SMEM_LIMIT = 48 * 1024


def _fits(R, W, NM, norm, mode, splitk=False) -> bool:
    if mode == MODE_SWIGLU and R % 2:
        return False
    if splitk:
        return R * NM <= 64 and gemm_v5_smem(NM, R, W, 32, norm) <= SMEM_LIMIT
    return R * NM <= 64 and W * 32 * (R * NM + (NM if norm else 0) + 1) * 4 <= SMEM_LIMIT


def _label(c) -> str:
    return f"{'v5' if len(c) > 3 and c[3] else 'v2'} R{c[0]}U{c[1]}W{c[2]}"


def model_gemms(cm) -> list:
    """(name, [Lin per layer], mode, x, ldx, y, ldy, res, norm per layer or None) of a dense GQA trunk + lm_head,
    with the buffers the forward uses."""
    H = cm.config.hidden_size
    dense = [L for L in cm.layers if "qkv" in L and "gu" in L]
    if not dense:
        return []
    fn = True                                        # CudaModel norms these GEMMs' inputs inside them
    jobs = [("q|k|v", [L["qkv"] for L in dense], MODE_STORE, cm.X if fn else cm.XN, H, cm.A, dense[0]["qkv"].N, None,
             [L["in_norm"] for L in dense] if fn else None),
            ("o", [L["o"] for L in dense], MODE_RESID, cm.B, cm.att_width, cm.X, H, cm.X, None),
            ("gate|up", [L["gu"] for L in dense], MODE_SWIGLU, cm.X if fn else cm.XN, H, cm.INTER,
             dense[0]["gu"].N // 2, None, [L["post_norm"] for L in dense] if fn else None),
            ("down", [L["down"] for L in dense], MODE_RESID, cm.INTER, dense[0]["down"].K, cm.X, H, cm.X, None),
            ("lm_head", [cm.lm_head], MODE_STORE, cm.HOUT, H, cm.LOGITS, cm.config.vocab_size, None, None)]
    return jobs


def tune_gemms(cm, ns=(1, 2, 4, 8), candidates=CANDIDATES, reps: int = 15, log=print):
    """-> (table {(N, K, NMAX): (R, U, WARPS)}, rows of measurements). bf16 weights only (the shapes the table keys)."""
    table, rows = {}, []
    keep = dict(cm.gemm_tuning)
    try:
        for name, lins, mode, x, ldx, y, ldy, res, norms in model_gemms(cm):
            lin0 = lins[0]
            if lin0.fmt != "bf16":
                continue
            wbytes = sum(L.nbytes or L.N * L.K * 2 for L in lins)
            for n in ns:
                nm = nmax_for(n)
                key = (lin0.N, lin0.K, nm)
                res_t = {}
                for cand in candidates:
                    R, U, W = cand[:3]
                    if not _fits(R, W, nm, norms is not None, mode, len(cand) > 3 and cand[3]):
                        continue
                    cm.gemm_tuning[key] = cand

                    def launches():
                        for j, L in enumerate(lins):
                            cm._gemm(L, x, ldx, y, ldy, nm, mode, res, norms[j] if norms is not None else None)
                    t0 = time.perf_counter()
                    launches()                                   # compile + load
                    cm.stream.synchronize()
                    if SIM:      # no graphs in the simulator: host seconds, which only exercise the selection
                        res_t[cand] = (time.perf_counter() - t0) * 1e3
                        continue
                    g = CudaGraph.capture(cm.stream, launches)
                    reps_l = 3 if len(lins) == 1 else 1          # one big weight: replay a few times
                    ms = events_ms(cm.stream, (lambda g=g: [g.launch() for _ in range(reps_l)]), reps=reps)
                    res_t[cand] = ms / reps_l
                best = min(res_t, key=res_t.get)
                default = res_t.get((4, None, 4))
                table[key] = best
                row = dict(gemm=name, N=lin0.N, K=lin0.K, n=nm, layers=len(lins), MB=wbytes / len(lins) / 1e6,
                           best=best, best_us=res_t[best] * 1e3 / len(lins),
                           best_GBps=wbytes / res_t[best] / 1e6,
                           default_us=default * 1e3 / len(lins) if default else float("nan"),
                           all_us={_label(c): v * 1e3 / len(lins) for c, v in res_t.items()})
                rows.append(row)
                if log:
                    log(f"  tune {name:8s} [{lin0.N}x{lin0.K}] n<={nm:2d}: best {_label(best)} "
                        f"{row['best_us']:6.1f} us/launch ({row['best_GBps']:5.0f} GB/s), default {row['default_us']:6.1f} us")
    finally:
        cm.gemm_tuning = keep
    return table, rows
