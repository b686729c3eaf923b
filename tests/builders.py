"""Tiny random checkpoints in each family's released Hugging Face layout, plus torch oracles.

TEST-ONLY: this module imports torch and transformers; the engine (mtp_ref) never does.

Every builder writes, under ``dir``:

* ``config.json`` with the keys of the family's released config (``rope_scaling`` + ``rope_theta``),
  or, with ``config_format="rope_parameters"``, the newer transformers-5 form (``PreTrainedConfig.to_dict()``);
* ``model.safetensors``, or ``model-0000X-of-0000N.safetensors`` + ``model.safetensors.index.json``
  (``{"metadata": {"total_size": ...}, "weight_map": {...}}``) when ``sharded=True``;
* ``tokenizer.json`` (a tiny byte-level BPE, see :func:`write_tokenizer`);

and returns an :class:`Oracle` that holds the transformers model (float32, eager attention) whose
weights are exactly the values the files decode to (bf16 -> f32, or fp8 * block scale -> f32).

Storage dtypes (``dtype=``): ``"bf16"`` (default), ``"f16"``, ``"f32"``, ``"fp8"`` (the DeepSeek-V3 /
Qwen3-FP8 release form: 2-D attention/MLP/expert linears as float8_e4m3fn + float32
``<name>_scale_inv`` of shape [ceil(M/128), ceil(N/128)]; everything else bf16;
``e_score_correction_bias`` is float32 in every mode, as released).

MTP tensors:
* deepseek_v3 / glm4_moe: ``model.layers.{L+j}.{embed_tokens,enorm,hnorm,eh_proj,shared_head.norm,
  shared_head.head}`` + a full MoE block under the usual block names, experts stored per expert.
  The oracle is transformers' ``MtpModel`` (modeling_layers.py) built on the main model.
* mimo: ``model.mtp_layers.{j}.{token_layernorm,hidden_layernorm,input_proj,input_layernorm,self_attn.*,
  post_attention_layernorm,mlp.*,final_layernorm}``; the oracle is assembled here from Qwen2DecoderLayer,
  concatenating [hidden_layernorm(h), token_layernorm(emb)] (hidden first).

Teacher-forced MTP convention (:meth:`Oracle.mtp_logits`): depth 0 row i takes the main model's
final-normed hidden h_i and token ids[i+1] at rotary position i+1 (the token's own position, as in
transformers' ``MtpModel.forward``); depth d row i takes depth d-1's (post-norm) output at row i and
token ids[i+d+1] at position i+d+1; depth d has T-1-d rows; logits = main lm_head(output).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

FAMILIES = ("deepseek_v3", "glm4_moe", "mimo", "llama", "qwen2", "qwen3")
MTP_FAMILIES = ("deepseek_v3", "glm4_moe", "mimo")
DTYPES = ("bf16", "f16", "f32", "fp8")

FP8_BLOCK = 128
FP8_MAX = 448.0
FP8_QUANT_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
}

# The rope_scaling block of deepseek-ai/DeepSeek-V3's config.json.
DEEPSEEK_V3_YARN = {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn",
}

TOKENIZER_TEXT = (
    "Once upon a time there was a little girl who lived in a village near the forest. "
    "Whenever she went out, the little girl wore a red riding cloak, so everyone in the village "
    "called her Little Red Riding Hood. One morning she asked her mother if she could go to visit "
    "her grandmother, as it had been a while since they had seen each other. The quick brown fox "
    "jumps over the lazy dog. It was the best of times, it was the worst of times, it was the age "
    "of wisdom, it was the age of foolishness. Call me Ishmael. Some years ago, never mind how long "
    "precisely, having little or no money in my purse, I thought I would sail about a little and "
    "see the watery part of the world. 0123456789 + - * / = ( ) [ ] { } , . ; : ! ? ' \" \n"
)
EOS_TOKEN = "<|endoftext|>"


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def write_tokenizer(dir: str | Path, vocab_size: int) -> Path:
    """Train a tiny byte-level BPE (<= vocab_size entries, special ``<|endoftext|>``); save tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"a byte-level BPE needs vocab_size >= {len(alphabet) + 1}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator([TOKENIZER_TEXT] * 4, trainer=trainer)
    assert tok.get_vocab_size() <= vocab_size, (tok.get_vocab_size(), vocab_size)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / "tokenizer.json"
    tok.save(str(path))
    (dir / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": EOS_TOKEN, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2)
    )
    return path


