"""Reference values for the bandwidth page: hardware datasheets, released model configs, weight formats.

Every number here is copied from the source named next to it, or derived from such numbers by
the arithmetic written in `derivation`. Nothing in chapters 1 and 6 uses a number that is not either here
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
    memory_gb: float = 0.0   # device memory, GB (1e9 bytes); unified memory: the largest configuration sold
    memory_source: str = ""  # where memory_gb comes from


HARDWARE: list[Hardware] = [
    Hardware("NVIDIA H100 SXM", 3350, 989,
             "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 3.35 TB/s HBM3; BF16 Tensor Core 1,979 TFLOP/s with sparsity",
             "dense = 1,979 / 2",
             80, "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): GPU memory 80 GB"),
    Hardware("NVIDIA H200 SXM", 4800, 989,
             "NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s HBM3e; BF16 Tensor Core 1,979 TFLOP/s with sparsity",
             "dense = 1,979 / 2",
             141, "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): GPU memory 141 GB"),
    Hardware("NVIDIA RTX 3090", 936, 71,
             "NVIDIA Ampere GA102 GPU architecture whitepaper: 936 GB/s GDDR6X; FP16 Tensor 71 TFLOP/s dense with FP32 accumulate",
             "FP32 accumulate, as BF16 GEMMs use",
             24, "NVIDIA Ampere GA102 GPU architecture whitepaper (GeForce RTX 3090): 24 GB GDDR6X"),
    Hardware("NVIDIA RTX 4090", 1008, 165.2,
             "NVIDIA Ada GPU architecture whitepaper: 1,008 GB/s GDDR6X; FP16 Tensor 165.2 TFLOP/s dense with FP32 accumulate",
             "FP32 accumulate, as BF16 GEMMs use",
             24, "NVIDIA Ada GPU architecture whitepaper (GeForce RTX 4090): 24 GB GDDR6X"),
    Hardware("NVIDIA RTX 5090", 1792, 209.5,
             "NVIDIA RTX Blackwell GPU architecture whitepaper: 1,792 GB/s GDDR7; FP16 Tensor 209.5 TFLOP/s dense with FP32 accumulate",
             "FP32 accumulate, as BF16 GEMMs use",
             32, "NVIDIA RTX Blackwell GPU architecture whitepaper (GeForce RTX 5090): 32 GB GDDR7"),
    Hardware("NVIDIA RTX PRO 6000 Blackwell", 1792, 500,
             "NVIDIA RTX PRO 6000 Blackwell Workstation Edition datasheet: 1,792 GB/s GDDR7; 4,000 AI TOPS (FP4, sparse)",
             "16-bit dense = 4,000 / 2 (sparsity) / 4 (FP4 -> FP16)",
             96, "NVIDIA RTX PRO 6000 Blackwell Workstation Edition datasheet: 96 GB GDDR7 with ECC"),
    Hardware("Apple M4 Pro (20-core GPU)", 273, 8.1,
             "Apple newsroom, 30 Oct 2024 (M4 Pro): 273 GB/s unified memory bandwidth. Apple publishes no FLOP/s",
             "estimate: 20 GPU cores x 128 ALUs x 2 FLOP x 1.58 GHz (third-party clock measurement)",
             64, "Apple newsroom, 30 Oct 2024 (M4 Pro): up to 64 GB unified memory, shared by CPU and GPU"),
    Hardware("Apple M4 Max (40-core GPU)", 546, 16.2,
             "Apple newsroom, 30 Oct 2024 (M4 Max, 16-core CPU / 40-core GPU): 546 GB/s. Apple publishes no FLOP/s",
             "estimate: 40 GPU cores x 128 ALUs x 2 FLOP x 1.58 GHz (third-party clock measurement)",
             128, "Apple newsroom, 30 Oct 2024 (M4 Max): up to 128 GB unified memory, shared by CPU and GPU"),
    Hardware("AMD Ryzen AI Max+ 395 (Strix Halo)", 256, 59.4,
             "AMD product page: 256-bit LPDDR5X-8000; Radeon 8060S, 40 CUs, up to 2.9 GHz",
             "256 bit / 8 x 8,000 MT/s = 256 GB/s; 40 CUs x 512 FP16 FLOP/clock (RDNA 3.5 dual-issue) x 2.9 GHz",
             128, "AMD Ryzen AI Max+ 395 product page: up to 128 GB LPDDR5X, shared by CPU and GPU"),
]


class MixedRate(float):
    """Bytes per weight of a release that stores its routed experts in another format than its other weights.

    The float value is the rate of every weight but the routed experts (so a page that prints or multiplies it
    sees that rate); `experts` is the routed experts' rate. roofline.rates() reads both, and every byte count in
    roofline.py goes through it. Printed with a format spec, it shows both rates."""

    experts: float

    def __new__(cls, rate: float, experts: float):
        obj = super().__new__(cls, rate)
        obj.experts = float(experts)
        return obj

    def __format__(self, spec: str) -> str:
        return f"{float.__format__(self, spec)} ({float.__format__(self.experts, spec)} for routed experts)"

    def __reduce__(self):
        return MixedRate, (float(self), self.experts)


@dataclass(frozen=True)
class Precision:
    name: str
    bytes_per_param: float   # a MixedRate where routed experts are stored otherwise
    source: str


PRECISIONS: dict[str, Precision] = {
    "bf16": Precision("bf16", 2.0, "16-bit float"),
    "fp8": Precision("fp8", 1.0 + 4 / (128 * 128),
                     "e4m3 + one float32 scale per 128x128 block (DeepSeek-V3 README_WEIGHTS.md)"),
    "q8": Precision("q8", 34 / 32, "GGUF Q8_0: 32 int8 + one fp16 scale = 34 bytes per 32 weights (ggml-common.h block_q8_0)"),
    "q4": Precision("q4", 18 / 32, "GGUF Q4_0: 32 4-bit + one fp16 scale = 18 bytes per 32 weights (ggml-common.h block_q4_0)"),
    # DeepSeek-V3.2's release is "fp8" above: e4m3 + a float32 weight_scale_inv per 128x128 block (the released
    # FP8 form tests/builders_dsa.py reproduces)
    "fp8 + mxfp4 experts": Precision(
        "fp8 + mxfp4 experts", MixedRate(1.0 + 1 / (128 * 128), 17 / 32),
        "DeepSeek-V4 release: linears e4m3 + one E8M0 (1-byte) scale per 128x128 block (config.json "
        "quantization_config: scale_fmt ue8m0, weight_block_size [128, 128]); routed experts MXFP4 (expert_dtype "
        "fp4): 32 e2m1 values in 16 bytes + one E8M0 scale = 17 bytes per 32 weights (mtp_ref/weights.py)"),
}
KV_BYTES = 2.0  # KV cache entries kept in 16-bit


# Released configs: the config.json keys (the text model's, for multimodal releases) that the engine's
# config_from_dict reads to build a ModelConfig; the cost model counts their tensors with
# mtp_ref.families, the same lists the checkpoint validator checks. "source", "published" and
# "note" are not config.json keys. Keys without a listed source keep transformers' defaults there.
MODELS: dict[str, dict] = {
    "DeepSeek-V3": {
        "source": "deepseek-ai/DeepSeek-V3 config.json (same values in DeepSeek-R1's), as reproduced in full in "
                  "NVIDIA-NeMo/Megatron-Bridge tests/unit_tests/models/deepseek/test_deepseek_bridges.py; "
                  "MTP layout: DeepSeek-V3 README_WEIGHTS.md",
        "published": "671B main + 14B MTP; 37B activated (DeepSeek-V3 README)",
        "model_type": "deepseek_v3",
        "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "num_hidden_layers": 61,
        "first_k_dense_replace": 3, "moe_layer_freq": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1, "moe_intermediate_size": 2048,
        "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "norm_topk_prob": True,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 163840, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "attention_bias": False, "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "DeepSeek-V3.2": {
        "source": "deepseek-ai/DeepSeek-V3.2 config.json as quoted whole in a public model report (the original file, "
                  "with its FP8 quantization_config); the same keys in the re-upload "
                  "github.com/haoyangli-amd/DeepSeek-V3.2-exp-ptpc config.json (commit 098cd61, V3.2-Exp; "
                  "quantization_config replaced there); no indexer_types: every layer runs its own indexer",
        "published": "685B parameters (transformers DeepseekV32 documentation: 'keeps the same 685B-parameter MoE "
                     "backbone'); no first-party active count",
        "model_type": "deepseek_v32",
        "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "num_hidden_layers": 61,
        "first_k_dense_replace": 3, "moe_layer_freq": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1, "moe_intermediate_size": 2048,
        "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "topk_method": "noaux_tc", "norm_topk_prob": True, "rms_norm_eps": 1e-6, "max_position_embeddings": 163840,
        "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 4096, "type": "yarn"},
        "index_head_dim": 128, "index_n_heads": 64, "index_topk": 2048,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
        "attention_bias": False, "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "DeepSeek-V4-Flash": {
        "source": "deepseek-ai/DeepSeek-V4-Flash config.json (resolve/main, 1749 bytes) as copied verbatim in "
                  "github.com/aeonmindai/arc memory/mission/wave13-AH-config.md (commit 611d236), section "
                  "'1.1 config.json — VERBATIM' (an earlier revision, quoted elsewhere, lacks expert_dtype); "
                  "compress_ratios: the 43 layers, then the MTP block's",
        "published": "284B total, 13B active (the Hugging Face model card's table, as quoted in antirez/ds4 "
                     "MODEL_CARD.md)",
        "note": "its weights are FP8 with MXFP4 routed experts: the 'fp8 + mxfp4 experts' precision is the release's",
        "model_type": "deepseek_v4",
        "vocab_size": 129280, "hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64,
        "num_key_value_heads": 1, "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_groups": 8,
        "o_lora_rank": 1024, "attention_bias": False, "sliding_window": 128,
        "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0], "compress_rope_theta": 160000,
        "index_head_dim": 128, "index_n_heads": 64, "index_topk": 512,
        "hc_eps": 1e-6, "hc_mult": 4, "hc_sinkhorn_iters": 20,
        "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 6, "moe_intermediate_size": 2048,
        "num_hash_layers": 3, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc",
        "norm_topk_prob": True, "swiglu_limit": 10.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 1048576,
        "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 65536,
                         "type": "yarn"},
        "expert_dtype": "fp4",
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
        "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "GLM-4.5-Air": {
        "source": "zai-org/GLM-4.5-Air config.json, as reproduced in THUDM/slime scripts/models/glm4.5-106B-A12B.sh "
                  "and NVIDIA-NeMo/Megatron-Bridge tests/unit_tests/models/glm/test_glm45_bridge.py (use_qk_norm "
                  "false for Air); model_type and the MTP layer (index 46): GLM-4.5 model card / transformers glm4_moe",
        "published": "106B total, 12B active (GLM-4.5 README)",
        "model_type": "glm4_moe",
        "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 10944, "num_hidden_layers": 46,
        "first_k_dense_replace": 1, "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128,
        "attention_bias": True, "use_qk_norm": False, "partial_rotary_factor": 0.5, "rope_theta": 1000000.0,
        "max_position_embeddings": 131072, "n_routed_experts": 128, "num_experts_per_tok": 8, "n_shared_experts": 1,
        "moe_intermediate_size": 1408, "routed_scaling_factor": 2.5, "tie_word_embeddings": False,
        "num_nextn_predict_layers": 1,
    },
    "MiMo-7B": {
        "source": "XiaomiMiMo/MiMo-7B-Base config.json, as reproduced in NVIDIA-NeMo/Megatron-Bridge "
                  "tests/unit_tests/models/mimo/test_mimo_bridge.py (head_dim = hidden / heads: the file has no key)",
        "published": "7B (MiMo README)",
        "model_type": "mimo",
        "vocab_size": 151680, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "attention_bias": True,
        "rms_norm_eps": 1e-5, "rope_theta": 640000.0, "max_position_embeddings": 32768,
        "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "Qwen3.6-27B": {
        "source": "Qwen/Qwen3.6-27B config.json text_config (model_type qwen3_5_text), full copy in a public "
                  "model report; layer_types: 3 linear_attention + 1 full_attention, repeated (full_attention_interval 4); "
                  "module shapes from transformers Qwen3_5Model",
        "published": "27B (model name)",
        "model_type": "qwen3_5_text",
        "vocab_size": 248320, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 64,
        "full_attention_interval": 4,
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 16,
        "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256,
        "attn_output_gate": True, "linear_num_key_heads": 16, "linear_num_value_heads": 48,
        "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
        "partial_rotary_factor": 0.25, "rope_theta": 10000000.0, "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "mtp_num_hidden_layers": 1,
    },
    "GLM-4.7-Flash": {
        "source": "zai-org/GLM-4.7-Flash config.json, as quoted in a vLLM glm4_moe_lite config-registry unit test "
                  "(_glm4_moe_lite_min_config: every key below but num_nextn_predict_layers and scoring_func) and "
                  "copied whole in huggingface.co/naaviii/glm-code-next-4b config.json (all of them; "
                  "num_nextn_predict_layers 1 also in the re-saved quantised copies, e.g. dphnAI/flash-beta1); "
                  "rope_interleave absent: transformers' default (true)",
        "published": "31B on the Hugging Face model page (safetensors, MTP layer included); 30B-A3B (model name)",
        "model_type": "glm4_moe_lite",
        "vocab_size": 154880, "hidden_size": 2048, "intermediate_size": 10240, "moe_intermediate_size": 1536,
        "num_hidden_layers": 47, "first_k_dense_replace": 1, "num_attention_heads": 20, "num_key_value_heads": 20,
        "q_lora_rank": 768, "kv_lora_rank": 512, "qk_nope_head_dim": 192, "qk_rope_head_dim": 64, "v_head_dim": 256,
        "n_routed_experts": 64, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1,
        "routed_scaling_factor": 1.8, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 202752, "rope_theta": 1000000, "rope_scaling": None,
        "partial_rotary_factor": 1.0, "attention_bias": False, "tie_word_embeddings": False,
        "num_nextn_predict_layers": 1,
    },
    "GLM-5": {
        "source": "zai-org/GLM-5 config.json, as copied whole in huggingface.co/1663adr/GLM-5/raw/main/config.json "
                  "(the same values in unsloth/GLM-5's copy); no indexer_types / index_topk_freq: every layer runs "
                  "its own indexer (transformers GlmMoeDsaConfig's rule)",
        "published": "744B total, 40B active (transformers GlmMoeDsa documentation)",
        "model_type": "glm_moe_dsa",
        "vocab_size": 154880, "hidden_size": 6144, "intermediate_size": 12288, "moe_intermediate_size": 2048,
        "moe_layer_freq": 1, "num_hidden_layers": 78, "first_k_dense_replace": 3, "num_attention_heads": 64,
        "num_key_value_heads": 64, "q_lora_rank": 2048, "kv_lora_rank": 512, "qk_nope_head_dim": 192,
        "qk_rope_head_dim": 64, "v_head_dim": 256, "n_routed_experts": 256, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "topk_method": "noaux_tc", "norm_topk_prob": True, "rms_norm_eps": 1e-5, "max_position_embeddings": 202752,
        "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"}, "rope_interleave": True,
        "index_topk": 2048, "index_n_heads": 32, "index_head_dim": 128, "indexer_rope_interleave": True,
        "attention_bias": False, "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
    },
    "MiniMax-M2": {
        "source": "huggingface.co/MiniMaxAI/MiniMax-M2 config.json (revision fbd8a14, the transformers-5 form: "
                  "rope_parameters with partial_rotary_factor 0.5); use_qk_norm / qk_norm_type from the file's "
                  "earlier form, as the MiniMax-M2.x copies keep it (amd/MiniMax-M2.7-BF16 config.json): "
                  "transformers' MiniMaxM2Attention always has q_norm / k_norm",
        "published": "230B total, 10B active (SGLang MiniMax-M2 documentation, from the model card)",
        "note": "config.json declares use_mtp with 3 MTP modules, but the release ships no MTP weights: nothing to draft with",
        "model_type": "minimax_m2",
        "vocab_size": 200064, "hidden_size": 3072, "intermediate_size": 1536, "num_hidden_layers": 62,
        "num_attention_heads": 48, "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 256,
        "num_experts_per_tok": 8, "rms_norm_eps": 1e-6, "max_position_embeddings": 196608,
        "rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 5000000.0, "rope_type": "default"},
        "use_qk_norm": True, "qk_norm_type": "per_layer", "tie_word_embeddings": False,
        "use_mtp": True, "num_mtp_modules": 3, "mtp_transformer_layers": 1,
    },
    "Gemma 4 31B": {
        "source": "google/gemma-4-31B-it config.json text_config (values as verified in a public architecture "
                  "note and THUDM/slime scripts/models/gemma4-31B.sh; layer_types 5 sliding + 1 full, repeated, "
                  "as third-party loaders' fixtures of the release list them)",
        "published": "30.7B text backbone (model card)",
        "note": "drafts with a separate assistant model (gemma4_assistant), not counted here",
        "model_type": "gemma4_text",
        "vocab_size": 262144, "hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 60,
        "sliding_window_pattern": 6, "sliding_window": 1024,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 10,
        "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 256, "num_global_key_value_heads": 4,
        "global_head_dim": 512, "attention_k_eq_v": True, "num_kv_shared_layers": 0,
        "hidden_size_per_layer_input": 0, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
}
