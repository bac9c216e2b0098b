"""Layers with PyTorch's constructor arguments and parameter names.

Each is a thin holder of parameters around the stateless operations of
``fastconv.functional``; shapes are as in PyTorch (NCHW).
"""

from collections import OrderedDict

import numpy as np
from scipy.special import expit

from .. import functional as F
from ..backends import default_backend, is_device_array, single_threaded_blas
from .module import Layer, Parameter

_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator behind initialisation and dropout."""
    global _rng
    _rng = np.random.default_rng(seed)


def _uniform(bound, shape, dtype):
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)


def _accumulate(param, grad):
    param.grad = grad if param.grad is None else param.grad + grad


class Conv2d(Layer):
    """2-D convolution (cross-correlation) with ``weight`` (C_out, C_in/groups, kH, kW)
    and ``bias`` (C_out,). Initialised as PyTorch does: uniform in +-1/sqrt(fan_in)."""

    runs_on_gpu = True

    fuses_relu = True       # on the host, after a BatchNorm2d and a residual: fuses_epilogue

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, algorithm="auto", backend=None,
                 dtype=np.float32):
        super().__init__()
        kh, kw = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation, self.groups = dilation, groups
        self.algorithm, self.backend = algorithm, backend
        bound = 1 / np.sqrt(in_channels // groups * kh * kw)
        self.weight = Parameter(_uniform(bound, (out_channels, in_channels // groups, kh, kw), dtype))
        self.bias = Parameter(_uniform(bound, (out_channels,), dtype)) if bias else None

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, backend=self.backend)

    def _forward(self, ctx, x):
        w = self.weight.data
        b = None if self.bias is None else self.bias.data
        if ctx.bn is not None or ctx.residual is not None or ctx.relu:
            scale, shift = (None, None) if ctx.bn is None else ctx.bn.scale_shift()
            return F.conv2d_fused(x, w, b, scale=scale, shift=shift, residual=ctx.residual,
                                  relu=ctx.relu, algorithm=self.algorithm, **self._args())
        ctx.algorithm = F.conv2d_algorithm(x, w, algorithm=self.algorithm,
                                           inference=ctx.inference, **self._args())
        ctx.x = x
        return F.conv2d(x, w, b, algorithm=ctx.algorithm, **self._args())

    def _backward(self, ctx, grad_out):
        gx, gw, gb = F.conv2d_backward(grad_out, ctx.x, self.weight.data,
                                       algorithm=ctx.algorithm,
                                       needs_input_grad=ctx.needs_input_grad, **self._args())
        _accumulate(self.weight, gw)
        if self.bias is not None:
            _accumulate(self.bias, gb)
        return gx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Linear(Layer):
    """``y = x W^T + b`` with ``weight`` (out_features, in_features), through BLAS.

    BLAS runs on one thread here: the forward pass splits the output features
    over fastconv's own threads (``functional.linear``), and the backward
    products run on one. BLAS's own thread pool, woken between two convolutions
    that run on fastconv's OpenMP threads, keeps spinning for about 0.1 s after
    each product and takes their cores: one LeNet-5 training epoch on 2 cores
    took 0.9-1.1 s that way and 0.19 s with single-threaded products.
    """

    runs_on_gpu = True

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / np.sqrt(in_features)
        self.weight = Parameter(_uniform(bound, (out_features, in_features), dtype))
        self.bias = Parameter(_uniform(bound, (out_features,), dtype)) if bias else None

    def _forward(self, ctx, x):
        if not is_device_array(x):
            x = np.asarray(x)
        features = tuple(x.shape)[-1]           # numba's simulator's shapes index from 0 only
        if features != self.in_features:
            raise ValueError(f"Linear: x has {features} features in its last axis, "
                             f"expected in_features={self.in_features}")
        if not ctx.inference:
            ctx.x = x
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def _backward(self, ctx, grad_out):
        x2 = ctx.x.reshape(-1, self.in_features)
        g2 = grad_out.reshape(-1, self.out_features)
        with single_threaded_blas():
            _accumulate(self.weight, g2.T @ x2)
            grad_x = grad_out @ self.weight.data
        if self.bias is not None:
            _accumulate(self.bias, g2.sum(axis=0))
        return grad_x

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ReLU(Layer):
    """max(x, 0); NaN stays NaN, as in PyTorch."""

    runs_on_gpu = True

    def _forward(self, ctx, x):
        if ctx.inference:
            return F.relu(x, out=x if ctx.overwrite else None)
        ctx.positive = x > 0
        return np.maximum(x, 0)

    def _backward(self, ctx, grad_out):
        return grad_out * ctx.positive


class Tanh(Layer):
    def _forward(self, ctx, x):
        ctx.y = np.tanh(x)
        return ctx.y

    def _backward(self, ctx, grad_out):
        return grad_out * (1 - ctx.y * ctx.y)


class Sigmoid(Layer):
    def _forward(self, ctx, x):
        ctx.y = expit(x)
        return ctx.y

    def _backward(self, ctx, grad_out):
        return grad_out * ctx.y * (1 - ctx.y)


class Softmax(Layer):
    """Softmax along ``dim`` (shifted by the maximum, so it does not overflow)."""

    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim

    def _forward(self, ctx, x):
        e = np.exp(x - x.max(axis=self.dim, keepdims=True))
        ctx.y = e / e.sum(axis=self.dim, keepdims=True)
        return ctx.y

    def _backward(self, ctx, grad_out):
        y = ctx.y
        return y * (grad_out - (grad_out * y).sum(axis=self.dim, keepdims=True))


class MaxPool2d(Layer):
    runs_on_gpu = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                 backend=None):
        super().__init__()
        self.kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                           dilation=dilation, ceil_mode=ceil_mode)
        self.backend = backend

    def _forward(self, ctx, x):
        if ctx.inference:           # the maxima only, without their indices
            return F.max_pool2d(x, **self.kwargs, backend=self.backend)
        y, ctx.indices = F.max_pool2d(x, **self.kwargs, return_indices=True, backend=self.backend)
        ctx.x_shape = x.shape
        return y

    def _backward(self, ctx, grad_out):
        return F._max_pool2d_scatter(grad_out, ctx.indices, ctx.x_shape, self.backend)


class AvgPool2d(Layer):
    runs_on_gpu = True

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, *, backend=None):
        super().__init__()
        self.kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                           ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                           divisor_override=divisor_override)
        self.backend = backend

    def _forward(self, ctx, x):
        ctx.x = x
        return F.avg_pool2d(x, **self.kwargs, backend=self.backend)

    def _backward(self, ctx, grad_out):
        return F.avg_pool2d_backward(grad_out, ctx.x, **self.kwargs, backend=self.backend)


class AdaptiveAvgPool2d(Layer):
    runs_on_gpu = True

    def __init__(self, output_size, *, backend=None):
        super().__init__()
        self.output_size, self.backend = output_size, backend

    def _forward(self, ctx, x):
        ctx.x = x
        return F.adaptive_avg_pool2d(x, self.output_size, backend=self.backend)

    def _backward(self, ctx, grad_out):
        return F.adaptive_avg_pool2d_backward(grad_out, ctx.x, self.output_size,
                                              backend=self.backend)


class Flatten(Layer):
    """Merge axes ``start_dim`` .. ``end_dim`` into one."""

    runs_on_gpu = True

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def _forward(self, ctx, x):
        ctx.shape = x.shape
        start, end = self.start_dim % x.ndim, self.end_dim % x.ndim
        merged = int(np.prod(x.shape[start:end + 1]))      # not -1: the batch may be empty
        return x.reshape(x.shape[:start] + (merged,) + x.shape[end + 1:])

    def _backward(self, ctx, grad_out):
        return grad_out.reshape(ctx.shape)


class Identity(Layer):
    runs_on_gpu = True

    def _forward(self, ctx, x):
        return x

    def _backward(self, ctx, grad_out):
        return grad_out


class Dropout(Layer):
    """Zero each element with probability ``p`` in training, scaling the rest by 1/(1-p)."""

    runs_on_gpu = True

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = p

    def _forward(self, ctx, x):
        if not self.training or self.p == 0:
            ctx.scale = None
            return x
        ctx.scale = (_rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * ctx.scale

    def _backward(self, ctx, grad_out):
        return grad_out if ctx.scale is None else grad_out * ctx.scale


def fuses_epilogue(layer, on_device=False):
    """Whether ``layer`` is a convolution that can apply, at inference, a BatchNorm2d, a
    residual sum and a ReLU after it in its epilogue (``functional.conv2d_fused``): on
    the host backends."""
    return type(layer) is Conv2d and not on_device and \
        (layer.backend or default_backend("conv2d_fwd_im2col")) != "cuda"


def fuses_relu(layer, after, on_device=False):
    """Whether ``layer`` can apply ``after`` itself at inference (``after`` a ReLU)."""
    return getattr(layer, "fuses_relu", False) and type(after) is ReLU \
        and (type(layer) is not Conv2d or fuses_epilogue(layer, on_device))


def folds_batch_norm(layer, after, on_device=False):
    """Whether convolution ``layer`` can apply ``after``, a BatchNorm2d, itself at
    inference: with running statistics in eval mode the normalisation is one scale
    and shift per channel."""
    return fuses_epilogue(layer, on_device) and type(after) is BatchNorm2d and after.fuses_relu


class Sequential(Layer):
    """Layers run one after another; children are named "0", "1", ... (or by the keys
    of an OrderedDict), as in PyTorch, so state-dict keys match."""

    runs_on_gpu = True

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            items = layers[0].items()
        else:
            items = ((str(i), layer) for i, layer in enumerate(layers))
        for name, layer in items:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: child {name!r} is a {type(layer).__name__}, "
                                f"not a Layer")
            setattr(self, name, layer)

    def __getitem__(self, index):
        return list(self._children.values())[index]

    def __len__(self):
        return len(self._children)

    def _forward(self, ctx, x):
        # at inference no context is kept, so each activation is freed as soon as
        # the next layer has read it
        ctx.steps = None if ctx.inference else []
        caller, on_device = x, is_device_array(x)
        layers = list(self._children.values())
        i = 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1:i + 3]
            i += 1
            step = type(ctx)()
            if ctx.steps is None:
                step.inference = True
                step.overwrite = not on_device and x.flags.writeable \
                    and not np.may_share_memory(x, caller)
                if after and folds_batch_norm(layer, after[0], on_device):
                    step.bn, after = after[0], after[1:]
                    i += 1
                step.relu = bool(after) and fuses_relu(layer, after[0], on_device)
                i += step.relu      # layers the step applies are skipped
            x = layer._forward(step, x)
            if ctx.steps is not None:
                ctx.steps.append((layer, step))
        return x

    def _backward(self, ctx, grad_out):
        if ctx.steps is None:
            raise RuntimeError("Sequential.backward: the last forward ran in eval mode, which "
                               "keeps no activations; call train() and run forward again")
        if ctx.steps:
            ctx.steps[0][1].needs_input_grad = ctx.needs_input_grad
        for layer, step in reversed(ctx.steps):
            grad_out = layer._backward(step, grad_out)
        return grad_out


class ConvTranspose2d(Layer):
    """Transposed convolution with ``weight`` (C_in, C_out/groups, kH, kW), as in PyTorch."""

    runs_on_gpu = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, backend=None,
                 dtype=np.float32):
        super().__init__()
        kh, kw = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"ConvTranspose2d: groups={groups} must divide in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kwargs = dict(stride=stride, padding=padding, output_padding=output_padding,
                           groups=groups, dilation=dilation, backend=backend)
        bound = 1 / np.sqrt(out_channels // groups * kh * kw)
        self.weight = Parameter(_uniform(bound, (in_channels, out_channels // groups, kh, kw),
                                         dtype))
        self.bias = Parameter(_uniform(bound, (out_channels,), dtype)) if bias else None

    def _forward(self, ctx, x):
        ctx.x = x
        b = None if self.bias is None else self.bias.data
        return F.conv_transpose2d(x, self.weight.data, b, **self.kwargs)

    def _backward(self, ctx, grad_out):
        gx, gw, gb = F.conv_transpose2d_backward(grad_out, ctx.x, self.weight.data, **self.kwargs)
        _accumulate(self.weight, gw)
        if self.bias is not None:
            _accumulate(self.bias, gb)
        return gx


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel, as in PyTorch: training uses the
    batch's statistics and updates ``running_mean``/``running_var`` with ``momentum``
    (the running variance unbiased); eval mode uses the running statistics."""

    runs_on_gpu = True

    @property
    def fuses_relu(self):
        """At inference with the running statistics, a following ReLU runs in the same pass."""
        return not self.training and self.track_running_stats

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.track_running_stats = track_running_stats
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))

    def _forward(self, ctx, x):
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d: x must be (N, {self.num_features}, H, W), "
                             f"got shape {x.shape}")
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            if self.training and self.track_running_stats:
                n = x.size // x.shape[1]
                m = self.momentum
                self.running_mean[...] = (1 - m) * self.running_mean + m * mean
                self.running_var[...] = (1 - m) * self.running_var + m * var * n / max(n - 1, 1)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
            if ctx.inference:
                overwrite = ctx.overwrite and x.flags.c_contiguous and x.flags.writeable
                return self._affine(x, mean, var, overwrite, ctx.relu)
        inv = 1 / np.sqrt(var + self.eps)
        xhat = (x - mean[:, None, None]) * inv[:, None, None]
        ctx.xhat, ctx.inv, ctx.batch = xhat, inv, use_batch
        if self.weight is None:
            return xhat.astype(x.dtype)
        return (xhat * self.weight.data[:, None, None] + self.bias.data[:, None, None]).astype(x.dtype)

    def scale_shift(self):
        """The running statistics' normalisation as one scale and shift per channel
        (float64): ``y = x * scale + shift``."""
        return F.batch_norm_scale_shift(
            self.running_mean, self.running_var, None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data, self.eps)

    def _affine(self, x, mean, var, overwrite, relu):
        """Inference with the running statistics, one scale and shift per channel (then
        a fused ReLU if asked), written over ``x`` when that is allowed."""
        return F.batch_norm_inference(
            x, mean, var, None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data, self.eps, relu=relu,
            out=x if overwrite else None)

    def _backward(self, ctx, grad_out):
        xhat, inv = ctx.xhat, ctx.inv
        if self.weight is not None:
            _accumulate(self.weight, (grad_out * xhat).sum(axis=(0, 2, 3)))
            _accumulate(self.bias, grad_out.sum(axis=(0, 2, 3)))
            grad_out = grad_out * self.weight.data[:, None, None]
        if not ctx.batch:
            return grad_out * inv[:, None, None]
        # the batch statistics depend on x too:
        # dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        mean_g = grad_out.mean(axis=(0, 2, 3))[:, None, None]
        mean_gx = (grad_out * xhat).mean(axis=(0, 2, 3))[:, None, None]
        return (inv[:, None, None] * (grad_out - mean_g - xhat * mean_gx)).astype(grad_out.dtype)


