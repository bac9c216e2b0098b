# cython: language_level=3
"""Compiled CPU kernels (Cython + OpenMP); ``fastconv/_numba_kernels.py`` is their twin.

Each kernel takes arrays first, each marked IN or OUT, then
``kh, kw, sh, sw, pt, pl, dh, dw`` (and ``groups`` for convolutions), then
``n_threads``; sizes are read from the arrays. The caller
(``fastconv.backends.cython``) has validated every argument and allocated
every output and workspace, so bounds checks are off (see setup.py for the
switch that turns them back on) and the loops run without the GIL.

Threads: everything runs on OpenMP's threads. The matrix products are
called from inside the parallel loops, one single-threaded GEMM per task (the
caller pins BLAS to one thread), so that BLAS's own pool never competes with
OpenMP's for the cores.
"""

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

import numpy as np

# A function that must keep its own registers: gcc inlines a small function
# into its caller, and inside a large parallel region its register allocation
# may spill what the function's inner loop needs (see _tile).
cdef extern from *:
    """
    #if defined(__GNUC__)
    #define fastconv_noinline_void __attribute__((noinline)) void
    #elif defined(_MSC_VER)
    #define fastconv_noinline_void __declspec(noinline) void
    #else
    #define fastconv_noinline_void void
    #endif
    """
    ctypedef void noinline_void "fastconv_noinline_void"

cdef extern from *:
    """
    #if defined(__GNUC__)
    #define fastconv_prefetch(p) __builtin_prefetch((p), 0, 2)
    #else
    #define fastconv_prefetch(p) ((void)(p))
    #endif
    """
    void _prefetch "fastconv_prefetch"(const void* p) noexcept nogil


def openmp_threads(int n_threads):
    """How many threads a parallel region asked for ``n_threads`` really ran on.

    1 when the extension was built without OpenMP (prange then runs serially).
    """
    cdef int i, most = 1
    cdef int[256] ran
    n_threads = max(1, min(n_threads, 256))
    with nogil:
        for i in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            ran[i] = threadid() + 1
    for i in range(n_threads):
        most = max(most, ran[i])
    return most


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0 and any sign of a (C division truncates toward zero)."""
    if a > 0:
        return (a + b - 1) // b
    return -((-a) // b)


cdef inline Py_ssize_t _clip(Py_ssize_t v, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


# Outputs o in [first, end) read inside the input, 0 <= o*stride + offset < size.
# Peeling the outputs that read padding off both ends leaves an inner loop
# without bounds checks. (Two functions that return values rather than one that
# writes through pointers: prange makes a variable thread-private only when the
# loop body assigns it.)
cdef inline Py_ssize_t _first_inside(Py_ssize_t offset, Py_ssize_t stride,
                                     Py_ssize_t n_out) noexcept nogil:
    return _clip(_ceil_div(-offset, stride), 0, n_out)


cdef inline Py_ssize_t _end_inside(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                   Py_ssize_t first, Py_ssize_t n_out) noexcept nogil:
    return _clip(_ceil_div(size - offset, stride), first, n_out)


cdef inline void _gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                       const floating* a, int lda, const floating* b, int ldb, floating beta,
                       floating* c, int ldc) noexcept nogil:
    """Row-major ``C (m x n) = alpha op(A) op(B) + beta C`` through column-major BLAS.

    Row-major memory read column-major is the transpose, so BLAS computes
    ``C^T = op(B)^T op(A)^T``: the operands swap places and keep their flags.
    """
    cdef char ta = b"T" if trans_a else b"N"
    cdef char tb = b"T" if trans_b else b"N"
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline void _row_sums(int rows, int n, floating alpha, const floating* a,
                           const floating* ones, floating* y) noexcept nogil:
    """y[r] = alpha * the sum of row r of row-major A (rows x n), for r < rows: BLAS's
    matrix-vector product of A, read column-major as its transpose, with ones."""
    cdef char t = b"T"
    cdef int one = 1
    cdef floating zero = 0
    if floating is float:
        sgemv(&t, &n, &rows, &alpha, <float*>a, &n, <float*>ones, &one, &zero, y, &one)
    else:
        dgemv(&t, &n, &rows, &alpha, <double*>a, &n, <double*>ones, &one, &zero, y, &one)


# ---------------------------------------------------------------------------
# im2col / col2im on a block of output rows
# ---------------------------------------------------------------------------
# A block covers output rows oh0 .. oh0+rows-1 of one image. Its lowered
# matrix has a row per (c, i, j) and a column per output pixel of the block,
# (r, ow) -> r*OW + ow. These helpers are serial: the callers parallelise
# over rows, planes or blocks.

cdef void _lower_row(const floating[:, :, :, ::1] x, Py_ssize_t n, Py_ssize_t c,
                     Py_ssize_t i, Py_ssize_t j, floating* dst,
                     Py_ssize_t oh0, Py_ssize_t rows, Py_ssize_t OW,
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                     Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """dst[r*OW + ow] = x[n, c, (oh0+r)*sh - pt + i*dh, ow*sw - pl + j*dw], 0 in the padding."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t r, ow, ih
    cdef Py_ssize_t iw0 = j * dw - pl
    cdef Py_ssize_t ow0 = _first_inside(iw0, sw, OW)
    cdef Py_ssize_t ow1 = _end_inside(iw0, sw, W, ow0, OW)
    cdef const floating* row
    for r in range(rows):
        ih = (oh0 + r) * sh - pt + i * dh
        if ih < 0 or ih >= H:
            for ow in range(OW):
                dst[ow] = 0
        else:
            for ow in range(ow0):
                dst[ow] = 0
            row = &x[n, c, ih, 0]
            if sw == 1:     # a contiguous copy, which the compiler vectorises
                for ow in range(ow0, ow1):
                    dst[ow] = row[ow + iw0]
            elif sw == 2:   # constant strides: gcc vectorises them with shuffles
                for ow in range(ow0, ow1):
                    dst[ow] = row[ow * 2 + iw0]
            elif sw == 4:
                for ow in range(ow0, ow1):
                    dst[ow] = row[ow * 4 + iw0]
            else:
                for ow in range(ow0, ow1):
                    dst[ow] = row[ow * sw + iw0]
            for ow in range(ow1, OW):
                dst[ow] = 0
        dst += OW


# A strided lowering reads every sw-th input pixel, which compilers turn into
# gathers. Each input row the block needs is therefore split once into its sw
# phases, with the padding as zeros: phase p holds padded columns p, p + sw,
# p + 2*sw, ... Tap j reads padded columns ow*sw + j*dw, which are the
# consecutive entries (j*dw) // sw + ow of phase (j*dw) % sw, so every lowered
# row becomes a contiguous copy, and the kh*kw taps share one strided pass.

cdef void _split_phases(const floating* row, Py_ssize_t W, Py_ssize_t sw, Py_ssize_t pl,
                        Py_ssize_t Q, floating* dst, Py_ssize_t pitch) noexcept nogil:
    """dst[p*pitch + q] = row[q*sw + p - pl] for p < sw and q < Q, 0 off the row."""
    cdef Py_ssize_t p, q, q0, q1
    cdef floating* d
    for p in range(sw):
        d = dst + p * pitch
        q0 = _first_inside(p - pl, sw, Q)
        q1 = _end_inside(p - pl, sw, W, q0, Q)
        for q in range(q0):
            d[q] = 0
        if sw == 1:
            for q in range(q0, q1):
                d[q] = row[q - pl]
        elif sw == 2:   # constant strides: gcc vectorises them with shuffles
            for q in range(q0, q1):
                d[q] = row[q * 2 + p - pl]
        elif sw == 4:
            for q in range(q0, q1):
                d[q] = row[q * 4 + p - pl]
        else:
            for q in range(q0, q1):
                d[q] = row[q * sw + p - pl]
        for q in range(q1, Q):
            d[q] = 0


cdef void _merge_phases(const floating* src, Py_ssize_t W, Py_ssize_t sw, Py_ssize_t pl,
                        Py_ssize_t Q, floating* row) noexcept nogil:
    """row[q*sw + p - pl] += src[p*Q + q] where that is on the row: _split_phases' adjoint."""
    cdef Py_ssize_t p, q, q0, q1
    for p in range(sw):
        q0 = _first_inside(p - pl, sw, Q)
        q1 = _end_inside(p - pl, sw, W, q0, Q)
        if sw == 2:
            for q in range(q0, q1):
                row[q * 2 + p - pl] += src[p * Q + q]
        elif sw == 4:
            for q in range(q0, q1):
                row[q * 4 + p - pl] += src[p * Q + q]
        else:
            for q in range(q0, q1):
                row[q * sw + p - pl] += src[p * Q + q]


