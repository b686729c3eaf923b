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
* MTP "qwen" layout (Qwen3-Next, Qwen3.5/3.6): top-level `mtp.` with pre_fc_norm_embedding,
  pre_fc_norm_hidden, fc, norm SHARED by all modules, and module j's block at `mtp.layers.{j}.`
  (always full attention); concat is [embedding, hidden]; embedding and head are the main model's.
* Qwen3-Next / Qwen3.5 trunks: zero-centred RMSNorms (x * (1 + w)), gated attention, and Gated
  DeltaNet "linear_attention" layers (config layer_types) whose state is recurrent (cache.RecurrentCache).
* DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5; spec.indexer): MLA whose queries attend only the top
  index_topk keys picked by a lightning indexer (`self_attn.indexer.*`, ops_dsa.py), in the MTP block too.
* MiniMax-M2: Mixtral-style `block_sparse_moe.experts.{e}.w1/w3/w2` read under the engine's `mlp.*` names
  (spec.tensor_renames); q/k RMSNorms over all heads (spec.qk_norm_scope); no MTP weights are published.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import ModelConfig
from .errors import MtpRefError
from .ops_sinks import attention_tensors as hybrid_attention_tensors


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
    block: str = ""        # prefix of the module's decoder block inside the module ("layers.{j}." when glue is shared)
    layer_type: str = "full_attention"  # attention of the module's block ("sliding_attention": MiMo-V2, Step)
    block_mlp: str = "layer_rule"       # "layer_rule": MoE or dense by the trunk's rule for index L + j; "dense"
    block_rename: tuple[tuple[str, str], ...] = ()  # (engine name, released name) pairs inside the block
    head_optional: bool = True  # False: each module MUST carry its own head (Step: a trained head per depth)

    def module_prefix(self, cfg: ModelConfig, j: int) -> str:
        return self.prefix.format(L=cfg.num_hidden_layers + j, j=j)

    def block_prefix(self, cfg: ModelConfig, j: int) -> str:
        return self.module_prefix(cfg, j) + self.block.format(L=cfg.num_hidden_layers + j, j=j)


NEXTN = MtpLayout(prefix="model.layers.{L}.", emb_norm="enorm.weight", hid_norm="hnorm.weight",
                  proj="eh_proj.weight", hidden_first=False, out_norm="shared_head.norm.weight",
                  head="shared_head.head.weight", embed="embed_tokens.weight")
MIMO = MtpLayout(prefix="model.mtp_layers.{j}.", emb_norm="token_layernorm.weight",
                 hid_norm="hidden_layernorm.weight", proj="input_proj.weight", hidden_first=True,
                 out_norm="final_layernorm.weight", head=None, embed=None)
# Step-3.5/3.7-Flash: DeepSeek-style modules at model.layers.{L+j}. with their OWN head and norm per depth
# (`transformer.shared_head.{output,norm}`, renamed on load); the block's attention type and MoE/dense come
# from the config's padded lists (layer_types entry L+j, moe_layers_enum); sliding when the list is short.
STEP_MTP = MtpLayout(prefix="model.layers.{L}.", emb_norm="enorm.weight", hid_norm="hnorm.weight",
                     proj="eh_proj.weight", hidden_first=False, out_norm="shared_head.norm.weight",
                     head="shared_head.output.weight", embed=None, layer_type="sliding_attention",
                     head_optional=False)
# MiMo-V2-Flash: model.mtp.layers.{j}. holds the glue and a dense sliding-window block whose MLP norm is
# pre_mlp_layernorm; its own final_layernorm feeds the main lm_head (vLLM mimo_v2_mtp.py).
MIMO_V2 = MtpLayout(prefix="model.mtp.layers.{j}.", emb_norm="enorm.weight", hid_norm="hnorm.weight",
                    proj="eh_proj.weight", hidden_first=False, out_norm="final_layernorm.weight", head=None,
                    embed=None, layer_type="sliding_attention", block_mlp="dense",
                    block_rename=(("post_attention_layernorm.weight", "pre_mlp_layernorm.weight"),))
QWEN_MTP = MtpLayout(prefix="mtp.", emb_norm="pre_fc_norm_embedding.weight", hid_norm="pre_fc_norm_hidden.weight",
                     proj="fc.weight", hidden_first=False, out_norm="norm.weight", head=None, embed=None,
                     block="layers.{j}.")


