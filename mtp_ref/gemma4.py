"""Gemma 4: the text model (`gemma4` / `gemma4_text`) and its MTP assistant drafter (`gemma4_assistant`).

Gemma 4 does not fit ModelConfig / the generic block of model.py (per-type head dims and KV heads, sandwich
norms, KV-shared layers, per-layer embeddings, proportional RoPE), so it lives here, in the same picoGPT style.
Weights are read by their released names; the multimodal release's `model.language_model.` is read as
`model.` and the vision / audio towers are never touched.

Target block i (transformers 5.23 Gemma4TextDecoderLayer):
    a = rms(x) w_in
    q = RoPE_tau(q_norm(W_q a));  k = RoPE_tau(k_norm(W_k a));  v = rms(W_v a)   (no weight; W_k on k_eq_v layers)
    x = x + post_attn_norm(W_o attn(q, k, v))                 scale 1.0, sliding layers see the last W keys
    m = mlp(pre_ff_norm(x))                                   GeGLU: W_d (gelu_tanh(W_g .) * W_u .)
    MoE layers: m = post_ff_norm_1(m) + post_ff_norm_2(experts(pre_ff_norm_2(x)))  routed on x
    x = x + post_ff_norm(m)
    per-layer embeddings (E2B/E4B): x = x + post_ple_norm(W_p (gelu_tanh(W_gate x) * ple_i))
    x = x * layer_scalar
KV-shared layers (the last num_kv_shared_layers) have no k/v weights: they read the K/V of the last non-shared
layer of their attention type. logits = c tanh(E h / c) with c = final_logit_softcapping, E the tied embedding.

The assistant: see Gemma4Assistant.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import ops
from .cache import KVCache
from .config import ModelConfig, RopeConfig
from .errors import MtpRefError
from .model import TextCodec, _limit_blas_threads, load_tokenizer
from .safetensors_io import f32_to_bf16_bits, bf16_to_f32
from .weights import Checkpoint

TARGET_TYPES = ("gemma4", "gemma4_text")
ASSISTANT_TYPE = "gemma4_assistant"
TEXT_ALIASES = ("model.language_model.",)        # Gemma4ForConditionalGeneration keeps the text model here
LAYER_TYPES = ("sliding_attention", "full_attention")


# ---------------------------------------------------------------------------------------------- config

@dataclass
class Gemma4Text:
    """The text config (`text_config` of the release), with transformers 5.23's defaults for absent keys."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int                          # sliding layers
    global_head_dim: int                   # full layers
    num_global_key_value_heads: int | None  # full layers, only when attention_k_eq_v (as transformers reads it)
    layer_types: list[str]
    sliding_window: int
    rope: dict[str, dict]                  # rope_parameters keyed by layer type
    rms_norm_eps: float
    max_position_embeddings: int
    final_logit_softcapping: float | None
    attention_k_eq_v: bool
    num_kv_shared_layers: int
    hidden_size_per_layer_input: int       # per-layer embeddings (E2B/E4B); 0: none
    vocab_size_per_layer_input: int
    use_double_wide_mlp: bool
    enable_moe_block: bool
    num_experts: int
    top_k_experts: int
    moe_intermediate_size: int
    tie_word_embeddings: bool
    raw: dict = field(default_factory=dict, repr=False)

    # per-layer geometry
    def is_sliding(self, i: int) -> bool:
        return self.layer_types[i] == "sliding_attention"

    def head_dim_of(self, i: int) -> int:
        return self.head_dim if self.is_sliding(i) else self.global_head_dim

    def kv_heads_of(self, i: int) -> int:
        if not self.is_sliding(i) and self.attention_k_eq_v and self.num_global_key_value_heads:
            return self.num_global_key_value_heads
        return self.num_key_value_heads

    def k_eq_v(self, i: int) -> bool:
        return self.attention_k_eq_v and not self.is_sliding(i)

    @property
    def first_shared(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    def kv_source(self, i: int) -> int:
        """The layer whose K/V layer i attends to: itself, or (KV-shared layers) the last non-shared layer of its
        type. Also the rule for what the assistant reads (kv_sources)."""
        if i < self.first_shared:
            return i
        return self.kv_sources()[self.layer_types[i]]

    def kv_sources(self) -> dict[str, int]:
        """Per attention type, the last layer of that type among the non-shared layers (the layers whose K/V the
        shared layers and the assistant reuse; transformers' kv_sharing_modes 'store', rule of vLLM/llama.cpp)."""
        out = {}
        for i in range(self.first_shared):
            out[self.layer_types[i]] = i
        return out

    def mlp_width(self, i: int) -> int:
        return self.intermediate_size * (2 if self.use_double_wide_mlp and i >= self.first_shared else 1)


def text_config_from(raw: dict, source: str, assistant: bool = False) -> Gemma4Text:
    """Gemma4TextConfig's fields from a text config dict (defaults as transformers 5.23 sets them). assistant:
    every layer reads a target's K/V, so none of its own needs to produce any."""
    for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if k not in raw:
            raise MtpRefError(f"{source}: required field '{k}' is missing")
    L = int(raw["num_hidden_layers"])
    lt = raw.get("layer_types")
    if lt is None:  # transformers' default: 5 sliding then 1 full
        lt = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(L)]
    lt = list(lt)
    bad = sorted(set(lt) - set(LAYER_TYPES))
    if bad or len(lt) != L:
        raise MtpRefError(f"{source}: layer_types must list 'sliding_attention' / 'full_attention' for all {L} "
                          f"layers (got {len(lt)} entries{', unknown ' + str(bad) if bad else ''})")
    if lt[-1] != "full_attention":  # transformers forces this too (with a warning)
        lt[-1] = "full_attention"
    rope = raw.get("rope_parameters") or {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0}}
    for t in set(lt):
        r = rope.get(t)
        if not isinstance(r, dict) or r.get("rope_type", "default") not in ("default", "proportional"):
            raise MtpRefError(f"{source}: rope_parameters['{t}'] must be a dict with rope_type 'default' or "
                              f"'proportional' (got {r!r})")
    act = raw.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise MtpRefError(f"{source}: hidden_activation '{act}' is not supported (Gemma 4 uses gelu_pytorch_tanh)")
    if raw.get("attention_bias"):
        raise MtpRefError(f"{source}: attention_bias is true; released Gemma 4 checkpoints have no attention bias")
    if raw.get("use_bidirectional_attention") == "all":
        raise MtpRefError(f"{source}: use_bidirectional_attention 'all' (an encoder) cannot generate text")
    H, nh = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    nkv = int(raw.get("num_key_value_heads", 4))
    g = Gemma4Text(
        vocab_size=int(raw["vocab_size"]), hidden_size=H, intermediate_size=int(raw.get("intermediate_size", 9216)),
        num_hidden_layers=L, num_attention_heads=nh, num_key_value_heads=nkv,
        head_dim=int(raw.get("head_dim", 256)), global_head_dim=int(raw.get("global_head_dim", 512)),
        num_global_key_value_heads=raw.get("num_global_key_value_heads"), layer_types=lt,
        sliding_window=int(raw.get("sliding_window", 512)), rope=rope,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 131_072)),
        final_logit_softcapping=raw.get("final_logit_softcapping"),
        attention_k_eq_v=bool(raw.get("attention_k_eq_v", False)),
        num_kv_shared_layers=int(raw.get("num_kv_shared_layers", 0) or 0),
        hidden_size_per_layer_input=int(raw.get("hidden_size_per_layer_input", 256) or 0),
        vocab_size_per_layer_input=int(raw.get("vocab_size_per_layer_input", 262_144) or 0),
        use_double_wide_mlp=bool(raw.get("use_double_wide_mlp", False)),
        enable_moe_block=bool(raw.get("enable_moe_block", False)),
        num_experts=int(raw.get("num_experts") or 0), top_k_experts=int(raw.get("top_k_experts") or 0),
        moe_intermediate_size=int(raw.get("moe_intermediate_size") or 0),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)), raw=raw)
    for i in range(L):
        if nh % g.kv_heads_of(i):
            raise MtpRefError(f"{source}: num_attention_heads {nh} is not a multiple of the {g.kv_heads_of(i)} "
                              f"KV heads of layer {i}")
    if not assistant and g.num_kv_shared_layers and set(lt[: g.first_shared]) != set(lt):
        raise MtpRefError(f"{source}: num_kv_shared_layers {g.num_kv_shared_layers} leaves no non-shared layer of "
                          f"every attention type to take K/V from")
    if g.enable_moe_block and not (g.num_experts and g.top_k_experts and g.moe_intermediate_size):
        raise MtpRefError(f"{source}: enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size")
    return g


