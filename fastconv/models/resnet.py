"""ResNet (He, Zhang, Ren & Sun 2015): ResNet-18/34 with basic blocks, ResNet-50/101/152
with bottlenecks, as torchvision builds them.

torchvision's deviation from the paper, copied here: ResNet "v1.5" puts the stride
of a downsampling bottleneck on its 3x3 convolution instead of the first 1x1 (the
1x1 at stride 2 ignores three quarters of its input; NVIDIA measured about 0.5 %
more top-1 accuracy this way). Shortcuts that change shape are 1x1 convolutions
with BatchNorm (the paper's option B).
"""

from .. import nn
from ..graph import Graph, Input
from ._common import initialise, named


def _conv_bn(x, name, index, in_channels, out_channels, kernel_size, stride=1, groups=1,
             dilation=1):
    """``{name}.conv{index}`` (no bias; padding keeps the size at stride 1) and ``{name}.bn{index}``."""
    padding = dilation * (kernel_size - 1) // 2
    x = named(f"{name}.conv{index}", nn.Conv2d(in_channels, out_channels, kernel_size,
                                               stride=stride, padding=padding, groups=groups,
                                               dilation=dilation, bias=False))(x)
    return named(f"{name}.bn{index}", nn.BatchNorm2d(out_channels))(x)


def _shortcut(x, name, in_channels, out_channels, stride):
    """The identity, or a strided 1x1 convolution + BatchNorm where the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return x
    x = named(f"{name}.downsample.0", nn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                                bias=False))(x)
    return named(f"{name}.downsample.1", nn.BatchNorm2d(out_channels))(x)


def basic_block(x, name, in_channels, planes, stride=1, groups=1, base_width=64, dilation=1):
    """Two 3x3 convolutions and a shortcut; ``planes`` channels out."""
    if groups != 1 or base_width != 64:
        raise ValueError(f"basic_block: groups={groups}, width_per_group={base_width}: "
                         f"basic blocks support only groups=1 and width_per_group=64")
    if dilation > 1:
        raise ValueError(f"basic_block: dilation={dilation}: basic blocks support only 1")
    relu = named(f"{name}.relu", nn.ReLU())
    out = relu(_conv_bn(x, name, 1, in_channels, planes, 3, stride))
    out = _conv_bn(out, name, 2, planes, planes, 3)
    identity = _shortcut(x, name, in_channels, planes, stride)
    return relu(named(f"{name}.add", nn.Add())(out, identity))


basic_block.expansion = 1


def bottleneck(x, name, in_channels, planes, stride=1, groups=1, base_width=64, dilation=1):
    """1x1 down to ``width``, 3x3 (strided, grouped), 1x1 up to ``4 * planes``, and a shortcut."""
    width = int(planes * (base_width / 64.0)) * groups
    relu = named(f"{name}.relu", nn.ReLU())
    out = relu(_conv_bn(x, name, 1, in_channels, width, 1))
    out = relu(_conv_bn(out, name, 2, width, width, 3, stride, groups, dilation))
    out = _conv_bn(out, name, 3, width, planes * 4, 1)
    identity = _shortcut(x, name, in_channels, planes * 4, stride)
    return relu(named(f"{name}.add", nn.Add())(out, identity))


bottleneck.expansion = 4


class ResNet(Graph):
    """A ResNet as one graph; its layers are named after torchvision's modules
    (``layer2.0.conv1``, ``layer2.0.downsample.0``, ...), so the state-dict keys match.

    ``layers`` gives the number of blocks in each of the four stages; the keyword
    arguments are torchvision's. The graph is built for 224x224 inputs (the shapes
    its summary shows) and runs on any size from 1x1 up, as torchvision's does.
    """

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None):
        dilate = replace_stride_with_dilation or [False, False, False]
        if len(dilate) != 3:
            raise ValueError(f"ResNet: replace_stride_with_dilation={dilate!r} must have "
                             f"3 entries, one per strided stage")
        image = Input((3, 224, 224))
        x = named("conv1", nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False))(image)
        x = named("relu", nn.ReLU())(named("bn1", nn.BatchNorm2d(64))(x))
        x = named("maxpool", nn.MaxPool2d(3, stride=2, padding=1))(x)   # 64 x 56 x 56
        channels, dilation = 64, 1
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            stride = 1 if stage == 1 else 2
            previous_dilation = dilation
            if stage > 1 and dilate[stage - 2]:
                dilation, stride = dilation * stride, 1
            for i in range(blocks):
                x = block(x, f"layer{stage}.{i}", channels, planes,
                          stride=stride if i == 0 else 1, groups=groups,
                          base_width=width_per_group,
                          dilation=previous_dilation if i == 0 else dilation)
                channels = planes * block.expansion
            # layer1: 56 x 56, layer2: 28 x 28, layer3: 14 x 14, layer4: 7 x 7 (224 in)
        x = named("avgpool", nn.AdaptiveAvgPool2d((1, 1)))(x)
        x = named("flatten", nn.Flatten())(x)
        logits = named("fc", nn.Linear(channels, num_classes))(x)       # num_classes
        super().__init__(image, logits)
        initialise(self, conv="kaiming")
        if zero_init_residual:
            # each block starts as the identity: its last BatchNorm scales by zero
            last_bn = "bn3" if block is bottleneck else "bn2"
            for name, layer in self.named_children():
                if name.startswith("layer") and name.endswith(last_bn):
                    layer.weight.data[...] = 0


def _builder(depth, block, layers):
    def build(num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
              replace_stride_with_dilation=None):
        return ResNet(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                      replace_stride_with_dilation)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = (f"ResNet-{depth} ({block.__name__.replace('_', ' ')}s {layers}), "
                     f"with torchvision's layers, state-dict keys and initialisation.")
    return build


resnet18 = _builder(18, basic_block, [2, 2, 2, 2])
resnet34 = _builder(34, basic_block, [3, 4, 6, 3])
resnet50 = _builder(50, bottleneck, [3, 4, 6, 3])
resnet101 = _builder(101, bottleneck, [3, 4, 23, 3])
resnet152 = _builder(152, bottleneck, [3, 8, 36, 3])