# --------------------------------------------------------------------------------------------------
# FP8 (e4m3fn, 128x128 block scales)
# --------------------------------------------------------------------------------------------------


def fp8_dequant(q: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK) -> torch.Tensor:
    """W[i,j] = fp8(W[i,j]) * scale_inv[i//128, j//128], computed with torch's own float8 decode."""
    m, n = q.shape
    assert q.dtype == torch.float8_e4m3fn
    assert scale_inv.shape == (math.ceil(m / block), math.ceil(n / block)), (q.shape, scale_inv.shape)
    s = scale_inv.to(torch.float32).repeat_interleave(block, 0).repeat_interleave(block, 1)[:m, :n]
    return q.to(torch.float32) * s


def fp8_quantize(w: torch.Tensor, gen: torch.Generator, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a float matrix per 128x128 block (scale = amax/448) -> (float8_e4m3fn, float32 scale_inv).

    Each block is first multiplied by a random factor 2**U(-1, 1) so that neighbouring blocks get clearly
    different scales (a mis-indexed scale then shows up as a large error).
    """
    w = w.to(torch.float32).clone()
    m, n = w.shape
    bm, bn = math.ceil(m / block), math.ceil(n / block)
    factor = torch.pow(2.0, torch.rand(bm, bn, generator=gen) * 2 - 1)
    scale_inv = torch.empty(bm, bn, dtype=torch.float32)
    q = torch.empty(m, n, dtype=torch.float8_e4m3fn)
    for bi in range(bm):
        for bj in range(bn):
            sl = (slice(bi * block, (bi + 1) * block), slice(bj * block, (bj + 1) * block))
            blk = w[sl] * factor[bi, bj]
            amax = blk.abs().max().clamp_min(1e-12)
            scale = (amax / FP8_MAX).to(torch.float32)
            q[sl] = (blk / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            scale_inv[bi, bj] = scale
    return q, scale_inv


# --------------------------------------------------------------------------------------------------
# Random init and storage encoding
# --------------------------------------------------------------------------------------------------


def _random_like(name: str, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Values with O(1) activations: 1-D norms ~ 1+0.2N, biases ~ 0.1N, linears ~ N/sqrt(fan_in)."""
    shape = tuple(t.shape)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float32)  # noqa: E731
    if name.endswith("e_score_correction_bias"):
        # small POSITIVE values: -inf vs 0 group masking never matters, yet selection is biased
        return 0.01 + 0.09 * torch.rand(*shape, generator=gen, dtype=torch.float32)
    if name.endswith("embed_tokens.weight"):
        return randn(*shape)
    if name.endswith(".bias"):
        return 0.1 * randn(*shape)
    if len(shape) == 1:  # RMSNorm weights
        return 1.0 + 0.2 * randn(*shape)
    if name.endswith("mlp.gate.weight"):  # MoE router: spread the sigmoid scores
        return 2.0 * randn(*shape) / math.sqrt(shape[-1])
    if len(shape) >= 2:  # nn.Linear [out, in], fused experts [E, out, in]
        return randn(*shape) / math.sqrt(shape[-1])
    raise ValueError(f"no init rule for {name} {shape}")


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_random_like(name, p, gen))
        for name, b in module.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(_random_like(name, b, gen))


def _is_fp8_target(name: str, t: torch.Tensor) -> bool:
    """Which released tensors are FP8 in the DeepSeek-V3 (and Qwen3-FP8) release."""
    if t.ndim != 2 or not name.endswith(".weight"):
        return False
    if name.endswith(".mlp.gate.weight"):  # router stays bf16
        return False
    return ".self_attn." in name or ".mlp." in name


