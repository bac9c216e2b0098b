"""The Numba backend: kernels from ``fastconv/_numba_kernels.py`` (``@njit``, parallel, cached).

The twin of ``fastconv.backends.cython``: the same workspaces, the same BLAS
pinning, the same kernel names.
"""

from .. import _numba_kernels as _kernels
from . import single_threaded_blas
from ._workspace import im2col_workspace

im2col = _kernels.im2col
col2im = _kernels.col2im
conv2d_fwd_direct = _kernels.conv2d_fwd_direct
conv2d_bwd_data_direct = _kernels.conv2d_bwd_data_direct
conv2d_bwd_weight_direct = _kernels.conv2d_bwd_weight_direct


def conv2d_fwd_im2col(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    cols = im2col_workspace(w, y, kh, kw, groups, n_threads)
    with single_threaded_blas():
        _kernels.conv2d_fwd_im2col(x, w, b, y, cols, kh, kw, sh, sw, pt, pl, dh, dw, groups,
                                   n_threads)


def conv2d_bwd_data_im2col(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    cols = im2col_workspace(w, dy, kh, kw, groups, n_threads, shared=True)
    with single_threaded_blas():
        _kernels.conv2d_bwd_data_im2col(dy, w, dx, cols, kh, kw, sh, sw, pt, pl, dh, dw, groups,
                                        n_threads)


def conv2d_bwd_weight_im2col(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    cols = im2col_workspace(dw_, dy, kh, kw, groups, n_threads, shared=True)
    with single_threaded_blas():
        _kernels.conv2d_bwd_weight_im2col(dy, x, dw_, cols, kh, kw, sh, sw, pt, pl, dh, dw,
                                          groups, n_threads)
