"""The scratch buffers of the compiled im2col kernels: bounded, and owned by one call.

The lowered matrix of a whole image can be large (VGG-16's conv1_2: 576 rows
by 224*224 columns, 110 MiB in float32), so the compiled backends lower one
block of output rows at a time, each thread into its own buffer. A block is
sized to stay in a core's L2 cache (``CACHE_BLOCK`` bytes), so the GEMM reads
the lowered rows back from cache rather than memory, and all buffers together
stay under ``workspace_limit()`` bytes (64 MiB unless ``FASTCONV_WORKSPACE_MB``
or :func:`set_workspace_limit` says otherwise). A block is never less than
one output row.
"""

import os

import numpy as np

CACHE_BLOCK = 1 << 20
WINOGRAD_TILES = 256
_limit = int(float(os.environ.get("FASTCONV_WORKSPACE_MB", "64")) * (1 << 20))


def workspace_limit():
    """Bytes one im2col call may use for its lowered blocks."""
    return _limit


def set_workspace_limit(nbytes):
    """Bound the im2col workspace to ``nbytes`` (at least one output row per thread is used)."""
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"set_workspace_limit: nbytes must be a positive int, got {nbytes!r}")
    _limit = nbytes


def im2col_workspace(w, y_or_dy, kh, kw, groups, n_threads, shared=False):
    """Uninitialised lowering buffers for a convolution with weights ``w`` and output
    (or output gradient) ``y_or_dy``: one (C/g*kh*kw, rows*OW) block per thread,
    as (threads, C/g*kh*kw, rows*OW), or one block that the threads share.

    A per-thread block is cache-sized and small enough that every thread gets
    one when there are few images; a shared block is as large as the caches of
    all threads together.
    ``np.empty`` does not touch the pages, so a kernel that needs no lowering
    (a 1x1 stride-1 convolution) pays nothing for them.
    """
    n, _, oh, ow = y_or_dy.shape
    ckk = w.shape[1] * kh * kw
    row_bytes = max(ckk * ow * w.dtype.itemsize, 1)
    if shared:
        rows = min(CACHE_BLOCK * n_threads, _limit) // row_bytes
        return np.empty((ckk, max(1, min(rows, oh)) * ow), dtype=w.dtype)
    rows = min(CACHE_BLOCK, _limit // n_threads) // row_bytes
    tasks_per_image = -(-n_threads // max(n * groups, 1))
    rows = max(1, min(rows, -(-oh // tasks_per_image), oh))
    return np.empty((n_threads, ckk, rows * ow), dtype=w.dtype)



def winograd_workspace(alpha, c_per_group, k_per_group, n_tiles, dtype, lanes):
    """Buffers of the Winograd kernels for runs of T tiles, shared by the threads:
    V (alpha^2*Cg, T) and M (alpha^2*Kg, T).

    T is a multiple of ``lanes`` (the tiles a transform handles at once), at
    most ``WINOGRAD_TILES`` and the tiles there are, and smaller when V and M
    would pass the workspace limit.
    """
    tile_bytes = alpha * alpha * (c_per_group + k_per_group) * np.dtype(dtype).itemsize
    t = min(WINOGRAD_TILES, _limit // tile_bytes, -(-n_tiles // lanes) * lanes)
    t = max(1, t // lanes) * lanes
    return (np.empty((alpha * alpha * c_per_group, t), dtype=dtype),
            np.empty((alpha * alpha * k_per_group, t), dtype=dtype))
