"""Convolution on every backend and algorithm against the naive oracle (no torch needed)."""

import numpy as np
import pytest
import scipy.signal

import fastconv as fc
from fastconv.select import winograd_applicable
from fastconv.shapes import conv2d_geometry

import oracle
from configs import TOLERANCE, conv_configs, conv_transpose_configs, config_id, rel_err
from conftest import BACKENDS, backend_algorithms

CONFIGS = conv_configs(80, seed=1)


def _arrays(config, rng, c_out):
    x = rng.standard_normal(config["x_shape"])
    w = rng.standard_normal(config["w_shape"])
    b = rng.standard_normal(c_out) if config["bias"] else None
    return x, w, b


def _cast(dtype, *arrays):
    return [None if a is None else a.astype(dtype) for a in arrays]


def _applicable(config, algo):
    x, w = np.zeros(config["x_shape"]), np.zeros(config["w_shape"])
    g = conv2d_geometry(x, w, None, **config["kwargs"])[3]
    return not algo.startswith("winograd") or winograd_applicable(g)


def applicable_cases(configs):
    """(config, backend, algorithm) for every algorithm that can run the config."""
    return [pytest.param(c, b, a, id=f"{b}-{a}-{config_id(c)}")
            for c in configs for b, a in backend_algorithms() if _applicable(c, a)]


@pytest.mark.parametrize("config,backend,algo", applicable_cases(CONFIGS))
def test_conv2d_forward_and_backward_match_naive_loops(config, backend, algo):
    rng = np.random.default_rng(0)
    x, w, b = _arrays(config, rng, config["w_shape"][0])
    kw = config["kwargs"]
    naive_args = (kw["stride"], config["pads"], kw["dilation"], kw["groups"])
    y_ref = oracle.conv2d(x, w, b, *naive_args)
    dy = rng.standard_normal(y_ref.shape)
    grads_ref = oracle.conv2d_backward(dy, x, w, *naive_args)

    dtype = config["dtype"]
    tol = TOLERANCE[dtype, algo]
    x_, w_, b_, dy_ = _cast(dtype, x, w, b, dy)
    y = fc.conv2d(x_, w_, b_, **kw, algorithm=algo, backend=backend)
    assert y.dtype == dtype
    assert rel_err(y, y_ref) <= tol
    grads = fc.conv2d_backward(dy_, x_, w_, **kw, algorithm=algo, backend=backend)
    for name, grad, ref in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_ref):
        assert grad.dtype == dtype, name
        assert rel_err(grad, ref) <= tol, name
    gx, gw, gb = fc.conv2d_backward(dy_, x_, w_, **kw, algorithm=algo, backend=backend,
                                    needs_input_grad=False)
    assert gx is None and np.array_equal(gw, grads[1]) and np.array_equal(gb, grads[2])


@pytest.mark.parametrize("backend,algo",
                         [c for c in backend_algorithms() if not c[1].startswith("winograd")])
