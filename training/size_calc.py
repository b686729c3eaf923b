"""Size calculator for a deepseek_v3-layout model with MTP modules, in the released tensor layout.

    python training/size_calc.py                      # the bundled mtp-tiny config
    python training/size_calc.py path/to/config.json  # any deepseek_v3 config.json

Prints the parameter count and bf16 file size of every part (the file carries the [V,H] matrix
2 + 2*D times: embed_tokens, lm_head and one embed_tokens + shared_head.head per MTP module), and
the multiply-accumulates per decoded token of the trunk and of one MTP module (active experts only),
which bound the best wall-clock speedup MTP drafting can give on a memory-bound CPU.
"""

from __future__ import annotations

import json
import sys


def attn_params(c) -> int:
    H, nh = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    n = 0
    if c.get("q_lora_rank"):
        n += c["q_lora_rank"] * H + c["q_lora_rank"] + nh * qk * c["q_lora_rank"]
    else:
        n += nh * qk * H
    n += (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * H + c["kv_lora_rank"]
    n += nh * (c["qk_nope_head_dim"] + c["v_head_dim"]) * c["kv_lora_rank"]
    n += H * nh * c["v_head_dim"]
    return n


def mlp_params(H, inter) -> int:
    return 3 * H * inter


def block_params(c, moe: bool) -> tuple[int, int]:
    """(stored parameters, active parameters per token) of one decoder block."""
    H = c["hidden_size"]
    a = attn_params(c) + 2 * H
    if not moe:
        m = mlp_params(H, c["intermediate_size"])
        return a + m, a + m
    E, I = c["n_routed_experts"], c["moe_intermediate_size"]
    shared = mlp_params(H, I * c["n_shared_experts"])
    routed = E * mlp_params(H, I)
    gate = E * H + E
    active = mlp_params(H, I) * c["num_experts_per_tok"] + shared + gate
    return a + shared + routed + gate, a + active


def report(c) -> dict:
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    D = c.get("num_nextn_predict_layers", 0)
    k_dense = c["first_k_dense_replace"]
    dense, dense_act = block_params(c, moe=False)
    moe, moe_act = block_params(c, moe=True)
    vh = V * H
    trunk = k_dense * dense + (L - k_dense) * moe
    mtp_glue = vh * 2 + 2 * H + 2 * H * H + H  # embed copy, head copy, enorm, hnorm, eh_proj, shared_head.norm
    total = 2 * vh + H + trunk + D * (mtp_glue + moe)
    fp32_bias = (L - k_dense + D) * c["n_routed_experts"]  # e_score_correction_bias stays float32
    size = 2 * total + 2 * fp32_bias
    trunk_macs = k_dense * dense_act + (L - k_dense) * moe_act + vh
    mtp_macs = 2 * H * H + moe_act + vh
    r = {
        "params_total": total,
        "params_vocab_copies": (2 + 2 * D) * vh,
        "params_trunk_blocks": trunk,
        "params_per_moe_block": moe,
        "params_dense_block": dense,
        "params_per_mtp_module": mtp_glue + moe,
        "file_bytes_bf16": size,
        "trunk_macs_per_token": trunk_macs,
        "mtp_module_macs_per_token": mtp_macs,
        "mtp_to_trunk_cost_ratio": mtp_macs / trunk_macs,
    }
    return r


def main():
    if len(sys.argv) > 1:
        c = json.load(open(sys.argv[1]))
    else:
        sys.path.insert(0, __file__.rsplit("/", 1)[0])
        from train_tiny_mtp import MODEL_CONFIG as c
    for k, v in report(c).items():
        print(f"{k:28s} {v:>14,.3f}" if isinstance(v, float) else f"{k:28s} {v:>14,d}")
    # the speedup ceiling: k drafts cost k MTP forwards; with acceptance a per depth (i.i.d.),
    # expected tokens per round is 1 + a + a^2 + ... + a^k
    r = report(c)
    for a in (0.7, 0.8, 0.9):
        row = []
        for k in (1, 2, 3):
            tok = sum(a ** i for i in range(k + 1))
            row.append(f"k={k}: {tok / (1 + k * r['mtp_to_trunk_cost_ratio']):.2f}x")
        print(f"memory-bound speedup bound at acceptance {a}: " + "  ".join(row))


if __name__ == "__main__":
    main()
