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


def block_rows(n_images, groups, ckk, oh, ow, itemsize, n_threads, min_rows=1):
    """Output rows per block: cache-sized, at least ``min_rows``, and small enough
    that every thread gets a block when there are few images."""
    row_bytes = max(ckk * ow * itemsize, 1)
    rows = min(CACHE_BLOCK, _limit // n_threads) // row_bytes
    tasks_per_image = -(-n_threads // max(n_images * groups, 1))
    rows = min(rows, -(-oh // tasks_per_image))
    return max(1, min_rows, min(rows, oh))


def im2col_workspace(w, y_or_dy, kh, kw, groups, n_threads, min_rows=1):
    """Uninitialised per-thread buffers (threads, C/g*kh*kw, rows*OW) for a convolution
    with weights ``w`` and output (or output gradient) ``y_or_dy``.

    ``np.empty`` does not touch the pages, so a kernel that needs no lowering
    (a 1x1 stride-1 convolution) pays nothing for them.
    """
    n, _, oh, ow = y_or_dy.shape
    ckk = w.shape[1] * kh * kw
    rows = block_rows(n, groups, ckk, oh, ow, w.dtype.itemsize, n_threads, min_rows)
    return np.empty((n_threads, ckk, rows * ow), dtype=w.dtype)

