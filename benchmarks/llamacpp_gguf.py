"""Write bench_model7b's random MiMo-7B-shape weights as a qwen2 GGUF, for llama.cpp's llama-bench.

The trunk of MiMo-7B is a Qwen2 model (q/k/v biases, NEOX rope), so llama.cpp runs it as `qwen2`; the MTP
layer is left out (llama-bench decodes plainly). The weights are the SAME tensors bench_model7b measures
(make_weights, same seed, generated on the GPU): matrices stay bf16 (uint16 bits, raw_dtype=BF16), norm
weights and biases are upcast to float32 exactly, as llama.cpp's own converter stores 1-D tensors. No
tokenizer: `tokenizer.ggml.model = "no_vocab"` with `qwen2.vocab_size`, so llama.cpp makes 151680 dummy
tokens and llama-bench feeds random ids, as it does for any model.

    python benchmarks/llamacpp_gguf.py OUT.gguf [--layers 36]     # needs a GPU (torch) and the gguf package
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks.bench_model7b import MIMO_7B, make_weights  # noqa: E402
from mtp_ref.config import config_from_dict  # noqa: E402
from mtp_ref.families import family_for  # noqa: E402

# released (Hugging Face) name -> llama.cpp name; {i} is the layer
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def gguf_name(name: str, n_layers: int) -> str | None:
    """llama.cpp's name of a released tensor, None for the ones it does not read (the MTP layer)."""
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and int(parts[2]) < n_layers:
        key = ".".join(parts[:2] + ["{i}"] + parts[3:])
        if key in GGUF_NAMES:
            return GGUF_NAMES[key].format(i=parts[2])
    return None


def write_gguf(path: str, cfg, weights: dict) -> dict:
    import gguf
    import torch
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name("random MiMo-7B shapes (mtp-ref bench_model7b, seed 0)")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope.theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("no_vocab")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    n = skipped = 0
    nbytes = 0
    for name, t in weights.items():
        g = gguf_name(name, cfg.num_hidden_layers)
        if g is None:
            skipped += 1
            continue
        if t.dim() == 1:
            a = t.float().cpu().numpy()                                        # [D] f32, exact upcast of bf16
            w.add_tensor(g, a)
        else:
            a = t.contiguous().view(torch.int16).cpu().numpy().view(np.uint16)  # [N, K] bf16 bits
            w.add_tensor(g, a, raw_dtype=gguf.GGMLQuantizationType.BF16)
        n += 1
        nbytes += a.nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"tensors": n, "skipped": skipped, "bytes": nbytes}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=36)
    a = ap.parse_args()
    t0 = time.time()
    cfg = config_from_dict(dict(MIMO_7B, num_hidden_layers=a.layers), "MiMo-7B shapes")
    spec = family_for(cfg)
    cfg.num_mtp_modules = 1
    W = make_weights(cfg, spec)
    info = write_gguf(a.out, cfg, W)
    print(f"wrote {a.out}: {info['tensors']} tensors ({info['skipped']} MTP tensors left out), "
          f"{info['bytes'] / 1e9:.2f} GB in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