@pytest.mark.parametrize("kernel", [(7, 1), (1, 7), (2, 5)])
def test_non_square_kernels(backend, algo, kernel):
    """The CS231n im2col index bug (ii*kh + jj) only shows with kh != kw."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 17, 13))
    w = rng.standard_normal((4, 5) + kernel)
    pads = (kernel[0] // 2,) * 2 + (kernel[1] // 2,) * 2
    y = fc.conv2d(x, w, padding=(kernel[0] // 2, kernel[1] // 2), algorithm=algo, backend=backend)
    assert rel_err(y, oracle.conv2d(x, w, None, (1, 1), pads, (1, 1), 1)) <= 1e-10


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba") if b in BACKENDS])
@pytest.mark.parametrize("rows_per_block", [1, None])
@pytest.mark.parametrize("batch,groups,padding,dilation,per_image", [
    (1, 1, (2, 0), (1, 1), False),      # one image: its blocks shared by the threads
    (3, 1, (1, 0), (2, 1), False),      # three images on two threads: shared too
    (4, 1, (0, 0), (1, 2), True),       # two images per thread
    (5, 2, (2, 0), (2, 2), True),
])
def test_whole_row_lowering_and_both_gradient_schedules(monkeypatch, backend, rows_per_block,
                                                        batch, groups, padding, dilation,
                                                        per_image):
    """Short stride-1 rows without horizontal padding lower as whole input rows, and the
    gradients take the per-image or the shared schedule: both against the oracle, in
    blocks of one output row and in one block, and bit for bit the same when repeated."""
    from fastconv.backends import _workspace

    rng = np.random.default_rng(21)
    x = rng.standard_normal((batch, 4, 9, 11))
    w = rng.standard_normal((6, 4 // groups, 3, 4))
    b = rng.standard_normal(6)
    kw = dict(padding=padding, dilation=dilation, groups=groups, algorithm="im2col",
              backend=backend)
    args = ((1, 1), (padding[0],) * 2 + (padding[1],) * 2, dilation, groups)
    y_ref = oracle.conv2d(x, w, b, *args)
    dy = rng.standard_normal(y_ref.shape)
    refs = oracle.conv2d_backward(dy, x, w, *args)
    assert _workspace.whole_rows(x.shape, y_ref.shape, 4, 1, 1, 0, dilation[1])
    assert _workspace.per_image_gradients(w, dy, groups, 2) == per_image
    if rows_per_block:          # a workspace limit of one byte: blocks of one output row
        monkeypatch.setattr(_workspace, "_limit", 1)
    before = fc.get_num_threads()
    fc.set_num_threads(2)
    try:
        x_, w_, b_, dy_ = _cast(np.float32, x, w, b, dy)
        assert rel_err(fc.conv2d(x_, w_, b_, **kw), y_ref) <= TOLERANCE[np.float32, "im2col"]
        grads = fc.conv2d_backward(dy_, x_, w_, **kw)
        again = fc.conv2d_backward(dy_, x_, w_, **kw)
    finally:
        fc.set_num_threads(before)
    for grad, ref, repeat in zip(grads, refs, again):
        assert rel_err(grad, ref) <= TOLERANCE[np.float32, "im2col"]
        assert np.array_equal(grad, repeat)


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba") if b in BACKENDS])
@pytest.mark.parametrize("rows_per_block", [1, None])
@pytest.mark.parametrize("batch,kernel,stride,padding,dilation", [
    (1, (4, 4), (2, 2), (1, 1), (1, 1)),    # the lowering's and col2im's phases, stride 2
    (4, (3, 7), (1, 3), (1, 3), (1, 1)),    # any stride: no constant-stride loop
    (1, (5, 11), (3, 4), (0, 2), (1, 1)),   # AlexNet's stride 4, rows of 3 split by thread
    (2, (3, 3), (2, 2), (0, 1), (2, 2)),    # lowered in phases, added back without
    (1, (2, 5), (2, 2), (1, 2), (1, 2)),    # dilated taps in phases
    (3, (1, 1), (2, 2), (0, 0), (1, 1)),    # one tap per pixel: no phases
])
def test_strided_lowering_in_stride_phases(monkeypatch, backend, rows_per_block, batch, kernel,
                                           stride, padding, dilation):
    """Strided lowering copies taps from input rows split into stride phases, and col2im
    adds them back through such phases where two taps read each column: forward and
    both gradients against the oracle, in blocks of one output row and in one block."""
    from fastconv.backends import _workspace

    rng = np.random.default_rng(22)
    x = rng.standard_normal((batch, 3, 13, 29))
    w = rng.standard_normal((5, 3) + kernel)
    kw = dict(stride=stride, padding=padding, dilation=dilation, algorithm="im2col",
              backend=backend)
    args = (stride, (padding[0],) * 2 + (padding[1],) * 2, dilation, 1)
    y_ref = oracle.conv2d(x, w, None, *args)
    dy = rng.standard_normal(y_ref.shape)
    refs = oracle.conv2d_backward(dy, x, w, *args)
    if rows_per_block:
        monkeypatch.setattr(_workspace, "_limit", 1)
    before = fc.get_num_threads()
    fc.set_num_threads(2)
    try:
        x_, w_, dy_ = _cast(np.float32, x, w, dy)
        assert rel_err(fc.conv2d(x_, w_, **kw), y_ref) <= TOLERANCE[np.float32, "im2col"]
        grads = fc.conv2d_backward(dy_, x_, w_, **kw)
    finally:
        fc.set_num_threads(before)
    for grad, ref in zip(grads, refs):
        assert rel_err(grad, ref) <= TOLERANCE[np.float32, "im2col"]


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba") if b in BACKENDS])
@pytest.mark.parametrize("rows_per_block", [1, None])
@pytest.mark.parametrize("batch,channels,kernel,stride,padding,dilation,groups", [
    (1, (6, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1),      # 54 terms: quads and a remainder
    (2, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 8),      # depthwise: one output channel
    (1, (6, 9), (2, 5), (2, 3), (1, 2), (2, 1), 3),      # phases both ways, dilation
    (3, (1, 7), (5, 5), (1, 1), (0, 0), (1, 1), 1),      # LeNet's c1: odd output channels
    (1, (3, 4), (11, 11), (4, 4), (2, 2), (1, 1), 1),    # AlexNet's conv1
    (1, (5, 6), (1, 7), (1, 1), (0, 3), (1, 1), 1),      # Inception's 1x7: shared padding
    (2, (4, 4), (3, 3), (1, 1), (5, 5), (1, 1), 1),      # padding wider than the window
    (1, (4, 6), (3, 5), (2, 1), (1, 2), (1, 2), 2),      # row phases, shared dilated padding
])
def test_direct_forward_and_weight_gradient_in_wide_rows(monkeypatch, backend, rows_per_block,
                                                         batch, channels, kernel, stride,
                                                         padding, dilation, groups):
    """The direct forward sums runs of stride-phase planes over wide output rows, and the
    weight gradient takes dot products of those runs with dY laid out in the same rows,
    which share their padding columns at column stride 1: against the oracle, in blocks
    of one output row and in cache-sized blocks."""
    from fastconv.backends import _workspace

    rng = np.random.default_rng(23)
    c_in, c_out = channels
    x = rng.standard_normal((batch, c_in, 15, 13))
    w = rng.standard_normal((c_out, c_in // groups) + kernel)
    b = rng.standard_normal(c_out)
    args = (stride, (padding[0],) * 2 + (padding[1],) * 2, dilation, groups)
    y_ref = oracle.conv2d(x, w, b, *args)
    dy = rng.standard_normal(y_ref.shape)
    refs = oracle.conv2d_backward(dy, x, w, *args)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
              algorithm="direct", backend=backend)
    if rows_per_block:
        monkeypatch.setattr(_workspace, "_limit", 1)
    before = fc.get_num_threads()
    fc.set_num_threads(2)
    try:
        for dtype in (np.float32, np.float64):
            x_, w_, b_, dy_ = _cast(dtype, x, w, b, dy)
            assert rel_err(fc.conv2d(x_, w_, b_, **kw), y_ref) <= TOLERANCE[dtype, "direct"]
            for grad, ref in zip(fc.conv2d_backward(dy_, x_, w_, **kw), refs):
                assert rel_err(grad, ref) <= TOLERANCE[dtype, "direct"]
    finally:
        fc.set_num_threads(before)


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba") if b in BACKENDS])
@pytest.mark.parametrize("c_out,size,kernel,padding,groups,n_threads", [
    (203, 7, (3, 3), (1, 1), 1, 2),     # ResNet-50's layer4 3x3, odd channels
    (203, 7, (3, 3), (1, 1), 1, 3),
    (101, 5, (1, 1), (0, 0), 1, 3),     # a 1x1 stride-1 product: no lowering
    (99, 6, (3, 3), (1, 0), 1, 2),      # whole input rows lowered, 6 output rows of 4
    (2 * 50, 3, (3, 2), (1, 1), 2, 4),  # two groups, two parts each
])
def test_forward_shares_output_channels_of_small_maps(backend, c_out, size, kernel, padding,
                                                      groups, n_threads):
    """Where the weights outweigh a lone image, the im2col forward's threads share its
    output channels, each lowering the whole image: against the oracle, with the
    channels split unevenly."""
    from fastconv.backends._workspace import output_channel_parts

    rng = np.random.default_rng(24)
    x = rng.standard_normal((1, 4 * groups, size, size))
    w = rng.standard_normal((c_out, 4) + kernel)
    b = rng.standard_normal(c_out)
    args = ((1, 1), (padding[0],) * 2 + (padding[1],) * 2, (1, 1), groups)
    y_ref = oracle.conv2d(x, w, b, *args)
    assert output_channel_parts(y_ref.shape, groups, n_threads) == n_threads // groups
    before = fc.get_num_threads()
    fc.set_num_threads(n_threads)
    try:
        for dtype in (np.float32, np.float64):
            x_, w_, b_ = _cast(dtype, x, w, b)
            y = fc.conv2d(x_, w_, b_, padding=padding, groups=groups, algorithm="im2col",
                          backend=backend)
            assert rel_err(y, y_ref) <= TOLERANCE[dtype, "im2col"]
    finally:
        fc.set_num_threads(before)


@pytest.mark.parametrize("config", conv_transpose_configs(40, seed=2), ids=config_id)
@pytest.mark.parametrize("backend", fc.available_backends())
def test_conv_transpose2d_matches_naive_scatter(config, backend):
    rng = np.random.default_rng(0)
    kw = config["kwargs"]
    x, w, b = _arrays(config, rng, config["w_shape"][1] * kw["groups"])
    y_ref = oracle.conv_transpose2d(x, w, b, kw["stride"], kw["padding"], kw["output_padding"],
                                    kw["dilation"], kw["groups"])
    dtype = config["dtype"]
    x_, w_, b_ = _cast(dtype, x, w, b)
    y = fc.conv_transpose2d(x_, w_, b_, **kw, backend=backend)
    assert y.dtype == dtype
    assert rel_err(y, y_ref) <= TOLERANCE[dtype, "im2col"]


@pytest.mark.parametrize("mode", ["full", "valid", "same"])
def test_convolve2d_is_true_convolution(mode):
    """One channel: fastconv's true convolution equals scipy.signal.convolve2d."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((9, 7)), rng.standard_normal((3, 4))
    y = fc.convolve2d(x[None, None], w[None, None], padding=mode)[0, 0]
    if mode == "same":
        # scipy centres the odd pixel the other way round; compare the full result's window
        full = scipy.signal.convolve2d(x, w, mode="full")
        pad_top, pad_left = (w.shape[0] - 1) // 2, (w.shape[1] - 1) // 2
        ref = full[w.shape[0] - 1 - pad_top:, w.shape[1] - 1 - pad_left:][:9, :7]
    else:
        ref = scipy.signal.convolve2d(x, w, mode=mode)
    assert rel_err(y, ref) <= 1e-12


