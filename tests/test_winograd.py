"""Winograd F(m x m, 3 x 3): the transforms are exact, the float32 error is bounded."""

import numpy as np
import pytest

import fastconv as fc
from fastconv.winograd import POINTS, TRANSFORMS, cook_toom

from configs import TOLERANCE, rel_err
from conftest import backend_algorithms
import oracle

CASES = [(b, a) for b, a in backend_algorithms() if a.startswith("winograd")]


@pytest.mark.parametrize("m", sorted(TRANSFORMS))
def test_transforms_compute_the_correlation_exactly(m):
    g_mat, bt, at = TRANSFORMS[m].matrices(np.float64)
    alpha = m + 2
    rng = np.random.default_rng(m)
    for _ in range(20):
        d, g = rng.standard_normal((alpha, alpha)), rng.standard_normal((3, 3))
        y = at @ ((g_mat @ g @ g_mat.T) * (bt @ d @ bt.T)) @ at.T
        direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)])
        assert np.allclose(y, direct, rtol=0, atol=1e-12)


def test_sqrt2_points_are_more_accurate_than_integers_in_float32():
    """The reason for 0, +-sqrt(2)/2, +-sqrt(2): measured, not assumed."""
    rng = np.random.default_rng(0)
    d = rng.standard_normal((256, 6, 6))
    g = rng.standard_normal((256, 3, 3))
    ref = np.array([[np.sum(d[:, i:i + 3, j:j + 3] * g) for j in range(4)] for i in range(4)])

    def err(points):
        g_mat, bt, at = (a.astype(np.float32) for a in cook_toom(points, 4))
        u = g_mat @ g.astype(np.float32) @ g_mat.T
        v = bt @ d.astype(np.float32) @ bt.T
        return rel_err(at @ (u * v).sum(axis=0) @ at.T, ref)

    assert err(POINTS[4]) < err((0, 1, -1, 2, -2)) / 2


@pytest.mark.parametrize("backend,algo", CASES)
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_tile_remainders(backend, algo, padding):
    """Output sizes from 1 to 2m+3 cover a partial last tile in every position."""
    m = int(algo[-1])
    rng = np.random.default_rng(1)
    for size in range(1, 2 * m + 4):
        h, w = size + 2 - 2 * padding, size + 1 + 2 - 2 * padding
        if h < 1 or w < 1:
            continue
        x = rng.standard_normal((1, 3, h, w))
        wt = rng.standard_normal((2, 3, 3, 3))
        y = fc.conv2d(x, wt, padding=padding, algorithm=algo, backend=backend)
        pads = (padding,) * 4
        assert rel_err(y, oracle.conv2d(x, wt, None, (1, 1), pads, (1, 1), 1)) <= 1e-10


@pytest.mark.parametrize("backend,algo", CASES)
@pytest.mark.parametrize("channels,size", [(64, 14), (256, 8), (512, 7)])
def test_float32_error_bound_up_to_512_channels(backend, algo, channels, size):
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((1, channels, size, size))
    w = rng.standard_normal((16, channels, 3, 3)) / np.sqrt(9 * channels)
    ref = fc.conv2d(x, w, padding=1, algorithm="im2col", backend="numpy")
    y = fc.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1, algorithm=algo,
                  backend=backend)
    assert rel_err(y, ref) <= TOLERANCE[np.float32, algo]
    dy = rng.standard_normal(ref.shape)
    gx_ref = fc.conv2d_backward(dy, x, w, padding=1, algorithm="im2col", backend="numpy")[0]
    gx = fc.conv2d_backward(dy.astype(np.float32), x.astype(np.float32), w.astype(np.float32),
                            padding=1, algorithm=algo, backend=backend)[0]
    assert rel_err(gx, gx_ref) <= TOLERANCE[np.float32, algo]


def test_filter_transform_is_cached_and_never_stale():
    from fastconv.winograd import FILTERS

    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 4, 3, 3))
    first = FILTERS.get(w, 4, 1)
    assert FILTERS.get(w, 4, 1) is first                     # same values: reused
    w[3, 2, 1, 1] += 1.0                                      # changed in place
    fresh = FILTERS.get(w, 4, 1)
    assert fresh is not first
    g_mat = TRANSFORMS[4].matrices(np.float64)[0]
    g = np.kron(g_mat, g_mat)
    assert np.allclose(fresh[0, :, 3, 2], g @ w[3, 2].ravel())


@pytest.mark.parametrize("backend,algo", CASES)
def test_changed_weights_give_the_new_result(backend, algo):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 4, 9, 9))
    w = rng.standard_normal((5, 4, 3, 3))
    fc.conv2d(x, w, padding=1, algorithm=algo, backend=backend)
    w *= -2.0
    y = fc.conv2d(x, w, padding=1, algorithm=algo, backend=backend)
    assert rel_err(y, oracle.conv2d(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)) <= 1e-10


