"""Lab: skinny-GEMM versions that CudaModel does not launch (llm.c's dev/cuda shape).

Reference: kernels_cuda/reference.py `linear` (NumPy x @ w.T); the production kernels are gemm_v2, gemm_v5 and
gemm_v4 in kernels_cuda/gemm.py (kernels_cuda/pick.py picks them and their launch shapes). Versions kept here:

    v1  one thread per output element, scalar loads: the obvious first kernel (reads W n times)
    v3  bf16 on the tensor cores for 5..8 tokens (m16n8k16 MMAs via inline PTX, x split in 3 bf16 parts;
        16 rows a block, KW warps split K): correct, but slower than v2 with R = 8 in the 7B forward on the
        H100 (10.60 against 10.12 ms at n = 8; docs/history/)
    v4  (kernels_cuda/gemm.py, a production candidate: pick_gemm_v4 runs it at 5..8 tokens) v3's MMAs with x
        split once per input by gemm4_split (RMSNorm weight applied there, 1 / rms in the epilogue), MT m16 tiles a
        warp reusing every B fragment, U x MT x 2 16-byte weight loads in flight; timed here beside v2 and v3
    v5  (kernels_cuda/gemm.py, production through gemm.TUNED at 1..4 tokens) v2 with a block's warps sharing its rows
        and splitting K; `--layers 36` times it against the production pick and the rule before it (TUNED_BEFORE_V5)

    python -m kernels_cuda.dev.gemm [--ns 5,8] [--shapes o,down] [--no-sweep]   # GPU: validate and time v2 / v3 /
                                                 # v4 at n = 1..8 on MiMo-7B shapes (v4 launch shapes swept at n = 8)
    python -m kernels_cuda.dev.gemm --layers 36 [--ns 1,2,4] [--versions pick,v2,v5]   # GPU: forward-like timing
                                                 # (36 distinct weights a graph) of the pick, the old rule, V5_SWEEP
    NUMBA_ENABLE_CUDASIM=1 python -m kernels_cuda.dev.gemm    # tiny shapes, validation only
"""

from __future__ import annotations

import math

from numba import cuda, float32, uint32

from ..gemm import LOADERS, MODE_RESID, MODE_STORE, MODE_SWIGLU, gemm_v5_smem, store_output
from ..intrinsics import bits_f32, f32_bits, factory, ld_f32x4, ld_u32x4, mma_bf16, shfl_xor

_CACHE: dict = {}


# ----------------------------------------------------------------------------- v1: naive
@factory
def make_gemm_v1(fmt: str):
    _, load1 = LOADERS[fmt]

    @cuda.jit
    def gemm_v1(x, w, ws, y, n, K, N):
        """y[i, r] = sum_k x[i, k] W[r, k]; one thread per output, reads W n times."""
        r = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        i = cuda.blockIdx.y
        if r >= N or i >= n:
            return
        s = float32(0.0)
        for k in range(K):
            s += x[i * K + k] * load1(w, ws, r, k, K)
        y[i * N + r] = s

    return gemm_v1



# ----------------------------------------------------------------------------- v3: tensor cores
GEMM3_KW = 4           # warps of a v3 block: the same 16 weight rows, each a quarter of K (split-K)
GEMM3_U = 4            # 32-column blocks a lane has in flight
GEMM3_NMAX = 8         # tokens: the 8 columns of an m16n8k16 MMA
GEMM3_KWMAX = 8        # the most warps a block (shared memory for the split-K sums)


@cuda.jit(device=True, inline=True)
def bf16x3(v):
    """v = hi + mid + lo, each a bf16 (returned as its 16 bits): hi = v truncated to bf16, mid = the remainder
    truncated, lo = what is left truncated; v - (hi + mid + lo) ~ 2^-24 |v| (float32 accuracy: a bf16 MMA reads
    its operands exactly)."""
    h = f32_bits(v) >> 16
    r = v - bits_f32(h << 16)
    m = f32_bits(r) >> 16
    r2 = r - bits_f32(m << 16)
    return h, m, f32_bits(r2) >> 16


