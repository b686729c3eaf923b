"""Every numba-CUDA kernel against its NumPy reference (kernels_cuda/reference.py), on fresh random
inputs, at several shapes including ragged tails.

CI runs this on the CPU under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set below before
numba is imported, unless the environment says otherwise). On a GPU machine run it for real with
    NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_kernels.py
which adds the large shapes of the 7B-class model.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

numba_cuda = pytest.importorskip("numba.cuda")
from numba import cuda  # noqa: E402

from kernels_cuda import gemm, kernels as K, reference as ref  # noqa: E402
from kernels_cuda.intrinsics import SIM  # noqa: E402

if not SIM and not cuda.is_available():
    pytest.skip("numba was imported without the CUDA simulator and no GPU is present",
                allow_module_level=True)
if SIM != bool(getattr(cuda, "simulator_enabled", SIM)):
    pytest.skip("numba.cuda was imported before NUMBA_ENABLE_CUDASIM was set", allow_module_level=True)

GPU = not SIM
NT_SIZES = (1, 32, 64) if SIM else (128, 256)


def rng_for(request):
    # fresh inputs per test, reproducible per test id
    return np.random.default_rng(abs(hash(request.node.nodeid)) % 2**32)


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a).ravel())


def host(d, shape):
    return d.copy_to_host().reshape(shape)


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def make_weight(rng, fmt, N, K):
    """(device-format array, scale or None, float32 value the kernel must use)."""
    w = (rng.standard_normal((N, K)) / math.sqrt(K)).astype(np.float32)
    if fmt == "bf16":
        bits = ref.bf16_bits(w)
        return bits, None, ref.bf16_value(bits)
    if fmt == "f32":
        return w, None, w
    q = rng.integers(0, 256, (N, K)).astype(np.uint8)
    q[(q & 0x7F) == 0x7F] = 0x3C                      # no NaN codes
    s = (2.0 ** rng.uniform(-8, -4, (math.ceil(N / 128), math.ceil(K / 128)))).astype(np.float32)
    return q, s, ref.fp8_block_value(q, s)


# ----------------------------------------------------------------------------- skinny GEMM
GEMM_CASES = [  # fmt, n, N, K, mode, lanes
    ("bf16", 1, 20, 264, "bias", 32),      # ragged: K % 256 = 8, N % 16 = 4
    ("bf16", 3, 18, 520, "resid", 32),
    ("bf16", 5, 24, 40, "swiglu", 32),     # K < one 256-column chunk: tail path only
    ("bf16", 2, 7, 36, "store", 32),       # K % 8 != 0: rows not 16-byte aligned, scalar path
    ("bf16", 16, 12, 72, "store", 1),
    ("bf16", 9, 40, 264, "swiglu_bias", 1),
    ("f32", 4, 10, 264, "store", 32),
    ("f32", 2, 6, 20, "resid", 1),
    ("fp8", 2, 140, 264, "store", 1),      # two 128-row and three 128-column scale blocks
    ("fp8", 3, 20, 136, "bias", 32),
    ("fp8", 1, 9, 12, "store", 1),         # scalar fp8 path
]
if GPU:
    GEMM_CASES += [("bf16", n, N, Kd, m, 32) for n in (1, 2, 3, 4, 8, 16)
                   for (N, Kd, m) in ((4096, 4096, "store"), (1000, 4104, "resid"), (2 * 1376, 4096, "swiglu"),
                                      (4096, 11008, "resid"), (1536, 4096, "bias"))]
    GEMM_CASES += [("fp8", n, 2048, 7168, "store", 32) for n in (1, 4, 16)]
    GEMM_CASES += [("f32", n, 1024, 2048, "resid", 32) for n in (1, 8)]


def run_gemm(rng, fmt, n, N, Kd, mode, lanes, R=4, warps=4, U=None, version=2):
    NM = gemm.nmax_for(n)
    w, ws, wv = make_weight(rng, fmt, N, Kd)
    x = rng.standard_normal((NM, Kd)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if "bias" in mode else None
    res = rng.standard_normal((NM, N)).astype(np.float32)
    kmode = {"store": gemm.MODE_STORE, "bias": gemm.MODE_STORE, "resid": gemm.MODE_RESID,
             "swiglu": gemm.MODE_SWIGLU, "swiglu_bias": gemm.MODE_SWIGLU}[mode]
    y = dev(res.copy() if kmode == gemm.MODE_RESID else np.full((NM, N), np.nan, np.float32))
    if version == 1:
        k = gemm.make_gemm_v1(fmt)
        k[(math.ceil(N / 64), n), 64](dev(x), dev(w), dev(ws) if ws is not None else y, y, n, Kd, N)
    else:
        gemm.launch_gemm(0, fmt, dev(x), Kd, dev(w), dev(ws) if ws is not None else None, y, N, n, Kd, N, kmode,
                         bias=dev(bias) if bias is not None else None, res=y if kmode == gemm.MODE_RESID else None,
                         R=R, WARPS=warps, U=U, LANES=lanes)
    out = host(y, (NM, N))[:n]
    want = ref.linear(x[:n], wv, bias if kmode != gemm.MODE_SWIGLU else None)
    if kmode == gemm.MODE_RESID:
        want = want + res[:n]
    if kmode == gemm.MODE_SWIGLU:
        if bias is not None:
            want = want + bias
        g, u = want[:, : N // 2], want[:, N // 2:]
        want, out = ref.ops.silu(g) * u, out[:, : N // 2]
    assert not np.isnan(out).any(), "output element not written"
    return rel_err(out, want)


@pytest.mark.parametrize("fmt,n,N,Kd,mode,lanes", GEMM_CASES)
def test_gemm_v2(request, fmt, n, N, Kd, mode, lanes):
    assert run_gemm(rng_for(request), fmt, n, N, Kd, mode, lanes) < 2e-5


@pytest.mark.parametrize("R,U", [(2, 1), (8, 2)] + ([(4, 1), (4, 2), (8, 1)] if GPU else []))
def test_gemm_v2_variants(request, R, U):
    rng = rng_for(request)
    shapes = [(3, 4096, 4096), (8, 1000, 4104), (1, 4096, 14336)] if GPU else [(3, 36, 520)]
    for n, N, Kd in shapes:
        assert run_gemm(rng, "bf16", n, N, Kd, "swiglu", 32 if GPU else 1, R=R, U=U) < 2e-5


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_gemm_v1(request, fmt):
    rng = rng_for(request)
    n, N, Kd = (4, 4096, 4096) if GPU else (3, 20, 40)
    assert run_gemm(rng, fmt, n, N, Kd, "store", 32, version=1) < 2e-5


# ----------------------------------------------------------------------------- row kernels
def meta_for(start, positions=(), ids=()):
    m = np.zeros(K.META_LEN, np.int32)
    m[K.M_START], m[K.M_N] = start, len(ids) or len(positions)
    m[K.M_POS: K.M_POS + len(positions)] = positions
    m[K.M_IDS: K.M_IDS + len(ids)] = ids
    return dev(m)


@pytest.mark.parametrize("nt", NT_SIZES)
def test_rmsnorm(request, nt):
    rng = rng_for(request)
    n, D = 3, (4096 if GPU else 72)
    x = rng.standard_normal((n, D)).astype(np.float32) * 3
    w = rng.standard_normal(D).astype(np.float32)
    y = dev(np.full((n, 2 * D), np.nan, np.float32))
    K.rmsnorm[n, nt](dev(x), D, 0, 1, D, dev(w), y, 2 * D, D, 1e-6, n)      # into the right half of [n, 2D]
    assert rel_err(host(y, (n, 2 * D))[:, D:], ref.rmsnorm(x, w, 1e-6)) < 1e-5
    # per-head segments in place (qk-norm): 5 heads of 24 at offset 8 of a row of 140
    h, d, W = 5, 24, 140
    buf = rng.standard_normal((n, W)).astype(np.float32)
    wn = rng.standard_normal(d).astype(np.float32)
    b = dev(buf)
    K.rmsnorm[max(1, n * h // 2), nt](b, W, 8, h, d, dev(wn), b, W, 8, 1e-5, n)  # fewer blocks than items
    want = buf.copy()
    want[:, 8: 8 + h * d] = ref.rmsnorm(buf[:, 8: 8 + h * d].reshape(n, h, d), wn, 1e-5).reshape(n, h * d)
    assert rel_err(host(b, (n, W)), want) < 1e-5


@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("nt", NT_SIZES[:2])
def test_rope(request, style, nt):
    rng = rng_for(request)
    n, heads, hd, rot = 3, 4, 32, 24                     # partial rotary: 24 of 32 dims
    W, off = heads * hd + 16, 16
    buf = rng.standard_normal((n, W)).astype(np.float32)
    pos = np.array([5, 6, 1000], np.int32)
    inv = 1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))
    b = dev(buf)
    st = K.STYLE_HALF if style == "half" else K.STYLE_INTERLEAVED
    K.rope[n * heads, nt](b, W, off, hd, rot // 2, meta_for(5, pos), dev(inv), 1.25, st, n, heads)
    want = buf.copy()
    want[:, off:] = ref.rope(buf[:, off:].reshape(n, heads, hd), pos, inv, 1.25, style).reshape(n, heads * hd)
    assert rel_err(host(b, (n, W)), want) < 1e-5


@pytest.mark.parametrize("fmt", ["bf16", "f32"])
def test_embed_and_cache_write(request, fmt):
    rng = rng_for(request)
    V, H, n = 50, 40, 3
    w, _, wv = make_weight(rng, fmt, V, H)
    ids = np.array([7, 0, 49], np.int32)
    out = dev(np.full((n, H), np.nan, np.float32))
    meta = meta_for(4, np.arange(4, 7), ids)
    K.make_embed(fmt)[n, NT_SIZES[-1]](dev(w), dev(w), meta, out, H, H, n)
    assert np.array_equal(host(out, (n, H)), wv[ids])
    cache = np.full((10, 12), -7.0, np.float32)
    src = rng.standard_normal((n, 30)).astype(np.float32)
    c = dev(cache)
    K.cache_write[1, NT_SIZES[-1]](dev(src), 30, 5, 12, c, 12, 0, meta, n)
    want = cache.copy()
    want[4:7] = src[:, 5:17]
    assert np.array_equal(host(c, (10, 12)), want)


# ----------------------------------------------------------------------------- attention
ATTN_CASES = [  # n, start, nh, g, dk, dv, C     (MLA: g = 1, V = the first dv columns of the K row)
    (1, 9, 4, 2, 16, 16, 8),
    (4, 40, 2, 1, 36, 20, 16),        # dk = 36: two 16-element steps + a 4-element tail; 44 keys
    (3, 14, 4, 2, 16, 16, 8),         # 17 keys over 3 chunks of 8, the last one ragged
    (5, 0, 2, 1, 12, 12, 32),         # prefill from an empty cache
    (2, 6, 4, 1, 20, 16, 4),          # MLA shape: dk = r + dr = 20, dv = r = 16, 2 query rows
    (3, 5, 2, 2, 6, 6, 8),            # dk % 4 != 0: scalar key loads
]
if GPU:
    ATTN_CASES += [(n, s, 32, 8, 128, 128, 256) for n in (1, 4, 8) for s in (511, 4000)]
    ATTN_CASES += [(2, 300, 16, 1, 576, 512, 64)]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("n,start,nh,g,dk,dv,C", ATTN_CASES)
def test_attention(request, n, start, nh, g, dk, dv, C, version):
    rng = rng_for(request)
    nt = NT_SIZES[-1] if (GPU or n == 3) else 1           # the simulator: 2 warps in one case, else 1 thread
    T = start + n
    cap = T + 3
    mla = g == 1 and dv < dk
    kc = rng.standard_normal((cap, g * dk)).astype(np.float32)
    vc = kc if mla else rng.standard_normal((cap, g * dv)).astype(np.float32)
    ldv = dk if mla else g * dv
    q = rng.standard_normal((n, nh * dk)).astype(np.float32)
    scale = dk ** -0.5
    NQ = gemm.nmax_for(n)
    S = math.ceil(cap / C)
    po, pml = dev(np.zeros(S * nh * 16 * dv, np.float32)), dev(np.zeros(S * nh * 16 * 2, np.float32))
    out = dev(np.full((n, nh * dv + 4), np.nan, np.float32))
    meta = meta_for(start, np.arange(start, T))
    kd = dev(kc)
    vd = kd if mla else dev(vc)
    vec = 1 if dk % 4 == 0 else 0
    make = K.make_attention if version == "v1" else K.make_attention_v2
    make(NQ)[nh * S, nt, 0, (NQ * dk + NQ * C) * 4](
        dev(q), nh * dk, 0, kd, g * dk, vd, ldv, po, pml, meta, n, nh, nh // g, dk, dv, scale, C, S, vec)
    K.attn_combine[n * nh, nt](po, pml, out, nh * dv + 4, 4, meta, n, nh, dv, C)
    kk = kc[:T].reshape(T, g, dk)
    vv = (kc[:T, :dv] if mla else vc[:T]).reshape(T, g, dv)
    want = ref.attention(q.reshape(n, nh, dk), kk, vv, scale, start)
    assert rel_err(host(out, (n, nh * dv + 4))[:, 4:], want) < 1e-5


def test_mla_absorb_and_up(request):
    rng = rng_for(request)
    n, nh, dn, dr, dv, r = 3, 4, 8, 4, 6, 20
    for fmt in ("bf16", "fp8"):
        w, ws, wv = make_weight(rng, fmt, nh * (dn + dv), r)
        q = rng.standard_normal((n, nh, dn + dr)).astype(np.float32)
        qf = dev(np.full((n, nh, r + dr), np.nan, np.float32))
        wsd = dev(ws) if ws is not None else dev(w)
        K.make_mla_q_absorb(fmt, 4)[3, NT_SIZES[-1]](dev(q), dev(w), wsd, qf, n, nh, dn, dr, dv, r)
        assert rel_err(host(qf, (n, nh, r + dr)), ref.mla_q_absorb(q, wv, nh, dn, dr, dv)) < 1e-5
        ol = rng.standard_normal((n, nh, r)).astype(np.float32)
        o = dev(np.full((n, nh * dv), np.nan, np.float32))
        K.make_mla_o_up(fmt, 4)[2, NT_SIZES[-1]](dev(ol), dev(w), wsd, o, n, nh, dn, dv, r)
        assert rel_err(host(o, (n, nh * dv)), ref.mla_o_up(ol, wv, nh, dn, dv)) < 1e-5


# ----------------------------------------------------------------------------- MoE
@pytest.mark.parametrize("fmt,n,G,tg", [("bf16", 3, 4, 2), ("f32", 5, 1, 1)] + ([("bf16", 16, 8, 4)] if GPU else []))
def test_moe_route_and_experts(request, fmt, n, G, tg):
    rng = rng_for(request)
    E, k, H, I = 16, 3, 40 if SIM else 1024, 24 if SIM else 512
    logits = (rng.standard_normal((n, E)) * 2).astype(np.float32)
    corr = (0.01 + 0.09 * rng.random(E)).astype(np.float32)
    idx_d, wts_d = dev(np.zeros(16 * k, np.int32)), dev(np.zeros(16 * k, np.float32))
    cnt, lists = dev(np.zeros(E, np.int32)), dev(np.zeros(E * 16, np.int32))
    active, nact = dev(np.zeros(16 * k, np.int32)), dev(np.zeros(K.META_LEN, np.int32))
    K.moe_route[1, 1 if SIM else 32](dev(logits), E, dev(corr), dev(np.zeros(n * E, np.float32)), n, k, G, tg, 1, 2.5,
                                     idx_d, wts_d, cnt, lists, active, nact)
    idx, w = ref.route(logits, corr, k, G, tg, True, 2.5)
    assert np.array_equal(host(idx_d, (16, k))[:n], idx)
    assert rel_err(host(wts_d, (16, k))[:n], w) < 1e-5
    gu = [make_weight(rng, fmt, 2 * I, H) for _ in range(E)]
    dn = [make_weight(rng, fmt, H, I) for _ in range(E)]
    wgu, wdn = dev(np.stack([a for a, _, _ in gu])), dev(np.stack([a for a, _, _ in dn]))
    x = rng.standard_normal((16, H)).astype(np.float32)
    hb, ob = dev(np.zeros(16 * k * I, np.float32)), dev(np.full(16 * k * H, np.nan, np.float32))
    lanes, R, warps = (1, 8, 2) if SIM else (32, 4, 4)
    kg = gemm.get_moe_gemm(fmt, gemm.nmax_for(n), R, warps, lanes)
    kg[(gemm.gemm_v2_blocks(2 * I, gemm.MODE_SWIGLU, R, warps), n * k), lanes * warps](
        dev(x), H, k, wgu, wgu, hb, I, 2 * I, H, gemm.MODE_SWIGLU, cnt, lists, active, wts_d, nact)
    kg[(gemm.gemm_v2_blocks(H, gemm.MODE_SCALE, R, warps), n * k), lanes * warps](
        hb, I, 1, wdn, wdn, ob, H, H, I, gemm.MODE_SCALE, cnt, lists, active, wts_d, nact)
    xr = rng.standard_normal((n, H)).astype(np.float32)
    xd = dev(xr)
    K.moe_combine[n, NT_SIZES[-1]](xd, H, ob, H, k, n)
    want = xr + ref.moe(x[:n], idx, w, np.stack([v for _, _, v in gu]), np.stack([v for _, _, v in dn]))
    assert rel_err(host(xd, (n, H)), want) < 1e-5


# ----------------------------------------------------------------------------- verification
def test_argmax_softmax(request):
    rng = rng_for(request)
    n, V = 3, (151680 if GPU else 300)
    x = rng.standard_normal((n, V)).astype(np.float32)
    x[1, [17, 200, 250]] = 9.0                              # ties: the first index wins, as np.argmax
    x[2, :] = 0.5
    out = dev(np.full(n, -1, np.int32))
    K.argmax_rows[n, 256 if GPU else 32](dev(x), V, V, out)
    assert np.array_equal(out.copy_to_host(), ref.argmax(x))
    p = dev(np.zeros((n, V), np.float32))
    K.softmax_rows[n, NT_SIZES[-1]](dev(x), V, V, p, np.float32(1 / 0.7))
    assert rel_err(host(p, (n, V)), ref.softmax(x, 0.7)) < 1e-5
