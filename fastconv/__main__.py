"""The ``fastconv`` command line: ``fastconv bench``, ``fastconv summary MODEL``,
``fastconv train lenet5``, ``fastconv info``."""

import argparse
import fnmatch
import math
import os
import platform
import sys

import numpy as np

from . import __version__, backends, bench, models

# the backbones that have a PyTorch counterpart to time against
BENCH_MODELS = [name for name in models.__all__ if name != "lenet5"]


def _fmt_ratio(ratio):
    return f"{ratio:8.2f}" if ratio is not None else "       -"


def _selected(layers, patterns):
    if not patterns:
        return layers
    return [layer for layer in layers
            if any(fnmatch.fnmatch(layer.name, p) or p in layer.name for p in patterns)]


def _gmean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _conv_section(title, layers, names, args, n_threads, backward):
    """Time every layer; returns {(backend, layer): best ratio to torch and best seconds}."""
    print(f"\n{title:<24} {'backend':<8} {'algorithm':<10} {'time ms':>9} {'GFLOP/s':>8} "
          f"{'vs torch':>8}")
    best = {}
    for layer in layers:
        rows = bench.run_conv(layer, names, all_algorithms=not args.quick, rounds=args.rounds,
                              n_threads=n_threads, backward=backward, pause=args.pause)
        for i, (backend, algo, seconds, gflops, ratio) in enumerate(rows):
            label = layer.name if i == 0 else ""
            print(f"{label:<24} {backend:<8} {algo:<10} {seconds * 1e3:9.3f} {gflops:8.1f} "
                  f"{_fmt_ratio(ratio)}", flush=True)
            if backend != "torch":
                old = best.get((backend, layer.name), (0.0, float("inf")))
                best[backend, layer.name] = (max(old[0], ratio or 0.0), min(old[1], seconds))
    return best


def _summary(title, best, names):
    print(f"\n{title}: best algorithm per layer")
    for name in names:
        ratios = [r for (b, _), (r, _) in best.items() if b == name and r > 0]
        if ratios:
            print(f"  {name:<8} geometric mean of the ratio to torch {_gmean(ratios):6.3f}  "
                  f"(min {min(ratios):.3f}, {len(ratios)} layers)")
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            spread = [max(best[first, layer][1], best[second, layer][1])
                      / min(best[first, layer][1], best[second, layer][1])
                      for (b, layer) in best if b == first and (second, layer) in best]
            if spread:
                print(f"  {first} and {second}: at most {max(spread):.2f}x apart")


def _rate_section(title, unit, layers, run):
    """Print ``run(layer)``'s rows (backend, seconds, rate, ratio) for each layer, then
    each backend's geometric mean of the ratio to torch."""
    print(f"\n{title:<24} {'backend':<8} {'':<10} {'time ms':>9} {unit:>8} {'vs torch':>8}")
    ratios = {}
    for layer in layers:
        for i, (backend, seconds, rate, ratio) in enumerate(run(layer)):
            label = layer.name if i == 0 else ""
            print(f"{label:<24} {backend:<8} {'':<10} {seconds * 1e3:9.3f} {rate:8.1f} "
                  f"{_fmt_ratio(ratio)}", flush=True)
            if ratio and backend != "torch":
                ratios.setdefault(backend, []).append(ratio)
    for backend, values in ratios.items():
        print(f"  {backend:<8} geometric mean of the ratio to torch {_gmean(values):6.3f}")