@dataclass(frozen=True)
class FamilySpec:
    name: str
    attention: str             # "mla" (DeepSeek Multi-head Latent Attention), "gqa", or "gqa_hybrid" (sliding-window
                               # and full layers with their own geometry and attention sinks: ops_sinks.py)
    rope_style: str            # "interleaved" or "half"
    qkv_bias: str              # "always", "never" or "config" (config.attention_bias)
    qk_norm: str               # "always", "never" or "config" (config.use_qk_norm)
    moe: bool                  # routed experts in the layers config.is_moe_layer picks
    mtp: MtpLayout | None
    hf_class: str              # the transformers class that is this family's oracle
    router: str = "sigmoid_group"  # "sigmoid_group": DeepSeek-V3 sigmoid, bias-corrected, group-limited top-k;
                                   # "softmax": softmax over all experts, top-k, renormalised (Qwen)
    head_gate: bool = False    # self_attn.g_proj [h, H]: head h's output * sigmoid(g_proj x)_h (Step-3.5/3.7)
    shared_expert: str = "plain"   # "plain": mlp.shared_experts.* (DeepSeek), n_shared_experts * I wide; "sized": the
                                   # same names, shared_expert_intermediate_size wide (Step share_expert_dim); "gated": mlp.shared_expert.* times
                                   # sigmoid(mlp.shared_expert_gate x) (Qwen)
    expert_layout: str = "per_expert"  # "per_expert": mlp.experts.{e}.{gate,up,down}_proj.weight;
                                       # "stacked": mlp.experts.{gate,up}_proj [E, I, H] + down_proj [E, H, I]
                                       # (Step's moe.*_proj.weight, renamed on load);
                                       # "fused": mlp.experts.gate_up_proj [E, 2I, H] + down_proj [E, H, I]
                                       # (Qwen3.5-MoE BF16); load_model takes the layout the checkpoint holds
    norm_offset: float = 0.0   # RMSNorm scale is (norm_offset + w): 1 for zero-centred weights (Qwen3-Next/3.5)
    attn_gate: bool = False    # q_proj gives [query | gate] per head; attention output * sigmoid(gate)
    linear_attn: str | None = None  # Gated DeltaNet input projections: "qkvz" (Qwen3-Next in_proj_qkvz + in_proj_ba,
                                    # grouped per key head) or "split" (Qwen3.5 in_proj_qkv, _z, _b, _a)
    partial_rotary_default: float = 1.0  # partial_rotary_factor when config.json has none (transformers' default)
    trunk_aliases: tuple[str, ...] = ()  # other release prefixes of "model." (multimodal wrappers), renamed on load
    indexer: str | None = None  # DSA lightning indexer in the MLA blocks (ops_dsa.py), by the RoPE style of its
                                # keys: "half" (DeepSeek-V3.2) or "interleaved" (GLM-5); None: dense MLA
    latent_norm_eps: float | None = None  # eps of MLA's q_a / kv_a RMSNorms if not rms_norm_eps: DeepSeek's reference
                                          # and transformers fix 1e-6 (GLM's rms_norm_eps is 1e-5; vLLM uses that)
    qk_norm_scope: str = "head"  # "head": q_norm / k_norm [d] per head; "all": one RMSNorm over all heads [h*d]
                                 # before the split (MiniMax-M2 qk_norm_type "per_layer")
    tensor_renames: tuple[tuple[str, str], ...] = ()  # (regex on a released name, engine name), applied on load
                                                       # like transformers' WeightRenaming (MiniMax-M2 w1/w2/w3)

    def layer_type(self, cfg: ModelConfig, i: int) -> str:
        """Attention kind of block i; i >= L are MTP blocks (their layout says)."""
        if i >= cfg.num_hidden_layers and self.mtp is not None:
            padded = cfg.raw.get("layer_types") or []   # Step pads layer_types with the MTP blocks' entries
            return padded[i] if i < len(padded) else self.mtp.layer_type
        return cfg.layer_type(i)

    def is_moe(self, cfg: ModelConfig, i: int) -> bool:
        if i >= cfg.num_hidden_layers and self.mtp is not None and self.mtp.block_mlp == "dense":
            return False
        return self.moe and cfg.is_moe_layer(i)

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
    "qwen3_next": FamilySpec("qwen3_next", "gqa", "half", "config", "always", True, QWEN_MTP, "Qwen3NextForCausalLM",
                             router="softmax", shared_expert="gated", norm_offset=1.0, attn_gate=True,
                             linear_attn="qkvz", partial_rotary_default=0.25),
    "qwen3_5": FamilySpec("qwen3_5", "gqa", "half", "config", "always", False, QWEN_MTP, "Qwen3_5ForCausalLM",
                          norm_offset=1.0, attn_gate=True, linear_attn="split", partial_rotary_default=0.25,
                          trunk_aliases=("model.language_model.",)),
    "qwen3_5_moe": FamilySpec("qwen3_5_moe", "gqa", "half", "config", "always", True, QWEN_MTP,
                              "Qwen3_5MoeForCausalLM", router="softmax", shared_expert="gated",
                              expert_layout="fused", norm_offset=1.0, attn_gate=True, linear_attn="split",
                              partial_rotary_default=0.25, trunk_aliases=("model.language_model.",)),
}
# the text model of the multimodal Qwen3.5/3.6 releases (model_type inside text_config)
# Step-3.5-Flash (flat config, model_type step3p5) and Step-3.7-Flash (step3p7, the text model in text_config)
_STEP = FamilySpec(
    "step3p7", "gqa_hybrid", "half", "config", "always", True, STEP_MTP, "Step3p7ForConditionalGeneration",
    expert_layout="stacked", norm_offset=1.0, head_gate=True, shared_expert="sized",
    tensor_renames=((r"\.moe\.gate\.weight$", ".mlp.gate.weight"),
                    (r"\.moe\.router_bias$", ".mlp.gate.e_score_correction_bias"),
                    (r"\.moe\.(gate|up|down)_proj\.weight$", r".mlp.experts.\1_proj"),
                    (r"\.share_expert\.", ".mlp.shared_experts."),
                    (r"\.transformer\.shared_head\.", ".shared_head.")))
