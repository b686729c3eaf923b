"""Which kernel CudaModel launches for which shape: one small pure function per op with a choice.

Each answer depends only on shapes and layouts (never on a flag), so the kernel that runs is the one
kernels_cuda/README.md's table names; tests/test_kernels.py checks each rule. The other ops have one
kernel each (kernels.py). Earlier versions live in kernels_cuda/dev/ (the lab).
"""

from __future__ import annotations

from . import kernels as K
from .gemm import GEMM4_NMAX, launch_shape, nmax_for

SMEM_LIMIT = 48 * 1024    # dynamic shared memory a launch may take without opting in


def pick_attention(rep: int, n: int, dk: int, dv: int, ldq: int, qoff: int, ldk: int, ldv: int) -> tuple[str, str]:
    """-> (partial kernel, merge kernel) for n query tokens of `rep` heads per KV group (rep x n query rows).

    v9  tensor-core flash decoding (tf32 MMAs in float32 accuracy): <= 16 rows a group (one MMA tile),
        dk and dv multiples of 32, dv <= 128, 16-byte rows. MiMo-7B / Qwen / GLM decode, draft and
        verify of up to 4 tokens.
    v10 v9 over two MMA row tiles: 17-32 rows a group (<= 16 tokens), the same head-dim and layout rules.
        Verify of 5-8 tokens at 4 heads a group (MiMo-7B / Qwen2 / GLM).
    v4  a block per KV group and run of keys, all of the group's rows at once: <= 32 rows (after
        padding n to its NMAX bucket) whose queries fit 48 KB of shared memory. 5-8-token verifies
        with head dims 256 (Qwen3.5) or not a multiple of 32.
    v3  a block per (head, chunk of keys): any row count, 16-byte key rows. 9-16-token prefill
        chunks, absorbed MLA (all heads share one latent KV row).
    v1  the same blocks with scalar loads: head dims or layouts not a multiple of 4 floats.
    """
    nq = nmax_for(n)
    kv16 = dk % 4 == 0 and ldk % 4 == 0
    q16 = ldq % 4 == 0 and qoff % 4 == 0
    mma = kv16 and q16 and dv % 4 == 0 and ldv % 4 == 0 and dk % 32 == 0 and dv % 32 == 0 and dv <= 128
    if mma and rep * n <= 16:
        return "v9", "attn_combine_v4"
    if mma and rep * n <= 32 and n <= 16 and dv % (32 * K.ATT10_DSPLIT) == 0 and K.attn_v10_smem(dk) <= SMEM_LIMIT:
        return "v10", "attn_combine_v4"
    if kv16 and q16 and rep * nq <= 32 and K.attn_v4_smem(K.attn_v4_qmax(rep, nq), dk) <= SMEM_LIMIT:
        return "v4", "attn_combine_v2"
    if kv16:
        return "v3", "attn_combine_v2"
    return "v1", "attn_combine"


def pick_gemm(fmt: str, n: int, N: int, K_: int, tuning: dict, R: int,
              warps: int) -> tuple[int, int, int | None, int, bool]:
    """-> (NMAX, R rows, U chunks in flight or None for the default, warps per block, SPLITK) of gemm_v2, or of
    gemm_v5 when SPLITK (the block's warps share the R rows and split K).

    Where pick_gemm_v4 declines, a dense GEMM runs gemm_v2 or gemm_v5 (weights streamed once, the token loop
    innermost): bf16 weights take the measured table (gemm.TUNED: gemm_v5 at one token on any shape, per weight
    shape at 2-4 tokens; or autotune's per-weight entries), f32 / FP8 gemm_v2 with the default R and warps."""
    nm = nmax_for(n)
    if fmt == "bf16":
        R, U, warps, splitk = launch_shape(tuning, N, K_, nm, R, warps)
        return nm, R, U, warps, splitk
    return nm, R, None, warps, False


GEMM4_MIN_N = 5           # token counts from which gemm_v4 runs instead of gemm_v2 (see pick_gemm_v4)


def pick_gemm_v4(fmt: str, n: int, N: int, K_: int, ldx: int, lanes: int = 32,
                 swiglu: bool = False) -> tuple[int, int, int] | None:
    """-> (MT m16 tiles a warp, U 32-column blocks in flight, KW split-K warps a block) of gemm_v4, or None: gemm_v2.

    gemm_v4 (tensor cores, x split once per input; its cost is the same for 1..8 tokens) takes bf16 weights at
    GEMM4_MIN_N..8 tokens, where v2's NMAX = 8 bucket is bound by its FMA / L1 work (47-54% of copy on the H200),
    not by HBM. At 1..2 tokens v2 wins on every MiMo-7B weight (H200 lab, 2026-12-03: down 28.1 vs 33.5 us). At 3..4
    tokens v4 wins in the lab on the narrow weights only (o 12.5 vs 13.6 us, down 34.6 vs 37.7 us; gate|up and
    lm_head keep v2), but a rule taking v4 there did not move the whole 7B forward (n = 3 / 4 graph device ms
    5.63 / 5.64 against 5.58 / 5.60 without it, ctx 512, same call), so v2 keeps 1..4 tokens. Needs K % 32 == 0,
    16-byte x rows and 32-lane warps (the simulator's 1-lane GEMMs keep v2). Launch shape: a block owns 16 MT rows, so
    MT sets both how many rows share each x fragment (x bytes read per weight byte: 1.5 / MT) and how many blocks
    there are; MT is the largest that still leaves
    >= 256 blocks (two or more per SM, so that the last wave's tail stays small): 64 rows a warp for N >= 16384
    (gate|up, lm_head), 32 for N >= 8192, else 16 (4096-6144-row weights: 256-384 blocks) with 4 warps a block and
    4 blocks in flight (about 120 registers: 4 blocks an SM). MODE_SWIGLU needs MT even (gate and up tiles)."""
    if fmt != "bf16" or not GEMM4_MIN_N <= n <= GEMM4_NMAX or K_ % 32 or ldx % 4 or lanes != 32:
        return None
    if N >= 16384:
        return 4, 2, 8
    if N >= 8192 or swiglu:
        return 2, 2, 8
    return 1, 4, 4
