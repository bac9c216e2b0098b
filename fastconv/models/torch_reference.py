"""torchvision's architectures rebuilt from ``torch.nn``: the PyTorch side of
``fastconv bench --model`` and of the backbone tests when torchvision is not
installed. Written from torchvision's documented structure, independently of
fastconv's graphs; the state-dict keys are torchvision's. Needs torch.
"""

from collections import OrderedDict

import torch
from torch import nn as T


def _basic(cin, cout, **kw):
    """torchvision's BasicConv2d: conv (no bias), BatchNorm eps 1e-3, ReLU."""
    return _Basic(cin, cout, **kw)


class _Basic(T.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = T.Conv2d(cin, cout, bias=False, **kw)
        self.bn = T.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


# -- ResNet -------------------------------------------------------------------

class _Block(T.Module):
    def __init__(self, cin, planes, stride, bottleneck):
        super().__init__()
        width, cout = planes, planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = T.Conv2d(cin, width, 1, bias=False), T.BatchNorm2d(width)
            self.conv2 = T.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = T.BatchNorm2d(width)
            self.conv3, self.bn3 = T.Conv2d(width, cout, 1, bias=False), T.BatchNorm2d(cout)
        else:
            self.conv1 = T.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = T.BatchNorm2d(planes)
            self.conv2, self.bn2 = T.Conv2d(planes, planes, 3, 1, 1, bias=False), T.BatchNorm2d(planes)
        self.relu = T.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = T.Sequential(T.Conv2d(cin, cout, 1, stride, bias=False),
                                           T.BatchNorm2d(cout))
        self.bottleneck = bottleneck

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(T.Module):
    def __init__(self, layers, bottleneck, num_classes=1000):
        super().__init__()
        self.conv1 = T.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = T.BatchNorm2d(64), T.ReLU(), T.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            blocks = []
            for j in range(n):
                blocks.append(_Block(cin, planes, 2 if j == 0 and i > 1 else 1, bottleneck))
                cin = planes * (4 if bottleneck else 1)
            setattr(self, f"layer{i}", T.Sequential(*blocks))
        self.avgpool, self.fc = T.AdaptiveAvgPool2d(1), T.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- GoogLeNet ----------------------------------------------------------------

class _Inception(T.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        self.branch1 = _basic(cin, c1, kernel_size=1)
        self.branch2 = T.Sequential(_basic(cin, c3r, kernel_size=1),
                                    _basic(c3r, c3, kernel_size=3, padding=1))
        self.branch3 = T.Sequential(_basic(cin, c5r, kernel_size=1),
                                    _basic(c5r, c5, kernel_size=3, padding=1))
        self.branch4 = T.Sequential(T.MaxPool2d(3, 1, 1, ceil_mode=True),
                                    _basic(cin, pp, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class _GoogLeNetAux(T.Module):
    def __init__(self, cin, num_classes):
        super().__init__()
        self.conv = _basic(cin, 128, kernel_size=1)
        self.fc1, self.fc2, self.dropout = T.Linear(2048, 1024), T.Linear(1024, num_classes), T.Dropout(0.7)

    def forward(self, x):
        x = torch.flatten(self.conv(torch.nn.functional.adaptive_avg_pool2d(x, 4)), 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class GoogLeNet(T.Module):
    def __init__(self, num_classes=1000, aux_logits=True):
        super().__init__()
        self.conv1 = _basic(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = T.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = _basic(64, 64, kernel_size=1)
        self.conv3 = _basic(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = T.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = _Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = _Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = T.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = _Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = _Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = _Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = _Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = _Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = T.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = _Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = _Inception(832, 384, 192, 384, 48, 128, 128)
        self.aux_logits = aux_logits
        if aux_logits:
            self.aux1, self.aux2 = _GoogLeNetAux(512, num_classes), _GoogLeNetAux(528, num_classes)
        self.avgpool, self.dropout = T.AdaptiveAvgPool2d(1), T.Dropout(0.2)
        self.fc = T.Linear(1024, num_classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.training and self.aux_logits else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.training and self.aux_logits else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return (x, aux2, aux1) if aux1 is not None else x


# -- Inception v3 -------------------------------------------------------------

def _pool_branch(cin, cout):
    return _basic(cin, cout, kernel_size=1)


def _avg3(x):
    return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)


class _A(T.Module):
    def __init__(self, cin, pf):
        super().__init__()
        self.branch1x1 = _basic(cin, 64, kernel_size=1)
        self.branch5x5_1 = _basic(cin, 48, kernel_size=1)
        self.branch5x5_2 = _basic(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _basic(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _basic(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _basic(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _pool_branch(cin, pf)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _B(T.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = _basic(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _basic(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _basic(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _basic(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          torch.nn.functional.max_pool2d(x, 3, stride=2)], 1)


class _C(T.Module):
    def __init__(self, cin, c7):
        super().__init__()
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = _basic(cin, 192, kernel_size=1)
        self.branch7x7_1 = _basic(cin, c7, kernel_size=1)
        self.branch7x7_2 = _basic(c7, c7, **row)
        self.branch7x7_3 = _basic(c7, 192, **col)
        self.branch7x7dbl_1 = _basic(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = _basic(c7, c7, **col)
        self.branch7x7dbl_3 = _basic(c7, c7, **row)
        self.branch7x7dbl_4 = _basic(c7, c7, **col)
        self.branch7x7dbl_5 = _basic(c7, 192, **row)
        self.branch_pool = _pool_branch(cin, 192)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class _D(T.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = _basic(cin, 192, kernel_size=1)
        self.branch3x3_2 = _basic(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _basic(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = _basic(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _basic(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _basic(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          torch.nn.functional.max_pool2d(x, 3, stride=2)], 1)


class _E(T.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch1x1 = _basic(cin, 320, kernel_size=1)
        self.branch3x3_1 = _basic(cin, 384, kernel_size=1)
        self.branch3x3_2a = _basic(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _basic(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _basic(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = _basic(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _basic(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _basic(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _pool_branch(cin, 192)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(_avg3(x))], 1)


class _InceptionAux(T.Module):
    def __init__(self, cin, num_classes):
        super().__init__()
        self.conv0 = _basic(cin, 128, kernel_size=1)
        self.conv1 = _basic(128, 768, kernel_size=5)
        self.fc = T.Linear(768, num_classes)

    def forward(self, x):
        x = self.conv1(self.conv0(torch.nn.functional.avg_pool2d(x, 5, stride=3)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Inception3(T.Module):
    def __init__(self, num_classes=1000, aux_logits=True):
        super().__init__()
        self.Conv2d_1a_3x3 = _basic(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _basic(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _basic(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = T.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = _basic(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _basic(80, 192, kernel_size=3)
        self.maxpool2 = T.MaxPool2d(3, 2)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c = _C(768, 128), _C(768, 160)
        self.Mixed_6d, self.Mixed_6e = _C(768, 160), _C(768, 192)
        self.AuxLogits = _InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = _D(768), _E(1280), _E(2048)
        self.avgpool, self.dropout = T.AdaptiveAvgPool2d(1), T.Dropout(0.5)
        self.fc = T.Linear(2048, num_classes)

    def forward(self, x):
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)
        aux = self.AuxLogits(x) if self.training and self.AuxLogits is not None else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        x = self.fc(torch.flatten(self.dropout(self.avgpool(x)), 1))
        return (x, aux) if aux is not None else x


# -- AlexNet and VGG ----------------------------------------------------------

def _classifier_model(features, pool, classifier):
    return T.Sequential(OrderedDict(features=features, avgpool=pool, flatten=T.Flatten(),
                                    classifier=classifier))


def alexnet():
    features = T.Sequential(
        T.Conv2d(3, 64, 11, 4, 2), T.ReLU(), T.MaxPool2d(3, 2), T.Conv2d(64, 192, 5, padding=2),
        T.ReLU(), T.MaxPool2d(3, 2), T.Conv2d(192, 384, 3, padding=1), T.ReLU(),
        T.Conv2d(384, 256, 3, padding=1), T.ReLU(), T.Conv2d(256, 256, 3, padding=1), T.ReLU(),
        T.MaxPool2d(3, 2))
    classifier = T.Sequential(T.Dropout(), T.Linear(9216, 4096), T.ReLU(), T.Dropout(),
                              T.Linear(4096, 4096), T.ReLU(), T.Linear(4096, 1000))
    return _classifier_model(features, T.AdaptiveAvgPool2d(6), classifier)


def vgg(config, batch_norm):
    layers, c = [], 3
    for v in config:
        if v == "M":
            layers.append(T.MaxPool2d(2, 2))
        else:
            layers += [T.Conv2d(c, v, 3, padding=1)] + ([T.BatchNorm2d(v)] if batch_norm else [])
            layers.append(T.ReLU())
            c = v
    classifier = T.Sequential(T.Linear(25088, 4096), T.ReLU(), T.Dropout(),
                              T.Linear(4096, 4096), T.ReLU(), T.Dropout(), T.Linear(4096, 1000))
    return _classifier_model(T.Sequential(*layers), T.AdaptiveAvgPool2d(7), classifier)


def build(name):
    """The reference for ``fastconv.models.<name>`` (torchvision's when it imports)."""
    if name not in MODELS:
        raise ValueError(f"no PyTorch reference for model {name!r}; expected one of {MODELS}")
    try:
        import torchvision
        kw = dict(aux_logits=True, init_weights=True) if name in ("googlenet",
                                                                   "inception_v3") else {}
        return getattr(torchvision.models, name)(**kw)
    except ImportError:
        pass
    from .vgg import CONFIGS

    depths = {"resnet18": ([2, 2, 2, 2], False), "resnet34": ([3, 4, 6, 3], False),
              "resnet50": ([3, 4, 6, 3], True), "resnet101": ([3, 4, 23, 3], True),
              "resnet152": ([3, 8, 36, 3], True)}
    if name in depths:
        return ResNet(*depths[name])
    if name == "googlenet":
        return GoogLeNet()
    if name == "inception_v3":
        return Inception3()
    if name == "alexnet":
        return alexnet()
    return vgg(CONFIGS[int(name[3:5])], name.endswith("_bn"))


MODELS = ("alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
          "vgg19_bn", "googlenet", "inception_v3", "resnet18", "resnet34", "resnet50",
          "resnet101", "resnet152")
