"""Skinny GEMM  y[n, N] = x[n, K] @ W[N, K]^T  for n = 1..16, weights streamed once.

Reference: ``reference.linear`` (NumPy ``x @ w.T``). Weight formats on the device:
  "bf16": uint16 [N, K]  (bf16 bits; converted in-kernel with a shift / mask, exact)
  "f32" : float32 [N, K] (f32 / f16 checkpoints, and FP8 dequantised on upload when asked)
  "fp8" : uint8 [N, K] e4m3 bits + float32 scale_inv [ceil(N/128), ceil(K/128)]
          (DeepSeek-V3 block format, dequantised in the kernel: 1 byte per weight read)

The production kernel (the naive gemm_v1 and the tensor-core gemm_v3 are in dev/gemm.py, the lab;
docs/history/ has each version's prediction and outcome):
  gemm_v2   one warp per R rows, 16-byte weight loads (8 bf16 per lane per load), fp32
            accumulators for all NMAX tokens in registers, x read through L1 as float4,
            the next 256-column chunk's weights loaded before the current one is used,
            warp-shuffle reduction, fused epilogue (bias / residual add / SwiGLU pairs).
  gemm_v5   gemm_v2's loop with the warps of a block sharing the same R rows and splitting K (partial sums
            through shared memory): more warps per weight row, fewer x loads per weight load; the launch-shape
            table TUNED picks it per weight shape (1-4 tokens on the H200).
Every weight byte is read once per call whatever n is: the token loop is innermost.
  gemm_v4   (5..8 tokens, pick.pick_gemm_v4) bf16 weights on the tensor cores: gemm4_split splits x
            once per input into bf16 hi / mid / lo words in B-fragment order (RMSNorm weight applied there, the rms
            kept for the epilogue), then m16n8k16 MMAs (3 per k-step: float32 accuracy) with MT m16 tiles a warp,
            KW warps splitting K, v2's epilogue modes. Its cost does not depend on n <= 8.

RMSNorm fused into the x load (v2 built with NORM=True): y = (x / rms(x) * g) @ W^T computed as
(sum_k x_k g_k W_rk) / rms(x); every warp accumulates sum_k x_k^2 from the x chunks it loads anyway
(a warp walks all K columns), so the normed activation is never written and one launch per norm
disappears. Arguments g (float32 [K], the norm weight) and eps; ignored when NORM=False.

Epilogue modes of v2 (runtime flag, uniform branch):
  MODE_STORE  y[i, r] = acc (+ bias[r])
  MODE_RESID  y[i, r] = res[i, r] + acc      (res may be y: the residual stream in place)
  MODE_SWIGLU rows come in (gate, up) pairs (row 2p = gate_p, row 2p+1 = up_p):
              y[i, p] = silu(acc[2p]) * acc[2p + 1]
"""

from __future__ import annotations

import math

from numba import cuda, float32, int32, uint32

from .intrinsics import SIM, factory, bits_f32, f32_bits, ld_f32x4, ld_u32x2, ld_u32x4, mma_bf16, syncwarp

MODE_STORE, MODE_RESID, MODE_SWIGLU = 0, 1, 2
NMAX_BUCKETS = (1, 2, 4, 8, 16)


def nmax_for(n: int) -> int:
    for b in NMAX_BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"skinny GEMM handles n <= 16 tokens, got {n}")


# ----------------------------------------------------------------------------- weight decoding
@cuda.jit(device=True, inline=True)
def bf16_lo(w):
    return bits_f32(w << 16)


@cuda.jit(device=True, inline=True)
def bf16_hi(w):
    return bits_f32(w & 0xFFFF0000)


@cuda.jit(device=True, inline=True)
def fp8_e4m3(b):
    """One e4m3fn byte -> float32 (exact). Normal: (1 + m/8) 2^(e-7); subnormal: m 2^-9."""
    s = (b & 0x80) << 24
    e = (b >> 3) & 0xF
    m = b & 7
    if e == 0:
        v = float32(m) * float32(0.001953125)
        return -v if s else v
    return bits_f32(s | ((e + 120) << 23) | (m << 20))


@cuda.jit(device=True, inline=True)
def load8_bf16(w, ws, row, k, K, wf, o):
    """wf[o:o+8] = W[row, k:k+8] (16-byte aligned)."""
    a, b, c, d = ld_u32x4(w, row * K + k)
    wf[o + 0] = bf16_lo(a)
    wf[o + 1] = bf16_hi(a)
    wf[o + 2] = bf16_lo(b)
    wf[o + 3] = bf16_hi(b)
    wf[o + 4] = bf16_lo(c)
    wf[o + 5] = bf16_hi(c)
    wf[o + 6] = bf16_lo(d)
    wf[o + 7] = bf16_hi(d)


@cuda.jit(device=True, inline=True)
def load8_f32(w, ws, row, k, K, wf, o):
    a, b, c, d = ld_u32x4(w, row * K + k)
    e, f, g, h = ld_u32x4(w, row * K + k + 4)
    wf[o + 0] = bits_f32(a)
    wf[o + 1] = bits_f32(b)
    wf[o + 2] = bits_f32(c)
    wf[o + 3] = bits_f32(d)
    wf[o + 4] = bits_f32(e)
    wf[o + 5] = bits_f32(f)
    wf[o + 6] = bits_f32(g)
    wf[o + 7] = bits_f32(h)


@cuda.jit(device=True, inline=True)
def load8_fp8(w, ws, row, k, K, wf, o):
    a, b = ld_u32x2(w, row * K + k)
    kb = (K + 127) >> 7
    s = ws[(row >> 7) * kb + (k >> 7)]          # 8 values never straddle a 128-column block
    wf[o + 0] = fp8_e4m3(a & 0xFF) * s
    wf[o + 1] = fp8_e4m3((a >> 8) & 0xFF) * s
    wf[o + 2] = fp8_e4m3((a >> 16) & 0xFF) * s
    wf[o + 3] = fp8_e4m3((a >> 24) & 0xFF) * s
    wf[o + 4] = fp8_e4m3(b & 0xFF) * s
    wf[o + 5] = fp8_e4m3((b >> 8) & 0xFF) * s
    wf[o + 6] = fp8_e4m3((b >> 16) & 0xFF) * s
    wf[o + 7] = fp8_e4m3((b >> 24) & 0xFF) * s


