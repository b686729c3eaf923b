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
Every weight byte is read once per call whatever n is: the token loop is innermost.

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

from numba import cuda, float32, int32

from .intrinsics import factory, bits_f32, ld_f32x4, ld_u32x2, ld_u32x4, syncwarp

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
    load8, load1 = LOADERS[fmt]
    RN = R * NMAX
    RNS = RN + (NMAX if NORM else 0)  # accumulators + one sum of squares per token
    RN1 = RNS + 1                     # padded row of the reduction buffer: conflict-free banks
    W8 = 8 * R * U
    HALF = R // 2
    STEP = 8 * LANES                  # columns per chunk

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

    @cuda.jit(fastmath=False)
    def gemm_v2(x, ldx, w, ws, y, ldy, bias, res, n, K, N, mode, has_bias, g, eps):
        lane = cuda.threadIdx.x % LANES
        wid = cuda.threadIdx.x // LANES
        gw = cuda.blockIdx.x * WARPS + wid
        rows = cuda.local.array(R, int32)
        if mode == MODE_SWIGLU:                       # N = 2P rows; this warp: pairs gw*HALF + (0..HALF-1)
            P = N >> 1
            p0 = gw * HALF
            if p0 >= P:
                return
            for r in range(R):
                p = min(p0 + (r % HALF), P - 1)
                rows[r] = p + (r // HALF) * P
        else:
            p0 = gw * R
            if p0 >= N:
                return
            for r in range(R):
                rows[r] = min(p0 + r, N - 1)          # tail rows: read a valid row, never store it
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
        # ---- ragged tail (K % STEP columns, or everything when rows are not 16-byte aligned)
        for k in range(kvec + lane, K, LANES):
            for i in range(NMAX):
                xv = x[i * ldx + k]
                if NORM:
                    acc[RN + i] += xv * xv
                    xv *= g[k]
                for r in range(R):
                    acc[r * NMAX + i] += load1(w, ws, rows[r], k, K) * xv
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


# Launch shapes (R rows per warp, U chunks in flight[, WARPS per block]) that beat the default in
# bench_gemv on the H100 (2026-11-25, docs/history/2026-11-26-kernels-notes.md): n = 5..8 tokens with R = 8, U = 2 (62% -> 77% of copy
# on 14336x4096). Keys: NMAX, or (N, K, NMAX) for one weight shape (looked up first; `autotune.py`
# measures such a table for a model's own GEMMs).
TUNED_H100 = {
    8: (8, 2),
    # MiMo-7B / Qwen2-7B-class shapes, measured by autotune.tune_gemms on the H100 (2026-11-25, one CUDA graph of
    # the same GEMM over 36 layers; docs/history/2026-11-26-kernels-notes.md): (N, K, NMAX) -> (R, U, WARPS)
    (6144, 4096, 1): (2, 2, 4), (6144, 4096, 2): (2, 1, 4), (6144, 4096, 4): (4, 1, 4), (6144, 4096, 8): (8, 2, 4),
    (4096, 4096, 1): (2, 1, 4), (4096, 4096, 2): (8, 2, 4), (4096, 4096, 4): (2, 2, 4), (4096, 4096, 8): (4, 1, 4),
    (22016, 4096, 1): (4, 2, 8), (22016, 4096, 2): (8, 2, 4), (22016, 4096, 4): (8, 1, 4), (22016, 4096, 8): (8, 2, 4),
    (4096, 11008, 1): (2, 1, 4), (4096, 11008, 2): (8, 2, 4), (4096, 11008, 4): (2, 2, 4), (4096, 11008, 8): (8, 2, 4),
    (151680, 4096, 1): (2, 1, 4), (151680, 4096, 2): (8, 2, 4), (151680, 4096, 4): (8, 1, 4),
    (151680, 4096, 8): (8, 2, 4),
}


def default_u(NMAX: int) -> int:
    return 2 if NMAX <= 4 else 1


def launch_shape(tuning: dict, N: int, K: int, NMAX: int, R: int = 4, WARPS: int = 4):
    """(R, U, WARPS) for a weight [N, K] at NMAX tokens: tuning[(N, K, NMAX)], else tuning[NMAX], else
    the defaults (U None = default_u)."""
    t = tuning.get((N, K, NMAX), tuning.get(NMAX))
    if t is None:
        return R, None, WARPS
    return t[0], t[1], (t[2] if len(t) > 2 else WARPS)


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


def launch_gemm(stream, fmt, x, ldx, w, ws, y, ldy, n, K, N, mode=MODE_STORE, bias=None, res=None,
                R: int = 4, WARPS: int = 4, U: int | None = None, LANES: int = 32, norm=None, eps: float = 0.0):
    """y[:n] (+)= x[:n] @ W^T on `stream` (norm = g: RMSNorm(x) with weight g, eps first). All arrays are
    flat 1-D device arrays.

    x must hold NMAX = nmax_for(n) readable rows (rows n .. NMAX-1 are read, never matter)."""
    k = get_gemm_v2(fmt, nmax_for(n), R, WARPS, U, LANES, norm is not None)
    dummy = y
    k[gemm_v2_blocks(N, mode, R, WARPS), LANES * WARPS, stream](
        x, ldx, w, ws if ws is not None else dummy, y, ldy, bias if bias is not None else dummy,
        res if res is not None else dummy, n, K, N, mode, 1 if bias is not None else 0,
        norm if norm is not None else dummy, float(eps))


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
