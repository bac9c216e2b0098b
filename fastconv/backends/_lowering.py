"""Convolution by im2col + GEMM, over any backend's ``im2col``/``col2im`` pair.

With ``cols = im2col(X)`` of one group, a (C/g*kh*kw, OH*OW) matrix, and the
weights of that group as a (K/g, C/g*kh*kw) matrix ``W``, the three passes of
a convolution are three matrix products (done by BLAS through NumPy):

    forward       Y     = W . cols + b
    grad weight   dL/dW = dL/dY . cols^T          the chapter's dL/dW = dL/dY (x) X
    grad data     dL/dX = col2im(W^T . dL/dY)     the chapter's dL/dX = rot180(W) (x~) dL/dY
"""

import numpy as np


def im2col_convolutions(im2col, col2im):
    """``(conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col)`` built on a lowering pair."""

    def grouped_cols(x, kh, kw, sh, sw, pt, pl, dh, dw, groups, oh, ow, n_threads):
        """im2col of x split by group: (N, groups, C/g*kh*kw, OH*OW)."""
        n, c = x.shape[:2]
        cols = np.empty((n, c * kh * kw, oh, ow), dtype=x.dtype)
        im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, n_threads)
        return cols.reshape(n, groups, c // groups * kh * kw, oh * ow)

    def conv2d_fwd_im2col(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        """Y = W . im2col(X) + b, per group.

        x : (N, C, H, W)  # IN     w : (K, C/g, kh, kw)  # IN
        b : (K,)          # IN     y : (N, K, OH, OW)    # OUT
        """
        n, k, oh, ow = y.shape
        cols = grouped_cols(x, kh, kw, sh, sw, pt, pl, dh, dw, groups, oh, ow, n_threads)
        np.matmul(w.reshape(groups, k // groups, -1), cols,
                  out=y.reshape(n, groups, k // groups, oh * ow))
        y += b[:, None, None]

    def conv2d_bwd_data_im2col(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        """dL/dX = col2im(W^T . dL/dY), per group.

        dy : (N, K, OH, OW)  # IN     w : (K, C/g, kh, kw)  # IN
        dx : (N, C, H, W)    # OUT
        """
        n, k, oh, ow = dy.shape
        c = dx.shape[1]
        w_t = np.swapaxes(w.reshape(groups, k // groups, -1), 1, 2)
        dcols = w_t @ dy.reshape(n, groups, k // groups, oh * ow)
        col2im(dcols.reshape(n, c * kh * kw, oh, ow), dx, kh, kw, sh, sw, pt, pl, dh, dw, n_threads)

    def conv2d_bwd_weight_im2col(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
        """dL/dW = sum_n dL/dY . im2col(X)^T, per group.

        dy  : (N, K, OH, OW)  # IN     x : (N, C, H, W)  # IN
        dw_ : (K, C/g, kh, kw)  # OUT
        """
        n, k, oh, ow = dy.shape
        cols = grouped_cols(x, kh, kw, sh, sw, pt, pl, dh, dw, groups, oh, ow, n_threads)
        dy_mat = dy.reshape(n, groups, k // groups, oh * ow)
        dw_[...] = (dy_mat @ np.swapaxes(cols, 2, 3)).sum(axis=0).reshape(dw_.shape)

    return conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col