@cuda.jit(device=True, inline=True)
def load1_bf16(w, ws, row, k, K):
    return bits_f32(int32(w[row * K + k]) << 16)


@cuda.jit(device=True, inline=True)
def load1_f32(w, ws, row, k, K):
    return w[row * K + k]


@cuda.jit(device=True, inline=True)
def load1_fp8(w, ws, row, k, K):
    kb = (K + 127) >> 7
    return fp8_e4m3(int32(w[row * K + k])) * ws[(row >> 7) * kb + (k >> 7)]


LOADERS = {"bf16": (load8_bf16, load1_bf16), "f32": (load8_f32, load1_f32), "fp8": (load8_fp8, load1_fp8)}


@cuda.jit(device=True, inline=True)
def silu(v):
    return v / (float32(1.0) + math.exp(-v))


@cuda.jit(device=True, inline=True)
def store_output(y, ldy, bias, res, i, p0, r, v, u, N, mode, has_bias):
    """The epilogue's store of output (token i, row p0 + r) = v: + bias, + the residual (MODE_RESID); MODE_SWIGLU:
    y[i, p0 + r] = silu(v + gate bias) * (u + up bias), u the row's up half. The caller checks the row's range."""
    if mode == MODE_SWIGLU:
        if has_bias:
            v += bias[p0 + r]
            u += bias[(N >> 1) + p0 + r]
        y[i * ldy + p0 + r] = silu(v) * u
    else:
        row = p0 + r
        if has_bias:
            v += bias[row]
        if mode == MODE_RESID:
            v += res[i * ldy + row]
        y[i * ldy + row] = v


# ----------------------------------------------------------------------------- v2: vectorised
def make_fma_chunk(NMAX: int, R: int, NORM: bool):
    """acc[r NMAX + i] += W[row r, k:k+8] . x[i, k:k+8] for the lane's 8 columns at k (weights already in wf[o:],
    8 a row); NORM: x times g on the fly and acc[R NMAX + i] += the squares of the raw x (RMSNorm's sum)."""
    RN = R * NMAX

    @cuda.jit(device=True, inline=True)
    def fma_chunk(x, ldx, k, wf, o, acc, g):
        g0 = g1 = g2 = g3 = g4 = g5 = g6 = g7 = float32(1.0)
        if NORM:
            g0, g1, g2, g3 = ld_f32x4(g, k)
            g4, g5, g6, g7 = ld_f32x4(g, k + 4)
        for i in range(NMAX):
            x0, x1, x2, x3 = ld_f32x4(x, i * ldx + k)
            x4, x5, x6, x7 = ld_f32x4(x, i * ldx + k + 4)
            if NORM:
                acc[RN + i] += (x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3 + x4 * x4 + x5 * x5 + x6 * x6 + x7 * x7)
                x0, x1, x2, x3 = x0 * g0, x1 * g1, x2 * g2, x3 * g3
                x4, x5, x6, x7 = x4 * g4, x5 * g5, x6 * g6, x7 * g7
            for r in range(R):
                b = o + 8 * r
                acc[r * NMAX + i] += (wf[b] * x0 + wf[b + 1] * x1 + wf[b + 2] * x2 + wf[b + 3] * x3
                                      + wf[b + 4] * x4 + wf[b + 5] * x5 + wf[b + 6] * x6 + wf[b + 7] * x7)

    return fma_chunk


