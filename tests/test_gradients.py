"""Backward passes against finite differences of the forward, in float64.

Full central differences on tiny shapes (every input element), and a
directional derivative along a random unit vector on realistic shapes.
"""

import numpy as np
import pytest

import fastconv as fc

from conftest import BACKENDS, backend_algorithms, has_kernel

EPS = 1e-6


def full_fd(f, arrays, dy):
    """d<f(*arrays), dy>/d(array) for every array, element by element."""
    grads = []
    for k, a in enumerate(arrays):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus = [b.copy() for b in arrays]
            minus = [b.copy() for b in arrays]
            plus[k][idx] += EPS
            minus[k][idx] -= EPS
            g[idx] = (np.vdot(f(*plus), dy) - np.vdot(f(*minus), dy)) / (2 * EPS)
        grads.append(g)
    return grads


def directional_fd(f, arrays, dy, rng):
    """Returns (numeric, direction): the derivative of <f, dy> along a random unit direction."""
    direction = [rng.standard_normal(a.shape) for a in arrays]
    norm = np.sqrt(sum(np.vdot(d, d) for d in direction))
    direction = [d / norm for d in direction]
    plus = [a + EPS * d for a, d in zip(arrays, direction)]
    minus = [a - EPS * d for a, d in zip(arrays, direction)]
    numeric = (np.vdot(f(*plus), dy) - np.vdot(f(*minus), dy)) / (2 * EPS)
    return numeric, direction


def close(a, b, rtol=1e-6):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) <= rtol * max(1.0, np.max(np.abs(b)))


TINY_CONV = [
    dict(x=(1, 2, 5, 4), w=(3, 2, 3, 3), kw=dict(padding=1)),
    dict(x=(2, 4, 5, 6), w=(2, 2, 2, 3), kw=dict(stride=(2, 1), padding=((1, 0), (2, 1)),
                                               dilation=(1, 2), groups=2)),
    dict(x=(1, 3, 4, 4), w=(3, 1, 3, 3), kw=dict(padding="same", groups=3)),
    dict(x=(1, 1, 6, 5), w=(2, 1, 4, 2), kw=dict(stride=3, padding="full")),
]
REALISTIC_CONV = [
    dict(x=(2, 16, 14, 14), w=(32, 16, 3, 3), kw=dict(padding=1)),
    dict(x=(1, 8, 28, 28), w=(16, 8, 5, 5), kw=dict(stride=2, padding=2)),
    dict(x=(2, 12, 17, 17), w=(12, 4, 7, 1), kw=dict(padding=(3, 0), groups=3)),
]


def _applicable(case, algo):
    if not algo.startswith("winograd"):
        return True
    kw = case["kw"]
    return (case["w"][2:] == (3, 3) and kw.get("stride", 1) == 1 and kw.get("dilation", 1) == 1)


def _cases(cases):
    return [pytest.param(c, b, a, id=f"{b}-{a}-{i}") for i, c in enumerate(cases)
            for b, a in backend_algorithms() if _applicable(c, a)]


@pytest.mark.parametrize("case,backend,algo", _cases(TINY_CONV))
def test_conv2d_full_finite_differences(case, backend, algo):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(case["x"]), rng.standard_normal(case["w"])
    b = rng.standard_normal(case["w"][0])
    f = lambda x, w, b: fc.conv2d(x, w, b, **case["kw"], algorithm=algo, backend=backend)  # noqa: E731
    dy = rng.standard_normal(f(x, w, b).shape)
    analytic = fc.conv2d_backward(dy, x, w, **case["kw"], algorithm=algo, backend=backend)
    for got, want in zip(analytic, full_fd(f, [x, w, b], dy)):
        assert close(got, want)


@pytest.mark.parametrize("case,backend,algo", _cases(REALISTIC_CONV))
def test_conv2d_directional_derivative(case, backend, algo):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(case["x"]), rng.standard_normal(case["w"])
    b = rng.standard_normal(case["w"][0])
    f = lambda x, w, b: fc.conv2d(x, w, b, **case["kw"], algorithm=algo, backend=backend)  # noqa: E731
    dy = rng.standard_normal(f(x, w, b).shape)
    grads = fc.conv2d_backward(dy, x, w, **case["kw"], algorithm=algo, backend=backend)
    numeric, direction = directional_fd(f, [x, w, b], dy, rng)
    analytic = sum(np.vdot(g, d) for g, d in zip(grads, direction))
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


TRANSPOSE = [
    dict(x=(1, 2, 3, 3), w=(2, 3, 3, 3), kw=dict(stride=2, padding=1, output_padding=1)),
    dict(x=(2, 4, 3, 2), w=(4, 1, 2, 3), kw=dict(stride=(1, 3), padding=(0, 1), groups=2,
                                               dilation=(2, 1), output_padding=(1, 0))),
]


@pytest.mark.parametrize("backend", fc.available_backends())
@pytest.mark.parametrize("case", TRANSPOSE)
def test_conv_transpose2d_full_finite_differences(backend, case):
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(case["x"]), rng.standard_normal(case["w"])
    b = rng.standard_normal(case["w"][1] * case["kw"].get("groups", 1))
    f = lambda x, w, b: fc.conv_transpose2d(x, w, b, **case["kw"], backend=backend)  # noqa: E731
    dy = rng.standard_normal(f(x, w, b).shape)
    analytic = fc.conv_transpose2d_backward(dy, x, w, **case["kw"], backend=backend)
    for got, want in zip(analytic, full_fd(f, [x, w, b], dy)):
        assert close(got, want)


POOL = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True),
    dict(kernel_size=2, stride=1, dilation=2),
]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if has_kernel(b, "maxpool2d_fwd")])
@pytest.mark.parametrize("kwargs", POOL)
def test_max_pool2d_full_finite_differences(backend, kwargs):
    # distinct values far apart: the maximum does not move under a 1e-6 nudge
    rng = np.random.default_rng(3)
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.1
    f = lambda x: fc.max_pool2d(x, **kwargs, backend=backend)  # noqa: E731
    dy = rng.standard_normal(f(x).shape)
    (numeric,) = full_fd(f, [x], dy)
    assert close(fc.max_pool2d_backward(dy, x, **kwargs, backend=backend), numeric)
