"""Low-level device helpers: 16-byte vector loads and bf16 / fp8 bit decoding.

On a real GPU these are numba `@intrinsic`s that emit one PTX instruction each
(`ld.global.nc.L1::no_allocate.v4.u32`, `ld.global.v4.f32`, a bitcast). Under the CUDA
simulator (NUMBA_ENABLE_CUDASIM=1) the same names are plain Python functions with the same
results, so every kernel runs unchanged on the CPU in CI.
"""

from __future__ import annotations

import os

import numpy as np

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def factory(make):
    """Mark a kernel factory: the kernel it returns remembers (module, factory, args), so that
    compile_check.py can rebuild it and compile it for sm_90 on a machine without a GPU."""
    def wrapped(*args):
        k = make(*args)
        try:
            k._mtp_src = (make.__module__, make.__name__, tuple(args))
        except AttributeError:
            pass
        return k

    wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__ = make.__name__, make.__doc__, make
    return wrapped

if SIM:
    import struct

    from . import simfast

    simfast.enable()

    def _np(a):
        """The NumPy array behind a simulator device array (element access through the simulator's
        wrappers costs microseconds; these helpers run millions of times in CI)."""
        while hasattr(a, "_item") or hasattr(a, "_ary"):
            a = a._item if hasattr(a, "_item") else a._ary
        return a

    def ld_u32x4(a, i):
        """16 bytes at &a[i] (any 1-D array, i in elements of a) as four uint32 words."""
        a = _np(a)
        return tuple(int(v) for v in a[i: i + 16 // a.itemsize].view(np.uint32))

    def ld_u32x2(a, i):
        """8 bytes at &a[i] as two uint32 words."""
        a = _np(a)
        return tuple(int(v) for v in a[i: i + 8 // a.itemsize].view(np.uint32))

    def ld_f32x4(a, i):
        a = _np(a)
        v = a[i: i + 4]
        return v[0], v[1], v[2], v[3]

    _pack, _unpack = struct.Struct("<I").pack, struct.Struct("<f").unpack

    def bits_f32(v):
        """Reinterpret the low 32 bits of an integer as a float32."""
        return np.float32(_unpack(_pack(int(v) & 0xFFFFFFFF))[0])

    def f32_bits(v):
        """The 32 bits of a float32 as an integer."""
        return struct.unpack("<I", struct.pack("<f", float(v)))[0]

    def ld_sh4(a, i):
        """4 floats at &a[i] of a shared-memory float32 array (i % 4 == 0)."""
        a = _np(a)
        return a[i], a[i + 1], a[i + 2], a[i + 3]

    def st_sh4(a, i, x0, x1, x2, x3):
        """a[i : i + 4] = x0 .. x3 in a shared-memory float32 array (i % 4 == 0)."""
        a = _np(a)
        a[i], a[i + 1], a[i + 2], a[i + 3] = x0, x1, x2, x3

else:
    from llvmlite import ir
    from numba import types
    try:
        from numba.cuda.extending import intrinsic
    except ImportError:  # older numba-cuda
        from numba.core.extending import intrinsic

    def _elem_ptr(context, builder, aty, arr, idx):
        ary = context.make_array(aty)(context, builder, value=arr)
        base = ary.data                                   # element pointer
        return builder.gep(base, [idx])

    def _vec_load(n_words, ty, asm):
        @intrinsic
        def impl(typingctx, a, i):
            if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(i, types.Integer)):
                return None
            sig = types.UniTuple(ty, n_words)(a, i)

            def codegen(context, builder, sig, args):
                aty, ity = sig.args
                arr, idx = args
                idx = context.cast(builder, idx, ity, types.intp)
                ptr = _elem_ptr(context, builder, aty, arr, idx)
                lt = context.get_value_type(ty)
                ptr = builder.bitcast(ptr, lt.as_pointer())
                ret = ir.LiteralStructType([lt] * n_words)
                fnty = ir.FunctionType(ret, [lt.as_pointer()])
                cons = ",".join(["=r" if ty == types.uint32 else "=f"] * n_words) + ",l"
                call = builder.call(ir.InlineAsm(fnty, asm, cons), [ptr])
                vals = [builder.extract_value(call, k) for k in range(n_words)]
                return context.make_tuple(builder, sig.return_type, vals)

            return sig, codegen

        return impl

    # weights: read-only for the whole kernel, streamed once -> non-coherent path, skip L1
    ld_u32x4 = _vec_load(4, types.uint32, "ld.global.nc.L1::no_allocate.v4.u32 {$0, $1, $2, $3}, [$4];")
    ld_u32x2 = _vec_load(2, types.uint32, "ld.global.nc.L1::no_allocate.v2.u32 {$0, $1}, [$2];")
    # activations: re-read by every warp of a block -> keep them in L1
    ld_f32x4 = _vec_load(4, types.float32, "ld.global.v4.f32 {$0, $1, $2, $3}, [$4];")

    # shared memory: numba hands kernels a generic pointer to it; cast it back to the shared address space and
    # access 4 floats as one aligned vector, so that ptxas emits one 16-byte LDS / STS with [register + constant]
    # addressing (four scalar accesses are not merged: the index's alignment is not provable; an inline-asm
    # cvta + ld.shared kept every distinct address live in registers). i % 4 == 0.
    def _sh_vec_ptr(context, builder, aty, arr, idx, ity):
        idx = context.cast(builder, idx, ity, types.intp)
        ptr = _elem_ptr(context, builder, aty, arr, idx)
        vec = ir.VectorType(ir.FloatType(), 4)
        return builder.bitcast(builder.addrspacecast(ptr, ir.FloatType().as_pointer(3)), vec.as_pointer(3))

    @intrinsic
    def ld_sh4(typingctx, a, i):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32
                and isinstance(i, types.Integer)):
            return None
        sig = types.UniTuple(types.float32, 4)(a, i)

        def codegen(context, builder, sig, args):
            v = builder.load(_sh_vec_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1]), align=16)
            vals = [builder.extract_element(v, ir.Constant(ir.IntType(32), k)) for k in range(4)]
            return context.make_tuple(builder, sig.return_type, vals)

        return sig, codegen

    @intrinsic
    def st_sh4(typingctx, a, i, x0, x1, x2, x3):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32
                and isinstance(i, types.Integer)):
            return None
        sig = types.void(a, i, x0, x1, x2, x3)

        def codegen(context, builder, sig, args):
            ptr = _sh_vec_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
            v = ir.Constant(ir.VectorType(ir.FloatType(), 4), None)
            for k in range(4):
                x = context.cast(builder, args[2 + k], sig.args[2 + k], types.float32)
                v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), k))
            builder.store(v, ptr, align=16)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def f32_bits(typingctx, v):
        if not isinstance(v, types.Float):
            return None
        sig = types.uint32(v)

        def codegen(context, builder, sig, args):
            x = context.cast(builder, args[0], sig.args[0], types.float32)
            return builder.bitcast(x, ir.IntType(32))

        return sig, codegen

    @intrinsic
    def bits_f32(typingctx, v):
        if not isinstance(v, types.Integer):
            return None
        sig = types.float32(v)

        def codegen(context, builder, sig, args):
            (x,) = args
            w = sig.args[0].bitwidth
            i32 = ir.IntType(32)
            x = builder.trunc(x, i32) if w > 32 else (builder.zext(x, i32) if w < 32 else x)
            return builder.bitcast(x, ir.FloatType())

        return sig, codegen


