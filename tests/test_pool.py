"""Pooling on every backend that implements it, against the naive oracle (no torch needed)."""

import numpy as np
import pytest

import fastconv as fc

import oracle
from configs import TOLERANCE, config_id, numeric_gradient, pool_configs, rel_err
from conftest import BACKENDS, has_kernel

MAX_BACKENDS = [b for b in BACKENDS if has_kernel(b, "maxpool2d_fwd")]
AVG_BACKENDS = [b for b in BACKENDS if has_kernel(b, "avgpool2d_fwd")]
ADAPTIVE_BACKENDS = [b for b in BACKENDS if has_kernel(b, "adaptive_avgpool2d_fwd")]


def _max_args(c):
    return dict(kernel_size=c["kernel_size"], stride=c["stride"], padding=c["padding"],
                dilation=c["dilation"], ceil_mode=c["ceil_mode"])


def _avg_args(c):
    return dict(kernel_size=c["kernel_size"], stride=c["stride"], padding=c["padding"],
                ceil_mode=c["ceil_mode"], count_include_pad=c["count_include_pad"],
                divisor_override=c["divisor_override"])


@pytest.mark.parametrize("backend", MAX_BACKENDS)
@pytest.mark.parametrize("config", pool_configs(60, seed=11), ids=config_id)
def test_max_pool2d_matches_naive_scan(backend, config):
    rng = np.random.default_rng(0)
    # few distinct values: ties are common, and the first maximum must win
    x = rng.integers(-3, 4, config["x_shape"]).astype(config["dtype"])
    kw = _max_args(config)
    c = config
    y_ref, idx_ref = oracle.max_pool2d(x, c["kernel_size"], c["stride"] or c["kernel_size"],
                                       c["padding"], c["dilation"], c["ceil_mode"])
    y, idx = fc.max_pool2d(x, **kw, return_indices=True, backend=backend)
    assert y.dtype == x.dtype and idx.dtype == np.int64
    assert np.array_equal(y, y_ref) and np.array_equal(idx, idx_ref)
    assert np.array_equal(fc.max_pool2d(x, **kw, backend=backend), y_ref)   # values only
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    gx = fc.max_pool2d_backward(dy, x, **kw, backend=backend)
    expected = np.zeros(x.shape)
    for (n, ch, _, _), i, g in zip(np.ndindex(idx.shape), idx.ravel(), dy.ravel()):
        expected[n, ch].flat[i] += g
    assert rel_err(gx, expected) <= TOLERANCE[config["dtype"], "pool"]


@pytest.mark.parametrize("backend", AVG_BACKENDS)
@pytest.mark.parametrize("config", pool_configs(60, seed=12, dilation=False), ids=config_id)
def test_avg_pool2d_matches_naive_windows(backend, config):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(config["x_shape"])
    c = config
    y_ref = oracle.avg_pool2d(x, c["kernel_size"], c["stride"] or c["kernel_size"], c["padding"],
                              c["ceil_mode"], c["count_include_pad"], c["divisor_override"])
    x_ = x.astype(config["dtype"])
    y = fc.avg_pool2d(x_, **_avg_args(config), backend=backend)
    assert y.dtype == x_.dtype
    assert rel_err(y, y_ref) <= TOLERANCE[config["dtype"], "pool"]
    # avg pooling is linear: its gradient is exact by central differences in float64
    dy = rng.standard_normal(y.shape)
    x_small = x[:1, :1]
    gx = fc.avg_pool2d_backward(dy[:1, :1].astype(x_.dtype), x_small.astype(x_.dtype),
                                **_avg_args(config), backend=backend)
    numeric = numeric_gradient(
        lambda z: fc.avg_pool2d(z, **_avg_args(config), backend="numpy"), x_small, dy[:1, :1])
    assert rel_err(gx, numeric) <= max(TOLERANCE[config["dtype"], "pool"], 1e-8)