def read_config_json(path: Path) -> dict:
    f = Path(path) / "config.json"
    if not Path(path).exists():
        raise MtpRefError(f"{path}: no such checkpoint directory")
    if not f.exists():
        raise MtpRefError(f"{f}: config.json is missing; a Hugging Face checkpoint directory needs one")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise MtpRefError(f"{f}: not valid JSON ({e})") from None


def target_text_config(raw: dict, source: str) -> Gemma4Text:
    """Flat `gemma4_text` config, or the multimodal release (`gemma4` with a nested `text_config`)."""
    if raw.get("model_type") == "gemma4":
        if not isinstance(raw.get("text_config"), dict):
            raise MtpRefError(f"{source}: a 'gemma4' config needs a 'text_config' object (the text model)")
        inner = dict(raw["text_config"])
        if "tie_word_embeddings" in raw and "tie_word_embeddings" not in inner:
            inner["tie_word_embeddings"] = raw["tie_word_embeddings"]
        for k in ("eos_token_id", "bos_token_id"):
            inner.setdefault(k, raw.get(k))
        return text_config_from(inner, source)
    return text_config_from(raw, source)


# ---------------------------------------------------------------------------------------------- maths

def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def geglu_mlp(x, wg, wu, wd):
    return ops.linear(gelu_tanh(ops.linear(x, wg)) * ops.linear(x, wu), wd)   # [n, H] -> [n, I] -> [n, H]


