"""CUDA kernels (``numba.cuda``) under the reference backend's names and arguments.

No two threads add into one element, so the results do not depend on
scheduling. The direct convolution, unfold/fold and the pooling forwards take
one output element per thread (the data gradient and fold gather from every
window that covers their pixel, the weight gradient sums over the batch and
the output map); the pooling gradients take one (n, c) plane per thread and
scatter inside it. The ``im2col`` convolutions are implicit GEMMs in
shared-memory tiles (see their section), whose split reductions are added in a
fixed order. Sums start from ``zero[0]``, a one-element array of the output's
dtype, so float32 kernels add in float32 as the CPU kernels do.

The host functions take NumPy arrays, as the other backends' kernels do, or
device arrays: host inputs are copied to the device and host outputs receive
the result, device arrays are used where they are (``_on_device``). Element
kernels run one thread per output item in blocks of ``threads_per_block()``
threads (``FASTCONV_CUDA_THREADS``, 128 by default; the tests use a few, so
that arrays cross block boundaries).
"""

import ctypes
import functools
import math
import os
import struct
import sys
from contextlib import contextmanager

import numba
import numpy as np
from numba import cuda

from .backends import is_device_array


def threads_per_block():
    """Threads per block of every launch."""
    return int(os.environ.get("FASTCONV_CUDA_THREADS", "128"))


def _device(a):
    """``a`` as a numba device array: device arrays as they are (anything else with
    ``__cuda_array_interface__`` wrapped), host arrays copied over."""
    if is_device_array(a):
        return a if hasattr(a, "copy_to_host") else cuda.as_cuda_array(a)
    return to_device(a)


@contextmanager
def _on_device(inputs, outputs):
    """Device arrays for ``inputs`` and ``outputs``; on leaving, the outputs that are
    host arrays receive what the kernels wrote on the device."""
    device_in = [_device(a) for a in inputs]
    device_out = [_device(a) if is_device_array(a) else empty(a.shape, a.dtype)
                  for a in outputs]
    yield (*device_in, *device_out)
    for host, device in zip(outputs, device_out):
        if not is_device_array(host):
            device.copy_to_host(host)


_ZEROS = {}


def zeros(n, dtype):
    """A device array of ``n`` zeros, for kernels to read (kept: one per size and dtype)."""
    key = (n, np.dtype(dtype))
    if key not in _ZEROS:
        _ZEROS[key] = cuda.to_device(np.zeros(n, dtype))
    return _ZEROS[key]


def _zero(dtype):
    return zeros(1, dtype)


_WORKSPACE = {}


def _workspace(size, dtype):
    """A device buffer of at least ``size`` elements, kept and grown for later calls
    (kernels run in order on one stream, so a call never meets another's use)."""
    key = np.dtype(dtype)
    if key not in _WORKSPACE or _WORKSPACE[key].size < size:
        _WORKSPACE[key] = cuda.device_array(size, key)
    return _WORKSPACE[key]


def _counters(size):
    """At least ``size`` int32 zeros on the device, kept for later calls: the split
    reductions' counts, which their last block sets back to zero."""
    key = "counters"
    if key not in _WORKSPACE or _WORKSPACE[key].size < size:
        _WORKSPACE[key] = cuda.to_device(np.zeros(size, np.int32))
    return _WORKSPACE[key]


# numba prepares a launch argument by argument, making a ctypes object for every
# field of every array (pointer, size, shape, strides): 61 us for five arrays and
# 108 us for six arrays and twelve ints on an H200's host, more than a batch-1
# layer takes on the GPU. ``_run`` lets numba compile and launch a kernel once
# for each kind of arguments, checks that its own packing gives the bytes numba
# gave, and from then on packs the same fields into one int64 buffer and calls
# cuLaunchKernel itself.

_LAUNCHES = {}


def _address(handle):
    """The integer value of a driver handle or device pointer (a ctypes value, or an
    object that converts to int: NVIDIA's binding)."""
    return int(getattr(handle, "value", handle) or 0)