ADAPTIVE_CASES = [((7, 7), 1), ((7, 7), (3, 3)), ((10, 9), (4, 5)), ((5, 5), (7, 8)),
                  ((1, 6), (1, 4)), ((13, 11), (None, 3)), ((6, 4), (6, 4))]


@pytest.mark.parametrize("backend", ADAPTIVE_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw,output_size", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d(backend, dtype, hw, output_size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3) + hw)
    sizes = output_size if isinstance(output_size, tuple) else (output_size,) * 2
    out_hw = tuple(m if o is None else o for m, o in zip(hw, sizes))
    y = fc.adaptive_avg_pool2d(x.astype(dtype), output_size, backend=backend)
    assert y.dtype == dtype
    assert rel_err(y, oracle.adaptive_avg_pool2d(x, out_hw)) <= TOLERANCE[dtype, "pool"]
    dy = rng.standard_normal(y.shape)
    gx = fc.adaptive_avg_pool2d_backward(dy.astype(dtype), x.astype(dtype), output_size,
                                         backend=backend)
    numeric = numeric_gradient(
        lambda z: fc.adaptive_avg_pool2d(z, output_size, backend="numpy"), x[:1, :1], dy[:1, :1])
    assert rel_err(gx[:1, :1], numeric) <= max(TOLERANCE[dtype, "pool"], 1e-8)
    # every plane, against the float64 reference
    reference = fc.adaptive_avg_pool2d_backward(dy, x, output_size, backend="numpy")
    assert rel_err(gx, reference) <= TOLERANCE[dtype, "pool"]


@pytest.mark.parametrize("backend", ADAPTIVE_BACKENDS)
@pytest.mark.parametrize("planes", [1, 2, 3, 17])
@pytest.mark.parametrize("hw", [(1, 1), (7, 7), (3, 50)])
def test_global_avg_pool_shares_planes_between_threads(backend, planes, hw):
    """Global average pooling takes each thread's share of the planes as the rows of one
    matrix-vector product: every plane's mean, at thread counts that leave a thread
    without planes or split them unevenly, and the input left as it was."""
    rng = np.random.default_rng(planes * 100 + hw[1])
    x = rng.standard_normal((1, planes, *hw))
    before = fc.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fc.set_num_threads(threads)
            for dtype in (np.float32, np.float64):
                xd = x.astype(dtype)
                kept = xd.copy()
                y = fc.adaptive_avg_pool2d(xd, 1, backend=backend)
                assert np.array_equal(xd, kept)
                assert rel_err(y, x.mean(axis=(2, 3), keepdims=True)) <= TOLERANCE[dtype, "pool"]
    finally:
        fc.set_num_threads(before)


@pytest.mark.parametrize("backend", MAX_BACKENDS)
@pytest.mark.parametrize("channels", [1, 3, 7, 8, 9, 16, 17])
def test_max_pool_nan_inf_and_ties(backend, channels):
    """NaN wins (the last NaN of the scan), an all -inf window keeps a valid index,
    ties go to the first maximum; at channel counts around SIMD widths."""
    x = np.zeros((1, channels, 4, 6))
    x[:, :, 0, 1] = np.nan
    x[:, :, 1, 0] = np.nan          # the later NaN in row-major order of window (0,0)
    x[:, :, 0:2, 2:4] = -np.inf      # window (0,1) is all -inf
    x[:, :, 2, 0] = x[:, :, 3, 1] = 5.0   # window (1,0): a tie
    y, idx = fc.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert np.isnan(y[:, :, 0, 0]).all() and (idx[:, :, 0, 0] == 1 * 6 + 0).all()
    assert (y[:, :, 0, 1] == -np.inf).all() and (idx[:, :, 0, 1] == 0 * 6 + 2).all()
    assert (y[:, :, 1, 0] == 5.0).all() and (idx[:, :, 1, 0] == 2 * 6 + 0).all()
    gx = fc.max_pool2d_backward(np.ones_like(y), x, 2, backend=backend)
    assert gx[0, 0, 2, 0] == 1.0 and gx[0, 0, 3, 1] == 0.0 and gx[0, 0, 1, 0] == 1.0


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("backend", MAX_BACKENDS)
@pytest.mark.parametrize("width", [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 100, 127])
@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=1, padding=1),
                                dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=2, stride=2, ceil_mode=True),
                                dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)),
                                dict(kernel_size=3, stride=3, padding=1, dilation=2)],
                         ids=["3s1p1", "3s2p1", "2s2ceil", "2x3s1x2d2x1", "3s3p1d2"])
