"""The NumPy reference backend: every kernel, written to be read next to the formulas.

This backend is the oracle of the test suite: in float64 it is exact to
rounding, and every faster backend is checked against it. Speed is not its
purpose; clarity is. It uses the same kernel names and argument order as the
compiled backends (arrays first, marked IN/OUT, then
``kh, kw, sh, sw, pt, pl, dh, dw, groups``, then ``n_threads``), writes into
outputs the caller allocated, and ignores ``n_threads``.

Notation of the convolution chapter, with ``X`` (N, C, H, W), ``W`` (K, C/g, kh, kw):

    Y[n, k, oh, ow] = b[k] + sum_{c, i, j} W[k, c, i, j] * X[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]

(cross-correlation; pixels outside the input are the zero padding). Every
kernel here is written in terms of the *taps* of that sum: for one kernel
offset ``(i, j)`` the input pixels it touches form a strided slice of the
padded input, of the same size as the output.
"""

import numpy as np

from ..shapes import adaptive_window
from ..winograd import R, TRANSFORMS, rotated_weights
from ._lowering import im2col_convolutions


# ---------------------------------------------------------------------------
# Taps: the strided slices of the padded input, one per kernel offset
# ---------------------------------------------------------------------------

def _embed(x, top, left, rows, cols, fill=0):
    """A (N, C, rows, cols) canvas of ``fill`` with ``x`` placed at offset (top, left).

    Positive offsets pad, negative ones crop; what falls outside is dropped.
    """
    out = np.full(x.shape[:2] + (rows, cols), fill, dtype=x.dtype)
    h, w = x.shape[2:]
    r0, r1 = max(top, 0), min(top + h, rows)
    c0, c1 = max(left, 0), min(left + w, cols)
    if r0 < r1 and c0 < c1:
        out[:, :, r0:r1, c0:c1] = x[:, :, r0 - top:r1 - top, c0 - left:c1 - left]
    return out


def _extent(out_size, kernel, stride, dilation):
    """Padded input length the windows read: ``(O-1)*S + D*(K-1) + 1``."""
    return (out_size - 1) * stride + dilation * (kernel - 1) + 1


def _tap(i, j, sh, sw, dh, dw, oh, ow):
    """Index of the padded input that kernel offset (i, j) reads for every output pixel."""
    return (slice(None), slice(None),
            slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))


