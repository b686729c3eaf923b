"""numba-CUDA backend of the mtp_ref engine: `from kernels_cuda.backend import CudaModel`.

gemm.py (skinny GEMM), kernels.py (the other kernels), backend.py (CudaModel), graphs.py (CUDA
graphs), reference.py (NumPy references), intrinsics.py (vector loads, warp helpers; simulator
versions), compile_check.py (compile every kernel for sm_90 without a GPU). See NOTES.md.
"""
