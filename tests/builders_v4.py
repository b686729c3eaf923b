"""Tiny random DeepSeek-V4 (``deepseek_v4``) checkpoints in the RELEASED layout, with transformers 5.23 oracles.
TEST-ONLY (imports torch and transformers).

Released names (deepseek-ai/DeepSeek-V4-Flash; transformers' conversion_mapping "deepseek_v4" renames them on
load): ``embed.weight``, ``head.weight``, ``norm.weight``, ``hc_head_{fn,base,scale}``; per layer
``layers.{i}.{attn_norm, ffn_norm}.weight``, ``hc_{attn,ffn}_{fn,base,scale}``,
``attn.{wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b}``, ``attn.attn_sink``, compressed layers
``attn.compressor.{wkv, wgate, ape, norm}``, CSA layers also ``attn.indexer.{wq_b, weights_proj}`` and
``attn.indexer.compressor.{wkv, wgate, ape, norm}``; ``ffn.gate.weight`` + ``ffn.gate.bias`` (learned routing) or
``ffn.gate.tid2eid`` (the first num_hash_layers layers), ``ffn.experts.{e}.{w1,w2,w3}``,
``ffn.shared_experts.{w1,w2,w3}``; MTP ``mtp.{j}.{e_proj, h_proj, enorm, hnorm, norm, hc_head_*}`` + a block under
``mtp.{j}.`` with the layer names (compress ratio 0: sliding window only, as the release's last
``compress_ratios`` entry).

transformers 5.23 has no V4 MTP class (it drops ``mtp.*`` on load) and its ``save_pretrained`` writes wrong
reverse names (e.g. ``kv_norm`` -> ``attn.norm``), so the checkpoint is written here from the released names,
never saved by transformers, and the MTP oracle (``MtpOracle``) is composed in this file from transformers' own
V4 modules (``DeepseekV4DecoderLayer``, ``DeepseekV4RMSNorm``, ``DeepseekV4HyperHead``) following DeepSeek's
released ``inference/model.py`` ``MTPBlock.forward``:
    e = enorm(embed(ids)); x = e_proj(e)[:, :, None] + h_proj(hnorm(S_prev)); S = Block(x);
    logits = head(norm(hc_head(S)))
(S_prev: the trunk's hc streams before its hc_head; no zeroing of the position-0 embedding in that code).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from builders import write_safetensors

# deepseek-ai/DeepSeek-V4-Flash config.json keys (values shrunk; hc_* and rope_scaling as released).
# compress_ratios has L + 1 entries (the last is the MTP block's). compress_rate_hca (transformers' legacy key,
# honoured by the engine too) makes the heavily compressed layers pool 8 tokens instead of 128 so a short test
# closes several windows.


def v4_config(**o) -> dict:
    c = {"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "vocab_size": 256,
         "hidden_size": 64, "moe_intermediate_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 1, "head_dim": 32, "qk_rope_head_dim": 8, "q_lora_rank": 32, "o_groups": 2,
         "o_lora_rank": 16, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
         "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "routed_scaling_factor": 1.5,
         "swiglu_limit": 10.0, "sliding_window": 8, "compress_ratios": [4, 128, 4, 0, 0],
         "compress_rate_hca": 8, "compress_rope_theta": 160000.0, "rope_theta": 10000.0,
         "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                          "beta_fast": 32, "beta_slow": 1},
         "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "index_n_heads": 8, "index_head_dim": 16,
         "index_topk": 3, "num_hash_layers": 1, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-6,
         "max_position_embeddings": 1048576, "tie_word_embeddings": False, "bos_token_id": 0,
         "eos_token_id": 1, "torch_dtype": "bfloat16", "hidden_act": "silu", "initializer_range": 0.02}
    c.update(o)
    return c


def _bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16)


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))


def block_tensors(c: dict, p: str, layer: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One block's tensors (released names under prefix p) with random values."""
    H, nh, D, rq = c["hidden_size"], c["num_attention_heads"], c["head_dim"], c["q_lora_rank"]
    G, R, hc, E, I = c["o_groups"], c["o_lora_rank"], c["hc_mult"], c["n_routed_experts"], c["moe_intermediate_size"]
    nI, dI = c["index_n_heads"], c["index_head_dim"]
    ratio = c["compress_ratios"][layer]

    def lin(o, i):
        return _bf16(rng.standard_normal((o, i)) / np.sqrt(i))

    def norm(d):
        return _bf16(1.0 + 0.1 * rng.standard_normal(d))

    t = {p + "attn_norm.weight": norm(H), p + "ffn_norm.weight": norm(H)}
    mix = (2 + hc) * hc
    for site in ("attn", "ffn"):
        t[p + f"hc_{site}_fn"] = _f32(rng.standard_normal((mix, hc * H)) * 0.5)
        t[p + f"hc_{site}_base"] = _f32(rng.standard_normal(mix) * 0.5)
        t[p + f"hc_{site}_scale"] = _f32(1.0 + 0.3 * rng.standard_normal(3))
    a = p + "attn."
    t.update({a + "wq_a.weight": lin(rq, H), a + "q_norm.weight": norm(rq), a + "wq_b.weight": lin(nh * D, rq),
              a + "wkv.weight": lin(D, H), a + "kv_norm.weight": norm(D),
              a + "wo_a.weight": lin(G * R, nh * D // G), a + "wo_b.weight": lin(H, G * R),
              a + "attn_sink": _f32(rng.standard_normal(nh))})
    if ratio:
        w = 2 if ratio == 4 else 1                       # CSA (ratio 4) carries two overlapping series
        m = ratio if ratio == 4 else c.get("compress_rate_hca", ratio)
        cp = a + "compressor."
        t.update({cp + "wkv.weight": lin(w * D, H), cp + "wgate.weight": lin(w * D, H),
                  cp + "ape": _f32(rng.standard_normal((m, w * D))), cp + "norm.weight": norm(D)})
        if ratio == 4:
            ip = a + "indexer."
            t.update({ip + "wq_b.weight": lin(nI * dI, rq), ip + "weights_proj.weight": lin(nI, H),
                      ip + "compressor.wkv.weight": lin(2 * dI, H), ip + "compressor.wgate.weight": lin(2 * dI, H),
                      ip + "compressor.ape": _f32(rng.standard_normal((m, 2 * dI))),
                      ip + "compressor.norm.weight": norm(dI)})
    f = p + "ffn."
    t[f + "gate.weight"] = lin(E, H)
    if layer < c.get("num_hash_layers", 3):
        k = c["num_experts_per_tok"]
        t[f + "gate.tid2eid"] = torch.from_numpy(
            np.stack([rng.permutation(E)[:k] for _ in range(c["vocab_size"])]).astype(np.int64))
    else:
        t[f + "gate.bias"] = _f32(0.1 * rng.standard_normal(E))
    for e in range(E):
        t[f + f"experts.{e}.w1.weight"], t[f + f"experts.{e}.w3.weight"] = lin(I, H), lin(I, H)
        t[f + f"experts.{e}.w2.weight"] = lin(H, I)
    t[f + "shared_experts.w1.weight"], t[f + "shared_experts.w3.weight"] = lin(I, H), lin(I, H)
    t[f + "shared_experts.w2.weight"] = lin(H, I)
    return t


def head_tensors(c: dict, p: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    H, hc = c["hidden_size"], c["hc_mult"]
    return {p + "hc_head_fn": _f32(rng.standard_normal((hc, hc * H)) * 0.5),
            p + "hc_head_base": _f32(rng.standard_normal(hc) * 0.5),
            p + "hc_head_scale": _f32(1.0 + 0.3 * rng.standard_normal(1))}


def v4_tensors(c: dict, seed: int = 0, mtp: bool = True) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    t = {"embed.weight": _bf16(rng.standard_normal((V, H))), "head.weight": _bf16(rng.standard_normal((V, H)) / 8),
         "norm.weight": _bf16(1.0 + 0.1 * rng.standard_normal(H))}
    t.update(head_tensors(c, "", rng))
    for i in range(L):
        t.update(block_tensors(c, f"layers.{i}.", i, rng))
    for j in range(c["num_nextn_predict_layers"] if mtp else 0):
        p = f"mtp.{j}."
        t.update(block_tensors(c, p, L + j, rng))
        t.update(head_tensors(c, p, rng))
        t.update({p + "e_proj.weight": _bf16(rng.standard_normal((H, H)) / np.sqrt(H)),
                  p + "h_proj.weight": _bf16(rng.standard_normal((H, H)) / np.sqrt(H)),
                  p + "enorm.weight": _bf16(1.0 + 0.1 * rng.standard_normal(H)),
                  p + "hnorm.weight": _bf16(1.0 + 0.1 * rng.standard_normal(H)),
                  p + "norm.weight": _bf16(1.0 + 0.1 * rng.standard_normal(H))})
    return t


def write_v4(dir: Path, seed: int = 0, mtp: bool = True, tensors: dict | None = None, **overrides) -> Path:
    dir = Path(dir)
    c = v4_config(**overrides)
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "config.json").write_text(json.dumps(c, indent=1))
    write_safetensors(dir, v4_tensors(c, seed, mtp) if tensors is None else tensors)
    return dir


# ---------------------------------------------------------------------------------------------- oracles

def hf_model(dir: Path):
    from transformers import DeepseekV4ForCausalLM
    m = DeepseekV4ForCausalLM.from_pretrained(str(dir), dtype=torch.float32, attn_implementation="eager")
    return m.eval()


class MtpOracle:
    """MTP module j composed from transformers' V4 modules per DeepSeek's released MTPBlock (see the module
    docstring): its block is a ``DeepseekV4DecoderLayer`` built for layer index L + j with the MTP tensors loaded
    under transformers' names (conversion_mapping's renames, applied here by hand because transformers drops
    ``mtp.*``)."""

    def __init__(self, hf, dir: Path, j: int = 0):
        from safetensors.torch import load_file
        from transformers.models.deepseek_v4 import modeling_deepseek_v4 as M
        cfg = hf.config
        L = cfg.num_hidden_layers
        # the block is built at index L + j: give the config the MTP block's types (sliding, learned routing)
        mcfg = type(cfg).from_dict(cfg.to_dict())
        mcfg.num_hidden_layers = L + j + 1
        mcfg.layer_types = list(cfg.layer_types) + ["sliding_attention"] * (j + 1)
        mcfg.mlp_layer_types = list(cfg.mlp_layer_types) + ["moe"] * (j + 1)
        mcfg._attn_implementation = "eager"
        self.block = M.DeepseekV4DecoderLayer(mcfg, L + j).float().eval()
        self.hc_head = M.DeepseekV4HyperHead(mcfg).float().eval()
        H = cfg.hidden_size
        self.enorm, self.hnorm, self.norm = (M.DeepseekV4RMSNorm(H, eps=cfg.rms_norm_eps) for _ in range(3))
        self.e_proj, self.h_proj = torch.nn.Linear(H, H, bias=False), torch.nn.Linear(H, H, bias=False)
        self.rotary = M.DeepseekV4RotaryEmbedding(mcfg)
        self.hf, self.cfg = hf, mcfg
        raw = load_file(str(Path(dir) / "model.safetensors"))
        p = f"mtp.{j}."
        mine = {k[len(p):]: v.float() for k, v in raw.items() if k.startswith(p)}
        ren = [("attn.", "self_attn."), ("ffn.", "mlp."), ("attn_norm.", "input_layernorm."),
               ("ffn_norm.", "post_attention_layernorm."), ("hc_attn_fn", "attn_hc.fn"),
               ("hc_attn_base", "attn_hc.base"), ("hc_attn_scale", "attn_hc.scale"), ("hc_ffn_fn", "ffn_hc.fn"),
               ("hc_ffn_base", "ffn_hc.base"), ("hc_ffn_scale", "ffn_hc.scale"),
               ("self_attn.attn_sink", "self_attn.sinks"),
               ("self_attn.wq_a.", "self_attn.q_a_proj."), ("self_attn.q_norm.", "self_attn.q_a_norm."),
               ("self_attn.wq_b.", "self_attn.q_b_proj."), ("self_attn.wkv.", "self_attn.kv_proj."),
               ("self_attn.wo_a.", "self_attn.o_a_proj."), ("self_attn.wo_b.", "self_attn.o_b_proj."),
               ("mlp.gate.bias", "mlp.gate.e_score_correction_bias"),
               ("mlp.shared_experts.w1.", "mlp.shared_experts.gate_proj."),
               ("mlp.shared_experts.w2.", "mlp.shared_experts.down_proj."),
               ("mlp.shared_experts.w3.", "mlp.shared_experts.up_proj.")]
        sd = {}
        E = cfg.n_routed_experts
        for k, v in mine.items():
            if k.split(".")[0] in ("e_proj", "h_proj", "enorm", "hnorm", "norm") or k.startswith("hc_head_") \
                    or ".experts." in k:
                continue
            for a, b in ren:
                if k.startswith(a) or (a in k and not a.endswith(".")):
                    k = k.replace(a, b, 1)
            sd[k] = v
        f = "ffn.experts."
        sd["mlp.experts.gate_up_proj"] = torch.stack([torch.cat([mine[f"{f}{e}.w1.weight"], mine[f"{f}{e}.w3.weight"]])
                                                      for e in range(E)])
        sd["mlp.experts.down_proj"] = torch.stack([mine[f"{f}{e}.w2.weight"] for e in range(E)])
        missing, unexpected = self.block.load_state_dict(sd, strict=False)
        assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
        self.hc_head.load_state_dict({"hc_fn": mine["hc_head_fn"], "hc_base": mine["hc_head_base"],
                                      "hc_scale": mine["hc_head_scale"]})
        for mod, name in ((self.enorm, "enorm"), (self.hnorm, "hnorm"), (self.norm, "norm")):
            mod.weight.data = mine[name + ".weight"]
        self.e_proj.weight.data, self.h_proj.weight.data = mine["e_proj.weight"], mine["h_proj.weight"]

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, s_prev: torch.Tensor, positions: torch.Tensor) -> tuple:
        """ids [1, n], s_prev [1, n, hc, H], positions [1, n] -> (streams [1, n, hc, H], logits [1, n, V]).
        A fresh sliding-window pass over the n rows (no cache): the test's teacher-forced rows."""
        from transformers.masking_utils import create_sliding_window_causal_mask
        e = self.enorm(self.hf.model.embed_tokens(ids))
        x = self.e_proj(e).unsqueeze(2) + self.h_proj(self.hnorm(s_prev))
        pe = {"main": self.rotary(e, positions, layer_type="main"),
              "compress": self.rotary(e, positions, layer_type="compress")}
        mask = create_sliding_window_causal_mask(config=self.cfg, inputs_embeds=e, attention_mask=None,
                                                 past_key_values=None, position_ids=positions)
        s = self.block(x, input_ids=ids, position_embeddings=pe, position_ids=positions, attention_mask=mask,
                       past_key_values=None)
        logits = self.hf.lm_head(self.norm(self.hc_head(s)))
        return s, logits


