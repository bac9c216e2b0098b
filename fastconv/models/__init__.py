"""Backbones built from ``fastconv.nn`` layers (one file per family), with torchvision's
constructor arguments and state-dict keys."""

from .alexnet import alexnet
from .lenet import lenet5
from .vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

__all__ = ["alexnet", "lenet5", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
           "vgg19", "vgg19_bn"]