def cmd_bench(args):
    if args.threads:
        backends.set_num_threads(args.threads)
    n_threads = backends.get_num_threads()
    # The NumPy reference is the oracle, not a contender; its BLAS threads also
    # keep spinning after each call and slow whatever is timed next, so it is
    # timed only when asked for.
    names = args.backend or [b for b in backends.available_backends() if b != "numpy"]
    for name in names:
        backends.get_backend(name)
    if args.quick:
        args.rounds = 3
    if args.model:
        return _bench_model(args, names, n_threads)
    conv_layers = _selected(bench.CONV_LAYERS, args.layers)
    pool_layers = _selected(bench.POOL_LAYERS, args.layers)
    mode = "the auto algorithm" if args.quick else "every algorithm"
    print(f"fastconv {__version__} bench: {n_threads} threads, float32, {mode}; best of "
          f"{args.rounds} interleaved rounds, {_spacing(args.pause)}; ratio = torch time / "
          f"fastconv time (> 1: fastconv faster)")
    passes = ["forward", "backward"] if args.passes == "both" else [args.passes]
    results = {}
    for direction in passes if conv_layers else []:
        title = "forward" if direction == "forward" else "backward (grad_x,w,b)"
        results[title] = _conv_section(title, conv_layers, names, args, n_threads,
                                       direction == "backward")
    grouped_layers = _selected(bench.GROUPED_LAYERS, args.layers)
    for direction in passes if grouped_layers else []:
        title = f"grouped {direction}" if direction == "forward" else "grouped backward"
        results[title] = _conv_section(title, grouped_layers, names, args, n_threads,
                                       direction == "backward")
    transpose_layers = _selected(bench.TRANSPOSE_LAYERS, args.layers)
    for direction in passes if transpose_layers else []:
        _rate_section(f"transposed conv {direction}", "GFLOP/s", transpose_layers,
                      lambda layer: bench.run_transpose(layer, names, args.rounds, n_threads,
                                                        direction == "backward", args.pause))
    for direction in passes if pool_layers else []:
        _rate_section("pooling" if direction == "forward" else "pooling backward", "GB/s",
                      pool_layers, lambda layer: bench.run_pool(layer, names, args.rounds,
                                                                n_threads,
                                                                direction == "backward",
                                                                args.pause))
    for title, best in results.items():
        _summary(title, best, names)
    return 0