class LocalResponseNorm(Layer):
    """``b_c = a_c (k + alpha/n sum_{c' near c} a_{c'}^2)^(-beta)`` over ``size`` neighbouring
    channels (``size//2`` before, ``(size-1)//2`` after), as in PyTorch and AlexNet."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def _window_sum(self, a, before, after):
        """sum over channels c-before .. c+after of a, for every c (zero outside)."""
        c = a.shape[1]
        cum = np.concatenate([np.zeros_like(a[:, :1]), np.cumsum(a, axis=1)], axis=1)
        hi = np.minimum(np.arange(c) + after + 1, c)
        lo = np.maximum(np.arange(c) - before, 0)
        return cum[:, hi] - cum[:, lo]

    def _forward(self, ctx, x):
        s = self.k + self.alpha / self.size * self._window_sum(
            x * x, self.size // 2, (self.size - 1) // 2)
        ctx.x, ctx.s = x, s
        return (x * s ** -self.beta).astype(x.dtype)

    def _backward(self, ctx, grad_out):
        x, s = ctx.x, ctx.s
        # channel j feeds the windows of c = j - (size-1)//2 .. j + size//2
        spread = self._window_sum(grad_out * x * s ** (-self.beta - 1),
                                  (self.size - 1) // 2, self.size // 2)
        return (grad_out * s ** -self.beta
                - 2 * self.alpha * self.beta / self.size * x * spread).astype(grad_out.dtype)


class Concat(Layer):
    """Join inputs along the channel axis (a graph join, as in Inception)."""

    runs_on_gpu = True

    def _forward(self, ctx, *inputs):
        ctx.splits = np.cumsum([a.shape[1] for a in inputs])[:-1]
        return F.concat(inputs)

    def _backward(self, ctx, grad_out):
        return tuple(np.split(grad_out, ctx.splits, axis=1))


class Add(Layer):
    """Sum of the inputs (a residual join, as in ResNet)."""

    runs_on_gpu = True

    fuses_relu = True

    def _forward(self, ctx, *inputs):
        ctx.n = len(inputs)
        first = inputs[0]
        inplace = ctx.overwrite and np.result_type(*inputs) == first.dtype \
            and np.broadcast_shapes(*(a.shape for a in inputs)) == first.shape
        return F.add(*inputs, relu=ctx.relu, out=first if inplace else None)

    def _backward(self, ctx, grad_out):
        return (grad_out,) * ctx.n