def test_max_pool_at_every_width(backend, width, kw):
    """Both max-pooling kernels, with indices and without, sweep output rows tap by
    tap with vectorised selects (the Cython kernels, from 32 outputs a row, over the
    row's stride phases, odd widths leaving a short last phase); NaN, -inf, ties and
    the padding must come out as in a scan of each window alone, at widths around the
    vector lengths."""
    rng = np.random.default_rng(width)
    x = rng.integers(-2, 3, (2, 3, 5, width)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    try:
        y, idx = fc.max_pool2d(x, **kw, return_indices=True, backend=backend)
    except ValueError:                      # the window does not fit this width
        with pytest.raises(ValueError, match="does not fit"):
            fc.max_pool2d(x, **kw, backend=backend)
        return
    k = _pair(kw["kernel_size"])
    y_ref, idx_ref = oracle.max_pool2d(x, k, _pair(kw["stride"]), _pair(kw.get("padding", 0)),
                                       _pair(kw.get("dilation", 1)), kw.get("ceil_mode", False))
    assert np.array_equal(y, y_ref, equal_nan=True) and np.array_equal(idx, idx_ref)
    assert np.array_equal(fc.max_pool2d(x, **kw, backend=backend), y, equal_nan=True)


@pytest.mark.parametrize("backend", sorted(set(MAX_BACKENDS) & set(AVG_BACKENDS)))
@pytest.mark.parametrize("kernel", [(1, 1), (2, 2), (3, 3), (1, 4), (4, 3), (5, 5)])
@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (7, 7), (8, 13), (17, 6), (35, 35)])
def test_stride1_pooling_takes_whole_planes(backend, kernel, hw):
    """Stride-1 max (values only) and average pooling reduce each plane in flat passes,
    down the columns and then along the rows, the windows at the row ends recomputed
    clipped; outputs narrower than the input (no padding), as wide, and wider (an even
    window padded by half) take different paths, and so does the average's gradient (a
    window sum of dL/dY times the divisor's reciprocal, padded by up to k - 1): every
    padding up to half the window, NaN and -inf for max, both divisors with and without
    an override for average, both dtypes; the gradient against the float64 reference on
    every plane, and by finite differences on the small ones."""
    rng = np.random.default_rng(sum(kernel) * 100 + sum(hw))
    x = rng.integers(-2, 3, (2, 3, *hw)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    xa = rng.standard_normal((2, 3, *hw))
    half = (kernel[0] // 2, kernel[1] // 2)
    for padding in {(0, 0), (half[0], 0), (0, half[1]), half}:
        if hw[0] + 2 * padding[0] < kernel[0] or hw[1] + 2 * padding[1] < kernel[1]:
            continue
        y_ref, _ = oracle.max_pool2d(x, kernel, (1, 1), padding, (1, 1), False)
        for dtype in (np.float32, np.float64):
            y = fc.max_pool2d(x.astype(dtype), kernel, stride=1, padding=padding,
                              backend=backend)
            assert np.array_equal(y, y_ref, equal_nan=True), (padding, dtype)
        for include, override in [(True, None), (False, None), (True, 5), (False, 5)]:
            y_ref = oracle.avg_pool2d(xa, kernel, (1, 1), padding, False, include, override)
            args = dict(stride=1, padding=padding, count_include_pad=include,
                        divisor_override=override)
            dy = rng.standard_normal(y_ref.shape)
            gx_ref = fc.avg_pool2d_backward(dy, xa, kernel, **args, backend="numpy")
            for dtype in (np.float32, np.float64):
                y = fc.avg_pool2d(xa.astype(dtype), kernel, **args, backend=backend)
                assert rel_err(y, y_ref) <= TOLERANCE[dtype, "pool"], (padding, include)
                gx = fc.avg_pool2d_backward(dy.astype(dtype), xa.astype(dtype), kernel, **args,
                                            backend=backend)
                assert rel_err(gx, gx_ref) <= TOLERANCE[dtype, "pool"], (padding, include)
            if hw[0] * hw[1] > 200:
                continue
            gx = fc.avg_pool2d_backward(dy[:1, :1], xa[:1, :1], kernel, **args, backend=backend)
            numeric = numeric_gradient(
                lambda z: fc.avg_pool2d(z, kernel, **args, backend="numpy"), xa[:1, :1],
                dy[:1, :1])
            assert rel_err(gx, numeric) <= 1e-8, (padding, include, override)


@pytest.mark.parametrize("backend", sorted(set(MAX_BACKENDS) & set(AVG_BACKENDS)))
@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                dict(kernel_size=2, stride=2),
                                dict(kernel_size=(2, 3), stride=(3, 2), padding=1),
                                dict(kernel_size=(4, 7), stride=(2, 3), padding=(2, 3)),
                                dict(kernel_size=(3, 2), stride=(1, 2), dilation=(2, 3))])
