"""Compile every kernel the backend launches for sm_90, on a machine WITHOUT a GPU.

The CUDA simulator runs kernels as Python, so it never type-checks them for the GPU. This
tool closes that gap before a (scarce) GPU run:

  1. record (simulator): run the backend on tiny checkpoints and log, for every launch, which
     kernel factory built the kernel and the numba types of its arguments;
         NUMBA_ENABLE_CUDASIM=1 python -m kernels_cuda.compile_check record out.json CKPT_DIR...
  2. check (no simulator, no GPU needed: NVVM + ptxas of a CUDA toolkit): rebuild each kernel
     with the GPU launch shape, compile it with numba for compute capability 9.0, assemble the
     PTX with ptxas, and print registers / spills / stack per kernel;
         python -m kernels_cuda.compile_check check out.json

ptxas lines with a non-zero stack frame or spills are flagged: a register array that went to
local memory (see HOPPER.md).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile


def _describe(a):
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return ["array", str(a.dtype), len(a.shape)]
    if isinstance(a, bool):
        return ["int64"]
    if isinstance(a, int):
        return ["int64"]
    if isinstance(a, float):
        return ["float64"]
    return ["?", type(a).__name__]


def record(out: str, ckpts: list[str]) -> None:
    import numpy as np
    from numba.cuda.simulator import kernel as sk

    from mtp_ref.model import load_model
    from mtp_ref.speculative import generate

    from . import backend
    from .backend import CudaModel

    backend.ALLOW_SIMULATOR = True

    seen = {}
    orig = sk.FakeCUDAKernel.__getitem__

    def getitem(self, cfg):
        launch = orig(self, cfg)
        src = getattr(self, "_mtp_src", None) or (self.fn.__module__, self.fn.__name__, None)

        def call(*args):
            key = json.dumps([list(src[:2]), src[2], [_describe(a) for a in args]])
            seen[key] = seen.get(key, 0) + 1
            return launch(*args)

        return call

    sk.FakeCUDAKernel.__getitem__ = getitem
    for path in ckpts:
        m = load_model(path)
        for lanes in (1,):
            cm = CudaModel(m, max_context=64, gemm_lanes=lanes)   # the kernels pick.py chooses for its shapes
            k = min(2, m.config.num_mtp_modules)
            generate(cm, [3, 5, 7, 11, 13], 3, k)
            c = cm.new_cache()
            cm.forward(np.arange(20) % m.config.vocab_size, c)      # a 16-token chunk + a ragged one
            cm.forward_greedy([1, 2, 3], c)
    with open(out, "w") as f:
        json.dump([json.loads(k) for k in seen], f, indent=1)
    print(f"recorded {len(seen)} kernel signatures -> {out}")


GPU_SHAPE = {"make_gemm_v2": {2: 4, 3: 4, 5: 32}, "make_moe_gemm": {2: 4, 3: 4, 4: 32}}


def check(path: str) -> int:
    from numba import cuda, types
    from numba.np import numpy_support

    from .gemm import TUNED, default_u
    recs = json.load(open(path))
    for (mod, name), fargs, argdesc in list(recs):     # also the tuned GEMM launch shapes
        if name == "make_gemm_v2":                      # every tuned launch shape of this token bucket (the
            for key, t in TUNED.items():                # simulator runs no table: gemm_v5 is only reached here)
                if (key if isinstance(key, int) else key[2]) == fargs[1]:
                    R, U, Wp = t[0], t[1], (t[2] if len(t) > 2 else 4)
                    U = U if U is not None else default_u(fargs[1])
                    kind = "make_gemm_v5_tuned" if len(t) > 3 and t[3] else "make_gemm_v2_tuned"
                    recs.append([[mod, kind], [fargs[0], fargs[1], R, Wp, U, 32] + list(fargs[6:]), argdesc])
        if name == "make_gated_delta_rule":             # the production head size: dk = 128 over 4 threads a column
            recs.append([[mod, name], [32, 4], argdesc])
    for r in recs:                                      # the simulator ran the delta rule as 1-thread blocks (RG = 1,
        if r[0][1] == "make_gated_delta_rule" and r[1][1] == 1:   # ROWS = dk); the GPU runs 128 threads, RG = 4
            from .kernels import delta_rule_shape
            r[1] = list(delta_rule_shape(r[1][0], 128, 4))
    bad = 0
    done = set()
    for (mod, name), fargs, argdesc in recs:
        if fargs is not None:
            fargs = list(fargs)
            for i, v in GPU_SHAPE.get(name, {}).items():   # rebuild with the GPU launch shape
                if i < len(fargs):
                    fargs[i] = v
            if name == "make_gemm_v2" and len(fargs) > 4:
                fargs[4] = default_u(fargs[1])
            if name == "make_attention_v4":                # the simulator ran 1-thread blocks: 4 warps, dv <= 128
                fargs = [fargs[0], 1, 4]
        key = (mod, name, json.dumps(fargs), json.dumps(argdesc))
        if key in done:
            continue
        done.add(key)
        m = importlib.import_module(mod)
        if name == "make_gemm_v2_tuned":
            kern = m.make_gemm_v2(*fargs)
        elif name == "make_gemm_v5_tuned":
            kern = m.make_gemm_v5(*fargs)
        elif fargs is None:
            kern = getattr(m, name)
        else:
            kern = getattr(m, name)(*fargs)
        sig = []
        for d in argdesc:
            if d[0] == "array":
                sig.append(types.Array(numpy_support.from_dtype(__import__("numpy").dtype(d[1])), d[2], "C"))
            else:
                sig.append(getattr(types, d[0]))
        label = f"{name}{tuple(fargs) if fargs is not None else ''}"
        try:
            ptx, _ = cuda.compile_ptx(kern.py_func, tuple(sig), cc=(9, 0))
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            print(f"FAIL {label}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            bad += 1
            continue
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "k.ptx")
            open(p, "w").write(ptx)
            ptxas = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "ptxas")
            r = subprocess.run([ptxas, "-arch=sm_90", "-v", p, "-o", os.path.join(d, "k.cubin")],
                               capture_output=True, text=True)
        info = [ln.split(":", 1)[-1].strip() for ln in r.stderr.splitlines() if "registers" in ln or "stack" in ln]
        flag = "" if all(("0 bytes stack" in x and "0 bytes spill stores" in x) for x in info if "stack frame" in x) \
            else "  <-- LOCAL MEMORY"
        if r.returncode:
            print(f"PTXAS FAIL {label}: {r.stderr[-300:]}")
            bad += 1
        else:
            print(f"ok   {label}: {' | '.join(info)}{flag}")
    print(f"{len(done)} kernels compiled, {bad} failures")
    return bad


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(1 if check(sys.argv[2]) else 0)
