"""DeepSeek Sparse Attention (DSA): the lightning indexer and top-k sparse MLA (DeepSeek-V3.2, GLM-5).

Each MLA block gets a small "indexer" that scores every cached token for every query and keeps the
`index_topk` best; the block's attention then sees only those keys. Per query s and cached token t:

    q_I = wq_b(c_q)                  [h_I, d_I]   from the block's q_lora latent c_q = q_a_layernorm(q_a_proj x)
    k_I = LayerNorm(wk x)            [d_I]        one key per token (shared by the index heads), cached as idx_k
    (RoPE on the first qk_rope_head_dim dims of both: half-split for V3.2, interleaved for GLM-5)
    w   = weights_proj(x) * h_I^-1/2 [h_I]
    I[s, t] = sum_h w[h] * relu(q_I[h] . k_I[t] * d_I^-1/2)
    S(s) = the index_topk tokens t <= s with the largest I[s, t] (all of them when there are fewer)
    attention(s) = softmax over t in S(s) of the usual MLA scores

DeepSeek's reference also applies a Hadamard rotation and FP8 to q_I / k_I: the rotation preserves dot
products and the FP8 is a storage choice, so (like transformers) this computes in float32 without them.
Ties in I are broken towards the earlier token (torch.topk leaves them unspecified; they need equal
scores to the last bit, e.g. several keys whose every head's score is <= 0).

GLM-5's `indexer_types` ("full" / "shared", from index_topk_pattern or index_topk_freq and
index_skip_topk_offset) let a "shared" layer reuse the top-k of the last full layer; shared layers ship
no indexer tensors. MTP blocks always run their own indexer.

GLM-5.x's `index_share_for_mtp_iteration` (DsaConfig.mtp_index_share) shares across draft steps instead of
layers: when one MTP module drafts several tokens in a row, step 0 runs the MTP block's indexer over its
rows and keeps the selection S(p) of its last row (position p, the last committed token); every later step
d >= 1 (query at p + d) skips the indexer and attends to S(p) as it is, so not to keys p+1 .. p+d, its own
included (vLLM llm_base_proposer.propose: set_skip_topk(False) for the first pass, then
compact_topk_indices(token_indices_to_sample) + set_skip_topk(True); TensorRT-LLM PR 15806 the same).
It changes drafts, never the verified output.

Three forms of the attention, equal up to float32 rounding (tests/test_families_dsa.py):
  gathered_attention  reads only the top-k rows (what a sparse kernel does; O(k) per query),
  masked_attention    scores every row and masks the unselected ones (the readable twin),
  and dense MLA (Model.dsa_impl = "dense": no indexer; what llama.cpp runs for V3.2's MTP layer), which
  equals the two when index_topk >= the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ops
from .config import ModelConfig
from .errors import MtpRefError


@dataclass(frozen=True)
class DsaConfig:
    index_topk: int             # index_topk: keys kept per query
    index_n_heads: int          # index_n_heads: h_I
    index_head_dim: int         # index_head_dim: d_I
    indexer_types: tuple[str, ...]  # per trunk layer: "full" (own indexer) or "shared" (GLM-5)
    mtp_index_share: bool = False   # index_share_for_mtp_iteration: draft steps >= 1 reuse step 0's top-k


def dsa_config(cfg: ModelConfig) -> DsaConfig:
    raw, L = cfg.raw, cfg.num_hidden_layers
    for k in ("index_topk", "index_n_heads", "index_head_dim"):
        if not raw.get(k):
            raise MtpRefError(f"config.json: a DSA model needs '{k}' (the lightning indexer's size)")
    types = raw.get("indexer_types")
    pattern = raw.get("index_topk_pattern")
    if types is None and pattern is not None:  # "FFS..." or a list
        types = [{"F": "full", "S": "shared"}.get(c, c) for c in pattern]
    if types is None:  # transformers' GlmMoeDsaConfig rule; with the defaults every layer is full (V3.2)
        freq, offset = max(int(raw.get("index_topk_freq") or 1), 1), int(raw.get("index_skip_topk_offset", 2))
        types = ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(L)]
    types = tuple(types)
    if len(types) < L or set(types) - {"full", "shared"} or types[0] != "full":
        raise MtpRefError(f"config.json: indexer_types must give 'full' or 'shared' for all {L} layers, the first "
                          f"one 'full' (got {list(types)})")
    share = raw.get("index_share_for_mtp_iteration", False)
    if not isinstance(share, bool):
        raise MtpRefError(f"config.json: index_share_for_mtp_iteration must be true or false (got {share!r})")
    d = DsaConfig(int(raw["index_topk"]), int(raw["index_n_heads"]), int(raw["index_head_dim"]), types[:L], share)
    if d.index_head_dim < cfg.qk_rope_head_dim:
        raise MtpRefError(f"config.json: index_head_dim {d.index_head_dim} is smaller than qk_rope_head_dim "
                          f"{cfg.qk_rope_head_dim}, which the indexer rotates")
    return d


def indexer_tensors(cfg: ModelConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """The indexer's tensors in block `layer` (none for a "shared" trunk layer), as released."""
    d = dsa_config(cfg)
    if layer < cfg.num_hidden_layers and d.indexer_types[layer] == "shared":
        return {}
    p, H, h, D = "self_attn.indexer.", cfg.hidden_size, d.index_n_heads, d.index_head_dim
    return {p + "wq_b.weight": (h * D, cfg.q_lora_rank), p + "wk.weight": (D, H), p + "k_norm.weight": (D,),
            p + "k_norm.bias": (D,), p + "weights_proj.weight": (h, H)}


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean(np.square(x - mu), axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b              # [..., D]


def indexer_qk(x, cq, wq_b, wk, k_norm_w, k_norm_b, weights_proj, d: DsaConfig, cos, sin, style: str):
    """Indexer queries q_I [n, h_I, d_I], keys k_I [n, d_I] and head weights w [n, h_I] of n new tokens."""
    n = x.shape[0]
    q = ops.linear(cq, wq_b).reshape(n, d.index_n_heads, d.index_head_dim)    # [n, rq] -> [n, h_I, d_I]
    k = layer_norm(ops.linear(x, wk), k_norm_w, k_norm_b)                      # [n, H] -> [n, d_I]
    q = ops.apply_rope(q, cos, sin, style)                                     # first qk_rope_head_dim dims
    k = ops.apply_rope(k[:, None, :], cos, sin, style)[:, 0]
    w = ops.linear(x, weights_proj) * d.index_n_heads ** -0.5                 # [n, h_I]
    return q, k, w


def index_scores(q: np.ndarray, k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """I[s, t] = sum_h w[s, h] relu(q[s, h] . k[t] / sqrt(d_I)):  q [n, h, d], k [T, d], w [n, h] -> [n, T]."""
    s = np.maximum(np.einsum("nhd,td->nht", q, k) * q.shape[-1] ** -0.5, 0.0)  # [n, h, T]
    return np.einsum("nh,nht->nt", w, s)


def index_scores_naive(q, k, w) -> np.ndarray:
    n, h, dI = q.shape
    out = np.zeros((n, k.shape[0]), np.float64)
    for s in range(n):
        for t in range(k.shape[0]):
            out[s, t] = sum(w[s, j] * max(float(q[s, j] @ k[t]) * dI ** -0.5, 0.0) for j in range(h))
    return out.astype(np.float32)


def select_topk(scores: np.ndarray, start: int, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k visible tokens per query: (idx [n, K], valid [n, K]), K = min(topk, T).

    Query i sits at position start + i and sees tokens 0 .. start + i; when it sees fewer than K, the
    slots past them are filled with invisible tokens and marked invalid."""
    n, T = scores.shape
    visible = np.arange(T)[None, :] <= (start + np.arange(n))[:, None]            # [n, T]
    ranked = np.argsort(np.where(visible, -scores, np.inf), axis=-1, kind="stable")  # best first, earlier on ties
    idx = ranked[:, : min(topk, T)]                                              # [n, K]
    return idx, np.take_along_axis(visible, idx, axis=-1)


def select_topk_naive(scores, start: int, topk: int) -> list[set[int]]:
    return [set(sorted(range(start + i + 1), key=lambda t: (-scores[i, t], t))[:topk]) for i in range(scores.shape[0])]


def last_row(sel: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The selection of the last query row, ([1, K], [1, K]): what index_share_for_mtp_iteration hands on."""
    idx, valid = sel
    return idx[-1:].copy(), valid[-1:].copy()


def keep_mask(idx: np.ndarray, valid: np.ndarray, T: int) -> np.ndarray:
    """[n, T] True where token t is selected (and visible) for query i."""
    keep = np.zeros((idx.shape[0], T), bool)
    np.put_along_axis(keep, idx, valid, axis=-1)
    return keep


def masked_attention(q, k, v, scale: float, keep: np.ndarray) -> np.ndarray:
    """ops.causal_attention with an arbitrary [n, T] mask: q [n, h, d], k [T, g, d], v [T, g, dv] -> [n, h*dv]."""
    n, h, d = q.shape
    T, g, dv = v.shape
    rep = h // g
    qg = q.reshape(n, g, rep, d).transpose(1, 2, 0, 3).reshape(g, rep * n, d)  # [g, rep*n, d]
    s = qg @ k.transpose(1, 2, 0) * scale                                       # [g, rep*n, T]
    s = np.where(np.tile(keep, (rep, 1))[None], s, -np.inf)
    o = ops.softmax(s, axis=-1) @ v.transpose(1, 0, 2)                          # [g, rep*n, dv]
    return o.reshape(g, rep, n, dv).transpose(2, 0, 1, 3).reshape(n, h * dv)


def gathered_attention(q, k, v, scale: float, idx: np.ndarray, valid: np.ndarray,
                       rows_per_block: int | None = None) -> np.ndarray:
    """Attention over the selected rows only: q [n, h, d], k [T, g, d], v [T, g, dv], idx / valid [n, K].
    Queries go in blocks so that the gathered keys stay near 64 MB (a long prefill would gather n K rows)."""
    n, h, d = q.shape
    g, dv = v.shape[1], v.shape[2]
    step = rows_per_block or max(1, (1 << 24) // max(1, idx.shape[1] * g * (d + dv)))
    if n > step:
        return np.concatenate([gathered_attention(q[i:i + step], k, v, scale, idx[i:i + step], valid[i:i + step], step)
                               for i in range(0, n, step)])
    qg = q.reshape(n, g, h // g, d)                                             # [n, g, rep, d]
    kg, vg = k[idx], v[idx]                                                     # [n, K, g, d], [n, K, g, dv]
    s = np.einsum("ngrd,nkgd->ngrk", qg, kg) * scale                            # [n, g, rep, K]
    s = np.where(valid[:, None, None, :], s, -np.inf)
    o = np.einsum("ngrk,nkgv->ngrv", ops.softmax(s, axis=-1), vg)               # [n, g, rep, dv]
    return o.reshape(n, h * dv)
