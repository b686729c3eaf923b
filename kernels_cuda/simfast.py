"""Faster CUDA simulator for blocks of ONE thread (NUMBA_ENABLE_CUDASIM=1 only).

numba's simulator runs every CUDA thread as a Python thread and the launching thread polls
them in a busy loop, so even a 1-thread block pays a thread start and GIL hand-offs. The
backend launches its simulator kernels as 1-thread blocks (see backend.py), and for those this
patch runs the kernel body directly in the calling thread. Blocks of more threads (the kernel
tests use 32 and 64) still run on the simulator's own thread machinery, unchanged.
"""

from __future__ import annotations

import threading

_PATCHED = False


def enable() -> None:
    global _PATCHED
    if _PATCHED:
        return
    from numba.cuda.simulator import kernel as sk
    from numba.cuda.simulator.kernelapi import Dim3

    orig = sk.BlockManager.run

    def run(self, grid_point, *args):
        bd = self._block_dim
        if bd[0] * bd[1] * bd[2] != 1:
            return orig(self, grid_point, *args)
        t = threading.current_thread()
        keep = {k: t.__dict__.get(k) for k in ("blockIdx", "threadIdx", "thread_id", "syncthreads")}
        t.blockIdx, t.threadIdx, t.thread_id = Dim3(*grid_point), Dim3(0, 0, 0), 0
        t.syncthreads = lambda: None
        try:
            self._f(*args)
        finally:
            for k, v in keep.items():
                if v is None:
                    t.__dict__.pop(k, None)
                else:
                    t.__dict__[k] = v

    sk.BlockManager.run = run
    _PATCHED = True
