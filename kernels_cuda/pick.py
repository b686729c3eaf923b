"""Which kernel CudaModel launches for which shape: one small pure function per op with a choice.

Each answer depends only on shapes and layouts (never on a flag), so the kernel that runs is the one
kernels_cuda/README.md's table names; tests/test_kernels.py checks each rule. The other ops have one
kernel each (kernels.py). Earlier versions live in kernels_cuda/dev/ (the lab).
"""

from __future__ import annotations

from . import kernels as K
from .gemm import launch_shape, nmax_for

SMEM_LIMIT = 48 * 1024    # dynamic shared memory a launch may take without opting in


def pick_attention(rep: int, n: int, dk: int, dv: int, ldq: int, qoff: int, ldk: int, ldv: int) -> tuple[str, str]:
    """-> (partial kernel, merge kernel) for n query tokens of `rep` heads per KV group (rep x n query rows).

    v9  tensor-core flash decoding (tf32 MMAs in float32 accuracy): <= 16 rows a group (one MMA tile),
        dk and dv multiples of 32, dv <= 128, 16-byte rows. MiMo-7B / Qwen / GLM decode, draft and
        verify of up to 4 tokens.
    v4  a block per KV group and run of keys, all of the group's rows at once: <= 32 rows (after
        padding n to its NMAX bucket) whose queries fit 48 KB of shared memory. 5-8-token verifies
        of 4-head groups, head dims 256.
    v3  a block per (head, chunk of keys): any row count, 16-byte key rows. 9-16-token prefill
        chunks, absorbed MLA (all heads share one latent KV row).
    v1  the same blocks with scalar loads: head dims or layouts not a multiple of 4 floats.
    """
    nq = nmax_for(n)
    kv16 = dk % 4 == 0 and ldk % 4 == 0
    q16 = ldq % 4 == 0 and qoff % 4 == 0
    if (kv16 and q16 and dv % 4 == 0 and ldv % 4 == 0 and dk % 32 == 0 and dv % 32 == 0 and dv <= 128
            and rep * n <= 16):
        return "v9", "attn_combine_v4"
    if kv16 and q16 and rep * nq <= 32 and K.attn_v4_smem(K.attn_v4_qmax(rep, nq), dk) <= SMEM_LIMIT:
        return "v4", "attn_combine_v2"
    if kv16:
        return "v3", "attn_combine_v2"
    return "v1", "attn_combine"


def pick_gemm(fmt: str, n: int, N: int, K_: int, tuning: dict, R: int, warps: int) -> tuple[int, int, int | None, int]:
    """-> (NMAX, R rows per warp, U chunks in flight or None for the default, warps per block) of gemm_v2.

    Every dense GEMM runs gemm_v2 (weights streamed once, the token loop innermost); only its launch shape
    depends on the shape: bf16 weights take the measured table (gemm.TUNED_H100, or autotune's per-weight
    entries), f32 / FP8 the default R and warps."""
    nm = nmax_for(n)
    if fmt == "bf16":
        R, U, warps = launch_shape(tuning, N, K_, nm, R, warps)
        return nm, R, U, warps
    return nm, R, None, warps
