"""Lab: attention partials and merges that CudaModel no longer launches (llm.c's dev/cuda shape).

Reference: kernels_cuda/reference.py `attention` (softmax(q k^T * scale) v over the cache, causal from
`start`); the production kernels (v1, v3, v4, v9 and their merges) are in kernels_cuda/kernels.py and
kernels_cuda/pick.py says which one runs for which shape. Versions kept here, numbered as they were made
(docs/history/ has each one's measurements):

    v2  attn_partial v1 with unrolled loads (64-key chunks)                  merge: kernels.attn_combine
    v5  a block per share of a KV group's keys, a warp per 4 query rows       merge: kernels.attn_combine_v2
    v6  v5 with each step's loads requested a step ahead (a warp per 2 rows)  merge: attn_combine_v3 / v4
    v7  register-tiled flash decoding: a warp per share of 32-key tiles       merge: attn_combine_v3 / v4
    attn_combine_v3  the share merge before attn_combine_v4 (two rounds of loads)

Why they left production: v9 (tensor cores) beat v5-v7 on every MiMo-7B shape of <= 16 rows a group on
the H100 and H200 (bench_attention, 2026-11-26); v2 only served head dims % 4 != 0, which v1 serves;
attn_combine_v4 replaced v3. tests/test_kernels.py still checks each against the reference.

    python -m kernels_cuda.dev.attention            # GPU: validate and time each version at MiMo-7B shapes
    NUMBA_ENABLE_CUDASIM=1 python -m kernels_cuda.dev.attention   # tiny shapes, validation only
"""

from __future__ import annotations

import math

from numba import cuda, float32

from ..intrinsics import SIM, factory, ld_f32x4, ld_sh4, shfl_xor, st_sh4, syncwarp
from ..kernels import (COMBINE_MAX_CHUNKS, M_START, NEG_INF, attn_chunks, attn_v4_qmax, block_max, block_sum,
                       chunk_softmax_row, ld_group_q16)


