"""The Cython backend: kernels compiled from ``fastconv/_kernels.pyx`` (OpenMP, BLAS).

This module gives the compiled kernels the backend interface: the im2col
kernels get their workspace here (``_workspace.py``); the rest are the
compiled functions themselves.
"""

import os

# After a parallel region, libgomp's threads spin for GOMP_SPINCOUNT iterations
# (300,000 by default) before they sleep. On a machine with as many threads as
# cores, that spinning steals the cores BLAS's own threads need next: on 2
# cores an im2col (0.2 ms) followed by a GEMM (0.9 ms) took 3.9 ms. A short
# spin keeps back-to-back regions fast (1.3 ms for both). libgomp reads the
# variable once, when it is loaded, so it is set just for that moment; a
# value the user chose wins.
_saved = os.environ.get("GOMP_SPINCOUNT")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
try:
    from .. import _kernels
finally:
    if _saved is None:
        del os.environ["GOMP_SPINCOUNT"]

from . import single_threaded_blas  # noqa: E402
from ._workspace import im2col_workspace  # noqa: E402

im2col = _kernels.im2col
col2im = _kernels.col2im
openmp_threads = _kernels.openmp_threads
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
