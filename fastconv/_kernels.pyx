# cython: language_level=3
"""Compiled CPU kernels (Cython + OpenMP).

Each kernel takes arrays first, each marked IN or OUT, then
``kh, kw, sh, sw, pt, pl, dh, dw`` (and ``groups`` for convolutions), then
``n_threads``; sizes are read from the arrays. The caller (``fastconv.functional``,
through ``fastconv.backends.cython``) has validated every argument and
allocated every output, so bounds checks are off (see setup.py for the switch
that turns them back on) and the loops run without the GIL.
"""

from cython cimport floating
from cython.parallel cimport prange, threadid


def openmp_threads(int n_threads):
    """How many threads a parallel region asked for ``n_threads`` really ran on.

    1 when the extension was built without OpenMP (prange then runs serially).
    """
    cdef int i, t, most = 1
    cdef int[256] ran
    n_threads = max(1, min(n_threads, 256))
    with nogil:
        for i in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            ran[i] = threadid() + 1
    for i in range(n_threads):
        most = max(most, ran[i])
    return most


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


def im2col(const floating[:, :, :, ::1] x,      # IN  (N, C, H, W)
           floating[:, :, :, ::1] cols,         # OUT (N, C*kh*kw, OH, OW)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
           int n_threads):
    """cols[n, (c, i, j), oh, ow] = x[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw], 0 in the padding."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = cols.shape[2], OW = cols.shape[3]
    cdef Py_ssize_t K2 = kh * kw, n_rows = cols.shape[0] * C * K2
    cdef Py_ssize_t row, n, c, i, j, oh, ow, ih, iw0, ow0, ow1
    with nogil:
        # one row of cols per (n, c, i, j): rows are independent
        for row in prange(n_rows, schedule="static", num_threads=n_threads):
            n = row // (C * K2)
            c = row // K2 % C
            i = row // kw % kh
            j = row % kw
            # columns ow0 <= ow < ow1 read inside the input: 0 <= ow*sw + iw0 < W
            iw0 = j * dw - pl
            ow0 = _first_inside(iw0, sw, OW)
            ow1 = _end_inside(iw0, sw, W, ow0, OW)
            for oh in range(OH):
                ih = oh * sh - pt + i * dh
                if ih < 0 or ih >= H:
                    for ow in range(OW):
                        cols[n, c * K2 + i * kw + j, oh, ow] = 0
                    continue
                for ow in range(ow0):
                    cols[n, c * K2 + i * kw + j, oh, ow] = 0
                for ow in range(ow0, ow1):
                    cols[n, c * K2 + i * kw + j, oh, ow] = x[n, c, ih, ow * sw + iw0]
                for ow in range(ow1, OW):
                    cols[n, c * K2 + i * kw + j, oh, ow] = 0


def col2im(const floating[:, :, :, ::1] cols,   # IN  (N, C*kh*kw, OH, OW)
           floating[:, :, :, ::1] x,            # OUT (N, C, H, W), overwritten
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
           int n_threads):
    """x[n, c, ih, iw] = sum of the cols entries im2col copied from it (the adjoint of im2col)."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = cols.shape[2], OW = cols.shape[3]
    cdef Py_ssize_t K2 = kh * kw, n_planes = x.shape[0] * C
    cdef Py_ssize_t plane, n, c, i, j, oh, ow, ih, iw, iw0, ow0, ow1
    with nogil:
        # one (n, c) plane per iteration: a thread owns every pixel it adds into
        for plane in prange(n_planes, schedule="static", num_threads=n_threads):
            n = plane // C
            c = plane % C
            for ih in range(H):
                for iw in range(W):
                    x[n, c, ih, iw] = 0
            for i in range(kh):
                for j in range(kw):
                    iw0 = j * dw - pl
                    ow0 = _first_inside(iw0, sw, OW)
                    ow1 = _end_inside(iw0, sw, W, ow0, OW)
                    for oh in range(OH):
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        for ow in range(ow0, ow1):
                            x[n, c, ih, ow * sw + iw0] += cols[n, c * K2 + i * kw + j, oh, ow]
