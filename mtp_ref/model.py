"""The model: trunk forward and MTP module forward over n new tokens with KV caches.

Weights stay in plain dicts keyed by the checkpoint's own tensor names (`W["self_attn.q_proj.weight"]`
inside a block, via a prefix view). Every family-specific choice comes from the FamilySpec.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import ops, ops_dsa, ops_sinks
from .cache import KVCache, LayerCache, RecurrentCache
from .config import ModelConfig, load_config, rope_inv_freq, softmax_scale
from .errors import MtpRefError
from .families import (FamilySpec, family_for, mtp_tensors, own_engine, trunk_tensors,
                       with_checkpoint_layout)
from .weights import Checkpoint

BUNDLED = Path(__file__).parent / "checkpoints" / "mtp-tiny"


class Prefixed:
    """W["x.weight"] -> checkpoint["model.layers.3.x.weight"], recording which tensors a forward reads."""

    def __init__(self, model: "Model", prefix: str, rename: dict | None = None):
        self.model, self.prefix, self.rename = model, prefix, rename or {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.model.weight(self.prefix + self.rename.get(name, name))

    def get(self, name: str) -> np.ndarray | None:
        full = self.prefix + self.rename.get(name, name)
        return self.model.weight(full) if full in self.model.ckpt else None

    def expert(self, name: str, e: int) -> np.ndarray:
        """Expert e's slice of a fused [E, ...] expert tensor."""
        return self.model.expert_weight(self.prefix + name, e)


class TextCodec:
    """Text <-> token ids through the checkpoint's tokenizer (`self.tokenizer`, None without tokenizer.json)."""
    path: Path
    tokenizer: object

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise MtpRefError(f"{self.path}: no tokenizer.json, so text prompts cannot be encoded; pass --prompt-ids")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            return " ".join(str(i) for i in ids)
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


