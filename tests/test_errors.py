"""The error contract: one table of (call, exception, message fragment), and input hygiene."""

import numpy as np
import pytest

import fastconv as fc

from conftest import BACKENDS, backend_algorithms, has_kernel

X = np.ones((2, 4, 8, 8), np.float32)
W = np.ones((6, 4, 3, 3), np.float32)
WT = np.ones((4, 3, 3, 3), np.float32)
B = np.ones(6, np.float32)
Y = np.ones((2, 6, 6, 6), np.float32)

ERRORS = [
    # wrong ndim
    (lambda: fc.conv2d(X[0], W), ValueError, "x must be a 4-D array"),
    (lambda: fc.conv2d(X, W[0]), ValueError, "weight must be a 4-D array"),
    (lambda: fc.conv2d(X, W, B[:, None]), ValueError, "bias must be a 1-D array"),
    (lambda: fc.max_pool2d(X[0], 2), ValueError, "x must be a 4-D array"),
    (lambda: fc.col2im(X, 8, 3), ValueError, "cols must be a 3-D array"),
    # channel mismatch
    (lambda: fc.conv2d(X, np.ones((6, 3, 3, 3), np.float32)), ValueError,
     "weight has 3 input channels per group but x has 4 channels (groups=1)"),
    (lambda: fc.conv2d(X, W, np.ones(5, np.float32)), ValueError, "bias has 5 elements"),
    (lambda: fc.conv_transpose2d(X, np.ones((3, 2, 3, 3), np.float32)), ValueError,
     "weight has 3 input channels"),
    # groups
    (lambda: fc.conv2d(X, np.ones((6, 1, 3, 3), np.float32), groups=3), ValueError,
     "groups=3 does not divide the 4 input channels"),
    (lambda: fc.conv2d(X, np.ones((5, 2, 3, 3), np.float32), groups=2), ValueError,
     "groups=2 does not divide the 5 output channels"),
    (lambda: fc.conv2d(X, W, groups=0), ValueError, "groups must be positive, got 0"),
    (lambda: fc.conv2d(X, W, groups=1.5), TypeError, "groups must be an int"),
    (lambda: fc.conv_transpose2d(X, WT, groups=3), ValueError, "groups=3 does not divide"),
    # stride, dilation, padding
    (lambda: fc.conv2d(X, W, stride=0), ValueError, "stride must be positive, got 0"),
    (lambda: fc.conv2d(X, W, stride=(1, -2)), ValueError, "stride must be positive"),
    (lambda: fc.conv2d(X, W, dilation=0), ValueError, "dilation must be positive"),
    (lambda: fc.conv2d(X, W, padding=-1), ValueError, "padding must be non-negative"),
    (lambda: fc.conv2d(X, W, padding=((1, -1), (0, 0))), ValueError, "padding must be non-negative"),
    (lambda: fc.conv2d(X, W, padding="half"), ValueError, "padding must be 'valid', 'same', 'full'"),
    (lambda: fc.conv2d(X, W, padding=(1, 2, 3)), ValueError, "padding must be an int or a pair"),
    (lambda: fc.conv2d(X, W, stride=(1.0, 1)), TypeError, "stride must be an int or a pair"),
    (lambda: fc.conv2d(X, W, stride=True), TypeError, "stride must be an int"),
    (lambda: fc.max_pool2d(X, 2, stride=0), ValueError, "stride must be positive"),
    (lambda: fc.max_pool2d(X, 0), ValueError, "kernel_size must be positive"),
    (lambda: fc.max_pool2d(X, 2, dilation=0), ValueError, "dilation must be positive"),
    (lambda: fc.conv_transpose2d(X, WT, stride=0), ValueError, "stride must be positive"),
    (lambda: fc.conv_transpose2d(X, WT, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: fc.im2col(X, 3, stride=0), ValueError, "stride must be positive"),
    # kernel larger than the padded input / empty output
    (lambda: fc.conv2d(X, np.ones((6, 4, 9, 3), np.float32)), ValueError,
     "spans 9x3 but the padded input is only 8x8"),
    (lambda: fc.conv2d(X, W, dilation=4), ValueError, "spans 9x9"),
    (lambda: fc.conv2d(np.ones((1, 4, 0, 5), np.float32), W), ValueError, "padded input is only"),
    (lambda: fc.max_pool2d(X, 9), ValueError, "the output would be 0x0"),
    (lambda: fc.conv_transpose2d(X[:, :, :1, :1], WT, padding=2), ValueError,
     "the output would be -1x-1"),
    (lambda: fc.im2col(X, 9), ValueError, "spans 9x9"),
    (lambda: fc.conv_output_size(4, 7), ValueError, "spans 7"),
    (lambda: fc.conv_output_size(0, 1), ValueError, "M must be positive"),
    (lambda: fc.adaptive_avg_pool2d(np.ones((1, 1, 0, 3)), 1), ValueError, "non-empty spatial"),
    (lambda: fc.adaptive_avg_pool2d(X, 0), ValueError, "output_size must be positive"),
    # output_padding
    (lambda: fc.conv_transpose2d(X, WT, stride=2, output_padding=2), ValueError,
     "output_padding must be smaller than stride or dilation"),
    (lambda: fc.conv_transpose2d(X, WT, output_padding=1), ValueError,
     "output_padding must be smaller"),
    (lambda: fc.conv_transpose2d(X, WT, stride=2, output_padding=-1), ValueError,
     "output_padding must be >= 0"),
    # pooling padding and options
    (lambda: fc.max_pool2d(X, 3, padding=2), ValueError, "padding must be at most half"),
    (lambda: fc.avg_pool2d(X, (2, 4), padding=(1, 3)), ValueError, "padding must be at most half"),
    (lambda: fc.avg_pool2d(X, 2, divisor_override=0), ValueError, "divisor_override must not be zero"),
    (lambda: fc.avg_pool2d(X, 2, divisor_override=1.5), TypeError, "divisor_override must be an int"),
    (lambda: fc.avg_pool2d(X, 2, count_include_pad="yes"), TypeError, "count_include_pad must be a bool"),
    (lambda: fc.max_pool2d(X, 2, ceil_mode=None), TypeError, "ceil_mode must be a bool"),
    (lambda: fc.max_pool2d(np.ones((1, 1, 1, 8)), (2, 1), stride=1, padding=(1, 0), dilation=2),
     ValueError, "read only padding"),
    # dtypes
    (lambda: fc.conv2d(X.astype(np.int64), W), TypeError, "x has dtype int64; expected float32 or float64"),
    (lambda: fc.conv2d(X.astype(bool), W), TypeError, "x has dtype bool"),
    (lambda: fc.conv2d(X.astype(np.complex64), W), TypeError, "x has dtype complex64"),
    (lambda: fc.conv2d(X.astype(np.float16), W), TypeError, "x has dtype float16"),
    (lambda: fc.conv2d(X, W.astype(np.float64)), TypeError,
     "weight has dtype float64 but x has dtype float32"),
    (lambda: fc.conv2d(X, W, B.astype(np.float64)), TypeError, "bias has dtype float64 but x"),
    (lambda: fc.conv_transpose2d(X, WT.astype(np.float64)), TypeError, "weight has dtype float64"),
    (lambda: fc.max_pool2d(X.astype(np.int32), 2), TypeError, "x has dtype int32"),
    (lambda: fc.conv2d("image", W), TypeError, "x has dtype <U5"),
    # gradients of the wrong shape or dtype
    (lambda: fc.conv2d_backward(Y[:, :5], X, W), ValueError,
     "grad_out has shape (2, 5, 6, 6) but the forward output has shape (2, 6, 6, 6)"),
    (lambda: fc.conv2d_backward(Y.astype(np.float64), X, W), TypeError, "grad_out has dtype float64"),
    (lambda: fc.max_pool2d_backward(Y, X, 2), ValueError, "grad_out has shape"),
    (lambda: fc.avg_pool2d_backward(Y, X, 2), ValueError, "grad_out has shape"),
    (lambda: fc.adaptive_avg_pool2d_backward(Y, X, 2), ValueError, "grad_out has shape"),
    (lambda: fc.conv_transpose2d_backward(X, X, WT), ValueError, "grad_out has shape"),
    # col2im
    (lambda: fc.col2im(np.ones((1, 10, 36)), 8, 3), ValueError, "not a multiple of kernel size"),
    (lambda: fc.col2im(np.ones((1, 9, 35)), 8, 3), ValueError, "cols has L=35 columns"),
    # algorithms and backends
    (lambda: fc.conv2d(X, W, algorithm="fft"), ValueError, "algorithm must be one of"),
    (lambda: fc.conv2d(X, np.ones((6, 4, 5, 5), np.float32), algorithm="winograd",
                       backend="numpy"), ValueError, "needs a 3x3 kernel, stride 1 and dilation 1"),
    (lambda: fc.conv2d(X, W, stride=2, algorithm="winograd2", backend="numpy"), ValueError,
     "needs a 3x3 kernel"),
    (lambda: fc.conv2d(X, W, dilation=2, algorithm="winograd6", backend="numpy"), ValueError,
     "needs a 3x3 kernel"),
    (lambda: fc.conv2d(X, W, backend="tpu"), ValueError, "unknown backend 'tpu'"),
    (lambda: fc.conv2d(X, W, backend=3), TypeError, "backend must be a string"),
    (lambda: fc.set_backend("tpu"), ValueError, "unknown backend"),
    (lambda: fc.set_num_threads(0), ValueError, "n must be a positive int"),
]


@pytest.mark.parametrize("call,exc,fragment", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_bad_input_raises_documented_error(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_missing_kernel_is_an_error_not_a_fallback(backend):
    module_has = fc.algorithms(backend)
    for algo in ("direct", "winograd"):
        if algo not in module_has and not (algo == "winograd" and "winograd4" in module_has):
            with pytest.raises(ValueError, match="does not implement algorithm"):
                fc.conv2d(X, W, algorithm=algo, backend=backend)
    if not has_kernel(backend, "maxpool2d_fwd"):
        with pytest.raises(ValueError, match="does not implement maxpool2d_fwd"):
            fc.max_pool2d(X, 2, backend=backend)


def _all_ops(x, w, wt, backend, algo):
    """Every operation on x (N, 4, H, W), as (name, callable) pairs."""
    y = fc.conv2d(x, w, padding=1, algorithm=algo, backend=backend)
    yt = fc.conv_transpose2d(x, wt, stride=2, backend=backend)
    ops = [
        ("conv2d", lambda: fc.conv2d(x, w, padding=1, algorithm=algo, backend=backend)),
        ("conv2d_backward", lambda: fc.conv2d_backward(y, x, w, padding=1, algorithm=algo,
                                                       backend=backend)),
        ("conv_transpose2d", lambda: fc.conv_transpose2d(x, wt, stride=2, backend=backend)),
        ("conv_transpose2d_backward",
         lambda: fc.conv_transpose2d_backward(yt, x, wt, stride=2, backend=backend)),
        ("im2col", lambda: fc.im2col(x, 3, padding=1, backend=backend)),
    ]
    if has_kernel(backend, "maxpool2d_fwd"):
        ym = fc.max_pool2d(x, 3, 2, 1, backend=backend)
        ya = fc.avg_pool2d(x, 3, 2, 1, backend=backend)
        yg = fc.adaptive_avg_pool2d(x, 2, backend=backend)
        ops += [
            ("max_pool2d", lambda: fc.max_pool2d(x, 3, 2, 1, backend=backend)),
            ("max_pool2d_backward", lambda: fc.max_pool2d_backward(ym, x, 3, 2, 1, backend=backend)),
            ("avg_pool2d", lambda: fc.avg_pool2d(x, 3, 2, 1, backend=backend)),
            ("avg_pool2d_backward", lambda: fc.avg_pool2d_backward(ya, x, 3, 2, 1, backend=backend)),
            ("adaptive_avg_pool2d", lambda: fc.adaptive_avg_pool2d(x, 2, backend=backend)),
            ("adaptive_avg_pool2d_backward",
             lambda: fc.adaptive_avg_pool2d_backward(yg, x, 2, backend=backend)),
        ]
    return ops


def _flatten(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("backend,algo", backend_algorithms())
def test_non_contiguous_and_negative_stride_inputs(backend, algo):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 4, 8, 10))
    w = rng.standard_normal((4, 4, 3, 3))
    wt = rng.standard_normal((4, 2, 3, 3))
    views = {
        "transposed": base.transpose(0, 1, 3, 2)[:, :, :8, :8],
        "negative stride": base[:, :, ::-1, ::-1][:, :, :, :8],
        "strided": np.repeat(base, 2, axis=3)[:, :, :, ::2][:, :, :, :8],
        "channels last": np.ascontiguousarray(base[:, :, :, :8].transpose(0, 2, 3, 1))
                           .transpose(0, 3, 1, 2),
    }
    for label, view in views.items():
        dense = np.ascontiguousarray(view)
        for (name, on_view), (_, on_dense) in zip(_all_ops(view, w, wt, backend, algo),
                                                  _all_ops(dense, w, wt, backend, algo)):
            for a, b in zip(_flatten(on_view()), _flatten(on_dense())):
                assert np.array_equal(a, b), (label, name)


@pytest.mark.parametrize("backend,algo", backend_algorithms())
def test_inputs_are_never_written(backend, algo):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 8, 8))
    w = rng.standard_normal((4, 4, 3, 3))
    wt = rng.standard_normal((4, 2, 3, 3))
    ops = _all_ops(x, w, wt, backend, algo)
    saved = [a.copy() for a in (x, w, wt)]
    for a in (x, w, wt):
        a.setflags(write=False)        # a kernel writing to an input raises here
    for _, op in ops:
        op()
    for a, before in zip((x, w, wt), saved):
        assert np.array_equal(a, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_every_op(backend):
    """Batch outputs come back empty; parameter gradients of an empty batch are zero."""
    x = np.zeros((0, 4, 8, 8))
    for name, op in _all_ops(x, np.ones((4, 4, 3, 3)), np.ones((4, 2, 3, 3)), backend, "auto"):
        outs = _flatten(op())
        assert outs[0].shape[0] == 0, name
        for out in outs[1:]:
            assert out.size > 0 and not out.any(), name