_TORCH_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def _encode(name: str, w: torch.Tensor, dtype: str, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Return ({released name: stored tensor}, float32 value the stored form decodes to)."""
    w = w.detach().to(torch.float32).contiguous()
    if name.endswith("e_score_correction_bias"):
        return {name: w.clone()}, w.clone()
    if dtype == "fp8" and _is_fp8_target(name, w):
        q, s = fp8_quantize(w, gen)
        return {name: q, name + "_scale_inv": s}, fp8_dequant(q, s)
    store = _TORCH_DTYPE["bf16" if dtype == "fp8" else dtype]
    stored = w.to(store).contiguous()
    return {name: stored}, stored.to(torch.float32)


_EXPERT_GU = re.compile(r"^(?P<p>.*\.mlp\.experts)\.gate_up_proj$")
_EXPERT_D = re.compile(r"^(?P<p>.*\.mlp\.experts)\.down_proj$")


def _store_module(
    module: nn.Module,
    rename,  # callable(state-dict key) -> released name
    dtype: str,
    gen: torch.Generator,
    out: dict[str, torch.Tensor],
    skip=lambda k: False,
) -> None:
    """Encode every state-dict tensor of ``module`` in released names into ``out`` and write the decoded
    float32 values back into the module (so the oracle computes exactly on the stored values).
    Fused experts (transformers 5: gate_up_proj [E,2I,H], gate rows first; down_proj [E,H,I]) are split
    per expert as released: ``experts.{e}.{gate,up,down}_proj.weight``."""
    sd = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, t in sd.items():
            if skip(k):
                continue
            m = _EXPERT_GU.match(k)
            if m:
                prefix = rename(m.group("p"))
                n_exp, two_i, _ = t.shape
                inter = two_i // 2
                for e in range(n_exp):
                    g_st, g_dec = _encode(f"{prefix}.{e}.gate_proj.weight", t[e, :inter], dtype, gen)
                    u_st, u_dec = _encode(f"{prefix}.{e}.up_proj.weight", t[e, inter:], dtype, gen)
                    out.update(g_st)
                    out.update(u_st)
                    t[e].copy_(torch.cat([g_dec, u_dec], dim=0))
                continue
            m = _EXPERT_D.match(k)
            if m:
                prefix = rename(m.group("p"))
                for e in range(t.shape[0]):
                    d_st, d_dec = _encode(f"{prefix}.{e}.down_proj.weight", t[e], dtype, gen)
                    out.update(d_st)
                    t[e].copy_(d_dec)
                continue
            st, dec = _encode(rename(k), t, dtype, gen)
            out.update(st)
            t.copy_(dec.reshape(t.shape))


# --------------------------------------------------------------------------------------------------
# Writing safetensors
# --------------------------------------------------------------------------------------------------


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_safetensors(dir: Path, tensors: dict[str, torch.Tensor], num_shards: int = 1, last_shard_keys=()) -> list[Path]:
    """model.safetensors, or model-0000X-of-0000N.safetensors + model.safetensors.index.json.

    With shards, the keys in ``last_shard_keys`` (the MTP layers, as in the DeepSeek-V3 release where
    layer 61 lives alone in the last shard) go to the last shard; the rest are spread over the others."""
    dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if num_shards <= 1:
        path = dir / "model.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"})
        return [path]
    last = [k for k in tensors if k in set(last_shard_keys)]
    rest = [k for k in tensors if k not in set(last_shard_keys)]
    n_front = num_shards - 1 if last else num_shards
    groups: list[list[str]] = [[] for _ in range(n_front)]
    total = sum(_nbytes(tensors[k]) for k in rest)
    acc = 0
    for k in rest:  # contiguous split by cumulative bytes
        idx = min(n_front - 1, int(acc * n_front / max(total, 1)))
        groups[idx].append(k)
        acc += _nbytes(tensors[k])
    if last:
        groups.append(last)
    groups = [g for g in groups if g]
    n = len(groups)
    weight_map: dict[str, str] = {}
    paths = []
    for i, keys in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(dir / fname), metadata={"format": "pt"})
        paths.append(dir / fname)
        for k in keys:
            weight_map[k] = fname
    index = {
        "metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


# --------------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------------


class MiMoMTPLayer(nn.Module):
    """Reference MiMo MTP layer (the checkpoint's modeling_mimo.py, rebuilt from transformers' Qwen2 parts).

    Checkpoint names under ``model.mtp_layers.{j}.``: token_layernorm, hidden_layernorm, input_proj [H,2H]
    (no bias), final_layernorm, and the Qwen2 block's own names (input_layernorm, self_attn.*,
    post_attention_layernorm, mlp.*), which live here under ``block.`` (see :meth:`checkpoint_name`)."""

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm

        h, eps = config.hidden_size, config.rms_norm_eps
        self.token_layernorm = Qwen2RMSNorm(h, eps=eps)
        self.hidden_layernorm = Qwen2RMSNorm(h, eps=eps)
        self.input_proj = nn.Linear(2 * h, h, bias=False)
        self.block = Qwen2DecoderLayer(config, layer_idx)
        self.final_layernorm = Qwen2RMSNorm(h, eps=eps)
        self.hidden_first = True  # the MiMo order; False only for diagnostics

    @staticmethod
    def checkpoint_name(key: str) -> str:
        return key[len("block.") :] if key.startswith("block.") else key

    def forward(self, inputs_embeds, previous_hidden_state, position_embeddings, attention_mask, position_ids):
        # MiMo: HIDDEN first, then the token embedding
        h, e = self.hidden_layernorm(previous_hidden_state), self.token_layernorm(inputs_embeds)
        x = torch.cat([h, e] if self.hidden_first else [e, h], dim=-1)
        x = self.input_proj(x)
        x = self.block(x, attention_mask=attention_mask, position_ids=position_ids, position_embeddings=position_embeddings)
        return self.final_layernorm(x)


class MiMoMTPReference(nn.Module):
    def __init__(self, main_model, num_layers: int):
        super().__init__()
        self.config = main_model.config
        self.layers = nn.ModuleList([MiMoMTPLayer(main_model.config, 0) for _ in range(num_layers)])
        self.main = [main_model]  # not a submodule (its weights are not ours)

    def forward_layer(self, d, last_hidden_states, position_ids, input_ids):
        from transformers.masking_utils import create_causal_mask

        base = self.main[0].model
        emb = base.embed_tokens(input_ids)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=emb, attention_mask=None, past_key_values=None, position_ids=position_ids
        )
        pe = base.rotary_emb(emb, position_ids)
        return self.layers[d](emb, last_hidden_states, pe, mask, position_ids)


@dataclass
class Oracle:
    family: str
    path: Path
    model: Any  # transformers *ForCausalLM, float32, eval, eager attention
    mtp: Any = None  # transformers MtpModel (deepseek_v3, glm4_moe) or MiMoMTPReference (mimo)
    num_mtp: int = 0
    config_json: dict = field(default_factory=dict)
    tensor_names: list = field(default_factory=list)
    dtype: str = "bf16"

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @torch.no_grad()
    def forward(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [T,V], final-normed hidden [T,H]) of the main model."""
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)[None]
        out = self.model(input_ids=ids_t, output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-1][0]
        # hidden_states[-1] is tied to last_hidden_state, i.e. after model.norm (transformers 5.23 capture_outputs)
        return out.logits[0].float(), h.float()

    def logits(self, ids) -> np.ndarray:
        return self.forward(ids)[0].numpy()

    @torch.no_grad()
    def mtp_logits(
        self, ids, depths: int | None = None, position_offset: int = 1, swap_concat: bool = False
    ) -> list[np.ndarray]:
        """Teacher-forced MTP logits per depth d: array [T-1-d, V] (see module docstring).

        ``position_offset=1``: row i of depth d sits at rotary position i+d+1 (its token's position; the
        transformers ``MtpModel.forward`` convention); 0 gives vLLM's (position i+d). In one full-sequence
        teacher-forced pass a uniform shift is invisible (RoPE only sees position differences).
        ``swap_concat=True`` reverses the family's [embedding, hidden] order (diagnostics only)."""
        if self.mtp is None:
            return []
        if swap_concat:
            if self.family == "mimo":
                flags = [(layer, "hidden_first", layer.hidden_first) for layer in self.mtp.layers]
                for layer in self.mtp.layers:
                    layer.hidden_first = not layer.hidden_first
            else:
                cfg = self.mtp.config
                flags = [(cfg, "mtp_hidden_states_first", getattr(cfg, "mtp_hidden_states_first", False))]
                cfg.mtp_hidden_states_first = not flags[0][2]
            try:
                return self.mtp_logits(ids, depths, position_offset)
            finally:
                for obj, name, value in flags:
                    setattr(obj, name, value)
        ids = list(ids)
        T = len(ids)
        _, h = self.forward(ids)
        prev = h
        res = []
        for d in range(self.num_mtp if depths is None else depths):
            rows = T - 1 - d
            if rows <= 0:
                break
            tok = torch.tensor(ids[d + 1 :], dtype=torch.long)[None]
            pos = torch.arange(d + position_offset, T - 1 + position_offset, dtype=torch.long)[None]
            hid = prev[:rows][None]
            if self.family == "mimo":
                o = self.mtp.forward_layer(d, hid, pos, tok)[0]
            else:
                o = self.mtp.forward_layer(d, hid, pos, None, input_ids=tok)[0]
            res.append(self.model.lm_head(o).float().numpy())
            prev = o
        return res