cdef void _unlower_plane(const floating* src, Py_ssize_t ld, floating[:, :, :, ::1] x,
                         Py_ssize_t n, Py_ssize_t c, Py_ssize_t oh0, Py_ssize_t rows,
                         Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                         Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """Add channel c's kh*kw lowered rows (src, row stride ld) back into plane x[n, c]."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t n_in = (rows - 1) * sh + (kh - 1) * dh + 1, Q = OW + (kw - 1) * dw // sw
    cdef Py_ssize_t i, j, r, ow, ih, iw0, ow0, ow1
    cdef const floating* row
    cdef floating* xrow
    cdef floating* phase
    cdef floating* buf
    # The adjoint of _lower_rows: add into stride phases, then merge them into x once.
    # It pays where two taps or more read each input column: at 3x3 stride 2 the
    # extra merge pass cost more than the strided adds it replaced (2-5%).
    if sw > 1 and kw >= 2 * sw:
        buf = <floating*> calloc(n_in * sw * Q, sizeof(floating))
        for i in range(kh):
            for j in range(kw):
                phase = buf + (i * dh * sw + j * dw % sw) * Q + j * dw // sw
                for r in range(rows):
                    row = src + (i * kw + j) * ld + r * OW
                    for ow in range(OW):
                        phase[r * sh * sw * Q + ow] += row[ow]
        for r in range(n_in):
            ih = oh0 * sh - pt + r
            if ih >= 0 and ih < H:
                _merge_phases(buf + r * sw * Q, W, sw, pl, Q, &x[n, c, ih, 0])
        free(buf)
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
                row = src + (i * kw + j) * ld + r * OW
                xrow = &x[n, c, ih, 0]
                if sw == 1:     # contiguous, which the compiler vectorises
                    for ow in range(ow0, ow1):
                        xrow[ow + iw0] += row[ow]
                else:
                    for ow in range(ow0, ow1):
                        xrow[ow * sw + iw0] += row[ow]


cdef void _lower_rows(const floating[:, :, :, ::1] x, Py_ssize_t n, Py_ssize_t c0,
                      Py_ssize_t q0, Py_ssize_t q1, floating* cols, Py_ssize_t ld,
                      Py_ssize_t oh0, Py_ssize_t rows, Py_ssize_t OW,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """cols[q*ld : q*ld + rows*OW] = lowered row q = (c*kh + i)*kw + j, channel c0 + c,
    tap (i, j), for q0 <= q < q1."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], K2 = kh * kw
    cdef Py_ssize_t n_in = (rows - 1) * sh + (kh - 1) * dh + 1, Q = OW + (kw - 1) * dw // sw
    cdef Py_ssize_t c, q, r, s, ow, ih
    cdef const floating* src
    cdef floating* dst
    cdef floating* buf
    if sw == 1 or kw == 1:
        for q in range(q0, q1):
            _lower_row(x, n, c0 + q // K2, q // kw % kh, q % kw, cols + q * ld, oh0, rows,
                       OW, sh, sw, pt, pl, dh, dw)
        return
    buf = <floating*> malloc(n_in * sw * Q * sizeof(floating))
    for c in range(q0 // K2, _ceil_div(q1, K2)):
        # buf row r holds input row oh0*sh - pt + r, split into phases
        for r in range(n_in):
            ih = oh0 * sh - pt + r
            if ih < 0 or ih >= H:
                for s in range(sw * Q):
                    buf[r * sw * Q + s] = 0
            else:
                _split_phases(&x[n, c0 + c, ih, 0], W, sw, pl, Q, buf + r * sw * Q, Q)
        for q in range(max(q0, c * K2), min(q1, (c + 1) * K2)):
            # tap (i, j) = (q // kw % kh, q % kw)
            src = buf + (q // kw % kh * dh * sw + q % kw * dw % sw) * Q + q % kw * dw // sw
            dst = cols + q * ld
            for r in range(rows):
                for ow in range(OW):
                    dst[r * OW + ow] = src[r * sh * sw * Q + ow]
    free(buf)


# Whole-row lowering, for stride-1 convolutions without horizontal padding whose
# output rows are short (LeNet's 10 pixels): a lowered row then is one run of
# the input plane, rows*W values from the tap's first pixel, copied at once
# instead of row by row. Output columns W-OW .. W-1 of each row come along
# (the tap's window runs into the next input row there); the product computes
# them and the copy to Y drops them; the gradients lay dY's block out the same
# way with zeros there (``_widen_rows``), so those columns add nothing. Inside
# the valid columns a position falls outside the plane exactly when its input
# row is padding, so clipping the run to the plane gives the padding's zeros.

cdef inline Py_ssize_t _run_start(Py_ssize_t oh0, Py_ssize_t i, Py_ssize_t j, Py_ssize_t W,
                                  Py_ssize_t pt, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """Where tap (i, j)'s run for output rows from oh0 starts in the input plane."""
    return (oh0 - pt + i * dh) * W + j * dw


cdef void _copy_run(const floating* plane, Py_ssize_t size, Py_ssize_t start, floating* dst,
                    Py_ssize_t length) noexcept nogil:
    """dst[q] = plane[start + q] for q < length, 0 where that is off the plane."""
    cdef Py_ssize_t q, q0 = _clip(-start, 0, length), q1 = _clip(size - start, q0, length)
    for q in range(q0):
        dst[q] = 0
    for q in range(q0, q1):
        dst[q] = plane[start + q]
    for q in range(q1, length):
        dst[q] = 0


cdef void _add_run(const floating* src, Py_ssize_t length, floating* plane, Py_ssize_t size,
                   Py_ssize_t start) noexcept nogil:
    """plane[start + q] += src[q] for q < length, where that is on the plane."""
    cdef Py_ssize_t q, q0 = _clip(-start, 0, length), q1 = _clip(size - start, q0, length)
    for q in range(q0, q1):
        plane[start + q] += src[q]


cdef void _widen_rows(const floating* src, Py_ssize_t src_ld, Py_ssize_t n_rows,
                      Py_ssize_t rows, Py_ssize_t OW, floating* dst, Py_ssize_t ld,
                      Py_ssize_t W) noexcept nogil:
    """dst[m, r*W + v] = src[m, r*OW + v] for v < OW and 0 for OW <= v < W: a block of
    dY laid out as the whole-row products are, for the gradients."""
    cdef Py_ssize_t m, r, v
    for m in range(n_rows):
        for r in range(rows):
            for v in range(OW):
                dst[m * ld + r * W + v] = src[m * src_ld + r * OW + v]
            for v in range(OW, W):
                dst[m * ld + r * W + v] = 0


def im2col(const floating[:, :, :, ::1] x,      # IN  (N, C, H, W)
           floating[:, :, :, ::1] cols,         # OUT (N, C*kh*kw, OH, OW)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
           int n_threads):
    """cols[n, (c, i, j), oh, ow] = x[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw], 0 in the padding."""
    cdef Py_ssize_t C = x.shape[1], K2 = kh * kw, OH = cols.shape[2], OW = cols.shape[3]
    cdef Py_ssize_t row
    with nogil:
        # one lowered row per (n, c, i, j): rows are independent
        for row in prange(x.shape[0] * C * K2, schedule="static", num_threads=n_threads):
            _lower_row(x, row // (C * K2), row // K2 % C, row // kw % kh, row % kw,
                       &cols[row // (C * K2), row % (C * K2), 0, 0], 0, OH, OW,
                       sh, sw, pt, pl, dh, dw)


def col2im(const floating[:, :, :, ::1] cols,   # IN  (N, C*kh*kw, OH, OW)
           floating[:, :, :, ::1] x,            # OUT (N, C, H, W), overwritten
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
           int n_threads):
    """x[n, c, ih, iw] = sum of the cols entries im2col copied from it (the adjoint of im2col)."""
    cdef Py_ssize_t C = x.shape[1], K2 = kh * kw, OH = cols.shape[2], OW = cols.shape[3]
    cdef Py_ssize_t plane
    with nogil:
        # one (n, c) plane per iteration: a thread owns every pixel it adds into
        for plane in prange(x.shape[0] * C, schedule="static", num_threads=n_threads):
            _zero_plane(x, plane // C, plane % C)
            _unlower_plane(&cols[plane // C, plane % C * K2, 0, 0], OH * OW, x,
                           plane // C, plane % C, 0, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw)


cdef inline void _zero_plane(floating[:, :, :, ::1] x, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t ih, iw
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
# Tasks run in parallel on OpenMP's threads, each lowering into its own
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

cdef inline floating _epilogue(floating v, floating s, floating c, floating r,
                               bint relu) noexcept nogil:
    """v * s + c + r, then max(., 0) if relu (NaN stays NaN)."""
    v = v * s + c + r
    return 0 if relu and v < 0 else v


cdef inline void _finish_run(floating* y, Py_ssize_t count, const floating* r, floating s,
                             floating c, bint relu) noexcept nogil:
    """The epilogue over y[:count] of one output channel, residual r[:count] (or none)."""
    cdef Py_ssize_t p
    if r == NULL:
        for p in range(count):
            y[p] = _epilogue(y[p], s, c, 0, relu)
    else:
        for p in range(count):
            y[p] = _epilogue(y[p], s, c, r[p], relu)


cdef inline void _finish_rows(floating[:, :, :, ::1] y, const floating[::1] scale,
                              const floating[::1] b, const floating[:, :, :, ::1] residual,
                              bint relu, Py_ssize_t n, Py_ssize_t k, Py_ssize_t oh0,
                              Py_ssize_t rows) noexcept nogil:
    """The epilogue over output rows oh0 .. oh0+rows-1 of channel k of image n; nothing
    to do without a scale, a residual or a ReLU."""
    cdef bint scaled = scale.shape[0] > 0
    if scaled or residual.shape[0] > 0 or relu:
        _finish_run(&y[n, k, oh0, 0], rows * y.shape[3],
                    &residual[n, k, oh0, 0] if residual.shape[0] > 0 else NULL,
                    scale[k] if scaled else 1, b[k] if scaled else 0, relu)

cdef inline bint _is_pointwise(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                               Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t H, Py_ssize_t W,
                               Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 \
        and OH == H and OW == W


cdef inline Py_ssize_t _share(Py_ssize_t total, Py_ssize_t t, Py_ssize_t n_threads) noexcept nogil:
    """Thread t of n_threads takes items [share(t), share(t+1)) of ``total``."""
    return total * t // n_threads


cdef void _fwd_task(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    const floating[::1] b, floating[:, :, :, ::1] y, const floating[::1] scale,
                    const floating[:, :, :, ::1] residual, bint relu, floating* cols,
                    Py_ssize_t ld, Py_ssize_t n, Py_ssize_t g, Py_ssize_t k0, Py_ssize_t k1,
                    Py_ssize_t oh0, Py_ssize_t rows, bint pointwise, bint whole_rows,
                    Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                    Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                    Py_ssize_t groups) noexcept nogil:
    """Y_block = W_g . cols + b (then the epilogue) for one image n, output channels
    k0 .. k1-1 of group g and output rows oh0 .. oh0+rows-1.

    The block starts as the bias and the product is added onto it (beta = 1): with
    beta = 0 BLAS would first make a pass of its own to zero it. A scaled block
    starts from the product alone (beta = 0), the bias coming after the scale."""
    cdef Py_ssize_t Cg = x.shape[1] // groups, Kg = y.shape[1] // groups, CKK = Cg * kh * kw
    cdef Py_ssize_t HW = x.shape[2] * x.shape[3], OHW = y.shape[2] * y.shape[3], OW = y.shape[3]
    cdef Py_ssize_t W = x.shape[3], K2 = kh * kw, k, p, q, r, ow
    cdef floating* yk
    cdef floating* product = cols + CKK * ld
    cdef Py_ssize_t Kt = k1 - k0, kg = g * Kg + k0
    cdef bint scaled = scale.shape[0] > 0
    if whole_rows:      # the product, W columns per row, goes to the workspace's last Kg rows
        for q in range(CKK):
            _copy_run(&x[n, g * Cg + q // K2, 0, 0], HW,
                      _run_start(oh0, q // kw % kh, q % kw, W, pt, dh, dw), cols + q * ld,
                      rows * W)
        if not scaled:
            for k in range(Kt):
                for p in range(rows * W):
                    product[k * ld + p] = b[kg + k]
        _gemm(False, False, Kt, rows * W, CKK, 1, &w[kg, 0, 0, 0], CKK, cols, ld,
              0 if scaled else 1, product, ld)
        for k in range(Kt):
            for r in range(rows):
                yk = &y[n, kg + k, oh0 + r, 0]
                for ow in range(OW):
                    yk[ow] = product[k * ld + r * W + ow]
            _finish_rows(y, scale, b, residual, relu, n, kg + k, oh0, rows)
        return
    if not scaled:
        for k in range(kg, kg + Kt):
            yk = &y[n, k, oh0, 0]
            for p in range(rows * OW):
                yk[p] = b[k]
    if pointwise:
        _gemm(False, False, Kt, rows * OW, CKK, 1, &w[kg, 0, 0, 0], CKK,
              &x[n, g * Cg, oh0, 0], HW, 0 if scaled else 1, &y[n, kg, oh0, 0], OHW)
    else:
        _lower_rows(x, n, g * Cg, 0, CKK, cols, ld, oh0, rows, OW, kh, kw, sh, sw, pt, pl, dh, dw)
        _gemm(False, False, Kt, rows * OW, CKK, 1, &w[kg, 0, 0, 0], CKK,
              cols, ld, 0 if scaled else 1, &y[n, kg, oh0, 0], OHW)
    for k in range(kg, kg + Kt):
        _finish_rows(y, scale, b, residual, relu, n, k, oh0, rows)


# Thread t runs tasks t, t + T, t + 2T, ... (T threads) with workspace slot t:
# a fixed assignment, so that results do not depend on scheduling.

def conv2d_fwd_im2col(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                      const floating[:, :, :, ::1] w,     # IN  (K, C/g, kh, kw)
                      const floating[::1] b,              # IN  (K,)
                      floating[:, :, :, ::1] y,           # OUT (N, K, OH, OW)
                      const floating[::1] scale,          # IN  (K,), or empty: the epilogue's
                      const floating[:, :, :, ::1] residual,  # IN  like y, or empty
                      bint relu,
                      floating[:, :, ::1] cols,           # workspace (threads, C/g*kh*kw, rows*OW)
                      bint whole_rows,                    # cols (threads, C/g*kh*kw + K/g, rows*W)
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t groups, Py_ssize_t k_parts, int n_threads):
    """Y = W . im2col(X) + b (then the epilogue), a task per image, group, block of
    output rows and part of the group's output channels."""
    cdef Py_ssize_t OH = y.shape[2], ld = cols.shape[2], Kg = y.shape[1] // groups
    cdef Py_ssize_t block = ld // (x.shape[3] if whole_rows else y.shape[3])
    cdef Py_ssize_t n_blk = _ceil_div(OH, block)
    cdef Py_ssize_t n_tasks = x.shape[0] * groups * n_blk * k_parts
    cdef Py_ssize_t t, q, task, part, rest, oh0
    cdef bint pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, x.shape[2], x.shape[3],
                                        OH, y.shape[3])
    with nogil:
        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            for q in range(_ceil_div(n_tasks - t, n_threads)):
                task = t + q * n_threads
                part, rest = task % k_parts, task // k_parts
                oh0 = rest % n_blk * block
                _fwd_task(x, w, b, y, scale, residual, relu, &cols[t, 0, 0], ld,
                          rest // (groups * n_blk), rest // n_blk % groups,
                          _share(Kg, part, k_parts), _share(Kg, part + 1, k_parts), oh0,
                          min(block, OH - oh0), pointwise, whole_rows, kh, kw, sh, sw, pt, pl,
                          dh, dw, groups)


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

cdef void _bwd_data_block(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] w,
                          floating[:, :, :, ::1] dx, floating* cols, Py_ssize_t ld,
                          const floating* wide_dy, Py_ssize_t n, Py_ssize_t g, Py_ssize_t c0,
                          Py_ssize_t c1, Py_ssize_t oh0, Py_ssize_t rows, bint pointwise,
                          bint whole_rows, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh,
                          Py_ssize_t dw, Py_ssize_t groups) noexcept nogil:
    """Input channels c0 .. c1-1 of group g, image n, from output rows oh0 .. oh0+rows-1:
    dcols = W_g[:, c0:c1]^T . dY_block into cols (row stride ld), then col2im."""
    cdef Py_ssize_t Cg = dx.shape[1] // groups, Kg = dy.shape[1] // groups
    cdef Py_ssize_t CKK = Cg * kh * kw, K2 = kh * kw, H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3], c, q
    if pointwise:
        _gemm(True, False, c1 - c0, rows * OW, Kg, 1, &w[g * Kg, c0, 0, 0], CKK,
              &dy[n, g * Kg, oh0, 0], OH * OW, 0, &dx[n, g * Cg + c0, oh0, 0], H * W)
    elif whole_rows:
        _gemm(True, False, (c1 - c0) * K2, rows * W, Kg, 1, &w[g * Kg, c0, 0, 0], CKK,
              wide_dy, ld, 0, cols + c0 * K2 * ld, ld)
        for q in range(c0 * K2, c1 * K2):
            _add_run(cols + q * ld, rows * W, &dx[n, g * Cg + q // K2, 0, 0], H * W,
                     _run_start(oh0, q // kw % kh, q % kw, W, pt, dh, dw))
    else:
        _gemm(True, False, (c1 - c0) * K2, rows * OW, Kg, 1, &w[g * Kg, c0, 0, 0], CKK,
              &dy[n, g * Kg, oh0, 0], OH * OW, 0, cols + c0 * K2 * ld, ld)
        for c in range(c0, c1):
            _unlower_plane(cols + c * K2 * ld, ld, dx, n, g * Cg + c, oh0, rows, OW,
                           kh, kw, sh, sw, pt, pl, dh, dw)


def conv2d_bwd_data_im2col(const floating[:, :, :, ::1] dy,   # IN  (N, K, OH, OW)
                           const floating[:, :, :, ::1] w,    # IN  (K, C/g, kh, kw)
                           floating[:, :, :, ::1] dx,         # OUT (N, C, H, W)
                           floating[:, :, ::1] cols,          # workspace (slots, C/g*kh*kw, rows*OW)
                           bint whole_rows,                   # slots (C/g*kh*kw + K/g, rows*W)
                           bint per_image,                    # a slot per thread, else one
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t groups, int n_threads):
    """dX = col2im(W^T . dY), per image, group and block of output rows."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t K = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, CKK = Cg * kh * kw
    cdef Py_ssize_t ld = cols.shape[2], block = ld // (W if whole_rows else OW)
    cdef Py_ssize_t n_blk = _ceil_div(OH, block), n_tasks = N * groups
    cdef Py_ssize_t n, g, blk, oh0, rows, t, c, plane, task
    cdef bint pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, OH, OW)
    with nogil:
        if per_image:
            for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                for task in range(_ceil_div(n_tasks - t, n_threads)):
                    n = (t + task * n_threads) // groups
                    g = (t + task * n_threads) % groups
                    if not pointwise:
                        for c in range(g * Cg, (g + 1) * Cg):
                            _zero_plane(dx, n, c)
                    for blk in range(n_blk):
                        oh0 = blk * block
                        rows = min(block, OH - oh0)
                        if whole_rows:
                            _widen_rows(&dy[n, g * Kg, oh0, 0], OH * OW, Kg, rows, OW,
                                        &cols[t, CKK, 0], ld, W)
                        _bwd_data_block(dy, w, dx, &cols[t, 0, 0], ld, &cols[t, CKK, 0], n, g,
                                        0, Cg, oh0, rows, pointwise, whole_rows, kh, kw, sh, sw,
                                        pt, pl, dh, dw, groups)
        else:
            if not pointwise:
                for plane in prange(N * C, schedule="static", num_threads=n_threads):
                    _zero_plane(dx, plane // C, plane % C)
            for n in range(N):
                for g in range(groups):
                    for blk in range(n_blk):
                        oh0 = blk * block
                        rows = min(block, OH - oh0)
                        if whole_rows:
                            _widen_rows(&dy[n, g * Kg, oh0, 0], OH * OW, Kg, rows, OW,
                                        &cols[0, CKK, 0], ld, W)
                        for t in prange(n_threads, schedule="static", chunksize=1,
                                        num_threads=n_threads):
                            if _share(Cg, t + 1, n_threads) > _share(Cg, t, n_threads):
                                _bwd_data_block(dy, w, dx, &cols[0, 0, 0], ld, &cols[0, CKK, 0],
                                                n, g, _share(Cg, t, n_threads),
                                                _share(Cg, t + 1, n_threads), oh0, rows, pointwise,
                                                whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups)


cdef void _bwd_weight_block(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                            floating* dwm, floating* cols, Py_ssize_t ld,
                            const floating* wide_dy, Py_ssize_t n, Py_ssize_t g, Py_ssize_t q0,
                            Py_ssize_t q1, Py_ssize_t oh0, Py_ssize_t rows, bint pointwise,
                            bint whole_rows, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh,
                            Py_ssize_t dw, Py_ssize_t groups) noexcept nogil:
    """dW_g[:, q0:q1] += dY_block . cols[q0:q1]^T for image n, group g and output rows
    oh0 .. oh0+rows-1, lowering rows q0 .. q1-1 into cols (row stride ld) first; dwm is
    a (K, C/g*kh*kw) matrix."""
    cdef Py_ssize_t Cg = x.shape[1] // groups, Kg = dy.shape[1] // groups
    cdef Py_ssize_t CKK = Cg * kh * kw, K2 = kh * kw, H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3], q
    if pointwise:
        _gemm(False, True, Kg, q1 - q0, rows * OW, 1, &dy[n, g * Kg, oh0, 0], OH * OW,
              &x[n, g * Cg + q0, oh0, 0], H * W, 1, dwm + g * Kg * CKK + q0, CKK)
    elif whole_rows:
        for q in range(q0, q1):
            _copy_run(&x[n, g * Cg + q // K2, 0, 0], H * W,
                      _run_start(oh0, q // kw % kh, q % kw, W, pt, dh, dw), cols + q * ld,
                      rows * W)
        _gemm(False, True, Kg, q1 - q0, rows * W, 1, wide_dy, ld, cols + q0 * ld, ld, 1,
              dwm + g * Kg * CKK + q0, CKK)
    else:
        _lower_rows(x, n, g * Cg, q0, q1, cols, ld, oh0, rows, OW, kh, kw, sh, sw, pt, pl,
                    dh, dw)
        _gemm(False, True, Kg, q1 - q0, rows * OW, 1, &dy[n, g * Kg, oh0, 0], OH * OW,
              cols + q0 * ld, ld, 1, dwm + g * Kg * CKK + q0, CKK)


def conv2d_bwd_weight_im2col(const floating[:, :, :, ::1] dy,  # IN  (N, K, OH, OW)
                             const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                             floating[:, :, :, ::1] dw_,       # OUT (K, C/g, kh, kw)
                             floating[:, :, ::1] cols,         # workspace (slots, C/g*kh*kw, rows*OW)
                             floating[:, :, ::1] partial,      # per image: (threads, K, C/g*kh*kw)
                             bint whole_rows,                  # slots (C/g*kh*kw + K/g, rows*W)
                             bint per_image,                   # a slot per thread, else one
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                             Py_ssize_t groups, int n_threads):
    """dW_g = sum over images and blocks of dY_block . cols^T (added with beta = 1 into
    a zeroed dW, or per image into each thread's partial dW, summed in order)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, CKK = Cg * kh * kw
    cdef Py_ssize_t ld = cols.shape[2], block = ld // (W if whole_rows else OW)
    cdef Py_ssize_t n_blk = _ceil_div(OH, block), n_tasks = N * groups
    cdef Py_ssize_t n, g, blk, oh0, rows, t, k, q, task
    cdef bint pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, OH, OW)
    cdef floating* dwm = &dw_[0, 0, 0, 0]
    cdef floating total
    with nogil:
        if per_image:
            for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                for k in range(K):
                    for q in range(CKK):
                        partial[t, k, q] = 0
                for task in range(_ceil_div(n_tasks - t, n_threads)):
                    n = (t + task * n_threads) // groups
                    g = (t + task * n_threads) % groups
                    for blk in range(n_blk):
                        oh0 = blk * block
                        rows = min(block, OH - oh0)
                        if whole_rows:
                            _widen_rows(&dy[n, g * Kg, oh0, 0], OH * OW, Kg, rows, OW,
                                        &cols[t, CKK, 0], ld, W)
                        _bwd_weight_block(dy, x, &partial[t, 0, 0], &cols[t, 0, 0], ld,
                                          &cols[t, CKK, 0], n, g, 0, CKK, oh0, rows, pointwise,
                                          whole_rows, kh, kw, sh, sw, pt, pl, dh, dw, groups)
            for k in prange(K, schedule="static", num_threads=n_threads):
                for q in range(CKK):
                    total = partial[0, k, q]
                    for t in range(1, n_threads):
                        total = total + partial[t, k, q]
                    dwm[k * CKK + q] = total
        else:
            for k in prange(K, schedule="static", num_threads=n_threads):
                for q in range(CKK):
                    dwm[k * CKK + q] = 0
            for n in range(N):
                for g in range(groups):
                    for blk in range(n_blk):
                        oh0 = blk * block
                        rows = min(block, OH - oh0)
                        if whole_rows:
                            _widen_rows(&dy[n, g * Kg, oh0, 0], OH * OW, Kg, rows, OW,
                                        &cols[0, CKK, 0], ld, W)
                        for t in prange(n_threads, schedule="static", chunksize=1,
                                        num_threads=n_threads):
                            if _share(CKK, t + 1, n_threads) > _share(CKK, t, n_threads):
                                _bwd_weight_block(dy, x, dwm, &cols[0, 0, 0], ld, &cols[0, CKK, 0],
                                                  n, g, _share(CKK, t, n_threads),
                                                  _share(CKK, t + 1, n_threads), oh0, rows,
                                                  pointwise, whole_rows, kh, kw, sh, sw, pt, pl, dh,
                                                  dw, groups)


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

cdef enum:
    TILE_K = 8      # output channels of a forward tile
    TILE_P = 32     # wide outputs of a forward tile
    SLACK = TILE_K * TILE_P     # how far past the end of a task's planes a tile reads
    DIRECT_LANES = 16   # partial sums of a dot product (_dot)
    KB = 8          # input channels per task of the data gradient

# the forward's workspace: rows of sums a task keeps, and how far past its planes
# and each row its tiles reach
DIRECT_SUMS = (TILE_K, SLACK)
# the output channels of a packed panel of Winograd's transformed filters
WINOGRAD_PANEL = TILE_P


cdef void _direct_planes(const floating[:, :, :, ::1] x, Py_ssize_t n, Py_ssize_t c0,
                         Py_ssize_t n_c, Py_ssize_t oh0, Py_ssize_t n_rows, Py_ssize_t Qw,
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                         floating* planes, Py_ssize_t* offsets) noexcept nogil:
    """A task's planes, planes[((c*sh + a)*sw + b)*n_rows*Qw + r*Qw + q] = x[n, c0 + c,
    (oh0 + r)*sh + a - pt, q*sw + b - pl] (0 in the padding), and offsets[q] = where the
    run of term q = (c*kh + i)*kw + j, channel c's tap (i, j), starts in them."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], c, a, r, b, q, ih, i, j
    cdef floating* d
    for c in range(n_c):
        for a in range(sh):
            for r in range(n_rows):
                ih = (oh0 + r) * sh + a - pt
                d = planes + ((c * sh + a) * sw * n_rows + r) * Qw
                if ih < 0 or ih >= H:
                    for b in range(sw):
                        for q in range(Qw):
                            d[b * n_rows * Qw + q] = 0
                else:
                    _split_phases(&x[n, c0 + c, ih, 0], W, sw, pl, Qw, d, n_rows * Qw)
    for q in range(n_c * kh * kw):
        c, i, j = q // (kh * kw), q // kw % kh, q % kw
        offsets[q] = ((c * sh + i * dh % sh) * sw + j * dw % sw) * n_rows * Qw \
            + i * dh // sh * Qw + j * dw // sw


cdef noinline_void _tile(const floating* planes, const Py_ssize_t* offsets,
                         Py_ssize_t n_terms, const floating* w, Py_ssize_t n_k,
                         const floating* bias, floating* sums, Py_ssize_t ld) noexcept nogil:
    """sums[k*ld + p] = bias[k] + sum over terms q of w[k*n_terms + q] * planes[offsets[q] + p]
    (bias NULL: 0) for the tile's TILE_K channels k and TILE_P outputs p. Channels past
    n_k repeat channel n_k - 1, so that the loops keep their constant bounds and are
    unrolled; their sums are not used.

    Not inlined: inside conv2d_fwd_direct's parallel region gcc kept four of the
    eight weight-row pointers on the stack and reloaded them every term (perf
    annotate); on its own the loop keeps them all in registers, as LLVM does for
    the Numba twin. One thread, GFLOP/s: 116-140 -> 123-158, Numba's 121-161."""
    cdef floating acc[TILE_K][TILE_P]
    cdef const floating* rows[TILE_K]
    cdef const floating* run
    cdef Py_ssize_t k, p, q
    for k in range(TILE_K):
        rows[k] = w + min(k, n_k - 1) * n_terms
        for p in range(TILE_P):
            acc[k][p] = 0 if bias == NULL else bias[min(k, n_k - 1)]
    for q in range(n_terms):
        run = planes + offsets[q]
        for k in range(TILE_K):
            for p in range(TILE_P):
                acc[k][p] += rows[k][q] * run[p]
    for k in range(TILE_K):
        for p in range(TILE_P):
            sums[k * ld + p] = acc[k][p]


cdef void _tile_one(const floating* planes, const Py_ssize_t* offsets, Py_ssize_t n_terms,
                    const floating* w, const floating* bias, floating* sums) noexcept nogil:
    """_tile for one channel (a depthwise layer's group, where repeating it would
    multiply the work by TILE_K): the tile's rows are TILE_K successive runs of
    TILE_P outputs, sums[k*TILE_P + p]."""
    cdef floating acc[TILE_K][TILE_P]
    cdef const floating* run
    cdef Py_ssize_t k, p, q
    for k in range(TILE_K):
        for p in range(TILE_P):
            acc[k][p] = 0 if bias == NULL else bias[0]
    for q in range(n_terms):
        run = planes + offsets[q]
        for k in range(TILE_K):
            for p in range(TILE_P):
                acc[k][p] += w[q] * run[k * TILE_P + p]
    for k in range(TILE_K):
        for p in range(TILE_P):
            sums[k * TILE_P + p] = acc[k][p]


def conv2d_fwd_direct(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                      const floating[:, :, :, ::1] w,     # IN  (K, C/g, kh, kw)
                      const floating[::1] b,              # IN  (K,)
                      floating[:, :, :, ::1] y,           # OUT (N, K, OH, OW)
                      const floating[::1] scale,          # IN  (K,), or empty: the epilogue's
                      const floating[:, :, :, ::1] residual,  # IN  like y, or empty
                      bint relu,
                      floating[:, ::1] work,              # workspace (threads, planes + sums)
                      Py_ssize_t block,                   # output rows per task
                      Py_ssize_t Qw,                      # columns of a planes' row
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t groups, Py_ssize_t k_parts, int n_threads):
    """y[n,k,oh,ow] = b[k] + sum_{c,i,j} w[k,c,i,j] x[n, g*Cg+c, oh*sh-pt+i*dh, ow*sw-pl+j*dw],
    then the epilogue; a task per image, group, block of output rows and part of the
    group's tiles of output channels."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t K = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, CKK = Cg * kh * kw
    cdef Py_ssize_t reach = (kh - 1) * dh // sh
    cdef Py_ssize_t n_blk = _ceil_div(OH, block), n_kt = _ceil_div(Kg, TILE_K)
    cdef Py_ssize_t n_tasks = N * groups * n_blk * k_parts, gap = max(SLACK, Qw)
    cdef Py_ssize_t t, turn, task, part, n, g, oh0, rows, n_rows, L, ld, size, kt, k0, n_k, k
    cdef Py_ssize_t p, r, ow
    cdef bint scaled = scale.shape[0] > 0
    cdef const floating* wf = &w[0, 0, 0, 0]
    cdef floating* planes
    cdef floating* sums
    cdef Py_ssize_t* offsets
    with nogil:
        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            offsets = <Py_ssize_t*> malloc(CKK * sizeof(Py_ssize_t))
            for turn in range(_ceil_div(n_tasks - t, n_threads)):
                part, task = (t + turn * n_threads) % k_parts, (t + turn * n_threads) // k_parts
                n, g, oh0 = task // (groups * n_blk), task // n_blk % groups, task % n_blk * block
                rows = min(block, OH - oh0)
                n_rows, L = rows + reach, (rows - 1) * Qw + OW
                ld = _ceil_div(L, TILE_P) * TILE_P      # the tiles cover L
                size = Cg * sh * sw * n_rows * Qw
                planes = &work[t, 0]
                sums = planes + size + gap              # TILE_K rows of ld follow the planes
                _direct_planes(x, n, g * Cg, Cg, oh0, n_rows, Qw, kh, kw, sh, sw, pt, pl, dh,
                               dw, planes, offsets)
                for p in range(gap):                    # the last tile reads past the last run
                    planes[size + p] = 0
                for kt in range(_share(n_kt, part, k_parts), _share(n_kt, part + 1, k_parts)):
                    k0 = g * Kg + kt * TILE_K
                    n_k = min(TILE_K, (g + 1) * Kg - k0)
                    if n_k == 1:
                        for p in range(_ceil_div(L, TILE_K * TILE_P)):
                            _tile_one(planes + p * TILE_K * TILE_P, offsets, CKK, wf + k0 * CKK,
                                      NULL if scaled else &b[k0], sums + p * TILE_K * TILE_P)
                    else:
                        for p in range(ld // TILE_P):
                            _tile(planes + p * TILE_P, offsets, CKK, wf + k0 * CKK, n_k,
                                  NULL if scaled else &b[k0], sums + p * TILE_P, ld)
                    for k in range(n_k):
                        for r in range(rows):           # the wide rows, cut to OW
                            for ow in range(OW):
                                y[n, k0 + k, oh0 + r, ow] = sums[k * ld + r * Qw + ow]
                        _finish_rows(y, scale, b, residual, relu, n, k0 + k, oh0, rows)
            free(offsets)


def conv2d_bwd_data_direct(const floating[:, :, :, ::1] dy,   # IN  (N, K, OH, OW)
                           const floating[:, :, :, ::1] w,    # IN  (K, C/g, kh, kw)
                           floating[:, :, :, ::1] dx,         # OUT (N, C, H, W)
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t groups, int n_threads):
    """dx[n, g*Cg+c, ih, iw] += w[k,c,i,j] dy[n,k,oh,ow] for every tap that read (ih, iw)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t K = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, n_cb = _ceil_div(Cg, KB)
    cdef Py_ssize_t task, n, g, c0, c1, k, c, i, j, oh, ow, ih, iw0, ow0, ow1
    cdef floating wv
    with nogil:
        # a task owns KB input-channel planes of one image: no two threads add into one pixel
        for task in prange(N * groups * n_cb, schedule="static", num_threads=n_threads):
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
                        for j in range(kw):
                            iw0 = j * dw - pl
                            ow0 = _first_inside(iw0, sw, OW)
                            ow1 = _end_inside(iw0, sw, W, ow0, OW)
                            for c in range(c0, c1):
                                wv = w[k, c, i, j]
                                for ow in range(ow0, ow1):
                                    dx[n, g * Cg + c, ih, ow * sw + iw0] += wv * dy[n, k, oh, ow]


cdef floating _dot(const floating* a, const floating* b, Py_ssize_t L) noexcept nogil:
    """sum over p < L of a[p] * b[p], in DIRECT_LANES interleaved partial sums: a single
    running sum is a chain of dependent adds, which no compiler vectorises without
    licence to reorder them."""
    cdef floating lanes[DIRECT_LANES]
    cdef floating total
    cdef Py_ssize_t chunk, p0, p, v, body = L - L % DIRECT_LANES
    for v in range(DIRECT_LANES):
        lanes[v] = 0
    for chunk in range(body // DIRECT_LANES):
        p0 = chunk * DIRECT_LANES
        for v in range(DIRECT_LANES):
            lanes[v] += a[p0 + v] * b[p0 + v]
    total = lanes[0]
    for v in range(1, DIRECT_LANES):
        total += lanes[v]
    for p in range(body, L):
        total += a[p] * b[p]
    return total


def conv2d_bwd_weight_direct(const floating[:, :, :, ::1] dy,  # IN  (N, K, OH, OW)
                             const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                             floating[:, :, :, ::1] dw_,       # OUT (K, C/g, kh, kw)
                             floating[:, ::1] work,            # workspace (threads, planes + dY)
                             floating[:, :, ::1] partial,      # (threads, K, C/g*kh*kw)
                             Py_ssize_t block,                 # output rows per task
                             Py_ssize_t Qw,                    # columns of a planes' row
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                             Py_ssize_t groups, int n_threads):
    """dw[k, (c, i, j)] = sum over images and blocks of dY_k's block in wide rows (0 past
    each row's end) . the run of term (c, i, j) in the block's planes (the forward's);
    each thread adds into its own partial dW, and the partials are summed in order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t K = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, CKK = Cg * kh * kw
    cdef Py_ssize_t reach = (kh - 1) * dh // sh
    cdef Py_ssize_t n_blk = _ceil_div(OH, block), n_tasks = N * groups * n_blk
    cdef Py_ssize_t t, turn, task, n, g, oh0, rows, n_rows, L, size, k, q, r, ow
    cdef floating* planes
    cdef floating* wide
    cdef floating* dwf = &dw_[0, 0, 0, 0]
    cdef Py_ssize_t* offsets
    cdef floating total
    with nogil:
        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            offsets = <Py_ssize_t*> malloc(CKK * sizeof(Py_ssize_t))
            for k in range(K):
                for q in range(CKK):
                    partial[t, k, q] = 0
            for turn in range(_ceil_div(n_tasks - t, n_threads)):
                task = t + turn * n_threads
                n, g, oh0 = task // (groups * n_blk), task // n_blk % groups, task % n_blk * block
                rows = min(block, OH - oh0)
                n_rows, L = rows + reach, (rows - 1) * Qw + OW
                planes = &work[t, 0]
                size = Cg * sh * sw * n_rows * Qw
                for q in range(Qw):     # the last row's taps run past it, into zeros
                    planes[size + q] = 0
                wide = planes + size + Qw
                _direct_planes(x, n, g * Cg, Cg, oh0, n_rows, Qw, kh, kw, sh, sw, pt, pl, dh,
                               dw, planes, offsets)
                for k in range(Kg):
                    for r in range(rows):
                        for ow in range(OW):
                            wide[k * L + r * Qw + ow] = dy[n, g * Kg + k, oh0 + r, ow]
                        if r < rows - 1:
                            for ow in range(OW, Qw):
                                wide[k * L + r * Qw + ow] = 0
                for k in range(Kg):
                    for q in range(CKK):
                        partial[t, g * Kg + k, q] += _dot(wide + k * L, planes + offsets[q], L)
            free(offsets)
        for k in prange(K, schedule="static", num_threads=n_threads):
            for q in range(CKK):
                total = partial[0, k, q]
                for t in range(1, n_threads):
                    total = total + partial[t, k, q]
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


cdef void _padded_rows(const floating[:, :, :, ::1] x, Py_ssize_t n, Py_ssize_t c,
                       Py_ssize_t ih0, Py_ssize_t iw0, Py_ssize_t rows, Py_ssize_t width,
                       floating* buf) noexcept nogil:
    """buf[r*width + s] = x[n, c, ih0 + r, iw0 + s], 0 outside the input."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], r, s, s0, s1
    s0 = _clip(-iw0, 0, width)
    s1 = _clip(W - iw0, s0, width)
    for r in range(rows):
        if ih0 + r < 0 or ih0 + r >= H:
            for s in range(width):
                buf[r * width + s] = 0
        else:
            for s in range(s0):
                buf[r * width + s] = 0
            for s in range(s0, s1):
                buf[r * width + s] = x[n, c, ih0 + r, iw0 + s]
            for s in range(s1, width):
                buf[r * width + s] = 0


# A tile row's values sit every m-th column of the input and output rows. With m a
# runtime value gcc loads and stores them one at a time (vinsertps, vextractps:
# perf annotate); with a literal one it moves whole vectors and shuffles them, so
# the tiles of F(2x2) and F(4x4) get their own loops: _gather_tiles is inlined with
# m a literal, and _interleave has a loop for each.
cdef inline void _gather_tiles(const floating* buf, Py_ssize_t width, Py_ssize_t m,
                               Py_ssize_t alpha, Py_ssize_t n_tr, Py_ssize_t tw,
                               floating* dd, Py_ssize_t nt) noexcept nogil:
    """dd[(r*alpha + s)*nt + tr*tw + q] = buf[(tr*m + r)*width + s + q*m], value (r, s) of
    tile (tr, q), for tr < n_tr, q < tw and r, s < alpha."""
    cdef Py_ssize_t tr, r, s, q
    cdef const floating* src
    cdef floating* dst
    for tr in range(n_tr):
        for r in range(alpha):
            for s in range(alpha):
                src = buf + (tr * m + r) * width + s
                dst = dd + (r * alpha + s) * nt + tr * tw
                for q in range(tw):
                    dst[q] = src[q * m]


cdef inline void _interleave(const floating* phases, Py_ssize_t pitch, Py_ssize_t m,
                             floating* row, Py_ssize_t width, floating start) noexcept nogil:
    """row[q*m + j] = phases[j*pitch + q] + start for j < m and q*m + j < width."""
    cdef Py_ssize_t q, j, whole = width // m
    if m == 4:
        for q in range(whole):
            row[4 * q] = phases[q] + start
            row[4 * q + 1] = phases[pitch + q] + start
            row[4 * q + 2] = phases[2 * pitch + q] + start
            row[4 * q + 3] = phases[3 * pitch + q] + start
    elif m == 2:
        for q in range(whole):
            row[2 * q] = phases[q] + start
            row[2 * q + 1] = phases[pitch + q] + start
    else:
        for q in range(whole):
            for j in range(m):
                row[q * m + j] = phases[j * pitch + q] + start
    for j in range(width - whole * m):      # the row's last tile, cut at its edge
        row[whole * m + j] = phases[j * pitch + whole] + start


cdef void _combine(const floating* coefs, Py_ssize_t n_out, Py_ssize_t n_in,
                   const floating* rows, Py_ssize_t pitch, floating* dst, Py_ssize_t dpitch,
                   Py_ssize_t length) noexcept nogil:
    """dst[o*dpitch + l] = sum over q of coefs[o*n_in + q] * rows[q*pitch + l], for o < n_out
    and l < length; n_in is 4, 6 or 8 (alpha)."""
    cdef Py_ssize_t o, l
    cdef floating c0, c1, c2, c3, c4, c5, c6, c7
    cdef const floating* c
    cdef floating* d
    for o in range(n_out):
        c = coefs + o * n_in
        d = dst + o * dpitch
        if n_in == 4:
            c0, c1, c2, c3 = c[0], c[1], c[2], c[3]
            for l in range(length):
                d[l] = (c0 * rows[l] + c1 * rows[pitch + l]
                        + c2 * rows[2 * pitch + l] + c3 * rows[3 * pitch + l])
        elif n_in == 6:
            c0, c1, c2, c3, c4, c5 = c[0], c[1], c[2], c[3], c[4], c[5]
            for l in range(length):
                d[l] = (c0 * rows[l] + c1 * rows[pitch + l]
                        + c2 * rows[2 * pitch + l] + c3 * rows[3 * pitch + l]
                        + c4 * rows[4 * pitch + l] + c5 * rows[5 * pitch + l])
        else:
            c0, c1, c2, c3, c4, c5, c6, c7 = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
            for l in range(length):
                d[l] = (c0 * rows[l] + c1 * rows[pitch + l]
                        + c2 * rows[2 * pitch + l] + c3 * rows[3 * pitch + l]
                        + c4 * rows[4 * pitch + l] + c5 * rows[5 * pitch + l]
                        + c6 * rows[6 * pitch + l] + c7 * rows[7 * pitch + l])


cdef void _winograd_input(const floating[:, :, :, ::1] x, Py_ssize_t c0, Py_ssize_t n_c,
                          const floating[:, ::1] bt, floating* v, Py_ssize_t plane,
                          Py_ssize_t ld, Py_ssize_t r0, Py_ssize_t n_r, Py_ssize_t th,
                          Py_ssize_t tw, Py_ssize_t m, Py_ssize_t pt,
                          Py_ssize_t pl) noexcept nogil:
    """v[(a*alpha + b)*plane + c*ld + r*tw + q] = (B^T d B)[a, b] of tile (r0 + r, q) of
    channel c0 + c, tile row R of the batch being row R % th of image R // th."""
    cdef Py_ssize_t alpha = bt.shape[0], nt = n_r * tw
    cdef Py_ssize_t rows = n_r * m + alpha - m, width = tw * m + alpha - m
    cdef Py_ssize_t c, s, a, n, ra, rb
    cdef floating* buf = <floating*> malloc((rows * width + 2 * alpha * alpha * nt)
                                            * sizeof(floating))
    cdef floating* dd = buf + rows * width         # D[r, s] at (r*alpha + s)*nt
    cdef floating* tmp = dd + alpha * alpha * nt   # (B^T d)[a, s] at (a*alpha + s)*nt
    for c in range(n_c):
        for n in range(r0 // th, _ceil_div(r0 + n_r, th)):      # the run's images
            ra = max(r0, n * th)
            rb = min(r0 + n_r, n * th + th)
            _padded_rows(x, n, c0 + c, (ra - n * th) * m - pt, -pl, (rb - ra) * m + alpha - m,
                         width, buf)
            if m == 4:
                _gather_tiles(buf, width, 4, alpha, rb - ra, tw, dd + (ra - r0) * tw, nt)
            elif m == 2:
                _gather_tiles(buf, width, 2, alpha, rb - ra, tw, dd + (ra - r0) * tw, nt)
            else:
                _gather_tiles(buf, width, m, alpha, rb - ra, tw, dd + (ra - r0) * tw, nt)
        for s in range(alpha):
            _combine(&bt[0, 0], alpha, alpha, dd + s * nt, alpha * nt, tmp + s * nt, alpha * nt,
                     nt)
        for a in range(alpha):
            _combine(&bt[0, 0], alpha, alpha, tmp + a * alpha * nt, nt,
                     v + a * alpha * plane + c * ld, plane, nt)
    free(buf)


cdef void _winograd_output(const floating* mm, Py_ssize_t plane, Py_ssize_t ld,
                           floating[:, :, :, ::1] y, const floating[::1] bias,
                           const floating[::1] scale, const floating[:, :, :, ::1] residual,
                           bint relu, Py_ssize_t k0, Py_ssize_t n_k,
                           const floating[:, ::1] at, Py_ssize_t r0, Py_ssize_t n_r,
                           Py_ssize_t th, Py_ssize_t tw) noexcept nogil:
    """y's tiles (r0 + r, q) of channel k0 + k = A^T M A + bias, then the epilogue,
    M[a, b] = mm[(a*alpha + b)*plane + k*ld + r*tw + q], tile row R of the batch
    being row R % th of image R // th."""
    cdef Py_ssize_t m = at.shape[0], alpha = at.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t nt = n_r * tw
    cdef Py_ssize_t k, b2, i, n, ra, rb, tr, oh
    cdef floating start
    # t[(b*m + i)*nt + l] = (A^T M)[i, b], then o[(i*m + j)*nt + l] = (A^T M A)[i, j]
    cdef floating* t = <floating*> malloc((alpha + m) * m * nt * sizeof(floating))
    cdef floating* o = t + alpha * m * nt
    for k in range(n_k):
        for b2 in range(alpha):
            _combine(&at[0, 0], m, alpha, mm + b2 * plane + k * ld, alpha * plane,
                     t + b2 * m * nt, nt, nt)
        for i in range(m):
            _combine(&at[0, 0], m, alpha, t + i * nt, m * nt, o + i * m * nt, nt, nt)
        # the bias comes after a scale, in _finish_rows
        start = 0 if scale.shape[0] > 0 else bias[k0 + k]
        for n in range(r0 // th, _ceil_div(r0 + n_r, th)):      # the run's images
            ra = max(r0, n * th)
            rb = min(r0 + n_r, n * th + th)
            # output row tr*m + i gets column q*m + j from phase (i, j)
            for tr in range(ra - n * th, rb - n * th):
                for i in range(m):
                    oh = tr * m + i
                    if oh < OH:
                        _interleave(o + i * m * nt + (n * th + tr - r0) * tw, nt, m,
                                    &y[n, k0 + k, oh, 0], OW, start)
            _finish_rows(y, scale, bias, residual, relu, n, k0 + k, (ra - n * th) * m,
                         min((rb - ra) * m, OH - (ra - n * th) * m))
    free(t)


cdef inline void _prefetch_row(const floating* row) noexcept nogil:
    """Fetch the cache lines of row[0:TILE_P] into L2 ahead of their use (a hint: no
    effect on any value; prefetcht1, as the Numba twin's llvm.prefetch)."""
    cdef Py_ssize_t line
    for line in range(TILE_P * sizeof(floating) // 64):
        _prefetch(row + line * (64 // sizeof(floating)))


cdef noinline_void _winograd_tile(const floating* v, Py_ssize_t ldv, Py_ssize_t n_t,
                                  const floating* panel, Py_ssize_t n_c, floating* mm,
                                  Py_ssize_t ldm, Py_ssize_t n_k,
                                  const floating* ahead) noexcept nogil:
    """mm[k*ldm + t] = sum over c < n_c of panel[c*TILE_P + k] * v[c*ldv + t], for t < n_t
    and k < n_k of a register tile of TILE_K tiles by TILE_P output channels (_tile's
    shape, its roles turned: the channels run along the vector lanes, the tiles are
    broadcast). Tiles past n_t repeat tile n_t - 1 and are not stored. Row c of the
    panel ``ahead`` (unless NULL) is prefetched into L2 alongside row c of this one."""
    cdef floating acc[TILE_K][TILE_P]
    cdef Py_ssize_t col[TILE_K]
    cdef const floating* vc
    cdef const floating* uc
    cdef Py_ssize_t t, k, c
    for t in range(TILE_K):
        col[t] = min(t, n_t - 1)
        for k in range(TILE_P):
            acc[t][k] = 0
    for c in range(n_c):
        vc = v + c * ldv
        uc = panel + c * TILE_P
        if ahead != NULL:
            _prefetch_row(ahead + c * TILE_P)
        for t in range(TILE_K):
            for k in range(TILE_P):
                acc[t][k] += vc[col[t]] * uc[k]
    for t in range(n_t):
        for k in range(n_k):
            mm[k * ldm + t] = acc[t][k]


def conv2d_fwd_winograd(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                        const floating[:, :, :, ::1] u,     # IN  G g G^T: (groups, alpha^2, Kg, Cg),
                                                            # or packed (.., panels*Cg, TILE_P)
                        const floating[::1] b,              # IN  (K,)
                        floating[:, :, :, ::1] y,           # OUT (N, K, OH, OW)
                        const floating[::1] scale,          # IN  (K,), or empty: the epilogue's
                        const floating[:, :, :, ::1] residual,  # IN  like y, or empty
                        bint relu,
                        const floating[:, ::1] bt,          # IN  (alpha, alpha): B^T
                        const floating[:, ::1] at,          # IN  (m, alpha): A^T
                        floating[:, ::1] v,                 # workspace (alpha^2*Cg, T)
                        floating[:, ::1] mm,                # workspace (alpha^2*Kg, T)
                        bint packed,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t groups, int n_threads):
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
    cdef Py_ssize_t m = at.shape[0], alpha2 = u.shape[1]
    cdef Py_ssize_t Kg = y.shape[1] // groups, Cg = x.shape[1] // groups
    cdef Py_ssize_t T = v.shape[1]
    cdef Py_ssize_t tw = _ceil_div(y.shape[3], m), th = _ceil_div(y.shape[2], m)
    cdef Py_ssize_t run_rows = T // tw, rows = x.shape[0] * th
    cdef Py_ssize_t g, run, r0, n_r, nt, t, ab, c0, c1, k0, k1, kp, t0
    with nogil:
        for g in range(groups):
            for run in range(_ceil_div(rows, run_rows)):
                r0 = run * run_rows
                n_r = min(run_rows, rows - r0)
                nt = n_r * tw
                for t in prange(n_threads, schedule="static", chunksize=1,
                                num_threads=n_threads):
                    c0 = _share(Cg, t, n_threads)
                    c1 = _share(Cg, t + 1, n_threads)
                    _winograd_input(x, g * Cg + c0, c1 - c0, bt, &v[c0, 0], Cg * T, T,
                                    r0, n_r, th, tw, m, pt, pl)
                for ab in prange(alpha2, schedule="static", num_threads=n_threads):
                    if packed:
                        for kp in range(_ceil_div(Kg, TILE_P)):
                            for t0 in range(_ceil_div(nt, TILE_K)):
                                _winograd_tile(&v[ab * Cg, t0 * TILE_K], T,
                                               min(TILE_K, nt - t0 * TILE_K),
                                               &u[g, ab, kp * Cg, 0], Cg,
                                               &mm[ab * Kg + kp * TILE_P, t0 * TILE_K], T,
                                               min(TILE_P, Kg - kp * TILE_P),
                                               &u[g, ab, (kp + 1) * Cg, 0]
                                               if (t0 > 0 or nt <= TILE_K) and
                                               (kp + 2) * Cg <= u.shape[2] else NULL)
                    else:
                        _gemm(False, False, Kg, nt, Cg, 1, &u[g, ab, 0, 0], Cg,
                              &v[ab * Cg, 0], T, 0, &mm[ab * Kg, 0], T)
                for t in prange(n_threads, schedule="static", chunksize=1,
                                num_threads=n_threads):
                    k0 = _share(Kg, t, n_threads)
                    k1 = _share(Kg, t + 1, n_threads)
                    _winograd_output(&mm[k0, 0], Kg * T, T, y, b, scale, residual, relu,
                                     g * Kg + k0, k1 - k0, at, r0, n_r, th, tw)


def same_bytes(const unsigned char[::1] a, const unsigned char[::1] b, int n_threads):
    """Whether a and b (of one length) hold the same bytes: the check before a cached
    filter transform is reused, the threads comparing a share each."""
    cdef Py_ssize_t n = a.shape[0], t, lo, hi
    cdef int differ = 0
    with nogil:
        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            lo = _share(n, t, n_threads)
            hi = _share(n, t + 1, n_threads)
            if hi > lo:
                differ += memcmp(&a[lo], &b[lo], hi - lo) != 0
    return differ == 0


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------
# One (n, c) plane per task: a thread owns every pixel it writes, forward and
# backward, so the gradients are deterministic. Window (oh, ow) reads rows
# oh*sh - pt + i*dh; the taps that fall inside the input are
# i0 <= i < i1 (and likewise j0 <= j < j1 for columns), found once per window,
# so the scan has no bounds checks.
#
# Max pooling takes an output row one tap at a time across all its windows.
# With a column stride sw > 1, tap j of window ow reads column ow*sw + off
# (off = j*dw - pl), a strided load that vectorises badly (gcc builds each
# vector from scalar inserts). Each input row is therefore first split into
# its sw phases (_deinterleave, as the direct convolution's planes): the tap is
# then entry ow + (off - p)/sw of phase p = off mod sw, a contiguous run.
# In-process A/B against the strided loads, 2 threads, ms: 3x3 stride 2 on
# 64x112x112 1.05 -> 0.71 (with indices), 1.34 -> 1.10 (gradient from X); 2x2
# stride 2 on 64x224x224 1.39 -> 0.97, 2.62 -> 2.06. (The values alone, in
# inference, are pooled a plane at a time: _plane_pool.) Rows of fewer than
# PHASED_ROW outputs keep the strided loads: the split is then most of the work
# (AlexNet's 3x3 stride-2 poolings of 192x27x27 and 256x13x13 took 0.17 ->
# 0.36-0.39 and 0.08-0.12 -> 0.23-0.29 ms with it). A literal stride 2 in the
# loads, as the Numba twin passes, gained nothing here; LLVM, for its part,
# vectorises the literal 2 well, and the phases made the Numba twin slower (0.38
# -> 0.42-0.51 ms on the first), so it keeps its strided loads.

cdef enum:
    PHASED_ROW = 32     # the fewest outputs of a row whose strided taps read phases

cdef inline Py_ssize_t _first_tap(Py_ssize_t start, Py_ssize_t d, Py_ssize_t k) noexcept nogil:
    """First tap i of a window starting at ``start`` (step d) with start + i*d >= 0."""
    return _clip(_ceil_div(-start, d), 0, k)


cdef inline Py_ssize_t _end_tap(Py_ssize_t start, Py_ssize_t d, Py_ssize_t k,
                                Py_ssize_t size) noexcept nogil:
    """One past the last tap i of the window with start + i*d < size."""
    return _clip(_ceil_div(size - start, d), 0, k)


def _tap_rows(Py_ssize_t OH, Py_ssize_t kh, Py_ssize_t sh, Py_ssize_t pt, Py_ssize_t dh,
              Py_ssize_t H):
    """[i0, i1) of the taps of each output row oh that fall inside the input, computed
    once per call (the integer divisions cost more than a row of vectorised work)."""
    rows = np.empty((OH, 2), np.intp)
    for oh in range(OH):
        rows[oh] = _first_tap(oh * sh - pt, dh, kh), _end_tap(oh * sh - pt, dh, kh, H)
    return rows


def _tap_cols(Py_ssize_t OW, Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t pl, Py_ssize_t dw,
              Py_ssize_t W):
    """[ow0, ow1) of the outputs whose tap j reads inside the input, for each tap j."""
    cols = np.empty((kw, 2), np.intp)
    for j in range(kw):
        ow0 = _first_inside(j * dw - pl, sw, OW)
        cols[j] = ow0, _end_inside(j * dw - pl, sw, W, ow0, OW)
    return cols


def _tap_runs(Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t pl, Py_ssize_t dw, Py_ssize_t W):
    """Where the run of tap j (window ow reads entry ow of it) starts in a row's
    phases, ceil(W/sw) apart: at entry (off - p)/sw of phase p = off mod sw, with
    off = j*dw - pl (for sw = 1, the row itself and column off). Computed once per
    call: the integer divisions cost more than a short row of work."""
    runs = np.empty(kw, np.intp)
    Q = _ceil_div(W, sw)
    for j in range(kw):
        off = j * dw - pl
        p = off % sw
        p = p + sw if p < 0 else p      # in [0, sw), however C's division rounds
        runs[j] = p * Q + (off - p) // sw
    return runs


cdef inline Py_ssize_t _avg_factor(Py_ssize_t o, Py_ssize_t k, Py_ssize_t s, Py_ssize_t p,
                                   Py_ssize_t size, bint count_include_pad) noexcept nogil:
    """A factor of the divisor of average pooling along one axis, PyTorch's window
    extent for output o: clipped to the padded input with count_include_pad, else to
    the input."""
    cdef Py_ssize_t start = o * s - p, end = min(start + k, size + p)
    if not count_include_pad:
        start, end = max(start, 0), min(end, size)
    return end - start


cdef void _avg_scale(floating* scale, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                     Py_ssize_t pl, bint count_include_pad,
                     Py_ssize_t divisor_override) noexcept nogil:
    """scale[oh*OW + ow] = 1 / the divisor of window (oh, ow): divisor_override, or its
    height times its width (_avg_factor), rounded once. What an average pooling's
    forward and its gradient multiply by."""
    cdef double* widths = <double*> malloc(OW * sizeof(double))
    cdef double height
    cdef Py_ssize_t oh, ow
    for ow in range(OW):
        widths[ow] = 1 if divisor_override else _avg_factor(ow, kw, sw, pl, W, count_include_pad)
    for oh in range(OH):
        height = divisor_override if divisor_override \
            else _avg_factor(oh, kh, sh, pt, H, count_include_pad)
        for ow in range(OW):
            scale[oh * OW + ow] = <floating> (1 / (height * widths[ow]))
    free(widths)


cdef inline void _max_tap(const floating* tap, floating* yrow, int64_t* irow, Py_ssize_t lo,
                         Py_ssize_t hi, Py_ssize_t stride, int64_t at,
                         Py_ssize_t step) noexcept nogil:
    """Windows lo .. hi-1 of an output row take their tap tap[ow*stride], whose flat index
    is at + ow*step, if it wins: selects rather than a branch, so that the loop
    vectorises (contiguously where the caller passes a literal stride 1)."""
    cdef Py_ssize_t ow
    cdef floating val
    cdef bint wins
    for ow in range(lo, hi):
        val = tap[ow * stride]
        wins = (val > yrow[ow]) | (val != val)
        yrow[ow] = val if wins else yrow[ow]
        irow[ow] = at + ow * step if wins else irow[ow]


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

cdef inline bint _whole_planes(Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh,
                               Py_ssize_t dw) noexcept nogil:
    """Whether a pooling's windows are taken over whole planes
    (_stride1_windows), rather than reduced down the rows first (_strided_windows)."""
    return sh == 1 and sw == 1 and dh == 1 and dw == 1


cdef inline Py_ssize_t _strided_pitch(Py_ssize_t OW, Py_ssize_t kw, Py_ssize_t sw,
                                      Py_ssize_t pl, Py_ssize_t dw) noexcept nogil:
    """P >= OW, the outputs a row of _strided_windows takes: its P*sw columns, the
    input's from column 0, hold the (OW - 1)*sw - pl + (kw - 1)*dw + 1 that the row's
    windows reach (P = OW unless windows overlap past the padding, as 3x3 stride 2
    without padding)."""
    return OW + max(0, ((kw - 1) * dw - pl) // sw)


cdef inline floating _pool2(floating acc, floating val, bint is_max) noexcept nogil:
    """acc and val pooled: the larger (NaN wins, as in maxpool2d_fwd) or the sum.
    val > acc ? val : acc is what maxss computes (acc on a tie or a NaN), so gcc emits
    it without a branch; the NaN test is a branch that always goes the same way. As
    one condition, (val > acc) | (val != val), scalar code (the loops' remainders,
    _edge_windows) branched on every comparison, half of them mispredicted on random
    values: max pooling of 832x7x7 (GoogLeNet) took 58-62 us, now 23-26."""
    if is_max:
        return val if val != val else (val if val > acc else acc)
    return acc + val


cdef inline void _flat_taps(const floating* src, Py_ssize_t stride, Py_ssize_t step,
                            Py_ssize_t taps, floating* dst, Py_ssize_t length,
                            bint is_max) noexcept nogil:
    """dst[p] = the maximum or the sum over t < taps, in order, of src[p*stride + t*step],
    for p < length: up to three taps a pass, pooled in registers (one pass a tap
    loaded and stored dst for each). Inlined where stride and step are literals:
    gcc then loads whole vectors and shuffles out every second value."""
    cdef Py_ssize_t first = (taps - 1) % 3 + 1, t, p
    cdef const floating* s
    cdef floating acc
    if first == 1:
        for p in range(length):
            dst[p] = src[p * stride]
    elif first == 2:
        for p in range(length):
            dst[p] = _pool2(src[p * stride], src[p * stride + step], is_max)
    else:
        for p in range(length):
            dst[p] = _pool2(_pool2(src[p * stride], src[p * stride + step], is_max),
                            src[p * stride + 2 * step], is_max)
    for t in range(first, taps, 3):
        s = src + t * step
        for p in range(length):
            acc = _pool2(dst[p], s[p * stride], is_max)
            acc = _pool2(acc, s[p * stride + step], is_max)
            dst[p] = _pool2(acc, s[p * stride + 2 * step], is_max)


cdef inline void _edge_windows(const floating* cols, Py_ssize_t V, Py_ssize_t W,
                               Py_ssize_t OH, Py_ssize_t ow0, Py_ssize_t ow1, Py_ssize_t kw,
                               Py_ssize_t sw, Py_ssize_t pl, Py_ssize_t dw, bint is_max,
                               floating* z, Py_ssize_t P) noexcept nogil:
    """z[oh*P + ow] = the maximum or sum, in order, of cols[oh*V + ow*sw - pl + j*dw]
    over j < kw with 0 <= ow*sw - pl + j*dw < W, for the columns ow0 <= ow < ow1 of OH
    rows: a tap at a time down the column (a window at a time, its few taps a loop of
    their own, the 768x17x17 3x3 average took 65-72 us against 50-56). Inlined: a
    first version of these general loops, as a call, cost the 832x7x7 poolings 1-1.5
    us (22.5 -> 23.4-24.1)."""
    cdef Py_ssize_t ow, oh, j, j0, j1, c
    for ow in range(ow0, ow1):
        c = ow * sw - pl
        j0 = _first_tap(c, dw, kw)
        j1 = _end_tap(c, dw, kw, W)
        for oh in range(OH):
            z[oh * P + ow] = cols[oh * V + c + j0 * dw]
        for j in range(j0 + 1, j1):
            for oh in range(OH):
                z[oh * P + ow] = _pool2(z[oh * P + ow], cols[oh * V + c + j * dw], is_max)


# Neither this nor _strided_windows is inlined into _plane_pool (no more than _tile
# into its caller): inside the parallel region gcc kept the flat passes' pointers and
# a vector on the stack, loading and storing them every iteration (the 192x35x35
# average took 2-3 us longer).
cdef noinline_void _stride1_windows(const floating* plane, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh,
                                    Py_ssize_t kw, Py_ssize_t pt, Py_ssize_t pl,
                                    floating fill, bint is_max, const floating* scale,
                                    floating* buf, floating* out) noexcept nogil:
    """out[oh*OW + ow] = the maximum or sum of window (oh, ow) of an H x W plane padded
    with fill (pt, pl <= kh - 1, kw - 1), stride 1, times scale[oh*OW + ow] unless scale
    is NULL; buf holds 2*OH*P + kw values, P = max(W, OW)."""
    cdef Py_ssize_t P = max(W, OW), L = OH * P, r0 = pt, r1 = min(OH, H - kh + 1 + pt)
    cdef Py_ssize_t oh, ow, i0, i1, s, b
    cdef floating* cols = buf + pl         # OH rows of P: each row's kh input rows pooled
    cdef floating* z = out if OW == P else buf + L + kw
    # the margins, and columns W .. P-1, reach only the windows _edge_windows redoes:
    # fill keeps the flat pass from reading uninitialised memory
    for s in range(-pl, 0):
        cols[s] = fill
    for s in range(L, L + kw - 1 - pl):
        cols[s] = fill
    if P == W and r1 > r0:      # rows r0 .. r1-1 flat, the others on their own
        _flat_taps(plane + (r0 - pt) * W, 1, W, kh, cols + r0 * W, (r1 - r0) * W, is_max)
    else:
        r0 = r1 = 0
    for b in range(OH - (r1 - r0)):
        oh = b if b < r0 else b + r1 - r0
        i0 = max(0, pt - oh)
        i1 = min(kh, H + pt - oh)
        _flat_taps(plane + (oh - pt + i0) * W, 1, W, i1 - i0, cols + oh * P, W, is_max)
        for s in range(W, P):
            cols[oh * P + s] = fill
    _flat_taps(cols - pl, 1, 1, kw, z, L, is_max)
    _edge_windows(cols, P, W, OH, 0, min(pl, OW), kw, 1, pl, 1, is_max, z, P)
    _edge_windows(cols, P, W, OH, max(pl, W - kw + 1 + pl), OW, kw, 1, pl, 1, is_max, z, P)
    if OW != P:
        for oh in range(OH):
            for ow in range(OW):
                out[oh * OW + ow] = z[oh * P + ow] if scale == NULL \
                    else z[oh * P + ow] * scale[oh * OW + ow]
    elif scale != NULL:
        for s in range(OH * OW):
            out[s] = out[s] * scale[s]


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
# value longer than the output's, and the windows copied out, it took 0.073-0.074 ms
# against 0.058-0.059.

cdef enum:
    POOL_BAND = 6144    # values (24 KB of float32) of a band of _strided_windows' rows

cdef noinline_void _strided_windows(const floating* plane, Py_ssize_t W, Py_ssize_t oh0,
                                    Py_ssize_t oh1, Py_ssize_t OW, Py_ssize_t kw,
                                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                                    Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                                    const Py_ssize_t* rows, floating fill, bint is_max,
                                    floating* buf, floating* out) noexcept nogil:
    """out[(oh - oh0)*P + ow] = the maximum or sum of window (oh, ow), oh0 <= oh < oh1,
    of a plane of W columns padded with fill, P = _strided_pitch; rows[2*oh : 2*oh + 2]
    are the window row's taps inside the plane (_tap_rows); buf holds
    pl + (oh1 - oh0)*P*sw values."""
    cdef Py_ssize_t P = _strided_pitch(OW, kw, sw, pl, dw), V = P * sw, OH = oh1 - oh0
    cdef Py_ssize_t Wc = min(W, V), oh, s, i0
    cdef floating* wide = buf + pl
    cdef floating* d
    for s in range(-pl, 0):         # read only by windows _edge_windows redoes
        wide[s] = fill
    for oh in range(oh0, oh1):
        d = wide + (oh - oh0) * V
        i0 = rows[2 * oh]
        _flat_taps(plane + (oh * sh - pt + i0 * dh) * W, 1, dh * W, rows[2 * oh + 1] - i0,
                   d, Wc, is_max)
        for s in range(Wc, V):
            d[s] = fill
    if sw == 2 and dw == 1:
        _flat_taps(wide - pl, 2, 1, kw, out, (OH - 1) * P + OW, is_max)
    else:
        _flat_taps(wide - pl, sw, dw, kw, out, (OH - 1) * P + OW, is_max)
    _edge_windows(wide, V, W, OH, 0, min(OW, _ceil_div(pl, sw)), kw, sw, pl, dw, is_max, out, P)


cdef void _plane_pool(const floating[:, :, :, ::1] src, floating[:, :, :, ::1] dst,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      const floating* scale, bint backward, int n_threads) noexcept nogil:
    """Pooling a plane at a time, a share of the planes per thread: dst's windows of
    src, the maximum (values only; scale NULL) or the average, window (oh, ow) times
    scale[oh*OW + ow], the divisor's reciprocal (_avg_scale). Backward (stride 1,
    dilation 1), the average's gradient: src (dL/dY) scaled first (scale then has
    src's plane shape), then each input pixel sums the windows that cover it, which
    at stride 1 form a window of the same size, padded by kh - 1 - pt and kw - 1 - pl."""
    cdef bint is_max = scale == NULL, whole = _whole_planes(sh, sw, dh, dw)
    cdef Py_ssize_t C = src.shape[1], IH = src.shape[2], IW = src.shape[3]
    cdef Py_ssize_t OH = dst.shape[2], OW = dst.shape[3]
    cdef Py_ssize_t pitch = max(IW, OW) if whole else _strided_pitch(OW, kw, sw, pl, dw)
    cdef Py_ssize_t band = OH if whole else max(1, min(OH, POOL_BAND // (pitch * (1 + sw))))
    cdef Py_ssize_t planes = src.shape[0] * C, t, plane, n, c, oh, ow, b, oh0, oh1, i
    cdef bint direct = pitch == OW      # the strided windows written in place
    cdef Py_ssize_t qt = kh - 1 - pt if backward else pt, ql = kw - 1 - pl if backward else pl
    cdef floating fill = -INFINITY if is_max else 0
    cdef const floating* windows_scale = scale
    cdef const floating* windows_src
    cdef floating* buf
    cdef floating* shares
    cdef floating* y
    cdef floating* windows
    cdef Py_ssize_t* rows = NULL
    if backward:
        windows_scale = NULL
    if not whole:
        rows = <Py_ssize_t*> malloc(2 * OH * sizeof(Py_ssize_t))
        for oh in range(OH):        # _tap_rows
            rows[2 * oh] = _first_tap(oh * sh - pt, dh, kh)
            rows[2 * oh + 1] = _end_tap(oh * sh - pt, dh, kh, IH)
    for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
        buf = <floating*> malloc((2 * OH * pitch + kw if whole else pl + band * pitch * (1 + sw))
                                 * sizeof(floating))
        shares = <floating*> malloc((IH * IW if backward else 1) * sizeof(floating))
        for plane in range(_share(planes, t, n_threads), _share(planes, t + 1, n_threads)):
            n = plane // C
            c = plane % C
            windows_src = &src[n, c, 0, 0]
            if backward:
                for i in range(IH * IW):
                    shares[i] = windows_src[i] * scale[i]
                windows_src = shares
            y = &dst[n, c, 0, 0]
            if whole:
                _stride1_windows(windows_src, IH, IW, OH, OW, kh, kw, qt, ql, fill, is_max,
                                 windows_scale, buf, y)
            else:
                for b in range(_ceil_div(OH, band)):
                    oh0 = b * band
                    oh1 = min(OH, oh0 + band)
                    windows = y + oh0 * OW if direct else buf
                    _strided_windows(windows_src, IW, oh0, oh1, OW, kw, sh, sw, pt, pl, dh, dw,
                                     rows, fill, is_max, buf + band * pitch, windows)
                    if direct and not is_max:
                        for i in range(oh0 * OW, oh1 * OW):
                            y[i] = y[i] * scale[i]
                    elif not direct:
                        for oh in range(oh0, oh1):
                            for ow in range(OW):
                                y[oh * OW + ow] = windows[(oh - oh0) * pitch + ow] if is_max \
                                    else windows[(oh - oh0) * pitch + ow] * scale[oh * OW + ow]
        free(shares)
        free(buf)
    free(rows)


cdef inline bint _phased(Py_ssize_t OW, Py_ssize_t sw) noexcept nogil:
    """Whether the strided taps of output rows of OW read the input row's phases."""
    return sw > 1 and OW >= PHASED_ROW


cdef inline Py_ssize_t _phases_size(Py_ssize_t W, Py_ssize_t OW, Py_ssize_t sw) noexcept nogil:
    """Entries of a thread's scratch for the sw phases of an input row of W (one entry
    where the taps read the row itself)."""
    return sw * _ceil_div(W, sw) if _phased(OW, sw) else 1


cdef inline void _deinterleave(const floating* row, Py_ssize_t W, Py_ssize_t sw,
                               floating* phases, Py_ssize_t Q) noexcept nogil:
    """phases[p*Q + q] = row[q*sw + p] for q*sw + p < W: _split_phases without the
    padding, whose bounds cost integer divisions on every row. Stride 2 is the
    common one, and a literal one: gcc then loads whole vectors and shuffles."""
    cdef Py_ssize_t p, q
    if sw == 2:
        for q in range(W // 2):
            phases[q] = row[2 * q]
            phases[Q + q] = row[2 * q + 1]
        if W % 2:
            phases[W // 2] = row[W - 1]
        return
    for p in range(sw):
        for q in range(_ceil_div(W - p, sw)):
            phases[p * Q + q] = row[q * sw + p]


cdef void _max_row(const floating[:, :, :, ::1] x, Py_ssize_t n, Py_ssize_t c, Py_ssize_t oh,
                   floating* yrow, int64_t* irow, const Py_ssize_t[:, ::1] rows,
                   const Py_ssize_t[:, ::1] cols, const int64_t[::1] first,
                   const Py_ssize_t[::1] runs, floating* phases, Py_ssize_t kw, Py_ssize_t sh,
                   Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh,
                   Py_ssize_t dw) noexcept nogil:
    """The maxima of output row oh of plane (n, c) and their flat indices, ih*W + iw.

    The row takes the taps one at a time, in row-major order, across all its
    windows at once, so every window sees its taps in the same order as a scan of
    it alone would, and the inner loop over contiguous outputs vectorises.
    ``phases`` holds sw rows of ceil(W/sw) where _phased; ``runs`` is _tap_runs."""
    cdef Py_ssize_t W = x.shape[3], Q = _ceil_div(W, sw), ow, i, j, ih, off
    cdef bint phased = _phased(first.shape[0], sw)
    cdef const floating* xrow
    ih = oh * sh - pt + rows[oh, 0] * dh
    for ow in range(first.shape[0]):
        yrow[ow] = -INFINITY
        irow[ow] = ih * W + first[ow]
    for i in range(rows[oh, 0], rows[oh, 1]):
        ih = oh * sh - pt + i * dh
        xrow = &x[n, c, ih, 0]
        if phased:
            _deinterleave(xrow, W, sw, phases, Q)
        for j in range(kw):
            off = j * dw - pl
            if sw == 1:     # literal strides and steps: contiguous, vectorised
                _max_tap(xrow + off, yrow, irow, cols[j, 0], cols[j, 1], 1, ih * W + off, 1)
            elif phased:
                _max_tap(phases + runs[j], yrow, irow, cols[j, 0], cols[j, 1], 1, ih * W + off,
                         sw)
            else:
                _max_tap(xrow + off, yrow, irow, cols[j, 0], cols[j, 1], sw, ih * W + off, sw)


def _max_taps(x, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
              Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw):
    """_tap_rows, _tap_cols and _tap_runs of a max pooling, and the column, within its
    row, of each window's first tap inside the input (where a window of -inf points)."""
    first = np.array([ow * sw - pl + _first_tap(ow * sw - pl, dw, kw) * dw for ow in range(OW)],
                     np.int64)
    return (_tap_rows(OH, kh, sh, pt, dh, x.shape[2]), _tap_cols(OW, kw, sw, pl, dw, x.shape[3]),
            first, _tap_runs(kw, sw, pl, dw, x.shape[3]))


def maxpool2d_fwd(const floating[:, :, :, ::1] x,        # IN  (N, C, H, W)
                  floating[:, :, :, ::1] y,              # OUT (N, C, OH, OW)
                  int64_t[:, :, :, ::1] indices,         # OUT (N, C, OH, OW): ih*W + iw of the max
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """y = max over each window with PyTorch's CPU rule: scanning a window row-major,
    a strictly larger value or any NaN replaces the maximum, which starts at -inf on
    the window's first pixel inside the input (so a window of -inf indexes that)."""
    cdef Py_ssize_t C = x.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t[:, ::1] rows
    cdef Py_ssize_t[:, ::1] cols
    cdef int64_t[::1] first
    cdef Py_ssize_t[::1] runs
    cdef Py_ssize_t plane, n, c, oh
    cdef floating* phases
    rows, cols, first, runs = _max_taps(x, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw)
    with nogil:
        for plane in prange(x.shape[0] * C, schedule="static", num_threads=n_threads):
            n = plane // C
            c = plane % C
            phases = <floating*> malloc(_phases_size(x.shape[3], OW, sw) * sizeof(floating))
            for oh in range(OH):
                _max_row(x, n, c, oh, &y[n, c, oh, 0], &indices[n, c, oh, 0], rows, cols, first,
                         runs, phases, kw, sh, sw, pt, pl, dh, dw)
            free(phases)


def maxpool2d_bwd_input(const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
                        const floating[:, :, :, ::1] dy,   # IN  (N, C, OH, OW)
                        floating[:, :, :, ::1] dx,         # OUT (N, C, H, W)
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                        int n_threads):
    """maxpool2d_fwd then maxpool2d_bwd in one pass over X (the gradient from X rather
    than from kept indices): each output row's maxima and indices go to scratch rows
    of the plane's, and the row's gradients straight to them. Nothing of the size of
    Y is written, and the plane of dX being added into stays in cache."""
    cdef Py_ssize_t C = x.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t[:, ::1] rows
    cdef Py_ssize_t[:, ::1] cols
    cdef int64_t[::1] first
    cdef Py_ssize_t[::1] runs
    cdef Py_ssize_t plane, n, c, oh, ow
    cdef floating* best
    cdef int64_t* at
    cdef floating* dxp
    cdef floating* phases
    rows, cols, first, runs = _max_taps(x, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw)
    with nogil:
        for plane in prange(x.shape[0] * C, schedule="static", num_threads=n_threads):
            n = plane // C
            c = plane % C
            best = <floating*> malloc(OW * sizeof(floating))
            at = <int64_t*> malloc(OW * sizeof(int64_t))
            phases = <floating*> malloc(_phases_size(x.shape[3], OW, sw) * sizeof(floating))
            _zero_plane(dx, n, c)
            dxp = &dx[n, c, 0, 0]       # an index is a flat offset into the plane
            for oh in range(OH):
                _max_row(x, n, c, oh, best, at, rows, cols, first, runs, phases, kw, sh, sw, pt,
                         pl, dh, dw)
                for ow in range(OW):
                    dxp[at[ow]] += dy[n, c, oh, ow]
            free(best)
            free(at)
            free(phases)


def maxpool2d_fwd_values(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                         floating[:, :, :, ::1] y,         # OUT (N, C, OH, OW)
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                         int n_threads):
    """y = max over each window, without the indices (inference). The maximum of a
    window does not depend on the order of its taps (but for which of equal zeros,
    -0.0 or 0.0, and which NaN's payload, comes out), so the windows are reduced a
    plane at a time, down the rows and then along them (_plane_pool). NaN wins as in
    maxpool2d_fwd."""
    with nogil:
        _plane_pool(x, y, kh, kw, sh, sw, pt, pl, dh, dw, NULL, False, n_threads)


def maxpool2d_bwd(const floating[:, :, :, ::1] dy,       # IN  (N, C, OH, OW)
                  const int64_t[:, :, :, ::1] indices,   # IN  (N, C, OH, OW)
                  floating[:, :, :, ::1] dx,             # OUT (N, C, H, W)
                  int n_threads):
    """Each window's gradient goes to its maximum; overlapping windows add up."""
    cdef Py_ssize_t C = dx.shape[1], OHW = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t plane, n, c, p
    cdef floating* dxp
    cdef const floating* dyp
    cdef const int64_t* ip
    with nogil:
        for plane in prange(dx.shape[0] * C, schedule="static", num_threads=n_threads):
            n = plane // C
            c = plane % C
            _zero_plane(dx, n, c)
            dxp = &dx[n, c, 0, 0]       # an index is a flat offset into the plane
            dyp = &dy[n, c, 0, 0]
            ip = &indices[n, c, 0, 0]
            for p in range(OHW):
                dxp[ip[p]] += dyp[p]


def avgpool2d_fwd(const floating[:, :, :, ::1] x,        # IN  (N, C, H, W)
                  floating[:, :, :, ::1] y,              # OUT (N, C, OH, OW)
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                  bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """y = (sum over each window) / divisor; ``divisor_override`` is 0 when unset.

    Like max pooling's values, the windows are summed a plane at a time (_plane_pool)."""
    cdef floating[::1] scale = np.empty(max(1, y.shape[2] * y.shape[3]),
                                        np.float32 if floating is float else np.float64)
    with nogil:
        _avg_scale(&scale[0], y.shape[2], y.shape[3], x.shape[2], x.shape[3], kh, kw, sh, sw,
                   pt, pl, count_include_pad, divisor_override)
        _plane_pool(x, y, kh, kw, sh, sw, pt, pl, dh, dw, &scale[0], False, n_threads)


def avgpool2d_bwd(const floating[:, :, :, ::1] dy,       # IN  (N, C, OH, OW)
                  floating[:, :, :, ::1] dx,             # OUT (N, C, H, W)
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                  bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """Each input pixel receives dL/dY / divisor from every window that covers it.

    The forward's transpose: a row of shares, dL/dY times the reciprocal of the
    divisor (_avg_scale, as the forward's), is worked out once per output row, in a
    scratch row of the plane's, then added tap by tap along the input rows it covers."""
    cdef Py_ssize_t C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t[:, ::1] rows
    cdef Py_ssize_t[:, ::1] cols
    cdef Py_ssize_t plane, n, c, oh, ow, h0, i, j, off
    cdef floating* share
    cdef floating* dxrow
    cdef floating[::1] scale = np.empty(max(1, OH * OW),
                                        np.float32 if floating is float else np.float64)
    with nogil:
        _avg_scale(&scale[0], OH, OW, H, W, kh, kw, sh, sw, pt, pl, count_include_pad,
                   divisor_override)
    if _whole_planes(sh, sw, dh, dw):
        with nogil:
            _plane_pool(dy, dx, kh, kw, 1, 1, pt, pl, 1, 1, &scale[0], True, n_threads)
        return
    rows, cols = _tap_rows(OH, kh, sh, pt, 1, H), _tap_cols(OW, kw, sw, pl, 1, W)
    with nogil:
        for plane in prange(dx.shape[0] * C, schedule="static", num_threads=n_threads):
            n = plane // C
            c = plane % C
            share = <floating*> malloc(OW * sizeof(floating))
            _zero_plane(dx, n, c)
            for oh in range(OH):
                h0 = oh * sh - pt
                for ow in range(OW):
                    share[ow] = dy[n, c, oh, ow] * scale[oh * OW + ow]
                for i in range(rows[oh, 0], rows[oh, 1]):
                    dxrow = &dx[n, c, h0 + i, 0]
                    for j in range(kw):
                        off = j - pl
                        if sw == 1:     # a known unit stride: contiguous stores
                            for ow in range(cols[j, 0], cols[j, 1]):
                                dxrow[ow + off] += share[ow]
                        else:
                            for ow in range(cols[j, 0], cols[j, 1]):
                                dxrow[ow * sw + off] += share[ow]
            free(share)


cdef inline floating _span_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """Sum of a[0:n] (an adaptive window of whole rows), in one running sum: many
    short sums overlap each other's adds out of order. Four interleaved partial sums,
    as the Numba twin keeps, gcc made into vector loads and a shuffle for every
    element: ResNet's global pooling (8, 2048, 7, 7), when it summed its planes so,
    took 0.099-0.107 ms with them and 0.084-0.091 with one (in-process A/Bs, 2
    threads)."""
    cdef floating total = 0
    cdef Py_ssize_t i
    for i in range(n):
        total = total + a[i]
    return total


def adaptive_avgpool2d_fwd(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                           floating[:, :, :, ::1] y,         # OUT (N, C, OH, OW)
                           int n_threads):
    """Window (oh, ow) averages rows [floor(oh*H/OH), ceil((oh+1)*H/OH)) and likewise columns."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow, h0, h1, w0, w1, ih, iw, t, p0, p1
    cdef floating total
    cdef const floating* planes = &x[0, 0, 0, 0] if x.shape[0] * C * H * W else NULL
    cdef floating* means = &y[0, 0, 0, 0] if y.shape[0] * C * OH * OW else NULL
    cdef floating[::1] ones = np.ones(H * W if OH == 1 and OW == 1 else 1,
                                      np.float32 if floating is float else np.float64)
    with nogil:
        if OH == 1 and OW == 1:
            # global pooling: plane p is row p of a (planes x H*W) matrix, its mean
            # y[p] = (row . ones) * 1/(H*W), a share of the rows per thread. BLAS keeps
            # several rows' sums in flight; one short sum after another (49 values on
            # ResNet's 7x7 maps) waited on its adds: (8, 2048, 7, 7) took 77-82 us.
            for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                p0 = _share(x.shape[0] * C, t, n_threads)
                p1 = _share(x.shape[0] * C, t + 1, n_threads)
                if p1 > p0:
                    _row_sums(p1 - p0, H * W, <floating> 1 / (H * W), planes + p0 * H * W,
                              &ones[0], means + p0)
        else:
            for plane in prange(x.shape[0] * C, schedule="static", num_threads=n_threads):
                n = plane // C
                c = plane % C
                for oh in range(OH):
                    h0 = oh * H // OH
                    h1 = _ceil_div((oh + 1) * H, OH)
                    for ow in range(OW):
                        w0 = ow * W // OW
                        w1 = _ceil_div((ow + 1) * W, OW)
                        if w1 - w0 == W:        # whole rows: one contiguous span
                            total = _span_sum(&x[n, c, h0, 0], (h1 - h0) * W)
                        else:
                            total = 0
                            for ih in range(h0, h1):
                                for iw in range(w0, w1):
                                    total = total + x[n, c, ih, iw]
                        y[n, c, oh, ow] = total / ((h1 - h0) * (w1 - w0))


def adaptive_avgpool2d_bwd(const floating[:, :, :, ::1] dy,  # IN  (N, C, OH, OW)
                           floating[:, :, :, ::1] dx,        # OUT (N, C, H, W)
                           int n_threads):
    """Each window spreads dL/dY evenly over the pixels it averaged."""
    cdef Py_ssize_t C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow, h0, h1, w0, w1, ih, iw, q
    cdef floating share
    cdef const floating* means = &dy[0, 0, 0, 0] if dy.shape[0] * C * OH * OW else NULL
    cdef floating* planes = &dx[0, 0, 0, 0] if dx.shape[0] * C * H * W else NULL
    with nogil:
        if OH == 1 and OW == 1:
            # global pooling: plane p, the span dx[p*H*W : (p+1)*H*W], is filled with
            # dy[p] / (H*W), with no window arithmetic (as the forward)
            for plane in prange(dx.shape[0] * C, schedule="static", num_threads=n_threads):
                share = means[plane] / (H * W)
                for q in range(plane * H * W, (plane + 1) * H * W):
                    planes[q] = share
        else:
            for plane in prange(dx.shape[0] * C, schedule="static", num_threads=n_threads):
                n = plane // C
                c = plane % C
                _zero_plane(dx, n, c)
                for oh in range(OH):
                    h0 = oh * H // OH
                    h1 = _ceil_div((oh + 1) * H, OH)
                    for ow in range(OW):
                        w0 = ow * W // OW
                        w1 = _ceil_div((ow + 1) * W, OW)
                        share = dy[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
                        for ih in range(h0, h1):
                            for iw in range(w0, w1):
                                dx[n, c, ih, iw] += share


# ---------------------------------------------------------------------------
# Per-channel scale and shift (BatchNorm at inference), with an optional ReLU
# ---------------------------------------------------------------------------

def channel_affine(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                   const floating[::1] scale,        # IN  (C,)
                   const floating[::1] shift,        # IN  (C,)
                   floating[:, :, :, ::1] y,         # OUT (N, C, H, W), may be x itself
                   bint relu, int n_threads):
    """y = x * scale[c] + shift[c], then max(y, 0) if ``relu`` (NaN stays NaN)."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t plane, n, c, i, j
    cdef floating a, b
    with nogil:
        for plane in prange(x.shape[0] * C, schedule="static", num_threads=n_threads):
            n = plane // C
            c = plane % C
            a = scale[c]
            b = shift[c]
            for i in range(H):
                for j in range(W):
                    y[n, c, i, j] = _epilogue(x[n, c, i, j], a, b, 0, relu)


# ---------------------------------------------------------------------------
# Fully connected layer
# ---------------------------------------------------------------------------

def linear_fwd(const floating[:, ::1] x,   # IN  (B, in)
               const floating[:, ::1] w,   # IN  (out, in)
               const floating[::1] b,      # IN  (out,), or empty for no bias
               floating[:, ::1] y,         # OUT (B, out)
               int n_threads):
    """Y = X . W^T + b, each thread a share of the output features (in runs of 16,
    whole cache lines of Y) with one single-threaded GEMM. At batch 1 the product
    only streams W from memory, and one core cannot draw the bandwidth that two can;
    it is then a dot product per row of W, which streamed VGG-16's 411 MB first layer
    at 32-34 GB/s where BLAS's matrix-vector product drew 27-29 (PyTorch's: 33-35)."""
    cdef Py_ssize_t B = x.shape[0], IN = x.shape[1], OUT = w.shape[0]
    cdef Py_ssize_t runs = _ceil_div(OUT, 16), t, o0, o1, i, o
    with nogil:
        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            o0 = min(OUT, _share(runs, t, n_threads) * 16)
            o1 = min(OUT, _share(runs, t + 1, n_threads) * 16)
            if o1 == o0:
                continue
            if B == 1:
                for o in range(o0, o1):
                    y[0, o] = _dot(&w[o, 0], &x[0, 0], IN)
            else:
                _gemm(False, True, B, o1 - o0, IN, 1, &x[0, 0], IN, &w[o0, 0], IN, 0,
                      &y[0, o0], OUT)
            if b.shape[0]:
                for i in range(B):
                    for o in range(o0, o1):
                        y[i, o] += b[o]
