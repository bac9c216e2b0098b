"""Argument normalisation, validation and all shape arithmetic.

Every public operation calls one function of this module before any kernel
runs. It turns PyTorch-style arguments (ints, pairs, nested pairs, padding
strings) into an immutable geometry of plain ints, and raises the errors of
the contract: ``ValueError`` for bad shapes or values, ``TypeError`` for bad
dtypes or types, each naming the operation, the argument, the value received
and what was expected. Kernels trust what comes out of here.

A geometry is a named tuple: a frozen dataclass of its 18 fields took 5 us to
build, where a named tuple takes 0.8, and a layer of a model runs this once
per call.

The output-size rule of the convolution chapter lives in one function,
:func:`output_size`; convolution, pooling, ``im2col`` and the graph builder's
shape inference all call it.
"""

import numbers
from typing import NamedTuple

import numpy as np

from .backends import is_device_array

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------
# The output-size rule
# ---------------------------------------------------------------------------

def output_size(size, kernel, stride, pad_begin, pad_end, dilation, ceil_mode=False):
    """Number of window positions along one axis.

    ``out = floor((M + P_begin + P_end - D*(K-1) - 1) / S) + 1``, the chapter's
    ``(M - K + 2P)/S + 1`` with dilation and asymmetric padding. With
    ``ceil_mode`` the division rounds up, and (PyTorch's rule) a last window
    that would start beyond the input and its left padding is dropped.
    The result may be zero or negative; callers decide whether that is an error.
    """
    room = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return room // stride + 1
    out = -(-room // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def conv_output_size(M, K, stride=1, padding=0, dilation=1):
    """Output length ``floor((M + 2P - D*(K-1) - 1) / S) + 1`` of a convolution.

    Parameters
    ----------
    M : int
        Input length.
    K : int
        Kernel length.
    stride, padding, dilation : int
        ``S``, ``P`` (on each side) and ``D``.

    Returns
    -------
    int
        The number of outputs; for ``D=1`` this is the chapter's ``(M-K+2P)/S+1``.

    Examples
    --------
    >>> conv_output_size(32, 5)
    28
    >>> conv_output_size(224, 11, stride=4, padding=2)
    55
    """
    op = "conv_output_size"
    M = _int(M, "M", op, minimum=1)
    K = _int(K, "K", op, minimum=1)
    stride = _int(stride, "stride", op, minimum=1)
    padding = _int(padding, "padding", op, minimum=0)
    dilation = _int(dilation, "dilation", op, minimum=1)
    out = output_size(M, K, stride, padding, padding, dilation)
    if out < 1:
        raise ValueError(
            f"{op}: kernel K={K} with dilation {dilation} spans "
            f"{dilation * (K - 1) + 1} but the padded input is only {M + 2 * padding} long"
        )
    return out


# ---------------------------------------------------------------------------
# Geometry objects: plain ints, nothing left to interpret
# ---------------------------------------------------------------------------

class ConvGeometry(NamedTuple):
    """A convolution from ``x`` (N, C_in, H, W) to ``y`` (N, C_out, OH, OW).

    A transposed convolution is described by the convolution it is the adjoint
    of: its output plays ``x`` and its input plays ``y``.
    """
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pb: int
    pl: int
    pr: int
    dh: int
    dw: int
    groups: int
    oh: int
    ow: int

    @property
    def x_shape(self):
        return (self.n, self.c_in, self.h, self.w)

    @property
    def y_shape(self):
        return (self.n, self.c_out, self.oh, self.ow)

    @property
    def weight_shape(self):
        return (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    def kernel_args(self):
        """The trailing integer arguments every convolution kernel takes."""
        return (self.kh, self.kw, self.sh, self.sw, self.pt, self.pl,
                self.dh, self.dw, self.groups)

    @property
    def macs(self):
        """Multiply-adds of the forward pass."""
        return (self.n * self.c_out * self.oh * self.ow
                * (self.c_in // self.groups) * self.kh * self.kw)


class PoolGeometry(NamedTuple):
    """A pooling window sliding over ``x`` (N, C, H, W) to give (N, C, OH, OW).

    Padding is symmetric, as in PyTorch: ``pt`` rows above and below (the
    bottom may hang further out with ``ceil_mode``), ``pl`` columns left and right.
    """
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    dh: int
    dw: int
    oh: int
    ow: int

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self):
        return (self.n, self.c, self.oh, self.ow)

    def kernel_args(self):
        """The trailing integer arguments every pooling kernel takes."""
        return (self.kh, self.kw, self.sh, self.sw, self.pt, self.pl, self.dh, self.dw)


# ---------------------------------------------------------------------------
# Scalars, pairs and arrays
# ---------------------------------------------------------------------------

def _int(value, name, op, minimum=None):
    # a plain int first: the check against numbers.Integral (an ABC) costs more than
    # the rest of a small layer's validation
    if type(value) is not int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{op}: {name} must be an int, got {value!r}")
        value = int(value)
    if minimum is not None and value < minimum:
        if minimum == 1:
            raise ValueError(f"{op}: {name} must be positive, got {value}")
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


def pair(value, name, op, minimum=None):
    """``int`` or a sequence of two ints -> ``(a, b)``, each ``>= minimum``."""
    if type(value) is int:
        value = _int(value, name, op, minimum)
        return value, value
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        items = value
    elif isinstance(value, np.ndarray) and value.shape == (2,):
        items = value.tolist()
    else:
        items = (value, value)
    try:
        a, b = (_int(v, name, op) for v in items)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    if minimum is not None and (a < minimum or b < minimum):
        if minimum == 1:
            raise ValueError(f"{op}: {name} must be positive, got {value!r}")
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return a, b


def float_array(value, name, op, ndim=None, like=None):
    """``value`` as a float32/float64 ndarray (no copy when it already is one); a CUDA
    device array is checked and kept as it is.

    ``like`` is an array whose dtype ``value`` must share; mixing float32 and
    float64 is a ``TypeError``, as in PyTorch.
    """
    if isinstance(value, np.ndarray) or is_device_array(value):
        array = value
    else:
        try:
            array = np.asarray(value)
        except Exception as exc:
            raise TypeError(f"{op}: {name} must be an array, got {type(value).__name__}") from exc
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {array.dtype}; expected float32 or float64")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"{op}: {name} must be a {ndim}-D array, got shape {tuple(array.shape)} ({array.ndim}-D)"
        )
    if like is not None and array.dtype != like.dtype:
        raise TypeError(
            f"{op}: {name} has dtype {array.dtype} but x has dtype {like.dtype}; "
            f"convert one of them so both have the same dtype"
        )
    return array


def grad_array(grad_out, name, op, expected_shape, like):
    """Check an incoming gradient: same dtype as ``like``, the forward's output shape."""
    grad_out = float_array(grad_out, name, op, ndim=len(expected_shape), like=like)
    if tuple(grad_out.shape) != tuple(expected_shape):
        raise ValueError(
            f"{op}: {name} has shape {tuple(grad_out.shape)} but the forward output "
            f"has shape {tuple(expected_shape)}"
        )
    return grad_out


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

def _padding_string(mode, size, kernel, stride, dilation):
    """(begin, end) padding of one axis for "valid", "same" or "full"."""
    span = dilation * (kernel - 1) + 1
    if mode == "valid":
        return 0, 0
    if mode == "full":
        return span - 1, span - 1
    # "same": ceil(M/S) outputs; the odd pixel of padding goes to the end.
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def conv_padding(padding, size_hw, kernel_hw, stride_hw, dilation_hw, op):
    """Normalise padding to ``(top, bottom, left, right)``.

    Accepts an int, a pair ``(ph, pw)``, a nested pair
    ``((top, bottom), (left, right))`` or one of "valid", "same", "full".
    """
    if isinstance(padding, str):
        if padding not in ("valid", "same", "full"):
            raise ValueError(
                f"{op}: padding must be 'valid', 'same', 'full', an int or pairs of ints, "
                f"got {padding!r}"
            )
        (pt, pb), (pl, pr) = (
            _padding_string(padding, m, k, s, d)
            for m, k, s, d in zip(size_hw, kernel_hw, stride_hw, dilation_hw)
        )
        return pt, pb, pl, pr
    if (isinstance(padding, (list, tuple)) and len(padding) == 2
            and all(isinstance(p, (list, tuple)) for p in padding)):
        (pt, pb), (pl, pr) = (pair(p, "padding", op) for p in padding)
    else:
        ph, pw = pair(padding, "padding", op)
        pt, pb, pl, pr = ph, ph, pw, pw
    if min(pt, pb, pl, pr) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {padding!r}")
    return pt, pb, pl, pr


def _check_window_fits(op, kh, kw, dh, dw, h, w, pt, pb, pl, pr):
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if span_h > h + pt + pb or span_w > w + pl + pr:
        raise ValueError(
            f"{op}: kernel ({kh}, {kw}) with dilation ({dh}, {dw}) spans {span_h}x{span_w} "
            f"but the padded input is only {h + pt + pb}x{w + pl + pr}"
        )


def _conv_arrays(x, weight, bias, groups, op):
    """The checks both convolutions share: arrays, dtypes, kernel size, groups of x's channels."""
    x = float_array(x, "x", op, ndim=4)
    weight = float_array(weight, "weight", op, ndim=4, like=x)
    if bias is not None:
        bias = float_array(bias, "bias", op, ndim=1, like=x)
    groups = _int(groups, "groups", op, minimum=1)
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"{op}: weight must have a positive kernel size, got shape {weight.shape}")
    if x.shape[1] % groups:
        raise ValueError(
            f"{op}: groups={groups} does not divide the {x.shape[1]} input channels of x")
    return x, weight, bias, groups


def conv2d_geometry(x, weight, bias, stride, padding, dilation, groups, op="conv2d"):
    """Validate a convolution's arguments.

    Returns ``(x, weight, bias, geometry)`` with the arrays as float ndarrays
    of one dtype (not yet contiguous) and the geometry of the call.
    """
    x, weight, bias, groups = _conv_arrays(x, weight, bias, groups, op)
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_out % groups:
        raise ValueError(
            f"{op}: groups={groups} does not divide the {c_out} output channels of weight"
        )
    if c_per_group * groups != c_in:
        raise ValueError(
            f"{op}: weight has {c_per_group} input channels per group but x has "
            f"{c_in} channels (groups={groups})"
        )
    if bias is not None and bias.shape[0] != c_out:
        raise ValueError(
            f"{op}: bias has {bias.shape[0]} elements but weight has {c_out} output channels"
        )
    sh, sw = pair(stride, "stride", op, minimum=1)
    dh, dw = pair(dilation, "dilation", op, minimum=1)
    pt, pb, pl, pr = conv_padding(padding, (h, w), (kh, kw), (sh, sw), (dh, dw), op)
    _check_window_fits(op, kh, kw, dh, dw, h, w, pt, pb, pl, pr)
    oh = output_size(h, kh, sh, pt, pb, dh)
    ow = output_size(w, kw, sw, pl, pr, dw)
    geometry = ConvGeometry(n, c_in, h, w, c_out, kh, kw, sh, sw, pt, pb, pl, pr,
                            dh, dw, groups, oh, ow)
    return x, weight, bias, geometry


def conv_transpose2d_geometry(x, weight, bias, stride, padding, output_padding, groups,
                              dilation, op="conv_transpose2d"):
    """Validate a transposed convolution's arguments.

    The output size is ``(H-1)*S - 2P + D*(K-1) + output_padding + 1``.
    Returns ``(x, weight, bias, geometry)`` where the geometry describes the
    convolution whose adjoint this is: the transposed output is its ``x``.
    """
    x, weight, bias, groups = _conv_arrays(x, weight, bias, groups, op)
    n, c_in, h, w = x.shape
    c_in_w, c_out_per_group, kh, kw = weight.shape
    if c_in_w != c_in:
        raise ValueError(
            f"{op}: weight has {c_in_w} input channels (its first axis) but x has {c_in} channels"
        )
    c_out = c_out_per_group * groups
    if bias is not None and bias.shape[0] != c_out:
        raise ValueError(
            f"{op}: bias has {bias.shape[0]} elements but the output has {c_out} channels"
        )
    sh, sw = pair(stride, "stride", op, minimum=1)
    dh, dw = pair(dilation, "dilation", op, minimum=1)
    ph, pw = pair(padding, "padding", op, minimum=0)
    oph, opw = pair(output_padding, "output_padding", op, minimum=0)
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(
            f"{op}: output_padding must be smaller than stride or dilation, got "
            f"output_padding={output_padding!r}, stride={stride!r}, dilation={dilation!r}"
        )
    out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    out_w = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{op}: the output would be {out_h}x{out_w}; padding={padding!r} is too large "
            f"for a {h}x{w} input with kernel ({kh}, {kw})"
        )
    # The convolution mapping the output (out_h x out_w) back to x (h x w);
    # output_padding only adds rows and columns at the bottom and right that
    # no window of that convolution reaches.
    geometry = ConvGeometry(n, c_out, out_h, out_w, c_in, kh, kw, sh, sw, ph, ph + oph,
                            pw, pw + opw, dh, dw, groups, h, w)
    return x, weight, bias, geometry


