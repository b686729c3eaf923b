"""Reference values for the bandwidth page: hardware datasheets, released model configs, weight formats.

Every number here is copied from the source named next to it, or derived from such numbers by
the arithmetic written in `derivation`. Nothing on page 1 uses a number that is not either here
or computed from the loaded checkpoint / a measurement on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    name: str
    bandwidth_gbs: float     # peak memory bandwidth, GB/s (1e9 bytes/s)
    tflops: float            # peak dense 16-bit matrix throughput, TFLOP/s
    source: str              # where the numbers come from
    derivation: str = ""     # arithmetic applied to the source numbers, if any


HARDWARE: list[Hardware] = [
    Hardware("NVIDIA H100 SXM", 3350, 989,
             "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 3.35 TB/s HBM3; BF16 Tensor Core 1,979 TFLOP/s with sparsity",
             "dense = 1,979 / 2"),
    Hardware("NVIDIA H200 SXM", 4800, 989,
             "NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s HBM3e; BF16 Tensor Core 1,979 TFLOP/s with sparsity",
             "dense = 1,979 / 2"),
    Hardware("NVIDIA RTX 3090", 936, 71,
             "NVIDIA Ampere GA102 GPU architecture whitepaper: 936 GB/s GDDR6X; FP16 Tensor 71 TFLOP/s dense with FP32 accumulate",
             "FP32 accumulate, as BF16 GEMMs use"),
    Hardware("NVIDIA RTX 4090", 1008, 165.2,
             "NVIDIA Ada GPU architecture whitepaper: 1,008 GB/s GDDR6X; FP16 Tensor 165.2 TFLOP/s dense with FP32 accumulate",
             "FP32 accumulate, as BF16 GEMMs use"),
    Hardware("NVIDIA RTX 5090", 1792, 209.5,
             "NVIDIA RTX Blackwell GPU architecture whitepaper: 1,792 GB/s GDDR7; FP16 Tensor 209.5 TFLOP/s dense with FP32 accumulate",
             "FP32 accumulate, as BF16 GEMMs use"),
    Hardware("NVIDIA RTX PRO 6000 Blackwell", 1792, 500,
             "NVIDIA RTX PRO 6000 Blackwell Workstation Edition datasheet: 1,792 GB/s GDDR7; 4,000 AI TOPS (FP4, sparse)",
             "16-bit dense = 4,000 / 2 (sparsity) / 4 (FP4 -> FP16)"),
    Hardware("Apple M4 Pro (20-core GPU)", 273, 8.1,
             "Apple newsroom, 30 Oct 2024 (M4 Pro): 273 GB/s unified memory bandwidth. Apple publishes no FLOP/s",
             "estimate: 20 GPU cores x 128 ALUs x 2 FLOP x 1.58 GHz (third-party clock measurement)"),
    Hardware("Apple M4 Max (40-core GPU)", 546, 16.2,
             "Apple newsroom, 30 Oct 2024 (M4 Max, 16-core CPU / 40-core GPU): 546 GB/s. Apple publishes no FLOP/s",
             "estimate: 40 GPU cores x 128 ALUs x 2 FLOP x 1.58 GHz (third-party clock measurement)"),
    Hardware("AMD Ryzen AI Max+ 395 (Strix Halo)", 256, 59.4,
             "AMD product page: 256-bit LPDDR5X-8000; Radeon 8060S, 40 CUs, up to 2.9 GHz",
             "256 bit / 8 x 8,000 MT/s = 256 GB/s; 40 CUs x 512 FP16 FLOP/clock (RDNA 3.5 dual-issue) x 2.9 GHz"),
]


@dataclass(frozen=True)
class Precision:
    name: str
    bytes_per_param: float
    source: str


PRECISIONS: dict[str, Precision] = {
    "bf16": Precision("bf16", 2.0, "16-bit float"),
    "fp8": Precision("fp8", 1.0 + 4 / (128 * 128),
                     "e4m3 + one float32 scale per 128x128 block (DeepSeek-V3 README_WEIGHTS.md)"),
    "q8": Precision("q8", 34 / 32, "GGUF Q8_0: 32 int8 + one fp16 scale = 34 bytes per 32 weights (ggml-common.h block_q8_0)"),
    "q4": Precision("q4", 18 / 32, "GGUF Q4_0: 32 4-bit + one fp16 scale = 18 bytes per 32 weights (ggml-common.h block_q4_0)"),
}
KV_BYTES = 2.0  # KV cache entries kept in 16-bit


# Released configs: only the fields the cost model reads, with the config.json key names.
MODELS: dict[str, dict] = {
    "DeepSeek-V3": {
        "family": "deepseek_v3",
        "source": "deepseek-ai/DeepSeek-V3 config.json (same values in DeepSeek-R1's); "
                  "tensor shapes in shared/reference/mtp_families.md 1.1",
        "published": "671B main + 14B MTP; 37B activated (DeepSeek-V3 README)",
        "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "num_hidden_layers": 61,
        "first_k_dense_replace": 3, "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256,
        "num_experts_per_tok": 8, "n_shared_experts": 1, "moe_intermediate_size": 2048,
        "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "GLM-4.5-Air": {
        "family": "glm4_moe",
        "source": "zai-org/GLM-4.5-Air config.json, as reproduced in THUDM/slime scripts/models/glm4.5-106B-A12B.sh "
                  "and NVIDIA Megatron-Bridge GLM 4.5 docs",
        "published": "106B total, 12B active (GLM-4.5 README)",
        "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 10944, "num_hidden_layers": 46,
        "first_k_dense_replace": 1, "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128,
        "attention_bias": True, "n_routed_experts": 128, "num_experts_per_tok": 8, "n_shared_experts": 1,
        "moe_intermediate_size": 1408, "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "MiMo-7B": {
        "family": "mimo",
        "source": "XiaomiMiMo/MiMo-7B-Base config.json, as reproduced in NVIDIA-NeMo/Megatron-Bridge "
                  "tests/unit_tests/models/mimo/test_mimo_bridge.py",
        "published": "7B (MiMo README)",
        "vocab_size": 151680, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "attention_bias": True,
        "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "Qwen3.6-27B": {
        "family": "qwen3_5",
        "source": "Qwen/Qwen3.6-27B config.json text_config (model_type qwen3_5_text), full copy in a public "
                  "model report; module shapes from transformers Qwen3_5Model",
        "published": "27B (model name)",
        "vocab_size": 248320, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 64,
        "full_attention_interval": 4, "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256,
        "attn_output_gate": True, "linear_num_key_heads": 16, "linear_num_value_heads": 48,
        "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
        "tie_word_embeddings": False, "mtp_num_hidden_layers": 1,
    },
    "Gemma 4 31B": {
        "family": "gemma4",
        "source": "google/gemma-4-31B-it config.json text_config (values as verified in a public architecture "
                  "note and THUDM/slime scripts/models/gemma4-31B.sh)",
        "published": "30.7B text backbone (model card)",
        "vocab_size": 262144, "hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 60,
        "sliding_window_pattern": 6, "sliding_window": 1024, "num_attention_heads": 32,
        "num_key_value_heads": 16, "head_dim": 256, "num_global_key_value_heads": 4, "global_head_dim": 512,
        "attention_k_eq_v": True, "tie_word_embeddings": True,
        "mtp_note": "drafts with a separate assistant model (gemma4_assistant), not counted here",
    },
}
