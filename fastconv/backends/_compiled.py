"""The backend interface of the compiled kernels, shared by the Cython and Numba backends.

The compiled kernels take their workspaces as arguments and call BLAS from
their own threads; these wrappers size the workspaces (``_workspace.py``),
fetch cached Winograd filter transforms, and make sure the BLAS they call
runs on one thread. ``kernels`` is ``fastconv._kernels`` or ``fastconv._numba_kernels``:
the two expose the same names and arguments.
"""

import functools

import numpy as np

from ..winograd import FILTERS, R, TRANSFORMS, rotated_weights
from . import kernel_blas_single_threaded
from ._workspace import (direct_channel_parts, direct_row_width, direct_workspace,
                         im2col_workspace, output_channel_parts, per_image_gradients,
                         whole_rows, winograd_packed, winograd_workspace)


def _epilogue_args(y, scale, residual, relu):
    """The forward kernels' epilogue arguments: None becomes an empty array of y's dtype."""
    return (np.empty(0, y.dtype) if scale is None else scale,
            np.empty((0, 0, 0, 0), y.dtype) if residual is None else residual, bool(relu))


def im2col_convolutions(kernels):
    """``(conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col)``."""

    def workspace(w, y_or_dy, x, kh, kw, groups, n_threads, wide, shared=False, k_parts=1):
        """The lowering workspace, (threads or 1 shared, rows, columns); lowering whole rows,
        W columns per output row and K/g more rows (for the product, or the block of dY
        laid out the same way)."""
        cols = im2col_workspace(w, y_or_dy, kh, kw, groups, n_threads, shared,
                                width=x.shape[3] if wide else None,
                                extra_rows=w.shape[0] // groups if wide else 0, k_parts=k_parts)
        return cols[None] if shared else cols

    def conv2d_fwd_im2col(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads,
                          scale=None, residual=None, relu=False):
        wide = whole_rows(x.shape, y.shape, kw, sh, sw, pl, dw)
        k_parts = output_channel_parts(y.shape, groups, n_threads)
        cols = workspace(w, y, x, kh, kw, groups, n_threads, wide, k_parts=k_parts)
        with kernel_blas_single_threaded():
            kernels.conv2d_fwd_im2col(x, w, b, y, *_epilogue_args(y, scale, residual, relu),
                                      cols, wide, kh, kw, sh, sw, pt, pl, dh, dw, groups,
                                      k_parts, n_threads)

    def conv2d_bwd_data_im2col(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        wide = whole_rows(dx.shape, dy.shape, kw, sh, sw, pl, dw)
        per_image = per_image_gradients(w, dy, groups, n_threads)
        cols = workspace(w, dy, dx, kh, kw, groups, n_threads, wide, shared=not per_image)
        with kernel_blas_single_threaded():
            kernels.conv2d_bwd_data_im2col(dy, w, dx, cols, wide, per_image, kh, kw, sh, sw,
                                           pt, pl, dh, dw, groups, n_threads)

    def conv2d_bwd_weight_im2col(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        wide = whole_rows(x.shape, dy.shape, kw, sh, sw, pl, dw)
        per_image = per_image_gradients(dw_, dy, groups, n_threads)
        cols = workspace(dw_, dy, x, kh, kw, groups, n_threads, wide, shared=not per_image)
        k, ckk = dw_.shape[0], dw_[0].size
        partial = np.empty((n_threads, k, ckk) if per_image else (0, 0, 0), dw_.dtype)
        with kernel_blas_single_threaded():
            kernels.conv2d_bwd_weight_im2col(dy, x, dw_, cols, partial, wide, per_image, kh, kw,
                                             sh, sw, pt, pl, dh, dw, groups, n_threads)

    return conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col


def direct_convolutions(kernels):
    """``(conv2d_fwd_direct, conv2d_bwd_data_direct, conv2d_bwd_weight_direct)`` with their
    workspaces (``direct_workspace``).

    The data gradient of a stride-1 convolution is a forward convolution of dL/dY
    with the weights rotated by 180 degrees and their channels swapped within each
    group, padded by (k - 1)*d - p (a negative padding crops): the direct forward
    does it. A strided one keeps the tap-by-tap kernel.
    """

    def conv2d_fwd_direct(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads,
                          scale=None, residual=None, relu=False):
        k_parts = direct_channel_parts(w.shape, y.shape, kh, kw, sh, sw, groups, n_threads)
        qw = direct_row_width(x.shape[3], y.shape[3], kw, sw, pl, dw)
        work, block = direct_workspace(w.shape, y.shape, kh, kw, sh, sw, dh, dw, groups,
                                       n_threads, x.dtype, qw, *kernels.DIRECT_SUMS, k_parts)
        kernels.conv2d_fwd_direct(x, w, b, y, *_epilogue_args(y, scale, residual, relu), work,
                                  block, qw, kh, kw, sh, sw, pt, pl, dh, dw, groups, k_parts,
                                  n_threads)

    def conv2d_bwd_data_direct(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        if sh != 1 or sw != 1:
            kernels.conv2d_bwd_data_direct(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups,
                                           n_threads)
            return
        conv2d_fwd_direct(dy, rotated_weights(w, groups), np.zeros(dx.shape[1], dx.dtype), dx,
                          kh, kw, 1, 1, (kh - 1) * dh - pt, (kw - 1) * dw - pl, dh, dw, groups,
                          n_threads)

    def conv2d_bwd_weight_direct(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups,
                                 n_threads):
        k = dw_.shape[0]
        qw = direct_row_width(x.shape[3], dy.shape[3], kw, sw, pl, dw)
        work, block = direct_workspace(dw_.shape, dy.shape, kh, kw, sh, sw, dh, dw, groups,
                                       n_threads, x.dtype, qw, k // groups)
        partial = np.empty((n_threads, k, dw_[0].size), dw_.dtype)
        kernels.conv2d_bwd_weight_direct(dy, x, dw_, work, partial, block, qw, kh, kw, sh, sw,
                                         pt, pl, dh, dw, groups, n_threads)

    return conv2d_fwd_direct, conv2d_bwd_data_direct, conv2d_bwd_weight_direct


def pinned_blas(kernel):
    """``kernel`` (one that calls BLAS from its own threads) run with BLAS on one thread."""

    @functools.wraps(kernel)
    def run(*args):
        with kernel_blas_single_threaded():
            kernel(*args)

    return run


def winograd_convolutions(kernels, m, conv2d_bwd_weight_im2col):
    """``(conv2d_fwd_winograd<m>, conv2d_bwd_data_winograd<m>, conv2d_bwd_weight_winograd<m>)``.

    The data gradient of a 3x3 stride-1 convolution is a Winograd forward pass
    over dL/dY with the rotated, channel-swapped weights and padding 2 - p (a
    negative one crops). The weight gradient correlates X with dL/dY, a large
    "kernel" that Winograd's small tiles do not fit: im2col does it.
    """
    alpha = m + R - 1

    def run(x, w, rotated, b, y, pt, pl, groups, n_threads, scale=None, residual=None,
            relu=False):
        _, bt, at = TRANSFORMS[m].matrices(x.dtype)
        c_per_group, k_per_group = x.shape[1] // groups, y.shape[1] // groups
        v, mm = winograd_workspace(alpha, c_per_group, k_per_group, y.shape[0],
                                   -(-y.shape[2] // m), -(-y.shape[3] // m), x.dtype)
        packed = winograd_packed(v.shape[1], k_per_group, c_per_group, x.dtype.itemsize)
        u = FILTERS.get(w, m, groups, rotated, kernels.WINOGRAD_PANEL if packed else 0,
                        lambda saved, now: kernels.same_bytes(
                            saved.reshape(-1).view(np.uint8), now.reshape(-1).view(np.uint8),
                            n_threads))
        with kernel_blas_single_threaded():
            kernels.conv2d_fwd_winograd(x, u, b, y, *_epilogue_args(y, scale, residual, relu),
                                        bt, at, v, mm, packed, R, R, 1, 1, pt, pl, 1, 1,
                                        groups, n_threads)

    def forward(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads, scale=None,
                residual=None, relu=False):
        run(x, w, False, b, y, pt, pl, groups, n_threads, scale, residual, relu)

    def backward_data(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        run(dy, w, True, np.zeros(dx.shape[1], dx.dtype), dx, R - 1 - pt, R - 1 - pl, groups,
            n_threads)

    forward.__name__ = f"conv2d_fwd_winograd{m}"
    backward_data.__name__ = f"conv2d_bwd_data_winograd{m}"
    return forward, backward_data, conv2d_bwd_weight_im2col
