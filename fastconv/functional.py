"""The functional API: stateless operations on NumPy arrays (NCHW).

Each function validates its arguments once (``fastconv.shapes``), picks the
backend and, for convolutions, the algorithm, allocates the outputs and runs
the backend's kernels on C-contiguous copies (when the input is not
contiguous already). Inputs are never written to. The result has the input's
dtype, float32 or float64.

CUDA device arrays (numba's, or anything with ``__cuda_array_interface__``) run
on the ``cuda`` backend and the result stays on the device: it lives where the
operation's first array (``x``, or ``grad_out`` for a gradient) does.
"""

import numpy as np

from . import backends as _backends
from . import select as _select
from . import shapes as _shapes
from .shapes import conv_output_size  # noqa: F401  (public: fastconv.conv_output_size)


def _alloc(shape, dtype, like):
    """Every output a kernel writes is allocated here (the tests poison it with NaN):
    on the GPU when ``like``, the operation's main input, is a device array."""
    if _backends.is_device_array(like):
        return _backends.get_backend("cuda").empty(shape, dtype)
    return np.empty(shape, dtype=dtype)


def _contiguous(*arrays):
    return tuple(None if a is None
                 else _backends.get_backend("cuda").contiguous(a) if _backends.is_device_array(a)
                 else np.ascontiguousarray(a) for a in arrays)


def _backend_for(backend, kernel, op, *arrays):
    """The backend module of a call on ``arrays``: device arrays run on ``cuda``, which
    ``backend=None`` then means whatever the default."""
    if any(_backends.is_device_array(a) for a in arrays):
        if backend is None:
            backend = "cuda"
        elif backend != "cuda":
            raise TypeError(f"{op}: the arrays are CUDA device arrays but backend {backend!r} "
                            f"runs on the host; pass backend='cuda' or None, or copy them "
                            f"to the host with .copy_to_host()")
    return _backends.get_backend(backend, kernel)


def _kernel(backend, name, op):
    kernel = getattr(backend, name, None)
    if kernel is None:
        raise ValueError(
            f"{op}: backend {_backends.backend_name(backend)!r} does not implement {name}; "
            f"backends that import here: {_backends.available_backends()}"
        )
    return kernel


def _conv_setup(geometry, algorithm, backend, op, *arrays, inference=False):
    """Backend module and resolved algorithm of a convolution call on ``arrays``."""
    module = _backend_for(backend, "conv2d_fwd_im2col", op, *arrays)
    name = _backends.backend_name(module)
    algo = _select.choose_algorithm(geometry, algorithm, _select.implemented(module), name, op,
                                    inference)
    return module, algo


def _channel_sum(module, a):
    """The sum over n, h, w of ``a`` (N, C, H, W): a convolution's bias gradient."""
    if not _backends.is_device_array(a):
        return a.sum(axis=(0, 2, 3))
    out = _alloc((a.shape[1],), a.dtype, a)
    _kernel(module, "channel_sum", "conv2d_backward")(a, out, _backends.get_num_threads())
    return out


def _bias_or_zeros(bias, geometry, x):
    if bias is not None:
        return bias
    if _backends.is_device_array(x):
        return _backends.get_backend("cuda").zeros(geometry.c_out, x.dtype)
    return np.zeros(geometry.c_out, dtype=x.dtype)


def conv2d_algorithm(x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                     algorithm="auto", backend=None, inference=False):
    """The algorithm a convolution's forward pass runs for these arguments (``"auto"``
    resolved), so that a layer's backward pass can follow the path its forward pass
    took. With ``inference``, no backward pass follows, and ``"auto"`` picks the
    fastest forward whatever its gradients cost (the direct kernels' weight gradient
    is slow): what :func:`conv2d` itself runs, since its gradients are a separate call,
    :func:`conv2d_backward`, that resolves its own ``"auto"``.

    >>> conv2d_algorithm(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), backend="numpy")
    'direct'
    """
    x, weight, _, g = _shapes.conv2d_geometry(x, weight, None, stride, padding, dilation,
                                              groups, "conv2d")
    return _conv_setup(g, algorithm, backend, "conv2d", x, weight, inference=inference)[1]


def algorithms(backend=None):
    """The convolution algorithms ``backend`` implements (forward and both gradients).

    >>> "im2col" in algorithms("numpy")
    True
    """
    return list(_select.implemented(_backends.get_backend(backend)))


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

