"""Numba CPU kernels (``@njit``, parallel, cached); the twin of ``fastconv/_kernels.pyx``.

Same names, arguments, loop order and comments as the Cython kernels. Where
the Cython code passes a pointer, this code passes a flat array and an offset
into it (``dst, dst0``). Arrays come validated, C-contiguous and allocated by
the caller (``fastconv.backends.numba``).

Threads: everything runs on Numba's threads. The matrix products are called
from inside the parallel loops, one single-threaded GEMM per task (the caller
pins BLAS to one thread), through the same BLAS function scipy exposes to
Cython (``scipy.linalg.cython_blas``), so that BLAS's own pool never competes
with Numba's for the cores.

No ``fastmath``: it would assume away NaN and infinity.
"""


import llvmlite.binding
import llvmlite.ir
import numba
import numpy as np
from numba import prange
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array

from .backends import blas_address

njit = numba.njit(cache=True, nogil=True)
pnjit = numba.njit(cache=True, nogil=True, parallel=True)
# Fused multiply-adds (no other fast-math liberty) where an inner loop is a sum of
# products: gcc fuses them by default in the Cython twin.
njit_fma = numba.njit(cache=True, nogil=True, fastmath={"contract"})
# and, for a dot product, sums in any order, and a zero's sign is no matter: without
# "nsz" LLVM's vectorised sum ran a matrix-vector product at 23 GB/s, with it at 34
njit_sum = numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc", "nsz"})
# Inlined into the caller in Numba's IR, where LLVM left a function that runs once per
# plane out of line: as calls, _stride1_windows and its _edge_windows cost GoogLeNet's
# 832x7x7 3x3 max pooling 43-60 us against 31-39 inlined (_flat_taps stays a call:
# inlined into _strided_windows, its stride-2 pass ran 1.5x slower)
injit = numba.njit(cache=True, nogil=True, inline="always")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

