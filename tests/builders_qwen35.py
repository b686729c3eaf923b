"""Tiny random Qwen3.5 / Qwen3.6 (``qwen3_5``, ``qwen3_5_moe``) and Qwen3-Next (``qwen3_next``) checkpoints in
their released Hugging Face layouts, plus torch oracles.

TEST-ONLY: imports torch and transformers; the engine (mtp_ref) never does.

Released layouts written here (names from transformers 5.23's modeling files and conversion_mapping.py, and
vLLM's qwen3_5_mtp.py / qwen3_next_mtp.py):

* Qwen3.5 / 3.6 (multimodal release, ``Qwen3_5ForConditionalGeneration`` / ``Qwen3_5MoeForConditionalGeneration``):
  ``config.json`` with ``text_config`` (model_type ``qwen3_5_text`` / ``qwen3_5_moe_text``, ``layer_types``,
  ``rope_parameters`` with M-RoPE ``mrope_section``, ``mtp_num_hidden_layers``); ``tie_word_embeddings`` on the
  outer object; trunk under ``model.language_model.`` (transformers' PrefixChange strips it on load), a vision
  tower under ``model.visual.`` (one stand-in tensor here), ``lm_head.weight``, MTP under ``mtp.``.
  Gated DeltaNet: ``linear_attn.{in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, conv1d, dt_bias, A_log, norm,
  out_proj}``. MoE: ``mlp.gate``, FUSED ``mlp.experts.gate_up_proj [E, 2I, H]`` (gate rows first) and
  ``mlp.experts.down_proj [E, H, I]``, ``mlp.shared_expert.*``, ``mlp.shared_expert_gate``.
  The ``qwen3_5_text`` variant is the text-only form: flat config, trunk under ``model.``.
* Qwen3-Next (``Qwen3NextForCausalLM``): flat config (``rope_theta`` + ``partial_rotary_factor``,
  ``full_attention_interval`` instead of ``layer_types``, no MTP count key), trunk under ``model.``, Gated DeltaNet
  with the fused, per-key-head grouped ``in_proj_qkvz`` and ``in_proj_ba``; experts stored per expert
  (``mlp.experts.{e}.{gate,up,down}_proj.weight``, what transformers' qwen2_moe conversion merges).
* MTP (both): ``mtp.{pre_fc_norm_embedding, pre_fc_norm_hidden, fc [H, 2H], norm}`` shared by all MTP layers, and
  ``mtp.layers.{j}.*`` = one decoder block of the family, always full attention (MoE in MoE models).

transformers drops ``^mtp.*`` for these families, so the MTP oracle (:class:`QwenMTPReference`) is assembled here
from transformers' own decoder-layer and RMSNorm classes of the family, as transformers' ``MtpLayer``
(modeling_layers.py) is: ``x = fc(concat[pre_fc_norm_embedding(emb), pre_fc_norm_hidden(h)])`` (embedding first),
``g = norm(layers[j](x))``, logits = the main ``lm_head(g)``; ``g`` feeds depth j+1. Teacher-forced convention as in
builders.py: depth d row i takes token ids[i+d+1] at rotary position i+d+1.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import builders

FAMILIES = ("qwen3_5", "qwen3_5_moe", "qwen3_next")


# --------------------------------------------------------------------------------------------------
# Released configs
# --------------------------------------------------------------------------------------------------


def _qwen3_5_text_config(moe: bool) -> dict:
    """text_config of Qwen3.6-27B (dense) / Qwen3.6-35B-A3B (moe), at tiny sizes."""
    c = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "dtype": "bfloat16",
        "eos_token_id": 0,
        "full_attention_interval": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_value_head_dim": 24,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": 262144,
        "model_type": "qwen3_5_moe_text" if moe else "qwen3_5_text",
        "mtp_num_hidden_layers": 1,
        "mtp_use_dedicated_embeddings": False,
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [2, 1, 1],
            "rope_type": "default",
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
        },
        "use_cache": True,
        "vocab_size": 320,
    }
    if moe:
        del c["intermediate_size"]
        c.update({
            "moe_intermediate_size": 32,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "router_aux_loss_coef": 0.001,
            "shared_expert_intermediate_size": 48,
            "output_router_logits": False,
        })
    return c


def _vl_wrap(text: dict, moe: bool, tie: bool) -> dict:
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"],
        "image_token_id": 248056,
        "model_type": "qwen3_5_moe" if moe else "qwen3_5",
        "text_config": text,
        "tie_word_embeddings": tie,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": 248057,
        "vision_config": {"depth": 1, "hidden_size": 16, "model_type": "qwen3_5_moe" if moe else "qwen3_5",
                          "out_hidden_size": 64, "num_heads": 2, "intermediate_size": 32},
        "vision_end_token_id": 248054,
        "vision_start_token_id": 248053,
    }


def _qwen3_next_config() -> dict:
    """Qwen3-Next-80B-A3B's config.json at tiny sizes (no MTP count key: vLLM defaults it to 1)."""
    return {
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "decoder_sparse_step": 1,
        "eos_token_id": 0,
        "full_attention_interval": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 6,
        "linear_value_head_dim": 24,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [1],
        "model_type": "qwen3_next",
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 3,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 48,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.0.dev0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 320,
    }


