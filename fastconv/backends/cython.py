"""The Cython backend: kernels compiled from ``fastconv/_kernels.pyx`` (OpenMP).

So far it lowers with the compiled ``im2col``/``col2im`` and leaves the matrix
products to BLAS through NumPy; ``fastconv.algorithms("cython")`` lists what
it implements.
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

from ._lowering import im2col_convolutions  # noqa: E402

im2col = _kernels.im2col
col2im = _kernels.col2im
openmp_threads = _kernels.openmp_threads

conv2d_fwd_im2col, conv2d_bwd_data_im2col, conv2d_bwd_weight_im2col = \
    im2col_convolutions(im2col, col2im)
