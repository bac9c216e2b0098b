"""fastconv.save / fastconv.load: formats by content, and no pickle ever executed."""

import os
import pickle

import numpy as np
import pytest

import fastconv as fc
from fastconv import nn


def _model():
    nn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("name", ["weights.npz", "weights.safetensors", "weights.bin"])
def test_round_trip_by_content(tmp_path, name):
    model = _model()
    model(np.random.default_rng(1).standard_normal((4, 1, 4, 4)).astype(np.float32))
    path = tmp_path / name
    fc.save(model, path)
    state = fc.load(path)
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert np.array_equal(state[key], value) and state[key].dtype == value.dtype, key
    other = _model()
    other.load_state_dict(state)
    renamed = tmp_path / "no_suffix"
    os.rename(path, renamed)                      # the name does not matter
    assert np.array_equal(fc.load(renamed)["3.weight"], model.state_dict()["3.weight"])


class _Payload:
    def __reduce__(self):
        return (open, (os.environ["FASTCONV_PWNED"], "w"))


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("FASTCONV_PWNED", str(marker))
    path = tmp_path / "weights.npz"               # a lying suffix changes nothing
    path.write_bytes(pickle.dumps({"w": _Payload()}))
    with pytest.raises(ValueError, match="pickle stream; fastconv never unpickles"):
        fc.load(path)
    assert not marker.exists()


def test_npz_with_object_arrays_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        fc.load(path)


def test_pytorch_files_load_through_the_weights_only_reader(tmp_path):
    torch = pytest.importorskip("torch")
    layer = torch.nn.Conv2d(2, 3, 3)
    path = tmp_path / "conv.pth"
    torch.save(layer.state_dict(), path)
    state = fc.load(path)
    ours = nn.Conv2d(2, 3, 3)
    ours.load_state_dict(state)
    assert np.array_equal(ours.weight.data, layer.weight.detach().numpy())
    fc.save(ours, tmp_path / "ours.pth")
    assert np.array_equal(fc.load(tmp_path / "ours.pth")["weight"], ours.weight.data)
