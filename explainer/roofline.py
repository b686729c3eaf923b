"""The bandwidth model of page 1: parameters, bytes and FLOPs of one forward over m tokens.

A forward over m tokens (B sequences x n tokens each) reads every dense weight once, one
embedding row per token, the routed experts that at least one of the m tokens picked, and each
sequence's KV cache. Its time on a roofline is max(bytes / bandwidth, FLOPs / peak FLOP/s).
Counts come from a released config (presets.MODELS) or from the loaded checkpoint's real tensors.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mtp_ref.families import mtp_tensors, trunk_tensors

from .presets import KV_BYTES


@dataclass
class CostModel:
    name: str
    hidden: int
    vocab: int
    dense_params: float            # read once per forward: attention, dense MLPs, norms, routers, shared experts, head
    moe_layers: int = 0
    n_experts: int = 0
    top_k: int = 0
    expert_params: float = 0.0     # one routed expert (gate + up + down)
    kv_layers: list = field(default_factory=list)   # per attention layer: (cache elements per position, window | None)
    state_elems: float = 0.0       # recurrent state per sequence (float32), e.g. Gated DeltaNet
    attn_flops: list = field(default_factory=list)  # per attention layer: (FLOPs per query per visible position, window)
    const_flops: float = 0.0       # per-token FLOPs that do not scale with context (recurrent updates)
    total_params: float = 0.0      # everything the release stores (trunk + MTP)
    mtp_params: float = 0.0        # stored params of the MTP module(s), incl. embedding/head copies if the file has them
    draft_params: float = 0.0      # params one MTP draft forward reads (its block with top-k experts, projection, head)
    tied: bool = False             # lm_head is the embedding matrix (stored once, still read whole by the head)
    stored_bpp: float | None = None  # bytes/param as stored (loaded checkpoint only)
    source: str = ""
    published: str = ""
    notes: list = field(default_factory=list)

    # ------------------------------------------------------------------ counts
    def expected_experts(self, m: float) -> float:
        """Distinct experts per MoE layer when m tokens each pick top_k of n_experts uniformly."""
        if not self.n_experts:
            return 0.0
        return self.n_experts * (1.0 - (1.0 - self.top_k / self.n_experts) ** m)

    def active_params(self) -> float:
        """Params multiplied per token (for FLOPs): dense + top_k experts per MoE layer."""
        return self.dense_params + self.moe_layers * self.top_k * self.expert_params

    def trunk_params(self) -> float:
        embed = 0 if self.tied else self.vocab * self.hidden
        return self.dense_params + embed + self.moe_layers * self.n_experts * self.expert_params

    def weight_bytes(self, m: float, bpp: float) -> float:
        """Weight bytes one forward over m tokens streams from memory."""
        embed_rows = min(m, self.vocab) * self.hidden
        return (self.dense_params + embed_rows + self.moe_layers * self.expected_experts(m) * self.expert_params) * bpp

    def kv_bytes(self, context: int, batch: int) -> float:
        per_seq = sum(e * (context if w is None else min(context, w)) for e, w in self.kv_layers) * KV_BYTES
        return batch * (per_seq + self.state_elems * 4)

    def flops(self, m: float, context: int) -> float:
        attn = sum(f * (context if w is None else min(context, w)) for f, w in self.attn_flops)
        return m * (2 * self.active_params() + attn + self.const_flops)

    def forward(self, n: int, batch: int, context: int, bpp: float, bw: float, peak: float) -> dict:
        """One forward of `batch` sequences x `n` new tokens each, on a roofline (bw bytes/s, peak FLOP/s)."""
        m = n * batch
        wb, kb, fl = self.weight_bytes(m, bpp), self.kv_bytes(context, batch), self.flops(m, context)
        t_mem, t_cmp = (wb + kb) / bw, fl / peak
        return {"m": m, "weight_bytes": wb, "kv_bytes": kb, "bytes": wb + kb, "flops": fl,
                "intensity": fl / (wb + kb), "t_mem": t_mem, "t_compute": t_cmp, "seconds": max(t_mem, t_cmp),
                "bound": "memory" if t_mem >= t_cmp else "compute"}

    def draft_ratio(self) -> float:
        """Bytes of one MTP draft forward / bytes of one 1-token trunk forward (memory-bound cost ratio c)."""
        trunk = self.weight_bytes(1, 1.0)
        return self.draft_params / trunk if trunk else 0.0


def expected_tokens(a: float, k: int) -> float:
    """E[tokens per verify step] with i.i.d. acceptance a: 1 + a + ... + a^k = (1 - a^(k+1)) / (1 - a)."""
    return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def mtp_speedup(cm: CostModel, a: float, k: int, batch: int, context: int, bpp: float, bw: float, peak: float) -> float:
    """Decode throughput with k MTP drafts / without, on the roofline: E[tokens] x T(1) / (T(k+1) + k T_draft)."""
    plain = cm.forward(1, batch, context, bpp, bw, peak)["seconds"]
    verify = cm.forward(k + 1, batch, context, bpp, bw, peak)["seconds"]
    draft = max(cm.draft_params * bpp / bw, 2 * cm.draft_params * batch / peak)
    return expected_tokens(a, k) * plain / (verify + k * draft)


# ---------------------------------------------------------------------- blocks of released configs

def _mlp(H: int, inter: int) -> int:
    return 3 * H * inter  # gate, up, down


def _mla(c: dict) -> tuple[int, int, int]:
    """(params, cache elements per position, FLOPs per query per position) of DeepSeek MLA."""
    H, nh = c["hidden_size"], c["num_attention_heads"]
    dqk, dv = c["qk_nope_head_dim"] + c["qk_rope_head_dim"], c["v_head_dim"]
    r, rq = c["kv_lora_rank"], c.get("q_lora_rank")
    p = (rq * H + rq + nh * dqk * rq) if rq else nh * dqk * H
    p += (r + c["qk_rope_head_dim"]) * H + r + nh * (c["qk_nope_head_dim"] + dv) * r + nh * dv * H
    return p, r + c["qk_rope_head_dim"], 2 * nh * (dqk + dv)


def _gqa(H: int, nh: int, nkv: int, hd: int, bias=False, gate=False, k_eq_v=False, qk_norm=False):
    p = H * nh * hd * (2 if gate else 1) + H * nkv * hd * (1 if k_eq_v else 2) + nh * hd * H
    p += (nh + 2 * nkv) * hd if bias else 0
    p += 2 * hd if qk_norm else 0
    return p, nkv * hd * (1 if k_eq_v else 2), 2 * nh * hd * 2


def _deltanet(c: dict) -> tuple[int, int, int]:
    """(params, recurrent state elements, FLOPs per token) of one Gated DeltaNet layer (Qwen3.5/3.6)."""
    H = c["hidden_size"]
    nk, nv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv, K = c["linear_key_head_dim"], c["linear_value_head_dim"], c["linear_conv_kernel_dim"]
    conv = 2 * nk * dk + nv * dv
    p = H * conv + H * nv * dv + 2 * H * nv + conv * K + nv * dv * H + 2 * nv + dv
    return p, nv * dk * dv + conv * (K - 1), 4 * nv * dk * dv


def from_config(name: str, c: dict) -> CostModel:
    """Cost model of a released config (presets.MODELS)."""
    fam, H, V, L = c["family"], c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    cm = CostModel(name, H, V, 0.0, source=c["source"], published=c["published"],
                   tied=bool(c.get("tie_word_embeddings")))
    dense = V * H + H  # lm_head (the embedding matrix when tied) + final norm
    block_dense, block_moe = 0.0, 0.0
    if fam in ("deepseek_v3", "glm4_moe"):
        if fam == "deepseek_v3":
            ap, kv, af = _mla(c)
        else:
            ap, kv, af = _gqa(H, c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"],
                              bias=c.get("attention_bias", False))
        E, I = c["n_routed_experts"], c["moe_intermediate_size"]
        kd = c["first_k_dense_replace"]
        block_dense = ap + 2 * H + _mlp(H, c["intermediate_size"])
        block_moe = ap + 2 * H + E * H + E + c["n_shared_experts"] * _mlp(H, I)   # router, bias, shared expert
        dense += kd * block_dense + (L - kd) * block_moe
        cm.moe_layers, cm.n_experts, cm.top_k, cm.expert_params = L - kd, E, c["num_experts_per_tok"], _mlp(H, I)
        cm.kv_layers = [(kv, None)] * L
        cm.attn_flops = [(af, None)] * L
        glue = 2 * H * H + 3 * H                                       # eh_proj, enorm, hnorm, shared_head.norm
        n_mtp = c.get("num_nextn_predict_layers", 0)
        cm.mtp_params = n_mtp * (glue + block_moe + E * cm.expert_params + 2 * V * H)  # file holds embed + head copies
        cm.draft_params = glue + block_moe + cm.top_k * cm.expert_params + V * H if n_mtp else 0.0
    elif fam == "mimo":
        ap, kv, af = _gqa(H, c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], bias=True)
        block_dense = ap + 2 * H + _mlp(H, c["intermediate_size"])
        dense += L * block_dense
        cm.kv_layers, cm.attn_flops = [(kv, None)] * L, [(af, None)] * L
        glue = 2 * H * H + 3 * H                                       # input_proj, token/hidden/final layernorms
        cm.mtp_params = c.get("num_nextn_predict_layers", 0) * (glue + block_dense)
        cm.draft_params = glue + block_dense + V * H                   # shares lm_head
    elif fam == "qwen3_5":
        every = c["full_attention_interval"]
        n_full = L // every
        ap, kv, af = _gqa(H, c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"],
                          gate=c.get("attn_output_gate", False), qk_norm=True)
        lp, state, lf = _deltanet(c)
        mlp = _mlp(H, c["intermediate_size"])
        dense += n_full * (ap + 2 * H + mlp) + (L - n_full) * (lp + 2 * H + mlp)
        cm.kv_layers, cm.attn_flops = [(kv, None)] * n_full, [(af, None)] * n_full
        cm.state_elems, cm.const_flops = (L - n_full) * state, (L - n_full) * lf
        glue = 2 * H * H + 3 * H                                       # mtp.fc, pre_fc_norm_embedding/hidden, mtp.norm
        cm.mtp_params = c.get("mtp_num_hidden_layers", 0) * (glue + ap + 2 * H + mlp)
        cm.draft_params = glue + ap + 2 * H + mlp + V * H              # full-attention block, shared lm_head
        cm.notes.append(f"{L - n_full} Gated DeltaNet layers keep a fixed recurrent state; "
                        f"{n_full} full-attention layers keep a KV cache")
    elif fam == "gemma4":
        every = c["sliding_window_pattern"]
        n_full = L // every
        sp, skv, sf = _gqa(H, c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], qk_norm=True)
        gp, gkv, gf = _gqa(H, c["num_attention_heads"], c["num_global_key_value_heads"], c["global_head_dim"],
                           k_eq_v=c.get("attention_k_eq_v", False), qk_norm=True)
        mlp = _mlp(H, c["intermediate_size"])
        dense += (L - n_full) * (sp + 4 * H + mlp) + n_full * (gp + 4 * H + mlp)   # four norms per Gemma block
        w = c["sliding_window"]
        cm.kv_layers = [(skv, w)] * (L - n_full) + [(gkv, None)] * n_full
        cm.attn_flops = [(sf, w)] * (L - n_full) + [(gf, None)] * n_full
        cm.notes.append(c["mtp_note"])
    else:
        raise ValueError(fam)
    cm.dense_params = dense
    cm.total_params = cm.trunk_params() + cm.mtp_params
    return cm


# ---------------------------------------------------------------------- the loaded checkpoint

def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def from_checkpoint(model) -> CostModel:
    """Cost model of the loaded checkpoint, counted from its real tensors."""
    cfg, spec, ck = model.config, model.spec, model.ckpt
    H, V = cfg.hidden_size, cfg.vocab_size
    trunk = trunk_tensors(cfg, spec)
    dense = expert_total = 0
    stored = elems = 0
    for name, shape in trunk.items():
        n = _numel(shape)
        stored += ck.stored_nbytes(name)
        elems += n
        if ".mlp.experts." in name:
            expert_total += n
        elif name != "model.embed_tokens.weight":
            dense += n
    moe_layers = sum(1 for i in range(cfg.num_hidden_layers) if spec.moe and cfg.is_moe_layer(i))
    cm = CostModel("loaded checkpoint", H, V, float(dense), source=str(model.path),
                   published=f"{cfg.model_type}, {cfg.num_hidden_layers} layers, read from its safetensors")
    if moe_layers:
        cm.moe_layers, cm.n_experts, cm.top_k = moe_layers, cfg.n_routed_experts, cfg.num_experts_per_tok
        cm.expert_params = expert_total / (moe_layers * cfg.n_routed_experts)
    nh = cfg.num_attention_heads
    if spec.attention == "mla":
        kv, af = cfg.kv_lora_rank + cfg.qk_rope_head_dim, 2 * nh * (cfg.qk_head_dim + cfg.v_head_dim)
    else:
        kv, af = 2 * cfg.num_key_value_heads * cfg.head_dim, 4 * nh * cfg.head_dim
    cm.kv_layers = [(kv, None)] * cfg.num_hidden_layers
    cm.attn_flops = [(af, None)] * cfg.num_hidden_layers
    cm.stored_bpp = stored / elems
    mtp_total = draft = 0
    for j in range(cfg.num_mtp_modules):
        names = [n for n in mtp_tensors(cfg, spec, j) if n in ck]
        mtp_total += sum(_numel(ck.shape(n)) for n in names)
        if j == 0:
            for n in names:
                if ".mlp.experts." in n:
                    draft += _numel(ck.shape(n)) * cfg.num_experts_per_tok / cfg.n_routed_experts
                elif not n.endswith("embed_tokens.weight"):
                    draft += _numel(ck.shape(n))
            if not (spec.mtp.head and spec.mtp.module_prefix(cfg, 0) + spec.mtp.head in ck):
                draft += V * H  # shares lm_head
    cm.mtp_params, cm.draft_params = float(mtp_total), float(draft)
    cm.total_params = float(sum(_numel(ck.shape(n)) for n in ck.names() if not n.endswith("_scale_inv")))
    return cm


def dominant_dtype(model) -> str:
    return Counter(model.ckpt.dtype(n) for n in model.ckpt.names()).most_common(1)[0][0]


# ---------------------------------------------------------------------- measurements on this machine

def copy_bandwidth(nbytes: int = 128 * 2**20, repeats: int = 3) -> float:
    """Measured memory bandwidth (bytes/s) of np.copyto over nbytes: reads nbytes and writes nbytes."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def time_forwards(model, prompt_ids: list[int], ns: list[int], repeats: int = 3) -> list[dict]:
    """Best-of-`repeats` wall time of one trunk forward over n new tokens after the prompt, for each n.

    The cache is rolled back after each forward, so every measurement starts from the same prompt.
    `bytes_read` is the engine's meter: stored weight bytes the forward touched.
    """
    cache = model.new_cache()
    model.forward(np.asarray(prompt_ids), cache)
    base = cache.length
    pool = (list(prompt_ids) * (max(ns) // max(len(prompt_ids), 1) + 1))[: max(ns)]
    model.forward(np.asarray(pool), cache)          # warm-up: load the experts the prompt did not use
    cache.truncate(base)
    best = {n: float("inf") for n in ns}
    read = {}
    for _ in range(repeats):                         # interleaved, so a burst of load hits different n
        for n in ns:
            model.reset_meter()
            t = time.perf_counter()
            model.forward(np.asarray(pool[:n]), cache)
            best[n] = min(best[n], time.perf_counter() - t)
            read[n] = model.bytes_read
            cache.truncate(base)
    return [{"n": n, "seconds": best[n], "bytes_read": read[n]} for n in ns]