def test_strided_pooling_reduces_rows_in_bands(backend, kw):
    """Strided max (values only) and average pooling reduce each output row's input
    rows into rows of the input's columns, then take the windows along them in one
    strided pass, a band of rows at a time: planes wide enough for several bands,
    NaN and -inf for max, both divisors and an override for average."""
    rng = np.random.default_rng(len(str(kw)))
    shape = (1, 2, 23, 1003)
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x[rng.random(shape) < 0.05] = np.nan
    x[rng.random(shape) < 0.1] = -np.inf
    k, s = _pair(kw["kernel_size"]), _pair(kw["stride"])
    p, d = _pair(kw.get("padding", 0)), _pair(kw.get("dilation", 1))
    ceil = kw.get("ceil_mode", False)
    y_ref, _ = oracle.max_pool2d(x, k, s, p, d, ceil)
    assert np.array_equal(fc.max_pool2d(x, **kw, backend=backend), y_ref, equal_nan=True)
    if d != (1, 1):
        return
    xa = rng.standard_normal(shape)
    for include, override in [(True, None), (False, None), (True, 5)]:
        y_ref = oracle.avg_pool2d(xa, k, s, p, ceil, include, override)
        for dtype in (np.float32, np.float64):
            y = fc.avg_pool2d(xa.astype(dtype), k, s, p, ceil_mode=ceil,
                              count_include_pad=include, divisor_override=override,
                              backend=backend)
            assert rel_err(y, y_ref) <= TOLERANCE[dtype, "pool"], (include, override)


@pytest.mark.parametrize("backend", MAX_BACKENDS)
def test_max_pool_overlapping_windows_accumulate(backend):
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0                      # the maximum of all four 2x2 windows
    gx = fc.max_pool2d_backward(np.full((1, 1, 2, 2), 0.5), x, 2, stride=1, backend=backend)
    assert gx[0, 0, 1, 1] == 2.0 and gx.sum() == 2.0


@pytest.mark.parametrize("backend", MAX_BACKENDS)
def test_max_pool_padding_is_minus_infinity(backend):
    x = -np.ones((1, 1, 2, 2))
    y = fc.max_pool2d(x, 3, stride=1, padding=1, backend=backend)
    assert (y == -1).all()
