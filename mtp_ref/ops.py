"""The maths, as small pure NumPy functions (float32). Shapes: n = tokens in this call,
T = tokens in the cache, H = hidden, V = vocab, h = heads, d = head dim.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(np.square(x), axis=-1, keepdims=True)  # [..., D] -> [..., 1]
    return x / np.sqrt(var + eps) * w                    # [..., D]


def linear_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x @ w.T  # [n, in] @ [in, out] -> [n, out]
    return y if b is None else y + b


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x @ w.T (+ b). Same numbers as linear_naive up to float32 summation order.

    For 2 or 3 rows it runs one matrix-vector product per row: OpenBLAS's sgemm for M = 2, 3 was
    2-3x slower than M separate sgemv calls on the project's CPU for weights of 256 x 256 and up (a
    4096 x 256 weight: 221 / 320 us for 2 / 3 rows vs 101 / 145 us; docs/benchmarks.md), and 2-4 rows
    is exactly a verify forward. Smaller weights keep the one call (per-call overhead wins there)."""
    if x.ndim == 2 and x.shape[0] in (2, 3) and w.size >= 65536:
        y = np.stack([w @ r for r in x])  # n x ([out, in] @ [in]) -> [n, out]
        return y if b is None else y + b
    return linear_naive(x, w, b)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def swiglu_mlp(x: np.ndarray, wg: np.ndarray, wu: np.ndarray, wd: np.ndarray, limit: float | None = None) -> np.ndarray:
    if limit is None:
        return linear(silu(linear(x, wg)) * linear(x, wu), wd)  # [n, H] -> [n, I] -> [n, H]
    return linear(swiglu_clamped(linear(x, wg), linear(x, wu), limit), wd)


def swiglu_clamped(gate: np.ndarray, up: np.ndarray, limit: float | None) -> np.ndarray:
    """silu(gate) capped at +limit times up clipped to [-limit, limit] (Step-3.5/3.7 `swiglu_limits`)."""
    if limit is None:
        return silu(gate) * up
    return np.minimum(silu(gate), limit) * np.clip(up, -limit, limit)


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray, attention_factor: float = 1.0):
    """cos/sin [n, r/2] for integer positions [n] (float64 angles, float32 tables)."""
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [n, r/2]
    return (np.cos(ang) * attention_factor).astype(np.float32), (np.sin(ang) * attention_factor).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """Rotate the first r = 2*cos.shape[-1] dims of each head of x [n, h, d]; the rest pass through.

    "half":        pairs (x[i], x[i + r/2])  (rotate_half; Llama, Qwen, GLM)
    "interleaved": pairs (x[2i], x[2i + 1])  (GPT-J / DeepSeek complex form)
    """
    r = 2 * cos.shape[-1]
    c, s = cos[:, None, :], sin[:, None, :]  # [n, 1, r/2]
    out = x.copy()
    if style == "half":
        x1, x2 = x[..., : r // 2], x[..., r // 2 : r]
        out[..., : r // 2] = x1 * c - x2 * s
        out[..., r // 2 : r] = x2 * c + x1 * s
    elif style == "interleaved":
        x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2] = x1 * c - x2 * s
        out[..., 1:r:2] = x2 * c + x1 * s
    else:
        raise ValueError(style)
    return out


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, start: int) -> np.ndarray:
    """Grouped attention of n new queries over T cached keys (the last n of which are the new ones).

    q [n, h, d], k [T, g, d], v [T, g, dv], h = g * rep; query i sits at position start + i and
    sees keys 0 .. start + i (the causal mask inside the n-token window).
    """
    n, h, d = q.shape
    T, g, dv = v.shape
    rep = h // g
    qg = q.reshape(n, g, rep, d).transpose(1, 2, 0, 3).reshape(g, rep * n, d)  # [g, rep*n, d]
    s = qg @ k.transpose(1, 2, 0) * scale                                       # [g, rep*n, T]
    qpos = np.tile(start + np.arange(n), rep)                                   # [rep*n]
    s = np.where(np.arange(T)[None, None, :] <= qpos[None, :, None], s, -np.inf)
    p = softmax(s, axis=-1)                                                     # [g, rep*n, T]
    o = p @ v.transpose(1, 0, 2)                                                # [g, rep*n, dv]
    return o.reshape(g, rep, n, dv).transpose(2, 0, 1, 3).reshape(n, h * dv)    # [n, h*dv]


# ---------------------------------------------------------------- Gated DeltaNet (Qwen3-Next, Qwen3.5 "linear_attn")
# Shapes: C = conv channels (all q, all k, all v), K = conv kernel, hv = value heads,
# dk / dv = key / value head dims. The state S of one head is a [dk, dv] matrix.

def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x).astype(x.dtype)


def l2norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """x / sqrt(sum x^2 + eps) over the last dim (the FLA / transformers form)."""
    return x / np.sqrt(np.sum(np.square(x), axis=-1, keepdims=True) + eps)


