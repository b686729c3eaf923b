"""`inspect` answers "are my MTP heads still there?" for a full checkpoint, an index without its shards, and a
GGUF file written here with llama.cpp's own `gguf` package in its converter's layout (nextn blocks after the
trunk, `blk.{i}.nextn.*`). The expected answers come from how each file is built, not from the inspector."""

from __future__ import annotations

import json
import shutil
import sys

import gguf
import numpy as np
import pytest

from mtp_ref.cli import main
from mtp_ref.errors import MtpRefError
from mtp_ref.inspect_ckpt import inspect_path, verdict

Q = gguf.GGMLQuantizationType
H, V, FF = 64, 96, 128  # multiples of 32: the Q4_0 / Q8_0 block


def write_gguf(path, *, trunk_blocks=2, nextn_declared=1, nextn_written=1, mtp_type=Q.F16, trunk_type=Q.F16,
               arch="glm4moe"):
    """A tiny GGUF in llama.cpp's layout: block_count = trunk + nextn blocks; each nextn block holds an ordinary
    decoder block plus nextn.{eh_proj, enorm, hnorm, shared_head_norm}. Block 1 of the trunk is MoE (4 experts)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(trunk_blocks + nextn_declared)
    w.add_nextn_predict_layers(nextn_declared)
    w.add_embedding_length(H)
    w.add_vocab_size(V)
    w.add_expert_count(4)
    w.add_expert_used_count(2)

    def mat(name, rows, cols, qtype, experts=None):
        shape = (experts, rows, cols) if experts else (rows, cols)
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype in (Q.F16, Q.F32):
            w.add_tensor(name, gguf.quants.quantize(x, qtype))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    def norm(name):
        w.add_tensor(name, np.ones(H, np.float32))

    def block(i, qtype, moe=False):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            mat(f"blk.{i}.{t}.weight", H, H, qtype)
        if moe:
            mat(f"blk.{i}.ffn_gate_inp.weight", 4, H, Q.F32)
            for t in ("ffn_gate_exps", "ffn_up_exps"):
                mat(f"blk.{i}.{t}.weight", FF, H, qtype, experts=4)
            mat(f"blk.{i}.ffn_down_exps.weight", H, FF, qtype, experts=4)
        else:
            mat(f"blk.{i}.ffn_gate.weight", FF, H, qtype)
            mat(f"blk.{i}.ffn_up.weight", FF, H, qtype)
            mat(f"blk.{i}.ffn_down.weight", H, FF, qtype)

    mat("token_embd.weight", V, H, trunk_type)
    norm("output_norm.weight")
    mat("output.weight", V, H, trunk_type)
    for i in range(trunk_blocks):
        block(i, trunk_type, moe=i == 1)
    for i in range(trunk_blocks, trunk_blocks + nextn_written):
        block(i, mtp_type)
        mat(f"blk.{i}.nextn.eh_proj.weight", H, 2 * H, mtp_type)
        for t in ("enorm", "hnorm", "shared_head_norm"):
            norm(f"blk.{i}.nextn.{t}.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_with_nextn(tmp_path):
    r = inspect_path(write_gguf(tmp_path / "m.gguf"))
    assert r["format"] == "gguf" and r["family"] == "glm4moe"
    assert (r["layers"], r["hidden_size"], r["vocab_size"]) == (2, H, V)
    assert (r["mtp_declared"], r["mtp_present"]) == (1, 1) and not r["warnings"]
    assert r["moe_layers"] == 1 and r["routed_experts"] == 4 and r["experts_per_token"] == 2
    m = r["mtp_modules"][0]
    assert m["prefix"] == "blk.2." and m["tensors"] == 7 + 2 + 4  # block + its 2 norms + nextn glue
    assert m["tensor_types"]["blk.2.nextn.eh_proj.weight"] == "F16"
    assert m["tensor_types"]["blk.2.nextn.enorm.weight"] == "F32"
    # F16 matrices, and the F32 [4, H] router of the MoE block; the norms (1-D) are not counted
    n16 = 2 * V * H + 2 * 4 * H * H + 3 * FF * H + 3 * 4 * FF * H
    assert r["bits_per_weight"] == {"trunk": (16 * n16 + 32 * 4 * H) / (n16 + 4 * H), "mtp": 16.0}
    assert verdict(r) == "MTP heads present: 1 of 1 declared module, stored in F16 like the trunk."


def test_gguf_without_nextn(tmp_path, capsys):
    """What a converter that drops the MTP tensors leaves: the metadata still declares them."""
    f = write_gguf(tmp_path / "dropped.gguf", nextn_declared=1, nextn_written=0)
    assert main(["inspect", str(f), "--json"]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert (r["mtp_declared"], r["mtp_present"]) == (1, 0) and r["mtp_modules"] == []
    assert "blk.2.nextn" in r["warnings"][0] and "WARNING" in cap.err
    assert verdict(r).startswith("MTP heads missing: the config declares 1 module(s) but the file holds 0 modules")
    # and a model that never had MTP: no warning, a plain answer
    r = inspect_path(write_gguf(tmp_path / "plain.gguf", nextn_declared=0, nextn_written=0))
    assert (r["mtp_declared"], r["mtp_present"], r["warnings"]) == (0, 0, [])
    assert verdict(r).startswith("No MTP heads")


def test_gguf_mtp_quantised_below_trunk(tmp_path):
    r = inspect_path(write_gguf(tmp_path / "q4.gguf", mtp_type=Q.Q4_0, trunk_type=Q.Q8_0))
    assert r["mtp_present"] == 1
    assert r["mtp_modules"][0]["tensor_types"]["blk.2.nextn.eh_proj.weight"] == "Q4_0"
    # Q4_0: 18 bytes per 32 weights; Q8_0: 34 bytes per 32 weights
    n8 = 2 * V * H + 2 * 4 * H * H + 3 * FF * H + 3 * 4 * FF * H
    assert r["bits_per_weight"] == {"trunk": (8.5 * n8 + 32 * 4 * H) / (n8 + 4 * H), "mtp": 4.5}
    assert len(r["warnings"]) == 1 and "4.50 bits per weight" in r["warnings"][0]
    assert verdict(r).startswith("MTP heads present (1 of 1 declared), but stored at 4.5 bits per weight")
    # Q8_0 heads on an F16 trunk are what releases ship: no warning
    r = inspect_path(write_gguf(tmp_path / "q8.gguf", mtp_type=Q.Q8_0, trunk_type=Q.F16))
    assert not r["warnings"] and verdict(r).endswith("stored in Q8_0, the trunk mostly in F16.")


@pytest.mark.parametrize("cut", [100, 4000])
def test_gguf_truncated(tmp_path, capsys, cut):
    f = write_gguf(tmp_path / "m.gguf")
    data = f.read_bytes()
    f.write_bytes(data[:cut] if cut < 1000 else data[:-cut])  # inside the header / inside the tensor data
    assert main(["inspect", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "truncated" in err and f.name in err


def test_not_gguf(tmp_path, capsys):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"PK\x03\x04" + bytes(200))
    assert main(["inspect", str(f)]) == 2
    err = capsys.readouterr().err
    assert "not a readable GGUF" in err and len(err.strip().splitlines()) == 1
    g = tmp_path / "notes.txt"
    g.write_text("hello")
    assert main(["inspect", str(g)]) == 2
    assert "not a checkpoint" in capsys.readouterr().err


def test_gguf_package_missing(tmp_path, monkeypatch, capsys):
    f = write_gguf(tmp_path / "m.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    assert main(["inspect", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install gguf" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- safetensors index only

@pytest.fixture()
def release(tiny_checkpoint):
    """The sharded FP8 DeepSeek-V3 layout (MTP layers alone in the last shard, as released)."""
    return tiny_checkpoint("deepseek_v3-fp8")


def _index_only(src, dst, keep_shards=(), drop=lambda name: False):
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    idx = json.loads((src / "model.safetensors.index.json").read_text())
    idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if not drop(k)}
    (dst / "model.safetensors.index.json").write_text(json.dumps(idx))
    for s in keep_shards:
        shutil.copy(src / s, dst / s)
    return dst, sorted(set(idx["weight_map"].values()))


def test_index_only_matches_full(release, tmp_path, capsys):
    full = inspect_path(release)
    d, shards = _index_only(release, tmp_path / "idx")
    assert main(["inspect", str(d), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == set(full)  # the same keys for every kind of input
    assert r["format"] == "safetensors-index" and r["missing_shards"] == shards and r["notes"]
    for k in ("family", "layers", "hidden_size", "moe_layers", "routed_experts", "mtp_declared", "mtp_present"):
        assert r[k] == full[k], k
    assert full["mtp_present"] == full["mtp_declared"] > 0 and not r["warnings"]
    assert [m["tensors"] for m in r["mtp_modules"]] == [m["tensors"] for m in full["mtp_modules"]]
    total = json.loads((release / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert r["checkpoint_bytes"] == total and r["parameters"] is None and r["dtypes"] == {}
    assert "some shards are not here" in verdict(r)


def test_index_only_mtp_dropped(release, tmp_path, capsys):
    L = json.loads((release / "config.json").read_text())["num_hidden_layers"]
    d, _ = _index_only(release, tmp_path / "idx", drop=lambda n: n.startswith(f"model.layers.{L}."))
    assert main(["inspect", str(d)]) == 0
    out = capsys.readouterr().out
    assert "present 0" in out and "WARNING" in out and f"model.layers.{L}." in out
    r = inspect_path(d)
    assert r["mtp_present"] == 0 < r["mtp_declared"] and verdict(r).startswith("MTP heads missing")


def test_one_shard_missing(release, tmp_path, capsys):
    idx = json.loads((release / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(set(idx.values()))
    d, _ = _index_only(release, tmp_path / "part", keep_shards=shards[:-1])
    r = inspect_path(d)
    assert r["missing_shards"] == shards[-1:] and r["mtp_present"] == r["mtp_declared"]
    assert "F8_E4M3" in r["dtypes"] and r["parameters"] is None
    # generation from it: one line naming the missing shard
    code = main(["generate", "--model", str(d), "--prompt-ids", "1,2"])
    err = capsys.readouterr().err
    assert code == 2 and shards[-1] in err and "missing" in err and len(err.strip().splitlines()) == 1


def test_inspect_bad_index(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors.index.json").write_text("{not json")
    assert main(["inspect", str(d)]) == 2
    assert "model.safetensors.index.json" in capsys.readouterr().err
    with pytest.raises(MtpRefError):
        inspect_path(tmp_path / "nowhere")
