"""Gemma 4 targets and their MTP assistants against transformers 5.23 (builders_gemma4.py), three cases:
dense31 (31B-style, attention_k_eq_v, multimodal layout, dense-head assistant), moe26 (26B-A4B-style MoE block,
[S, S, F, F] layers, text-only layout), e4b (E4B-style per-layer embeddings, KV-shared layers, double-wide MLP,
centroid-head assistant). Sliding windows (3-4) are smaller than the prompts (12 tokens).

Tolerance: 1e-4 relative (max |a - b| / max |b|), float32 on both sides; measured ~5e-7 (record_error prints
the figures in the summary).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import builders_gemma4 as bg
from mtp_ref import SpeculativeDecoder, generate, load_model
from mtp_ref.cli import main
from mtp_ref.drafters import AssistantDrafter, load_drafter
from mtp_ref.errors import MtpRefError
from mtp_ref.gemma4 import load_assistant, round_to_dtype
from safetensors.numpy import load_file
from mtp_ref.sampling import SamplingParams, probs_from_logits
from test_speculative import _chi2, _chi2_critical

TOL = 1e-4
PROMPT = [5, 9, 2, 17, 3, 99, 12, 7, 7, 31, 8, 2]
CASES = list(bg.CASES)


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def g4(tmp_path_factory):
    """case -> (builders_gemma4.Built, engine target, engine drafter); built once per module."""
    built: dict = {}

    def get(case: str):
        if case not in built:
            b = bg.build(case, tmp_path_factory.mktemp(case))
            m = load_model(b.target_path)
            built[case] = (b, m, load_drafter(b.assistant_path, m))
        return built[case]

    return get


@pytest.mark.parametrize("case", CASES)
def test_target_logits(case, g4, record_error):
    """Whole-prompt forward and token-by-token decoding through the KV cache, against one transformers forward."""
    b, m, _ = g4(case)
    ref, h_ref, _ = bg.oracle_target(b, PROMPT)
    h, logits = m.forward(np.asarray(PROMPT), m.new_cache())
    cache = m.new_cache()
    _, first = m.forward(np.asarray(PROMPT[:5]), cache)
    steps = [m.forward(np.asarray([t]), cache)[1] for t in PROMPT[5:]]
    inc = np.concatenate([first] + steps)
    errs = {"prompt": max_rel(logits, ref), "cached": max_rel(inc, ref), "hidden": max_rel(h[-1], h_ref)}
    for k, e in errs.items():
        record_error(f"gemma4 {case} target {k}", e)
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("case", CASES)
def test_assistant_round(case, g4, record_error):
    """One drafting round of 3 greedy steps, as transformers' Gemma4AssistantCandidateGenerator runs it."""
    b, m, d = g4(case)
    ref_logits, ref_hidden, ref_tokens = bg.oracle_drafts(b, PROMPT, 3)
    from mtp_ref.drafters import drafter_trace
    tr = drafter_trace(d, PROMPT, 3)
    assert tr["drafter.input_ids"].tolist() == ref_tokens[:3]
    assert tr["drafter.positions"].tolist() == [len(PROMPT)] * 3
    e_l, e_h = max_rel(tr["drafter.logits"], np.stack(ref_logits)), max_rel(tr["drafter.hidden"], np.stack(ref_hidden))
    record_error(f"gemma4 {case} drafter logits", e_l)
    record_error(f"gemma4 {case} drafter hidden", e_h)
    assert e_l < TOL and e_h < TOL, (e_l, e_h)
    if b.assistant.config.use_ordered_embeddings:  # centroid head: unselected tokens hold min(selected) - 1
        row = tr["drafter.logits"][0]
        fill = row.min()
        n_sel = b.assistant.config.centroid_intermediate_top_k * (bg.V // b.assistant.config.num_centroids)
        assert (row > fill).sum() == n_sel and np.isclose(fill, row[row > fill].min() - 1.0)


@pytest.mark.parametrize("case", CASES)
def test_generate_with_drafter_is_token_identical(case, g4):
    _, m, d = g4(case)
    plain = generate(m, PROMPT, 14, 0)
    for k in (1, 3):
        spec = generate(m, PROMPT, 14, k, drafter=AssistantDrafter(d.assistant, m))
        assert spec.token_ids == plain.token_ids, k
        assert spec.stats["mtp_forwards"] > 0 and spec.stats["target_forwards"] < 14


def test_generate_with_forced_acceptance_rolls_back_target_cache(g4):
    """An assistant whose drafts are the plain-decoding tokens except at chosen places: accepted and rejected
    rounds both happen, and the output still equals plain decoding (rollback = truncating the target cache)."""
    _, m, d = g4("e4b")
    plain = generate(m, PROMPT, 16, 0).token_ids
    ref = PROMPT + plain

    class Forced(AssistantDrafter):
        def logits(self, dec, j, ext):
            lg = super().logits(dec, j, ext)
            pos = len(ext)                          # the token this step drafts sits at ref[pos]
            want = ref[pos] if pos < len(ref) and (pos * 7) % 5 else (ref[pos] + 1) % bg.V if pos < len(ref) else 0
            out = np.full_like(lg, -10.0)
            out[want] = 10.0
            return out

    dec = SpeculativeDecoder(m, 3, drafter=Forced(d.assistant, m))
    dec.prefill(PROMPT)
    while len(dec.generated) < 16:
        dec.step()
    assert dec.generated[:16] == plain
    accepted = [r.accepted for r in dec.records]
    assert 0 < sum(accepted) and min(accepted) < 3, accepted
    assert dec.cache.length == len(dec.tokens)


def test_rejection_sampling_is_lossless(tmp_path):
    """Tokens 1-3 of a draft->verify cycle with the assistant's q equal plain sampling p (chi-square, 0.001),
    as test_speculative.test_sampling_matches_plain_distribution does for the MTP families (a 16-token vocabulary,
    so that the random assistant's drafts are accepted often enough to matter)."""
    b = bg.build("dense31", tmp_path, seed=3, vocab=16)
    m = load_model(b.target_path)
    d = load_drafter(b.assistant_path, m)
    # temperature 4: the random target and assistant are peaked; flatter, they agree often enough that both
    # acceptances and rejections are frequent (~40% of drafts accepted)
    sp, prompt, R, V = SamplingParams(4.0), [3, 1, 4], 700, 16

    def p_next(seq):
        return probs_from_logits(m.forward(np.asarray(seq), m.new_cache())[1][-1], sp)

    p1 = p_next(prompt)
    p12 = np.stack([p1[a] * p_next(prompt + [a]) for a in range(V)])             # [V, V] joint of (t1, t2)
    p3 = sum(p12[a, c] * p_next(prompt + [a, c]) for a in range(V) for c in range(V) if p12[a, c] > 1e-4)
    p3 = p3 / p3.sum()
    draws, accepted = np.zeros((R, 3), int), 0
    for s in range(R):
        dec = SpeculativeDecoder(m, 2, sampling=sp, seed=s, drafter=AssistantDrafter(d.assistant, m))
        dec.prefill(prompt)
        while len(dec.generated) < 3:
            accepted += dec.step().accepted
        draws[s] = dec.generated[:3]
    assert 0.1 * R < accepted < 1.9 * R, accepted
    stat, df = _chi2(np.bincount(draws[:, 0] * V + draws[:, 1], minlength=V * V).astype(float), p12.ravel())
    assert stat < _chi2_critical(df), (stat, df)
    stat, df = _chi2(np.bincount(draws[:, 2], minlength=V).astype(float), p3)
    assert stat < _chi2_critical(df), (stat, df)


def test_embedding_scale_in_weight_dtype():
    """transformers multiplies by sqrt(H).to(weight dtype); for bf16 releases that is 50.5 for H = 2560."""
    for H in (2560, 3072, 5376, 64):
        for dt, tdt in (("BF16", torch.bfloat16), ("F16", torch.float16), ("F32", torch.float32)):
            assert round_to_dtype(math.sqrt(H), dt) == torch.tensor(H ** 0.5).to(tdt).float().item(), (H, dt)
    assert round_to_dtype(math.sqrt(2560), "BF16") == 50.5


def test_cli_generate_and_trace_with_drafter(g4, tmp_path, capsys):
    b, m, _ = g4("dense31")
    ids = ",".join(map(str, PROMPT))
    assert main(["generate", "--model", str(b.target_path), "--prompt-ids", ids, "--max-new-tokens", "8",
                 "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(["generate", "--model", str(b.target_path), "--drafter", str(b.assistant_path), "--draft", "2",
                 "--prompt-ids", ids, "--max-new-tokens", "8", "--json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["token_ids"] == plain and spec["stats"]["mtp_forwards"] > 0
    out = tmp_path / "t.safetensors"
    assert main(["trace", "--model", str(b.target_path), "--drafter", str(b.assistant_path), "--draft", "2",
                 "--prompt-ids", ids, "--out", str(out)]) == 0
    tr = load_file(out)
    ref_logits, _, ref_tokens = bg.oracle_drafts(b, PROMPT, 2)
    assert tr["drafter.input_ids"].tolist() == ref_tokens[:2]
    assert max_rel(tr["drafter.logits"], np.stack(ref_logits)) < TOL
    assert tr["logits"].shape == (len(PROMPT), bg.V) and "layers.5.out" in tr


def test_bad_inputs_are_one_line_errors(g4, capsys):
    b, _, _ = g4("dense31")
    b2, m2, _ = g4("moe26")
    capsys.readouterr()                       # what building the oracles printed
    assert main(["generate", "--model", str(b.assistant_path), "--prompt-ids", "1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--drafter" in err[0] and "gemma4_assistant" in err[0]
    assert main(["generate", "--model", str(b.target_path), "--drafter", str(b.target_path), "--draft", "2",
                 "--prompt-ids", "1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a drafter" in err[0]
    assert main(["generate", "--model", str(b.target_path), "--draft", "2", "--prompt-ids", "1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MTP modules" in err[0] and "--drafter" in err[0]
    assert main(["generate", "--drafter", str(b.assistant_path), "--draft", "2", "--prompt-ids", "1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()     # the bundled DeepSeek-style model is not a Gemma 4
    assert len(err) == 1 and "drafts for a Gemma 4 target" in err[0]
    # an assistant trained for another target (other hidden size)
    a = load_assistant(b.assistant_path)
    a.backbone_hidden_size = 48
    with pytest.raises(MtpRefError, match="backbone_hidden_size 48"):
        a.check_target(m2)


def test_transformers_kv_sharing_bug_is_still_there():
    """Why builders_gemma4.patched_kv_sharing exists: transformers 5.23 cannot build an assistant config as
    installed, and marks no K/V-storing layer in a target without shared layers. If this fails, transformers fixed
    it and the patch can go."""
    from transformers import Gemma4TextConfig
    a = Gemma4TextConfig(**{k: v for k, v in bg.assistant_config("dense31")["text_config"].items()
                            if k != "model_type"})
    with pytest.raises(ValueError):
        a.kv_sharing_modes
    t = Gemma4TextConfig(**{k: v for k, v in bg.text_config("dense31").items() if k != "model_type"})
    assert "store" not in t.kv_sharing_modes


def test_inspect_recognises_target_and_assistant(g4, capsys):
    b, _, _ = g4("e4b")
    capsys.readouterr()
    assert main(["inspect", str(b.target_path)]) == 0
    out = capsys.readouterr().out
    assert "separate assistant" in out and "embed_vision" in out     # the vision tower is listed, never read
    assert "reads the K/V of layer 3 (sliding) and 2 (full)" in out     # the rule, with KV-shared layers 4, 5
    assert main(["inspect", str(b.assistant_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["model_type"] == "gemma4_assistant" and "target with hidden_size 64 and vocab 256" in s["verdict"]
    assert "centroid-masked head (16 clusters, top 4)" in s["verdict"]


def test_tolerance_separates_conventions(g4):
    """Each convention the oracle tests pin down moves the logits far beyond the 1e-4 tolerance: the assistant's
    window + 1 sliding keys (vs the target's window), the centroid head (vs llama.cpp's dense head), the embedding
    scale sqrt(H)."""
    b, m, d = g4("e4b")
    ref_logits, _, _ = bg.oracle_drafts(b, PROMPT, 1)
    ref_target, _, _ = bg.oracle_target(b, PROMPT)
    a = d.assistant

    def drafter_err():
        from mtp_ref.drafters import drafter_trace
        return max_rel(drafter_trace(AssistantDrafter(a, m), PROMPT, 1)["drafter.logits"][0], ref_logits[0])

    assert drafter_err() < TOL
    errs = {}
    a.sliding_extra_keys = 0
    errs["window"] = drafter_err()
    a.sliding_extra_keys = 1
    a.ordered = False
    errs["dense head"] = drafter_err()
    a.ordered = True
    scale, m.embed_scale = m.embed_scale, np.float32(1.0)
    errs["no sqrt(H)"] = max_rel(m.forward(np.asarray(PROMPT), m.new_cache())[1], ref_target)
    m.embed_scale = scale
    assert drafter_err() < TOL                     # restored
    assert min(errs.values()) > 1e-2, errs
