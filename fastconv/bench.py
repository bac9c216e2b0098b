"""The benchmark layer set of DESIGN.md section 6 and the timing behind ``fastconv bench``.

Every backend and algorithm is timed on the same arrays in one process, with
PyTorch (when installed) pinned to the same thread count, and reported as a
ratio: PyTorch's time divided by fastconv's, so that > 1 means fastconv is faster.
Times are the best of several runs: on a shared machine the minimum is the
run least disturbed by others.
"""

import time
from dataclasses import dataclass

import numpy as np

from . import backends, functional, nn
from .select import winograd_applicable
from .shapes import conv2d_geometry, gflop


def _random_arrays(x_shape, w_shape, dtype, seed):
    """Standard normal input and weights scaled by 1/sqrt(fan_in) of the weight's last axes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    return x, w * np.asarray(1 / np.sqrt(np.prod(w_shape[1:])), dtype=dtype)


@dataclass(frozen=True)
class ConvLayer:
    name: str
    n: int
    c_in: int
    c_out: int
    size: int
    kernel: tuple
    stride: int
    padding: tuple
    groups: int = 1

    def arrays(self, dtype=np.float32, seed=0):
        return _random_arrays((self.n, self.c_in, self.size, self.size),
                              (self.c_out, self.c_in // self.groups) + self.kernel, dtype, seed)

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, groups=self.groups)


def _layer(name, n, c_in, c_out, size, k, s, p, groups=1):
    k = k if isinstance(k, tuple) else (k, k)
    p = p if isinstance(p, tuple) else (p, p)
    return ConvLayer(name, n, c_in, c_out, size, k, s, p, groups)


CONV_LAYERS = [
    _layer("lenet5.c1", 64, 1, 6, 32, 5, 1, 0),
    _layer("lenet5.c3", 64, 6, 16, 14, 5, 1, 0),
    _layer("alexnet.conv1", 1, 3, 64, 224, 11, 4, 2),
    _layer("alexnet.conv2", 1, 64, 192, 27, 5, 1, 2),
    _layer("vgg16.conv1_2", 1, 64, 64, 224, 3, 1, 1),
    _layer("vgg16.conv3_2", 1, 256, 256, 56, 3, 1, 1),
    _layer("vgg16.conv4_2", 1, 512, 512, 28, 3, 1, 1),
    _layer("vgg16.conv5_2", 1, 512, 512, 14, 3, 1, 1),
    _layer("resnet50.conv1", 1, 3, 64, 224, 7, 2, 3),
    _layer("resnet50.layer1.conv2", 1, 64, 64, 56, 3, 1, 1),
    _layer("resnet50.layer1.conv3", 1, 64, 256, 56, 1, 1, 0),
    _layer("resnet50.layer2.conv2", 1, 128, 128, 56, 3, 2, 1),
    _layer("resnet50.layer3.conv2", 1, 256, 256, 14, 3, 1, 1),
    _layer("resnet50.layer4.conv2", 1, 512, 512, 7, 3, 1, 1),
    _layer("inception3.7x1", 1, 192, 192, 17, (7, 1), 1, (3, 0)),
    _layer("vgg16.conv3_2.b8", 8, 256, 256, 56, 3, 1, 1),
]

# Grouped and depthwise layers, beside DESIGN.md's set: where the direct forward
# is meant to beat im2col (MobileNet-style depthwise 3x3, ResNeXt-style groups)
GROUPED_LAYERS = [
    _layer("depthwise.256.56", 1, 256, 256, 56, 3, 1, 1, groups=256),
    _layer("depthwise.128.112.s2", 1, 128, 128, 112, 3, 2, 1, groups=128),
    _layer("depthwise.512.14", 1, 512, 512, 14, 3, 1, 1, groups=512),
    _layer("grouped32.128.56", 1, 128, 128, 56, 3, 1, 1, groups=32),
    _layer("grouped8.256.28", 1, 256, 256, 28, 3, 1, 1, groups=8),
]


@dataclass(frozen=True)
class TransposeLayer:
    """A transposed convolution: C_in x size x size up to C_out (weight C_in, C_out, k, k)."""
    name: str
    n: int
    c_in: int
    c_out: int
    size: int
    kernel: int
    stride: int
    padding: int

    def arrays(self, dtype=np.float32, seed=0):
        return _random_arrays((self.n, self.c_in, self.size, self.size),
                              (self.c_in, self.c_out, self.kernel, self.kernel), dtype, seed)

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding)

    def macs(self):
        return self.n * self.c_in * self.size * self.size * self.c_out * self.kernel ** 2


# 2x upsampling as in decoders and GANs (kernel 4, stride 2, padding 1), and a 3x3 one
TRANSPOSE_LAYERS = [
    TransposeLayer("upsample.256to128.28", 1, 256, 128, 28, 4, 2, 1),
    TransposeLayer("upsample.128to64.56", 1, 128, 64, 56, 4, 2, 1),
    TransposeLayer("upsample.64to32.112", 1, 64, 32, 112, 4, 2, 1),
    TransposeLayer("deconv3x3.128to128.28", 1, 128, 128, 28, 3, 2, 1),
]


def run_transpose(layer, backend_names=None, rounds=5, n_threads=None, backward=False,
                  pause=0.1):
    """Time a transposed convolution's forward or backward (grad_x, grad_w and grad_b,
    which fastconv's backward returns and PyTorch is asked for as well): rows of
    (backend, seconds, GFLOP/s, ratio to torch)."""
    n_threads = n_threads or backends.get_num_threads()
    x, w = layer.arrays()
    work = 2e-9 * layer.macs() * (2 if backward else 1)
    y = functional.conv_transpose2d(x, w, **layer.kwargs())
    dy = np.ones_like(y)
    labels, fns = [], []
    torch = _torch(n_threads)
    if torch is not None:
        xt, wt, dyt = (torch.from_numpy(a) for a in (x, w, dy))
        labels.append("torch")
        if backward:
            fns.append(lambda: torch.ops.aten.convolution_backward(
                dyt, xt, wt, [layer.c_out], [layer.stride] * 2, [layer.padding] * 2, [1, 1],
                True, [0, 0], 1, [True, True, True]))
        else:
            fns.append(lambda: torch.nn.functional.conv_transpose2d(xt, wt, **layer.kwargs()))
    for name in backend_names or backends.available_backends():
        labels.append(name)
        if backward:
            fns.append(lambda b=name: functional.conv_transpose2d_backward(
                dy, x, w, **layer.kwargs(), backend=b))
        else:
            fns.append(lambda b=name: functional.conv_transpose2d(x, w, **layer.kwargs(),
                                                                  backend=b))
    times = best_times(fns, rounds, pause=pause)
    torch_time = times[0] if torch is not None else None
    return [(label, t, work / t, torch_time / t if torch_time else None)
            for label, t in zip(labels, times)]


@dataclass(frozen=True)
class PoolLayer:
    name: str
    kind: str          # "max", "avg" or "global"
    shape: tuple
    kwargs: dict

    def array(self, dtype=np.float32, seed=0):
        return np.random.default_rng(seed).standard_normal(self.shape).astype(dtype)


POOL_LAYERS = [
    PoolLayer("maxpool.3x3s2p1", "max", (1, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1)),
    PoolLayer("maxpool.2x2s2", "max", (1, 64, 224, 224), dict(kernel_size=2, stride=2)),
    PoolLayer("avgpool.3x3s1p1", "avg", (1, 192, 35, 35), dict(kernel_size=3, stride=1, padding=1)),
    PoolLayer("avgpool.global", "global", (8, 2048, 7, 7), dict(output_size=1)),
]


def best_times(fns, rounds=5, max_time=3.0, pause=0.1):
    """Best wall time of each callable, measured in interleaved rounds.

    Every round times each callable once, so that a disturbance from the rest
    of a shared machine hits all of them alike; the best of the rounds is the
    run least disturbed. A pause before each run lets the thread pools of the
    previous one go to sleep: OpenMP and PyTorch threads spin for a while
    after their last task, OpenBLAS's (which the NumPy backend uses) for about
    0.1 s, and a spinning pool steals the next run's cores. Each round starts
    one callable further on, so that none always follows the same one:
    PyTorch hands its output's pages back to the system when it frees them,
    and whichever run comes next takes a page fault on every page of its own
    output (1,000 faults, 0.7 ms, on a 3.2 MB output). A callable stops being
    timed once it has used ``max_time`` seconds. ``pause=0`` times them back to
    back, warm: where idle cores take milliseconds to wake (this project's 2-core
    VM), a rested call of a millisecond measures the wake-up as much as the work.
    """
    best = [float("inf")] * len(fns)
    spent = [0.0] * len(fns)
    for fn in fns:
        fn()
    for r in range(rounds):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            fn = fns[i]
            if spent[i] > max_time:
                continue
            time.sleep(pause)
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            best[i], spent[i] = min(best[i], elapsed), spent[i] + elapsed
    return best


def _torch(n_threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(n_threads)
    return torch


def conv_candidates(layer, backend_names=None, all_algorithms=True):
    """(backend, algorithm) pairs that can run ``layer``: every algorithm, or "auto" only."""
    x, w = layer.arrays()
    geometry = conv2d_geometry(x, w, None, layer.stride, layer.padding, 1, layer.groups)[3]
    pairs = []
    for name in backend_names or backends.available_backends():
        algos = functional.algorithms(name) if all_algorithms else ["auto"]
        pairs += [(name, a) for a in algos
                  if not a.startswith("winograd") or winograd_applicable(geometry)]
    return geometry, pairs


def _torch_conv(torch, layer, x, w, backward):
    """PyTorch's forward, or its backward alone (no forward): grad_x, grad_w and grad_b,
    the three that fastconv's conv2d_backward returns."""
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    kw = layer.kwargs()
    if not backward:
        return lambda: torch.nn.functional.conv2d(xt, wt, **kw)
    dy = torch.ones_like(torch.nn.functional.conv2d(xt, wt, **kw))
    stride, padding = [layer.stride] * 2, list(layer.padding)
    return lambda: torch.ops.aten.convolution_backward(
        dy, xt, wt, [layer.c_out], stride, padding, [1, 1], False, [0, 0], layer.groups,
        [True, True, True])


