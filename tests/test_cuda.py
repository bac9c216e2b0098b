"""The optional CUDA backend: absent without a GPU, and its kernels checked in numba's
CUDA simulator (tests/cuda_checks.py, in a subprocess, since the simulator must be
chosen before numba is imported)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv as fc

CHECKS = Path(__file__).with_name("cuda_checks.py")


def test_cuda_is_listed_only_with_a_gpu_and_refused_with_the_reason_otherwise():
    from numba import cuda

    assert ("cuda" in fc.available_backends()) == cuda.is_available()
    if not cuda.is_available():
        with pytest.raises(RuntimeError, match="finds no CUDA GPU.*NVIDIA GPU"):
            fc.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 2, 2), np.float32),
                      backend="cuda")
        assert "cuda" not in fc.available_backends()
        with pytest.raises(RuntimeError, match="finds no CUDA GPU"):
            fc.models.lenet5().to("cuda")


def test_cuda_kernels_match_the_reference_in_numbas_simulator(tmp_path):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", FASTCONV_CUDA_THREADS="4",
               FASTCONV_CUDA_TILE="8,8,4,2,2")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary


def test_device_memory_blocks_are_sized_in_powers_of_two_and_handed_out_again():
    from fastconv._cuda_kernels import BlockPool

    made = []
    pool = BlockPool(lambda size: made.append(size) or bytearray(size))
    assert [BlockPool.size_class(n) for n in (1, 512, 513, 4096, 4097)] == \
        [512, 512, 1024, 4096, 8192]
    first, free = pool.take(3000)
    assert len(first) == 4096 and made == [4096]
    second, _ = pool.take(4096)
    assert second is not first and made == [4096, 4096]
    free.append(first)                      # what the array's finaliser does
    again, _ = pool.take(2049)
    assert again is first and made == [4096, 4096]
    pool.clear()
    assert pool.take(4000)[0] is not first and made == [4096, 4096, 4096]
