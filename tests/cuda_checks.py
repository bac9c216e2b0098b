"""The CUDA backend's kernels against the float64 NumPy reference, on tiny shapes.

Not collected by a plain ``pytest`` run (the file name does not start with
``test_``): ``tests/test_cuda.py`` runs it in a subprocess under numba's CUDA
simulator with 4 threads per block, so that every array crosses block
boundaries; ``bench/gpu_check.sh`` runs it on a real GPU.
"""

import numpy as np
import pytest

import fastconv as fc

from configs import TOLERANCE, config_id, conv_configs, conv_transpose_configs, pool_configs, \
    rel_err

pytestmark = pytest.mark.skipif("cuda" not in fc.available_backends(),
                                reason="run through tests/test_cuda.py or bench/gpu_check.sh")


def _pair(fn, *args, **kwargs):
    """``fn`` on the CUDA backend and on the NumPy reference (float64 inputs for it)."""
    ours = fn(*args, **kwargs, backend="cuda")
    wide = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
            for a in args]
    return ours, fn(*wide, **kwargs, backend="numpy")


def _close(ours, ref, dtype):
    ours, ref = (ours, ref) if isinstance(ours, tuple) else ((ours,), (ref,))
    for a, b in zip(ours, ref):
        if a is None:
            continue
        assert a.dtype == dtype or a.dtype.kind != "f"
        assert rel_err(a, b) <= TOLERANCE[dtype, "direct"]


@pytest.mark.parametrize("config", conv_configs(14, seed=31, max_channels=4, max_size=8),
                         ids=config_id)
def test_conv2d_forward_and_gradients(config):
    rng = np.random.default_rng(0)
    dtype = config["dtype"]
    x = rng.standard_normal(config["x_shape"]).astype(dtype)
    w = rng.standard_normal(config["w_shape"]).astype(dtype)
    b = rng.standard_normal(config["w_shape"][0]).astype(dtype) if config["bias"] else None
    y, y_ref = _pair(fc.conv2d, x, w, b, **config["kwargs"])
    _close(y, y_ref, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _close(*_pair(fc.conv2d_backward, dy, x, w, **config["kwargs"]), dtype)


@pytest.mark.parametrize("config", conv_transpose_configs(6, seed=32, max_channels=4,
                                                          max_size=5), ids=config_id)
def test_conv_transpose2d_forward_and_gradients(config):
    rng = np.random.default_rng(1)
    dtype = config["dtype"]
    x = rng.standard_normal(config["x_shape"]).astype(dtype)
    w = rng.standard_normal(config["w_shape"]).astype(dtype)
    y, y_ref = _pair(fc.conv_transpose2d, x, w, **config["kwargs"])
    _close(y, y_ref, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _close(*_pair(fc.conv_transpose2d_backward, dy, x, w, **config["kwargs"]), dtype)


@pytest.mark.parametrize("config", pool_configs(12, seed=33, max_size=7), ids=config_id)
def test_pooling_forward_and_gradients(config):
    rng = np.random.default_rng(2)
    dtype = config["dtype"]
    x = rng.integers(-3, 4, config["x_shape"]).astype(dtype)     # ties
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    kw = {k: config[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    (y, idx), (y_ref, idx_ref) = _pair(fc.max_pool2d, x, **kw, return_indices=True)
    assert np.array_equal(y, y_ref.astype(dtype), equal_nan=True)
    assert np.array_equal(idx, idx_ref)
    assert np.array_equal(fc.max_pool2d(x, **kw, backend="cuda"), y, equal_nan=True)
    finite = np.nan_to_num(x, nan=0.5, neginf=-4.0)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _close(*_pair(fc.max_pool2d_backward, dy, finite, **kw), dtype)
    del kw["dilation"]
    kw.update(count_include_pad=config["count_include_pad"],
              divisor_override=config["divisor_override"])
    try:
        y, y_ref = _pair(fc.avg_pool2d, finite, **kw)
    except ValueError:                  # the window only fitted with its dilation
        return
    _close(y, y_ref, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _close(*_pair(fc.avg_pool2d_backward, dy, finite, **kw), dtype)


@pytest.mark.parametrize("output_size", [1, (2, 3), (5, 4)])
def test_adaptive_average_pooling(output_size):
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 7)).astype(np.float32)
    y, y_ref = _pair(fc.adaptive_avg_pool2d, x, output_size)
    _close(y, y_ref, np.float32)
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    _close(*_pair(fc.adaptive_avg_pool2d_backward, dy, x, output_size), np.float32)


def test_unfold_and_fold():
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 5))
    kw = dict(kernel_size=(3, 2), dilation=(1, 2), padding=1, stride=(2, 1))
    cols, cols_ref = _pair(fc.im2col, x, **kw)
    _close(cols, cols_ref, np.float64)
    _close(*_pair(fc.col2im, cols_ref, (6, 5), **kw), np.float64)


def test_batchnorm_inference_and_linear():
    from fastconv.functional import channel_affine, linear

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    scale, shift = rng.standard_normal(5), rng.standard_normal(5)
    y, y_ref = _pair(channel_affine, x, scale, shift, relu=True)
    assert np.array_equal(np.isnan(y), np.isnan(y_ref))
    _close(np.nan_to_num(y), np.nan_to_num(y_ref), np.float32)
    a, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((3, 7), (5, 7), 5))
    _close(*_pair(linear, a, w, b), np.float32)
    _close(*_pair(linear, a[:1], w), np.float32)


def test_a_network_runs_on_the_gpu_backend_end_to_end():
    model = fc.models.lenet5().eval()
    x = np.random.default_rng(7).standard_normal((1, 1, 32, 32)).astype(np.float32)
    previous = fc.set_backend("numpy")
    try:
        expected = model(x)
        fc.set_backend("cuda")
        assert rel_err(model(x), expected) <= 1e-5
    finally:
        fc.set_backend(previous)