def run_conv(layer, backend_names=None, all_algorithms=True, rounds=5, n_threads=None,
             backward=False, pause=0.1):
    """Time one layer's forward pass, or its backward pass (grad_x, grad_w and grad_b):
    rows of (backend, algorithm, seconds, GFLOP/s, ratio to torch)."""
    n_threads = n_threads or backends.get_num_threads()
    x, w = layer.arrays()
    geometry, pairs = conv_candidates(layer, backend_names, all_algorithms)
    work = gflop(geometry) * (2 if backward else 1)
    labels, fns = [], []
    torch = _torch(n_threads)
    if torch is not None:
        labels.append(("torch", "-"))
        fns.append(_torch_conv(torch, layer, x, w, backward))
    dy = np.ones((layer.n, layer.c_out, geometry.oh, geometry.ow), dtype=x.dtype)
    for backend, algo in pairs:
        labels.append((backend, algo))
        if backward:
            fns.append(lambda b=backend, a=algo: functional.conv2d_backward(
                dy, x, w, **layer.kwargs(), algorithm=a, backend=b))
        else:
            fns.append(lambda b=backend, a=algo: functional.conv2d(
                x, w, **layer.kwargs(), algorithm=a, backend=b))
    times = best_times(fns, rounds, pause=pause)
    torch_time = times[0] if torch is not None else None
    return [(b, a, t, work / t, torch_time / t if torch_time else None)
            for (b, a), t in zip(labels, times)]