# variant -> (family, build options). "vl": the multimodal release form (text_config, model.language_model.).
VARIANTS: dict[str, dict] = {
    # Qwen3.6-27B form: dense, untied head, one MTP layer
    "qwen3_5-vl": dict(family="qwen3_5", vl=True, tie=False, seed=21),
    # text-only form: flat config, tied head, layer_types L F L F, two MTP layers sharing fc/norms,
    # rope_parameters without partial_rotary_factor (transformers' default 0.25 applies)
    "qwen3_5_text-tied-mtp2": dict(family="qwen3_5", vl=False, tie=True, seed=22, mtp=2,
                                   layer_types=["linear_attention", "full_attention"] * 2, drop_partial=True),
    # Qwen3.6-35B-A3B form: MoE with fused experts, untied head
    "qwen3_5_moe-vl": dict(family="qwen3_5_moe", vl=True, tie=False, seed=23),
    # the -FP8 release's expert layout (per expert), here in bf16
    "qwen3_5_moe-vl-split_experts": dict(family="qwen3_5_moe", vl=True, tie=False, seed=25, split_experts=True),
    # Qwen3-Next-80B-A3B form: in_proj_qkvz/ba, per-expert tensors, one dense layer (mlp_only_layers)
    "qwen3_next": dict(family="qwen3_next", vl=False, tie=False, seed=24),
}


def splits_experts(variant: str) -> bool:
    """Whether the variant stores experts per expert (Qwen3-Next, Qwen3.6-FP8) rather than fused (Qwen3.5 BF16)."""
    opt = VARIANTS[variant]
    return opt.get("split_experts", opt["family"] == "qwen3_next")


def _hf_classes(family: str):
    import transformers as tf

    return {
        "qwen3_5": (tf.Qwen3_5TextConfig, tf.Qwen3_5ForCausalLM),
        "qwen3_5_moe": (tf.Qwen3_5MoeTextConfig, tf.Qwen3_5MoeForCausalLM),
        "qwen3_next": (tf.Qwen3NextConfig, tf.Qwen3NextForCausalLM),
    }[family]


# keys of released configs that are not transformers config fields
_NOT_HF_KEYS = ("model_type", "torch_dtype", "transformers_version", "architectures", "dtype")


# --------------------------------------------------------------------------------------------------
# Random init and storage
# --------------------------------------------------------------------------------------------------


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    """builders._random_like, except: zero-centred RMSNorm weights ~ 0.2 N (scale 1 + w); the gated norm keeps
    1 + 0.2 N (plain weight); A = exp(A_log) ~ U(0.05, 0.6) and dt_bias ~ 0.5 N, so exp(g) ~ 0.8: the recurrent
    state remembers several tokens and a wrong rollback shows."""
    zero_centred = {id(m.weight) for m in module.modules() if type(m).__name__.endswith("RMSNorm")}
    with torch.no_grad():
        for name, p in module.named_parameters():
            shape = tuple(p.shape)
            if name.endswith("A_log"):
                p.copy_(torch.log(0.05 + 0.55 * torch.rand(*shape, generator=gen)))
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn(*shape, generator=gen))
            elif id(p) in zero_centred:
                p.copy_(0.2 * torch.randn(*shape, generator=gen))
            else:
                p.copy_(builders._random_like(name, p, gen))


