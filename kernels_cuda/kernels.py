"""The non-GEMM kernels of the forward pass (the GEMM is in gemm.py).

Every kernel has a NumPy reference in reference.py and a test in tests/test_kernels.py.
Work items (rows, heads, ...) are visited with a grid-stride loop: on the GPU the grid has one
block per item, so each block runs its loop once; the simulator gets a grid of 1 block and 1
thread, which it runs far faster than one Python thread per element.
Arrays are flat 1-D device arrays with explicit leading dimensions (ld*) and offsets (*off), so
that one kernel serves q/k/v segments of a fused buffer or halves of a concatenation. Values
that change from step to step (cache length, positions, token ids, the MoE expert count) are read
from the int32 device array `meta`, never passed as launch arguments: the launches are then
identical from one step to the next and can be captured once into a CUDA graph and replayed.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int32

from .gemm import LOADERS
from .intrinsics import (SIM, TF32_MASK, bits_f32, f32_bits, factory, ld_f32x4, ld_sh4, mma_tf32, shfl_xor, st_sh4,
                         syncwarp, warp_argmax, warp_max, warp_sum)

# layout of the int32 `meta` array
M_START, M_N, M_NACT = 0, 1, 3
M_POS, M_IDS = 16, 32
META_LEN = 64
NEG_INF = float32(-np.inf)

NT = 1 if SIM else 128            # threads per block of the elementwise / row kernels (backend)


# ----------------------------------------------------------------------------- block reductions
@cuda.jit(device=True, inline=True)
def block_sum(v, buf):
    """Sum of v over the block (blockDim.x a multiple of 32); buf: shared float32[32]."""
    v = warp_sum(v)
    nw = cuda.blockDim.x >> 5
    if nw <= 1:
        return v
    if (cuda.threadIdx.x & 31) == 0:
        buf[cuda.threadIdx.x >> 5] = v
    cuda.syncthreads()
    t = buf[0]
    for j in range(1, nw):
        t += buf[j]
    cuda.syncthreads()
    return t


@cuda.jit(device=True, inline=True)
def block_max(v, buf):
    v = warp_max(v)
    nw = cuda.blockDim.x >> 5
    if nw <= 1:
        return v
    if (cuda.threadIdx.x & 31) == 0:
        buf[cuda.threadIdx.x >> 5] = v
    cuda.syncthreads()
    t = buf[0]
    for j in range(1, nw):
        t = max(t, buf[j])
    cuda.syncthreads()
    return t


# ----------------------------------------------------------------------------- embedding gather
# reference: embedding rows table[ids] (mtp_ref.model.Model.forward's first line); bf16 decoded as reference.bf16_value
@factory
def make_embed(fmt: str):
    _, load1 = LOADERS[fmt]

    @cuda.jit
    def embed(table, ws, meta, out, ldo, H, n):
        """out[i, :] = table[ids[i], :] (decoded to f32); ids = meta[M_IDS + i]; items: n."""
        for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
            row = meta[M_IDS + i]
            for j in range(cuda.threadIdx.x, H, cuda.blockDim.x):
                out[i * ldo + j] = load1(table, ws, row, j, H)

    return embed


# ----------------------------------------------------------------------------- RMSNorm
# reference: reference.rmsnorm
@cuda.jit
def rmsnorm(x, ldx, xoff, segs, D, w, y, ldy, yoff, eps, n):
    """y[seg] = x[seg] / sqrt(mean(x[seg]^2) + eps) * w, seg = row i, segment s of length D.

    items n * segs; segments at x[i * ldx + xoff + s * D ...]; y may be x (in place)."""
    buf = cuda.shared.array(32, float32)
    for b in range(cuda.blockIdx.x, n * segs, cuda.gridDim.x):
        i = b // segs
        s = b - i * segs
        xb = i * ldx + xoff + s * D
        yb = i * ldy + yoff + s * D
        acc = float32(0.0)
        for j in range(cuda.threadIdx.x, D, cuda.blockDim.x):
            v = x[xb + j]
            acc += v * v
        ss = block_sum(acc, buf)
        den = math.sqrt(ss / float32(D) + float32(eps))
        for j in range(cuda.threadIdx.x, D, cuda.blockDim.x):
            y[yb + j] = x[xb + j] / den * w[j]


# ----------------------------------------------------------------------------- RoPE
STYLE_HALF, STYLE_INTERLEAVED = 0, 1


# reference: reference.rope
@cuda.jit
def rope(buf, ldb, off, hd, half, meta, inv_freq, att, style, n, heads):
    """Rotate the first 2*half dims of head h of row i in place; items (i, h): n * heads.

    angle = pos[i] * inv_freq[j] in float64 (as ops.rope_tables); cos/sin scaled by att.
    half style pairs (j, j + half); interleaved pairs (2j, 2j + 1)."""
    for item in range(cuda.blockIdx.x, n * heads, cuda.gridDim.x):
        i = item // heads
        h = item - i * heads
        pos = float64(meta[M_POS + i])
        base = i * ldb + off + h * hd
        for j in range(cuda.threadIdx.x, half, cuda.blockDim.x):
            ang = pos * inv_freq[j]
            c = float32(math.cos(ang) * att)
            s = float32(math.sin(ang) * att)
            if style == STYLE_HALF:
                a = base + j
                b = base + j + half
            else:
                a = base + 2 * j
                b = base + 2 * j + 1
            x1 = buf[a]
            x2 = buf[b]
            buf[a] = x1 * c - x2 * s
            buf[b] = x2 * c + x1 * s


ROPE_MAX_HALF = 256


# reference: reference.rope on q and k, then the k / v rows into the cache at meta's positions
@cuda.jit
def rope_qk_cache_v2(buf, ldb, qoff, nqh, koff, nkh, voff, hd, half, meta, inv_freq, att, style, kc, vc, ldc, n):
    """rope_qk_cache with a block per (row, head) instead of per row: items n x (nqh + nkh). A thread computes the
    cos / sin of its own frequencies (float64, as `rope`), rotates its pairs and, for a key head, writes the rotated
    pairs, the unrotated tail and the head's values to row start + i of kc / vc. No shared memory, no barrier:
    one round trip per item. The per-row kernel ran its 40 heads of a MiMo-7B token through one block with three
    block barriers (11.5 us per layer under Nsight Compute, 2026-11-25)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    nhd = nqh + nkh
    for item in range(cuda.blockIdx.x, n * nhd, cuda.gridDim.x):
        i = item // nhd
        h = item - i * nhd
        pos = float64(meta[M_POS + i])
        kh = h - nqh                                         # >= 0: a key head
        base = i * ldb + (qoff + h * hd if kh < 0 else koff + kh * hd)
        r = meta[M_START] + i
        cb = r * ldc + kh * hd                               # the key head's row in the caches
        for j in range(tid, half, nt):
            ang = pos * inv_freq[j]
            c = float32(math.cos(ang) * att)
            sn = float32(math.sin(ang) * att)
            if style == STYLE_HALF:
                a = j
                b = j + half
            else:
                a = 2 * j
                b = 2 * j + 1
            x1 = buf[base + a]
            x2 = buf[base + b]
            y1 = x1 * c - x2 * sn
            y2 = x2 * c + x1 * sn
            buf[base + a] = y1
            buf[base + b] = y2
            if kh >= 0:
                kc[cb + a] = y1
                kc[cb + b] = y2
        if kh >= 0:
            for j in range(2 * half + tid, hd, nt):          # partial rotary: the unrotated tail
                kc[cb + j] = buf[base + j]
            for j in range(tid, hd, nt):
                vc[cb + j] = buf[i * ldb + voff + kh * hd + j]


# ----------------------------------------------------------------------------- cache write
# reference: rows copied into the cache at meta's positions (DeviceCache: what Model's KVCache.append does)
@cuda.jit
def cache_write(src, lds, soff, width, dst, ldd, doff, meta, n):
    """dst[start + i, doff : doff + width] = src[i, soff : soff + width]; items n."""
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        r = meta[M_START] + i
        for j in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            dst[r * ldd + doff + j] = src[i * lds + soff + j]


# ----------------------------------------------------------------------------- attention
@cuda.jit(device=True, inline=True)
def chunk_softmax_row(sm, base, L, lane, wl, pml, b):
    """One query row's scores over a chunk of L keys at sm[base:] (v1-v3 partials), by one warp: replaced in place by
    exp(score - m); lane 0 writes the chunk's max m and sum l to pml[b], pml[b + 1] for the merge."""
    m = NEG_INF
    for j in range(lane, L, wl):
        m = max(m, sm[base + j])
    m = warp_max(m)
    l = float32(0.0)
    for j in range(lane, L, wl):
        p = math.exp(sm[base + j] - m) if m != NEG_INF else float32(0.0)
        sm[base + j] = p
        l += p
    l = warp_sum(l)
    if lane == 0:
        pml[b] = m
        pml[b + 1] = l


def attn_chunk(NQ: int, dk: int, limit_bytes: int = 48 * 1024) -> int:
    """Keys per block: the largest of 256..32 whose shared memory (q rows + scores) fits."""
    for C in (256, 128, 64, 32):
        if (NQ * dk + NQ * C) * 4 <= limit_bytes:
            return C
    raise ValueError(f"attention head dim {dk} too large for shared memory")


