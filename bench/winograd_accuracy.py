"""Float32 error of each Winograd tile size on the 3x3 stride-1 layers of DESIGN.md.

    python bench/winograd_accuracy.py [backend]

Prints max|y - y_ref| / max|y_ref| of the forward pass and of the data gradient,
against the float64 im2col result of the NumPy reference, for im2col and F(2x2),
F(4x4), F(6x6). Inputs are standard normal, weights scaled by 1/sqrt(fan_in).
"""

import sys

import numpy as np

import fastconv as fc
from fastconv.bench import CONV_LAYERS


def main(backend="cython"):
    algos = ["im2col", "winograd2", "winograd4", "winograd6"]
    print(f"float32 relative error, backend {backend}: forward / data gradient")
    print(f"{'layer':<24}" + "".join(f"{a:>22}" for a in algos))
    for layer in CONV_LAYERS:
        if layer.kernel != (3, 3) or layer.stride != 1:
            continue
        x, w = layer.arrays(np.float64, seed=1)
        x = x[:1]
        kw = layer.kwargs()
        ref = fc.conv2d(x, w, **kw, algorithm="im2col", backend="numpy")
        dy = np.random.default_rng(2).standard_normal(ref.shape)
        gx_ref = fc.conv2d_backward(dy, x, w, **kw, algorithm="im2col", backend="numpy")[0]
        row = f"{layer.name:<24}"
        for algo in algos:
            x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
            y = fc.conv2d(x32, w32, **kw, algorithm=algo, backend=backend)
            gx = fc.conv2d_backward(dy32, x32, w32, **kw, algorithm=algo, backend=backend)[0]
            err = [np.abs(a - b).max() / np.abs(b).max() for a, b in ((y, ref), (gx, gx_ref))]
            row += f"{err[0]:11.1e} /{err[1]:8.1e}"
        print(row, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
