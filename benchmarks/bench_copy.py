"""Device copy bandwidth: the roofline ceiling for the memory-bound kernels, measured in the same run.

Bytes counted = bytes read + bytes written (2 x buffer size), timed with CUDA events, median of
repeats. Three copies: the driver's device-to-device memcpy, a numba kernel with 16-byte
loads/stores, and torch's copy_ (if torch is importable).

    python benchmarks/bench_copy.py [--mib 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from numba import cuda  # noqa: E402

from kernels_cuda.graphs import events_ms  # noqa: E402,F401  (the benchmarks import it from here)


@cuda.jit
def fill(a, v):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = v + i % 7


@cuda.jit
def copy16(dst, src, n16):
    """dst = src, 16 bytes per thread per step (uint32 x 4 via two uint64)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < n16:
        dst[2 * i] = src[2 * i]
        dst[2 * i + 1] = src[2 * i + 1]
        i += step


def copy_bandwidth(mib: int = 2048) -> dict:
    """GB/s (1e9 bytes/s, read + write) of three device copies of `mib` MiB."""
    nbytes = mib * 2**20
    src = cuda.device_array(nbytes // 8, np.uint64)
    dst = cuda.device_array(nbytes // 8, np.uint64)
    s = cuda.default_stream()
    fill[(src.size + 255) // 256, 256, s](src, 3)  # not zeros (METHOD.md)
    out = {"bytes": 2 * nbytes}
    ms = events_ms(s, lambda: dst.copy_to_device(src, stream=s))
    out["memcpy_d2d_GBps"] = 2 * nbytes / ms / 1e6
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    n16 = nbytes // 16
    ms = events_ms(s, lambda: copy16[sms * 8, 512, s](dst, src, n16))
    out["numba_copy16_GBps"] = 2 * nbytes / ms / 1e6
    try:
        import torch
        a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
        b = torch.empty_like(a)
        torch.cuda.synchronize()
        for _ in range(3):
            b.copy_(a)
        ts = []
        for _ in range(20):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            b.copy_(a)
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1))
        out["torch_copy_GBps"] = 2 * nbytes / float(np.median(ts)) / 1e6
        del a, b
    except Exception as e:  # torch missing or without CUDA
        out["torch_copy_error"] = repr(e)
    out["ceiling_GBps"] = max(v for k, v in out.items() if k.endswith("GBps"))
    del src, dst
    return out


def device_name() -> str:
    d = cuda.get_current_device()
    name = d.name.decode() if isinstance(d.name, bytes) else str(d.name)
    return f"{name} ({d.MULTIPROCESSOR_COUNT} SMs)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    r = copy_bandwidth(a.mib)
    r["device"] = device_name()
    print(f"device copy bandwidth on {r['device']}, {a.mib} MiB buffers, read+write counted:")
    for k, v in r.items():
        if k.endswith("GBps"):
            print(f"  {k:22s} {v:8.0f} GB/s")
    if a.json:
        json.dump(r, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