def _conv_forward(module, algo, x, weight, bias, g, **epilogue):
    x, weight, bias = _contiguous(x, weight, _bias_or_zeros(bias, g, x))
    y = _alloc(g.y_shape, x.dtype, x)
    _kernel(module, f"conv2d_fwd_{algo}", "conv2d")(
        x, weight, bias, y, *g.kernel_args(), _backends.get_num_threads(), **epilogue)
    return y


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto", backend=None):
    """2-D cross-correlation, the "convolution" of deep learning.

    ``Y[n,k,oh,ow] = b[k] + sum_{c,i,j} W[k,c,i,j] X[n, g(k)*C/g + c, oh*S - P + i*D, ow*S - P + j*D]``

    Padding selects the chapter's narrow (``"valid"``, P=0), same (``"same"``,
    output ``ceil(M/S)``) or wide (``"full"``, P=D*(K-1)) convolution.

    Parameters
    ----------
    x : ndarray, (N, C_in, H, W), float32 or float64
    weight : ndarray, (C_out, C_in/groups, kH, kW), same dtype
    bias : ndarray, (C_out,), optional
    stride, dilation : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)) or "valid" | "same" | "full"
        "same" puts the odd pixel of padding at the bottom/right.
    groups : int
        Input and output channels split into ``groups`` independent convolutions.
    algorithm : {"auto", "im2col", "direct", "winograd", "winograd2", "winograd4", "winograd6"}
        ``"auto"`` runs the fastest forward for the shape
        (``conv2d_algorithm(..., inference=True)``).
    backend : str, optional

    Returns
    -------
    y : ndarray, (N, C_out, OH, OW)

    Shape:
        ``OH = floor((H + P_top + P_bottom - D*(kH-1) - 1) / S) + 1``, likewise OW;
        the chapter's ``(M - K + 2P)/S + 1`` for D=1.

    Examples
    --------
    >>> x = np.ones((1, 1, 5, 5)); w = np.ones((1, 1, 3, 3))
    >>> conv2d(x, w).shape, conv2d(x, w, padding="same").shape, conv2d(x, w, padding="full").shape
    ((1, 1, 3, 3), (1, 1, 5, 5), (1, 1, 7, 7))
    """
    x, weight, bias, g = _shapes.conv2d_geometry(x, weight, bias, stride, padding, dilation,
                                                 groups, "conv2d")
    module, algo = _conv_setup(g, algorithm, backend, "conv2d", x, weight, bias, inference=True)
    return _conv_forward(module, algo, x, weight, bias, g)


def conv2d_fused(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 scale=None, shift=None, residual=None, relu=False, algorithm="auto",
                 backend=None):
    """:func:`conv2d`, then a scale and shift per output channel, a residual sum and a
    ReLU, all applied to each block of the output while the convolution still has it
    in cache: ``relu(conv2d(x, weight, bias) * scale[k] + shift[k] + residual)``.

    This is a Conv2d, the BatchNorm2d after it at inference (``scale = gamma /
    sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``: see
    :func:`batch_norm_scale_shift`), a residual Add and a ReLU in one pass over
    the output instead of four. Host arrays only (numpy, cython, numba).

    Parameters
    ----------
    x, weight, bias, stride, padding, dilation, groups, algorithm, backend
        As for :func:`conv2d`; no backward pass follows, so ``"auto"`` picks the
        fastest forward (``conv2d_algorithm(..., inference=True)``).
    scale, shift : array_like, (C_out,), optional
        1 and 0 when left out.
    residual : ndarray, (N, C_out, OH, OW), optional
        Added after the shift (cast to x's dtype).
    relu : bool
        ``max(., 0)`` last; NaN stays NaN, as in PyTorch.

    Returns
    -------
    y : ndarray, (N, C_out, OH, OW)

    Examples
    --------
    >>> x = np.ones((1, 1, 3, 3)); w = np.ones((1, 1, 3, 3))
    >>> conv2d_fused(x, w, scale=[-2.0], shift=[1.0], relu=True, padding=1)[0, 0, 0]
    array([0., 0., 0.])
    """
    op = "conv2d_fused"
    x, weight, bias, g = _shapes.conv2d_geometry(x, weight, bias, stride, padding, dilation,
                                                 groups, op)
    module, algo = _conv_setup(g, algorithm, backend, op, x, weight, bias, inference=True)
    if _backends.backend_name(module) == "cuda":
        raise ValueError(f"{op}: runs on the host backends (numpy, cython, numba), not on "
                         f"'cuda'; on the GPU call conv2d, then batch_norm_inference or add")
    scale, shift = (None if v is None else _shapes.channel_vector(v, name, g.c_out, op)
                    for name, v in (("scale", scale), ("shift", shift)))
    if residual is not None:
        residual = _shapes.float_array(residual, "residual", op, ndim=4)
        if residual.shape != g.y_shape:
            raise ValueError(f"{op}: residual must have the output's shape {g.y_shape}, "
                             f"got {residual.shape}")
        residual = np.ascontiguousarray(residual, dtype=x.dtype)
    # the kernels add the bias after the scale: s*(conv + b) + t = s*conv + (s*b + t)
    b = np.zeros(g.c_out) if bias is None else bias.astype(np.float64)
    if scale is not None:
        b = b * scale
    if shift is not None:
        b = b + shift
    return _conv_forward(module, algo, x, weight, b.astype(x.dtype), g,
                         scale=None if scale is None else scale.astype(x.dtype),
                         residual=residual, relu=bool(relu))


