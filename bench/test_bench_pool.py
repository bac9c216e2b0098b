"""Pooling on the DESIGN.md pooling set, every backend that has the kernel, PyTorch as baseline."""

import pytest

import fastconv as fc
from fastconv.bench import POOL_LAYERS
from fastconv.backends import get_backend

from conftest import torch_or_skip

# A few calls before the timing: the first loads Numba's compiled kernels from its
# cache and starts the thread pools, and pytest-benchmark sizes its rounds from it
# (Numba's first pooling layer ran 5 or 6 rounds instead of a thousand).
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=10)

KERNEL = {"max": "maxpool2d_fwd", "avg": "avgpool2d_fwd", "global": "adaptive_avgpool2d_fwd"}
CASES = [pytest.param(layer, backend, id=f"{layer.name}-{backend}")
         for layer in POOL_LAYERS for backend in fc.available_backends()
         if hasattr(get_backend(backend), KERNEL[layer.kind])]


def _op(module, kind):
    return {"max": module.max_pool2d, "avg": module.avg_pool2d,
            "global": module.adaptive_avg_pool2d}[kind]


@pytest.mark.parametrize("layer,backend", CASES)
def test_pool(benchmark, layer, backend):
    benchmark.group = layer.name
    y = benchmark(_op(fc, layer.kind), layer.array(), **layer.kwargs, backend=backend)
    assert y.shape[:2] == layer.shape[:2]


@pytest.mark.parametrize("layer", [pytest.param(p, id=p.name) for p in POOL_LAYERS])
def test_pool_torch(benchmark, layer):
    torch = torch_or_skip()
    benchmark.group = layer.name
    with torch.no_grad():
        benchmark(_op(torch.nn.functional, layer.kind), torch.from_numpy(layer.array()),
                  **layer.kwargs)
