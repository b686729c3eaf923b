"""Checkpoint: lazy, tensor-by-tensor access to a Hugging Face safetensors checkpoint.

* single `model.safetensors`, or shards listed in `model.safetensors.index.json`
* bf16 / f16 / f32 stored weights decode to float32 exactly
* release prefixes of a multimodal wrapper (`model.language_model.`) can be read as `model.`
* FP8 (e4m3) weights with a `<name>_scale_inv` partner are dequantised exactly with
  128x128 blocks (DeepSeek-V3 release format, `quantization_config.weight_block_size`):
  W[i, j] = fp8(W[i, j]) * scale_inv[i // 128, j // 128]
* DeepSeek-V4's release names the partner of `<m>.weight` `<m>.scale`, in E8M0 (a power of two 2^(b - 127),
  `scale_fmt: ue8m0`; stored F8_E8M0, readable once safetensors_io lists that 1-byte dtype, or U8, which
  transformers also accepts): the same 128x128 blocks for FP8 weights, and for its MXFP4 experts (I8, two e2m1
  values per byte, the low nibble first) one scale per row and 32 columns:
  W[i, j] = e2m1(W[i, j]) * scale[i, j // 32] (transformers' Fp8Dequantize, expert_dtype "fp4")
Only headers are read when the checkpoint is opened; a tensor's bytes are read the first
time it is used, then kept (decoded, float32) for the next forwards.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from .errors import MtpRefError
from .safetensors_io import TensorInfo, read_header, read_tensor

SCALE_SUFFIX = "_scale_inv"
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
MXFP4_GROUP = 32


def dot_scale(name: str) -> str | None:
    """`<m>.scale`, DeepSeek-V4's name for the scale of `<m>.weight` (None for other names)."""
    return name[: -len(".weight")] + ".scale" if name.endswith(".weight") else None


