"""A small safetensors reader/writer in NumPy, with bf16 and fp8-e4m3 decoding.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
then the raw little-endian tensor bytes. Offsets are relative to the end of the header.

NumPy has no bfloat16 or float8, so we decode them ourselves into float32; both decodings are
exact (every bf16 / e4m3 value is representable in float32).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MtpRefError

# dtype name -> (numpy storage dtype, bytes per element)
_STORAGE = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F8_E4M3": np.dtype("u1"),
    "F8_E8M0": np.dtype("u1"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top 16 bits of a float32: shift left and reinterpret."""
    return (raw.astype(np.uint32) << 16).view(np.float32)  # [...] u16 -> [...] f32


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (what torch's .to(bfloat16) does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def _e4m3_table() -> np.ndarray:
    """All 256 float8_e4m3fn values: 1 sign, 4 exponent (bias 7), 3 mantissa bits.

    No infinities; S.1111.111 is NaN; the largest finite value is 448; exponent 0 is
    subnormal: (m/8) * 2^-6.
    """
    table = np.empty(256, dtype=np.float32)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        exp = (b >> 3) & 0xF
        man = b & 0x7
        if exp == 0xF and man == 0x7:
            table[b] = np.nan
        elif exp == 0:
            table[b] = sign * (man / 8.0) * 2.0**-6
        else:
            table[b] = sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)
    return table


E4M3_TABLE = _e4m3_table()


def fp8_e4m3_to_f32(raw: np.ndarray) -> np.ndarray:
    return E4M3_TABLE[raw]  # [...] u8 -> [...] f32


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str            # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    begin: int            # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one .safetensors header and check every tensor's bytes are really in the file."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise MtpRefError(f"{path}: file is truncated (shorter than the 8-byte safetensors header length); re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise MtpRefError(f"{path}: header length {n} exceeds the file size {size}; the file is truncated or not safetensors")
            meta = json.loads(f.read(n))
    except FileNotFoundError:
        raise MtpRefError(f"{path}: file not found; the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MtpRefError(f"{path}: header is not valid JSON; the file is corrupt or not safetensors") from None
    base = 8 + n
    out = {}
    for name, d in meta.items():
        if name == "__metadata__":
            continue
        dt = d.get("dtype")
        if dt not in _STORAGE:
            raise MtpRefError(f"{path}: tensor '{name}' has dtype {dt}, which mtp-ref cannot decode "
                              f"(supported: {', '.join(sorted(_STORAGE))})")
        shape = tuple(int(s) for s in d["shape"])
        b, e = d["data_offsets"]
        want = int(np.prod(shape, dtype=np.int64)) * _STORAGE[dt].itemsize
        if e - b != want:
            raise MtpRefError(f"{path}: tensor '{name}' claims shape {list(shape)} {dt} ({want} bytes) "
                              f"but spans {e - b} bytes; the file is corrupt")
        if base + e > size:
            raise MtpRefError(f"{path}: tensor '{name}' ends at byte {base + e} but the file has only {size} bytes; "
                              f"the file is truncated (an interrupted download?): re-download it")
        out[name] = TensorInfo(name, dt, shape, path, base + b, base + e)
    return out


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one tensor lazily (memory-mapped) and return its values; bf16/fp8 are decoded to float32,
    other dtypes keep their own."""
    storage = _STORAGE[info.dtype]
    mm = np.memmap(info.file, dtype=np.uint8, mode="r", offset=info.begin, shape=(info.nbytes,))
    raw = np.frombuffer(mm, dtype=storage).reshape(info.shape)
    if info.dtype == "BF16":
        return bf16_to_f32(raw)
    if info.dtype == "F8_E4M3":
        return fp8_e4m3_to_f32(raw)
    return np.array(raw)  # copy out of the map so the file can be closed


_NUMPY_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
                np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}


def save_file(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None,
              bf16: set[str] = frozenset()) -> None:
    """Write a safetensors file. Names in `bf16` are stored as bfloat16 (rounded to nearest even)."""
    header: dict = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if name in bf16:
            raw, dt = f32_to_bf16_bits(arr.astype(np.float32)), "BF16"
        else:
            dt = _NUMPY_TO_ST.get(arr.dtype)
            if dt is None:
                raise ValueError(f"cannot store {name} of dtype {arr.dtype}")
            raw = arr
        b = raw.astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