@factory
def make_attention_v2(NQ: int):
    """attn_partial v2: v1 with its memory loops unrolled so that several loads are in flight.

    v1 (measured, docs/history/2026-11-26-kernels-notes.md) walks each key's dk elements and each output dimension's C values one
    dependent load at a time: latency-bound. v2 loads 4 float4 of a key (16 elements) and 8 values
    of V per step before using any, and is meant to run with a smaller chunk (C = 64: 4x more
    blocks in flight at short contexts). Same arguments, same results (up to fp32 summation order).
    """

    @cuda.jit
    def attn_partial_v2(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, C, S, vec):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        wl = min(32, nt)
        lane = tid % wl
        nw = nt // wl
        start = meta[M_START]
        T = start + n
        sc0 = NQ * dk
        acc = cuda.local.array(NQ, float32)
        dk16 = (dk // 16) * 16 if vec else 0
        for item in range(cuda.blockIdx.x, nh * S, cuda.gridDim.x):
            h = item // S
            s = item - h * S
            g = h // rep
            t0 = s * C
            if t0 >= T:
                continue
            t1 = min(t0 + C, T)
            for idx in range(tid, n * dk, nt):
                i = idx // dk
                sm[idx] = q[i * ldq + qoff + h * dk + (idx - i * dk)]
            cuda.syncthreads()
            for t in range(t0 + tid, t1, nt):
                for i in range(NQ):
                    acc[i] = float32(0.0)
                kb = t * ldk + g * dk
                for e in range(0, dk16, 16):                 # 4 x 16 B of the key in flight
                    a0, a1, a2, a3 = ld_f32x4(kc, kb + e)
                    b0, b1, b2, b3 = ld_f32x4(kc, kb + e + 4)
                    c0, c1, c2, c3 = ld_f32x4(kc, kb + e + 8)
                    d0, d1, d2, d3 = ld_f32x4(kc, kb + e + 12)
                    for i in range(NQ):
                        qb = i * dk + e
                        acc[i] += (sm[qb] * a0 + sm[qb + 1] * a1 + sm[qb + 2] * a2 + sm[qb + 3] * a3
                                   + sm[qb + 4] * b0 + sm[qb + 5] * b1 + sm[qb + 6] * b2 + sm[qb + 7] * b3
                                   + sm[qb + 8] * c0 + sm[qb + 9] * c1 + sm[qb + 10] * c2 + sm[qb + 11] * c3
                                   + sm[qb + 12] * d0 + sm[qb + 13] * d1 + sm[qb + 14] * d2 + sm[qb + 15] * d3)
                for e in range(dk16, dk):
                    kv = kc[kb + e]
                    for i in range(NQ):
                        acc[i] += sm[i * dk + e] * kv
                for i in range(NQ):
                    sm[sc0 + i * C + t - t0] = acc[i] * scale if t <= start + i else NEG_INF
            cuda.syncthreads()
            L = t1 - t0
            for i in range(tid // wl, n, nw):
                chunk_softmax_row(sm, sc0 + i * C, L, lane, wl, pml, ((s * nh + h) * 16 + i) * 2)
            cuda.syncthreads()
            L8 = t0 + (L // 8) * 8
            for e in range(tid, dv, nt):
                for i in range(NQ):
                    acc[i] = float32(0.0)
                vb = g * dv + e
                for t in range(t0, L8, 8):                    # 8 values of V in flight
                    v0 = vc[t * ldv + vb]
                    v1 = vc[(t + 1) * ldv + vb]
                    v2 = vc[(t + 2) * ldv + vb]
                    v3 = vc[(t + 3) * ldv + vb]
                    v4 = vc[(t + 4) * ldv + vb]
                    v5 = vc[(t + 5) * ldv + vb]
                    v6 = vc[(t + 6) * ldv + vb]
                    v7 = vc[(t + 7) * ldv + vb]
                    for i in range(NQ):
                        pb = sc0 + i * C + t - t0
                        acc[i] += (sm[pb] * v0 + sm[pb + 1] * v1 + sm[pb + 2] * v2 + sm[pb + 3] * v3
                                   + sm[pb + 4] * v4 + sm[pb + 5] * v5 + sm[pb + 6] * v6 + sm[pb + 7] * v7)
                for t in range(L8, t1):
                    vv = vc[t * ldv + vb]
                    for i in range(NQ):
                        acc[i] += sm[sc0 + i * C + t - t0] * vv
                for i in range(NQ):
                    if i < n:
                        po[((s * nh + h) * 16 + i) * dv + e] = acc[i]
            cuda.syncthreads()

    return attn_partial_v2


# ----------------------------------------------------------------------------- attention v5 (a warp per key run)
ATT5_SUB = 8           # keys per step of a v5 warp: 4 lanes per key
ATT5_RW = 4            # query rows per warp: a block runs ceil(rep x n / ATT5_RW) warps over the same keys
ATT5_MAXQ = 16         # query rows per KV group (rep x n) that v5 takes; more -> v4
ATT5_BLOCKS_PER_SM = 16  # split = this x SMs / KV groups blocks (shares) per group
ATT5_MAXREG = 0        # register cap of the backend's v5 launches of one warp (0: none: 181 registers, no spills)
ATT5_MAXREG_WIDE = 128  # and of several warps (more query rows than ATT5_RW): on the H200 128 registers took 66.5 /
                        # 114.5 us per MiMo-7B layer at ctx 4096 for 2 / 4 tokens against 86.9 / 129.3 uncapped


def attn_v5_smem(QMAX: int, dk: int, RW: int) -> int:
    """Dynamic shared memory of attn_partial_v5, bytes: the group's query rows [QMAX, dk + 16] (each quarter of a
    row padded by 4 floats: the 4 lanes of a key read 4 different banks), then per warp P [8 keys, RW rows] and
    the running m / l of each of its rows."""
    nw = (QMAX + RW - 1) // RW
    return (QMAX * (dk + 16) + nw * (ATT5_SUB * RW + 2 * RW)) * 4


@cuda.jit(device=True, inline=True)
def stage_group_q(sm, q, ldq, qoff, g, rep, dk, QR, tid, nt):
    """v5 / v6: KV group g's QR query rows -> sm[QR, dk + 16], each quarter of a row padded by 4 floats (the 4
    lanes of a key read 4 different banks); 4 16-byte loads in flight per thread. The caller syncs the block."""
    qt = cuda.local.array(16, float32)
    d4 = dk // 4
    dqp = d4 + 4
    qrow = dk + 16
    for base in range(0, QR * d4, 4 * nt):
        ld_group_q16(q, ldq, qoff, g, rep, dk, QR, base, tid, nt, qt)
        for u in range(4):
            idx = base + tid + u * nt
            if idx < QR * d4:
                r = idx // d4
                c = (idx - r * d4) * 4                       # column: quarter c // d4, padded
                cq = c // d4
                b = r * qrow + cq * dqp + c - cq * d4
                sm[b] = qt[4 * u]
                sm[b + 1] = qt[4 * u + 1]
                sm[b + 2] = qt[4 * u + 2]
                sm[b + 3] = qt[4 * u + 3]


@cuda.jit(device=True, inline=True)
def softmax_step8(a, valid, scale, sm, mi, li, pi, qq, lane):
    """v5 / v6: one query row's online softmax over a step of 8 keys (lane = key x quarter, a = the lane's partial
    dot product; scale a float32: a float64 one made the whole step float64, exp included). Sums the 4 quarters (xor 1, 2), takes the step's max and sum over the keys (xor 4, 8, 16),
    updates the row's running m = sm[mi] and l = sm[li], writes the key's p to sm[pi] (one lane per key) and
    returns alpha = exp(m_old - m_new), the factor on the row's P V accumulator. valid: the key exists and the
    causal mask lets the row see it."""
    a += shfl_xor(a, 1)                                      # the 4 quarters of the key's dot product
    a += shfl_xor(a, 2)
    x = a * scale if valid else NEG_INF
    mx = max(x, shfl_xor(x, 4))                              # over the step's 8 keys (lanes 4 apart)
    mx = max(mx, shfl_xor(mx, 8))
    mx = max(mx, shfl_xor(mx, 16))
    m_old = sm[mi]
    m_new = max(m_old, mx)
    p = math.exp(x - m_new) if x != NEG_INF else float32(0.0)
    ps = p + shfl_xor(p, 4)
    ps += shfl_xor(ps, 8)
    ps += shfl_xor(ps, 16)
    alpha = math.exp(m_old - m_new) if m_old != NEG_INF else float32(0.0)
    if qq == 0:
        sm[pi] = p
    if lane == 0:                                            # every lane read m_old before the shuffles above
        sm[mi] = m_new
        sm[li] = sm[li] * alpha + ps
    return alpha


@cuda.jit(device=True, inline=True)
def pv_step8(o, vb, vo, sm, PB, sc, r0, QR, RW, EP, eq):
    """v5 / v6: the warp's rows' P V over a step of 8 keys for the lane's eq-th group of 4 output dims: o[rr, eq] =
    o[rr, eq] x alpha (sc[rr], from softmax_step8) + sum over keys u of P[u, rr] (sm[PB + u RW + rr]) x value row u
    (vb[vo + 4u ..])."""
    for rr in range(RW):
        if r0 + rr < QR:
            ob = (rr * EP + eq) * 4
            al = sc[rr]
            a0 = o[ob] * al
            a1 = o[ob + 1] * al
            a2 = o[ob + 2] * al
            a3 = o[ob + 3] * al
            for u in range(ATT5_SUB):
                p = sm[PB + u * RW + rr]
                b = vo + 4 * u
                a0 += p * vb[b]
                a1 += p * vb[b + 1]
                a2 += p * vb[b + 2]
                a3 += p * vb[b + 3]
            o[ob] = a0
            o[ob + 1] = a1
            o[ob + 2] = a2
            o[ob + 3] = a3


@cuda.jit(device=True, inline=True)
def store_group_partial(po, pml, sm, o, s, g, rep, nh, dv, r0, QR, lane, MB, LB, RW, EP):
    """v5 / v6: a warp's partial (o [RW rows, EP x 4 dims a lane]) and its rows' running (m, l) from sm[MB / LB]
    -> share s of po / pml, in the v1-v4 layout (row r = i x rep + hh is query i, head g x rep + hh)."""
    dv4 = dv // 4
    for eq in range(EP):
        e4 = lane + eq * 32
        if e4 < dv4:
            for rr in range(RW):
                r = r0 + rr
                if r < QR:
                    i = r // rep
                    h = g * rep + r - i * rep
                    ob = (rr * EP + eq) * 4
                    pbase = ((s * nh + h) * 16 + i) * dv + e4 * 4
                    po[pbase] = o[ob]
                    po[pbase + 1] = o[ob + 1]
                    po[pbase + 2] = o[ob + 2]
                    po[pbase + 3] = o[ob + 3]
    if lane < RW and r0 + lane < QR:
        r = r0 + lane
        i = r // rep
        h = g * rep + r - i * rep
        b = ((s * nh + h) * 16 + i) * 2
        pml[b] = sm[MB + lane]
        pml[b + 1] = sm[LB + lane]


@factory
def make_attention_v5(QMAX: int, RW: int, EP: int, MAXREG: int = 0):
    """attn_partial v5: flash decoding with a block per share of a KV group's keys, a warp per RW query rows of
    the group, 8 keys a step.

    v4 (a block of 4 warps per run of 32-key sub-chunks, four phases split by block barriers) took 29.6 us per
    MiMo-7B layer at context 512 on the H200 for 4.2 MB of cache; Nsight Compute showed it is neither memory- nor
    issue-bound: too few warps (128 blocks at context 512) each running a long dependent chain. A first v5 with a
    warp per 32-key sub-chunk (lane = key, its whole row) was as slow (34 us, one warp per SM at ~6 cycles per
    instruction); a second one with all 16 rows of a 4-token verify in one warp ran out of registers (255 + spills)
    and took 59 us against v4's 54 (docs/history/2026-11-26-kernels-notes.md). This one keeps every warp's chain short:
      * a step is 8 keys, lane = (key, quarter of the head dimension): the lane's 16-byte loads of its quarter
        row (dk / 16 of them, all in flight), dot products with the warp's RW query rows (broadcast from shared
        memory), the 4 quarters summed with 2 shuffles;
      * online softmax per row over the step's 8 keys with 3 + 3 shuffles (xor 4, 8, 16), causal mask inside
        the n-token window;
      * P V: lane = 4 output dimensions (EP groups of 4 per lane), the step's 8 value rows loaded at once
        (one 512-byte row per instruction), P broadcast from the warp's shared-memory slice;
    so a warp runs 2 memory round trips per step whatever the number of tokens; the warps of a block read the
    same keys and values (the second reader hits L1 / L2) instead of one warp doing 4x the arithmetic. Same
    partial layout and (m, l) as v1-v4, merged by attn_combine_v2 with C = ATT5_SUB and split > 0 (split =
    blocks per KV group). QMAX >= rep x n (<= ATT5_MAXQ), RW rows per warp (blocks of 32 x ceil(QMAX / RW)
    threads, also in the simulator), EP >= dv / 128, MAXREG: a register cap for ptxas (0: none). Needs
    dk % 16 == 0, dk <= 512 and dv, ldk, ldv, ldq, qoff % 4 == 0.
    """
    O4 = RW * EP * 4
    KB4 = 4 * 8                                              # the lane's quarter row, 8 16-byte loads at a time
    VB4 = 4 * ATT5_SUB
    NW = (QMAX + RW - 1) // RW
    jit = cuda.jit(max_registers=MAXREG) if (MAXREG and not SIM) else cuda.jit

    @jit
    def attn_partial_v5(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, split):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % 32
        w = tid // 32
        kk = lane // 4                                       # this lane's key in a step
        qq = lane - kk * 4                                   # and its quarter of the head dimension
        start = meta[M_START]
        T = start + n
        nsub = (T + ATT5_SUB - 1) // ATT5_SUB
        S = min(split, nsub)
        QR = rep * n
        r0 = w * RW                                          # this warp's rows r0 .. r0 + RW - 1 (those < QR)
        d4 = dk // 4
        dq4 = dk // 16                                       # 16-byte loads per quarter row
        dqp = d4 + 4                                         # a padded quarter row in shared memory
        qrow = dk + 16
        dv4 = dv // 4
        nkv = nh // rep
        PB = QMAX * qrow + w * (ATT5_SUB * RW + 2 * RW)      # this warp's P [8, RW], then m [RW], l [RW]
        scl = float32(scale)                                 # (a float64 scale made the softmax float64)
        MB = PB + ATT5_SUB * RW
        LB = MB + RW
        sc = cuda.local.array(RW, float32)
        o = cuda.local.array(O4, float32)
        kb = cuda.local.array(KB4, float32)
        vb = cuda.local.array(VB4, float32)
        for item in range(cuda.blockIdx.x, nkv * split, cuda.gridDim.x):
            g = item // split
            s = item - g * split
            if s >= S:                                       # block-uniform: past the cache's end
                continue
            # the group's query rows r = i * rep + hh (query i, head g * rep + hh) -> shared memory
            stage_group_q(sm, q, ldq, qoff, g, rep, dk, QR, tid, nt)
            if lane < RW:
                sm[MB + lane] = NEG_INF
                sm[LB + lane] = float32(0.0)
            for j in range(O4):
                o[j] = float32(0.0)
            cuda.syncthreads()
            if r0 < QR:                                      # warp-uniform: warps past the group's rows idle
                sb0 = (s * nsub) // S                        # this block's steps: a balanced share
                sb1 = ((s + 1) * nsub) // S
                for sb in range(sb0, sb1):
                    t0 = sb * ATT5_SUB
                    L = min(ATT5_SUB, T - t0)
                    t = t0 + kk                              # this lane's key
                    for rr in range(RW):
                        sc[rr] = float32(0.0)
                    kbase = t * ldk + g * dk + qq * d4
                    for e0 in range(0, dq4, 8):              # scores: the quarter row's loads all in flight
                        for u in range(8):
                            x0 = x1 = x2 = x3 = float32(0.0)
                            if kk < L and e0 + u < dq4:
                                x0, x1, x2, x3 = ld_f32x4(kc, kbase + (e0 + u) * 4)
                            kb[4 * u] = x0
                            kb[4 * u + 1] = x1
                            kb[4 * u + 2] = x2
                            kb[4 * u + 3] = x3
                        for rr in range(RW):                 # rows outside, the loads inside: the inner loop
                            if r0 + rr < QR:                 # unrolls, so kb stays in registers
                                a = float32(0.0)
                                qb = (r0 + rr) * qrow + qq * dqp + e0 * 4
                                for u in range(8):
                                    if e0 + u < dq4:
                                        a += (sm[qb + 4 * u] * kb[4 * u] + sm[qb + 4 * u + 1] * kb[4 * u + 1]
                                              + sm[qb + 4 * u + 2] * kb[4 * u + 2] + sm[qb + 4 * u + 3] * kb[4 * u + 3])
                                sc[rr] += a
                    for rr in range(RW):                     # online softmax per row (warp-uniform branch)
                        r = r0 + rr
                        if r < QR:
                            sc[rr] = softmax_step8(sc[rr], kk < L and t <= start + r // rep, scl, sm, MB + rr,
                                                   LB + rr, PB + kk * RW + rr, qq, lane)
                    syncwarp()
                    for eq in range(EP):                     # P V: lane = 4 output dimensions
                        e4 = lane + eq * 32
                        if e4 < dv4:
                            vbase = g * dv + e4 * 4
                            for u in range(ATT5_SUB):        # the step's value rows, all in flight
                                x0 = x1 = x2 = x3 = float32(0.0)
                                if u < L:
                                    x0, x1, x2, x3 = ld_f32x4(vc, (t0 + u) * ldv + vbase)
                                vb[4 * u] = x0
                                vb[4 * u + 1] = x1
                                vb[4 * u + 2] = x2
                                vb[4 * u + 3] = x3
                            pv_step8(o, vb, 0, sm, PB, sc, r0, QR, RW, EP, eq)
                    syncwarp()                               # P is rewritten by the next step
                store_group_partial(po, pml, sm, o, s, g, rep, nh, dv, r0, QR, lane, MB, LB, RW, EP)
            cuda.syncthreads()                               # the query rows are restaged for the next item

    attn_partial_v5.QMAX, attn_partial_v5.RW, attn_partial_v5.EP, attn_partial_v5.MAXREG = QMAX, RW, EP, MAXREG
    attn_partial_v5.NW = NW
    return attn_partial_v5


# ----------------------------------------------------------------------------- attention v6 (v5, software-pipelined)
ATT6_RW = 2            # query rows per warp (4 as in v5: 255 registers and spills on sm_90; 2: 248, none)
ATT6_MAXDQ = 8         # 16-byte loads per quarter key row of the backend's v6: dk <= 128 (v5 / v4 above); at dk = 256
                       # (DQ = 16) ptxas spilled 472 bytes for sm_90
ATT6_WARPS_PER_SM = 8  # split = this x SMs / (KV groups x min(warps per block, ATT6_SPLIT_NW)) blocks (shares) per
ATT6_SPLIT_NW = 4      # group: one wave of warps at v6's ~248 registers (8 per SM) up to 4 warps a block; H100,
                       # MiMo-7B, 16 rows (8 warps): 33 blocks per group took 27.5 us at ctx 512, 17 took 35.2
ATT6_MAXREG = 0        # register caps of the backend's v6 launches of one warp / of several warps (0: none)
ATT6_MAXREG_WIDE = 0


@cuda.jit(device=True, inline=True)
def ld_quarter_row(kc, kbase, ok, kb, DQ):
    """v6: kb <- the lane's quarter key row kc[kbase : kbase + 4 DQ] (DQ 16-byte loads, all in flight); zeros
    where not ok (a key past the cache's end)."""
    for u in range(DQ):
        x0 = x1 = x2 = x3 = float32(0.0)
        if ok:
            x0, x1, x2, x3 = ld_f32x4(kc, kbase + u * 4)
        kb[4 * u] = x0
        kb[4 * u + 1] = x1
        kb[4 * u + 2] = x2
        kb[4 * u + 3] = x3


@cuda.jit(device=True, inline=True)
def ld_value_rows(vc, vbase, ldv, L, lane, dv4, vb, EP):
    """v6: vb <- a step's 8 value rows, the lane's 4 dims of each (EP groups of 32 lanes x 4 dims): row u at
    vc[vbase + u ldv + eq 128 ...]; zeros for rows u >= L and dims past dv."""
    for eq in range(EP):
        for u in range(ATT5_SUB):
            x0 = x1 = x2 = x3 = float32(0.0)
            if u < L and lane + eq * 32 < dv4:
                x0, x1, x2, x3 = ld_f32x4(vc, vbase + u * ldv + eq * 128)
            b = (eq * ATT5_SUB + u) * 4
            vb[b] = x0
            vb[b + 1] = x1
            vb[b + 2] = x2
            vb[b + 3] = x3


@factory
def make_attention_v6(QMAX: int, RW: int, DQ: int, EP: int, MAXREG: int = 0):
    """attn_partial v6: v5 (a block per share of a KV group's keys, a warp per RW query rows, 8 keys a step, lane =
    (key, quarter of the head dimension)) with the memory round trips taken off the warp's critical path.

    v5 ran 2 round trips per step in sequence (the step's keys, then its values after the softmax) and staged the
    query rows before its first key load; at MiMo-7B shapes it took 15 us for the partial at context 512 (4.2 MB
    of cache: ~280 GB/s) and 42 us at 4096. v6 keeps a whole quarter key row (DQ = dk / 16 loads) and the step's
    8 value rows (8 x EP loads) in registers and rotates them:
      * the block's first keys and values are requested before the query rows are staged (they do not depend
        on them), so the prologue is one round trip instead of three;
      * step s + 1's keys are requested as soon as step s's scores are computed, its values as soon as step s's
        P V is done: each load has the softmax / P V of a step to arrive in.
    With the chain per step shorter, fewer, longer shares pay off (ATT6_WARPS_PER_SM): fewer partials to merge,
    which attn_combine_v3 does with every share's loads in flight. Same partial layout and (m, l) as v1-v5.
    QMAX >= rep x n (<= ATT5_MAXQ), RW rows per warp (blocks of 32 x ceil(QMAX / RW) threads), DQ = dk / 16 (<=
    ATT6_MAXDQ in the backend), EP >= dv / 128, MAXREG: a register cap for ptxas (0: none). Needs dv, ldk, ldv,
    ldq, qoff % 4 == 0. (Requesting the next keys together with the values, after P V, measured slower: docs/history/2026-11-26-kernels-notes.md.)
    """
    O4 = RW * EP * 4
    KB4 = 4 * DQ                                             # the lane's quarter key row
    VB4 = 4 * ATT5_SUB * EP                                  # the step's 8 value rows, the lane's 4 dims of each
    NW = (QMAX + RW - 1) // RW
    jit = cuda.jit(max_registers=MAXREG) if (MAXREG and not SIM) else cuda.jit

    @jit
    def attn_partial_v6(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, split):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % 32
        w = tid // 32
        kk = lane // 4                                       # this lane's key in a step
        qq = lane - kk * 4                                   # and its quarter of the head dimension
        start = meta[M_START]
        T = start + n
        nsub = (T + ATT5_SUB - 1) // ATT5_SUB
        S = min(split, nsub)
        QR = rep * n
        r0 = w * RW                                          # this warp's rows r0 .. r0 + RW - 1 (those < QR)
        d4 = dk // 4
        dqp = d4 + 4                                         # a padded quarter row in shared memory
        qrow = dk + 16
        dv4 = dv // 4
        nkv = nh // rep
        PB = QMAX * qrow + w * (ATT5_SUB * RW + 2 * RW)      # this warp's P [8, RW], then m [RW], l [RW]
        scl = float32(scale)                                 # (a float64 scale made the softmax float64)
        MB = PB + ATT5_SUB * RW
        LB = MB + RW
        sc = cuda.local.array(RW, float32)
        o = cuda.local.array(O4, float32)
        kb = cuda.local.array(KB4, float32)
        vb = cuda.local.array(VB4, float32)
        for item in range(cuda.blockIdx.x, nkv * split, cuda.gridDim.x):
            g = item // split
            s = item - g * split
            if s >= S:                                       # block-uniform: past the cache's end
                continue
            sb0 = (s * nsub) // S                            # this block's steps: a balanced share
            sb1 = ((s + 1) * nsub) // S
            # the first step's keys and values, in flight while the query rows are staged
            L = min(ATT5_SUB, T - sb0 * ATT5_SUB)
            ld_quarter_row(kc, (sb0 * ATT5_SUB + kk) * ldk + g * dk + qq * d4, kk < L, kb, DQ)
            ld_value_rows(vc, sb0 * ATT5_SUB * ldv + g * dv + lane * 4, ldv, L, lane, dv4, vb, EP)
            # the group's query rows r = i * rep + hh (query i, head g * rep + hh) -> shared memory
            stage_group_q(sm, q, ldq, qoff, g, rep, dk, QR, tid, nt)
            if lane < RW:
                sm[MB + lane] = NEG_INF
                sm[LB + lane] = float32(0.0)
            for j in range(O4):
                o[j] = float32(0.0)
            cuda.syncthreads()
            if r0 < QR:                                      # warp-uniform: warps past the group's rows idle
                for sb in range(sb0, sb1):
                    t0 = sb * ATT5_SUB
                    L = min(ATT5_SUB, T - t0)
                    t = t0 + kk                              # this lane's key
                    for rr in range(RW):                     # scores: the quarter row against each row's quarter
                        a = float32(0.0)
                        if r0 + rr < QR:
                            qb = (r0 + rr) * qrow + qq * dqp
                            for u in range(DQ):
                                a += (sm[qb + 4 * u] * kb[4 * u] + sm[qb + 4 * u + 1] * kb[4 * u + 1]
                                      + sm[qb + 4 * u + 2] * kb[4 * u + 2] + sm[qb + 4 * u + 3] * kb[4 * u + 3])
                        sc[rr] = a
                    if sb + 1 < sb1:                         # kb is free: the next step's keys
                        ld_quarter_row(kc, (t + ATT5_SUB) * ldk + g * dk + qq * d4, kk < T - t0 - ATT5_SUB, kb, DQ)
                    for rr in range(RW):                     # online softmax per row (warp-uniform branch)
                        r = r0 + rr
                        if r < QR:
                            sc[rr] = softmax_step8(sc[rr], kk < L and t <= start + r // rep, scl, sm, MB + rr,
                                                   LB + rr, PB + kk * RW + rr, qq, lane)
                    syncwarp()
                    for eq in range(EP):                     # P V: lane = 4 output dimensions
                        pv_step8(o, vb, eq * ATT5_SUB * 4, sm, PB, sc, r0, QR, RW, EP, eq)
                    if sb + 1 < sb1:                         # vb is free: the next step's values
                        ld_value_rows(vc, (t0 + ATT5_SUB) * ldv + g * dv + lane * 4, ldv,
                                      min(ATT5_SUB, T - t0 - ATT5_SUB), lane, dv4, vb, EP)
                    syncwarp()                               # P is rewritten by the next step
                store_group_partial(po, pml, sm, o, s, g, rep, nh, dv, r0, QR, lane, MB, LB, RW, EP)
            cuda.syncthreads()                               # the query rows are restaged for the next item

    attn_partial_v6.QMAX, attn_partial_v6.RW, attn_partial_v6.DQ, attn_partial_v6.EP = QMAX, RW, DQ, EP
    attn_partial_v6.MAXREG, attn_partial_v6.NW = MAXREG, NW
    return attn_partial_v6


# ----------------------------------------------------------------------------- attention v7 (register tiles)
ATT7_KT = 32           # keys per tile of a v7 warp
ATT7_DC = 32           # head dims per staged chunk of a key tile
ATT7_KP = ATT7_DC + 4  # a staged key row in shared memory, padded: the 8 keys a score load reads hit 8 bank quads
ATT7_NW = 4            # warps per block (one share of a KV group's keys each)
ATT7_WARPS_PER_SM = 8  # blocks per KV group = ceil(this x SMs / (KV groups x ATT7_NW))
ATT7_MAXREG = 0        # register cap of the backend's v7 (0: none)


def attn_v7_qmax(rep: int, NQ: int) -> int:
    """Query rows of a v7 warp: rep x NQ rounded up to a power of two, at least 4 (4 row lanes)."""
    return max(4, attn_v4_qmax(rep, NQ))


def attn_v7_smem(QMAX: int, dk: int, NW: int) -> int:
    """Dynamic shared memory of attn_partial_v7, bytes: the group's query rows [QMAX, dk + 4], then per warp a key
    chunk [ATT7_KT, ATT7_KP], P [ATT7_KT keys, QMAX + 4 rows] and alpha [QMAX]."""
    return (QMAX * (dk + 4) + NW * (ATT7_KT * ATT7_KP + ATT7_KT * (QMAX + 4) + QMAX)) * 4


@cuda.jit(device=True, inline=True)
def ld_key_chunk(kc, t0, T, ldk, col, lane, kr):
    """v7: kr <- the lane's share of keys t0 .. t0 + 31, dims col .. col + 31 of each: key t0 + 4u + lane // 8, dims
    col + 4 (lane % 8) .. + 3 for u < 8 (a load instruction reads 4 whole 128-byte rows); zeros past key T."""
    kq = lane // 8
    cd = col + (lane - kq * 8) * 4
    for u in range(8):
        t = t0 + 4 * u + kq
        x0 = x1 = x2 = x3 = float32(0.0)
        if t < T:
            x0, x1, x2, x3 = ld_f32x4(kc, t * ldk + cd)
        kr[4 * u] = x0
        kr[4 * u + 1] = x1
        kr[4 * u + 2] = x2
        kr[4 * u + 3] = x3


@cuda.jit(device=True, inline=True)
def st_key_chunk(sm, KB, lane, kr):
    """v7: the lane's share of a key chunk (ld_key_chunk) -> sm[KB + key x ATT7_KP + dim]."""
    kq = lane // 8
    b = KB + kq * ATT7_KP + (lane - kq * 8) * 4
    for u in range(8):
        st_sh4(sm, b + 4 * u * ATT7_KP, kr[4 * u], kr[4 * u + 1], kr[4 * u + 2], kr[4 * u + 3])


@cuda.jit(device=True, inline=True)
def qk_chunk(sm, QB, QP, KB, KP, kg, rg, sc, RI):
    """v7: sc[4i + j] += q[row rg + 4i, chunk] . k[key kg + 8j, chunk] over ATT7_DC staged dims (q rows QP
    apart from QB, key rows KP apart from KB): per 4
    dims, 4 key loads and RI query loads (16 bytes each, from shared memory) feed 16 RI FMAs."""
    kv = cuda.local.array(16, float32)
    for e in range(ATT7_DC // 4):
        for j in range(4):
            x0, x1, x2, x3 = ld_sh4(sm, KB + (kg + 8 * j) * KP + 4 * e)
            kv[4 * j] = x0
            kv[4 * j + 1] = x1
            kv[4 * j + 2] = x2
            kv[4 * j + 3] = x3
        for i in range(RI):
            q0, q1, q2, q3 = ld_sh4(sm, QB + (rg + 4 * i) * QP + 4 * e)
            for j in range(4):
                sc[4 * i + j] += q0 * kv[4 * j] + q1 * kv[4 * j + 1] + q2 * kv[4 * j + 2] + q3 * kv[4 * j + 3]


@cuda.jit(device=True, inline=True)
def ld_value_batch(vc, t0, T, ldv, col, ok, vb):
    """v7: vb <- the lane's 4 dims (col .. col + 3) of value rows t0 .. t0 + 7; zeros past key T or where not ok."""
    for u in range(8):
        x0 = x1 = x2 = x3 = float32(0.0)
        if ok and t0 + u < T:
            x0, x1, x2, x3 = ld_f32x4(vc, (t0 + u) * ldv + col)
        vb[4 * u] = x0
        vb[4 * u + 1] = x1
        vb[4 * u + 2] = x2
        vb[4 * u + 3] = x3


@cuda.jit(device=True, inline=True)
def pv_batch(o, vb, sm, pb, PS, QMAX):
    """v7: o[r, 0:4] += sum over 8 keys u of P[u, r] x vb[u, 0:4] for the QMAX rows (P rows read 4 at a time, the
    same address in every lane: a broadcast)."""
    for u in range(8):
        for i4 in range(QMAX // 4):
            p0, p1, p2, p3 = ld_sh4(sm, pb + u * PS + 4 * i4)
            for e in range(4):
                v = vb[4 * u + e]
                o[16 * i4 + e] += p0 * v
                o[16 * i4 + 4 + e] += p1 * v
                o[16 * i4 + 8 + e] += p2 * v
                o[16 * i4 + 12 + e] += p3 * v


@factory
def make_attention_v7(QMAX: int, NW: int, MAXREG: int = 0):
    """attn_partial v7: flash decoding with register tiles, a warp per share of a KV group's keys and all QMAX query
    rows of the group, 32 keys a tile.

    v5 / v6 give a lane one key (x a quarter of the head dim) and loop over the query rows, reading each row's q from
    shared memory for every key: Nsight Compute counted ~69 instructions per (row, key) of which 8 FMAs for v6's 16
    rows (call p), and the 4-token verify at context 4096 took 105 us per MiMo-7B layer. v7 computes a tile as two
    small matrix products with register blocking, as a GEMM does:
      * scores S [QMAX, 32] = Q K^T: lane = (key lane kg = lane % 8, row lane rg = lane // 8) holds S for rows
        rg + 4i (i < QMAX / 4) x keys kg + 8j (j < 4); per 4 head dims it reads 4 key and QMAX / 4 query vectors
        (16-byte shared loads, conflict-free with the padded rows) for 4 QMAX FMAs. The key tile is staged in
        chunks of 32 dims (a quarter of a 128-dim row: 4.6 KB a warp, so 4 warps fit the 48 KB of dynamic shared
        memory numba can ask for); the next chunk is requested before the current one is used, the first tile's
        first chunk before the query rows are staged;
      * online softmax per row: max and sum over the 8 key lanes with 3 + 3 shuffles per 4 rows;
      * O [QMAX, dv] += P V: lane = 4 output dims (dv <= 128), all QMAX rows (4 QMAX accumulators); value rows are
        read straight from global memory (one 512-byte row per load instruction) in batches of 8 keys, the next
        batch requested before the current one is used (the next tile's first batch during the last one); P comes
        from shared memory as 16-byte broadcasts.
    Nsight Compute at 16 rows, ctx 4096 (call x): 11.7 M instructions against v6's 36.1 M, but 255 registers (two
    warps per scheduler) and ~8.4 cycles per issued instruction: latency-bound. H100, us per MiMo-7B layer with the
    merge (call y): 25.7 / 32.6 / 60.2 at ctx 4096 for 4 / 8 / 16 rows (v6 31.8 / 49.2 / 86.3) but 16.1 / 20.3 / 35.1
    at ctx 512 (v6 13.7 / 15.3 / 24.9): its chain of round trips per tile costs more than v6's when each warp has
    one tile, so CudaModel runs it for long caches only (attention_long).
    Shares: split = NW x blocks per group, warp w of block b taking share w x (split / NW) + b, so short contexts
    spread their few shares over many blocks. Same partial layout and (m, l) as v1-v6, merged by attn_combine_v2 /
    v3 with C = ATT7_KT. QMAX >= rep x n (4, 8 or 16), NW warps a block (also in the simulator); needs dk % 32 ==
    0, dv <= 128, dv, ldv, ldk, ldq, qoff % 4 == 0, and attn_v7_smem(QMAX, dk, NW) <= 48 KB. (Measured and dropped,
    docs/history/2026-11-26-kernels-notes.md: L2 prefetches of the next tile; a v8 with whole tiles copied by cp.async, a warp a block.)
    """
    RI = QMAX // 4                                           # query rows per row lane
    SC = 4 * RI
    O4 = 4 * QMAX
    jit = cuda.jit(max_registers=MAXREG) if (MAXREG and not SIM) else cuda.jit

    @jit
    def attn_partial_v7(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, split):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % 32
        w = tid // 32
        kg = lane % 8                                        # key lane: keys kg + 8j of a tile
        rg = lane // 8                                       # row lane: query rows rg + 4i
        start = meta[M_START]
        T = start + n
        ntile = (T + ATT7_KT - 1) // ATT7_KT
        S = min(split, ntile)
        QR = rep * n
        QP = dk + 4
        PS = QMAX + 4
        d4 = dk // 4
        nc = dk // ATT7_DC
        nkv = nh // rep
        bpg = split // NW                                    # blocks per KV group
        KB = QMAX * QP + w * (ATT7_KT * ATT7_KP + ATT7_KT * PS + QMAX)   # this warp's key chunk, P, alpha
        PB = KB + ATT7_KT * ATT7_KP
        AB = PB + ATT7_KT * PS
        vok = 4 * lane < dv
        scl = float32(scale)                                 # (a float64 scale made the whole softmax float64)
        sc = cuda.local.array(SC, float32)
        mr = cuda.local.array(RI, float32)
        lr = cuda.local.array(RI, float32)
        o = cuda.local.array(O4, float32)
        kr = cuda.local.array(32, float32)
        va = cuda.local.array(32, float32)
        vb = cuda.local.array(32, float32)
        qt = cuda.local.array(16, float32)
        for item in range(cuda.blockIdx.x, nkv * bpg, cuda.gridDim.x):
            g = item // bpg
            bs = item - g * bpg
            if bs >= S:                                      # block-uniform: even warp 0's share is past the end
                continue
            s = w * bpg + bs                                 # this warp's share
            tb0 = (s * ntile) // S if s < S else 0
            tb1 = ((s + 1) * ntile) // S if s < S else 0
            vcol = g * dv + 4 * lane
            if tb0 < tb1:                                    # the first tile's first key chunk and value batch: in
                ld_key_chunk(kc, tb0 * ATT7_KT, T, ldk, g * dk, lane, kr)        # flight while q is staged
                ld_value_batch(vc, tb0 * ATT7_KT, T, ldv, vcol, vok, va)
            # the group's query rows r = i * rep + hh (query i, head g * rep + hh) -> sm[r * QP + d], zeros past QR
            for base in range(0, QMAX * d4, 4 * nt):
                ld_group_q16(q, ldq, qoff, g, rep, dk, QR, base, tid, nt, qt)
                for u in range(4):
                    idx = base + tid + u * nt
                    if idx < QMAX * d4:
                        r = idx // d4
                        st_sh4(sm, r * QP + (idx - r * d4) * 4, qt[4 * u], qt[4 * u + 1], qt[4 * u + 2], qt[4 * u + 3])
            for i in range(RI):
                mr[i] = NEG_INF
                lr[i] = float32(0.0)
            for j in range(O4):
                o[j] = float32(0.0)
            cuda.syncthreads()
            for tb in range(tb0, tb1):                       # warp-uniform
                t0 = tb * ATT7_KT
                for j in range(SC):
                    sc[j] = float32(0.0)
                if tb > tb0:                                 # (the first tile's chunk came with the prologue)
                    ld_key_chunk(kc, t0, T, ldk, g * dk, lane, kr)
                for c in range(nc):                          # S = Q K^T, a chunk of 32 dims at a time
                    st_key_chunk(sm, KB, lane, kr)
                    syncwarp()
                    if c + 1 < nc:
                        ld_key_chunk(kc, t0, T, ldk, g * dk + (c + 1) * ATT7_DC, lane, kr)
                    qk_chunk(sm, c * ATT7_DC, QP, KB, ATT7_KP, kg, rg, sc, RI)
                    syncwarp()                               # the chunk is restaged next
                for i in range(RI):                          # online softmax, rows rg + 4i over the 8 key lanes
                    r = rg + 4 * i
                    lim = start + r // rep                   # the row's query position: its causal limit
                    mx = NEG_INF
                    for j in range(4):
                        x = sc[4 * i + j] * scl if (r < QR and t0 + kg + 8 * j <= lim) else NEG_INF
                        sc[4 * i + j] = x
                        mx = max(mx, x)
                    mx = max(mx, shfl_xor(mx, 1))
                    mx = max(mx, shfl_xor(mx, 2))
                    mx = max(mx, shfl_xor(mx, 4))
                    m_old = mr[i]
                    m_new = max(m_old, mx)
                    ps = float32(0.0)
                    for j in range(4):
                        x = sc[4 * i + j]
                        p = math.exp(x - m_new) if x != NEG_INF else float32(0.0)
                        sm[PB + (kg + 8 * j) * PS + r] = p
                        ps += p
                    ps += shfl_xor(ps, 1)
                    ps += shfl_xor(ps, 2)
                    ps += shfl_xor(ps, 4)
                    al = math.exp(m_old - m_new) if m_old != NEG_INF else float32(0.0)
                    lr[i] = lr[i] * al + ps
                    mr[i] = m_new
                    if kg == 0:
                        sm[AB + r] = al
                syncwarp()
                for i4 in range(QMAX // 4):                  # O *= alpha, per row
                    a0, a1, a2, a3 = ld_sh4(sm, AB + 4 * i4)
                    for e in range(4):
                        o[16 * i4 + e] *= a0
                        o[16 * i4 + 4 + e] *= a1
                        o[16 * i4 + 8 + e] *= a2
                        o[16 * i4 + 12 + e] *= a3
                # O += P V, 8 keys a batch, the next batch in flight (va holds keys t0 .. t0 + 7)
                ld_value_batch(vc, t0 + 8, T, ldv, vcol, vok, vb)
                pv_batch(o, va, sm, PB, PS, QMAX)
                ld_value_batch(vc, t0 + 16, T, ldv, vcol, vok, va)
                pv_batch(o, vb, sm, PB + 8 * PS, PS, QMAX)
                ld_value_batch(vc, t0 + 24, T, ldv, vcol, vok, vb)
                pv_batch(o, va, sm, PB + 16 * PS, PS, QMAX)
                if tb + 1 < tb1:
                    ld_value_batch(vc, t0 + ATT7_KT, T, ldv, vcol, vok, va)
                pv_batch(o, vb, sm, PB + 24 * PS, PS, QMAX)
                syncwarp()                                   # P and alpha are rewritten by the next tile
            if tb0 < tb1:                                    # the share's partial, in the v1-v6 layout
                if vok:
                    for r in range(QMAX):
                        if r < QR:
                            i = r // rep
                            h = g * rep + r - i * rep
                            pbase = ((s * nh + h) * 16 + i) * dv + 4 * lane
                            po[pbase] = o[4 * r]
                            po[pbase + 1] = o[4 * r + 1]
                            po[pbase + 2] = o[4 * r + 2]
                            po[pbase + 3] = o[4 * r + 3]
                if kg == 0:
                    for i in range(RI):
                        r = rg + 4 * i
                        if r < QR:
                            qi = r // rep
                            h = g * rep + r - qi * rep
                            b = ((s * nh + h) * 16 + qi) * 2
                            pml[b] = mr[i]
                            pml[b + 1] = lr[i]
            cuda.syncthreads()                               # the query rows are restaged for the next item

    attn_partial_v7.QMAX, attn_partial_v7.NW, attn_partial_v7.MAXREG = QMAX, NW, MAXREG
    return attn_partial_v7


COMBINE3_SL = 8        # share lanes of attn_combine_v3 at most: blocks of 32 x SL threads
COMBINE3_U = 8         # shares a lane has in flight
COMBINE3_RED = COMBINE3_SL * 128
COMBINE3_XB = 4 * COMBINE3_U


@cuda.jit
def attn_combine_v3(po, pml, out, ldo, ooff, meta, n, nh, dv, C, split):
    """attn_combine_v2 with the weighted sum over shares spread over the block: thread = (share lane sl, 4 output
    dims), a lane's shares sl, sl + SL, ... read COMBINE3_U at a time (all in flight), then the SL partial sums
    added through shared memory. v2 gave each thread one output dim and walked the shares 4 loads at a time: S / 4
    round trips in sequence (7 us of v5's 22 us per MiMo-7B layer at context 512, 64 shares). Blocks of 32 x SL
    threads (SL <= COMBINE3_SL, also 1 in the simulator); dv % 4 == 0. C, split: as attn_combine_v2."""
    wsh = cuda.shared.array(COMBINE_MAX_CHUNKS, float32)
    red = cuda.shared.array(COMBINE3_RED, float32)          # [SL, 128 output dims] partial sums
    buf = cuda.shared.array(32, float32)
    wb = cuda.local.array(COMBINE3_U, float32)
    xb = cuda.local.array(COMBINE3_XB, float32)
    T = meta[M_START] + n
    S = attn_chunks(T, C, split)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    lane = tid % 32
    sl = tid // 32
    SL = nt // 32
    dv4 = dv // 4
    for item in range(cuda.blockIdx.x, n * nh, cuda.gridDim.x):
        i = item // nh
        h = item - i * nh
        m = NEG_INF
        for s in range(tid, S, nt):
            m = max(m, pml[((s * nh + h) * 16 + i) * 2])
        M = block_max(m, buf)
        d = float32(0.0)
        for s in range(tid, S, nt):
            b = ((s * nh + h) * 16 + i) * 2
            wgt = math.exp(pml[b] - M) if pml[b] != NEG_INF else float32(0.0)
            wsh[s] = wgt
            d += pml[b + 1] * wgt
        den = block_sum(d, buf)
        cuda.syncthreads()
        for e0 in range(0, dv4, 32):                         # 128 output dims at a time
            e4 = e0 + lane
            a0 = a1 = a2 = a3 = float32(0.0)
            for s0 in range(sl, S, SL * COMBINE3_U):
                for u in range(COMBINE3_U):                  # the loads first: all in flight
                    ss = s0 + u * SL
                    x0 = x1 = x2 = x3 = wgt = float32(0.0)
                    if ss < S and e4 < dv4:
                        x0, x1, x2, x3 = ld_f32x4(po, ((ss * nh + h) * 16 + i) * dv + e4 * 4)
                        wgt = wsh[ss]
                    wb[u] = wgt
                    xb[4 * u] = x0
                    xb[4 * u + 1] = x1
                    xb[4 * u + 2] = x2
                    xb[4 * u + 3] = x3
                for u in range(COMBINE3_U):
                    a0 += wb[u] * xb[4 * u]
                    a1 += wb[u] * xb[4 * u + 1]
                    a2 += wb[u] * xb[4 * u + 2]
                    a3 += wb[u] * xb[4 * u + 3]
            b = (sl * 32 + lane) * 4                         # = sl * 128 + the dim within the 128
            red[b] = a0
            red[b + 1] = a1
            red[b + 2] = a2
            red[b + 3] = a3
            cuda.syncthreads()
            for e in range(tid, 128, nt):
                if e0 * 4 + e < dv:
                    o = float32(0.0)
                    for k in range(SL):
                        o += red[k * 128 + e]
                    out[i * ldo + ooff + h * dv + e0 * 4 + e] = o / den
            cuda.syncthreads()



# ----------------------------------------------------------------------------- validate and time each version
def _main():
    import numpy as np

    from .. import kernels as K
    from ..gemm import nmax_for
    from ..reference import attention as attention_ref

    from ..graphs import CudaGraph, events_ms

    gpu = not SIM
    st = cuda.stream()
    # MiMo-7B shapes on a GPU (32 heads over 8 KV groups, head dim 128); a tiny shape in the simulator
    nh, g, dk, dv = (32, 8, 128, 128) if gpu else (4, 2, 32, 32)
    starts, ns = ((511, 4095), (1, 2, 4)) if gpu else ((40,), (2,))
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT if gpu else 2
    rng = np.random.default_rng(0)
    print(f"attention lab: nh {nh}, KV groups {g}, dk {dk}, dv {dv}; us per launch (partial + merge, CUDA graph of "
          f"20, replayed); max rel err against reference.attention")
    for start in starts:
        for n in ns:
            T, rep, nq = start + n, nh // g, nmax_for(n)
            kc = rng.standard_normal((T, g * dk)).astype(np.float32)
            vc = rng.standard_normal((T, g * dv)).astype(np.float32)
            q = rng.standard_normal((n, nh * dk)).astype(np.float32)
            meta = np.zeros(K.META_LEN, np.int32)
            meta[K.M_START], meta[K.M_N] = start, n
            want = attention_ref(q.reshape(n, nh, dk), kc.reshape(T, g, dk), vc.reshape(T, g, dv), dk ** -0.5, start)
            S = max(math.ceil(T / 8), 264)
            d = {k: cuda.to_device(v.ravel()) for k, v in dict(q=q, kc=kc, vc=vc, meta=meta).items()}
            po, pml = cuda.device_array(S * nh * 16 * dv, np.float32), cuda.device_array(S * nh * 16 * 2, np.float32)
            out = cuda.device_array(n * nh * dv, np.float32)
            args = (d["q"], nh * dk, 0, d["kc"], g * dk, d["vc"], g * dv, po, pml, d["meta"], n, nh, rep, dk, dv,
                    dk ** -0.5)
            for version in ("v2", "v5", "v6", "v7"):
                qmax = attn_v4_qmax(rep, nq)
                if version in ("v5", "v6", "v7") and rep * nq > 16:
                    continue
                if version == "v2":
                    C = 64
                    Sv = math.ceil(T / C)
                    kern, grid, nt, smem = make_attention_v2(nq), nh * Sv, 128 if gpu else 1, (nq * dk + nq * C) * 4
                    extra = (C, Sv, 1)

                    def merge():
                        K.attn_combine[n * nh, nt, st](po, pml, out, nh * dv, 0, d["meta"], n, nh, dv, C)
                elif version in ("v5", "v6"):
                    rw = ATT5_RW if version == "v5" else ATT6_RW
                    rw = rw if gpu else qmax
                    kern = (make_attention_v5(qmax, rw, math.ceil(dv / 128)) if version == "v5" else
                            make_attention_v6(qmax, rw, dk // 16, math.ceil(dv / 128)))
                    split = min(S, max(1, math.ceil(ATT5_BLOCKS_PER_SM * sms / g)) if gpu else 3)
                    grid, nt, smem, extra = g * split, 32 * kern.NW, attn_v5_smem(qmax, dk, rw), (split,)

                    def merge(split=split):
                        K.attn_combine_v2[n * nh, 128 if gpu else 1, st](po, pml, out, nh * dv, 0, d["meta"], n, nh,
                                                                         dv, ATT5_SUB, split)
                else:
                    nw = ATT7_NW if gpu else 1
                    bpg = max(1, math.ceil(ATT7_WARPS_PER_SM * sms / (g * nw))) if gpu else 2
                    q7 = attn_v7_qmax(rep, nq)
                    kern, grid, nt, smem = make_attention_v7(q7, nw), g * bpg, 32 * nw, attn_v7_smem(q7, dk, nw)
                    extra = (nw * bpg,)

                    def merge(split=nw * bpg):
                        K.attn_combine_v4[n * nh, 32 * (K.COMBINE4_SL if gpu else 1), st](
                            po, pml, out, nh * dv, 0, d["meta"], n, nh, dv, ATT7_KT, split)

                def run():
                    kern[grid, nt, st, smem](*args, *extra)
                    merge()

                run()
                st.synchronize()
                err = float(np.abs(out.copy_to_host().reshape(n, nh * dv) - want.reshape(n, -1)).max()
                            / np.abs(want).max())
                us = float("nan")
                if gpu:
                    graph = CudaGraph.capture(st, lambda: [run() for _ in range(20)])
                    us = events_ms(st, graph.launch) * 1e3 / 20
                print(f"  ctx {T:5d} n={n} {version}: {us:8.1f} us  rel err {err:.1e}  {'ok' if err < 1e-5 else 'FAIL'}")


if __name__ == "__main__":
    _main()