def _fields(args):
    """``(key, fields)``: the kinds of ``args`` and their kernel parameters as int64s
    (an array: meminfo, parent, size, itemsize, data, shape, strides; numba's array
    model), or ``None`` for an argument the packing does not cover."""
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    key, fields = [], []
    for a in args:
        kind = type(a)
        if kind is int or kind is bool:
            fields.append(int(a))
        elif kind is float:
            fields.append(struct.unpack("<q", struct.pack("<d", a))[0])
        elif kind is DeviceNDArray and 0 not in a.strides and a.is_c_contiguous():
            kind = (a.dtype, a.ndim)
            fields += (0, 0, a.size, a.dtype.itemsize, _address(a.device_ctypes_pointer),
                       *a.shape, *a.strides)
        else:
            return None, None
        key.append(kind)
    return tuple(key), fields


def _param_bytes(param):
    """The bytes numba passes for one kernel parameter (a ctypes value, or a driver
    pointer object with NVIDIA's binding)."""
    return bytes(param) if isinstance(param, ctypes._SimpleCData) else \
        _address(param).to_bytes(8, "little", signed=True)


def _compiled(kernel, args, fields):
    """The address of ``kernel``'s compiled function for ``args``, if numba marshals
    them into exactly ``fields`` (else ``None``: numba keeps launching it)."""
    try:
        compiled = kernel.overloads[tuple(kernel.typeof_pyval(a) for a in args)]
        params = []
        for t, a in zip(compiled.argument_types, args):
            compiled._prepare_args(t, a, 0, [], params)
        if len(params) != len(fields) or any(
                _param_bytes(p) != f.to_bytes(8, "little", signed=True)[:len(_param_bytes(p))]
                for p, f in zip(params, fields)):
            return None
        return _address(compiled._codelibrary.get_cufunc().handle)
    except (AttributeError, KeyError, OverflowError, TypeError, ValueError):
        return None


@functools.cache
def _cu_launch_kernel():
    driver = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    launch = driver.cuLaunchKernel
    launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    launch.restype = ctypes.c_int
    return launch


def _run(kernel, grid, block, *args):
    """``kernel[grid, block](*args)`` on the default stream (see above)."""
    key, fields = (None, None) if numba.config.ENABLE_CUDASIM else _fields(args)
    function = _LAUNCHES.get((kernel, key)) if key is not None else None
    if function is None:
        kernel[grid, block](*args)
        if key is not None and (kernel, key) not in _LAUNCHES:
            _LAUNCHES[kernel, key] = _compiled(kernel, args, fields)
        return
    values = np.array(fields, np.int64)
    params = np.arange(0, 8 * len(fields), 8, dtype=np.uint64) + values.ctypes.data
    gx, gy, gz = (*grid, 1, 1)[:3] if isinstance(grid, tuple) else (grid, 1, 1)
    status = _cu_launch_kernel()(function, gx, gy, gz, block, 1, 1, 0, None,
                                 params.ctypes.data, None)
    if status:
        raise RuntimeError(f"cuLaunchKernel of {kernel.py_func.__name__} failed with "
                           f"CUresult {status}")


