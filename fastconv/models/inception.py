"""Inception v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture for
Computer Vision"), as torchvision builds it.

torchvision's deviations from the paper, copied here so that its weights load:
- module names follow the TensorFlow graph the weights come from (``Mixed_5b``,
  ``Conv2d_4a_3x3``) rather than the paper's figure numbers;
- every convolution is followed by BatchNorm with ``eps=1e-3`` and has no bias;
- the stem follows the released model (a 1x1 convolution to 80 channels, a 3x3
  to 192 and a max pool) rather than the paper's Table 1, and so do the grid
  reductions ``Mixed_6a`` and ``Mixed_7a``;
- the auxiliary head's linear layer has no BatchNorm ("BN-auxiliary" in the
  paper) and starts with std 0.001.
"""

from .. import nn
from ..graph import Input
from ._common import AuxGraph, TransformInput, basic_conv, initialise, named


def _avg_pool_branch(x, name, in_channels, out_channels):
    """3x3 average pool at stride 1 (zeros counted, as in torchvision), then 1x1."""
    x = named(f"{name}.avg_pool", nn.AvgPool2d(3, stride=1, padding=1))(x)
    return basic_conv(x, f"{name}.branch_pool", in_channels, out_channels, 1)


def _cat(name, *branches):
    return named(f"{name}.cat", nn.Concat())(*branches)


def inception_a(x, name, in_channels, pool_features):
    """35x35 module: 1x1; 1x1 then 5x5; 1x1 then two 3x3; pool then 1x1."""
    b1 = basic_conv(x, f"{name}.branch1x1", in_channels, 64, 1)
    b5 = basic_conv(x, f"{name}.branch5x5_1", in_channels, 48, 1)
    b5 = basic_conv(b5, f"{name}.branch5x5_2", 48, 64, 5, padding=2)
    b3 = basic_conv(x, f"{name}.branch3x3dbl_1", in_channels, 64, 1)
    b3 = basic_conv(b3, f"{name}.branch3x3dbl_2", 64, 96, 3, padding=1)
    b3 = basic_conv(b3, f"{name}.branch3x3dbl_3", 96, 96, 3, padding=1)
    return _cat(name, b1, b5, b3, _avg_pool_branch(x, name, in_channels, pool_features))


def inception_b(x, name, in_channels):
    """Grid reduction 35 -> 17: strided 3x3; 1x1, 3x3, strided 3x3; strided max pool."""
    b3 = basic_conv(x, f"{name}.branch3x3", in_channels, 384, 3, stride=2)
    bd = basic_conv(x, f"{name}.branch3x3dbl_1", in_channels, 64, 1)
    bd = basic_conv(bd, f"{name}.branch3x3dbl_2", 64, 96, 3, padding=1)
    bd = basic_conv(bd, f"{name}.branch3x3dbl_3", 96, 96, 3, stride=2)
    pool = named(f"{name}.max_pool", nn.MaxPool2d(3, stride=2))(x)
    return _cat(name, b3, bd, pool)


def inception_c(x, name, in_channels, c7):
    """17x17 module with 7x7 convolutions factored into 1x7 and 7x1."""
    row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    b1 = basic_conv(x, f"{name}.branch1x1", in_channels, 192, 1)
    b7 = basic_conv(x, f"{name}.branch7x7_1", in_channels, c7, 1)
    b7 = basic_conv(b7, f"{name}.branch7x7_2", c7, c7, **row)
    b7 = basic_conv(b7, f"{name}.branch7x7_3", c7, 192, **col)
    bd = basic_conv(x, f"{name}.branch7x7dbl_1", in_channels, c7, 1)
    bd = basic_conv(bd, f"{name}.branch7x7dbl_2", c7, c7, **col)
    bd = basic_conv(bd, f"{name}.branch7x7dbl_3", c7, c7, **row)
    bd = basic_conv(bd, f"{name}.branch7x7dbl_4", c7, c7, **col)
    bd = basic_conv(bd, f"{name}.branch7x7dbl_5", c7, 192, **row)
    return _cat(name, b1, b7, bd, _avg_pool_branch(x, name, in_channels, 192))


def inception_d(x, name, in_channels):
    """Grid reduction 17 -> 8: 1x1 then strided 3x3; 1x1, 1x7, 7x1, strided 3x3; max pool."""
    b3 = basic_conv(x, f"{name}.branch3x3_1", in_channels, 192, 1)
    b3 = basic_conv(b3, f"{name}.branch3x3_2", 192, 320, 3, stride=2)
    b7 = basic_conv(x, f"{name}.branch7x7x3_1", in_channels, 192, 1)
    b7 = basic_conv(b7, f"{name}.branch7x7x3_2", 192, 192, (1, 7), padding=(0, 3))
    b7 = basic_conv(b7, f"{name}.branch7x7x3_3", 192, 192, (7, 1), padding=(3, 0))
    b7 = basic_conv(b7, f"{name}.branch7x7x3_4", 192, 192, 3, stride=2)
    pool = named(f"{name}.max_pool", nn.MaxPool2d(3, stride=2))(x)
    return _cat(name, b3, b7, pool)