def convolve2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
               algorithm="auto", backend=None):
    """True 2-D convolution: the kernel rotated 180 degrees, ``X * W = X (x) rot180(W)``.

    Same arguments, shapes and result layout as :func:`conv2d`.

    Examples
    --------
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3); w = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> bool(np.allclose(convolve2d(x, w), conv2d(x, w[..., ::-1, ::-1])))
    True
    """
    x, weight, bias, g = _shapes.conv2d_geometry(x, weight, bias, stride, padding, dilation,
                                                 groups, "convolve2d")
    module, algo = _conv_setup(g, algorithm, backend, "convolve2d", x, weight, bias,
                               inference=True)
    return _conv_forward(module, algo, x, weight[:, :, ::-1, ::-1], bias, g)


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    algorithm="auto", backend=None, needs_input_grad=True):
    """Gradients of :func:`conv2d` with respect to x, weight and bias.

    - ``dL/dW = dL/dY (x) X``: the correlation of the input with the output gradient;
    - ``dL/dX = rot180(W) (x~) dL/dY``: the wide (full) convolution of the output
      gradient with the rotated kernel, its channels swapped; with stride S the
      gradient is first dilated by S-1 zeros;
    - ``dL/db = sum over n, oh, ow of dL/dY``.

    Parameters
    ----------
    grad_out : ndarray, (N, C_out, OH, OW)
        ``dL/dY``, the shape :func:`conv2d` returned.
    x, weight, stride, padding, dilation, groups, algorithm, backend
        As given to :func:`conv2d`; pass the same algorithm so that the backward
        pass follows the forward's path.
    needs_input_grad : bool
        False skips ``grad_x`` (returned as ``None``), as for a network's input.

    Returns
    -------
    grad_x : ndarray, (N, C_in, H, W), or None
    grad_weight : ndarray, (C_out, C_in/groups, kH, kW)
    grad_bias : ndarray, (C_out,)

    Examples
    --------
    >>> x = np.ones((1, 1, 4, 4)); w = np.ones((1, 1, 3, 3))
    >>> gx, gw, gb = conv2d_backward(np.ones((1, 1, 2, 2)), x, w)
    >>> gx[0, 0, 1, 1], gw[0, 0, 0, 0], gb[0]
    (np.float64(4.0), np.float64(4.0), np.float64(4.0))
    """
    op = "conv2d_backward"
    x, weight, _, g = _shapes.conv2d_geometry(x, weight, None, stride, padding, dilation,
                                              groups, op)
    grad_out = _shapes.grad_array(grad_out, "grad_out", op, g.y_shape, x)
    module, algo = _conv_setup(g, algorithm, backend, op, grad_out, x, weight)
    grad_out, x, weight = _contiguous(grad_out, x, weight)
    n_threads = _backends.get_num_threads()
    grad_x = None
    if needs_input_grad:
        grad_x = _alloc(g.x_shape, x.dtype, grad_out)
        _kernel(module, f"conv2d_bwd_data_{algo}", op)(
            grad_out, weight, grad_x, *g.kernel_args(), n_threads)
    grad_w = _alloc(g.weight_shape, x.dtype, grad_out)
    _kernel(module, f"conv2d_bwd_weight_{algo}", op)(
        grad_out, x, grad_w, *g.kernel_args(), n_threads)
    return grad_x, grad_w, _channel_sum(module, grad_out)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, backend=None):
    """Transposed (fractionally strided) convolution: the map from low to high dimension.

    It is the adjoint of :func:`conv2d` with the same weight: ``<conv2d(z, W), x>
    = <z, conv_transpose2d(x, W)>``. Equivalently, insert S-1 zeros between the
    input pixels, pad by ``D*(K-1) - P`` and correlate with ``rot180(W)``.

    Parameters
    ----------
    x : ndarray, (N, C_in, H, W)
    weight : ndarray, (C_in, C_out/groups, kH, kW)
    bias : ndarray, (C_out,), optional
    stride, padding, output_padding, dilation : int or (int, int)
        ``output_padding`` (< max(stride, dilation)) adds rows and columns at
        the bottom and right, to reach sizes that several inputs map to.
    groups : int
    backend : str, optional

    Returns
    -------
    y : ndarray, (N, C_out, OH, OW)

    Shape:
        ``OH = (H - 1)*S - 2P + D*(kH - 1) + output_padding + 1``, likewise OW.

    Examples
    --------
    >>> conv_transpose2d(np.ones((1, 4, 28, 28)), np.ones((4, 2, 4, 4)), stride=2, padding=1).shape
    (1, 2, 56, 56)
    """
    op = "conv_transpose2d"
    x, weight, bias, g = _shapes.conv_transpose2d_geometry(
        x, weight, bias, stride, padding, output_padding, groups, dilation, op)
    module, algo = _conv_setup(g, "auto", backend, op, x, weight, bias)
    x, weight, bias = _contiguous(x, weight, bias)
    y = _alloc(g.x_shape, x.dtype, x)
    n_threads = _backends.get_num_threads()
    _kernel(module, f"conv2d_bwd_data_{algo}", op)(x, weight, y, *g.kernel_args(), n_threads)
    if bias is not None:            # y * 1 + b is exactly y + b
        _kernel(module, "channel_affine", op)(y, np.ones(y.shape[1], y.dtype), bias, y, False,
                                              n_threads)
    return y


