#!/usr/bin/env bash
# The CUDA backend on a real GPU: its kernel checks, the test suite with the cuda
# backend among the parametrised ones, and timings against PyTorch on the same GPU.
# Run from the repository root with fastconv (and, for the comparison, a CUDA build
# of torch) already installed; nothing is fetched from the network.
set -u
cd "$(dirname "$0")/.."
status=0
python -c "from numba import cuda; d = cuda.get_current_device(); print('GPU:', d.name.decode() if isinstance(d.name, bytes) else d.name, 'compute capability', d.compute_capability)" || exit 1
python -m pytest -q -p no:cacheprovider tests/cuda_checks.py || status=1
python -m pytest -q -p no:cacheprovider tests/test_conv.py tests/test_pool.py tests/test_torch_parity.py -k cuda || status=1
python bench/gpu_timing.py || status=1
exit $status