@pytest.mark.parametrize("backend", fc.available_backends())
@pytest.mark.parametrize("config", conv_configs(30, seed=5), ids=config_id)
def test_im2col_and_col2im_match_definition(backend, config):
    """cols[n, (c,i,j), (oh,ow)] = X[n, c, oh*sh-pt+i*dh, ow*sw-pl+j*dw]; col2im is its adjoint."""
    kw = config["kwargs"]
    stride, dilation = kw["stride"], kw["dilation"]
    padding = (config["pads"][0], config["pads"][2])
    pads = (padding[0], padding[0], padding[1], padding[1])
    kernel = config["w_shape"][2:]
    n, c, h, w = config["x_shape"]
    if oracle.conv_output_shape((n, c, h, w), (1, c) + kernel, stride, pads, dilation)[2] < 1 \
            or oracle.conv_output_shape((n, c, h, w), (1, c) + kernel, stride, pads, dilation)[3] < 1:
        pytest.skip("kernel larger than the symmetric padded input")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, c, h, w)).astype(config["dtype"])
    cols = fc.im2col(x, kernel, dilation, padding, stride, backend=backend)
    # column (c,i,j) of the lowered matrix times a one-hot weight picks one tap
    eye = np.eye(c * kernel[0] * kernel[1]).reshape(-1, c, *kernel)
    taps = oracle.conv2d(x.astype(np.float64), eye, None, stride, pads, dilation, 1)
    assert np.array_equal(cols, taps.reshape(cols.shape).astype(config["dtype"]))
    # adjoint: <im2col(x), z> == <x, col2im(z)>
    z = rng.standard_normal(cols.shape).astype(config["dtype"])
    back = fc.col2im(z, (h, w), kernel, dilation, padding, stride, backend=backend)
    lhs = np.vdot(cols.astype(np.float64), z.astype(np.float64))
    rhs = np.vdot(x.astype(np.float64), back.astype(np.float64))
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


