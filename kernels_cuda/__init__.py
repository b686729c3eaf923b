"""numba-CUDA backend of the mtp_ref engine: `from kernels_cuda.backend import CudaModel`.

Production: gemm.py (skinny GEMM v2), kernels.py (the other kernels), pick.py (which kernel runs for which
shape), backend.py (CudaModel), graphs.py (CUDA graphs), reference.py (NumPy references), intrinsics.py
(vector loads, warp helpers, MMAs; simulator versions), autotune.py (GEMM launch shapes), compile_check.py
(compile every kernel for sm_90 without a GPU). The lab: dev/ (earlier versions, each validated and timed by
its `__main__`). README.md: which kernel runs for which shape, and the current numbers.
"""
