"""Number formats against torch (independent implementation): e4m3, bf16, block dequant."""

from __future__ import annotations

import numpy as np
import torch

from mtp_ref.safetensors_io import E4M3_TABLE, bf16_to_f32, f32_to_bf16_bits, read_header, read_tensor, save_file
from mtp_ref.weights import dequant_fp8_block


def test_e4m3_table_matches_torch():
    ref = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    nan = np.isnan(ref)
    assert nan.sum() == 2 and np.array_equal(nan, np.isnan(E4M3_TABLE))
    np.testing.assert_array_equal(E4M3_TABLE[~nan], ref[~nan])
    assert E4M3_TABLE[~nan].max() == 448.0


def test_bf16_roundtrip_matches_torch():
    x = np.random.default_rng(0).normal(0, 3, 10000).astype(np.float32)
    x[:4] = [0.0, -0.0, 1e-40, 65504.0]
    ref = torch.from_numpy(x).to(torch.bfloat16)
    assert np.array_equal(f32_to_bf16_bits(x), ref.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(bf16_to_f32(f32_to_bf16_bits(x)), ref.float().numpy())


def test_block_dequant_partial_edges():
    rng = np.random.default_rng(1)
    M, N = 300, 130                                      # 3 x 2 blocks, both edges partial
    w = rng.normal(size=(M, N)).astype(np.float32)
    s = rng.uniform(0.5, 2, size=(3, 2)).astype(np.float32)
    out = dequant_fp8_block(w, s, (128, 128))
    for i, j in [(0, 0), (127, 127), (128, 128), (299, 129), (256, 0), (5, 129)]:
        assert out[i, j] == w[i, j] * s[i // 128, j // 128]


def test_safetensors_roundtrip_and_torch_reader(tmp_path):
    from safetensors.torch import load_file
    rng = np.random.default_rng(2)
    t = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
         "c": rng.normal(size=(4, 4)).astype(np.float32)}
    f = tmp_path / "x.safetensors"
    save_file(t, f, bf16={"c"})
    back = {k: read_tensor(v) for k, v in read_header(f).items()}
    np.testing.assert_array_equal(back["a"], t["a"])
    np.testing.assert_array_equal(back["b"], t["b"])
    theirs = load_file(str(f))                           # the reference reader agrees on every tensor
    assert theirs["c"].dtype == torch.bfloat16
    np.testing.assert_array_equal(theirs["c"].float().numpy(), back["c"])
    np.testing.assert_array_equal(theirs["a"].numpy(), back["a"])
