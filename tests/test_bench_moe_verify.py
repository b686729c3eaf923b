"""benchmarks/bench_moe_verify.py's code path on the CPU (numba's CUDA simulator, --tiny sizes): the distinct-expert
count it reads from the device against the router's own picks, the uniform-routing model against its formula, and
the results section against what explainer/scenario.py accepts. The GPU numbers come from the real run only."""

from __future__ import annotations

import json
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numba import cuda  # noqa: E402

from benchmarks import bench_moe_verify as bench  # noqa: E402
from kernels_cuda import backend  # noqa: E402
from kernels_cuda import kernels as K  # noqa: E402
from kernels_cuda.intrinsics import SIM  # noqa: E402
from mtp_ref.config import config_from_dict  # noqa: E402
from mtp_ref.families import family_for  # noqa: E402

if not SIM and not cuda.is_available():
    pytest.skip("numba was imported without the CUDA simulator and no GPU is present", allow_module_level=True)


@pytest.fixture(autouse=True)
def _allow_simulator(monkeypatch):
    monkeypatch.setattr(backend, "ALLOW_SIMULATOR", True)


def test_distinct_experts_read_back_equal_the_routers_picks():
    cfg = config_from_dict(dict(bench.TINY), "tiny")
    spec = family_for(cfg)
    cfg.num_mtp_modules = 0
    cm = backend.CudaModel.from_device_weights(cfg, spec, bench.random_weights(cfg, spec, on_gpu=not SIM),
                                               max_context=64)
    cache = cm.new_cache()
    bench.fill_cache(cache, 16)
    n, k = 5, cfg.num_experts_per_tok
    cm.forward(np.arange(n) * 7 % cfg.vocab_size, cache)
    got = bench.distinct_per_layer(cm)
    picks = [cm.moe[L["moe_slot"]]["idx"].copy_to_host()[: n * k] for L in cm.layers if "experts" in L]
    assert got == [len(set(p.tolist())) for p in picks]
    assert all(k < d <= min(cfg.n_routed_experts, n * k) for d in got), got   # 5 random tokens: more than one's k
    assert cm.moe[0]["nact"].copy_to_host()[K.M_NACT] == got[0]


def test_tiny_run_end_to_end_and_its_results_section(tmp_path):
    out = bench.main(["--tiny", "--contexts", "16", "--ns", "1,3", "--draws", "2", "--reps", "1",
                      "--json", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text())["series"][0]["ctx"] == 16
    (s,) = out["series"]
    E, k = bench.TINY["n_routed_experts"], bench.TINY["num_experts_per_tok"]
    r1, r3 = s["rows"]
    assert r1["distinct_mean"] == r1["distinct_p10"] == r1["distinct_p90"] == k   # one token: exactly its k
    assert k < r3["distinct_mean"] <= min(E, 3 * k)
    assert r3["weight_bytes"] > r1["weight_bytes"]                               # more experts, more bytes
    np.testing.assert_allclose(s["model"]["distinct"], [E * (1 - (1 - k / E) ** n) for n in (1, 3)], rtol=1e-12)
    assert s["model"]["ratio"][0] == 1.0 and s["model"]["ratio"][1] > 1.0
    sec = bench.results_section(out, "python benchmarks/bench_moe_verify.py --tiny")
    assert sec["series"][0]["n"] == [1, 3] and len(sec["series"][0]["ms"]) == 2
    from explainer import scenario
    assert scenario.moe_verify_problems(sec) == []
    bad = dict(sec, series=[dict(sec["series"][0], ms=[1.0])])
    assert scenario.moe_verify_problems(bad)