def conv_transpose2d_backward(grad_out, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, backend=None):
    """Gradients of :func:`conv_transpose2d`: its data gradient is a forward convolution.

    - ``dL/dX = conv2d(dL/dY, W)`` (the adjoint of the adjoint);
    - ``dL/dW`` is the convolution's weight gradient with the roles of input and
      output gradient swapped: ``dL/dY (x) X`` becomes ``X (x) dL/dY``;
    - ``dL/db = sum over n, oh, ow of dL/dY``.

    Returns
    -------
    grad_x : (N, C_in, H, W), grad_weight : (C_in, C_out/groups, kH, kW), grad_bias : (C_out,)

    Examples
    --------
    >>> gx, gw, gb = conv_transpose2d_backward(np.ones((1, 1, 5, 5)), np.ones((1, 1, 2, 2)),
    ...                                        np.ones((1, 1, 3, 3)), stride=2)
    >>> gx.shape, gw.shape, gb.shape
    ((1, 1, 2, 2), (1, 1, 3, 3), (1,))
    """
    op = "conv_transpose2d_backward"
    x, weight, _, g = _shapes.conv_transpose2d_geometry(
        x, weight, None, stride, padding, output_padding, groups, dilation, op)
    grad_out = _shapes.grad_array(grad_out, "grad_out", op, g.x_shape, x)
    module, algo = _conv_setup(g, "auto", backend, op, grad_out, x, weight)
    # dL/dX is conv2d's forward, and runs what conv2d's auto runs: the fastest forward
    forward = _select.choose_algorithm(g, "auto", _select.implemented(module),
                                       _backends.backend_name(module), op, inference=True)
    grad_out, x, weight = _contiguous(grad_out, x, weight)
    n_threads = _backends.get_num_threads()
    grad_x = _alloc(g.y_shape, x.dtype, grad_out)
    grad_w = _alloc(g.weight_shape, x.dtype, grad_out)
    _kernel(module, f"conv2d_fwd_{forward}", op)(
        grad_out, weight, _bias_or_zeros(None, g, grad_out), grad_x, *g.kernel_args(), n_threads)
    _kernel(module, f"conv2d_bwd_weight_{algo}", op)(
        x, grad_out, grad_w, *g.kernel_args(), n_threads)
    return grad_x, grad_w, _channel_sum(module, grad_out)


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------

def im2col(x, kernel_size, dilation=1, padding=0, stride=1, *, backend=None):
    """Lower every sliding window of x to a column (PyTorch's ``unfold``).

    ``cols[n, c*kH*kW + i*kW + j, oh*OW + ow] = X[n, c, oh*S - P + i*D, ow*S - P + j*D]``,
    so that a convolution becomes one matrix product, ``Y = W . cols``.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    kernel_size, dilation, padding, stride : int or (int, int)

    Returns
    -------
    cols : ndarray, (N, C*kH*kW, L) with ``L = OH*OW``

    Examples
    --------
    >>> im2col(np.ones((2, 3, 5, 5)), 3).shape
    (2, 27, 9)
    """
    op = "im2col"
    x = _shapes.float_array(x, "x", op, ndim=4)
    g = _shapes.unfold_geometry(*x.shape, kernel_size, dilation, padding, stride, op)
    module = _backend_for(backend, "im2col", op, x)
    (x,) = _contiguous(x)
    cols = _alloc((g.n, g.c_out, g.oh, g.ow), x.dtype, x)
    _kernel(module, "im2col", op)(x, cols, *g.kernel_args()[:-1], _backends.get_num_threads())
    return cols.reshape(g.n, g.c_out, g.oh * g.ow)


