"""Cost of one trunk forward over n = 1..16 new tokens in the NumPy engine (the 'flat curve').

    .venv/bin/python benchmarks/bench_numpy_forward.py [--model DIR] [--context 256] [--repeats 30]

Prints median milliseconds per forward, the ratio to n = 1, the weight bytes the forward read
(each tensor counted once, MoE experts as selected), and one MTP module forward for comparison.
On a GPU the weight read dominates and the curve is flat; on a CPU with a model that fits in
cache, per-call overhead and compute grow with n: the table shows which regime this machine is in.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from mtp_ref import load_model


def median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    m = load_model(args.model)
    rng = np.random.default_rng(0)
    V = m.config.vocab_size
    cache = m.new_cache()
    h, _ = m.forward(rng.integers(0, V, args.context), cache)
    print(f"model {m.path.name} ({m.spec.name}), context {args.context}, {platform.processor() or platform.machine()}")
    print(f"{'n':>3} {'ms/forward':>11} {'x n=1':>7} {'ms/token':>9} {'weight MB read':>15}")
    base = None
    for n in (1, 2, 3, 4, 6, 8, 12, 16):
        ids = rng.integers(0, V, n)

        def fwd():
            m.reset_meter()
            m.forward(ids, cache)
            cache.truncate(args.context)

        ms = median_ms(fwd, args.repeats)
        base = base or ms
        print(f"{n:>3} {ms:>11.2f} {ms / base:>7.2f} {ms / n:>9.2f} {m.bytes_read / 1e6:>15.2f}")
    if m.config.num_mtp_modules:
        mc = m.new_mtp_cache()
        m.mtp_forward(0, rng.integers(0, V, args.context - 1), h[: args.context - 1], mc,
                      np.arange(args.context - 1) + 1)

        def mtp():
            m.mtp_forward(0, rng.integers(0, V, 1), h[-1:], mc, np.array([args.context]))
            mc.truncate(args.context - 1)

        ms = median_ms(mtp, args.repeats)
        print(f"MTP module 0, one row: {ms:.2f} ms ({ms / base:.2f} x a 1-token trunk forward)")


if __name__ == "__main__":
    main()
