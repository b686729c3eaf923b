"""Where the time of one 7B-class forward goes: per-kernel device time under Nsight Compute.

The graph-replay time of bench_model7b.py says how long a forward takes, not which kernel takes it.
This script runs eager forwards of the MiMo-7B-shaped model (fewer layers: every layer has the same
shapes) inside cuda.profile_start/stop, and `ncu` records gpu__time_duration of every kernel.
A tiny marker kernel separates the forwards, so one process profiles n = 1 and n = 4.

    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base \
        python3 benchmarks/profile_model7b.py --config v2 --layers 2 > prof.csv
    python3 benchmarks/profile_model7b.py --summarize prof.csv --layers 2 --full-layers 36

The summary groups kernels by (name, grid) in launch order, gives us per layer and the estimate of
a full forward = per-layer time x full-layers + the once-per-forward kernels (embedding, final norm,
lm_head). Launch gaps inside a CUDA graph are not in these numbers: compare with the graph replay.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

MARK = "forward_marker"


def run(a):
    import gc

    import numpy as np
    import torch
    from numba import cuda

    from benchmarks.bench_model7b import CONFIGS, MIMO_7B, fill_cache, make_weights
    from kernels_cuda import gemm
    from kernels_cuda.backend import CudaModel
    from mtp_ref.config import config_from_dict
    from mtp_ref.families import family_for

    @cuda.jit
    def forward_marker(a, v):  # noqa: ANN001 - the name is what the parser looks for
        if cuda.grid(1) == 0:
            a[0] = v

    cfg = config_from_dict(dict(MIMO_7B, num_hidden_layers=a.layers), "MiMo-7B shapes")
    spec = family_for(cfg)
    cfg.num_mtp_modules = 1
    W = make_weights(cfg, spec)
    dev_w = {k: (v.view(torch.int16) if v.dtype == torch.bfloat16 else v) for k, v in W.items()}
    opts = dict(CONFIGS[a.config])
    if isinstance(opts.get("gemm_tuning"), str):                # "auto": profile with the static table
        opts["gemm_tuning"] = getattr(gemm, "TUNED" if opts["gemm_tuning"] == "auto" else opts["gemm_tuning"])
    cm = CudaModel.from_device_weights(cfg, spec, dev_w, max_context=a.context + 32, use_graphs=False,
                                       path="random MiMo-7B shapes", **opts)
    cache = cm.new_cache()
    fill_cache(cm, cache, a.context)
    mark = cuda.device_array(1, np.float32)
    ns = [int(x) for x in a.ns.split(",")]
    rng = np.random.default_rng(0)
    for n in ns:                       # compile + warm every kernel outside the profiled range
        for _ in range(2):
            cache.length = a.context
            cm.forward(rng.integers(0, cfg.vocab_size, n), cache)
    forward_marker[1, 32, cm.stream](mark, 0.0)
    cm.stream.synchronize()
    cuda.profile_start()
    for n in ns:
        forward_marker[1, 32, cm.stream](mark, float(n))
        cache.length = a.context
        cm.forward(rng.integers(0, cfg.vocab_size, n), cache)
    forward_marker[1, 32, cm.stream](mark, -1.0)
    cm.stream.synchronize()
    cuda.profile_stop()
    print(f"# profiled n = {ns}, layers {a.layers}, config {a.config}, context {a.context}", file=sys.stderr)
    del cm
    gc.collect()


def short(name: str) -> str:
    """'cudapy::kernels_cuda::gemm::gemm_v2_kernel[abi:..]<...>(...)' -> 'gemm_v2_kernel' (also mangled names)."""
    if name.startswith("_ZN"):                     # mangled: _ZN <len><part> <len><part> ... E
        parts, i = [], 3
        while i < len(name) and name[i].isdigit():
            j = i
            while name[j].isdigit():
                j += 1
            k = int(name[i:j])
            parts.append(name[j:j + k])
            i = j + k
        if parts:
            return re.sub(r"_\d+$", "", parts[-1])
    head = name.split("(")[0]                      # 'make_embed::embed[v1,cw51...]' (numba-cuda 0.30)
    m = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?:\$\d+)?(?:\[[^\]]*\])?(?:<[^>]*>)?$", head)
    return m[-1] if m else head[-60:]


def summarize(a):
    rows = []
    with open(a.summarize, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        rows.append((short(r["Kernel Name"]), r.get("Grid Size", ""), r.get("Block Size", ""),
                     float(r["Metric Value"].replace(",", ""))))
    if not rows:
        print("no gpu__time_duration rows in", a.summarize)
        return 1
    # split into forwards at the marker kernels (value n is not in the CSV: take the order of --ns)
    fwds, cur = [], None
    for name, grid, block, ns in rows:
        if MARK in name:
            if cur is not None:
                fwds.append(cur)
            cur = []
        elif cur is not None:
            cur.append((name, grid, block, ns / 1e3))
    ns_list = [int(x) for x in a.ns.split(",")]
    for n, ks in zip(ns_list, fwds):
        total = sum(k[3] for k in ks)
        groups: "OrderedDict[tuple, list]" = OrderedDict()
        for name, grid, block, us in ks:
            groups.setdefault((name, grid, block), []).append(us)
        print(f"\n### n = {n}: {len(ks)} kernels, {total:.1f} us summed device time ({a.layers} layers)")
        print("| kernel | grid | block | launches | us total | us per launch | per layer? |")
        print("|---|---|---|---|---|---|---|")
        per_layer, once = 0.0, 0.0
        for (name, grid, block), ts in groups.items():
            layered = len(ts) % a.layers == 0
            if layered:
                per_layer += sum(ts) / a.layers
            else:
                once += sum(ts)
            print(f"| {name} | {grid} | {block} | {len(ts)} | {sum(ts):.1f} | {sum(ts) / len(ts):.2f} | "
                  f"{'yes' if layered else 'no'} |")
        est = per_layer * a.full_layers + once
        print(f"per layer {per_layer:.1f} us; once per forward {once:.1f} us; estimate for {a.full_layers} layers: "
              f"{est / 1e3:.2f} ms (kernel time only, no launch gaps)")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="default")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--full-layers", type=int, default=36)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--ns", default="1,4")
    ap.add_argument("--summarize", default=None, help="an ncu --csv output to summarize instead of running")
    a = ap.parse_args()
    if a.summarize:
        sys.exit(summarize(a))
    run(a)


if __name__ == "__main__":
    main()
