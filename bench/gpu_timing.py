"""CUDA backend timings on a real GPU: convolution forward and backward on the DESIGN.md
layer set with each algorithm, and batch-1 inference of models moved to the GPU,
against PyTorch on the same GPU when a CUDA build of torch is installed (TF32 off, so
both compute in float32).

    python bench/gpu_timing.py [--smoke] [--layers NAME ...] [--models NAME ...]
                               [--tiles BM,BN,BK,TM,TN ...]

Times are of fastconv's functional calls on device arrays (their Python work
included), synchronised after. ``--tiles`` also times the implicit-GEMM kernels
with other tile shapes; ``--models`` with no name skips the models. ``--smoke``
runs one tiny layer, for a check of the script itself in numba's simulator.
"""

import os
import sys
import time

import numpy as np
from numba import cuda

import fastconv as fc
from fastconv.bench import CONV_LAYERS, _layer
from fastconv.shapes import conv2d_geometry, gflop


def _best(fn, rounds=5):
    fn()
    cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _torch():
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _conv_times(layer, algorithm):
    """Forward and backward (both gradients) of fastconv on device arrays."""
    x, w = layer.arrays()
    kw = dict(layer.kwargs(), algorithm=algorithm)
    dx, dw = cuda.to_device(x), cuda.to_device(w)
    dy = cuda.to_device(np.ones(fc.conv2d(dx, dw, **kw).shape, np.float32))
    return (_best(lambda: fc.conv2d(dx, dw, **kw)),
            _best(lambda: fc.conv2d_backward(dy, dx, dw, **kw)))


def _torch_conv_times(torch, layer):
    x, w = layer.arrays()
    xt, wt = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
    kw = layer.kwargs()
    dyt = torch.ones_like(torch.nn.functional.conv2d(xt, wt, **kw))
    return (_best(lambda: torch.nn.functional.conv2d(xt, wt, **kw)),
            _best(lambda: torch.ops.aten.convolution_backward(
                dyt, xt, wt, None, [layer.stride] * 2, list(layer.padding), [1, 1], False,
                [0, 0], 1, [True, True, False])))


def _ms(seconds):
    return f"{seconds * 1e3:9.3f}" if seconds else f"{'-':>9}"


def _ratio(theirs, ours):
    return f"{theirs / ours:7.2f}" if theirs else f"{'-':>7}"


def layers(torch, selected, tiles):
    """Per layer: each algorithm's forward and backward, PyTorch's, and the ratio of
    PyTorch's time to the faster algorithm's (> 1: fastconv faster)."""
    print(f"{'layer':<24}{'direct':>9}{'im2col':>9}{'torch':>9}{'ratio':>7}"
          f"{'bwd dir':>9}{'bwd i2c':>9}{'torch':>9}{'ratio':>7}  (ms; GFLOP/s of the best)")
    for layer in selected:
        (fd, bd), (fi, bi) = _conv_times(layer, "direct"), _conv_times(layer, "im2col")
        tf, tb = _torch_conv_times(torch, layer) if torch else (None, None)
        g = conv2d_geometry(*layer.arrays(), None, layer.stride, layer.padding, 1, 1)[3]
        f, b = min(fd, fi), min(bd, bi)
        print(f"{layer.name:<24}{_ms(fd)}{_ms(fi)}{_ms(tf)}{_ratio(tf, f)}"
              f"{_ms(bd)}{_ms(bi)}{_ms(tb)}{_ratio(tb, b)}  ({gflop(g) / f:.0f})", flush=True)
        for tile in tiles:
            os.environ["FASTCONV_CUDA_TILE"] = tile
            fi, bi = _conv_times(layer, "im2col")
            print(f"    tile {tile:<18} im2col fwd {fi * 1e3:8.3f} ms  bwd {bi * 1e3:8.3f} ms",
                  flush=True)
        os.environ.pop("FASTCONV_CUDA_TILE", None)


def models(torch, names):
    """Batch-1 inference of models moved to the GPU (``Layer.to("cuda")``), against the
    same weights in PyTorch."""
    from fastconv.models.torch_reference import build

    rng = np.random.default_rng(0)
    for name in names:
        size = 299 if name == "inception_v3" else 224
        image = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        model = getattr(fc.models, name)().eval()
        reference = build(name).eval() if torch else None
        if reference is not None:
            model.load_state_dict({k: v.numpy() for k, v in reference.state_dict().items()})
        model.to("cuda")
        on_device = cuda.to_device(image)
        ours = _best(lambda: model(on_device), rounds=3)
        line = f"{name} batch-1 inference on the device: {ours * 1e3:.2f} ms"
        if reference is not None:
            reference = reference.cuda()
            xt = torch.from_numpy(image).cuda()
            with torch.inference_mode():
                theirs = _best(lambda: reference(xt), rounds=3)
                expected = reference(xt).cpu().numpy()
            got = model(on_device).copy_to_host()
            err = np.abs(got - expected).max() / np.abs(expected).max()
            line += f"; torch {theirs * 1e3:.2f} ms, ratio {theirs / ours:.3f}, max error {err:.1e}"
        print(line, flush=True)


def main(smoke=False, patterns=(), model_names=("resnet50",), tiles=()):
    torch = _torch()
    device = getattr(cuda, "get_current_device", None)      # absent in the simulator
    name = device().name if device else "numba's CUDA simulator"
    name = name.decode() if isinstance(name, bytes) else name
    print(f"GPU {name}; torch with CUDA: {'yes' if torch else 'no'}; float32; times are "
          f"the best of 5 calls on device arrays, synchronised")
    selected = [_layer("smoke", 1, 3, 4, 6, 3, 1, 1)] if smoke else \
        [layer for layer in CONV_LAYERS if not patterns or any(p in layer.name for p in patterns)]
    layers(torch, selected, tiles)
    if not smoke:
        models(torch, model_names)


def _values(args, flag):
    """The words after ``flag`` up to the next flag."""
    if flag not in args:
        return None
    rest = args[args.index(flag) + 1:]
    stop = next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))
    return rest[:stop]


if __name__ == "__main__":
    args = sys.argv[1:]
    model_names = _values(args, "--models")
    main(smoke="--smoke" in args, patterns=_values(args, "--layers") or (),
         model_names=("resnet50",) if model_names is None else model_names,
         tiles=_values(args, "--tiles") or ())
