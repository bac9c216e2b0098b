"""Eval-mode inference: BatchNorm as one per-channel scale and shift (channel_affine on
every backend), layers that write over inputs nothing else reads, and never over the
caller's arrays or arrays that another tensor still views."""

import numpy as np
import pytest

import fastconv as fc
from fastconv import nn
import fastconv.functional as F
from fastconv.functional import channel_affine

from configs import rel_err
from conftest import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_channel_affine_matches_the_formula(backend, dtype, relu):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 3)).astype(dtype)
    x[0, 1, 2, 2] = np.nan
    x[1, 4, 0, 0] = -np.inf
    scale, shift = rng.standard_normal(5), rng.standard_normal(5)
    expected = x.astype(np.float64) * scale[:, None, None] + shift[:, None, None]
    if relu:
        expected = np.where(expected < 0, 0, expected)       # NaN stays NaN
    before = x.copy()
    y = channel_affine(x, scale, shift, relu=relu, backend=backend)
    assert y.dtype == dtype and np.array_equal(x, before, equal_nan=True)
    assert np.isnan(y[0, 1, 2, 2])
    tol = 1e-6 if dtype == np.float32 else 1e-14        # inf and NaN must match exactly
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * 4, equal_nan=True)
    out = channel_affine(x, scale, shift, relu=relu, out=x, backend=backend)
    assert out is x and np.array_equal(x, y, equal_nan=True)


def test_channel_affine_rejects_bad_arguments():
    x = np.zeros((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"scale must have shape \(3,\)"):
        channel_affine(x, np.ones(2), np.zeros(3))
    with pytest.raises(ValueError, match="out must be"):
        channel_affine(x, np.ones(3), np.zeros(3), out=np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="out must be"):
        channel_affine(x, np.ones(3), np.zeros(3), out=x[:, :, :, ::-1])
    with pytest.raises(ValueError, match="out must be .* NumPy array .* got list"):
        channel_affine(x, np.ones(3), np.zeros(3), out=[0.0] * 12)
    with pytest.raises(ValueError, match="out must be"):
        F.relu(x, out=np.zeros((1, 3, 2, 1), np.float32))


def _batchnorm(c, rng):
    bn = nn.BatchNorm2d(c)
    bn.running_mean[...] = rng.standard_normal(c)
    bn.running_var[...] = rng.uniform(0.5, 2, c)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, c)
    bn.bias.data[...] = rng.standard_normal(c)
    return bn


def test_inference_gives_what_the_eval_layers_give_alone_and_keeps_inputs():
    rng = np.random.default_rng(1)
    bn = _batchnorm(4, rng)
    layers = [nn.Conv2d(3, 4, 3, padding=1), bn, nn.ReLU(), nn.Dropout(), nn.Identity(),
              nn.MaxPool2d(2), nn.Flatten(), nn.ReLU()]
    model = nn.Sequential(*layers).eval()
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    before = x.copy()
    expected = x
    for layer in layers:                       # each layer on its own, eval mode
        expected = layer.forward(expected)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6, atol=1e-6)
    assert np.array_equal(x, before)
    # a Sequential that starts with layers returning the caller's array itself
    passthrough = nn.Sequential(nn.Identity(), nn.Dropout(), nn.ReLU(), _batchnorm(3, rng))
    passthrough.eval()(x)
    assert np.array_equal(x, before)


def test_graph_never_overwrites_a_tensor_that_is_still_read():
    rng = np.random.default_rng(2)
    conv, bn = nn.Conv2d(3, 3, 1), _batchnorm(3, rng)
    image = fc.Input((3, 5, 5))
    a = conv(image)
    b = nn.ReLU()(nn.Identity()(a))     # last read of a view of `a`, while `a` is read below
    out = nn.Add()(b, bn(a))
    graph = fc.Graph(image, [out, nn.ReLU()(nn.Identity()(image))]).eval()
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    before = x.copy()
    got, relu_x = graph(x)
    a_ = conv.forward(x)
    np.testing.assert_allclose(got, np.maximum(a_, 0) + bn.forward(a_), rtol=1e-6, atol=1e-6)
    assert np.array_equal(x, before) and np.array_equal(relu_x, np.maximum(x, 0))


