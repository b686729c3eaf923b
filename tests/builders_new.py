"""Tiny random checkpoints of the issue-19 families in their RELEASED layouts, with transformers 5.23 oracles.

TEST-ONLY (torch + transformers). Shares the encoding helpers of builders.py.

MiMo-V2-Flash (`mimo_v2_flash`, XiaomiMiMo/MiMo-V2-Flash):
* config.json with the release's own keys: hybrid_layer_pattern (1 = sliding), moe_layer_freq (per-layer
  0/1 list), swa_num_attention_heads, swa_num_key_value_heads, swa_head_dim, swa_v_head_dim, rope_theta,
  swa_rope_theta, sliding_window_size, add_swa_attention_sink_bias, add_full_attention_sink_bias,
  partial_rotary_factor, attention_value_scale, layernorm_epsilon; no num_nextn_predict_layers.
* trunk tensors: model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (+ attention_sink_bias on sliding layers),
  mlp.gate.weight + mlp.gate.e_score_correction_bias + mlp.experts.{e}.{gate,up,down}_proj.weight (MoE layers),
  mlp.{gate,up,down}_proj.weight (dense layers), input_layernorm, post_attention_layernorm;
* MTP: model.mtp.layers.{j}.{enorm, hnorm, eh_proj, input_layernorm, self_attn.*, pre_mlp_layernorm, mlp.*,
  final_layernorm} (vLLM mimo_v2_mtp.py's list); three modules as released.

transformers 5.23 work-arounds (test code only, never in the engine):
* MiMoV2FlashConfig ignores hybrid_layer_pattern, moe_layer_freq, swa_*, rope_theta/swa_rope_theta,
  partial_rotary_factor and layernorm_epsilon (it hard-codes the release's values). The oracle's config is
  built here from the written keys (layer_types, mlp_layer_types, rope_parameters, rms_norm_eps); the
  sliding layers' kv heads are hard-coded to 2 x num_key_value_heads there, so the tiny config keeps that ratio.
* It has no MTP class (`_keys_to_ignore_on_load_unexpected = ["^model.mtp."]`): the oracle's MTP module
  is transformers' own MtpLayer (modeling_layers.py) around a MiMoV2FlashDecoderLayer built as a dense
  sliding-window layer, with the main model's sliding-attention rotary embedding and lm_head.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from builders import _randomize, _store_module, write_safetensors, write_tokenizer


def mimo_v2_released(**o) -> dict:
    L = o.pop("num_hidden_layers", 4)
    c = {
        "architectures": ["MiMoV2FlashForCausalLM"],
        "model_type": "mimo_v2_flash",
        "vocab_size": 384,
        "hidden_size": 64,
        "intermediate_size": 160,
        "moe_intermediate_size": 32,
        "num_hidden_layers": L,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 24,
        "v_head_dim": 16,
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 2,
        "swa_head_dim": 24,
        "swa_v_head_dim": 16,
        "rope_theta": 5000000,
        "swa_rope_theta": 10000,
        "partial_rotary_factor": 0.334,
        "attention_value_scale": 0.707,
        "sliding_window_size": 4,
        "add_swa_attention_sink_bias": True,
        "add_full_attention_sink_bias": False,
        "hybrid_layer_pattern": [0] + [1] * (L - 2) + [0],
        "moe_layer_freq": [0] + [1] * (L - 1),
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_shared_experts": None,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": None,
        "attention_bias": False,
        "hidden_act": "silu",
        "layernorm_epsilon": 1e-5,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 0,
        "torch_dtype": "bfloat16",
    }
    c.update(o)
    return c


def mimo_v2_hf_config(c: dict):
    """The transformers config that computes what the released keys mean (see the module docstring)."""
    from transformers import MiMoV2FlashConfig

    assert c["swa_num_key_value_heads"] == 2 * c["num_key_value_heads"]  # transformers' hard-coded ratio
    assert c["swa_head_dim"] == c["head_dim"] and c["swa_v_head_dim"] == c["v_head_dim"]
    keep = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "v_head_dim", "attention_value_scale",
            "n_routed_experts", "num_experts_per_tok", "n_group", "topk_group", "norm_topk_prob",
            "routed_scaling_factor", "attention_bias", "max_position_embeddings", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "sliding_window_size")
    cfg = MiMoV2FlashConfig(
        **{k: c[k] for k in keep},
        rms_norm_eps=c["layernorm_epsilon"],
        layer_types=["sliding_attention" if f else "full_attention" for f in c["hybrid_layer_pattern"]],
        mlp_layer_types=["sparse" if f else "dense" for f in c["moe_layer_freq"]],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": float(c["rope_theta"]),
                               "partial_rotary_factor": c["partial_rotary_factor"]},
            "sliding_attention": {"rope_type": "default", "rope_theta": float(c["swa_rope_theta"]),
                                  "partial_rotary_factor": c["partial_rotary_factor"]},
        },
    )
    cfg._attn_implementation = "eager"
    return cfg


def _mimo_v2_mtp_config(cfg):
    m = copy.deepcopy(cfg)
    m.num_hidden_layers = 1
    m.layer_types = ["sliding_attention"]
    m.mlp_layer_types = ["dense"]
    m._attn_implementation = "eager"
    return m


def _mimo_v2_mtp_name(k: str) -> str:
    k = k.replace("mtp_block.", "").replace("post_attention_layernorm", "pre_mlp_layernorm")
    return k.replace("self_attn.sinks", "self_attn.attention_sink_bias").replace("post_norm.", "final_layernorm.")


@dataclass
class MiMoV2Oracle:
    path: Path
    model: Any                 # MiMoV2FlashForCausalLM, float32, eager
    mtp: Any                   # list of transformers MtpLayer
    mtp_config: Any
    config_json: dict
    tensor_names: list

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @torch.no_grad()
    def forward(self, ids):
        out = self.model(input_ids=torch.as_tensor(list(ids))[None], output_hidden_states=True, use_cache=False)
        return out.logits[0].float().numpy(), out.hidden_states[-1][0]

    @torch.no_grad()
    def mtp_logits(self, ids, chain: str = "post_norm") -> list[np.ndarray]:
        """Depth d row i: module d on (prev[i], ids[i+d+1]) at position i+d+1; prev = trunk post-norm hidden
        (d = 0) or module d-1's output, post-norm (transformers' MtpModel) or pre-norm (chain="pre_norm",
        vLLM / SGLang). logits = lm_head(final_layernorm(block output))."""
        from transformers.masking_utils import create_sliding_window_causal_mask

        ids = list(ids)
        T = len(ids)
        _, prev = self.forward(ids)
        base = self.model.model
        res = []
        for d, layer in enumerate(self.mtp):
            rows = T - 1 - d
            if rows <= 0:
                break
            tok = torch.tensor(ids[d + 1:])[None]
            pos = torch.arange(d + 1, T)[None]
            emb = base.embed_tokens(tok)
            mask = create_sliding_window_causal_mask(config=self.mtp_config, inputs_embeds=emb, attention_mask=None,
                                                     past_key_values=None, position_ids=pos)
            pe = base.rotary_emb(emb, pos, "sliding_attention")
            layer.use_post_norm = False
            x = layer(emb, prev[:rows][None], pe, mask, pos, None)[0]
            g = layer.post_norm(x)
            res.append(self.model.lm_head(g).float().numpy())
            prev = g if chain == "post_norm" else x
        return res


def build_mimo_v2_flash(dir, seed: int = 0, n_mtp: int = 3, dtype: str = "bf16", **overrides) -> MiMoV2Oracle:
    """dtype "fp8": the release's form, attention / MLP / expert linears float8_e4m3fn + `<name>_scale_inv`
    128x128 block scales, quantization_config fp8 (builders._encode); norms, sinks, router, eh_proj bf16."""
    from transformers import MiMoV2FlashForCausalLM
    from transformers.modeling_layers import MtpLayer
    from transformers.models.mimo_v2_flash.modeling_mimo_v2_flash import MiMoV2FlashDecoderLayer, MiMoV2FlashRMSNorm

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    released = mimo_v2_released(**overrides)
    if dtype == "fp8":
        from builders import FP8_QUANT_CONFIG
        released["quantization_config"] = dict(FP8_QUANT_CONFIG)
    cfg = mimo_v2_hf_config(released)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MiMoV2FlashForCausalLM(cfg).to(torch.float32).eval()
    _randomize(model, gen)
    tensors: dict[str, torch.Tensor] = {}
    _store_module(model, lambda k: k.replace("self_attn.sinks", "self_attn.attention_sink_bias"), dtype, gen, tensors)
    mcfg = _mimo_v2_mtp_config(cfg)
    layers, mtp_keys = [], []
    for j in range(n_mtp):
        layer = MtpLayer(mcfg, MiMoV2FlashDecoderLayer, MiMoV2FlashRMSNorm, 0).to(torch.float32).eval()
        _randomize(layer, gen)
        sub: dict[str, torch.Tensor] = {}
        _store_module(layer, lambda k, j=j: f"model.mtp.layers.{j}." + _mimo_v2_mtp_name(k), dtype, gen, sub)
        tensors.update(sub)
        mtp_keys += list(sub)
        layers.append(layer)
    (dir / "config.json").write_text(json.dumps(released, indent=2, sort_keys=True))
    write_safetensors(dir, tensors, 2, last_shard_keys=mtp_keys)   # sharded + index, MTP in the last shard
    write_tokenizer(dir, released["vocab_size"])
    return MiMoV2Oracle(dir, model, layers, mcfg, released, sorted(tensors))


# ==================================================================================================
# Step-3.7-Flash (`step3p7`, stepfun-ai/Step-3.7-Flash; Step-3.5-Flash is its flat text-only form `step3p5`)
# ==================================================================================================
# Released layout (transformers' conversion_mapping "step3p7", read backwards; vLLM step3p5_mtp.py):
# * config.json: {"model_type": "step3p7", "text_config": {...}, "vision_config": {...}}; the text config's
#   per-layer lists (layer_types, rope_theta, partial_rotary_factors, swiglu_limits, swiglu_limits_shared) are
#   padded with the num_nextn_predict_layers MTP blocks; moe_layers_enum lists the MoE layers;
#   attention_other_setting gives the sliding layers' head count; num_attention_groups = kv heads.
# * model.embed_tokens, model.layers.{i}.{input_layernorm, post_attention_layernorm, self_attn.{q,k,v,o,g}_proj,
#   self_attn.{q,k}_norm, mlp.* (dense) | moe.{gate.weight, router_bias, gate_proj/up_proj/down_proj.weight 3-D},
#   share_expert.*}, model.norm, lm_head; MTP model.layers.{L+j}.{enorm, hnorm, eh_proj, <block>,
#   transformer.shared_head.norm, transformer.shared_head.output}. vision_model.* / vit_large_projector.* are
#   NOT written (the engine reads the text model only; from_pretrained leaves them randomly initialised).
# transformers 5.23 work-arounds (test code only): its MtpModel builds the sliding MTP blocks with the
# full-attention head count (per_layer_config indexed by MTP-local index), indexes the clamp lists by the
# MTP-local index, maps no `transformer.shared_head.*` and drafts with lm_head. The oracle's MTP module j is
# transformers' MtpLayer around a Step3p7DecoderLayer built from a config whose lists are the release's entries
# L+j, with module j's OWN shared_head.output as its head.


def step_released_text(**o) -> dict:
    L, n = 4, 3
    c = {
        "model_type": "step3p5",
        "vocab_size": 384,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": L,
        "num_nextn_predict_layers": n,
        "num_attention_heads": 4,
        "num_attention_groups": 2,
        "head_dim": 16,
        "attention_other_setting": {"attention_type": "sliding_attention", "num_attention_heads": 6,
                                    "num_attention_groups": 2, "head_dim": 16},
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
                       + ["sliding_attention"] * n,
        "sliding_window": 4,
        "rope_theta": [10000.0, 5000.0, 5000.0, 10000.0] + [5000.0] * n,
        "partial_rotary_factors": [0.5, 1.0, 1.0, 0.5] + [1.0] * n,
        "rope_scaling": {"rope_type": "llama3", "factor": 2.0, "original_max_position_embeddings": 8,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        "max_position_embeddings": 4096,
        "moe_layers_enum": "2,3",
        "moe_num_experts": 8,
        "moe_top_k": 2,
        "moe_intermediate_size": 32,
        "share_expert_dim": 48,
        "moe_router_scaling_factor": 2.5,
        "swiglu_limits": [0, 0, 0, 0.5] + [0] * n,
        "swiglu_limits_shared": [0, 0.5, 0, 0.5] + [0] * n,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "eos_token_id": 0,
    }
    c.update(o)
    return c


STEP_TINY_VISION = {"width": 32, "layers": 1, "heads": 2, "image_size": 28, "patch_size": 14}


def _step_hf_text_config(t: dict, **changes):
    from transformers.models.step3p7.configuration_step3p7 import Step3p7TextConfig

    kw = {k: copy.deepcopy(v) for k, v in t.items() if k != "model_type"}
    kw.update(changes)
    cfg = Step3p7TextConfig(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def _step_mtp_config(t: dict):
    """The MTP blocks' config: the release's list entries L .. L+n-1 (fixes 5.23's MTP-local indexing)."""
    L, n = t["num_hidden_layers"], t["num_nextn_predict_layers"]
    enum = {int(i) for i in str(t["moe_layers_enum"]).split(",") if i.strip()}
    lists = {k: t[k][L:L + n] for k in ("layer_types", "rope_theta", "partial_rotary_factors", "swiglu_limits",
                                        "swiglu_limits_shared") if isinstance(t.get(k), list)}
    return _step_hf_text_config({k: v for k, v in t.items() if k != "moe_layers_enum"}, num_hidden_layers=n,
                                num_nextn_predict_layers=0,
                                mlp_layer_types=["sparse" if L + j in enum else "dense" for j in range(n)], **lists)


def _step_released_name(k: str) -> str:
    for a, b in ((".mlp.gate.weight", ".moe.gate.weight"), (".mlp.gate.e_score_correction_bias", ".moe.router_bias"),
                 (".mlp.shared_experts.", ".share_expert.")):
        k = k.replace(a, b)
    return k


def _store_step(module, prefix_map, gen, out: dict) -> None:
    """bf16-encode module's tensors under released names; write the decoded values back into the module."""
    from builders import _encode

    with torch.no_grad():
        for k, t in module.state_dict(keep_vars=True).items():
            name = prefix_map(k)
            if name is None:
                continue
            if k.endswith("mlp.experts.gate_up_proj"):          # [E, 2I, H] -> moe.gate_proj / moe.up_proj [E, I, H]
                base = name[: -len("mlp.experts.gate_up_proj")]
                I = t.shape[1] // 2
                g_st, g = _encode(base + "moe.gate_proj.weight", t[:, :I], "bf16", gen)
                u_st, u = _encode(base + "moe.up_proj.weight", t[:, I:], "bf16", gen)
                out.update(g_st)
                out.update(u_st)
                t.copy_(torch.cat([g, u], dim=1))
                continue
            if k.endswith("mlp.experts.down_proj"):
                name = name[: -len("mlp.experts.down_proj")] + "moe.down_proj.weight"
            st, dec = _encode(_step_released_name(name), t, "bf16", gen)
            out.update(st)
            t.copy_(dec.reshape(t.shape))


@dataclass
class StepOracle:
    path: Path
    model: Any                 # Step3p7ForConditionalGeneration, float32, eager
    mtp: Any                   # list of transformers MtpLayer
    heads: Any                 # list of nn.Linear: module j's own shared_head.output
    mtp_config: Any
    config_json: dict
    tensor_names: list

    @property
    def vocab_size(self) -> int:
        return self.config_json["text_config"]["vocab_size"]

    @torch.no_grad()
    def forward(self, ids):
        lm = self.model.model.language_model
        h = lm(input_ids=torch.as_tensor(list(ids))[None]).last_hidden_state[0]
        return self.model.lm_head(h).float().numpy(), h

    @torch.no_grad()
    def mtp_logits(self, ids, chain: str = "post_norm", head: str = "own") -> list[np.ndarray]:
        """As MiMoV2Oracle.mtp_logits; head="own" uses module d's shared_head.output (the release's design),
        "lm_head" what transformers 5.23's MtpModel does."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        ids = list(ids)
        T = len(ids)
        _, prev = self.forward(ids)
        lm = self.model.model.language_model
        res = []
        for d, layer in enumerate(self.mtp):
            rows = T - 1 - d
            if rows <= 0:
                break
            tok = torch.tensor(ids[d + 1:])[None]
            pos = torch.arange(d + 1, T)[None]
            emb = lm.embed_tokens(tok)
            lt = self.mtp_config.layer_types[d]
            make = create_sliding_window_causal_mask if lt == "sliding_attention" else create_causal_mask
            mask = make(config=self.mtp_config, inputs_embeds=emb, attention_mask=None, past_key_values=None,
                        position_ids=pos)
            pe = lm.rotary_emb(emb, pos, lt)
            layer.use_post_norm = False
            x = layer(emb, prev[:rows][None], pe, mask, pos, None)[0]
            g = layer.post_norm(x)
            out = self.heads[d] if head == "own" else self.model.lm_head
            res.append(out(g).float().numpy())
            prev = g if chain == "post_norm" else x
        return res


def build_step3p7(dir, seed: int = 0, **overrides) -> StepOracle:
    from transformers import Step3p7Config, Step3p7ForConditionalGeneration
    from transformers.modeling_layers import MtpLayer
    from transformers.models.step3p7.modeling_step3p7 import Step3p7DecoderLayer, Step3p7RMSNorm

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    text = step_released_text(**overrides)
    released = {"architectures": ["Step3p7ForConditionalGeneration"], "model_type": "step3p7",
                "text_config": text, "vision_config": dict(STEP_TINY_VISION), "torch_dtype": "bfloat16"}
    cfg = Step3p7Config(text_config={k: copy.deepcopy(v) for k, v in text.items() if k != "model_type"},
                        vision_config=dict(STEP_TINY_VISION))
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Step3p7ForConditionalGeneration(cfg).to(torch.float32).eval()
    _randomize(model, gen)

    def trunk_name(k):
        if k.startswith("model.language_model."):
            return "model." + k[len("model.language_model."):]
        return k if k == "lm_head.weight" else None          # vision tower / projector: not written

    tensors: dict[str, torch.Tensor] = {}
    _store_step(model, trunk_name, gen, tensors)
    mcfg = _step_mtp_config(text)
    L, V, H = text["num_hidden_layers"], text["vocab_size"], text["hidden_size"]
    layers, heads, mtp_keys = [], [], []
    for j in range(text["num_nextn_predict_layers"]):
        layer = MtpLayer(mcfg, Step3p7DecoderLayer, Step3p7RMSNorm, j).to(torch.float32).eval()
        head = torch.nn.Linear(H, V, bias=False)
        _randomize(layer, gen)
        _randomize(head, gen)
        p = f"model.layers.{L + j}."

        def name(k, p=p):
            k = k.replace("mtp_block.", "").replace("post_norm.", "transformer.shared_head.norm.")
            return p + k

        sub: dict[str, torch.Tensor] = {}
        _store_step(layer, name, gen, sub)
        _store_step(head, lambda k, p=p: p + "transformer.shared_head.output." + k, gen, sub)
        tensors.update(sub)
        mtp_keys += list(sub)
        layers.append(layer)
        heads.append(head)
    (dir / "config.json").write_text(json.dumps(released, indent=2, sort_keys=True))
    write_safetensors(dir, tensors, 2, last_shard_keys=mtp_keys)
    write_tokenizer(dir, V)
    return StepOracle(dir, model, layers, heads, mcfg, released, sorted(tensors))