FAMILIES["step3p7"] = FAMILIES["step3p5"] = _STEP
FAMILIES["mimo_v2_flash"] = FamilySpec("mimo_v2_flash", "gqa_hybrid", "half", "config", "never", True, MIMO_V2,
                                       "MiMoV2FlashForCausalLM", partial_rotary_default=0.334)
FAMILIES["qwen3_5_text"] = FAMILIES["qwen3_5"]
FAMILIES["qwen3_5_moe_text"] = FAMILIES["qwen3_5_moe"]
# MLA in the GLM family, and DeepSeek Sparse Attention (MLA + lightning indexer): DeepSeek-V3.2, GLM-5
FAMILIES["glm4_moe_lite"] = FamilySpec("glm4_moe_lite", "mla", "interleaved", "never", "never", True, NEXTN,
                                       "Glm4MoeLiteForCausalLM", latent_norm_eps=1e-6)
FAMILIES["deepseek_v32"] = FamilySpec("deepseek_v32", "mla", "interleaved", "never", "never", True, NEXTN,
                                      "DeepseekV32ForCausalLM", indexer="half", latent_norm_eps=1e-6)
FAMILIES["glm_moe_dsa"] = FamilySpec("glm_moe_dsa", "mla", "interleaved", "never", "never", True, NEXTN,
                                     "GlmMoeDsaForCausalLM", indexer="interleaved", latent_norm_eps=1e-6)
# MiniMax-M2 / M2.5: the trunk only (its config declares 3 MTP modules, the release holds none; no layout known).
# q/k norms "always": every release holds q_norm / k_norm and transformers applies them, while the current
# config.json (transformers-5 form) dropped the use_qk_norm key that the earlier form set
FAMILIES["minimax_m2"] = FamilySpec(
    "minimax_m2", "gqa", "half", "never", "always", True, None, "MiniMaxM2ForCausalLM", qk_norm_scope="all",
    tensor_renames=((r"\.block_sparse_moe\.e_score_correction_bias$", ".mlp.gate.e_score_correction_bias"),
                    (r"\.block_sparse_moe\.gate\.", ".mlp.gate."),
                    (r"\.block_sparse_moe\.experts\.(\d+)\.w1\.", r".mlp.experts.\1.gate_proj."),
                    (r"\.block_sparse_moe\.experts\.(\d+)\.w3\.", r".mlp.experts.\1.up_proj."),
                    (r"\.block_sparse_moe\.experts\.(\d+)\.w2\.", r".mlp.experts.\1.down_proj.")))