def test_batchnorm_inference_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    bn = _batchnorm(6, rng)
    ref = torch.nn.BatchNorm2d(6).eval()
    ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in bn.state_dict().items()})
    x = rng.standard_normal((2, 6, 4, 3)).astype(np.float32)
    model = nn.Sequential(nn.Identity(), bn).eval()
    with torch.no_grad():
        assert rel_err(model(x), ref(torch.from_numpy(x)).numpy()) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,out_features,bias", [
    ((1, 37), 53, True), ((1, 300), 1000, False), ((5, 37), 3, True), ((2, 3, 8), 17, True),
    ((0, 4), 3, True), ((2, 0), 3, True), ((1, 0), 3, True), ((1, 5), 1, False)])
def test_linear_matches_the_float64_product(backend, dtype, x_shape, out_features, bias):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((out_features, x_shape[-1])).astype(dtype)
    b = rng.standard_normal(out_features).astype(dtype) if bias else None
    expected = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    y = fc.functional.linear(x, w, b, backend=backend)
    assert y.shape == expected.shape and y.dtype == dtype
    assert rel_err(y, expected) <= (1e-6 if dtype == np.float32 else 1e-13)


def test_linear_rejects_bad_arguments():
    x, w = np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="in_features=4"):
        fc.functional.linear(np.zeros((2, 5), np.float32), w)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        fc.functional.linear(x, w, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="weight has dtype float64"):
        fc.functional.linear(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="2-D"):
        fc.functional.linear(x, w[None])


def test_relu_is_fused_only_into_a_tensor_nothing_else_reads():
    rng = np.random.default_rng(5)
    bn1, bn2, bn3 = (_batchnorm(3, rng) for _ in range(3))
    image = fc.Input((3, 4, 4))
    shared = bn1(image)                       # read by a ReLU and returned as well
    twice = bn2(image)                        # read by a ReLU and by the Add
    graph = fc.Graph(image, [shared, nn.ReLU()(shared), nn.ReLU()(twice),
                             nn.ReLU()(nn.Add()(twice, bn3(image))),     # Add fuses it
                             nn.ReLU()(bn3(image))]).eval()              # BatchNorm fuses it
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    a, b, c = bn1.forward(x), bn2.forward(x), bn3.forward(x)
    got = graph(x)
    expected = [a, np.maximum(a, 0), np.maximum(b, 0), np.maximum(b + c, 0), np.maximum(c, 0)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    assert (got[0] < 0).any()                 # the returned tensor kept its negatives


def test_a_part_in_eval_mode_inside_a_training_model_still_backpropagates():
    """Frozen BatchNorm while fine-tuning: model.train(); backbone.eval()."""
    rng = np.random.default_rng(7)
    nn.manual_seed(7)
    conv, bn = nn.Conv2d(3, 4, 3), _batchnorm(4, rng)
    backbone = nn.Sequential(conv, bn, nn.ReLU())
    model = nn.Sequential(backbone, nn.Flatten(), nn.Linear(64, 2))
    model.train()
    backbone.eval()
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    y = model(x)
    grad_x = model.backward(np.ones_like(y))
    assert grad_x.shape == x.shape and conv.weight.grad is not None
    # the same computation layer by layer, BatchNorm in eval mode on its own
    reference = [conv, bn, nn.ReLU(), nn.Flatten(), model[2]]
    out = x
    for layer in reference:
        out = layer.forward(out)
    np.testing.assert_allclose(y, out, rtol=1e-6, atol=1e-6)


def test_batch_statistics_never_swallow_a_fused_relu():
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 4)).astype(np.float32)
    for bn in (nn.BatchNorm2d(3, track_running_stats=False), nn.BatchNorm2d(3)):
        model = nn.Sequential(bn, nn.ReLU()).eval()
        if bn.track_running_stats:
            bn.train()                        # batch statistics under an eval model
        image = fc.Input((3, 4, 4))
        graph = fc.Graph(image, nn.ReLU()(bn(image))).eval()
        if bn.track_running_stats:
            bn.train()
        for run in (model, graph):
            y = run(x)
            assert (y >= 0).all() and (y > 0).any()