@cuda.jit(device=True, inline=True)
def x_fragments(x, xo, k, gsc, NORM, xb):
    """v3: the lane's 8 x values at columns k .. k + 7 of its token row (x[xo + k ...], times the norm weight g when
    NORM) as the B fragments of two k-steps, each split in 3 bf16 parts: xb[6 s + 2 p + h] = the pair word of
    k-step s (columns k + 4s + 2h, + 1), part p (hi, mid, lo). Returns the sum of squares of the raw values."""
    x0, x1, x2, x3 = ld_f32x4(x, xo + k)
    x4, x5, x6, x7 = ld_f32x4(x, xo + k + 4)
    ss = x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3 + x4 * x4 + x5 * x5 + x6 * x6 + x7 * x7
    if NORM:
        g0, g1, g2, g3 = ld_f32x4(gsc, k)
        g4, g5, g6, g7 = ld_f32x4(gsc, k + 4)
        x0, x1, x2, x3, x4, x5, x6, x7 = x0 * g0, x1 * g1, x2 * g2, x3 * g3, x4 * g4, x5 * g5, x6 * g6, x7 * g7
    for s in range(2):
        for hh in range(2):
            if s == 0:
                lo, hi = (x0, x1) if hh == 0 else (x2, x3)
            else:
                lo, hi = (x4, x5) if hh == 0 else (x6, x7)
            a0, a1, a2 = bf16x3(lo)
            b0, b1, b2 = bf16x3(hi)
            xb[6 * s + hh] = a0 | (b0 << 16)
            xb[6 * s + 2 + hh] = a1 | (b1 << 16)
            xb[6 * s + 4 + hh] = a2 | (b2 << 16)
    return ss


