"""Where the host time of CUDA backend calls goes, for tuning its per-call overhead on a
real GPU: the cost of numba's primitives (allocation, a small copy, kernel launches
with few and many arguments, by numba and by ``_run``) and a cProfile of convolution
calls on device arrays.

    python bench/gpu_profile.py [calls]
"""

import cProfile
import pstats
import sys
import time

import numpy as np
from numba import cuda

import fastconv as fc
from fastconv._cuda_kernels import _run


@cuda.jit
def _touch(a, b, c, d, e):
    if cuda.grid(1) == 0:
        a[0] = b[0] + c[0] + d[0] + e[0]


@cuda.jit
def _touch_many(a, b, c, d, e, f, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12):
    if cuda.grid(1) == 0:
        a[0] = b[0] + c[0] + d[0] + e[0] + f[0] + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 \
            + s10 + s11 + s12


def _per_call(fn, calls):
    fn()
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def primitives(calls):
    small = np.zeros(512, np.float32)
    arrays = [cuda.to_device(small) for _ in range(6)]
    timings = [
        ("device_array(512 floats)", lambda: cuda.device_array(512, np.float32)),
        ("device_array(1M floats)", lambda: cuda.device_array(1 << 20, np.float32)),
        ("to_device(512 floats)", lambda: cuda.to_device(small)),
        ("launch, 5 arrays", lambda: _touch[1, 32](*arrays[:5])),
        ("launch, 6 arrays + 12 ints", lambda: _touch_many[1, 32](*arrays, *range(12))),
        ("the same through _run", lambda: _run(_touch_many, 1, 32, *arrays, *range(12))),
        ("reshape of a device array", lambda: arrays[0].reshape(512)),
    ]
    for name, fn in timings:
        print(f"{name:<30}{_per_call(fn, calls):8.1f} us")


def convolutions(calls):
    rng = np.random.default_rng(0)
    x = cuda.to_device(rng.standard_normal((1, 512, 7, 7)).astype(np.float32))
    w = cuda.to_device(rng.standard_normal((512, 512, 3, 3)).astype(np.float32))
    for algorithm in ("im2col", "direct"):
        us = _per_call(lambda: fc.conv2d(x, w, padding=1, algorithm=algorithm), calls)
        print(f"conv2d 512->512 at 7x7, {algorithm}: {us:.0f} us per call, back to back")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        fc.conv2d(x, w, padding=1, algorithm="im2col")
    cuda.synchronize()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    primitives(n)
    convolutions(n)
