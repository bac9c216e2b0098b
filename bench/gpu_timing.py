"""CUDA backend timings on a real GPU: convolution forward and backward on the DESIGN.md
layer set, and ResNet-50 inference, against PyTorch on the same GPU when a CUDA build
of torch is installed (TF32 off, so both compute in float32).

    python bench/gpu_timing.py [--smoke] [--layers NAME ...] [--no-model]

Kernel times exclude the host-device copies (device arrays in, synchronised after);
"with copies" is what ``backend="cuda"`` costs a NumPy caller. ``--smoke`` runs one
tiny layer, for a check of the script itself in numba's simulator.
"""

import sys
import time

import numpy as np
from numba import cuda

import fastconv as fc
from fastconv import _cuda_kernels as K
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


def _kernel_launches(layer):
    """Forward, data-gradient and weight-gradient launches on device arrays."""
    x, w = layer.arrays()
    g = conv2d_geometry(x, w, None, layer.stride, layer.padding, 1, 1)[3]
    args = (g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, 1)
    t = K.threads_per_block()
    y = np.empty(g.y_shape, np.float32)
    dx_, dw_, dy_, b_ = (cuda.to_device(a) for a in (x, w, np.ones(g.y_shape, np.float32),
                                                    np.zeros(g.c_out, np.float32)))
    zero = cuda.to_device(np.zeros(1, np.float32))
    out_y, out_x, out_w = (cuda.device_array(s, np.float32) for s in (y.shape, x.shape, w.shape))

    def blocks(n):
        return (n + t - 1) // t

    fwd = lambda: K._conv_fwd[blocks(y.size), t](dx_, dw_, b_, out_y, *args)  # noqa: E731
    bwd = lambda: (K._conv_bwd_data[blocks(x.size), t](dy_, dw_, zero, out_x, *args),  # noqa: E731
                   K._conv_bwd_weight[blocks(w.size), t](dy_, dx_, zero, out_w, *args))
    return x, w, g, fwd, bwd


def main(smoke=False, patterns=(), model=True):
    torch = _torch()
    device = getattr(cuda, "get_current_device", None)      # absent in the simulator
    name = device().name if device else "numba's CUDA simulator"
    name = name.decode() if isinstance(name, bytes) else name
    print(f"GPU {name}; torch with CUDA: {'yes' if torch else 'no'}; float32")
    print(f"{'layer':<24}{'fwd ms':>9}{'w/ copies':>10}{'torch':>9}{'ratio':>7}"
          f"{'bwd ms':>9}{'torch':>9}{'ratio':>7}")
    layers = [_layer("smoke", 1, 3, 4, 6, 3, 1, 1)] if smoke else \
        [layer for layer in CONV_LAYERS if not patterns or any(p in layer.name for p in patterns)]
    for layer in layers:
        x, w, g, fwd, bwd = _kernel_launches(layer)
        f, b = _best(fwd), _best(bwd)
        copies = _best(lambda: fc.conv2d(x, w, **layer.kwargs(), backend="cuda"))
        tf = tb = None
        if torch is not None:
            xt, wt = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
            dyt = torch.ones(g.y_shape, device="cuda")
            kw = layer.kwargs()
            tf = _best(lambda: torch.nn.functional.conv2d(xt, wt, **kw))
            tb = _best(lambda: torch.ops.aten.convolution_backward(
                dyt, xt, wt, None, [layer.stride] * 2, list(layer.padding), [1, 1], False,
                [0, 0], 1, [True, True, False]))
        ratio = (lambda theirs, ours: f"{theirs / ours:7.2f}" if theirs else f"{'-':>7}")
        ms = (lambda s: f"{s * 1e3:9.3f}" if s else f"{'-':>9}")
        print(f"{layer.name:<24}{ms(f)}{copies * 1e3:10.3f}{ms(tf)}{ratio(tf, f)}"
              f"{ms(b)}{ms(tb)}{ratio(tb, b)}   ({gflop(g) / f:.0f} GFLOP/s fwd)", flush=True)
    if smoke or not model:
        return
    model = fc.models.resnet50().eval()
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    previous = fc.set_backend("cuda")
    try:
        ours = _best(lambda: model(image), rounds=3)
    finally:
        fc.set_backend(previous)
    line = f"resnet50 batch-1 inference, backend='cuda' (activations copied per layer): {ours * 1e3:.1f} ms"
    if torch is not None:
        from fastconv.models.torch_reference import build

        reference = build("resnet50").eval().cuda()
        xt = torch.from_numpy(image).cuda()
        with torch.inference_mode():
            theirs = _best(lambda: reference(xt), rounds=3)
        line += f"; torch {theirs * 1e3:.1f} ms, ratio {theirs / ours:.3f}"
    print(line)


if __name__ == "__main__":
    args = sys.argv[1:]
    names = args[args.index("--layers") + 1:] if "--layers" in args else []
    main(smoke="--smoke" in args, patterns=[n for n in names if not n.startswith("--")],
         model="--no-model" not in args)
