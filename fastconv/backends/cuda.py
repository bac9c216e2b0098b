"""The CUDA backend (optional): ``numba.cuda`` kernels from ``fastconv/_cuda_kernels.py``.

It imports only where ``numba.cuda`` finds a GPU (or runs its simulator,
``NUMBA_ENABLE_CUDASIM=1``, as the tests do on machines without one), so
``fc.available_backends()`` lists it only there and ``backend="cuda"``
elsewhere is a ``RuntimeError`` that says why. It is never the default: ask
for it with ``backend="cuda"`` or ``fc.set_backend("cuda")``. The kernels take
NumPy arrays, copied to and from the device on each call, and device
arrays, which stay there (``Layer.to("cuda")`` keeps a model's activations on
the device). Convolutions run as implicit GEMM (``im2col``, shared-memory
tiles) or ``direct``.
"""

from numba import cuda

if not cuda.is_available():
    raise ImportError("numba.cuda finds no CUDA GPU here")

from .. import _cuda_kernels as _kernels  # noqa: E402

im2col = _kernels.im2col
col2im = _kernels.col2im
conv2d_fwd_im2col = _kernels.conv2d_fwd_im2col
conv2d_bwd_data_im2col = _kernels.conv2d_bwd_data_im2col
conv2d_bwd_weight_im2col = _kernels.conv2d_bwd_weight_im2col
conv2d_fwd_direct = _kernels.conv2d_fwd_direct
conv2d_bwd_data_direct = _kernels.conv2d_bwd_data_direct
conv2d_bwd_weight_direct = _kernels.conv2d_bwd_weight_direct
maxpool2d_fwd = _kernels.maxpool2d_fwd
maxpool2d_fwd_values = _kernels.maxpool2d_fwd_values
maxpool2d_bwd = _kernels.maxpool2d_bwd
maxpool2d_bwd_input = _kernels.maxpool2d_bwd_input
avgpool2d_fwd = _kernels.avgpool2d_fwd
avgpool2d_bwd = _kernels.avgpool2d_bwd
adaptive_avgpool2d_fwd = _kernels.adaptive_avgpool2d_fwd
adaptive_avgpool2d_bwd = _kernels.adaptive_avgpool2d_bwd
channel_affine = _kernels.channel_affine
linear_fwd = _kernels.linear_fwd
channel_sum = _kernels.channel_sum
batchnorm_inference = _kernels.batchnorm_inference
add = _kernels.add
relu = _kernels.relu
concat_channels = _kernels.concat_channels
empty = _kernels.empty
contiguous = _kernels.contiguous
to_device = _kernels.to_device
zeros = _kernels.zeros
free_cached_memory = _kernels.free_cached_memory