def inception_e(x, name, in_channels):
    """8x8 module whose 3x3 branches split into parallel 1x3 and 3x1 (expanded filter bank)."""
    def split(t, prefix, channels):
        a = basic_conv(t, f"{name}.{prefix}a", channels, 384, (1, 3), padding=(0, 1))
        b = basic_conv(t, f"{name}.{prefix}b", channels, 384, (3, 1), padding=(1, 0))
        return named(f"{name}.{prefix}cat", nn.Concat())(a, b)

    b1 = basic_conv(x, f"{name}.branch1x1", in_channels, 320, 1)
    b3 = basic_conv(x, f"{name}.branch3x3_1", in_channels, 384, 1)
    b3 = split(b3, "branch3x3_2", 384)
    bd = basic_conv(x, f"{name}.branch3x3dbl_1", in_channels, 448, 1)
    bd = basic_conv(bd, f"{name}.branch3x3dbl_2", 448, 384, 3, padding=1)
    bd = split(bd, "branch3x3dbl_3", 384)
    return _cat(name, b1, b3, bd, _avg_pool_branch(x, name, in_channels, 192))


def inception_aux(x, name, in_channels, num_classes):
    """Auxiliary classifier on the 17x17 grid: 5x5/3 average pool, 1x1 to 128, 5x5 to
    768, global pool, linear."""
    x = named(f"{name}.avg_pool", nn.AvgPool2d(5, stride=3))(x)           # 768 x 5 x 5
    x = basic_conv(x, f"{name}.conv0", in_channels, 128, 1)
    x = basic_conv(x, f"{name}.conv1", 128, 768, 5)                        # 768 x 1 x 1
    x = named(f"{name}.flatten", nn.Flatten())(
        named(f"{name}.adaptive_avg_pool", nn.AdaptiveAvgPool2d((1, 1)))(x))
    return named(f"{name}.fc", nn.Linear(768, num_classes))(x)


def inception_v3(num_classes=1000, aux_logits=True, transform_input=False, init_weights=True,
                 dropout=0.5):
    """Inception v3 with torchvision's layers, state-dict keys and initialisation
    (23,834,568 parameters without the auxiliary head).

    In training mode with ``aux_logits`` it returns ``(logits, aux)`` as torchvision
    does; in eval mode only the logits. Built for 299x299 inputs; any size from
    75x75 up runs.
    """
    image = Input((3, 299, 299))
    x = named("transform_input", TransformInput())(image) if transform_input else image
    x = basic_conv(x, "Conv2d_1a_3x3", 3, 32, 3, stride=2)                 # 32 x 149 x 149
    x = basic_conv(x, "Conv2d_2a_3x3", 32, 32, 3)                          # 32 x 147 x 147
    x = basic_conv(x, "Conv2d_2b_3x3", 32, 64, 3, padding=1)
    x = named("maxpool1", nn.MaxPool2d(3, stride=2))(x)                    # 64 x 73 x 73
    x = basic_conv(x, "Conv2d_3b_1x1", 64, 80, 1)
    x = basic_conv(x, "Conv2d_4a_3x3", 80, 192, 3)                         # 192 x 71 x 71
    x = named("maxpool2", nn.MaxPool2d(3, stride=2))(x)                    # 192 x 35 x 35
    x = inception_a(x, "Mixed_5b", 192, pool_features=32)
    x = inception_a(x, "Mixed_5c", 256, pool_features=64)
    x = inception_a(x, "Mixed_5d", 288, pool_features=64)                   # 288 x 35 x 35
    x = inception_b(x, "Mixed_6a", 288)                                    # 768 x 17 x 17
    x = inception_c(x, "Mixed_6b", 768, c7=128)
    x = inception_c(x, "Mixed_6c", 768, c7=160)
    x = inception_c(x, "Mixed_6d", 768, c7=160)
    x = inception_c(x, "Mixed_6e", 768, c7=192)
    aux = [inception_aux(x, "AuxLogits", 768, num_classes)] if aux_logits else []
    x = inception_d(x, "Mixed_7a", 768)                                    # 1280 x 8 x 8
    x = inception_e(x, "Mixed_7b", 1280)
    x = inception_e(x, "Mixed_7c", 2048)                                   # 2048 x 8 x 8
    x = named("avgpool", nn.AdaptiveAvgPool2d((1, 1)))(x)
    x = named("flatten", nn.Flatten())(named("dropout", nn.Dropout(dropout))(x))
    logits = named("fc", nn.Linear(2048, num_classes))(x)
    model = AuxGraph(image, logits, aux)
    if aux_logits:
        # torchvision also marks AuxLogits.conv1 (a BasicConv2d) with stddev 0.01, but its
        # initialisation loop only reads the attribute on Conv2d and Linear modules, so
        # that convolution keeps 0.1; only the linear layer's 0.001 takes effect
        getattr(model, "AuxLogits.fc").stddev = 0.001
    if init_weights:
        initialise(model, conv=("truncated", 0.1), linear=("truncated", 0.1))
    return model
