"""Naive loop implementations straight from the definitions, for tiny shapes.

Independent of every backend: each output pixel is computed by visiting its
window one pixel at a time, as the formulas are written in the chapter.
"""

import math

import numpy as np


def _windows(y_shape, x_shape, w_shape, stride, pads, dilation):
    """Every (output pixel, kernel tap, input pixel) triple of a convolution, padding skipped
    (the bottom and right padding only set the output size, already in y_shape)."""
    (sh, sw), (pt, _, pl, _), (dh, dw) = stride, pads, dilation
    oh, ow = y_shape[2:]
    h, wd = x_shape[2:]
    kh, kw = w_shape[2:]
    for r in range(oh):
        for s in range(ow):
            for i in range(kh):
                for j in range(kw):
                    ih, iw = r * sh - pt + i * dh, s * sw - pl + j * dw
                    if 0 <= ih < h and 0 <= iw < wd:
                        yield r, s, i, j, ih, iw


def conv_output_shape(x_shape, w_shape, stride, pads, dilation):
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, pads, dilation
    h, wd = x_shape[2:]
    kh, kw = w_shape[2:]
    return (x_shape[0], w_shape[0], (h + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def conv2d(x, w, b, stride, pads, dilation, groups):
    """Y[n,k,oh,ow] = b[k] + sum_{c,i,j} W[k,c,i,j] X[n, g*Cg+c, oh*sh-pt+i*dh, ow*sw-pl+j*dw]."""
    y_shape = conv_output_shape(x.shape, w.shape, stride, pads, dilation)
    y = np.zeros(y_shape)
    kg, cg = w.shape[0] // groups, w.shape[1]
    for g in range(groups):
        ks, cs = slice(g * kg, (g + 1) * kg), slice(g * cg, (g + 1) * cg)
        for r, s, i, j, ih, iw in _windows(y_shape, x.shape, w.shape, stride, pads, dilation):
            y[:, ks, r, s] += x[:, cs, ih, iw] @ w[ks, :, i, j].T
    if b is not None:
        y += b[:, None, None]
    return y


def conv2d_backward(dy, x, w, stride, pads, dilation, groups):
    """The same sum read backwards: every product W*X sends dY to both factors."""
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    kg, cg = w.shape[0] // groups, w.shape[1]
    for g in range(groups):
        ks, cs = slice(g * kg, (g + 1) * kg), slice(g * cg, (g + 1) * cg)
        for r, s, i, j, ih, iw in _windows(dy.shape, x.shape, w.shape, stride, pads, dilation):
            dx[:, cs, ih, iw] += dy[:, ks, r, s] @ w[ks, :, i, j]
            dw[ks, :, i, j] += dy[:, ks, r, s].T @ x[:, cs, ih, iw]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def conv_transpose2d(x, w, b, stride, padding, output_padding, dilation, groups):
    """Each input pixel scatters W times itself: Y[.., ih*s-p+i*d, ..] += X[.., ih, ..] W[.., i, ..]."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    n, c_in, h, wd = x.shape
    _, cg_out, kh, kw = w.shape
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    cg_in = c_in // groups
    y = np.zeros((n, cg_out * groups, oh, ow))
    for c in range(c_in):
        g = c // cg_in
        for r in range(h):
            for s in range(wd):
                for k in range(cg_out):
                    for i in range(kh):
                        for j in range(kw):
                            yh, yw = r * sh - ph + i * dh, s * sw - pw + j * dw
                            if 0 <= yh < oh and 0 <= yw < ow:
                                y[:, g * cg_out + k, yh, yw] += w[c, k, i, j] * x[:, c, r, s]
    if b is not None:
        y += b[:, None, None]
    return y


def _pool_size(m, k, s, p, d, ceil_mode):
    span = d * (k - 1) + 1
    if ceil_mode:
        out = math.ceil((m + 2 * p - span) / s) + 1
        if (out - 1) * s >= m + p:
            out -= 1
        return out
    return (m + 2 * p - span) // s + 1


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
    """Scan each window row-major; keep a strictly larger value or any NaN (PyTorch's rule)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, wd = x.shape
    oh, ow = _pool_size(h, kh, sh, ph, dh, ceil_mode), _pool_size(wd, kw, sw, pw, dw, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    idx = np.zeros((n, c, oh, ow), dtype=np.int64)
    for a in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    best, arg = -np.inf, None
                    for i in range(kh):
                        for j in range(kw):
                            ih, iw = r * sh - ph + i * dh, s * sw - pw + j * dw
                            if 0 <= ih < h and 0 <= iw < wd:
                                v = x[a, ch, ih, iw]
                                if arg is None:
                                    arg = ih * wd + iw
                                if v > best or np.isnan(v):
                                    best, arg = v, ih * wd + iw
                    y[a, ch, r, s], idx[a, ch, r, s] = best, arg
    return y, idx


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, wd = x.shape
    oh, ow = _pool_size(h, kh, sh, ph, 1, ceil_mode), _pool_size(wd, kw, sw, pw, 1, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for s in range(ow):
            h0, w0 = r * sh - ph, s * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, wd + pw)
            padded = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, wd)
            total = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3))
            if divisor_override:
                divisor = divisor_override
            elif count_include_pad:
                divisor = padded
            else:
                divisor = (h1 - h0) * (w1 - w0)
            y[:, :, r, s] = total / divisor
    return y


def adaptive_avg_pool2d(x, out_hw):
    n, c, h, wd = x.shape
    oh, ow = out_hw
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        h0, h1 = math.floor(r * h / oh), math.ceil((r + 1) * h / oh)
        for s in range(ow):
            w0, w1 = math.floor(s * wd / ow), math.ceil((s + 1) * wd / ow)
            y[:, :, r, s] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y