@pytest.mark.parametrize("backend,algo", backend_algorithms())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_out,size", [(2, 6), (64, 2)])   # the second: weights outweigh Y
def test_empty_batch(backend, algo, dtype, c_out, size):
    x = np.zeros((0, 4, size, size), dtype)
    w = np.ones((c_out, 4, 3, 3), dtype)
    y = fc.conv2d(x, w, padding=1, algorithm=algo, backend=backend)
    assert y.shape == (0, c_out, size, size) and y.dtype == dtype
    gx, gw, gb = fc.conv2d_backward(y, x, w, padding=1, algorithm=algo, backend=backend)
    assert gx.shape == x.shape and not gw.any() and not gb.any()


def _design_layer_cases():
    """DESIGN.md section 6 and the grouped bench layers by name, on every compiled backend
    and algorithm; the direct gradients' plain loops only on the layers they take well
    under a second for. Batches are cut to 2 images (the batch-8 layer keeps its batched
    path)."""
    from fastconv.bench import CONV_LAYERS, GROUPED_LAYERS
    cases = []
    for layer in CONV_LAYERS + GROUPED_LAYERS:
        work = layer.c_in * layer.kernel[0] * layer.kernel[1] * layer.c_out // layer.groups
        for backend, algo in backend_algorithms():
            if backend == "numpy" or algo.startswith("winograd"):
                continue
            if algo == "direct" and work > 2 ** 17:
                continue
            cases.append(pytest.param(layer, backend, algo, id=f"{layer.name}-{backend}-{algo}"))
    return cases


