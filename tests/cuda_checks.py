"""The CUDA backend's kernels against the float64 NumPy reference, on tiny shapes.

Not collected by a plain ``pytest`` run (the file name does not start with
``test_``): ``tests/test_cuda.py`` runs it in a subprocess under numba's CUDA
simulator with 4 threads per block and 8x8 implicit-GEMM tiles, so that every
array crosses block and tile boundaries; ``bench/gpu_check.sh`` runs it on a
real GPU.
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


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("config", conv_configs(14, seed=31, max_channels=4, max_size=8),
                         ids=config_id)
def test_conv2d_forward_and_gradients(config, algorithm):
    rng = np.random.default_rng(0)
    dtype = config["dtype"]
    x = rng.standard_normal(config["x_shape"]).astype(dtype)
    w = rng.standard_normal(config["w_shape"]).astype(dtype)
    b = rng.standard_normal(config["w_shape"][0]).astype(dtype) if config["bias"] else None
    kwargs = dict(config["kwargs"], algorithm=algorithm)
    y, y_ref = _pair(fc.conv2d, x, w, b, **kwargs)
    _close(y, y_ref, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _close(*_pair(fc.conv2d_backward, dy, x, w, **kwargs), dtype)


@pytest.mark.parametrize("groups", [1, 2])
def test_implicit_gemm_splits_long_reductions_and_adds_them_in_a_fixed_order(groups,
                                                                           monkeypatch):
    """Few output tiles and a long reduction: every product is split over blocks and
    the partial sums added in order."""
    from fastconv import _cuda_kernels

    monkeypatch.setenv("FASTCONV_CUDA_TILE", "8,8,4,2,2")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 8, 4, 4)).astype(np.float32)
    w = rng.standard_normal((4, 8 // groups, 3, 3)).astype(np.float32)
    bm, bn, bk = _cuda_kernels.tile_shape()[:3]
    tiles = -(-4 * 4 // bn) * -(-4 // groups // bm) * groups
    assert 8 // groups * 9 // bk >= 8 and tiles <= 4, "the shape must need a split"
    kwargs = dict(padding=1, groups=groups, algorithm="im2col")
    y, y_ref = _pair(fc.conv2d, x, w, **kwargs)
    _close(y, y_ref, np.float32)
    assert np.array_equal(fc.conv2d(x, w, **kwargs, backend="cuda"), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = fc.conv2d_backward(dy, x, w, **kwargs, backend="cuda")
    _close(grads, _pair(fc.conv2d_backward, dy, x, w, **kwargs)[1], np.float32)
    for a, b in zip(grads, fc.conv2d_backward(dy, x, w, **kwargs, backend="cuda")):
        assert np.array_equal(a, b)


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


def test_the_fused_convolution_is_refused_on_the_gpu_backend_and_models_run_unfused():
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="host backends"):
        fc.functional.conv2d_fused(x, w, backend="cuda")
    with pytest.raises(ValueError, match="host backends"):
        fc.functional.conv2d_fused(_device(x), _device(w))
    model = fc.nn.Sequential(fc.nn.Conv2d(2, 3, 3), fc.nn.BatchNorm2d(3), fc.nn.ReLU()).eval()
    expected = model(x)
    assert rel_err(_host(model(_device(x))), expected) <= 1e-6


# ---------------------------------------------------------------------------
# Device arrays: results stay on the device
# ---------------------------------------------------------------------------

def _device(a):
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def _host(a):
    assert fc.backends.is_device_array(a), type(a)
    return a.copy_to_host()


def test_functional_ops_keep_device_arrays_on_the_device():
    import fastconv.functional as F

    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    dx, dw, db = _device(x), _device(w), _device(b)
    for algorithm in ("direct", "im2col"):
        kw = dict(stride=(1, 2), padding=1, groups=2, algorithm=algorithm)
        y = fc.conv2d(dx, dw, db, **kw)
        _close(_host(y), fc.conv2d(x, w, b, **kw, backend="numpy"), np.float32)
        grads = fc.conv2d_backward(y, dx, dw, **kw)
        expected = fc.conv2d_backward(_host(y), x, w, **kw, backend="numpy")
        _close(tuple(_host(g) for g in grads), expected, np.float32)
    _close(_host(fc.convolve2d(dx, dw, groups=2)), fc.convolve2d(x, w, groups=2,
                                                                 backend="numpy"), np.float32)
    wt = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    bt = rng.standard_normal(3).astype(np.float32)
    _close(_host(fc.conv_transpose2d(dx, _device(wt), _device(bt), stride=2, padding=1)),
           fc.conv_transpose2d(x, wt, bt, stride=2, padding=1, backend="numpy"), np.float32)
    y, idx = fc.max_pool2d(dx, 3, 2, 1, return_indices=True)
    y_ref, idx_ref = fc.max_pool2d(x, 3, 2, 1, return_indices=True, backend="numpy")
    assert np.array_equal(_host(y), y_ref) and np.array_equal(_host(idx), idx_ref)
    assert np.array_equal(_host(fc.max_pool2d(dx, 2)), fc.max_pool2d(x, 2, backend="numpy"))
    _close(_host(fc.max_pool2d_backward(_device(y_ref), dx, 3, 2, 1)),
           fc.max_pool2d_backward(y_ref, x, 3, 2, 1, backend="numpy"), np.float32)
    _close(_host(fc.avg_pool2d(dx, 3, 2, 1)), fc.avg_pool2d(x, 3, 2, 1, backend="numpy"),
           np.float32)
    _close(_host(fc.adaptive_avg_pool2d(dx, (2, 3))),
           fc.adaptive_avg_pool2d(x, (2, 3), backend="numpy"), np.float32)
    scale, shift = rng.standard_normal(4), rng.standard_normal(4)
    _close(_host(F.channel_affine(dx, scale, shift, relu=True)),
           F.channel_affine(x, scale, shift, relu=True, backend="numpy"), np.float32)
    stats = [rng.standard_normal(4).astype(np.float32) for _ in range(4)]
    stats[1] = np.abs(stats[1])
    _close(_host(F.batch_norm_inference(dx, *(_device(v) for v in stats), 1e-3, relu=True)),
           F.batch_norm_inference(x, *stats, 1e-3, relu=True, backend="numpy"), np.float32)
    _close(_host(F.relu(dx)), np.maximum(x, 0), np.float32)
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    _close(_host(F.add(dx, _device(x2), dx, relu=True)), np.maximum(x + x + x2, 0), np.float32)
    assert np.array_equal(_host(dx), x), "add wrote over its input"
    joined = F.concat([dx, _device(x2[:, :3]), dx])
    assert np.array_equal(_host(joined), np.concatenate([x, x2[:, :3], x], axis=1))
    a, wl = rng.standard_normal((3, 7)).astype(np.float32), rng.standard_normal((5, 7))
    _close(_host(F.linear(_device(a), _device(wl.astype(np.float32)))), a @ wl.T, np.float32)


def test_device_arrays_are_refused_by_host_backends_and_kept_apart_from_host_arrays():
    import fastconv.functional as F

    x = _device(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match="device arrays.*backend 'numpy'"):
        fc.conv2d(x, np.ones((1, 2, 3, 3), np.float32), backend="numpy")
    with pytest.raises(ValueError, match="input 1 must be a device array"):
        F.add(x, np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous float32 device"):
        F.relu(x, out=np.empty((1, 2, 4, 4), np.float32))
    # a host x with device weights: the result lives where x does
    y = fc.conv2d(np.ones((1, 2, 4, 4), np.float32), _device(np.ones((1, 2, 3, 3), np.float32)))
    assert isinstance(y, np.ndarray) and np.all(y == 18)


def _small_network():
    """Every layer kind of the backbones, on few channels and pixels."""
    from fastconv import nn
    from fastconv.models._common import TransformInput

    x = fc.Input((3, 9, 9))
    t = TransformInput()(x)
    a = nn.ReLU()(nn.BatchNorm2d(6)(nn.Conv2d(3, 6, 3, padding=1, bias=False)(t)))
    b = nn.Conv2d(3, 6, 1)(t)
    s = nn.ReLU()(nn.Add()(a, b))
    j = nn.Concat()(nn.MaxPool2d(3, 2, ceil_mode=True)(s), nn.AvgPool2d(3, 2)(s))
    r = nn.ReLU()(nn.Conv2d(12, 5, 3, stride=2, padding=1, groups=1)(j))
    f = nn.Flatten()(nn.AdaptiveAvgPool2d((2, 2))(r))
    out = nn.Linear(20, 4)(nn.Dropout(0.3)(f))
    model = fc.Graph(x, out)
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            rng = np.random.default_rng(10)
            layer.running_mean[...] = rng.standard_normal(6)
            layer.running_var[...] = rng.uniform(0.5, 2, 6)
    return model.eval()


def test_a_model_on_the_device_keeps_its_activations_there():
    from fastconv import nn

    model = _small_network()
    x = np.random.default_rng(11).standard_normal((2, 3, 9, 9)).astype(np.float32)
    expected = model(x)
    state = model.state_dict()
    assert model.to("cuda") is model
    assert all(fc.backends.is_device_array(p.data) for p in model.parameters())
    y = model(x)                                    # a NumPy input is copied over
    assert rel_err(_host(y), expected) <= 1e-5
    assert rel_err(_host(model(_device(x))), expected) <= 1e-5
    for key, value in model.state_dict().items():   # host copies, unchanged
        assert isinstance(value, np.ndarray) and np.array_equal(value, state[key])
    model.load_state_dict(state)
    assert all(fc.backends.is_device_array(p.data) for p in model.parameters())
    with pytest.raises(RuntimeError, match="inference only.*eval"):
        model.train()(x)
    model.eval()
    with pytest.raises(RuntimeError, match="inference only"):
        model.backward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="Tanh cannot run on the GPU"):
        nn.Sequential(nn.Conv2d(1, 1, 1), nn.Tanh()).to("cuda")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'gpu'"):
        model.to("gpu")
    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
    assert np.array_equal(model(x), expected)


def test_output_memory_is_reused_once_its_array_is_gone():
    import gc

    import numba

    from fastconv import _cuda_kernels

    rng = np.random.default_rng(12)
    x = _device(rng.standard_normal((1, 3, 6, 6)).astype(np.float32))
    w = _device(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    expected = fc.conv2d(x.copy_to_host(), w.copy_to_host(), backend="numpy")
    y = fc.conv2d(x, w)
    if numba.config.ENABLE_CUDASIM:         # the simulator keeps no pool
        assert type(y) is type(_cuda_kernels.cuda.device_array(1))
        return
    address = y.device_ctypes_pointer.value
    del y
    gc.collect()
    y = fc.conv2d(x, w)
    assert y.device_ctypes_pointer.value == address
    _close(_host(y), expected, np.float32)
    kept = fc.conv2d(x, w)                  # a live array's block is not handed out
    assert kept.device_ctypes_pointer.value != y.device_ctypes_pointer.value
    _close(_host(kept), expected, np.float32)


def test_repeated_launches_bypass_numbas_argument_preparation_with_the_same_result():
    import numba

    from fastconv import _cuda_kernels

    rng = np.random.default_rng(13)
    x = _device(rng.standard_normal((2, 3, 7, 6)).astype(np.float32))
    w = _device(rng.standard_normal((5, 3, 3, 3)).astype(np.float32))
    b = rng.standard_normal(5).astype(np.float32)
    expected = fc.conv2d(x.copy_to_host(), w.copy_to_host(), b, padding=1, backend="numpy")
    first = _host(fc.conv2d(x, w, b, padding=1, algorithm="im2col"))
    again = _host(fc.conv2d(x, w, b, padding=1, algorithm="im2col"))
    _close(first, expected, np.float32)
    assert np.array_equal(first, again)
    launches = [f for (kernel, _), f in _cuda_kernels._LAUNCHES.items()
                if kernel in _cuda_kernels._tiled(np.float32, _cuda_kernels.tile_shape(84, 5))]
    if numba.config.ENABLE_CUDASIM:          # the simulator always launches through numba
        assert launches == []
    else:
        assert launches and all(f is not None for f in launches)