def col2im(cols, output_size, kernel_size, dilation=1, padding=0, stride=1, *, backend=None):
    """Sum columns back into an image, the adjoint of :func:`im2col` (PyTorch's ``fold``).

    Parameters
    ----------
    cols : ndarray, (N, C*kH*kW, L)
    output_size : int or (int, int)
        ``(H, W)`` of the image.
    kernel_size, dilation, padding, stride : int or (int, int)

    Returns
    -------
    x : ndarray, (N, C, H, W); a pixel covered by several windows gets their sum.

    Examples
    --------
    >>> col2im(im2col(np.ones((1, 1, 3, 3)), 2), 3, 2)[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    op = "col2im"
    cols, g = _shapes.col2im_geometry(cols, output_size, kernel_size, dilation, padding, stride, op)
    module = _backend_for(backend, "col2im", op, cols)
    (cols,) = _contiguous(cols)
    x = _alloc(g.x_shape, cols.dtype, cols)
    _kernel(module, "col2im", op)(cols.reshape(g.n, g.c_out, g.oh, g.ow), x,
                                  *g.kernel_args()[:-1], _backends.get_num_threads())
    return x


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, backend, op):
    x, g = _shapes.pool2d_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op)
    module = _backend_for(backend, "maxpool2d_fwd", op, x)
    (x,) = _contiguous(x)
    y = _alloc(g.y_shape, x.dtype, x)
    indices = _alloc(g.y_shape, np.int64, x)
    _kernel(module, "maxpool2d_fwd", op)(x, y, indices, *g.kernel_args(),
                                         _backends.get_num_threads())
    return module, g, y, indices


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, backend=None):
    """Max pooling: ``Y[n,c,oh,ow] = max_{i,j} X[n, c, oh*S - P + i*D, ow*S - P + j*D]``.

    Padding counts as -inf. NaN propagates, as in PyTorch.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        At most half the kernel size.
    dilation : int or (int, int)
    ceil_mode : bool
        Round the output size up; a last window must still start inside the
        input or its left/top padding.
    return_indices : bool
        Also return the flat index ``ih*W + iw`` of each maximum in its plane.

    Returns
    -------
    y : ndarray, (N, C, OH, OW), and ``indices`` (int64, same shape) if asked for

    Shape:
        ``OH = floor((H + 2P - D*(kH-1) - 1) / S) + 1`` (ceil with ``ceil_mode``).

    Examples
    --------
    >>> max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    op = "max_pool2d"
    if return_indices:
        _, _, y, indices = _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode,
                                     backend, op)
        return y, indices
    x, g = _shapes.pool2d_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op)
    module = _backend_for(backend, "maxpool2d_fwd_values", op, x)
    (x,) = _contiguous(x)
    y = _alloc(g.y_shape, x.dtype, x)
    _kernel(module, "maxpool2d_fwd_values", op)(x, y, *g.kernel_args(),
                                                _backends.get_num_threads())
    return y


def _max_pool2d_scatter(grad_out, indices, x_shape, backend):
    """Gradient of max pooling from the forward's indices (what a layer keeps)."""
    module = _backend_for(backend, "maxpool2d_bwd", "max_pool2d_backward", grad_out, indices)
    grad_out, indices = _contiguous(grad_out, indices)
    grad_x = _alloc(x_shape, grad_out.dtype, grad_out)
    _kernel(module, "maxpool2d_bwd", "max_pool2d_backward")(grad_out, indices, grad_x,
                                                           _backends.get_num_threads())
    return grad_x


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, *, backend=None):
    """Gradient of :func:`max_pool2d`: each window's gradient goes to its maximum.

    The chapter's ``delta^l = up(delta^{l+1})`` where ``up`` routes each
    output's gradient to the input position that won the max (the first
    maximum, row-major, on ties); overlapping windows add up.

    Returns
    -------
    grad_x : ndarray, (N, C, H, W)

    Examples
    --------
    >>> max_pool2d_backward(np.ones((1, 1, 1, 1)), np.arange(4.0).reshape(1, 1, 2, 2), 2)[0, 0]
    array([[0., 0.],
           [0., 1.]])
    """
    op = "max_pool2d_backward"
    x, g = _shapes.pool2d_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op)
    module = _backend_for(backend, "maxpool2d_bwd_input", op, x, grad_out)
    grad_out = _shapes.grad_array(grad_out, "grad_out", op, g.y_shape, x)
    x, grad_out = _contiguous(x, grad_out)
    grad_x = _alloc(g.x_shape, x.dtype, x)
    _kernel(module, "maxpool2d_bwd_input", op)(x, grad_out, grad_x, *g.kernel_args(),
                                               _backends.get_num_threads())
    return grad_x


