"""Hybrid sliding-window / full attention with attention sinks (MiMo-V2-Flash, Step-3.5/3.7), as pure functions.

A "gqa_hybrid" family (FamilySpec.attention) has two kinds of attention layer, named by
config.layer_types: "full_attention" and "sliding_attention", each with its own head counts,
head dims, RoPE theta and (optionally) a learned per-head sink logit. Shapes as in ops.py:
n new queries, T cached keys, h query heads, g key/value heads, d / dv qk / value head dims.

Sink (gpt-oss, MiMo-V2 `attention_sink_bias`): one extra logit s_h per head that takes part in the
softmax and has no value, so a query may attend to "nothing":
    p_ij = exp(a_ij) / (exp(s_h) + sum_j' exp(a_ij'))
Sliding window of W keys: query at position i sees keys max(0, i-W+1) .. i. transformers 5.23 (and
the SGLang reference it follows) make W = sliding_window_size + 1 for MiMo-V2-Flash; vLLM's
MiMoV2Attention uses W = sliding_window_size (Model.swa_extra_keys picks). Step-3.5/3.7 configs give
`sliding_window` directly (transformers' meaning: W keys, the query included).
Step-3.5/3.7 also gate each head's output by sigmoid(g_proj x) (FamilySpec.head_gate) and normalise q, k per
head (zero-centred RMSNorm).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import ops
from .config import ModelConfig
from .errors import MtpRefError


def attention_sinks_naive(q, k, v, scale: float, start: int, window: int | None, sinks: np.ndarray | None):
    """The definition, one query and one head at a time. q [n, h, d], k [T, g, d], v [T, g, dv],
    sinks [h] or None; returns [n, h*dv]."""
    n, h, _ = q.shape
    T, g, dv = v.shape
    rep = h // g
    out = np.zeros((n, h, dv), np.float32)
    for i in range(n):
        pos = start + i
        lo = 0 if window is None else max(0, pos - window + 1)
        for head in range(h):
            kv = head // rep                                                 # GQA: query head -> its kv head
            a = (k[lo : pos + 1, kv] @ q[i, head]) * scale                   # [keys]
            logits = a if sinks is None else np.append(a, sinks[head])
            p = np.exp(logits - logits.max())
            p = p / p.sum()
            out[i, head] = p[: pos + 1 - lo] @ v[lo : pos + 1, kv]           # the sink column has no value
    return out.reshape(n, h * dv)


def attention_sinks(q, k, v, scale: float, start: int, window: int | None, sinks: np.ndarray | None):
    """attention_sinks_naive for all queries and heads at once (same numbers up to summation order)."""
    n, h, d = q.shape
    T, g, dv = v.shape
    rep = h // g
    qg = q.reshape(n, g, rep, d).transpose(1, 2, 0, 3)                        # [g, rep, n, d]
    s = np.einsum("grnd,tgd->grnt", qg, k) * scale                             # [g, rep, n, T]
    qpos = start + np.arange(n)[:, None]                                       # [n, 1]
    kpos = np.arange(T)[None, :]                                               # [1, T]
    seen = kpos <= qpos
    if window is not None:
        seen &= kpos > qpos - window
    s = np.where(seen, s, -np.inf)                                             # [g, rep, n, T]
    m = s.max(-1, keepdims=True)                                               # [g, rep, n, 1]
    if sinks is not None:
        sk = sinks.reshape(g, rep, 1, 1).astype(np.float32)                    # head = kv * rep + r
        m = np.maximum(m, sk)
    e = np.exp(s - m)
    z = e.sum(-1, keepdims=True)
    if sinks is not None:
        z = z + np.exp(sk - m)
    o = (e / z) @ v.transpose(1, 0, 2)[:, None]                                # [g, rep, n, T] @ [g, 1, T, dv]
    return o.transpose(2, 0, 1, 3).reshape(n, h * dv)                          # [n, h*dv]


# ---------------------------------------------------------------- per-layer-type geometry (config keys)

@dataclass(frozen=True)
class AttnGeometry:
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    rope_theta: float
    rotary_dim: int
    window: int | None            # keys a query sees, itself included (None: all)
    sinks: bool                   # self_attn.attention_sink_bias [heads] present
    value_scale: float            # v is multiplied by this (attention_value_scale)
    scale: float                  # softmax scale: query_pre_attn_scalar^-1/2 (Step), else head_dim^-1/2
    layer_type: str = "full_attention"


def _per_type(cfg: ModelConfig, key: str, layer_type: str):
    """A per-layer config list (Step: rope_theta, partial_rotary_factors; L + MTP entries) read for one layer
    type: every layer of that type must agree (transformers takes the first one's); None if not a list."""
    v = cfg.raw.get(key)
    if not isinstance(v, list):
        return None
    types = list(cfg.raw.get("layer_types") or cfg.layer_types)
    vals = {v[i] for i in range(min(len(v), len(types))) if types[i] == layer_type}
    if len(vals) > 1:
        raise MtpRefError(f"config.json: '{key}' differs between {layer_type} layers ({sorted(vals)}); "
                          f"only one value per layer type is supported")
    return vals.pop() if vals else None


def geometry(cfg: ModelConfig, layer_type: str, swa_extra_keys: int = 1) -> AttnGeometry:
    """The attention shape of one layer type, from the released MiMo-V2 config keys
    (num_attention_heads / swa_num_attention_heads, ..._key_value_heads, head_dim / swa_head_dim,
    v_head_dim / swa_v_head_dim, rope_theta / swa_rope_theta, sliding_window_size,
    add_full_attention_sink_bias / add_swa_attention_sink_bias, partial_rotary_factor, attention_value_scale)."""
    raw = cfg.raw
    sw = layer_type == "sliding_attention"
    pre = "swa_" if sw else ""
    other = (raw.get("attention_other_setting") or {}) if sw else {}   # Step: the sliding layers' shape
    hd = int(raw.get(pre + "head_dim") or other.get("head_dim") or cfg.head_dim)
    if sw:
        if raw.get("sliding_window_size") is not None:
            window = int(raw["sliding_window_size"]) + swa_extra_keys
        elif raw.get("sliding_window") is not None:
            window = int(raw["sliding_window"])       # transformers' own key: keys seen, the query included
        else:
            raise MtpRefError("config.json: sliding_attention layers need 'sliding_window_size' (or 'sliding_window')")
    else:
        window = None
    partial = _per_type(cfg, "partial_rotary_factors", layer_type)
    if partial is None:
        partial = cfg.rope.partial_rotary_factor
    theta = raw.get(pre + "rope_theta") if sw else None
    theta = theta or _per_type(cfg, "rope_theta", layer_type) or cfg.rope.theta
    heads = raw.get(pre + "num_attention_heads") or (raw.get("num_sliding_attention_heads") if sw else None)
    return AttnGeometry(
        heads=int(heads or other.get("num_attention_heads") or cfg.num_attention_heads),
        kv_heads=int(raw.get(pre + "num_key_value_heads") or other.get("num_attention_groups")
                     or cfg.num_key_value_heads),
        head_dim=hd,
        v_head_dim=int(raw.get(pre + "v_head_dim") or raw.get("v_head_dim") or hd),
        rope_theta=float(theta),
        rotary_dim=int(hd * (1.0 if partial is None else partial)),
        window=window,
        sinks=bool(raw.get("add_swa_attention_sink_bias" if sw else "add_full_attention_sink_bias", False)),
        value_scale=float(raw.get("attention_value_scale") or 1.0),
        scale=float(raw.get("query_pre_attn_scalar") or hd) ** -0.5,
        layer_type=layer_type,
    )


def rope_inv_freq(geo: AttnGeometry, cfg: ModelConfig | None = None) -> tuple[np.ndarray, float]:
    """RoPE over the first rotary_dim dims of a head, with this layer type's theta: (inv_freq [r/2], cos/sin
    factor). The config's rope_scaling (Step-3.7: llama3) applies to the full-attention layers only, as in
    transformers' Step3p7TextConfig; sliding layers keep default RoPE."""
    r = geo.rotary_dim
    if cfg is not None and cfg.rope.kind != "default" and geo.layer_type == "full_attention":
        from .config import rope_inv_freq as scaled
        return scaled(replace(cfg, head_dim=r, qk_rope_head_dim=0,
                              rope=replace(cfg.rope, theta=geo.rope_theta, partial_rotary_factor=1.0)))
    return 1.0 / (geo.rope_theta ** (np.arange(0, r, 2, dtype=np.float64) / r)), 1.0   # [r/2]


def attention_tensors(cfg: ModelConfig, spec, layer_type: str) -> dict[str, tuple[int, ...]]:
    """One hybrid attention layer's tensors (names relative to the block prefix), as released."""
    g, H, bias = geometry(cfg, layer_type), cfg.hidden_size, spec.has_qkv_bias(cfg)
    t = {"self_attn.q_proj.weight": (g.heads * g.head_dim, H), "self_attn.k_proj.weight": (g.kv_heads * g.head_dim, H),
         "self_attn.v_proj.weight": (g.kv_heads * g.v_head_dim, H), "self_attn.o_proj.weight": (H, g.heads * g.v_head_dim)}
    if bias:
        t.update({"self_attn.q_proj.bias": (g.heads * g.head_dim,), "self_attn.k_proj.bias": (g.kv_heads * g.head_dim,),
                  "self_attn.v_proj.bias": (g.kv_heads * g.v_head_dim,)})
    if g.sinks:
        t["self_attn.attention_sink_bias"] = (g.heads,)
    if spec.has_qk_norm(cfg):
        t["self_attn.q_norm.weight"] = (g.head_dim,)
        t["self_attn.k_norm.weight"] = (g.head_dim,)
    if spec.head_gate:
        t["self_attn.g_proj.weight"] = (g.heads, H)
    return t


def hybrid_attention(model, x, W, cache, start: int, cos, sin, geo: AttnGeometry):
    """q/k/v projections, [per-head q/k norm], partial RoPE (half split), v * value_scale, windowed attention
    with sinks, [per-head sigmoid gate], o_proj. x [n, H] (already input-normed) -> [n, H]."""
    n = x.shape[0]
    q = ops.linear(x, W["self_attn.q_proj.weight"], W.get("self_attn.q_proj.bias")).reshape(n, geo.heads, geo.head_dim)
    k = ops.linear(x, W["self_attn.k_proj.weight"], W.get("self_attn.k_proj.bias")).reshape(n, geo.kv_heads, geo.head_dim)
    v = ops.linear(x, W["self_attn.v_proj.weight"], W.get("self_attn.v_proj.bias")).reshape(n, geo.kv_heads, geo.v_head_dim)
    v = v * np.float32(geo.value_scale)
    if model.spec.has_qk_norm(model.config):
        q = model.rms_norm(q, W["self_attn.q_norm.weight"])                      # per head [n, h, d]
        k = model.rms_norm(k, W["self_attn.k_norm.weight"])
    q = ops.apply_rope(q, cos, sin, model.spec.rope_style)
    k = ops.apply_rope(k, cos, sin, model.spec.rope_style)
    kv = cache.append(k=k, v=v)                                                 # [T, g, d], [T, g, dv]
    sinks = W["self_attn.attention_sink_bias"] if geo.sinks else None
    attend = attention_sinks_naive if model.attn_impl == "naive" else attention_sinks
    o = attend(q, kv["k"], kv["v"], geo.scale, start, geo.window, sinks)       # [n, h*dv]
    if model.spec.head_gate:  # one gate per head: o_h * sigmoid(g_proj x)_h
        gate = ops.sigmoid(ops.linear(x, W["self_attn.g_proj.weight"]))         # [n, h]
        o = (o.reshape(n, geo.heads, geo.v_head_dim) * gate[:, :, None]).reshape(n, -1)
    return ops.linear(o, W["self_attn.o_proj.weight"])                          # [n, H]
