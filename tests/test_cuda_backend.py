"""kernels_cuda.backend.CudaModel against the NumPy engine: same logits (to float32 rounding) and the
same greedy tokens, plain and speculative, on tiny checkpoints of several families.

Runs under numba's CUDA simulator on the CPU (set below before numba is imported) and, with
NUMBA_ENABLE_CUDASIM=0, on a real GPU (where CUDA graphs are captured and replayed too).
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("numba.cuda")
from numba import cuda  # noqa: E402

from kernels_cuda.intrinsics import SIM  # noqa: E402

if not SIM and not cuda.is_available():
    pytest.skip("numba was imported without the CUDA simulator and no GPU is present", allow_module_level=True)

from kernels_cuda import backend  # noqa: E402
from kernels_cuda.backend import CudaModel  # noqa: E402
from mtp_ref.errors import MtpRefError  # noqa: E402
from mtp_ref.model import load_model  # noqa: E402
from mtp_ref.speculative import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# tiny dims keep the simulator fast: no tokenizer, so the vocabulary can be small
SMALL = dict(with_tokenizer=False, vocab_size=96)


@pytest.fixture(autouse=True)
def _allow_simulator(monkeypatch):
    """CudaModel refuses the simulator unless asked (see backend.ALLOW_SIMULATOR); these tests ask."""
    monkeypatch.setattr(backend, "ALLOW_SIMULATOR", True)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def both(path, **kw):
    m = load_model(path)
    return m, CudaModel(m, max_context=64, **kw)


@pytest.mark.parametrize("family,draft", [("deepseek_v3", 2), ("mimo", 1)])
def test_greedy_generate_matches_numpy(tiny_checkpoint, family, draft):
    """Speculative greedy decoding with the MTP modules: same tokens, same metered weight bytes."""
    m, cm = both(tiny_checkpoint(family, **SMALL))
    prompt = [3, 17, 42, 5]
    a = generate(m, prompt, 5, draft)
    b = generate(cm, prompt, 5, draft)
    assert b.token_ids == a.token_ids, (a.token_ids, b.token_ids)
    assert b.stats["accepted_length_histogram"] == a.stats["accepted_length_histogram"]
    assert b.stats["weight_bytes_per_token"] == pytest.approx(a.stats["weight_bytes_per_token"])


@pytest.mark.parametrize("variant", ["glm4_moe", "qwen3-fp8", "llama-f32", "qwen2-tied-sharded",
                                     "deepseek_v3-noqlora-ropeparams-sharded"])
def test_forward_matches_numpy(oracle_model, variant, request):
    """Trunk and MTP forwards (prefill, then a 2-token step) across families and storage formats."""
    import builders
    kw = builders.variant_kwargs(variant) if variant in builders.VARIANTS else {"family": variant}
    fam = kw.pop("family")
    kw.update(SMALL)
    m, cm = both(oracle_model(fam, **kw).path)
    cn, cc = m.new_cache(), cm.new_cache()
    for ids in ([5, 17, 42, 7, 9], [8, 9]):
        h1, l1 = m.forward(np.array(ids), cn)
        h2, l2 = cm.forward(np.array(ids), cc)
        assert rel(h2, h1) < 1e-4 and rel(l2, l1) < 1e-4
        assert cc.length == cn.length
    if m.config.num_mtp_modules:
        mn, mc = m.new_mtp_cache(), cm.new_mtp_cache()
        prev = h1[:1].repeat(3, 0) * np.float32(0.5)
        g1, l1 = m.mtp_forward(0, [4, 5, 6], prev, mn, np.array([1, 2, 3]))
        g2, l2 = cm.mtp_forward(0, [4, 5, 6], prev, mc, np.array([1, 2, 3]))
        assert rel(g2, g1) < 1e-4 and rel(l2, l1) < 1e-4


@pytest.mark.parametrize("family,overrides,lengths,want", [
    ("mimo", dict(hidden_size=128), (6, 12), {"v9", "v10"}),    # head dim 32: <= 16 rows a group v9, 24 rows v10
    ("deepseek_v3", {}, (10,), {"v3"}),                        # absorbed MLA: 40 rows a group
    ("qwen3", dict(head_dim=6), (3,), {"v1"})])                # head dim 6: no 16-byte loads
def test_default_attention_paths(tiny_checkpoint, family, overrides, lengths, want):
    """What pick_attention launches by default, on the shapes that reach each production attention kernel: greedy
    speculative tokens (MiMo) and the logits of forwards of `lengths` tokens equal the NumPy engine's, and the
    kernels the test names ran (CudaModel.attention_launches)."""
    m = load_model(tiny_checkpoint(family, **SMALL, **overrides))
    cm = CudaModel(m, max_context=64)
    if family == "mimo":
        a, b = generate(m, [3, 17, 42, 5, 9], 3, 1), generate(cm, [3, 17, 42, 5, 9], 3, 1)
        assert b.token_ids == a.token_ids
    for n in lengths:
        ids = list(np.arange(n) * 7 % 96)
        _, l1 = m.forward(ids, m.new_cache())
        _, l2 = cm.forward(ids, cm.new_cache())
        assert rel(l2, l1) < 1e-4
    assert want <= set(cm.attention_launches), cm.attention_launches


def test_split_k_gemm_keeps_the_logits(tiny_checkpoint, monkeypatch):
    """gemm.TUNED runs gemm_v5 (a block's warps share rows and split K) for bf16 weights at 1-4 tokens on the GPU; the
    simulator's own table is empty (gemm_v2 everywhere), so this puts every GEMM bucket on gemm_v5 and checks the
    logits of a 1-token and a 3-token step after a prefill against the NumPy engine (float32 rounding, 1e-4)."""
    built = []
    real = backend.get_gemm_v5
    monkeypatch.setattr(backend, "get_gemm_v5", lambda *a: built.append(a[:5]) or real(*a))
    m, cm = both(tiny_checkpoint("mimo", **SMALL))
    cm.gemm_tuning = {1: (4, 2, 2, True), 2: (4, 1, 3, True), 4: (8, 1, 2, True)}
    ca, cb = m.new_cache(), cm.new_cache()
    for ids in ([3, 17, 42, 5, 9, 11], [7], [8, 13, 21]):
        _, la = m.forward(ids, ca)
        _, lb = cm.forward(ids, cb)
        assert rel(lb, la) < 1e-4, ids
    assert {b[1:] for b in built} >= {(1, 4, 2, 2), (4, 8, 2, 1)}     # (NMAX, R, KW, U): both steps ran gemm_v5


def test_autotune_table_keys_and_numbers(tiny_checkpoint):
    """autotune.tune_gemms returns one launch shape per (N, K, NMAX) of the model's GEMMs, chosen among the
    candidates, leaves the model's own table as it was, and the table it returns keeps the logits (the launch
    shape changes the order of the sums only). The simulator times host seconds: this checks the plumbing;
    the H100 numbers are in docs/history/2026-11-26-kernels-notes.md."""
    from kernels_cuda.autotune import model_gemms, tune_gemms
    m, cm = both(tiny_checkpoint("mimo", **SMALL))
    keep = dict(cm.gemm_tuning)
    cands = ((4, None, 4), (2, 2, 4))
    table, rows = tune_gemms(cm, ns=(1, 3), candidates=cands, reps=1, log=None)
    assert cm.gemm_tuning == keep
    want = {(lins[0].N, lins[0].K, nm) for _, lins, *_ in model_gemms(cm) for nm in (1, 4)}
    assert set(table) == want and len(rows) == 2 * len(model_gemms(cm))
    assert all(v in cands for v in table.values())
    ids = [3, 17, 42, 5, 9]
    _, l1 = m.forward(ids, m.new_cache())
    cm.gemm_tuning = {k: (2, 2, 4) for k in table}          # every GEMM on a non-default launch shape
    _, l2 = cm.forward(ids, cm.new_cache())
    assert rel(l2, l1) < 1e-4


def test_simulator_needs_consent(tiny_checkpoint, monkeypatch):
    if not SIM:
        pytest.skip("about the simulator")
    monkeypatch.setattr(backend, "ALLOW_SIMULATOR", False)
    monkeypatch.delenv("KERNELS_CUDA_ALLOW_SIM", raising=False)
    with pytest.raises(MtpRefError, match="simulator"):
        CudaModel(load_model(tiny_checkpoint("qwen2", **SMALL)))


def test_chunked_prefill_rollback_and_greedy_path(tiny_checkpoint):
    """> 16 tokens are fed 16 at a time; truncate() rolls back; forward_greedy returns the argmax."""
    m, cm = both(tiny_checkpoint("qwen2", **SMALL))
    ids = list(np.arange(21) * 5 % 96)
    cn, cc = m.new_cache(), cm.new_cache()
    h1, l1 = m.forward(np.array(ids), cn)
    h2, l2 = cm.forward(np.array(ids), cc)
    assert rel(l2, l1) < 1e-4 and cc.length == 21
    m.forward(np.array([1, 2, 3]), cn)
    cm.forward(np.array([1, 2, 3]), cc)
    cn.truncate(22)
    cc.truncate(22)
    _, l1 = m.forward(np.array([7, 8]), cn)
    h2, am = cm.forward_greedy([7, 8], cc)
    assert np.array_equal(am, np.argmax(l1, -1))
    with pytest.raises(MtpRefError):
        cm.forward([96], cc)                                  # outside the vocabulary
    with pytest.raises(MtpRefError):
        cm.forward(list(range(50)), cc)                       # past max_context=64


def test_cli_backend_cuda_matches_numpy(tiny_checkpoint):
    path = tiny_checkpoint("mimo", **SMALL)
    # the caller's PYTHONPATH stays after ROOT (on the GPU machine it puts the carried numpy 2.4 first)
    pp = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM=os.environ["NUMBA_ENABLE_CUDASIM"], PYTHONPATH=pp,
               KERNELS_CUDA_ALLOW_SIM="1")
    out = {}
    for backend in ("numpy", "cuda"):
        r = subprocess.run([sys.executable, "-m", "mtp_ref", "generate", "--model", str(path), "--prompt-ids",
                            "3,17,42", "--max-new-tokens", "3", "--draft", "1", "--json", "--backend", backend],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out[backend] = json.loads(r.stdout)["token_ids"]
    assert out["cuda"] == out["numpy"]


# ----------------------------------------------------------------------------- hybrid Qwen (Gated DeltaNet)
@pytest.fixture(scope="module")
def qwen_ckpt(tmp_path_factory):
    """Tiny Qwen3.5 / Qwen3.6-MoE / Qwen3-Next checkpoints (tests/builders_qwen35.py), built once per module."""
    import builders_qwen35
    made = {}

    def get(variant):
        if variant not in made:
            d = tmp_path_factory.mktemp(variant.replace("-", "_"))
            builders_qwen35.build(variant, d, with_tokenizer=False)
            made[variant] = d
        return made[variant]

    return get


@pytest.mark.parametrize("variant,depth,rollback", [("qwen3_5_text-tied-mtp2", 2, "snapshot"),
                                                    ("qwen3_next", 1, "redecode")])
def test_qwen_speculative_greedy_matches_numpy(qwen_ckpt, variant, depth, rollback):
    """Hybrid Qwen (Gated DeltaNet, gated attention, zero-centred norms, shared-glue MTP) decoded speculatively:
    every rejected draft rolls the device's recurrent layers back, to a per-token snapshot ("snapshot": no copy)
    or to a device copy taken before the verify ("redecode"). Same tokens, acceptance and metered bytes as the
    NumPy engine, and afterwards the same cache state: the next forward gives the same logits as the engine's
    cache and as a fresh forward over the committed tokens (a rollback that kept the rejected drafts' state
    would not)."""
    from test_speculative import ForcedDrafts

    from mtp_ref.speculative import SpeculativeDecoder
    m, cm = both(qwen_ckpt(variant))
    assert m.config.num_mtp_modules >= depth and "linear_attention" in m.config.layer_types
    prompt = [1, 2, 3, 4, 5, 6]
    # random weights draft nothing the trunk accepts: bend the drafts toward the plain greedy tokens at a rate
    # that gives both outcomes (the same bend on both models), so that accepted rows are kept and rejected
    # ones rolled back
    ref = prompt + generate(m, prompt, 12, 0, stop_at_eos=False).token_ids
    decs = [SpeculativeDecoder(ForcedDrafts(x, ref, 0.5, salt=1), depth, rollback=rollback) for x in (m, cm)]
    for d in decs:
        d.prefill(prompt)
        for _ in range(4):
            d.step()
    a, b = decs
    assert b.generated == a.generated, (a.generated, b.generated)
    assert sum(a.stats.hist[:depth]) > 0, a.stats.hist      # at least one draft was rejected: a rollback ran
    assert sum(a.stats.hist[1:]) > 0, a.stats.hist          # and one accepted: the kept rows of a verify were used
    assert b.stats.hist == a.stats.hist and b.stats.redecode_forwards == a.stats.redecode_forwards
    assert b.stats.bytes_read == a.stats.bytes_read
    assert b.cache.length == a.cache.length == len(a.tokens)
    probe = np.array([a.pending, 7])
    _, l1 = m.forward(probe, a.cache)
    _, l2 = cm.forward(probe, b.cache)
    _, l0 = m.forward(np.array(a.tokens + list(probe)), m.new_cache())
    assert rel(l1, l0[-2:]) < 1e-4 and rel(l2, l1) < 1e-4


@pytest.mark.parametrize("variant", ["qwen3_5_moe-vl", "qwen3_next"])
def test_qwen_moe_forward_rollback_matches_numpy(qwen_ckpt, variant):
    """Softmax router, sigmoid-gated shared expert, fused (3.6) or per-expert + in_proj_qkvz/ba (Next) tensors:
    logits of a prefill and a 4-token verify window, then truncate() into that window (snapshot t = 1, then
    t = 0 of the next window) and continue: each time the same as the NumPy engine's RecurrentCache."""
    m, cm = both(qwen_ckpt(variant))
    cn, cc = m.new_cache(), cm.new_cache()
    steps = [([5, 17, 42, 7, 9], None), ([8, 9, 10, 11], None), ([12, 13], 6), ([14], 6)]
    for ids, keep in steps:
        if keep is not None:
            cn.truncate(keep)
            cc.truncate(keep)
        h1, l1 = m.forward(np.array(ids), cn)
        h2, l2 = cm.forward(np.array(ids), cc)
        assert rel(h2, h1) < 1e-4 and rel(l2, l1) < 1e-4, (ids, keep)
        assert cc.length == cn.length
    with pytest.raises(ValueError, match="snapshots"):
        cc.truncate(2)                                       # before the last forward's window
    # checkpoint / restore (rollback="redecode") across two forwards: the saved copy, not a snapshot, comes back
    saved = cn.checkpoint(), cc.checkpoint()
    for ids in ([20, 21], [22]):
        m.forward(np.array(ids), cn)
        cm.forward(np.array(ids), cc)
    cn.restore(saved[0])
    cc.restore(saved[1])
    h1, l1 = m.forward(np.array([23, 24]), cn)
    h2, l2 = cm.forward(np.array([23, 24]), cc)
    assert rel(h2, h1) < 1e-4 and rel(l2, l1) < 1e-4 and cc.length == cn.length
    mn, mc = m.new_mtp_cache(), cm.new_mtp_cache()
    prev = h1[:1].repeat(3, 0) * np.float32(0.5)
    g1, l1 = m.mtp_forward(0, [4, 5, 6], prev, mn, np.array([1, 2, 3]))
    g2, l2 = cm.mtp_forward(0, [4, 5, 6], prev, mc, np.array([1, 2, 3]))
    assert rel(g2, g1) < 1e-4 and rel(l2, l1) < 1e-4
