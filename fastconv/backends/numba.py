"""The Numba backend: kernels from ``fastconv/_numba_kernels.py`` (``@njit``, parallel, cached).

The twin of ``fastconv.backends.cython``: the same kernel names and arguments,
the same workspaces and BLAS pinning (``_compiled.py``).
"""

from .. import _numba_kernels as _kernels
from ._compiled import direct_convolutions, im2col_convolutions, pinned_blas, winograd_convolutions

im2col = _kernels.im2col
col2im = _kernels.col2im
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