# ----------------------------------------------------------------------------- warp exchange
# shfl_xor(v, m): the value of lane (lane ^ m) of the same warp; syncwarp(): warp barrier;
# warp_sum / warp_max: the reduction over the warp, every lane gets it. All lanes of the warp must
# call them. On the GPU blocks have a multiple of 32 threads; the simulator also runs blocks of
# fewer threads (one "warp" of that many lanes), which is much faster there.
if SIM:
    import threading

    from numba import cuda

    _warp_lock = threading.Lock()
    _warps: dict = {}

    class _Warp:
        def __init__(self, size):
            self.size = size
            self.barrier = threading.Barrier(size)
            self.vals = [None] * size

    def _warp():
        """The simulated warp of this thread: min(32, threads per block) lanes."""
        t, b = cuda.threadIdx, cuda.blockIdx
        d = cuda.blockDim
        nthreads = d.x * d.y * d.z
        lin = t.x + d.x * (t.y + d.y * t.z)
        size = min(32, nthreads)
        key = (b.x, b.y, b.z, lin // 32, size)
        with _warp_lock:
            w = _warps.get(key)
            if w is None:
                w = _warps[key] = _Warp(size)
        return w, lin % 32

    @cuda.jit(device=True)
    def shfl_xor(v, m):
        w, lane = _warp()
        w.vals[lane] = v
        w.barrier.wait()
        r = w.vals[lane ^ m]
        w.barrier.wait()
        return r

    @cuda.jit(device=True)
    def syncwarp():
        w, _ = _warp()
        if w.size > 1:
            w.barrier.wait()

else:
    from numba import cuda

    @cuda.jit(device=True, inline=True)
    def shfl_xor(v, m):
        return cuda.shfl_xor_sync(0xFFFFFFFF, v, m)

    @cuda.jit(device=True, inline=True)
    def syncwarp():
        cuda.syncwarp(0xFFFFFFFF)


if SIM:
    def _warp_reduce(v, op):
        """op over the lanes of the simulated warp (one exchange, 2 barriers, fixed order)."""
        w, lane = _warp()
        if w.size == 1:
            return v
        w.vals[lane] = v
        w.barrier.wait()
        s = w.vals[0]
        for j in range(1, w.size):
            s = op(s, w.vals[j])
        w.barrier.wait()
        return s

    @cuda.jit(device=True)
    def warp_sum(v):
        """Sum over the 32 lanes."""
        return _warp_reduce(v, lambda a, b: a + b)

    @cuda.jit(device=True)
    def warp_max(v):
        return _warp_reduce(v, max)

    @cuda.jit(device=True)
    def warp_argmax(v, j):
        """(max, its first index) over the lanes (one exchange: the shuffle version's 10 shuffles are 20 barriers of
        32 Python threads here)."""
        return _warp_reduce((v, j), lambda a, b: b if (b[0] > a[0] or (b[0] == a[0] and b[1] < a[1])) else a)

else:
    @cuda.jit(device=True, inline=True)
    def warp_sum(v):
        v += shfl_xor(v, 16)
        v += shfl_xor(v, 8)
        v += shfl_xor(v, 4)
        v += shfl_xor(v, 2)
        v += shfl_xor(v, 1)
        return v

    @cuda.jit(device=True, inline=True)
    def warp_max(v):
        v = max(v, shfl_xor(v, 16))
        v = max(v, shfl_xor(v, 8))
        v = max(v, shfl_xor(v, 4))
        v = max(v, shfl_xor(v, 2))
        v = max(v, shfl_xor(v, 1))
        return v

    @cuda.jit(device=True, inline=True)
    def warp_argmax(v, j):
        """(max, its first index) over the 32 lanes (every lane gets the result); ties keep the lower index, like
        np.argmax."""
        for m in (16, 8, 4, 2, 1):
            ov = shfl_xor(v, m)
            oj = shfl_xor(j, m)
            if ov > v or (ov == v and oj < j):
                v = ov
                j = oj
        return v, j


# ----------------------------------------------------------------------------- tensor cores
# mma_tf32(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3): one warp-wide
# `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`, D [16, 8] = A [16, 8] B [8, 8] + C, every lane of the warp
# calling it with its fragments. Lane = 4 g + t (g = lane // 4, t = lane % 4) holds
#   a0 = A[g, t], a1 = A[g + 8, t], a2 = A[g, t + 4], a3 = A[g + 8, t + 4];  b0 = B[t, g], b1 = B[t + 4, g];
#   c0 / d0 = C[g, 2t], c1 = C[g, 2t + 1], c2 = C[g + 8, 2t], c3 = C[g + 8, 2t + 1]
# (PTX ISA, "Matrix fragments for mma.m16n8k8", .tf32). A and B are float32 values of which the tensor core reads the
# tf32 part (sign, exponent, the top 10 mantissa bits): the simulator drops the low 13 bits likewise, then
# accumulates in float64 and rounds once.
TF32_MASK = 0xFFFFE000

# mma_bf16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3): one warp-wide
# `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`, D [16, 8] = A [16, 16] B [16, 8] + C. The a / b registers
# are uint32 words of two bf16 (the lower k in the low half): lane = 4 g + t holds
#   a0 = A[g, 2t : 2t + 2], a1 = A[g + 8, 2t : 2t + 2], a2 = A[g, 2t + 8 : 2t + 10], a3 = A[g + 8, 2t + 8 : 2t + 10];
#   b0 = B[2t : 2t + 2, g], b1 = B[2t + 8 : 2t + 10, g];  c / d as mma_tf32
# (PTX ISA, "Matrix fragments for mma.m16n8k16", .bf16). bf16 products are exact in float32.
if SIM:
    def _tf32(v):
        return (float(bits_f32(f32_bits(v) & TF32_MASK)),)

    def _bf16_pair(wd):
        wd = int(wd) & 0xFFFFFFFF
        return float(bits_f32((wd & 0xFFFF) << 16)), float(bits_f32(wd & 0xFFFF0000))

    def _mma_sim(name, unpack, H, a, b, c):
        """The warp-wide m16n8k(8 H) MMA of the calling lane's fragments: each lane posts its a / b registers
        unpacked into H values each (unpack), then computes its D: A[row, k] sits in lane 4 (row % 8) + (k % 4H) // H,
        register (row >= 8) + 2 (k >= 4H), value k % H; B[k, col] in lane 4 col + (k % 4H) // H, register (k >= 4H)."""
        w, lane = _warp()
        if w.size != 32:
            raise RuntimeError(f"{name} needs a full warp of 32 lanes")
        w.vals[lane] = ([unpack(x) for x in a], [unpack(x) for x in b])
        w.barrier.wait()
        g, t = lane // 4, lane % 4
        d = []
        for row, col, cc in ((g, 2 * t, c[0]), (g, 2 * t + 1, c[1]), (g + 8, 2 * t, c[2]), (g + 8, 2 * t + 1, c[3])):
            acc = float(cc)
            for k in range(8 * H):
                kk = (k % (4 * H)) // H
                acc += (w.vals[4 * (row % 8) + kk][0][(1 if row >= 8 else 0) + (2 if k >= 4 * H else 0)][k % H]
                        * w.vals[4 * col + kk][1][1 if k >= 4 * H else 0][k % H])
            d.append(np.float32(acc))
        w.barrier.wait()
        return d[0], d[1], d[2], d[3]

    @cuda.jit(device=True)
    def mma_tf32(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return _mma_sim("mma_tf32", _tf32, 1, (a0, a1, a2, a3), (b0, b1), (c0, c1, c2, c3))

    @cuda.jit(device=True)
    def mma_bf16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return _mma_sim("mma_bf16", _bf16_pair, 2, (a0, a1, a2, a3), (b0, b1), (c0, c1, c2, c3))

else:
    def _mma(shape_types, ab_type):
        """The intrinsic of one `mma.sync.aligned.<shape_types>` (float32 accumulators): a / b operands of ab_type
        (float32 values bitcast to their bits, or uint32 words) in "r" registers, c / d in "f" registers."""
        kind = types.Float if ab_type == types.float32 else types.Integer
        asm = (f"mma.sync.aligned.{shape_types} {{$0, $1, $2, $3}}, {{$4, $5, $6, $7}}, {{$8, $9}}, "
               "{$10, $11, $12, $13};")

        @intrinsic
        def impl(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            args = (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
            if not (all(isinstance(x, kind) for x in args[:6]) and all(isinstance(x, types.Float) for x in args[6:])):
                return None
            sig = types.UniTuple(types.float32, 4)(*args)

            def codegen(context, builder, sig, args):
                i32, f32 = ir.IntType(32), ir.FloatType()
                ab = [context.cast(builder, x, t, ab_type) for x, t in zip(args[:6], sig.args[:6])]
                if ab_type == types.float32:
                    ab = [builder.bitcast(x, i32) for x in ab]
                ops = ab + [context.cast(builder, x, t, types.float32) for x, t in zip(args[6:], sig.args[6:])]
                fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
                # side effects: a warp-collective instruction must not be moved into a branch or dropped
                call = builder.call(ir.InlineAsm(fnty, asm, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", side_effect=True), ops)
                vals = [builder.extract_value(call, k) for k in range(4)]
                return context.make_tuple(builder, sig.return_type, vals)

            return sig, codegen

        return impl

    mma_tf32 = _mma("m16n8k8.row.col.f32.tf32.tf32.f32", types.float32)
    mma_bf16 = _mma("m16n8k16.row.col.f32.bf16.bf16.f32", types.uint32)
