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

import functools
import os
import threading

import numpy as np

CACHE_BLOCK = 1 << 20
WINOGRAD_CACHE = 2 << 20     # a core's L2 here
WINOGRAD_TILES = 256
WINOGRAD_FEWEST = 32
WHOLE_ROWS_BELOW = 32
DIRECT_ACC = 4096
WEIGHT_HEAVY = 4
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


def im2col_workspace(w, y_or_dy, kh, kw, groups, n_threads, shared=False, width=None,
                     extra_rows=0, k_parts=1):
    """Uninitialised lowering buffers for a convolution with weights ``w`` and output
    (or output gradient) ``y_or_dy``: one (C/g*kh*kw + extra_rows, rows*width) block
    per thread, as (threads, ...), or one block that the threads share; ``width`` is
    the output width unless the kernels lower whole input rows (``whole_rows``), and
    the threads share each group's output channels in ``k_parts`` parts.

    A per-thread block is cache-sized, or has at least K/g/2 columns where the
    weights are large, and is small enough that every thread gets one when there
    are few images; a shared block is as large as the caches of all threads
    together. BLAS packs a block's weights (K/g x C/g*kh*kw) afresh on every call:
    VGG-16's conv4_2 in 1 MiB blocks (56 columns of 4608 rows) spent 17% more
    time than in blocks of 196 columns.
    ``np.empty`` does not touch the pages, so a kernel that needs no lowering
    (a 1x1 stride-1 convolution) pays nothing for them.
    """
    n, _, oh, ow = y_or_dy.shape
    width = ow if width is None else width
    ckk = w.shape[1] * kh * kw + extra_rows
    row_bytes = max(ckk * width * w.dtype.itemsize, 1)
    if shared:
        rows = min(CACHE_BLOCK * n_threads, _limit) // row_bytes
        return np.empty((ckk, max(1, min(rows, oh)) * width), dtype=w.dtype)
    per_thread = _limit // n_threads
    most = max(min(CACHE_BLOCK, per_thread) // row_bytes,
               min(-(-w.shape[0] // groups // 2 // width), per_thread // row_bytes))
    rows = balanced_rows(oh, most, n * groups * k_parts, n_threads)
    return np.empty((n_threads, ckk, rows * width), dtype=w.dtype)


def output_channel_parts(y_shape, groups, n_threads):
    """Parts into which the im2col forward splits a group's output channels: the threads
    share the channels of each image rather than its rows when there are fewer images
    (times groups) than threads and the weights (K/g rows) outweigh the image (OH*OW
    columns) WEIGHT_HEAVY times. Each thread then lowers the whole image itself and
    BLAS packs only its share of the weights, where a share of the rows would make every
    thread pack all of them: ResNet-50's 7x7 layers ran 10-30% faster."""
    n, k, oh, ow = y_shape
    return _channel_parts(n * groups, n_threads, k // groups >= WEIGHT_HEAVY * oh * ow)


def _channel_parts(tasks, n_threads, weight_heavy):
    """Parts of each task's output channels that the threads share: as many as there are
    threads to a task when there are fewer tasks than threads (and at least one) and the
    weights outweigh the output; else 1."""
    return n_threads // tasks if weight_heavy and 0 < tasks < n_threads else 1


@functools.lru_cache(maxsize=4096)
def balanced_rows(oh, most, images, n_threads):
    """Output rows per block, at most ``most``, for ``images`` (times groups) of ``oh``
    rows whose blocks the forward deals out to the threads in turn (image by image,
    block by block). With fewer images than threads, the block count whose busiest
    thread has the fewest rows (then the fewest blocks): ResNet-50's 56-row layers
    split 18+18+18+2 gave one thread 36 rows and the other 20, where 4 x 14 gives 28
    each. Remembered: the search took 13 us, as long as a small layer's kernel."""
    most = max(1, min(most, oh))
    if images >= n_threads or oh <= 1:
        return most

    def busiest(rows):
        blocks = -(-oh // rows)
        load = [0] * n_threads
        for task in range(images * blocks):
            load[task % n_threads] += min(rows, oh - task % blocks * rows)
        return max(load), blocks

    fewest = -(-oh // most)
    return min((-(-oh // b) for b in range(fewest, fewest + 2 * n_threads + 1)), key=busiest)


def direct_row_width(in_w, out_w, kw, sw, pl, dw):
    """Qw, the columns of a row of the direct kernels' planes and wide outputs: the
    outputs and the window's reach, ``out_w + (kw - 1)*dw // sw``. With a column
    stride of 1, less the smaller padding: a row's right padding serves as the next
    row's left one. Never fewer than the outputs."""
    qw = out_w + (kw - 1) * dw // sw
    if sw != 1:
        return qw
    right = qw - in_w - pl
    return max(out_w, qw - max(0, min(pl, right)))


def direct_workspace(w_shape, y_shape, kh, kw, sh, sw, dh, dw, groups, n_threads, dtype,
                     qw, wide_rows, slack=0, k_parts=1):
    """The direct kernels' scratch, ``(work, block)``: a (threads, size) buffer and the
    output rows of a task. A task's stride-phase planes (C/g channels of block + reach
    rows of ``qw``, :func:`direct_row_width`) stay within ``CACHE_BLOCK`` bytes, since
    every output channel reads them, and so do its ``wide_rows`` rows of block*qw. The
    weight gradient (``slack`` 0) adds into these (K/g rows of dY), which then stay within
    ``DIRECT_ACC`` values, in L1; the forward writes them (its sums) once per tile,
    and its tiles reach up to ``slack`` values past the planes and past each row.
    Past the planes lie at least ``qw`` zeros, where the last row's taps end. The
    blocks are balanced between the threads as im2col's are, over images, groups and
    ``k_parts`` parts of the output channels."""
    n, _, oh, ow = y_shape
    c_per_group, itemsize = w_shape[1], np.dtype(dtype).itemsize
    reach = (kh - 1) * dh // sh
    plane_row = c_per_group * sh * sw * qw * itemsize
    cached_rows = CACHE_BLOCK // plane_row - reach
    if not slack:
        cached_rows = min(cached_rows, DIRECT_ACC // (wide_rows * qw))
    most = max(1, min(cached_rows, _limit // n_threads // plane_row - reach))
    block = balanced_rows(oh, most, n * groups * k_parts, n_threads)
    size = c_per_group * sh * sw * (block + reach) * qw + max(slack, qw) + \
        wide_rows * (block * qw + slack)
    return np.empty((n_threads, size), dtype), block


def direct_channel_parts(w_shape, y_shape, kh, kw, sh, sw, groups, n_threads):
    """Parts into which the direct forward splits a group's tiles of output channels:
    the threads share the channels of each image rather than its rows when there are
    fewer images (times groups) than threads and a group's weights outweigh its
    output. A share of the rows would make every thread stream all the weights from
    memory, each used by few tiles. Not for a strided convolution: a share of the
    channels makes every thread split all of the input, sh*sw times the output, into
    its stride phases, and a share of the rows ran ResNet-50's three stride-2 3x3
    layers 3-15% faster and a 192-channel one on 35x35 15-20% (both backends, in
    four in-process A/Bs each)."""
    n, k, oh, ow = y_shape
    return _channel_parts(n * groups, n_threads,
                          sh == sw == 1 and w_shape[1] * kh * kw >= oh * ow)


def whole_rows(x_shape, y_shape, kw, sh, sw, pl, dw):
    """Whether the im2col kernels lower whole input rows: for stride-1 convolutions
    without horizontal padding whose output rows are shorter than ``WHOLE_ROWS_BELOW``
    pixels, where copying row by row costs more than the product's W/OW extra columns."""
    return sh == 1 and sw == 1 and pl == 0 and kw > 1 and \
        y_shape[3] == x_shape[3] - (kw - 1) * dw and y_shape[3] < WHOLE_ROWS_BELOW


def per_image_gradients(w, dy, groups, n_threads):
    """Whether the im2col gradients share the images (times groups) out among the
    threads, rather than each block of one image (the kernels describe both): for
    images whose lowered matrix fits one cache block, when every thread gets as many
    as every other or at least four. Larger images multiply in larger blocks shared
    by the threads (on VGG-16's conv3_2 at batch 8 that was 6-10% faster)."""
    n, _, oh, ow = dy.shape
    tasks = n * groups
    return w[0].size * oh * ow * w.dtype.itemsize <= CACHE_BLOCK and \
        (tasks % n_threads == 0 or tasks >= 4 * n_threads)


def winograd_workspace(alpha, c_per_group, k_per_group, images, tiles_h, tiles_w, dtype):
    """Buffers of the Winograd kernels for runs of whole tile rows, T tiles, shared by
    the threads: V (alpha^2*Cg, T) and M (alpha^2*Kg, T). The kernels take the tile
    rows of a batch's ``images`` as one sequence, ``tiles_h`` rows of ``tiles_w`` to
    an image.

    T is a whole number of rows of ``tiles_w`` tiles: as many as keep it at most
    ``WINOGRAD_TILES``, within the workspace limit, and no more than an image has,
    but at least one; where an image has fewer than ``WINOGRAD_FEWEST`` tiles, as
    many whole images of the batch as reach that, within the same bounds. Every run
    reads all of the transformed filters U: where they outgrow a core's L2
    (``WINOGRAD_CACHE``) they stream from memory, and long runs share that out;
    where they fit, a run is only as long as keeps its V there too. A run of one
    image read U once per image however few its tiles; sharing runs, F(4x4) at batch
    8, kernel alone, 2 threads (in-process A/B, two runs, ms, Cython / Numba): 512
    channels at 7x7 7.62-7.69 -> 3.13-3.47 / 7.75-7.92 -> 3.37-3.57, 448 at 8x8
    6.10-6.30 -> 2.45-2.62 / 6.26-6.33 -> 2.74-2.90, 256 at 14x14 4.09-4.10 ->
    3.66-3.76 / 4.11-4.33 -> 3.85-4.07, 192 at 17x17 (two images a run) 4.30-4.41 ->
    3.92-4.02 / 4.48-4.63 -> 4.20-4.27; F(6x6), 512 at 7x7, 14.6-14.7 -> 6.4-6.5 /
    14.2 -> 6.3-6.6. In a scan of run lengths (Cython), 16 and 32 tiles were within
    3% of each other on 7x7 and 14x14 maps of 256 and 512 channels, 64 from 5%
    faster to 11% slower; 35 (7 rows of a 17x17 map, through BLAS) was 15% slower
    than 25 or 50. VGG-16's conv3_2 (256 channels) ran fastest at 256 tiles; its
    conv1_2 (64 channels, runs of 4 rows of 56 tiles rather than 2 with half the
    budget) ran 3-15% faster in an in-process A/B, Cython 13.94 -> 13.55 and
    14.32 -> 13.12 ms, Numba 14.89 -> 12.67 and 14.75 -> 13.35.

    The two live on a buffer that the calling thread keeps between calls. Fresh
    ones came from the system on every call: freed, their tens of megabytes were
    handed back, and VGG-16's conv3_2 took 1,160 page faults per call (10-20% of
    its time); PyTorch's convolution takes none once warm.
    """
    itemsize = np.dtype(dtype).itemsize
    tile_bytes = alpha * alpha * (c_per_group + k_per_group) * itemsize
    most = WINOGRAD_TILES
    if alpha * alpha * c_per_group * k_per_group * itemsize <= WINOGRAD_CACHE:
        most = min(most, WINOGRAD_CACHE // (alpha * alpha * c_per_group * itemsize))
    rows = tiles_h * min(images, -(-WINOGRAD_FEWEST // (tiles_h * tiles_w)))
    t = max(1, min(min(most, _limit // tile_bytes) // tiles_w, rows)) * tiles_w
    v_size, m_size = alpha * alpha * c_per_group * t, alpha * alpha * k_per_group * t
    flat = _kept_buffer((v_size + m_size) * itemsize).view(dtype)
    return flat[:v_size].reshape(-1, t), flat[v_size:].reshape(-1, t)


def winograd_packed(tiles, k_per_group, c_per_group, itemsize):
    """Whether Winograd's alpha^2 products over runs of ``tiles`` tiles take the
    kernels' register tiles over transformed filters packed in panels, rather than
    BLAS: on runs of fewer than 64 tiles where one product's filters, (Kg, Cg), take
    256 KiB or more (256x256 in float32).

    BLAS packs its operand U afresh at every call, which on a few tiles costs about
    as much as the product; the tiles read U as it was packed once, and prefetch
    the next panel while they compute from cache. Measured, 2 threads, F(4x4),
    kernel alone, BLAS against the tiles (ms, warm / caches flushed), Cython: 512
    channels at 7x7 (4 tiles) 1.68-1.70 / 3.42-3.54 against 1.02-1.05 / 1.93-2.07,
    at 14x14 (16) 2.38 / 4.42-4.66 against 1.68-1.85 / 2.98-3.17, at 28x28 (49)
    5.69-5.76 / 8.03-8.19 against 5.28-5.79 / 6.91-7.59; 448 at 7x7 0.82 / 1.64
    against 0.83 / 1.44, at 14x14 1.73 / 3.18 against 1.38 / 1.98; 256 at 7x7 0.35 /
    0.71 against 0.36 / 0.73 (Numba 0.38 / 0.82 against 0.36 / 0.56), at 14x14 0.64 /
    1.23 against 0.53 / 0.77, at 28x28 1.58 / 2.47 against 1.49 / 2.26. With smaller
    filters the two tie (128 at 14x14: 0.18 / 0.53 against 0.19 / 0.46; Numba 0.19
    / 0.54 against 0.19 / 0.44) and BLAS keeps them. With 64 tiles and more BLAS's
    packing is amortised: 512 at 56x56 (196 tiles) 19.7 / 21.9 against 25.4 / 28.5
    (tiles without the prefetch).
    """
    return tiles < 64 and k_per_group * c_per_group * itemsize >= 1 << 18


_kept = threading.local()


def _kept_buffer(nbytes):
    """This thread's scratch bytes, at least ``nbytes``: kept and reused, grown when a
    call needs more (one thread's calls never overlap, so no two share it)."""
    buffer = getattr(_kept, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _kept.buffer = np.empty(nbytes, np.uint8)
    return buffer[:nbytes]
