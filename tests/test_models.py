"""Backbones: torchvision's parameter counts and keys; eval-mode outputs match a PyTorch
model of the same architecture carrying the same weights."""

from collections import OrderedDict

import numpy as np
import pytest

from fastconv import models

from configs import rel_err


@pytest.mark.parametrize("build,count", [
    (models.alexnet, 61_100_840), (models.vgg16, 138_357_544), (models.vgg16_bn, 138_365_992),
    (models.lenet5, 61_706),
])
def test_parameter_counts_equal_torchvisions(build, count):
    assert sum(p.data.size for p in build().parameters()) == count


def test_vgg_keys_and_classes():
    model = models.vgg11_bn(num_classes=7, init_weights=False)
    keys = list(model.state_dict())
    assert keys[:6] == ["features.0.weight", "features.0.bias", "features.1.weight",
                        "features.1.bias", "features.1.running_mean", "features.1.running_var"]
    assert keys[-1] == "classifier.6.bias" and model.state_dict()["classifier.6.bias"].shape == (7,)


torch = pytest.importorskip("torch")
T = torch.nn


def _reference(name):
    """The torchvision architecture built from torch.nn (torchvision itself when installed)."""
    try:
        import torchvision
        return getattr(torchvision.models, name)()
    except ImportError:
        pass
    if name == "alexnet":
        features = T.Sequential(
            T.Conv2d(3, 64, 11, 4, 2), T.ReLU(), T.MaxPool2d(3, 2), T.Conv2d(64, 192, 5, padding=2),
            T.ReLU(), T.MaxPool2d(3, 2), T.Conv2d(192, 384, 3, padding=1), T.ReLU(),
            T.Conv2d(384, 256, 3, padding=1), T.ReLU(), T.Conv2d(256, 256, 3, padding=1), T.ReLU(),
            T.MaxPool2d(3, 2))
        classifier = T.Sequential(T.Dropout(), T.Linear(9216, 4096), T.ReLU(), T.Dropout(),
                                  T.Linear(4096, 4096), T.ReLU(), T.Linear(4096, 1000))
        pool = T.AdaptiveAvgPool2d(6)
    else:
        layers, c = [], 3
        for v in models.vgg.CONFIGS[11]:
            if v == "M":
                layers.append(T.MaxPool2d(2, 2))
            else:
                layers += [T.Conv2d(c, v, 3, padding=1), T.BatchNorm2d(v), T.ReLU()]
                c = v
        features = T.Sequential(*layers)
        classifier = T.Sequential(T.Linear(25088, 4096), T.ReLU(), T.Dropout(),
                                  T.Linear(4096, 4096), T.ReLU(), T.Dropout(),
                                  T.Linear(4096, 1000))
        pool = T.AdaptiveAvgPool2d(7)
    return T.Sequential(OrderedDict(features=features, avgpool=pool, flatten=T.Flatten(),
                                    classifier=classifier))


@pytest.mark.parametrize("name,build,size", [("alexnet", models.alexnet, 67),
                                             ("vgg11_bn", models.vgg11_bn, 32)])
def test_eval_outputs_match_pytorch_with_the_same_weights(name, build, size):
    torch.manual_seed(0)
    reference = _reference(name).eval()
    with torch.no_grad():                    # non-trivial BatchNorm statistics
        for m in reference.modules():
            if isinstance(m, T.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    ours = build(init_weights=False) if name.startswith("vgg") else build()
    ours.load_state_dict(reference.state_dict())
    ours.eval()
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert rel_err(ours(x), expected) <= 1e-3
