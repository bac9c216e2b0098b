"""The ``fastconv`` command line: ``fastconv bench`` and ``fastconv info``."""

import argparse
import fnmatch
import math
import os
import platform
import sys

import numpy as np

from . import __version__, backends, bench


def _fmt_ratio(ratio):
    return f"{ratio:8.2f}" if ratio is not None else "       -"


def _selected(layers, patterns):
    if not patterns:
        return layers
    return [layer for layer in layers
            if any(fnmatch.fnmatch(layer.name, p) or p in layer.name for p in patterns)]


def cmd_bench(args):
    if args.threads:
        backends.set_num_threads(args.threads)
    n_threads = backends.get_num_threads()
    names = args.backend or backends.available_backends()
    for name in names:
        backends.get_backend(name)
    repeats, min_time = (3, 0.05) if args.quick else (args.repeats, 0.3)
    conv_layers = _selected(bench.CONV_LAYERS, args.layers)
    pool_layers = _selected(bench.POOL_LAYERS, args.layers)
    mode = "auto algorithm only" if args.quick else "every algorithm"
    print(f"fastconv {__version__} bench: {n_threads} threads, float32, forward, {mode}; "
          f"best of >= {repeats} runs; ratio = torch time / fastconv time (> 1: fastconv faster)")
    best = {}
    if conv_layers:
        print(f"\n{'layer':<24} {'backend':<8} {'algorithm':<10} {'time ms':>9} {'GFLOP/s':>8} "
              f"{'vs torch':>8}")
    for layer in conv_layers:
        rows = bench.run_conv(layer, names, all_algorithms=not args.quick, repeats=repeats,
                              min_time=min_time, n_threads=n_threads)
        for i, (backend, algo, seconds, gflops, ratio) in enumerate(rows):
            label = layer.name if i == 0 else ""
            print(f"{label:<24} {backend:<8} {algo:<10} {seconds * 1e3:9.3f} {gflops:8.1f} "
                  f"{_fmt_ratio(ratio)}", flush=True)
            if ratio is not None and backend != "torch":
                best[backend, layer.name] = max(best.get((backend, layer.name), 0.0), ratio)
    if pool_layers:
        print(f"\n{'pooling':<24} {'backend':<8} {'':<10} {'time ms':>9} {'GB/s':>8} {'vs torch':>8}")
    for layer in pool_layers:
        for i, (backend, seconds, gbs, ratio) in enumerate(
                bench.run_pool(layer, names, repeats, min_time, n_threads)):
            label = layer.name if i == 0 else ""
            print(f"{label:<24} {backend:<8} {'':<10} {seconds * 1e3:9.3f} {gbs:8.1f} "
                  f"{_fmt_ratio(ratio)}", flush=True)
    if best:
        print("\nconvolution, best algorithm per layer: geometric mean of the ratio to torch")
        for name in names:
            ratios = [r for (b, _), r in best.items() if b == name]
            if ratios:
                gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
                print(f"  {name:<8} {gmean:6.3f}  (min {min(ratios):.3f}, {len(ratios)} layers)")
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_bench = sub.add_parser("bench", help="time the DESIGN.md layer set against PyTorch")
    p_bench.add_argument("--quick", action="store_true",
                         help="the automatic algorithm only, three runs each (under a minute)")
    p_bench.add_argument("--layers", nargs="+", metavar="PATTERN",
                         help="only layers whose name matches (glob or substring)")
    p_bench.add_argument("--backend", nargs="+", choices=sorted(backends._MODULES),
                         help="backends to time (default: every one that imports)")
    p_bench.add_argument("--threads", type=int, help="threads for fastconv, BLAS and torch")
    p_bench.add_argument("--repeats", type=int, default=5, help="runs per measurement")
    p_bench.set_defaults(func=cmd_bench)
    p_info = sub.add_parser("info", help="version, backends, threads, BLAS and CPU features")
    p_info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