@njit
def _ceil_div(a, b):
    """ceil(a / b) for b > 0 and any sign of a."""
    return -(-a // b)


@njit
def _clip(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


# Indices in the innermost loops are cast to unsigned: Numba then skips its
# negative-index wraparound test, which blocks vectorisation (a direct
# convolution ran at 3.8 GFLOP/s with it, 22 without). Every such index is
# non-negative by construction.
_u = numba.uint64


# Outputs o in [first, end) read inside the input, 0 <= o*stride + offset < size.
# Peeling the outputs that read padding off both ends leaves an inner loop
# without bounds checks.
@njit
def _first_inside(offset, stride, n_out):
    return _clip(_ceil_div(-offset, stride), 0, n_out)


@njit
def _end_inside(offset, stride, size, first, n_out):
    return _clip(_ceil_div(size - offset, stride), first, n_out)


# The compiled code calls BLAS by a symbol name that is bound to the address
# at import, not by an address baked into it, so that Numba can cache it.
for _name in ("sgemm", "dgemm", "sgemv", "dgemv"):
    llvmlite.binding.add_symbol(f"fastconv_{_name}", blas_address(_name))
_sgemm = numba.types.ExternalFunction("fastconv_sgemm",
                                      numba.types.void(*[numba.types.voidptr] * 13))
_dgemm = numba.types.ExternalFunction("fastconv_dgemm",
                                      numba.types.void(*[numba.types.voidptr] * 13))
_sgemv = numba.types.ExternalFunction("fastconv_sgemv",
                                      numba.types.void(*[numba.types.voidptr] * 11))
_dgemv = numba.types.ExternalFunction("fastconv_dgemv",
                                      numba.types.void(*[numba.types.voidptr] * 11))


@njit
def _gemm(trans_a, trans_b, m, n, k, alpha, a, a0, lda, b, b0, ldb, beta, c, c0, ldc):
    """Row-major ``C (m x n) = alpha op(A) op(B) + beta C`` through column-major BLAS.

    Row-major memory read column-major is the transpose, so BLAS computes
    ``C^T = op(B)^T op(A)^T``: the operands swap places and keep their flags.
    A, B and C are flat arrays, their matrices starting at a0, b0 and c0.
    """
    flags = np.empty(2, np.uint8)
    flags[0] = ord("T") if trans_a else ord("N")
    flags[1] = ord("T") if trans_b else ord("N")
    ints = np.empty(6, np.int32)
    ints[0], ints[1], ints[2], ints[3], ints[4], ints[5] = n, m, k, ldb, lda, ldc
    scalars = np.empty(2, c.dtype)
    scalars[0], scalars[1] = alpha, beta
    if c.itemsize == 4:
        _sgemm(flags[1:].ctypes, flags.ctypes, ints.ctypes, ints[1:].ctypes, ints[2:].ctypes,
               scalars.ctypes, b[b0:].ctypes, ints[3:].ctypes, a[a0:].ctypes, ints[4:].ctypes,
               scalars[1:].ctypes, c[c0:].ctypes, ints[5:].ctypes)
    else:
        _dgemm(flags[1:].ctypes, flags.ctypes, ints.ctypes, ints[1:].ctypes, ints[2:].ctypes,
               scalars.ctypes, b[b0:].ctypes, ints[3:].ctypes, a[a0:].ctypes, ints[4:].ctypes,
               scalars[1:].ctypes, c[c0:].ctypes, ints[5:].ctypes)


@njit
def _row_sums(rows, n, alpha, a, a0, ones, y, y0):
    """y[y0 + r] = alpha * the sum of row r of row-major A (rows x n), flat in a from a0,
    for r < rows: BLAS's matrix-vector product of A, read column-major as its
    transpose, with ones."""
    flags = np.empty(1, np.uint8)
    flags[0] = ord("T")
    ints = np.empty(3, np.int32)
    ints[0], ints[1], ints[2] = n, rows, 1
    scalars = np.empty(2, y.dtype)
    scalars[0], scalars[1] = alpha, 0
    if y.itemsize == 4:
        _sgemv(flags.ctypes, ints.ctypes, ints[1:].ctypes, scalars.ctypes, a[a0:].ctypes,
               ints.ctypes, ones.ctypes, ints[2:].ctypes, scalars[1:].ctypes, y[y0:].ctypes,
               ints[2:].ctypes)
    else:
        _dgemv(flags.ctypes, ints.ctypes, ints[1:].ctypes, scalars.ctypes, a[a0:].ctypes,
               ints.ctypes, ones.ctypes, ints[2:].ctypes, scalars[1:].ctypes, y[y0:].ctypes,
               ints[2:].ctypes)


# ---------------------------------------------------------------------------
# im2col / col2im on a block of output rows
# ---------------------------------------------------------------------------
# A block covers output rows oh0 .. oh0+rows-1 of one image. Its lowered
# matrix has a row per (c, i, j) and a column per output pixel of the block,
# (r, ow) -> r*OW + ow. These helpers are serial: the callers parallelise
# over rows, planes or blocks.

@njit
def _lower_row(x, n, c, i, j, dst, dst0, oh0, rows, OW, sh, sw, pt, pl, dh, dw):
    """dst[dst0 + r*OW + ow] = x[n, c, (oh0+r)*sh - pt + i*dh, ow*sw - pl + j*dw], 0 in the padding."""
    H, W = x.shape[2], x.shape[3]
    iw0 = j * dw - pl
    ow0 = _first_inside(iw0, sw, OW)
    ow1 = _end_inside(iw0, sw, W, ow0, OW)
    if sw == 1:     # contiguous copies, which the compiler vectorises
        # a loop nest of their own: with the stride tested inside the row loop, as
        # the general case below does, LLVM's code lowered AlexNet's conv2 in 0.57
        # ms rather than 0.37 (gcc's in the Cython twin did not mind)
        for r in range(rows):
            ih = (oh0 + r) * sh - pt + i * dh
            d = dst0 + r * OW
            if ih < 0 or ih >= H:
                for ow in range(OW):
                    dst[_u(d + ow)] = 0
            else:
                xrow = x[n, c, ih]
                for ow in range(ow0):
                    dst[_u(d + ow)] = 0
                for ow in range(ow0, ow1):
                    dst[_u(d + ow)] = xrow[_u(ow + iw0)]
                for ow in range(ow1, OW):
                    dst[_u(d + ow)] = 0
        return
    for r in range(rows):
        ih = (oh0 + r) * sh - pt + i * dh
        if ih < 0 or ih >= H:
            for ow in range(OW):
                dst[dst0 + ow] = 0
        else:
            xrow = x[n, c, ih]
            for ow in range(ow0):
                dst[dst0 + ow] = 0
            if sw == 2:     # constant strides: gcc vectorises them with shuffles (LLVM: gathers)
                for ow in range(ow0, ow1):
                    dst[_u(dst0 + ow)] = xrow[_u(ow * 2 + iw0)]
            elif sw == 4:
                for ow in range(ow0, ow1):
                    dst[_u(dst0 + ow)] = xrow[_u(ow * 4 + iw0)]
            else:
                for ow in range(ow0, ow1):
                    dst[_u(dst0 + ow)] = xrow[_u(ow * sw + iw0)]
            for ow in range(ow1, OW):
                dst[dst0 + ow] = 0
        dst0 += OW


# A strided lowering reads every sw-th input pixel, which compilers turn into
# gathers. Each input row the block needs is therefore split once into its sw
# phases, with the padding as zeros: phase p holds padded columns p, p + sw,
# p + 2*sw, ... Tap j reads padded columns ow*sw + j*dw, which are the
# consecutive entries (j*dw) // sw + ow of phase (j*dw) % sw, so every lowered
# row becomes a contiguous copy, and the kh*kw taps share one strided pass.

@njit
def _split_phases(row, W, sw, pl, Q, dst, dst0, pitch):
    """dst[dst0 + p*pitch + q] = row[q*sw + p - pl] for p < sw and q < Q, 0 off the row."""
    for p in range(sw):
        d = dst0 + p * pitch
        q0 = _first_inside(p - pl, sw, Q)
        q1 = _end_inside(p - pl, sw, W, q0, Q)
        for q in range(q0):
            dst[d + q] = 0
        if sw == 1:
            for q in range(q0, q1):
                dst[_u(d + q)] = row[_u(q - pl)]
        elif sw == 2:   # constant strides: gcc vectorises them with shuffles (LLVM: gathers)
            for q in range(q0, q1):
                dst[_u(d + q)] = row[_u(q * 2 + p - pl)]
        elif sw == 4:
            for q in range(q0, q1):
                dst[_u(d + q)] = row[_u(q * 4 + p - pl)]
        else:
            for q in range(q0, q1):
                dst[_u(d + q)] = row[_u(q * sw + p - pl)]
        for q in range(q1, Q):
            dst[d + q] = 0


@njit
def _merge_phases(src, src0, W, sw, pl, Q, row):
    """row[q*sw + p - pl] += src[src0 + p*Q + q] where that is on the row: _split_phases' adjoint."""
    for p in range(sw):
        q0 = _first_inside(p - pl, sw, Q)
        q1 = _end_inside(p - pl, sw, W, q0, Q)
        if sw == 2:
            for q in range(q0, q1):
                row[_u(q * 2 + p - pl)] += src[_u(src0 + p * Q + q)]
        elif sw == 4:
            for q in range(q0, q1):
                row[_u(q * 4 + p - pl)] += src[_u(src0 + p * Q + q)]
        else:
            for q in range(q0, q1):
                row[_u(q * sw + p - pl)] += src[_u(src0 + p * Q + q)]


@njit
def _unlower_plane(src, src0, ld, x, n, c, oh0, rows, OW, kh, kw, sh, sw, pt, pl, dh, dw):
    """Add channel c's kh*kw lowered rows (src from src0, row stride ld) back into plane x[n, c]."""
    H, W = x.shape[2], x.shape[3]
    n_in, Q = (rows - 1) * sh + (kh - 1) * dh + 1, OW + (kw - 1) * dw // sw
    # The adjoint of _lower_rows: add into stride phases, then merge them into x once.
    # It pays where two taps or more read each input column: at 3x3 stride 2 the
    # extra merge pass cost more than the strided adds it replaced (2-5%).
    if sw > 1 and kw >= 2 * sw:
        buf = np.zeros(n_in * sw * Q, x.dtype)
        for i in range(kh):
            for j in range(kw):
                phase = (i * dh * sw + j * dw % sw) * Q + j * dw // sw
                for r in range(rows):
                    row = src0 + (i * kw + j) * ld + r * OW
                    for ow in range(OW):
                        buf[_u(phase + r * sh * sw * Q + ow)] += src[_u(row + ow)]
        for r in range(n_in):
            ih = oh0 * sh - pt + r
            if ih >= 0 and ih < H:
                _merge_phases(buf, r * sw * Q, W, sw, pl, Q, x[n, c, ih])
        return
    for i in range(kh):
        for j in range(kw):
            iw0 = j * dw - pl
            ow0 = _first_inside(iw0, sw, OW)
            ow1 = _end_inside(iw0, sw, W, ow0, OW)
            for r in range(rows):
                ih = (oh0 + r) * sh - pt + i * dh
                if ih < 0 or ih >= H:
                    continue
                row = src0 + (i * kw + j) * ld + r * OW
                xrow = x[n, c, ih]
                if sw == 1:     # contiguous, which the compiler vectorises
                    for ow in range(ow0, ow1):
                        xrow[_u(ow + iw0)] += src[_u(row + ow)]
                else:
                    for ow in range(ow0, ow1):
                        xrow[_u(ow * sw + iw0)] += src[_u(row + ow)]


@njit
def _lower_rows(x, n, c0, q0, q1, cols, cols0, ld, oh0, rows, OW, kh, kw, sh, sw, pt, pl, dh, dw):
    """cols[cols0 + q*ld:][:rows*OW] = lowered row q = (c*kh + i)*kw + j, channel c0 + c,
    tap (i, j), for q0 <= q < q1."""
    H, W, K2 = x.shape[2], x.shape[3], kh * kw
    n_in, Q = (rows - 1) * sh + (kh - 1) * dh + 1, OW + (kw - 1) * dw // sw
    if sw == 1 or kw == 1:
        for q in range(q0, q1):
            _lower_row(x, n, c0 + q // K2, q // kw % kh, q % kw, cols, cols0 + q * ld,
                       oh0, rows, OW, sh, sw, pt, pl, dh, dw)
        return
    buf = np.empty(n_in * sw * Q, x.dtype)
    for c in range(q0 // K2, _ceil_div(q1, K2)):
        # buf row r holds input row oh0*sh - pt + r, split into phases
        for r in range(n_in):
            ih = oh0 * sh - pt + r
            if ih < 0 or ih >= H:
                for s in range(sw * Q):
                    buf[r * sw * Q + s] = 0
            else:
                _split_phases(x[n, c0 + c, ih], W, sw, pl, Q, buf, r * sw * Q, Q)
        for q in range(max(q0, c * K2), min(q1, (c + 1) * K2)):
            # tap (i, j) = (q // kw % kh, q % kw)
            src = (q // kw % kh * dh * sw + q % kw * dw % sw) * Q + q % kw * dw // sw
            dst = cols0 + q * ld
            for r in range(rows):
                for ow in range(OW):
                    cols[_u(dst + r * OW + ow)] = buf[_u(src + r * sh * sw * Q + ow)]


# Whole-row lowering, for stride-1 convolutions without horizontal padding whose
# output rows are short (LeNet's 10 pixels): a lowered row then is one run of
# the input plane, rows*W values from the tap's first pixel, copied at once
# instead of row by row. Output columns W-OW .. W-1 of each row come along
# (the tap's window runs into the next input row there); the product computes
# them and the copy to Y drops them; the gradients lay dY's block out the same
# way with zeros there (``_widen_rows``), so those columns add nothing. Inside
# the valid columns a position falls outside the plane exactly when its input
# row is padding, so clipping the run to the plane gives the padding's zeros.

@njit
def _run_start(oh0, i, j, W, pt, dh, dw):
    """Where tap (i, j)'s run for output rows from oh0 starts in the input plane."""
    return (oh0 - pt + i * dh) * W + j * dw


@njit
def _copy_run(src, plane0, size, start, dst, dst0, length):
    """dst[dst0 + q] = src[plane0 + start + q] for q < length, 0 where that is off the
    plane of ``size`` values at plane0."""
    q0 = _clip(-start, 0, length)
    q1 = _clip(size - start, q0, length)
    for q in range(q0):
        dst[dst0 + q] = 0
    for q in range(q0, q1):
        dst[_u(dst0 + q)] = src[_u(plane0 + start + q)]
    for q in range(q1, length):
        dst[dst0 + q] = 0


@njit
def _add_run(src, src0, length, dst, plane0, size, start):
    """dst[plane0 + start + q] += src[src0 + q] for q < length, where that is on the plane."""
    q0 = _clip(-start, 0, length)
    q1 = _clip(size - start, q0, length)
    for q in range(q0, q1):
        dst[_u(plane0 + start + q)] += src[_u(src0 + q)]


@njit
def _widen_rows(src, src0, src_ld, n_rows, rows, OW, dst, dst0, ld, W):
    """dst[m, r*W + v] = src[m, r*OW + v] for v < OW and 0 for OW <= v < W: a block of
    dY laid out as the whole-row products are, for the gradients."""
    for m in range(n_rows):
        for r in range(rows):
            for v in range(OW):
                dst[_u(dst0 + m * ld + r * W + v)] = src[_u(src0 + m * src_ld + r * OW + v)]
            for v in range(OW, W):
                dst[dst0 + m * ld + r * W + v] = 0


@pnjit
def im2col(x,       # IN  (N, C, H, W)
           cols,    # OUT (N, C*kh*kw, OH, OW)
           kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """cols[n, (c, i, j), oh, ow] = x[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw], 0 in the padding."""
    C, K2, OH, OW = x.shape[1], kh * kw, cols.shape[2], cols.shape[3]
    flat = cols.reshape(-1)
    # one lowered row per (n, c, i, j): rows are independent
    for row in prange(x.shape[0] * C * K2):
        _lower_row(x, row // (C * K2), row // K2 % C, row // kw % kh, row % kw,
                   flat, row * OH * OW, 0, OH, OW, sh, sw, pt, pl, dh, dw)


@pnjit
def col2im(cols,    # IN  (N, C*kh*kw, OH, OW)
           x,       # OUT (N, C, H, W), overwritten
           kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """x[n, c, ih, iw] = sum of the cols entries im2col copied from it (the adjoint of im2col)."""
    C, K2, OH, OW = x.shape[1], kh * kw, cols.shape[2], cols.shape[3]
    flat = cols.reshape(-1)
    # one (n, c) plane per iteration: a thread owns every pixel it adds into
    for plane in prange(x.shape[0] * C):
        _zero_plane(x, plane // C, plane % C)
        _unlower_plane(flat, plane * K2 * OH * OW, OH * OW, x, plane // C, plane % C, 0, OH, OW,
                       kh, kw, sh, sw, pt, pl, dh, dw)


@njit
def _zero_plane(x, n, c):
    for ih in range(x.shape[2]):
        for iw in range(x.shape[3]):
            x[n, c, ih, iw] = 0


# ---------------------------------------------------------------------------
# Convolution by im2col + GEMM
# ---------------------------------------------------------------------------
# A task is one image, group and block of output rows. With cols the block's
# lowered input (C/g*kh*kw x rows*OW) and W_g the group's weights as a matrix:
#   forward       Y_block     = W_g . cols             (then + bias)
#   grad data     dcols       = W_g^T . dY_block,  then col2im into dX
#   grad weight   dW_g       += dY_block . cols^T
# Y_block is rows*OW consecutive pixels of each output plane: a submatrix of
# Y with row stride OH*OW, so BLAS writes (or reads) it in place. A 1x1
# stride-1 convolution without padding needs no lowering: cols is X itself.
#
# Tasks run in parallel on Numba's threads, each lowering into its own
# workspace cols[t] (sized by the caller to stay in that core's L2 cache) and
# calling a single-threaded GEMM (the caller pins BLAS to one thread): the
# lowered block is consumed while still in cache, and only one thread pool runs.
#
# The forward kernels (im2col, direct, Winograd) finish each block of output
# while it is still in cache with an epilogue, y = acc * scale[k] + b[k]
# + residual, then max(y, 0) if relu: BatchNorm at inference, a residual sum
# and a ReLU cost no pass of their own over Y. Without a scale (an empty
# array) the sums start at b and the epilogue only adds and clips; an empty
# residual adds nothing.

@njit
def _epilogue(v, s, c, r, relu, zero):
    """v * s + c + r, then max(., 0) if relu (NaN stays NaN); ``zero`` is 0 in v's type."""
    v = v * s + c + r
    return zero if relu and v < 0 else v


@njit
def _finish_rows(y, scale, b, residual, relu, n, k, oh0, rows):
    """The epilogue over output rows oh0 .. oh0+rows-1 of channel k of image n; nothing
    to do without a scale, a residual or a ReLU.

    It indexes y and the residual in place where the Cython twin takes a run of
    each (_finish_run): a view or reshape of an array is a new reference to its
    memory, counted atomically, and two threads finishing channels of the same
    output contend for that count. Reshaping once per channel cost a 1x1 layer
    (128 -> 512 channels on 28x28, with scale, residual and ReLU) 0.72-0.75 ms
    against 0.68-0.69 this way, at 2 threads, in one process (Cython: 0.60-0.61)."""
    scaled = scale.shape[0] > 0
    if scaled or residual.shape[0] > 0 or relu:
        s = scale[k] if scaled else y.dtype.type(1)
        c = b[k] if scaled else y.dtype.type(0)
        zero = y.dtype.type(0)
        if residual.shape[0] == 0:
            for oh in range(oh0, oh0 + rows):
                for ow in range(y.shape[3]):
                    y[n, k, oh, ow] = _epilogue(y[n, k, oh, ow], s, c, zero, relu, zero)
        else:
            for oh in range(oh0, oh0 + rows):
                for ow in range(y.shape[3]):
                    y[n, k, oh, ow] = _epilogue(y[n, k, oh, ow], s, c, residual[n, k, oh, ow],
                                                relu, zero)

@njit
def _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, OH, OW):
    return (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
            and OH == H and OW == W)


@njit
def _share(total, t, n_threads):
    """Thread t of n_threads takes items [share(t), share(t+1)) of ``total``."""
    return total * t // n_threads


@njit
def _fwd_task(x, w, b, y, scale, residual, relu, cols, ld, n, g, k0, k1, oh0, rows, pointwise,
              whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups):
    """Y_block = W_g . cols + b (then the epilogue) for one image n, output channels
    k0 .. k1-1 of group g and output rows oh0 .. oh0+rows-1.

    The block starts as the bias and the product is added onto it (beta = 1): with
    beta = 0 BLAS would first make a pass of its own to zero it. A scaled block
    starts from the product alone (beta = 0), the bias coming after the scale."""
    Cg, Kg = x.shape[1] // groups, y.shape[1] // groups
    CKK, K2 = Cg * kh * kw, kh * kw
    C, K, H, W, OH, OW = x.shape[1], y.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3]
    HW, OHW = H * W, OH * OW
    xf, wf, yf = x.reshape(-1), w.reshape(-1), y.reshape(-1)
    Kt, kg = k1 - k0, g * Kg + k0
    y0 = (n * K + kg) * OHW + oh0 * OW
    scaled = scale.shape[0] > 0
    if whole_rows:      # the product, W columns per row, goes to the workspace's last Kg rows
        for q in range(CKK):
            _copy_run(xf, (n * C + g * Cg + q // K2) * HW, HW,
                      _run_start(oh0, q // kw % kh, q % kw, W, pt, dh, dw), cols, q * ld, rows * W)
        product = CKK * ld
        if not scaled:
            for k in range(Kt):
                for p in range(rows * W):
                    cols[_u(product + k * ld + p)] = b[kg + k]
        _gemm(False, False, Kt, rows * W, CKK, 1, wf, kg * CKK, CKK, cols, 0, ld,
              0 if scaled else 1, cols, product, ld)
        for k in range(Kt):
            for r in range(rows):
                yk = y0 + k * OHW + r * OW
                at = product + k * ld + r * W
                for ow in range(OW):
                    yf[_u(yk + ow)] = cols[_u(at + ow)]
            _finish_rows(y, scale, b, residual, relu, n, kg + k, oh0, rows)
        return
    if not scaled:
        for k in range(kg, kg + Kt):
            yk = (n * K + k) * OHW + oh0 * OW
            for p in range(rows * OW):
                yf[_u(yk + p)] = b[k]
    if pointwise:
        _gemm(False, False, Kt, rows * OW, CKK, 1, wf, kg * CKK, CKK,
              xf, (n * C + g * Cg) * HW + oh0 * W, HW, 0 if scaled else 1, yf, y0, OHW)
    else:
        _lower_rows(x, n, g * Cg, 0, CKK, cols, 0, ld, oh0, rows, OW, kh, kw, sh, sw, pt, pl, dh, dw)
        _gemm(False, False, Kt, rows * OW, CKK, 1, wf, kg * CKK, CKK,
              cols, 0, ld, 0 if scaled else 1, yf, y0, OHW)
    for k in range(kg, kg + Kt):
        _finish_rows(y, scale, b, residual, relu, n, k, oh0, rows)


# Thread t runs tasks t, t + T, t + 2T, ... (T threads) with workspace slot t:
# a fixed assignment, so that results do not depend on scheduling.

@pnjit
def conv2d_fwd_im2col(x,      # IN  (N, C, H, W)
                      w,      # IN  (K, C/g, kh, kw)
                      b,      # IN  (K,)
                      y,      # OUT (N, K, OH, OW)
                      scale,  # IN  (K,), or empty: the epilogue's
                      residual,   # IN  like y, or empty
                      relu,
                      cols,   # workspace (threads, C/g*kh*kw, rows*OW)
                      whole_rows,     # cols (threads, C/g*kh*kw + K/g, rows*W)
                      kh, kw, sh, sw, pt, pl, dh, dw, groups, k_parts, n_threads):
    """Y = W . im2col(X) + b (then the epilogue), a task per image, group, block of
    output rows and part of the group's output channels."""
    OH, ld, Kg = y.shape[2], cols.shape[2], y.shape[1] // groups
    block = ld // (x.shape[3] if whole_rows else y.shape[3])
    n_blk = _ceil_div(OH, block)
    n_tasks = x.shape[0] * groups * n_blk * k_parts
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, x.shape[2], x.shape[3], OH, y.shape[3])
    for t in prange(n_threads):
        slot = cols[t].reshape(-1)
        for task in range(t, n_tasks, n_threads):
            part, rest = task % k_parts, task // k_parts
            oh0 = rest % n_blk * block
            _fwd_task(x, w, b, y, scale, residual, relu, slot, ld, rest // (groups * n_blk),
                      rest // n_blk % groups, _share(Kg, part, k_parts),
                      _share(Kg, part + 1, k_parts), oh0, min(block, OH - oh0), pointwise,
                      whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups)


# The gradients take one of two schedules. With enough images (times groups)
# to share out (``per_image``), thread t takes images t, t + T, ... with its
# own workspace and all blocks of an image in turn, as the forward does: the
# data gradient writes only its images' planes, the weight gradient adds into
# the thread's own partial dW, and the partials are summed in thread order at
# the end. With few images, the images go block by block over one lowered
# block, in one parallel region per block, each thread taking a share of the
# input channels (the data gradient: the rows of dcols = W_g^T . dY_block that
# belong to them, then their col2im) or of the lowered rows (the weight
# gradient: it lowers them, then adds dY_block . rows^T into its columns of
# dW). Either way each thread owns what it writes and every sum has a fixed
# order, so the results do not depend on scheduling.

@njit
def _bwd_data_block(dy, w, dx, cols, cols0, ld, wide_dy, n, g, c0, c1, oh0, rows, pointwise,
                    whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups):
    """Input channels c0 .. c1-1 of group g, image n, from output rows oh0 .. oh0+rows-1:
    dcols = W_g[:, c0:c1]^T . dY_block into cols from cols0 (row stride ld), then col2im."""
    N, C, H, W = dx.shape
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    Cg, Kg = C // groups, K // groups
    CKK, K2 = Cg * kh * kw, kh * kw
    dyf, wf, dxf = dy.reshape(-1), w.reshape(-1), dx.reshape(-1)
    dy0 = (n * K + g * Kg) * OH * OW + oh0 * OW
    if pointwise:
        _gemm(True, False, c1 - c0, rows * OW, Kg, 1, wf, g * Kg * CKK + c0, CKK,
              dyf, dy0, OH * OW, 0, dxf, (n * C + g * Cg + c0) * H * W + oh0 * W, H * W)
    elif whole_rows:
        _gemm(True, False, (c1 - c0) * K2, rows * W, Kg, 1, wf, g * Kg * CKK + c0 * K2, CKK,
              cols, wide_dy, ld, 0, cols, cols0 + c0 * K2 * ld, ld)
        for q in range(c0 * K2, c1 * K2):
            _add_run(cols, cols0 + q * ld, rows * W, dxf, (n * C + g * Cg + q // K2) * H * W,
                     H * W, _run_start(oh0, q // kw % kh, q % kw, W, pt, dh, dw))
    else:
        _gemm(True, False, (c1 - c0) * K2, rows * OW, Kg, 1, wf, g * Kg * CKK + c0 * K2, CKK,
              dyf, dy0, OH * OW, 0, cols, cols0 + c0 * K2 * ld, ld)
        for c in range(c0, c1):
            _unlower_plane(cols, cols0 + c * K2 * ld, ld, dx, n, g * Cg + c, oh0, rows, OW,
                           kh, kw, sh, sw, pt, pl, dh, dw)


@pnjit
def conv2d_bwd_data_im2col(dy,    # IN  (N, K, OH, OW)
                           w,     # IN  (K, C/g, kh, kw)
                           dx,    # OUT (N, C, H, W)
                           cols,  # workspace (slots, C/g*kh*kw, rows*OW)
                           whole_rows,    # slots (C/g*kh*kw + K/g, rows*W)
                           per_image,     # a slot per thread, else one
                           kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """dX = col2im(W^T . dY), per image, group and block of output rows."""
    N, C, H, W = dx.shape
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    Cg, Kg = C // groups, K // groups
    CKK = Cg * kh * kw
    slot, ld = cols.shape[1] * cols.shape[2], cols.shape[2]
    block = ld // (W if whole_rows else OW)
    n_blk = _ceil_div(OH, block)
    n_tasks = N * groups
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, OH, OW)
    dyf, colsf = dy.reshape(-1), cols.reshape(-1)
    if per_image:
        for t in prange(n_threads):
            for task in range(t, n_tasks, n_threads):
                n, g = task // groups, task % groups
                if not pointwise:
                    for c in range(g * Cg, (g + 1) * Cg):
                        _zero_plane(dx, n, c)
                for blk in range(n_blk):
                    oh0 = blk * block
                    rows = min(block, OH - oh0)
                    if whole_rows:
                        _widen_rows(dyf, (n * K + g * Kg) * OH * OW + oh0 * OW, OH * OW, Kg,
                                    rows, OW, colsf, t * slot + CKK * ld, ld, W)
                    _bwd_data_block(dy, w, dx, colsf, t * slot, ld, t * slot + CKK * ld, n, g,
                                    0, Cg, oh0, rows, pointwise, whole_rows, kh, kw, sh, sw,
                                    pt, pl, dh, dw, groups)
        return
    if not pointwise:
        for plane in prange(N * C):
            _zero_plane(dx, plane // C, plane % C)
    for n in range(N):
        for g in range(groups):
            for blk in range(n_blk):
                oh0 = blk * block
                rows = min(block, OH - oh0)
                if whole_rows:
                    _widen_rows(dyf, (n * K + g * Kg) * OH * OW + oh0 * OW, OH * OW, Kg, rows,
                                OW, colsf, CKK * ld, ld, W)
                for t in prange(n_threads):
                    if _share(Cg, t + 1, n_threads) > _share(Cg, t, n_threads):
                        _bwd_data_block(dy, w, dx, colsf, 0, ld, CKK * ld, n, g,
                                        _share(Cg, t, n_threads), _share(Cg, t + 1, n_threads),
                                        oh0, rows, pointwise, whole_rows, kh, kw, sh, sw, pt,
                                        pl, dh, dw, groups)


@njit
def _bwd_weight_block(dy, x, dwf, dw0, cols, cols0, ld, wide_dy, n, g, q0, q1, oh0, rows,
                      pointwise, whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups):
    """dW_g[:, q0:q1] += dY_block . cols[q0:q1]^T for image n, group g and output rows
    oh0 .. oh0+rows-1, lowering rows q0 .. q1-1 into cols from cols0 (row stride ld)
    first; dwf from dw0 is a (K, C/g*kh*kw) matrix."""
    N, C, H, W = x.shape
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    Cg, Kg = C // groups, K // groups
    CKK, K2 = Cg * kh * kw, kh * kw
    dyf, xf = dy.reshape(-1), x.reshape(-1)
    dy0 = (n * K + g * Kg) * OH * OW + oh0 * OW
    if pointwise:
        _gemm(False, True, Kg, q1 - q0, rows * OW, 1, dyf, dy0, OH * OW,
              xf, (n * C + g * Cg + q0) * H * W + oh0 * W, H * W, 1,
              dwf, dw0 + g * Kg * CKK + q0, CKK)
    elif whole_rows:
        for q in range(q0, q1):
            _copy_run(xf, (n * C + g * Cg + q // K2) * H * W, H * W,
                      _run_start(oh0, q // kw % kh, q % kw, W, pt, dh, dw), cols,
                      cols0 + q * ld, rows * W)
        _gemm(False, True, Kg, q1 - q0, rows * W, 1, cols, wide_dy, ld, cols, cols0 + q0 * ld,
              ld, 1, dwf, dw0 + g * Kg * CKK + q0, CKK)
    else:
        _lower_rows(x, n, g * Cg, q0, q1, cols, cols0, ld, oh0, rows, OW, kh, kw, sh, sw, pt, pl,
                    dh, dw)
        _gemm(False, True, Kg, q1 - q0, rows * OW, 1, dyf, dy0, OH * OW,
              cols, cols0 + q0 * ld, ld, 1, dwf, dw0 + g * Kg * CKK + q0, CKK)


@pnjit
def conv2d_bwd_weight_im2col(dy,    # IN  (N, K, OH, OW)
                             x,     # IN  (N, C, H, W)
                             dw_,   # OUT (K, C/g, kh, kw)
                             cols,  # workspace (slots, C/g*kh*kw, rows*OW)
                             partial,       # per image: (threads, K, C/g*kh*kw)
                             whole_rows,    # slots (C/g*kh*kw + K/g, rows*W)
                             per_image,     # a slot per thread, else one
                             kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """dW_g = sum over images and blocks of dY_block . cols^T (added with beta = 1 into
    a zeroed dW, or per image into each thread's partial dW, summed in order)."""
    N, C, H, W = x.shape
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    Cg, Kg = C // groups, K // groups
    CKK = Cg * kh * kw
    slot, ld = cols.shape[1] * cols.shape[2], cols.shape[2]
    block = ld // (W if whole_rows else OW)
    n_blk = _ceil_div(OH, block)
    n_tasks = N * groups
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, OH, OW)
    dyf, dwf, colsf, partf = dy.reshape(-1), dw_.reshape(-1), cols.reshape(-1), partial.reshape(-1)
    if per_image:
        for t in prange(n_threads):
            partf[t * K * CKK:(t + 1) * K * CKK] = 0
            for task in range(t, n_tasks, n_threads):
                n, g = task // groups, task % groups
                for blk in range(n_blk):
                    oh0 = blk * block
                    rows = min(block, OH - oh0)
                    if whole_rows:
                        _widen_rows(dyf, (n * K + g * Kg) * OH * OW + oh0 * OW, OH * OW, Kg,
                                    rows, OW, colsf, t * slot + CKK * ld, ld, W)
                    _bwd_weight_block(dy, x, partf, t * K * CKK, colsf, t * slot, ld,
                                      t * slot + CKK * ld, n, g, 0, CKK, oh0, rows, pointwise,
                                      whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups)
        for k in prange(K):
            for q in range(CKK):
                total = partf[k * CKK + q]
                for t in range(1, n_threads):
                    total += partf[(t * K + k) * CKK + q]
                dwf[k * CKK + q] = total
        return
    for k in prange(K):
        dwf[k * CKK:(k + 1) * CKK] = 0
    for n in range(N):
        for g in range(groups):
            for blk in range(n_blk):
                oh0 = blk * block
                rows = min(block, OH - oh0)
                if whole_rows:
                    _widen_rows(dyf, (n * K + g * Kg) * OH * OW + oh0 * OW, OH * OW, Kg, rows,
                                OW, colsf, CKK * ld, ld, W)
                for t in prange(n_threads):
                    if _share(CKK, t + 1, n_threads) > _share(CKK, t, n_threads):
                        _bwd_weight_block(dy, x, dwf, 0, colsf, 0, ld, CKK * ld, n, g,
                                          _share(CKK, t, n_threads),
                                          _share(CKK, t + 1, n_threads), oh0, rows, pointwise,
                                          whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups)


# ---------------------------------------------------------------------------
# Direct convolution
# ---------------------------------------------------------------------------
# Forward: no lowering and no GEMM. A task is one image, group and block of
# output rows. It first copies the input rows under its block, channel by
# channel, into stride-phase planes with the padding as zeros (the lowering's
# phases, split vertically as well): plane (a, b) of a channel holds the padded
# pixels (r*sh + a, q*sw + b) in rows of Qw. Tap (i, j) reads plane
# ((i*dh) % sh, (j*dw) % sw) shifted by ((i*dh) // sh) rows and ((j*dw) // sw)
# columns, so that over the block's "wide" output, p = r*Qw + ow, each tap is
# one contiguous run: rows of Qw, whose Qw - OW last columns are computed and
# dropped. With a column stride of 1 a row's right padding serves as the next
# row's left padding (a tap that runs past its row reads the next row's first
# columns, zeros), so a row has W + max(left, right) columns, not the window's
# full reach (_workspace.direct_row_width): on 13x13 maps a 3x3 layer's block of
# 193 wide outputs became 181, 6 tiles of 32 where 7 were. The sum over terms
# (c, i, j) is then a matrix product whose rows are these runs, and a tile of
# it, TILE_K output channels by TILE_P wide outputs, keeps its accumulators in
# registers from the first term to the last: per term it loads TILE_P inputs and
# TILE_K weights for TILE_K*TILE_P multiply-adds, where accumulators in memory
# cost a load and a store per multiply-add or two. At 8 x 32 in float32 that is
# 16 AVX-512 registers, and a 3x3 layer ran at 170-260 GFLOP/s, as fast as
# PyTorch's, where sums in L1 ran at 100-120. Every output channel of the group
# reads the same planes, which stay in L2.
#
# The weight gradient builds the same planes: dW[k, (c, i, j)] is the dot
# product of dY_k's block, laid out in the same wide rows (0 past each row's
# end), with the run of term (c, i, j). The data gradient of a stride-1
# convolution is this forward over dY (backends/_compiled.py); a strided one
# runs here: each input row accumulates, tap by tap, a scaled row of dY; a task
# is one image, group and block of KB input channels, so that every row loaded
# is used KB times while the KB rows written stay in L1.

TILE_K = 8      # output channels of a forward tile
TILE_P = 32     # wide outputs of a forward tile
SLACK = TILE_K * TILE_P     # how far past the end of a task's planes a tile reads
# the forward's workspace: rows of sums a task keeps, and how far past its planes
# and each row its tiles reach
DIRECT_SUMS = (TILE_K, SLACK)
# the output channels of a packed panel of Winograd's transformed filters
WINOGRAD_PANEL = TILE_P
KB = 8          # input channels per task of the data gradient


@njit
def _direct_planes(x, n, c0, n_c, oh0, n_rows, Qw, kh, kw, sh, sw, pt, pl, dh, dw, planes,
                   offsets):
    """A task's planes, planes[((c*sh + a)*sw + b)*n_rows*Qw + r*Qw + q] = x[n, c0 + c,
    (oh0 + r)*sh + a - pt, q*sw + b - pl] (0 in the padding), and offsets[q] = where the
    run of term q = (c*kh + i)*kw + j, channel c's tap (i, j), starts in them."""
    H, W = x.shape[2], x.shape[3]
    for c in range(n_c):
        for a in range(sh):
            for r in range(n_rows):
                ih = (oh0 + r) * sh + a - pt
                d = ((c * sh + a) * sw * n_rows + r) * Qw
                if ih < 0 or ih >= H:
                    for b in range(sw):
                        for q in range(Qw):
                            planes[d + b * n_rows * Qw + q] = 0
                else:
                    _split_phases(x[n, c0 + c, ih], W, sw, pl, Qw, planes, d, n_rows * Qw)
    for q in range(n_c * kh * kw):
        c, i, j = q // (kh * kw), q // kw % kh, q % kw
        offsets[q] = ((c * sh + i * dh % sh) * sw + j * dw % sw) * n_rows * Qw \
            + i * dh // sh * Qw + j * dw // sw


# A tile in Numba: LLVM vectorises Numba's loops 256 bits wide on this CPU (it
# prefers that width on AVX-512 parts), and it turned the tile's loops into
# gathers. So the accumulators are an array on the stack, which LLVM keeps in
# registers once every index into it is a constant, and a row of the tile is
# updated by one vector operation of TILE_P lanes, which the backend splits
# into AVX-512 registers: the loops gcc writes for the Cython twin.

@intrinsic
def _tile_array(typingctx, like):
    """An uninitialised (TILE_K*TILE_P,) array of like's dtype on the caller's stack."""
    array = numba.types.Array(like.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        item = context.get_value_type(like.dtype)
        data = cgutils.alloca_once(builder, item, size=TILE_K * TILE_P)
        itemsize = context.get_constant(numba.types.intp, context.get_abi_sizeof(item))
        out = make_array(array)(context, builder)
        context.populate_array(out, data=data, shape=[context.get_constant(
            numba.types.intp, TILE_K * TILE_P)], strides=[itemsize], itemsize=itemsize,
            meminfo=None)
        return out._getvalue()

    return array(like), codegen


def _row(context, builder, array_type, array, start):
    """A pointer to the TILE_P-lane vector array[start:start + TILE_P]."""
    item = context.get_value_type(array_type.dtype)
    first = builder.gep(make_array(array_type)(context, builder, array).data, [start])
    return builder.bitcast(first, llvmlite.ir.VectorType(item, TILE_P).as_pointer())


def _splat(builder, vector, value):
    """The vector of type ``vector`` with ``value`` in every lane."""
    lanes = builder.insert_element(llvmlite.ir.Constant(vector, llvmlite.ir.Undefined), value,
                                   llvmlite.ir.Constant(llvmlite.ir.IntType(32), 0))
    return builder.shuffle_vector(lanes, lanes, llvmlite.ir.Constant(
        llvmlite.ir.VectorType(llvmlite.ir.IntType(32), TILE_P), [0] * TILE_P))


@intrinsic
def _prefetch_row(typingctx, x, i):
    """Fetch the cache lines of x[i:i + TILE_P] into L2 ahead of their use (a hint:
    no effect on any value; prefetcht1, as gcc's __builtin_prefetch in the Cython
    twin). The lines are counted here, at compile time, from x's dtype."""
    def codegen(context, builder, sig, args):
        first = builder.gep(make_array(x)(context, builder, args[0]).data, [args[1]])
        i32 = llvmlite.ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, llvmlite.ir.FunctionType(llvmlite.ir.VoidType(),
                                                     [first.type, i32, i32, i32]),
            "llvm.prefetch.p0")
        step = 64 // (x.dtype.bitwidth // 8)
        for line in range(0, TILE_P, step):
            item = builder.gep(first, [llvmlite.ir.Constant(llvmlite.ir.IntType(64), line)])
            # a read (0), kept in L2 (locality 2), of data (1)
            builder.call(prefetch, [item, llvmlite.ir.Constant(i32, 0),
                                    llvmlite.ir.Constant(i32, 2), llvmlite.ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return numba.types.void(x, i), codegen


@intrinsic
def _fill_row(typingctx, acc, a, v):
    """acc[a:a + TILE_P] = v."""
    def codegen(context, builder, sig, args):
        row = _row(context, builder, acc, args[0], args[1])
        value = context.cast(builder, args[2], v, acc.dtype)
        builder.store(_splat(builder, row.type.pointee, value), row, align=1)
        return context.get_dummy_value()

    return numba.types.void(acc, a, v), codegen


@intrinsic
def _fma_row(typingctx, acc, a, x, o, w):
    """acc[a:a + TILE_P] += w * x[o:o + TILE_P], fused."""
    def codegen(context, builder, sig, args):
        acc_row = _row(context, builder, acc, args[0], args[1])
        x_row = _row(context, builder, x, args[2], args[3])
        vector = acc_row.type.pointee
        weight = _splat(builder, vector, context.cast(builder, args[4], w, acc.dtype))
        fma = cgutils.get_or_insert_function(
            builder.module, llvmlite.ir.FunctionType(vector, [vector] * 3),
            f"llvm.fma.v{TILE_P}f{acc.dtype.bitwidth}")
        total = builder.call(fma, [weight, builder.load(x_row, align=1),
                                   builder.load(acc_row, align=1)])
        builder.store(total, acc_row, align=1)
        return context.get_dummy_value()

    return numba.types.void(acc, a, x, o, w), codegen


@njit
def _tile(planes, p0, offsets, n_terms, w, w0, n_k, b, b0, biased, sums, s0, ld):
    """sums[s0 + k*ld + p] = b[b0 + k] (if biased, else 0) + sum over terms q of
    w[w0 + k*n_terms + q] * planes[p0 + offsets[q] + p] for the tile's TILE_K channels k
    and TILE_P outputs p. Channels past n_k repeat channel n_k - 1, so that the loops
    keep their constant bounds and are unrolled; their sums are not used."""
    acc = _tile_array(planes)
    for k in range(TILE_K):
        _fill_row(acc, k * TILE_P, b[b0 + min(k, n_k - 1)] if biased else 0)
    for q in range(n_terms):
        o = p0 + offsets[q]
        for k in range(TILE_K):
            _fma_row(acc, k * TILE_P, planes, o, w[_u(w0 + min(k, n_k - 1) * n_terms + q)])
    for k in range(TILE_K):
        for p in range(TILE_P):
            sums[_u(s0 + k * ld + p)] = acc[k * TILE_P + p]


@njit
def _tile_one(planes, p0, offsets, n_terms, w, w0, b, b0, biased, sums, s0):
    """_tile for one channel (a depthwise layer's group, where repeating it would
    multiply the work by TILE_K): the tile's rows are TILE_K successive runs of
    TILE_P outputs, sums[s0 + k*TILE_P + p]."""
    acc = _tile_array(planes)
    for k in range(TILE_K):
        _fill_row(acc, k * TILE_P, b[b0] if biased else 0)
    for q in range(n_terms):
        o = p0 + offsets[q]
        for k in range(TILE_K):
            _fma_row(acc, k * TILE_P, planes, o + k * TILE_P, w[_u(w0 + q)])
    for k in range(TILE_K):
        for p in range(TILE_P):
            sums[_u(s0 + k * TILE_P + p)] = acc[k * TILE_P + p]


@pnjit
def conv2d_fwd_direct(x,      # IN  (N, C, H, W)
                      w,      # IN  (K, C/g, kh, kw)
                      b,      # IN  (K,)
                      y,      # OUT (N, K, OH, OW)
                      scale,  # IN  (K,), or empty: the epilogue's
                      residual,   # IN  like y, or empty
                      relu,
                      work,   # workspace (threads, planes + sums)
                      block,  # output rows per task
                      Qw,     # columns of a planes' row
                      kh, kw, sh, sw, pt, pl, dh, dw, groups, k_parts, n_threads):
    """y[n,k,oh,ow] = b[k] + sum_{c,i,j} w[k,c,i,j] x[n, g*Cg+c, oh*sh-pt+i*dh, ow*sw-pl+j*dw],
    then the epilogue; a task per image, group, block of output rows and part of the
    group's tiles of output channels."""
    N, C = x.shape[0], x.shape[1]
    scaled = scale.shape[0] > 0
    K, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Cg, Kg = C // groups, K // groups
    CKK = Cg * kh * kw
    reach = (kh - 1) * dh // sh
    n_blk, n_kt = _ceil_div(OH, block), _ceil_div(Kg, TILE_K)
    n_tasks = N * groups * n_blk * k_parts
    wf = w.reshape(-1)
    for t in prange(n_threads):
        ws = work[t]
        offsets = np.empty(CKK, np.int64)
        for turn in range(t, n_tasks, n_threads):
            part, task = turn % k_parts, turn // k_parts
            n, g, oh0 = task // (groups * n_blk), task // n_blk % groups, task % n_blk * block
            rows = min(block, OH - oh0)
            n_rows, L = rows + reach, (rows - 1) * Qw + OW
            ld = _ceil_div(L, TILE_P) * TILE_P      # the tiles cover L
            size = Cg * sh * sw * n_rows * Qw
            gap = max(SLACK, Qw)
            planes, sums = ws[:size + gap], ws[size + gap:]     # TILE_K rows of ld follow
            _direct_planes(x, n, g * Cg, Cg, oh0, n_rows, Qw, kh, kw, sh, sw, pt, pl, dh, dw,
                           planes, offsets)
            planes[size:] = 0                       # the last tile reads past the last run
            for kt in range(_share(n_kt, part, k_parts), _share(n_kt, part + 1, k_parts)):
                k0 = g * Kg + kt * TILE_K
                n_k = min(TILE_K, (g + 1) * Kg - k0)
                if n_k == 1:
                    for p in range(0, L, TILE_K * TILE_P):
                        _tile_one(planes, p, offsets, CKK, wf, k0 * CKK, b, k0, not scaled,
                                  sums, p)
                else:
                    for p in range(0, ld, TILE_P):
                        _tile(planes, p, offsets, CKK, wf, k0 * CKK, n_k, b, k0, not scaled,
                              sums, p, ld)
                for k in range(n_k):
                    for r in range(rows):           # the wide rows, cut to OW
                        yk = y[n, k0 + k, oh0 + r]
                        for ow in range(OW):
                            yk[_u(ow)] = sums[_u(k * ld + r * Qw + ow)]
                    _finish_rows(y, scale, b, residual, relu, n, k0 + k, oh0, rows)


@pnjit
def conv2d_bwd_data_direct(dy,  # IN  (N, K, OH, OW)
                           w,   # IN  (K, C/g, kh, kw)
                           dx,  # OUT (N, C, H, W)
                           kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """dx[n, g*Cg+c, ih, iw] += w[k,c,i,j] dy[n,k,oh,ow] for every tap that read (ih, iw)."""
    N, C, H, W = dx.shape
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    Cg, Kg = C // groups, K // groups
    n_cb = _ceil_div(Cg, KB)
    # a task owns KB input-channel planes of one image: no two threads add into one pixel
    for task in prange(N * groups * n_cb):
        n = task // (groups * n_cb)
        g = task // n_cb % groups
        c0 = task % n_cb * KB
        c1 = min(c0 + KB, Cg)
        for c in range(c0, c1):
            for ih in range(H):
                for ow in range(W):
                    dx[n, g * Cg + c, ih, ow] = 0
        for oh in range(OH):
            for k in range(g * Kg, (g + 1) * Kg):
                for i in range(kh):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    dyrow = dy[n, k, oh]
                    for j in range(kw):
                        iw0 = j * dw - pl
                        ow0 = _first_inside(iw0, sw, OW)
                        ow1 = _end_inside(iw0, sw, W, ow0, OW)
                        for c in range(c0, c1):
                            wv = w[k, c, i, j]
                            dxrow = dx[n, g * Cg + c, ih]
                            for ow in range(ow0, ow1):
                                dxrow[_u(ow * sw + iw0)] += wv * dyrow[_u(ow)]


@njit_sum
def _dot(a, a0, b, b0, L):
    """sum over p < L of a[a0 + p] * b[b0 + p]. A single running sum is a chain of
    dependent adds, which no compiler vectorises without licence to reorder them: the
    Cython twin keeps DIRECT_LANES partial sums in an array that gcc holds in
    registers; Numba's arrays live in memory (0.35 ns a term here), so LLVM is let
    reorder this sum instead (``reassoc``: 0.13 ns)."""
    total = a.dtype.type(0)     # a[a0] * 0 would be a float64 for float32 arrays
    for p in range(L):
        total += a[_u(a0 + p)] * b[_u(b0 + p)]
    return total


@pnjit
def conv2d_bwd_weight_direct(dy,       # IN  (N, K, OH, OW)
                             x,        # IN  (N, C, H, W)
                             dw_,      # OUT (K, C/g, kh, kw)
                             work,     # workspace (threads, planes of C/g channels + K/g*block*Qw)
                             partial,  # (threads, K, C/g*kh*kw)
                             block,    # output rows per task
                             Qw,       # columns of a planes' row
                             kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """dw[k, (c, i, j)] = sum over images and blocks of dY_k's block in wide rows (0 past
    each row's end) . the run of term (c, i, j) in the block's planes (the forward's);
    each thread adds into its own partial dW, and the partials are summed in order."""
    N, C = x.shape[0], x.shape[1]
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    Cg, Kg = C // groups, K // groups
    CKK = Cg * kh * kw
    reach = (kh - 1) * dh // sh
    n_blk = _ceil_div(OH, block)
    n_tasks = N * groups * n_blk
    for t in prange(n_threads):
        ws = work[t]
        offsets = np.empty(CKK, np.int64)
        partial[t] = 0
        for task in range(t, n_tasks, n_threads):
            n, g, oh0 = task // (groups * n_blk), task // n_blk % groups, task % n_blk * block
            rows = min(block, OH - oh0)
            n_rows, L = rows + reach, (rows - 1) * Qw + OW
            size = Cg * sh * sw * n_rows * Qw
            ws[size:size + Qw] = 0      # the last row's taps run past it, into zeros
            planes, wide = ws[:size + Qw], ws[size + Qw:]
            _direct_planes(x, n, g * Cg, Cg, oh0, n_rows, Qw, kh, kw, sh, sw, pt, pl, dh, dw,
                           planes, offsets)
            for k in range(Kg):
                for r in range(rows):
                    dyrow = dy[n, g * Kg + k, oh0 + r]
                    for ow in range(OW):
                        wide[_u(k * L + r * Qw + ow)] = dyrow[_u(ow)]
                    if r < rows - 1:
                        for ow in range(OW, Qw):
                            wide[k * L + r * Qw + ow] = 0
            for k in range(Kg):
                for q in range(CKK):
                    partial[t, g * Kg + k, q] += _dot(wide, k * L, planes, offsets[q], L)
    dwf = dw_.reshape(-1)
    for k in prange(K):
        for q in range(CKK):
            total = partial[0, k, q]
            for t in range(1, n_threads):
                total += partial[t, k, q]
            dwf[k * CKK + q] = total


# ---------------------------------------------------------------------------
# Winograd F(m x m, 3 x 3)
# ---------------------------------------------------------------------------
# Lavin & Gray (arXiv 1509.09308); the matrices come from fastconv/winograd.py.
# Output tile (tr, tc) covers rows tr*m .. tr*m+m-1 and reads the alpha x alpha
# input tile at the same corner of the padded input. A task is one group and run
# of whole tile rows (T = rows * tw tiles, tw tiles to a row), the tile rows of
# the batch's images taken as one sequence: a run may end one image and start
# the next, so that images of few tiles share the run's one read of U, and the
# transforms' passes run over all of its tiles (8 images of 7x7 and 512
# channels, F(4x4), 2 threads: 4.7-5.0 ms with a pass per image, 3.1-3.6 with
# one per run, 7.6-7.9 with a run per image). Three parallel phases over
# workspaces the threads share:
#   1. input transform    V[a*alpha+b, c, tile] = (B^T d B)[a, b]   (threads split c)
#   2. alpha^2 GEMMs      M[ab] (Kg x T) = U[g, ab] (Kg x Cg) . V[ab] (Cg x T)   (split ab)
#   3. output transform   Y tile = A^T M A + bias (then the epilogue), cut at the
#                         output's edge   (split k)
# Splitting channels and GEMMs rather than tiles keeps every thread busy on a
# 7x7 map, which has 4 tiles of F(4x4).
#
# Both transforms are separable, B^T d B = (B^T d) B, and each pass is written
# as sums of scaled rows that run over all the run's tiles at once, which the
# compiler vectorises: the input transform first gathers the alpha^2 values of
# every tile into rows D[r, s] (D[r, s][tile] = d[r, s] of that tile; the tile
# rows of one input row are a stride-m slice of it), then sums rows of D into
# rows of B^T d, and those into rows of V. The output transform sums rows of M
# (M's rows are tiles already) and interleaves the result, m phases of each
# output row, into y. A pass computes each row of its result in one sweep, all
# alpha terms summed in registers and stored once (_combine), zero coefficients
# included. Against a sweep per nonzero term that added into the row in memory,
# one thread, F(4x4), ms: Numba VGG-16 conv1_2 20.0-20.4 -> 18.3-18.6, conv4_2
# 17.4-18.3 -> 16.2-17.2, ResNet-50's 3x3 on 14x14 3.2-3.4 -> 2.8-3.2; Cython
# 1-7% (conv1_2 18.3-19.1 -> 17.7-17.9).


@njit
def _padded_rows(x, n, c, ih0, iw0, rows, width, buf):
    """buf[r*width + s] = x[n, c, ih0 + r, iw0 + s], 0 outside the input."""
    H, W = x.shape[2], x.shape[3]
    s0 = _clip(-iw0, 0, width)
    s1 = _clip(W - iw0, s0, width)
    for r in range(rows):
        if ih0 + r < 0 or ih0 + r >= H:
            for s in range(width):
                buf[r * width + s] = 0
        else:
            src = x[n, c, ih0 + r]
            for s in range(s0):
                buf[r * width + s] = 0
            for s in range(s0, s1):
                buf[_u(r * width + s)] = src[_u(iw0 + s)]
            for s in range(s1, width):
                buf[r * width + s] = 0


@njit_fma
def _combine(coefs, rows, r0, pitch, dst, d0, dpitch, length):
    """dst[d0 + o*dpitch + l] = sum over q of coefs[o, q] * rows[r0 + q*pitch + l], for every
    row o of coefs and l < length. coefs has 4, 6 or 8 columns (alpha)."""
    for o in range(coefs.shape[0]):
        d = d0 + o * dpitch
        c = coefs[o]
        if coefs.shape[1] == 4:
            c0, c1, c2, c3 = c[0], c[1], c[2], c[3]
            for l in range(length):
                s = r0 + l
                dst[_u(d + l)] = (c0 * rows[_u(s)] + c1 * rows[_u(s + pitch)]
                                  + c2 * rows[_u(s + 2 * pitch)] + c3 * rows[_u(s + 3 * pitch)])
        elif coefs.shape[1] == 6:
            c0, c1, c2, c3, c4, c5 = c[0], c[1], c[2], c[3], c[4], c[5]
            for l in range(length):
                s = r0 + l
                dst[_u(d + l)] = (c0 * rows[_u(s)] + c1 * rows[_u(s + pitch)]
                                  + c2 * rows[_u(s + 2 * pitch)] + c3 * rows[_u(s + 3 * pitch)]
                                  + c4 * rows[_u(s + 4 * pitch)] + c5 * rows[_u(s + 5 * pitch)])
        else:
            c0, c1, c2, c3, c4, c5, c6, c7 = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
            for l in range(length):
                s = r0 + l
                dst[_u(d + l)] = (c0 * rows[_u(s)] + c1 * rows[_u(s + pitch)]
                                  + c2 * rows[_u(s + 2 * pitch)] + c3 * rows[_u(s + 3 * pitch)]
                                  + c4 * rows[_u(s + 4 * pitch)] + c5 * rows[_u(s + 5 * pitch)]
                                  + c6 * rows[_u(s + 6 * pitch)] + c7 * rows[_u(s + 7 * pitch)])


# A tile row's values sit every m-th column of the input and output rows: literal
# steps for F(2x2) and F(4x4), as in the Cython twin, where gcc moved a runtime
# step's values one at a time: _gather_tiles is inlined with m a literal, and
# _interleave has a loop for each. LLVM vectorises a loop of a runtime count in
# blocks of 16 and more iterations, and ran a row of 14 tiles (56x56, F(4x4)) one
# value at a time: the rows go 8 values at a time, in a loop of that literal
# count. The gathers of 128 channels of VGG-16's conv3_2 (one thread): 0.46 ms as
# a call per row with a runtime count, 0.25 now.
@injit
def _gather_tiles(buf, width, m, alpha, n_tr, tw, dd, d0, nt):
    """dd[d0 + (r*alpha + s)*nt + tr*tw + q] = buf[(tr*m + r)*width + s + q*m], value
    (r, s) of tile (tr, q), for tr < n_tr, q < tw and r, s < alpha."""
    for tr in range(n_tr):
        for r in range(alpha):
            for s in range(alpha):
                b0 = (tr * m + r) * width + s
                e0 = d0 + (r * alpha + s) * nt + tr * tw
                q0 = 0
                while q0 + 8 <= tw:
                    for q in range(8):
                        dd[_u(e0 + q0 + q)] = buf[_u(b0 + (q0 + q) * m)]
                    q0 += 8
                for q in range(q0, tw):
                    dd[_u(e0 + q)] = buf[_u(b0 + q * m)]


@njit
def _interleave(phases, p0, pitch, m, row, width, start):
    """row[q*m + j] = phases[p0 + j*pitch + q] + start for j < m and q*m + j < width."""
    whole = width // m
    if m == 4:
        for q in range(whole):
            row[_u(4 * q)] = phases[_u(p0 + q)] + start
            row[_u(4 * q + 1)] = phases[_u(p0 + pitch + q)] + start
            row[_u(4 * q + 2)] = phases[_u(p0 + 2 * pitch + q)] + start
            row[_u(4 * q + 3)] = phases[_u(p0 + 3 * pitch + q)] + start
    elif m == 2:
        for q in range(whole):
            row[_u(2 * q)] = phases[_u(p0 + q)] + start
            row[_u(2 * q + 1)] = phases[_u(p0 + pitch + q)] + start
    else:
        for q in range(whole):
            for j in range(m):
                row[_u(q * m + j)] = phases[_u(p0 + j * pitch + q)] + start
    for j in range(width - whole * m):      # the row's last tile, cut at its edge
        row[_u(whole * m + j)] = phases[_u(p0 + j * pitch + whole)] + start


@njit
def _winograd_input(x, c0, n_c, bt, v, v0, plane, ld, r0, n_r, th, tw, m, pt, pl):
    """v[v0 + (a*alpha + b)*plane + c*ld + r*tw + q] = (B^T d B)[a, b] of tile (r0 + r, q)
    of channel c0 + c, tile row R of the batch being row R % th of image R // th."""
    alpha, nt = bt.shape[0], n_r * tw
    rows, width = n_r * m + alpha - m, tw * m + alpha - m
    buf = np.empty(rows * width, x.dtype)
    dd = np.empty(alpha * alpha * nt, x.dtype)     # D[r, s] at (r*alpha + s)*nt
    tmp = np.empty(alpha * alpha * nt, x.dtype)    # (B^T d)[a, s] at (a*alpha + s)*nt
    for c in range(n_c):
        for n in range(r0 // th, _ceil_div(r0 + n_r, th)):      # the run's images
            ra = max(r0, n * th)
            rb = min(r0 + n_r, n * th + th)
            _padded_rows(x, n, c0 + c, (ra - n * th) * m - pt, -pl, (rb - ra) * m + alpha - m,
                         width, buf)
            if m == 4:
                _gather_tiles(buf, width, 4, alpha, rb - ra, tw, dd, (ra - r0) * tw, nt)
            elif m == 2:
                _gather_tiles(buf, width, 2, alpha, rb - ra, tw, dd, (ra - r0) * tw, nt)
            else:
                _gather_tiles(buf, width, m, alpha, rb - ra, tw, dd, (ra - r0) * tw, nt)
        for s in range(alpha):
            _combine(bt, dd, s * nt, alpha * nt, tmp, s * nt, alpha * nt, nt)
        for a in range(alpha):
            _combine(bt, tmp, a * alpha * nt, nt, v, v0 + a * alpha * plane + c * ld, plane, nt)


@njit
def _winograd_output(mm, mm0, plane, ld, y, bias, scale, residual, relu, k0, n_k, at,
                     r0, n_r, th, tw):
    """y's tiles (r0 + r, q) of channel k0 + k = A^T M A + bias, then the epilogue,
    M[a, b] = mm[mm0 + (a*alpha + b)*plane + k*ld + r*tw + q], tile row R of the batch
    being row R % th of image R // th."""
    m, alpha, OH, OW = at.shape[0], at.shape[1], y.shape[2], y.shape[3]
    nt = n_r * tw
    # t[(b*m + i)*nt + l] = (A^T M)[i, b], then o[(i*m + j)*nt + l] = (A^T M A)[i, j]
    t = np.empty(alpha * m * nt, y.dtype)
    o = np.empty(m * m * nt, y.dtype)
    for k in range(n_k):
        for b2 in range(alpha):
            _combine(at, mm, mm0 + b2 * plane + k * ld, alpha * plane, t, b2 * m * nt, nt, nt)
        for i in range(m):
            _combine(at, t, i * nt, m * nt, o, i * m * nt, nt, nt)
        # the bias comes after a scale, in _finish_rows
        start = y.dtype.type(0) if scale.shape[0] > 0 else bias[k0 + k]
        for n in range(r0 // th, _ceil_div(r0 + n_r, th)):      # the run's images
            ra = max(r0, n * th)
            rb = min(r0 + n_r, n * th + th)
            out = y[n, k0 + k]
            # output row tr*m + i gets column q*m + j from phase (i, j)
            for tr in range(ra - n * th, rb - n * th):
                for i in range(m):
                    oh = tr * m + i
                    if oh < OH:
                        _interleave(o, i * m * nt + (n * th + tr - r0) * tw, nt, m, out[oh],
                                    OW, start)
            _finish_rows(y, scale, bias, residual, relu, n, k0 + k, (ra - n * th) * m,
                         min((rb - ra) * m, OH - (ra - n * th) * m))


@njit
def _winograd_tile(v, v0, ldv, n_t, u, u0, n_c, mm, m0, ldm, n_k, ahead):
    """mm[m0 + k*ldm + t] = sum over c < n_c of u[u0 + c*TILE_P + k] * v[v0 + c*ldv + t],
    for t < n_t and k < n_k of a register tile of TILE_K tiles by TILE_P output channels
    (_tile's shape, its roles turned: the channels run along the vector lanes, the tiles
    are broadcast). Tiles past n_t repeat tile n_t - 1 and are not stored. Row c of the
    panel at u[ahead] (unless ahead < 0) is prefetched into L2 alongside row c of this
    one."""
    acc = _tile_array(u)
    for t in range(TILE_K):
        _fill_row(acc, t * TILE_P, 0)
    for c in range(n_c):
        vc = v0 + c * ldv
        if ahead >= 0:
            _prefetch_row(u, ahead + c * TILE_P)
        for t in range(TILE_K):
            _fma_row(acc, t * TILE_P, u, u0 + c * TILE_P, v[_u(vc + min(t, n_t - 1))])
    for t in range(n_t):
        for k in range(n_k):
            mm[_u(m0 + k * ldm + t)] = acc[t * TILE_P + k]


@pnjit
def conv2d_fwd_winograd(x,    # IN  (N, C, H, W)
                        u,    # IN  G g G^T: (groups, alpha^2, Kg, Cg),
                              #     or packed (.., panels*Cg, TILE_P)
                        b,    # IN  (K,)
                        y,    # OUT (N, K, OH, OW)
                        scale,    # IN  (K,), or empty: the epilogue's
                        residual,     # IN  like y, or empty
                        relu,
                        bt,   # IN  (alpha, alpha): B^T
                        at,   # IN  (m, alpha): A^T
                        v,    # workspace (alpha^2*Cg, T)
                        mm,   # workspace (alpha^2*Kg, T)
                        packed,
                        kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """Y = A^T [ U (.) (B^T d B) ] A + b, then the epilogue, on every tile (3x3, stride 1,
    dilation 1; pt and pl may be negative, which crops, as the data gradient needs).
    T, the workspaces' width, is a whole number of tile rows.

    Per group and run of tile rows (of one image or several), three parallel phases: the
    threads split the input channels of the input transform, then the alpha^2 GEMMs,
    then the output channels of the output transform. A GEMM runs through BLAS, or,
    packed, in register tiles (_winograd_tile) that read U's panels of TILE_P output
    channels, (Cg, TILE_P) each, the last one padded with zeros. A panel's first pass
    streams it from memory at the pace of its multiply-adds; its later passes (and the
    only one, on up to TILE_K tiles) prefetch the next panel, so that memory stays busy
    while they compute from cache.
    """
    m, alpha2 = at.shape[0], u.shape[1]
    Kg, Cg = y.shape[1] // groups, x.shape[1] // groups
    T = v.shape[1]
    tw, th = _ceil_div(y.shape[3], m), _ceil_div(y.shape[2], m)
    run_rows, rows = T // tw, x.shape[0] * th
    uf, vf, mmf = u.reshape(-1), v.reshape(-1), mm.reshape(-1)
    for g in range(groups):
        for run in range(_ceil_div(rows, run_rows)):
            r0 = run * run_rows
            n_r = min(run_rows, rows - r0)
            nt = n_r * tw
            for t in prange(n_threads):
                c0 = _share(Cg, t, n_threads)
                c1 = _share(Cg, t + 1, n_threads)
                _winograd_input(x, g * Cg + c0, c1 - c0, bt, vf, c0 * T, Cg * T, T,
                                r0, n_r, th, tw, m, pt, pl)
            for ab in prange(alpha2):
                u0 = (g * alpha2 + ab) * u.shape[2] * u.shape[3]
                if packed:
                    for kp in range(_ceil_div(Kg, TILE_P)):
                        for t0 in range(_ceil_div(nt, TILE_K)):
                            _winograd_tile(vf, ab * Cg * T + t0 * TILE_K, T,
                                           min(TILE_K, nt - t0 * TILE_K),
                                           uf, u0 + kp * Cg * TILE_P, Cg, mmf,
                                           (ab * Kg + kp * TILE_P) * T + t0 * TILE_K, T,
                                           min(TILE_P, Kg - kp * TILE_P),
                                           u0 + (kp + 1) * Cg * TILE_P
                                           if (t0 > 0 or nt <= TILE_K) and
                                           (kp + 2) * Cg <= u.shape[2] else -1)
                else:
                    _gemm(False, False, Kg, nt, Cg, 1, uf, u0, Cg, vf, ab * Cg * T, T, 0,
                          mmf, ab * Kg * T, T)
            for t in prange(n_threads):
                k0 = _share(Kg, t, n_threads)
                k1 = _share(Kg, t + 1, n_threads)
                _winograd_output(mmf, k0 * T, Kg * T, T, y, b, scale, residual, relu,
                                 g * Kg + k0, k1 - k0, at, r0, n_r, th, tw)


@njit
def same_bytes(a, b, n_threads):
    """Whether a and b (uint8, of one length) hold the same bytes: the check before a
    cached filter transform is reused. Compared 8 bytes at a time where the length
    allows (9.4 MB, 2 threads: 0.32 ms, as memcmp in the Cython twin; a byte at a
    time 0.43-0.47)."""
    if a.shape[0] % 8 == 0:
        return _same_items(a.view(np.uint64), b.view(np.uint64), n_threads)
    return _same_items(a, b, n_threads)


@pnjit
def _same_items(a, b, n_threads):
    """Whether a and b (of one length) hold the same items, the threads comparing a
    share each."""
    n = a.shape[0]
    differ = 0
    for t in prange(n_threads):
        for i in range(_share(n, t, n_threads), _share(n, t + 1, n_threads)):
            differ += a[_u(i)] != b[_u(i)]
    return differ == 0


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------
# One (n, c) plane per task: a thread owns every pixel it writes, forward and
# backward, so the gradients are deterministic. Window (oh, ow) reads rows
# oh*sh - pt + i*dh; the taps that fall inside the input are
# i0 <= i < i1 (and likewise j0 <= j < j1 for columns), found once per window,
# so the scan has no bounds checks.

@njit
def _first_tap(start, d, k):
    """First tap i of a window starting at ``start`` (step d) with start + i*d >= 0."""
    return _clip(_ceil_div(-start, d), 0, k)


@njit
def _end_tap(start, d, k, size):
    """One past the last tap i of the window with start + i*d < size."""
    return _clip(_ceil_div(size - start, d), 0, k)


@njit
def _tap_rows(OH, kh, sh, pt, dh, H):
    """[i0, i1) of the taps of each output row oh that fall inside the input, computed
    once per call (the integer divisions cost more than a row of vectorised work)."""
    rows = np.empty((OH, 2), np.int64)
    for oh in range(OH):
        rows[oh, 0] = _first_tap(oh * sh - pt, dh, kh)
        rows[oh, 1] = _end_tap(oh * sh - pt, dh, kh, H)
    return rows


@njit
def _tap_cols(OW, kw, sw, pl, dw, W):
    """[ow0, ow1) of the outputs whose tap j reads inside the input, for each tap j."""
    cols = np.empty((kw, 2), np.int64)
    for j in range(kw):
        cols[j, 0] = _first_inside(j * dw - pl, sw, OW)
        cols[j, 1] = _end_inside(j * dw - pl, sw, W, cols[j, 0], OW)
    return cols


@njit
def _avg_factor(o, k, s, p, size, count_include_pad):
    """A factor of the divisor of average pooling along one axis, PyTorch's window
    extent for output o: clipped to the padded input with count_include_pad, else to
    the input."""
    start = o * s - p
    end = min(start + k, size + p)
    if not count_include_pad:
        start, end = max(start, 0), min(end, size)
    return end - start


@njit
def _avg_scale(scale, OH, OW, H, W, kh, kw, sh, sw, pt, pl, count_include_pad,
               divisor_override):
    """scale[oh*OW + ow] = 1 / the divisor of window (oh, ow): divisor_override, or its
    height times its width (_avg_factor), rounded once. What an average pooling's
    forward and its gradient multiply by."""
    widths = np.empty(OW, np.float64)
    for ow in range(OW):
        widths[ow] = 1 if divisor_override else _avg_factor(ow, kw, sw, pl, W, count_include_pad)
    for oh in range(OH):
        height = np.float64(divisor_override if divisor_override
                            else _avg_factor(oh, kh, sh, pt, H, count_include_pad))
        for ow in range(OW):
            scale[oh * OW + ow] = 1 / (height * widths[ow])


@njit
def _max_tap(xrow, off, yrow, irow, lo, hi, stride, at):
    """Windows lo .. hi-1 of an output row take their tap xrow[off + ow*stride], whose flat
    index is at + ow*stride, if it wins: selects rather than a branch, so that the loop
    vectorises. LLVM vectorises literal strides only, once inlined: 1 and 2 are passed
    as such (gcc does not: the Cython twin splits strided rows into phases)."""
    for ow in range(lo, hi):
        val = xrow[_u(off + ow * stride)]
        wins = (val > yrow[_u(ow)]) | (val != val)
        yrow[_u(ow)] = val if wins else yrow[_u(ow)]
        irow[_u(ow)] = at + ow * stride if wins else irow[_u(ow)]


# A stride-1 window (dilation 1) is separable and the plane is small enough to
# take whole: each output row's column sums (or maxima) of its kh input rows
# come first, and where all kh rows lie inside the input the rows below each
# other are one flat pass over the plane, tap i the flat shift i*W (where the
# output is no wider than the input; else each row on its own). A flat pass over
# those columns, tap j the shift j, then takes every window's kw columns, the
# windows at the row ends (which that shift carries into the next row) recomputed
# on their own, clipped to the input; the padding needs no copy of the plane, and
# where the output is at least as wide as the input (the usual padding of
# (k - 1)/2, or an even window's of k/2) the pass writes the output plane
# itself. Row by row, each tap was a loop of OW, whose setup cost more than its
# work on GoogLeNet's and Inception v3's 3x3 poolings of 7x7 to 35x35 maps (max
# on 480x14x14 0.41-0.44 ms, Cython).
# The padded plane that came next (copied in, reduced flat, copied out by rows)
# against these flat passes, in-process A/B, 2 threads, us, Cython / Numba:
# average 192x35x35 89-108 -> 48-58 / 97-101 -> 53-66, 768x17x17 104-111 ->
# 66-74 / 133-137 -> 74-83; max 480x14x14 52-57 -> 41-45 / 62-71 -> 41-45,
# 64x112x112 273-292 -> 184-210 / 306-313 -> 173-181, 832x7x7 unchanged (44-57).
# The average's gradient is such a window sum too (of dL/dY times the divisor's
# reciprocal, padded by k - 1 - p): 192x35x35 102-113 -> 48-51 / 126-128 -> 51-55.
#
# The average multiplies by the divisor's reciprocal, one plane of them for the
# call: a division (vdivps) costs ten times a multiplication, and took a quarter
# of the 192x35x35 average's time; the product is within an ulp of the quotient.

@njit
def _whole_planes(sh, sw, dh, dw):
    """Whether a pooling's windows are taken over whole planes
    (_stride1_windows), rather than reduced down the rows first (_strided_windows)."""
    return sh == 1 and sw == 1 and dh == 1 and dw == 1


@njit
def _strided_pitch(OW, kw, sw, pl, dw):
    """P >= OW, the outputs a row of _strided_windows takes: its P*sw columns, the
    input's from column 0, hold the (OW - 1)*sw - pl + (kw - 1)*dw + 1 that the row's
    windows reach (P = OW unless windows overlap past the padding, as 3x3 stride 2
    without padding)."""
    return OW + max(0, ((kw - 1) * dw - pl) // sw)


@njit
def _pool2(acc, val, is_max):
    """acc and val pooled: the larger (NaN wins, as in maxpool2d_fwd) or the sum, in
    the Cython twin's form (there it keeps gcc's scalar code from branching; LLVM
    selects without branches either way)."""
    if is_max:
        return val if val != val else (val if val > acc else acc)
    return acc + val


@njit
def _flat_taps(src, s0, stride, step, taps, dst, d0, length, is_max):
    """dst[d0 + p] = the maximum or the sum over t < taps, in order, of
    src[s0 + p*stride + t*step], for p < length: up to three taps a pass, pooled in
    registers (one pass a tap loaded and stored dst for each). Called with a literal
    stride and step, which LLVM vectorises."""
    first = (taps - 1) % 3 + 1
    if first == 1:
        for p in range(length):
            dst[_u(d0 + p)] = src[_u(s0 + p * stride)]
    elif first == 2:
        for p in range(length):
            dst[_u(d0 + p)] = _pool2(src[_u(s0 + p * stride)], src[_u(s0 + p * stride + step)],
                                     is_max)
    else:
        for p in range(length):
            dst[_u(d0 + p)] = _pool2(
                _pool2(src[_u(s0 + p * stride)], src[_u(s0 + p * stride + step)], is_max),
                src[_u(s0 + p * stride + 2 * step)], is_max)
    for t in range(first, taps, 3):
        s = s0 + t * step
        for p in range(length):
            acc = _pool2(dst[_u(d0 + p)], src[_u(s + p * stride)], is_max)
            acc = _pool2(acc, src[_u(s + p * stride + step)], is_max)
            dst[_u(d0 + p)] = _pool2(acc, src[_u(s + p * stride + 2 * step)], is_max)


@injit
def _edge_windows(cols, c0, V, W, OH, ow0, ow1, kw, sw, pl, dw, is_max, z, z0, P):
    """z[z0 + oh*P + ow] = the maximum or sum, in order, of
    cols[c0 + oh*V + ow*sw - pl + j*dw] over j < kw with 0 <= ow*sw - pl + j*dw < W, for
    the columns ow0 <= ow < ow1 of OH rows: a tap at a time down the column, as the
    Cython twin (whose window-at-a-time loops cost gcc's code a fifth of the 768x17x17
    average; LLVM's ran either order alike)."""
    for ow in range(ow0, ow1):
        c = ow * sw - pl
        j0 = _first_tap(c, dw, kw)
        j1 = _end_tap(c, dw, kw, W)
        at = c0 + c
        for oh in range(OH):
            z[_u(z0 + oh * P + ow)] = cols[_u(at + oh * V + j0 * dw)]
        for j in range(j0 + 1, j1):
            for oh in range(OH):
                q = z0 + oh * P + ow
                z[_u(q)] = _pool2(z[_u(q)], cols[_u(at + oh * V + j * dw)], is_max)


@injit
def _stride1_windows(flat, f0, H, W, OH, OW, kh, kw, pt, pl, fill, is_max, scale, buf, out,
                     o0):
    """out[o0 + oh*OW + ow] = the maximum or sum of window (oh, ow) of the H x W plane at
    flat[f0:] padded with fill (pt, pl <= kh - 1, kw - 1), stride 1, times
    scale[oh*OW + ow] unless scale is empty; buf holds 2*OH*P + kw values,
    P = max(W, OW). buf[pl:] holds OH rows of P, each row's kh input rows pooled."""
    P = max(W, OW)
    L, r0, r1 = OH * P, pt, min(OH, H - kh + 1 + pt)
    z, z0 = (out, o0) if OW == P else (buf, L + kw)
    # the margins, and columns W .. P-1, reach only the windows _edge_windows redoes:
    # fill keeps the flat pass from reading uninitialised memory
    buf[:pl] = fill
    buf[pl + L:L + kw - 1] = fill
    if P == W and r1 > r0:      # rows r0 .. r1-1 flat, the others on their own
        _flat_taps(flat, f0 + (r0 - pt) * W, 1, W, kh, buf, pl + r0 * W, (r1 - r0) * W,
                   is_max)
    else:
        r0 = r1 = 0
    for b in range(OH - (r1 - r0)):
        oh = b if b < r0 else b + r1 - r0
        i0 = max(0, pt - oh)
        i1 = min(kh, H + pt - oh)
        _flat_taps(flat, f0 + (oh - pt + i0) * W, 1, W, i1 - i0, buf, pl + oh * P, W,
                   is_max)
        buf[pl + oh * P + W:pl + oh * P + P] = fill
    _flat_taps(buf, 0, 1, 1, kw, z, z0, L, is_max)
    _edge_windows(buf, pl, P, W, OH, 0, min(pl, OW), kw, 1, pl, 1, is_max, z, z0, P)
    _edge_windows(buf, pl, P, W, OH, max(pl, W - kw + 1 + pl), OW, kw, 1, pl, 1, is_max, z,
                  z0, P)
    if OW != P:
        for oh in range(OH):
            for ow in range(OW):
                v = buf[_u(z0 + oh * P + ow)]
                out[_u(o0 + oh * OW + ow)] = v if scale.shape[0] == 0 \
                    else v * scale[_u(oh * OW + ow)]
    elif scale.shape[0]:
        for q in range(OH * OW):
            out[_u(o0 + q)] = out[_u(o0 + q)] * scale[_u(q)]


# A strided window is separable too, but its rows are not a flat shift of each
# other: each output row first reduces its kh input rows (contiguous, the whole
# width) into a row of V = P*sw values, the input's columns 0 .. V - 1 (fill past
# its last; P = _strided_pitch), then one pass over all those rows, flat, takes
# the kw taps of every window at stride sw (window q of a row reads its columns
# q*sw - pl + j*dw: the flat index of the row's start plus those), a band of rows
# at a time that stays in L1. The windows with a tap left of column 0, a few a row,
# read the row before's last values there: _edge_windows redoes them. Where
# P = OW (the windows do not overlap, or a padding of 1 covers 3x3 stride 2's
# overlap) the flat pass writes the output itself. Row by row and tap by tap, the
# 3x3 stride-2 max pooling of ResNet's stem reduced each input row 1.5 times and ran
# twelve loops of 56 or 112 per output row; with the rows padded on the left, a
# value longer than the output's, and the windows copied out, it took 0.094-0.095 ms
# against 0.086.

POOL_BAND = 6144    # values (24 KB of float32) of a band of _strided_windows' rows


@njit
def _strided_windows(flat, f0, W, oh0, oh1, OW, kw, sh, sw, pt, pl, dh, dw, rows, fill,
                     is_max, buf, b0, out, o0):
    """out[o0 + (oh - oh0)*P + ow] = the maximum or sum of window (oh, ow),
    oh0 <= oh < oh1, of the plane of W columns at flat[f0:] padded with fill,
    P = _strided_pitch; rows is _tap_rows; buf[b0:] holds pl + (oh1 - oh0)*P*sw values."""
    P = _strided_pitch(OW, kw, sw, pl, dw)
    V, OH = P * sw, oh1 - oh0
    Wc = min(W, V)
    buf[b0:b0 + pl] = fill      # read only by windows _edge_windows redoes
    for oh in range(oh0, oh1):
        d = b0 + pl + (oh - oh0) * V
        i0 = rows[oh, 0]
        _flat_taps(flat, f0 + (oh * sh - pt + i0 * dh) * W, 1, dh * W, rows[oh, 1] - i0, buf,
                   d, Wc, is_max)
        buf[d + Wc:d + V] = fill
    if sw == 2 and dw == 1:
        _flat_taps(buf, b0, 2, 1, kw, out, o0, (OH - 1) * P + OW, is_max)
    else:
        _flat_taps(buf, b0, sw, dw, kw, out, o0, (OH - 1) * P + OW, is_max)
    _edge_windows(buf, b0 + pl, V, W, OH, 0, min(OW, _ceil_div(pl, sw)), kw, sw, pl, dw, is_max,
                  out, o0, P)


# Inlined, so that its parallel loop belongs to the kernel that calls it, compiled
# with parallel=True: a cached kernel compiled without it that calls a parallel
# function does not start Numba's threads when it is loaded from the cache (Numba
# issue 8578), and as a process's first Numba call it crashed the process
@injit
def _plane_pool(src, dst, kh, kw, sh, sw, pt, pl, dh, dw, scale, backward, n_threads):
    """Pooling a plane at a time, a share of the planes per thread: dst's windows of
    src, the maximum (values only; scale empty) or the average, window (oh, ow) times
    scale[oh*OW + ow], the divisor's reciprocal (_avg_scale). Backward (stride 1,
    dilation 1), the average's gradient: src (dL/dY) scaled first (scale then has
    src's plane shape), then each input pixel sums the windows that cover it, which
    at stride 1 form a window of the same size, padded by kh - 1 - pt and kw - 1 - pl."""
    C, IH, IW = src.shape[1], src.shape[2], src.shape[3]
    OH, OW = dst.shape[2], dst.shape[3]
    planes, is_max, whole = src.shape[0] * C, scale.shape[0] == 0, _whole_planes(sh, sw, dh, dw)
    pitch = max(IW, OW) if whole else _strided_pitch(OW, kw, sw, pl, dw)
    direct = pitch == OW        # the strided windows written in place
    band = OH if whole else max(1, min(OH, POOL_BAND // (pitch * (1 + sw))))
    rows = np.empty((0, 2), np.int64) if whole else _tap_rows(OH, kh, sh, pt, dh, IH)
    qt, ql = (kh - 1 - pt, kw - 1 - pl) if backward else (pt, pl)
    fill = -np.inf if is_max else 0
    windows_scale = scale[:0] if backward else scale
    # flat views made once: views of each plane, made inside the threads, each count a
    # reference to the caller's array (an atomic add to the count both threads share),
    # and took 10-20% longer on planes of 7x7 to 17x17
    srcf, dstf = src.reshape(-1), dst.reshape(-1)
    for t in prange(n_threads):
        buf = np.empty(2 * OH * pitch + kw if whole else pl + band * pitch * (1 + sw),
                       dst.dtype)
        shares = np.empty(IH * IW if backward else 1, dst.dtype)
        for plane in range(_share(planes, t, n_threads), _share(planes, t + 1, n_threads)):
            windows_src, w0, d0 = srcf, plane * IH * IW, plane * OH * OW
            if backward:
                for i in range(IH * IW):
                    shares[_u(i)] = srcf[_u(w0 + i)] * scale[_u(i)]
                windows_src, w0 = shares, 0
            if whole:
                _stride1_windows(windows_src, w0, IH, IW, OH, OW, kh, kw, qt, ql, fill, is_max,
                                 windows_scale, buf, dstf, d0)
            else:
                for b in range(_ceil_div(OH, band)):
                    oh0 = b * band
                    oh1 = min(OH, oh0 + band)
                    windows, o0 = (dstf, d0 + oh0 * OW) if direct else (buf, 0)
                    _strided_windows(windows_src, w0, IW, oh0, oh1, OW, kw, sh, sw, pt, pl, dh,
                                     dw, rows, fill, is_max, buf, band * pitch, windows, o0)
                    if direct and not is_max:
                        for i in range(oh0 * OW, oh1 * OW):
                            dstf[_u(d0 + i)] = dstf[_u(d0 + i)] * scale[_u(i)]
                    elif not direct:
                        for oh in range(oh0, oh1):
                            b0 = (oh - oh0) * pitch
                            for ow in range(OW):
                                dstf[_u(d0 + oh * OW + ow)] = buf[_u(b0 + ow)] if is_max \
                                    else buf[_u(b0 + ow)] * scale[_u(oh * OW + ow)]


@njit
def _max_row(x, n, c, oh, yrow, irow, rows, cols, first, kw, sh, sw, pt, pl, dh, dw):
    """The maxima of output row oh of plane (n, c) and their flat indices, ih*W + iw.

    The row takes the taps one at a time, in row-major order, across all its
    windows at once, so every window sees its taps in the same order as a scan of
    it alone would, and the inner loop over contiguous outputs vectorises."""
    W = x.shape[3]
    ih = oh * sh - pt + rows[oh, 0] * dh
    for ow in range(first.shape[0]):
        yrow[ow] = -np.inf
        irow[ow] = ih * W + first[ow]
    for i in range(rows[oh, 0], rows[oh, 1]):
        ih = oh * sh - pt + i * dh
        xrow = x[n, c, ih]
        for j in range(kw):
            off = j * dw - pl
            if sw == 1:     # literal strides, which LLVM vectorises (see _max_tap)
                _max_tap(xrow, off, yrow, irow, cols[j, 0], cols[j, 1], 1, ih * W + off)
            elif sw == 2:
                _max_tap(xrow, off, yrow, irow, cols[j, 0], cols[j, 1], 2, ih * W + off)
            else:
                _max_tap(xrow, off, yrow, irow, cols[j, 0], cols[j, 1], sw, ih * W + off)


@njit
def _max_taps(x, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw):
    """_tap_rows and _tap_cols of a max pooling, and the column, within its row, of
    each window's first tap inside the input (where a window of -inf points)."""
    first = np.empty(OW, np.int64)
    for ow in range(OW):
        first[ow] = ow * sw - pl + _first_tap(ow * sw - pl, dw, kw) * dw
    return (_tap_rows(OH, kh, sh, pt, dh, x.shape[2]), _tap_cols(OW, kw, sw, pl, dw, x.shape[3]),
            first)


@pnjit
def maxpool2d_fwd(x,        # IN  (N, C, H, W)
                  y,        # OUT (N, C, OH, OW)
                  indices,  # OUT (N, C, OH, OW): ih*W + iw of the max
                  kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """y = max over each window with PyTorch's CPU rule: scanning a window row-major,
    a strictly larger value or any NaN replaces the maximum, which starts at -inf on
    the window's first pixel inside the input (so a window of -inf indexes that)."""
    C, OH, OW = x.shape[1], y.shape[2], y.shape[3]
    rows, cols, first = _max_taps(x, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw)
    for plane in prange(x.shape[0] * C):
        n = plane // C
        c = plane % C
        for oh in range(OH):
            _max_row(x, n, c, oh, y[n, c, oh], indices[n, c, oh], rows, cols, first,
                     kw, sh, sw, pt, pl, dh, dw)


@pnjit
def maxpool2d_bwd_input(x,    # IN  (N, C, H, W)
                        dy,   # IN  (N, C, OH, OW)
                        dx,   # OUT (N, C, H, W)
                        kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """maxpool2d_fwd then maxpool2d_bwd in one pass over X (the gradient from X rather
    than from kept indices): each output row's maxima and indices go to scratch rows
    of the plane's, and the row's gradients straight to them. Nothing of the size of
    Y is written, and the plane of dX being added into stays in cache."""
    C, OH, OW = x.shape[1], dy.shape[2], dy.shape[3]
    rows, cols, first = _max_taps(x, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw)
    for plane in prange(x.shape[0] * C):
        n = plane // C
        c = plane % C
        best = np.empty(OW, x.dtype)
        at = np.empty(OW, np.int64)
        _zero_plane(dx, n, c)
        dxp = dx[n, c].reshape(-1)      # an index is a flat offset into the plane
        for oh in range(OH):
            _max_row(x, n, c, oh, best, at, rows, cols, first, kw, sh, sw, pt, pl, dh, dw)
            for ow in range(OW):
                dxp[_u(at[ow])] += dy[n, c, oh, ow]


@pnjit
def maxpool2d_fwd_values(x,  # IN  (N, C, H, W)
                         y,  # OUT (N, C, OH, OW)
                         kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """y = max over each window, without the indices (inference). The maximum of a
    window does not depend on the order of its taps (but for which of equal zeros,
    -0.0 or 0.0, and which NaN's payload, comes out), so the windows are reduced a
    plane at a time, down the rows and then along them (_plane_pool). NaN wins as in
    maxpool2d_fwd."""
    _plane_pool(x, y, kh, kw, sh, sw, pt, pl, dh, dw, np.empty(0, y.dtype), False, n_threads)


@pnjit
def maxpool2d_bwd(dy,       # IN  (N, C, OH, OW)
                  indices,  # IN  (N, C, OH, OW)
                  dx,       # OUT (N, C, H, W)
                  n_threads):
    """Each window's gradient goes to its maximum; overlapping windows add up."""
    C, OHW = dx.shape[1], dy.shape[2] * dy.shape[3]
    for plane in prange(dx.shape[0] * C):
        n = plane // C
        c = plane % C
        _zero_plane(dx, n, c)
        dxp = dx[n, c].reshape(-1)      # an index is a flat offset into the plane
        dyp = dy[n, c].reshape(-1)
        ip = indices[n, c].reshape(-1)
        for p in range(OHW):
            dxp[_u(ip[p])] += dyp[p]


@pnjit
def avgpool2d_fwd(x,   # IN  (N, C, H, W)
                  y,   # OUT (N, C, OH, OW)
                  kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    """y = (sum over each window) / divisor; ``divisor_override`` is 0 when unset.

    Like max pooling's values, the windows are summed a plane at a time (_plane_pool)."""
    scale = np.empty(y.shape[2] * y.shape[3], y.dtype)
    _avg_scale(scale, y.shape[2], y.shape[3], x.shape[2], x.shape[3], kh, kw, sh, sw, pt, pl,
               count_include_pad, divisor_override)
    _plane_pool(x, y, kh, kw, sh, sw, pt, pl, dh, dw, scale, False, n_threads)


@pnjit
def avgpool2d_bwd(dy,  # IN  (N, C, OH, OW)
                  dx,  # OUT (N, C, H, W)
                  kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    """Each input pixel receives dL/dY / divisor from every window that covers it.

    The forward's transpose: a row of shares, dL/dY times the reciprocal of the
    divisor (_avg_scale, as the forward's), is worked out once per output row, in a
    scratch row of the plane's, then added tap by tap along the input rows it covers."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    scale = np.empty(OH * OW, dx.dtype)
    _avg_scale(scale, OH, OW, H, W, kh, kw, sh, sw, pt, pl, count_include_pad, divisor_override)
    if _whole_planes(sh, sw, dh, dw):
        _plane_pool(dy, dx, kh, kw, 1, 1, pt, pl, 1, 1, scale, True, n_threads)
        return
    rows, cols = _tap_rows(OH, kh, sh, pt, 1, H), _tap_cols(OW, kw, sw, pl, 1, W)
    for plane in prange(dx.shape[0] * C):
        n = plane // C
        c = plane % C
        share = np.empty(OW, dx.dtype)
        _zero_plane(dx, n, c)
        for oh in range(OH):
            h0 = oh * sh - pt
            for ow in range(OW):
                share[_u(ow)] = dy[n, c, oh, ow] * scale[_u(oh * OW + ow)]
            for i in range(rows[oh, 0], rows[oh, 1]):
                dxrow = dx[n, c, h0 + i]
                for j in range(kw):
                    off = j - pl
                    for ow in range(cols[j, 0], cols[j, 1]):
                        dxrow[_u(ow * sw + off)] += share[_u(ow)]


@njit
def _span_sum(a, start, n):
    """Sum of a[start:start+n] (an adaptive window of whole rows) in four interleaved
    partial sums: one running sum waits for each addition to finish (4 cycles) before
    the next, four keep the adder busy. (The Cython twin keeps one: gcc turned its
    four into shuffles of vector loads. One here made ResNet's global pooling, when it
    summed its planes so, 5-25% slower, in-process A/Bs.)"""
    s0 = s1 = s2 = s3 = a.dtype.type(0)
    end = n - n % 4
    for i in range(0, end, 4):
        s0 = s0 + a[_u(start + i)]
        s1 = s1 + a[_u(start + i + 1)]
        s2 = s2 + a[_u(start + i + 2)]
        s3 = s3 + a[_u(start + i + 3)]
    for i in range(end, n):
        s0 = s0 + a[_u(start + i)]
    return (s0 + s1) + (s2 + s3)


@pnjit
def adaptive_avgpool2d_fwd(x,  # IN  (N, C, H, W)
                           y,  # OUT (N, C, OH, OW)
                           n_threads):
    """Window (oh, ow) averages rows [floor(oh*H/OH), ceil((oh+1)*H/OH)) and likewise columns."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    if OH == 1 and OW == 1:
        # global pooling: plane p is row p of a (planes x H*W) matrix, its mean
        # y[p] = (row . ones) * 1/(H*W), a share of the rows per thread. BLAS keeps
        # several rows' sums in flight; one short sum after another (49 values on
        # ResNet's 7x7 maps) waited on its adds: (8, 2048, 7, 7) took 77-83 us.
        planes, means, ones = x.reshape(-1), y.reshape(-1), np.ones(H * W, y.dtype)
        for t in prange(n_threads):
            p0 = _share(x.shape[0] * C, t, n_threads)
            p1 = _share(x.shape[0] * C, t + 1, n_threads)
            if p1 > p0:
                _row_sums(p1 - p0, H * W, 1 / (H * W), planes, p0 * H * W, ones, means, p0)
        return
    for plane in prange(x.shape[0] * C):
        n = plane // C
        c = plane % C
        src = x[n, c]
        for oh in range(OH):
            h0 = oh * H // OH
            h1 = _ceil_div((oh + 1) * H, OH)
            for ow in range(OW):
                w0 = ow * W // OW
                w1 = _ceil_div((ow + 1) * W, OW)
                if w1 - w0 == W:            # whole rows: one contiguous span
                    total = _span_sum(src.reshape(-1), h0 * W, (h1 - h0) * W)
                else:
                    total = x.dtype.type(0)
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            total = total + src[_u(ih), _u(iw)]
                y[n, c, oh, ow] = total / ((h1 - h0) * (w1 - w0))


@pnjit
def adaptive_avgpool2d_bwd(dy,  # IN  (N, C, OH, OW)
                           dx,  # OUT (N, C, H, W)
                           n_threads):
    """Each window spreads dL/dY evenly over the pixels it averaged."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    if OH == 1 and OW == 1:
        # global pooling: plane p, the span dx[p*H*W : (p+1)*H*W], is filled with
        # dy[p] / (H*W), with no window arithmetic (as the forward)
        means, planes = dy.reshape(-1), dx.reshape(-1)
        for plane in prange(dx.shape[0] * C):
            share = means[plane] / (H * W)
            for q in range(plane * H * W, (plane + 1) * H * W):
                planes[_u(q)] = share
        return
    for plane in prange(dx.shape[0] * C):
        n = plane // C
        c = plane % C
        _zero_plane(dx, n, c)
        dst = dx[n, c]
        for oh in range(OH):
            h0 = oh * H // OH
            h1 = _ceil_div((oh + 1) * H, OH)
            for ow in range(OW):
                w0 = ow * W // OW
                w1 = _ceil_div((ow + 1) * W, OW)
                share = dy[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        dst[_u(ih), _u(iw)] += share


# ---------------------------------------------------------------------------
# Per-channel scale and shift (BatchNorm at inference), with an optional ReLU
# ---------------------------------------------------------------------------

@pnjit
def channel_affine(x,      # IN  (N, C, H, W)
                   scale,  # IN  (C,)
                   shift,  # IN  (C,)
                   y,      # OUT (N, C, H, W), may be x itself
                   relu, n_threads):
    """y = x * scale[c] + shift[c], then max(y, 0) if ``relu`` (NaN stays NaN)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    zero = x.dtype.type(0)
    for plane in prange(x.shape[0] * C):
        n = plane // C
        c = plane % C
        a = scale[c]
        b = shift[c]
        src = x[n, c]
        dst = y[n, c]
        for i in range(H):
            for j in range(W):
                dst[_u(i), _u(j)] = _epilogue(src[_u(i), _u(j)], a, b, zero, relu, zero)


# ---------------------------------------------------------------------------
# Fully connected layer
# ---------------------------------------------------------------------------

@pnjit
def linear_fwd(x,  # IN  (B, in)
               w,  # IN  (out, in)
               b,  # IN  (out,), or empty for no bias
               y,  # OUT (B, out)
               n_threads):
    """Y = X . W^T + b, each thread a share of the output features (in runs of 16,
    whole cache lines of Y) with one single-threaded GEMM. At batch 1 the product
    only streams W from memory, and one core cannot draw the bandwidth that two can;
    it is then a dot product per row of W, which streamed VGG-16's 411 MB first layer
    at 32-34 GB/s where BLAS's matrix-vector product drew 27-29 (PyTorch's: 33-35)."""
    B, IN, OUT = x.shape[0], x.shape[1], w.shape[0]
    runs = _ceil_div(OUT, 16)
    xf, wf, yf = x.reshape(-1), w.reshape(-1), y.reshape(-1)
    for t in prange(n_threads):
        o0 = min(OUT, _share(runs, t, n_threads) * 16)
        o1 = min(OUT, _share(runs, t + 1, n_threads) * 16)
        if o1 == o0:
            continue
        if B == 1:
            for o in range(o0, o1):
                yf[o] = _dot(wf, o * IN, xf, 0, IN)
        else:
            _gemm(False, True, B, o1 - o0, IN, 1, xf, 0, IN, wf, o0 * IN, IN, 0, yf, o0, OUT)
        if b.shape[0]:
            for i in range(B):
                for o in range(o0, o1):
                    y[i, o] += b[o]