@pytest.mark.parametrize("backend,algo", [c for c in CASES if c[0] != "numpy"])
def test_runs_of_single_tile_rows(monkeypatch, backend, algo):
    """With transformed filters that fit the cache, a run holds only as many tiles as
    keep its V there, but never less than one row of tiles: here every run is one
    row, with a cut tile at its end. Forward and data gradient against the oracle."""
    from fastconv.backends import _workspace
    from fastconv.backends._workspace import winograd_workspace

    m = int(algo[-1])
    rng = np.random.default_rng(7)
    h, wd = 9 * m + 5, 9 * m + 1
    x = rng.standard_normal((2, 5, h, wd))
    w = rng.standard_normal((7, 5, 3, 3))
    b = rng.standard_normal(7)
    # U (alpha^2 x 7 x 5 float64) just fits: room for V of 7 tiles, less than a row
    monkeypatch.setattr(_workspace, "WINOGRAD_CACHE", (m + 2) ** 2 * 7 * 5 * 8)
    tiles_h, tiles_w = -(-h // m), -(-wd // m)
    assert winograd_workspace(m + 2, 5, 7, 2, tiles_h, tiles_w,
                              np.float64)[0].shape[1] == tiles_w
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    y = fc.conv2d(x, w, b, padding=1, algorithm=algo, backend=backend)
    assert rel_err(y, oracle.conv2d(x, w, b, *args)) <= 1e-10
    dy = rng.standard_normal(y.shape)
    gx = fc.conv2d_backward(dy, x, w, padding=1, algorithm=algo, backend=backend)[0]
    assert rel_err(gx, oracle.conv2d_backward(dy, x, w, *args)[0]) <= 1e-10


def test_images_of_few_tiles_share_a_run():
    """T for F(4x4) on 512 channels: an image's tiles, or, where it has fewer than
    WINOGRAD_FEWEST (32), as many whole images' as reach that, if the batch has them."""
    from fastconv.backends._workspace import winograd_workspace

    def tiles(images, size):
        tiles_h = -(-size // 4)
        return winograd_workspace(6, 512, 512, images, tiles_h, tiles_h, np.float32)[0].shape[1]

    assert (tiles(1, 7), tiles(4, 7), tiles(8, 7), tiles(16, 7)) == (4, 16, 32, 32)
    assert (tiles(1, 14), tiles(8, 14), tiles(8, 17), tiles(8, 28)) == (16, 32, 50, 49)


@pytest.mark.parametrize("backend,algo", [c for c in CASES if c[0] != "numpy"])
@pytest.mark.parametrize("run_rows", [2, 4, 7, 11, 15])
def test_runs_span_the_images_of_a_batch(monkeypatch, backend, algo, run_rows):
    """Images of fewer than WINOGRAD_FEWEST tiles share runs: a run takes whole tile
    rows of the batch as one sequence, image after image. Runs of 2, 4, 7 and 11
    rows over five images of 5 tile rows each start and end inside images and
    hold the end of one and the start of the next (7 and 11: a whole image
    between two parts, rows 14-20 and 11-21); 15 is three whole images. Two
    groups, cut tiles at the right and bottom edges, both kinds of product;
    forward and data gradient against the oracle."""
    from fastconv.backends import _compiled, _workspace
    from fastconv.backends._workspace import WINOGRAD_FEWEST, winograd_workspace

    m = int(algo[-1])
    alpha = m + 2
    rng = np.random.default_rng(10)
    h, wd = 5 * m - 2, 3 * m - 1                    # 5 x 3 tiles, the last of each cut
    assert 2 * 5 * 3 < WINOGRAD_FEWEST <= 3 * 5 * 3         # runs of up to 3 images
    x = rng.standard_normal((5, 10, h, wd))
    w = rng.standard_normal((6, 5, 3, 3))
    b = rng.standard_normal(6)
    # U (alpha^2 x 3 x 5 float64) fits: a run keeps V (alpha^2 x 5 x T) within the cache
    monkeypatch.setattr(_workspace, "WINOGRAD_CACHE", alpha * alpha * 5 * 8 * 3 * run_rows)
    assert winograd_workspace(alpha, 5, 3, 5, 5, 3, np.float64)[0].shape[1] == 3 * run_rows
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 2)
    ref = oracle.conv2d(x, w, b, *args)
    dy = rng.standard_normal(ref.shape)
    gx_ref = oracle.conv2d_backward(dy, x, w, *args)[0]
    for packed in (False, True):
        monkeypatch.setattr(_compiled, "winograd_packed", lambda *args: packed)
        y = fc.conv2d(x, w, b, padding=1, groups=2, algorithm=algo, backend=backend)
        assert rel_err(y, ref) <= 1e-10
        gx = fc.conv2d_backward(dy, x, w, padding=1, groups=2, algorithm=algo,
                                backend=backend)[0]
        assert rel_err(gx, gx_ref) <= 1e-10


def test_packed_filter_transform_holds_panels_of_output_channels():
    from fastconv.winograd import filter_transform

    rng = np.random.default_rng(8)
    w = rng.standard_normal((70, 3, 3, 3))          # 2 groups of 35 output channels
    plain = filter_transform(w, 4, 2)               # (2, 36, 35, 3)
    packed = filter_transform(w, 4, 2, panel=32)    # (2, 36, 2*3, 32)
    assert packed.shape == (2, 36, 6, 32)
    for p in range(2):
        block = packed[:, :, p * 3:(p + 1) * 3]     # (g, ab, c, j) = U[g, ab, 32p + j, c]
        n = min(32, 35 - 32 * p)
        assert np.array_equal(block[..., :n], plain[:, :, 32 * p:32 * p + n].swapaxes(2, 3))
        assert not block[..., n:].any()             # the last panel's padding


def test_register_tiles_take_short_runs_over_256_kib_of_filters_per_product():
    from fastconv.backends._workspace import winograd_packed

    assert winograd_packed(4, 512, 512, 4) and winograd_packed(49, 256, 256, 4)
    assert not winograd_packed(64, 512, 512, 4)         # long runs: BLAS
    assert not winograd_packed(16, 128, 256, 4)         # 128 KiB: BLAS
    assert winograd_packed(16, 128, 256, 8)


@pytest.mark.parametrize("backend,algo", [c for c in CASES if c[0] != "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_and_register_tile_products_agree(monkeypatch, backend, algo, dtype):
    """The alpha^2 products run through BLAS or in register tiles over packed panels
    (``winograd_packed``): both, forced on one call, against the oracle, with
    a partial last panel (35 output channels per group), fewer channels than a tile
    has tiles (3), and tile counts that are not multiples of a register tile's."""
    from fastconv.backends import _compiled

    rng = np.random.default_rng(9)
    tol = 1e-10 if dtype == np.float64 else TOLERANCE[np.float32, algo]
    for shape, k, groups, h, wd in [((2, 6, 3, 3), 70, 2, 13, 11), ((1, 9, 3, 3), 3, 1, 5, 22)]:
        x = rng.standard_normal((shape[0], shape[1], h, wd))
        w = rng.standard_normal((k, shape[1] // groups, 3, 3))
        b = rng.standard_normal(k)
        args = ((1, 1), (1, 1, 1, 1), (1, 1), groups)
        ref = oracle.conv2d(x, w, b, *args)
        dy = rng.standard_normal(ref.shape)
        gx_ref = oracle.conv2d_backward(dy, x, w, *args)[0]
        for packed in (False, True):
            monkeypatch.setattr(_compiled, "winograd_packed", lambda *args: packed)
            xs, ws, bs, dys = (a.astype(dtype) for a in (x, w, b, dy))
            y = fc.conv2d(xs, ws, bs, padding=1, groups=groups, algorithm=algo, backend=backend)
            assert rel_err(y, ref) <= tol
            gx = fc.conv2d_backward(dys, xs, ws, padding=1, groups=groups, algorithm=algo,
                                    backend=backend)[0]
            assert rel_err(gx, gx_ref) <= tol


KERNEL_MODULES = {"cython": "fastconv._kernels", "numba": "fastconv._numba_kernels"}


@pytest.mark.parametrize("backend", [b for b in KERNEL_MODULES if b in fc.available_backends()])
def test_same_bytes_finds_a_flipped_bit_anywhere(backend):
    """The compiled check before a cached filter transform is reused: one flipped bit
    at either end, in the middle or at a boundary between the threads' shares."""
    import importlib

    same_bytes = importlib.import_module(KERNEL_MODULES[backend]).same_bytes
    rng = np.random.default_rng(10)
    for n in (0, 1, 7, 1000, 4096, 4097):     # 1000 and 4096: whole words of 8 bytes
        a = rng.integers(0, 256, n, dtype=np.uint8)
        for threads in (1, 2, 3):
            assert same_bytes(a, a.copy(), threads)
            for pos in {0, n // 3, n // 2, 2 * n // 3, n - 1} if n else ():
                b = a.copy()
                b[pos] ^= 1 << (pos % 8)
                assert not same_bytes(a, b, threads), (n, threads, pos)


@pytest.mark.parametrize("backend,algo", CASES)
def test_one_weight_changed_in_place_gives_the_new_result(backend, algo):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 6, 10, 10)).astype(np.float32)
    w = rng.standard_normal((40, 6, 3, 3)).astype(np.float32)
    fc.conv2d(x, w, padding=1, algorithm=algo, backend=backend)
    w[-1, -1, -1, -1] *= -1                     # its sign bit: the array's last byte
    y = fc.conv2d(x, w, padding=1, algorithm=algo, backend=backend)
    ref = oracle.conv2d(x.astype(np.float64), w.astype(np.float64), None, (1, 1),
                        (1, 1, 1, 1), (1, 1), 1)
    assert rel_err(y, ref) <= TOLERANCE[np.float32, algo]
