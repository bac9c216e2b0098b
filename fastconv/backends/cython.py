"""The Cython backend: kernels compiled from ``fastconv/_kernels.pyx`` (OpenMP, BLAS)."""

import os

# After a parallel region, libgomp's threads spin for GOMP_SPINCOUNT iterations
# (300,000 by default) before they sleep. On a machine with as many threads as
# cores, that spinning steals the cores another pool (BLAS's, PyTorch's) needs
# next: on 2 cores an im2col (0.2 ms) followed by a GEMM on BLAS's threads
# (0.9 ms) took 3.9 ms. Too short a spin costs as much the other way: Numba's
# `omp` threading layer runs on this same libgomp, and with 10,000 its kernels
# found their threads asleep (AlexNet batch-1 inference 15 -> 20-31 ms), while
# 30,000 was not enough either. 100,000 kept Numba's 15 ms; a multi-threaded
# BLAS product right after a Cython kernel then took 3.9-4.8 ms against
# 3.1-3.3 with 10,000, and a PyTorch convolution after one 2.4-2.6 against
# 3.6-3.9; AlexNet in Cython 14.4-15.5 ms against 16.2. A lone call after an
# idle spell loses on this VM (3.4-3.8 against 2.1-2.5 ms for a 0.86 ms
# convolution): README, Threads. libgomp reads the variable once, when it is
# loaded, so it is set just for that moment; a value the user chose wins.
_saved = os.environ.get("GOMP_SPINCOUNT")
os.environ.setdefault("GOMP_SPINCOUNT", "100000")
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
adaptive_avgpool2d_fwd = pinned_blas(_kernels.adaptive_avgpool2d_fwd)
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
