"""Forward and backward convolution on the DESIGN.md layer set, every backend and algorithm,
with torch.nn.functional.conv2d as the baseline of each group."""

import numpy as np
import pytest

import fastconv as fc
from fastconv.bench import CONV_LAYERS, conv_candidates

from conftest import torch_or_skip

# A few calls before the timing: the first loads Numba's compiled kernels from its
# cache and starts the thread pools, and pytest-benchmark sizes its rounds from it
# (Numba's first pooling layer ran 5 or 6 rounds instead of a thousand).
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=10)

CASES = [pytest.param(layer, backend, algo, id=f"{layer.name}-{backend}-{algo}")
         for layer in CONV_LAYERS for backend, algo in conv_candidates(layer)[1]]
LAYERS = [pytest.param(layer, id=layer.name) for layer in CONV_LAYERS]


@pytest.mark.parametrize("layer,backend,algo", CASES)
def test_forward(benchmark, layer, backend, algo):
    benchmark.group = f"forward {layer.name}"
    x, w = layer.arrays()
    y = benchmark(fc.conv2d, x, w, **layer.kwargs(), algorithm=algo, backend=backend)
    assert y.shape[:2] == (layer.n, layer.c_out)


@pytest.mark.parametrize("layer", LAYERS)
def test_forward_torch(benchmark, layer):
    torch = torch_or_skip()
    benchmark.group = f"forward {layer.name}"
    x, w = (torch.from_numpy(a) for a in layer.arrays())
    with torch.no_grad():
        benchmark(torch.nn.functional.conv2d, x, w, stride=layer.stride, padding=layer.padding)


@pytest.mark.parametrize("layer,backend,algo", CASES)
def test_backward(benchmark, layer, backend, algo):
    benchmark.group = f"backward {layer.name}"
    x, w = layer.arrays()
    dy = np.ones_like(fc.conv2d(x, w, **layer.kwargs(), algorithm=algo, backend=backend))
    gx, gw, _ = benchmark(fc.conv2d_backward, dy, x, w, **layer.kwargs(), algorithm=algo,
                          backend=backend)
    assert gx.shape == x.shape and gw.shape == w.shape


@pytest.mark.parametrize("layer", LAYERS)
def test_backward_torch(benchmark, layer):
    torch = torch_or_skip()
    benchmark.group = f"backward {layer.name}"
    x, w = (torch.from_numpy(a).requires_grad_() for a in layer.arrays())
    dy = torch.ones_like(torch.nn.functional.conv2d(x, w, stride=layer.stride,
                                                    padding=layer.padding))

    def grads():
        y = torch.nn.functional.conv2d(x, w, stride=layer.stride, padding=layer.padding)
        return torch.autograd.grad(y, (x, w), dy)

    benchmark(grads)