def family_for(cfg: ModelConfig) -> FamilySpec:
    spec = FAMILIES.get(cfg.model_type)
    if spec is None:
        raise MtpRefError(f"config.json: model_type '{cfg.model_type}' is not supported; supported families: "
                          f"{', '.join(sorted(FAMILIES))}")
    if spec.moe and spec.router == "sigmoid_group" and cfg.scoring_func != "sigmoid":
        raise MtpRefError(f"config.json: scoring_func '{cfg.scoring_func}' is not supported for {spec.name} (only 'sigmoid')")
    if "linear_attention" in cfg.layer_types and spec.linear_attn is None:
        raise MtpRefError(f"config.json: layer_types lists linear_attention layers, which {spec.name} does not have")
    if "sliding_attention" in cfg.layer_types and spec.attention != "gqa_hybrid":
        raise MtpRefError(f"config.json: layer_types lists sliding_attention layers, which {spec.name} does not have")
    if spec.attention == "mla" and not (cfg.kv_lora_rank and cfg.qk_rope_head_dim and cfg.v_head_dim):
        raise MtpRefError("config.json: an MLA model needs kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim and v_head_dim")
    if spec.indexer:
        from .ops_dsa import dsa_config
        if not cfg.q_lora_rank:
            raise MtpRefError(f"config.json: {spec.name}'s DSA indexer reads the q_lora latent; q_lora_rank is missing")
        dsa_config(cfg)  # validates index_* / indexer_types
        ri = cfg.raw.get("indexer_rope_interleave")
        if ri is not None and bool(ri) != (spec.indexer == "interleaved"):
            raise MtpRefError(f"config.json: indexer_rope_interleave={ri} contradicts {spec.name}'s indexer RoPE "
                              f"('{spec.indexer}', as transformers implements the family); not supported")
    ri = cfg.raw.get("rope_interleave")
    if ri is not None and bool(ri) != (spec.rope_style == "interleaved"):
        raise MtpRefError(f"config.json: rope_interleave={ri} contradicts {spec.name}'s RoPE ('{spec.rope_style}'); "
                          f"not supported")
    return spec


def with_checkpoint_layout(spec: FamilySpec, cfg: ModelConfig, names) -> FamilySpec:
    """The spec with the expert layout the checkpoint really holds: releases of one family differ (Qwen3.6-35B-A3B
    ships fused experts in BF16 but per-expert, FP8 block-quantised ones in its -FP8 release; transformers'
    conversions accept both). Decided on the first MoE layer of the trunk."""
    first = next((i for i in range(cfg.num_hidden_layers) if spec.moe and cfg.is_moe_layer(i)), None)
    if first is None:
        return spec
    p = f"model.layers.{first}.mlp.experts."
    fused, per_expert = p + "gate_up_proj" in names, p + "0.gate_proj.weight" in names
    if fused != per_expert:
        return replace(spec, expert_layout="fused" if fused else "per_expert")
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
        if spec.indexer:
            from .ops_dsa import indexer_tensors
            t.update(indexer_tensors(cfg, layer))
    elif spec.layer_type(cfg, layer) == "linear_attention":
        t.update(linear_attention_tensors(cfg, spec))
    elif spec.attention == "gqa_hybrid":
        t.update(hybrid_attention_tensors(cfg, spec, spec.layer_type(cfg, layer)))
    else:
        hd, nkv = cfg.head_dim, cfg.num_key_value_heads
        t["self_attn.q_proj.weight"] = ((2 if spec.attn_gate else 1) * nh * hd, H)
        t["self_attn.k_proj.weight"] = (nkv * hd, H)
        t["self_attn.v_proj.weight"] = (nkv * hd, H)
        t["self_attn.o_proj.weight"] = (H, nh * hd)
        if spec.has_qkv_bias(cfg):
            t["self_attn.q_proj.bias"] = (nh * hd,)
            t["self_attn.k_proj.bias"] = (nkv * hd,)
            t["self_attn.v_proj.bias"] = (nkv * hd,)
        if spec.has_qk_norm(cfg):
            per_head = spec.qk_norm_scope == "head"
            t["self_attn.q_norm.weight"] = (hd if per_head else nh * hd,)
            t["self_attn.k_norm.weight"] = (hd if per_head else nkv * hd,)
    if spec.is_moe(cfg, layer):
        E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
        t["mlp.gate.weight"] = (E, H)
        if spec.router == "sigmoid_group":
            t["mlp.gate.e_score_correction_bias"] = (E,)
        if spec.expert_layout == "fused":
            t["mlp.experts.gate_up_proj"] = (E, 2 * I, H)
            t["mlp.experts.down_proj"] = (E, H, I)
        elif spec.expert_layout == "stacked":
            t["mlp.experts.gate_proj"] = t["mlp.experts.up_proj"] = (E, I, H)
            t["mlp.experts.down_proj"] = (E, H, I)
        else:
            for e in range(E):
                t[f"mlp.experts.{e}.gate_proj.weight"] = (I, H)
                t[f"mlp.experts.{e}.up_proj.weight"] = (I, H)
                t[f"mlp.experts.{e}.down_proj.weight"] = (H, I)
        if spec.shared_expert == "gated":
            if cfg.shared_expert_intermediate_size:
                Is = cfg.shared_expert_intermediate_size
                t["mlp.shared_expert.gate_proj.weight"] = (Is, H)
                t["mlp.shared_expert.up_proj.weight"] = (Is, H)
                t["mlp.shared_expert.down_proj.weight"] = (H, Is)
                t["mlp.shared_expert_gate.weight"] = (1, H)
        elif cfg.n_shared_experts or spec.shared_expert == "sized":
            Is = cfg.shared_expert_intermediate_size if spec.shared_expert == "sized" else I * cfg.n_shared_experts
            t["mlp.shared_experts.gate_proj.weight"] = (Is, H)
            t["mlp.shared_experts.up_proj.weight"] = (Is, H)
            t["mlp.shared_experts.down_proj.weight"] = (H, Is)
    else:
        I = cfg.intermediate_size
        t["mlp.gate_proj.weight"] = (I, H)
        t["mlp.up_proj.weight"] = (I, H)
        t["mlp.down_proj.weight"] = (H, I)
    return t