def _pool_call(layer, module, x, backend=None):
    if layer.kind == "global":
        return lambda: module.adaptive_avg_pool2d(x, **layer.kwargs, **backend)
    fn = module.max_pool2d if layer.kind == "max" else module.avg_pool2d
    return lambda: fn(x, **layer.kwargs, **backend)


def _pool_backward_call(layer, x, dy, backend):
    """fastconv's gradient of the pooling, from dL/dY and X as the functional API takes
    them (max pooling finds its maxima again)."""
    name = {"max": "max_pool2d_backward", "avg": "avg_pool2d_backward",
            "global": "adaptive_avg_pool2d_backward"}[layer.kind]
    return lambda: getattr(functional, name)(dy, x, **layer.kwargs, backend=backend)


def _torch_pool_backward_call(torch, layer, x, dy):
    """PyTorch's gradient from the same dL/dY and X: its backward kernels, the maxima
    found by the forward with indices (what its autograd would have saved)."""
    aten, kw = torch.ops.aten, layer.kwargs
    if layer.kind == "global":
        return lambda: aten._adaptive_avg_pool2d_backward(dy, x)
    k, s, p = [kw["kernel_size"]] * 2, [kw.get("stride", kw["kernel_size"])] * 2, \
        [kw.get("padding", 0)] * 2
    if layer.kind == "avg":
        return lambda: aten.avg_pool2d_backward(dy, x, k, s, p, False, True, None)
    return lambda: aten.max_pool2d_with_indices_backward(
        dy, x, k, s, p, [1, 1], False, aten.max_pool2d_with_indices(x, k, s, p)[1])


