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

_MODULES = {
    "numpy": "fastconv.backends.reference",
    "cython": "fastconv.backends.cython",
    "numba": "fastconv.backends.numba",
}
# fastest first: with no default set, an operation runs on the first of
# these that has its kernel
_PREFERENCE = ("cython", "numba", "numpy")
_HOW_TO_GET = {
    "numpy": "it is part of fastconv",
    "cython": "reinstall fastconv from source with a C compiler (pip install .)",
    "numba": "pip install numba",
}

_loaded = {}
_failed = {}
_default = None


def _load(name):
    global _blas_libraries
    if name not in _loaded and name not in _failed:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            _failed[name] = exc
        else:
            # a backend may bring its own BLAS (scipy's, for cython_blas): limit it too
            _blas_libraries = None
            if _num_threads is not None:
                set_num_threads(_num_threads)
    return _loaded.get(name)


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
    return next(name for name, path in _MODULES.items() if path == module.__name__)


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


def _loaded_numba():
    """Numba if something already imported it: importing it only to set threads costs ~0.5 s."""
    import sys

    return sys.modules.get("numba")
