"""Lab: rope_qk_cache v1, a block per token (production: kernels.rope_qk_cache_v2, a block per (token, head)).

Reference: kernels_cuda/reference.py `rope` on q and k, then the k / v rows written to the cache at
meta's positions (`cache_write`). v2 replaced v1 in CudaModel: a 1-token step has only one block of
work per layer in v1, 40 (MiMo-7B: 32 q + 8 k heads) in v2 (docs/history/ has the H100 numbers).

    python -m kernels_cuda.dev.rope_qk_cache    # validate v1 and v2 against the reference, time on a GPU
"""

from __future__ import annotations

import math

from numba import cuda, float32, float64

from ..kernels import M_POS, M_START, ROPE_MAX_HALF, STYLE_HALF


@cuda.jit
def rope_qk_cache(buf, ldb, qoff, nqh, koff, nkh, voff, hd, half, meta, inv_freq, att, style, kc, vc, ldc, n):
    """GQA after the fused q|k|v projection, one launch instead of four (rope q, rope k, cache k, cache v):
    rotate the nqh query heads at qoff and the nkh key heads at koff of row i in place (as `rope`, the
    cos/sin of each frequency computed once per row in float64), then write the row's keys and values
    (buf[i, voff : voff + nkh hd]) to kc / vc at row start + i (leading dimension ldc). Items: n rows.
    half <= ROPE_MAX_HALF."""
    cs = cuda.shared.array(ROPE_MAX_HALF, float32)
    sn = cuda.shared.array(ROPE_MAX_HALF, float32)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        pos = float64(meta[M_POS + i])
        for j in range(tid, half, nt):
            ang = pos * inv_freq[j]
            cs[j] = float32(math.cos(ang) * att)
            sn[j] = float32(math.sin(ang) * att)
        cuda.syncthreads()
        row = i * ldb
        for idx in range(tid, (nqh + nkh) * half, nt):
            h = idx // half
            j = idx - h * half
            base = row + (qoff + h * hd if h < nqh else koff + (h - nqh) * hd)
            if style == STYLE_HALF:
                a = base + j
                b = base + j + half
            else:
                a = base + 2 * j
                b = base + 2 * j + 1
            x1 = buf[a]
            x2 = buf[b]
            buf[a] = x1 * cs[j] - x2 * sn[j]
            buf[b] = x2 * cs[j] + x1 * sn[j]
        cuda.syncthreads()
        r = meta[M_START] + i
        for j in range(tid, nkh * hd, nt):
            kc[r * ldc + j] = buf[row + koff + j]
            vc[r * ldc + j] = buf[row + voff + j]
        cuda.syncthreads()




# ----------------------------------------------------------------------------- validate each version
def _main():
    import numpy as np

    from .. import kernels as K
    from ..intrinsics import SIM
    from ..reference import rope as rope_ref

    rng = np.random.default_rng(0)
    n, nqh, nkh, hd, start = 3, 32, 8, 128, 40
    half = hd // 2
    W = (nqh + 2 * nkh) * hd
    buf = rng.standard_normal((n, W)).astype(np.float32)
    pos = np.arange(start, start + n).astype(np.int32)
    inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))
    meta = np.zeros(K.META_LEN, np.int32)
    meta[K.M_START], meta[K.M_N] = start, n
    meta[K.M_POS: K.M_POS + n] = pos
    want = buf.copy()
    for off, heads in ((0, nqh), (nqh * hd, nkh)):
        seg = buf[:, off: off + heads * hd].reshape(n, heads, hd)
        want[:, off: off + heads * hd] = rope_ref(seg, pos, inv, 1.0, "half").reshape(n, heads * hd)
    for name, kern, grid, nt in (("v1", rope_qk_cache, n, 1 if SIM else 1024),
                                 ("v2", K.rope_qk_cache_v2, n * (nqh + nkh), 1 if SIM else 64)):
        b = cuda.to_device(buf.ravel())
        kc = cuda.to_device(np.zeros((start + n) * nkh * hd, np.float32))
        vc = cuda.to_device(np.zeros((start + n) * nkh * hd, np.float32))
        kern[grid, nt](b, W, 0, nqh, nqh * hd, nkh, (nqh + nkh) * hd, hd, half, cuda.to_device(meta),
                       cuda.to_device(inv), 1.0, STYLE_HALF, kc, vc, nkh * hd, n)
        got = b.copy_to_host().reshape(n, W)
        kk = kc.copy_to_host().reshape(start + n, nkh * hd)[start:]
        err = max(float(np.abs(got - want).max()), float(np.abs(kk - want[:, nqh * hd:(nqh + nkh) * hd]).max()))
        print(f"rope_qk_cache {name}: max abs err {err:.1e} {'ok' if err < 1e-4 else 'FAIL'}")


if __name__ == "__main__":
    _main()
