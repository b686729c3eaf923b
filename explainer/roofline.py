"""The bandwidth model of chapters 1 and 6: parameters, bytes and FLOPs of one forward over m tokens.

A forward over m tokens (B sequences x n tokens each) reads every dense weight once, one
embedding row per token, the routed experts that at least one of the m tokens picked, and each
sequence's KV cache. Its time on a roofline is max(bytes / bandwidth, FLOPs / peak FLOP/s).
Parameter counts come from the tensor lists of mtp_ref.families: for a released config (presets.MODELS)
the shapes they expect, for the loaded checkpoint the shapes its files hold.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mtp_ref import gemma4, ops_v4
from mtp_ref.config import ModelConfig, config_from_dict
from mtp_ref.families import FamilySpec, family_for, mtp_tensors, trunk_tensors
from mtp_ref.ops_dsa import dsa_config
from mtp_ref.ops_sinks import geometry
from mtp_ref.weights import SCALE_SUFFIX

from .presets import KV_BYTES


def rates(bpp: float) -> tuple[float, float]:
    """(bytes per weight of everything but the routed experts, of the routed experts): one rate, or a
    presets.MixedRate (a release that stores its experts in another format, e.g. DeepSeek-V4's MXFP4)."""
    return float(bpp), float(getattr(bpp, "experts", bpp))


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
    kv_layers: list = field(default_factory=list)   # per attention layer (DeepSeek-V4: per cache of one):
                                                    # (cache elements per position, window | None)
    state_elems: float = 0.0       # recurrent state per sequence (float32), e.g. Gated DeltaNet
    attn_flops: list = field(default_factory=list)  # per attention layer: (FLOPs per query per visible position, window)
    mtp_kv_layers: list = field(default_factory=list)  # the same for the MTP modules, one entry per module
                                                       # (DeepSeek-V4: per cache of one)
    const_flops: float = 0.0       # per-token FLOPs that do not scale with context (recurrent updates)
    total_params: float = 0.0      # everything the release stores (trunk + MTP)
    mtp_params: float = 0.0        # stored params of the MTP module(s), incl. embedding/head copies if the file has them
    mtp_expert_params: float = 0.0  # of those, routed experts' (all modules)
    draft_params: float = 0.0      # params one MTP draft forward reads (its block with top-k experts, projection, head)
    draft_expert_params: float = 0.0  # of those, routed experts'
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
        experts = self.moe_layers * self.expected_experts(m) * self.expert_params
        b, be = rates(bpp)
        return (self.dense_params + embed_rows + experts) * b + experts * (be - b)

    def stored_expert_params(self) -> float:
        """Routed-expert params the release stores (trunk and MTP)."""
        return self.moe_layers * self.n_experts * self.expert_params + self.mtp_expert_params

    def draft_bytes(self, bpp: float) -> float:
        """Weight bytes of one MTP draft forward."""
        b, be = rates(bpp)
        return self.draft_params * b + self.draft_expert_params * (be - b)

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
    draft = max(cm.draft_bytes(bpp) / bw, 2 * cm.draft_params * batch / peak)
    return expected_tokens(a, k) * plain / (verify + k * draft)


# ---------------------------------------------------------------------- counts from mtp_ref.families
# One source of truth: a preset and a loaded checkpoint are both counted from the tensor lists that
# mtp_ref.families gives for their ModelConfig (the lists the checkpoint validator checks). A preset
# counts the shapes those lists expect; a loaded checkpoint counts the shapes its files really hold.

def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _is_expert(name: str) -> bool:
    """A routed expert's weight (per-expert or fused): read only when a token picks it."""
    return ".experts." in name          # mlp.experts.* (and Gemma 4's experts.*), never mlp.shared_expert(s).*


def kv_layer(cfg: ModelConfig, spec: FamilySpec, i: int) -> tuple[int, int | None] | None:
    """(cache elements per position, sliding window | None) of block i (i >= L: an MTP block), or None for a
    recurrent (Gated DeltaNet) layer, which keeps a fixed state instead."""
    kind = spec.layer_type(cfg, i)
    if kind == "linear_attention":
        return None
    if spec.attention == "mla":
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim, None   # the compressed latent + the shared RoPE key
    if spec.attention == "gqa_hybrid":
        g = geometry(cfg, kind)                               # sliding and full layers differ in shape
        return g.kv_heads * (g.head_dim + g.v_head_dim), g.window
    return 2 * cfg.num_key_value_heads * cfg.head_dim, None   # K and V per KV head


def attn_flops_per_position(cfg: ModelConfig, spec: FamilySpec, i: int) -> int:
    """FLOPs per query per visible position of block i: q.k over the key width, p.v over the value width."""
    if spec.attention == "mla":
        return 2 * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    if spec.attention == "gqa_hybrid":
        g = geometry(cfg, spec.layer_type(cfg, i))
        return 2 * g.heads * (g.head_dim + g.v_head_dim)
    return 2 * cfg.num_attention_heads * cfg.head_dim * 2


def deltanet_state(cfg: ModelConfig) -> tuple[int, int]:
    """(recurrent state elements, FLOPs per token) of one Gated DeltaNet layer: a [dk, dv] state per value head,
    plus the causal conv's last K - 1 inputs; each token reads and rewrites the state (about 4 FLOPs/element)."""
    nk, nv, dk, dv = cfg.linear_dims
    conv = 2 * nk * dk + nv * dv
    return nv * dk * dv + conv * (cfg.linear_conv_kernel_dim - 1), 4 * nv * dk * dv


def _fill_params(cm: CostModel, trunk: dict[str, int], n_experts: int, top_k: int,
                 embed_name: str = "model.embed_tokens.weight", head_name: str = "lm_head.weight") -> None:
    """Trunk counts from elements per tensor name: dense (read by every forward, incl. the head), routed experts."""
    cm.tied = head_name not in trunk
    embed = trunk.get(embed_name, cm.vocab * cm.hidden)
    experts = sum(n for k, n in trunk.items() if _is_expert(k))
    dense = sum(n for k, n in trunk.items() if not _is_expert(k) and k != embed_name)
    cm.dense_params = float(dense + (embed if cm.tied else 0))       # a tied head reads the whole embedding
    moe = {k.split(".experts.")[0] for k in trunk if _is_expert(k)}   # model.layers.{i}.mlp / layers.{i}.ffn
    if moe:
        cm.moe_layers, cm.n_experts, cm.top_k = len(moe), n_experts, top_k
        cm.expert_params = experts / (len(moe) * n_experts)


def _fill_family(cm: CostModel, cfg: ModelConfig, spec: FamilySpec, trunk: dict[str, int],
                 mtp: list[dict[str, int]]) -> None:
    """Counts of a FamilySpec model from elements per tensor name (trunk, and MTP module j = mtp[j])."""
    L = cfg.num_hidden_layers
    _fill_params(cm, trunk, cfg.n_routed_experts, cfg.num_experts_per_tok)
    kv = [kv_layer(cfg, spec, i) for i in range(L)]
    cm.kv_layers = [e for e in kv if e is not None]
    cm.attn_flops = [(attn_flops_per_position(cfg, spec, i), e[1]) for i, e in enumerate(kv) if e is not None]
    n_rec = sum(e is None for e in kv)
    if n_rec:
        state, flops = deltanet_state(cfg)
        cm.state_elems, cm.const_flops = float(n_rec * state), float(n_rec * flops)
        cm.notes.append(f"{n_rec} Gated DeltaNet layers keep a fixed recurrent state; "
                        f"{len(cm.kv_layers)} attention layers keep a KV cache")
    cm.mtp_kv_layers = [kv_layer(cfg, spec, L + j) for j in range(len(mtp))]
    union = {k: n for module in mtp for k, n in module.items()}   # Qwen's glue (mtp.fc, ...) is shared by all modules
    cm.mtp_params = float(sum(union.values()))
    cm.mtp_expert_params = float(sum(n for k, n in union.items() if _is_expert(k)))
    if mtp:
        lay, first = spec.mtp, mtp[0]
        _fill_draft(cm, cfg.num_experts_per_tok, cfg.n_routed_experts, first, "embed_tokens.weight",
                    bool(lay.head and lay.module_prefix(cfg, 0) + lay.head in first))
    if spec.indexer:
        d = dsa_config(cfg)
        cm.notes.append(f"DeepSeek Sparse Attention: each token's attention reads the {d.index_topk:,} positions "
                        f"its lightning indexer picks; the cost model reads and counts the whole MLA cache, as "
                        f"dense attention does, and leaves out the indexer's own key cache ({d.index_head_dim} "
                        f"values per position and layer) and its scoring FLOPs")


def _fill_draft(cm: CostModel, top_k: int, n_experts: int, first: dict[str, int], embed_suffix: str,
                own_head: bool) -> None:
    """Params one draft forward of MTP module 0 (elements per tensor name `first`) reads: its block with top_k of
    its n_experts routed experts, one embedding row (not counted), and the trunk's head unless it has its own."""
    stored = sum(n for k, n in first.items() if _is_expert(k))
    experts = stored * top_k / n_experts if stored else 0
    other = sum(n for k, n in first.items() if not _is_expert(k) and not k.endswith(embed_suffix))
    cm.draft_expert_params = float(experts)
    cm.draft_params = float(experts + other + (0 if own_head else cm.vocab * cm.hidden))


def _fill_gemma4(cm: CostModel, g, trunk: dict[str, int]) -> None:
    """Counts of a Gemma 4 target (mtp_ref.gemma4, an engine module of its own: per-type head dims and KV heads,
    KV-shared layers). Each non-shared layer caches K and V (on attention_k_eq_v layers V is the normed raw K,
    still a tensor of its own); KV-shared layers read another layer's cache. Its drafter is a separate model."""
    _fill_params(cm, trunk, g.num_experts, g.top_k_experts)
    window = [g.sliding_window if g.is_sliding(i) else None for i in range(g.num_hidden_layers)]
    cm.kv_layers = [(2 * g.kv_heads_of(i) * g.head_dim_of(i), window[i]) for i in range(g.first_shared)]
    cm.attn_flops = [(4 * g.num_attention_heads * g.head_dim_of(i), window[i]) for i in range(g.num_hidden_layers)]


def _v4_attention(cfg, i: int) -> tuple[list, list]:
    """DeepSeek-V4 block i's cache and attention FLOPs per query: (elements per position, window | None) and
    (FLOPs per visible position, window | None) entries. Every block keeps the one K=V head (head_dim wide) of the
    last sliding_window tokens; a compressed block (ratio m) adds one head_dim-wide entry per m tokens. HCA
    (m = 128): every query attends all entries; CSA (m = 4): the lightning indexer keeps its own index_head_dim-wide
    entry per m tokens, scores all of them, and the query attends the index_topk best (a window of topk * m
    positions holds as many entries)."""
    D, f = cfg.head_dim, 4 * cfg.num_attention_heads * cfg.head_dim   # q.k and p.v over the D-wide K=V head
    kv, fl = [(D, cfg.sliding_window)], [(f, cfg.sliding_window)]
    r, m = cfg.ratio(i), cfg.rate(i)
    if r == ops_v4.CSA_RATIO:
        dI = cfg.index_head_dim
        kv += [(D / m, None), (dI / m, None)]
        fl += [(f / m, cfg.index_topk * m), (2 * cfg.index_n_heads * dI / m, None)]
    elif r:
        kv.append((D / m, None))
        fl.append((f / m, None))
    return kv, fl


def _fill_v4(cm: CostModel, cfg, trunk: dict[str, int], mtp: list[dict[str, int]]) -> None:
    """Counts of a DeepSeek-V4 release (mtp_ref.ops_v4, an engine module of its own, released tensor names)."""
    L = cfg.num_hidden_layers
    _fill_params(cm, trunk, cfg.n_routed_experts, cfg.num_experts_per_tok, "embed.weight", "head.weight")
    for i in range(L):
        kv, fl = _v4_attention(cfg, i)
        cm.kv_layers += kv
        cm.attn_flops += fl
    cm.mtp_kv_layers = [e for j in range(len(mtp)) for e in _v4_attention(cfg, L + j)[0]]
    cm.mtp_params = float(sum(n for module in mtp for n in module.values()))
    cm.mtp_expert_params = float(sum(n for module in mtp for k, n in module.items() if _is_expert(k)))
    if mtp:
        _fill_draft(cm, cfg.num_experts_per_tok, cfg.n_routed_experts, mtp[0], "embed.weight", False)
    kinds = Counter(cfg.layer_types)
    n_hash = min(cfg.num_hash_layers, L)
    cm.notes += [
        f"attention keeps a {cfg.sliding_window}-token window, plus one compressed entry per "
        f"{cfg.compress_rates['csa']} tokens on {kinds['compressed_sparse_attention']} CSA layers (a query reads "
        f"the {cfg.index_topk} its indexer picks) and per {cfg.compress_rates['hca']} tokens on "
        f"{kinds['heavily_compressed_attention']} HCA layers; the cost model reads every stored entry each token "
        f"and leaves out the compressors' rows of the windows not yet closed",
        f"the first {n_hash} layers route by token id (a table in the weights, tid2eid): how many distinct experts "
        f"a forward over several tokens reads there depends on that table; the cost model counts them as uniform "
        f"picks, as in the other layers (the {cfg.num_experts_per_tok} experts per token, so the active "
        f"parameters, do not depend on it)"]


def preset_config(name: str, c: dict) -> tuple[ModelConfig, FamilySpec]:
    """The engine's ModelConfig and FamilySpec of a preset, built from its config.json keys as load_config does."""
    cfg = config_from_dict(c, f"presets.MODELS[{name!r}]")
    spec = family_for(cfg)
    cfg.num_mtp_modules = cfg.num_nextn_predict_layers if spec.mtp else 0   # a release holds what it declares
    return cfg, spec


def from_config(name: str, c: dict) -> CostModel:
    """Cost model of a released config (presets.MODELS), counted from the tensors the engine expects of it."""
    cm = CostModel(name, int(c["hidden_size"]), int(c["vocab_size"]), 0.0, source=c.get("source", ""),
                   published=c.get("published", ""))
    if c.get("model_type") in gemma4.TARGET_TYPES:
        g = gemma4.target_text_config(c, f"presets.MODELS[{name!r}]")
        _fill_gemma4(cm, g, {k: _numel(s) for k, s in gemma4.target_tensors(g).items()})
    elif c.get("model_type") == ops_v4.MODEL_TYPE:
        v4 = ops_v4.config_from_raw(c, f"presets.MODELS[{name!r}]")
        mtp = [{k: _numel(s) for k, s in ops_v4.mtp_tensors(v4, j).items()}
               for j in range(v4.num_nextn_predict_layers)]   # a release holds what it declares
        _fill_v4(cm, v4, {k: _numel(s) for k, s in ops_v4.trunk_tensors(v4).items()}, mtp)
    else:
        cfg, spec = preset_config(name, c)
        trunk = {k: _numel(s) for k, s in trunk_tensors(cfg, spec).items()}
        mtp = [{k: _numel(s) for k, s in mtp_tensors(cfg, spec, j).items()} for j in range(cfg.num_mtp_modules)]
        _fill_family(cm, cfg, spec, trunk, mtp)
    if c.get("note"):
        cm.notes.append(c["note"])
    cm.total_params = cm.trunk_params() + cm.mtp_params
    return cm


# ---------------------------------------------------------------------- the loaded checkpoint

def from_checkpoint(model) -> CostModel:
    """Cost model of the loaded checkpoint, counted from the shapes its files really hold."""
    cfg, ck = model.config, model.ckpt
    cm = CostModel("loaded checkpoint", cfg.hidden_size, cfg.vocab_size, 0.0, source=str(model.path),
                   published=f"{cfg.model_type}, {cfg.num_hidden_layers} layers, read from its safetensors")
    if isinstance(model, gemma4.Gemma4Model):
        trunk = {k: _numel(ck.shape(k)) for k in gemma4.target_tensors(model.g) if k in ck}
        _fill_gemma4(cm, model.g, trunk)
    else:
        spec = model.spec
        trunk = {k: _numel(ck.shape(k)) for k in trunk_tensors(cfg, spec) if k in ck}
        mtp = [{k: _numel(ck.shape(k)) for k in mtp_tensors(cfg, spec, j) if k in ck}
               for j in range(cfg.num_mtp_modules)]
        _fill_family(cm, cfg, spec, trunk, mtp)
    cm.stored_bpp = sum(ck.stored_nbytes(k) for k in trunk) / sum(trunk.values())
    cm.total_params = float(sum(_numel(ck.shape(n)) for n in ck.names() if not n.endswith(SCALE_SUFFIX)))
    return cm


# ---------------------------------------------------------------------- memory

def memory_needed(cm: CostModel, bpp: float, context: int, batch: int) -> dict:
    """Bytes a server holds: every stored param (trunk and MTP) at bpp bytes/param (routed experts at their own
    rate where bpp is a presets.MixedRate), and the KV cache (plus any recurrent state) of `batch` sequences of
    `context` positions in the trunk and in each MTP module."""
    b, be = rates(bpp)
    weights = cm.total_params * b + cm.stored_expert_params() * (be - b)
    mtp_kv = sum(e * (context if w is None else min(context, w)) for e, w in cm.mtp_kv_layers) * KV_BYTES
    kv = cm.kv_bytes(context, batch) + batch * mtp_kv
    return {"weights": weights, "kv": kv, "total": weights + kv}


def devices_needed(total_bytes: float, hw) -> int:
    """How many of `hw` hold total_bytes, split evenly (no room kept for activations or the runtime)."""
    if not hw.memory_gb > 0:
        raise ValueError(f"{hw.name}: memory_gb is not set")
    return max(1, math.ceil(total_bytes / (hw.memory_gb * 1e9)))


def dominant_dtype(model) -> str:
    return Counter(model.ckpt.dtype(n) for n in model.ckpt.names()).most_common(1)[0][0]


# ---------------------------------------------------------------------- measurements on this machine

def time_forwards_repeated(model, prompt_ids: list[int], ns: list[int], repeats: int = 5) -> list[dict]:
    """Wall time of one trunk forward over n new tokens after the prompt, `repeats` times per n, interleaved.

    Returns per n the median, min and max seconds and every sample, so a page can show a median with its
    spread instead of one noisy run. The cache is rolled back after each forward, so every measurement starts
    from the same prompt. `bytes_read` is the engine's meter: stored weight bytes the forward touched.
    """
    cache = model.new_cache()
    model.forward(np.asarray(prompt_ids), cache)
    base = cache.length
    pool = (list(prompt_ids) * (max(ns) // max(len(prompt_ids), 1) + 1))[: max(ns)]
    model.forward(np.asarray(pool), cache)          # warm-up: load the experts the prompt did not use
    cache.truncate(base)
    samples = {n: [] for n in ns}
    read = {}
    for _ in range(repeats):                         # interleaved, so a burst of load hits different n
        for n in ns:
            model.reset_meter()
            t = time.perf_counter()
            model.forward(np.asarray(pool[:n]), cache)
            samples[n].append(time.perf_counter() - t)
            read[n] = model.bytes_read
            cache.truncate(base)
    return [{"n": n, "median": statistics.median(samples[n]), "min": min(samples[n]), "max": max(samples[n]),
             "samples": samples[n], "bytes_read": read[n]} for n in ns]


def time_forwards(model, prompt_ids: list[int], ns: list[int], repeats: int = 3) -> list[dict]:
    """Best-of-`repeats` wall time of one trunk forward over n new tokens after the prompt, for each n."""
    return [{"n": r["n"], "seconds": r["min"], "bytes_read": r["bytes_read"]}
            for r in time_forwards_repeated(model, prompt_ids, ns, repeats)]
