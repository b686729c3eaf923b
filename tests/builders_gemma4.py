"""Tiny random Gemma 4 targets and MTP assistants in their released layouts, plus transformers 5.23 oracles.

TEST-ONLY: imports torch and transformers; the engine (mtp_ref) never does.

Layouts written here (names from transformers 5.23 modeling_gemma4.py / modeling_gemma4_assistant.py):
* the multimodal release (``Gemma4ForConditionalGeneration``): ``config.json`` model_type ``gemma4`` with a
  nested ``text_config`` (``gemma4_text``) and a ``vision_config``; text tensors under ``model.language_model.``,
  vision tower under ``model.vision_tower.`` / ``model.embed_vision.``; no ``lm_head`` (tied).
* the text-only form (``Gemma4ForCausalLM``): flat ``gemma4_text`` config, tensors under ``model.``.
* the assistant (``Gemma4AssistantForCausalLM``, model_type ``gemma4_assistant``): ``backbone_hidden_size``,
  ``use_ordered_embeddings``, ``num_centroids``, ``centroid_intermediate_top_k`` and a ``text_config``; tensors
  ``model.layers.{i}.*`` (Q-only), ``model.norm``, ``model.embed_tokens`` (tied head), ``pre_projection``,
  ``post_projection``, and ``masked_embedding.{centroids.weight, token_ordering}`` with ordered embeddings.
Every weight is random (norm weights and layer scalars too, so 1 + w vs w, or a missing scalar, shows).

transformers 5.23 bug (documented in issue 18): ``Gemma4TextConfig.kv_sharing_modes`` raises when every layer is
KV-shared (every assistant config) and, with ``num_kv_shared_layers == 0``, marks no layer as storing K/V, so a
26B/31B-style target returns no ``shared_kv_states``. ``patched_kv_sharing`` replaces the property, only while the
oracle models are BUILT (it is read in the layers' __init__), with the rule older transformers, vLLM and llama.cpp
use: the last non-shared layer of each attention type stores its K/V.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

V = 256
S, F = "sliding_attention", "full_attention"

CASES = {
    # 31B-style: dense, attention_k_eq_v full layers (no v_proj, global KV heads), multimodal release layout
    "dense31": dict(layout="multimodal", text=dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=True,
        layer_types=[S, S, F, S, S, F], sliding_window=4, hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=V, final_logit_softcapping=30.0),
        assistant=dict(ordered=False)),
    # 26B-A4B-style: MoE block beside the dense MLP, layer order [S, S, F, F], text-only layout
    "moe26": dict(layout="text", text=dict(
        hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=True,
        layer_types=[S, S, F, F], sliding_window=3, hidden_size_per_layer_input=0, vocab_size_per_layer_input=V,
        enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
        final_logit_softcapping=30.0),
        assistant=dict(ordered=False)),
    # E4B-style: per-layer embeddings, KV-shared last layers, double-wide MLP there; centroid-head assistant
    "e4b": dict(layout="multimodal", text=dict(
        hidden_size=64, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, global_head_dim=32, attention_k_eq_v=False, layer_types=[S, S, F, S, S, F],
        sliding_window=4, hidden_size_per_layer_input=8, vocab_size_per_layer_input=V, num_kv_shared_layers=2,
        use_double_wide_mlp=True, final_logit_softcapping=30.0),
        assistant=dict(ordered=True, num_centroids=16, top_k=4)),
}
ROPE = {S: {"rope_type": "default", "rope_theta": 10000.0},
        F: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0}}


def _kv_sharing_modes(self):
    L, n_shared = self.num_hidden_layers, self.num_kv_shared_layers
    if n_shared >= L:                      # an assistant: every layer reads the target's K/V
        return ["reuse"] * L
    first = L - n_shared
    modes = [None if i < first else "reuse" for i in range(L)]
    for t in set(self.layer_types):
        modes[max(i for i in range(first) if self.layer_types[i] == t)] = "store"
    return modes


@contextlib.contextmanager
def patched_kv_sharing():
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
    old = Gemma4TextConfig.kv_sharing_modes
    Gemma4TextConfig.kv_sharing_modes = property(_kv_sharing_modes)
    try:
        yield
    finally:
        Gemma4TextConfig.kv_sharing_modes = old


def text_config(case: str, vocab: int = V) -> dict:
    c = {"model_type": "gemma4_text", "vocab_size": vocab, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
         "hidden_activation": "gelu_pytorch_tanh", "rope_parameters": ROPE, "tie_word_embeddings": True,
         "eos_token_id": 1, "bos_token_id": 2, "pad_token_id": 0, "dtype": "float32"}
    c.update(CASES[case]["text"])
    c["vocab_size_per_layer_input"] = vocab
    return c


def vision_config() -> dict:
    return {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "patch_size": 4,
            "position_embedding_size": 64, "pooling_kernel_size": 2}


def assistant_config(case: str, vocab: int = V) -> dict:
    t = CASES[case]["text"]
    a = CASES[case]["assistant"]
    text = {"model_type": "gemma4_text", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": t["num_key_value_heads"],
            "head_dim": t["head_dim"], "global_head_dim": t["global_head_dim"],
            "attention_k_eq_v": t["attention_k_eq_v"], "layer_types": [S, F, F] if case == "moe26" else [F, S, F],
            "sliding_window": t["sliding_window"], "num_kv_shared_layers": 3, "hidden_size_per_layer_input": 0,
            "vocab_size_per_layer_input": 0, "rope_parameters": ROPE, "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 4096, "dtype": "float32"}
    if "num_global_key_value_heads" in t:
        text["num_global_key_value_heads"] = t["num_global_key_value_heads"]
    c = {"model_type": "gemma4_assistant", "architectures": ["Gemma4AssistantForCausalLM"],
         "backbone_hidden_size": t["hidden_size"], "use_ordered_embeddings": a["ordered"],
         "tie_word_embeddings": True, "dtype": "float32", "text_config": text}
    if a["ordered"]:
        c.update(num_centroids=a["num_centroids"], centroid_intermediate_top_k=a["top_k"])
    return c


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point() or "inv_freq" in name or "embed_scale" in name:
                continue
            if name.endswith("layer_scalar"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "norm" in name or name.endswith(("router.scale", "per_expert_scale")):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "embed" in name else 0.15))


def _save(state: dict, path: Path, shards: int = 1) -> None:
    from safetensors.torch import save_file
    names = sorted(state)
    if shards == 1:
        save_file({k: state[k].contiguous() for k in names}, str(path / "model.safetensors"))
        return
    wmap = {}
    for s in range(shards):
        part = names[s::shards]
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(path / fn))
        wmap.update({k: fn for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


@dataclass
class Built:
    target_path: Path
    assistant_path: Path
    target: torch.nn.Module
    assistant: torch.nn.Module


def build(case: str, root: Path, seed: int = 0, vocab: int = V) -> Built:
    from transformers import (Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4Config,
                              Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig)
    tp, ap = root / f"{case}-target", root / f"{case}-assistant"
    tp.mkdir(parents=True)
    ap.mkdir(parents=True)
    layout = CASES[case]["layout"]
    tc = text_config(case, vocab)
    with patched_kv_sharing():
        if layout == "multimodal":
            cfg = {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"],
                   "text_config": tc, "vision_config": vision_config(), "audio_config": None,
                   "tie_word_embeddings": True, "dtype": "float32"}
            model = Gemma4ForConditionalGeneration(Gemma4Config(**{k: v for k, v in cfg.items()
                                                                   if k not in ("model_type", "architectures")}))
        else:
            cfg = dict(tc, architectures=["Gemma4ForCausalLM"])
            model = Gemma4ForCausalLM(Gemma4TextConfig(**{k: v for k, v in tc.items() if k != "model_type"}))
        _randomize(model, seed)
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        # released E2B/E4B files also carry k/v weights for the KV-shared layers, which nothing reads
        n_sh, L = tc.get("num_kv_shared_layers", 0), tc["num_hidden_layers"]
        pre = "model.language_model." if layout == "multimodal" else "model."
        for i in range(L - n_sh, L):
            d = tc["global_head_dim"] if tc["layer_types"][i] == F else tc["head_dim"]
            state[f"{pre}layers.{i}.self_attn.k_proj.weight"] = torch.randn(tc["num_key_value_heads"] * d,
                                                                            tc["hidden_size"])
        _save(state, tp, shards=2 if layout == "multimodal" else 1)
        (tp / "config.json").write_text(json.dumps(cfg, indent=1))

        acfg = assistant_config(case, vocab)
        asst = Gemma4AssistantForCausalLM(Gemma4AssistantConfig(
            text_config=Gemma4TextConfig(**{k: v for k, v in acfg["text_config"].items() if k != "model_type"}),
            **{k: v for k, v in acfg.items() if k not in ("model_type", "architectures", "text_config")}))
        _randomize(asst, seed + 1)
        if acfg["use_ordered_embeddings"]:
            perm = torch.from_numpy(np.random.default_rng(seed).permutation(vocab))
            asst.masked_embedding.token_ordering.copy_(perm)
        _save({k: v for k, v in asst.state_dict().items() if k != "lm_head.weight"}, ap)
        (ap / "config.json").write_text(json.dumps(acfg, indent=1))
        # the oracles are the checkpoints as transformers READS them (layout check included)
        cls = Gemma4ForConditionalGeneration if layout == "multimodal" else Gemma4ForCausalLM
        target = cls.from_pretrained(tp, dtype=torch.float32).eval()
        assistant = Gemma4AssistantForCausalLM.from_pretrained(ap, dtype=torch.float32).eval()
    return Built(tp, ap, target, assistant)


@torch.no_grad()
def oracle_target(b: Built, ids: list[int]):
    """(logits [T, V], post-norm hidden of the last position [H], shared K/V dict) from transformers."""
    out = b.target(torch.tensor([ids]), use_cache=False, output_hidden_states=True, return_shared_kv_states=True)
    return out.logits[0].numpy(), out.hidden_states[-1][0, -1].numpy(), out.shared_kv_states


@torch.no_grad()
def oracle_drafts(b: Built, ids: list[int], k: int):
    """One drafting round as transformers' Gemma4AssistantCandidateGenerator runs it (greedy): per step the
    assistant's logits [V] and projected hidden [H_t]. Returns (pending token, [logits], [hidden], [tokens])."""
    logits, h, kv = oracle_target(b, ids)
    T = len(ids)
    tok = int(np.argmax(logits[-1]))
    emb = b.target.get_input_embeddings()
    hid = torch.from_numpy(h)[None, None]
    kv = {t: (x[0], x[1]) for t, x in kv.items()}
    lgs, hs, toks = [], [], [tok]
    for _ in range(k):
        e = emb(torch.tensor([[tok]]))
        o = b.assistant(inputs_embeds=torch.cat([e, hid], -1), attention_mask=torch.ones(1, T + 1, dtype=torch.long),
                        position_ids=torch.tensor([[T]]), shared_kv_states=kv, use_cache=False)
        lgs.append(o.logits[0, -1].numpy())
        hid = o.last_hidden_state
        hs.append(hid[0, -1].numpy())
        tok = int(o.logits[0, -1].argmax())
        toks.append(tok)
    return lgs, hs, toks