def hf_streams(hf, ids: torch.Tensor) -> torch.Tensor:
    """The trunk's hc streams after the last layer (before hc_head), by a hook on the last decoder layer."""
    got = {}
    h = hf.model.layers[-1].register_forward_hook(lambda m, i, o: got.__setitem__("s", o))
    try:
        with torch.no_grad():
            logits = hf(ids).logits
    finally:
        h.remove()
    return got["s"], logits


# ---------------------------------------------------------------------------------------------- FP8 / FP4

FP8_NAMES = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight", "attn.wo_b.weight",
             "attn.indexer.wq_b.weight", "shared_experts.w1.weight", "shared_experts.w2.weight",
             "shared_experts.w3.weight", "e_proj.weight", "h_proj.weight")
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def _e8m0(amax: torch.Tensor, top: float) -> torch.Tensor:
    """ue8m0 scale bytes: the power of two 2^(b-127) >= amax / top (DeepSeek's scale_fmt ue8m0)."""
    e = torch.ceil(torch.log2(torch.clamp(amax, min=1e-30) / top))
    return (e + 127).clamp(0, 254).to(torch.uint8)


def _pow2(b: torch.Tensor) -> torch.Tensor:
    return torch.exp2(b.float() - 127)


def quantize_fp8(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, N] -> (float8_e4m3fn [M, N], U8 e8m0 scales [M/b, N/b]) in b x b blocks (M, N multiples of b)."""
    M, N = w.shape
    blocks = w.float().reshape(M // block, block, N // block, block)
    s = _e8m0(blocks.abs().amax(dim=(1, 3)), 448.0)                              # [M/b, N/b]
    q = (blocks / _pow2(s)[:, None, :, None]).reshape(M, N).to(torch.float8_e4m3fn)
    return q, s


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, N] -> (I8 [M, N/2]: two e2m1 codes a byte, the low nibble the even column; U8 e8m0 [M, N/32])."""
    M, N = w.shape
    g = w.float().reshape(M, N // 32, 32)
    s = _e8m0(g.abs().amax(dim=-1), 6.0)                                         # [M, N/32]
    x = (g / _pow2(s)[..., None]).reshape(M, N)
    code = (x[..., None] - E2M1[None, None, :8] * torch.sign(x)[..., None]).abs().argmin(-1)   # magnitude code
    code = code + 8 * ((x < 0) & (code > 0)).long()
    packed = (code[:, 0::2] | (code[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)
    return packed, s


def quantized_v4(t: dict[str, torch.Tensor], block: int) -> tuple[dict, dict]:
    """The release's storage (FP8 linears with `.scale`, MXFP4 routed experts with `.scale`) of tensors t, and the
    same tensors dequantised (exact in bf16: e4m3 / e2m1 times a power of two) for the transformers oracle."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    deq = Fp8Dequantize(None)
    q, d = {}, {}
    for name, w in t.items():
        fp8 = name.endswith(FP8_NAMES) and name.startswith(("layers.", "mtp."))
        fp4 = ".ffn.experts." in name
        if not (fp8 or fp4):
            q[name] = d[name] = w
            continue
        codes, s = quantize_fp8(w, block) if fp8 else quantize_mxfp4(w)
        q[name], q[name[: -len(".weight")] + ".scale"] = codes, s
        d[name] = deq._dequantize_one(codes, s, output_dtype=torch.float32).to(torch.bfloat16)
    return q, d
