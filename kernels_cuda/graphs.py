"""CUDA graphs over numba's stream, through the cuda.bindings driver API.

    g = CudaGraph.capture(stream, fn)   # fn launches kernels on `stream`; nothing runs yet
    g.launch()                          # replays every captured launch, ~1 us each on the GPU

Everything a captured launch touches must stay where it was at capture time (static buffers),
and values that change between replays must be read by the kernels from device memory.
"""

from __future__ import annotations


def _check(res, what):
    from cuda.bindings import driver as cu
    err = res[0] if isinstance(res, tuple) else res
    if err != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"{what} failed: {err}")
    return res[1] if isinstance(res, tuple) and len(res) == 2 else (res[1:] if isinstance(res, tuple) else None)


class CudaGraph:
    def __init__(self, stream, graph, exec_):
        self.stream, self.graph, self.exec = stream, graph, exec_

    @classmethod
    def capture(cls, stream, fn):
        from cuda.bindings import driver as cu
        h = stream.handle
        _check(cu.cuStreamBeginCapture(h, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED),
               "cuStreamBeginCapture")
        try:
            fn()
        except BaseException:
            cu.cuStreamEndCapture(h)             # leave the stream usable; report the launch's error
            raise
        graph = _check(cu.cuStreamEndCapture(h), "cuStreamEndCapture")
        exec_ = _check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        return cls(stream, graph, exec_)

    def launch(self):
        from cuda.bindings import driver as cu
        _check(cu.cuGraphLaunch(self.exec, self.stream.handle), "cuGraphLaunch")

    def __del__(self):
        try:
            from cuda.bindings import driver as cu
            cu.cuGraphExecDestroy(self.exec)
            cu.cuGraphDestroy(self.graph)
        except Exception:  # interpreter shutdown: the context is gone already
            pass


def events_samples(stream, fn, reps=20, warm=3) -> list[float]:
    """Milliseconds of each of `reps` calls of fn() between two device events on `stream`, after `warm` untimed
    calls."""
    from numba import cuda
    for _ in range(warm):
        fn()
    stream.synchronize()
    ts = []
    for _ in range(reps):
        a, b = cuda.event(), cuda.event()
        a.record(stream)
        fn()
        b.record(stream)
        b.synchronize()
        ts.append(cuda.event_elapsed_time(a, b))
    return ts


def events_ms(stream, fn, reps=20, warm=3):
    """Median milliseconds of fn() between two device events on `stream`, after `warm` untimed calls."""
    import numpy as np
    return float(np.median(events_samples(stream, fn, reps, warm)))
