"""kernels_cuda.loop (greedy decoding with the token feedback on the device) against the NumPy engine: the same
tokens, the same accepted-length histogram and the same cache lengths as mtp_ref.speculative on tiny checkpoints.

Runs under numba's CUDA simulator (graphs off: the eager path) and, with NUMBA_ENABLE_CUDASIM=0, on a GPU.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402

pytest.importorskip("numba.cuda")
from numba import cuda  # noqa: E402

from kernels_cuda.intrinsics import SIM  # noqa: E402

if not SIM and not cuda.is_available():
    pytest.skip("numba was imported without the CUDA simulator and no GPU is present", allow_module_level=True)

from kernels_cuda import backend, loop  # noqa: E402
from kernels_cuda.backend import CudaModel  # noqa: E402
from mtp_ref.model import load_model  # noqa: E402
from mtp_ref.speculative import SpeculativeDecoder, generate  # noqa: E402

# tiny dims keep the simulator fast (~0.5 s a forward): one trunk layer, no tokenizer, a small vocabulary
SMALL = dict(with_tokenizer=False, vocab_size=96, num_hidden_layers=1)
PROMPT = [3, 17, 42, 5, 9]


@pytest.fixture(autouse=True)
def _allow_simulator(monkeypatch):
    monkeypatch.setattr(backend, "ALLOW_SIMULATOR", True)


@pytest.fixture(scope="module")
def models(oracle_model):
    """(NumPy model, CudaModel) per family, built once: the loop keeps its caches on the CudaModel."""
    out = {}

    def get(family):
        if family not in out:
            m = load_model(oracle_model(family, **SMALL).path)
            out[family] = (m, CudaModel(m, max_context=64))
        return out[family]
    return get


def forced():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_model7b import ForcedDrafts
    return ForcedDrafts


def ref_run(m, n, k, mode, rate=None, eos=None):
    """mtp_ref.speculative's tokens, stats and final cache lengths (generate's loop, on a SpeculativeDecoder).
    rate: drafts bent to the plain greedy continuation (bench_model7b.ForcedDrafts) with that hit rate."""
    model, ref = m, None
    if rate is not None:
        ref = PROMPT + generate(m, PROMPT, n, 0, stop_at_eos=False).token_ids
        model = forced()(m, ref, rate)
    res = generate(model, PROMPT, n, k, mode, stop_at_eos=eos is not None)
    dec = SpeculativeDecoder(model, k, mode)
    dec.prefill(PROMPT)
    stop = set(eos or ())
    while len(dec.generated) < n and not (stop & set(dec.generated)):
        dec.step()
    return res, dec.cache_lengths(), ref


def lengths(cm, k, mode):
    st = cm._loop_states[(k, mode)]
    return {"main": st.cache.length, "mtp": [c.length for c in st.mtp_caches]}


def check(m, cm, n, k, mode, rate=None, eos=None):
    a, la, ref = ref_run(m, n, k, mode, rate, eos)
    f = None if rate is None else loop.ForcedDraftFilter(ref, rate, k if mode == "chain" else 1)
    b = loop.generate_greedy(cm, PROMPT, n, k, mode, stop_at_eos=eos is not None, draft_filter=f)
    assert b.stats["device_loop"]
    assert b.token_ids == a.token_ids, (a.token_ids, b.token_ids)
    for key in ("accepted_length_histogram", "target_forwards", "mtp_forwards", "generated_tokens"):
        assert b.stats[key] == a.stats[key], (key, a.stats[key], b.stats[key])
    assert lengths(cm, k, mode) == la
    if k:
        assert b.cycles == [([d.token for d in r.drafts], r.target_argmax) for r in a.steps]
    return a, b


@pytest.mark.parametrize("family", ["deepseek_v3", "mimo"])
def test_plain_greedy_matches_numpy_engine(models, family):
    m, cm = models(family)
    check(m, cm, 8, 0, "chain")


# drafts forced to plain greedy's continuation (as the benchmark's ForcedDrafts, here on the device): random tiny
# weights accept nothing on their own, and the rollback of each accepted length is what needs testing. At rate 1
# every cycle accepts all k: 9 tokens are the prefill's 1 + 2 cycles of k + 1 = 4, histogram [0, 0, 0, 2].
@pytest.mark.parametrize("family,k,mode,rate", [("deepseek_v3", 2, "chain", 0.6), ("deepseek_v3", 3, "recursive", 0.6),
                                                ("mimo", 1, "chain", 0.6), ("mimo", 2, "recursive", 0.6),
                                                ("mimo", 3, "recursive", 1.0)])
def test_speculative_matches_numpy_engine(models, family, k, mode, rate):
    m, cm = models(family)
    a, b = check(m, cm, 9 if rate == 1.0 else 8, k, mode, rate=rate)
    assert sum(a.stats["accepted_length_histogram"][1:]) > 0       # some cycle accepted a draft
    if rate == 1.0:
        assert b.stats["accepted_length_histogram"] == [0, 0, 0, 2]


@pytest.mark.parametrize("k", [0, 2])
def test_timing_keeps_the_tokens_and_splits_host_time(models, k):
    """timing=True adds wall, host CPU, the CPU part spent in the synchronisations, and device seconds (on a GPU),
    without changing the tokens; the waiting part is a share of the host CPU time."""
    m, cm = models("mimo")
    a = loop.generate_greedy(cm, PROMPT, 6, k, "recursive", stop_at_eos=False)
    b = loop.generate_greedy(cm, PROMPT, 6, k, "recursive", stop_at_eos=False, timing=True)
    assert b.token_ids == a.token_ids
    d = b.stats
    from kernels_cuda.intrinsics import SIM
    assert d["decode_seconds"] > 0 and (SIM or d["decode_device_seconds"] > 0)   # the simulator's events time nothing
    assert 0 <= d["decode_sync_cpu_seconds"] <= d["decode_cpu_seconds"]


def test_unforced_speculative_matches(models):
    """No filter: the module's own argmax drafts (what random weights propose)."""
    m, cm = models("deepseek_v3")
    check(m, cm, 3, 1, "chain")


@pytest.mark.parametrize("k", [0, 2])
def test_loop_stops_at_eos_mid_burst(models, monkeypatch, k):
    """An eos generated mid-burst (k = 0) or mid-cycle (k = 2, every draft accepted: cycles of 3 tokens) cuts the
    output there, and the caches end where the engine's do (it stops stepping once an eos is generated)."""
    m, cm = models("deepseek_v3")
    free = generate(m, PROMPT, 8, 0, stop_at_eos=False).token_ids
    i = next(i for i in (5, 6, 4, 3, 2) if free[i] not in free[:i])
    monkeypatch.setattr(m.config, "eos_token_id", [free[i]])
    assert cm.config.eos_token_id == [free[i]]
    a, b = check(m, cm, 8, k, "chain", rate=1.0 if k else None, eos=[free[i]])
    assert b.token_ids == free[: i + 1]


def test_unsupported_falls_back(models, monkeypatch):
    """The pre_norm chain is not in the device loop: generate_greedy runs the SpeculativeDecoder path."""
    m, cm = models("mimo")
    monkeypatch.setattr(m, "mtp_chain", "pre_norm")
    assert loop.loop_supported(cm, 1) is not None
    b = loop.generate_greedy(cm, PROMPT, 2, 1, "chain", stop_at_eos=False)
    assert "device_loop" not in b.stats