@pytest.mark.parametrize("layer,backend,algo", _design_layer_cases())
def test_design_layers_float32_against_float64_reference(layer, backend, algo):
    x, w = layer.arrays(np.float64, seed=7)
    x = x[:2]
    kw = layer.kwargs()
    b = np.linspace(-1, 1, layer.c_out)
    y_ref = fc.conv2d(x, w, b, **kw, algorithm="im2col", backend="numpy")
    dy = np.random.default_rng(8).standard_normal(y_ref.shape)
    grads_ref = fc.conv2d_backward(dy, x, w, **kw, algorithm="im2col", backend="numpy")
    f32 = [a.astype(np.float32) for a in (x, w, b, dy)]
    y = fc.conv2d(*f32[:3], **kw, algorithm=algo, backend=backend)
    assert rel_err(y, y_ref) <= TOLERANCE[np.float32, algo]
    grads = fc.conv2d_backward(f32[3], f32[0], f32[1], **kw, algorithm=algo, backend=backend)
    for name, got, ref in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_ref):
        assert rel_err(got, ref) <= TOLERANCE[np.float32, algo], name


def _config(x_shape, w_shape, padding, dtype=np.float32, stride=(1, 1)):
    (pt, pl), groups = padding, x_shape[1] // w_shape[1]
    return dict(x_shape=x_shape, w_shape=w_shape, bias=True,
                kwargs=dict(stride=stride, padding=((pt, pt), (pl, pl)), dilation=(1, 1),
                            groups=groups),
                pads=(pt, pt, pl, pl), dtype=dtype)


