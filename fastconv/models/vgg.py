"""VGG (Simonyan & Zisserman 2014): configurations A, B, D, E as VGG-11/13/16/19."""

from collections import OrderedDict

from .. import nn
from ._common import initialise

# channels of each 3x3 convolution, "M" for a 2x2 max pool
CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def _vgg(depth, batch_norm, num_classes, init_weights, dropout):
    layers, channels = [], 3
    for v in CONFIGS[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, stride=2))            # halves the map
        else:
            layers.append(nn.Conv2d(channels, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            channels = v
    model = nn.Sequential(OrderedDict([
        ("features", nn.Sequential(*layers)),                   # N x 512 x 7 x 7 (224 in)
        ("avgpool", nn.AdaptiveAvgPool2d((7, 7))),
        ("flatten", nn.Flatten()),
        ("classifier", nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes))),                     # N x num_classes
    ]))
    if init_weights:
        initialise(model, conv="kaiming", linear=("normal", 0.01))
    return model


def _builder(depth, batch_norm):
    def build(num_classes=1000, init_weights=True, dropout=0.5):
        return _vgg(depth, batch_norm, num_classes, init_weights, dropout)

    build.__name__ = f"vgg{depth}{'_bn' if batch_norm else ''}"
    build.__doc__ = (f"VGG-{depth}{' with batch normalisation' if batch_norm else ''}, with "
                     f"torchvision's layers, state-dict keys and initialisation.")
    return build


vgg11, vgg13, vgg16, vgg19 = (_builder(d, False) for d in (11, 13, 16, 19))
vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn = (_builder(d, True) for d in (11, 13, 16, 19))
