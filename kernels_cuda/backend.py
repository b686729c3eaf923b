"""CudaModel: the reference engine's forward passes on an NVIDIA GPU with numba-CUDA kernels.

    from kernels_cuda.backend import CudaModel
    model = CudaModel(load_model(path))           # weights uploaded once
    generate(model, ids, draft_depth=2)           # mtp_ref.speculative, unchanged

The engine (mtp_ref.speculative) uses only forward, mtp_forward, new_cache, new_mtp_cache, config,
path, tokenizer, encode/decode, reset_meter and bytes_read; they behave as mtp_ref.model.Model's.

Device state: weights (bf16 bits as uint16, f32, or FP8 e4m3 bytes + block scales decoded in the
kernel), activations in static buffers sized for 16 tokens, KV caches of `max_context` rows.
Per forward, the host sends token ids, positions and the cache length (one small copy into the
int32 `meta` array) and gets back the final hidden rows and the logits.

Launches: the first forward of each token count n runs eagerly (and compiles the kernels); the
next one is captured into a CUDA graph (per cache and n) and every later one replays it
(`use_graphs=False` keeps the eager path, for debugging). Prompts longer than 16 tokens are
fed 16 at a time (chunked prefill; the attention is causal over the cache, so the result is
the same).

Hybrid Qwen3-Next / Qwen3.5 / Qwen3.6 models: the Gated DeltaNet layers keep their conv window and the
per-token state snapshots of the last forward on the device (DeviceCache), so rolling back a rejected
draft is choosing a snapshot (meta[M_SLOT]), not a copy; see kernels_cuda/README.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import cuda

from mtp_ref.config import rope_inv_freq, softmax_scale
from mtp_ref.errors import MtpRefError
from mtp_ref.families import FamilySpec

from . import kernels as K
from .gemm import (MODE_RESID, MODE_SCALE, MODE_STORE, MODE_SWIGLU, get_gemm_v2, get_gemm_v5, get_moe_gemm,
                   gemm_v2_blocks, gemm_v5_blocks, gemm4_xb_words, launch_gemm_v4, nmax_for, TUNED)
from .graphs import CudaGraph
from .intrinsics import SIM
from .pick import pick_attention, pick_gemm, pick_gemm_v4

NMAX = 16  # tokens per forward call on the device (longer inputs are chunked)
# threads per block of the one-row-per-block kernels (RMSNorm, embedding, cache write): 128 left a 4096-wide
# RMSNorm latency-bound at ~20 us on the H100 (docs/history/2026-11-26-kernels-notes.md)
ROW_THREADS = 1024

# Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) a CudaModel runs its kernels as Python: fine for
# tests on tiny checkpoints, far too slow for anything else, and the simulator reports
# cuda.is_available() == True. So a CudaModel is only built there when asked for: this flag (the
# tests set it) or KERNELS_CUDA_ALLOW_SIM=1 in the environment (for a subprocess).
ALLOW_SIMULATOR = False


# ----------------------------------------------------------------------------- weight sources
def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Exact for values that came from bf16 (the engine decodes bf16 to f32 exactly)."""
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


@dataclass
class HostTensor:
    fmt: str                 # "bf16" | "f32" | "fp8"
    data: np.ndarray         # uint16 / float32 / uint8, shape as released
    scale: np.ndarray | None = None  # fp8: float32 [ceil(M/128), ceil(N/128)]
    nbytes: int = 0          # bytes in the checkpoint (weight + scale)


class CheckpointSource:
    """Released tensors of an mtp_ref Checkpoint, in their storage format."""

    def __init__(self, ckpt, fp8: str = "kernel"):
        self.ckpt, self.fp8 = ckpt, fp8

    def __contains__(self, name):
        return name in self.ckpt

    def get(self, name: str) -> HostTensor:
        info = self.ckpt.infos[name]
        nb = self.ckpt.stored_nbytes(name)
        if info.dtype == "BF16":
            return HostTensor("bf16", f32_to_bf16_bits(self.ckpt.get(name)), None, nb)
        if info.dtype == "F8_E4M3" and self.fp8 == "kernel" and len(info.shape) == 2:
            mm = np.memmap(info.file, dtype=np.uint8, mode="r", offset=info.begin, shape=(info.nbytes,))
            raw = np.array(mm).reshape(info.shape)
            from mtp_ref.safetensors_io import read_tensor
            scale = read_tensor(self.ckpt.infos[name + "_scale_inv"]).astype(np.float32)
            return HostTensor("fp8", raw, np.ascontiguousarray(scale), nb)
        return HostTensor("f32", np.ascontiguousarray(self.ckpt.get(name), dtype=np.float32), None, nb)


class DeviceSource:
    """Tensors already on the device, keyed by released names: objects with
    __cuda_array_interface__; bf16 tensors are passed as their 16-bit integer view."""

    def __init__(self, tensors: dict):
        self.t = tensors

    def __contains__(self, name):
        return name in self.t

    def get(self, name: str):
        a = self.t[name]
        if not hasattr(a, "copy_to_host"):          # a foreign device array (torch, cupy): wrap, no copy
            a = cuda.as_cuda_array(a)
        if a.dtype.itemsize == 2:
            return HostTensor("bf16", a.view(np.uint16), None, a.nbytes)
        if a.dtype == np.float32:
            return HostTensor("f32", a, None, a.nbytes)
        raise MtpRefError(f"device tensor '{name}' has dtype {a.dtype}; pass bf16 as int16/uint16, or float32")


# ----------------------------------------------------------------------------- device linears
@dataclass
class Lin:
    """A linear on the device: W [N, K] flat in format fmt (+ fp8 scales), optional f32 bias."""
    fmt: str
    w: object
    ws: object
    N: int
    K: int
    bias: object = None
    nbytes: int = 0


