import numpy as np
import pytest

import fastconv as fc
from fastconv import functional
from fastconv.select import implemented
from fastconv.backends import get_backend


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every output buffer starts as NaN (or a huge index), so a kernel that misses a pixel fails."""
    allocate = functional._alloc

    def alloc(shape, dtype, like):
        out = allocate(shape, dtype, like)
        poison = np.full(shape, np.nan if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max,
                         dtype)
        if isinstance(out, np.ndarray):
            out[...] = poison
        else:                                   # a device array
            out.copy_to_device(poison)
        return out
    monkeypatch.setattr(functional, "_alloc", alloc)


BACKENDS = fc.available_backends()


def backend_algorithms():
    """Every (backend, algorithm) pair that imports here."""
    return [(b, a) for b in BACKENDS for a in implemented(get_backend(b))]


def has_kernel(backend, name):
    return hasattr(get_backend(backend), name)


# Deterministic property tests: the same examples on every run and machine.
from hypothesis import settings  # noqa: E402

settings.register_profile("fastconv", derandomize=True, deadline=None, max_examples=60,
                          print_blob=True)
settings.load_profile("fastconv")