class Model(TextCodec):
    """A loaded checkpoint plus the forward passes. Stateless between calls: all state is in caches."""

    def __init__(self, path: Path, cfg: ModelConfig, spec: FamilySpec, ckpt: Checkpoint, tokenizer=None):
        self.path, self.config, self.spec, self.ckpt, self.tokenizer = Path(path), cfg, spec, ckpt, tokenizer
        self.inv_freq, self.attention_factor = rope_inv_freq(cfg)
        qk_dim = cfg.qk_head_dim if spec.attention == "mla" else cfg.head_dim
        self.scale = softmax_scale(cfg, qk_dim)
        # MLA: "absorbed" folds kv_b into q and the output (what DeepSeek runs for decode; no per-token
        # expansion of the cache); "naive" expands keys/values from the latent, the readable reference.
        self.attn_impl = "absorbed"
        # DSA (spec.indexer): "sparse" attends only the indexer's top-k rows (ops_dsa.gathered_attention);
        # "masked" scores every row and masks the rest (the readable twin); "dense" skips the indexer: plain
        # MLA, what llama.cpp runs for V3.2's MTP layer, equal to the others when index_topk >= the length.
        self.dsa_impl = "sparse"
        self.dsa = ops_dsa.dsa_config(cfg) if spec.indexer else None
        self._dsa_selection = None  # the last full indexer layer's (idx, valid): "shared" layers reuse it
        # index_share_for_mtp_iteration (follows config.json): a module's draft steps >= 1 skip the MTP block's
        # indexer and attend to step 0's last-row top-k (ops_dsa docstring; drafters.MtpDrafter applies it)
        self.mtp_index_share = bool(self.dsa and self.dsa.mtp_index_share)
        self._dsa_reuse = None      # set by mtp_forward(reuse_topk=...) for one call
        self.mtp_topk = None        # the last mtp_forward's last-row selection ([1, K], [1, K]) under DSA
        # Gated DeltaNet: "recurrent" runs the delta rule one token at a time and keeps the state after every
        # token (the snapshots speculative rollback restores); "chunked" is the parallel form prefill uses.
        # "auto": recurrent for up to recurrent_max_tokens new tokens (decode, verify), chunked above.
        self.delta_rule = "auto"
        self.recurrent_max_tokens = 16
        self.delta_chunk = 64
        # MoE: "per_expert" gathers each selected expert's tokens and runs it once (the reference, and what a
        # real engine does); "dense" runs every expert on every row and weights the unselected ones by 0: the same
        # numbers in 2 calls instead of ~6 per expert, worth it only when the selections cover most experts
        # anyway. "auto": dense when n_routed_experts <= 2 * n * top-k (the bundled 4-expert model), else per_expert.
        self.moe_impl = "auto"
        self._stacked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # "gqa_hybrid" (MiMo-V2): sliding-window layers see sliding_window_size + swa_extra_keys keys (1:
        # transformers / SGLang; 0: vLLM). Geometry and RoPE theta per layer type (ops_sinks.geometry).
        self.swa_extra_keys = 1
        self._geometry: dict[str, ops_sinks.AttnGeometry] = {}
        # which output of MTP module j feeds depth j+1: "post_norm" (transformers' MtpModel, the DeepSeek
        # paper; our convention) or "pre_norm", the block output before the out norm (vLLM, SGLang)
        self.mtp_chain = "post_norm"
        self.bytes_read = 0       # weight bytes touched since reset_meter() (what decode must stream from memory)
        self._touched: set = set()   # tensor names (and (name, expert) slices) read in this forward

    # ------------------------------------------------------------------ weights + metering
    def weight(self, name: str) -> np.ndarray:
        if name not in self._touched:
            self._touched.add(name)
            self.bytes_read += self.ckpt.stored_nbytes(name)
        return self.ckpt.get(name)

    def expert_weight(self, name: str, e: int) -> np.ndarray:
        """Slice e of a fused expert tensor, metered as 1/E of its bytes (only the selected experts are read)."""
        if (name, e) not in self._touched:
            self._touched.add((name, e))
            self.bytes_read += self.ckpt.stored_nbytes(name) // self.ckpt.shape(name)[0]
        return self.ckpt.get(name)[e]

    def begin_forward(self) -> None:
        """Each forward streams every weight it uses once, whatever n is (the point of verifying in one pass)."""
        self._touched = set()

    def reset_meter(self) -> None:
        self.bytes_read = 0
        self._touched = set()

    def embed(self, ids: np.ndarray, name: str = "model.embed_tokens.weight") -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise MtpRefError(f"token id {int(ids.max() if ids.max() >= self.config.vocab_size else ids.min())} "
                              f"is outside the vocabulary [0, {self.config.vocab_size})")
        table = self.ckpt.get(name)                          # only the gathered rows are read
        row_bytes = self.ckpt.stored_nbytes(name) // self.config.vocab_size
        self.bytes_read += row_bytes * len(np.unique(ids))
        return table[ids]                                    # [n] -> [n, H]

    def head(self, x: np.ndarray, name: str | None = None) -> np.ndarray:
        if name is None:
            name = "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"
        return ops.linear(x, self.weight(name))              # [n, H] -> [n, V]

    # ------------------------------------------------------------------ building blocks
    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float | None = None) -> np.ndarray:
        """The family's RMSNorm: x / rms(x) * (norm_offset + w); Qwen3-Next/3.5 store zero-centred w (offset 1)."""
        return ops.rms_norm(x, w + self.spec.norm_offset if self.spec.norm_offset else w,
                            self.config.rms_norm_eps if eps is None else eps)

    def rope(self, positions: np.ndarray):
        if self.spec.attention == "gqa_hybrid":  # a theta per layer type: {layer type: table}
            freqs = {lt: ops_sinks.rope_inv_freq(self.geometry(lt), self.config)
                     for lt in ("full_attention", "sliding_attention")}          # (inv_freq, factor) per type
            tabs = {lt: ops.rope_tables(inv, positions, att) for lt, (inv, att) in freqs.items()}
            return {lt: c for lt, (c, _) in tabs.items()}, {lt: s for lt, (_, s) in tabs.items()}
        return ops.rope_tables(self.inv_freq, positions, self.attention_factor)

    def geometry(self, layer_type: str) -> "ops_sinks.AttnGeometry":
        key = f"{layer_type}/{self.swa_extra_keys}"
        if key not in self._geometry:
            self._geometry[key] = ops_sinks.geometry(self.config, layer_type, self.swa_extra_keys)
        return self._geometry[key]

    def gqa_attention(self, x, W: Prefixed, cache: LayerCache, start: int, cos, sin):
        cfg, spec = self.config, self.spec
        n, nh, nkv, hd = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = ops.linear(x, W["self_attn.q_proj.weight"], W.get("self_attn.q_proj.bias"))
        if spec.attn_gate:  # per head [query (d) | gate (d)]
            q, gate = np.split(q.reshape(n, nh, 2 * hd), 2, axis=-1)              # [n, h, d] each
        else:
            q = q.reshape(n, nh, hd)
        k = ops.linear(x, W["self_attn.k_proj.weight"], W.get("self_attn.k_proj.bias")).reshape(n, nkv, hd)
        v = ops.linear(x, W["self_attn.v_proj.weight"], W.get("self_attn.v_proj.bias")).reshape(n, nkv, hd)
        if spec.has_qk_norm(cfg) and spec.qk_norm_scope == "all":  # one norm over all heads (MiniMax-M2)
            q = self.rms_norm(q.reshape(n, -1), W["self_attn.q_norm.weight"]).reshape(q.shape)  # over h*d
            k = self.rms_norm(k.reshape(n, -1), W["self_attn.k_norm.weight"]).reshape(k.shape)
        elif spec.has_qk_norm(cfg):
            q = self.rms_norm(q, W["self_attn.q_norm.weight"])                   # per head, [n, h, d]
            k = self.rms_norm(k, W["self_attn.k_norm.weight"])
        q = ops.apply_rope(q, cos, sin, spec.rope_style)
        k = ops.apply_rope(k, cos, sin, spec.rope_style)
        kv = cache.append(k=k, v=v)                                              # [T, g, d] each
        o = ops.causal_attention(q, kv["k"], kv["v"], self.scale, start)        # [n, h*d]
        if spec.attn_gate:
            o = o * ops.sigmoid(gate.reshape(n, nh * hd))
        return ops.linear(o, W["self_attn.o_proj.weight"])                       # [n, H]

    def linear_attention(self, x, W: Prefixed, cache: RecurrentCache):
        """Gated DeltaNet (Qwen3-Next / Qwen3.5 `linear_attn`) over n new tokens, continuing the cache's state.

        qkv -> causal depthwise conv + silu -> q, k, v heads; q, k l2-normalised (q also * dk^-1/2);
        beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias) (log decay); the gated delta rule;
        gated RMSNorm with silu(z); out_proj.
        """
        cfg, spec = self.config, self.spec
        n = x.shape[0]
        nk, nv, dk, dv = cfg.linear_dims
        p = "linear_attn."
        if spec.linear_attn == "qkvz":
            qkv, z, b, a = ops.unpack_qkvz_ba(ops.linear(x, W[p + "in_proj_qkvz.weight"]),
                                              ops.linear(x, W[p + "in_proj_ba.weight"]), nk, nv, dk, dv)
        else:
            qkv = ops.linear(x, W[p + "in_proj_qkv.weight"])                     # [n, C]  C = 2 nk dk + nv dv
            z = ops.linear(x, W[p + "in_proj_z.weight"])                         # [n, nv*dv]
            b = ops.linear(x, W[p + "in_proj_b.weight"])                         # [n, nv]
            a = ops.linear(x, W[p + "in_proj_a.weight"])                         # [n, nv]
        conv_w = W[p + "conv1d.weight"][:, 0, :]                                 # [C, 1, K] -> [C, K]
        conv0, S0 = cache.initial(qkv.shape[1], conv_w.shape[1], (nv, dk, dv))
        qkv, window = ops.causal_conv1d(qkv, conv0, conv_w)                      # [n, C]
        q, k, v = np.split(qkv, [nk * dk, 2 * nk * dk], axis=-1)
        q = ops.l2norm(q.reshape(n, nk, dk)) * dk ** -0.5                        # [n, nk, dk]
        k = ops.l2norm(k.reshape(n, nk, dk))
        q, k = np.repeat(q, nv // nk, axis=1), np.repeat(k, nv // nk, axis=1)     # key head i serves value heads
                                                                                 # i*r .. i*r + r-1, r = nv/nk
        v = v.reshape(n, nv, dv)
        beta = ops.sigmoid(b)                                                    # [n, nv] write strength
        g = -np.exp(W[p + "A_log"]) * ops.softplus(a + W[p + "dt_bias"])         # [n, nv] log decay <= 0
        if self.delta_rule == "recurrent" or (self.delta_rule == "auto" and n <= self.recurrent_max_tokens):
            o, states = ops.gated_delta_rule_recurrent(q, k, v, g, beta, S0)     # [n, nv, dv], [n+1, nv, dk, dv]
        else:
            o, S = ops.gated_delta_rule_chunked(q, k, v, g, beta, S0, self.delta_chunk)
            states = S[None]
        cache.advance(n, window, states)
        o = ops.gated_rms_norm(o, z.reshape(n, nv, dv), W[p + "norm.weight"], cfg.rms_norm_eps)  # [n, nv, dv]
        return ops.linear(o.reshape(n, nv * dv), W[p + "out_proj.weight"])      # [n, H]

    def mla_attention(self, x, W: Prefixed, cache: LayerCache, start: int, cos, sin):
        """DeepSeek Multi-head Latent Attention. The cache holds c_kv [T, r] and k_pe [T, dr] only (plus the DSA
        indexer's key idx_k [T, d_I] when the family has one, spec.indexer)."""
        cfg = self.config
        n, nh = x.shape[0], cfg.num_attention_heads
        dn, dr, dv, r = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        if cfg.q_lora_rank:
            cq = self.rms_norm(ops.linear(x, W["self_attn.q_a_proj.weight"]),
                               W["self_attn.q_a_layernorm.weight"], self.spec.latent_norm_eps)  # [n, H] -> [n, rq]
            q = ops.linear(cq, W["self_attn.q_b_proj.weight"])                   # [n, rq] -> [n, h*(dn+dr)]
        else:
            q = ops.linear(x, W["self_attn.q_proj.weight"])
        q = q.reshape(n, nh, dn + dr)
        q_nope, q_pe = q[..., :dn], ops.apply_rope(q[..., dn:], cos, sin, self.spec.rope_style)  # [n, h, dn], [n, h, dr]
        ckv = ops.linear(x, W["self_attn.kv_a_proj_with_mqa.weight"])            # [n, H] -> [n, r + dr]
        c = self.rms_norm(ckv[:, :r], W["self_attn.kv_a_layernorm.weight"], self.spec.latent_norm_eps)  # [n, r]
        k_pe = ops.apply_rope(ckv[:, None, r:], cos, sin, self.spec.rope_style)[:, 0]          # [n, dr], shared by heads
        rows = {"c": c, "k_pe": k_pe}
        dsa = self.spec.indexer is not None and self.dsa_impl != "dense"
        # a shared draft step (index_share_for_mtp_iteration) selects nothing; it still caches its idx_k row so that
        # every cache row holds all its arrays (vLLM skips writing it: the row is provisional either way)
        reuse = self._dsa_reuse if dsa else None
        if dsa and W.get("self_attn.indexer.wk.weight") is not None:  # a layer with its own indexer
            p = "self_attn.indexer."
            qI, rows["idx_k"], wI = ops_dsa.indexer_qk(
                x, cq, W[p + "wq_b.weight"], W[p + "wk.weight"], W[p + "k_norm.weight"], W[p + "k_norm.bias"],
                W[p + "weights_proj.weight"], self.dsa, cos, sin, self.spec.indexer)
        kv = cache.append(**rows)                                                # [T, r], [T, dr] (+ [T, d_I])
        if dsa and "idx_k" in rows and reuse is None:
            self._dsa_selection = ops_dsa.select_topk(ops_dsa.index_scores(qI, kv["idx_k"], wI), start,
                                                      self.dsa.index_topk)      # ([n, K], [n, K])
        sel = reuse if reuse is not None else self._dsa_selection if dsa else None  # "shared" layers keep the
        # last full layer's choice

        def attend(qf, kf, vf):                                                  # [n, h, d], [T, g, d], [T, g, dv]
            if sel is None:
                return ops.causal_attention(qf, kf, vf, self.scale, start)
            if self.dsa_impl == "masked":
                return ops_dsa.masked_attention(qf, kf, vf, self.scale, ops_dsa.keep_mask(*sel, kf.shape[0]))
            return ops_dsa.gathered_attention(qf, kf, vf, self.scale, *sel)

        C, KPE = kv["c"], kv["k_pe"]
        w_kvb = W["self_attn.kv_b_proj.weight"]                                  # [h*(dn+dv), r]
        if self.attn_impl == "naive":  # expand every cached latent into per-head keys and values
            kvx = ops.linear(C, w_kvb).reshape(-1, nh, dn + dv)                  # [T, r] -> [T, h, dn+dv]
            k = np.concatenate([kvx[..., :dn], np.broadcast_to(KPE[:, None, :], (C.shape[0], nh, dr))], -1)
            qf = np.concatenate([q_nope, q_pe], -1)                              # [n, h, dn+dr]
            o = attend(qf, k, np.ascontiguousarray(kvx[..., dn:]))              # [n, h*dv]
        else:  # absorbed: scores = (q_nope W_UK) . c + q_pe . k_pe ; out = (p C) W_UV; no per-token expansion
            w3 = w_kvb.reshape(nh, dn + dv, r)                                   # [h, dn+dv, r]
            q_lat = (q_nope.transpose(1, 0, 2) @ w3[:, :dn]).transpose(1, 0, 2)  # [n, h, dn] -> [n, h, r]
            qf = np.concatenate([q_lat, q_pe], -1)                               # [n, h, r+dr]
            kf = np.concatenate([C, KPE], -1)[:, None, :]                        # [T, 1, r+dr]
            o_lat = attend(qf, kf, C[:, None, :]).reshape(n, nh, r)
            o = (o_lat.transpose(1, 0, 2) @ w3[:, dn:].transpose(0, 2, 1))       # [h, n, r] -> [h, n, dv]
            o = o.transpose(1, 0, 2).reshape(n, nh * dv)                         # [n, h*dv]
        return ops.linear(o, W["self_attn.o_proj.weight"])                       # [n, H]

    def route(self, x, W: Prefixed):
        """Expert choice: (indices [n, k], weights [n, k]).

        "softmax" (Qwen): softmax over all experts, top-k, renormalised (norm_topk_prob).
        "sigmoid_group" (DeepSeek-V3): sigmoid scores; the correction bias only picks experts; group-limited top-k.
        """
        cfg = self.config
        n, E, G = x.shape[0], cfg.n_routed_experts, cfg.n_group
        if self.spec.router == "softmax":
            p = ops.softmax(ops.linear(x, W["mlp.gate.weight"]))                 # [n, E]
            idx = np.argsort(-p, axis=-1, kind="stable")[:, : cfg.num_experts_per_tok]
            w = np.take_along_axis(p, idx, axis=-1)                              # [n, k]
            return idx, (w / w.sum(-1, keepdims=True) if cfg.norm_topk_prob else w)
        scores = ops.sigmoid(ops.linear(x, W["mlp.gate.weight"]))                # [n, E]
        choice = scores + W["mlp.gate.e_score_correction_bias"]                  # [n, E]
        if G > 1:
            grouped = choice.reshape(n, G, E // G)
            gscore = np.sort(grouped, axis=-1)[..., -2:].sum(-1)                 # [n, G] top-2 sum per group
            keep = np.argsort(-gscore, axis=-1, kind="stable")[:, : cfg.topk_group]
            gmask = np.zeros((n, G), bool)
            np.put_along_axis(gmask, keep, True, axis=-1)
            # dropped groups get -inf, as DeepSeek's inference/model.py and transformers 5.23 do
            choice = np.where(np.repeat(gmask, E // G, axis=-1), choice, -np.inf)
        idx = np.argsort(-choice, axis=-1, kind="stable")[:, : cfg.num_experts_per_tok]  # [n, k]
        w = np.take_along_axis(scores, idx, axis=-1)                             # [n, k] unbiased scores
        if cfg.norm_topk_prob:
            w = w / (w.sum(-1, keepdims=True) + 1e-20)
        return idx, w * cfg.routed_scaling_factor

    def swiglu_limit(self, layer: int | None, shared: bool) -> float | None:
        """Step-3.5/3.7 clamp bound of layer `layer` (config swiglu_limits: routed experts; swiglu_limits_shared:
        shared expert and dense MLP), indexed by the layer's own index (L + j for MTP blocks); 0 / null: none."""
        lim = self.config.raw.get("swiglu_limits_shared" if shared else "swiglu_limits")
        if layer is None or not isinstance(lim, list) or layer >= len(lim) or not lim[layer]:
            return None
        return float(lim[layer])

    def expert(self, x, W: Prefixed, e: int, limit: float | None = None):
        if self.spec.expert_layout == "fused":  # gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]
            gu = W.expert("mlp.experts.gate_up_proj", e)
            I = gu.shape[0] // 2
            return ops.swiglu_mlp(x, gu[:I], gu[I:], W.expert("mlp.experts.down_proj", e), limit)
        if self.spec.expert_layout == "stacked":  # gate_proj, up_proj [E, I, H], down_proj [E, H, I] (Step)
            return ops.swiglu_mlp(x, W.expert("mlp.experts.gate_proj", e), W.expert("mlp.experts.up_proj", e),
                                  W.expert("mlp.experts.down_proj", e), limit)
        p = f"mlp.experts.{e}."
        return ops.swiglu_mlp(x, W[p + "gate_proj.weight"], W[p + "up_proj.weight"], W[p + "down_proj.weight"], limit)

    def stacked_experts(self, W: Prefixed) -> tuple[np.ndarray, np.ndarray]:
        """All routed experts of a layer as [E, 2I, H] (gate rows, then up rows) and [E, H, I] (down)."""
        if W.prefix not in self._stacked:
            c = self.ckpt
            if self.spec.expert_layout == "fused":
                gu, dn = c.get(W.prefix + "mlp.experts.gate_up_proj"), c.get(W.prefix + "mlp.experts.down_proj")
            elif self.spec.expert_layout == "stacked":
                gu = np.concatenate([c.get(W.prefix + "mlp.experts.gate_proj"), c.get(W.prefix + "mlp.experts.up_proj")],
                                    axis=1)                                      # [E, 2I, H]
                dn = c.get(W.prefix + "mlp.experts.down_proj")
            else:
                E, p = self.config.n_routed_experts, W.prefix + "mlp.experts."
                gu = np.stack([np.concatenate([c.get(f"{p}{e}.gate_proj.weight"), c.get(f"{p}{e}.up_proj.weight")])
                               for e in range(E)])                               # [E, 2I, H]
                dn = np.stack([c.get(f"{p}{e}.down_proj.weight") for e in range(E)])  # [E, H, I]
            self._stacked[W.prefix] = (gu, dn)
        return self._stacked[W.prefix]

    def experts_dense(self, x, W: Prefixed, idx, w, limit: float | None = None):
        """Sum over k of w[:, k] * expert_{idx[:, k]}(x), computed as every expert on every row."""
        gu, dn = self.stacked_experts(W)
        E, I2, H = gu.shape
        for e in np.unique(idx):                                                 # meter the selected experts only
            if self.spec.expert_layout == "fused":
                self.expert_weight(W.prefix + "mlp.experts.gate_up_proj", int(e))
                self.expert_weight(W.prefix + "mlp.experts.down_proj", int(e))
            elif self.spec.expert_layout == "stacked":
                for name in ("gate_proj", "up_proj", "down_proj"):
                    self.expert_weight(W.prefix + "mlp.experts." + name, int(e))
            else:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    self.weight(f"{W.prefix}mlp.experts.{int(e)}.{name}.weight")
        n = x.shape[0]
        h = ops.linear(x, gu.reshape(E * I2, H)).reshape(n, E, I2)              # [n, H] -> [n, E, 2I]
        a = ops.swiglu_clamped(h[..., : I2 // 2], h[..., I2 // 2:], limit)      # [n, E, I]
        out = np.matmul(a.transpose(1, 0, 2), dn.transpose(0, 2, 1))             # [E, n, I] @ [E, I, H] -> [E, n, H]
        dense_w = np.zeros((n, E), x.dtype)                                      # [n, E], 0 for unselected experts
        np.put_along_axis(dense_w, idx, w.astype(x.dtype), axis=-1)
        return np.einsum("ne,enh->nh", dense_w, out)                            # [n, H]

    def moe(self, x, W: Prefixed, layer: int | None = None):
        idx, w = self.route(x, W)                                                # [n, k], [n, k]
        cfg = self.config
        limit = self.swiglu_limit(layer, shared=False)
        dense = self.moe_impl == "dense" or (
            self.moe_impl == "auto" and cfg.n_routed_experts <= 2 * x.shape[0] * cfg.num_experts_per_tok)
        if dense:
            y = self.experts_dense(x, W, idx, w, limit)
        else:
            y = np.zeros_like(x)
            for e in np.unique(idx):                                             # each selected expert read once
                rows, slot = np.nonzero(idx == e)                                # a token picks e at most once
                y[rows] += self.expert(x[rows], W, int(e), limit) * w[rows, slot][:, None]
        if self.spec.shared_expert == "gated":
            if self.config.shared_expert_intermediate_size:
                s = ops.swiglu_mlp(x, W["mlp.shared_expert.gate_proj.weight"], W["mlp.shared_expert.up_proj.weight"],
                                   W["mlp.shared_expert.down_proj.weight"])
                y = y + ops.sigmoid(ops.linear(x, W["mlp.shared_expert_gate.weight"])) * s   # [n, 1] * [n, H]
        elif self.config.n_shared_experts or self.spec.shared_expert == "sized":
            y = y + ops.swiglu_mlp(x, W["mlp.shared_experts.gate_proj.weight"], W["mlp.shared_experts.up_proj.weight"],
                                   W["mlp.shared_experts.down_proj.weight"], self.swiglu_limit(layer, shared=True))
        return y

    def block(self, x, W: Prefixed, layer: int, cache, start: int, cos, sin):
        """Pre-norm decoder block: x + mixer(norm(x)), then + mlp(norm(.)). The mixer is attention, or
        Gated DeltaNet for the "linear_attention" layers of hybrid models (cache is then a RecurrentCache)."""
        xn = self.rms_norm(x, W["input_layernorm.weight"])
        lt = self.spec.layer_type(self.config, layer)
        if lt == "linear_attention":
            h = x + self.linear_attention(xn, W, cache)
        elif self.spec.attention == "gqa_hybrid":
            h = x + ops_sinks.hybrid_attention(self, xn, W, cache, start, cos[lt], sin[lt], self.geometry(lt))
        else:
            attn = self.mla_attention if self.spec.attention == "mla" else self.gqa_attention
            h = x + attn(xn, W, cache, start, cos, sin)
        hn = self.rms_norm(h, W["post_attention_layernorm.weight"])
        if self.spec.is_moe(self.config, layer):
            return h + self.moe(hn, W, layer)
        return h + ops.swiglu_mlp(hn, W["mlp.gate_proj.weight"], W["mlp.up_proj.weight"], W["mlp.down_proj.weight"],
                                  self.swiglu_limit(layer, shared=True))

    # ------------------------------------------------------------------ forwards
    def forward(self, ids, cache: KVCache, collect: dict | None = None):
        """Trunk over n new tokens at positions cache.length .. +n-1.

        Returns (h [n, H] after the final norm, logits [n, V]). `collect`, if given, receives
        per-layer intermediates for traces.
        """
        cfg = self.config
        start = cache.length
        n = len(ids)
        if start + n > cfg.max_position_embeddings:
            raise MtpRefError(f"sequence of {start + n} tokens exceeds max_position_embeddings "
                              f"{cfg.max_position_embeddings} of config.json; shorten the prompt or --max-new-tokens")
        self.begin_forward()
        cos, sin = self.rope(np.arange(start, start + n))
        x = self.embed(ids)                                                      # [n, H]
        if collect is not None:
            collect["embed"] = x
        for i in range(cfg.num_hidden_layers):
            x = self.block(x, Prefixed(self, f"model.layers.{i}."), i, cache.layers[i], start, cos, sin)
            if collect is not None:
                collect[f"layers.{i}.out"] = x
        h = self.rms_norm(x, self.weight("model.norm.weight"))                   # [n, H]
        return h, self.head(h)                                                   # [n, H], [n, V]

    def forward_greedy(self, ids, cache: KVCache):
        """forward, returning (h [n, H], argmax of each row's logits [n]): all a greedy step needs (the CUDA backend
        answers it without copying the logits back)."""
        h, logits = self.forward(ids, cache)
        return h, np.argmax(logits, axis=-1)

    def mtp_forward(self, j: int, ids, prev_h, cache: LayerCache, positions: np.ndarray, last_only: bool = False,
                    reuse_topk=None):
        """MTP module j over n rows: row r pairs the previous hidden prev_h[r] with the embedding of ids[r].

        x = proj(concat[emb_norm(E ids), hid_norm(prev_h)])   (order per family)
        g = out_norm(block(x));  logits = head(g)
        (Qwen3-Next/3.5: the glue norms and proj are shared by all modules; block j is `mtp.layers.{j}.`)
        Returns (g [n, H] post-norm, which feeds depth j+1 (block(x) before out_norm instead when
        mtp_chain == "pre_norm"), and logits [n, V], or [1, V] for the last
        row only with last_only: drafting needs just that row, and the head is the largest matrix).
        reuse_topk: a DSA selection ([1, K], [1, K]) every row attends to instead of running the block's indexer
        (index_share_for_mtp_iteration). Sets self.mtp_topk to the last row's selection.
        """
        cfg, lay = self.config, self.spec.mtp
        if j >= cfg.num_mtp_modules:
            raise MtpRefError(f"MTP module {j} requested but the checkpoint holds {cfg.num_mtp_modules}")
        p = lay.module_prefix(cfg, j)
        W = Prefixed(self, p)
        self.begin_forward()
        own_embed = lay.embed and (p + lay.embed) in self.ckpt
        e = self.embed(ids, p + lay.embed if own_embed else "model.embed_tokens.weight")  # [n, H]
        en = self.rms_norm(e, W[lay.emb_norm])
        hn = self.rms_norm(prev_h, W[lay.hid_norm])
        cat = np.concatenate([hn, en] if lay.hidden_first else [en, hn], axis=-1)  # [n, 2H]
        x = ops.linear(cat, W[lay.proj])                                          # [n, 2H] -> [n, H]
        cos, sin = self.rope(positions)
        # the mask indexes cache rows (row r sits at rotary position positions[r - cache.length])
        self._dsa_reuse = reuse_topk
        try:
            x = self.block(x, Prefixed(self, lay.block_prefix(cfg, j), dict(lay.block_rename)),
                           cfg.num_hidden_layers + j, cache, cache.length, cos, sin)
        finally:
            self._dsa_reuse = None
        indexed = self.dsa is not None and self.dsa_impl != "dense"
        self.mtp_topk = (reuse_topk if reuse_topk is not None else ops_dsa.last_row(self._dsa_selection)) \
            if indexed else None
        g = self.rms_norm(x, W[lay.out_norm])                                     # [n, H]
        own_head = lay.head and (p + lay.head) in self.ckpt
        carry = g if self.mtp_chain == "post_norm" else x                         # what depth j+1 takes
        return carry, self.head(g[-1:] if last_only else g, p + lay.head if own_head else None)

    def new_cache(self, keep_snapshots: bool = True) -> KVCache:
        """A cache per trunk layer; the Gated DeltaNet layers get a RecurrentCache. keep_snapshots: keep the
        per-token recurrent states of each forward (what lets rollback restore any accepted length)."""
        cfg = self.config
        linear = [i for i in range(cfg.num_hidden_layers) if cfg.layer_type(i) == "linear_attention"]
        return KVCache(cfg.num_hidden_layers, recurrent=linear, keep_snapshots=keep_snapshots)

    def new_mtp_cache(self) -> LayerCache:
        return LayerCache()

    def weight_nbytes(self, names) -> int:
        return sum(self.ckpt.stored_nbytes(n) for n in names if n in self.ckpt)


def check_tensors(ckpt: Checkpoint, expected: dict[str, tuple[int, ...]], what: str) -> None:
    for name, shape in expected.items():
        if name not in ckpt:
            raise MtpRefError(f"{ckpt.path}: tensor '{name}' ({what}) is missing from the checkpoint")
        if tuple(ckpt.shape(name)) != tuple(shape):
            raise MtpRefError(f"{ckpt.path}: tensor '{name}' has shape {list(ckpt.shape(name))}, "
                              f"config.json implies {list(shape)}; config and weights do not match")


def count_mtp_modules(cfg: ModelConfig, spec: FamilySpec, ckpt: Checkpoint) -> int:
    """How many MTP modules the WEIGHTS hold (the config flag alone proves nothing: conversions drop them)."""
    if spec.mtp is None:
        return 0
    n = 0
    while True:
        want = mtp_tensors(cfg, spec, n)
        optional = {spec.mtp.module_prefix(cfg, n) + s for s in (spec.mtp.head if spec.mtp.head_optional else None,
                                                                  spec.mtp.embed) if s}
        # what only module n has: all of it (nextn, mimo), or its block when the glue is shared (Qwen `mtp.`)
        own = [k for k in want if n == 0 or k.startswith(spec.mtp.block_prefix(cfg, n))]
        present = [k for k in own if k in ckpt]
        if not present or (n >= cfg.num_nextn_predict_layers and len(present) < len(set(own) - optional)):
            return n
        check_tensors(ckpt, {k: s for k, s in want.items() if k not in optional or k in ckpt},
                      f"MTP module {n}")
        n += 1


_BLAS_LIMIT = None


def _limit_blas_threads(cfg: ModelConfig) -> None:
    """Small models: one BLAS thread. Their [n, H] x [H, I] products take microseconds, and a second
    OpenBLAS thread spins against the first (and against anything else on a 2-core machine):
    measured here, a 10-layer H=256 forward took 2 ms on one thread and 12-160 ms on two under load.
    MTP_REF_BLAS_THREADS overrides; large models keep the library default."""
    global _BLAS_LIMIT
    n = os.environ.get("MTP_REF_BLAS_THREADS")
    if n is None and cfg.hidden_size > 1024:
        return
    from threadpoolctl import threadpool_limits
    _BLAS_LIMIT = threadpool_limits(limits=int(n or 1), user_api="blas")


def load_model(path: str | Path | None = None) -> Model:
    """Open a Hugging Face checkpoint directory (None: the bundled tiny MTP model)."""
    path = Path(path) if path is not None else BUNDLED
    own = own_engine(path)
    if own is not None:  # a family with an engine module of its own (families.OWN_ENGINES)
        return own
    cfg = load_config(path)
    spec = family_for(cfg)
    q = cfg.quantization_config or {}
    if q and q.get("quant_method") not in ("fp8", None):
        raise MtpRefError(f"{path / 'config.json'}: quantization_config.quant_method '{q.get('quant_method')}' "
                          f"is not supported (only the DeepSeek-style block 'fp8')")
    if cfg.rope.partial_rotary_factor is None:
        cfg.rope.partial_rotary_factor = spec.partial_rotary_default
    ckpt = Checkpoint(path, tuple(q.get("weight_block_size", (128, 128))), aliases=spec.trunk_aliases,
                      renames=spec.tensor_renames)
    _limit_blas_threads(cfg)
    spec = with_checkpoint_layout(spec, cfg, ckpt.infos)
    check_tensors(ckpt, trunk_tensors(cfg, spec), "trunk")
    cfg.num_mtp_modules = count_mtp_modules(cfg, spec, ckpt)
    return Model(path, cfg, spec, ckpt, load_tokenizer(path))


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer.json, or None when it has none (prompts are then given as token ids)."""
    tf = path / "tokenizer.json"
    if not tf.exists():
        return None
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(tf))
    except Exception as e:  # the tokenizers library raises its own exception types
        raise MtpRefError(f"{tf}: cannot be read by the tokenizers library ({e})") from None
