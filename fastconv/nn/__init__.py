"""Layers, losses and optimizers (``fastconv.nn``), mirroring ``torch.nn``'s names."""

from .layers import (AdaptiveAvgPool2d, AvgPool2d, Conv2d, Dropout, Flatten, Identity, Linear,
                     MaxPool2d, ReLU, Sequential, Sigmoid, Softmax, Tanh, manual_seed)
from .losses import CrossEntropyLoss, MSELoss
from .module import Context, Layer, Parameter
from .optim import SGD, Adam

__all__ = [
    "AdaptiveAvgPool2d", "Adam", "AvgPool2d", "Context", "Conv2d", "CrossEntropyLoss",
    "Dropout", "Flatten", "Identity", "Layer", "Linear", "MSELoss", "MaxPool2d", "Parameter",
    "ReLU", "SGD", "Sequential", "Sigmoid", "Softmax", "Tanh", "manual_seed",
]
