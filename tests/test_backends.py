"""Backend registry, threads, algorithm selection, and what each backend exports."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import backends
from fastconv.select import ALGORITHMS, choose_algorithm, implemented
from fastconv.shapes import conv2d_geometry

REFERENCE_KERNELS = sorted(n for n in dir(backends.get_backend("numpy"))
                           if n.startswith(("conv2d_", "maxpool", "avgpool", "adaptive_"))
                           or n in ("im2col", "col2im"))


def test_numpy_backend_is_always_available():
    assert "numpy" in fc.available_backends()


def test_cython_kernels_are_compiled():
    """The extension must build with the package: a silent pure-Python fallback would hide it."""
    assert "cython" in fc.available_backends()
    from fastconv import _kernels
    assert _kernels.__file__.endswith((".so", ".pyd"))


@pytest.mark.parametrize("backend", fc.available_backends())
def test_backends_mirror_the_reference_names(backend):
    """Every kernel a backend exports has a reference twin with the same name and
    arguments, and every algorithm it claims has all three passes."""
    import inspect

    module = backends.get_backend(backend)
    reference = backends.get_backend("numpy")
    exported = [n for n in dir(module) if n in REFERENCE_KERNELS]
    assert {"im2col", "col2im"} <= set(exported)
    for name in exported:
        params = inspect.signature(getattr(reference, name)).parameters
        kernel = getattr(module, name)
        try:
            theirs = inspect.signature(kernel).parameters
        except ValueError:       # compiled functions without a signature
            continue
        assert len(theirs) == len(params), name
    for algo in fc.algorithms(backend):
        for direction in ("fwd", "bwd_data", "bwd_weight"):
            assert callable(getattr(module, f"conv2d_{direction}_{algo}"))


def test_numpy_reference_implements_every_algorithm():
    assert fc.algorithms("numpy") == list(ALGORITHMS)


def test_set_backend_and_environment(monkeypatch):
    try:
        fc.set_backend("cython")
        assert backends.default_backend() == "cython"
        fc.set_backend(None)
        monkeypatch.setenv("FASTCONV_BACKEND", "numpy")
        assert backends.default_backend() == "numpy"
        monkeypatch.setenv("FASTCONV_BACKEND", "nonsense")
        with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
            fc.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)))
    finally:
        fc.set_backend(None)


def test_missing_backend_is_a_runtime_error_saying_how_to_get_it(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "imaginary", "fastconv.backends.does_not_exist")
    monkeypatch.setitem(backends._HOW_TO_GET, "imaginary", "pip install imaginary")
    with pytest.raises(RuntimeError, match="not available here.*pip install imaginary"):
        fc.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)), backend="imaginary")
    assert "imaginary" not in fc.available_backends()


def test_threads_govern_blas():
    from threadpoolctl import threadpool_info

    before = fc.get_num_threads()
    try:
        fc.set_num_threads(1)
        assert fc.get_num_threads() == 1
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
    finally:
        fc.set_num_threads(before)


@pytest.mark.skipif("cython" not in fc.available_backends() and
                    "numba" not in fc.available_backends(), reason="no compiled backend here")
def test_the_kernels_blas_stays_single_threaded_when_it_is_a_library_of_its_own():
    from threadpoolctl import threadpool_info

    before = fc.get_num_threads()
    try:
        fc.set_num_threads(2)
        kernel_blas, shared = backends._find_kernel_blas()
        threads = {p["filepath"]: p["num_threads"] for p in threadpool_info()
                   if p["user_api"] == "blas"}
        if shared:          # NumPy's BLAS too: it follows set_num_threads
            assert all(n == 2 for n in threads.values())
        else:
            assert threads.pop(kernel_blas.filepath) == 1
            assert threads and all(n == 2 for n in threads.values())
            # limits changed behind fastconv's back are undone before a kernel calls BLAS
            from threadpoolctl import threadpool_limits

            x, w = np.ones((1, 2, 8, 8), np.float32), np.ones((3, 2, 3, 3), np.float32)
            with threadpool_limits(2, user_api="blas"):
                assert kernel_blas.num_threads == 2
                fc.conv2d(x, w, algorithm="im2col", backend=fc.available_backends()[1])
                assert kernel_blas.num_threads == 1
    finally:
        fc.set_num_threads(before)


def test_thread_count_from_environment(tmp_path):
    code = "import fastconv; print(fastconv.get_num_threads())"
    env = dict(os.environ, FASTCONV_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "1", out.stderr


def test_numba_kernel_loaded_from_the_cache_runs_first_in_a_process(tmp_path):
    """A cached kernel compiled without parallel=True that calls a parallel function
    does not start Numba's threads when it is loaded. While avgpool2d_fwd was such a
    kernel (with _plane_pool a parallel function of its own, now inlined into it), the
    third process, whose first Numba call is avgpool2d_fwd loaded from the cache,
    crashed once the second had compiled it against the first's cached _plane_pool."""
    setup = "import numpy as np, fastconv as fc; x = np.ones((1, 2, 5, 5), np.float32); "
    steps = [setup + "fc.max_pool2d(x, 3, 1, 1, backend='numba')",
             setup + "fc.avg_pool2d(x, 3, 1, 1, backend='numba')",
             setup + "from fastconv import _numba_kernels as k; y = np.empty_like(x); "
             "k.avgpool2d_fwd(x, y, 3, 3, 1, 1, 1, 1, 1, 1, True, 0, 2); "
             "print(y[0, 0, 2, 2], sum(k.avgpool2d_fwd.stats.cache_hits.values()))"]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
    for code in steps:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)
        assert out.returncode == 0, (code, out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["1.0", "1"]      # and the kernel came from the cache


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX's")
def test_a_forked_child_runs_numba_kernels_after_the_parent_listed_the_backends(tmp_path):
    """Listing the backends imports the Numba kernels but starts no thread pool: GNU
    OpenMP (Numba's threading layer here) aborts a child forked after its threads
    started."""
    code = ("import os, numpy as np, fastconv as fc; fc.available_backends(); pid = os.fork()\n"
            "if pid == 0:\n"
            "    x = np.ones((1, 2, 5, 5), np.float32)\n"
            "    os._exit(0 if fc.max_pool2d(x, 3, 1, 1, backend='numba')[0, 0, 2, 2] == 1 else 3)\n"
            "print(os.waitpid(pid, 0)[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "0", (out.stdout, out.stderr[-2000:])


def _geometry(kernel=3, stride=1, dilation=1, channels=8, size=16, batch=1):
    x = np.zeros((batch, channels, size, size))
    w = np.zeros((channels, channels, kernel, kernel))
    return conv2d_geometry(x, w, None, stride, 1, dilation, 1)[3]


def test_auto_picks_direct_only_for_tiny_convolutions():
    from fastconv.select import DIRECT_MAX_MACS

    tiny = _geometry(channels=3, size=8)
    large = _geometry(channels=64, size=56)
    assert tiny.macs <= DIRECT_MAX_MACS < large.macs
    algos = ("im2col", "direct")
    assert choose_algorithm(tiny, "auto", algos, "cython") == "direct"
    assert choose_algorithm(large, "auto", algos, "cython") == "im2col"


@pytest.mark.parametrize("groups,expected", [(64, "direct"), (32, "im2col"), (1, "winograd4")])
def test_auto_picks_direct_for_depthwise_layers_on_compiled_backends(groups, expected):
    x = np.zeros((1, 64, 56, 56))
    w = np.zeros((64, 64 // groups, 3, 3))
    g = conv2d_geometry(x, w, None, 1, 1, 1, groups)[3]
    for backend in ("cython", "numba"):
        assert choose_algorithm(g, "auto", ALGORITHMS, backend) == expected
    assert choose_algorithm(g, "auto", ALGORITHMS, "numpy") == "im2col"
    assert choose_algorithm(g, "auto", ("im2col", "direct"), "cython") == \
        ("direct" if expected == "direct" else "im2col")


@pytest.mark.parametrize("channels,size,kernel,stride,expected", [
    (64, 224, 3, 1, "winograd4"),     # VGG-16 conv1_2
    (256, 56, 3, 1, "winograd4"),     # VGG-16 conv3_2
    (512, 28, 3, 1, "winograd4"),     # VGG-16 conv4_2
    (64, 56, 3, 1, "winograd4"),      # ResNet-50 layer1.conv2
    (512, 14, 3, 1, "im2col"),        # VGG-16 conv5_2: too few tiles
    (16, 56, 3, 1, "im2col"),         # too few channels for the transforms
    (64, 56, 3, 2, "im2col"),         # strided
    (64, 56, 5, 1, "im2col"),         # not 3x3
    ((512, 4), 14, 3, 1, "winograd4"),  # VGG-16 conv5_2 at batch 4: the batch's tiles
    ((256, 2), 14, 3, 1, "im2col"),   # ResNet-50 layer3.conv2 at batch 2: still too few
    ((512, 16), 7, 3, 1, "winograd4"),
    ((512, 8), 7, 3, 1, "im2col"),
])
@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_auto_picks_winograd_where_it_was_measured_to_win(channels, size, kernel, stride,
                                                          expected, backend):
    channels, batch = channels if isinstance(channels, tuple) else (channels, 1)
    g = _geometry(kernel=kernel, stride=stride, channels=channels, size=size, batch=batch)
    assert choose_algorithm(g, "auto", ALGORITHMS, backend) == expected
    assert choose_algorithm(g, "auto", ("im2col", "direct"), backend) == "im2col"
    assert choose_algorithm(g, "auto", ALGORITHMS, "numpy") == "im2col"


@pytest.mark.parametrize("channels,size,kernel,stride,expected", [
    (512, 14, 3, 1, "direct"),        # VGG-16 conv5_2
    (64, 56, 3, 2, "direct"),         # strided
    (64, 56, 5, 1, "direct"),         # not 3x3
    (64, 224, 3, 1, "winograd4"),     # Winograd's large layers keep it
    (256, 56, 3, 1, "winograd4"),
    (64, 56, 3, 1, "direct"),         # ResNet-50 layer1.conv2: 1.2e8 multiply-adds
    (128, 28, 3, 1, "direct"),
    (64, 56, 1, 1, "im2col"),         # 1x1: a GEMM with no lowering
    (64, 56, 1, 2, "im2col"),
    ((256, 4), 14, 3, 1, "winograd4"),    # ResNet-50 layer3.conv2 at batch 4: 4.6e8
    ((112, 4), 14, 3, 1, "direct"),       # 112 channels at batch 4: 8.9e7
])
@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_auto_picks_direct_at_inference_where_winograd_does_not_run(channels, size, kernel,
                                                                   stride, expected, backend):
    channels, batch = channels if isinstance(channels, tuple) else (channels, 1)
    g = _geometry(kernel=kernel, stride=stride, channels=channels, size=size, batch=batch)
    assert choose_algorithm(g, "auto", ALGORITHMS, backend, inference=True) == expected
    assert choose_algorithm(g, "auto", ALGORITHMS, "numpy", inference=True) == "im2col"
    assert choose_algorithm(g, "auto", ("im2col",), backend, inference=True) == "im2col"
    # with a backward pass to follow, the direct kernels' gradients rule them out
    assert choose_algorithm(g, "auto", ALGORITHMS, backend) in ("im2col", "winograd4",
                                                                  "winograd6")


@pytest.mark.parametrize("requested,expected", [
    ("im2col", "im2col"), ("direct", "direct"), ("winograd", "winograd4"),
    ("winograd2", "winograd2"), ("winograd6", "winograd6"),
])
def test_explicit_algorithm_is_honoured(requested, expected):
    assert choose_algorithm(_geometry(), requested, ALGORITHMS, "numpy") == expected


@pytest.mark.parametrize("geometry", [_geometry(kernel=5), _geometry(stride=2),
                                      _geometry(dilation=2)])
def test_winograd_refuses_what_it_cannot_run(geometry):
    with pytest.raises(ValueError, match="needs a 3x3 kernel, stride 1 and dilation 1"):
        choose_algorithm(geometry, "winograd", ALGORITHMS, "numpy")


def test_auto_is_resolved_among_what_the_backend_has():
    large = _geometry(channels=64, size=56)
    assert choose_algorithm(large, "auto", ("im2col", "direct"), "cython") == "im2col"
    assert choose_algorithm(_geometry(), "auto", ("im2col",), "cython") == "im2col"
    assert choose_algorithm(_geometry(), "auto", ("direct",), "x") == "direct"
    with pytest.raises(ValueError, match="does not implement algorithm 'direct'"):
        choose_algorithm(_geometry(), "direct", ("im2col",), "cython")
    assert set(implemented(backends.get_backend("cython"))) >= {"im2col", "direct"}


def test_default_is_the_fastest_backend_that_has_the_kernel(monkeypatch):
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    fc.set_backend(None)
    assert backends.default_backend("conv2d_fwd_im2col") == "cython"
    first_with_pooling = next(b for b in ("cython", "numba", "numpy")
                              if hasattr(backends.get_backend(b), "maxpool2d_fwd"))
    assert backends.default_backend("maxpool2d_fwd") == first_with_pooling


def test_cold_start_imports_no_backend_it_does_not_use(tmp_path):
    """``import fastconv`` and a first convolution load the Cython backend only (Numba's
    import alone costs about half a second). Run outside the source tree, so that the
    installed package (with its compiled kernels) is the one imported."""
    code = ("import sys, numpy as np, fastconv as fc; "
            "fc.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)); "
            "print('numba' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "False", out.stderr


def test_forward_blocks_give_every_thread_a_like_share_of_rows():
    from fastconv.backends._workspace import balanced_rows

    assert balanced_rows(56, 18, 1, 2) == 14      # 4 x 14: 28 rows each, not 36 and 20
    assert balanced_rows(55, 13, 1, 2) == 7       # 8 blocks: 28 and 27 rows
    assert balanced_rows(112, 15, 1, 2) == 14
    assert balanced_rows(10, 100, 1, 2) == 5      # one image, two threads: halves
    assert balanced_rows(224, 2, 1, 2) == 2       # already even
    assert balanced_rows(56, 18, 4, 2) == 18      # images enough to share: cache-sized
    assert balanced_rows(0, 5, 1, 2) == 1


def test_forward_blocks_are_cache_sized_or_wide_enough_for_large_weights():
    from fastconv.backends import _workspace

    def block_columns(c, k, size, groups=1, limit=64 << 20):
        w = np.empty((k, c // groups, 3, 3), np.float32)
        y = np.empty((1, k, size, size), np.float32)
        old = _workspace.workspace_limit()
        _workspace.set_workspace_limit(limit)
        try:
            return _workspace.im2col_workspace(w, y, 3, 3, groups, 2).shape[2]
        finally:
            _workspace.set_workspace_limit(old)

    assert block_columns(512, 512, 28) == 7 * 28    # VGG-16 conv4_2: 256+ columns, balanced
    assert block_columns(512, 512, 14) == 7 * 14    # conv5_2: half the image each
    assert block_columns(64, 64, 224) == 2 * 224    # conv1_2: small weights, 1 MiB blocks
    assert block_columns(512, 512, 28, groups=8) == 448   # K/g = 64: cache-sized
    assert block_columns(512, 512, 28, limit=1 << 20) == 28   # the limit still binds


def test_winograd_workspace_is_kept_per_thread_and_its_buffers_do_not_overlap():
    import threading

    from fastconv.backends._workspace import winograd_workspace

    v, m = winograd_workspace(6, 256, 128, 1, 20, 14, np.float32)
    assert v.shape == (36 * 256, 252) and m.shape == (36 * 128, 252)     # 18 rows of 14
    assert not np.shares_memory(v, m)
    v2, m2 = winograd_workspace(4, 64, 64, 1, 10, 10, np.float64)     # smaller: the same bytes
    assert v2.dtype == np.float64 and np.shares_memory(v, v2)
    other = []
    thread = threading.Thread(target=lambda: other.extend(
        winograd_workspace(6, 256, 128, 1, 20, 14, np.float32)))
    thread.start()
    thread.join()
    assert not any(np.shares_memory(a, b) for a in other for b in (v, m))