def _avg_pool_setup(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, backend, op):
    x, g = _shapes.pool2d_geometry(x, kernel_size, stride, padding, 1, ceil_mode, op)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"{op}: count_include_pad must be a bool, got {count_include_pad!r}")
    divisor = _shapes.divisor_override_value(divisor_override, op)
    return x, g, _backend_for(backend, "avgpool2d_fwd", op, x), (bool(count_include_pad), divisor)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend=None):
    """Average (mean) pooling: each window's sum divided by its size.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    kernel_size, stride, padding, ceil_mode
        As in :func:`max_pool2d` (no dilation).
    count_include_pad : bool
        Divide windows that hang over the padding by their size including the
        padding (True) or by the number of input pixels they cover (False).
    divisor_override : int, optional
        Divide every window by this instead.

    Returns
    -------
    y : ndarray, (N, C, OH, OW)

    Examples
    --------
    >>> avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    op = "avg_pool2d"
    x, g, module, extra = _avg_pool_setup(x, kernel_size, stride, padding, ceil_mode,
                                          count_include_pad, divisor_override, backend, op)
    (x,) = _contiguous(x)
    y = _alloc(g.y_shape, x.dtype, x)
    _kernel(module, "avgpool2d_fwd", op)(x, y, *g.kernel_args(), *extra,
                                         _backends.get_num_threads())
    return y


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None, *, backend=None):
    """Gradient of :func:`avg_pool2d`: ``up(delta) / divisor``, each window's gradient
    spread evenly over the pixels it covers (with the forward's divisor).

    Examples
    --------
    >>> avg_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 2, 2)), 2)[0, 0]
    array([[0.25, 0.25],
           [0.25, 0.25]])
    """
    op = "avg_pool2d_backward"
    x, g, module, extra = _avg_pool_setup(x, kernel_size, stride, padding, ceil_mode,
                                          count_include_pad, divisor_override, backend, op)
    grad_out = _shapes.grad_array(grad_out, "grad_out", op, g.y_shape, x)
    (grad_out,) = _contiguous(grad_out)
    grad_x = _alloc(g.x_shape, x.dtype, grad_out)
    _kernel(module, "avgpool2d_bwd", op)(grad_out, grad_x, *g.kernel_args(), *extra,
                                         _backends.get_num_threads())
    return grad_x


def _adaptive_setup(x, output_size, backend, op):
    x = _shapes.float_array(x, "x", op, ndim=4)
    _shapes.check_positive_spatial(x, op)
    oh, ow = _shapes.adaptive_output_size(x.shape[2:], output_size, op)
    return x, (x.shape[0], x.shape[1], oh, ow), _backend_for(backend, "adaptive_avgpool2d_fwd",
                                                             op, x)


def adaptive_avg_pool2d(x, output_size, *, backend=None):
    """Average pooling to a fixed output size: window ``o`` of an axis of length M
    covers ``[floor(o*M/O), ceil((o+1)*M/O))``. ``output_size=1`` is global average pooling.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    output_size : int or (int or None, int or None)
        ``None`` keeps that axis' input size.

    Returns
    -------
    y : ndarray, (N, C, OH, OW)

    Examples
    --------
    >>> adaptive_avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 1)[0, 0]
    array([[7.5]])
    """
    op = "adaptive_avg_pool2d"
    x, y_shape, module = _adaptive_setup(x, output_size, backend, op)
    (x,) = _contiguous(x)
    y = _alloc(y_shape, x.dtype, x)
    _kernel(module, "adaptive_avgpool2d_fwd", op)(x, y, _backends.get_num_threads())
    return y


def adaptive_avg_pool2d_backward(grad_out, x, output_size, *, backend=None):
    """Gradient of :func:`adaptive_avg_pool2d`: each window's gradient spread over its pixels.

    Examples
    --------
    >>> adaptive_avg_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 2, 2)), 1)[0, 0]
    array([[0.25, 0.25],
           [0.25, 0.25]])
    """
    op = "adaptive_avg_pool2d_backward"
    x, y_shape, module = _adaptive_setup(x, output_size, backend, op)
    grad_out = _shapes.grad_array(grad_out, "grad_out", op, y_shape, x)
    (grad_out,) = _contiguous(grad_out)
    grad_x = _alloc(x.shape, x.dtype, grad_out)
    _kernel(module, "adaptive_avgpool2d_bwd", op)(grad_out, grad_x, _backends.get_num_threads())
    return grad_x


def channel_affine(x, scale, shift, *, relu=False, out=None, backend=None):
    """``y[n, c] = x[n, c] * scale[c] + shift[c]``, then ``max(y, 0)`` if ``relu``: the
    form BatchNorm takes at inference, where ``scale = gamma / sqrt(var + eps)`` and
    ``shift = beta - mean * scale``. NaN stays NaN, as in PyTorch.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    scale, shift : array_like, (C,)
        Cast to ``x``'s dtype.
    out : ndarray, optional
        Where to write (``x`` itself is allowed): C-contiguous, ``x``'s shape and dtype.

    Returns
    -------
    y : ndarray, (N, C, H, W)
    """
    op = "channel_affine"
    x = _shapes.float_array(x, "x", op, ndim=4)
    scale, shift = (_shapes.channel_vector(v, name, x.shape[1], op).astype(x.dtype)
                    for name, v in (("scale", scale), ("shift", shift)))
    _check_out(out, x, op)
    module = _backend_for(backend, "channel_affine", op, x)
    (x,) = _contiguous(x)
    y = _alloc(x.shape, x.dtype, x) if out is None else out
    _kernel(module, "channel_affine", op)(x, scale, shift, y, bool(relu),
                                          _backends.get_num_threads())
    return y


def _check_out(out, x, op):
    """``out`` may receive a result shaped like ``x``: None, or writeable, C-contiguous,
    ``x``'s shape and dtype, and where ``x`` is (host or device)."""
    if out is None:
        return
    on_device = _backends.is_device_array(x)
    if on_device:
        fits = _backends.is_device_array(out) and out.is_c_contiguous()
    else:
        fits = isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable
    if fits and out.shape == x.shape and out.dtype == x.dtype:
        return
    got = (f"a {out.dtype} array of shape {out.shape}" if hasattr(out, "dtype")
           else type(out).__name__)
    where = "device" if on_device else "NumPy"
    raise ValueError(f"{op}: out must be a writeable C-contiguous {x.dtype} {where} array of "
                     f"shape {x.shape}, got {got}")