def _store(module: nn.Module, rename, dtype: str, gen, out: dict, split_experts: bool, skip=lambda k: False) -> None:
    """Encode the module's tensors under released names; write the decoded values back into the module.
    split_experts: fused experts stored per expert (Qwen3-Next); else kept fused (Qwen3.5-MoE)."""
    if split_experts:
        builders._store_module(module, rename, dtype, gen, out, skip)
        return
    with torch.no_grad():
        for k, t in module.state_dict(keep_vars=True).items():
            if skip(k):
                continue
            stored, dec = builders._encode(rename(k), t, dtype, gen)
            out.update(stored)
            t.copy_(dec.reshape(t.shape))


# --------------------------------------------------------------------------------------------------
# The MTP oracle
# --------------------------------------------------------------------------------------------------


class QwenMTPReference(nn.Module):
    """Qwen3-Next / Qwen3.5 MTP from transformers' own classes; state-dict keys are the released names minus
    ``mtp.``. Block j is the family's decoder layer built as full attention (layer index L + j appended to
    layer_types as "full_attention")."""

    def __init__(self, main_model, num_layers: int):
        super().__init__()
        config = main_model.config
        base = main_model.model
        layer_cls = type(base.layers[-1])
        norm_cls = type(base.norm)
        h, eps, L = config.hidden_size, config.rms_norm_eps, config.num_hidden_layers
        self.pre_fc_norm_embedding = norm_cls(h, eps=eps)
        self.pre_fc_norm_hidden = norm_cls(h, eps=eps)
        self.fc = nn.Linear(2 * h, h, bias=False)
        cfg = copy.deepcopy(config)
        cfg.layer_types = list(config.layer_types[:L]) + ["full_attention"] * num_layers
        cfg._attn_implementation = "eager"
        self.layers = nn.ModuleList([layer_cls(cfg, L + j) for j in range(num_layers)])
        self.norm = norm_cls(h, eps=eps)
        self.embedding_first = True  # the released order; False only for diagnostics
        self.main = [main_model]     # not a submodule

    def forward_layer(self, d, previous_hidden, position_ids, input_ids):
        from transformers.masking_utils import create_causal_mask

        base = self.main[0].model
        emb = base.embed_tokens(input_ids)
        e, hh = self.pre_fc_norm_embedding(emb), self.pre_fc_norm_hidden(previous_hidden)
        x = self.fc(torch.cat([e, hh] if self.embedding_first else [hh, e], dim=-1))
        mask = create_causal_mask(config=self.main[0].config, inputs_embeds=emb, attention_mask=None,
                                  past_key_values=None, position_ids=position_ids)
        pe = base.rotary_emb(emb, position_ids)
        x = self.layers[d](x, position_embeddings=pe, attention_mask=mask, position_ids=position_ids)
        return self.norm(x)


class QwenOracle(builders.Oracle):
    @torch.no_grad()
    def forward(self, ids):
        """(logits [T,V], final-normed hidden [T,H]) of the main model."""
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)[None]
        h = self.model.model(input_ids=ids_t, use_cache=False).last_hidden_state
        return self.model.lm_head(h)[0].float(), h[0].float()

    @torch.no_grad()
    def mtp_logits(self, ids, depths=None, position_offset: int = 1, swap_concat: bool = False) -> list[np.ndarray]:
        if self.mtp is None:
            return []
        self.mtp.embedding_first = not swap_concat
        try:
            ids = list(ids)
            T = len(ids)
            prev = self.forward(ids)[1]
            res = []
            for d in range(self.num_mtp if depths is None else depths):
                rows = T - 1 - d
                if rows <= 0:
                    break
                tok = torch.tensor(ids[d + 1:], dtype=torch.long)[None]
                pos = torch.arange(d + position_offset, T - 1 + position_offset, dtype=torch.long)[None]
                o = self.mtp.forward_layer(d, prev[:rows][None], pos, tok)[0]
                res.append(self.model.lm_head(o).float().numpy())
                prev = o
            return res
        finally:
            self.mtp.embedding_first = True


