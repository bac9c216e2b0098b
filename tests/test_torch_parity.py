"""Parity with torch.nn.functional on random configurations, forward and every backward.

PyTorch in float64 is the oracle; fastconv runs in the configuration's dtype
(float32 or float64) and must stay within DESIGN.md's tolerances.
"""

import numpy as np
import pytest

import fastconv as fc
from fastconv.select import implemented, winograd_applicable
from fastconv.backends import get_backend
from fastconv.shapes import conv2d_geometry

from configs import (TOLERANCE, config_id, conv_configs, conv_transpose_configs, pool_configs,
                     rel_err)
from conftest import BACKENDS, has_kernel

torch = pytest.importorskip("torch")
F = torch.nn.functional

N_CONFIGS = 200


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _data(config, c_out, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(config["x_shape"])
    w = rng.standard_normal(config["w_shape"])
    b = rng.standard_normal(c_out) if config["bias"] else None
    return rng, x, w, b


def _cast(dtype, *arrays):
    return [None if a is None else a.astype(dtype) for a in arrays]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", conv_configs(N_CONFIGS, seed=101, max_channels=8, max_size=16),
                         ids=config_id)
def test_conv2d(config, backend):
    rng, x, w, b = _data(config, config["w_shape"][0], 0)
    kw = config["kwargs"]
    pt, pb, pl, pr = config["pads"]
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if b is not None else None
    yt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, bt, stride=kw["stride"],
                  dilation=kw["dilation"], groups=kw["groups"])
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(t(dy))
    refs = [xt.grad.numpy(), wt.grad.numpy(), None if b is None else bt.grad.numpy()]

    dtype = config["dtype"]
    x_, w_, b_, dy_ = _cast(dtype, x, w, b, dy)
    g = conv2d_geometry(x_, w_, b_, **kw)[3]
    algos = [a for a in implemented(get_backend(backend))
             if not a.startswith("winograd") or winograd_applicable(g)]
    for algo in algos:
        tol = TOLERANCE[dtype, algo]
        y = fc.conv2d(x_, w_, b_, **kw, algorithm=algo, backend=backend)
        assert rel_err(y, yt.detach().numpy()) <= tol, algo
        grads = fc.conv2d_backward(dy_, x_, w_, **kw, algorithm=algo, backend=backend)
        for name, got, ref in zip(("grad_x", "grad_w", "grad_b"), grads, refs):
            if ref is not None:
                assert rel_err(got, ref) <= tol, (algo, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", conv_transpose_configs(N_CONFIGS, seed=102), ids=config_id)
def test_conv_transpose2d(config, backend):
    kw = config["kwargs"]
    rng, x, w, b = _data(config, config["w_shape"][1] * kw["groups"], 1)
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if b is not None else None
    yt = F.conv_transpose2d(xt, wt, bt, **kw)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(t(dy))

    dtype = config["dtype"]
    tol = TOLERANCE[dtype, "im2col"]
    x_, w_, b_, dy_ = _cast(dtype, x, w, b, dy)
    assert rel_err(fc.conv_transpose2d(x_, w_, b_, **kw, backend=backend), yt.detach().numpy()) <= tol
    gx, gw, gb = fc.conv_transpose2d_backward(dy_, x_, w_, **kw, backend=backend)
    assert rel_err(gx, xt.grad.numpy()) <= tol
    assert rel_err(gw, wt.grad.numpy()) <= tol
    if b is not None:
        assert rel_err(gb, bt.grad.numpy()) <= tol


def _pool_kwargs(c, avg):
    kw = dict(kernel_size=c["kernel_size"], stride=c["stride"], padding=c["padding"],
              ceil_mode=c["ceil_mode"])
    if avg:
        kw.update(count_include_pad=c["count_include_pad"], divisor_override=c["divisor_override"])
    else:
        kw.update(dilation=c["dilation"])
    return kw


@pytest.mark.parametrize("backend", [b for b in BACKENDS if has_kernel(b, "maxpool2d_fwd")])
@pytest.mark.parametrize("config", pool_configs(N_CONFIGS, seed=103), ids=config_id)
def test_max_pool2d(config, backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(config["x_shape"])
    if rng.random() < 0.2:
        x[rng.random(x.shape) < 0.1] = np.nan
    kw = _pool_kwargs(config, avg=False)
    xt = t(x, True)
    yt, it = F.max_pool2d(xt, **kw, return_indices=True)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(t(dy))

    dtype = config["dtype"]
    x_, dy_ = _cast(dtype, x, dy)
    y, idx = fc.max_pool2d(x_, **kw, return_indices=True, backend=backend)
    assert np.array_equal(y, yt.detach().numpy().astype(dtype), equal_nan=True)
    assert np.array_equal(fc.max_pool2d(x_, **kw, backend=backend), y, equal_nan=True)
    assert np.array_equal(idx, it.numpy())
    gx = fc.max_pool2d_backward(dy_, x_, **kw, backend=backend)
    assert rel_err(gx, xt.grad.numpy()) <= TOLERANCE[dtype, "pool"]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if has_kernel(b, "avgpool2d_fwd")])
