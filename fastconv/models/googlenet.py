"""GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions"), Inception v1,
as torchvision builds it.

torchvision's deviations from the paper, copied here so that its weights load:
- every convolution is followed by BatchNorm (``eps=1e-3``, the TensorFlow
  default the weights were ported with), so the convolutions have no bias;
- the "5x5" branch of an Inception module is a 3x3 convolution (a known slip
  of the original implementation the weights come from);
- the max pools use ``ceil_mode=True`` (Caffe's rounding), and the one before
  ``inception5a`` is 2x2 instead of 3x3;
- there is no local response normalisation, and the auxiliary heads pool
  adaptively to 4x4.
"""

from .. import nn
from ..graph import Input
from ._common import AuxGraph, TransformInput, basic_conv, initialise, named


def inception(x, name, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    """Four parallel branches joined along the channels: 1x1; 1x1 then 3x3; 1x1 then
    "5x5" (3x3, as in torchvision); 3x3 max pool then 1x1."""
    b1 = basic_conv(x, f"{name}.branch1", in_channels, ch1x1, 1)
    b2 = basic_conv(x, f"{name}.branch2.0", in_channels, ch3x3red, 1)
    b2 = basic_conv(b2, f"{name}.branch2.1", ch3x3red, ch3x3, 3, padding=1)
    b3 = basic_conv(x, f"{name}.branch3.0", in_channels, ch5x5red, 1)
    b3 = basic_conv(b3, f"{name}.branch3.1", ch5x5red, ch5x5, 3, padding=1)
    b4 = named(f"{name}.branch4.0", nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True))(x)
    b4 = basic_conv(b4, f"{name}.branch4.1", in_channels, pool_proj, 1)
    return named(f"{name}.cat", nn.Concat())(b1, b2, b3, b4)


def inception_aux(x, name, in_channels, num_classes, dropout):
    """Auxiliary classifier: 4x4 average pool, 1x1 convolution to 128, two linear layers."""
    x = named(f"{name}.pool", nn.AdaptiveAvgPool2d((4, 4)))(x)
    x = basic_conv(x, f"{name}.conv", in_channels, 128, 1)
    x = named(f"{name}.flatten", nn.Flatten())(x)                      # 2048
    x = named(f"{name}.relu", nn.ReLU())(named(f"{name}.fc1", nn.Linear(2048, 1024))(x))
    x = named(f"{name}.dropout", nn.Dropout(dropout))(x)
    return named(f"{name}.fc2", nn.Linear(1024, num_classes))(x)


def googlenet(num_classes=1000, aux_logits=True, transform_input=False, init_weights=True,
              dropout=0.2, dropout_aux=0.7):
    """GoogLeNet with torchvision's layers, state-dict keys and initialisation
    (6,624,904 parameters without the auxiliary heads).

    In training mode with ``aux_logits`` it returns ``(logits, aux2, aux1)`` as
    torchvision does; in eval mode only the logits, and the auxiliary heads do not
    run. Built for 224x224 inputs; any size from 15x15 up runs.
    """
    image = Input((3, 224, 224))
    x = named("transform_input", TransformInput())(image) if transform_input else image
    x = basic_conv(x, "conv1", 3, 64, 7, stride=2, padding=3)
    x = named("maxpool1", nn.MaxPool2d(3, stride=2, ceil_mode=True))(x)      # 64 x 56 x 56
    x = basic_conv(x, "conv2", 64, 64, 1)
    x = basic_conv(x, "conv3", 64, 192, 3, padding=1)
    x = named("maxpool2", nn.MaxPool2d(3, stride=2, ceil_mode=True))(x)      # 192 x 28 x 28
    x = inception(x, "inception3a", 192, 64, 96, 128, 16, 32, 32)
    x = inception(x, "inception3b", 256, 128, 128, 192, 32, 96, 64)         # 480 x 28 x 28
    x = named("maxpool3", nn.MaxPool2d(3, stride=2, ceil_mode=True))(x)      # 480 x 14 x 14
    x = inception(x, "inception4a", 480, 192, 96, 208, 16, 48, 64)
    aux = [inception_aux(x, "aux1", 512, num_classes, dropout_aux)] if aux_logits else []
    x = inception(x, "inception4b", 512, 160, 112, 224, 24, 64, 64)
    x = inception(x, "inception4c", 512, 128, 128, 256, 24, 64, 64)
    x = inception(x, "inception4d", 512, 112, 144, 288, 32, 64, 64)
    if aux_logits:
        aux.insert(0, inception_aux(x, "aux2", 528, num_classes, dropout_aux))
    x = inception(x, "inception4e", 528, 256, 160, 320, 32, 128, 128)       # 832 x 14 x 14
    x = named("maxpool4", nn.MaxPool2d(2, stride=2, ceil_mode=True))(x)      # 832 x 7 x 7
    x = inception(x, "inception5a", 832, 256, 160, 320, 32, 128, 128)
    x = inception(x, "inception5b", 832, 384, 192, 384, 48, 128, 128)       # 1024 x 7 x 7
    x = named("avgpool", nn.AdaptiveAvgPool2d((1, 1)))(x)
    x = named("dropout", nn.Dropout(dropout))(named("flatten", nn.Flatten())(x))
    logits = named("fc", nn.Linear(1024, num_classes))(x)
    model = AuxGraph(image, logits, aux)
    if init_weights:
        initialise(model, conv=("truncated", 0.01), linear=("truncated", 0.01))
    return model
