"""The maths, as small pure NumPy functions (float32). Shapes: n = tokens in this call,
T = tokens in the cache, H = hidden, V = vocab, h = heads, d = head dim.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(np.square(x), axis=-1, keepdims=True)  # [..., D] -> [..., 1]
    return x / np.sqrt(var + eps) * w                    # [..., D]


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x @ w.T  # [n, in] @ [in, out] -> [n, out]
    return y if b is None else y + b


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def swiglu_mlp(x: np.ndarray, wg: np.ndarray, wu: np.ndarray, wd: np.ndarray) -> np.ndarray:
    return linear(silu(linear(x, wg)) * linear(x, wu), wd)  # [n, H] -> [n, I] -> [n, H]


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
