"""Identities of the convolution chapter, as hypothesis properties (float64)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fastconv as fc

small = st.integers(1, 4)


def rot180(w):
    return w[..., ::-1, ::-1]


def arrays(draw, *shape):
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).standard_normal(shape)


@st.composite
def conv_case(draw, max_stride=3):
    c, k, groups = draw(small), draw(small), draw(st.sampled_from([1, 2]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(kh, kh + 8)), draw(st.integers(kw, kw + 8))
    x = arrays(draw, draw(st.integers(1, 2)), c * groups, h, w)
    weight = arrays(draw, k * groups, c, kh, kw)
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    return x, weight, dict(stride=stride, padding=padding, groups=groups)


@given(conv_case())
def test_true_convolution_is_correlation_with_the_rotated_kernel(case):
    x, w, kw = case
    assert np.allclose(fc.convolve2d(x, w, **kw), fc.conv2d(x, np.ascontiguousarray(rot180(w)), **kw),
                       rtol=1e-12, atol=1e-12)


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7), st.integers(1, 7), st.data())
def test_wide_convolution_commutes_for_one_channel(m1, m2, k1, k2, data):
    """rot180(W) (x~) X == rot180(X) (x~) W: full convolution X * W = W * X."""
    x, w = arrays(data.draw, 1, 1, m1, m2), arrays(data.draw, 1, 1, k1, k2)
    left = fc.conv2d(x, np.ascontiguousarray(rot180(w)), padding="full")
    right = fc.conv2d(w, np.ascontiguousarray(rot180(x)), padding="full")
    assert left.shape == (1, 1, m1 + k1 - 1, m2 + k2 - 1)
    assert np.allclose(left, right, rtol=1e-12, atol=1e-12)


@given(st.integers(1, 40), st.integers(1, 9), st.integers(1, 5), st.integers(0, 4),
       st.integers(1, 3))
def test_output_size_formula(m, k, s, p, d):
    """(M - K + 2P)/S + 1 with the kernel's dilated span D*(K-1)+1 in place of K."""
    span = d * (k - 1) + 1
    if span > m + 2 * p:
        return
    expected = (m - span + 2 * p) // s + 1
    assert fc.conv_output_size(m, k, s, p, d) == expected
    x, w = np.zeros((1, 1, m, 3)), np.zeros((1, 1, k, 1))
    assert fc.conv2d(x, w, stride=(s, 1), padding=(p, 0), dilation=(d, 1)).shape[2] == expected
    assert fc.im2col(x, (k, 1), (d, 1), (p, 0), (s, 1)).shape[2] == expected * 3


@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
def test_same_and_full_padding_sizes(m, k, s, d):
    x, w = np.zeros((1, 1, m, 1)), np.zeros((1, 1, k, 1))
    assert fc.conv2d(x, w, stride=(s, 1), dilation=(d, 1), padding="same").shape[2] == -(-m // s)
    assert fc.conv2d(x, w, dilation=(d, 1), padding="full").shape[2] == m + d * (k - 1)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(0, 3), st.data())
def test_inserting_zeros_is_a_fractionally_strided_convolution(m, k, c, zeros, data):
    """D zeros between the inputs, then a full convolution, gives (D+1)(M-1)+K outputs:
    exactly the transposed convolution with stride D+1."""
    x = arrays(data.draw, 1, c, m, m)
    w = arrays(data.draw, c, 2, k, k)                 # transposed-conv layout (C_in, C_out, k, k)
    dilated = np.zeros((1, c, (zeros + 1) * (m - 1) + 1, (zeros + 1) * (m - 1) + 1))
    dilated[:, :, ::zeros + 1, ::zeros + 1] = x
    # full correlation with the rotated kernel = full true convolution
    conv_w = np.ascontiguousarray(rot180(w).transpose(1, 0, 2, 3))
    y = fc.conv2d(dilated, conv_w, padding="full")
    n_out = (zeros + 1) * (m - 1) + k
    assert y.shape == (1, 2, n_out, n_out)
    assert np.allclose(y, fc.conv_transpose2d(x, w, stride=zeros + 1), rtol=1e-12, atol=1e-12)


@given(conv_case(), st.integers(1, 2), st.data())
def test_transposed_convolution_is_the_adjoint(case, dilation, data):
    """<conv(x), y> == <x, conv_T(y)> for the same weight."""
    x, w, kw = case
    kw = dict(kw, dilation=dilation)
    h, wd = x.shape[2:]
    span = [dilation * (k - 1) + 1 for k in w.shape[2:]]
    if any(sp > m + 2 * p for sp, m, p in zip(span, (h, wd), kw["padding"])):
        return
    y_conv = fc.conv2d(x, w, **kw)
    y = arrays(data.draw, *y_conv.shape)
    # output_padding recovers the rows that the stride's floor dropped
    out_pad = tuple((m + 2 * p - sp) % s for m, p, sp, s in
                    zip((h, wd), kw["padding"], span, kw["stride"]))
    back = fc.conv_transpose2d(y, w, output_padding=out_pad, **kw)
    assert back.shape == x.shape
    assert np.isclose(np.vdot(y_conv, y), np.vdot(x, back), rtol=1e-10, atol=1e-10)