def batch_norm_scale_shift(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """BatchNorm at inference as one affine map per channel, in float64:
    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``
    (weight 1 and bias 0 when left out).

    >>> batch_norm_scale_shift(np.array([1.0]), np.array([4.0]), eps=0.0)
    (array([0.5]), array([-0.5]))
    """
    scale = 1 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -np.asarray(running_mean, np.float64) * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def batch_norm_inference(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, *,
                         relu=False, out=None, backend=None):
    """BatchNorm with its running statistics, as ``torch.nn.functional.batch_norm`` in
    eval mode: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, then
    ``max(y, 0)`` if ``relu``.

    On the host this is :func:`channel_affine` with ``scale = weight / sqrt(var + eps)``
    and ``shift = bias - mean * scale`` worked out in float64; on device arrays one
    kernel does both.

    Parameters
    ----------
    x : ndarray or device array, (N, C, H, W)
    running_mean, running_var : (C,), where x is
    weight, bias : (C,), optional (1 and 0)
    eps : float
    out : array, optional
        As in :func:`channel_affine`.
    """
    op = "batch_norm_inference"
    x = _shapes.float_array(x, "x", op, ndim=4)
    if not _backends.is_device_array(x):
        scale, shift = batch_norm_scale_shift(running_mean, running_var, weight, bias, eps)
        return channel_affine(x, scale, shift, relu=relu, out=out, backend=backend)
    _check_out(out, x, op)
    module = _backend_for(backend, "batchnorm_inference", op, x)
    c = x.shape[1]
    weight = np.ones(c, x.dtype) if weight is None else weight
    bias = np.zeros(c, x.dtype) if bias is None else bias
    (x,) = _contiguous(x)
    y = _alloc(x.shape, x.dtype, x) if out is None else out
    _kernel(module, "batchnorm_inference", op)(x, running_mean, running_var, weight, bias,
                                               float(eps), y, bool(relu),
                                               _backends.get_num_threads())
    return y


def relu(x, *, out=None):
    """``max(x, 0)``; NaN stays NaN, as in PyTorch. Device arrays stay on the device."""
    _check_out(out, x, "relu")
    if not _backends.is_device_array(x):
        return np.maximum(x, 0, out=out)
    (x,) = _contiguous(x)
    y = _alloc(x.shape, x.dtype, x) if out is None else out
    _kernel(_backend_for(None, "relu", "relu", x), "relu", "relu")(
        _flat(x), _flat(y), _backends.get_num_threads())
    return y


def add(*inputs, relu=False, out=None):
    """The sum of ``inputs`` (then ``max(sum, 0)`` if ``relu``), written to ``out`` if
    given (which may be the first input). NumPy arrays broadcast; device arrays must
    share one shape."""
    op = "add"
    if not inputs:
        raise ValueError(f"{op}: needs at least one input")
    first = inputs[0]
    if not _backends.is_device_array(first):
        total = first
        for a in inputs[1:]:
            total = np.add(total, a, out=out if total is first else total)
        if relu:
            return np.maximum(total, 0, out=out if total is first else total)
        return total
    for i, a in enumerate(inputs[1:], 1):
        if not _backends.is_device_array(a) or a.shape != first.shape or a.dtype != first.dtype:
            got = f"shape {a.shape}, dtype {a.dtype}" if hasattr(a, "dtype") else type(a).__name__
            raise ValueError(f"{op}: input {i} must be a device array of shape {first.shape} "
                             f"and dtype {first.dtype} like input 0, got {got}")
    _check_out(out, first, op)
    module = _backend_for(None, "add", op, first)
    inputs = _contiguous(*inputs)
    n_threads = _backends.get_num_threads()
    if len(inputs) == 1 and not relu:
        return first
    y = _alloc(first.shape, first.dtype, first) if out is None else out
    if len(inputs) == 1:
        module.relu(_flat(first), _flat(y), n_threads)
    for i, a in enumerate(inputs[1:], 1):
        module.add(_flat(inputs[0] if i == 1 else y), _flat(a), _flat(y),
                   bool(relu) and i == len(inputs) - 1, n_threads)
    return y


def _flat(a):
    return a.reshape(a.size)


def concat(inputs):
    """``inputs`` joined along the channel axis (axis 1)."""
    inputs = list(inputs)
    if not inputs or not any(_backends.is_device_array(a) for a in inputs):
        return np.concatenate(inputs, axis=1)
    first = inputs[0]
    for i, a in enumerate(inputs):
        if not _backends.is_device_array(a) or a.ndim != 4 or a.dtype != first.dtype \
                or a.shape[:1] + a.shape[2:] != first.shape[:1] + first.shape[2:]:
            got = f"shape {a.shape}, dtype {a.dtype}" if hasattr(a, "dtype") else type(a).__name__
            raise ValueError(f"concat: input {i} must be a 4-D device array of dtype "
                             f"{first.dtype} matching input 0 (shape {first.shape}) but in "
                             f"axis 1, got {got}")
    module = _backend_for(None, "concat_channels", "concat", first)
    shape = (first.shape[0], sum(a.shape[1] for a in inputs)) + first.shape[2:]
    y = _alloc(shape, first.dtype, first)
    module.concat_channels(_contiguous(*inputs), y, _backends.get_num_threads())
    return y


def linear(x, weight, bias=None, *, backend=None):
    """``y = x W^T + b`` over the last axis of ``x``, as ``torch.nn.functional.linear``.

    The compiled backends give each thread a share of the output features with a
    single-threaded BLAS product, so that batch-1 inference, which only streams
    ``W`` from memory, draws on every core's bandwidth.

    Parameters
    ----------
    x : ndarray, (..., in_features)
    weight : ndarray, (out_features, in_features)
    bias : ndarray, (out_features,), optional

    Returns
    -------
    y : ndarray, (..., out_features)
    """
    op = "linear"
    x = _shapes.float_array(x, "x", op)
    weight = _shapes.float_array(weight, "weight", op, ndim=2, like=x)
    out_features, in_features = weight.shape
    shape = tuple(x.shape)              # numba's simulator's shapes index from 0 only
    if x.ndim < 1 or shape[-1] != in_features:
        raise ValueError(f"{op}: x must have in_features={in_features} in its last axis, "
                         f"got shape {shape}")
    if bias is not None:
        bias = _shapes.float_array(bias, "bias", op, ndim=1, like=x)
        if bias.shape != (out_features,):
            raise ValueError(f"{op}: bias must have shape ({out_features},), got {bias.shape}")
    module = _backend_for(backend, "linear_fwd", op, x, weight, bias)
    x2 = x.reshape(int(np.prod(shape[:-1])), in_features)
    y = _alloc((x2.shape[0], out_features), x.dtype, x)
    if y.size and in_features:
        x2, weight, bias = _contiguous(x2, weight, bias)
        b = np.empty(0, x.dtype) if bias is None else bias
        _kernel(module, "linear_fwd", op)(x2, weight, b, y, _backends.get_num_threads())
    else:
        y[...] = 0 if bias is None else bias
    return y.reshape(shape[:-1] + (out_features,))
