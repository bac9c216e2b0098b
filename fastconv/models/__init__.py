"""Backbones built from ``fastconv.nn`` layers (one file per family), with torchvision's
constructor arguments and state-dict keys."""

from .alexnet import alexnet
from .googlenet import googlenet
from .inception import inception_v3
from .lenet import lenet5
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

__all__ = ["alexnet", "googlenet", "inception_v3", "lenet5", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
           "vgg19", "vgg19_bn"]
