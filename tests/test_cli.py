"""The CLI's JSON contract, inspect and trace."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mtp_ref import load_model
from mtp_ref.cli import main
from mtp_ref.safetensors_io import read_header, read_tensor
from mtp_ref.trace import build_trace


def test_generate_json(tiny_checkpoint, capsys):
    path = tiny_checkpoint("deepseek_v3")
    assert main(["generate", "--model", str(path), "--prompt", "Once upon a time", "--max-new-tokens", "9",
                 "--draft", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["stats"]
    assert len(out["token_ids"]) == 9 and isinstance(out["text"], str)
    for key in ("target_forwards", "mtp_forwards", "accepted_length_histogram", "acceptance_per_depth",
                "mean_accepted_length", "tokens_per_target_forward", "seconds"):
        assert key in s
    assert len(s["accepted_length_histogram"]) == 3 and len(s["acceptance_per_depth"]) == 2
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [k for k in s if f"`{k}`" not in readme] == []  # every stats key is documented
    assert s["mtp_forwards"] == 2 * s["target_forwards"]
    assert abs(s["tokens_per_target_forward"] - 9 / s["target_forwards"]) < 1e-9
    # k = 0 gives the same tokens
    assert main(["generate", "--model", str(path), "--prompt", "Once upon a time", "--max-new-tokens", "9",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == out["token_ids"]


def test_inspect(tiny_checkpoint, capsys):
    assert main(["inspect", str(tiny_checkpoint("deepseek_v3-fp8")), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["family"] == "deepseek_v3" and s["mtp_present"] == s["mtp_declared"] > 0
    assert s["fp8_block"] and "F8_E4M3" in s["dtypes"] and not s["warnings"]


def test_trace_file(tiny_checkpoint, tmp_path, capsys):
    path = tiny_checkpoint("glm4_moe")
    out = tmp_path / "trace.safetensors"
    assert main(["trace", "--model", str(path), "--prompt-ids", "3,1,4,1,5,9,2,6", "--out", str(out)]) == 0
    t = {k: read_tensor(v) for k, v in read_header(out).items()}
    m = load_model(path)
    T, V, H = 8, m.config.vocab_size, m.config.hidden_size
    assert t["input_ids"].tolist() == [3, 1, 4, 1, 5, 9, 2, 6]
    assert t["logits"].shape == (T, V) and t["logits"].dtype == np.float32
    for d in range(m.config.num_mtp_modules):
        assert t[f"mtp.{d}.logits"].shape == (T - 1 - d, V)
        assert t[f"mtp.{d}.hidden"].shape == (T - 1 - d, H)
        assert t[f"mtp.{d}.input_ids"].tolist() == [3, 1, 4, 1, 5, 9, 2, 6][d + 1:]
    for i in range(m.config.num_hidden_layers):
        assert t[f"layers.{i}.out"].shape == (T, H)
    # the file holds exactly what build_trace computes
    again = build_trace(m, [3, 1, 4, 1, 5, 9, 2, 6])
    assert set(again) == set(t)
    np.testing.assert_array_equal(again["logits"], t["logits"])


def test_trace_matches_incremental_decoding(tiny_checkpoint):
    """Teacher-forced logits at every position equal token-by-token decoding with the KV cache."""
    m = load_model(tiny_checkpoint("deepseek_v3"))
    ids = [7, 3, 9, 12, 5, 1]
    full = build_trace(m, ids)["logits"]
    cache = m.new_cache()
    rows = [m.forward(np.asarray([t]), cache)[1][0] for t in ids]
    np.testing.assert_allclose(np.stack(rows), full, rtol=1e-4, atol=1e-5)


def test_mla_absorbed_equals_naive(tiny_checkpoint):
    m = load_model(tiny_checkpoint("deepseek_v3"))
    ids = [4, 8, 15, 16, 23, 42]
    m.attn_impl = "naive"
    naive = build_trace(m, ids)
    m.attn_impl = "absorbed"
    absorbed = build_trace(m, ids)
    for k in ("logits", "mtp.0.logits", "mtp.1.logits"):
        err = np.abs(absorbed[k] - naive[k]).max() / np.abs(naive[k]).max()
        assert err < 1e-5, (k, err)


def test_weight_bytes_meter(tiny_checkpoint):
    """One forward reads each dense weight once whatever n is; more tokens can only touch more experts."""
    m = load_model(tiny_checkpoint("qwen3"))
    per_n = []
    for n in (1, 4):
        m.reset_meter()
        m.forward(np.arange(1, n + 1), m.new_cache())
        per_n.append(m.bytes_read)
    emb_row = m.ckpt.stored_nbytes("model.embed_tokens.weight") // m.config.vocab_size
    assert per_n[1] - per_n[0] == 3 * emb_row  # only the extra embedding rows differ for a dense model


def test_streamlit_settings_offline():
    """`streamlit run explainer/app.py` from the repository root reads .streamlit/config.toml: no usage
    statistics, and a fixed address so it does not ask the internet for an external IP."""
    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "explainer/app.py", "--server.port", str(port),
                          "--server.headless", "true"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    out = []
    try:
        t0 = time.time()
        while time.time() - t0 < 60:
            line = p.stdout.readline()
            if not line:
                break
            out.append(line)
            if "URL:" in line:
                break
    finally:
        p.terminate()
        p.wait(timeout=30)
    text = "".join(out)
    assert f"URL: http://localhost:{port}" in text, text
    assert "usage statistics" not in text and "external IP" not in text and "External URL" not in text, text
