"""Which convolution algorithm runs: a pure function of the call, resolved once.

An explicit request that cannot run is a ``ValueError``, never a silent
substitute; ``"auto"`` picks among what the backend implements.
"""

import functools

ALGORITHMS = ("im2col", "direct", "winograd2", "winograd4", "winograd6")
# "winograd" is F(4x4, 3x3), the usual trade of speed against float32 accuracy
ALIASES = {"winograd": "winograd4"}
REQUESTS = ("auto",) + ALGORITHMS + tuple(ALIASES)


@functools.cache
def implemented(backend):
    """The algorithms a backend module has forward, data-gradient and weight-gradient kernels for."""
    return tuple(
        name for name in ALGORITHMS
        if all(hasattr(backend, f"conv2d_{direction}_{name}")
               for direction in ("fwd", "bwd_data", "bwd_weight"))
    )


def winograd_applicable(geometry):
    """Winograd F(m x m, 3 x 3) needs a 3x3 kernel, stride 1 and dilation 1."""
    g = geometry
    return (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1)


def choose_algorithm(geometry, requested, available, backend_name, op="conv2d",
                     inference=False):
    """The algorithm to run for ``requested`` ("auto" or a name), among ``available``.

    Parameters
    ----------
    geometry : ConvGeometry
        The validated call.
    requested : str
        ``"auto"``, one of :data:`ALGORITHMS` or an alias (``"winograd"``).
    available : tuple of str
        What the backend implements (:func:`implemented`).
    backend_name : str
        For the error messages.
    inference : bool
        No backward pass will follow, so ``"auto"`` may pick the fastest forward
        whatever its gradients cost.

    Returns
    -------
    str
        A member of ``available``.
    """
    if not isinstance(requested, str) or requested not in REQUESTS:
        raise ValueError(f"{op}: algorithm must be one of {list(REQUESTS)}, got {requested!r}")
    if requested == "auto":
        return auto_algorithm(geometry, available, backend_name, inference)
    name = ALIASES.get(requested, requested)
    if name not in available:
        raise ValueError(
            f"{op}: backend {backend_name!r} does not implement algorithm {requested!r}; "
            f"it implements {list(available)}"
        )
    if name.startswith("winograd") and not winograd_applicable(geometry):
        g = geometry
        raise ValueError(
            f"{op}: algorithm {requested!r} needs a 3x3 kernel, stride 1 and dilation 1, got "
            f"kernel ({g.kh}, {g.kw}), stride ({g.sh}, {g.sw}), dilation ({g.dh}, {g.dw})"
        )
    return name


# Below this many multiply-adds the im2col path's fixed cost (its workspace,
# pinning BLAS to one thread) exceeds the whole direct convolution: measured
# with fastconv bench-style timings on 2 cores (Xeon, AVX-512), where direct
# won up to about 3e5 multiply-adds and im2col everywhere above.
DIRECT_MAX_MACS = 200_000

# The compiled direct kernels (stride-phase planes, fastconv/_kernels.pyx) beat
# im2col on the depthwise layers of fastconv.bench.GROUPED_LAYERS (one input
# channel per group), forward by 1.1-2x and both gradients together by up to 1.5x
# (2 cores, same process). With several channels per group (32 or 8 groups) the
# forward and the data gradient still win, but the weight gradient (a dot product
# per weight) loses 1.4-4x, and a backward pass follows its forward's algorithm:
# those stay with im2col.
DIRECT_BACKENDS = ("cython", "numba")

# At inference, when no backward pass follows, the compiled direct forward
# (a tile of 8 output channels by 32 outputs whose sums stay in registers,
# fastconv/_kernels.pyx) beat im2col + BLAS on every layer measured that
# Winograd does not take and that has a kernel larger than 1x1 (a 1x1
# convolution is a GEMM without lowering): AlexNet's five convolutions by
# 7-45%, ResNet-50's 7x7 and its 3x3 layers on 14x14 and 7x7 maps by 10-30%
# (2 cores, same process).


