"""CUDA kernels (``numba.cuda``) under the reference backend's names and arguments.

Every kernel gives each GPU thread the outputs it alone writes, so no two
threads add into one element and the results do not depend on scheduling:
convolution forward, data gradient and weight gradient, unfold/fold and the
pooling forwards take one output element per thread (the data gradient and
fold gather from every window that covers their pixel, the weight gradient
sums over the batch and the output map); the pooling gradients take one
(n, c) plane per thread and scatter inside it. The convolution is direct: a
thread's loops are those of the chapter's formula. Sums start from
``zero[0]``, a one-element array of the output's dtype, so float32 kernels add
in float32 as the CPU kernels do.

The host functions take NumPy arrays, as the other backends' kernels do: they
copy the inputs to the device, launch one thread per output item in blocks of
``threads_per_block()`` threads (``FASTCONV_CUDA_THREADS``, 128 by default; the
tests use a few, so that arrays cross block boundaries), and copy the output
back into the array the caller passed.
"""

import os

import numpy as np
from numba import cuda


def threads_per_block():
    """Threads per block of every launch."""
    return int(os.environ.get("FASTCONV_CUDA_THREADS", "128"))


def _launch(kernel, n_items, inputs, outputs, *scalars):
    """Run ``kernel[blocks, threads](*inputs, *outputs, *scalars)`` over ``n_items``
    threads and copy the outputs back into the host arrays ``outputs``."""
    if n_items == 0:
        return
    threads = threads_per_block()
    device_in = [cuda.to_device(np.ascontiguousarray(a)) for a in inputs]
    device_out = [cuda.device_array(a.shape, a.dtype) for a in outputs]
    kernel[(n_items + threads - 1) // threads, threads](*device_in, *device_out, *scalars)
    for host, device in zip(outputs, device_out):
        device.copy_to_host(host)


@cuda.jit(device=True)
def _unravel(idx, shape):
    """The 4-D index of the element ``idx`` of a C-ordered array of ``shape``."""
    return (idx // (shape[1] * shape[2] * shape[3]), idx // (shape[2] * shape[3]) % shape[1],
            idx // shape[3] % shape[2], idx % shape[3])


@cuda.jit(device=True)
def _zero_plane(a, n, c, zero):
    for h in range(a.shape[2]):
        for v in range(a.shape[3]):
            a[n, c, h, v] = zero


# ---------------------------------------------------------------------------
# Convolution, direct
# ---------------------------------------------------------------------------

@cuda.jit
def _conv_fwd(x, w, b, y, sh, sw, pt, pl, dh, dw, groups):
    """y[n, k, oh, ow] = b[k] + sum_{c,i,j} w[k, c, i, j] x[n, g*Cg + c, oh*sh-pt+i*dh, ow*sw-pl+j*dw]."""
    idx = cuda.grid(1)
    if idx >= y.size:
        return
    n, k, oh, ow = _unravel(idx, y.shape)
    K = y.shape[1]
    Cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    H, W = x.shape[2], x.shape[3]
    c0 = k // (K // groups) * Cg
    acc = b[k]
    for c in range(Cg):
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if 0 <= ih < H:
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    if 0 <= iw < W:
                        acc += w[k, c, i, j] * x[n, c0 + c, ih, iw]
    y[n, k, oh, ow] = acc


@cuda.jit
def _conv_bwd_data(dy, w, zero, dx, sh, sw, pt, pl, dh, dw, groups):
    """dx[n, c, h, v] gathers w[k, c', i, j] dy[n, k, oh, ow] over the windows that read it:
    oh*sh - pt + i*dh = h and ow*sw - pl + j*dw = v."""
    idx = cuda.grid(1)
    if idx >= dx.size:
        return
    n, c, h, v = _unravel(idx, dx.shape)
    K, Cg, kh, kw = w.shape[0], w.shape[1], w.shape[2], w.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    Kg = K // groups
    k0 = c // Cg * Kg
    acc = zero[0]
    for i in range(kh):
        t = h + pt - i * dh
        if t < 0 or t % sh != 0 or t // sh >= OH:
            continue
        for j in range(kw):
            u = v + pl - j * dw
            if u < 0 or u % sw != 0 or u // sw >= OW:
                continue
            for k in range(k0, k0 + Kg):
                acc += w[k, c % Cg, i, j] * dy[n, k, t // sh, u // sw]
    dx[n, c, h, v] = acc


@cuda.jit
def _conv_bwd_weight(dy, x, zero, dw_, sh, sw, pt, pl, dh, dw, groups):
    """dw_[k, c, i, j] = sum over n, oh, ow of dy[n, k, oh, ow] x[n, g*Cg + c, oh*sh-pt+i*dh, ...]."""
    idx = cuda.grid(1)
    if idx >= dw_.size:
        return
    k, c, i, j = _unravel(idx, dw_.shape)
    K, Cg = dw_.shape[0], dw_.shape[1]
    N, OH, OW = dy.shape[0], dy.shape[2], dy.shape[3]
    H, W = x.shape[2], x.shape[3]
    cx = k // (K // groups) * Cg + c
    acc = zero[0]
    for n in range(N):
        for oh in range(OH):
            ih = oh * sh - pt + i * dh
            if 0 <= ih < H:
                for ow in range(OW):
                    iw = ow * sw - pl + j * dw
                    if 0 <= iw < W:
                        acc += dy[n, k, oh, ow] * x[n, cx, ih, iw]
    dw_[k, c, i, j] = acc


def conv2d_fwd_direct(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    _launch(_conv_fwd, y.size, (x, w, b), (y,), sh, sw, pt, pl, dh, dw, groups)


def conv2d_bwd_data_direct(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    _launch(_conv_bwd_data, dx.size, (dy, w, np.zeros(1, dx.dtype)), (dx,),
            sh, sw, pt, pl, dh, dw, groups)


def conv2d_bwd_weight_direct(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    _launch(_conv_bwd_weight, dw_.size, (dy, x, np.zeros(1, dw_.dtype)), (dw_,),
            sh, sw, pt, pl, dh, dw, groups)


# ---------------------------------------------------------------------------
# Unfold / fold
# ---------------------------------------------------------------------------

@cuda.jit
def _im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw):
    """cols[n, (c, i, j), oh, ow] = x[n, c, oh*sh-pt+i*dh, ow*sw-pl+j*dw], 0 in the padding."""
    idx = cuda.grid(1)
    if idx >= cols.size:
        return
    n, r, oh, ow = _unravel(idx, cols.shape)
    j = r % kw
    i = r // kw % kh
    c = r // (kw * kh)
    ih = oh * sh - pt + i * dh
    iw = ow * sw - pl + j * dw
    if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
        cols[n, r, oh, ow] = x[n, c, ih, iw]
    else:
        cols[n, r, oh, ow] = 0


@cuda.jit
def _col2im(cols, zero, x, kh, kw, sh, sw, pt, pl, dh, dw):
    """x[n, c, h, v] gathers every column entry copied from it."""
    idx = cuda.grid(1)
    if idx >= x.size:
        return
    n, c, h, v = _unravel(idx, x.shape)
    OH, OW = cols.shape[2], cols.shape[3]
    acc = zero[0]
    for i in range(kh):
        t = h + pt - i * dh
        if t < 0 or t % sh != 0 or t // sh >= OH:
            continue
        for j in range(kw):
            u = v + pl - j * dw
            if u >= 0 and u % sw == 0 and u // sw < OW:
                acc += cols[n, (c * kh + i) * kw + j, t // sh, u // sw]
    x[n, c, h, v] = acc


def im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    _launch(_im2col, cols.size, (x,), (cols,), kh, kw, sh, sw, pt, pl, dh, dw)


def col2im(cols, x, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    _launch(_col2im, x.size, (cols, np.zeros(1, x.dtype)), (x,), kh, kw, sh, sw, pt, pl, dh, dw)


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

@cuda.jit
def _maxpool_fwd(x, y, indices, kh, kw, sh, sw, pt, pl, dh, dw):
    """PyTorch's scan of each window, row-major: a strictly larger value or any NaN
    replaces the maximum, which starts at -inf on the first pixel inside the input."""
    idx = cuda.grid(1)
    if idx >= y.size:
        return
    n, c, oh, ow = _unravel(idx, y.shape)
    H, W = x.shape[2], x.shape[3]
    h0 = oh * sh - pt
    w0 = ow * sw - pl
    best = -np.inf
    best_at = -1
    for i in range(kh):
        ih = h0 + i * dh
        if 0 <= ih < H:
            for j in range(kw):
                iw = w0 + j * dw
                if 0 <= iw < W:
                    val = x[n, c, ih, iw]
                    if best_at < 0:
                        best_at = ih * W + iw
                    if val > best or val != val:
                        best = val
                        best_at = ih * W + iw
    y[n, c, oh, ow] = best
    indices[n, c, oh, ow] = best_at


@cuda.jit
def _maxpool_bwd(dy, indices, zero, dx):
    """One (n, c) plane per thread: each output's gradient goes to its maximum."""
    plane = cuda.grid(1)
    N, C, H, W = dx.shape
    if plane >= N * C:
        return
    n = plane // C
    c = plane % C
    _zero_plane(dx, n, c, zero[0])
    for oh in range(dy.shape[2]):
        for ow in range(dy.shape[3]):
            at = indices[n, c, oh, ow]
            dx[n, c, at // W, at % W] += dy[n, c, oh, ow]


@cuda.jit(device=True)
def _avg_divisor(h0, w0, kh, kw, H, W, pt, pl, count_include_pad, divisor_override):
    """PyTorch's divisor of the window at (h0, w0)."""
    if divisor_override:
        return divisor_override
    h1 = min(h0 + kh, H + pt)
    w1 = min(w0 + kw, W + pl)
    if count_include_pad:
        return (h1 - h0) * (w1 - w0)
    return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))


@cuda.jit
def _avgpool_fwd(x, zero, y, kh, kw, sh, sw, pt, pl, count_include_pad, divisor_override):
    idx = cuda.grid(1)
    if idx >= y.size:
        return
    n, c, oh, ow = _unravel(idx, y.shape)
    H, W = x.shape[2], x.shape[3]
    h0 = oh * sh - pt
    w0 = ow * sw - pl
    total = zero[0]
    for ih in range(max(h0, 0), min(h0 + kh, H)):
        for iw in range(max(w0, 0), min(w0 + kw, W)):
            total += x[n, c, ih, iw]
    y[n, c, oh, ow] = total / _avg_divisor(h0, w0, kh, kw, H, W, pt, pl, count_include_pad,
                                           divisor_override)


@cuda.jit
def _avgpool_bwd(dy, zero, dx, kh, kw, sh, sw, pt, pl, count_include_pad, divisor_override):
    """One (n, c) plane per thread: each window spreads dL/dY / divisor over its pixels."""
    plane = cuda.grid(1)
    N, C, H, W = dx.shape
    if plane >= N * C:
        return
    n = plane // C
    c = plane % C
    _zero_plane(dx, n, c, zero[0])
    for oh in range(dy.shape[2]):
        for ow in range(dy.shape[3]):
            h0 = oh * sh - pt
            w0 = ow * sw - pl
            share = dy[n, c, oh, ow] / _avg_divisor(h0, w0, kh, kw, H, W, pt, pl,
                                                    count_include_pad, divisor_override)
            for ih in range(max(h0, 0), min(h0 + kh, H)):
                for iw in range(max(w0, 0), min(w0 + kw, W)):
                    dx[n, c, ih, iw] += share


@cuda.jit
def _adaptive_fwd(x, zero, y):
    """Window (oh, ow) averages rows [floor(oh*H/OH), ceil((oh+1)*H/OH)), likewise columns."""
    idx = cuda.grid(1)
    if idx >= y.size:
        return
    n, c, oh, ow = _unravel(idx, y.shape)
    H, W, OH, OW = x.shape[2], x.shape[3], y.shape[2], y.shape[3]
    h0, h1 = oh * H // OH, -(-((oh + 1) * H) // OH)
    w0, w1 = ow * W // OW, -(-((ow + 1) * W) // OW)
    total = zero[0]
    for ih in range(h0, h1):
        for iw in range(w0, w1):
            total += x[n, c, ih, iw]
    y[n, c, oh, ow] = total / ((h1 - h0) * (w1 - w0))


@cuda.jit
def _adaptive_bwd(dy, zero, dx):
    """One (n, c) plane per thread: each window spreads its gradient evenly."""
    plane = cuda.grid(1)
    N, C, H, W = dx.shape
    if plane >= N * C:
        return
    n = plane // C
    c = plane % C
    OH, OW = dy.shape[2], dy.shape[3]
    _zero_plane(dx, n, c, zero[0])
    for oh in range(OH):
        h0, h1 = oh * H // OH, -(-((oh + 1) * H) // OH)
        for ow in range(OW):
            w0, w1 = ow * W // OW, -(-((ow + 1) * W) // OW)
            share = dy[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    dx[n, c, ih, iw] += share


def maxpool2d_fwd(x, y, indices, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    _launch(_maxpool_fwd, y.size, (x,), (y, indices), kh, kw, sh, sw, pt, pl, dh, dw)


def maxpool2d_fwd_values(x, y, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    maxpool2d_fwd(x, y, np.empty(y.shape, np.int64), kh, kw, sh, sw, pt, pl, dh, dw, n_threads)


def maxpool2d_bwd(dy, indices, dx, n_threads):
    _launch(_maxpool_bwd, dx.shape[0] * dx.shape[1], (dy, indices, np.zeros(1, dx.dtype)),
            (dx,))


def avgpool2d_fwd(x, y, kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    _launch(_avgpool_fwd, y.size, (x, np.zeros(1, y.dtype)), (y,), kh, kw, sh, sw, pt, pl,
            count_include_pad, divisor_override)


def avgpool2d_bwd(dy, dx, kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    _launch(_avgpool_bwd, dx.shape[0] * dx.shape[1], (dy, np.zeros(1, dx.dtype)), (dx,),
            kh, kw, sh, sw, pt, pl, count_include_pad, divisor_override)


def adaptive_avgpool2d_fwd(x, y, n_threads):
    _launch(_adaptive_fwd, y.size, (x, np.zeros(1, y.dtype)), (y,))


def adaptive_avgpool2d_bwd(dy, dx, n_threads):
    _launch(_adaptive_bwd, dx.shape[0] * dx.shape[1], (dy, np.zeros(1, dx.dtype)), (dx,))


# ---------------------------------------------------------------------------
# Elementwise and fully connected work of the backbones
# ---------------------------------------------------------------------------

@cuda.jit
def _channel_affine(x, scale, shift, y, relu):
    idx = cuda.grid(1)
    if idx >= x.size:
        return
    W, H, C = x.shape[3], x.shape[2], x.shape[1]
    v = idx % W
    h = idx // W % H
    c = idx // (W * H) % C
    n = idx // (W * H * C)
    out = x[n, c, h, v] * scale[c] + shift[c]
    if relu and out < 0:            # NaN stays NaN
        out = 0
    y[n, c, h, v] = out


@cuda.jit
def _linear_fwd(x, w, b, zero, y, has_bias):
    """y[r, o] = b[o] + sum_i x[r, i] w[o, i]."""
    idx = cuda.grid(1)
    B, OUT = y.shape
    if idx >= B * OUT:
        return
    o = idx % OUT
    r = idx // OUT
    acc = zero[0]
    for i in range(x.shape[1]):
        acc += x[r, i] * w[o, i]
    if has_bias:
        acc += b[o]
    y[r, o] = acc


def channel_affine(x, scale, shift, y, relu, n_threads):
    _launch(_channel_affine, x.size, (x, scale, shift), (y,), relu)


def linear_fwd(x, w, b, y, n_threads):
    has_bias = b.shape[0] > 0
    _launch(_linear_fwd, y.size, (x, w, b if has_bias else np.zeros(1, y.dtype),
                                  np.zeros(1, y.dtype)), (y,), has_bias)