def _is_dev(a) -> bool:
    return not isinstance(a, np.ndarray) and (hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host"))


def _concat_rows(parts: list[HostTensor], to_f32: bool) -> tuple[str, object, object]:
    """Stack weights along rows on the device (one upload / device copy per part)."""
    fmt = "f32" if to_f32 else parts[0].fmt
    if all(not _is_dev(p.data) for p in parts):
        if fmt == "f32":
            host = np.concatenate([_host_f32(p) for p in parts], 0)
        else:
            host = np.concatenate([p.data for p in parts], 0)
        ws = None
        if fmt == "fp8":
            ws = cuda.to_device(np.ascontiguousarray(np.concatenate([p.scale for p in parts], 0)).ravel())
        return fmt, cuda.to_device(np.ascontiguousarray(host).ravel()), ws
    if to_f32 or fmt == "fp8":
        raise MtpRefError("device weights must all be bf16 (or all f32) to be fused")
    total = sum(p.data.size for p in parts)
    out = cuda.device_array(total, dtype=parts[0].data.dtype)
    o = 0
    for p in parts:
        flat = p.data.reshape(p.data.size) if p.data.ndim > 1 else p.data
        out[o: o + flat.size].copy_to_device(flat)
        o += flat.size
    return fmt, out, None


def _rows(p: HostTensor, perm: np.ndarray) -> HostTensor:
    """The tensor with its rows (first axis) permuted, on the host; FP8 is decoded to f32 (a permutation
    breaks its 128-row scale blocks)."""
    p = _on_host(p)
    if p.fmt == "fp8":
        return HostTensor("f32", np.ascontiguousarray(_host_f32(p)[perm]), None, p.nbytes)
    return HostTensor(p.fmt, np.ascontiguousarray(np.asarray(p.data)[perm]), None, p.nbytes)


def _flat_rows(p: HostTensor) -> HostTensor:
    """[E, R, K] fused expert tensor -> [E * R, K] rows (expert e's rows at e * R)."""
    if p.fmt == "fp8":                    # per-expert block scales [E, ., .]: decode each expert
        p = _on_host(p)
        f = np.concatenate([_host_f32(HostTensor("fp8", p.data[e], p.scale[e])) for e in range(p.data.shape[0])])
        return HostTensor("f32", f, None, p.nbytes)
    d = p.data
    return HostTensor(p.fmt, d.reshape(-1, d.shape[-1]), None, p.nbytes)


def _on_host(p: HostTensor) -> HostTensor:
    if _is_dev(p.data):
        return HostTensor(p.fmt, p.data.copy_to_host(), p.scale, p.nbytes)
    return p


def _host_f32(p: HostTensor) -> np.ndarray:
    if p.fmt == "f32":
        return np.asarray(p.data, np.float32)
    if p.fmt == "bf16":
        return (p.data.astype(np.uint32) << 16).view(np.float32)
    from mtp_ref.safetensors_io import fp8_e4m3_to_f32
    from mtp_ref.weights import dequant_fp8_block
    return dequant_fp8_block(fp8_e4m3_to_f32(p.data), p.scale, (128, 128))


def _check_supported(spec: FamilySpec, cfg) -> None:
    """The CUDA backend covers the DeepSeek-V3 / GLM-4.5 / MiMo / Qwen2 / Qwen3 / Llama designs and the hybrid
    Qwen3-Next / Qwen3.5 / Qwen3.6 ones (Gated DeltaNet, gated attention, zero-centred norms, softmax router,
    sigmoid-gated shared expert, fused or per-expert tensors)."""
    missing = []
    if spec.moe and getattr(spec, "router", "sigmoid_group") not in ("sigmoid_group", "softmax"):
        missing.append(f"the '{spec.router}' router")
    if spec.moe and getattr(spec, "shared_expert", "plain") not in ("plain", "gated"):
        missing.append(f"'{spec.shared_expert}' shared experts")
    if spec.moe and getattr(spec, "expert_layout", "per_expert") not in ("per_expert", "fused"):
        missing.append(f"'{spec.expert_layout}' expert tensors")
    if "linear_attention" in (getattr(cfg, "layer_types", None) or []) and spec.linear_attn not in ("split", "qkvz"):
        missing.append(f"'{spec.linear_attn}' Gated DeltaNet projections")
    if getattr(spec, "indexer", None):
        missing.append("the DSA lightning indexer (sparse MLA)")
    if getattr(spec, "attention", "gqa") not in ("mla", "gqa"):
        missing.append(f"'{spec.attention}' attention (sliding windows, sinks, per-layer-type heads)")
    if getattr(spec, "qk_norm_scope", "head") != "head":
        missing.append("q/k RMSNorms over all heads")
    if getattr(spec, "latent_norm_eps", None) not in (None, cfg.rms_norm_eps):
        missing.append(f"MLA latent norms with eps {spec.latent_norm_eps} (not rms_norm_eps {cfg.rms_norm_eps})")
    if missing:
        raise MtpRefError(f"the CUDA backend does not implement {', '.join(missing)} ({spec.name}); "
                          f"use --backend numpy")


# ----------------------------------------------------------------------------- caches
class DeviceCache:
    """Per-layer KV rows on the device (GQA: K and V [cap, g*d]; MLA: [cap, r + dr] holding
    [c_kv, k_pe], the compressed latent and the rotated shared key, as DeepSeek caches).
    Rolling back is setting `length`, exactly as mtp_ref.cache.

    Gated DeltaNet layers (hybrid Qwen models) hold ("linear", win, snap) instead: the conv window
    win [K-1+16, C] and the state snapshots snap [17, nv, dk, dv] of the last forward. The state to continue
    from is snapshot `slot` (conv rows slot .. slot+K-2), passed to the kernels in meta[M_SLOT]; a forward of n
    tokens writes snapshots 0..n and sets slot = n. truncate(length) inside the last forward's window sets
    slot = length - start (the per-token snapshot, as mtp_ref.cache.RecurrentCache), with no copy."""

    def __init__(self, owner: "CudaModel", layer_ids):
        self.owner = owner
        self.length = 0
        self.layers = [owner._alloc_layer_cache(i) for i in layer_ids]
        self.recurrent = [i for i, c in enumerate(self.layers) if isinstance(c[0], str)]
        self.slot = 0                   # snapshot the next forward continues from
        self.start = 0                  # length before the last forward
        self.nlast = 0                  # tokens of the last forward (snapshots 0..nlast are valid)
        self.graphs: dict = {}

    def advanced(self, start: int, n: int) -> None:
        self.start, self.nlast, self.slot, self.length = start, n, n, start + n

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back a cache of length {self.length} to {length}")
        if self.recurrent and length != self.length:
            t = length - self.start
            if not 0 <= t <= self.nlast:
                raise ValueError(f"cannot roll back a recurrent (Gated DeltaNet) state from {self.length} to "
                                 f"{length}: the last forward kept snapshots for lengths {self.start}.."
                                 f"{self.start + self.nlast}")
            self.slot = t
        self.length = length

    def checkpoint(self):
        """What restore() needs: the length, and for recurrent layers a device copy of the current state and
        conv window (rollback="redecode")."""
        if not self.recurrent:
            return self.length
        saved = []
        for i in self.recurrent:
            _, win, snap = self.layers[i]
            st, cw = snap.size // 17, win.size // (self.owner.conv_rows + NMAX)
            s0, w0 = self.slot * st, self.slot * cw
            a = cuda.device_array(st, np.float32)
            b = cuda.device_array(self.owner.conv_rows * cw, np.float32)
            a.copy_to_device(snap[s0: s0 + st], stream=self.owner.stream)
            b.copy_to_device(win[w0: w0 + b.size], stream=self.owner.stream)
            saved.append((a, b))
        return (self.length, saved)

    def restore(self, saved) -> None:
        if not self.recurrent:
            self.truncate(saved)
            return
        length, states = saved
        for i, (a, b) in zip(self.recurrent, states, strict=True):
            _, win, snap = self.layers[i]
            snap[: a.size].copy_to_device(a, stream=self.owner.stream)
            win[: b.size].copy_to_device(b, stream=self.owner.stream)
        self.length, self.start, self.nlast, self.slot = length, length, 0, 0


# ----------------------------------------------------------------------------- the model
class CudaModel:
    def __init__(self, model=None, *, max_context: int = 4096, use_graphs: bool | None = None,
                 fp8: str = "kernel", gemm_lanes: int | None = None, gemm_tuning: dict | None = None, _source=None,
                 _config=None, _spec=None, _path=None, _tokenizer=None):
        """max_context: KV-cache rows on the device. use_graphs: capture and replay CUDA graphs (default: on a GPU;
        False keeps the eager launches, for debugging). fp8: "kernel" (FP8 weights decoded inside the GEMM) or
        what CheckpointSource takes. gemm_lanes: lanes per warp of the GEMMs (default 32 on a GPU, 1 in the
        simulator, where 32 are also correct but slow). gemm_tuning: {NMAX or (N, K, NMAX): (R, U[, WARPS[, SPLITK]])}
        launch shapes of gemm_v2 / gemm_v5 (default gemm.TUNED; {} for none; autotune.tune_gemms measures one for a
        model). Which kernel runs for which shape is kernels_cuda/pick.py's; kernels_cuda/README.md has the table."""
        self.base = model
        self.config = model.config if model is not None else _config
        self.spec: FamilySpec = model.spec if model is not None else _spec
        self.path = Path(model.path) if model is not None else Path(_path or "<device weights>")
        self.tokenizer = model.tokenizer if model is not None else _tokenizer
        if SIM and not (ALLOW_SIMULATOR or os.environ.get("KERNELS_CUDA_ALLOW_SIM") == "1"):
            raise MtpRefError("numba is running the CUDA simulator (NUMBA_ENABLE_CUDASIM=1), not a GPU; the CUDA "
                              "backend refuses to run there (set KERNELS_CUDA_ALLOW_SIM=1 for tests)")
        src = _source if _source is not None else CheckpointSource(model.ckpt, fp8)
        cfg = self.config
        _check_supported(self.spec, cfg)
        self.cap = min(int(max_context), cfg.max_position_embeddings)
        self.use_graphs = (not SIM) if use_graphs is None else bool(use_graphs and not SIM)
        # GEMM launch shape: a warp of 32 lanes owns R = 4 rows, 4 warps a block (GPU); the simulator
        # runs 1-thread blocks owning 32 rows, and the row kernels as one block of one thread
        self.lanes = gemm_lanes or (1 if SIM else 32)
        self.rows_per_warp = 4 if self.lanes > 1 else 32
        self.warps = 1 if SIM else 4
        self.nt = K.NT
        self.nt_row = 1 if SIM else ROW_THREADS
        # Gated DeltaNet (what mtp_ref.speculative checks): the recurrent form, with per-token snapshots of up to
        # NMAX tokens per forward kept on the device (longer inputs are fed NMAX at a time)
        self.delta_rule = "recurrent"
        self.recurrent_max_tokens = NMAX
        self.gemm_tuning = dict(TUNED if gemm_tuning is None else gemm_tuning) if self.lanes > 1 else {}
        self.stream = cuda.stream()
        self.bytes_read = 0
        self.timing = {"launches": 0, "eager_calls": 0, "graph_calls": 0, "captures": 0}
        self.attention_launches: dict = {}   # attention version -> launches issued (eager or captured, not replays)
        self._warm: set = set()
        inv, att = rope_inv_freq(cfg)
        self.inv_freq = cuda.to_device(np.ascontiguousarray(inv, np.float64))
        self.att = float(att)
        self.mla = self.spec.attention == "mla"
        qk_dim = cfg.qk_head_dim if self.mla else cfg.head_dim
        self.scale = float(softmax_scale(cfg, qk_dim))
        self.style = K.STYLE_INTERLEAVED if self.spec.rope_style == "interleaved" else K.STYLE_HALF
        self._upload(src)
        self._alloc_buffers()

    @classmethod
    def from_device_weights(cls, config, spec: FamilySpec, tensors: dict, *, tokenizer=None, path=None, **kw):
        """Build from device tensors keyed by released names (e.g. random weights made on the GPU).
        bf16 tensors are given as their int16/uint16 views (torch: t.view(torch.int16))."""
        return cls(None, _source=DeviceSource(tensors), _config=config, _spec=spec, _path=path,
                   _tokenizer=tokenizer, **kw)

    # ------------------------------------------------------------------ upload
    def _norm(self, src, name, offset: float = 0.0):
        """Small 1-D tensors (norm weights, biases) live on the device as float32 (+ offset)."""
        t = src.get(name)
        self._static_bytes_acc += t.nbytes
        a = np.ascontiguousarray(_host_f32(_on_host(t)), dtype=np.float32).ravel()
        return cuda.to_device(a + np.float32(offset) if offset else a)

    def _rms(self, src, name):
        """An RMSNorm weight: Qwen3-Next / Qwen3.5 store it zero-centred (scale = 1 + w), as Model.rms_norm."""
        return self._norm(src, name, self.spec.norm_offset)

    def _lin(self, src, names: list, bias: list[str] | None = None) -> Lin:
        """names: released tensor names, or HostTensors already prepared (row-permuted)."""
        parts = [n if isinstance(n, HostTensor) else src.get(n) for n in names]
        N = sum(p.data.shape[0] for p in parts)
        Kd = parts[0].data.shape[1]
        fmts = {p.fmt for p in parts}
        to_f32 = len(fmts) > 1 or ("fp8" in fmts and len(parts) > 1 and any(p.data.shape[0] % 128 for p in parts[:-1]))
        if len(parts) == 1 and not to_f32:
            p = parts[0]
            w = p.data if _is_dev(p.data) else cuda.to_device(np.ascontiguousarray(p.data).ravel())
            if _is_dev(w) and w.ndim > 1:
                w = w.reshape(w.size)
            ws = None if p.scale is None else cuda.to_device(np.ascontiguousarray(p.scale).ravel())
            fmt = p.fmt
        else:
            fmt, w, ws = _concat_rows(parts, to_f32)
        b = None
        if bias:
            bs = [n if isinstance(n, HostTensor) else src.get(n) for n in bias]
            b = cuda.to_device(np.concatenate([_host_f32(_on_host(x)).ravel() for x in bs]).astype(np.float32))
            self._static_bytes_acc += sum(x.nbytes for x in bs)
        nb = sum(p.nbytes for p in parts)
        self._static_bytes_acc += nb
        return Lin(fmt, w, ws, N, Kd, b, nb)

    def _upload_block(self, src, p: str, layer: int) -> dict:
        cfg, spec = self.config, self.spec
        L = {"in_norm": self._rms(src, p + "input_layernorm.weight"),
             "post_norm": self._rms(src, p + "post_attention_layernorm.weight")}
        a = p + "self_attn."
        if cfg.layer_type(layer) == "linear_attention":
            self._upload_linear_attn(src, p + "linear_attn.", L)
        elif self.mla:
            if cfg.q_lora_rank:
                L["q_a"] = self._lin(src, [a + "q_a_proj.weight"])
                L["q_a_norm"] = self._rms(src, a + "q_a_layernorm.weight")
                L["q_b"] = self._lin(src, [a + "q_b_proj.weight"])
            else:
                L["q"] = self._lin(src, [a + "q_proj.weight"])
            L["kv_a"] = self._lin(src, [a + "kv_a_proj_with_mqa.weight"])
            L["kv_norm"] = self._rms(src, a + "kv_a_layernorm.weight")
            L["kv_b"] = self._lin(src, [a + "kv_b_proj.weight"])
        else:
            bias = [a + f"{x}_proj.bias" for x in "qkv"] if spec.has_qkv_bias(cfg) else None
            qn = a + "q_proj.weight"
            if spec.attn_gate:   # rows per head [query | gate] -> [all queries | all gates]
                nh, hd = cfg.num_attention_heads, cfg.head_dim
                perm = np.arange(2 * nh * hd).reshape(nh, 2, hd).transpose(1, 0, 2).ravel()
                qn = _rows(src.get(qn), perm)
                if bias:
                    bias[0] = _rows(src.get(bias[0]), perm)
            L["qkv"] = self._lin(src, [qn, a + "k_proj.weight", a + "v_proj.weight"], bias)
            if spec.has_qk_norm(cfg):
                L["q_norm"] = self._rms(src, a + "q_norm.weight")
                L["k_norm"] = self._rms(src, a + "k_norm.weight")
        if cfg.layer_type(layer) != "linear_attention":
            L["o"] = self._lin(src, [a + "o_proj.weight"])
        m = p + "mlp."
        if spec.moe and cfg.is_moe_layer(layer):
            E = cfg.n_routed_experts
            L["router"] = self._lin(src, [m + "gate.weight"])
            if spec.router == "sigmoid_group":
                L["corr"] = self._norm(src, m + "gate.e_score_correction_bias")
            I = cfg.moe_intermediate_size
            if spec.expert_layout == "fused":  # gate_up_proj [E, 2I, H] (gate rows first) = the stacked layout
                gu, dn = src.get(m + "experts.gate_up_proj"), src.get(m + "experts.down_proj")
                nb = gu.nbytes + dn.nbytes
                to_f32 = gu.fmt != "bf16" or dn.fmt != "bf16"
                fmt, wgu, _ = _concat_rows([_flat_rows(gu)], to_f32)
                _, wdn, _ = _concat_rows([_flat_rows(dn)], to_f32)
            else:
                gu, dn, nb = [], [], 0
                for e in range(E):
                    parts = [src.get(m + f"experts.{e}.{x}_proj.weight") for x in ("gate", "up", "down")]
                    gu += parts[:2]
                    dn.append(parts[2])
                    nb += sum(q.nbytes for q in parts)
                to_f32 = any(q.fmt != "bf16" for q in gu + dn)
                fmt, wgu, _ = _concat_rows(gu, to_f32)
                _, wdn, _ = _concat_rows(dn, to_f32)
            L["experts"] = (fmt, wgu, wdn, I, nb // E)
            if spec.shared_expert == "gated":
                if cfg.shared_expert_intermediate_size:
                    s = m + "shared_expert."
                    L["s_gu"] = self._lin(src, [s + "gate_proj.weight", s + "up_proj.weight"])
                    L["s_down"] = self._lin(src, [s + "down_proj.weight"])
                    L["s_gate"] = self._lin(src, [m + "shared_expert_gate.weight"])
            elif cfg.n_shared_experts:
                s = m + "shared_experts."
                L["s_gu"] = self._lin(src, [s + "gate_proj.weight", s + "up_proj.weight"])
                L["s_down"] = self._lin(src, [s + "down_proj.weight"])
            self._moe_layers.append(layer)
            L["moe_slot"] = len(self._moe_layers) - 1
        else:
            L["gu"] = self._lin(src, [m + "gate_proj.weight", m + "up_proj.weight"])
            L["down"] = self._lin(src, [m + "down_proj.weight"])
        return L

    def _upload_linear_attn(self, src, p: str, L: dict) -> None:
        """Gated DeltaNet: one input projection with rows [q (all key heads) | k | v | z | b | a] (Qwen3-Next's
        per-key-head grouped in_proj_qkvz / in_proj_ba are permuted into that order), conv weight [C, K],
        A_log, dt_bias, the gated norm's plain weight, out_proj."""
        cfg = self.config
        nk, nv, dk, dv = cfg.linear_dims
        if self.spec.linear_attn == "qkvz":
            from mtp_ref.ops import unpack_qkvz_ba
            qkvz, ba = src.get(p + "in_proj_qkvz.weight"), src.get(p + "in_proj_ba.weight")
            iq, iz, ib, ia = unpack_qkvz_ba(np.arange(qkvz.data.shape[0])[None], np.arange(ba.data.shape[0])[None],
                                            nk, nv, dk, dv)
            parts = [_rows(qkvz, np.concatenate([iq[0], iz[0]])), _rows(ba, np.concatenate([ib[0], ia[0]]))]
        else:
            parts = [p + f"in_proj_{x}.weight" for x in ("qkv", "z", "b", "a")]
        L["in"] = self._lin(src, parts)
        L["conv"] = self._norm(src, p + "conv1d.weight")          # [C, 1, K] -> [C * K]
        L["A_log"] = self._norm(src, p + "A_log")
        L["dt_bias"] = self._norm(src, p + "dt_bias")
        L["gnorm"] = self._norm(src, p + "norm.weight")           # plain weight (not zero-centred)
        L["out"] = self._lin(src, [p + "out_proj.weight"])

    def _upload(self, src):
        cfg, lay = self.config, self.spec.mtp
        self._moe_layers: list[int] = []
        self._static_bytes_acc = 0
        emb = src.get("model.embed_tokens.weight")
        self.embed_tab = self._table(emb)
        self.embed_row_bytes = emb.nbytes // cfg.vocab_size
        self.layers = [self._upload_block(src, f"model.layers.{i}.", i) for i in range(cfg.num_hidden_layers)]
        self.final_norm = self._rms(src, "model.norm.weight")
        if cfg.tie_word_embeddings:
            self.lm_head = Lin(self.embed_tab[0], self.embed_tab[1], None, cfg.vocab_size, cfg.hidden_size, None,
                               emb.nbytes)
            self._static_bytes_acc += emb.nbytes
        else:
            self.lm_head = self._lin(src, ["lm_head.weight"])
        self.trunk_bytes = self._static_bytes_acc
        self.mtp = []
        for j in range(cfg.num_mtp_modules):
            self._static_bytes_acc = 0
            p = lay.module_prefix(cfg, j)
            M = {"emb_norm": self._rms(src, p + lay.emb_norm), "hid_norm": self._rms(src, p + lay.hid_norm),
                 "proj": self._lin(src, [p + lay.proj])}
            bp = lay.block_prefix(cfg, j) if hasattr(lay, "block_prefix") else p
            M["block"] = self._upload_block(src, bp, cfg.num_hidden_layers + j)
            M["out_norm"] = self._rms(src, p + lay.out_norm)
            M["head"] = self._lin(src, [p + lay.head]) if lay.head and (p + lay.head) in src else None
            if lay.embed and (p + lay.embed) in src:
                e = src.get(p + lay.embed)
                M["embed"], M["embed_row_bytes"] = self._table(e), e.nbytes // cfg.vocab_size
            else:
                M["embed"], M["embed_row_bytes"] = None, None
            M["bytes"] = self._static_bytes_acc + (0 if M["head"] is not None else self.lm_head.nbytes)
            self.mtp.append(M)

    def _table(self, t: HostTensor):
        if t.fmt == "fp8":
            t = HostTensor("f32", _host_f32(t), None, t.nbytes)
        w = t.data if _is_dev(t.data) else cuda.to_device(np.ascontiguousarray(t.data).ravel())
        if w.ndim > 1:
            w = w.reshape(w.size)
        return (t.fmt, w)

    # ------------------------------------------------------------------ static buffers
    def _alloc_buffers(self):
        cfg = self.config
        H, V, z = cfg.hidden_size, cfg.vocab_size, NMAX
        f = np.float32
        dev = lambda n: cuda.to_device(np.zeros(n, f))  # noqa: E731  (zeros: no NaN garbage in pad rows)
        widths = [H]
        if self.mla:
            nh, dn, dr, dv, r = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                                 cfg.v_head_dim, cfg.kv_lora_rank)
            self.dq = dn + dr
            self.q_width = nh * self.dq
            self.qa_width = cfg.q_lora_rank or 0
            self.kva_width = r + dr
            self.attn_q_width = nh * (r + dr)
            self.att_width = nh * dv
            self.dk, self.dv_att, self.groups = r + dr, r, 1
            self.kv_width = r + dr
            widths += [self.q_width, self.qa_width, self.kva_width, self.attn_q_width, nh * r, self.att_width]
        else:
            nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
            self.qkv_width = ((2 if self.spec.attn_gate else 1) * nh + 2 * nkv) * hd
            self.att_width = nh * hd
            self.dk, self.dv_att, self.groups = hd, hd, nkv
            self.kv_width = nkv * hd
            widths += [self.qkv_width, self.att_width]
        self.linear = "linear_attention" in (cfg.layer_types or [])
        if self.linear:
            nk, nv, dk, dv = cfg.linear_dims
            self.conv_ch = 2 * nk * dk + nv * dv
            self.conv_rows = cfg.linear_conv_kernel_dim - 1
            self.lin_in_width = self.conv_ch + nv * dv + 2 * nv     # [q | k | v | z | b | a]
            widths += [self.lin_in_width, self.conv_ch, nv * dv]
            self.G, self.BETA = dev(z * nv), dev(z * nv)
            self.dr_threads = 1 if SIM else 128
            self.dr_shape = K.delta_rule_shape(dk, self.dr_threads, 4)
        inter = [cfg.intermediate_size]
        if self.spec.moe and cfg.n_routed_experts:
            inter.append(cfg.moe_intermediate_size * max(cfg.n_shared_experts, 1))
            inter.append(cfg.shared_expert_intermediate_size)
        self.X, self.XN, self.HOUT, self.PH = dev(z * H), dev(z * H), dev(z * H), dev(z * H)
        self.CAT = dev(z * 2 * H)
        self.A = dev(z * max(widths))          # q / qkv
        self.B = dev(z * max(widths))          # attention output (heads concatenated)
        self.C = dev(z * max(widths))          # MLA scratch (kv_a / q_a / latent)
        self.D = dev(z * max(widths))
        self.INTER = dev(z * max(inter))
        self.LOGITS = dev(z * V)
        self.XB4 = cuda.to_device(np.zeros(gemm4_xb_words(max(widths + inter + [2 * H])), np.uint32))  # gemm_v4's x
        self.DEN4 = dev(8)
        self.meta = cuda.to_device(np.zeros(K.META_LEN, np.int32))
        self.meta_host = cuda.pinned_array(K.META_LEN, np.int32)
        self.logits_host = cuda.pinned_array(z * V, np.float32)
        self.h_host = cuda.pinned_array(z * H, np.float32)
        self.am_dev = cuda.to_device(np.zeros(z, np.int32))
        self.am_pv = dev(z * K.ARGMAX_SLICES)                 # the two-stage argmax's per-slice (max, index)
        self.am_pi = cuda.to_device(np.zeros(z * K.ARGMAX_SLICES, np.int32))
        self.am_host = cuda.pinned_array(z, np.int32)
        # attention split-K scratch, sized for the cache capacity
        nh = cfg.num_attention_heads
        # keys per chunk of v1 / v3 (a block per head and chunk): 32, 64 for v1's scalar loads (dk % 4 != 0)
        cmax = 64 if self.dk % 4 else 32
        self.attn_C = {nq: min(cmax, K.attn_chunk(nq, self.dk)) for nq in (1, 2, 4, 8, 16)}
        sms = 2 if SIM else cuda.get_current_device().MULTIPROCESSOR_COUNT
        # v9: blocks per KV group of ATT9_NW warps, a share each (up to split = nw x bpg shares with keys)
        self.attn9_nw = 1 if SIM else K.ATT9_NW
        self.attn9_bpg = 2 if SIM else max(1, math.ceil(K.ATT9_WARPS_PER_SM * sms / (self.groups * self.attn9_nw)))
        S = max([math.ceil(self.cap / c) for c in self.attn_C.values()]
                + [min(math.ceil(self.cap / K.ATT9_KS), self.attn9_nw * self.attn9_bpg)])
        if S > K.COMBINE_MAX_CHUNKS:
            raise MtpRefError(f"max_context {self.cap} needs {S} attention chunks; the merge kernel takes "
                              f"{K.COMBINE_MAX_CHUNKS}")
        # v4: nkv x split blocks whatever the context (about 4 blocks per SM at any length)
        self.attn_split = max(1, min(S, math.ceil(4 * sms / self.groups)))
        self.PO = dev(S * nh * 16 * self.dv_att)
        self.PML = dev(S * nh * 16 * 2)
        # MoE scratch
        if self._moe_layers:
            E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
            nm = len(self._moe_layers) + len(self.mtp)
            self.moe = [dict(idx=cuda.to_device(np.zeros(z * k, np.int32)), wts=dev(z * k),
                             cnt=cuda.to_device(np.zeros(E, np.int32)), lists=cuda.to_device(np.zeros(E * 16, np.int32)),
                             active=cuda.to_device(np.zeros(z * k, np.int32)), nact=cuda.to_device(np.zeros(K.META_LEN, np.int32)))
                        for _ in range(nm)]
            self.CHOICE = dev(z * E)
            self.RLOG = dev(z * E)
            self.HB = dev(z * k * cfg.moe_intermediate_size)
            self.OB = dev(z * k * H)
            self.SH, self.SG = dev(z * H), dev(z)
        for j, M in enumerate(self.mtp):
            if "moe_slot" in M["block"]:
                M["block"]["moe_slot"] = len(self._moe_layers) + j

    def _alloc_layer_cache(self, layer: int):
        cfg = self.config
        if cfg.layer_type(layer) == "linear_attention":
            nk, nv, dk, dv = cfg.linear_dims
            return ("linear", cuda.to_device(np.zeros((self.conv_rows + NMAX) * self.conv_ch, np.float32)),
                    cuda.to_device(np.zeros((NMAX + 1) * nv * dk * dv, np.float32)))
        n = self.cap * self.kv_width
        if self.mla:
            kv = cuda.device_array(n, np.float32)
            return (kv, kv)
        return (cuda.device_array(n, np.float32), cuda.device_array(n, np.float32))

    # ------------------------------------------------------------------ engine interface
    def new_cache(self, keep_snapshots: bool = True) -> DeviceCache:
        """keep_snapshots is accepted for the engine's sake: the recurrent layers always keep them (on the device)."""
        return DeviceCache(self, range(self.config.num_hidden_layers))

    def new_mtp_cache(self) -> DeviceCache:
        return DeviceCache(self, [self.config.num_hidden_layers])       # an MTP block: full attention

    def reset_meter(self) -> None:
        self.bytes_read = 0

    def encode(self, text: str) -> list[int]:
        if self.base is not None:
            return self.base.encode(text)
        if self.tokenizer is None:
            raise MtpRefError(f"{self.path}: no tokenizer.json, so text prompts cannot be encoded; pass --prompt-ids")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        if self.base is not None:
            return self.base.decode(ids)
        return " ".join(str(i) for i in ids)

    # ------------------------------------------------------------------ launches
    def _grid(self, items: int) -> int:
        return 1 if SIM else max(1, items)

    def _gemm(self, lin: Lin, x, ldx, y, ldy, n, mode=MODE_STORE, res=None, norm=None):
        """y (+)= x @ W^T; norm = an RMSNorm weight: x is the un-normed row, normed inside the GEMM."""
        v4 = pick_gemm_v4(lin.fmt, n, lin.N, lin.K, ldx, self.lanes, mode == MODE_SWIGLU)
        if v4 is not None and gemm4_xb_words(lin.K) <= self.XB4.size:     # x split once (XB4), then the MMAs
            MT, U4, KW = v4
            launch_gemm_v4(self.stream, x, ldx, lin.w, self.XB4, self.DEN4, y, ldy, n, lin.K, lin.N, mode, lin.bias,
                           res, MT, U4, KW, norm, float(self.config.rms_norm_eps))
            return
        nm, R, U, Wp, splitk = pick_gemm(lin.fmt, n, lin.N, lin.K, self.gemm_tuning, self.rows_per_warp, self.warps)
        if splitk:                          # gemm_v5: the block's Wp warps share R rows and split K
            k = get_gemm_v5(lin.fmt, nm, R, Wp, U, self.lanes, norm is not None)
            blocks = gemm_v5_blocks(lin.N, mode, R)
        else:
            k = get_gemm_v2(lin.fmt, nm, R, Wp, U, self.lanes, norm is not None)
            blocks = gemm_v2_blocks(lin.N, mode, R, Wp)
        k[blocks, self.lanes * Wp, self.stream](
            x, ldx, lin.w, lin.ws if lin.ws is not None else y, y, ldy,
            lin.bias if lin.bias is not None else y, res if res is not None else y,
            n, lin.K, lin.N, mode, 1 if lin.bias is not None else 0, norm if norm is not None else y,
            float(self.config.rms_norm_eps))

    def _rmsnorm(self, x, ldx, xoff, segs, D, w, y, ldy, yoff, n):
        K.rmsnorm[self._grid(n * segs), self.nt_row, self.stream](x, ldx, xoff, segs, D, w, y, ldy, yoff,
                                                              float(self.config.rms_norm_eps), n)

    def _rope(self, buf, ldb, off, heads, hd, n):
        half = self.config.rotary_dim // 2
        K.rope[self._grid(n * heads), self.nt, self.stream](buf, ldb, off, hd, half, self.meta, self.inv_freq,
                                                            self.att, self.style, n, heads)

    def _attention(self, q, ldq, qoff, kc, vc, out, ldo, ooff, n, nh, dk, dv, ldk, ldv, rep):
        """out[n, nh x dv] = softmax(q k^T scale) v over the cache, causal: reference.attention. The partial
        kernel writes per-share (PO, PML) partials, the merge combines them; pick_attention chooses both."""
        version, _ = pick_attention(rep, n, dk, dv, ldq, qoff, ldk, ldv)
        self.attention_launches[version] = self.attention_launches.get(version, 0) + 1
        nq = nmax_for(n)
        st = self.stream
        args = (q, ldq, qoff, kc, ldk, vc, ldv, self.PO, self.PML, self.meta, n, nh, rep, dk, dv, self.scale)
        if version in ("v9", "v10"):            # v10: v9's launch, two row tiles, ATT10_DSPLIT warps a share
            if version == "v9":
                kp, smem = _attn_v9_kernel(dk, dv, self.attn9_nw), K.attn_v9_smem(dk)
                split = self.attn9_bpg * self.attn9_nw
            else:
                nw = max(self.attn9_nw, K.ATT10_DSPLIT)
                kp, smem = _attn_v10_kernel(dk, dv, nw), K.attn_v10_smem(dk)
                split = self.attn9_bpg * (nw // K.ATT10_DSPLIT)         # <= v9's shares: the PO scratch holds them
            kp[self._grid((nh // rep) * self.attn9_bpg), 32 * kp.NW, st, smem](*args, split)
            K.attn_combine_v4[self._grid(n * nh), 32 * (1 if SIM else K.COMBINE4_SL), st](
                self.PO, self.PML, out, ldo, ooff, self.meta, n, nh, dv, K.ATT9_KS, split)
        elif version == "v4":
            qmax = K.attn_v4_qmax(rep, nq)
            kp = _attn_v4_kernel(qmax, math.ceil(dv / self.nt), max(1, self.nt // 32))
            split = self.attn_split
            kp[self._grid((nh // rep) * split), self.nt, st, K.attn_v4_smem(qmax, dk)](*args, split)
            K.attn_combine_v2[self._grid(n * nh), self.nt, st](self.PO, self.PML, out, ldo, ooff, self.meta, n, nh,
                                                               dv, K.ATT4_SUB, split)
        else:                                                   # v3 / v1: a block per (head, chunk of C keys)
            C = self.attn_C[nq]
            S = math.ceil(self.cap / C)
            vec = 1 if version == "v3" else 0
            kp = _attn_kernel(nq, version)
            kp[self._grid(nh * S), self.nt, st, (nq * dk + nq * C) * 4](*args, C, S, vec)
            if version == "v3":
                K.attn_combine_v2[self._grid(n * nh), self.nt, st](self.PO, self.PML, out, ldo, ooff, self.meta, n,
                                                                   nh, dv, C, 0)
            else:
                K.attn_combine[self._grid(n * nh), self.nt, st](self.PO, self.PML, out, ldo, ooff, self.meta, n, nh,
                                                                dv, C)

    def _linear_attn(self, L: dict, lc, n: int):
        """Gated DeltaNet over n new tokens (Model.linear_attention), continuing snapshot meta[M_SLOT] of the layer's
        cache; X += out_proj(gated_norm(delta_rule(...)))."""
        cfg, st, nt = self.config, self.stream, self.nt
        H = cfg.hidden_size
        nk, nv, dk, dv = cfg.linear_dims
        C, PW = self.conv_ch, self.lin_in_width
        _, win, snap = lc
        P, QKV, O = self.A, self.C, self.D
        self._gemm(L["in"], self.XN, H, P, PW, n)
        _conv_kernel(self.conv_rows + 1)[self._grid(math.ceil(C / nt)), nt, st](P, PW, 0, win, L["conv"], QKV, C, 0,
                                                                             self.meta, C, n)
        K.l2norm_heads[self._grid(n * nk), nt, st](QKV, C, 0, nk, dk, float(dk ** -0.5), 1e-6, QKV, C, 0, n)
        K.l2norm_heads[self._grid(n * nk), nt, st](QKV, C, nk * dk, nk, dk, 1.0, 1e-6, QKV, C, nk * dk, n)
        K.gdn_gates[self._grid(math.ceil(n * nv / nt)), nt, st](P, PW, C + nv * dv + nv, C + nv * dv, L["A_log"],
                                                                L["dt_bias"], self.G, self.BETA, nv, n)
        ROWS, RG = self.dr_shape
        tiles = math.ceil(dv / (self.dr_threads // RG))
        _delta_kernel(ROWS, RG)[self._grid(nv * tiles), self.dr_threads, st](
            QKV, C, 0, QKV, C, nk * dk, QKV, C, 2 * nk * dk, self.G, self.BETA, snap, snap, O, nv * dv, 0, self.meta,
            nv, nv // nk, dk, dv, n)
        K.gated_rmsnorm[self._grid(n * nv), nt, st](O, nv * dv, 0, P, PW, C, nv, dv, L["gnorm"], self.B, nv * dv, 0,
                                                     float(cfg.rms_norm_eps), n)
        self._gemm(L["out"], self.B, nv * dv, self.X, H, n, MODE_RESID, self.X)

    def _block(self, L: dict, layer: int, kv, n: int):
        cfg, st = self.config, self.stream
        H = cfg.hidden_size
        X, XN = self.X, self.XN
        gqa = not self.mla and cfg.layer_type(layer) != "linear_attention"
        fuse_in = gqa                                              # the q|k|v GEMM norms its own input
        if not fuse_in:
            self._rmsnorm(X, H, 0, 1, H, L["in_norm"], XN, H, 0, n)
        kc, vc = kv[-2:]
        if cfg.layer_type(layer) == "linear_attention":
            self._linear_attn(L, kv, n)
        elif self.mla:
            nh, dn, dr, dv, r = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                                 cfg.v_head_dim, cfg.kv_lora_rank)
            Q, QF, KVA = self.A, self.D, self.C
            if cfg.q_lora_rank:
                rq = cfg.q_lora_rank
                self._gemm(L["q_a"], XN, H, KVA, rq, n)
                self._rmsnorm(KVA, rq, 0, 1, rq, L["q_a_norm"], KVA, rq, 0, n)
                self._gemm(L["q_b"], KVA, rq, Q, self.q_width, n)
            else:
                self._gemm(L["q"], XN, H, Q, self.q_width, n)
            self._rope(Q, self.q_width, dn, nh, self.dq, n)
            self._gemm(L["kv_a"], XN, H, KVA, r + dr, n)
            self._rmsnorm(KVA, r + dr, 0, 1, r, L["kv_norm"], KVA, r + dr, 0, n)
            self._rope(KVA, r + dr, r, 1, r + dr, n)
            K.cache_write[self._grid(n), self.nt_row, st](KVA, r + dr, 0, r + dr, kc, r + dr, 0, self.meta, n)
            kb = L["kv_b"]
            nq = nmax_for(n)
            _mla_absorb(kb.fmt, nq)[self._grid(math.ceil(nh * r / 128)), 128 if not SIM else 1, st](
                Q, kb.w, kb.ws if kb.ws is not None else Q, QF, n, nh, dn, dr, dv, r)
            OL = self.C
            self._attention(QF, nh * (r + dr), 0, kc, kc, OL, nh * r, 0, n, nh, r + dr, r, r + dr, r + dr, nh)
            _mla_o_up(kb.fmt, nq)[self._grid(math.ceil(nh * dv / 128)), 128 if not SIM else 1, st](
                OL, kb.w, kb.ws if kb.ws is not None else OL, self.B, n, nh, dn, dv, r)
        else:
            nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
            W = self.qkv_width
            QKV = self.A
            ko = (2 if self.spec.attn_gate else 1) * nh * hd        # [q | gate | k | v] with gated attention
            if fuse_in:
                self._gemm(L["qkv"], X, H, QKV, W, n, norm=L["in_norm"])
            else:
                self._gemm(L["qkv"], XN, H, QKV, W, n)
            if "q_norm" in L:
                self._rmsnorm(QKV, W, 0, nh, hd, L["q_norm"], QKV, W, 0, n)
                self._rmsnorm(QKV, W, ko, nkv, hd, L["k_norm"], QKV, W, ko, n)
            half = cfg.rotary_dim // 2
            if half <= K.ROPE_MAX_HALF:                              # rope on q and k + both cache writes
                K.rope_qk_cache_v2[self._grid(n * (nh + nkv)), 1 if SIM else 64, st](
                    QKV, W, 0, nh, ko, nkv, ko + nkv * hd, hd, half, self.meta, self.inv_freq, self.att,
                    self.style, kc, vc, nkv * hd, n)
            else:
                self._rope(QKV, W, 0, nh, hd, n)
                self._rope(QKV, W, ko, nkv, hd, n)
                K.cache_write[self._grid(n), self.nt_row, st](QKV, W, ko, nkv * hd, kc, nkv * hd, 0, self.meta, n)
                K.cache_write[self._grid(n), self.nt_row, st](QKV, W, ko + nkv * hd, nkv * hd, vc, nkv * hd, 0,
                                                              self.meta, n)
            self._attention(QKV, W, 0, kc, vc, self.B, nh * hd, 0, n, nh, hd, hd, nkv * hd, nkv * hd, nh // nkv)
            if self.spec.attn_gate:
                K.sigmoid_gate_mul[self._grid(n), self.nt, st](self.B, nh * hd, 0, QKV, W, nh * hd, nh * hd, n)
        if "o" in L:
            self._gemm(L["o"], self.B, self.att_width, X, H, n, MODE_RESID, X)
        if "experts" in L:
            self._rmsnorm(X, H, 0, 1, H, L["post_norm"], XN, H, 0, n)
            self._moe(L, n)
        else:
            I = L["gu"].N // 2
            self._gemm(L["gu"], X, H, self.INTER, I, n, MODE_SWIGLU, norm=L["post_norm"])   # RMSNorm in the GEMM
            self._gemm(L["down"], self.INTER, I, X, H, n, MODE_RESID, X)

    def _moe(self, L: dict, n: int):
        cfg, st = self.config, self.stream
        H, E, k = cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok
        s = self.moe[L["moe_slot"]]
        self._gemm(L["router"], self.XN, H, self.RLOG, E, n)
        if self.spec.router == "softmax":
            K.moe_route_softmax[1, 1 if SIM else 32, st](self.RLOG, E, self.CHOICE, n, k,
                                                         1 if cfg.norm_topk_prob else 0, s["idx"], s["wts"],
                                                         s["cnt"], s["lists"], s["active"], s["nact"])
        else:
            K.moe_route[1, 1 if SIM else 32, st](self.RLOG, E, L["corr"], self.CHOICE, n, k, cfg.n_group,
                                                 cfg.topk_group, 1 if cfg.norm_topk_prob else 0,
                                                 float(cfg.routed_scaling_factor),
                                                 s["idx"], s["wts"], s["cnt"], s["lists"], s["active"], s["nact"])
        fmt, wgu, wdn, I, _ = L["experts"]
        nq = nmax_for(n)
        R = self.rows_per_warp
        kg = get_moe_gemm(fmt, nq, R, self.warps, self.lanes)
        th = self.lanes * self.warps
        kg[(gemm_v2_blocks(2 * I, MODE_SWIGLU, R, self.warps), n * k), th, st](
            self.XN, H, k, wgu, wgu, self.HB, I, 2 * I, H, MODE_SWIGLU, s["cnt"], s["lists"], s["active"], s["wts"],
            s["nact"])
        kg[(gemm_v2_blocks(H, MODE_SCALE, R, self.warps), n * k), th, st](
            self.HB, I, 1, wdn, wdn, self.OB, H, H, I, MODE_SCALE, s["cnt"], s["lists"], s["active"], s["wts"],
            s["nact"])
        if "s_gate" in L:           # Qwen: + sigmoid(x . w_gate) * shared_expert(x)
            Is = L["s_gu"].N // 2
            self._gemm(L["s_gu"], self.XN, H, self.INTER, Is, n, MODE_SWIGLU)
            self._gemm(L["s_down"], self.INTER, Is, self.SH, H, n)
            self._gemm(L["s_gate"], self.XN, H, self.SG, 1, n)
            K.moe_combine_gated[self._grid(n), self.nt, st](self.X, H, self.OB, H, k, n, self.SH, self.SG)
            return
        if "s_gu" in L:
            Is = L["s_gu"].N // 2
            self._gemm(L["s_gu"], self.XN, H, self.INTER, Is, n, MODE_SWIGLU)
            self._gemm(L["s_down"], self.INTER, Is, self.X, H, n, MODE_RESID, self.X)
        K.moe_combine[self._grid(n), self.nt, st](self.X, H, self.OB, H, k, n)

    def _embed(self, tab, n):
        fmt, w = tab
        _embed_kernel(fmt)[self._grid(n), self.nt_row, self.stream](w, w, self.meta, self.X, self.config.hidden_size,
                                                                 self.config.hidden_size, n)

    def _trunk_launches(self, cache: DeviceCache, n: int):
        cfg = self.config
        H = cfg.hidden_size
        self._embed(self.embed_tab, n)
        for i, L in enumerate(self.layers):
            self._block(L, i, cache.layers[i], n)
        self._rmsnorm(self.X, H, 0, 1, H, self.final_norm, self.HOUT, H, 0, n)
        self._gemm(self.lm_head, self.HOUT, H, self.LOGITS, cfg.vocab_size, n)

    def _mtp_launches(self, j: int, cache: DeviceCache, n: int):
        cfg, lay = self.config, self.spec.mtp
        H = cfg.hidden_size
        M = self.mtp[j]
        self._embed(M["embed"] if M["embed"] is not None else self.embed_tab, n)
        e_off, h_off = (H, 0) if lay.hidden_first else (0, H)
        self._rmsnorm(self.X, H, 0, 1, H, M["emb_norm"], self.CAT, 2 * H, e_off, n)
        self._rmsnorm(self.PH, H, 0, 1, H, M["hid_norm"], self.CAT, 2 * H, h_off, n)
        self._gemm(M["proj"], self.CAT, 2 * H, self.X, H, n)
        self._block(M["block"], cfg.num_hidden_layers + j, cache.layers[0], n)
        self._rmsnorm(self.X, H, 0, 1, H, M["out_norm"], self.HOUT, H, 0, n)
        self._gemm(M["head"] if M["head"] is not None else self.lm_head, self.HOUT, H, self.LOGITS, cfg.vocab_size, n)

    def _run(self, key, cache: DeviceCache, n: int, launches):
        """Eager the first time this (kind, n) runs; then captured once per cache and replayed."""
        if not self.use_graphs:
            launches()
            self.timing["eager_calls"] += 1
            return
        gk = (key, n)
        g = cache.graphs.get(gk)
        if g is None:
            if gk not in self._warm:
                launches()                       # compiles + loads every kernel this shape uses
                self._warm.add(gk)
                self.timing["eager_calls"] += 1
                return
            try:
                g = cache.graphs[gk] = CudaGraph.capture(self.stream, launches)
            except Exception as e:  # noqa: BLE001 - keep working, eagerly, and say why once
                import warnings
                warnings.warn(f"CUDA graph capture failed ({e!r}); CudaModel continues with eager launches")
                self.use_graphs = False
                self.graph_error = repr(e)
                launches()
                self.timing["eager_calls"] += 1
                return
            self.timing["captures"] += 1
        g.launch()
        self.timing["graph_calls"] += 1

    def _set_meta(self, start: int, positions, ids, slot: int = 0):
        n = len(ids)
        m = self.meta_host
        m[K.M_START], m[K.M_N], m[K.M_SLOT] = start, n, slot
        m[K.M_POS: K.M_POS + n] = positions
        m[K.M_IDS: K.M_IDS + n] = ids
        self.meta.copy_to_device(m, stream=self.stream)

    def _check_ids(self, ids):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        V = self.config.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            bad = int(ids.max() if ids.max() >= V else ids.min())
            raise MtpRefError(f"token id {bad} is outside the vocabulary [0, {V})")
        return ids

    def _fetch(self, n: int, logits: bool = True):
        H, V = self.config.hidden_size, self.config.vocab_size
        self.HOUT[: n * H].copy_to_host(self.h_host[: n * H], stream=self.stream)
        if logits:
            self.LOGITS[: n * V].copy_to_host(self.logits_host[: n * V], stream=self.stream)
        self.stream.synchronize()
        h = self.h_host[: n * H].reshape(n, H).copy()
        return h, (self.logits_host[: n * V].reshape(n, V).copy() if logits else None)

    def _moe_bytes(self, slots: list[int]) -> int:
        """Bytes of the experts the last forward selected (read back from the device)."""
        tot = 0
        for sl, L in slots:
            na = int(self.moe[sl]["nact"].copy_to_host(stream=self.stream)[K.M_NACT])
            tot += na * L["experts"][4]
        return tot

    def _check_room(self, start: int, n: int):
        if start + n > self.config.max_position_embeddings:
            raise MtpRefError(f"sequence of {start + n} tokens exceeds max_position_embeddings "
                              f"{self.config.max_position_embeddings} of config.json; shorten the prompt or "
                              f"--max-new-tokens")
        if start + n > self.cap:
            raise MtpRefError(f"sequence of {start + n} tokens exceeds the CUDA backend's cache of {self.cap} rows "
                              f"(CudaModel(max_context=...))")

    def _trunk_bytes(self, ids) -> int:
        b = self.trunk_bytes + self.embed_row_bytes * len(np.unique(ids))
        if self._moe_layers:
            b += self._moe_bytes([(L["moe_slot"], L) for L in self.layers if "experts" in L])
        return b

    def forward(self, ids, cache: DeviceCache, collect=None):
        """Trunk over n new tokens at positions cache.length .. +n-1 -> (h [n, H], logits [n, V])."""
        ids = self._check_ids(ids)
        start, n = cache.length, len(ids)
        self._check_room(start, n)
        hs, ls = [], []
        for c0 in range(0, n, NMAX):
            chunk = ids[c0: c0 + NMAX]
            m = len(chunk)
            s = cache.length
            self._set_meta(s, np.arange(s, s + m), chunk, cache.slot)
            self._run(("trunk",), cache, m, lambda: self._trunk_launches(cache, m))
            cache.advanced(s, m)
            h, lg = self._fetch(m)
            hs.append(h)
            ls.append(lg)
            self.bytes_read += self._trunk_bytes(chunk)
        return np.concatenate(hs), np.concatenate(ls)

    def _argmax_launches(self, n: int):
        """am_dev[:n] = argmax of each logits row, in two stages (64 blocks a row, then a warp a row). The simulator
        runs argmax_rows as one 1-thread block (the two stages need 32-lane warps there: 64 x 32 Python threads a
        token; tests/test_kernels.py checks them against np.argmax)."""
        V = self.config.vocab_size
        if SIM:
            K.argmax_rows[n, 1, self.stream](self.LOGITS, V, V, self.am_dev)
            return
        K.argmax_slices[n * K.ARGMAX_SLICES, 256, self.stream](self.LOGITS, V, V, self.am_pv, self.am_pi, n)
        K.argmax_merge[n, 32, self.stream](self.am_pv, self.am_pi, V, self.am_dev, n)

    def forward_greedy(self, ids, cache: DeviceCache):
        """Logits-free forward (greedy decoding and verification): (h [n, H], argmax ids [n]) with only n ints + h
        copied back; the argmax runs in the same CUDA graph as the trunk."""
        ids = self._check_ids(ids)
        n = len(ids)
        if n > NMAX:
            raise MtpRefError("forward_greedy takes at most 16 tokens")
        s = cache.length
        self._check_room(s, n)
        self._set_meta(s, np.arange(s, s + n), ids, cache.slot)
        self._run(("trunk", "argmax"), cache, n, lambda: (self._trunk_launches(cache, n), self._argmax_launches(n)))
        cache.advanced(s, n)
        self.am_dev[:n].copy_to_host(self.am_host[:n], stream=self.stream)
        h, _ = self._fetch(n, logits=False)
        self.bytes_read += self._trunk_bytes(ids)
        return h, self.am_host[:n].copy()

    def mtp_forward(self, j: int, ids, prev_h, cache: DeviceCache, positions, last_only: bool = False):
        """MTP module j over n rows (see mtp_ref.model.Model.mtp_forward) -> (g [n, H], logits [n, V] or,
        with last_only, [1, V] of the last row)."""
        cfg = self.config
        if j >= cfg.num_mtp_modules:
            raise MtpRefError(f"MTP module {j} requested but the checkpoint holds {cfg.num_mtp_modules}")
        ids = self._check_ids(ids)
        prev_h = np.ascontiguousarray(prev_h, dtype=np.float32)
        positions = np.asarray(positions, dtype=np.int64)
        H = cfg.hidden_size
        n = len(ids)
        if cache.length + n > self.cap:
            raise MtpRefError(f"MTP cache of {self.cap} rows is full")
        gs, ls = [], []
        M = self.mtp[j]
        for c0 in range(0, n, NMAX):
            m = len(ids[c0: c0 + NMAX])
            s = cache.length
            self._set_meta(s, positions[c0: c0 + m], ids[c0: c0 + m], cache.slot)
            self.PH[: m * H].copy_to_device(prev_h[c0: c0 + m].ravel(), stream=self.stream)
            self._run(("mtp", j), cache, m, lambda: self._mtp_launches(j, cache, m))
            cache.length = s + m
            g, lg = self._fetch(m)
            gs.append(g)
            ls.append(lg)
            rb = M["embed_row_bytes"] or self.embed_row_bytes
            self.bytes_read += M["bytes"] + rb * len(np.unique(ids[c0: c0 + m]))
            if "experts" in M["block"]:
                self.bytes_read += self._moe_bytes([(M["block"]["moe_slot"], M["block"])])
        return np.concatenate(gs), (ls[-1][-1:] if last_only else np.concatenate(ls))

    def weight_nbytes(self, names=None) -> int:
        return self.trunk_bytes


# ----------------------------------------------------------------------------- kernel caches
_KCACHE: dict = {}


def _cached(key, make):
    k = _KCACHE.get(key)
    if k is None:
        k = _KCACHE[key] = make()
    return k


def _attn_v4_kernel(qmax, emax, nw):
    return _cached(("attn", "v4", qmax, emax, nw), lambda: K.make_attention_v4(qmax, emax, nw, K.ATT4_MAXREG))


def _attn_v9_kernel(dk, dv, nw):
    return _cached(("attn", "v9", dk, dv, nw), lambda: K.make_attention_v9(dk, dv, nw, K.ATT9_MAXREG))


def _attn_v10_kernel(dk, dv, nw):
    return _cached(("attn", "v10", dk, dv, nw, K.ATT10_VPRE, K.ATT10_DSPLIT),
                   lambda: K.make_attention_v10(dk, dv, nw, K.ATT10_MAXREG, K.ATT10_VPRE, K.ATT10_DSPLIT))


def _attn_kernel(nq, version="v1"):
    make = {"v1": K.make_attention, "v3": K.make_attention_v3}[version]
    return _cached(("attn", version, nq), lambda: make(nq))


def _mla_absorb(fmt, nq):
    return _cached(("absorb", fmt, nq), lambda: K.make_mla_q_absorb(fmt, nq))


def _mla_o_up(fmt, nq):
    return _cached(("oup", fmt, nq), lambda: K.make_mla_o_up(fmt, nq))


def _embed_kernel(fmt):
    return _cached(("embed", fmt), lambda: K.make_embed(fmt))


def _conv_kernel(kw):
    return _cached(("conv1d", kw), lambda: K.make_causal_conv1d(kw))


def _delta_kernel(rows, rg):
    return _cached(("delta", rows, rg), lambda: K.make_gated_delta_rule(rows, rg))