# --------------------------------------------------------------------------------------------------
# Family specs: released config.json templates
# --------------------------------------------------------------------------------------------------


def _split_overrides(overrides: dict, keys: tuple[str, ...]) -> dict:
    return {k: overrides.pop(k) for k in keys if k in overrides}


def _deepseek_released(o: dict, dtype: str) -> dict:
    c = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "kv_lora_rank": 32,
        "max_position_embeddings": 163840,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": 32,
        "moe_layer_freq": 1,
        "n_group": 4,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 3,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 2,
        "pretraining_tp": 1,
        "q_lora_rank": 48,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 16,
        "rms_norm_eps": 1e-06,
        "rope_scaling": dict(DEEPSEEK_V3_YARN),
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
        "use_cache": True,
        "v_head_dim": 24,
        "vocab_size": 384,
    }
    c.update(o)
    return c


def _glm4_moe_released(o: dict, dtype: str) -> dict:
    c = {
        "architectures": ["Glm4MoeForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "pad_token_id": 0,
        "eos_token_id": [0],
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 96,
        "partial_rotary_factor": 0.5,
        "initializer_range": 0.02,
        "intermediate_size": 160,
        "max_position_embeddings": 131072,
        "model_type": "glm4_moe",
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "n_group": 1,
        "topk_group": 1,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "routed_scaling_factor": 2.5,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "num_nextn_predict_layers": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.54.0",
        "use_cache": True,
        "use_qk_norm": True,
        "vocab_size": 320,
    }
    c.update(o)
    return c


def _mimo_released(o: dict, dtype: str) -> dict:
    c = {
        "architectures": ["MiMoForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_mimo.MiMoConfig",
            "AutoModel": "modeling_mimo.MiMoModel",
            "AutoModelForCausalLM": "modeling_mimo.MiMoForCausalLM",
        },
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 160,
        "max_position_embeddings": 32768,
        "max_window_layers": 3,
        "model_type": "mimo",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "num_nextn_predict_layers": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 640000,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": True,
        "use_mrope": False,
        "use_sliding_window": False,
        "vocab_size": 384,
    }
    c.update(o)
    return c


def _llama_released(o: dict, dtype: str) -> dict:
    c = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 160,
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0",
        "use_cache": True,
        "vocab_size": 320,
    }
    c.update(o)
    return c


