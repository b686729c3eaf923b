"""Time one float32 product y = x @ W^T for 1..4 rows: the single sgemm call (ops.linear_naive) against one
sgemv per row (what ops.linear does for 2-3 rows of weights with >= 65536 entries).

    .venv/bin/python benchmarks/bench_linear.py [--repeats 2000]

One BLAS thread (as the engine sets for small models). Shapes: those of the bundled mtp-tiny (hidden 256,
MLP 640, vocab 4096) and the 4096 x 256 head. Prints the median microseconds per call and the machine load,
since on a shared 2-core VM other processes move these numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from mtp_ref import ops

SHAPES = [(256, 256), (640, 256), (256, 640), (4096, 256)]  # W [out, in]


def median_us(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def per_row(x, w):
    return np.stack([w @ r for r in x])  # n x ([out, in] @ [in]) -> [n, out]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    threadpool_limits(limits=1, user_api="blas")
    blas = [f"{i['internal_api']} {i['version']} ({i.get('architecture')})" for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, {', '.join(blas)}, 1 BLAS thread, "
          f"load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    print(f"{'W [out x in]':>13} {'n':>2} {'sgemm us':>9} {'per-row us':>11} {'ops.linear us':>14}")
    for out, inp in SHAPES:
        w = rng.standard_normal((out, inp)).astype(np.float32)
        for n in (1, 2, 3, 4):
            x = rng.standard_normal((n, inp)).astype(np.float32)
            np.testing.assert_allclose(per_row(x, w), ops.linear_naive(x, w), rtol=1e-4, atol=1e-4)
            a = median_us(lambda: ops.linear_naive(x, w), args.repeats)
            b = median_us(lambda: per_row(x, w), args.repeats)
            c = median_us(lambda: ops.linear(x, w), args.repeats)
            print(f"{out:>6} x {inp:<4} {n:>2} {a:>9.1f} {b:>11.1f} {c:>14.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