def rms(x: np.ndarray, eps: float) -> np.ndarray:
    """The weightless RMSNorm (v_norm, router.norm)."""
    return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)


def round_to_dtype(x: float, dtype: str) -> np.float32:
    """x as the checkpoint's weight dtype would hold it (transformers multiplies the embedding by
    sqrt(H).to(weight dtype): sqrt(2560) = 50.596 becomes 50.5 in bf16)."""
    if dtype == "BF16":
        return bf16_to_f32(f32_to_bf16_bits(np.array([x], np.float32)))[0]
    if dtype == "F16":
        return np.float32(np.float16(x))
    return np.float32(x)


def rope_inv_freq(params: dict, head_dim: int) -> np.ndarray:
    """[head_dim/2] inverse frequencies. "proportional" (Gemma 4 full layers): only the first
    int(p * head_dim / 2) frequencies rotate, each theta^(-2i/head_dim) over the FULL head dim; the rest are 0
    (cos 1, sin 0: passed through). Applied with rotate_half over the whole head."""
    theta = float(params.get("rope_theta", 10000.0))
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)      # [d/2]
    if params.get("rope_type", "default") == "proportional":
        n_rot = int(float(params.get("partial_rotary_factor", 1.0)) * head_dim // 2)
        inv = np.concatenate([inv[:n_rot], np.zeros(head_dim // 2 - n_rot)])
    return inv / float(params.get("factor", 1.0))


def rope_half(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """rotate_half RoPE on all of x [n, h, d] with cos/sin [n, d/2]."""
    return ops.apply_rope(x, cos, sin, "half")


def windowed_attention(q, k, v, positions, window: int | None) -> np.ndarray:
    """q [n, h, d] at absolute positions [n]; k, v [T, g, d] at positions 0..T-1. Scale 1.0 (q and k are
    RMS-normed). Key j is visible to a query at p when j <= p and, on sliding layers, p - j < window."""
    n, nh, d = q.shape
    g = k.shape[1]
    qg = q.reshape(n, g, nh // g, d)                                             # [n, g, r, d]
    s = np.einsum("ngrd,tgd->ngrt", qg, k)                                       # [n, g, r, T]
    j = np.arange(k.shape[0])
    vis = j[None, :] <= positions[:, None]                                       # [n, T]
    if window is not None:
        vis &= positions[:, None] - j[None, :] < window
    s = np.where(vis[:, None, None, :], s, -np.inf)
    p = ops.softmax(s)                                                           # [n, g, r, T]
    return np.einsum("ngrt,tgd->ngrd", p, v).reshape(n, nh * d)                  # [n, h*d]


def route(x, W, top_k: int, eps: float):
    """Gemma 4 router on the block input x [n, H]: softmax over experts of proj(rms(x) * scale / sqrt(H)),
    top-k, renormalised, times per_expert_scale. Returns (indices [n, k], weights [n, k])."""
    z = rms(x, eps) * W["router.scale"] * x.shape[-1] ** -0.5
    p = ops.softmax(ops.linear(z, W["router.proj.weight"]))                      # [n, E]
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]                      # [n, k]
    w = np.take_along_axis(p, idx, axis=-1)
    w = w / w.sum(-1, keepdims=True)
    return idx, w * W["router.per_expert_scale"][idx]


def experts(x, idx, w, gate_up, down):
    """Sum over k of w[:, k] * GeGLU expert idx[:, k] (fused gate_up [E, 2I, H], gate rows first; down [E, H, I])."""
    y = np.zeros_like(x)
    for e in np.unique(idx):
        rows, slot = np.nonzero(idx == e)
        gu = ops.linear(x[rows], gate_up[e])                                     # [m, 2I]
        I = gu.shape[-1] // 2
        y[rows] += ops.linear(gelu_tanh(gu[:, :I]) * gu[:, I:], down[e]) * w[rows, slot][:, None]
    return y


def softcap(logits: np.ndarray, c: float | None) -> np.ndarray:
    return logits if not c else c * np.tanh(logits / c)


def centroid_logits(n, E, centroids, ordering, top_k: int) -> np.ndarray:
    """The E2B/E4B assistant head (transformers Gemma4AssistantMaskedEmbedder), one row n [d]: the top_k
    clusters of centroids @ n get real logits E[ids] @ n for their tokens (token_ordering viewed as
    [C, V/C]); every other token gets min(real logits) - 1."""
    C = centroids.shape[0]
    top = np.argsort(-(centroids @ n), kind="stable")[:top_k]                    # [k] clusters
    ids = ordering.reshape(C, -1)[top].reshape(-1)                               # [k * V/C] token ids
    sel = E[ids] @ n                                                             # [k * V/C]
    out = np.full(E.shape[0], sel.min() - 1.0, np.float32)
    out[ids] = sel
    return out


# ---------------------------------------------------------------------------------------------- weights

class _W:
    """W["x.weight"] -> the checkpoint tensor prefix + "x.weight", metered on the owning model."""

    def __init__(self, model, prefix: str):
        self.model, self.prefix = model, prefix

    def __getitem__(self, name):
        return self.model.weight(self.prefix + name)

    def has(self, name):
        return self.prefix + name in self.model.ckpt


class _Weights:
    def weight(self, name: str) -> np.ndarray:
        if name not in self._touched:
            self._touched.add(name)
            self.bytes_read += self.ckpt.stored_nbytes(name)
        return self.ckpt.get(name)

    def begin_forward(self):
        self._touched = set()

    def reset_meter(self):
        self.bytes_read, self._touched = 0, set()

    def check(self, expected: dict, what: str):
        from .model import check_tensors
        check_tensors(self.ckpt, expected, what)


def layer_tensors(g: Gemma4Text, i: int, q_only: bool = False) -> dict[str, tuple]:
    """Names (relative to model.layers.{i}.) and shapes of one Gemma 4 block, as released. q_only: an assistant
    layer or a KV-shared target layer (no k/v projections or norms)."""
    H, nh, d, nkv = g.hidden_size, g.num_attention_heads, g.head_dim_of(i), g.kv_heads_of(i)
    t = {f"{n}.weight": (H,) for n in ("input_layernorm", "post_attention_layernorm",
                                       "pre_feedforward_layernorm", "post_feedforward_layernorm")}
    t.update({"layer_scalar": (1,), "self_attn.q_proj.weight": (nh * d, H), "self_attn.q_norm.weight": (d,),
              "self_attn.o_proj.weight": (H, nh * d)})
    if not q_only:
        t["self_attn.k_proj.weight"] = (nkv * d, H)
        t["self_attn.k_norm.weight"] = (d,)
        if not g.k_eq_v(i):
            t["self_attn.v_proj.weight"] = (nkv * d, H)
    I = g.mlp_width(i)
    t.update({"mlp.gate_proj.weight": (I, H), "mlp.up_proj.weight": (I, H), "mlp.down_proj.weight": (H, I)})
    if g.enable_moe_block:
        E, Im = g.num_experts, g.moe_intermediate_size
        t.update({"router.proj.weight": (E, H), "router.scale": (H,), "router.per_expert_scale": (E,),
                  "experts.gate_up_proj": (E, 2 * Im, H), "experts.down_proj": (E, H, Im)})
        for n in ("post_feedforward_layernorm_1", "post_feedforward_layernorm_2", "pre_feedforward_layernorm_2"):
            t[f"{n}.weight"] = (H,)
    if g.hidden_size_per_layer_input:
        P = g.hidden_size_per_layer_input
        t.update({"per_layer_input_gate.weight": (P, H), "per_layer_projection.weight": (H, P),
                  "post_per_layer_input_norm.weight": (H,)})
    return t


def target_tensors(g: Gemma4Text) -> dict[str, tuple]:
    H, V, L = g.hidden_size, g.vocab_size, g.num_hidden_layers
    t = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not g.tie_word_embeddings:
        t["lm_head.weight"] = (V, H)
    if g.hidden_size_per_layer_input:
        P = g.hidden_size_per_layer_input
        t.update({"model.embed_tokens_per_layer.weight": (g.vocab_size_per_layer_input, L * P),
                  "model.per_layer_model_projection.weight": (L * P, H),
                  "model.per_layer_projection_norm.weight": (P,)})
    for i in range(L):
        for k, s in layer_tensors(g, i, q_only=i >= g.first_shared).items():
            t[f"model.layers.{i}.{k}"] = s
    return t


# ---------------------------------------------------------------------------------------------- target

class Gemma4Model(_Weights, TextCodec):
    """A Gemma 4 text model with the engine's model interface (forward / forward_greedy / new_cache / ...)."""

    def __init__(self, path: Path, g: Gemma4Text, ckpt: Checkpoint, tokenizer=None):
        self.path, self.g, self.ckpt, self.tokenizer = Path(path), g, ckpt, tokenizer
        raw = g.raw
        eos = raw.get("eos_token_id")
        # what the engine's generic code reads (speculative.py, cli.py)
        self.config = ModelConfig(
            model_type=raw.get("model_type", "gemma4_text"), vocab_size=g.vocab_size, hidden_size=g.hidden_size,
            intermediate_size=g.intermediate_size, num_hidden_layers=g.num_hidden_layers,
            num_attention_heads=g.num_attention_heads, num_key_value_heads=g.num_key_value_heads,
            head_dim=g.head_dim, rms_norm_eps=g.rms_norm_eps, max_position_embeddings=g.max_position_embeddings,
            rope=RopeConfig(theta=float(g.rope["sliding_attention"].get("rope_theta", 10000.0))
                            if "sliding_attention" in g.rope else 10000.0),
            tie_word_embeddings=g.tie_word_embeddings, layer_types=list(g.layer_types),
            eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            bos_token_id=raw.get("bos_token_id"), raw=raw)
        self.spec = None
        self.inv_freq = {t: rope_inv_freq(g.rope[t], g.head_dim if t == "sliding_attention" else g.global_head_dim)
                         for t in set(g.layer_types)}
        emb_dtype = ckpt.dtype("model.embed_tokens.weight")
        self.embed_scale = round_to_dtype(math.sqrt(g.hidden_size), emb_dtype)
        self.ple_scale = (round_to_dtype(math.sqrt(g.hidden_size_per_layer_input),
                                         ckpt.dtype("model.embed_tokens_per_layer.weight"))
                          if g.hidden_size_per_layer_input else None)
        # non-shared layers own a cache; shared layers read their source's
        self.kv_index = {i: k for k, i in enumerate(range(g.first_shared))}
        self.bytes_read, self._touched = 0, set()

    # the interface speculative.py expects
    def new_cache(self, keep_snapshots: bool = True) -> KVCache:
        return KVCache(self.g.first_shared)

    def rope(self, layer_type: str, positions: np.ndarray):
        return ops.rope_tables(self.inv_freq[layer_type], np.asarray(positions))

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """E[ids] * sqrt(H) (the scale in the embedding's dtype), [n] -> [n, H]."""
        ids = np.asarray(ids, np.int64)
        V = self.g.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            bad = int(ids.max() if ids.max() >= V else ids.min())
            raise MtpRefError(f"token id {bad} is outside the vocabulary [0, {V})")
        name = "model.embed_tokens.weight"
        self.bytes_read += self.ckpt.stored_nbytes(name) // V * len(np.unique(ids))
        return self.ckpt.get(name)[ids] * self.embed_scale

    def per_layer_inputs(self, ids, x) -> np.ndarray:
        """E2B/E4B per-layer embeddings [n, L, P]: (norm(W x / sqrt(H)) + E_pl[ids] sqrt(P)) / sqrt(2)."""
        g = self.g
        n, L, P = len(ids), g.num_hidden_layers, g.hidden_size_per_layer_input
        proj = ops.linear(x, self.weight("model.per_layer_model_projection.weight")) * g.hidden_size ** -0.5
        proj = ops.rms_norm(proj.reshape(n, L, P), self.weight("model.per_layer_projection_norm.weight"),
                            g.rms_norm_eps)                                      # [n, L, P]
        name = "model.embed_tokens_per_layer.weight"                             # only the gathered rows are read
        self.bytes_read += self.ckpt.stored_nbytes(name) // self.ckpt.shape(name)[0] * len(np.unique(ids))
        tok = self.ckpt.get(name)[np.asarray(ids)].reshape(n, L, P) * self.ple_scale
        return (proj + tok) * 2.0 ** -0.5

    def attention(self, a, W: _W, i: int, cache: KVCache, positions):
        g = self.g
        n, nh, d = a.shape[0], g.num_attention_heads, g.head_dim_of(i)
        t = g.layer_types[i]
        cos, sin = self.rope(t, positions)
        q = ops.linear(a, W["self_attn.q_proj.weight"]).reshape(n, nh, d)
        q = rope_half(ops.rms_norm(q, W["self_attn.q_norm.weight"], g.rms_norm_eps), cos, sin)
        c = cache.layers[self.kv_index[g.kv_source(i)]]
        if i < g.first_shared:
            nkv = g.kv_heads_of(i)
            kr = ops.linear(a, W["self_attn.k_proj.weight"]).reshape(n, nkv, d)      # raw K: also V on k_eq_v layers
            vr = kr if g.k_eq_v(i) else ops.linear(a, W["self_attn.v_proj.weight"]).reshape(n, nkv, d)
            k = rope_half(ops.rms_norm(kr, W["self_attn.k_norm.weight"], g.rms_norm_eps), cos, sin)
            kv = c.append(k=k, v=rms(vr, g.rms_norm_eps))                         # [T, g, d] each
            K, V = kv["k"], kv["v"]
        else:  # KV-shared: the source layer ran earlier in this forward, so its cache already holds these rows
            K, V = c.view("k"), c.view("v")
        positions, window = np.asarray(positions), g.sliding_window if g.is_sliding(i) else None
        lo = 0 if window is None else max(0, int(positions[0]) - window + 1)   # keys no query here can see
        o = windowed_attention(q, K[lo:], V[lo:], positions - lo, window)       # [n, h*d]
        return ops.linear(o, W["self_attn.o_proj.weight"])                       # [n, H]

    def block(self, x, i: int, cache: KVCache, positions, ple=None):
        g, eps = self.g, self.g.rms_norm_eps
        W = _W(self, f"model.layers.{i}.")
        a = ops.rms_norm(x, W["input_layernorm.weight"], eps)
        x = x + ops.rms_norm(self.attention(a, W, i, cache, positions), W["post_attention_layernorm.weight"], eps)
        m = geglu_mlp(ops.rms_norm(x, W["pre_feedforward_layernorm.weight"], eps), W["mlp.gate_proj.weight"],
                      W["mlp.up_proj.weight"], W["mlp.down_proj.weight"])
        if g.enable_moe_block:  # dense MLP and routed experts side by side, each with its own norms
            idx, w = route(x, W, g.top_k_experts, eps)
            e = experts(ops.rms_norm(x, W["pre_feedforward_layernorm_2.weight"], eps), idx, w,
                        W["experts.gate_up_proj"], W["experts.down_proj"])
            m = (ops.rms_norm(m, W["post_feedforward_layernorm_1.weight"], eps)
                 + ops.rms_norm(e, W["post_feedforward_layernorm_2.weight"], eps))
        x = x + ops.rms_norm(m, W["post_feedforward_layernorm.weight"], eps)
        if ple is not None:
            p = gelu_tanh(ops.linear(x, W["per_layer_input_gate.weight"])) * ple[:, i]   # [n, P]
            x = x + ops.rms_norm(ops.linear(p, W["per_layer_projection.weight"]),
                                 W["post_per_layer_input_norm.weight"], eps)
        return x * W["layer_scalar"]

    def head_weight(self) -> np.ndarray:
        return self.weight("model.embed_tokens.weight" if self.g.tie_word_embeddings else "lm_head.weight")

    def forward(self, ids, cache: KVCache, collect: dict | None = None):
        """n new tokens at positions cache.length .. +n-1 -> (h [n, H] after the final norm, logits [n, V]
        after softcapping)."""
        g = self.g
        start, n = cache.length, len(ids)
        if start + n > g.max_position_embeddings:
            raise MtpRefError(f"sequence of {start + n} tokens exceeds max_position_embeddings "
                              f"{g.max_position_embeddings} of config.json; shorten the prompt or --max-new-tokens")
        self.begin_forward()
        positions = np.arange(start, start + n)
        x = self.embed(ids)                                                      # [n, H]
        ple = self.per_layer_inputs(ids, x) if g.hidden_size_per_layer_input else None
        if collect is not None:
            collect["embed"] = x
        for i in range(g.num_hidden_layers):
            x = self.block(x, i, cache, positions, ple)
            if collect is not None:
                collect[f"layers.{i}.out"] = x
        h = ops.rms_norm(x, self.weight("model.norm.weight"), g.rms_norm_eps)    # [n, H]
        return h, softcap(ops.linear(h, self.head_weight()), g.final_logit_softcapping)

    def forward_greedy(self, ids, cache: KVCache):
        h, logits = self.forward(ids, cache)
        return h, np.argmax(logits, axis=-1)

    def shared_kv(self, cache: KVCache) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per attention type, the cached (K, V) [T, g, d] the assistant reads."""
        return {t: (cache.layers[self.kv_index[i]].view("k"), cache.layers[self.kv_index[i]].view("v"))
                for t, i in self.g.kv_sources().items()}


def load_target(path: Path, raw: dict | None = None) -> Gemma4Model:
    path = Path(path)
    raw = read_config_json(path) if raw is None else raw
    src = str(path / "config.json")
    g = target_text_config(raw, src)
    q = raw.get("quantization_config")
    if q:
        raise MtpRefError(f"{src}: quantization_config ({q.get('quant_method')}) is not supported for Gemma 4; "
                          f"use the bf16 release")
    ckpt = Checkpoint(path, aliases=TEXT_ALIASES)
    m = Gemma4Model(path, g, ckpt, load_tokenizer(path))
    m.check(target_tensors(g), "trunk")
    _limit_blas_threads(m.config)
    return m


# ---------------------------------------------------------------------------------------------- assistant

class Gemma4Assistant(_Weights):
    """The MTP assistant (`gemma4_assistant`): Q-only layers over the TARGET's cached K/V.

    One draft step, for input token u (t_T at step 0, then the previous greedy draft) and carried hidden c
    (the target's last post-norm hidden at step 0, then the previous step's projection):
        x = W_pre [E_t[u] * sqrt(H_t) ; c]              target embedding, embedding first   [2 H_t] -> [d]
        per layer (sliding / full, as the assistant's layer_types say):
            q = RoPE(q_norm(W_q rms(x) w_in)) at position T (the same for every step), scale 1.0
            o = attention over the target's K/V of the last non-shared target layer of that type:
                full: keys 0..T-1; sliding: the last window + 1 keys
            x = x + post_attn_norm(W_o o);  x = x + post_ff_norm(GeGLU(pre_ff_norm(x)));  x = x * layer_scalar
        n = norm(x);  logits = E_a n  (or the centroid-masked head);  c' = W_post n       [d] -> [H_t]
    Nothing is cached: rollback after a rejection only truncates the target's cache.
    """

    def __init__(self, path: Path, g: Gemma4Text, raw: dict, ckpt: Checkpoint):
        self.path, self.g, self.raw, self.ckpt = Path(path), g, raw, ckpt
        self.backbone_hidden_size = int(raw.get("backbone_hidden_size", 1536))
        self.ordered = bool(raw.get("use_ordered_embeddings", False))
        self.num_centroids = int(raw.get("num_centroids", 2048))
        self.centroid_top_k = int(raw.get("centroid_intermediate_top_k", 32))
        self.inv_freq = {t: rope_inv_freq(g.rope[t], g.head_dim if t == "sliding_attention" else g.global_head_dim)
                         for t in set(g.layer_types)}
        self.head_name = "lm_head.weight" if "lm_head.weight" in ckpt else "model.embed_tokens.weight"
        # sliding layers read window + sliding_extra_keys past keys: 1 as transformers 5.23 computes it (its
        # bidirectional window mask over the target's keys); 0 would be the target's own sliding span
        self.sliding_extra_keys = 1
        self.bytes_read, self._touched = 0, set()

    def expected_tensors(self) -> dict[str, tuple]:
        g, d, Hb, V = self.g, self.g.hidden_size, self.backbone_hidden_size, self.g.vocab_size
        t = {"model.norm.weight": (d,), "pre_projection.weight": (d, 2 * Hb), "post_projection.weight": (Hb, d),
             self.head_name: (V, d)}
        if self.ordered:
            t["masked_embedding.centroids.weight"] = (self.num_centroids, d)
            t["masked_embedding.token_ordering"] = (V,)
        for i in range(g.num_hidden_layers):
            for k, s in layer_tensors(g, i, q_only=True).items():
                t[f"model.layers.{i}.{k}"] = s
        return t

    def check_target(self, target: Gemma4Model) -> None:
        """The assistant reads the target's embedding, hidden and K/V: their sizes must be the ones it was
        trained with."""
        g, tg, where = self.g, target.g, self.path / "config.json"
        if self.backbone_hidden_size != tg.hidden_size:
            raise MtpRefError(f"{where}: backbone_hidden_size {self.backbone_hidden_size} does not match the target's "
                              f"hidden_size {tg.hidden_size}; this assistant belongs to another Gemma 4 model")
        if g.vocab_size != tg.vocab_size:
            raise MtpRefError(f"{where}: vocab_size {g.vocab_size} differs from the target's {tg.vocab_size}")
        src = tg.kv_sources()
        for i in range(g.num_hidden_layers):
            t = g.layer_types[i]
            j = src[t]
            if (g.head_dim_of(i), g.num_attention_heads % tg.kv_heads_of(j)) != (tg.head_dim_of(j), 0):
                raise MtpRefError(f"{where}: assistant layer {i} ({t}) has head_dim {g.head_dim_of(i)} and "
                                  f"{g.num_attention_heads} heads, but the target layer {j} it reads has head_dim "
                                  f"{tg.head_dim_of(j)} and {tg.kv_heads_of(j)} KV heads")

    def step(self, target: Gemma4Model, cache: KVCache, token: int, carried: np.ndarray):
        """One draft step -> (logits [V], carried hidden for the next step [H_t], post-norm n [d])."""
        g, eps = self.g, self.g.rms_norm_eps
        self.begin_forward()
        T = cache.length
        pos = np.array([T])
        kv = target.shared_kv(cache)
        x = ops.linear(np.concatenate([target.embed([token]), carried.reshape(1, -1)], -1),
                       self.weight("pre_projection.weight"))                    # [1, 2 H_t] -> [1, d]
        for i in range(g.num_hidden_layers):
            W = _W(self, f"model.layers.{i}.")
            t = g.layer_types[i]
            K, V = kv[t]                                                         # [T, g, d]
            if t == "sliding_attention":  # window + 1 past keys (the target's own layers see window incl. self)
                lo = max(0, T - g.sliding_window - self.sliding_extra_keys)
                K, V = K[lo:], V[lo:]
            cos, sin = ops.rope_tables(self.inv_freq[t], pos)
            a = ops.rms_norm(x, W["input_layernorm.weight"], eps)
            q = ops.linear(a, W["self_attn.q_proj.weight"]).reshape(1, g.num_attention_heads, -1)
            q = rope_half(ops.rms_norm(q, W["self_attn.q_norm.weight"], eps), cos, sin)
            o = windowed_attention(q, K, V, np.array([K.shape[0]]), None)        # every cached key is visible
            x = x + ops.rms_norm(ops.linear(o, W["self_attn.o_proj.weight"]), W["post_attention_layernorm.weight"], eps)
            m = geglu_mlp(ops.rms_norm(x, W["pre_feedforward_layernorm.weight"], eps), W["mlp.gate_proj.weight"],
                          W["mlp.up_proj.weight"], W["mlp.down_proj.weight"])
            x = (x + ops.rms_norm(m, W["post_feedforward_layernorm.weight"], eps)) * W["layer_scalar"]
        n = ops.rms_norm(x, self.weight("model.norm.weight"), eps)[0]            # [d]
        E = self.weight(self.head_name)                                          # [V, d]
        if self.ordered:
            logits = centroid_logits(n, E, self.weight("masked_embedding.centroids.weight"),
                                     self.ckpt.get("masked_embedding.token_ordering"), self.centroid_top_k)
        else:
            logits = E @ n                                                       # [V]
        return logits, ops.linear(n[None], self.weight("post_projection.weight"))[0], n


def load_assistant(path: Path, raw: dict | None = None) -> Gemma4Assistant:
    path = Path(path)
    raw = read_config_json(path) if raw is None else raw
    src = str(path / "config.json")
    if raw.get("model_type") != ASSISTANT_TYPE:
        raise MtpRefError(f"{src}: model_type '{raw.get('model_type')}' is not a drafter; --drafter takes a "
                          f"'{ASSISTANT_TYPE}' checkpoint (google/gemma-4-*-it-assistant)")
    if not isinstance(raw.get("text_config"), dict):
        raise MtpRefError(f"{src}: a '{ASSISTANT_TYPE}' config needs a 'text_config' object")
    inner = dict(raw["text_config"])
    inner.setdefault("hidden_size_per_layer_input", 0)
    inner.setdefault("vocab_size_per_layer_input", 0)
    g = text_config_from(inner, src, assistant=True)
    if g.enable_moe_block or g.hidden_size_per_layer_input or g.use_double_wide_mlp:
        raise MtpRefError(f"{src}: an assistant's text_config must have no MoE block, per-layer embeddings or "
                          f"double-wide MLP (transformers' Gemma4AssistantConfig rejects them too)")
    a = Gemma4Assistant(path, g, raw, Checkpoint(path))
    if a.ordered and g.vocab_size % a.num_centroids:
        raise MtpRefError(f"{src}: vocab_size {g.vocab_size} is not a multiple of num_centroids {a.num_centroids}")
    a.check(a.expected_tensors(), "assistant")
    return a


def load(path: Path, raw: dict):
    """Entry for model.load_model: a Gemma 4 target; an assistant is a drafter, not a model to generate with."""
    if raw.get("model_type") == ASSISTANT_TYPE:
        raise MtpRefError(f"{path}: this is a '{ASSISTANT_TYPE}' drafter, which reads a target's KV cache and cannot "
                          f"generate alone; pass it as --drafter {path} together with --model TARGET")
    return load_target(path, raw)


# ---------------------------------------------------------------------------------------------- inspect

def inspect_report(path: Path) -> dict | None:
    """`inspect` for Gemma 4 targets and assistants (the keys of inspect_ckpt.summarize, plus a verdict of its
    own), or None when the directory is not a Gemma 4 checkpoint."""
    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    mt = raw.get("model_type") if isinstance(raw, dict) else None
    if mt not in TARGET_TYPES + (ASSISTANT_TYPE,):
        return None
    if mt == ASSISTANT_TYPE:
        m = load_assistant(path, raw)
        g, expected = m.g, m.expected_tensors()
        head = (f"centroid-masked head ({m.num_centroids} clusters, top {m.centroid_top_k})" if m.ordered
                else "dense tied head")
        verdict = (f"A Gemma 4 MTP assistant (drafter), not a model of its own: {g.num_hidden_layers} Q-only layers "
                   f"(hidden {g.hidden_size}, {head}) over the K/V of a Gemma 4 target with hidden_size "
                   f"{m.backbone_hidden_size} and vocab {g.vocab_size} (sliding head_dim {g.head_dim}, full "
                   f"head_dim {g.global_head_dim}); pass it as --drafter with that target.")
        notes = [f"expects target hidden_size {m.backbone_hidden_size}, vocab_size {g.vocab_size}"]
    else:
        m = load_target(path, raw)
        g, expected = m.g, target_tensors(m.g)
        verdict = ("No MTP heads inside, by design: Gemma 4 drafts with a separate assistant checkpoint "
                   "(google/gemma-4-*-it-assistant, model_type gemma4_assistant); pass it with --drafter DIR.")
        src = g.kv_sources()
        notes = [f"layers: {g.layer_types.count('sliding_attention')} sliding (window {g.sliding_window}), "
                 f"{g.layer_types.count('full_attention')} full; an assistant reads the K/V of layer "
                 f"{src.get('sliding_attention')} (sliding) and {src.get('full_attention')} (full)"]
        if g.num_kv_shared_layers:
            notes.append(f"the last {g.num_kv_shared_layers} layers reuse K/V (num_kv_shared_layers)")
        if g.hidden_size_per_layer_input:
            notes.append(f"per-layer embeddings of width {g.hidden_size_per_layer_input}")
    ck = m.ckpt
    mats = [n for n in expected if len(ck.shape(n)) >= 2]
    return {
        "path": str(path), "format": "safetensors", "family": mt, "model_type": mt,
        "layers": g.num_hidden_layers, "hidden_size": g.hidden_size, "vocab_size": g.vocab_size,
        "attention": "gqa, sliding + full", "linear_attention_layers": 0,
        "moe_layers": g.num_hidden_layers if g.enable_moe_block else 0, "routed_experts": g.num_experts,
        "experts_per_token": g.top_k_experts, "shared_experts": 0, "mtp_declared": 0, "mtp_present": 0,
        "mtp_modules": [], "bits_per_weight": {"trunk": None, "mtp": None},
        "matrix_types": {"trunk": None, "mtp": None},
        "dtypes": dict(Counter(ck.dtype(n) for n in mats)),
        "fp8_block": False, "parameters": sum(int(np.prod(ck.shape(n))) for n in ck.names()),
        "checkpoint_bytes": sum(i.nbytes for i in ck.infos.values()), "bytes_per_token_trunk": None,
        "unused_tensors": sorted(set(ck.names()) - set(expected))[:20], "missing_shards": [], "warnings": [],
        "notes": notes, "verdict": verdict,
    }
