"""ModelConfig: the numbers of config.json that the engine uses, normalised across families.

Both the released form (`rope_theta` + `rope_scaling`) and the newer transformers form
(`rope_parameters`) are accepted. Every field keeps the config.json key it came from in its
comment, so a porter can map it back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MtpRefError


@dataclass
class RopeConfig:
    theta: float = 10000.0
    kind: str = "default"                  # rope_type / type: default | linear | yarn | llama3
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0                # yarn
    beta_slow: float = 1.0                 # yarn
    mscale: float | None = None            # yarn (DeepSeek)
    mscale_all_dim: float | None = None    # yarn (DeepSeek): softmax scale *= mscale(factor, mscale_all_dim)^2
    attention_factor: float | None = None  # yarn: multiplies cos/sin
    truncate: bool = True                  # yarn
    low_freq_factor: float = 1.0           # llama3
    high_freq_factor: float = 4.0          # llama3
    partial_rotary_factor: float | None = None  # fraction of head_dim rotated (None: the family's default)


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    attention_bias: bool = False           # q/k/v bias (Qwen2/MiMo always, GLM via attention_bias)
    use_qk_norm: bool = False              # per-head RMSNorm on q and k (Qwen3, GLM use_qk_norm)
    # MLA (deepseek_v3)
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # MoE (deepseek_v3, glm4_moe; qwen3_next, qwen3_5_moe)
    n_routed_experts: int = 0              # n_routed_experts | num_experts (Qwen)
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # Qwen's single gated shared expert
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    decoder_sparse_step: int = 1           # Qwen: layer i is MoE when (i + 1) % decoder_sparse_step == 0 ...
    mlp_only_layers: list[int] = field(default_factory=list)  # ... and i is not listed here
    scoring_func: str = "sigmoid"
    # hybrid linear attention (qwen3_next, qwen3_5): layer_types[i] is "full_attention" or "linear_attention"
    layer_types: list[str] = field(default_factory=list)
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 0
    # MTP
    num_nextn_predict_layers: int = 0      # what config.json DECLARES (num_nextn_predict_layers)
    mtp_declared_by: str = "num_nextn_predict_layers"  # the config.json key(s) that declared it, for messages
    num_mtp_modules: int = 0               # what the weights really hold (set by the loader)
    # weights
    quantization_config: dict | None = None
    torch_dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def rotary_dim(self) -> int:
        """How many dims of each q/k head get rotated."""
        if self.qk_rope_head_dim:
            return self.qk_rope_head_dim
        partial = self.rope.partial_rotary_factor
        return int(self.head_dim * (1.0 if partial is None else partial))

    @property
    def linear_dims(self) -> tuple[int, int, int, int]:
        """Gated DeltaNet (key heads, value heads, key head dim, value head dim)."""
        return (self.linear_num_key_heads, self.linear_num_value_heads,
                self.linear_key_head_dim, self.linear_value_head_dim)

    def is_moe_layer(self, i: int) -> bool:
        return (self.n_routed_experts > 0 and i >= self.first_k_dense_replace
                and i % max(self.moe_layer_freq, 1) == 0
                and (i + 1) % max(self.decoder_sparse_step, 1) == 0 and i not in self.mlp_only_layers)

    def layer_type(self, i: int) -> str:
        """"linear_attention" (Gated DeltaNet) or "full_attention"; MTP blocks (i >= L) are always full attention."""
        return self.layer_types[i] if i < min(len(self.layer_types), self.num_hidden_layers) else "full_attention"


def _first(v):
    return v[0] if isinstance(v, list) else v


def _rope_from(raw: dict) -> RopeConfig:
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params and not any(isinstance(v, dict) for v in params.values()):
        d = dict(params)
    else:
        d = dict(raw.get("rope_scaling") or {})
        if "rope_theta" in raw:
            d.setdefault("rope_theta", raw["rope_theta"])
    kind = d.get("rope_type", d.get("type", "default")) or "default"
    if kind not in ("default", "linear", "yarn", "llama3"):
        raise MtpRefError(f"config.json: rope type '{kind}' is not supported (supported: default, linear, yarn, llama3)")
    partial = d.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial is None and raw.get("rotary_dim") and raw.get("head_dim"):  # MiniMax-M2: rotary_dim of head_dim
        partial = raw["rotary_dim"] / raw["head_dim"]
    r = RopeConfig(
        # Step-3.5/3.7 give rope_theta per layer (a list; the per-type values are read by ops_sinks.geometry)
        theta=float(_first(d.get("rope_theta", raw.get("rope_theta", 10000.0)))),
        kind=kind,
        factor=float(d["factor"]) if d.get("factor") is not None else 1.0,
        original_max_position_embeddings=d.get("original_max_position_embeddings"),
        beta_fast=float(d.get("beta_fast") or 32.0),
        beta_slow=float(d.get("beta_slow") or 1.0),
        mscale=d.get("mscale"),
        mscale_all_dim=d.get("mscale_all_dim"),
        attention_factor=d.get("attention_factor"),
        truncate=bool(d.get("truncate", True)),
        low_freq_factor=float(d.get("low_freq_factor", 1.0)),
        high_freq_factor=float(d.get("high_freq_factor", 4.0)),
        partial_rotary_factor=None if partial is None else float(partial),
    )
    if kind == "yarn" and d.get("factor") is None:
        if not r.original_max_position_embeddings:
            raise MtpRefError("config.json: yarn rope needs 'factor' or 'original_max_position_embeddings'")
        r.factor = raw["max_position_embeddings"] / r.original_max_position_embeddings
    return r


_REQUIRED = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def config_from_dict(raw: dict, source: str = "config.json") -> ModelConfig:
    for k in _REQUIRED:
        if k not in raw:
            raise MtpRefError(f"{source}: required field '{k}' is missing")
    H, nh = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    mt = raw["model_type"]
    eos = raw.get("eos_token_id")
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    # num_nextn_predict_layers (DeepSeek, GLM, Qwen3-Next) | num_mtp_layers | mtp_num_hidden_layers (Qwen3.5)
    n_mtp = raw.get("num_nextn_predict_layers", raw.get("num_mtp_layers", raw.get("mtp_num_hidden_layers", 0))) or 0
    declared_by = next((k for k in ("num_nextn_predict_layers", "num_mtp_layers", "mtp_num_hidden_layers") if k in raw),
                       "num_nextn_predict_layers")
    if not n_mtp and raw.get("use_mtp") and raw.get("num_mtp_modules"):  # MiniMax-M2: use_mtp + num_mtp_modules
        n_mtp, declared_by = raw["num_mtp_modules"], "use_mtp=true, num_mtp_modules"
    layer_types = list(raw.get("layer_types") or [])
    if not layer_types and raw.get("hybrid_layer_pattern"):  # MiMo-V2: 1 = sliding-window layer, 0 = full
        layer_types = ["sliding_attention" if f else "full_attention" for f in raw["hybrid_layer_pattern"]]
    moe_freq = raw.get("moe_layer_freq")
    mlp_only = [int(i) for i in raw.get("mlp_only_layers") or []]
    if isinstance(moe_freq, list):  # MiMo-V2: per-layer 0 (dense) / 1 (MoE) instead of a period
        mlp_only, moe_freq = sorted(set(mlp_only) | {i for i, f in enumerate(moe_freq) if not f}), 1
    if raw.get("moe_layers_enum") is not None:  # Step-3.5/3.7: the MoE layers' indices ("3,4,...", MTP ones too)
        enum = raw["moe_layers_enum"]
        moe_set = {int(i) for i in (enum.split(",") if isinstance(enum, str) else enum) if str(i).strip()}
        padded = int(raw["num_hidden_layers"]) + int(n_mtp)
        mlp_only = sorted(set(mlp_only) | (set(range(padded)) - moe_set))
    if not layer_types and raw.get("linear_num_value_heads"):  # hybrid config without the list (Qwen3-Next release)
        every = int(raw.get("full_attention_interval", 4))
        layer_types = ["full_attention" if (i + 1) % every == 0 else "linear_attention"
                       for i in range(int(raw["num_hidden_layers"]))]
    cfg = ModelConfig(
        model_type=mt,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=H,
        intermediate_size=int(raw.get("intermediate_size", 4 * H)),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=nh,
        num_key_value_heads=int(raw.get("num_key_value_heads") or raw.get("num_attention_groups") or nh),  # groups: Step
        head_dim=int(raw.get("head_dim") or H // nh),
        rms_norm_eps=float(raw.get("rms_norm_eps", raw.get("layernorm_epsilon", 1e-6))),  # layernorm_epsilon: MiMo-V2
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        rope=_rope_from(raw),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", False)),
        use_qk_norm=bool(raw.get("use_qk_norm", False)),
        q_lora_rank=raw.get("q_lora_rank"),
        kv_lora_rank=int(raw.get("kv_lora_rank") or 0),
        qk_nope_head_dim=int(raw.get("qk_nope_head_dim") or 0),
        qk_rope_head_dim=int(raw.get("qk_rope_head_dim") or 0),
        v_head_dim=int(raw.get("v_head_dim") or 0),
        # n_routed_experts | num_experts (Qwen) | num_local_experts (Mixtral, MiniMax-M2)
        n_routed_experts=int(raw.get("n_routed_experts") or raw.get("num_experts") or raw.get("num_local_experts")
                             or raw.get("moe_num_experts") or 0),  # moe_num_experts / moe_top_k: Step
        n_shared_experts=int(raw.get("n_shared_experts") or 0),
        num_experts_per_tok=int(raw.get("num_experts_per_tok") or raw.get("moe_top_k") or 0),
        # Mixtral-style configs (num_local_experts) size their experts by intermediate_size
        moe_intermediate_size=int(raw.get("moe_intermediate_size")
                                  or (raw.get("intermediate_size") if raw.get("num_local_experts") else 0) or 0),
        shared_expert_intermediate_size=int(raw.get("shared_expert_intermediate_size") or raw.get("share_expert_dim")
                                            or 0),  # share_expert_dim: Step
        n_group=int(raw.get("n_group") or 1),
        topk_group=int(raw.get("topk_group") or 1),
        routed_scaling_factor=float(raw.get("routed_scaling_factor") or raw.get("moe_router_scaling_factor") or 1.0),
        norm_topk_prob=bool(raw.get("norm_topk_prob", True)),
        first_k_dense_replace=int(raw.get("first_k_dense_replace") or 0),
        moe_layer_freq=int(moe_freq or 1),
        decoder_sparse_step=int(raw.get("decoder_sparse_step") or 1),
        mlp_only_layers=mlp_only,
        scoring_func=raw.get("scoring_func", "sigmoid"),
        layer_types=layer_types,
        linear_num_key_heads=int(raw.get("linear_num_key_heads") or 0),
        linear_num_value_heads=int(raw.get("linear_num_value_heads") or 0),
        linear_key_head_dim=int(raw.get("linear_key_head_dim") or 0),
        linear_value_head_dim=int(raw.get("linear_value_head_dim") or 0),
        linear_conv_kernel_dim=int(raw.get("linear_conv_kernel_dim") or 0),
        num_nextn_predict_layers=int(n_mtp),
        mtp_declared_by=declared_by,
        quantization_config=raw.get("quantization_config"),
        torch_dtype=raw.get("torch_dtype", raw.get("dtype")),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=eos,
        raw=raw,
    )
    if any(t != 1 for t in raw.get("attn_type_list") or []):  # MiniMax: 0 = lightning (linear) attention
        raise MtpRefError(f"{source}: attn_type_list has lightning-attention layers (0), which mtp-ref does not "
                          f"implement; only softmax-attention layers (1) are supported")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise MtpRefError(f"{source}: num_attention_heads {nh} is not a multiple of num_key_value_heads {cfg.num_key_value_heads}")
    bad = sorted(set(cfg.layer_types) - {"full_attention", "linear_attention", "sliding_attention"})
    if bad or (cfg.layer_types and len(cfg.layer_types) < cfg.num_hidden_layers):
        unknown = f", unknown {bad}" if bad else ""
        raise MtpRefError(f"{source}: layer_types must list 'full_attention' / 'sliding_attention' / 'linear_attention' for all "
                          f"{cfg.num_hidden_layers} layers (got {len(cfg.layer_types)} entries{unknown})")
    if "linear_attention" in cfg.layer_types:
        nk, nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        if not (nk and nv and cfg.linear_key_head_dim and cfg.linear_value_head_dim and cfg.linear_conv_kernel_dim):
            raise MtpRefError(f"{source}: linear_attention layers need linear_num_key_heads, linear_num_value_heads, "
                              f"linear_key_head_dim, linear_value_head_dim and linear_conv_kernel_dim")
        if nv % nk:
            raise MtpRefError(f"{source}: linear_num_value_heads {nv} is not a multiple of linear_num_key_heads {nk}")
    return cfg


def load_config(path: Path) -> ModelConfig:
    path = Path(path)
    f = path / "config.json"
    if not path.exists():
        raise MtpRefError(f"{path}: no such checkpoint directory")
    if not f.exists():
        raise MtpRefError(f"{f}: config.json is missing; a Hugging Face checkpoint directory needs one")
    try:
        raw = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise MtpRefError(f"{f}: not valid JSON ({e})") from None
    if "text_config" in raw and "hidden_size" not in raw:
        # multimodal release (Qwen3.5/3.6): the text model's config is nested. The outer object keeps
        # quantization_config and tie_word_embeddings (what the multimodal model class reads); the
        # outer model_type stands in when the inner one is missing.
        outer = raw
        raw = {"model_type": outer.get("model_type"), **outer["text_config"]}
        for k in ("quantization_config", "tie_word_embeddings"):
            if k in outer:
                raw[k] = outer[k]
    return config_from_dict(raw, str(f))


# ---------------------------------------------------------------- rotary tables

def rope_inv_freq(cfg: ModelConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies [rotary_dim/2] and the cos/sin multiplier ("attention factor")."""
    r, dim = cfg.rope, cfg.rotary_dim
    inv = 1.0 / (r.theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))  # [dim/2]
    if r.kind == "default":
        return inv, 1.0
    if r.kind == "linear":
        return inv / r.factor, 1.0
    if r.kind == "llama3":
        old = r.original_max_position_embeddings or 8192
        low_wl, high_wl = old / r.low_freq_factor, old / r.high_freq_factor
        wl = 2 * math.pi / inv
        scaled = np.where(wl > low_wl, inv / r.factor, inv)
        smooth = (old / wl - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
        smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return np.where(medium, smoothed, scaled), 1.0
    # yarn (Peng et al. 2023), as DeepSeek-V3 and transformers compute it
    def mscale(s, m=1.0):
        return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

    if r.attention_factor is not None:
        att = float(r.attention_factor)
    elif r.mscale and r.mscale_all_dim:
        att = mscale(r.factor, r.mscale) / mscale(r.factor, r.mscale_all_dim)
    else:
        att = mscale(r.factor)
    orig = r.original_max_position_embeddings or cfg.max_position_embeddings

    def corr_dim(rot):
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(r.theta))

    low, high = corr_dim(r.beta_fast), corr_dim(r.beta_slow)
    if r.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)  # [dim/2]
    extrap = 1 - ramp
    inv = (inv / r.factor) * (1 - extrap) + inv * extrap
    return inv, att


def softmax_scale(cfg: ModelConfig, head_dim: int) -> float:
    """1/sqrt(d), times mscale(factor, mscale_all_dim)^2 for DeepSeek's YaRN."""
    s = head_dim ** -0.5
    r = cfg.rope
    if r.kind == "yarn" and r.mscale_all_dim:
        m = 1.0 if r.factor <= 1 else 0.1 * r.mscale_all_dim * math.log(r.factor) + 1.0
        s *= m * m
    return s