def test_one_input_add_with_a_fused_relu_leaves_the_callers_array():
    x = np.random.default_rng(9).standard_normal((1, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    y = nn.Sequential(nn.Add(), nn.ReLU()).eval()(x)
    assert np.array_equal(x, before) and np.array_equal(y, np.maximum(x, 0))


def test_inference_batchnorm_takes_a_strided_input():
    class EveryOtherRow(nn.Layer):
        def _forward(self, ctx, x):
            return (x * 1)[:, :, ::2]

    x = np.random.default_rng(10).standard_normal((1, 4, 6, 3)).astype(np.float32)
    bn = _batchnorm(4, np.random.default_rng(11))
    y = nn.Sequential(EveryOtherRow(), bn).eval()(x)
    np.testing.assert_allclose(y, bn.forward(x[:, :, ::2]), rtol=1e-6, atol=1e-6)


def test_convolutions_apply_batchnorm_residual_and_relu_in_their_epilogue(monkeypatch):
    """The chains a graph runs as one convolution at inference give what the eval layers
    give one by one, and no BatchNorm, Add or ReLU of a chain runs on its own: Conv-BN-ReLU,
    Conv-BN-Add-ReLU with a residual made before the convolution, the downsampling block
    (whose Add goes to the second branch, the first one's result being its residual),
    Conv-ReLU, and a Sequential's Conv-BN-ReLU."""
    rng = np.random.default_rng(10)
    nn.manual_seed(10)
    conv = [nn.Conv2d(4, 4, k, padding=k // 2) for k in (3, 3, 1, 1, 3)]
    bn = [_batchnorm(4, rng) for _ in range(4)]
    image = fc.Input((4, 6, 6))
    a = nn.ReLU()(bn[0](conv[0](image)))
    out1 = nn.ReLU()(nn.Add()(bn[1](conv[1](a)), image))
    out2 = nn.ReLU()(nn.Add()(bn[2](conv[2](out1)), bn[3](conv[3](out1))))
    last = nn.ReLU()(conv[4](out2))
    graph = fc.Graph(image, last).eval()
    head = nn.Sequential(nn.Conv2d(4, 3, 3), _batchnorm(3, rng), nn.ReLU()).eval()
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)

    def relu(t):
        return np.maximum(t, 0)

    a_ = relu(bn[0].forward(conv[0].forward(x)))
    out1_ = relu(bn[1].forward(conv[1].forward(a_)) + x)
    out2_ = relu(bn[2].forward(conv[2].forward(out1_)) + bn[3].forward(conv[3].forward(out1_)))
    expected = relu(conv[4].forward(out2_))
    expected_head = relu(head[1].forward(head[0].forward(expected)))
    ran = []
    for kind in (nn.BatchNorm2d, nn.Add, nn.ReLU):
        monkeypatch.setattr(kind, "_forward", lambda self, ctx, *a, f=kind._forward:
                            ran.append(self) or f(self, ctx, *a))
    before = x.copy()
    got = graph(x)
    got_head = head(got)
    assert ran == [] and np.array_equal(x, before)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_head, expected_head, rtol=1e-5, atol=1e-5)
    bn[1].train()           # batch statistics: that BatchNorm runs alone, the Add takes the ReLU
    graph(x)
    assert [type(layer) for layer in ran] == [nn.BatchNorm2d, nn.Add]
