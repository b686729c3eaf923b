"""A small torch implementation of the DeepSeek-V3 architecture with chained MTP modules.

Written for training (fused expert tensors, SDPA attention, every routed expert computed densely and
masked, which is exact for the forward value and the gradients), and numerically the same model as
transformers' DeepseekV3ForCausalLM + MtpModel (5.23) for the same weights:

* MLA attention: q = q_b(q_a_layernorm(q_a(x))); [c_kv, k_rope] = kv_a_proj_with_mqa(x);
  [k_nope, v] = kv_b(kv_a_layernorm(c_kv)); DeepSeek interleaved-pair RoPE on q_rope and the shared
  k_rope (same de-interleaving output order as transformers' apply_rotary_pos_emb_interleave);
  softmax scale (qk_nope + qk_rope) ** -0.5 (default rope, no YaRN).
* MoE: sigmoid router scores; e_score_correction_bias (float32) is added for the top-k CHOICE only;
  the chosen experts' raw scores are normalised (norm_topk_prob) and multiplied by routed_scaling_factor;
  plus n_shared_experts shared experts. n_group = topk_group = 1 (group selection is then a no-op).
* MTP module j (0-based), row i: x = eh_proj([enorm(embed(t_{i+j+1})), hnorm(g_{j-1,i})]) with
  g_{-1,i} = h_i = model.norm(trunk output); one decoder block at RoPE position i+j+1;
  g_{j,i} = shared_head.norm(block output); logits_j = shared_head.head(g_{j,i}) predict t_{i+j+2}.
  embed_tokens / shared_head.head of every module are the main model's embed_tokens / lm_head (tied
  while training, written as copies, as in the DeepSeek-V3 release).

Parameter names follow the released checkpoint except the fused experts (`mlp.experts.gate_up`
[E, 2I, H], gate rows first, and `mlp.experts.down` [E, H, I]), which `released_state_dict` splits
per expert, and the MTP glue, which it renames to `model.layers.{L+j}.*`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg: dict, n_pos: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [n_pos, rope_dim // 2] (one angle per interleaved pair), float32."""
    d = cfg["qk_rope_head_dim"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    ang = torch.arange(n_pos, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def apply_rope_interleave(x, cos, sin):
    """x [..., T, d] in DeepSeek interleaved pair layout; cos/sin [T, d/2].
    Output in transformers' order: [rotated even elements, rotated odd elements]."""
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class MLA(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
        self.nh = nh
        self.nope, self.rope, self.vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        self.kv_rank = cfg["kv_lora_rank"]
        qk = self.nope + self.rope
        eps = cfg["rms_norm_eps"]
        self.q_a_proj = nn.Linear(H, cfg["q_lora_rank"], bias=False)
        self.q_a_layernorm = RMSNorm(cfg["q_lora_rank"], eps)
        self.q_b_proj = nn.Linear(cfg["q_lora_rank"], nh * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, self.kv_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, eps)
        self.kv_b_proj = nn.Linear(self.kv_rank, nh * (self.nope + self.vd), bias=False)
        self.o_proj = nn.Linear(nh * self.vd, H, bias=False)
        self.scale = qk ** -0.5

    def _qkv(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(B, T, self.nh, -1).transpose(1, 2)
        q_nope, q_rot = q.split([self.nope, self.rope], dim=-1)
        ckv = self.kv_a_proj_with_mqa(x)
        c, k_rot = ckv.split([self.kv_rank, self.rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(c)).view(B, T, self.nh, -1).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.vd], dim=-1)
        q_rot = apply_rope_interleave(q_rot, cos, sin)
        k_rot = apply_rope_interleave(k_rot[:, None], cos, sin).expand(B, self.nh, T, self.rope)
        q = torch.cat([q_nope, q_rot], dim=-1)
        k = torch.cat([k_nope, k_rot], dim=-1)
        return q, k, v

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.vd))

    def forward_cached(self, x, cos, sin, cache, start):
        """Incremental attention: cache = (k_buf, v_buf) [B, nh, S_max, d]; x holds positions start.."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        kb, vb = cache
        kb[:, :, start:start + T] = k.to(kb.dtype)
        vb[:, :, start:start + T] = v.to(vb.dtype)
        k, v = kb[:, :, :start + T], vb[:, :, :start + T]
        if T == 1:
            o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=self.scale)
        else:
            assert start == 0, "multi-token steps only for the prefill"
            o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), is_causal=True, scale=self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.vd))


class MLP(nn.Module):
    def __init__(self, H: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(H, inter, bias=False)
        self.up_proj = nn.Linear(H, inter, bias=False)
        self.down_proj = nn.Linear(inter, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        E, H = cfg["n_routed_experts"], cfg["hidden_size"]
        self.weight = nn.Parameter(torch.zeros(E, H))
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))
        self.top_k = cfg["num_experts_per_tok"]
        self.norm = cfg["norm_topk_prob"]
        self.scale = cfg["routed_scaling_factor"]
        assert cfg["n_group"] == 1 and cfg["topk_group"] == 1

    def forward(self, x2d):
        """x2d [N, H] -> dense routing weights [N, E] (zeros for unchosen experts), expert load [E]."""
        with torch.autocast(device_type=x2d.device.type, enabled=False):  # router math in float32
            scores = torch.sigmoid(F.linear(x2d.float(), self.weight.float()))
        idx = torch.topk(scores + self.e_score_correction_bias, self.top_k, dim=-1).indices
        w = scores.gather(1, idx)
        if self.norm:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * self.scale
        dense = torch.zeros_like(scores).scatter(1, idx, w)
        load = torch.zeros_like(scores).scatter(1, idx, 1.0).sum(0)
        return dense, load


class MoE(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        E, H, I = cfg["n_routed_experts"], cfg["hidden_size"], cfg["moe_intermediate_size"]
        self.E, self.I = E, I
        self.gate = Gate(cfg)
        self.experts = nn.Module()
        self.experts.gate_up = nn.Parameter(torch.empty(E, 2 * I, H))  # per expert: [gate_proj; up_proj]
        self.experts.down = nn.Parameter(torch.empty(E, H, I))        # per expert: down_proj
        self.shared_experts = MLP(H, I * cfg["n_shared_experts"])

    def forward(self, x):
        shp = x.shape
        x2 = x.reshape(-1, shp[-1])
        w, load = self.gate(x2)
        gu = F.linear(x2, self.experts.gate_up.reshape(-1, shp[-1])).view(-1, self.E, 2, self.I)
        a = F.silu(gu[:, :, 0]) * gu[:, :, 1] * w.to(gu.dtype)[:, :, None]        # [N, E, I]
        down_cat = self.experts.down.permute(1, 0, 2).reshape(shp[-1], self.E * self.I)  # [H, E*I]
        y = F.linear(a.reshape(-1, self.E * self.I), down_cat) + self.shared_experts(x2)
        return y.view(shp), load


class Block(nn.Module):
    def __init__(self, cfg: dict, moe: bool):
        super().__init__()
        H, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(H, eps)
        self.self_attn = MLA(cfg)
        self.post_attention_layernorm = RMSNorm(H, eps)
        self.is_moe = moe
        self.mlp = MoE(cfg) if moe else MLP(H, cfg["intermediate_size"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return self._ffn(x)

    def forward_cached(self, x, cos, sin, cache, start):
        x = x + self.self_attn.forward_cached(self.input_layernorm(x), cos, sin, cache, start)
        return self._ffn(x)

    def _ffn(self, x):
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            y, load = self.mlp(h)
        else:
            y, load = self.mlp(h), None
        return x + y, load


class MTPModule(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        H, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.enorm = RMSNorm(H, eps)
        self.hnorm = RMSNorm(H, eps)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.block = Block(cfg, moe=True)
        self.shared_head_norm = RMSNorm(H, eps)


class TinyMTPModel(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
        self.embed_tokens = nn.Embedding(V, H)
        self.layers = nn.ModuleList([Block(cfg, moe=i >= cfg["first_k_dense_replace"]) for i in range(L)])
        self.norm = RMSNorm(H, cfg["rms_norm_eps"])
        self.lm_head = nn.Linear(H, V, bias=False)
        self.mtp = nn.ModuleList([MTPModule(cfg) for _ in range(cfg["num_nextn_predict_layers"])])
        # The release stores a shared_head.head per MTP module. Training ties them all to lm_head; the
        # distillation stage may untie them (untie_mtp_heads) so that each module gets its own output matrix.
        self.mtp_heads: nn.ModuleList | None = None
        self.use_compiled = False  # call blocks through __call__ (compiled if Block.compile() was used)

    # ---------------------------------------------------------------- init
    def init_weights(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        n_resid = 2 * (len(self.layers) + len(self.mtp))
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or "norm" in name.split(".")[-2]:
                continue  # RMSNorm weights stay 1
            s = std
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight") or name.endswith("experts.down"):
                s = std / math.sqrt(n_resid)
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * s)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def untie_mtp_heads(self):
        """Give each MTP module its own head, initialised as a copy of lm_head (same file size: the
        released layout stores a copy per module anyway)."""
        V, H = self.lm_head.weight.shape
        self.mtp_heads = nn.ModuleList([nn.Linear(H, V, bias=False) for _ in self.mtp])
        with torch.no_grad():
            for hd in self.mtp_heads:
                hd.weight.copy_(self.lm_head.weight)
        self.mtp_heads.to(self.lm_head.weight.device)

    def mtp_head(self, j, g):
        return self.lm_head(g) if self.mtp_heads is None else self.mtp_heads[j](g)

    # ---------------------------------------------------------------- forward
    def _block(self, blk, x, cos, sin):
        if self.use_compiled:
            return blk(x, cos, sin)
        return blk.forward(x, cos, sin)  # eager even when the module was compiled in place

    def trunk(self, ids, cos, sin):
        """ids [B, T] -> h [B, T, H] (post final norm), list of expert loads."""
        x = self.embed_tokens(ids)
        loads = []
        for blk in self.layers:
            x, load = self._block(blk, x, cos, sin)
            if load is not None:
                loads.append(load)
        return self.norm(x), loads

    def mtp_step(self, j, g, next_ids, cos, sin):
        """Module j on rows whose input tokens are next_ids [B,T] and previous hidden g [B,T,H];
        cos/sin must already be the tables for positions i + j + 1. Returns (g_j post-norm, load)."""
        m = self.mtp[j]
        e = self.embed_tokens(next_ids)
        x = m.eh_proj(torch.cat([m.enorm(e), m.hnorm(g)], dim=-1))
        y, load = self._block(m.block, x, cos, sin)
        return m.shared_head_norm(y), load

    def forward_all(self, window, n_depth=None):
        """window [B, T + D + 1] tokens. Returns main logits [B,T,V], list of MTP logits
        (module j: [B,T,V] predicting window[:, j+2 : j+2+T]), h, expert loads."""
        D = len(self.mtp) if n_depth is None else n_depth
        T = window.shape[1] - len(self.mtp) - 1
        cos_all, sin_all = rope_tables(self.cfg, T + len(self.mtp) + 1, window.device)
        h, loads = self.trunk(window[:, :T], cos_all[:T], sin_all[:T])
        logits = self.lm_head(h)
        mtp_logits = []
        g = h
        for j in range(D):
            g, load = self.mtp_step(j, g, window[:, j + 1: j + 1 + T], cos_all[j + 1: j + 1 + T], sin_all[j + 1: j + 1 + T])
            loads.append(load)
            mtp_logits.append(self.mtp_head(j, g))
        return logits, mtp_logits, h, loads

    @torch.no_grad()
    def update_router_bias(self, loads, gamma: float):
        """DeepSeek-V3 auxiliary-loss-free balancing: bias += gamma * sign(mean load - load)."""
        gates = [b.mlp.gate for b in self.layers if b.is_moe] + [m.block.mlp.gate for m in self.mtp]
        for gate, load in zip(gates, loads):
            gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)

    @torch.no_grad()
    def greedy_continue_nocache(self, ids, n_new: int):
        """Plain greedy decoding with the trunk, recomputing the whole window each step (reference)."""
        for _ in range(n_new):
            T = ids.shape[1]
            cos, sin = rope_tables(self.cfg, T, ids.device)
            h, _ = self.trunk(ids, cos, sin)
            nxt = self.lm_head(h[:, -1]).argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
        return ids

    @torch.no_grad()
    def greedy_continue(self, ids, n_new: int):
        """Plain greedy decoding with the trunk and a key/value cache."""
        B, P = ids.shape
        S = P + n_new
        cos, sin = rope_tables(self.cfg, S, ids.device)
        nh, dk, dv = self.cfg["num_attention_heads"], self.cfg["qk_nope_head_dim"] + self.cfg["qk_rope_head_dim"], \
            self.cfg["v_head_dim"]
        dt = torch.get_autocast_dtype(ids.device.type) if torch.is_autocast_enabled(ids.device.type) else torch.float32
        caches = [(torch.zeros(B, nh, S, dk, device=ids.device, dtype=dt),
                   torch.zeros(B, nh, S, dv, device=ids.device, dtype=dt)) for _ in self.layers]
        out = torch.empty(B, S, dtype=ids.dtype, device=ids.device)
        out[:, :P] = ids
        cur, start = ids, 0
        for t in range(n_new):
            T = cur.shape[1]
            x = self.embed_tokens(cur)
            for blk, cache in zip(self.layers, caches):
                x, _ = blk.forward_cached(x, cos[start:start + T], sin[start:start + T], cache, start)
            nxt = self.lm_head(self.norm(x[:, -1])).argmax(-1)
            out[:, P + t] = nxt
            start += T
            cur = nxt[:, None]
        return out


# -------------------------------------------------------------------- checkpoint layout

def released_state_dict(model: TinyMTPModel) -> dict[str, torch.Tensor]:
    """The DeepSeek-V3 release layout: bf16 everywhere except e_score_correction_bias (float32),
    experts split per expert, MTP module j at model.layers.{L+j} with copies of embed/head."""
    cfg = model.cfg
    L = cfg["num_hidden_layers"]
    sd = {}

    def bf(t):
        return t.detach().to(torch.bfloat16).contiguous().cpu()

    def put_block(prefix, blk: Block):
        for name, p in blk.named_parameters():
            if name.startswith("mlp.experts."):
                continue
            sd[f"{prefix}.{name}"] = bf(p)
        if blk.is_moe:
            I = cfg["moe_intermediate_size"]
            gu, dn = blk.mlp.experts.gate_up, blk.mlp.experts.down
            for e in range(gu.shape[0]):
                sd[f"{prefix}.mlp.experts.{e}.gate_proj.weight"] = bf(gu[e, :I])
                sd[f"{prefix}.mlp.experts.{e}.up_proj.weight"] = bf(gu[e, I:])
                sd[f"{prefix}.mlp.experts.{e}.down_proj.weight"] = bf(dn[e])
            sd[f"{prefix}.mlp.gate.e_score_correction_bias"] = (
                blk.mlp.gate.e_score_correction_bias.detach().float().contiguous().cpu())

    sd["model.embed_tokens.weight"] = bf(model.embed_tokens.weight)
    for i, blk in enumerate(model.layers):
        put_block(f"model.layers.{i}", blk)
    sd["model.norm.weight"] = bf(model.norm.weight)
    sd["lm_head.weight"] = bf(model.lm_head.weight)
    for j, m in enumerate(model.mtp):
        p = f"model.layers.{L + j}"
        sd[f"{p}.embed_tokens.weight"] = bf(model.embed_tokens.weight)
        sd[f"{p}.enorm.weight"] = bf(m.enorm.weight)
        sd[f"{p}.hnorm.weight"] = bf(m.hnorm.weight)
        sd[f"{p}.eh_proj.weight"] = bf(m.eh_proj.weight)
        put_block(p, m.block)
        sd[f"{p}.shared_head.norm.weight"] = bf(m.shared_head_norm.weight)
        sd[f"{p}.shared_head.head.weight"] = bf(model.lm_head.weight if model.mtp_heads is None
                                                else model.mtp_heads[j].weight)
    return sd


def load_released(model: TinyMTPModel, sd: dict[str, torch.Tensor]):
    """Inverse of released_state_dict (used to check a written checkpoint)."""
    cfg = model.cfg
    L, I = cfg["num_hidden_layers"], cfg["moe_intermediate_size"]

    def get_block(prefix, blk: Block):
        for name, p in blk.named_parameters():
            if name.startswith("mlp.experts."):
                continue
            p.data.copy_(sd[f"{prefix}.{name}"].float())
        if blk.is_moe:
            for e in range(cfg["n_routed_experts"]):
                blk.mlp.experts.gate_up.data[e, :I] = sd[f"{prefix}.mlp.experts.{e}.gate_proj.weight"].float()
                blk.mlp.experts.gate_up.data[e, I:] = sd[f"{prefix}.mlp.experts.{e}.up_proj.weight"].float()
                blk.mlp.experts.down.data[e] = sd[f"{prefix}.mlp.experts.{e}.down_proj.weight"].float()
            blk.mlp.gate.e_score_correction_bias.copy_(sd[f"{prefix}.mlp.gate.e_score_correction_bias"])

    with torch.no_grad():
        model.embed_tokens.weight.copy_(sd["model.embed_tokens.weight"].float())
        for i, blk in enumerate(model.layers):
            get_block(f"model.layers.{i}", blk)
        model.norm.weight.copy_(sd["model.norm.weight"].float())
        model.lm_head.weight.copy_(sd["lm_head.weight"].float())
        for j, m in enumerate(model.mtp):
            p = f"model.layers.{L + j}"
            m.enorm.weight.copy_(sd[f"{p}.enorm.weight"].float())
            m.hnorm.weight.copy_(sd[f"{p}.hnorm.weight"].float())
            m.eh_proj.weight.copy_(sd[f"{p}.eh_proj.weight"].float())
            get_block(p, m.block)
            m.shared_head_norm.weight.copy_(sd[f"{p}.shared_head.norm.weight"].float())
        heads = [sd[f"model.layers.{L + j}.shared_head.head.weight"] for j in range(len(model.mtp))]
        if any(not torch.equal(h, sd["lm_head.weight"]) for h in heads):  # written with untied heads
            model.untie_mtp_heads()
            for hd, w in zip(model.mtp_heads, heads):
                hd.weight.copy_(w.float())
    return model