FUSED_CONFIGS = conv_configs(24, seed=12) + [
    _config((2, 6, 5, 7), (8, 6, 1, 1), (0, 0)),                  # 1x1: a GEMM on X itself
    _config((1, 4, 9, 11), (6, 4, 3, 4), (1, 0)),                 # lowered as whole input rows
    _config((1, 4, 2, 3), (30, 4, 3, 3), (1, 1), np.float64),     # output channels split
    _config((3, 4, 7, 6), (6, 2, 3, 3), (2, 1)),                  # groups, F6 remainders
]


@pytest.mark.parametrize("config,backend,algo", applicable_cases(FUSED_CONFIGS))
def test_conv2d_fused_applies_scale_shift_residual_and_relu(config, backend, algo):
    """relu(conv2d * scale + shift + residual) from each forward kernel's epilogue, with
    every part on or off, at two threads (so that channel splits and row blocks run)."""
    rng = np.random.default_rng(2)
    c_out = config["w_shape"][0]
    x, w, b = _arrays(config, rng, c_out)
    kw = config["kwargs"]
    y_ref = oracle.conv2d(x, w, b, kw["stride"], config["pads"], kw["dilation"], kw["groups"])
    scale, shift = rng.uniform(-2, 2, c_out), rng.standard_normal(c_out)
    residual = rng.standard_normal(y_ref.shape)
    dtype = config["dtype"]
    x_, w_, b_, r_ = _cast(dtype, x, w, b, residual)
    before = fc.get_num_threads()
    fc.set_num_threads(2)
    try:
        for scaled, summed, relu in [(True, True, True), (True, False, False),
                                     (False, True, False), (False, False, True)]:
            expected = y_ref * scale[:, None, None] if scaled else y_ref.copy()
            expected += shift[:, None, None] + (residual if summed else 0)
            if relu:
                expected = np.maximum(expected, 0)
            y = fc.functional.conv2d_fused(
                x_, w_, b_, **kw, scale=scale if scaled else None, shift=shift,
                residual=r_ if summed else None, relu=relu, algorithm=algo, backend=backend)
            assert y.dtype == dtype
            assert rel_err(y, expected) <= TOLERANCE[dtype, algo], (scaled, summed, relu)
    finally:
        fc.set_num_threads(before)
    r_.flat[0] = np.nan                     # NaN passes the ReLU, as in PyTorch
    y = fc.functional.conv2d_fused(x_, w_, b_, **kw, residual=r_, relu=True, algorithm=algo,
                                   backend=backend)
    assert np.isnan(y.flat[0]) and not np.isnan(y.flat[1:]).any()


def test_conv2d_fused_rejects_bad_arguments():
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"scale must have shape \(3,\), got \(2,\)"):
        fc.functional.conv2d_fused(x, w, scale=np.ones(2))
    with pytest.raises(TypeError, match="shift must be 3 numbers"):
        fc.functional.conv2d_fused(x, w, shift="abc")
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(1, 3, 3, 3\)"):
        fc.functional.conv2d_fused(x, w, residual=np.zeros((1, 3, 5, 5), np.float32))