def linear_attention_tensors(cfg: ModelConfig, spec: FamilySpec) -> dict[str, tuple[int, ...]]:
    """A Gated DeltaNet layer's tensors (names relative to the block prefix), as released."""
    H, K = cfg.hidden_size, cfg.linear_conv_kernel_dim
    nk, nv, dk, dv = cfg.linear_dims
    C = 2 * nk * dk + nv * dv                        # conv channels: all q, all k, all v
    p = "linear_attn."
    if spec.linear_attn == "qkvz":
        t = {p + "in_proj_qkvz.weight": (C + nv * dv, H), p + "in_proj_ba.weight": (2 * nv, H)}
    else:
        t = {p + "in_proj_qkv.weight": (C, H), p + "in_proj_z.weight": (nv * dv, H),
             p + "in_proj_b.weight": (nv, H), p + "in_proj_a.weight": (nv, H)}
    t.update({p + "conv1d.weight": (C, 1, K), p + "dt_bias": (nv,), p + "A_log": (nv,),
              p + "norm.weight": (dv,), p + "out_proj.weight": (H, nv * dv)})
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
    p, b = lay.module_prefix(cfg, j), lay.block_prefix(cfg, j)
    t = {p + lay.emb_norm: (H,), p + lay.hid_norm: (H,), p + lay.proj: (H, 2 * H), p + lay.out_norm: (H,)}
    if lay.head:
        t[p + lay.head] = (V, H)
    if lay.embed:
        t[p + lay.embed] = (V, H)
    # the block inside an MTP module follows the layer-index rule of its index L + j (MoE or dense; always
    # full attention: config.layer_type(i >= L))
    rename = dict(lay.block_rename)
    for k, s in block_tensors(cfg, spec, cfg.num_hidden_layers + j).items():
        t[b + rename.get(k, k)] = s
    return t


# Model types with an engine module of their own: configs and blocks that do not fit ModelConfig / FamilySpec
# (Gemma 4: per-type head geometry, sandwich norms, KV-shared layers, per-layer embeddings; its assistant drafter).
# load_model hands such a checkpoint to the module's load(path, raw config.json).
# (DeepSeek-V4: hc_mult residual streams, sliding + compressed K=V attention with a lightning indexer, hash routing,
# an MTP that sums two projections; its maths is mtp_ref/ops_v4.py.)
OWN_ENGINES = {"gemma4": "mtp_ref.gemma4", "gemma4_text": "mtp_ref.gemma4", "gemma4_assistant": "mtp_ref.gemma4",
               "deepseek_v4": "mtp_ref.ops_v4"}
# DeepSeek-V4's spec: not in FAMILIES (the generic block never runs it); what other code (the CUDA backend's
# support check) reads about the family. attention "hc_compressed": sliding-window + CSA / HCA compressed entries
# on hyper-connection streams; router "sqrtsoftplus_hash": sqrt(softplus) scores, hash routing on the first layers.
V4_SPEC = FamilySpec("deepseek_v4", "hc_compressed", "interleaved", "never", "never", True, None,
                     "DeepseekV4ForCausalLM", router="sqrtsoftplus_hash")


def own_engine(path):
    """The model loaded by its own engine module if config.json names one of OWN_ENGINES, else None (load_config
    then reports any problem with the file)."""
    import importlib
    import json
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    mod = OWN_ENGINES.get(raw.get("model_type")) if isinstance(raw, dict) else None
    return None if mod is None else importlib.import_module(mod).load(path, raw)
