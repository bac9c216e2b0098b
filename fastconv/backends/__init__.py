"""Backend registry and thread control.

A backend is a module exposing kernels under the names of the reference
backend (``conv2d_fwd_im2col``, ``maxpool2d_fwd``, ...). The functional layer
looks kernels up by name, so adding a backend never touches layers or models.

The default backend is, in order: the one set by :func:`set_backend`, the
``FASTCONV_BACKEND`` environment variable, the fastest available.
"""

import importlib
import os
from contextlib import contextmanager

import numpy as np

_MODULES = {
    "numpy": "fastconv.backends.reference",
    "cython": "fastconv.backends.cython",
    "numba": "fastconv.backends.numba",
    "cuda": "fastconv.backends.cuda",
}
_NAMES = {path: name for name, path in _MODULES.items()}
# fastest first: with no default set, an operation runs on the first of
# these that has its kernel (the GPU backend only when asked for)
_PREFERENCE = ("cython", "numba", "numpy")
_HOW_TO_GET = {
    "numpy": "it is part of fastconv",
    "cython": "reinstall fastconv from source with a C compiler (pip install .)",
    "numba": "pip install numba",
    "cuda": ("use a machine with an NVIDIA GPU and driver and pip install 'fastconv[cuda]' "
             "(or set NUMBA_ENABLE_CUDASIM=1 to run its kernels in numba's simulator)"),
}

_loaded = {}
_failed = {}
_default = None


def _load(name):
    global _blas_libraries, _kernel_blas
    if name not in _loaded and name not in _failed:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            _failed[name] = exc
        else:
            # a backend may bring its own BLAS (scipy's, for cython_blas): limit it too
            _blas_libraries = _kernel_blas = None
            if _num_threads is not None:
                set_num_threads(_num_threads)
    return _loaded.get(name)


_DEVICE_ARRAY_TYPES = set()


def is_device_array(a):
    """Whether ``a`` lives in GPU memory: a numba device array, or anything else with
    ``__cuda_array_interface__`` (a CUDA tensor of PyTorch or CuPy)."""
    kind = type(a)
    if kind is np.ndarray:
        return False
    if kind in _DEVICE_ARRAY_TYPES:
        return True
    # numba's arrays (numba's CUDA simulator's have no interface) are remembered by
    # type: their interface is a property that builds a dict on every access; a
    # tensor's type may also hold host data
    if hasattr(a, "copy_to_host"):
        _DEVICE_ARRAY_TYPES.add(kind)
        return True
    return hasattr(a, "__cuda_array_interface__")


def available_backends():
    """Names of the backends that import on this machine, fastest first.

    >>> "numpy" in available_backends()
    True
    """
    return [name for name in _MODULES if _load(name) is not None]


def get_backend(name=None, kernel=None):
    """The backend module called ``name``.

    For ``None``: the default set by :func:`set_backend` or ``FASTCONV_BACKEND``,
    else the fastest available backend that has ``kernel``.
    """
    if name is None:
        name = default_backend(kernel)
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string such as 'numpy', got {name!r}")
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(_MODULES)}")
    module = _load(name)
    if module is None:
        raise RuntimeError(
            f"backend {name!r} is not available here ({_failed[name]}); to get it, "
            f"{_HOW_TO_GET[name]}"
        )
    return module


def backend_name(module):
    """The registry name of a backend module."""
    return _NAMES[module.__name__]


def default_backend(kernel=None):
    """The name of the backend a call with ``backend=None`` runs on (for ``kernel``)."""
    if _default is not None:
        return _default
    env = os.environ.get("FASTCONV_BACKEND")
    if env:
        get_backend(env)
        return env
    return next(name for name in _PREFERENCE
                if _load(name) is not None and (kernel is None or hasattr(_load(name), kernel)))


def set_backend(name):
    """Make ``name`` the default backend (``None`` restores the automatic choice);
    returns the previous setting, so that it can be restored."""
    global _default
    if name is not None:
        get_backend(name)
    previous, _default = _default, name
    return previous


# ---------------------------------------------------------------------------
# Threads: OpenMP (Cython kernels), Numba and BLAS share one setting
# ---------------------------------------------------------------------------

