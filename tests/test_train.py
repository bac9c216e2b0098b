"""LeNet-5 learns real handwritten digits (scikit-learn's, in the test extra)."""

import numpy as np
import pytest

from fastconv.models import lenet5

pytest.importorskip("sklearn")


def test_lenet5_has_the_papers_shape_and_61706_parameters():
    model = lenet5()
    assert sum(p.data.size for p in model.parameters()) == 61_706
    assert model(np.zeros((2, 1, 32, 32), np.float32)).shape == (2, 10)
    assert list(model.state_dict())[:2] == ["conv1.weight", "conv1.bias"]
    with pytest.raises(ValueError, match="activation must be"):
        lenet5(activation="gelu")


def test_lenet5_reaches_97_percent_on_the_digits():
    from fastconv.train import train_lenet5_digits

    history, accuracy = train_lenet5_digits(progress=False, log=None)
    assert accuracy >= 0.97
    assert history[-1]["loss"] < history[0]["loss"]


def test_digits_are_the_real_images():
    from fastconv.train import load_digits_32

    x_train, y_train, x_test, y_test = load_digits_32()
    assert x_train.shape[1:] == (1, 32, 32) and len(x_train) + len(x_test) == 1797
    assert 0 <= x_train.min() and x_train.max() <= 1 and set(np.unique(y_test)) == set(range(10))