def _gather(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, fill=0):
    """Windows of ``x`` as (N, C, kh, kw, OH, OW): ``x[n, c, oh*sh-pt+i*dh, ow*sw-pl+j*dw]``."""
    xp = _embed(x, pt, pl, _extent(oh, kh, sh, dh), _extent(ow, kw, sw, dw), fill)
    taps = np.empty(x.shape[:2] + (kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            taps[:, :, i, j] = xp[_tap(i, j, sh, sw, dh, dw, oh, ow)]
    return taps


def _scatter(taps, h, w, sh, sw, pt, pl, dh, dw):
    """Adjoint of :func:`_gather`: add every tap back where it was read from, crop the padding."""
    n, c, kh, kw, oh, ow = taps.shape
    xp = np.zeros((n, c, max(_extent(oh, kh, sh, dh), pt + h), max(_extent(ow, kw, sw, dw), pl + w)),
                  dtype=taps.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[_tap(i, j, sh, sw, dh, dw, oh, ow)] += taps[:, :, i, j]
    return xp[:, :, pt:pt + h, pl:pl + w]


# ---------------------------------------------------------------------------
# im2col / col2im (PyTorch's unfold / fold)
# ---------------------------------------------------------------------------

def im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """Lower every window of x to a column: cols[n, (c, i, j), oh, ow] = X[n, c, oh*sh-pt+i*dh, ow*sw-pl+j*dw].

    x    : (N, C, H, W)            # IN
    cols : (N, C*kh*kw, OH, OW)    # OUT
    """
    n, c = x.shape[:2]
    oh, ow = cols.shape[2:]
    cols[...] = _gather(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow).reshape(n, c * kh * kw, oh, ow)


def col2im(cols, x, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """Adjoint of im2col: sum every column entry back into the pixel it was copied from.

    cols : (N, C*kh*kw, OH, OW)    # IN
    x    : (N, C, H, W)            # OUT (overwritten)
    """
    n, c, h, w = x.shape
    oh, ow = cols.shape[2:]
    x[...] = _scatter(cols.reshape(n, c, kh, kw, oh, ow), h, w, sh, sw, pt, pl, dh, dw)


# ---------------------------------------------------------------------------
# The forward kernels' epilogue
# ---------------------------------------------------------------------------

def _finished(forward):
    """``forward`` (it writes y = b + the sums) then the epilogue every host backend's
    forward kernels take: y = sums * scale[k] + b[k] + residual, then max(y, 0) if
    ``relu`` (NaN stays NaN); no scale is 1, no residual is 0."""

    def run(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads, scale=None,
            residual=None, relu=False):
        forward(x, w, b if scale is None else np.zeros_like(b), y, kh, kw, sh, sw, pt, pl,
                dh, dw, groups, n_threads)
        if scale is not None:
            y *= scale[:, None, None]
            y += b[:, None, None]
        if residual is not None:
            y += residual
        if relu:
            np.maximum(y, 0, out=y)

    run.__name__, run.__doc__ = forward.__name__, forward.__doc__
    return run


# ---------------------------------------------------------------------------
# Convolution by im2col + GEMM (the algebra is in _lowering.py)
# ---------------------------------------------------------------------------

conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col = \
    im2col_convolutions(im2col, col2im)
conv2d_fwd_im2col = _finished(conv2d_fwd_im2col)


# ---------------------------------------------------------------------------
# Direct convolution: a sum over kernel taps of 1x1 convolutions
# ---------------------------------------------------------------------------
# Y = b + sum_{i,j} W[:, :, i, j] . X_tap(i,j), where X_tap(i, j) is the strided
# slice of the padded input that kernel offset (i, j) reads. No lowered matrix
# is built; each tap is one (K/g x C/g) matrix applied to every pixel.

def _split(a, groups):
    """(N, C, ...) -> (N, groups, C/groups, ...)."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, *a.shape[2:])


@_finished
def conv2d_fwd_direct(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """Y[n,k] = b[k] + sum_{i,j} sum_c W[k,c,i,j] X_tap(i,j)[n,c].

    x : (N, C, H, W)  # IN     w : (K, C/g, kh, kw)  # IN
    b : (K,)          # IN     y : (N, K, OH, OW)    # OUT
    """
    n, k, oh, ow = y.shape
    taps = _split(_gather(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow), groups)
    wg = w.reshape(groups, k // groups, *w.shape[1:])
    acc = np.zeros((n, groups, k // groups, oh, ow), dtype=y.dtype)
    for i in range(kh):
        for j in range(kw):
            acc += np.einsum("gkc,ngchw->ngkhw", wg[:, :, :, i, j], taps[:, :, :, i, j])
    y[...] = acc.reshape(y.shape) + b[:, None, None]


def conv2d_bwd_data_direct(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """dL/dX_tap(i,j)[n,c] += sum_k W[k,c,i,j] dL/dY[n,k]: each tap sends the gradient back.

    dy : (N, K, OH, OW)  # IN     w : (K, C/g, kh, kw)  # IN
    dx : (N, C, H, W)    # OUT
    """
    n, k, oh, ow = dy.shape
    c, h, w_ = dx.shape[1:]
    wg = w.reshape(groups, k // groups, *w.shape[1:])
    dyg = _split(dy, groups)
    dtaps = np.empty((n, groups, c // groups, kh, kw, oh, ow), dtype=dx.dtype)
    for i in range(kh):
        for j in range(kw):
            dtaps[:, :, :, i, j] = np.einsum("gkc,ngkhw->ngchw", wg[:, :, :, i, j], dyg)
    dx[...] = _scatter(dtaps.reshape(n, c, kh, kw, oh, ow), h, w_, sh, sw, pt, pl, dh, dw)


def conv2d_bwd_weight_direct(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    """dL/dW[k,c,i,j] = sum_{n,oh,ow} dL/dY[n,k,oh,ow] X_tap(i,j)[n,c,oh,ow].

    dy  : (N, K, OH, OW)  # IN     x : (N, C, H, W)  # IN
    dw_ : (K, C/g, kh, kw)  # OUT
    """
    n, k, oh, ow = dy.shape
    taps = _split(_gather(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow), groups)
    dyg = _split(dy, groups)
    out = dw_.reshape(groups, k // groups, *dw_.shape[1:])
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j] = np.einsum("ngkhw,ngchw->gkc", dyg, taps[:, :, :, i, j])


# ---------------------------------------------------------------------------
# Winograd F(m x m, 3 x 3)
# ---------------------------------------------------------------------------
# Output tile (ty, tx) covers rows ty*m .. ty*m+m-1 of Y and reads the
# alpha x alpha input tile starting at the same corner of the padded input
# (tiles overlap by r-1 = 2). Per tile:  Y = A^T [ U (.) V ] A  with
#   U = G g G^T   (filter transform, (alpha, alpha) per (k, c))
#   V = B^T d B   (input transform, (alpha, alpha) per (n, c, tile))
# and the sum over input channels is, for each of the alpha^2 positions
# (a, b), a (K x C) . (C x tiles) matrix product:  M[a,b] = U[a,b] . V[a,b].

def _winograd_correlate(x, w, b, y, m, pt, pl, groups):
    g_mat, bt, at = TRANSFORMS[m].matrices(x.dtype)
    alpha = m + R - 1
    n, k, oh, ow = y.shape
    c = x.shape[1]
    th, tw = -(-oh // m), -(-ow // m)
    # padded input covering whole tiles; output rows past OH are cut off at the end
    xp = _embed(x, pt, pl, th * m + R - 1, tw * m + R - 1)
    d = np.lib.stride_tricks.sliding_window_view(xp, (alpha, alpha), axis=(2, 3))[:, :, ::m, ::m]
    v = np.einsum("ai,nctuij,bj->abnctu", bt, d, bt)                    # V = B^T d B
    v = v.reshape(alpha, alpha, n, groups, c // groups, th, tw)
    u = np.einsum("ai,kcij,bj->abkc", g_mat, w, g_mat)                  # U = G g G^T
    u = u.reshape(alpha, alpha, groups, k // groups, c // groups)
    mm = np.einsum("abgkc,abngctu->abngktu", u, v)                      # M = sum_c U V
    tiles = np.einsum("ia,abngktu,jb->ngktiuj", at, mm, at)             # Y = A^T M A
    tiles = tiles.reshape(n, k, th * m, tw * m)
    y[...] = tiles[:, :, :oh, :ow] + b[:, None, None]


def _winograd_kernels(m):
    @_finished
    def forward(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        """Y = A^T [(G g G^T) (.) (B^T d B)] A on every tile (3x3, stride 1, dilation 1)."""
        _winograd_correlate(x, w, b, y, m, pt, pl, groups)

    def backward_data(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        """dL/dX = rot180(W)^T correlated with dL/dY padded by 2-pt: a Winograd forward pass."""
        zeros = np.zeros(dx.shape[1], dtype=dx.dtype)
        _winograd_correlate(dy, rotated_weights(w, groups), zeros, dx,
                            m, R - 1 - pt, R - 1 - pl, groups)

    forward.__name__ = f"conv2d_fwd_winograd{m}"
    backward_data.__name__ = f"conv2d_bwd_data_winograd{m}"
    return forward, backward_data


conv2d_fwd_winograd2, conv2d_bwd_data_winograd2 = _winograd_kernels(2)
conv2d_fwd_winograd4, conv2d_bwd_data_winograd4 = _winograd_kernels(4)
conv2d_fwd_winograd6, conv2d_bwd_data_winograd6 = _winograd_kernels(6)
# The weight gradient of a 3x3 stride-1 convolution is a correlation of X
# with dL/dY (a large "kernel"); Winograd's small tiles do not fit it, im2col does.
conv2d_bwd_weight_winograd2 = conv2d_bwd_weight_im2col
conv2d_bwd_weight_winograd4 = conv2d_bwd_weight_im2col
conv2d_bwd_weight_winograd6 = conv2d_bwd_weight_im2col


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

def _window_index(h, w, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """Flat input index ``ih*W + iw`` of every tap (kh*kw, OH, OW), and whether it is inside."""
    ih = (np.arange(oh) * sh - pt)[None, :] + (np.arange(kh) * dh)[:, None]    # (kh, OH)
    iw = (np.arange(ow) * sw - pl)[None, :] + (np.arange(kw) * dw)[:, None]    # (kw, OW)
    flat = ih[:, None, :, None] * w + iw[None, :, None, :]                     # (kh, kw, OH, OW)
    inside = (((ih >= 0) & (ih < h))[:, None, :, None]
              & ((iw >= 0) & (iw < w))[None, :, None, :])
    return flat.reshape(kh * kw, oh, ow), inside.reshape(kh * kw, oh, ow)


def maxpool2d_fwd(x, y, indices, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """y = max over each window; indices = flat ``ih*W + iw`` of the maximum.

    x : (N, C, H, W)  # IN     y, indices : (N, C, OH, OW)  # OUT
    As in PyTorch's CPU kernel, a scan keeps the first strict maximum, a NaN
    always wins (so the last NaN is the one kept), and a window of -inf keeps
    its first pixel inside the input.
    """
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    flat, inside = _window_index(h, w, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)
    vals = _gather(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, fill=-np.inf)
    vals = vals.reshape(n, c, kh * kw, oh, ow)
    best = vals.max(axis=2)                                  # np.max propagates NaN
    first_max = np.argmax(inside & (vals == best[:, :, None]), axis=2)
    is_nan = np.isnan(vals)
    last_nan = kh * kw - 1 - np.argmax(is_nan[:, :, ::-1], axis=2)
    tap = np.where(np.isnan(best), last_nan, first_max)
    y[...] = best
    indices[...] = np.take_along_axis(np.broadcast_to(flat, (n, c) + flat.shape),
                                      tap[:, :, None], axis=2)[:, :, 0]


def maxpool2d_fwd_values(x, y, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """y = max over each window, without the indices (inference)."""
    maxpool2d_fwd(x, y, np.empty(y.shape, np.int64), kh, kw, sh, sw, pt, pl, dh, dw, n_threads)


def maxpool2d_bwd(dy, indices, dx, n_threads):
    """The gradient of each window goes to its maximum; overlapping windows add up.

    dy, indices : (N, C, OH, OW)  # IN     dx : (N, C, H, W)  # OUT
    """
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2:]
    planes = dx.reshape(n * c, h * w)
    planes[...] = 0
    rows = np.arange(n * c)[:, None]
    np.add.at(planes, (rows, indices.reshape(n * c, oh * ow)), dy.reshape(n * c, oh * ow))


def maxpool2d_bwd_input(x, dy, dx, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """The gradient from X rather than from kept indices: maxpool2d_fwd, then maxpool2d_bwd.

    x : (N, C, H, W)  # IN     dy : (N, C, OH, OW)  # IN     dx : (N, C, H, W)  # OUT
    """
    indices = np.empty(dy.shape, np.int64)
    maxpool2d_fwd(x, np.empty_like(dy), indices, kh, kw, sh, sw, pt, pl, dh, dw, n_threads)
    maxpool2d_bwd(dy, indices, dx, n_threads)


def _avg_divisor(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad, divisor_override):
    """The divisor of every window (OH, OW), as in PyTorch.

    A window may hang over the padding (and, with ceil_mode, past it). With
    ``count_include_pad`` it is divided by its size clipped to the padded input,
    otherwise by the number of input pixels it covers.
    """
    if divisor_override:
        return np.full((oh, ow), divisor_override, dtype=np.int64)

    def extent(out, k, s, p, size):
        start = np.arange(out) * s - p
        end = np.minimum(start + k, size + p)
        padded = end - start
        inner = np.minimum(end, size) - np.maximum(start, 0)
        return padded if count_include_pad else inner

    return np.outer(extent(oh, kh, sh, pt, h), extent(ow, kw, sw, pl, w))


def avgpool2d_fwd(x, y, kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    """y = (sum over each window) / divisor.

    x : (N, C, H, W)  # IN     y : (N, C, OH, OW)  # OUT
    ``divisor_override`` is 0 when unset.
    """
    h, w = x.shape[2:]
    oh, ow = y.shape[2:]
    sums = _gather(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow).sum(axis=(2, 3))
    y[...] = sums / _avg_divisor(h, w, kh, kw, sh, sw, pt, pl, oh, ow,
                                 count_include_pad, divisor_override)


def avgpool2d_bwd(dy, dx, kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    """Each input pixel receives dL/dY / divisor from every window that covers it: up(dL/dY) / divisor.

    dy : (N, C, OH, OW)  # IN     dx : (N, C, H, W)  # OUT
    """
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2:]
    share = dy / _avg_divisor(h, w, kh, kw, sh, sw, pt, pl, oh, ow,
                              count_include_pad, divisor_override)
    taps = np.broadcast_to(share[:, :, None, None].astype(dx.dtype), (n, c, kh, kw, oh, ow))
    dx[...] = _scatter(taps, h, w, sh, sw, pt, pl, dh, dw)


def adaptive_avgpool2d_fwd(x, y, n_threads):
    """Window (oh, ow) averages rows [floor(oh*H/OH), ceil((oh+1)*H/OH)) and likewise columns.

    x : (N, C, H, W)  # IN     y : (N, C, OH, OW)  # OUT
    """
    h, w = x.shape[2:]
    oh, ow = y.shape[2:]
    for r in range(oh):
        r0, r1 = adaptive_window(r, h, oh)
        for s in range(ow):
            s0, s1 = adaptive_window(s, w, ow)
            y[:, :, r, s] = x[:, :, r0:r1, s0:s1].mean(axis=(2, 3))


def adaptive_avgpool2d_bwd(dy, dx, n_threads):
    """Each window spreads dL/dY evenly over the pixels it averaged.

    dy : (N, C, OH, OW)  # IN     dx : (N, C, H, W)  # OUT
    """
    h, w = dx.shape[2:]
    oh, ow = dy.shape[2:]
    dx[...] = 0
    for r in range(oh):
        r0, r1 = adaptive_window(r, h, oh)
        for s in range(ow):
            s0, s1 = adaptive_window(s, w, ow)
            dx[:, :, r0:r1, s0:s1] += dy[:, :, r, s, None, None] / ((r1 - r0) * (s1 - s0))


def channel_affine(x, scale, shift, y, relu, n_threads):
    """y = x * scale[c] + shift[c], then max(y, 0) if ``relu`` (NaN stays NaN).

    x : (N, C, H, W)  # IN     scale, shift : (C,)  # IN     y : like x, may be x  # OUT
    """
    np.multiply(x, scale[:, None, None], out=y)
    y += shift[:, None, None]
    if relu:
        np.maximum(y, 0, out=y)


def linear_fwd(x, w, b, y, n_threads):
    """Y = X . W^T + b.

    x : (B, in)  # IN     w : (out, in)  # IN     b : (out,) or (0,)  # IN     y : (B, out)  # OUT
    """
    np.matmul(x, w.T, out=y)
    if b.shape[0]:
        y += b