# reference: reference.attention (v1: partials per chunk of keys, merged by attn_combine)
@factory
def make_attention(NQ: int):
    """Split-K ("flash-decoding") attention of n <= NQ new queries over the cache.

    attn_partial: block (h, s) scores the keys [s C, (s+1) C) of the cache for the n queries of
    head h (kv group h // rep), with the causal mask t <= start + i, and writes per query the
    chunk's max m, sum l = sum exp(score - m) and unnormalised output sum_t exp(score - m) v_t.
    attn_combine: merges the chunks: out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
    """

    @cuda.jit
    def attn_partial(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, C, S, vec):
        """items (h, s): nh * S; shared memory: q rows [NQ, dk] then scores [NQ, C]."""
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        wl = min(32, nt)                  # lanes per warp (the simulator runs 1-thread blocks)
        lane = tid % wl
        nw = nt // wl
        start = meta[M_START]
        T = start + n
        sc0 = NQ * dk
        acc = cuda.local.array(NQ, float32)
        for item in range(cuda.blockIdx.x, nh * S, cuda.gridDim.x):
            h = item // S
            s = item - h * S
            g = h // rep
            t0 = s * C
            if t0 >= T:                   # uniform over the block: no barrier is skipped by part of it
                continue
            t1 = min(t0 + C, T)
            for idx in range(tid, n * dk, nt):
                i = idx // dk
                sm[idx] = q[i * ldq + qoff + h * dk + (idx - i * dk)]
            cuda.syncthreads()
            # scores: one thread per key, all NQ queries at once (q broadcast from shared memory)
            for t in range(t0 + tid, t1, nt):
                for i in range(NQ):
                    acc[i] = float32(0.0)
                kb = t * ldk + g * dk
                if vec:
                    for e in range(0, dk, 4):
                        k0, k1, k2, k3 = ld_f32x4(kc, kb + e)
                        for i in range(NQ):
                            qb = i * dk + e
                            acc[i] += sm[qb] * k0 + sm[qb + 1] * k1 + sm[qb + 2] * k2 + sm[qb + 3] * k3
                else:
                    for e in range(dk):
                        kv = kc[kb + e]
                        for i in range(NQ):
                            acc[i] += sm[i * dk + e] * kv
                for i in range(NQ):
                    sm[sc0 + i * C + t - t0] = acc[i] * scale if t <= start + i else NEG_INF
            cuda.syncthreads()
            # softmax statistics of this chunk: warp w handles queries w, w + nw, ...
            L = t1 - t0
            for i in range(tid // wl, n, nw):
                chunk_softmax_row(sm, sc0 + i * C, L, lane, wl, pml, ((s * nh + h) * 16 + i) * 2)
            cuda.syncthreads()
            # unnormalised output: one thread per output dim, all NQ queries at once
            for e in range(tid, dv, nt):
                for i in range(NQ):
                    acc[i] = float32(0.0)
                for t in range(t0, t1):
                    vv = vc[t * ldv + g * dv + e]
                    for i in range(NQ):
                        acc[i] += sm[sc0 + i * C + t - t0] * vv
                for i in range(NQ):
                    if i < n:
                        po[((s * nh + h) * 16 + i) * dv + e] = acc[i]
            cuda.syncthreads()            # shared memory is reused by the next item

    return attn_partial


# reference: reference.attention (partials per chunk of keys, merged by attn_combine_v2)
@factory
def make_attention_v3(NQ: int):
    """attn_partial v3: the score loop of v2 re-laid out for coalesced, latency-hiding loads.

    Measured on the H100 (docs/history/2026-11-26-kernels-notes.md), v2 still spent ~35 us per 7B layer at context 512 against a
    ~2 us byte floor: each thread walked a whole 512 B key (8 dependent rounds of 4 loads) and 64
    values of V. v3 gives each KEY to a warp: lane l loads elements [4 l, 4 l + 4) of 128-element
    slices of it (one 512 B coalesced row per warp load), 4 keys per warp at a time (4 loads in
    flight per lane), dot products finished with a warp butterfly. P V keeps one thread per output
    dimension with 16 values of V in flight. Run with C = 32 keys per block (2x v2's blocks).
    Needs dk % 4 == 0 and ldk % 4 == 0 (16-byte loads); same arguments and results as v1/v2.
    """

    NQ4 = 4 * NQ                                             # local.array needs a constant, not an expression

    @cuda.jit
    def attn_partial_v3(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, C, S, vec):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        wl = min(32, nt)
        lane = tid % wl
        w = tid // wl
        nw = nt // wl
        start = meta[M_START]
        T = start + n
        sc0 = NQ * dk
        acc = cuda.local.array(NQ4, float32)
        accv = cuda.local.array(NQ, float32)
        span = 4 * wl                                        # elements of a key one warp load covers
        for item in range(cuda.blockIdx.x, nh * S, cuda.gridDim.x):
            h = item // S
            s = item - h * S
            g = h // rep
            t0 = s * C
            if t0 >= T:
                continue
            t1 = min(t0 + C, T)
            L = t1 - t0
            for idx in range(tid, n * dk, nt):
                i = idx // dk
                sm[idx] = q[i * ldq + qoff + h * dk + (idx - i * dk)]
            cuda.syncthreads()
            # scores: warp w takes keys t0 + 4 gi .. + 3 for gi = w, w + nw, ...
            for gi in range(w, (L + 3) // 4, nw):
                tb = t0 + 4 * gi
                for j in range(NQ4):
                    acc[j] = float32(0.0)
                for e in range(4 * lane, dk, span):
                    kb = g * dk + e
                    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = float32(0.0)
                    c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = float32(0.0)
                    a0, a1, a2, a3 = ld_f32x4(kc, tb * ldk + kb)
                    if tb + 1 < t1:
                        b0, b1, b2, b3 = ld_f32x4(kc, (tb + 1) * ldk + kb)
                    if tb + 2 < t1:
                        c0, c1, c2, c3 = ld_f32x4(kc, (tb + 2) * ldk + kb)
                    if tb + 3 < t1:
                        d0, d1, d2, d3 = ld_f32x4(kc, (tb + 3) * ldk + kb)
                    for i in range(NQ):
                        if i < n:
                            qb = i * dk + e
                            q0, q1, q2, q3 = sm[qb], sm[qb + 1], sm[qb + 2], sm[qb + 3]
                            acc[4 * i] += q0 * a0 + q1 * a1 + q2 * a2 + q3 * a3
                            acc[4 * i + 1] += q0 * b0 + q1 * b1 + q2 * b2 + q3 * b3
                            acc[4 * i + 2] += q0 * c0 + q1 * c1 + q2 * c2 + q3 * c3
                            acc[4 * i + 3] += q0 * d0 + q1 * d1 + q2 * d2 + q3 * d3
                for i in range(NQ):
                    if i < n:
                        for u in range(4):
                            v = warp_sum(acc[4 * i + u])
                            t = tb + u
                            if lane == 0 and t < t1:
                                sm[sc0 + i * C + t - t0] = v * scale if t <= start + i else NEG_INF
            cuda.syncthreads()
            for i in range(w, n, nw):                        # softmax of each query row over the chunk
                chunk_softmax_row(sm, sc0 + i * C, L, lane, wl, pml, ((s * nh + h) * 16 + i) * 2)
            cuda.syncthreads()
            L16 = t0 + (L // 16) * 16
            for e in range(tid, dv, nt):
                for i in range(NQ):
                    accv[i] = float32(0.0)
                vb = g * dv + e
                for t in range(t0, L16, 16):                  # 16 values of V in flight
                    v0 = vc[t * ldv + vb]
                    v1 = vc[(t + 1) * ldv + vb]
                    v2 = vc[(t + 2) * ldv + vb]
                    v3 = vc[(t + 3) * ldv + vb]
                    v4 = vc[(t + 4) * ldv + vb]
                    v5 = vc[(t + 5) * ldv + vb]
                    v6 = vc[(t + 6) * ldv + vb]
                    v7 = vc[(t + 7) * ldv + vb]
                    v8 = vc[(t + 8) * ldv + vb]
                    v9 = vc[(t + 9) * ldv + vb]
                    v10 = vc[(t + 10) * ldv + vb]
                    v11 = vc[(t + 11) * ldv + vb]
                    v12 = vc[(t + 12) * ldv + vb]
                    v13 = vc[(t + 13) * ldv + vb]
                    v14 = vc[(t + 14) * ldv + vb]
                    v15 = vc[(t + 15) * ldv + vb]
                    for i in range(NQ):
                        if i < n:
                            pb = sc0 + i * C + t - t0
                            accv[i] += (sm[pb] * v0 + sm[pb + 1] * v1 + sm[pb + 2] * v2 + sm[pb + 3] * v3
                                        + sm[pb + 4] * v4 + sm[pb + 5] * v5 + sm[pb + 6] * v6 + sm[pb + 7] * v7
                                        + sm[pb + 8] * v8 + sm[pb + 9] * v9 + sm[pb + 10] * v10
                                        + sm[pb + 11] * v11 + sm[pb + 12] * v12 + sm[pb + 13] * v13
                                        + sm[pb + 14] * v14 + sm[pb + 15] * v15)
                for t in range(L16, t1):
                    vv = vc[t * ldv + vb]
                    for i in range(NQ):
                        accv[i] += sm[sc0 + i * C + t - t0] * vv
                for i in range(NQ):
                    if i < n:
                        po[((s * nh + h) * 16 + i) * dv + e] = accv[i]
            cuda.syncthreads()

    return attn_partial_v3


COMBINE_MAX_CHUNKS = 2048


@cuda.jit(device=True, inline=True)
def attn_chunks(T, C, split):
    """Chunks of a T-key cache: ceil(T / C) (v1-v3), or with split > 0 (v4, v5) min(split, ceil(T / C))
    shares, each a contiguous run of C-key units (v4: blocks over 32-key sub-chunks, v5: warps over 8-key steps)."""
    if split > 0:
        return min(split, (T + C - 1) // C)
    return (T + C - 1) // C


# reference: reference.attention: the softmax merge of v3 / v4's partials
@cuda.jit
def attn_combine_v2(po, pml, out, ldo, ooff, meta, n, nh, dv, C, split):
    """attn_combine with the chunk statistics read in parallel (thread s reads chunk s: one round of
    loads, block max / sum) and the weighted sum over chunks 4 loads at a time. v1 read the S
    (m, l) pairs three times in sequence per thread: ~11 us per 7B layer at context 512 (docs/history/2026-11-26-kernels-notes.md).
    split: 0 for v1-v3 partials (C keys a chunk); for v4 / v5 partials the launch's split, with C = ATT4_SUB /
    ATT5_SUB (the unit of a share)."""
    wsh = cuda.shared.array(COMBINE_MAX_CHUNKS, float32)
    buf = cuda.shared.array(32, float32)
    T = meta[M_START] + n
    S = attn_chunks(T, C, split)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
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
        S4 = (S // 4) * 4
        for e in range(tid, dv, nt):
            o = float32(0.0)
            for s in range(0, S4, 4):
                o += (po[((s * nh + h) * 16 + i) * dv + e] * wsh[s]
                      + po[(((s + 1) * nh + h) * 16 + i) * dv + e] * wsh[s + 1]
                      + po[(((s + 2) * nh + h) * 16 + i) * dv + e] * wsh[s + 2]
                      + po[(((s + 3) * nh + h) * 16 + i) * dv + e] * wsh[s + 3])
            for s in range(S4, S):
                o += po[((s * nh + h) * 16 + i) * dv + e] * wsh[s]
            out[i * ldo + ooff + h * dv + e] = o / den
        cuda.syncthreads()


# ----------------------------------------------------------------------------- attention v4 (GQA groups)
ATT4_SUB = 32          # keys per sub-chunk: one per lane in the score step
# register cap of attn_partial_v4 as the backend launches it: uncapped, ptxas gives it 168-178 registers (3 blocks of
# 128 threads per SM); capped at 128 the kernel took 63 / 105 us instead of 77 / 159 us per MiMo-7B layer at context
# 4096 for 1 / 4 query tokens on the H100 (benchmarks/bench_attention.py, docs/history/2026-11-26-kernels-notes.md): it is latency-bound, so
# resident warps matter more than registers
ATT4_MAXREG = 128


def attn_v4_qmax(rep: int, NQ: int) -> int:
    """Query rows of a v4 block (rep heads x NQ tokens), rounded up to a power of two."""
    q = 1
    while q < rep * NQ:
        q *= 2
    return q


def attn_v4_smem(QMAX: int, dk: int) -> int:
    """Dynamic shared memory of attn_partial_v4, bytes: K sub-chunk (rows padded to dk + 1: the score
    step reads a column of it, lane = key), the block's query rows, P, and m / l / alpha per row."""
    return (ATT4_SUB * (dk + 1) + QMAX * dk + QMAX * ATT4_SUB + 3 * QMAX) * 4


@cuda.jit(device=True, inline=True)
def ld_group_q4(q, ldq, qoff, g, rep, dk, QR, idx):
    """4 floats (one 16-byte load) of KV group g's query rows, flat index idx over [QR rows, dk / 4]: row
    r = i * rep + hh is query i, head g * rep + hh. Zeros past the QR rows (v4 and v5 stage these in shared memory)."""
    d4 = dk // 4
    x0 = x1 = x2 = x3 = float32(0.0)
    if idx < QR * d4:
        r = idx // d4
        i = r // rep
        x0, x1, x2, x3 = ld_f32x4(q, i * ldq + qoff + (g * rep + r - i * rep) * dk + (idx - r * d4) * 4)
    return x0, x1, x2, x3


# reference: reference.attention (partials per share of a KV group's keys, merged by attn_combine_v2)
@factory
def make_attention_v4(QMAX: int, EMAX: int, NW: int, MAXREG: int = 0):
    """attn_partial v4: one block per (KV group, run of 32-key sub-chunks), all rep x n query rows of the group.

    v1-v3 give each query HEAD its own blocks, so a GQA model (MiMo-7B: 32 heads over 8 KV heads) reads every
    key and value 4 times, and v3 ran 4096 blocks of 32 keys at context 4096 (docs/history/2026-11-26-kernels-notes.md: 74 us per layer
    above context 512 for one token, 142 us for four). v4 (flash decoding per group):
      * stage the query rows and each sub-chunk's keys in shared memory with 16-byte loads, 8 in flight per
        thread (first measured with load -> store loops: one memory latency per 16 bytes), rows padded to
        dk + 1 floats;
      * scores: lane = key (conflict-free column reads thanks to the padding), warp w = query rows
        w, w + NW, ... (RPT of them in registers); causal mask inside the n-token window;
      * online softmax per row by the warp that owns it (running max m, sum l, rescale alpha);
      * P V: thread = output dimension (EMAX of them), the 32 values of V in registers, rows x keys
        accumulated in registers across sub-chunks;
    then the block's unnormalised outputs and (m, l) go to the same partial layout as v1-v3, merged by
    attn_combine_v2 with `split` > 0. The launch grid is nkv x split for every context (graph-replayable);
    blocks past the cache's end exit. QMAX >= rep x n rows, EMAX >= dv / blockDim, NW = blockDim / 32 (1 for
    the simulator's 1-thread blocks), MAXREG: a register cap for ptxas (0: none). Needs dk % 4 == 0 and
    ldk % 4 == 0. (A variant with every row's P V in its own warp, K and V both staged and 16-byte shared
    loads measured slower at context 4096 on the H100: docs/history/2026-11-26-kernels-notes.md.)
    """
    RPT = (QMAX + NW - 1) // NW                              # query rows per warp
    QE = QMAX * EMAX
    STAGE = 8                                                # 16-byte loads in flight per thread when staging
    STAGE4 = 4 * STAGE                                       # (local.array needs a constant, not an expression)
    jit = cuda.jit(max_registers=MAXREG) if (MAXREG and not SIM) else cuda.jit

    @jit
    def attn_partial_v4(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, split):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        wl = min(32, nt)
        lane = tid % wl
        w = tid // wl
        start = meta[M_START]
        T = start + n
        nsub = (T + ATT4_SUB - 1) // ATT4_SUB
        S = min(split, nsub)
        QR = rep * n
        dk1 = dk + 1
        QS = ATT4_SUB * dk1                                  # smem: [K sub-chunk | q rows | P | m | l | alpha]
        PS = QS + QMAX * dk
        MS = PS + QMAX * ATT4_SUB
        LS = MS + QMAX
        AS = LS + QMAX
        d4 = dk // 4
        acc = cuda.local.array(RPT, float32)
        o = cuda.local.array(QE, float32)
        vv = cuda.local.array(ATT4_SUB, float32)
        buf = cuda.local.array(STAGE4, float32)
        nkv = nh // rep
        for item in range(cuda.blockIdx.x, nkv * split, cuda.gridDim.x):
            g = item // split
            s = item - g * split
            if s >= S:
                continue
            sb0 = (s * nsub) // S                            # this block's sub-chunks: a balanced share
            sb1 = ((s + 1) * nsub) // S
            # query rows r = i * rep + hh (query i, head g * rep + hh) -> smem, STAGE 16-byte loads in flight per thread
            for base in range(0, QR * d4, STAGE * nt):
                for u in range(STAGE):
                    x0, x1, x2, x3 = ld_group_q4(q, ldq, qoff, g, rep, dk, QR, base + tid + u * nt)
                    buf[4 * u] = x0
                    buf[4 * u + 1] = x1
                    buf[4 * u + 2] = x2
                    buf[4 * u + 3] = x3
                for u in range(STAGE):
                    idx = base + tid + u * nt
                    if idx < QR * d4:
                        b = QS + idx * 4
                        sm[b] = buf[4 * u]
                        sm[b + 1] = buf[4 * u + 1]
                        sm[b + 2] = buf[4 * u + 2]
                        sm[b + 3] = buf[4 * u + 3]
            for r in range(tid, QMAX, nt):
                sm[MS + r] = NEG_INF
                sm[LS + r] = float32(0.0)
            for j in range(QE):
                o[j] = float32(0.0)
            cuda.syncthreads()
            for sb in range(sb0, sb1):
                t0 = sb * ATT4_SUB
                L = min(ATT4_SUB, T - t0)
                # stage K: 16-byte loads coalesced along each row, all STAGE of a thread issued before any store (a
                # load -> store loop would wait out one memory latency per iteration)
                for base in range(0, L * d4, STAGE * nt):
                    for u in range(STAGE):
                        idx = base + tid + u * nt
                        x0 = x1 = x2 = x3 = float32(0.0)
                        if idx < L * d4:
                            t = idx // d4
                            x0, x1, x2, x3 = ld_f32x4(kc, (t0 + t) * ldk + g * dk + (idx - t * d4) * 4)
                        buf[4 * u] = x0
                        buf[4 * u + 1] = x1
                        buf[4 * u + 2] = x2
                        buf[4 * u + 3] = x3
                    for u in range(STAGE):
                        idx = base + tid + u * nt
                        if idx < L * d4:
                            t = idx // d4
                            b = t * dk1 + (idx - t * d4) * 4
                            sm[b] = buf[4 * u]
                            sm[b + 1] = buf[4 * u + 1]
                            sm[b + 2] = buf[4 * u + 2]
                            sm[b + 3] = buf[4 * u + 3]
                cuda.syncthreads()
                for t in range(lane, L, wl):                 # scores of key t0 + t against this warp's rows
                    for j in range(RPT):
                        acc[j] = float32(0.0)
                    kb = t * dk1
                    for e in range(0, dk, 4):
                        k0 = sm[kb + e]
                        k1 = sm[kb + e + 1]
                        k2 = sm[kb + e + 2]
                        k3 = sm[kb + e + 3]
                        for j in range(RPT):
                            r = w + NW * j
                            if r < QR:
                                qb = QS + r * dk + e
                                acc[j] += sm[qb] * k0 + sm[qb + 1] * k1 + sm[qb + 2] * k2 + sm[qb + 3] * k3
                    for j in range(RPT):
                        r = w + NW * j
                        if r < QR:
                            sm[PS + r * ATT4_SUB + t] = acc[j] * scale if t0 + t <= start + r // rep else NEG_INF
                syncwarp()
                for j in range(RPT):                         # online softmax of the warp's rows (uniform branch)
                    r = w + NW * j
                    if r < QR:
                        pb = PS + r * ATT4_SUB
                        mx = NEG_INF
                        for t in range(lane, L, wl):
                            mx = max(mx, sm[pb + t])
                        mx = warp_max(mx)
                        m_old = sm[MS + r]
                        m_new = max(m_old, mx)
                        ps = float32(0.0)
                        for t in range(lane, ATT4_SUB, wl):
                            p = float32(0.0)
                            if t < L:
                                sv = sm[pb + t]
                                if sv != NEG_INF:
                                    p = math.exp(sv - m_new)
                            sm[pb + t] = p
                            ps += p
                        ps = warp_sum(ps)
                        alpha = math.exp(m_old - m_new) if m_old != NEG_INF else float32(0.0)
                        syncwarp()
                        if lane == 0:
                            sm[MS + r] = m_new
                            sm[LS + r] = sm[LS + r] * alpha + ps
                            sm[AS + r] = alpha
                cuda.syncthreads()
                for ei in range(EMAX):                       # P V: thread = output dimension
                    e = tid + ei * nt
                    if e < dv:
                        vb = g * dv + e
                        for t in range(ATT4_SUB):
                            vv[t] = vc[(t0 + t) * ldv + vb] if t < L else float32(0.0)
                        for r in range(QMAX):
                            if r < QR:
                                pb = PS + r * ATT4_SUB
                                a = float32(0.0)
                                for t in range(ATT4_SUB):
                                    a += sm[pb + t] * vv[t]
                                o[r * EMAX + ei] = o[r * EMAX + ei] * sm[AS + r] + a
                cuda.syncthreads()
            for ei in range(EMAX):                           # the block's partial, in the v1-v3 layout
                e = tid + ei * nt
                if e < dv:
                    for r in range(QMAX):
                        if r < QR:
                            i = r // rep
                            h = g * rep + r - i * rep
                            po[((s * nh + h) * 16 + i) * dv + e] = o[r * EMAX + ei]
            for r in range(tid, QR, nt):
                i = r // rep
                h = g * rep + r - i * rep
                b = ((s * nh + h) * 16 + i) * 2
                pml[b] = sm[MS + r]
                pml[b + 1] = sm[LS + r]
            cuda.syncthreads()

    attn_partial_v4.QMAX, attn_partial_v4.EMAX, attn_partial_v4.NW, attn_partial_v4.MAXREG = QMAX, EMAX, NW, MAXREG
    return attn_partial_v4


@cuda.jit(device=True, inline=True)
def ld_group_q16(q, ldq, qoff, g, rep, dk, QR, base, tid, nt, qt):
    """v5-v7: qt <- the thread's 4 16-byte loads of KV group g's query rows at flat indices base + tid + u nt (u < 4,
    ld_group_q4), all in flight before the caller stores them."""
    for u in range(4):
        x0, x1, x2, x3 = ld_group_q4(q, ldq, qoff, g, rep, dk, QR, base + tid + u * nt)
        qt[4 * u] = x0
        qt[4 * u + 1] = x1
        qt[4 * u + 2] = x2
        qt[4 * u + 3] = x3


# ----------------------------------------------------------------------------- attention v9 (tensor cores)
ATT9_KS = 8            # keys per step of a v9 warp: the 8 columns of an m16n8k8 MMA
ATT9_NW = 4            # warps per block (one share of a KV group's keys each)
ATT9_WARPS_PER_SM = 8  # blocks per KV group = ceil(this x SMs / (KV groups x ATT9_NW))
ATT9_MAXREG = 0        # register cap of the backend's v9 (0: none)


def attn_v9_qp(dk: int) -> int:
    """A staged query row of v9 in shared memory, floats: dk padded to 16 mod 32, so that the two rows a quarter
    warp's 16-byte fragment loads touch fall in different banks."""
    return dk + (16 - dk % 32) % 32


def attn_v9_smem(dk: int) -> int:
    """Dynamic shared memory of attn_partial_v9, bytes: the group's 16 query rows as tf32 high and low parts."""
    return 2 * 16 * attn_v9_qp(dk) * 4


@cuda.jit(device=True, inline=True)
def tf32_split(x):
    """x = hi + lo with hi = x truncated to tf32 (the low 13 mantissa bits cleared) and lo = x - hi, exact in float32.
    A product of two such splits over three tf32 MMAs (hi hi + hi lo + lo hi; the tensor core truncates lo to
    tf32 too) is float32-accurate to ~2^-21 relative: the "3xTF32" scheme."""
    hi = bits_f32(f32_bits(x) & TF32_MASK)
    return hi, x - hi


@cuda.jit(device=True, inline=True)
def mma3_tf32(a0, a1, a2, a3, b0, b1, acc, j):
    """acc[j : j + 4] += A B over three tf32 MMAs from the float32 fragments (mma_tf32's layout), each split into
    tf32 high and low parts; the low-part products go first (the smaller terms)."""
    ah0, al0 = tf32_split(a0)
    ah1, al1 = tf32_split(a1)
    ah2, al2 = tf32_split(a2)
    ah3, al3 = tf32_split(a3)
    bh0, bl0 = tf32_split(b0)
    bh1, bl1 = tf32_split(b1)
    d0, d1, d2, d3 = mma_tf32(al0, al1, al2, al3, bh0, bh1, acc[j], acc[j + 1], acc[j + 2], acc[j + 3])
    d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bl0, bl1, d0, d1, d2, d3)
    d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bh0, bh1, d0, d1, d2, d3)
    acc[j] = d0
    acc[j + 1] = d1
    acc[j + 2] = d2
    acc[j + 3] = d3


@cuda.jit(device=True, inline=True)
def ld_key_step9(kc, t, T, ldk, kbase, kb, NC):
    """v9: kb <- the lane's 4 dims of each 16-dim chunk of key row t (dims kbase + 16c .. + 3, c < NC); zeros past
    key T."""
    for c in range(NC):
        x0 = x1 = x2 = x3 = float32(0.0)
        if t < T:
            x0, x1, x2, x3 = ld_f32x4(kc, t * ldk + kbase + 16 * c)
        kb[4 * c] = x0
        kb[4 * c + 1] = x1
        kb[4 * c + 2] = x2
        kb[4 * c + 3] = x3


@cuda.jit(device=True, inline=True)
def ld_value_step9(vc, t, T, ldv, vbase, vb, NJ):
    """v9: vb <- value rows t and t + 4, the lane's 4 dims of each 32-dim block (dims vbase + 32J .. + 3, J < NJ);
    zeros past key T."""
    for h in range(2):
        for J in range(NJ):
            x0 = x1 = x2 = x3 = float32(0.0)
            if t + 4 * h < T:
                x0, x1, x2, x3 = ld_f32x4(vc, (t + 4 * h) * ldv + vbase + 32 * J)
            b = 4 * (h * NJ + J)
            vb[b] = x0
            vb[b + 1] = x1
            vb[b + 2] = x2
            vb[b + 3] = x3


# reference: reference.attention (partials per share of 8-key steps, merged by attn_combine_v4)
@factory
def make_attention_v9(DK: int, DV: int, NW: int, MAXREG: int = 0, ASETS: int = 2):
    """attn_partial v9: flash decoding on the tensor cores: a warp per share of a KV group's keys, all (<= 16) query
    rows of the group as the 16 rows of m16n8k8 tf32 MMAs, 8 keys a step.

    v5-v7 spend one FFMA per (row, key, dim) on the CUDA cores: at 16 rows (a 4-token verify at 4 heads per KV group)
    that work, not the cache bytes, set their time (v7: 60 us per MiMo-7B layer at ctx 4096, latency-bound at 255
    registers). An MMA does 16 x 8 x 8 of them in one warp instruction, so 4 and 16 rows cost about the same. Per step
    of 8 keys t0 .. t0 + 7:
      * S [16, 8] = Q K^T: lane = 4g + t (mma_tf32's layout) reads its key's 4 dims of each 16-dim chunk (one 16-byte
        load a chunk; a load instruction reads 8 whole 64-byte row pieces): within a chunk the MMA's k index t / t + 4
        is dim 4t / 4t + 1 and then 4t + 2 / 4t + 3, and the query fragments (hi / lo parts staged in shared memory)
        use the same order, since a dot product does not care. The MMA's column g is key (g >> 1) + 4 (g & 1), so that
        the lane's scores (row g / g + 8, columns 2t, 2t + 1) are keys t and t + 4: exactly the A fragment the P V
        MMA needs from it, with no exchange between lanes;
      * online softmax per row over the quad of lanes sharing it (2 shuffles for the max, 2 for the sum);
      * O [16, dv] += P V: the MMA's k index t / t + 4 is key t / t + 4 and its column g of n-tile 4J + e is dim
        32J + 4g + e, so a lane's value fragments for 4 n-tiles are one 16-byte load of its value row.
    Three tf32 MMAs per product (mma3_tf32) keep float32 accuracy (~1e-6 relative, like v1-v7). As in v6, the next
    step's keys are requested once the scores are done, its values once P V is done, the first step's before the
    query rows are staged. Shares and partials as v7 (split = NW x blocks per group, warp w of block b taking share
    w x (split / NW) + b), 8-key units: merged by attn_combine_v3 with C = ATT9_KS. Needs rep x n <= 16, DK % 32 ==
    0, DV % 32 == 0, DV <= 128 (O: DV / 2 accumulators a lane), ldk, ldv, ldq, qoff % 4 == 0, and full warps (also
    in the simulator: the MMA is emulated across 32 lanes).
    """
    NC = DK // 16                                            # 16-dim chunks of a key row: a 16-byte load a lane
    NJ = DV // 32                                            # 32-dim blocks of a value row: 4 n-tiles each
    QP = attn_v9_qp(DK)
    QS = 16 * QP                                             # the low parts after the high ones
    KB, VB, NO = 4 * NC, 8 * NJ, 16 * NJ                     # local array sizes (compile-time constants)
    jit = cuda.jit(max_registers=MAXREG) if (MAXREG and not SIM) else cuda.jit

    @jit
    def attn_partial_v9(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, split):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % 32
        w = tid // 32
        gq = lane // 4                                       # MMA group: rows gq and gq + 8, S column / O column gq
        tq = lane - 4 * gq                                   # thread in group: keys t0 + tq and + 4 of P
        kq = (gq >> 1) + 4 * (gq & 1)                        # the key of S column gq
        start = meta[M_START]
        T = start + n
        nstep = (T + ATT9_KS - 1) // ATT9_KS
        S = min(split, nstep)
        QR = rep * n
        d4 = DK // 4
        nkv = nh // rep
        bpg = split // NW                                    # blocks per KV group
        scl = float32(scale)                                 # (a float64 scale would make the softmax float64)
        r0 = gq
        r1 = gq + 8
        lim0 = start + r0 // rep                             # the rows' query positions: their causal limits
        lim1 = start + r1 // rep
        kb = cuda.local.array(KB, float32)
        vb = cuda.local.array(VB, float32)
        o = cuda.local.array(NO, float32)                    # n-tile j = 4J + e: o[4j .. 4j + 3] (C layout)
        acc = cuda.local.array(24, float32)                  # S: [chunk parity][hi hi, hi lo, lo hi][4]
        qt = cuda.local.array(16, float32)
        for item in range(cuda.blockIdx.x, nkv * bpg, cuda.gridDim.x):
            g = item // bpg
            bs = item - g * bpg
            if bs >= S:                                      # block-uniform: even warp 0's share is past the end
                continue
            s = w * bpg + bs                                 # this warp's share
            sb0 = (s * nstep) // S if s < S else 0
            sb1 = ((s + 1) * nstep) // S if s < S else 0
            kbase = g * dk + 4 * tq
            vbase = g * dv + 4 * gq
            if sb0 < sb1:                                    # the first step's keys and values, in flight while
                ld_key_step9(kc, sb0 * ATT9_KS + kq, T, ldk, kbase, kb, NC)          # q is staged
                ld_value_step9(vc, sb0 * ATT9_KS + tq, T, ldv, vbase, vb, NJ)
            # the group's 16 query rows r = i * rep + hh (query i, head g * rep + hh; zeros past QR), split into tf32
            # high / low parts -> sm[r * QP + d], sm[QS + r * QP + d]
            for base in range(0, 16 * d4, 4 * nt):
                ld_group_q16(q, ldq, qoff, g, rep, dk, QR, base, tid, nt, qt)
                for u in range(4):
                    idx = base + tid + u * nt
                    if idx < 16 * d4:
                        r = idx // d4
                        b = r * QP + (idx - r * d4) * 4
                        h0, l0 = tf32_split(qt[4 * u])
                        h1, l1 = tf32_split(qt[4 * u + 1])
                        h2, l2 = tf32_split(qt[4 * u + 2])
                        h3, l3 = tf32_split(qt[4 * u + 3])
                        st_sh4(sm, b, h0, h1, h2, h3)
                        st_sh4(sm, QS + b, l0, l1, l2, l3)
            m0 = m1 = NEG_INF                                # rows r0, r1: every lane of the quad keeps them
            l0 = l1 = float32(0.0)
            for j in range(16 * NJ):
                o[j] = float32(0.0)
            cuda.syncthreads()
            for sb in range(sb0, sb1):                       # warp-uniform
                t0 = sb * ATT9_KS
                for j in range(24):
                    acc[j] = float32(0.0)
                for c in range(NC):                          # S = Q K^T, 16 dims (2 MMA k-steps) a chunk
                    qa = r0 * QP + 16 * c + 4 * tq
                    qb = r1 * QP + 16 * c + 4 * tq
                    x0, x1, x2, x3 = ld_sh4(sm, qa)          # row r0, dims 16c + 4tq .. + 3
                    y0, y1, y2, y3 = ld_sh4(sm, qb)          # row r1
                    u0, u1, u2, u3 = ld_sh4(sm, QS + qa)     # their low parts
                    v0, v1, v2, v3 = ld_sh4(sm, QS + qb)
                    kh0, kl0 = tf32_split(kb[4 * c])
                    kh1, kl1 = tf32_split(kb[4 * c + 1])
                    kh2, kl2 = tf32_split(kb[4 * c + 2])
                    kh3, kl3 = tf32_split(kb[4 * c + 3])
                    p = 12 * (c % ASETS)                     # ASETS accumulator sets: shorter MMA chains
                    for e in range(2):                       # k-step e: dims 4tq + 2e (k = tq), 4tq + 2e + 1 (k = tq + 4)
                        if e == 0:
                            ah0, ah1, ah2, ah3, al0, al1, al2, al3 = x0, y0, x1, y1, u0, v0, u1, v1
                            bh0, bh1, bl0, bl1 = kh0, kh1, kl0, kl1
                        else:
                            ah0, ah1, ah2, ah3, al0, al1, al2, al3 = x2, y2, x3, y3, u2, v2, u3, v3
                            bh0, bh1, bl0, bl1 = kh2, kh3, kl2, kl3
                        d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bh0, bh1, acc[p], acc[p + 1], acc[p + 2],
                                                  acc[p + 3])
                        acc[p], acc[p + 1], acc[p + 2], acc[p + 3] = d0, d1, d2, d3
                        d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bl0, bl1, acc[p + 4], acc[p + 5], acc[p + 6],
                                                  acc[p + 7])
                        acc[p + 4], acc[p + 5], acc[p + 6], acc[p + 7] = d0, d1, d2, d3
                        d0, d1, d2, d3 = mma_tf32(al0, al1, al2, al3, bh0, bh1, acc[p + 8], acc[p + 9], acc[p + 10],
                                                  acc[p + 11])
                        acc[p + 8], acc[p + 9], acc[p + 10], acc[p + 11] = d0, d1, d2, d3
                if sb + 1 < sb1:                             # kb is free: the next step's keys
                    ld_key_step9(kc, t0 + ATT9_KS + kq, T, ldk, kbase, kb, NC)
                # scores of (r0, key t0 + tq), (r0, t0 + tq + 4), (r1, t0 + tq), (r1, t0 + tq + 4)
                ka = t0 + tq
                z0 = z1 = z2 = z3 = NEG_INF
                if r0 < QR and ka <= lim0:
                    z0 = ((acc[4] + acc[16]) + (acc[8] + acc[20]) + (acc[0] + acc[12])) * scl
                if r0 < QR and ka + 4 <= lim0:
                    z1 = ((acc[5] + acc[17]) + (acc[9] + acc[21]) + (acc[1] + acc[13])) * scl
                if r1 < QR and ka <= lim1:
                    z2 = ((acc[6] + acc[18]) + (acc[10] + acc[22]) + (acc[2] + acc[14])) * scl
                if r1 < QR and ka + 4 <= lim1:
                    z3 = ((acc[7] + acc[19]) + (acc[11] + acc[23]) + (acc[3] + acc[15])) * scl
                mx0 = max(z0, z1)                            # online softmax over the quad's 8 keys per row
                mx1 = max(z2, z3)
                mx0 = max(mx0, shfl_xor(mx0, 1))
                mx1 = max(mx1, shfl_xor(mx1, 1))
                mx0 = max(mx0, shfl_xor(mx0, 2))
                mx1 = max(mx1, shfl_xor(mx1, 2))
                n0 = max(m0, mx0)
                n1 = max(m1, mx1)
                p0 = math.exp(z0 - n0) if z0 != NEG_INF else float32(0.0)
                p1 = math.exp(z1 - n0) if z1 != NEG_INF else float32(0.0)
                p2 = math.exp(z2 - n1) if z2 != NEG_INF else float32(0.0)
                p3 = math.exp(z3 - n1) if z3 != NEG_INF else float32(0.0)
                s0 = p0 + p1
                s1 = p2 + p3
                s0 += shfl_xor(s0, 1)
                s1 += shfl_xor(s1, 1)
                s0 += shfl_xor(s0, 2)
                s1 += shfl_xor(s1, 2)
                al0 = math.exp(m0 - n0) if m0 != NEG_INF else float32(0.0)
                al1 = math.exp(m1 - n1) if m1 != NEG_INF else float32(0.0)
                l0 = l0 * al0 + s0
                l1 = l1 * al1 + s1
                m0 = n0
                m1 = n1
                # O = alpha O + P V; P's A fragment: (r0, tq), (r1, tq), (r0, tq + 4), (r1, tq + 4) = p0, p2, p1, p3
                for J in range(NJ):
                    for e in range(4):
                        j = 4 * (4 * J + e)
                        o[j] *= al0
                        o[j + 1] *= al0
                        o[j + 2] *= al1
                        o[j + 3] *= al1
                        mma3_tf32(p0, p2, p1, p3, vb[4 * J + e], vb[4 * (NJ + J) + e], o, j)
                if sb + 1 < sb1:                             # vb is free: the next step's values
                    ld_value_step9(vc, t0 + ATT9_KS + tq, T, ldv, vbase, vb, NJ)
            if sb0 < sb1:                                    # the share's partial, in the v1-v7 layout
                for hr in range(2):
                    r = gq + 8 * hr
                    if r < QR:
                        i = r // rep
                        h = g * rep + r - i * rep
                        pbase = ((s * nh + h) * 16 + i) * dv + 8 * tq
                        for J in range(NJ):                  # n-tile 4J + e, columns 2tq / 2tq + 1: dims
                            for e in range(4):               # 32J + 8tq + e and + 4
                                j = 4 * (4 * J + e) + 2 * hr
                                po[pbase + 32 * J + e] = o[j]
                                po[pbase + 32 * J + 4 + e] = o[j + 1]
                        if tq == 0:
                            b = ((s * nh + h) * 16 + i) * 2
                            pml[b] = m0 if hr == 0 else m1
                            pml[b + 1] = l0 if hr == 0 else l1
            cuda.syncthreads()                               # the query rows are restaged for the next item

    attn_partial_v9.DK, attn_partial_v9.DV, attn_partial_v9.NW, attn_partial_v9.MAXREG = DK, DV, NW, MAXREG
    return attn_partial_v9


# ----------------------------------------------------------------------------- attention v10 (two MMA row tiles)
# v10 launches as v9 (ATT9_NW warps a block, ATT9_WARPS_PER_SM): the backend's shares and scratch serve both
ATT10_MAXREG = 0       # register cap of the backend's v10 (0: none)
ATT10_VPRE = 1         # the backend's v10: values prefetched a step ahead (make_attention_v10's VPRE)
ATT10_DSPLIT = 1       # the backend's v10: warps per share (2: each half the value dims; needs dv % 64 == 0)


def attn_v10_smem(dk: int) -> int:
    """Dynamic shared memory of attn_partial_v10, bytes: the group's 32 query rows as tf32 high and low parts."""
    return 2 * 32 * attn_v9_qp(dk) * 4


@cuda.jit(device=True, inline=True)
def score_pair9(acc, b, r, QR, ka, lim, scl):
    """v9 / v10: a lane's scores of row r for keys ka and ka + 4 from a tile's three product accumulators acc[b ..
    b + 11] (hi hi, hi lo, lo hi; the lane's C-fragment pair of row r at b, b + 1), the low terms first; -inf past
    the row count or the row's causal limit."""
    z0 = z1 = NEG_INF
    if r < QR and ka <= lim:
        z0 = ((acc[b + 4] + acc[b + 8]) + acc[b]) * scl
    if r < QR and ka + 4 <= lim:
        z1 = ((acc[b + 5] + acc[b + 9]) + acc[b + 1]) * scl
    return z0, z1


@cuda.jit(device=True, inline=True)
def softmax_quad9(z0, z1, m, l):
    """v10: one row's online-softmax step over the 8 keys its quad of lanes holds (z0, z1: this lane's two):
    -> (p0, p1, alpha, m', l')."""
    mx = max(z0, z1)
    mx = max(mx, shfl_xor(mx, 1))
    mx = max(mx, shfl_xor(mx, 2))
    nm = max(m, mx)
    p0 = math.exp(z0 - nm) if z0 != NEG_INF else float32(0.0)
    p1 = math.exp(z1 - nm) if z1 != NEG_INF else float32(0.0)
    s = p0 + p1
    s += shfl_xor(s, 1)
    s += shfl_xor(s, 2)
    al = math.exp(m - nm) if m != NEG_INF else float32(0.0)
    return p0, p1, al, nm, l * al + s


@cuda.jit(device=True, inline=True)
def qk_tile10(sm, acc, p, qa, qb, QS, kh0, kh1, kh2, kh3, kl0, kl1, kl2, kl3):
    """v10: acc[p .. p + 11] (hi hi, hi lo, lo hi) += one row tile's 16-dim chunk of Q K^T: the tile's rows qa / qb
    (staged hi parts, lo parts at QS on) times the lane's split key fragment, two MMA k-steps (as v9)."""
    x0, x1, x2, x3 = ld_sh4(sm, qa)
    y0, y1, y2, y3 = ld_sh4(sm, qb)
    u0, u1, u2, u3 = ld_sh4(sm, QS + qa)
    v0, v1, v2, v3 = ld_sh4(sm, QS + qb)
    for e in range(2):
        if e == 0:
            ah0, ah1, ah2, ah3, al0, al1, al2, al3 = x0, y0, x1, y1, u0, v0, u1, v1
            bh0, bh1, bl0, bl1 = kh0, kh1, kl0, kl1
        else:
            ah0, ah1, ah2, ah3, al0, al1, al2, al3 = x2, y2, x3, y3, u2, v2, u3, v3
            bh0, bh1, bl0, bl1 = kh2, kh3, kl2, kl3
        d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bh0, bh1, acc[p], acc[p + 1], acc[p + 2], acc[p + 3])
        acc[p], acc[p + 1], acc[p + 2], acc[p + 3] = d0, d1, d2, d3
        d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bl0, bl1, acc[p + 4], acc[p + 5], acc[p + 6], acc[p + 7])
        acc[p + 4], acc[p + 5], acc[p + 6], acc[p + 7] = d0, d1, d2, d3
        d0, d1, d2, d3 = mma_tf32(al0, al1, al2, al3, bh0, bh1, acc[p + 8], acc[p + 9], acc[p + 10], acc[p + 11])
        acc[p + 8], acc[p + 9], acc[p + 10], acc[p + 11] = d0, d1, d2, d3


