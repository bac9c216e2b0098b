"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), torchvision's variant."""

from collections import OrderedDict

from .. import nn


def alexnet(num_classes=1000, dropout=0.5):
    """AlexNet with torchvision's layers and state-dict keys (61,100,840 parameters).

    Where torchvision deviates from the paper, so does this: no local response
    normalisation, 64/192/384/256/256 channels (the single-GPU "one weird trick"
    version), and an adaptive average pool to 6x6 so that inputs of 63x63 and
    up are accepted.
    """
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),   # N x 64 x 55 x 55 (224 in)
        nn.MaxPool2d(3, stride=2),                              # N x 64 x 27 x 27
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),                              # N x 192 x 13 x 13
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),                              # N x 256 x 6 x 6
    )
    classifier = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes),                           # N x num_classes
    )
    return nn.Sequential(OrderedDict([
        ("features", features),
        ("avgpool", nn.AdaptiveAvgPool2d((6, 6))),
        ("flatten", nn.Flatten()),
        ("classifier", classifier),
    ]))
