"""The lab: kernel versions CudaModel does not launch, kept with their reference, validation and timing.

    attention.py      attention partials v2, v5, v6, v7 and the attn_combine_v3 merge
    gemm.py           skinny GEMM v1 (naive) and v3 (tensor cores, 5..8 tokens)
    rope_qk_cache.py  rope + cache write v1 (a block per token)

`python -m kernels_cuda.dev.<op>` validates each version against kernels_cuda/reference.py and, on a GPU, times it
(CUDA graph replays); tests/test_kernels.py checks each one too (one simulator case each, every case on a GPU).
The production kernels and the rules that pick them: kernels_cuda/README.md, kernels_cuda/pick.py.
"""
