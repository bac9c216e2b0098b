"""fastconv: CPU convolution for Python.

Convolution (cross-correlation and true convolution) with narrow, wide and
same padding, stride, dilation and groups; transposed convolution; max and
average pooling; every backward pass. Kernels: im2col + GEMM, direct and
Winograd, over interchangeable backends (``fc.available_backends()``).
"""

from . import models, nn
from .graph import Graph, Input
from .io import load, save
from .backends import (available_backends, get_num_threads, set_backend,
                       set_num_threads)
from .functional import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, algorithms,
                         avg_pool2d, avg_pool2d_backward, col2im, conv2d, conv2d_backward,
                         conv_output_size, conv_transpose2d, conv_transpose2d_backward,
                         convolve2d, im2col, max_pool2d, max_pool2d_backward)

__version__ = "0.1.0"

__all__ = [
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "algorithms", "available_backends",
    "avg_pool2d", "avg_pool2d_backward", "col2im", "conv2d", "conv2d_backward",
    "Graph", "Input", "conv_output_size", "load", "models", "nn", "save", "conv_transpose2d", "conv_transpose2d_backward", "convolve2d",
    "get_num_threads", "im2col", "max_pool2d", "max_pool2d_backward", "set_backend",
    "set_num_threads", "__version__",
]
