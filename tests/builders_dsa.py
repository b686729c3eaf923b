"""Tiny random checkpoints for the MLA / DSA families and MiniMax-M2, in their released layouts, with
transformers 5.23 oracles. TEST-ONLY (imports torch and transformers).

* glm4_moe_lite (GLM-4.7-Flash): DeepSeek-V3 names (MLA, sigmoid router with e_score_correction_bias, shared
  expert), MTP at ``model.layers.{L+j}.{enorm, hnorm, eh_proj, shared_head.{norm, head}, embed_tokens}`` + block.
* deepseek_v32 (DeepSeek-V3.2): the same plus ``self_attn.indexer.{wq_b, wk, k_norm.{weight, bias},
  weights_proj}`` in every block, the MTP block included.
* glm_moe_dsa (GLM-5): as deepseek_v32; "shared" layers (indexer_types from index_topk_freq /
  index_skip_topk_offset) ship no indexer tensors.
* minimax_m2 (MiniMax-M2 / M2.5): ``block_sparse_moe.{gate.weight, e_score_correction_bias,
  experts.{e}.{w1, w2, w3}.weight}``, q_norm / k_norm over all heads; config.json declares ``use_mtp: true,
  num_mtp_modules: 3`` and the files hold no MTP tensor, as released.

The oracle of the MTP modules is transformers' own ``MtpModel`` built on the main model, with these
transformers 5.23 problems patched around here (never in the engine; see mtp_families.md section 9.3):
  1. the configs of these families have no ``num_mtp_layers`` (and, with ``mlp_layer_types`` /
     ``layer_types``, ``get_mtp_config`` needs ``mtp_mlp_layer_types`` / ``mtp_layer_types``): set on the config;
  2. ``MtpModel.create_masks_for_mtp_layer`` raises KeyError on the DSA layer type "indexed_attention", and
     the indexer needs a materialised mask: replaced by one ``create_causal_mask(allow_is_causal_skip=False)``;
  3. ``GlmMoeDsaDecoderLayer`` returns (hidden, topk) where MtpLayer expects a tensor: the MTP blocks' forward
     keeps element 0;
  4. the ``_keys_to_ignore_on_load_unexpected`` patterns hard-code layer 47 / 61 / 78: pointed at ours in
     the from_pretrained check (tests/test_families_dsa.py).
"""

from __future__ import annotations

import copy
import json
import re
import types
from pathlib import Path

import torch

import builders
from builders import Oracle, _randomize, _store_module, write_safetensors, write_tokenizer

TORCH_DTYPE = "bfloat16"