def _launch(kernel, n_items, inputs, outputs, *scalars):
    """Run ``kernel[blocks, threads](*inputs, *outputs, *scalars)`` over ``n_items``
    threads, on the device arrays of ``inputs`` and ``outputs`` (see ``_on_device``)."""
    if n_items == 0:
        return
    threads = threads_per_block()
    with _on_device(inputs, outputs) as arrays:
        _run(kernel, (n_items + threads - 1) // threads, threads, *arrays, *scalars)


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
    _launch(_conv_bwd_data, dx.size, (dy, w, _zero(dx.dtype)), (dx,),
            sh, sw, pt, pl, dh, dw, groups)


def conv2d_bwd_weight_direct(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    _launch(_conv_bwd_weight, dw_.size, (dy, x, _zero(dw_.dtype)), (dw_,),
            sh, sw, pt, pl, dh, dw, groups)


# ---------------------------------------------------------------------------
# Convolution, implicit GEMM: im2col's product without the columns in memory
# ---------------------------------------------------------------------------
#
# Each direction of a convolution is one matrix product per group,
# C[m, p] = sum_r A[m, r] B[r, p], whose operands are gathered from the arrays
# on the fly (see the three kernels). A block of threads owns a BM x BN tile of
# C: for every slice of BK reduction indices it copies the A and B tiles into
# shared memory (each element loaded from global memory once per block, not
# once per output), then each thread adds the products of a TM x TN sub-tile
# that it keeps in registers. Thread (ty, tx) owns rows ty + a*RM and columns
# tx + b*RN, so that a warp reads consecutive shared-memory words of B and
# writes consecutive pixels of the output.
#
# With few tiles (batch-1 layers deep in a network, the weight gradient's small
# C) the reduction is split over ``splits`` blocks per tile so that the GPU is
# filled: each writes its partial sums to a buffer and counts itself in
# ``counters``; the block that counts last adds the partial sums in split
# order, so the result never depends on scheduling, and no second kernel (a
# launch costs the host as much as the kernel takes the GPU) is needed.


def _make_tiled(dtype, bm, bn, bk, tm, tn):
    """The implicit-GEMM kernels for one dtype (a numba type) and tile shape."""
    rm, rn = bm // tm, bn // tn           # threads along m, along p
    threads = rm * rn
    a_loads, b_loads = bm * bk // threads, bk * bn // threads

    @cuda.jit(device=True)
    def start(acc, groups):
        """Zero the accumulators; (tid, ty, tx, group, split, m0, p0) of this thread."""
        for a in range(tm):
            for b in range(tn):
                acc[a, b] = 0
        tid = cuda.threadIdx.x
        z = cuda.blockIdx.z
        return (tid, tid // rn, tid % rn, z % groups, z // groups, cuda.blockIdx.y * bm,
                cuda.blockIdx.x * bn)

    @cuda.jit(device=True)
    def smaller(a, b):
        """min(a, b), which numba 0.68's own CUDA target fails to compile for two ints."""
        return a if a < b else b

    @cuda.jit(device=True)
    def multiply(a_s, b_s, acc, ty, tx):
        """acc += the products of the staged tiles, once every thread has staged its part."""
        cuda.syncthreads()
        ra = cuda.local.array(tm, dtype)
        rb = cuda.local.array(tn, dtype)
        for kk in range(bk):
            for a in range(tm):
                ra[a] = a_s[kk, ty + a * rm]
            for b in range(tn):
                rb[b] = b_s[kk, tx + b * rn]
            for a in range(tm):
                for b in range(tn):
                    acc[a, b] += ra[a] * rb[b]
        cuda.syncthreads()

    @cuda.jit(device=True)
    def store(acc, bias, out, partial, counters, ty, tx, m0, p0, mg, p_total, plane, g, groups,
              split, splits):
        """C[m, p] of group g, with p = n*plane + s, goes to out[n, g*mg + m, s] (+ bias);
        with split reductions through the partial sums of every split."""
        if splits > 1:
            for a in range(tm):
                for b in range(tn):
                    m, p = m0 + ty + a * rm, p0 + tx + b * rn
                    if m < mg and p < p_total:
                        partial[((split * groups + g) * mg + m) * p_total + p] = acc[a, b]
            # the writes reach every block before the count does
            cuda.threadfence()
            cuda.syncthreads()
            last = cuda.shared.array(1, numba.int32)
            tile = (g * cuda.gridDim.y + cuda.blockIdx.y) * cuda.gridDim.x + cuda.blockIdx.x
            if cuda.threadIdx.x == 0:
                last[0] = cuda.atomic.add(counters, tile, 1) == splits - 1
            cuda.syncthreads()
            if not last[0]:
                return
            if cuda.threadIdx.x == 0:
                counters[tile] = 0          # ready for the next launch
            stride = groups * mg * p_total
            for a in range(tm):
                for b in range(tn):
                    m, p = m0 + ty + a * rm, p0 + tx + b * rn
                    if m < mg and p < p_total:
                        at = (g * mg + m) * p_total + p
                        total = partial[at]
                        for s in range(1, splits):
                            total += partial[s * stride + at]
                        acc[a, b] = total
        for a in range(tm):
            for b in range(tn):
                m, p = m0 + ty + a * rm, p0 + tx + b * rn
                if m < mg and p < p_total:
                    out[(p // plane * groups + g) * mg * plane + m * plane + p % plane] = \
                        acc[a, b] + bias[g * mg + m]

    @cuda.jit
    def fwd(x, w2, window, bias, out, partial, counters, oh_, ow_, sh, sw, pt, pl, groups,
            splits, chunk):
        """y[n, k] = b[k] + sum_r w[k, r] cols[r, (n, oh, ow)], r = (c, i, j): m = k of the
        group, p = (n, oh, ow)."""
        a_s = cuda.shared.array((bk, bm), dtype)
        b_s = cuda.shared.array((bk, bn), dtype)
        acc = cuda.local.array((tm, tn), dtype)
        tid, ty, tx, g, split, m0, p0 = start(acc, groups)
        n_, c_, h_, w_ = x.shape
        mg, r_total = w2.shape[0] // groups, w2.shape[1]
        plane = oh_ * ow_
        p_total = n_ * plane
        c0 = g * (c_ // groups)
        # this thread loads column pp of B in every slice: its pixel, decoded once
        pp = tid % bn
        p = p0 + pp
        n = p // plane
        ih0 = p % plane // ow_ * sh - pt
        iw0 = p % plane % ow_ * sw - pl
        r_end = smaller(split * chunk + chunk, r_total)
        for r0 in range(split * chunk, r_end, bk):
            for load in range(a_loads):
                e = tid + load * threads
                m, r = m0 + e // bk, r0 + e % bk
                a_s[e % bk, e // bk] = w2[g * mg + m, r] if m < mg and r < r_end else 0
            for load in range(b_loads):
                kk = tid // bn + load * (threads // bn)
                r = r0 + kk
                val = dtype(0)
                if p < p_total and r < r_end:
                    ih = ih0 + window[1, r]
                    iw = iw0 + window[2, r]
                    if 0 <= ih < h_ and 0 <= iw < w_:
                        val = x[n, c0 + window[0, r], ih, iw]
                b_s[kk, pp] = val
            multiply(a_s, b_s, acc, ty, tx)
        store(acc, bias, out, partial, counters, ty, tx, m0, p0, mg, p_total, plane, g, groups,
              split, splits)

    @cuda.jit
    def bwd_data(dy, w3, window, bias, out, partial, counters, h_, w_, sh, sw, pt, pl, groups,
                 splits, chunk):
        """dx[n, c] = sum_r w[k, c, i, j] dy[n, k, oh, ow] over the windows that read
        pixel (h, v) (oh*sh - pt + i*dh = h, likewise v), r = (k, i, j): m = c of the
        group, p = (n, h, v)."""
        a_s = cuda.shared.array((bk, bm), dtype)
        b_s = cuda.shared.array((bk, bn), dtype)
        acc = cuda.local.array((tm, tn), dtype)
        tid, ty, tx, g, split, m0, p0 = start(acc, groups)
        n_, k_, oh_, ow_ = dy.shape
        mg = w3.shape[1]
        kg = k_ // groups
        r_total = window.shape[1]
        plane = h_ * w_
        p_total = n_ * plane
        pp = tid % bn
        p = p0 + pp
        n = p // plane
        th = p % plane // w_ + pt
        tw = p % plane % w_ + pl
        r_end = smaller(split * chunk + chunk, r_total)
        for r0 in range(split * chunk, r_end, bk):
            for load in range(a_loads):
                e = tid + load * threads
                m, r = m0 + e // bk, r0 + e % bk
                val = dtype(0)
                if m < mg and r < r_end:
                    val = w3[g * kg + window[0, r], m, window[3, r]]
                a_s[e % bk, e // bk] = val
            for load in range(b_loads):
                kk = tid // bn + load * (threads // bn)
                r = r0 + kk
                val = dtype(0)
                if p < p_total and r < r_end:
                    t = th - window[1, r]
                    u = tw - window[2, r]
                    if t >= 0 and u >= 0:
                        oh = t if sh == 1 else t // sh      # no 64-bit division for stride 1
                        ow = u if sw == 1 else u // sw
                        if oh * sh == t and ow * sw == u and oh < oh_ and ow < ow_:
                            val = dy[n, g * kg + window[0, r], oh, ow]
                b_s[kk, pp] = val
            multiply(a_s, b_s, acc, ty, tx)
        store(acc, bias, out, partial, counters, ty, tx, m0, p0, mg, p_total, plane, g, groups,
              split, splits)

    @cuda.jit
    def bwd_weight(dy3, x, window, pixels, bias, out, partial, counters, groups, splits,
                   chunk):
        """dw[k, r] = sum_q dy[n, k, oh, ow] cols[r, q] over q = (n, oh, ow), r = (c, i, j):
        m = k of the group, p = r."""
        a_s = cuda.shared.array((bk, bm), dtype)
        b_s = cuda.shared.array((bk, bn), dtype)
        acc = cuda.local.array((tm, tn), dtype)
        tid, ty, tx, g, split, m0, p0 = start(acc, groups)
        n_, k_, plane = dy3.shape
        h_, w_ = x.shape[2], x.shape[3]
        mg, cg = k_ // groups, x.shape[1] // groups
        p_total = window.shape[1]
        q_total = n_ * plane
        q_end = smaller(split * chunk + chunk, q_total)
        for q0 in range(split * chunk, q_end, bk):
            # consecutive threads take consecutive q: neighbouring pixels of a row
            for load in range(a_loads):
                e = tid + load * threads
                m, q = m0 + e // bk, q0 + e % bk
                val = dtype(0)
                if m < mg and q < q_end:
                    n = pixels[0, q]
                    val = dy3[n, g * mg + m, q - n * plane]
                a_s[e % bk, e // bk] = val
            for load in range(b_loads):
                e = tid + load * threads
                r, q = p0 + e // bk, q0 + e % bk
                val = dtype(0)
                if r < p_total and q < q_end:
                    ih = pixels[1, q] + window[1, r]
                    iw = pixels[2, q] + window[2, r]
                    if 0 <= ih < h_ and 0 <= iw < w_:
                        val = x[pixels[0, q], g * cg + window[0, r], ih, iw]
                b_s[e % bk, e // bk] = val
            multiply(a_s, b_s, acc, ty, tx)
        # p = r with n = 0: out[0, g*mg + m, r] is dw[g*mg + m, r]
        store(acc, bias, out, partial, counters, ty, tx, m0, p0, mg, p_total, p_total, g, groups,
              split, splits)

    return fwd, bwd_data, bwd_weight


_TILED = {}


def _tiled(dtype, tile):
    key = (np.dtype(dtype), tile)
    if key not in _TILED:
        _TILED[key] = _make_tiled(numba.from_dtype(key[0]), *tile)
    return _TILED[key]


@functools.cache
def _target_blocks():
    """Blocks that fill the GPU: two per multiprocessor (8 in the simulator)."""
    device = getattr(cuda, "get_current_device", None)
    return 2 * device().MULTIPROCESSOR_COUNT if device else 8


# Products that fill them run in 128x128 tiles, 8x8 outputs per thread (twice
# the multiply-adds per shared-memory load of 64x64 tiles of 4x4): on an H200 a
# VGG-16 conv3_2 at batch 8 took 5.5 ms so against 8.6 ms in 64x64 tiles. Narrow
# ones (few output channels or pixels) keep 64x64 tiles, which waste less.
LARGE_TILE, SMALL_TILE = (128, 128, 8, 8, 8), (64, 64, 16, 4, 4)


def tile_shape(p_total=0, m=0):
    """``(BM, BN, BK, TM, TN)`` of the implicit-GEMM kernels for a product of ``m`` x
    ``p_total`` outputs: ``FASTCONV_CUDA_TILE`` if set (the tests use small tiles, so
    that shapes cross them), else large tiles where both sides fill them."""
    if "FASTCONV_CUDA_TILE" in os.environ:
        tile = tuple(int(v) for v in os.environ["FASTCONV_CUDA_TILE"].split(","))
    else:
        tile = LARGE_TILE if m >= 128 and p_total >= 1024 else SMALL_TILE
    bm, bn, bk, tm, tn = tile
    threads = bm // tm * (bn // tn)
    if bm % tm or bn % tn or threads % bn or threads % bk or bm * bk % threads or bk * bn % threads:
        raise ValueError(f"FASTCONV_CUDA_TILE={tile}: (BM/TM)*(BN/TN) threads must be a multiple "
                         f"of BN and of BK and divide BM*BK and BK*BN")
    return tile


@functools.lru_cache(maxsize=256)
def _window_table(outer, kh, kw, dh, dw):
    """Reduction index r = (o, i, j) decoded once for the kernels, which would otherwise
    divide 64-bit integers for every element they load: rows o, i*dh, j*dw, i*kw + j."""
    r = np.arange(outer * kh * kw)
    ij = r % (kh * kw)
    return cuda.to_device(np.stack([r // (kh * kw), ij // kw * dh, ij % kw * dw, ij])
                          .astype(np.int32))


@functools.lru_cache(maxsize=256)
def _pixel_table(n, oh, ow, sh, sw, pt, pl):
    """Output pixel q = (n, oh, ow) decoded: rows n, oh*sh - pt, ow*sw - pl."""
    q = np.arange(n * oh * ow)
    s = q % (oh * ow)
    return cuda.to_device(np.stack([q // (oh * ow), s // ow * sh - pt, s % ow * sw - pl])
                          .astype(np.int32))


def _gemm(which, out, arrays, bias, scalars, groups, mg, p_total, r_total):
    """Launch the implicit-GEMM kernel ``which`` for C (groups x mg x p_total) written
    to ``out`` as (n, groups*mg, plane), the reduction split to fill the GPU."""
    if out.size == 0:
        return
    tile = tile_shape(p_total, mg)
    bm, bn, bk, tm, tn = tile
    kernel = _tiled(out.dtype, tile)[which]
    tiles = (p_total + bn - 1) // bn * ((mg + bm - 1) // bm) * groups
    steps = max(1, (r_total + bk - 1) // bk)
    splits = max(1, min(_target_blocks() // tiles, steps // 4))
    chunk = (steps + splits - 1) // splits * bk
    splits = (r_total + chunk - 1) // chunk if r_total else 1
    grid = ((p_total + bn - 1) // bn, (mg + bm - 1) // bm, groups * splits)
    _run(kernel, grid, bm // tm * (bn // tn), *arrays, bias, out.reshape(out.size),
         _workspace(splits * groups * mg * p_total if splits > 1 else 1, out.dtype),
         _counters(grid[0] * grid[1] * groups), *scalars, groups, splits, chunk)


def conv2d_fwd_im2col(x, w, b, y, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    with _on_device((x, w, b), (y,)) as (x, w, b, y):
        n, k, oh, ow = y.shape
        cg = w.shape[1]
        _gemm(0, y, (x, w.reshape(k, cg * kh * kw), _window_table(cg, kh, kw, dh, dw)), b,
              (oh, ow, sh, sw, pt, pl), groups, k // groups, n * oh * ow, cg * kh * kw)


def conv2d_bwd_data_im2col(dy, w, dx, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    with _on_device((dy, w), (dx,)) as (dy, w, dx):
        n, c, h, v = dx.shape
        k = w.shape[0]
        _gemm(1, dx, (dy, w.reshape(k, w.shape[1], kh * kw),
                      _window_table(k // groups, kh, kw, dh, dw)),
              zeros(c, dx.dtype), (h, v, sh, sw, pt, pl), groups, c // groups, n * h * v,
              k // groups * kh * kw)


def conv2d_bwd_weight_im2col(dy, x, dw_, kh, kw, sh, sw, pt, pl, dh, dw, groups, n_threads):
    with _on_device((dy, x), (dw_,)) as (dy, x, dw_):
        n, k, oh, ow = dy.shape
        cg = dw_.shape[1]
        _gemm(2, dw_, (dy.reshape(n, k, oh * ow), x, _window_table(cg, kh, kw, dh, dw),
                       _pixel_table(n, oh, ow, sh, sw, pt, pl)),
              zeros(k, dw_.dtype), (), groups, k // groups, cg * kh * kw, n * oh * ow)


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
    _launch(_col2im, x.size, (cols, _zero(x.dtype)), (x,), kh, kw, sh, sw, pt, pl, dh, dw)


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
    _launch(_maxpool_bwd, dx.shape[0] * dx.shape[1], (dy, indices, _zero(dx.dtype)),
            (dx,))


def maxpool2d_bwd_input(x, dy, dx, kh, kw, sh, sw, pt, pl, dh, dw, n_threads):
    """The gradient from X: maxpool2d_fwd, then maxpool2d_bwd, with the maxima and their
    indices left on the device."""
    indices = empty(dy.shape, np.int64)
    maxpool2d_fwd(x, empty(dy.shape, dy.dtype), indices, kh, kw, sh, sw, pt, pl, dh, dw,
                  n_threads)
    maxpool2d_bwd(dy, indices, dx, n_threads)


def avgpool2d_fwd(x, y, kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    _launch(_avgpool_fwd, y.size, (x, _zero(y.dtype)), (y,), kh, kw, sh, sw, pt, pl,
            count_include_pad, divisor_override)


def avgpool2d_bwd(dy, dx, kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor_override,
                  n_threads):
    _launch(_avgpool_bwd, dx.shape[0] * dx.shape[1], (dy, _zero(dx.dtype)), (dx,),
            kh, kw, sh, sw, pt, pl, count_include_pad, divisor_override)


def adaptive_avgpool2d_fwd(x, y, n_threads):
    _launch(_adaptive_fwd, y.size, (x, _zero(y.dtype)), (y,))


def adaptive_avgpool2d_bwd(dy, dx, n_threads):
    _launch(_adaptive_bwd, dx.shape[0] * dx.shape[1], (dy, _zero(dx.dtype)), (dx,))


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
    _launch(_linear_fwd, y.size, (x, w, b if has_bias else _zero(y.dtype),
                                  _zero(y.dtype)), (y,), has_bias)


# ---------------------------------------------------------------------------
# Device arrays and the rest of a network's inference on the device
# ---------------------------------------------------------------------------

def to_device(a):
    """A device copy of the host array ``a``."""
    return cuda.to_device(np.ascontiguousarray(a))


class BlockPool:
    """Free blocks of device memory by size class (powers of two, from 512 bytes).

    numba gives every device array its own cuMemAlloc and cuMemFree, and the free
    waits for the device: an array cost 45 us (2 KiB) to 190 us (4 MiB) of host
    time on an H200's host, more than most kernels of a batch-1 network take. A
    block taken here goes back to its free list when the array made on it is
    collected, and is handed out again. Every kernel runs in order on the default
    stream, so work queued on a reused block always follows the work that read
    it before.
    """

    def __init__(self, allocate):
        self._allocate = allocate
        self._free = {}

    @staticmethod
    def size_class(nbytes):
        return max(512, 1 << (nbytes - 1).bit_length())

    def take(self, nbytes):
        """``(block, free list)``: a block of at least ``nbytes`` and the list to give it
        back to."""
        size = self.size_class(nbytes)
        free = self._free.setdefault(size, [])
        return (free.pop() if free else self._allocate(size)), free

    def clear(self):
        """Drop the free blocks (numba frees them); blocks in use are freed when their
        arrays go."""
        self._free = {}


_POOL = BlockPool(lambda size: cuda.device_array(size, np.uint8))


def empty(shape, dtype):
    """An uninitialised, C-contiguous device array, on a block of the pool (numba's
    simulator: a plain device array)."""
    shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0 or numba.config.ENABLE_CUDASIM:
        return cuda.device_array(shape, dtype)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import MemoryPointer

    block, free = _POOL.take(nbytes)
    memory = MemoryPointer(block.gpu_data.context, block.gpu_data.device_pointer, nbytes,
                           finalizer=functools.partial(free.append, block))
    strides = tuple(dtype.itemsize * math.prod(shape[i + 1:]) for i in range(len(shape)))
    return DeviceNDArray(shape, strides, dtype, gpu_data=memory)


def free_cached_memory():
    """Give the device memory kept for reuse back to the driver."""
    _POOL.clear()
    _WORKSPACE.clear()


@cuda.jit
def _copy4(src, dst):
    idx = cuda.grid(1)
    if idx < dst.size:
        n, c, h, v = _unravel(idx, dst.shape)
        dst[n, c, h, v] = src[n, c, h, v]


def contiguous(a):
    """``a`` if it is C-contiguous, else a C-contiguous device copy (4-D views, such as
    a kernel flipped by slicing)."""
    a = _device(a)
    if a.is_c_contiguous():
        return a
    if a.ndim != 4:
        raise ValueError(f"a {a.ndim}-D device array that is not C-contiguous cannot be "
                         f"used; copy it to a contiguous one first")
    out = empty(a.shape, a.dtype)
    _launch(_copy4, out.size, (a,), (out,))
    return out


_SUM_THREADS = 128


@cuda.jit
def _channel_sum(x, out):
    """out[c] = sum over n, h, w of x[n, c], in float64: one block per channel, a fixed
    tree of partial sums in shared memory, so the order of the additions never changes."""
    partial = cuda.shared.array(_SUM_THREADS, numba.float64)
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n_, c_, h_, w_ = x.shape
    plane = h_ * w_
    acc = 0.0
    for e in range(t, n_ * plane, _SUM_THREADS):
        acc += x[e // plane, c, e % plane // w_, e % w_]
    partial[t] = acc
    cuda.syncthreads()
    width = _SUM_THREADS // 2
    while width > 0:
        if t < width:
            partial[t] += partial[t + width]
        cuda.syncthreads()
        width //= 2
    if t == 0:
        out[c] = partial[0]


def channel_sum(x, out, n_threads):
    """out[c] = sum over n, h, w of x[n, c] (a convolution's bias gradient)."""
    if x.shape[1] == 0:
        return
    with _on_device((x,), (out,)) as (x, out):
        _run(_channel_sum, x.shape[1], _SUM_THREADS, x, out)


@cuda.jit
def _batchnorm_inference(x, mean, var, weight, bias, y, eps, relu):
    """y = (x - mean[c]) * weight[c] / sqrt(var[c] + eps) + bias[c], then max(y, 0)."""
    idx = cuda.grid(1)
    if idx >= x.size:
        return
    n, c, h, v = _unravel(idx, x.shape)
    scale = weight[c] / math.sqrt(var[c] + eps)
    out = x[n, c, h, v] * scale + (bias[c] - mean[c] * scale)
    if relu and out < 0:
        out = 0
    y[n, c, h, v] = out


def batchnorm_inference(x, mean, var, weight, bias, eps, y, relu, n_threads):
    _launch(_batchnorm_inference, x.size, (x, mean, var, weight, bias), (y,), eps, relu)


@cuda.jit
def _add(a, b, y, relu):
    idx = cuda.grid(1)
    if idx < y.size:
        out = a[idx] + b[idx]
        if relu and out < 0:
            out = 0
        y[idx] = out


def add(a, b, y, relu, n_threads):
    """y = a + b (then max(y, 0)), flat arrays of one size; y may be a or b."""
    _launch(_add, y.size, (a, b), (y,), relu)


@cuda.jit
def _relu(x, y):
    idx = cuda.grid(1)
    if idx < y.size:
        y[idx] = 0 if x[idx] < 0 else x[idx]       # NaN is not < 0: kept


def relu(x, y, n_threads):
    """y = max(x, 0), NaN kept; flat arrays, y may be x."""
    _launch(_relu, y.size, (x,), (y,))


@cuda.jit
def _copy_channels(src, dst, offset):
    """dst[n, offset + c] = src[n, c]."""
    idx = cuda.grid(1)
    if idx < src.size:
        n, c, h, v = _unravel(idx, src.shape)
        dst[n, offset + c, h, v] = src[n, c, h, v]


def concat_channels(inputs, y, n_threads):
    """y = the inputs joined along axis 1."""
    threads = threads_per_block()
    offset = 0
    with _on_device(inputs, (y,)) as arrays:
        for a in arrays[:-1]:
            if a.size:
                _run(_copy_channels, (a.size + threads - 1) // threads, threads, a, arrays[-1],
                     offset)
            offset += a.shape[1]
