"""The engine's faster paths give the numbers of their readable references.

* ops.linear (one matrix-vector product per row for 2-3 rows) vs ops.linear_naive (x @ w.T);
* Model.moe_impl "dense" (every expert on every row, zero weights for the unselected) vs "per_expert",
  on the bundled checkpoint (per-expert tensors) and a Qwen3.6-MoE checkpoint (fused [E, 2I, H] tensors),
  with the same metered weight bytes;
* mtp_forward(last_only=True) vs the last row of the full logits;
* sampling.top_probs vs sorting the whole softmax.
Tolerances: 1e-6 relative for float32 reorderings of the same sums (measured <= 8e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

from builders_qwen35 import build as build_qwen
from mtp_ref import load_model, ops
from mtp_ref.sampling import SamplingParams, probs_from_logits, top_probs


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", [(64, 256), (256, 256), (4096, 256), (300, 333)])
def test_linear_matches_naive(n, shape):
    rng = np.random.default_rng(n)
    w = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((n, shape[1])).astype(np.float32)
    for bias in (None, b):
        y = ops.linear(x, w, bias)
        assert y.shape == (n, shape[0]) and y.dtype == np.float32
        assert rel(y, ops.linear_naive(x, w, bias)) < 1e-6
    assert rel(ops.linear(x[0], w), w @ x[0]) < 1e-6          # 1-D input keeps working


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)


@pytest.fixture(scope="module")
def qwen_moe(tmp_path_factory):
    return load_model(build_qwen("qwen3_5_moe-vl", tmp_path_factory.mktemp("qmoe")).path)


def forward_both(model, prompt, n_new):
    """Logits and metered bytes of a prefill + one n_new-token forward, per MoE implementation."""
    out = {}
    for impl in ("per_expert", "dense"):
        model.moe_impl = impl
        cache = model.new_cache()
        _, lg0 = model.forward(np.asarray(prompt), cache)
        model.reset_meter()
        _, lg1 = model.forward(np.asarray(prompt[:n_new]), cache)
        out[impl] = (lg0, lg1, model.bytes_read)
    model.moe_impl = "auto"
    return out


@pytest.mark.parametrize("which", ["bundled", "qwen_moe"])
@pytest.mark.parametrize("n_new", [1, 2, 4])
def test_dense_moe_matches_per_expert(request, which, n_new):
    model = request.getfixturevalue(which)
    prompt = list(np.random.default_rng(7).integers(1, 300, 24))
    out = forward_both(model, prompt, n_new)
    a, b = out["dense"], out["per_expert"]
    assert rel(a[0], b[0]) < 1e-5 and rel(a[1], b[1]) < 1e-5
    assert a[2] == b[2] > 0                                   # dense still meters only the selected experts
    assert (np.argmax(a[1], -1) == np.argmax(b[1], -1)).all()


def test_moe_auto_rule(bundled):
    cfg = bundled.config
    assert cfg.n_routed_experts <= 2 * 1 * cfg.num_experts_per_tok   # the bundled model: dense from n = 1
    calls = []
    orig = type(bundled).experts_dense

    def spy(self, *a, **k):
        calls.append(a[0].shape[0])
        return orig(self, *a, **k)

    type(bundled).experts_dense = spy
    try:
        bundled.forward(np.arange(1, 4), bundled.new_cache())
        bundled.moe_impl = "per_expert"
        bundled.forward(np.arange(1, 4), bundled.new_cache())
    finally:
        type(bundled).experts_dense = orig
        bundled.moe_impl = "auto"
    assert calls == [3] * (cfg.num_hidden_layers - cfg.first_k_dense_replace)


@pytest.mark.parametrize("rows", [1, 3])
def test_mtp_last_only(bundled, rows):
    rng = np.random.default_rng(rows)
    H = bundled.config.hidden_size
    prev = rng.standard_normal((rows, H)).astype(np.float32)
    ids, pos = rng.integers(1, 300, rows), np.arange(1, rows + 1)
    g_all, lg_all = bundled.mtp_forward(1, ids, prev, bundled.new_mtp_cache(), pos)
    g_last, lg_last = bundled.mtp_forward(1, ids, prev, bundled.new_mtp_cache(), pos, last_only=True)
    assert lg_last.shape == (1, bundled.config.vocab_size)
    np.testing.assert_array_equal(g_last, g_all)
    assert rel(lg_last, lg_all[-1:]) < 1e-6


def test_top_probs_matches_full_sort():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(4096).astype(np.float32) * 4
    logits[[5, 9]] = logits.max() + 1.0                      # a tie at the top: lower id first
    p = probs_from_logits(logits, SamplingParams(temperature=1.0))
    order = np.lexsort((np.arange(p.size), -p))[:5]
    got = top_probs(logits, 5)
    assert [t for t, _ in got] == order.tolist() and got[0][0] == 5
    np.testing.assert_allclose([q for _, q in got], p[order], rtol=1e-9)
    assert len(top_probs(logits[:3], 5)) == 3