def unfold_geometry(n, c, h, w, kernel_size, dilation, padding, stride, op):
    """Geometry of ``im2col``/``col2im`` (PyTorch's unfold/fold), groups=1."""
    kh, kw = pair(kernel_size, "kernel_size", op, minimum=1)
    dh, dw = pair(dilation, "dilation", op, minimum=1)
    ph, pw = pair(padding, "padding", op, minimum=0)
    sh, sw = pair(stride, "stride", op, minimum=1)
    _check_window_fits(op, kh, kw, dh, dw, h, w, ph, ph, pw, pw)
    oh = output_size(h, kh, sh, ph, ph, dh)
    ow = output_size(w, kw, sw, pw, pw, dw)
    return ConvGeometry(n, c, h, w, c * kh * kw, kh, kw, sh, sw, ph, ph, pw, pw,
                        dh, dw, 1, oh, ow)


def col2im_geometry(cols, output_size_hw, kernel_size, dilation, padding, stride, op="col2im"):
    """Validate ``col2im`` (fold): ``cols`` is (N, C*kH*kW, L), L = OH*OW."""
    cols = float_array(cols, "cols", op, ndim=3)
    h, w = pair(output_size_hw, "output_size", op, minimum=1)
    kh, kw = pair(kernel_size, "kernel_size", op, minimum=1)
    n, ckk, length = cols.shape
    if ckk % (kh * kw):
        raise ValueError(
            f"{op}: cols has {ckk} rows, which is not a multiple of kernel size "
            f"{kh}*{kw}={kh * kw}"
        )
    geometry = unfold_geometry(n, ckk // (kh * kw), h, w, (kh, kw), dilation, padding, stride, op)
    if geometry.oh * geometry.ow != length:
        raise ValueError(
            f"{op}: cols has L={length} columns but output_size={output_size_hw!r} with these "
            f"kernel, dilation, padding and stride gives {geometry.oh}x{geometry.ow}="
            f"{geometry.oh * geometry.ow} windows"
        )
    return cols, geometry


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

def pool2d_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op):
    """Validate a max/average pooling's arguments; ``stride=None`` means the kernel size."""
    x = float_array(x, "x", op, ndim=4)
    n, c, h, w = x.shape
    kh, kw = pair(kernel_size, "kernel_size", op, minimum=1)
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        sh, sw = kh, kw
    else:
        sh, sw = pair(stride, "stride", op, minimum=1)
    ph, pw = pair(padding, "padding", op, minimum=0)
    dh, dw = pair(dilation, "dilation", op, minimum=1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(
            f"{op}: padding must be at most half of the kernel size, got padding={padding!r} "
            f"for kernel_size={kernel_size!r}"
        )
    oh = output_size(h, kh, sh, ph, ph, dh, ceil_mode)
    ow = output_size(w, kw, sw, pw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{op}: the output would be {oh}x{ow}: kernel ({kh}, {kw}) with dilation "
            f"({dh}, {dw}) does not fit the {h}x{w} input padded by ({ph}, {pw})"
        )
    for axis, size, out, k, s, p, d in (("height", h, oh, kh, sh, ph, dh),
                                        ("width", w, ow, kw, sw, pw, dw)):
        if d > 1 and any(all(not 0 <= o * s - p + i * d < size for i in range(k))
                         for o in range(out)):
            raise ValueError(
                f"{op}: with dilation {d} and padding {p} some windows along the {axis} "
                f"read only padding (input {axis} {size}); such a window has no maximum "
                f"inside the input"
            )
    return x, PoolGeometry(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)


def divisor_override_value(divisor_override, op):
    if divisor_override is None:
        return 0
    value = _int(divisor_override, "divisor_override", op)
    if value == 0:
        raise ValueError(f"{op}: divisor_override must not be zero")
    return value


def adaptive_output_size(x_hw, output_size_arg, op):
    """``output_size`` as a pair; ``None`` in either place keeps the input's size."""
    if isinstance(output_size_arg, (list, tuple)) and len(output_size_arg) == 2:
        items = output_size_arg
    else:
        items = (output_size_arg, output_size_arg)
    sizes = tuple(m if o is None else o for m, o in zip(x_hw, items))
    return pair(sizes, "output_size", op, minimum=1)


def adaptive_window(index, in_size, out_size):
    """Input range ``[start, end)`` of adaptive pooling's window ``index``:
    ``start = floor(i*M/O)``, ``end = ceil((i+1)*M/O)``, as in PyTorch."""
    return (index * in_size) // out_size, -(-((index + 1) * in_size) // out_size)


def check_positive_spatial(x, op):
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: x must have a non-empty spatial size, got shape {x.shape}")


def channel_vector(value, name, channels, op):
    """``value`` as one float64 number per channel, shape ``(channels,)``."""
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{op}: {name} must be {channels} numbers, got "
                        f"{type(value).__name__}") from exc
    if vector.shape != (channels,):
        raise ValueError(f"{op}: {name} must have shape ({channels},), got {vector.shape}")
    return vector


def gflop(geometry):
    """Floating-point operations (2 per multiply-add) of a forward convolution, in units of 1e9."""
    return 2.0 * geometry.macs / 1e9


__all__ = [
    "ConvGeometry", "PoolGeometry", "output_size", "conv_output_size", "conv2d_geometry",
    "conv_transpose2d_geometry", "pool2d_geometry", "unfold_geometry", "col2im_geometry",
    "adaptive_output_size", "adaptive_window", "channel_vector",
]
