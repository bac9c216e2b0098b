"""pytest-benchmark setup: fastconv, BLAS and PyTorch pinned to the same thread count.

Run with ``pytest bench`` (FASTCONV_NUM_THREADS sets the count; default: all cores).
Compare a group's rows: each group is one layer, PyTorch is its baseline row.
"""

import pytest

import fastconv as fc


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    n = fc.get_num_threads()
    fc.set_num_threads(n)
    try:
        import torch
    except ImportError:
        return n
    torch.set_num_threads(n)
    return n


def torch_or_skip():
    return pytest.importorskip("torch")