@pytest.mark.parametrize("config", pool_configs(N_CONFIGS, seed=104, dilation=False),
                         ids=config_id)
def test_avg_pool2d(config, backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(config["x_shape"])
    kw = _pool_kwargs(config, avg=True)
    xt = t(x, True)
    yt = F.avg_pool2d(xt, **kw)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(t(dy))

    dtype = config["dtype"]
    x_, dy_ = _cast(dtype, x, dy)
    tol = TOLERANCE[dtype, "pool"]
    assert rel_err(fc.avg_pool2d(x_, **kw, backend=backend), yt.detach().numpy()) <= tol
    assert rel_err(fc.avg_pool2d_backward(dy_, x_, **kw, backend=backend), xt.grad.numpy()) <= tol


def _adaptive_configs(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        size = (int(rng.integers(1, h + 3)), int(rng.integers(1, w + 3)))
        out.append(dict(x_shape=(int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w),
                        output_size=size, dtype=(np.float32, np.float64)[i % 2]))
    return out


@pytest.mark.parametrize("backend", [b for b in BACKENDS if has_kernel(b, "adaptive_avgpool2d_fwd")])
@pytest.mark.parametrize("config", _adaptive_configs(N_CONFIGS, seed=105), ids=config_id)
def test_adaptive_avg_pool2d(config, backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(config["x_shape"])
    xt = t(x, True)
    yt = F.adaptive_avg_pool2d(xt, config["output_size"])
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(t(dy))
    dtype = config["dtype"]
    x_, dy_ = _cast(dtype, x, dy)
    tol = TOLERANCE[dtype, "pool"]
    size = config["output_size"]
    assert rel_err(fc.adaptive_avg_pool2d(x_, size, backend=backend), yt.detach().numpy()) <= tol
    assert rel_err(fc.adaptive_avg_pool2d_backward(dy_, x_, size, backend=backend),
                   xt.grad.numpy()) <= tol


def _unfold_configs(count, seed):
    out = []
    for c in conv_configs(count * 2, seed=seed, max_size=14):
        kw = c["kwargs"]
        padding = (c["pads"][0], c["pads"][2])
        h, w = c["x_shape"][2:]
        kernel = c["w_shape"][2:]
        spans = [d * (k - 1) + 1 for d, k in zip(kw["dilation"], kernel)]
        if all(sp <= m + 2 * p for sp, m, p in zip(spans, (h, w), padding)):
            out.append(dict(x_shape=c["x_shape"], kernel_size=kernel, dilation=kw["dilation"],
                            padding=padding, stride=kw["stride"], dtype=c["dtype"]))
    return out[:count]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", _unfold_configs(N_CONFIGS, seed=106), ids=config_id)
def test_im2col_and_col2im_are_unfold_and_fold(config, backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(config["x_shape"])
    kw = {k: config[k] for k in ("kernel_size", "dilation", "padding", "stride")}
    dtype = config["dtype"]
    cols_t = F.unfold(t(x), **kw).numpy()
    cols = fc.im2col(x.astype(dtype), **kw, backend=backend)
    assert np.array_equal(cols, cols_t.astype(dtype))
    z = rng.standard_normal(cols.shape)
    folded_t = F.fold(t(z), config["x_shape"][2:], **kw).numpy()
    folded = fc.col2im(z.astype(dtype), config["x_shape"][2:], **kw, backend=backend)
    assert rel_err(folded, folded_t) <= TOLERANCE[dtype, "im2col"]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("h,w", [(7, 7), (8, 5), (1, 9)])
def test_same_padding_matches_pytorch(k, h, w):
    rng = np.random.default_rng(6)
    x, wt = rng.standard_normal((1, 2, h, w)), rng.standard_normal((3, 2, k, k + 1))
    ref = F.conv2d(t(x), t(wt), padding="same").numpy()
    assert rel_err(fc.conv2d(x, wt, padding="same"), ref) <= 1e-12


@pytest.mark.parametrize("backend", [b for b in BACKENDS if has_kernel(b, "maxpool2d_fwd")])
@pytest.mark.parametrize("channels", [1, 7, 8, 15, 16, 17, 33])
def test_max_pool_special_values_match_pytorch(backend, channels):
    rng = np.random.default_rng(channels)
    x = rng.integers(-2, 3, (2, channels, 9, 9)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[:, :, :3, :3] = -np.inf
    for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True)):
        yt, it = F.max_pool2d(torch.tensor(x), **kw, return_indices=True)
        y, idx = fc.max_pool2d(x, **kw, return_indices=True, backend=backend)
        assert np.array_equal(y, yt.numpy(), equal_nan=True)
        assert np.array_equal(fc.max_pool2d(x, **kw, backend=backend), y, equal_nan=True)
        assert np.array_equal(idx, it.numpy())