@cuda.jit(device=True, inline=True)
def pv_tile10(o, j, ah0, ah1, ah2, ah3, al0, al1, al2, al3, bh0, bh1, bl0, bl1, fa, fb):
    """v10: o[j .. j + 3] = alpha o + one row tile's P V n-tile over three tf32 MMAs (P split: ah / al, V: bh / bl;
    fa / fb: the alphas of the tile's rows gq / gq + 8), the low-part products first (as mma3_tf32)."""
    d0, d1, d2, d3 = mma_tf32(al0, al1, al2, al3, bh0, bh1, o[j] * fa, o[j + 1] * fa, o[j + 2] * fb, o[j + 3] * fb)
    d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bl0, bl1, d0, d1, d2, d3)
    d0, d1, d2, d3 = mma_tf32(ah0, ah1, ah2, ah3, bh0, bh1, d0, d1, d2, d3)
    o[j] = d0
    o[j + 1] = d1
    o[j + 2] = d2
    o[j + 3] = d3


@cuda.jit(device=True, inline=True)
def st_rows10(po, pml, o, ob, r0, QR, rep, g, s, nh, dv, d0, tq, wml, NJ, ma, la, mb, lb):
    """v10: one row tile's share partial (rows r0 and r0 + 8 of the group, accumulators o[ob ..], value dims from
    d0 on) in the v1-v9 layout; (ma, la), (mb, lb): the rows' softmax max and sum, written where wml (one of a
    share's DSPLIT warps) and tq == 0."""
    for hr in range(2):
        r = r0 + 8 * hr
        if r < QR:
            i = r // rep
            h = g * rep + r - i * rep
            pbase = ((s * nh + h) * 16 + i) * dv + d0 + 8 * tq
            for J in range(NJ):
                for e in range(4):
                    j = ob + 4 * (4 * J + e) + 2 * hr
                    po[pbase + 32 * J + e] = o[j]
                    po[pbase + 32 * J + 4 + e] = o[j + 1]
            if wml and tq == 0:
                b = ((s * nh + h) * 16 + i) * 2
                pml[b] = ma if hr == 0 else mb
                pml[b + 1] = la if hr == 0 else lb


