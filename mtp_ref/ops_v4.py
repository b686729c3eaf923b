"""DeepSeek-V4 / V4-Flash (`deepseek_v4`): hyper-connection streams, compressed attention, hash routing, its MTP.

V4 does not fit ModelConfig / model.py's block (the residual is hc_mult streams, attention is one shared K=V head
over a sliding window plus compressed entries, the MTP input is a sum of two projections of the streams), so,
as Gemma 4 (gemma4.py), it is an engine of its own (families.OWN_ENGINES); the maths is the small pure functions
below, each with the name of transformers 5.23's module it follows (models/deepseek_v4/modular_deepseek_v4.py)
and, where a vectorised form exists, a `*_naive` twin that states the definition (tests/test_families_v4.py
compares them). Weights are read by their RELEASED names (`layers.{i}.attn.wq_a.weight`, `mtp.{j}.e_proj.weight`).

Shapes: n new tokens, T cached tokens, S = hc_mult streams, H hidden, h heads, D head_dim (the one K=V head),
dr rope dims (the LAST dr of a head), m compress rate, Tc compressed entries, hI / dI indexer heads / dim.

Block i (DeepseekV4DecoderLayer), on streams X [n, S, H]:
    pre, post, comb = hc_weights(X, hc_attn_*)          pre/post [n, S], comb [n, S, S] (Sinkhorn, doubly stochastic)
    a = attn(attn_norm(sum_s pre_s X_s))                 [n, H]
    X = post * a + comb^T X                              X'_k = post_k a + sum_j comb_jk X_j
    the same with hc_ffn_*, ffn_norm and the MoE
logits = head(norm(hc_head(X_L))),  hc_head: sum_s (sigmoid(.) + eps)_s X_s.

Attention (DeepseekV4Attention): q = RoPE(rms(W_qb q_norm(W_qa x)))  per head (no weight), kv = RoPE(kv_norm(W_kv x))
one head serving as key AND value; keys = the last `sliding_window` tokens (the query's included) plus the
compressed entries the query may see; one learned sink logit per head (attn_sink) joins the softmax; the output's
rope slice is rotated back by -position; grouped output projection wo_b(concat_g wo_a_g(o_g)).
Compressed entries (layer ratio r = compress_ratios[i]: CSA for r == 4, HCA for other r > 0; the pool size m is
r unless transformers' compress_rates / compress_rate_csa / compress_rate_hca say otherwise): every closed window of
m tokens gives one entry softmax(W_gate x + ape)-weighted sum of W_kv x, RMS-normed (compressor.norm), rotated to
position w*m with the "compress" RoPE (compress_rope_theta + YaRN). CSA's projections are 2D wide: entry w pools
window w-1's first half with window w's second half (2m slots). Query t sees entries w < (t+1) // m; on CSA
layers only the index_topk of them a lightning indexer scores highest:
    score_tw = sum_h (W_w x)_th / sqrt(hI) * relu(q^I_th . K^I_w) / sqrt(dI)
with q^I = RoPE(indexer.wq_b q_lat) and K^I the entries of the indexer's own (dI-wide) compressor.
Cache: per-token rows (the window key kv and the compressors' projections) plus a memo of the entries; an entry
depends only on the rows of its windows, so rolling back to a length keeps the entries of windows closed below it
and recomputes the rest from the kept rows (no per-token snapshots needed).

MoE: scores = sqrt(softplus(W_g x)); experts = top-k of scores + ffn.gate.bias, or tid2eid[token] on the first
num_hash_layers layers (hash routing); weights = scores of the picked / their sum * routed_scaling_factor;
experts and the shared expert are SwiGLU with gate clamped to <= swiglu_limit BEFORE silu and up to +-limit.

MTP module j (`mtp.{j}.`; DeepSeek's released inference/model.py MTPBlock; transformers 5.23 has no class):
    x = e_proj(enorm(E t)) + h_proj(hnorm(S_prev))     the embedding term broadcast over the S streams
    S_j = Block_{L+j}(x) (compress_ratios[L+j] = 0: sliding window only, learned routing)
    logits = head(norm(hc_head_j(S_j)))               head, embed: the trunk's
S_prev: the trunk's streams X_L before hc_head at depth 0, module j-1's streams S_{j-1} at depth j.
hnorm normalises each stream on its own. The released code does NOT zero the embedding at position 0 (vLLM's
DeepSeekV4MTP does: V4Model.mtp_zero_pos0); we follow the release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import ops
from .cache import KVCache, LayerCache
from .config import _rope_from, rope_inv_freq
from .errors import MtpRefError
from .model import TextCodec

MODEL_TYPE = "deepseek_v4"
CSA_RATIO = 4  # the reference builds the overlapping compressor and the indexer exactly for ratio 4


# ---------------------------------------------------------------------------------------------- config

@dataclass
class V4Config:
    """config.json of a V4 release, with transformers 5.23's defaults for absent keys. The attributes the generic
    decoder / CLI read (model_type, vocab_size, eos_token_id, num_mtp_modules, ...) have their usual names."""
    raw: dict
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    head_dim: int
    qk_rope_head_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    moe_intermediate_size: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    scoring_func: str
    routed_scaling_factor: float
    swiglu_limit: float
    sliding_window: int
    compress_ratios: list[int]            # per block, trunk then MTP (0: sliding window only)
    compress_rates: dict[str, int]        # {"csa": m, "hca": m'}: the ratio the compressor really pools
    rope_theta: float
    compress_rope_theta: float
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    num_hash_layers: int
    num_nextn_predict_layers: int
    rms_norm_eps: float
    max_position_embeddings: int
    eos_token_id: list[int]
    quantization_config: dict | None
    model_type: str = MODEL_TYPE
    tie_word_embeddings: bool = False
    mtp_declared_by: str = "num_nextn_predict_layers"
    num_mtp_modules: int = 0
    layer_types: list[str] = field(default_factory=list)

    def ratio(self, i: int) -> int:
        """compress ratio of block i (i >= L: MTP block i - L), 0 where the list ends (the release lists L + 1)."""
        return self.compress_ratios[i] if i < len(self.compress_ratios) else 0

    def rate(self, i: int) -> int:
        """how many tokens one compressed entry of block i pools (transformers' compress_rates may override)."""
        r = self.ratio(i)
        return 0 if r == 0 else self.compress_rates["csa" if r == CSA_RATIO else "hca"]

    def is_hash(self, i: int) -> bool:
        return i < min(self.num_hash_layers, self.num_hidden_layers)


def _int(raw: dict, key: str, default=None, source: str = "config.json") -> int:
    v = raw.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise MtpRefError(f"{source}: '{key}' must be an integer, got {v!r}")
    return v


def config_from_raw(raw: dict, source: str = "config.json") -> V4Config:
    L = _int(raw, "num_hidden_layers", None, source)
    D = _int(raw, "head_dim", 512, source)
    dr = raw.get("qk_rope_head_dim")
    if dr is None:
        dr = int(D * float(raw.get("partial_rotary_factor") or 64 / 512))
    ratios = raw.get("compress_ratios")
    if ratios is None and raw.get("layer_types"):  # transformers' own spelling
        to_ratio = {"sliding_attention": 0, "compressed_sparse_attention": 4, "heavily_compressed_attention": 128}
        ratios = [to_ratio.get(t, -1) for t in raw["layer_types"]]
    if ratios is None:  # transformers' default: 2 HCA then CSA / HCA alternating
        ratios = [128] * min(L, 2) + [4 if i % 2 else 128 for i in range(max(L - 2, 0))]
    if not isinstance(ratios, list) or len(ratios) < L or any(not isinstance(r, int) or r < 0 for r in ratios):
        raise MtpRefError(f"{source}: 'compress_ratios' must list a non-negative integer per layer "
                          f"({L} trunk layers, then the MTP blocks'), got {ratios!r}")
    rates = {"csa": CSA_RATIO, "hca": 128}
    if isinstance(raw.get("compress_rates"), dict):
        cr = raw["compress_rates"]
        rates.update({"csa": cr.get("compressed_sparse_attention", rates["csa"]),
                      "hca": cr.get("heavily_compressed_attention", rates["hca"])})
    rates["csa"] = raw.get("compress_rate_csa", rates["csa"])
    rates["hca"] = raw.get("compress_rate_hca", max([r for r in ratios if r not in (0, CSA_RATIO)], default=128)
                           if "compress_rates" not in raw else rates["hca"])
    scoring = raw.get("scoring_func", "sqrtsoftplus")
    if scoring not in ("sqrtsoftplus", "sigmoid", "softmax"):
        raise MtpRefError(f"{source}: scoring_func '{scoring}' is not supported for deepseek_v4 "
                          f"(sqrtsoftplus, sigmoid, softmax)")
    nh, G = _int(raw, "num_attention_heads", None, source), _int(raw, "o_groups", 8, source)
    if (nh * D) % G:
        raise MtpRefError(f"{source}: num_attention_heads * head_dim ({nh * D}) is not divisible by o_groups ({G})")
    if raw.get("num_key_value_heads", 1) != 1:
        raise MtpRefError(f"{source}: DeepSeek-V4 attention has one shared K=V head; num_key_value_heads is "
                          f"{raw.get('num_key_value_heads')}")
    if raw.get("n_shared_experts", 1) not in (0, 1):
        raise MtpRefError(f"{source}: n_shared_experts {raw.get('n_shared_experts')} is not supported "
                          f"(transformers and the release build one shared expert)")
    eos = raw.get("eos_token_id", 1)
    n_hash = raw.get("num_hash_layers")
    if n_hash is None and isinstance(raw.get("mlp_layer_types"), list):
        n_hash = sum(1 for t in raw["mlp_layer_types"] if t == "hash_moe")
    return V4Config(
        raw=raw, vocab_size=_int(raw, "vocab_size", None, source), hidden_size=_int(raw, "hidden_size", None, source),
        num_hidden_layers=L, num_attention_heads=nh, head_dim=D, qk_rope_head_dim=int(dr),
        q_lora_rank=_int(raw, "q_lora_rank", 1024, source), o_groups=G,
        o_lora_rank=_int(raw, "o_lora_rank", 1024, source),
        moe_intermediate_size=_int(raw, "moe_intermediate_size", 2048, source),
        n_routed_experts=_int(raw, "n_routed_experts", 256, source), n_shared_experts=raw.get("n_shared_experts", 1),
        num_experts_per_tok=_int(raw, "num_experts_per_tok", 6, source), scoring_func=scoring,
        routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.5)),
        swiglu_limit=float(raw.get("swiglu_limit", 10.0)), sliding_window=_int(raw, "sliding_window", 128, source),
        compress_ratios=list(ratios), compress_rates=rates, rope_theta=float(raw.get("rope_theta", 10000.0)),
        compress_rope_theta=float(raw.get("compress_rope_theta", 160000.0)),
        hc_mult=_int(raw, "hc_mult", 4, source), hc_sinkhorn_iters=_int(raw, "hc_sinkhorn_iters", 20, source),
        hc_eps=float(raw.get("hc_eps", 1e-6)), index_n_heads=_int(raw, "index_n_heads", 64, source),
        index_head_dim=_int(raw, "index_head_dim", 128, source), index_topk=_int(raw, "index_topk", 512, source),
        num_hash_layers=3 if n_hash is None else int(n_hash),
        num_nextn_predict_layers=int(raw.get("num_nextn_predict_layers") or 0),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=_int(raw, "max_position_embeddings", 1048576, source),
        eos_token_id=list(eos) if isinstance(eos, list) else ([] if eos is None else [eos]),
        quantization_config=raw.get("quantization_config"),
        layer_types=[("sliding_attention", "heavily_compressed_attention", "compressed_sparse_attention")
                     [0 if r == 0 else (2 if r == CSA_RATIO else 1)] for r in ratios[:L]],
    )