def run_pool(layer, backend_names=None, rounds=5, n_threads=None, backward=False, pause=0.1):
    """Time one pooling layer, forward or backward: rows of (backend, seconds, GB/s of
    the arrays read and written, ratio). Forward reads X and writes Y; backward
    reads dL/dY (and X, for max pooling's maxima) and writes dL/dX."""
    n_threads = n_threads or backends.get_num_threads()
    x = layer.array()
    y = _pool_call(layer, functional, x, {})()
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    traffic = (x.nbytes + y.nbytes + (x.nbytes if backward and layer.kind == "max" else 0)) / 1e9
    kernel = {"max": "maxpool2d", "avg": "avgpool2d", "global": "adaptive_avgpool2d"}[layer.kind] \
        + ("_bwd" if backward else "_fwd")
    labels, fns = [], []
    torch = _torch(n_threads)
    if torch is not None:
        labels.append("torch")
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        fns.append(_torch_pool_backward_call(torch, layer, xt, dyt) if backward
                   else _pool_call(layer, torch.nn.functional, xt, {}))
    for name in backend_names or backends.available_backends():
        if hasattr(backends.get_backend(name), kernel):
            labels.append(name)
            fns.append(_pool_backward_call(layer, x, dy, name) if backward
                       else _pool_call(layer, functional, x, dict(backend=name)))
    times = best_times(fns, rounds, pause=pause)
    torch_time = times[0] if torch is not None else None
    return [(label, t, traffic / t, torch_time / t if torch_time else None)
            for label, t in zip(labels, times)]


def model_input_shape(name):
    """The (channels, height, width) a backbone is built for (and its summary shows)."""
    return (1, 32, 32) if name == "lenet5" else (3, 299, 299) if name == "inception_v3" \
        else (3, 224, 224)


def _calibrate_batchnorm(model, x):
    """Running statistics of every BatchNorm set to those of ``x``'s activations (one
    training-mode pass with momentum 1), then eval mode: the activations of the timed
    inference keep their scale through the depth of the network, as with trained
    weights, instead of fading towards zero or subnormal numbers."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def run_model(name, backend_names=None, rounds=5, n_threads=None, batch=1, pause=0.1):
    """End-to-end eval-mode inference of ``fastconv.models.<name>`` on random images:
    rows of (backend, seconds, ratio to torch, relative error against torch).

    PyTorch runs the same architecture (torchvision's, or its ``torch.nn`` rebuild)
    carrying the same weights, so the outputs are compared as well as the times.
    """
    from . import models

    n_threads = n_threads or backends.get_num_threads()
    shape = (batch,) + model_input_shape(name)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ours = getattr(models, name)()
    _calibrate_batchnorm(ours, x)
    labels, fns, expected = [], [], None
    torch = _torch(n_threads)
    if torch is not None:
        from .models.torch_reference import build

        reference = build(name).eval()
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        xt = torch.from_numpy(x)

        def torch_inference():
            with torch.inference_mode():
                return reference(xt)

        expected = torch_inference().numpy()
        labels.append("torch")
        fns.append(torch_inference)
    errors = {"torch": 0.0}
    previous = backends.set_backend(None)
    try:
        for backend in backend_names or backends.available_backends():
            backends.set_backend(backend)
            out = ours(x)
            if expected is not None:
                errors[backend] = float(np.abs(out - expected).max() / np.abs(expected).max())
            labels.append(backend)
            fns.append(lambda b=backend: (backends.set_backend(b), ours(x)))
        times = best_times(fns, rounds, max_time=30.0, pause=pause)
    finally:
        backends.set_backend(previous)
    torch_time = times[0] if torch is not None else None
    return [(label, t, torch_time / t if torch_time else None, errors.get(label))
            for label, t in zip(labels, times)]