def make_rows_tail(fmt: str, NMAX: int, R: int, NORM: bool):
    """Device functions gemm_v2 and gemm_v5 share: `unit_rows` (the R weight rows of work unit u, R rows or, with
    MODE_SWIGLU, R/2 gate rows and their up rows; returns the unit's first output row, -1 past the end; tail rows
    repeat the last valid row, read but never stored) and `ragged_tail` (columns k0, k0 + stride, ... < K with scalar
    loads: K % 8 LANES columns, or all of them when rows are not 16-byte aligned)."""
    _, load1 = LOADERS[fmt]
    RN = R * NMAX
    HALF = R // 2

    @cuda.jit(device=True, inline=True)
    def unit_rows(rows, u, N, mode):
        if mode == MODE_SWIGLU:                       # N = 2P rows; pairs u*HALF + (0..HALF-1)
            P = N >> 1
            p0 = u * HALF
            if p0 >= P:
                return -1
            for r in range(R):
                p = min(p0 + (r % HALF), P - 1)
                rows[r] = p + (r // HALF) * P
            return p0
        p0 = u * R
        if p0 >= N:
            return -1
        for r in range(R):
            rows[r] = min(p0 + r, N - 1)
        return p0

    @cuda.jit(device=True, inline=True)
    def ragged_tail(x, ldx, w, ws, rows, g, acc, K, k0, stride):
        for k in range(k0, K, stride):
            for i in range(NMAX):
                xv = x[i * ldx + k]
                if NORM:
                    acc[RN + i] += xv * xv
                    xv *= g[k]
                for r in range(R):
                    acc[r * NMAX + i] += load1(w, ws, rows[r], k, K) * xv

    return unit_rows, ragged_tail


# reference: reference.linear (and reference.rmsnorm for NORM=True, reference.swiglu_stacked for MODE_SWIGLU)
@factory
def make_gemm_v2(fmt: str, NMAX: int, R: int = 4, WARPS: int = 4, U: int = 1, LANES: int = 32, NORM: bool = False):
    """Kernel for n <= NMAX tokens: warp w owns R rows; the token loop is innermost.

    U chunks of 8 * LANES columns are loaded before any is used (U * R 16-byte loads in flight per
    lane). LANES = 32 on the GPU (a warp); LANES = 1 makes each "warp" a single thread, which the
    CUDA simulator runs much faster (same code path, no cross-lane reduction).
    MODE_SWIGLU: W is [gate; up] stacked ([2P, K]); warp w owns pairs p0 .. p0 + R/2 - 1 and loads
    gate rows p and up rows P + p, so that silu(gate) * up is formed in registers.
    NORM: x is the un-normed residual row; the kernel applies RMSNorm(g, eps) on the fly (module doc).
    """
    load8 = LOADERS[fmt][0]
    RN = R * NMAX
    RNS = RN + (NMAX if NORM else 0)  # accumulators + one sum of squares per token
    RN1 = RNS + 1                     # padded row of the reduction buffer: conflict-free banks
    W8 = 8 * R * U
    HALF = R // 2
    STEP = 8 * LANES                  # columns per chunk

    fma_chunk = make_fma_chunk(NMAX, R, NORM)
    unit_rows, ragged_tail = make_rows_tail(fmt, NMAX, R, NORM)

    @cuda.jit(fastmath=False)
    def gemm_v2(x, ldx, w, ws, y, ldy, bias, res, n, K, N, mode, has_bias, g, eps):
        lane = cuda.threadIdx.x % LANES
        wid = cuda.threadIdx.x // LANES
        rows = cuda.local.array(R, int32)
        p0 = unit_rows(rows, cuda.blockIdx.x * WARPS + wid, N, mode)      # this warp's rows
        if p0 < 0:
            return
        acc = cuda.local.array(RNS, float32)
        for a in range(RNS):
            acc[a] = float32(0.0)
        wf = cuda.local.array(W8, float32)
        # ---- main loop: groups of U full chunks, 16-byte loads (needs K % 8 == 0)
        kvec = (K // STEP) * STEP if K % 8 == 0 else 0
        kgrp = (kvec // (U * STEP)) * (U * STEP)
        for k in range(lane * 8, kgrp, U * STEP):
            for u in range(U):
                for r in range(R):
                    load8(w, ws, rows[r], k + u * STEP, K, wf, 8 * (u * R + r))
            for u in range(U):
                fma_chunk(x, ldx, k + u * STEP, wf, 8 * u * R, acc, g)
        for k in range(kgrp + lane * 8, kvec, STEP):      # leftover full chunks (< U of them)
            for r in range(R):
                load8(w, ws, rows[r], k, K, wf, 8 * r)
            fma_chunk(x, ldx, k, wf, 0, acc, g)
        ragged_tail(x, ldx, w, ws, rows, g, acc, K, kvec + lane, LANES)
        # ---- reduction across lanes: transpose through shared memory, lane a sums column a
        red = cuda.shared.array((WARPS, LANES, RN1), float32)
        for a in range(RNS):
            red[wid, lane, a] = acc[a]
        if LANES > 1:
            syncwarp()
        # ---- epilogue: output (r, i), a = r * NMAX + i
        for a in range(lane, RN, LANES):
            r = a // NMAX
            i = a - r * NMAX
            if i >= n:
                continue
            v = float32(0.0)
            for l in range(LANES):
                v += red[wid, l, a]
            den = float32(1.0)
            if NORM:                                  # the row's RMS, from every lane's sum of squares
                ss = float32(0.0)
                for l in range(LANES):
                    ss += red[wid, l, RN + i]
                den = math.sqrt(ss / float32(K) + float32(eps))
                v = v / den
            if mode == MODE_SWIGLU:
                if r < HALF and p0 + r < (N >> 1):
                    u = float32(0.0)
                    for l in range(LANES):
                        u += red[wid, l, a + HALF * NMAX]
                    if NORM:
                        u = u / den
                    store_output(y, ldy, bias, res, i, p0, r, v, u, N, mode, has_bias)
            elif p0 + r < N:
                store_output(y, ldy, bias, res, i, p0, r, v, float32(0.0), N, mode, has_bias)

    gemm_v2.R, gemm_v2.WARPS, gemm_v2.NMAX, gemm_v2.U, gemm_v2.LANES, gemm_v2.NORM = R, WARPS, NMAX, U, LANES, NORM
    return gemm_v2


# Launch shapes that beat the defaults. Keys: NMAX, or (N, K, NMAX) for one weight shape (looked up first;
# `autotune.py` measures such a table for a model's own GEMMs). Values (R, U[, WARPS[, SPLITK]]): R rows a warp, U
# chunks in flight, WARPS warps a block; SPLITK True runs gemm_v5 (the block's WARPS warps share R rows and split K)
# instead of gemm_v2 (each warp its own R rows).
TUNED = {
    # H100, 2026-11-25 (bench_gemv, docs/history/2026-11-26-kernels-notes.md): 5..8 tokens with R = 8, U = 2 (62% ->
    # 77% of copy on 14336x4096); bf16 weights at 5..8 tokens now run gemm_v4 where pick_gemm_v4 allows it
    8: (8, 2),
    # H200, 2026-12-03 (python -m kernels_cuda.dev.gemm --layers 36: each GEMM over 36 distinct weights in one
    # graph, as in the forward): at one token gemm_v5 with 4 rows a block beat gemm_v2's best on every MiMo-7B weight
    1: (4, 2, 4, True),
    # MiMo-7B / Qwen2-7B-class shapes (N, K, NMAX). gemm_v5 entries: the H200 run above (us per launch, v5 against
    # the v2 entry it replaced): q|k|v 14.96 / 15.90, o 10.66 / 12.85, gate|up 46.85 / 48.25, down 23.96 / 29.18,
    # lm_head 278.0 / 280.6 at n = 1; o 11.08 / 12.70, down 23.99 / 28.18 at n = 2; q|k|v 16.44 / 18.29, o 12.18 /
    # 15.84, down 26.96 / 36.92 at n = 4. The gemm_v2 entries (v2 won or tied there) were measured by
    # autotune.tune_gemms on the H100 (2026-11-25; docs/history/2026-11-26-kernels-notes.md).
    (6144, 4096, 1): (4, 2, 2, True), (6144, 4096, 2): (2, 1, 4), (6144, 4096, 4): (8, 1, 2, True),
    (6144, 4096, 8): (8, 2, 4),
    (4096, 4096, 1): (4, 2, 4, True), (4096, 4096, 2): (4, 1, 4, True), (4096, 4096, 4): (8, 1, 2, True),
    (4096, 4096, 8): (4, 1, 4),
    (22016, 4096, 1): (4, 2, 2, True), (22016, 4096, 2): (8, 2, 4), (22016, 4096, 4): (8, 1, 4),
    (22016, 4096, 8): (8, 2, 4),
    (4096, 11008, 1): (4, 2, 4, True), (4096, 11008, 2): (4, 1, 4, True), (4096, 11008, 4): (4, 1, 2, True),
    (4096, 11008, 8): (8, 2, 4),
    (151680, 4096, 1): (4, 2, 2, True), (151680, 4096, 2): (8, 2, 4), (151680, 4096, 4): (8, 1, 4),
    (151680, 4096, 8): (8, 2, 4),
}


def default_u(NMAX: int) -> int:
    return 2 if NMAX <= 4 else 1


def launch_shape(tuning: dict, N: int, K: int, NMAX: int, R: int = 4, WARPS: int = 4):
    """(R, U, WARPS, SPLITK) for a weight [N, K] at NMAX tokens: tuning[(N, K, NMAX)], else tuning[NMAX], else
    the defaults (U None = default_u; SPLITK False = gemm_v2)."""
    t = tuning.get((N, K, NMAX), tuning.get(NMAX))
    if t is None:
        return R, None, WARPS, False
    return t[0], t[1], (t[2] if len(t) > 2 else WARPS), bool(t[3]) if len(t) > 3 else False


_CACHE: dict = {}


def get_gemm_v2(fmt: str, NMAX: int, R: int = 4, WARPS: int = 4, U: int | None = None, LANES: int = 32,
                NORM: bool = False):
    key = (fmt, NMAX, R, WARPS, default_u(NMAX) if U is None else U, LANES, bool(NORM))
    if key not in _CACHE:
        _CACHE[key] = make_gemm_v2(fmt, *key[1:])
    return _CACHE[key]


def gemm_v2_blocks(N: int, mode: int = MODE_STORE, R: int = 4, WARPS: int = 4) -> int:
    """Blocks for N rows (MODE_SWIGLU: N = 2P stacked rows, P outputs)."""
    rows_per_warp = R // 2 if mode == MODE_SWIGLU else R
    units = N // 2 if mode == MODE_SWIGLU else N
    return (units + rows_per_warp * WARPS - 1) // (rows_per_warp * WARPS)


# ----------------------------------------------------------------------------- v5: v2 split over a block's warps
# reference: reference.linear (reference.rmsnorm for NORM=True, reference.swiglu_stacked for MODE_SWIGLU)
@factory
def make_gemm_v5(fmt: str, NMAX: int, R: int = 4, KW: int = 4, U: int = 2, LANES: int = 32, NORM: bool = False):
    """gemm_v2's inner loop (U chunks of 8 LANES columns in flight, the token loop innermost) with the KW warps of a
    block sharing the SAME R rows and splitting K (warp w takes chunk groups w, w + KW, ...).

    Why: v2 gives each warp R rows of its own, so a 4096-row weight (o, down, q|k|v) has N / R warps in all; the
    tuned tables took R = 2 to have enough of them for 132 SMs, and then a lane reads 2 NMAX 16-byte x loads from
    L1 for every 2 weight loads from HBM, and walks all of K before its rows are done. Here R = 4-8 rows give
    N / R blocks of KW warps, each warp a K / KW slice. The partial sums meet through shared memory twice: lane a of
    each warp sums column a over the warp's lanes, then thread a sums the KW warp totals (NORM: the sums of squares
    too). Same arguments as gemm_v2; gemm_v5_blocks(N, mode, R) blocks of KW * LANES threads. H200 numbers: TUNED."""
    load8 = LOADERS[fmt][0]
    RN = R * NMAX
    RNS = RN + (NMAX if NORM else 0)
    RN1 = RNS + 1
    W8 = 8 * R * U
    HALF = R // 2
    STEP = 8 * LANES
    TPB = KW * LANES
    fma_chunk = make_fma_chunk(NMAX, R, NORM)
    unit_rows, ragged_tail = make_rows_tail(fmt, NMAX, R, NORM)

    @cuda.jit(fastmath=False)
    def gemm_v5(x, ldx, w, ws, y, ldy, bias, res, n, K, N, mode, has_bias, g, eps):
        tid = cuda.threadIdx.x
        lane = tid % LANES
        wid = tid // LANES
        rows = cuda.local.array(R, int32)
        p0 = unit_rows(rows, cuda.blockIdx.x, N, mode)      # the block's rows, shared by its warps
        if p0 < 0:
            return                                # the whole block: no thread waits at the barrier below
        acc = cuda.local.array(RNS, float32)
        for a in range(RNS):
            acc[a] = float32(0.0)
        wf = cuda.local.array(W8, float32)
        kvec = (K // STEP) * STEP if K % 8 == 0 else 0
        nch = kvec // STEP
        ngrp = nch // U
        for q in range(wid, ngrp, KW):
            k = q * U * STEP + lane * 8
            for u in range(U):
                for r in range(R):
                    load8(w, ws, rows[r], k + u * STEP, K, wf, 8 * (u * R + r))
            for u in range(U):
                fma_chunk(x, ldx, k + u * STEP, wf, 8 * u * R, acc, g)
        for c in range(ngrp * U + wid, nch, KW):      # leftover chunks (< U of them)
            k = c * STEP + lane * 8
            for r in range(R):
                load8(w, ws, rows[r], k, K, wf, 8 * r)
            fma_chunk(x, ldx, k, wf, 0, acc, g)
        ragged_tail(x, ldx, w, ws, rows, g, acc, K, kvec + tid, TPB)
        red = cuda.shared.array((KW, LANES, RN1), float32)
        tot = cuda.shared.array((KW, RN1), float32)
        for a in range(RNS):
            red[wid, lane, a] = acc[a]
        if LANES > 1:
            syncwarp()
        for a in range(lane, RNS, LANES):             # the warp's total of column a
            v = float32(0.0)
            for l in range(LANES):
                v += red[wid, l, a]
            tot[wid, a] = v
        cuda.syncthreads()
        for a in range(tid, RN, TPB):                 # output (r, i), a = r * NMAX + i
            r = a // NMAX
            i = a - r * NMAX
            if i >= n:
                continue
            v = float32(0.0)
            for ww in range(KW):
                v += tot[ww, a]
            den = float32(1.0)
            if NORM:
                ss = float32(0.0)
                for ww in range(KW):
                    ss += tot[ww, RN + i]
                den = math.sqrt(ss / float32(K) + float32(eps))
                v = v / den
            if mode == MODE_SWIGLU:
                if r < HALF and p0 + r < (N >> 1):
                    u2 = float32(0.0)
                    for ww in range(KW):
                        u2 += tot[ww, a + HALF * NMAX]
                    if NORM:
                        u2 = u2 / den
                    store_output(y, ldy, bias, res, i, p0, r, v, u2, N, mode, has_bias)
            elif p0 + r < N:
                store_output(y, ldy, bias, res, i, p0, r, v, float32(0.0), N, mode, has_bias)

    gemm_v5.R, gemm_v5.KW, gemm_v5.NMAX, gemm_v5.U, gemm_v5.LANES, gemm_v5.NORM = R, KW, NMAX, U, LANES, NORM
    return gemm_v5


def gemm_v5_blocks(N: int, mode: int = MODE_STORE, R: int = 4) -> int:
    """Blocks for N rows (MODE_SWIGLU: N = 2P stacked rows, R / 2 pairs a block)."""
    return (N // 2 + R // 2 - 1) // (R // 2) if mode == MODE_SWIGLU else (N + R - 1) // R


def gemm_v5_smem(NMAX: int, R: int, KW: int, LANES: int = 32, NORM: bool = False) -> int:
    """Bytes of static shared memory of gemm_v5 (the two reduction buffers)."""
    return 4 * (R * NMAX + (NMAX if NORM else 0) + 1) * KW * (LANES + 1)


def get_gemm_v5(fmt: str, NMAX: int, R: int = 4, KW: int = 4, U: int | None = None, LANES: int = 32,
                NORM: bool = False):
    key = ("v5", fmt, NMAX, R, KW, default_u(NMAX) if U is None else U, LANES, bool(NORM))
    if key not in _CACHE:
        _CACHE[key] = make_gemm_v5(*key[1:])
    return _CACHE[key]


def launch_gemm(stream, fmt, x, ldx, w, ws, y, ldy, n, K, N, mode=MODE_STORE, bias=None, res=None,
                R: int = 4, WARPS: int = 4, U: int | None = None, LANES: int = 32, norm=None, eps: float = 0.0,
                SPLITK: bool = False):
    """y[:n] (+)= x[:n] @ W^T on `stream` (norm = g: RMSNorm(x) with weight g, eps first). All arrays are
    flat 1-D device arrays. SPLITK: gemm_v5 (WARPS warps a block over the same R rows), else gemm_v2.

    x must hold NMAX = nmax_for(n) readable rows (rows n .. NMAX-1 are read, never matter)."""
    if SPLITK:
        k = get_gemm_v5(fmt, nmax_for(n), R, WARPS, U, LANES, norm is not None)
        blocks = gemm_v5_blocks(N, mode, R)
    else:
        k = get_gemm_v2(fmt, nmax_for(n), R, WARPS, U, LANES, norm is not None)
        blocks = gemm_v2_blocks(N, mode, R, WARPS)
    dummy = y
    k[blocks, LANES * WARPS, stream](
        x, ldx, w, ws if ws is not None else dummy, y, ldy, bias if bias is not None else dummy,
        res if res is not None else dummy, n, K, N, mode, 1 if bias is not None else 0,
        norm if norm is not None else dummy, float(eps))


# ----------------------------------------------------------------------------- v4: tensor cores, x split once
# reference: reference.linear (reference.rmsnorm for norm=g, reference.swiglu_stacked for MODE_SWIGLU)
#
# Why v3 (dev/gemm.py) lost to v2: every block re-split the same x for every 16 rows (per 32 columns a lane loaded
# 8 floats (+ 8 norm weights) and ran ~60 ALU ops of bf16x3 for 16 rows' worth of MMAs), only 16 rows shared each B
# fragment, and a lane had 2 x 16 bytes of weights per 32 columns in flight. v4 splits x once per GEMM input
# (gemm4_split: RMSNorm weight applied, each token's rms kept for the epilogue), into bf16 hi / mid / lo words
# already in B-fragment order, so a GEMM lane's x work per 32 columns is three 16-byte L1/L2 loads; a warp owns MT
# m16 tiles (16 MT rows) that all reuse each B fragment, and holds U x MT x 2 16-byte weight loads in flight.
GEMM4_NMAX = 8        # tokens: the 8 columns of an m16n8k16 MMA (v4 runs 1..8 tokens at one cost)
GEMM4_KWMAX = 8       # the most split-K warps a block


def gemm4_xb_words(K: int) -> int:
    """uint32 words of gemm4_split's output for K columns: per 32 columns, 32 lanes x 12 words."""
    return (K // 32) * 32 * 12


if SIM:
    ld_x4 = ld_u32x4
else:
    from numba import types as _types

    from .intrinsics import _vec_load
    # the split x: re-read by every block, so keep it in L1 (the weights' load skips L1)
    ld_x4 = _vec_load(4, _types.uint32, "ld.global.nc.v4.u32 {$0, $1, $2, $3}, [$4];")


@cuda.jit(device=True, inline=True)
def bf16x3(v):
    """v = hi + mid + lo, each a bf16 (returned as its 16 bits), each the truncated remainder of the previous:
    v - (hi + mid + lo) ~ 2^-24 |v| (float32 accuracy: a bf16 MMA reads its operands exactly)."""
    h = f32_bits(v) >> 16
    r = v - bits_f32(h << 16)
    m = f32_bits(r) >> 16
    r2 = r - bits_f32(m << 16)
    return h, m, f32_bits(r2) >> 16


# reference: reference.rmsnorm (the 1 / rms factor) and the B-fragment layout of intrinsics.mma_bf16
@factory
def make_gemm4_split(NORM: bool = False):
    """x [n, K] (float32 rows, ldx apart) -> xb, for every 32-column block kb and t = 0..3: the 8 values
    x[i, 32 kb + 8t .. + 7] of token i < 8 (times g when NORM) as 12 words of two bf16: word 6s + 2p + h = part p
    (hi, mid, lo) of columns 32 kb + 8t + 4s + 2h, + 1 — the B fragments (b0, b1) of k-steps s = 0, 1 that lane
    4i + t of a gemm_v4 warp holds — at xb[((3 kb + q) 32 + 4i + t) 4 + j], word 4q + j (one 16-byte load per q).
    Tokens n..7 are zeros. den[i] = sqrt(mean(x_i^2) + eps) when NORM, else 1 (the gemm_v4 epilogue divides).
    Grid (8 tokens, gemm4_split_blocks(K, threads)): a thread per (kb, t); with NORM every block of token i sums the
    squares of the whole row (16-44 KB from L2) so that no second pass or atomic is needed; block 0 writes den."""
    @cuda.jit(fastmath=False)
    def gemm4_split(x, ldx, n, K, g, eps, xb, den):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        red = cuda.shared.array(256, float32)
        if NORM:
            ss = float32(0.0)
            if i < n:
                for k in range(4 * tid, K, 4 * nt):          # K % 32 == 0
                    x0, x1, x2, x3 = ld_f32x4(x, i * ldx + k)
                    ss += x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3
            red[tid] = ss
            cuda.syncthreads()
            if cuda.blockIdx.y == 0 and tid == 0:
                t2 = float32(0.0)
                for a in range(nt):
                    t2 += red[a]
                den[i] = math.sqrt(t2 / float32(K) + float32(eps))
        elif cuda.blockIdx.y == 0 and tid == 0:
            den[i] = float32(1.0)
        e = cuda.blockIdx.y * nt + tid                       # item (kb, t) = (e // 4, e % 4)
        if e >= (K // 32) * 4:
            return
        kb = e >> 2
        t = e & 3
        k = 32 * kb + 8 * t
        x0 = x1 = x2 = x3 = x4 = x5 = x6 = x7 = float32(0.0)
        if i < n:
            x0, x1, x2, x3 = ld_f32x4(x, i * ldx + k)
            x4, x5, x6, x7 = ld_f32x4(x, i * ldx + k + 4)
            if NORM:
                g0, g1, g2, g3 = ld_f32x4(g, k)
                g4, g5, g6, g7 = ld_f32x4(g, k + 4)
                x0, x1, x2, x3, x4, x5, x6, x7 = x0 * g0, x1 * g1, x2 * g2, x3 * g3, x4 * g4, x5 * g5, x6 * g6, x7 * g7
        base = (3 * kb * 32 + 4 * i + t) * 4
        for s in range(2):
            for hh in range(2):
                if s == 0:
                    lo, hi = (x0, x1) if hh == 0 else (x2, x3)
                else:
                    lo, hi = (x4, x5) if hh == 0 else (x6, x7)
                a0, a1, a2 = bf16x3(lo)
                b0, b1, b2 = bf16x3(hi)
                for p in range(3):
                    j = 6 * s + 2 * p + hh                     # word j of the lane's 12: quad j // 4, slot j % 4
                    wv = (a0 | (b0 << 16)) if p == 0 else ((a1 | (b1 << 16)) if p == 1 else (a2 | (b2 << 16)))
                    xb[base + (j >> 2) * 128 + (j & 3)] = wv

    gemm4_split.NORM = NORM
    return gemm4_split


@factory
def make_gemm_v4(MT: int = 2, U: int = 2, KW: int = 8):
    """Skinny GEMM on the tensor cores for bf16 weights and n <= 8 tokens (m16n8k16 bf16 MMAs, float32
    accumulation; A = weight rows as loaded, B = gemm4_split's x parts: 3 MMAs a k-step, float32 accuracy).

    A block owns MT m16 tiles, 16 MT rows (MODE_SWIGLU: 8 MT pairs: tiles 0 .. MT/2 - 1 the gate rows, the rest
    their up rows, so silu(gate) * up is formed in the epilogue); its KW warps split K, warp w taking 32-column blocks
    w, w + KW, ... . Per 32-column block a lane (group gq = lane // 4, tq = lane % 4) loads 16 bytes (columns 8 tq ..
    8 tq + 7) of rows gq and gq + 8 of every tile: the A fragments of two k-steps (an MMA's k order is free as long as
    B uses the same: gemm4_split's layout), and three 16-byte words of xb; U such blocks are loaded before any is
    used. The KW partial [16 MT, 8] sums meet in shared memory; the epilogue divides by den[token] (RMSNorm's rms,
    or 1) and runs v2's modes (bias, residual, SwiGLU). Needs K % 32 == 0 and 32 KW threads a block (also in the
    simulator, where the MMA is emulated across a warp's 32 lanes)."""
    assert KW <= GEMM4_KWMAX and (MT % 2 == 0 or MT == 1)
    T = 128 * MT                                             # outputs of the block: [MT tiles][16 rows][8 tokens]
    WB = 8 * MT * U                                          # weight words in flight
    XB = 12 * U
    R2 = 2 * MT                                              # rows a lane loads per 32 columns
    A8 = 8 * MT                                              # accumulators

    @cuda.jit(fastmath=False)
    def gemm_v4(xb, den, w, y, ldy, bias, res, n, K, N, mode, has_bias):
        tid = cuda.threadIdx.x
        lane = tid % 32
        wid = tid // 32
        gq = lane // 4
        tq = lane - 4 * gq
        rows = cuda.local.array(R2, int32)             # the lane's rows gq, gq + 8 of each tile
        if mode == MODE_SWIGLU:                              # (MT even) pairs p0 .. p0 + 8 MT - 1
            P = N >> 1
            p0 = cuda.blockIdx.x * (8 * MT)
            for m in range(MT // 2):
                for h in range(2):
                    p = min(p0 + 16 * m + 8 * h + gq, P - 1)
                    rows[2 * m + h] = p
                    rows[2 * (m + MT // 2) + h] = p + P
        else:
            p0 = cuda.blockIdx.x * (16 * MT)
            for m in range(MT):
                for h in range(2):                           # tail rows: read a valid row, never store it
                    rows[2 * m + h] = min(p0 + 16 * m + 8 * h + gq, N - 1)
        acc = cuda.local.array(A8, float32)                  # [tile][k-step parity][c0..c3]
        for a in range(A8):
            acc[a] = float32(0.0)
        wbuf = cuda.local.array(WB, uint32)
        xbuf = cuda.local.array(XB, uint32)
        KB = K // 32
        for kb0 in range(wid, KB, KW * U):
            for u in range(U):                               # all loads first
                kb = kb0 + u * KW
                if kb < KB:
                    k = 32 * kb + 8 * tq
                    for m in range(MT):
                        for h in range(2):
                            a0, a1, a2, a3 = ld_u32x4(w, rows[2 * m + h] * K + k)
                            o = 8 * (u * MT + m) + 4 * h
                            wbuf[o] = a0
                            wbuf[o + 1] = a1
                            wbuf[o + 2] = a2
                            wbuf[o + 3] = a3
                    for q in range(3):
                        b0, b1, b2, b3 = ld_x4(xb, ((3 * kb + q) * 32 + lane) * 4)
                        xbuf[12 * u + 4 * q] = b0
                        xbuf[12 * u + 4 * q + 1] = b1
                        xbuf[12 * u + 4 * q + 2] = b2
                        xbuf[12 * u + 4 * q + 3] = b3
            for u in range(U):
                if kb0 + u * KW < KB:                        # warp-uniform
                    for s in range(2):
                        for p in range(3):
                            bx0 = xbuf[12 * u + 6 * s + 2 * p]
                            bx1 = xbuf[12 * u + 6 * s + 2 * p + 1]
                            for m in range(MT):
                                o = 8 * (u * MT + m)
                                j = 8 * m + 4 * s
                                d0, d1, d2, d3 = mma_bf16(wbuf[o + 2 * s], wbuf[o + 4 + 2 * s],
                                                          wbuf[o + 2 * s + 1], wbuf[o + 5 + 2 * s],
                                                          bx0, bx1, acc[j], acc[j + 1], acc[j + 2], acc[j + 3])
                                acc[j] = d0
                                acc[j + 1] = d1
                                acc[j + 2] = d2
                                acc[j + 3] = d3
        # ---- split-K: each warp's [16 MT rows, 8 tokens] partials through shared memory
        red = cuda.shared.array((KW, T), float32)
        for m in range(MT):
            for c in range(4):                               # c: (row gq | gq + 8, token 2 tq | 2 tq + 1)
                red[wid, 128 * m + (gq + 8 * (c >> 1)) * 8 + 2 * tq + (c & 1)] = acc[8 * m + c] + acc[8 * m + 4 + c]
        cuda.syncthreads()
        TE = T // 2 if mode == MODE_SWIGLU else T
        for e in range(tid, TE, 32 * KW):                    # output (row e // 8 of the block, token e % 8)
            r = e >> 3
            i = e & 7
            if i >= n:
                continue
            v = float32(0.0)
            for ww in range(KW):
                v += red[ww, e]
            d = den[i]
            v = v / d
            if mode == MODE_SWIGLU:
                if p0 + r < (N >> 1):
                    uu = float32(0.0)
                    for ww in range(KW):
                        uu += red[ww, e + T // 2]
                    store_output(y, ldy, bias, res, i, p0, r, v, uu / d, N, mode, has_bias)
            elif p0 + r < N:
                store_output(y, ldy, bias, res, i, p0, r, v, float32(0.0), N, mode, has_bias)

    gemm_v4.MT, gemm_v4.U, gemm_v4.KW = MT, U, KW
    return gemm_v4


def gemm4_split_blocks(K: int, threads: int) -> int:
    """Blocks per token of gemm4_split: a thread per 8 columns."""
    return max(1, (K // 8 + threads - 1) // threads)


def gemm_v4_blocks(N: int, mode: int = MODE_STORE, MT: int = 2) -> int:
    return (N // 2 + 8 * MT - 1) // (8 * MT) if mode == MODE_SWIGLU else (N + 16 * MT - 1) // (16 * MT)


def get_gemm_v4(MT: int = 2, U: int = 2, KW: int = 8):
    key = ("v4", MT, U, KW)
    if key not in _CACHE:
        _CACHE[key] = make_gemm_v4(MT, U, KW)
    return _CACHE[key]


def get_gemm4_split(NORM: bool = False):
    key = ("v4split", bool(NORM))
    if key not in _CACHE:
        _CACHE[key] = make_gemm4_split(bool(NORM))
    return _CACHE[key]


def launch_gemm_v4(stream, x, ldx, w, xb, den, y, ldy, n, K, N, mode=MODE_STORE, bias=None, res=None,
                   MT: int = 2, U: int = 2, KW: int = 8, norm=None, eps: float = 0.0, split_threads: int = 128):
    """y[:n] (+)= x[:n] @ W^T with v4 (bf16 W, n <= 8, K % 32 == 0, ldx % 4 == 0): gemm4_split x -> xb (uint32,
    >= gemm4_xb_words(K)) and den (float32 [8]), then gemm_v4. Two launches on `stream`; flat 1-D device arrays."""
    get_gemm4_split(norm is not None)[(GEMM4_NMAX, gemm4_split_blocks(K, split_threads)), split_threads, stream](
        x, ldx, n, K, norm if norm is not None else x, float(eps), xb, den)
    get_gemm_v4(MT, U, KW)[gemm_v4_blocks(N, mode, MT), 32 * KW, stream](
        xb, den, w, y, ldy, bias if bias is not None else y, res if res is not None else y, n, K, N, mode,
        1 if bias is not None else 0)


# ----------------------------------------------------------------------------- MoE: gathered GEMM
MODE_SCALE = 3   # y[slot, r] = acc * route_weight[slot]


# reference: reference.moe (each routed token's rows through its experts)
@factory
def make_moe_gemm(fmt: str, NMAX: int, R: int = 4, WARPS: int = 4, LANES: int = 32):
    """Expert GEMM for the routed experts: block (b, u) runs active expert e = active[u] over the
    cnt[e] <= NMAX slots that chose it, reading e's weights once (W stacked [E, N, K]).

    x rows: slot // xdiv (xdiv = k for the gate/up input, the token; 1 for the down input, the
    slot). MODE_SWIGLU (gate/up, W[e] = [gate; up]) writes y[slot, p]; MODE_SCALE (down) writes
    y[slot, r] = acc * wts[slot]."""
    load8, load1 = LOADERS[fmt]
    RN = R * NMAX
    RN1 = RN + 1
    W8 = 8 * R
    HALF = R // 2
    STEP = 8 * LANES
    NSLOT = 16

    @cuda.jit(fastmath=False)
    def moe_gemm(x, ldx, xdiv, w, ws, y, ldy, N, K, mode, cnt, lists, active, wts, meta):
        u = cuda.blockIdx.y
        if u >= meta[3]:
            return
        e = active[u]
        c = cnt[e]
        lane = cuda.threadIdx.x % LANES
        wid = cuda.threadIdx.x // LANES
        gw = cuda.blockIdx.x * WARPS + wid
        rows = cuda.local.array(R, int32)
        if mode == MODE_SWIGLU:
            P = N >> 1
            p0 = gw * HALF
            if p0 >= P:
                return
            for r in range(R):
                rows[r] = e * N + min(p0 + (r % HALF), P - 1) + (r // HALF) * P
        else:
            p0 = gw * R
            if p0 >= N:
                return
            for r in range(R):
                rows[r] = e * N + min(p0 + r, N - 1)
        xr = cuda.local.array(NMAX, int32)
        for i in range(NMAX):
            xr[i] = (lists[e * NSLOT + min(i, c - 1)] // xdiv) * ldx
        acc = cuda.local.array(RN, float32)
        for a in range(RN):
            acc[a] = float32(0.0)
        wf = cuda.local.array(W8, float32)
        kvec = (K // STEP) * STEP if K % 8 == 0 else 0
        for k in range(lane * 8, kvec, STEP):
            for r in range(R):
                load8(w, ws, rows[r], k, K, wf, 8 * r)
            for i in range(NMAX):
                x0, x1, x2, x3 = ld_f32x4(x, xr[i] + k)
                x4, x5, x6, x7 = ld_f32x4(x, xr[i] + k + 4)
                for r in range(R):
                    b = 8 * r
                    acc[r * NMAX + i] += (wf[b] * x0 + wf[b + 1] * x1 + wf[b + 2] * x2 + wf[b + 3] * x3
                                          + wf[b + 4] * x4 + wf[b + 5] * x5 + wf[b + 6] * x6 + wf[b + 7] * x7)
        for k in range(kvec + lane, K, LANES):
            for r in range(R):
                wv = load1(w, ws, rows[r], k, K)
                for i in range(NMAX):
                    acc[r * NMAX + i] += wv * x[xr[i] + k]
        red = cuda.shared.array((WARPS, LANES, RN1), float32)
        for a in range(RN):
            red[wid, lane, a] = acc[a]
        if LANES > 1:
            syncwarp()
        for a in range(lane, RN, LANES):
            r = a // NMAX
            i = a - r * NMAX
            if i >= c:
                continue
            slot = lists[e * NSLOT + i]
            v = float32(0.0)
            for l in range(LANES):
                v += red[wid, l, a]
            if mode == MODE_SWIGLU:
                if r < HALF and p0 + r < (N >> 1):
                    g = float32(0.0)
                    for l in range(LANES):
                        g += red[wid, l, a + HALF * NMAX]
                    y[slot * ldy + p0 + r] = silu(v) * g
            elif p0 + r < N:
                y[slot * ldy + p0 + r] = v * wts[slot]

    return moe_gemm


def get_moe_gemm(fmt: str, NMAX: int, R: int = 4, WARPS: int = 4, LANES: int = 32):
    key = ("moe", fmt, NMAX, R, WARPS, LANES)
    if key not in _CACHE:
        _CACHE[key] = make_moe_gemm(fmt, NMAX, R, WARPS, LANES)
    return _CACHE[key]