def rope_inv_freq_v4(cfg: V4Config, kind: str) -> tuple[np.ndarray, float]:
    """(inverse frequencies [dr/2], cos/sin factor) of the "main" RoPE (rope_theta, no scaling: sliding-only layers)
    or the "compress" one (compress_rope_theta with the config's YaRN, cos/sin NOT scaled by YaRN's mscale:
    transformers forces attention_factor 1, as the reference)."""
    raw = cfg.raw
    if kind == "main":
        r = _rope_from({"rope_theta": cfg.rope_theta})
    else:
        r = _rope_from({**raw, "rope_theta": cfg.compress_rope_theta})
        if r.kind == "yarn":
            r.attention_factor = 1.0
    return rope_inv_freq(SimpleNamespace(rope=r, rotary_dim=cfg.qk_rope_head_dim,
                                         max_position_embeddings=cfg.max_position_embeddings))


# ---------------------------------------------------------------------------------------------- the maths

def rms(x: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm without a weight (q per head, the streams before a hyper-connection mix)."""
    return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)


def rope_tail(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Interleaved RoPE on the LAST 2*cos.shape[-1] dims of each head of x [n, h, d] ([nope | rope] layout)."""
    r = 2 * cos.shape[-1]
    out = x.copy()
    out[..., -r:] = ops.apply_rope(x[..., -r:], cos, sin, "interleaved")
    return out


def sinkhorn(logits: np.ndarray, iters: int, eps: float) -> np.ndarray:
    """softmax over rows + eps, then alternate column / row normalisation (iters column passes in all):
    a doubly stochastic [.., S, S] (DeepseekV4HyperConnection's comb)."""
    c = ops.softmax(logits, axis=-1) + eps
    c = c / (c.sum(axis=-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(axis=-1, keepdims=True) + eps)
        c = c / (c.sum(axis=-2, keepdims=True) + eps)
    return c


def hc_weights(X: np.ndarray, fn: np.ndarray, base: np.ndarray, scale: np.ndarray, iters: int, norm_eps: float,
               hc_eps: float):
    """X [n, S, H] -> pre [n, S], post [n, S], comb [n, S, S] (DeepseekV4HyperConnection): one linear map of the
    RMS-normed flattened streams gives [pre | post | comb] logits; fn [(2+S)S, S*H], base [(2+S)S], scale [3]."""
    n, S, H = X.shape
    mix = ops.linear(rms(X.reshape(n, S * H), norm_eps), fn)                    # [n, S*H] -> [n, (2+S)S]
    pre = ops.sigmoid(mix[:, :S] * scale[0] + base[:S]) + hc_eps
    post = 2.0 * ops.sigmoid(mix[:, S:2 * S] * scale[1] + base[S:2 * S])
    comb = sinkhorn(mix[:, 2 * S:].reshape(n, S, S) * scale[2] + base[2 * S:].reshape(S, S), iters, hc_eps)
    return pre, post, comb


def hc_collapse(X: np.ndarray, pre: np.ndarray) -> np.ndarray:
    return np.einsum("ns,nsh->nh", pre, X)                                       # [n, S, H] -> [n, H]


def hc_expand(y: np.ndarray, X: np.ndarray, post: np.ndarray, comb: np.ndarray) -> np.ndarray:
    """X'_k = post_k y + sum_j comb_jk X_j (comb is applied transposed: it is not symmetric)."""
    return post[:, :, None] * y[:, None, :] + np.einsum("njk,njh->nkh", comb, X)  # [n, S, H]


def hc_head(X: np.ndarray, fn: np.ndarray, base: np.ndarray, scale: np.ndarray, norm_eps: float,
            hc_eps: float) -> np.ndarray:
    """The final collapse of the streams (DeepseekV4HyperHead): sum_s (sigmoid(mix_s * scale + base_s) + eps) X_s."""
    n, S, H = X.shape
    mix = ops.linear(rms(X.reshape(n, S * H), norm_eps), fn)                    # [n, S]
    return hc_collapse(X, ops.sigmoid(mix * scale[0] + base) + hc_eps)          # [n, H]


def pool_windows(kv: np.ndarray, gate: np.ndarray, ape: np.ndarray, m: int, first: int, count: int,
                 overlap: bool) -> np.ndarray:
    """Entries first .. first+count-1 of a compressor, from the per-token projections of ALL tokens so far
    (kv, gate [T, w*d], w = 2 with overlap): entry w = sum over its slots of softmax_slot(gate + ape) * kv, per
    channel. Without overlap the slots are window w's m tokens; with overlap (CSA) window w-1's first-half
    channels then window w's second-half ones (2m slots; window -1 absent). Returns [count, d] (before the norm)."""
    if count <= 0:
        return np.zeros((0, ape.shape[1] // (2 if overlap else 1)), np.float32)
    T = (first + count) * m
    k = kv[first * m - (m if overlap and first else 0): T]
    g = gate[first * m - (m if overlap and first else 0): T]
    if not overlap:
        k, g = k.reshape(count, m, -1), g.reshape(count, m, -1) + ape           # [count, m, d]
    else:
        d = ape.shape[1] // 2
        lead = 1 if first else 0                                                # window first-1 is in k
        kw, gw = k.reshape(count + lead, m, 2 * d), g.reshape(count + lead, m, 2 * d) + ape
        prev_k = np.zeros((count, m, d), np.float32)
        prev_g = np.full((count, m, d), -np.inf, np.float32)                    # window -1: weight 0
        if lead:
            prev_k[:], prev_g[:] = kw[:-1, :, :d], gw[:-1, :, :d]
        elif count > 1:
            prev_k[1:], prev_g[1:] = kw[:-1, :, :d], gw[:-1, :, :d]
        k = np.concatenate([prev_k, kw[lead:, :, d:]], axis=1)                  # [count, 2m, d]
        g = np.concatenate([prev_g, gw[lead:, :, d:]], axis=1)
    return np.sum(k * ops.softmax(g, axis=1), axis=1)                           # [count, d]


def pool_window_naive(kv: np.ndarray, gate: np.ndarray, ape: np.ndarray, m: int, w: int, overlap: bool) -> np.ndarray:
    """Entry w by the definition, one channel at a time (the twin of pool_windows)."""
    d = ape.shape[1] // (2 if overlap else 1)
    out = np.zeros(d, np.float32)
    for c in range(d):
        slots = [(kv[w * m + s, c + (d if overlap else 0)], gate[w * m + s, c + (d if overlap else 0)]
                  + ape[s, c + (d if overlap else 0)]) for s in range(m)]
        if overlap and w > 0:
            slots += [(kv[(w - 1) * m + s, c], gate[(w - 1) * m + s, c] + ape[s, c]) for s in range(m)]
        vals = np.array([v for v, _ in slots], np.float64)
        logits = np.array([z for _, z in slots], np.float64)
        p = np.exp(logits - logits.max())
        out[c] = float((vals * p).sum() / p.sum())
    return out


def indexer_scores(qI: np.ndarray, KI: np.ndarray, wts: np.ndarray) -> np.ndarray:
    """Lightning indexer (DeepseekV4IndexerScorer): qI [n, hI, dI], KI [Tc, dI], wts [n, hI] (already scaled by
    hI^-1/2) -> [n, Tc] = sum_h wts_h relu(qI_h . K) dI^-1/2."""
    s = np.maximum(np.einsum("nhd,td->nht", qI, KI), 0.0) * qI.shape[-1] ** -0.5
    return np.einsum("nht,nh->nt", s, wts)


def visible_entries(rows: np.ndarray, m: int, Tc: int, scores: np.ndarray | None, topk: int) -> np.ndarray:
    """[n, Tc] bool: entry w is visible to the query at row t when its window is closed (w < (t+1) // m) and, with
    indexer scores (CSA), it is among the topk best-scored of those (DeepseekV4Indexer's causal top-k)."""
    closed = np.arange(Tc)[None, :] < ((rows + 1) // m)[:, None]                 # [n, Tc]
    if scores is None or topk >= Tc:
        return closed
    s = np.where(closed, scores, -np.inf)
    rank = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1, kind="stable")  # 0 = best
    return closed & (rank < topk)


def v4_attention(q, kv, comp, comp_vis, rows, window: int, sinks, scale: float) -> np.ndarray:
    """q [n, h, D] at rows `rows` (the last n of the T cached rows), kv [T, D] (key = value, one head), comp
    [Tc, D] compressed entries with comp_vis [n, Tc]; query t sees rows t-window+1 .. t and its visible entries;
    sink [h] logits join each head's softmax. Returns [n, h, D]."""
    T = kv.shape[0]
    keys = np.concatenate([kv, comp], axis=0)                                   # [T + Tc, D]
    kpos = np.arange(T)[None, :]
    win = (kpos <= rows[:, None]) & (kpos > rows[:, None] - window)              # [n, T]
    seen = np.concatenate([win, comp_vis], axis=1)                              # [n, T + Tc]
    s = np.einsum("nhd,kd->nhk", q, keys) * scale                               # [n, h, T + Tc]
    s = np.where(seen[:, None, :], s, -np.inf)
    mx = np.maximum(s.max(axis=-1, keepdims=True), sinks[None, :, None])
    p = np.exp(s - mx)
    den = p.sum(axis=-1, keepdims=True) + np.exp(sinks[None, :, None] - mx)      # the sink has no value
    return np.einsum("nhk,kd->nhd", p / den, keys)


def v4_attention_naive(q, kv, comp, comp_vis, rows, window: int, sinks, scale: float) -> np.ndarray:
    """v4_attention one query and head at a time."""
    n, h, D = q.shape
    out = np.zeros((n, h, D), np.float32)
    for i in range(n):
        t = int(rows[i])
        keys = np.concatenate([kv[max(0, t - window + 1): t + 1], comp[comp_vis[i]]], axis=0)
        for head in range(h):
            logits = np.append(keys @ q[i, head] * scale, sinks[head]).astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            out[i, head] = p[:-1] @ keys
    return out


def grouped_out(o: np.ndarray, wo_a: np.ndarray, wo_b: np.ndarray, G: int) -> np.ndarray:
    """o [n, h*D] -> G groups of consecutive heads, each through its own [R, h*D/G] block of wo_a [G*R, h*D/G],
    then wo_b [H, G*R] (DeepseekV4GroupedLinear + o_b_proj)."""
    n = o.shape[0]
    x = o.reshape(n, G, -1)                                                     # [n, G, h*D/G]
    y = np.einsum("ngi,gri->ngr", x, wo_a.reshape(G, -1, x.shape[-1]))          # [n, G, R]
    return ops.linear(y.reshape(n, -1), wo_b)                                   # [n, H]


def swiglu_v4(gate: np.ndarray, up: np.ndarray, limit: float) -> np.ndarray:
    """silu(min(gate, limit)) * clip(up, -limit, limit): V4 clamps the gate BEFORE the silu (not Step's cap)."""
    return ops.silu(np.minimum(gate, limit)) * np.clip(up, -limit, limit)


def router_scores(logits: np.ndarray, scoring: str) -> np.ndarray:
    if scoring == "sqrtsoftplus":
        return np.sqrt(ops.softplus(logits))
    if scoring == "sigmoid":
        return ops.sigmoid(logits)
    return ops.softmax(logits, axis=-1)


def route_v4(x, w_gate, k: int, scoring: str, scaling: float, bias=None, tid2eid=None, ids=None):
    """(idx [n, k], weights [n, k]): learned top-k of scores + bias, or hash routing idx = tid2eid[ids]; the
    weights are the picked scores renormalised to sum 1, times routed_scaling_factor."""
    s = router_scores(ops.linear(x, w_gate), scoring)                           # [n, E]
    if tid2eid is not None:
        idx = tid2eid[np.asarray(ids)].astype(np.int64)                         # [n, k]
    else:
        idx = np.argsort(-(s + bias), axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(s, idx, axis=-1)
    return idx, w / (w.sum(axis=-1, keepdims=True) + 1e-20) * scaling


# ---------------------------------------------------------------------------------------------- tensors

def block_tensors(cfg: V4Config, i: int) -> dict[str, tuple[int, ...]]:
    """Released names (relative to the block prefix) and shapes of block i (i >= L: an MTP block)."""
    H, nh, D, rq, S = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank, cfg.hc_mult
    G, R, E, I = cfg.o_groups, cfg.o_lora_rank, cfg.n_routed_experts, cfg.moe_intermediate_size
    mix = (2 + S) * S
    t = {"attn_norm.weight": (H,), "ffn_norm.weight": (H,)}
    for site in ("attn", "ffn"):
        t.update({f"hc_{site}_fn": (mix, S * H), f"hc_{site}_base": (mix,), f"hc_{site}_scale": (3,)})
    t.update({"attn.wq_a.weight": (rq, H), "attn.q_norm.weight": (rq,), "attn.wq_b.weight": (nh * D, rq),
              "attn.wkv.weight": (D, H), "attn.kv_norm.weight": (D,), "attn.wo_a.weight": (G * R, nh * D // G),
              "attn.wo_b.weight": (H, G * R), "attn.attn_sink": (nh,)})
    r, m = cfg.ratio(i), cfg.rate(i)
    if r:
        w = 2 if r == CSA_RATIO else 1
        t.update({"attn.compressor.wkv.weight": (w * D, H), "attn.compressor.wgate.weight": (w * D, H),
                  "attn.compressor.ape": (m, w * D), "attn.compressor.norm.weight": (D,)})
        if r == CSA_RATIO:
            hI, dI = cfg.index_n_heads, cfg.index_head_dim
            t.update({"attn.indexer.wq_b.weight": (hI * dI, rq), "attn.indexer.weights_proj.weight": (hI, H),
                      "attn.indexer.compressor.wkv.weight": (2 * dI, H),
                      "attn.indexer.compressor.wgate.weight": (2 * dI, H),
                      "attn.indexer.compressor.ape": (m, 2 * dI), "attn.indexer.compressor.norm.weight": (dI,)})
    t["ffn.gate.weight"] = (E, H)
    if cfg.is_hash(i):
        t["ffn.gate.tid2eid"] = (cfg.vocab_size, cfg.num_experts_per_tok)
    else:
        t["ffn.gate.bias"] = (E,)
    for e in range(E):
        t.update({f"ffn.experts.{e}.w1.weight": (I, H), f"ffn.experts.{e}.w3.weight": (I, H),
                  f"ffn.experts.{e}.w2.weight": (H, I)})
    if cfg.n_shared_experts:
        t.update({"ffn.shared_experts.w1.weight": (I, H), "ffn.shared_experts.w3.weight": (I, H),
                  "ffn.shared_experts.w2.weight": (H, I)})
    return t


def trunk_tensors(cfg: V4Config) -> dict[str, tuple[int, ...]]:
    H, V, S = cfg.hidden_size, cfg.vocab_size, cfg.hc_mult
    t = {"embed.weight": (V, H), "head.weight": (V, H), "norm.weight": (H,), "hc_head_fn": (S, S * H),
         "hc_head_base": (S,), "hc_head_scale": (1,)}
    for i in range(cfg.num_hidden_layers):
        t.update({f"layers.{i}.{k}": s for k, s in block_tensors(cfg, i).items()})
    return t


def mtp_tensors(cfg: V4Config, j: int) -> dict[str, tuple[int, ...]]:
    H, S, p = cfg.hidden_size, cfg.hc_mult, f"mtp.{j}."
    t = {p + "e_proj.weight": (H, H), p + "h_proj.weight": (H, H), p + "enorm.weight": (H,),
         p + "hnorm.weight": (H,), p + "norm.weight": (H,), p + "hc_head_fn": (S, S * H), p + "hc_head_base": (S,),
         p + "hc_head_scale": (1,)}
    t.update({p + k: s for k, s in block_tensors(cfg, cfg.num_hidden_layers + j).items()})
    return t


# ---------------------------------------------------------------------------------------------- cache

class V4LayerCache(LayerCache):
    """A block's rows (kv: the window key; ckv / cgate, ikv / igate: the compressor's and the indexer's per-token
    projections) plus the compressed entries of the windows closed so far, a memo of those rows: truncate keeps
    the entries of windows closed below the new length and later forwards recompute the rest."""

    def __init__(self):
        super().__init__()
        self.entries: dict[str, np.ndarray] = {}
        self.n_entries: dict[str, int] = {}
        self.rate = 0

    def truncate(self, length: int) -> None:
        super().truncate(length)
        for name in self.n_entries:
            self.n_entries[name] = min(self.n_entries[name], length // self.rate)

    def entries_upto(self, name: str, count: int, width: int, compute) -> np.ndarray:
        """The first `count` entries [count, width] of `name`, computing the missing ones with
        compute(first, n) -> [n, width]."""
        have = self.n_entries.get(name, 0)
        if count > have:
            new = compute(have, count - have)
            buf = self.entries.get(name)
            if buf is None or buf.shape[0] < count:
                grown = np.zeros((max(count, 16, 0 if buf is None else 2 * buf.shape[0]), new.shape[1]), np.float32)
                if buf is not None:
                    grown[:have] = buf[:have]
                self.entries[name] = buf = grown
            buf[have:count] = new
            self.n_entries[name] = count
        return self.entries[name][:count] if name in self.entries else np.zeros((0, width), np.float32)


# ---------------------------------------------------------------------------------------------- the model

class _W:
    def __init__(self, model: "V4Model", prefix: str):
        self.model, self.prefix = model, prefix

    def __getitem__(self, name: str) -> np.ndarray:
        return self.model.weight(self.prefix + name)



class V4Model(TextCodec):
    """A DeepSeek-V4 checkpoint plus its forwards, with the interface speculative.py / trace.py / cli.py use:
    forward(ids, cache) -> (streams [n, S, H], logits [n, V]): the `h` handed to MTP depth 0 is the trunk's hc
    streams before hc_head (what the released MTPBlock takes), not a single [n, H] vector."""

    def __init__(self, path: Path, cfg: V4Config, ckpt, tokenizer=None):
        from .families import V4_SPEC
        self.path, self.config, self.ckpt, self.tokenizer = Path(path), cfg, ckpt, tokenizer
        self.spec = V4_SPEC            # what the CUDA backend checks (and refuses)
        # attention: "vectorised" (v4_attention) or "naive" (v4_attention_naive, one query and head at a time)
        self.attn_impl = "vectorised"
        # MTP input embedding of the row that pairs the trunk's position-0 hidden with token 1 (our rotary position
        # 1, vLLM's 0): False keeps it (DeepSeek's released MTPBlock, our convention); True zeroes it (vLLM)
        self.mtp_zero_pos0 = False
        self.bytes_read = 0
        self._touched: set = set()
        self._inv_freq = {kind: rope_inv_freq_v4(cfg, kind) for kind in ("main", "compress")}

    # -- weights + metering
    def weight(self, name: str) -> np.ndarray:
        if name not in self._touched:
            self._touched.add(name)
            self.bytes_read += self.ckpt.stored_nbytes(name)
        return self.ckpt.get(name)

    def begin_forward(self) -> None:
        self._touched = set()

    def reset_meter(self) -> None:
        self.bytes_read = 0
        self._touched = set()

    def embed(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        V = self.config.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise MtpRefError(f"token id {int(ids.max() if ids.max() >= V else ids.min())} is outside the "
                              f"vocabulary [0, {V})")
        self.bytes_read += self.ckpt.stored_nbytes("embed.weight") // V * len(np.unique(ids))
        return self.ckpt.get("embed.weight")[ids]                                # [n, H]

    def rope(self, kind: str, positions: np.ndarray):
        inv, att = self._inv_freq[kind]
        return ops.rope_tables(inv, np.asarray(positions), att)

    def new_cache(self, keep_snapshots: bool = True) -> KVCache:
        """One V4LayerCache per block (rollback to any length is exact: see the module docstring)."""
        c = KVCache(0)
        c.layers = [self._layer_cache(i) for i in range(self.config.num_hidden_layers)]
        return c

    def new_mtp_cache(self) -> V4LayerCache:
        return self._layer_cache(self.config.num_hidden_layers)

    def _layer_cache(self, i: int) -> V4LayerCache:
        lc = V4LayerCache()
        lc.rate = max(self.config.rate(i), 1)
        return lc

    # -- blocks
    def compressed(self, W: _W, p: str, cache: LayerCache, rows_name: tuple[str, str], m: int, overlap: bool,
                   count: int, name: str):
        """The first `count` entries of compressor `p` (normed, rotated to positions w*m by the "compress" RoPE),
        pooled from the per-token projection rows `rows_name` already in the cache."""
        kv_n, g_n = rows_name
        cached = {kv_n: cache.view(kv_n), g_n: cache.view(g_n)}

        def compute(first, k):
            pooled = pool_windows(cached[kv_n], cached[g_n], W[p + "ape"], m, first, k, overlap)   # [k, d]
            pooled = ops.rms_norm(pooled, W[p + "norm.weight"], self.config.rms_norm_eps)
            cos, sin = self.rope("compress", (first + np.arange(k)) * m)
            return rope_tail(pooled[:, None, :], cos, sin)[:, 0]

        if not isinstance(cache, V4LayerCache):
            raise MtpRefError("a compressed-attention block needs a V4LayerCache (V4Model.new_cache)")
        return cache.entries_upto(name, count, W[p + "norm.weight"].shape[0], compute)

    def attention(self, x, W: _W, i: int, cache: LayerCache, start: int, positions: np.ndarray):
        cfg = self.config
        n, nh, D, eps = x.shape[0], cfg.num_attention_heads, cfg.head_dim, cfg.rms_norm_eps
        r, m = cfg.ratio(i), cfg.rate(i)
        kind = "main" if r == 0 else "compress"
        cos, sin = self.rope(kind, positions)
        q_lat = ops.rms_norm(ops.linear(x, W["attn.wq_a.weight"]), W["attn.q_norm.weight"], eps)      # [n, rq]
        q = rope_tail(rms(ops.linear(q_lat, W["attn.wq_b.weight"]).reshape(n, nh, D), eps), cos, sin)  # [n, h, D]
        kv = ops.linear(x, W["attn.wkv.weight"])
        kv = rope_tail(ops.rms_norm(kv, W["attn.kv_norm.weight"], eps)[:, None, :], cos, sin)[:, 0]    # [n, D]
        rows_new = {"kv": kv}
        if r:
            rows_new["ckv"] = ops.linear(x, W["attn.compressor.wkv.weight"])
            rows_new["cgate"] = ops.linear(x, W["attn.compressor.wgate.weight"])
            if r == CSA_RATIO:
                rows_new["ikv"] = ops.linear(x, W["attn.indexer.compressor.wkv.weight"])
                rows_new["igate"] = ops.linear(x, W["attn.indexer.compressor.wgate.weight"])
        allrows = cache.append(**rows_new)
        T = start + n
        rows = start + np.arange(n)
        comp, vis = np.zeros((0, D), np.float32), np.zeros((n, 0), bool)
        if r:
            count = T // m
            comp = self.compressed(W, "attn.compressor.", cache, ("ckv", "cgate"), m, r == CSA_RATIO, count, "comp")
            scores = None
            if r == CSA_RATIO:
                KI = self.compressed(W, "attn.indexer.compressor.", cache, ("ikv", "igate"), m, True, count, "idx")
                hI, dI = cfg.index_n_heads, cfg.index_head_dim
                qI = rope_tail(ops.linear(q_lat, W["attn.indexer.wq_b.weight"]).reshape(n, hI, dI), cos, sin)
                wts = ops.linear(x, W["attn.indexer.weights_proj.weight"]) * hI ** -0.5              # [n, hI]
                scores = indexer_scores(qI, KI, wts)                                                  # [n, Tc]
            vis = visible_entries(rows, m, count, scores, cfg.index_topk)
        attend = v4_attention_naive if self.attn_impl == "naive" else v4_attention
        o = attend(q, allrows["kv"], comp, vis, rows, cfg.sliding_window, W["attn.attn_sink"], D ** -0.5)
        o = rope_tail(o, cos, -sin)                   # K = V carried RoPE: rotate the output back by -position
        return grouped_out(o.reshape(n, nh * D), W["attn.wo_a.weight"], W["attn.wo_b.weight"], cfg.o_groups)

    def moe(self, x, W: _W, i: int, ids) -> np.ndarray:
        cfg = self.config
        lim = cfg.swiglu_limit
        hash_table = W["ffn.gate.tid2eid"] if cfg.is_hash(i) else None
        idx, w = route_v4(x, W["ffn.gate.weight"], cfg.num_experts_per_tok, cfg.scoring_func,
                          cfg.routed_scaling_factor, None if hash_table is not None else W["ffn.gate.bias"],
                          hash_table, ids)
        y = np.zeros_like(x)
        for e in np.unique(idx):                                                 # each selected expert read once
            rows, slot = np.nonzero(idx == e)
            p = f"ffn.experts.{int(e)}."
            h = swiglu_v4(ops.linear(x[rows], W[p + "w1.weight"]), ops.linear(x[rows], W[p + "w3.weight"]), lim)
            y[rows] += ops.linear(h, W[p + "w2.weight"]) * w[rows, slot][:, None]
        if cfg.n_shared_experts:
            p = "ffn.shared_experts."
            y = y + ops.linear(swiglu_v4(ops.linear(x, W[p + "w1.weight"]), ops.linear(x, W[p + "w3.weight"]), lim),
                               W[p + "w2.weight"])
        return y

    def block(self, X, W: _W, i: int, cache, start: int, positions, ids) -> np.ndarray:
        """Block i on the streams X [n, S, H] (see the module docstring)."""
        cfg = self.config
        hc = (cfg.hc_sinkhorn_iters, cfg.rms_norm_eps, cfg.hc_eps)
        pre, post, comb = hc_weights(X, W["hc_attn_fn"], W["hc_attn_base"], W["hc_attn_scale"], *hc)
        a = ops.rms_norm(hc_collapse(X, pre), W["attn_norm.weight"], cfg.rms_norm_eps)
        X = hc_expand(self.attention(a, W, i, cache, start, positions), X, post, comb)
        pre, post, comb = hc_weights(X, W["hc_ffn_fn"], W["hc_ffn_base"], W["hc_ffn_scale"], *hc)
        f = ops.rms_norm(hc_collapse(X, pre), W["ffn_norm.weight"], cfg.rms_norm_eps)
        return hc_expand(self.moe(f, W, i, ids), X, post, comb)

    def logits_from_streams(self, X, prefix: str, norm: str, last_only: bool = False) -> np.ndarray:
        cfg = self.config
        if last_only:
            X = X[-1:]
        y = hc_head(X, self.weight(prefix + "hc_head_fn"), self.weight(prefix + "hc_head_base"),
                    self.weight(prefix + "hc_head_scale"), cfg.rms_norm_eps, cfg.hc_eps)          # [n, H]
        y = ops.rms_norm(y, self.weight(norm), cfg.rms_norm_eps)
        return ops.linear(y, self.weight("head.weight"))                                          # [n, V]

    # -- forwards
    def forward(self, ids, cache: KVCache, collect: dict | None = None):
        """Trunk over n new tokens at positions cache.length .. +n-1 -> (streams X_L [n, S, H], logits [n, V])."""
        cfg = self.config
        start, n = cache.length, len(ids)
        if start + n > cfg.max_position_embeddings:
            raise MtpRefError(f"sequence of {start + n} tokens exceeds max_position_embeddings "
                              f"{cfg.max_position_embeddings} of config.json; shorten the prompt or --max-new-tokens")
        self.begin_forward()
        positions = start + np.arange(n)
        e = self.embed(ids)
        if collect is not None:
            collect["embed"] = e
        X = np.repeat(e[:, None, :], cfg.hc_mult, axis=1)                         # [n, S, H]: S copies
        for i in range(cfg.num_hidden_layers):
            X = self.block(X, _W(self, f"layers.{i}."), i, cache.layers[i], start, positions, ids)
            if collect is not None:
                collect[f"layers.{i}.out"] = X
        return X, self.logits_from_streams(X, "", "norm.weight")

    def forward_greedy(self, ids, cache: KVCache):
        X, logits = self.forward(ids, cache)
        return X, np.argmax(logits, axis=-1)

    def mtp_forward(self, j: int, ids, prev, cache: LayerCache, positions: np.ndarray, last_only: bool = False):
        """MTP module j over n rows: row r pairs the previous streams prev[r] [S, H] with the embedding of ids[r].
        Returns (S_j [n, S, H], which feeds depth j+1, and logits [n, V] or [1, V] with last_only)."""
        cfg = self.config
        if j >= cfg.num_mtp_modules:
            raise MtpRefError(f"MTP module {j} requested but the checkpoint holds {cfg.num_mtp_modules}")
        p = f"mtp.{j}."
        W = _W(self, p)
        self.begin_forward()
        e = self.embed(ids)                                                                       # [n, H]
        if self.mtp_zero_pos0:
            e = np.where((np.asarray(positions) == 1)[:, None], np.float32(0), e)
        e = ops.rms_norm(e, W["enorm.weight"], cfg.rms_norm_eps)
        hs = ops.rms_norm(np.asarray(prev, np.float32), W["hnorm.weight"], cfg.rms_norm_eps)      # [n, S, H]
        x = ops.linear(e, W["e_proj.weight"])[:, None, :] + np.einsum("nsh,oh->nso", hs, W["h_proj.weight"])
        X = self.block(x, W, cfg.num_hidden_layers + j, cache, cache.length, np.asarray(positions), ids)
        return X, self.logits_from_streams(X, p, p + "norm.weight", last_only)

    def weight_nbytes(self, names) -> int:
        return sum(self.ckpt.stored_nbytes(n) for n in names if n in self.ckpt)


# ---------------------------------------------------------------------------------------------- loading

def check_tensors(ckpt, expected: dict, what: str) -> None:
    for name, shape in expected.items():
        if name not in ckpt:
            raise MtpRefError(f"{ckpt.path}: tensor '{name}' ({what}) is missing from the checkpoint")
        if tuple(ckpt.logical_shape(name)) != tuple(shape):   # packed MXFP4 experts: two values a byte
            raise MtpRefError(f"{ckpt.path}: tensor '{name}' has shape {list(ckpt.logical_shape(name))}, "
                              f"config.json implies {list(shape)}; config and weights do not match")


def count_mtp(cfg: V4Config, ckpt) -> int:
    """MTP modules the WEIGHTS hold (`mtp.{j}.` complete), whatever num_nextn_predict_layers declares."""
    n = 0
    while any(k.startswith(f"mtp.{n}.") for k in ckpt.names()):
        check_tensors(ckpt, mtp_tensors(cfg, n), f"MTP module {n}")
        n += 1
    return n


def load(path: Path, raw: dict) -> V4Model:
    """Entry for model.load_model (families.OWN_ENGINES)."""
    from .model import _limit_blas_threads, load_tokenizer
    from .weights import Checkpoint
    path = Path(path)
    cfg = config_from_raw(raw, str(path / "config.json"))
    q = cfg.quantization_config or {}
    if q and q.get("quant_method") not in ("fp8", None):
        raise MtpRefError(f"{path / 'config.json'}: quantization_config.quant_method '{q.get('quant_method')}' "
                          f"is not supported for deepseek_v4 (only the released 'fp8')")
    ckpt = Checkpoint(path, tuple(q.get("weight_block_size", (128, 128))))
    _limit_blas_threads(SimpleNamespace(hidden_size=cfg.hidden_size))
    check_tensors(ckpt, trunk_tensors(cfg), "trunk")
    cfg.num_mtp_modules = count_mtp(cfg, ckpt)
    return V4Model(path, cfg, ckpt, load_tokenizer(path))


def read_config(path: Path) -> dict | None:
    try:
        raw = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and raw.get("model_type") == MODEL_TYPE else None


# ---------------------------------------------------------------------------------------------- inspect

def missing_mtp_warning(cfg: V4Config, present: int) -> list[str]:
    """The engine's "declared but absent" message, with V4's own key and prefix."""
    if cfg.num_nextn_predict_layers <= present:
        return []
    return [f"config.json declares {cfg.mtp_declared_by}={cfg.num_nextn_predict_layers} but the weights hold "
            f"{present} MTP module(s): tensors under 'mtp.{present}.*' are missing. Conversions and quantisations "
            f"often drop them; MTP drafting is impossible with this copy."]


def _precision_v4(infos: dict, names) -> tuple:
    """Bits per weight and the main storage type of the matrices among names whose headers are known; a `.scale`
    counts with its weight and packed MXFP4 (I8 + `.scale`) holds two weights a byte."""
    from .inspect_ckpt import _numel, _precision
    from .weights import dot_scale
    rows = []
    for n in names:
        i = infos.get(n)
        if i is None or len(i.shape) < 2:
            continue
        sc = infos.get(dot_scale(n) or "")
        numel = _numel(i.shape) * (2 if i.dtype == "I8" and sc is not None else 1)
        rows.append(("MXFP4" if i.dtype == "I8" and sc is not None else i.dtype, i.nbytes + (sc.nbytes if sc else 0),
                     numel))
    return _precision(rows)


def mtp_by_name(cfg: V4Config, names) -> tuple[int, str | None]:
    """MTP modules whose tensors are all listed (count_mtp without shapes), and the first missing name of a module
    that is there in part (None if none is)."""
    n = 0
    while any(k.startswith(f"mtp.{n}.") for k in names):
        lacking = [k for k in mtp_tensors(cfg, n) if k not in names]
        if lacking:
            return n, lacking[0]
        n += 1
    return n, None


def inspect_report(path: Path) -> dict | None:
    """`inspect` for a DeepSeek-V4 checkpoint (the keys of inspect_ckpt.summarize), or None if it is not one. With
    shards missing (a 160 GB release checked from its index), names come from model.safetensors.index.json and
    dtypes / bytes from the shards present, as inspect_ckpt.summarize_index."""
    from collections import Counter

    from .inspect_ckpt import _module, _numel, _precision_warning, _sum_or_none, _weight_map
    from .safetensors_io import read_header
    from .weights import dot_scale
    path = Path(path)
    raw = read_config(path)
    if raw is None:
        return None
    cfg = config_from_raw(raw, str(path / "config.json"))
    idx = path / "model.safetensors.index.json"
    wmap = _weight_map(idx) if idx.exists() else None
    missing = sorted({s for s in wmap.values() if not (path / s).exists()}) if wmap else []
    warnings, notes = [], []
    if missing:
        infos = {}
        for shard in sorted(set(wmap.values()) - set(missing)):
            infos.update(read_header(path / shard))
        names = set(wmap)
        present, partial = mtp_by_name(cfg, names)
        absent = [n for n in trunk_tensors(cfg) if n not in names]
        if absent:
            warnings.append(f"the index lists no '{absent[0]}' ({len(absent)} trunk tensor(s) missing): "
                            f"this copy cannot run at all")
        if partial:
            warnings.append(f"MTP module {present} is incomplete: the index lists no '{partial}'")
        notes.append(f"{len(missing)} of {len(set(wmap.values()))} shard(s) listed in model.safetensors.index.json "
                     f"are not here (e.g. {missing[0]}): names come from the index; dtypes and bytes only from the "
                     f"shards present")
        total = json.loads(idx.read_text()).get("metadata", {}).get("total_size")
        file_bytes = int(total) if isinstance(total, (int, float)) else None
        shown = str(path)
    else:
        m = load(path, raw)
        cfg, infos, names, present = m.config, m.ckpt.infos, set(m.ckpt.names()), m.config.num_mtp_modules
        file_bytes, shown = sum(i.nbytes for i in infos.values()), str(m.path)
    trunk = trunk_tensors(cfg)
    scales = {n for n in names if n.endswith(".scale") and n[: -len(".scale")] + ".weight" in names}
    mtp, mtp_names = [], set()
    for j in range(present):
        mine = list(mtp_tensors(cfg, j))
        mtp_names.update(mine)
        mtp.append(_module(j, f"mtp.{j}.", {n: infos[n].dtype if n in infos else None for n in mine},
                           _sum_or_none(infos[n].nbytes + (infos[dot_scale(n)].nbytes if dot_scale(n) in infos else 0)
                                        if n in infos else None for n in mine)))
    (tb, tt), (mb, mt) = _precision_v4(infos, trunk), _precision_v4(infos, mtp_names)
    bits = {"trunk": tb, "mtp": mb}
    L = cfg.num_hidden_layers
    kinds = Counter(cfg.layer_types)
    notes += [f"attention: {kinds['sliding_attention']} sliding-only, {kinds['compressed_sparse_attention']} CSA "
              f"(pool {cfg.compress_rates['csa']}, indexer top-{cfg.index_topk}), "
              f"{kinds['heavily_compressed_attention']} HCA (pool {cfg.compress_rates['hca']}) layers; "
              f"window {cfg.sliding_window}",
              f"{cfg.hc_mult} hyper-connection streams (Sinkhorn {cfg.hc_sinkhorn_iters} iterations); "
              f"hash routing on the first {min(cfg.num_hash_layers, L)} layers"]
    known = all(n in infos for n in names)
    return {
        "path": shown, "format": "safetensors-index" if missing else "safetensors", "family": MODEL_TYPE,
        "model_type": MODEL_TYPE, "layers": L, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
        "attention": "sliding + compressed (CSA/HCA)", "linear_attention_layers": 0,
        "moe_layers": L, "routed_experts": cfg.n_routed_experts, "experts_per_token": cfg.num_experts_per_tok,
        "shared_experts": int(cfg.n_shared_experts), "mtp_declared": cfg.num_nextn_predict_layers,
        "mtp_present": present, "mtp_modules": mtp, "bits_per_weight": bits,
        "matrix_types": {"trunk": tt, "mtp": mt}, "dtypes": dict(Counter(i.dtype for i in infos.values())),
        "fp8_block": bool(cfg.quantization_config),
        "parameters": sum(_numel(infos[n].shape) * (2 if infos[n].dtype == "I8" and dot_scale(n) in scales else 1)
                          for n in names if n not in scales) if known else None,
        "checkpoint_bytes": file_bytes, "bytes_per_token_trunk": None,
        "unused_tensors": sorted(names - set(trunk) - mtp_names - scales
                                 - {n for n in names if any(n.startswith(x["prefix"]) for x in mtp)})[:20],
        "missing_shards": missing,
        "warnings": warnings + missing_mtp_warning(cfg, present) + _precision_warning(bits),
        "notes": notes,
    }