def _initial_threads():
    for var in ("FASTCONV_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


_num_threads = None
_blas_limiter = None
_blas_libraries = None
_kernel_blas = None         # (controller, shared with NumPy?) of the kernels' BLAS


def get_num_threads():
    """Threads used by fastconv's kernels, Numba and BLAS."""
    global _num_threads
    if _num_threads is None:
        set_num_threads(_initial_threads())
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads in OpenMP kernels, Numba and BLAS (through threadpoolctl).

    Two thread pools each as wide as the machine, running at once, thrash:
    fastconv keeps them at the same width and never runs one inside the other.
    """
    global _num_threads, _blas_limiter
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    from threadpoolctl import threadpool_limits

    if _blas_limiter is not None:
        _blas_limiter.restore_original_limits()
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")
    kernel_blas, shared = _find_kernel_blas()
    if kernel_blas is not None and not shared:
        kernel_blas.set_num_threads(1)
    numba = _loaded_numba()
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _num_threads = n


@contextmanager
def single_threaded_blas():
    """Run BLAS on one thread inside the block.

    The compiled im2col kernels call the GEMM from each of their own OpenMP
    threads; BLAS spreading every such call over its own threads as well would
    put two threads on each core.
    """
    global _blas_libraries
    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController

        _blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.get_num_threads() for lib in _blas_libraries]
    for lib in _blas_libraries:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_blas_libraries, before):
            lib.set_num_threads(n)


def blas_address(name):
    """Address of ``scipy.linalg.cython_blas.<name>``, the BLAS the compiled kernels call."""
    import ctypes

    import scipy.linalg.cython_blas

    capsule = scipy.linalg.cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                  ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


def _find_kernel_blas():
    """(threadpoolctl controller, shared) of the BLAS library that holds the sgemm the
    compiled kernels call; ``shared`` unless it is the library SciPy's wheel vendors
    (NumPy's BLAS is then another file); (None, True) before a compiled backend is
    loaded or where it cannot be told.

    The kernels call BLAS only from their own threads, one product per thread, so
    a separate library (SciPy's wheels bring their own OpenBLAS) stays at one
    thread for good. Setting it to one thread around each call and back, as must
    be done when NumPy shares it, wakes its pool every time: OpenBLAS's threads
    then spin for about 0.1 s and take the cores from the next kernel (ResNet-50
    inference took 87 ms that way and 70 ms with the library left at one thread).
    """
    global _kernel_blas
    if _kernel_blas is not None:
        return _kernel_blas
    if not any(name in _loaded for name in ("cython", "numba")):
        return None, True
    import ctypes

    from threadpoolctl import ThreadpoolController

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    def library_of(address):
        info = DlInfo()
        found = ctypes.CDLL(None).dladdr(ctypes.c_void_p(address), ctypes.byref(info))
        return os.path.realpath(info.dli_fname.decode()) if found and info.dli_fname else None

    # cython_blas's sgemm is a wrapper; the BLAS routine it calls is the one its
    # library resolves (OpenBLAS in SciPy's wheels exports it with a "scipy_" prefix)
    path = None
    wrapper = library_of(blas_address("sgemm"))
    if wrapper is not None:
        linked = ctypes.CDLL(wrapper)
        for symbol in ("scipy_sgemm_", "sgemm_", "scipy_sgemm_64_", "sgemm_64_"):
            if hasattr(linked, symbol):
                path = library_of(ctypes.cast(getattr(linked, symbol), ctypes.c_void_p).value)
                break
    blas = ThreadpoolController().select(user_api="blas").lib_controllers
    mine = [lib for lib in blas if os.path.realpath(lib.filepath) == path]
    # a library of its own only when it is the one SciPy's wheel vendors (then NumPy's
    # is another file); a system or conda BLAS may be NumPy's as well
    import scipy

    vendored = os.path.realpath(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)),
                                             "scipy.libs"))
    own = bool(mine) and len(blas) >= 2 and path.startswith(vendored + os.sep)
    _kernel_blas = (mine[0] if mine else None), not own
    return _kernel_blas


@contextmanager
def kernel_blas_single_threaded():
    """The compiled kernels' BLAS on one thread inside the block: already so when it
    is a library of its own (see ``_find_kernel_blas``), else set and restored."""
    kernel_blas, shared = _find_kernel_blas()
    if not shared:
        if kernel_blas.num_threads != 1:    # someone changed the limits since (threadpoolctl)
            kernel_blas.set_num_threads(1)
        yield
        return
    with single_threaded_blas():
        yield


def _loaded_numba():
    """Numba if something already imported it: importing it only to set threads costs ~0.5 s."""
    import sys

    return sys.modules.get("numba")