@factory
def make_gemm_v3(NORM: bool = False, U: int = GEMM3_U, KW: int = GEMM3_KW):
    """Skinny GEMM on the tensor cores for bf16 weights and n <= 8 tokens: m16n8k16 bf16 MMAs with float32
    accumulation, A = 16 weight rows, B = x^T (the 8 token columns), every weight byte read once.

    v2 spends one FFMA per (row, column, token) and reads x from L1 for every 8 weights: at n = 8 that load / FMA
    work, not HBM, set its speed (63-82% of copy). Here a block owns 16 rows (MODE_SWIGLU: 8 gate rows and their 8
    up rows, so silu(gate) * up is formed in the epilogue) and its KW warps split K, each taking every KW-th block
    of 32 columns; per block a lane reads 16 bytes of row g and of row g + 8 (the A fragments of two k-steps: the
    MMA's k index is a free permutation of the columns, as long as x uses the same one) and 8 x values of token g,
    split into 3 bf16 parts (hi + mid + lo = x to ~2^-24: float32 accuracy, 3 MMAs per k-step; the weights are
    exact). U blocks of loads are in flight before any is used. The KW partial sums (and NORM's sums of squares)
    are added through shared memory, then 128 threads run v2's epilogue (bias, residual, SwiGLU, RMSNorm's 1 / rms).
    Needs bf16 weights, K % (32 KW) == 0, x / ldx 16-byte aligned and 8 readable x rows; blocks of 32 KW threads
    (also in the simulator: the MMA is emulated across a warp's 32 lanes). Same arguments as gemm_v2.
    Outcome (H100, 2026-11-26, docs/history/2026-11-26-kernels-notes.md): correct (GPU kernel tests at MiMo-7B shapes), 80-94 registers, no spills,
    but in the 7B forward of 5-8 tokens 0.7-0.9 ms slower than gemm_v2 with R = 8, U = 2 (ctx 512 n = 8: 11.33 against
    10.60 ms), so it left CudaModel for this lab (2026-12-02).
    """
    assert KW <= GEMM3_KWMAX
    KB = 32 * KW                                             # columns per round of the block's warps
    WB = 8 * U                                               # weight words in flight: U x (row g, row g + 8) x 4
    XB = 12 * U                                              # x fragment words: U x 2 k-steps x 3 parts x 2

    @cuda.jit(fastmath=False)
    def gemm_v3(x, ldx, w, ws, y, ldy, bias, res, n, K, N, mode, has_bias, g, eps):
        tid = cuda.threadIdx.x
        lane = tid % 32
        wid = tid // 32
        gq = lane // 4                                       # MMA group: rows gq, gq + 8; token gq of B
        tq = lane - 4 * gq
        if mode == MODE_SWIGLU:
            P = N >> 1
            p0 = cuda.blockIdx.x * 8
            ra = min(p0 + gq, P - 1)                         # gate row; its up row P + ra
            rb = ra + P
        else:
            p0 = cuda.blockIdx.x * 16
            ra = min(p0 + gq, N - 1)                         # tail rows: read a valid row, never store it
            rb = min(p0 + gq + 8, N - 1)
        wa = ra * K
        wb = rb * K
        xo = gq * ldx
        wbuf = cuda.local.array(WB, uint32)
        xb = cuda.local.array(XB, uint32)
        acc = cuda.local.array(24, float32)                  # [k-step parity][hi, mid, lo][4]
        for a in range(24):
            acc[a] = float32(0.0)
        ss = float32(0.0)
        for k0 in range(wid * 32 + 8 * tq, K, U * KB):
            for u in range(U):                               # all loads first
                k = k0 + u * KB
                a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0
                if k < K:
                    a0, a1, a2, a3 = ld_u32x4(w, wa + k)
                    b0, b1, b2, b3 = ld_u32x4(w, wb + k)
                wbuf[8 * u] = a0
                wbuf[8 * u + 1] = a1
                wbuf[8 * u + 2] = a2
                wbuf[8 * u + 3] = a3
                wbuf[8 * u + 4] = b0
                wbuf[8 * u + 5] = b1
                wbuf[8 * u + 6] = b2
                wbuf[8 * u + 7] = b3
            for u in range(U):
                k = k0 + u * KB
                if k < K:                                    # warp-uniform (K % (32 KW) == 0)
                    ss += x_fragments(x, xo, k, g, NORM, xb)
                    for s in range(2):                       # k-step s: columns k + 4s .. + 3 of rows g, g + 8
                        for p in range(3):
                            j = 12 * s + 4 * p
                            d0, d1, d2, d3 = mma_bf16(wbuf[8 * u + 2 * s], wbuf[8 * u + 4 + 2 * s],
                                                      wbuf[8 * u + 2 * s + 1], wbuf[8 * u + 5 + 2 * s],
                                                      xb[6 * s + 2 * p], xb[6 * s + 2 * p + 1],
                                                      acc[j], acc[j + 1], acc[j + 2], acc[j + 3])
                            acc[j] = d0
                            acc[j + 1] = d1
                            acc[j + 2] = d2
                            acc[j + 3] = d3
        # ---- split-K: the KW warps' [16 rows, 8 tokens] partials (and sums of squares) through shared memory
        red = cuda.shared.array((GEMM3_KWMAX, 128), float32)
        sq = cuda.shared.array((GEMM3_KWMAX, GEMM3_NMAX), float32)
        for c in range(4):                                   # c: (row gq | gq + 8, token 2tq | 2tq + 1)
            v = (acc[8 + c] + acc[20 + c]) + (acc[4 + c] + acc[16 + c]) + (acc[c] + acc[12 + c])
            row = gq + 8 * (c // 2)
            red[wid, row * 8 + 2 * tq + (c % 2)] = v
        if NORM:
            ss += shfl_xor(ss, 1)
            ss += shfl_xor(ss, 2)
            if tq == 0:
                sq[wid, gq] = ss
        cuda.syncthreads()
        for e in range(tid, 128, 32 * KW):                   # epilogue: output (row e // 8, token e % 8)
            row = e // 8
            i = e - row * 8
            if i >= n:
                continue
            v = float32(0.0)
            for ww in range(KW):
                v += red[ww, e]
            den = float32(1.0)
            if NORM:
                t = float32(0.0)
                for ww in range(KW):
                    t += sq[ww, i]
                den = math.sqrt(t / float32(K) + float32(eps))
                v = v / den
            if mode == MODE_SWIGLU:
                if row < 8 and p0 + row < (N >> 1):
                    u = float32(0.0)
                    for ww in range(KW):
                        u += red[ww, e + 64]
                    if NORM:
                        u = u / den
                    store_output(y, ldy, bias, res, i, p0, row, v, u, N, mode, has_bias)
            elif p0 + row < N:
                store_output(y, ldy, bias, res, i, p0, row, v, float32(0.0), N, mode, has_bias)

    gemm_v3.NORM, gemm_v3.U, gemm_v3.KW = NORM, U, KW
    return gemm_v3


def gemm_v3_ok(fmt: str, n: int, K: int, ldx: int, KW: int = GEMM3_KW) -> bool:
    """Whether v3 takes this GEMM (bf16 weights, 5..8 tokens, K a multiple of 32 KW, 16-byte x rows)."""
    return fmt == "bf16" and 4 < n <= GEMM3_NMAX and K % (32 * KW) == 0 and ldx % 4 == 0


def gemm_v3_blocks(N: int, mode: int = MODE_STORE) -> int:
    return (N // 2 + 7) // 8 if mode == MODE_SWIGLU else (N + 15) // 16


def get_gemm_v3(NORM: bool = False, U: int = GEMM3_U, KW: int = GEMM3_KW):
    key = ("v3", bool(NORM), U, KW)
    if key not in _CACHE:
        _CACHE[key] = make_gemm_v3(bool(NORM), U, KW)
    return _CACHE[key]




# ----------------------------------------------------------------------------- validate and time each version
@cuda.jit
def _fill_bf16(w, seed):
    """Pseudo-random bf16 bits, |v| in [2^-8, 2^-7) with a random sign (no host round trip for 1.2 GB weights)."""
    i = cuda.grid(1)
    if i < w.size:
        h = (i * 2654435761 + seed) & 0xFFFFFFFF
        h ^= h >> 15
        h = (h * 73244475) & 0xFFFFFFFF
        h ^= h >> 13
        w[i] = (h & 0x807F) | 0x3B80


SHAPES_7B = [("qkv", 6144, 4096, MODE_STORE), ("o", 4096, 4096, MODE_RESID), ("gate|up", 22016, 4096, MODE_SWIGLU),
             ("down", 4096, 11008, MODE_RESID), ("lm_head", 151680, 4096, MODE_STORE)]
V4_SWEEP = [(1, 4, 4), (1, 2, 4), (1, 4, 8), (2, 2, 4), (2, 2, 8), (4, 2, 4), (4, 2, 8)]   # (MT, U, KW) at n = 8


def _copy_gbps(st) -> float:
    """GB/s of a 1 GiB device-to-device copy (read + write), the ceiling the lab's GB/s are compared with."""
    import numpy as np

    from ..graphs import events_ms
    src, dst = cuda.device_array(1 << 27, np.uint64), cuda.device_array(1 << 27, np.uint64)
    _fill_bf16[(src.size * 4 + 255) // 256, 256, st](src.view(np.uint16), 1)
    return 2 * src.nbytes / events_ms(st, lambda: dst.copy_to_device(src, stream=st)) / 1e6


def _want(x, wv, mode):
    """reference output of the first len(x) tokens: x @ W^T, or silu(gate) * up for MODE_SWIGLU ([gate; up] rows)."""
    from ..reference import linear, swiglu_stacked
    return swiglu_stacked(x, wv) if mode == MODE_SWIGLU else linear(x, wv)


def _main(a):
    import numpy as np

    from ..gemm import (TUNED, gemm4_xb_words, launch_gemm, launch_gemm_v4, launch_shape, nmax_for)
    from ..graphs import CudaGraph, events_ms
    from ..intrinsics import SIM
    from ..pick import pick_gemm_v4
    from ..reference import bf16_value

    gpu = not SIM
    st = cuda.stream()
    rng = np.random.default_rng(0)
    ns = [int(v) for v in a.ns.split(",")] if gpu else [3, 5]
    shapes = [s for s in SHAPES_7B if s[0] in a.shapes.split(",")] if gpu else [("tiny", 40, 256, MODE_STORE)]
    ceil = _copy_gbps(st) if gpu else float("nan")
    print(f"skinny GEMM lab (bf16 weights, MiMo-7B shapes): us per call (CUDA graph of 20, replayed; v4 = split + "
          f"GEMM), GB/s of weights, % of a {ceil:.0f} GB/s device copy, max rel err against reference.linear")
    for label, N, Kd, mode in shapes:
        w = cuda.device_array(N * Kd, np.uint16)
        _fill_bf16[(w.size + 255) // 256, 256, st](w, N)
        st.synchronize()
        NC = N if mode == MODE_SWIGLU else min(N, 16384)     # rows validated (lm_head: the first 16384)
        wv = bf16_value(w[: NC * Kd].copy_to_host().reshape(NC, Kd))
        x = rng.standard_normal((16, Kd)).astype(np.float32)
        xd = cuda.to_device(x.ravel())
        y = cuda.device_array(16 * N, np.float32)
        res0 = np.zeros(16 * N, np.float32)
        xb, den = cuda.device_array(gemm4_xb_words(Kd), np.uint32), cuda.device_array(8, np.float32)
        lanes = 32 if gpu else 1
        for n in ns:
            nm = nmax_for(n)
            R, U, Wp, sk = launch_shape(TUNED, N, Kd, nm) if gpu else (4, None, 1, False)
            runs = {"v5" if sk else "v2": lambda n=n, R=R, U=U, Wp=Wp, sk=sk: launch_gemm(
                st, "bf16", xd, Kd, w, None, y, N, n, Kd, N, mode, res=y if mode == MODE_RESID else None, R=R,
                WARPS=Wp, U=U, LANES=lanes, SPLITK=sk)}
            if gemm_v3_ok("bf16", n, Kd, Kd):
                k3 = get_gemm_v3()
                runs["v3"] = lambda n=n: k3[gemm_v3_blocks(N, mode), 32 * GEMM3_KW, st](
                    xd, Kd, w, y, y, N, y, y, n, Kd, N, mode, 0, y, 0.0)
            shp = pick_gemm_v4("bf16", max(n, 5), N, Kd, Kd, swiglu=mode == MODE_SWIGLU)   # its rule's shape
            sweep = [shp] + ([s for s in V4_SWEEP if s != shp and not (mode == MODE_SWIGLU and s[0] % 2)]
                             if (n == 8 and gpu and not a.no_sweep) else [])
            if not gpu:
                sweep = [(2, 2, 2)]
            for MT, U4, KW in sweep:
                runs[f"v4{(MT, U4, KW)}"] = lambda n=n, MT=MT, U4=U4, KW=KW: launch_gemm_v4(
                    st, xd, Kd, w, xb, den, y, N, n, Kd, N, mode, res=y if mode == MODE_RESID else None, MT=MT,
                    U=U4, KW=KW, split_threads=128 if gpu else 4)
            want = _want(x[:n], wv, mode)
            for name, run in runs.items():
                y.copy_to_device(res0, stream=st)
                run()
                got = y.copy_to_host().reshape(16, N)[:n, : (N // 2 if mode == MODE_SWIGLU else NC)]
                err = float(np.abs(got - want).max() / np.abs(want).max())
                us = gbps = float("nan")
                if gpu:
                    graph = CudaGraph.capture(st, lambda run=run: [run() for _ in range(20)])
                    us = events_ms(st, graph.launch, reps=10) * 1e3 / 20
                    gbps = N * Kd * 2 / us / 1e3
                print(f"  {label:8s} {N}x{Kd} n={n} {name:14s}: {us:8.1f} us {gbps:6.0f} GB/s "
                      f"{100 * gbps / ceil:5.1f}% copy  rel err {err:.1e} {'ok' if err < 2e-5 else 'FAIL'}", flush=True)
        del w


# The gemm_v2 launch-shape table before gemm_v5 (all H100-measured, 2026-11-25; docs/history/2026-11-26-kernels-notes.md):
# the "v2" version of the --layers mode and bench_model7b's "no-v5" config.
TUNED_BEFORE_V5 = {
    8: (8, 2),
    (6144, 4096, 1): (2, 2, 4), (6144, 4096, 2): (2, 1, 4), (6144, 4096, 4): (4, 1, 4), (6144, 4096, 8): (8, 2, 4),
    (4096, 4096, 1): (2, 1, 4), (4096, 4096, 2): (8, 2, 4), (4096, 4096, 4): (2, 2, 4), (4096, 4096, 8): (4, 1, 4),
    (22016, 4096, 1): (4, 2, 8), (22016, 4096, 2): (8, 2, 4), (22016, 4096, 4): (8, 1, 4), (22016, 4096, 8): (8, 2, 4),
    (4096, 11008, 1): (2, 1, 4), (4096, 11008, 2): (8, 2, 4), (4096, 11008, 4): (2, 2, 4), (4096, 11008, 8): (8, 2, 4),
    (151680, 4096, 1): (2, 1, 4), (151680, 4096, 2): (8, 2, 4), (151680, 4096, 4): (8, 1, 4),
    (151680, 4096, 8): (8, 2, 4),
}
V5_SWEEP = {1: [(4, 4, 2), (4, 4, 4), (2, 4, 4), (2, 8, 2), (4, 2, 2), (4, 8, 2), (8, 4, 2)],
            2: [(4, 4, 2), (8, 4, 1), (8, 4, 2), (4, 4, 1), (4, 8, 2), (8, 2, 1)],
            4: [(4, 4, 1), (8, 4, 1), (4, 4, 2), (8, 2, 1), (4, 2, 1), (16, 4, 1)],
            8: [(8, 4, 1), (4, 4, 1)]}   # (R, KW, U) by NMAX


def _main_layers(layers: int, ns: list, shapes: list, versions: list):
    """Forward-like timing: one CUDA graph runs the GEMM over `layers` distinct copies of the weight (lm_head: one,
    replayed 3 times), so the weights come from HBM as in the 7B forward and not from the 50 MB L2 (the plain lab
    mode replays one weight). versions: "pick" (what CudaModel launches), "v2" (the rule before gemm_v5), "v5"
    (V5_SWEEP). The x rows of q|k|v and gate|up are normed inside the GEMM, as in the forward."""
    import numpy as np

    from ..gemm import TUNED, launch_gemm, launch_shape, nmax_for
    from ..graphs import CudaGraph, events_samples
    from ..reference import bf16_value, rmsnorm

    st = cuda.stream()
    rng = np.random.default_rng(0)
    ceil = _copy_gbps(st)
    print(f"skinny GEMM lab, forward-like ({layers} distinct weights a graph): us per launch (median of 7 graph "
          f"replays; +- half the min-max range), GB/s of weights, % of a {ceil:.0f} GB/s device copy")
    for label, N, Kd, mode in shapes:
        L = 1 if N * Kd * 2 > 400e6 else layers
        reps_l = 3 if L == 1 else 1
        wall = cuda.device_array(L * N * Kd, np.uint16)
        _fill_bf16[(wall.size + 255) // 256, 256, st](wall, N)
        st.synchronize()
        NC = N if mode == MODE_SWIGLU else min(N, 16384)
        wv = bf16_value(wall[: NC * Kd].copy_to_host().reshape(NC, Kd))
        ws = [wall[j * N * Kd:(j + 1) * N * Kd] for j in range(L)]
        x = rng.standard_normal((16, Kd)).astype(np.float32)
        xd = cuda.to_device(x.ravel())
        y = cuda.device_array(16 * N, np.float32)
        res0 = np.zeros(16 * N, np.float32)
        use_norm = label in ("qkv", "gate|up")             # the forward norms these GEMMs' inputs inside them
        gv = (1 + 0.1 * rng.standard_normal(Kd)).astype(np.float32)
        gd = cuda.to_device(gv)
        xr = rmsnorm(x, gv, 1e-6) if use_norm else x
        for n in ns:
            nm = nmax_for(n)
            shapes_n = []                                    # (R, U, WARPS, SPLITK) of each version timed
            if "v2" in versions:                             # the rule before gemm_v5
                shapes_n.append(launch_shape(TUNED_BEFORE_V5, N, Kd, nm))
            if "pick" in versions:                           # what CudaModel launches (gemm.TUNED, via pick_gemm)
                shapes_n.append(launch_shape(TUNED, N, Kd, nm))
            if "v5" in versions:
                shapes_n += [(R5, U5, KW, True) for R5, KW, U5 in V5_SWEEP[nm]
                             if not (mode == MODE_SWIGLU and R5 % 2) and gemm_v5_smem(nm, R5, KW, 32, use_norm) <= 48 * 1024]
            want = _want(xr[:n], wv, mode)
            for R, U, Wp, sk in dict.fromkeys(shapes_n):     # a shape asked twice is timed once

                def run(wj, R=R, U=U, Wp=Wp, sk=sk, n=n):
                    launch_gemm(st, "bf16", xd, Kd, wj, None, y, N, n, Kd, N, mode,
                                res=y if mode == MODE_RESID else None, R=R, WARPS=Wp, U=U,
                                norm=gd if use_norm else None, eps=1e-6, SPLITK=sk)
                name = f"{'v5' if sk else 'v2'} R{R}U{U}W{Wp}"
                y.copy_to_device(res0, stream=st)
                run(ws[0])
                got = y.copy_to_host().reshape(16, N)[:n, : (N // 2 if mode == MODE_SWIGLU else NC)]
                err = float(np.abs(got - want).max() / np.abs(want).max())
                graph = CudaGraph.capture(st, lambda run=run: [run(ws[j % L]) for j in range(L * reps_l)])
                t = np.array(events_samples(st, graph.launch, 7, 2)) * 1e3 / (L * reps_l)
                us = float(np.median(t))
                gbps = N * Kd * 2 / us / 1e3
                print(f"  {label:8s} {N}x{Kd} n={n} {name:12s}: {us:8.2f} +- {(t.max() - t.min()) / 2:5.2f} us "
                      f"{gbps:6.0f} GB/s {100 * gbps / ceil:5.1f}% copy  rel err {err:.1e} "
                      f"{'ok' if err < 2e-5 else 'FAIL'}", flush=True)
        del wall, ws


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default=None, help="token counts (default 1..8; 1,2,4,8 with --layers)")
    ap.add_argument("--shapes", default="qkv,o,gate|up,down,lm_head")
    ap.add_argument("--no-sweep", action="store_true", help="no gemm_v4 launch-shape sweep at n = 8")
    ap.add_argument("--layers", type=int, default=0, help="forward-like mode: this many distinct weights a graph")
    ap.add_argument("--versions", default="pick,v5", help="--layers mode: pick (the production launch), v2 (the "
                                                          "table before gemm_v5), v5 (V5_SWEEP)")
    args = ap.parse_args()
    if args.layers:
        _main_layers(args.layers, [int(v) for v in (args.ns or "1,2,4,8").split(",")],
                     [s for s in SHAPES_7B if s[0] in args.shapes.split(",")], args.versions.split(","))
    else:
        args.ns = args.ns or "1,2,3,4,5,6,7,8"
        _main(args)
