"""The Cython backend: kernels compiled from ``fastconv/_kernels.pyx`` (OpenMP, BLAS)."""

import os

# After a parallel region, libgomp's threads spin for GOMP_SPINCOUNT iterations
# (300,000 by default) before they sleep. On a machine with as many threads as
# cores, that spinning steals the cores another pool (BLAS's, PyTorch's) needs
# next: on 2 cores an im2col (0.2 ms) followed by a GEMM on BLAS's threads
# (0.9 ms) took 3.9 ms. A short spin brought it to 1.3 ms, and a call after
# 0.1 s of idling (a 0.86 ms convolution) took 2.1-2.5 ms with 10,000 against
# 3.4-3.8 with 100,000. Numba's `omp` threading layer shares this libgomp, and
# its model forwards after idling want the long spin (README, Threads). libgomp
# reads the variable once, when it is loaded, so it is set just for that
# moment; a value the user chose wins.
_saved = os.environ.get("GOMP_SPINCOUNT")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
try:
    from .. import _kernels
finally:
    if _saved is None:
        del os.environ["GOMP_SPINCOUNT"]

from ._compiled import (  # noqa: E402
    direct_convolutions, im2col_convolutions, pinned_blas, winograd_convolutions)

im2col = _kernels.im2col
col2im = _kernels.col2im
openmp_threads = _kernels.openmp_threads
maxpool2d_fwd = _kernels.maxpool2d_fwd
maxpool2d_fwd_values = _kernels.maxpool2d_fwd_values
maxpool2d_bwd = _kernels.maxpool2d_bwd
maxpool2d_bwd_input = _kernels.maxpool2d_bwd_input
avgpool2d_fwd = _kernels.avgpool2d_fwd
avgpool2d_bwd = _kernels.avgpool2d_bwd
adaptive_avgpool2d_fwd = _kernels.adaptive_avgpool2d_fwd
adaptive_avgpool2d_bwd = _kernels.adaptive_avgpool2d_bwd
channel_affine = _kernels.channel_affine
linear_fwd = pinned_blas(_kernels.linear_fwd)
conv2d_fwd_direct, conv2d_bwd_data_direct, conv2d_bwd_weight_direct = \
    direct_convolutions(_kernels)
conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col = \
    im2col_convolutions(_kernels)
conv2d_fwd_winograd2, conv2d_bwd_data_winograd2, conv2d_bwd_weight_winograd2 = \
    winograd_convolutions(_kernels, 2, conv2d_bwd_weight_im2col)
conv2d_fwd_winograd4, conv2d_bwd_data_winograd4, conv2d_bwd_weight_winograd4 = \
    winograd_convolutions(_kernels, 4, conv2d_bwd_weight_im2col)
conv2d_fwd_winograd6, conv2d_bwd_data_winograd6, conv2d_bwd_weight_winograd6 = \
    winograd_convolutions(_kernels, 6, conv2d_bwd_weight_im2col)