def gated_rms_norm(x: np.ndarray, z: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm of x over its last dim with a plain weight w (NOT zero-centred), then times silu(z)."""
    return rms_norm(x, w, eps) * silu(z)


def causal_conv1d(x: np.ndarray, prev: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise causal conv + silu over n new rows, continuing from the last K-1 inputs.

    x [n, C], prev [K-1, C] (zeros at the start of a sequence), w [C, K].
    out[t] = silu( sum_j w[:, j] * window[t + j] ),  window = concat(prev, x)  [K-1+n, C].
    Returns (out [n, C], window); the conv state after the first t new rows is window[t : t+K-1].
    """
    n, K = x.shape[0], w.shape[1]
    window = np.concatenate([prev, x])                                  # [K-1+n, C]
    out = np.zeros_like(x)
    for j in range(K):
        out += window[j : j + n] * w[:, j]
    return silu(out), window


def unpack_qkvz_ba(qkvz: np.ndarray, ba: np.ndarray, nk: int, nv: int, dk: int, dv: int):
    """Qwen3-Next's fused projections (grouped per key head) into Qwen3.5's separate ones.

    qkvz [n, nk*(2dk + 2r*dv)], per key head [q (dk) | k (dk) | v (r*dv) | z (r*dv)], r = nv/nk;
    ba [n, nk*2r], per key head [b (r) | a (r)].
    Returns qkv [n, nk*dk + nk*dk + nv*dv] (all q, all k, all v: the conv's channel order),
    z [n, nv*dv], b [n, nv], a [n, nv].
    """
    n, r = qkvz.shape[0], nv // nk
    q, k, v, z = np.split(qkvz.reshape(n, nk, 2 * dk + 2 * r * dv), [dk, 2 * dk, 2 * dk + r * dv], axis=-1)
    ba = ba.reshape(n, nk, 2 * r)
    qkv = np.concatenate([q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1)], axis=-1)
    return qkv, z.reshape(n, nv * dv), ba[..., :r].reshape(n, nv), ba[..., r:].reshape(n, nv)


def gated_delta_rule_recurrent(q, k, v, g, beta, state):
    """The gated delta rule, one token at a time (the readable reference; decode and verify use it).

    q, k [n, h, dk] (l2-normalised; q also scaled by dk^-1/2), v [n, h, dv], g [n, h] (log decay <= 0),
    beta [n, h] in (0, 1), state [h, dk, dv]. Per head and token t:
        S   <- exp(g_t) S                          decay the memory
        S   <- S + k_t (beta_t (v_t - S^T k_t))^T  write the part of v_t that S does not already predict
        o_t  = S^T q_t                             read
    Returns (o [n, h, dv], states [n+1, h, dk, dv]): states[t] is S after the first t tokens.
    """
    n = q.shape[0]
    states = np.empty((n + 1,) + state.shape, np.float32)
    out = np.empty(v.shape, np.float32)
    S = states[0] = state
    for t in range(n):
        S = S * np.exp(g[t])[:, None, None]                                  # [h, dk, dv]
        mem = np.einsum("hk,hkv->hv", k[t], S)                               # what S recalls for k_t  [h, dv]
        delta = beta[t][:, None] * (v[t] - mem)                              # [h, dv]
        S = S + k[t][:, :, None] * delta[:, None, :]                         # rank-1 write
        out[t] = np.einsum("hk,hkv->hv", q[t], S)
        states[t + 1] = S
    return out, states


def gated_delta_rule_chunked(q, k, v, g, beta, state, chunk: int = 64):
    """The same recurrence over chunks of `chunk` tokens (transformers' torch_chunk_gated_delta_rule, the
    form prefill uses): inside a chunk the sequential writes are solved at once with the WY / UT transform,
    and only the chunk boundaries are sequential. Same arguments as the recurrent form; returns
    (o [n, h, dv], final state [h, dk, dv]) and no per-token states.

    Per chunk, with gam_i = g_1 + .. + g_i (cumulative log decay), D_ij = exp(gam_i - gam_j) for j <= i:
        (I + L) U = beta * V,  (I + L) W = beta * exp(gam) * K,   L_ij = beta_i k_i.k_j D_ij for j < i
        V' = U - W S0                       the new values, corrected for what S0 already recalls
        O  = (exp(gam) * Q) S0 + (Q K^T * D) V'
        S1 = exp(gam_C) S0 + (exp(gam_C - gam) * K)^T V'
    """
    n, h, dk = k.shape
    dv = v.shape[-1]
    pad = (-n) % chunk

    def chunks(x):                                                           # [n, h, ...] -> [h, m, chunk, ...]
        x = np.moveaxis(x, 0, 1)
        x = np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape((h, -1, chunk) + x.shape[2:])

    Q, K, V, G, B = (chunks(x) for x in (q, k, v, g, beta))                  # [h, m, C, d] / [h, m, C]
    gam = np.cumsum(G, axis=-1)                                              # [h, m, C]
    lower = np.tril(np.ones((chunk, chunk), bool))                           # j <= i
    D = np.where(lower, np.exp(np.where(lower, gam[..., :, None] - gam[..., None, :], 0.0)), 0.0)  # [h, m, C, C]
    Kb, Vb = K * B[..., None], V * B[..., None]
    T = np.eye(chunk, dtype=np.float32) + np.tril((Kb @ K.swapaxes(-1, -2)) * D, -1)   # unit lower triangular
    U = np.linalg.solve(T, Vb)                                               # [h, m, C, dv]
    W = np.linalg.solve(T, Kb * np.exp(gam)[..., None])                      # [h, m, C, dk]
    A = (Q @ K.swapaxes(-1, -2)) * D                                         # intra-chunk scores  [h, m, C, C]
    Qd = Q * np.exp(gam)[..., None]
    Kd = K * np.exp(gam[..., -1:] - gam)[..., None]
    out = np.empty(V.shape, np.float32)                                      # [h, m, C, dv]
    S = state
    for c in range(Q.shape[1]):
        Vn = U[:, c] - W[:, c] @ S                                           # [h, C, dv]
        out[:, c] = Qd[:, c] @ S + A[:, c] @ Vn
        S = S * np.exp(gam[:, c, -1])[:, None, None] + Kd[:, c].swapaxes(-1, -2) @ Vn
    return np.moveaxis(out.reshape(h, -1, dv)[:, :n], 0, 1), S.astype(np.float32)