class Checkpoint:
    def __init__(self, path: Path, block_size: tuple[int, int] = (128, 128), aliases: tuple[str, ...] = (),
                 renames: tuple[tuple[str, str], ...] = ()):
        """aliases: release prefixes that stand for "model." (the text model inside a multimodal release,
        "model.language_model."); tensors under them are known by their "model." names, as transformers'
        PrefixChange conversion loads them. renames: (regex, replacement) pairs giving a released name the
        engine's name (FamilySpec.tensor_renames; an FP8 `_scale_inv` partner follows its weight)."""
        self.path = Path(path)
        self.block_size = tuple(block_size)
        self.infos: dict[str, TensorInfo] = {}
        self._cache: dict[str, np.ndarray] = {}
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            try:
                wmap = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise MtpRefError(f"{index}: not a valid safetensors index ({e!r}); it needs a 'weight_map'") from None
            headers = {}
            for shard in sorted(set(wmap.values())):
                f = self.path / shard
                if not f.exists():
                    raise MtpRefError(f"{f}: shard listed in model.safetensors.index.json is missing; download it")
                headers[shard] = read_header(f)
            for name, shard in wmap.items():
                if name not in headers[shard]:
                    raise MtpRefError(f"{self.path / shard}: tensor '{name}' is listed in the index but not in the shard")
                self.infos[name] = headers[shard][name]
        elif single.exists():
            self.infos = read_header(single)
        else:
            found = sorted(p.name for p in self.path.glob("*.safetensors"))
            if found:  # shards without an index (some conversions): read them all
                for f in found:
                    self.infos.update(read_header(self.path / f))
            else:
                raise MtpRefError(f"{self.path}: no model.safetensors or model.safetensors.index.json; "
                                  f"mtp-ref reads safetensors checkpoints only (never pickle .bin files)")
        for alias in aliases:
            for name in [n for n in self.infos if n.startswith(alias)]:
                self.infos.setdefault("model." + name[len(alias):], self.infos.pop(name))
        for pattern, repl in renames:
            rx = re.compile(pattern)
            for name in [n for n in self.infos if rx.search(n)]:
                self.infos.setdefault(rx.sub(repl, name), self.infos.pop(name))

    # -- lookup ---------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.infos[name].shape

    def dtype(self, name: str) -> str:
        return self.infos[name].dtype

    def stored_nbytes(self, name: str) -> int:
        """Bytes this weight occupies in the checkpoint (incl. its FP8 scale, if any)."""
        n = self.infos[name].nbytes
        s = self.infos.get(name + SCALE_SUFFIX) or self.infos.get(dot_scale(name) or "")
        return n + (s.nbytes if s else 0)

    def logical_shape(self, name: str) -> tuple[int, ...]:
        """The shape of the decoded tensor: packed MXFP4 (I8 with a `.scale` partner) holds two values a byte."""
        i = self.infos[name]
        if i.dtype == "I8" and dot_scale(name) in self.infos:
            return i.shape[:-1] + (2 * i.shape[-1],)
        return i.shape

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (dequantised if FP8), read on first use."""
        arr = self._cache.get(name)
        if arr is None:
            arr = self._load(name)
            self._cache[name] = arr
        return arr

    def _load(self, name: str) -> np.ndarray:
        info = self.infos.get(name)
        if info is None:
            raise MtpRefError(f"{self.path}: tensor '{name}' is missing from the checkpoint")
        w = read_tensor(info)
        dscale = dot_scale(name)
        if info.dtype == "F8_E4M3" and name + SCALE_SUFFIX not in self.infos and dscale in self.infos:
            w = dequant_fp8_block(w, e8m0_to_f32(read_tensor(self.infos[dscale])), self.block_size, name, dscale)
        elif info.dtype == "I8" and dscale in self.infos:
            w = dequant_mxfp4(w, e8m0_to_f32(read_tensor(self.infos[dscale])), name)
        elif info.dtype == "F8_E4M3":
            sname = name + SCALE_SUFFIX
            if sname not in self.infos:
                raise MtpRefError(f"{self.path}: FP8 tensor '{name}' has no '{sname}' partner; cannot dequantise it")
            w = dequant_fp8_block(w, read_tensor(self.infos[sname]), self.block_size, name)
        elif w.dtype != np.float32 and w.dtype.kind == "f":
            w = w.astype(np.float32)
        return w


def dequant_fp8_block(w: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int], name: str = "",
                      scale_name: str | None = None) -> np.ndarray:
    """W[i, j] * scale_inv[i // bm, j // bn]; edge blocks may be partial."""
    M, N = w.shape  # [M, N] f32 (already decoded from e4m3)
    bm, bn = block
    want = (math.ceil(M / bm), math.ceil(N / bn))
    if scale_inv.shape != want:
        raise MtpRefError(f"'{scale_name or name + SCALE_SUFFIX}' has shape {list(scale_inv.shape)}, "
                          f"expected {list(want)} for a [{M}, {N}] weight in {bm}x{bn} blocks")
    s = np.repeat(np.repeat(scale_inv.astype(np.float32), bm, axis=0), bn, axis=1)[:M, :N]  # [M, N]
    return w * s


def e8m0_to_f32(s: np.ndarray) -> np.ndarray:
    """E8M0 scale bytes (U8 / F8_E8M0 storage) -> 2^(b - 127) (255 is NaN); float scales pass through."""
    if s.dtype != np.uint8:
        return s.astype(np.float32)
    out = np.ldexp(np.float32(1.0), s.astype(np.int32) - 127).astype(np.float32)
    return np.where(s == 255, np.float32(np.nan), out)


def dequant_mxfp4(packed: np.ndarray, scale: np.ndarray, name: str = "") -> np.ndarray:
    """[M, N/2] bytes of two e2m1 values (low nibble = even column) * scale [M, N/32] -> [M, N] float32."""
    u = packed.view(np.uint8)
    w = np.stack([E2M1[u & 0xF], E2M1[u >> 4]], axis=-1).reshape(*u.shape[:-1], 2 * u.shape[-1])   # [M, N]
    want = w.shape[:-1] + (math.ceil(w.shape[-1] / MXFP4_GROUP),)
    if scale.shape != want:
        raise MtpRefError(f"'{name[: -len('.weight')]}.scale' has shape {list(scale.shape)}, expected {list(want)} "
                          f"for a {list(w.shape)} MXFP4 weight in groups of {MXFP4_GROUP}")
    return w * np.repeat(scale, MXFP4_GROUP, axis=-1)[..., : w.shape[-1]]