def _qwen2_released(o: dict, dtype: str) -> dict:
    c = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "model_type": "qwen2",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 320,
    }
    c.update(o)
    return c


def _qwen3_released(o: dict, dtype: str) -> dict:
    c = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 192,
        "max_position_embeddings": 40960,
        "max_window_layers": 2,
        "model_type": "qwen3",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 320,
    }
    c.update(o)
    return c


def _hf_classes(family: str):
    import transformers as tf

    return {
        "deepseek_v3": (tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM),
        "glm4_moe": (tf.Glm4MoeConfig, tf.Glm4MoeForCausalLM),
        "mimo": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
    }[family]


_RELEASED = {
    "deepseek_v3": _deepseek_released,
    "glm4_moe": _glm4_moe_released,
    "mimo": _mimo_released,
    "llama": _llama_released,
    "qwen2": _qwen2_released,
    "qwen3": _qwen3_released,
}

# keys of released configs that are not transformers config fields (kept in the file, not passed on)
_NOT_HF_KEYS = ("model_type", "torch_dtype", "transformers_version", "auto_map")

_TORCH_DTYPE_NAME = {"bf16": "bfloat16", "f16": "float16", "f32": "float32", "fp8": "bfloat16"}


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def build(
    family: str,
    dir: str | Path,
    seed: int = 0,
    dtype: str = "bf16",
    sharded: bool | int = False,
    *,
    config_format: str = "released",
    with_tokenizer: bool = True,
    **overrides,
) -> Oracle:
    """Write a tiny random ``family`` checkpoint to ``dir`` and return its oracle.

    ``overrides`` are released-config keys (e.g. ``hidden_size=160``, ``q_lora_rank=None``,
    ``rope_scaling={...}``, ``num_nextn_predict_layers=1``, ``tie_word_embeddings=True``).
    ``config_format``: ``"released"`` (rope_scaling + rope_theta, as in the HF release) or
    ``"rope_parameters"`` (what transformers 5 writes: ``PreTrainedConfig.to_dict()``).
    ``sharded``: False/1 -> model.safetensors; True -> 3 shards; an int N > 1 -> N shards.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {DTYPES}")
    if config_format not in ("released", "rope_parameters"):
        raise ValueError(config_format)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    num_shards = 3 if sharded is True else int(sharded or 1)

    released = _RELEASED[family](dict(overrides), dtype)
    released["torch_dtype"] = _TORCH_DTYPE_NAME[dtype]
    if dtype == "fp8":
        released["quantization_config"] = dict(FP8_QUANT_CONFIG)
    n_mtp = int(released.get("num_nextn_predict_layers", 0) or 0) if family in MTP_FAMILIES else 0

    cfg_cls, model_cls = _hf_classes(family)
    hf_kwargs = {k: copy.deepcopy(v) for k, v in released.items() if k not in _NOT_HF_KEYS and k != "quantization_config"}
    cfg = cfg_cls(**hf_kwargs)
    cfg._attn_implementation = "eager"

    if config_format == "released":
        written = released
    else:
        written = cfg.to_dict()
        written["architectures"] = list(released["architectures"])
        written["model_type"] = released["model_type"]
        written["dtype"] = released["torch_dtype"]
        for k in ("auto_map", "quantization_config"):
            if k in released:
                written[k] = copy.deepcopy(released[k])
        written.pop("rope_scaling", None)
        written.pop("rope_theta", None)
        written.pop("partial_rotary_factor", None)
        assert "rope_parameters" in written

    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = model_cls(cfg).to(torch.float32).eval()
    # Build the MTP oracle BEFORE drawing/storing the weights: MtpModel.__init__ ties (and its post_init
    # may touch) the main embedding/head, which must not change after they are written.
    mtp = None
    if n_mtp and family in ("deepseek_v3", "glm4_moe"):
        from transformers.modeling_layers import MtpModel

        mtp = MtpModel(model, n_mtp).to(torch.float32).eval()
        mtp.config._attn_implementation = "eager"
    elif n_mtp and family == "mimo":
        mtp = MiMoMTPReference(model, n_mtp).to(torch.float32).eval()
    _randomize(model, gen)

    tensors: dict[str, torch.Tensor] = {}
    tied = bool(cfg.tie_word_embeddings)
    _store_module(
        model,
        rename=lambda k: k,
        dtype=dtype,
        gen=gen,
        out=tensors,
        skip=(lambda k: k == "lm_head.weight") if tied else (lambda k: False),
    )
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    mtp_keys: list[str] = []
    L = cfg.num_hidden_layers
    if n_mtp and family in ("deepseek_v3", "glm4_moe"):
        for j in range(n_mtp):
            layer = mtp.layers[j]
            _randomize(layer, gen)
            pfx = f"model.layers.{L + j}."

            def rename(k, pfx=pfx):
                if k.startswith("mtp_block."):
                    return pfx + k[len("mtp_block.") :]
                if k == "post_norm.weight":
                    return pfx + "shared_head.norm.weight"
                return pfx + k

            sub: dict[str, torch.Tensor] = {}
            _store_module(layer, rename, dtype, gen, sub)
            # the release carries copies of the main embedding and head (identical for DeepSeek)
            sub[pfx + "embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
            sub[pfx + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
            tensors.update(sub)
            mtp_keys += list(sub)
        mtp.tie_with_main_model(model)
    elif n_mtp and family == "mimo":
        for j in range(n_mtp):
            _randomize(mtp.layers[j], gen)
            sub = {}
            _store_module(
                mtp.layers[j], lambda k, j=j: f"model.mtp_layers.{j}." + MiMoMTPLayer.checkpoint_name(k), dtype, gen, sub
            )
            tensors.update(sub)
            mtp_keys += list(sub)

    (dir / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True))
    write_safetensors(dir, tensors, num_shards, last_shard_keys=mtp_keys)
    if with_tokenizer:
        write_tokenizer(dir, int(released["vocab_size"]))

    return Oracle(
        family=family,
        path=dir,
        model=model,
        mtp=mtp,
        num_mtp=n_mtp,
        config_json=written,
        tensor_names=sorted(tensors),
        dtype=dtype,
    )


def build_deepseek_v3(dir, seed=0, dtype="bf16", sharded=False, **overrides) -> Oracle:
    return build("deepseek_v3", dir, seed, dtype, sharded, **overrides)


def build_glm4_moe(dir, seed=0, dtype="bf16", sharded=False, **overrides) -> Oracle:
    return build("glm4_moe", dir, seed, dtype, sharded, **overrides)


def build_mimo(dir, seed=0, dtype="bf16", sharded=False, **overrides) -> Oracle:
    return build("mimo", dir, seed, dtype, sharded, **overrides)


def build_llama(dir, seed=0, dtype="bf16", sharded=False, **overrides) -> Oracle:
    return build("llama", dir, seed, dtype, sharded, **overrides)


def build_qwen2(dir, seed=0, dtype="bf16", sharded=False, **overrides) -> Oracle:
    return build("qwen2", dir, seed, dtype, sharded, **overrides)


def build_qwen3(dir, seed=0, dtype="bf16", sharded=False, **overrides) -> Oracle:
    return build("qwen3", dir, seed, dtype, sharded, **overrides)


# --------------------------------------------------------------------------------------------------
# Named variants used by the tests (id -> build kwargs)
# --------------------------------------------------------------------------------------------------

VARIANTS: dict[str, dict] = {
    # released config: rope_scaling YaRN (DeepSeek-V3 values), q_lora, group-limited routing (4 groups, keep 2)
    "deepseek_v3-bf16": dict(family="deepseek_v3"),
    # q_proj (q_lora_rank null), newer rope_parameters form, YaRN with mscale != mscale_all_dim, n_group 1, sharded
    "deepseek_v3-noqlora-ropeparams-sharded": dict(
        family="deepseek_v3",
        sharded=True,
        config_format="rope_parameters",
        q_lora_rank=None,
        n_group=1,
        topk_group=1,
        rope_scaling={
            "type": "yarn",
            "factor": 8,
            "original_max_position_embeddings": 64,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.8,
            "mscale_all_dim": 1.0,
        },
        max_position_embeddings=512,
        seed=1,
    ),
    # released FP8 form; hidden 160 etc. so several weights have partial 128x128 edge blocks
    "deepseek_v3-fp8": dict(
        family="deepseek_v3",
        dtype="fp8",
        sharded=True,
        hidden_size=160,
        intermediate_size=320,
        q_lora_rank=136,
        kv_lora_rank=144,
        qk_nope_head_dim=32,
        v_head_dim=32,
        moe_intermediate_size=48,
        seed=2,
    ),
    "glm4_moe-bf16": dict(family="glm4_moe"),
    "glm4_moe-ropeparams-sharded": dict(family="glm4_moe", sharded=True, config_format="rope_parameters", seed=3),
    "mimo-bf16": dict(family="mimo"),
    "llama-f32": dict(family="llama", dtype="f32"),
    "llama-llama3rope-bf16": dict(
        family="llama",
        rope_scaling={
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 64,
            "rope_type": "llama3",
        },
        seed=4,
    ),
    "qwen2-tied-sharded": dict(family="qwen2", sharded=2),
    "qwen3-bf16": dict(family="qwen3"),
    "qwen3-fp8": dict(family="qwen3", dtype="fp8", hidden_size=160, intermediate_size=320, head_dim=48, seed=5),
}


def variant_kwargs(name: str) -> dict:
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
    return copy.deepcopy(VARIANTS[name])


def expected_num_mtp(family: str, **overrides) -> int:
    """Number of MTP modules a build with these overrides writes (no torch work)."""
    if family not in MTP_FAMILIES:
        return 0
    o = {k: v for k, v in overrides.items() if k not in ("seed", "dtype", "sharded", "config_format", "with_tokenizer")}
    return int(_RELEASED[family](o, "bf16").get("num_nextn_predict_layers") or 0)


def build_variant(name: str, dir) -> Oracle:
    kw = dict(VARIANTS[name])
    family = kw.pop("family")
    return build(family, dir, **kw)
