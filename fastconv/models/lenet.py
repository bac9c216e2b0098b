"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998) on 32x32 single-channel input."""

from collections import OrderedDict

from .. import nn


def lenet5(num_classes=10, activation="relu", pool="max"):
    """LeNet-5: 6@5x5, pool, 16@5x5, pool, 120, 84, classes; 61,706 parameters for 10 classes.

    The paper's C3 connects each map to a subset of S2's maps and its subsampling
    has trainable coefficients; like most modern versions this one uses full
    connections, and ``activation`` ("relu" or "tanh") and ``pool`` ("max" or
    "avg") select the nonlinearity and the pooling.
    """
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}
    pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
    if activation not in act:
        raise ValueError(f"lenet5: activation must be 'relu' or 'tanh', got {activation!r}")
    if pool not in pools:
        raise ValueError(f"lenet5: pool must be 'max' or 'avg', got {pool!r}")
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 6, 5)),          # N x 6 x 28 x 28
        ("act1", act[activation]()),
        ("pool1", pools[pool](2)),              # N x 6 x 14 x 14
        ("conv2", nn.Conv2d(6, 16, 5)),         # N x 16 x 10 x 10
        ("act2", act[activation]()),
        ("pool2", pools[pool](2)),              # N x 16 x 5 x 5
        ("flatten", nn.Flatten()),              # N x 400
        ("fc1", nn.Linear(400, 120)),
        ("act3", act[activation]()),
        ("fc2", nn.Linear(120, 84)),
        ("act4", act[activation]()),
        ("fc3", nn.Linear(84, num_classes)),    # N x num_classes
    ]))
