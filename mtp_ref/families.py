"""One FamilySpec per model family: everything that differs between checkpoints lives here.

The engine (model.py) reads these fields; it never branches on model_type. To add a family,
add a spec, not an `if`.

Conventions, per the sources in ../shared/reference/mtp_families.md:
* rope_style "interleaved": rotate pairs (x[2i], x[2i+1]) by frequency i (DeepSeek, GPT-J);
  "half": rotate (x[i], x[i + d/2]) (Llama/Qwen/GLM-4-MoE `rotate_half`), on the first
  `rotary_dim` dims of each head.
* MTP "nextn" layout (DeepSeek-V3, GLM-4.5): module j is `model.layers.{L+j}` with enorm, hnorm,
  eh_proj, one ordinary decoder block, shared_head.norm, shared_head.head, embed_tokens;
  concat is [enorm(emb), hnorm(h)] (embedding first).
* MTP "mimo" layout (MiMo-7B): module j is `model.mtp_layers.{j}` with token_layernorm,
  hidden_layernorm, input_proj, a Qwen2 block, final_layernorm; concat is [hidden, embedding];
  embedding and head are the main model's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .errors import MtpRefError


@dataclass(frozen=True)
class MtpLayout:
    prefix: str            # "{L}" is replaced by num_hidden_layers + j, "{j}" by j
    emb_norm: str          # RMSNorm on the embedding of the next token
    hid_norm: str          # RMSNorm on the previous hidden state
    proj: str              # [H, 2H] projection of the concatenation
    hidden_first: bool     # concat order: [h, e] (MiMo) or [e, h] (DeepSeek/GLM)
    out_norm: str          # RMSNorm applied to the block output; its output feeds the next depth
    head: str | None       # the module's own output head, or None to use lm_head
    embed: str | None      # the module's own embedding copy, or None to use model.embed_tokens

    def module_prefix(self, cfg: ModelConfig, j: int) -> str:
        return self.prefix.format(L=cfg.num_hidden_layers + j, j=j)


NEXTN = MtpLayout(prefix="model.layers.{L}.", emb_norm="enorm.weight", hid_norm="hnorm.weight",
                  proj="eh_proj.weight", hidden_first=False, out_norm="shared_head.norm.weight",
                  head="shared_head.head.weight", embed="embed_tokens.weight")
MIMO = MtpLayout(prefix="model.mtp_layers.{j}.", emb_norm="token_layernorm.weight",
                 hid_norm="hidden_layernorm.weight", proj="input_proj.weight", hidden_first=True,
                 out_norm="final_layernorm.weight", head=None, embed=None)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    attention: str             # "mla" (DeepSeek Multi-head Latent Attention) or "gqa"
    rope_style: str            # "interleaved" or "half"
    qkv_bias: str              # "always", "never" or "config" (config.attention_bias)
    qk_norm: str               # "always", "never" or "config" (config.use_qk_norm)
    moe: bool                  # sigmoid-scored, group-limited, bias-corrected router (DeepSeek-V3 style)
    mtp: MtpLayout | None
    hf_class: str              # the transformers class that is this family's oracle

    def has_qkv_bias(self, cfg: ModelConfig) -> bool:
        return self.qkv_bias == "always" or (self.qkv_bias == "config" and cfg.attention_bias)

    def has_qk_norm(self, cfg: ModelConfig) -> bool:
        return self.qk_norm == "always" or (self.qk_norm == "config" and cfg.use_qk_norm)


FAMILIES = {
    "deepseek_v3": FamilySpec("deepseek_v3", "mla", "interleaved", "never", "never", True, NEXTN,
                              "DeepseekV3ForCausalLM"),
    "glm4_moe": FamilySpec("glm4_moe", "gqa", "half", "config", "config", True, NEXTN, "Glm4MoeForCausalLM"),
    "mimo": FamilySpec("mimo", "gqa", "half", "always", "never", False, MIMO, "Qwen2ForCausalLM (trunk)"),
    "qwen2": FamilySpec("qwen2", "gqa", "half", "always", "never", False, None, "Qwen2ForCausalLM"),
    "qwen3": FamilySpec("qwen3", "gqa", "half", "config", "always", False, None, "Qwen3ForCausalLM"),
    "llama": FamilySpec("llama", "gqa", "half", "config", "never", False, None, "LlamaForCausalLM"),
}


def family_for(cfg: ModelConfig) -> FamilySpec:
    spec = FAMILIES.get(cfg.model_type)
    if spec is None:
        raise MtpRefError(f"config.json: model_type '{cfg.model_type}' is not supported; supported families: "
                          f"{', '.join(sorted(FAMILIES))}")
    if spec.moe and cfg.scoring_func != "sigmoid":
        raise MtpRefError(f"config.json: scoring_func '{cfg.scoring_func}' is not supported for {spec.name} (only 'sigmoid')")
    if spec.attention == "mla" and not (cfg.kv_lora_rank and cfg.qk_rope_head_dim and cfg.v_head_dim):
        raise MtpRefError("config.json: an MLA model needs kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim and v_head_dim")
    return spec


# ------------------------------------------------------------------ expected tensors

def block_tensors(cfg: ModelConfig, spec: FamilySpec, layer: int) -> dict[str, tuple[int, ...]]:
    """Names (relative to the block prefix) and shapes of one decoder block, as released."""
    H = cfg.hidden_size
    t: dict[str, tuple[int, ...]] = {"input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,)}
    nh = cfg.num_attention_heads
    if spec.attention == "mla":
        if cfg.q_lora_rank:
            t["self_attn.q_a_proj.weight"] = (cfg.q_lora_rank, H)
            t["self_attn.q_a_layernorm.weight"] = (cfg.q_lora_rank,)
            t["self_attn.q_b_proj.weight"] = (nh * cfg.qk_head_dim, cfg.q_lora_rank)
        else:
            t["self_attn.q_proj.weight"] = (nh * cfg.qk_head_dim, H)
        t["self_attn.kv_a_proj_with_mqa.weight"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, H)
        t["self_attn.kv_a_layernorm.weight"] = (cfg.kv_lora_rank,)
        t["self_attn.kv_b_proj.weight"] = (nh * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)
        t["self_attn.o_proj.weight"] = (H, nh * cfg.v_head_dim)
    else:
        hd, nkv = cfg.head_dim, cfg.num_key_value_heads
        t["self_attn.q_proj.weight"] = (nh * hd, H)
        t["self_attn.k_proj.weight"] = (nkv * hd, H)
        t["self_attn.v_proj.weight"] = (nkv * hd, H)
        t["self_attn.o_proj.weight"] = (H, nh * hd)
        if spec.has_qkv_bias(cfg):
            t["self_attn.q_proj.bias"] = (nh * hd,)
            t["self_attn.k_proj.bias"] = (nkv * hd,)
            t["self_attn.v_proj.bias"] = (nkv * hd,)
        if spec.has_qk_norm(cfg):
            t["self_attn.q_norm.weight"] = (hd,)
            t["self_attn.k_norm.weight"] = (hd,)
    if spec.moe and cfg.is_moe_layer(layer):
        E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
        t["mlp.gate.weight"] = (E, H)
        t["mlp.gate.e_score_correction_bias"] = (E,)
        for e in range(E):
            t[f"mlp.experts.{e}.gate_proj.weight"] = (I, H)
            t[f"mlp.experts.{e}.up_proj.weight"] = (I, H)
            t[f"mlp.experts.{e}.down_proj.weight"] = (H, I)
        if cfg.n_shared_experts:
            Is = I * cfg.n_shared_experts
            t["mlp.shared_experts.gate_proj.weight"] = (Is, H)
            t["mlp.shared_experts.up_proj.weight"] = (Is, H)
            t["mlp.shared_experts.down_proj.weight"] = (H, Is)
    else:
        I = cfg.intermediate_size
        t["mlp.gate_proj.weight"] = (I, H)
        t["mlp.up_proj.weight"] = (I, H)
        t["mlp.down_proj.weight"] = (H, I)
    return t


def trunk_tensors(cfg: ModelConfig, spec: FamilySpec) -> dict[str, tuple[int, ...]]:
    H, V = cfg.hidden_size, cfg.vocab_size
    t = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = (V, H)
    for i in range(cfg.num_hidden_layers):
        for k, s in block_tensors(cfg, spec, i).items():
            t[f"model.layers.{i}.{k}"] = s
    return t


def mtp_tensors(cfg: ModelConfig, spec: FamilySpec, j: int) -> dict[str, tuple[int, ...]]:
    """Names (absolute) and shapes of MTP module j."""
    lay = spec.mtp
    H, V = cfg.hidden_size, cfg.vocab_size
    p = lay.module_prefix(cfg, j)
    t = {p + lay.emb_norm: (H,), p + lay.hid_norm: (H,), p + lay.proj: (H, 2 * H), p + lay.out_norm: (H,)}
    if lay.head:
        t[p + lay.head] = (V, H)
    if lay.embed:
        t[p + lay.embed] = (V, H)
    # the block inside an MTP module follows the layer-index rule of its index (L + j for nextn)
    for k, s in block_tensors(cfg, spec, cfg.num_hidden_layers + j).items():
        t[p + k] = s
    return t