def _glm4_moe_lite(o: dict) -> dict:
    # zai-org/GLM-4.7-Flash config.json keys (values shrunk; the real ones are in docs/algorithm.md)
    c = {"architectures": ["Glm4MoeLiteForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
         "eos_token_id": [0], "pad_token_id": 0, "first_k_dense_replace": 1, "hidden_act": "silu",
         "hidden_size": 64, "intermediate_size": 128, "kv_lora_rank": 32, "max_position_embeddings": 202752,
         "model_type": "glm4_moe_lite", "moe_intermediate_size": 32, "n_group": 1, "n_routed_experts": 8,
         "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 4, "num_experts_per_tok": 2,
         "num_hidden_layers": 2, "num_key_value_heads": 4, "num_nextn_predict_layers": 1,
         "partial_rotary_factor": 1.0, "q_lora_rank": 48, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16,
         "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 1000000.0, "routed_scaling_factor": 1.8,
         "tie_word_embeddings": False, "topk_group": 1, "topk_method": "noaux_tc", "torch_dtype": TORCH_DTYPE,
         "transformers_version": "5.0.0.dev0", "use_cache": True, "v_head_dim": 24, "vocab_size": 320}
    c.update(o)
    return c


def _deepseek_v32(o: dict) -> dict:
    # deepseek-ai/DeepSeek-V3.2 config.json keys (V3's plus index_*)
    c = dict(builders._deepseek_released({}, "bf16"))
    c.update({"architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32", "index_head_dim": 32,
              "index_n_heads": 16, "index_topk": 4, "num_nextn_predict_layers": 1, "num_hidden_layers": 2,
              "transformers_version": "4.44.2", "first_k_dense_replace": 1})
    c.update(o)
    return c


def _glm_moe_dsa(o: dict) -> dict:
    # zai-org/GLM-5 config.json keys: GLM-4.7-Flash's plus index_* (rope_theta / eps as GLM's)
    c = _glm4_moe_lite({})
    c.update({"architectures": ["GlmMoeDsaForCausalLM"], "model_type": "glm_moe_dsa", "index_head_dim": 32,
              "index_n_heads": 16, "index_topk": 4, "num_hidden_layers": 3, "indexer_rope_interleave": True})
    c.update(o)
    return c


def _minimax_m2(o: dict) -> dict:
    # MiniMaxAI/MiniMax-M2 config.json keys (bf16 here; the release is block FP8)
    L = int(o.get("num_hidden_layers", 2))
    c = {"architectures": ["MiniMaxM2ForCausalLM"], "attn_type_list": [1] * L,
         "auto_map": {"AutoConfig": "configuration_minimax_m2.MiniMaxM2Config",
                      "AutoModelForCausalLM": "modeling_minimax_m2.MiniMaxM2ForCausalLM"},
         "bos_token_id": 0, "eos_token_id": 0, "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
         "intermediate_size": 32, "max_position_embeddings": 196608, "model_type": "minimax_m2",
         "mtp_transformer_layers": 1, "num_attention_heads": 4, "num_experts_per_tok": 2, "num_hidden_layers": L,
         "num_key_value_heads": 2, "num_local_experts": 8, "num_mtp_modules": 3, "qk_norm_type": "per_layer",
         "rms_norm_eps": 1e-06, "rope_theta": 5000000, "rotary_dim": 8, "scoring_func": "sigmoid",
         "shared_intermediate_size": 0, "tie_word_embeddings": False, "transformers_version": "4.46.1",
         "use_cache": True, "use_mtp": True, "use_qk_norm": True, "use_routing_bias": True, "vocab_size": 320,
         "torch_dtype": TORCH_DTYPE}
    c.update(o)
    return {k: v for k, v in c.items() if v is not None}   # None: the key is absent, as in a later revision


RELEASED = {"glm4_moe_lite": _glm4_moe_lite, "deepseek_v32": _deepseek_v32, "glm_moe_dsa": _glm_moe_dsa,
            "minimax_m2": _minimax_m2}

VARIANTS: dict[str, dict] = {
    "glm4_moe_lite": dict(family="glm4_moe_lite", num_nextn_predict_layers=2),
    # index_topk 4 < the 12-token prompt: the selection matters
    "deepseek_v32": dict(family="deepseek_v32", num_nextn_predict_layers=2),
    # indexer_types F F S: layer 2 reuses layer 1's top-k
    "glm_moe_dsa": dict(family="glm_moe_dsa", index_topk_freq=2, index_skip_topk_offset=2, seed=1),
    "minimax_m2": dict(family="minimax_m2"),
    # the current release's transformers-5 config (revision fbd8a14) has no use_qk_norm key: q/k norms still apply
    "minimax_m2-t5": dict(family="minimax_m2", use_qk_norm=None, seed=4),
    # the released FP8 forms: 128x128 block e4m3 + float32 `weight_scale_inv` (every shape here is a partial block);
    # V3.2 keeps the indexer's weights_proj in bf16, MiniMax-M2 its router and bias
    "deepseek_v32-fp8": dict(family="deepseek_v32", dtype="fp8", seed=2),
    "minimax_m2-fp8": dict(family="minimax_m2", dtype="fp8", seed=3),
}


def _hf(family: str):
    import transformers as tf

    return {"glm4_moe_lite": (tf.Glm4MoeLiteConfig, tf.Glm4MoeLiteForCausalLM),
            "deepseek_v32": (tf.DeepseekV32Config, tf.DeepseekV32ForCausalLM),
            "glm_moe_dsa": (tf.GlmMoeDsaConfig, tf.GlmMoeDsaForCausalLM),
            "minimax_m2": (tf.MiniMaxM2Config, tf.MiniMaxM2ForCausalLM)}[family]


def patch_mtp_config(cfg, n: int) -> None:
    """transformers 5.23 problem 1 (module docstring)."""
    cfg.num_mtp_layers = n
    if getattr(cfg, "mlp_layer_types", None) is not None:
        cfg.mtp_mlp_layer_types = ["sparse"] * n
    if getattr(cfg, "layer_types", None) is not None:
        cfg.mtp_layer_types = ["indexed_attention"] * n


def patch_mtp_model(mtp) -> None:
    """transformers 5.23 problems 2 and 3 (module docstring)."""
    from transformers.masking_utils import create_causal_mask

    def masks(self, layer_idx, inputs_embeds, mtp_cache, position_ids):
        return {"attention_mask": create_causal_mask(config=self.config, inputs_embeds=inputs_embeds,
                                                     attention_mask=None, past_key_values=None,
                                                     position_ids=position_ids, allow_is_causal_skip=False)}

    mtp.create_masks_for_mtp_layer = types.MethodType(masks, mtp)
    for layer in mtp.layers:
        blk = layer.mtp_block

        def first(*a, _blk=blk, **k):
            out = type(_blk).forward(_blk, *a, **k)
            return out[0] if isinstance(out, tuple) else out

        blk.forward = first


def build(variant: str, dir: str | Path) -> Oracle:
    kw = copy.deepcopy(VARIANTS[variant])
    family, seed, dtype = kw.pop("family"), int(kw.pop("seed", 0)), kw.pop("dtype", "bf16")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    released = RELEASED[family](kw)
    if dtype == "fp8":
        released["quantization_config"] = dict(builders.FP8_QUANT_CONFIG)
    n_mtp = int(released.get("num_nextn_predict_layers") or 0)
    cfg_cls, model_cls = _hf(family)
    cfg = cfg_cls(**{k: copy.deepcopy(v) for k, v in released.items()
                     if k not in builders._NOT_HF_KEYS and k != "quantization_config"})
    cfg._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32).eval()
    mtp = None
    if n_mtp:
        from transformers.modeling_layers import MtpModel

        patch_mtp_config(model.config, n_mtp)
        mtp = MtpModel(model, n_mtp).to(torch.float32).eval()
        mtp.config._attn_implementation = "eager"
        patch_mtp_model(mtp)
    _randomize(model, gen)
    tensors: dict[str, torch.Tensor] = {}
    fp8_target = builders._is_fp8_target
    builders._is_fp8_target = lambda name, t: fp8_target(name, t) and "indexer.weights_proj" not in name
    try:
        _store(model, family, dtype, gen, tensors, mtp, n_mtp, cfg.num_hidden_layers)
    finally:
        builders._is_fp8_target = fp8_target
    (dir / "config.json").write_text(json.dumps(released, indent=2, sort_keys=True))
    mtp_keys = [k for k in tensors if re.match(r"model\.layers\.(\d+)\.", k)
                and int(k.split(".")[2]) >= cfg.num_hidden_layers]
    write_safetensors(dir, tensors, 2, last_shard_keys=mtp_keys)
    write_tokenizer(dir, int(released["vocab_size"]))
    return Oracle(family=family, path=dir, model=model, mtp=mtp, num_mtp=n_mtp, config_json=released,
                  tensor_names=sorted(tensors), dtype=dtype)


