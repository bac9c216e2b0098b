"""The data gradient alone against PyTorch's grad_input, on the 3x3 stride-1 layers of
DESIGN.md.

    python bench/data_gradient.py [--pause SECONDS] [--rounds N]

Times each compiled backend's data-gradient kernels (``conv2d_bwd_data_<algorithm>``
for im2col, direct and the three Winograd tiles) and PyTorch's ``convolution_backward`` asked
for grad_input only, in one process at the same thread count, best of interleaved
rounds (``fastconv.bench.best_times``; ``--pause 0`` times them back to back, warm).
Prints each ratio ``torch time / fastconv time`` and, per backend, the geometric mean
over the layers of the algorithm that ``auto`` takes and of the best one.
"""

import argparse
import math

import numpy as np

from fastconv import backends, select
from fastconv.bench import CONV_LAYERS, best_times
from fastconv.shapes import conv2d_geometry

ALGORITHMS = ("im2col", "direct", "winograd2", "winograd4", "winograd6")


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(pause, rounds):
    import torch

    n_threads = backends.get_num_threads()
    torch.set_num_threads(n_threads)
    names = [b for b in ("cython", "numba") if b in backends.available_backends()]
    layers = [c for c in CONV_LAYERS if c.kernel == (3, 3) and c.stride == 1]
    auto, best = {b: [] for b in names}, {b: [] for b in names}
    print(f"data gradient, {n_threads} threads, best of {rounds} rounds {pause} s apart; "
          f"ratio = torch time / fastconv time")
    for layer in layers:
        x, w = layer.arrays()
        geometry = conv2d_geometry(x, w, None, layer.stride, layer.padding, 1, 1)[3]
        dy = np.random.default_rng(1).standard_normal(
            (layer.n, layer.c_out, geometry.oh, geometry.ow)).astype(np.float32)
        xt, wt, dyt = (torch.from_numpy(a) for a in (x, w, dy))
        fns = [lambda: torch.ops.aten.convolution_backward(
            dyt, xt, wt, [layer.c_out], [1, 1], list(layer.padding), [1, 1], False, [0, 0], 1,
            [True, False, False])]
        for name in names:
            module = backends.get_backend(name)
            for algo in ALGORITHMS:
                kernel, dx = getattr(module, f"conv2d_bwd_data_{algo}"), np.empty_like(x)
                fns.append(lambda k=kernel, dx=dx: k(dy, w, dx, 3, 3, 1, 1, *layer.padding, 1, 1,
                                                     1, n_threads))
        times = best_times(fns, rounds, pause=pause)
        row = f"{layer.name:<22} torch {times[0] * 1e3:7.2f} ms"
        for i, name in enumerate(names):
            per = len(ALGORITHMS)
            ratios = dict(zip(ALGORITHMS, (times[0] / t for t in times[1 + per * i:1 + per * (i + 1)])))
            chosen = select.auto_algorithm(geometry, select.implemented(backends.get_backend(name)),
                                           name)
            auto[name].append(ratios[chosen])
            best[name].append(max(ratios.values()))
            row += f"  {name} " + " ".join(f"{a}:{r:.2f}" for a, r in ratios.items())
        print(row, flush=True)
    for name in names:
        print(f"{name}: geometric mean, auto's algorithm {geometric_mean(auto[name]):.3f}, "
              f"best per layer {geometric_mean(best[name]):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pause", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    main(args.pause, args.rounds)