# reference: reference.attention (partials per share of 8-key steps, merged by attn_combine_v4)
@factory
def make_attention_v10(DK: int, DV: int, NW: int, MAXREG: int = 0, VPRE: int = 1, DSPLIT: int = 1):
    """attn_partial v10: v9 with two m16 row tiles, <= 32 query rows a KV group (a 5-8-token verify at 4 heads a
    group), where v4 (CUDA cores) ran.

    A lane's key fragment of a step (and its tf32 split) feeds the S MMAs of both tiles, and its value fragment the
    P V MMAs of both: the cache bytes are read once for all 32 rows, as in v9 for 16. Rows gq + 8 hr + 16 tl (tile
    tl, half hr): 4 rows a lane, each with its online softmax over its quad (softmax_quad9). One accumulator set per
    tile (v9 kept two per tile for shorter MMA chains; the two tiles are the independent chains here). O: DV / 2 x 2
    accumulators a lane (128 at DV = 128), so a step's keys, values and scores must fit beside them in 255 registers:
    DV <= 128 only. Same shares, partial layout (<= 16 query tokens a head) and merge (attn_combine_v4, C =
    ATT9_KS) as v9; needs rep x n <= 32, n <= 16, DK % 32 == 0, DV % 32 == 0, DV <= 128, 16-byte rows, full warps.
    v9 stays a separate kernel (not a tile-count parameter of it): its 1-tile code is the measured one and keeps
    its two accumulator sets. VPRE = 1: the next step's values are requested once P V is done (as v9: live through
    the scores); VPRE = 0: a step's values are requested once its scores are done (32 fewer live registers at DV =
    128, their latency hidden by the softmax only). DSPLIT = 2: a share's DV split over 2 warps (warps 2w, 2w + 1
    of a block: the same keys and scores, half the value dims each; NW / DSPLIT shares a block, split = that x
    blocks per group): half the O accumulators a lane, the S MMAs twice.
    """
    NC = DK // 16
    DW = DV // DSPLIT                                        # a warp's value dims
    NJ = DW // 32
    SW = NW // DSPLIT                                        # shares a block
    QP = attn_v9_qp(DK)
    QS = 32 * QP                                             # the low parts after the high ones
    KB, VB, NO = 4 * NC, 8 * NJ, 32 * NJ                     # o: [tile][16 NJ]
    OT = 16 * NJ
    jit = cuda.jit(max_registers=MAXREG) if (MAXREG and not SIM) else cuda.jit

    @jit
    def attn_partial_v10(q, ldq, qoff, kc, ldk, vc, ldv, po, pml, meta, n, nh, rep, dk, dv, scale, split):
        sm = cuda.shared.array(0, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid % 32
        w = tid // (32 * DSPLIT)                             # the warp's share in the block
        dh = tid // 32 - w * DSPLIT                          # its part of the value dims
        gq = lane // 4
        tq = lane - 4 * gq
        kq = (gq >> 1) + 4 * (gq & 1)                        # the key of S column gq (as v9)
        start = meta[M_START]
        T = start + n
        nstep = (T + ATT9_KS - 1) // ATT9_KS
        S = min(split, nstep)
        QR = rep * n
        d4 = DK // 4
        nkv = nh // rep
        bpg = split // SW
        scl = float32(scale)
        lim0 = start + gq // rep                             # rows gq, gq + 8, gq + 16, gq + 24: causal limits
        lim1 = start + (gq + 8) // rep
        lim2 = start + (gq + 16) // rep
        lim3 = start + (gq + 24) // rep
        kb = cuda.local.array(KB, float32)
        vb = cuda.local.array(VB, float32)
        o = cuda.local.array(NO, float32)
        acc = cuda.local.array(24, float32)                  # S: [tile][hi hi, hi lo, lo hi][4]
        qt = cuda.local.array(16, float32)
        for item in range(cuda.blockIdx.x, nkv * bpg, cuda.gridDim.x):
            g = item // bpg
            bs = item - g * bpg
            if bs >= S:
                continue
            s = w * bpg + bs
            sb0 = (s * nstep) // S if s < S else 0
            sb1 = ((s + 1) * nstep) // S if s < S else 0
            kbase = g * dk + 4 * tq
            vbase = g * dv + dh * DW + 4 * gq
            if sb0 < sb1:
                ld_key_step9(kc, sb0 * ATT9_KS + kq, T, ldk, kbase, kb, NC)
                if VPRE:
                    ld_value_step9(vc, sb0 * ATT9_KS + tq, T, ldv, vbase, vb, NJ)
            for base in range(0, 32 * d4, 4 * nt):           # the group's 32 query rows, tf32 hi / lo (as v9)
                ld_group_q16(q, ldq, qoff, g, rep, dk, QR, base, tid, nt, qt)
                for u in range(4):
                    idx = base + tid + u * nt
                    if idx < 32 * d4:
                        r = idx // d4
                        b = r * QP + (idx - r * d4) * 4
                        h0, e0 = tf32_split(qt[4 * u])
                        h1, e1 = tf32_split(qt[4 * u + 1])
                        h2, e2 = tf32_split(qt[4 * u + 2])
                        h3, e3 = tf32_split(qt[4 * u + 3])
                        st_sh4(sm, b, h0, h1, h2, h3)
                        st_sh4(sm, QS + b, e0, e1, e2, e3)
            m0 = m1 = m2 = m3 = NEG_INF
            l0 = l1 = l2 = l3 = float32(0.0)
            for j in range(NO):
                o[j] = float32(0.0)
            cuda.syncthreads()
            for sb in range(sb0, sb1):                       # warp-uniform
                t0 = sb * ATT9_KS
                for j in range(24):
                    acc[j] = float32(0.0)
                for c in range(NC):                          # S = Q K^T for both tiles, one key fragment
                    kh0, kl0 = tf32_split(kb[4 * c])
                    kh1, kl1 = tf32_split(kb[4 * c + 1])
                    kh2, kl2 = tf32_split(kb[4 * c + 2])
                    kh3, kl3 = tf32_split(kb[4 * c + 3])
                    qa = gq * QP + 16 * c + 4 * tq           # tile 0: rows gq, gq + 8; tile 1: + 16
                    qk_tile10(sm, acc, 0, qa, qa + 8 * QP, QS, kh0, kh1, kh2, kh3, kl0, kl1, kl2, kl3)
                    qk_tile10(sm, acc, 12, qa + 16 * QP, qa + 24 * QP, QS, kh0, kh1, kh2, kh3, kl0, kl1, kl2, kl3)
                if sb + 1 < sb1:                             # kb is free: the next step's keys
                    ld_key_step9(kc, t0 + ATT9_KS + kq, T, ldk, kbase, kb, NC)
                if not VPRE:
                    ld_value_step9(vc, t0 + tq, T, ldv, vbase, vb, NJ)
                ka = t0 + tq
                z0, z1 = score_pair9(acc, 0, gq, QR, ka, lim0, scl)
                z2, z3 = score_pair9(acc, 2, gq + 8, QR, ka, lim1, scl)
                z4, z5 = score_pair9(acc, 12, gq + 16, QR, ka, lim2, scl)
                z6, z7 = score_pair9(acc, 14, gq + 24, QR, ka, lim3, scl)
                p0, p1, a0, m0, l0 = softmax_quad9(z0, z1, m0, l0)
                p2, p3, a1, m1, l1 = softmax_quad9(z2, z3, m1, l1)
                p4, p5, a2, m2, l2 = softmax_quad9(z4, z5, m2, l2)
                p6, p7, a3, m3, l3 = softmax_quad9(z6, z7, m3, l3)
                # P's A fragments, split once: tile 0 (p0, p2, p1, p3), tile 1 (p4, p6, p5, p7) as in v9
                ph0, pl0 = tf32_split(p0)
                ph1, pl1 = tf32_split(p1)
                ph2, pl2 = tf32_split(p2)
                ph3, pl3 = tf32_split(p3)
                ph4, pl4 = tf32_split(p4)
                ph5, pl5 = tf32_split(p5)
                ph6, pl6 = tf32_split(p6)
                ph7, pl7 = tf32_split(p7)
                for J in range(NJ):                          # O = alpha O + P V, one value fragment for both tiles
                    for e in range(4):
                        bh0, bl0 = tf32_split(vb[4 * J + e])
                        bh1, bl1 = tf32_split(vb[4 * (NJ + J) + e])
                        j = 4 * (4 * J + e)
                        pv_tile10(o, j, ph0, ph2, ph1, ph3, pl0, pl2, pl1, pl3, bh0, bh1, bl0, bl1, a0, a1)
                        pv_tile10(o, OT + j, ph4, ph6, ph5, ph7, pl4, pl6, pl5, pl7, bh0, bh1, bl0, bl1, a2, a3)
                if VPRE and sb + 1 < sb1:                    # vb is free: the next step's values
                    ld_value_step9(vc, t0 + ATT9_KS + tq, T, ldv, vbase, vb, NJ)
            if sb0 < sb1:                                    # the share's partial, in the v1-v9 layout
                st_rows10(po, pml, o, 0, gq, QR, rep, g, s, nh, dv, dh * DW, tq, dh == 0, NJ, m0, l0, m1, l1)
                st_rows10(po, pml, o, OT, gq + 16, QR, rep, g, s, nh, dv, dh * DW, tq, dh == 0, NJ, m2, l2, m3, l3)
            cuda.syncthreads()                               # the query rows are restaged for the next item

    attn_partial_v10.DK, attn_partial_v10.DV, attn_partial_v10.NW, attn_partial_v10.MAXREG = DK, DV, NW, MAXREG
    attn_partial_v10.VPRE = VPRE
    return attn_partial_v10


COMBINE4_SL = 8        # share lanes of attn_combine_v4 at most: blocks of 32 x SL threads (16: 163 registers x 512
#                        threads do not fit an SM: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)
COMBINE4_U = 17        # shares a lane has in flight: SL x U = 136 >= the backend's <= 132 shares on an H100: one round
COMBINE4_RED = COMBINE4_SL * 128
COMBINE4_RML = 2 * COMBINE4_SL
COMBINE4_XB = 4 * COMBINE4_U


# reference: reference.attention: the softmax merge of v9's shares
@cuda.jit
def attn_combine_v4(po, pml, out, ldo, ooff, meta, n, nh, dv, C, split):
    """attn_combine_v3 in one round trip: a lane requests the (m, l) and its 4 output dims of all its shares at once
    (U of them, every SL-th share) and merges them with an online softmax of its own; the SL lanes of a dim are then
    merged once through shared memory. v3 walked the shares three times (their maximum, the denominator, the
    weighted sum: ~5 dependent global round trips and 6 barriers, 5-7 us per MiMo-7B layer for 64-132 shares on
    the H100, as much as the v9 partial at ctx 512). Blocks of 32 x SL threads (SL <= COMBINE4_SL, 1 in the
    simulator); dv % 4 == 0. C, split: as attn_combine_v2."""
    red = cuda.shared.array(COMBINE4_RED, float32)          # [SL, 128 output dims] a share lane's weighted sums
    rml = cuda.shared.array(COMBINE4_RML, float32)          # [SL] its (m, l)
    mb = cuda.local.array(COMBINE4_U, float32)
    lb = cuda.local.array(COMBINE4_U, float32)
    xb = cuda.local.array(COMBINE4_XB, float32)
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
        for e0 in range(0, dv4, 32):                         # 128 output dims at a time
            e4 = e0 + lane
            mt = NEG_INF
            lt = a0 = a1 = a2 = a3 = float32(0.0)
            for s0 in range(sl, S, SL * COMBINE4_U):
                for u in range(COMBINE4_U):                  # the loads first: all in flight
                    ss = s0 + u * SL
                    m = NEG_INF
                    l = x0 = x1 = x2 = x3 = float32(0.0)
                    if ss < S:
                        b = (ss * nh + h) * 16 + i
                        m = pml[2 * b]
                        l = pml[2 * b + 1]
                        if e4 < dv4:
                            x0, x1, x2, x3 = ld_f32x4(po, b * dv + e4 * 4)
                    mb[u] = m
                    lb[u] = l
                    xb[4 * u] = x0
                    xb[4 * u + 1] = x1
                    xb[4 * u + 2] = x2
                    xb[4 * u + 3] = x3
                mx = mt
                for u in range(COMBINE4_U):
                    mx = max(mx, mb[u])
                f = math.exp(mt - mx) if mt != NEG_INF else float32(0.0)
                lt *= f
                a0 *= f
                a1 *= f
                a2 *= f
                a3 *= f
                for u in range(COMBINE4_U):
                    wgt = math.exp(mb[u] - mx) if mb[u] != NEG_INF else float32(0.0)
                    lt += lb[u] * wgt
                    a0 += wgt * xb[4 * u]
                    a1 += wgt * xb[4 * u + 1]
                    a2 += wgt * xb[4 * u + 2]
                    a3 += wgt * xb[4 * u + 3]
                mt = mx
            b = (sl * 32 + lane) * 4                         # = sl * 128 + the dim within the 128
            red[b] = a0
            red[b + 1] = a1
            red[b + 2] = a2
            red[b + 3] = a3
            if lane == 0:
                rml[2 * sl] = mt
                rml[2 * sl + 1] = lt
            cuda.syncthreads()
            for e in range(tid, 128, nt):
                if e0 * 4 + e < dv:
                    M = NEG_INF
                    for k in range(SL):
                        M = max(M, rml[2 * k])
                    o = float32(0.0)
                    den = float32(0.0)
                    for k in range(SL):
                        wgt = math.exp(rml[2 * k] - M) if rml[2 * k] != NEG_INF else float32(0.0)
                        o += red[k * 128 + e] * wgt
                        den += rml[2 * k + 1] * wgt
                    out[i * ldo + ooff + h * dv + e0 * 4 + e] = o / den
            cuda.syncthreads()


# reference: reference.attention: the softmax merge of v1's chunks
@cuda.jit
def attn_combine(po, pml, out, ldo, ooff, meta, n, nh, dv, C):
    """items (i, h): n * nh; out[i, ooff + h*dv + e] = merged attention output of query i, head h."""
    T = meta[M_START] + n
    S = (T + C - 1) // C
    for item in range(cuda.blockIdx.x, n * nh, cuda.gridDim.x):
        i = item // nh
        h = item - i * nh
        M = NEG_INF
        for s in range(S):
            M = max(M, pml[((s * nh + h) * 16 + i) * 2])
        den = float32(0.0)
        for s in range(S):
            b = ((s * nh + h) * 16 + i) * 2
            if pml[b] != NEG_INF:
                den += pml[b + 1] * math.exp(pml[b] - M)
        for e in range(cuda.threadIdx.x, dv, cuda.blockDim.x):
            o = float32(0.0)
            for s in range(S):
                b = ((s * nh + h) * 16 + i) * 2
                if pml[b] != NEG_INF:
                    o += po[((s * nh + h) * 16 + i) * dv + e] * math.exp(pml[b] - M)
            out[i * ldo + ooff + h * dv + e] = o / den


# ----------------------------------------------------------------------------- MLA helpers
# reference: reference.mla_q_absorb
@factory
def make_mla_q_absorb(fmt: str, NQ: int):
    _, load1 = LOADERS[fmt]

    @cuda.jit
    def mla_q_absorb(q, w, ws, qf, n, nh, dn, dr, dv, r):
        """qf[i, h, :r] = q_nope[i, h] @ W_UK[h]  (W_UK[h] = kv_b rows h(dn+dv) .. +dn, [dn, r]);
        qf[i, h, r:] = q_pe[i, h].  q [n, nh, dn+dr], qf [n, nh, r+dr]; one thread per (h, c)."""
        dq = dn + dr
        acc = cuda.local.array(NQ, float32)
        for hc in range(cuda.grid(1), nh * r, cuda.gridsize(1)):
            h = hc // r
            c = hc - h * r
            for i in range(NQ):
                acc[i] = float32(0.0)
            for d in range(dn):
                wv = load1(w, ws, h * (dn + dv) + d, c, r)
                for i in range(NQ):
                    if i < n:
                        acc[i] += q[(i * nh + h) * dq + d] * wv
            for i in range(NQ):
                if i < n:
                    qf[(i * nh + h) * (r + dr) + c] = acc[i]
        for idx in range(cuda.grid(1), n * nh * dr, cuda.gridsize(1)):
            ih = idx // dr
            j = idx - ih * dr
            qf[ih * (r + dr) + r + j] = q[ih * dq + dn + j]

    return mla_q_absorb


# reference: reference.mla_o_up
@factory
def make_mla_o_up(fmt: str, NQ: int):
    _, load1 = LOADERS[fmt]

    @cuda.jit
    def mla_o_up(ol, w, ws, o, n, nh, dn, dv, r):
        """o[i, h*dv + v] = o_lat[i, h] . W_UV[h, v]  (kv_b row h(dn+dv) + dn + v); one thread per (h, v)."""
        acc = cuda.local.array(NQ, float32)
        for hv in range(cuda.grid(1), nh * dv, cuda.gridsize(1)):
            h = hv // dv
            v = hv - h * dv
            row = h * (dn + dv) + dn + v
            for i in range(NQ):
                acc[i] = float32(0.0)
            for c in range(r):
                wv = load1(w, ws, row, c, r)
                for i in range(NQ):
                    if i < n:
                        acc[i] += ol[(i * nh + h) * r + c] * wv
            for i in range(NQ):
                if i < n:
                    o[i * nh * dv + hv] = acc[i]

    return mla_o_up


# ----------------------------------------------------------------------------- MoE routing
# reference: reference.route
@cuda.jit
def moe_route(logits, E, corr, choice, n, k, G, topk_group, norm, scaling, idx, wts, cnt, lists, active, meta):
    """DeepSeek-V3 router for n tokens (one block; thread t routes tokens t, t + blockDim, ...), then
    the expert lists.

    scores = sigmoid(logits); choice = scores + corr; group-limited: keep the topk_group groups
    with the largest top-2 sums (ties -> lower group), others -inf; top-k of choice (ties ->
    lower expert); weights = scores of the picks, normalised if norm, times scaling.
    Then: cnt[e], lists[e, :cnt[e]] = slots t*k + s that chose e (in slot order), active[u] =
    experts in order of first use, meta[M_NACT] = number of active experts.
    """
    for t in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        cb = t * E
        for e in range(E):
            sc = float32(1.0) / (float32(1.0) + math.exp(-logits[cb + e]))
            choice[cb + e] = sc + corr[e]
        if G > 1:
            per = E // G
            # top-2 sum of each group, then keep the best topk_group groups
            gs = cuda.local.array(64, float32)
            for g in range(G):
                b1 = NEG_INF
                b2 = NEG_INF
                for e in range(g * per, g * per + per):
                    v = choice[cb + e]
                    if v > b1:
                        b2 = b1
                        b1 = v
                    elif v > b2:
                        b2 = v
                gs[g] = b1 + b2
            for rnd in range(topk_group):
                best = -1
                for g in range(G):
                    if gs[g] != float32(np.inf) and (best < 0 or gs[g] > gs[best]):
                        best = g
                gs[best] = float32(np.inf)              # mark kept
            for g in range(G):
                if gs[g] != float32(np.inf):
                    for e in range(g * per, g * per + per):
                        choice[cb + e] = NEG_INF
        tot = float32(0.0)
        for s in range(k):
            best = -1
            for e in range(E):
                v = choice[cb + e]
                if not math.isnan(v) and (best < 0 or v > choice[cb + best]):
                    best = e
            sc = float32(1.0) / (float32(1.0) + math.exp(-logits[cb + best]))
            idx[t * k + s] = best
            wts[t * k + s] = sc
            tot += sc
            choice[cb + best] = float32(np.nan)         # taken
        for s in range(k):
            w = wts[t * k + s]
            if norm:
                w = w / (tot + float32(1e-20))
            wts[t * k + s] = w * float32(scaling)
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        for e in range(E):
            cnt[e] = 0
        na = 0
        for sl in range(n * k):
            e = idx[sl]
            if cnt[e] == 0:
                active[na] = e
                na += 1
            lists[e * 16 + cnt[e]] = sl
            cnt[e] += 1
        meta[M_NACT] = na


# reference: reference.moe (the weighted sum of the experts' rows)
@cuda.jit
def moe_combine(x, ldx, obuf, H, k, n):
    """x[t, :] += sum_s obuf[t*k + s, :] (routing weights already applied); items n."""
    for t in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        for j in range(cuda.threadIdx.x, H, cuda.blockDim.x):
            a = float32(0.0)
            for s in range(k):
                a += obuf[(t * k + s) * H + j]
            x[t * ldx + j] += a


# ----------------------------------------------------------------------------- verification
# reference: reference.argmax
@cuda.jit
def argmax_rows(x, ld, V, out):
    """out[i] = argmax_j x[i, j] (first index on ties, like np.argmax); grid n, <= 1024 threads."""
    bv = cuda.shared.array(1024, float32)
    bi = cuda.shared.array(1024, int32)
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    best = NEG_INF
    bidx = int32(V)
    for j in range(tid, V, cuda.blockDim.x):
        v = x[i * ld + j]
        if v > best:
            best = v
            bidx = j
    bv[tid] = best
    bi[tid] = bidx
    cuda.syncthreads()
    if tid == 0:
        for u in range(1, cuda.blockDim.x):
            if bv[u] > best or (bv[u] == best and bi[u] < bidx):
                best = bv[u]
                bidx = bi[u]
        out[i] = bidx if bidx < V else 0


ARGMAX_SLICES = 4 if SIM else 64  # blocks per row of argmax_slices (MiMo-7B: 2370 logits each); the simulator's
                                  # 32-lane blocks take ~0.2 s each, so its tests split a row into 4
ARGMAX_U = 4           # loads a thread has in flight


@cuda.jit(device=True, inline=True)
def better(v, j, bv, bj):
    """(v, j) beats (bv, bj) in an argmax that keeps the first index on ties, like np.argmax."""
    return v > bv or (v == bv and j < bj)


# reference: reference.argmax (stage 1 of 2)
@cuda.jit
def argmax_slices(x, ld, V, pv, pi, n):
    """Stage 1 of the device argmax: block (i, c) of n x ARGMAX_SLICES -> (max, first index) of the c-th slice of
    row i into pv / pi[i * ARGMAX_SLICES + c]. Blocks of a multiple of 32 threads (also in the simulator).
    argmax_rows gave a 151680-logit row to one block: ~600 dependent loads per thread and a serial 256-way
    final scan; this spreads the row over 64 blocks with ARGMAX_U loads in flight per thread."""
    sv = cuda.shared.array(32, float32)
    si = cuda.shared.array(32, int32)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    lane = tid % 32
    w = tid // 32
    CH = (V + ARGMAX_SLICES - 1) // ARGMAX_SLICES
    for item in range(cuda.blockIdx.x, n * ARGMAX_SLICES, cuda.gridDim.x):
        i = item // ARGMAX_SLICES
        j0 = (item - i * ARGMAX_SLICES) * CH
        j1 = min(V, j0 + CH)
        bv = NEG_INF
        bj = int32(V)
        for j in range(j0 + tid, j1, ARGMAX_U * nt):
            v0 = x[i * ld + j]                               # j < j1; the others guarded: all in flight
            v1 = x[i * ld + j + nt] if j + nt < j1 else NEG_INF
            v2 = x[i * ld + j + 2 * nt] if j + 2 * nt < j1 else NEG_INF
            v3 = x[i * ld + j + 3 * nt] if j + 3 * nt < j1 else NEG_INF
            if v0 > bv:                                      # indices rise: strict > keeps the first
                bv = v0
                bj = int32(j)
            if v1 > bv:
                bv = v1
                bj = int32(j + nt)
            if v2 > bv:
                bv = v2
                bj = int32(j + 2 * nt)
            if v3 > bv:
                bv = v3
                bj = int32(j + 3 * nt)
        bv, bj = warp_argmax(bv, bj)
        if lane == 0:
            sv[w] = bv
            si[w] = bj
        cuda.syncthreads()
        if w == 0:
            bv = sv[lane] if lane < nt // 32 else NEG_INF
            bj = si[lane] if lane < nt // 32 else int32(V)
            bv, bj = warp_argmax(bv, bj)
            if lane == 0:
                pv[item] = bv
                pi[item] = bj
        cuda.syncthreads()


# reference: reference.argmax (stage 2 of 2)
@cuda.jit
def argmax_merge(pv, pi, V, out, n):
    """Stage 2: out[i] = the index of the best of row i's ARGMAX_SLICES slices (0 for a row of -inf / NaN, as
    argmax_rows); one warp per row."""
    lane = cuda.threadIdx.x % 32
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        bv = NEG_INF
        bj = int32(V)
        for c in range(lane, ARGMAX_SLICES, 32):
            if better(pv[i * ARGMAX_SLICES + c], pi[i * ARGMAX_SLICES + c], bv, bj):
                bv = pv[i * ARGMAX_SLICES + c]
                bj = pi[i * ARGMAX_SLICES + c]
        bv, bj = warp_argmax(bv, bj)
        if lane == 0:
            out[i] = bj if bj < V else 0


# reference: reference.softmax
@cuda.jit
def softmax_rows(x, ld, V, out, inv_temp):
    """out[i, :] = softmax(x[i, :] * inv_temp); grid n."""
    buf = cuda.shared.array(32, float32)
    i = cuda.blockIdx.x
    m = NEG_INF
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        m = max(m, x[i * ld + j] * inv_temp)
    m = block_max(m, buf)
    s = float32(0.0)
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        s += math.exp(x[i * ld + j] * inv_temp - m)
    s = block_sum(s, buf)
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        out[i * ld + j] = math.exp(x[i * ld + j] * inv_temp - m) / s


# ----------------------------------------------------------------------------- Gated DeltaNet (linear attention)
# The verify window of a hybrid model (Qwen3-Next, Qwen3.5/3.6): n <= 16 new tokens continue a recurrent state.
# The per-token state snapshots that speculative rollback restores stay on the device; which snapshot (and
# which conv window rows) the next forward continues from is read from meta[M_SLOT], so rolling back is
# setting one integer and the launches stay identical from step to step (CUDA graphs).
M_SLOT = 2


@cuda.jit(device=True, inline=True)
def _silu(x):
    return x / (float32(1.0) + math.exp(-x))


# reference: reference.causal_conv1d
@factory
def make_causal_conv1d(KW: int):
    """Depthwise causal conv (kernel KW) + SiLU over n new rows, continuing a rolling window (ops.causal_conv1d).

    win [KW-1+NW, C]: the conv inputs; the state to continue from is rows [s, s+KW-1), s = meta[M_SLOT].
    Writes win[0:KW-1] = that state and win[KW-1+t] = x[t], so that afterwards win[:KW-1+n] is
    ops.causal_conv1d's `window` and the state after the first t new rows is win[t : t+KW-1] (rollback:
    meta[M_SLOT] = t). out[t, c] = silu(sum_j w[c, j] win[t+j, c]). One thread per channel; each reads its
    state before writing, so the window may be read and written in place."""

    @cuda.jit
    def causal_conv1d(x, ldx, xoff, win, w, out, ldo, ooff, meta, C, n):
        buf = cuda.local.array(KW, float32)
        wr = cuda.local.array(KW, float32)
        s = meta[M_SLOT]
        for c in range(cuda.grid(1), C, cuda.gridsize(1)):
            for j in range(KW):
                wr[j] = w[c * KW + j]
            for j in range(KW - 1):
                buf[j] = win[(s + j) * C + c]
            for j in range(KW - 1):
                win[j * C + c] = buf[j]
            for t in range(n):
                xv = x[t * ldx + xoff + c]
                win[(KW - 1 + t) * C + c] = xv
                buf[KW - 1] = xv
                acc = float32(0.0)
                for j in range(KW):
                    acc += buf[j] * wr[j]
                out[t * ldo + ooff + c] = _silu(acc)
                for j in range(KW - 1):
                    buf[j] = buf[j + 1]

    return causal_conv1d


# reference: reference.l2norm
@cuda.jit
def l2norm_heads(x, ldx, xoff, segs, D, scale, eps, y, ldy, yoff, n):
    """y[seg] = x[seg] / sqrt(sum(x[seg]^2) + eps) * scale (ops.l2norm, then q's dk^-1/2); items n * segs."""
    buf = cuda.shared.array(32, float32)
    for b in range(cuda.blockIdx.x, n * segs, cuda.gridDim.x):
        i = b // segs
        s = b - i * segs
        xb = i * ldx + xoff + s * D
        yb = i * ldy + yoff + s * D
        acc = float32(0.0)
        for j in range(cuda.threadIdx.x, D, cuda.blockDim.x):
            v = x[xb + j]
            acc += v * v
        ss = block_sum(acc, buf)
        den = math.sqrt(ss + float32(eps))
        for j in range(cuda.threadIdx.x, D, cuda.blockDim.x):
            y[yb + j] = x[xb + j] / den * float32(scale)


# reference: reference.gdn_gates
@cuda.jit
def gdn_gates(ab, ld, aoff, boff, a_log, dt_bias, g, beta, nv, n):
    """g[i, h] = -exp(A_log[h]) * softplus(a[i, h] + dt_bias[h]) (log decay), beta[i, h] = sigmoid(b[i, h]);
    a, b at ab[i * ld + aoff + h], ab[i * ld + boff + h]; g, beta [n, nv]. One thread per (i, h)."""
    for ih in range(cuda.grid(1), n * nv, cuda.gridsize(1)):
        i = ih // nv
        h = ih - i * nv
        u = ab[i * ld + aoff + h] + dt_bias[h]
        sp = max(u, float32(0.0)) + math.log1p(math.exp(-abs(u)))       # softplus = logaddexp(0, u)
        g[ih] = -math.exp(a_log[h]) * sp
        beta[ih] = float32(1.0) / (float32(1.0) + math.exp(-ab[i * ld + boff + h]))


DR_RED = 512          # shared floats per reduction buffer of the delta-rule kernel: blockDim.x <= DR_RED
DR_RED2 = 2 * DR_RED  # both buffers (a literal for cuda.shared.array)


# reference: reference.gated_delta_rule
@factory
def make_gated_delta_rule(ROWS: int, RG: int):
    """The gated delta rule over an n-token window (ops.gated_delta_rule_recurrent), with per-token snapshots.

    Block = (value head h, tile of VT = blockDim / RG state columns). Thread (rg, vl) owns column
    col = tile * VT + vl of S_h [dk, dv] and its rows rg, rg + RG, ..., rg + RG (ROWS-1) (dk <= RG * ROWS),
    in registers. The state is read once (from s_in, snapshot slot meta[M_SLOT]); the tokens are processed
    in order inside the kernel; per token t:
        S <- exp(g_t) S;  S <- S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t
    and S is written to states[t+1] (states[0] = the state read). The two dot products over dk are summed
    over the RG threads of a column through shared memory. Each thread reads all its state before writing,
    so s_in may be `states` itself (the backend continues from a snapshot of the previous forward in place).

    q, k: value head h reads key head h // rep at q[i * ldq + qoff + (h // rep) * dk + row] (same for k);
    v[i * ldv + voff + h * dv + col]; g, beta [n, nv]; out[i * ldo + ooff + h * dv + col];
    s_in / states: [slots, nv, dk, dv] flat.
    """

    @cuda.jit
    def gated_delta_rule(q, ldq, qoff, k, ldk, koff, v, ldv, voff, g, beta, s_in, states, out, ldo, ooff, meta,
                         nv, rep, dk, dv, n):
        red = cuda.shared.array(DR_RED2, float32)
        S = cuda.local.array(ROWS, float32)
        kr = cuda.local.array(ROWS, float32)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        VT = nt // RG
        rg = tid // VT
        vl = tid - rg * VT
        tiles = (dv + VT - 1) // VT
        hsz = dk * dv
        sbase = meta[M_SLOT] * nv * hsz
        for item in range(cuda.blockIdx.x, nv * tiles, cuda.gridDim.x):
            h = item // tiles
            col = (item - h * tiles) * VT + vl
            live = col < dv
            kh = h // rep
            for r in range(ROWS):                            # read the state once
                row = rg + RG * r
                S[r] = s_in[sbase + h * hsz + row * dv + col] if (live and row < dk) else float32(0.0)
            for r in range(ROWS):                            # snapshot 0: the state continued from
                row = rg + RG * r
                if live and row < dk:
                    states[h * hsz + row * dv + col] = S[r]
            for t in range(n):
                dec = math.exp(g[t * nv + h])
                bt = beta[t * nv + h]
                kb = t * ldk + koff + kh * dk
                mem = float32(0.0)
                for r in range(ROWS):
                    row = rg + RG * r
                    kv = k[kb + row] if row < dk else float32(0.0)
                    kr[r] = kv
                    S[r] *= dec
                    mem += S[r] * kv
                if RG > 1:
                    red[tid] = mem
                    cuda.syncthreads()
                    mem = float32(0.0)
                    for j in range(RG):
                        mem += red[j * VT + vl]
                vv = v[t * ldv + voff + h * dv + col] if live else float32(0.0)
                delta = bt * (vv - mem)
                qb = t * ldq + qoff + kh * dk
                o = float32(0.0)
                sb = ((t + 1) * nv + h) * hsz
                for r in range(ROWS):
                    row = rg + RG * r
                    S[r] += kr[r] * delta
                    if row < dk:
                        o += S[r] * q[qb + row]
                        if live:
                            states[sb + row * dv + col] = S[r]
                if RG > 1:
                    red[DR_RED + tid] = o
                    cuda.syncthreads()
                    o = float32(0.0)
                    for j in range(RG):
                        o += red[DR_RED + j * VT + vl]
                if live and rg == 0:
                    out[t * ldo + ooff + h * dv + col] = o

    return gated_delta_rule


def delta_rule_shape(dk: int, threads: int, rg: int) -> tuple[int, int]:
    """(ROWS, RG) for a launch of `threads` threads per block: rg threads per state column (1 for a 1-thread
    block), ROWS = ceil(dk / rg) state rows per thread."""
    rg = max(1, min(rg, threads))
    if threads % rg or threads > DR_RED:
        raise ValueError(f"delta rule: {threads} threads per block is not a multiple of {rg} (or > {DR_RED})")
    return -(-dk // rg), rg


# reference: reference.gated_rms_norm
@cuda.jit
def gated_rmsnorm(x, ldx, xoff, z, ldz, zoff, segs, D, w, y, ldy, yoff, eps, n):
    """y[seg] = x[seg] / sqrt(mean(x[seg]^2) + eps) * w * silu(z[seg]) (ops.gated_rms_norm, plain weight w [D]);
    items n * segs; segment s of row i at x[i * ldx + xoff + s * D ...] (z, y likewise)."""
    buf = cuda.shared.array(32, float32)
    for b in range(cuda.blockIdx.x, n * segs, cuda.gridDim.x):
        i = b // segs
        s = b - i * segs
        xb = i * ldx + xoff + s * D
        zb = i * ldz + zoff + s * D
        yb = i * ldy + yoff + s * D
        acc = float32(0.0)
        for j in range(cuda.threadIdx.x, D, cuda.blockDim.x):
            v = x[xb + j]
            acc += v * v
        ss = block_sum(acc, buf)
        den = math.sqrt(ss / float32(D) + float32(eps))
        for j in range(cuda.threadIdx.x, D, cuda.blockDim.x):
            y[yb + j] = x[xb + j] / den * w[j] * _silu(z[zb + j])


# ----------------------------------------------------------------------------- Qwen gated attention and MoE
# reference: x * sigmoid(gate), Qwen gated attention (mtp_ref.ops.sigmoid)
@cuda.jit
def sigmoid_gate_mul(x, ldx, xoff, gate, ldg, goff, width, n):
    """x[i, xoff + j] *= sigmoid(gate[i, goff + j]) (Qwen gated attention: output * sigmoid(gate)); items n."""
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        for j in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            x[i * ldx + xoff + j] *= float32(1.0) / (float32(1.0) + math.exp(-gate[i * ldg + goff + j]))


# reference: reference.route_softmax
@cuda.jit
def moe_route_softmax(logits, E, p, n, k, norm, idx, wts, cnt, lists, active, meta):
    """Qwen router (Model.route "softmax") for n tokens (one block; thread t routes tokens t, t + blockDim, ...):
    p = softmax(logits) over all experts, top-k of p (ties -> lower expert), weights p of the picks,
    renormalised to sum 1 if norm. Then the expert lists, as moe_route. p: scratch [n, E]."""
    for t in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        cb = t * E
        m = NEG_INF
        for e in range(E):
            m = max(m, logits[cb + e])
        tot = float32(0.0)
        for e in range(E):
            v = math.exp(logits[cb + e] - m)
            p[cb + e] = v
            tot += v
        for e in range(E):
            p[cb + e] = p[cb + e] / tot
        ws = float32(0.0)
        for s in range(k):
            best = -1
            for e in range(E):
                if p[cb + e] >= float32(0.0) and (best < 0 or p[cb + e] > p[cb + best]):
                    best = e
            idx[t * k + s] = best
            wts[t * k + s] = p[cb + best]
            ws += p[cb + best]
            p[cb + best] = float32(-1.0)            # taken
        if norm:
            for s in range(k):
                wts[t * k + s] = wts[t * k + s] / ws
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        for e in range(E):
            cnt[e] = 0
        na = 0
        for sl in range(n * k):
            e = idx[sl]
            if cnt[e] == 0:
                active[na] = e
                na += 1
            lists[e * 16 + cnt[e]] = sl
            cnt[e] += 1
        meta[M_NACT] = na


# reference: reference.moe plus the sigmoid-gated shared expert (Qwen3-Next / 3.5-MoE)
@cuda.jit
def moe_combine_gated(x, ldx, obuf, H, k, n, sh, sg):
    """x[t, :] += sum_s obuf[t*k + s, :] + sigmoid(sg[t]) * sh[t, :] (Qwen's sigmoid-gated shared expert); items n."""
    for t in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        gt = float32(1.0) / (float32(1.0) + math.exp(-sg[t]))
        for j in range(cuda.threadIdx.x, H, cuda.blockDim.x):
            a = float32(0.0)
            for s in range(k):
                a += obuf[(t * k + s) * H + j]
            x[t * ldx + j] += a + gt * sh[t * H + j]