# --------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------


def build(variant: str, dir: str | Path, dtype: str = "bf16", with_tokenizer: bool = True,
          text_overrides: dict | None = None) -> QwenOracle:
    """Write VARIANTS[variant] to dir (config.json, model.safetensors, tokenizer.json); return its oracle.
    text_overrides: text-config keys to change (benchmarks/crosscheck_llamacpp.py: llama.cpp wants dk == dv)."""
    opt = dict(VARIANTS[variant])
    family, vl, tie, seed = opt["family"], opt["vl"], opt["tie"], opt["seed"]
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    moe = family != "qwen3_5"
    if family == "qwen3_next":
        text = _qwen3_next_config()
        n_mtp = 1
    else:
        text = _qwen3_5_text_config(moe)
        text["mtp_num_hidden_layers"] = n_mtp = opt.get("mtp", 1)
        if "layer_types" in opt:
            text["layer_types"] = list(opt["layer_types"])
        if opt.get("drop_partial"):
            del text["rope_parameters"]["partial_rotary_factor"]
        if not vl:
            text["architectures"] = ["Qwen3_5MoeForCausalLM" if moe else "Qwen3_5ForCausalLM"]
    text.update(text_overrides or {})
    text["tie_word_embeddings"] = tie
    written = _vl_wrap({k: v for k, v in text.items() if k != "tie_word_embeddings"}, moe, tie) if vl else text
    prefix = "model.language_model." if vl else "model."

    cfg_cls, model_cls = _hf_classes(family)
    cfg = cfg_cls(**{k: copy.deepcopy(v) for k, v in text.items() if k not in _NOT_HF_KEYS})
    cfg._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32).eval()
    mtp = QwenMTPReference(model, n_mtp).to(torch.float32).eval()
    _randomize(model, gen)
    _randomize(mtp, gen)

    tensors: dict[str, torch.Tensor] = {}
    split = splits_experts(variant)
    _store(model, lambda k: prefix + k[len("model."):] if k.startswith("model.") else k, dtype, gen, tensors, split,
           skip=(lambda k: k == "lm_head.weight") if tie else (lambda k: False))
    if tie:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    mtp_tensors: dict[str, torch.Tensor] = {}
    _store(mtp, lambda k: "mtp." + k, dtype, gen, mtp_tensors, split)
    tensors.update(mtp_tensors)
    if vl:  # a stand-in for the vision tower, which a text-only engine leaves alone
        tensors["model.visual.patch_embed.proj.weight"] = torch.randn(16, 3, 2, 2, generator=gen).to(torch.bfloat16)

    (dir / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True))
    builders.write_safetensors(dir, tensors, 1, last_shard_keys=list(mtp_tensors))
    if with_tokenizer:
        builders.write_tokenizer(dir, int(text["vocab_size"]))
    return QwenOracle(family=family, path=dir, model=model, mtp=mtp, num_mtp=n_mtp, config_json=written,
                      tensor_names=sorted(tensors), dtype=dtype)


def random_delta_inputs(n: int, h: int = 3, dk: int = 8, dv: int = 5, seed: int = 0):
    """Inputs of the gated delta rule as the layer makes them: l2-normalised q (scaled) and k, beta in (0, 1),
    log decays g < 0, and a nonzero initial state."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    l2 = lambda x: x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)  # noqa: E731
    q = l2(f(n, h, dk)) * dk ** -0.5
    k = l2(f(n, h, dk))
    g = (-np.abs(f(n, h)) * 0.3).astype(np.float32)
    beta = (1 / (1 + np.exp(-f(n, h)))).astype(np.float32)
    return q, k, f(n, h, dv), g, beta, 0.5 * f(h, dk, dv)


