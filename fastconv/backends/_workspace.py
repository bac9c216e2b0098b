"""The scratch buffer of the im2col kernels: bounded, and owned by one call.

The lowered matrix of a whole image can be large (VGG-16's conv1_2: 576 rows
by 224*224 columns, 110 MiB in float32), so the compiled backends lower one
block of output rows at a time into a buffer of at most ``workspace_limit()``
bytes (64 MiB unless ``FASTCONV_WORKSPACE_MB`` or :func:`set_workspace_limit`
says otherwise). Within that limit a block is kept near ``CACHE_BLOCK`` bytes,
so that the GEMM reads the lowered rows back from cache rather than memory.
A block is never less than one output row.
"""

import os

import numpy as np

CACHE_BLOCK = 4 << 20
_limit = int(float(os.environ.get("FASTCONV_WORKSPACE_MB", "64")) * (1 << 20))


def workspace_limit():
    """Bytes one im2col call may use for its lowered block."""
    return _limit


def set_workspace_limit(nbytes):
    """Bound the im2col workspace to ``nbytes`` (at least one output row is always used)."""
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"set_workspace_limit: nbytes must be a positive int, got {nbytes!r}")
    _limit = nbytes


def im2col_workspace(w, y_or_dy, kh, kw, dtype):
    """An uninitialised (C/g*kh*kw, rows*OW) buffer for one block of ``rows`` output rows.

    ``np.empty`` does not touch the pages, so a kernel that needs no lowering
    (a 1x1 stride-1 convolution) pays nothing for it.
    """
    ckk = w.shape[1] * kh * kw
    oh, ow = y_or_dy.shape[2:]
    row_bytes = ckk * ow * np.dtype(dtype).itemsize
    rows = max(1, min(oh, min(_limit, CACHE_BLOCK) // max(row_bytes, 1)))
    return np.empty((ckk, rows * ow), dtype=dtype)
