"""The Cython backend: kernels compiled from ``fastconv/_kernels.pyx`` (OpenMP).

So far it lowers with the compiled ``im2col``/``col2im`` and leaves the matrix
products to BLAS through NumPy; ``fastconv.algorithms("cython")`` lists what
it implements.
"""

from .._kernels import col2im, im2col
from ._lowering import im2col_convolutions

conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col = \
    im2col_convolutions(im2col, col2im)