def _seconds(text):
    """A --pause value: seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, got {text!r}")
    return value


def _spacing(pause):
    return f"runs {pause:g} s apart" if pause > 0 else "runs back to back"


def _bench_model(args, names, n_threads):
    print(f"fastconv {__version__} bench: {args.model} inference (eval mode), batch "
          f"{args.batch}, {'x'.join(map(str, bench.model_input_shape(args.model)[1:]))} float32, {n_threads} threads; best of "
          f"{args.rounds} interleaved rounds, {_spacing(args.pause)}; ratio = torch time / "
          f"fastconv time")
    print(f"\n{'backend':<8} {'time ms':>10} {'vs torch':>8} {'max |error| / max |torch|':>27}")
    for backend, seconds, ratio, error in bench.run_model(args.model, names, args.rounds,
                                                          n_threads, args.batch, args.pause):
        err = f"{error:27.1e}" if error is not None else f"{'-':>27}"
        print(f"{backend:<8} {seconds * 1e3:10.1f} {_fmt_ratio(ratio)} {err}", flush=True)
    return 0


def cmd_summary(args):
    model = getattr(models, args.model)()
    shape = bench.model_input_shape(args.model)
    print(f"{args.model}: output shapes for one {shape[1]}x{shape[2]} image (batch axis "
          f"left out), multiply-adds per image")
    print(model.summary(shape))
    return 0


def _cpu_features():
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return "unknown"
    wanted = ("SSE42", "AVX", "F16C", "FMA3", "AVX2", "AVX512F", "AVX512BW", "AVX512VL",
              "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "ASIMD", "SVE")
    return " ".join(f for f in wanted if __cpu_features__.get(f))


def cmd_info(args):
    from threadpoolctl import threadpool_info

    print(f"fastconv {__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"numpy    {np.__version__}")
    print(f"machine  {platform.machine()}, {os.cpu_count()} CPUs; features: {_cpu_features()}")
    print(f"backends {', '.join(backends.available_backends())} "
          f"(default: {backends.default_backend()})")
    for name, error in sorted(backends._failed.items()):
        print(f"  {name} unavailable: {error}")
    n = backends.get_num_threads()
    print(f"threads  {n} (FASTCONV_NUM_THREADS / fastconv.set_num_threads)")
    if "cython" in backends.available_backends():
        ran = backends.get_backend("cython").openmp_threads(n)
        print(f"openmp   a parallel region of {n} threads ran on {ran} "
              f"(1 means the kernels were built without OpenMP)")
    kernel_blas, shared = backends._find_kernel_blas()
    if kernel_blas is not None:
        how = ("shared with NumPy, set to one thread around each kernel" if shared
               else "a library of its own, kept at one thread")
        print(f"kernels' BLAS {os.path.basename(kernel_blas.filepath)}: {how}")
    for pool in threadpool_info():
        print(f"{pool['user_api']:<8} {pool['internal_api'] if pool['internal_api'] != pool['user_api'] else ''} {pool.get('version') or ''} "
              f"{pool.get('architecture') or ''}, {pool['num_threads']} threads "
              f"({os.path.basename(pool['filepath'])})")
    try:
        import torch
        print(f"torch    {torch.__version__} (used as the benchmark baseline)")
    except ImportError:
        print("torch    not installed (benchmarks run without a baseline)")
    return 0


def cmd_train(args):
    from .train import train_lenet5_digits

    if args.threads:
        backends.set_num_threads(args.threads)
    print(f"training lenet5 on scikit-learn's handwritten digits (1,797 images, 80/20 split), "
          f"{backends.get_num_threads()} threads")
    history, accuracy = train_lenet5_digits(epochs=args.epochs, seed=args.seed,
                                            progress=not args.no_progress)
    seconds = sum(r["seconds"] for r in history)
    print(f"test accuracy {accuracy:.4f} after {len(history)} epochs; "
          f"{seconds / len(history):.2f} s per epoch, {seconds:.1f} s in all")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_bench = sub.add_parser("bench", help="time the DESIGN.md layer set against PyTorch")
    p_bench.add_argument("--quick", action="store_true",
                         help="the automatic algorithm only, three rounds (under a minute)")
    p_bench.add_argument("--layers", nargs="+", metavar="PATTERN",
                         help="only layers whose name matches (glob or substring)")
    p_bench.add_argument("--backend", nargs="+", choices=sorted(backends._MODULES),
                         help="backends to time (default: every compiled one that imports; "
                              "add numpy to time the reference too)")
    p_bench.add_argument("--threads", type=int, help="threads for fastconv, BLAS and torch")
    p_bench.add_argument("--rounds", type=int, default=5,
                         help="interleaved timing rounds (the best is kept)")
    p_bench.add_argument("--pass", dest="passes", choices=["forward", "backward", "both"],
                         default="both", help="which convolution passes to time")
    p_bench.add_argument("--model", choices=BENCH_MODELS,
                         help="time end-to-end inference of a backbone instead of the layers")
    p_bench.add_argument("--batch", type=int, default=1, help="batch size for --model")
    p_bench.add_argument("--pause", type=_seconds, default=0.1, metavar="SECONDS",
                         help="rest before each timed run, so that the last run's thread "
                              "pools sleep (default 0.1; 0: back to back, warm)")
    p_bench.set_defaults(func=cmd_bench)
    p_summary = sub.add_parser("summary", help="a backbone's layers, output shapes, "
                                               "parameters and multiply-adds")
    p_summary.add_argument("model", choices=models.__all__)
    p_summary.set_defaults(func=cmd_summary)
    p_train = sub.add_parser("train", help="train a model on real data (lenet5: digits)")
    p_train.add_argument("model", choices=["lenet5"])
    p_train.add_argument("--epochs", type=int, default=12)
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--threads", type=int)
    p_train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_train.set_defaults(func=cmd_train)
    p_info = sub.add_parser("info", help="version, backends, threads, BLAS and CPU features")
    p_info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
