"""Random, valid geometries for the parametrised tests (seeded: the same every run)."""

import numpy as np

from fastconv.shapes import conv_padding, output_size, pool2d_geometry

DTYPES = (np.float32, np.float64)

# max |y - y_ref| / max |y_ref| against the float64 reference (DESIGN.md section 2)
TOLERANCE = {
    (np.float32, "im2col"): 1e-5, (np.float32, "direct"): 1e-5,
    (np.float32, "winograd2"): 1e-5, (np.float32, "winograd4"): 1e-4,
    (np.float32, "winograd6"): 5e-4, (np.float32, "pool"): 1e-5,
    (np.float64, "im2col"): 1e-10, (np.float64, "direct"): 1e-10,
    (np.float64, "winograd2"): 1e-9, (np.float64, "winograd4"): 1e-9,
    (np.float64, "winograd6"): 1e-9, (np.float64, "pool"): 1e-10,
}


def rel_err(y, ref):
    y, ref = np.asarray(y, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    if y.size == 0:
        return 0.0
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _random_padding(rng, kh, kw):
    kind = rng.integers(6)
    if kind == 0:
        return int(rng.integers(0, 3))
    if kind == 1:
        return (int(rng.integers(0, kh + 1)), int(rng.integers(0, kw + 1)))
    if kind == 2:
        return tuple((int(rng.integers(0, kh + 1)), int(rng.integers(0, kh + 1)))
                     for kh in (kh, kw))
    return ("valid", "same", "full", "same")[kind - 3]


def conv_configs(count, seed, max_channels=6, max_size=12):
    """``count`` valid conv2d calls: dicts of shapes and keyword arguments."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        groups = int(rng.choice([1, 1, 1, 2, 3]))
        c_in = groups * int(rng.integers(1, max_channels // groups + 1))
        c_out = groups * int(rng.integers(1, max_channels // groups + 1))
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        if rng.random() < 0.3:
            kh, kw = 3, 3
        h, w = int(rng.integers(1, max_size + 1)), int(rng.integers(1, max_size + 1))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        if rng.random() < 0.4:
            stride, dilation = (1, 1), (1, 1)
        padding = _random_padding(rng, kh, kw)
        pt, pb, pl, pr = conv_padding(padding, (h, w), (kh, kw), stride, dilation, "test")
        if (output_size(h, kh, stride[0], pt, pb, dilation[0]) < 1
                or output_size(w, kw, stride[1], pl, pr, dilation[1]) < 1):
            continue
        configs.append(dict(
            x_shape=(int(rng.integers(1, 3)), c_in, h, w),
            w_shape=(c_out, c_in // groups, kh, kw),
            bias=bool(rng.random() < 0.7),
            kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
            pads=(pt, pb, pl, pr),
            dtype=DTYPES[len(configs) % 2],
        ))
    return configs


def conv_transpose_configs(count, seed, max_channels=6, max_size=7):
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        groups = int(rng.choice([1, 1, 2, 3]))
        c_in = groups * int(rng.integers(1, max_channels // groups + 1))
        c_out = groups * int(rng.integers(1, max_channels // groups + 1))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        h, w = int(rng.integers(1, max_size + 1)), int(rng.integers(1, max_size + 1))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
        out = [(m - 1) * s - 2 * p + d * (k - 1) + op + 1 for m, s, p, d, k, op in
               zip((h, w), stride, padding, dilation, (kh, kw), output_padding)]
        if min(out) < 1:
            continue
        configs.append(dict(
            x_shape=(int(rng.integers(1, 3)), c_in, h, w),
            w_shape=(c_in, c_out // groups, kh, kw),
            bias=bool(rng.random() < 0.7),
            kwargs=dict(stride=stride, padding=padding, output_padding=output_padding,
                        groups=groups, dilation=dilation),
            dtype=DTYPES[len(configs) % 2],
        ))
    return configs


def pool_configs(count, seed, max_size=11, dilation=True):
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        h, w = int(rng.integers(1, max_size + 1)), int(rng.integers(1, max_size + 1))
        stride = None if rng.random() < 0.2 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1)))
        dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if dilation else (1, 1)
        ceil_mode = bool(rng.random() < 0.5)
        x_shape = (int(rng.integers(1, 3)), int(rng.integers(1, 5)), h, w)
        try:
            pool2d_geometry(np.zeros(x_shape), (kh, kw), stride, padding, dil, ceil_mode, "test")
        except ValueError:
            continue
        configs.append(dict(
            x_shape=x_shape,
            kernel_size=(kh, kw), stride=stride, padding=padding, dilation=dil,
            ceil_mode=ceil_mode, count_include_pad=bool(rng.random() < 0.5),
            divisor_override=int(rng.integers(1, 7)) if rng.random() < 0.15 else None,
            dtype=DTYPES[len(configs) % 2],
        ))
    return configs


def config_id(config):
    return "-".join(f"{k}={v}" for k, v in config.items() if k not in ("dtype",)).replace(" ", "") \
        + f"-{np.dtype(config['dtype']).name}"


def numeric_gradient(f, x, dy, eps=1e-6):
    """d<f(x), dy>/dx by central differences, one element at a time (float64, tiny shapes)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        grad[idx] = (np.vdot(f(xp), dy) - np.vdot(f(xm), dy)) / (2 * eps)
    return grad
