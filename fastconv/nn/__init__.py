"""Layers, losses and optimizers (``fastconv.nn``), mirroring ``torch.nn``'s names."""

from .layers import (AdaptiveAvgPool2d, Add, AvgPool2d, BatchNorm2d, Concat, Conv2d,
                     ConvTranspose2d, Dropout, Flatten, Identity, Linear, LocalResponseNorm,
                     MaxPool2d, ReLU, Sequential, Sigmoid, Softmax, Tanh, manual_seed)
from .losses import CrossEntropyLoss, MSELoss
from .module import Context, Layer, Parameter
from .optim import SGD, Adam

__all__ = [
    "AdaptiveAvgPool2d", "Adam", "Add", "AvgPool2d", "BatchNorm2d", "Concat", "Context",
    "Conv2d", "ConvTranspose2d", "CrossEntropyLoss", "Dropout", "Flatten", "Identity", "Layer",
    "Linear", "LocalResponseNorm", "MSELoss", "MaxPool2d", "Parameter",
    "ReLU", "SGD", "Sequential", "Sigmoid", "Softmax", "Tanh", "manual_seed",
]