def _store(model, family, dtype, gen, tensors, mtp, n_mtp, L) -> None:
    """Draw and store the trunk, then the MTP modules (their own random glue and block; copies of the main
    embedding and head, as released)."""
    _store_module(model, lambda k: k, dtype, gen, tensors)
    if family == "minimax_m2":  # the release's Mixtral-style names
        for k in list(tensors):
            tensors[_minimax_name(k)] = tensors.pop(k)
    for j in range(n_mtp):
        layer = mtp.layers[j]
        _randomize(layer, gen)
        pfx = f"model.layers.{L + j}."

        def rename(k, pfx=pfx):
            if k.startswith("mtp_block."):
                return pfx + k[len("mtp_block."):]
            return pfx + ("shared_head.norm.weight" if k == "post_norm.weight" else k)

        sub: dict[str, torch.Tensor] = {}
        _store_module(layer, rename, dtype, gen, sub)
        sub[pfx + "embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
        sub[pfx + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
        tensors.update(sub)
    if mtp is not None:
        mtp.tie_with_main_model(model)


def _minimax_name(k: str) -> str:
    k = k.replace(".mlp.e_score_correction_bias", ".block_sparse_moe.e_score_correction_bias")
    k = k.replace(".mlp.gate.", ".block_sparse_moe.gate.").replace(".mlp.experts.", ".block_sparse_moe.experts.")
    for ours, theirs in ((".gate_proj.", ".w1."), (".up_proj.", ".w3."), (".down_proj.", ".w2.")):
        if ".block_sparse_moe.experts." in k:
            k = k.replace(ours, theirs)
    return k
