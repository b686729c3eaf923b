"""NumPy references of the CUDA kernels (float32 in, float32 out), one per kernel.

Most are the engine's own ops (mtp_ref.ops); the rest are written out here in the same style.
tests/test_kernels.py checks every kernel against these on fresh random inputs.
"""

from __future__ import annotations

import numpy as np

from mtp_ref import ops
from mtp_ref.safetensors_io import fp8_e4m3_to_f32
from mtp_ref.weights import dequant_fp8_block


# ----------------------------------------------------------------------------- weight formats
def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (round to nearest even), uint16."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def fp8_block_value(q: np.ndarray, scale_inv: np.ndarray) -> np.ndarray:
    """e4m3 bytes [M, N] uint8 and scale_inv [ceil(M/128), ceil(N/128)] -> float32 [M, N]."""
    return dequant_fp8_block(fp8_e4m3_to_f32(q), scale_inv, (128, 128))


def weight_value(fmt: str, w, ws=None) -> np.ndarray:
    return {"bf16": lambda: bf16_value(w), "f32": lambda: np.asarray(w, np.float32),
            "fp8": lambda: fp8_block_value(w, ws)}[fmt]()


# ----------------------------------------------------------------------------- kernels
def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    return ops.linear(x, w, b)                       # [n, K] @ [N, K]^T -> [n, N]


def swiglu_stacked(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """W = [gate; up] stacked [2P, K] -> silu(x Wg^T) * (x Wu^T), [n, P]."""
    P = w.shape[0] // 2
    return ops.silu(ops.linear(x, w[:P])) * ops.linear(x, w[P:])


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return ops.rms_norm(x, w, eps)


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, att: float, style: str) -> np.ndarray:
    """x [n, h, d]; rotates the first 2 len(inv_freq) dims of each head."""
    cos, sin = ops.rope_tables(inv_freq, positions, att)
    return ops.apply_rope(x, cos, sin, style)


def attention(q, k, v, scale: float, start: int) -> np.ndarray:
    """q [n, h, d], k [T, g, d], v [T, g, dv] -> [n, h*dv] (causal inside the n-token window)."""
    return ops.causal_attention(q, k, v, scale, start)


def route(logits: np.ndarray, corr: np.ndarray, k: int, n_group: int, topk_group: int, norm: bool,
          scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek-V3 router (as mtp_ref.model.Model.route): (experts [n, k], weights [n, k])."""
    n, E = logits.shape
    scores = ops.sigmoid(logits)
    choice = scores + corr
    if n_group > 1:
        grouped = choice.reshape(n, n_group, E // n_group)
        gscore = np.sort(grouped, axis=-1)[..., -2:].sum(-1)
        keep = np.argsort(-gscore, axis=-1, kind="stable")[:, :topk_group]
        gmask = np.zeros((n, n_group), bool)
        np.put_along_axis(gmask, keep, True, axis=-1)
        choice = np.where(np.repeat(gmask, E // n_group, axis=-1), choice, -np.inf)
    idx = np.argsort(-choice, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(scores, idx, axis=-1)
    if norm:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    return idx, w * scaling


def moe(x, idx, w, w_gu: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """Routed experts only: sum_s w[t, s] * expert_{idx[t, s]}(x[t]); w_gu [E, 2I, H], w_down [E, H, I]."""
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for s in range(idx.shape[1]):
            e = idx[t, s]
            y[t] += w[t, s] * ops.linear(swiglu_stacked(x[t: t + 1], w_gu[e]), w_down[e])[0]
    return y


def mla_q_absorb(q: np.ndarray, w_kvb: np.ndarray, nh: int, dn: int, dr: int, dv: int) -> np.ndarray:
    """q [n, nh, dn+dr] -> [n, nh, r+dr]: (q_nope W_UK, q_pe)."""
    r = w_kvb.shape[1]
    wk = w_kvb.reshape(nh, dn + dv, r)[:, :dn]                        # [h, dn, r]
    return np.concatenate([np.einsum("nhd,hdr->nhr", q[..., :dn], wk), q[..., dn:]], -1)


def mla_o_up(o_lat: np.ndarray, w_kvb: np.ndarray, nh: int, dn: int, dv: int) -> np.ndarray:
    """o_lat [n, nh, r] -> [n, nh*dv]."""
    r = w_kvb.shape[1]
    wv = w_kvb.reshape(nh, dn + dv, r)[:, dn:]                        # [h, dv, r]
    return np.einsum("nhr,hvr->nhv", o_lat, wv).reshape(o_lat.shape[0], nh * dv)


def argmax(x: np.ndarray) -> np.ndarray:
    return np.argmax(x, axis=-1)


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return ops.softmax(x / temperature, axis=-1)


# ----------------------------------------------------------------------------- Gated DeltaNet
def causal_conv1d(x: np.ndarray, prev: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [n, C], prev [K-1, C], w [C, K] -> (silu(conv) [n, C], window [K-1+n, C])."""
    return ops.causal_conv1d(x, prev, w)


def l2norm(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return ops.l2norm(x) * scale


def delta_rule_inputs(rng, n: int, nk: int, nv: int, dk: int, dv: int):
    """Random inputs of the gated delta rule as Model.linear_attention makes them: l2-normalised q (* dk^-1/2)
    and k per key head, v per value head, log decays g <= 0 (exp(g) ~ 0.7-1: the state remembers),
    beta in (0, 1), a nonzero initial state."""
    q = l2norm(rng.standard_normal((n, nk, dk)).astype(np.float32), dk ** -0.5)
    k = l2norm(rng.standard_normal((n, nk, dk)).astype(np.float32))
    v = rng.standard_normal((n, nv, dv)).astype(np.float32)
    g = (-0.3 * np.abs(rng.standard_normal((n, nv)))).astype(np.float32)
    beta = (1 / (1 + np.exp(-rng.standard_normal((n, nv))))).astype(np.float32)
    S0 = (0.5 * rng.standard_normal((nv, dk, dv))).astype(np.float32)
    return q, k, v, g, beta, S0


def gdn_gates(a: np.ndarray, b: np.ndarray, a_log: np.ndarray, dt_bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g, beta) as Model.linear_attention makes them: g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b)."""
    return -np.exp(a_log) * ops.softplus(a + dt_bias), ops.sigmoid(b)


def gated_delta_rule(q, k, v, g, beta, state) -> tuple[np.ndarray, np.ndarray]:
    """q, k [n, h, dk], v [n, h, dv], g, beta [n, h], state [h, dk, dv] -> (o [n, h, dv], states [n+1, h, dk, dv])."""
    return ops.gated_delta_rule_recurrent(q, k, v, g, beta, state)


def gated_rms_norm(x: np.ndarray, z: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return ops.gated_rms_norm(x, z, w, eps)


def route_softmax(logits: np.ndarray, k: int, norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """Qwen router (as mtp_ref.model.Model.route "softmax"): (experts [n, k], weights [n, k])."""
    p = ops.softmax(logits)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(p, idx, axis=-1)
    return idx, (w / w.sum(-1, keepdims=True) if norm else w)