# Winograd pays when its transforms are amortised over enough channels and
# its GEMMs get enough tiles. Measured on 2 cores (same process, against
# PyTorch and each other) over 3x3 layers of 64-512 channels on 7x7 to 224x224
# maps, at batch 1: F(4x4) beat im2col from 32 input channels on maps of at
# least 28x28, in Cython and Numba, and F(6x6) nowhere beat F(4x4) (VGG-16
# conv1_2: 20.0 against 13.1 ms in Cython, 23.7 against 14.9 in Numba); F(2x2)
# lost to F(4x4) from 28x28 up and to im2col below. On 14x14 and 7x7 maps none
# won; since short runs of tiles multiply in register tiles, a warm F(4x4) call
# beats direct on VGG-16's conv5_2 (2.14 against 3.26 ms in Cython), but in the
# model, where its transformed filters (4x the weights) come from memory, VGG-16
# with F(4x4) on its 14x14 layers ran 86.0 -> 86.7 ms (Cython) and 92.7 -> 93.2
# (Numba): at batch 1 those stay with direct (at inference) or im2col.
# At inference the direct kernel is the other contender: it tied or beat
# F(4x4) on the layers of about 1e8 multiply-adds (64 channels at 56x56,
# 128 at 28x28: 1.64 against 1.64 ms in Cython, 1.71 against 2.19 in Numba),
# and lost by 1.4-1.9x on those of 1.8e9 (VGG-16 conv1_2 to conv4_2).
# The pixels are the batch's: images of few tiles share the kernels' runs of
# tiles (fastconv/backends/_workspace.py). At batch 4, F(4x4) beat direct on the
# 14x14 3x3 layers of VGG-16, ResNet-18/50 and GoogLeNet by 1.06-1.38x in
# Cython and Numba (VGG-16 conv5_2 9.3 against 12.8 ms, ResNet-50 layer3
# 2.6-2.8 against 3.2-3.4); at batch 2 (half the pixels) by 1.01-1.34x in
# Cython but 0.81-1.18x in Numba, and on 7x7 maps at batch 2 in neither. On
# 7x7 maps at batch 8 (also half) it won in both, by 1.2-1.3x (ResNet-50
# layer4 4.9-5.6 against 6.5-7.1 ms), which the rule leaves to the others.
# ResNet-18 and ResNet-50 at batch 8 ran 1-5% faster with the batch's pixels
# than with an image's (inference and a training step; ResNet-50's training
# step in Numba 2% slower), GoogLeNet within 2% either way.
# The NumPy reference never picks Winograd: it is the readable oracle.
WINOGRAD_RULE = (32, 28 * 28)  # min input channels per group, min pixels of the batch
WINOGRAD_INFERENCE_MACS = 400_000_000   # below, direct at inference
WINOGRAD_BACKENDS = ("cython", "numba")


def auto_algorithm(geometry, available, backend_name, inference=False):
    """The algorithm ``"auto"`` runs: direct for tiny and (compiled) depthwise
    convolutions, Winograd F(4x4) for 3x3 stride-1 layers with enough channels and
    pixels in the batch (compiled; at inference, also enough multiply-adds), direct for the rest
    but 1x1 at inference (compiled), else im2col + BLAS."""
    g = geometry
    if "direct" in available and g.macs <= DIRECT_MAX_MACS:
        return "direct"
    if "direct" in available and backend_name in DIRECT_BACKENDS and g.groups > 1 and \
            g.c_in == g.groups:
        return "direct"
    direct_inference = inference and "direct" in available and \
        backend_name in DIRECT_BACKENDS and (g.kh, g.kw) != (1, 1)
    channels, least = WINOGRAD_RULE
    if backend_name in WINOGRAD_BACKENDS and winograd_applicable(g) and \
            g.c_in // g.groups >= channels and g.n * g.oh * g.ow >= least and \
            "winograd4" in available and \
            not (direct_inference and g.macs < WINOGRAD_INFERENCE_MACS):
        return "winograd4"
    if direct_inference:
        return "direct"
    return "im2col" if "im2col" in available else available[0]
