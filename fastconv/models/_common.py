"""What several backbones share: naming layers after torchvision's keys, the
convolution + BatchNorm + ReLU unit, input normalisation, auxiliary heads and
the initialisations torchvision uses."""

import numpy as np

from .. import functional as F
from .. import nn
from ..graph import Graph


def named(name, layer):
    """Give ``layer`` the dotted name that prefixes its keys in the graph's state dict."""
    layer.name = name
    return layer


def basic_conv(x, name, in_channels, out_channels, kernel_size, stride=1, padding=0):
    """torchvision's ``BasicConv2d`` (GoogLeNet, Inception v3): a convolution without bias,
    BatchNorm with ``eps=1e-3`` and ReLU; keys ``{name}.conv.weight``, ``{name}.bn.*``."""
    x = named(f"{name}.conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                        padding=padding, bias=False))(x)
    x = named(f"{name}.bn", nn.BatchNorm2d(out_channels, eps=1e-3))(x)
    return named(f"{name}.relu", nn.ReLU())(x)


class TransformInput(nn.Layer):
    """Re-normalise an ImageNet-normalised image to the [-1, 1] scaling that Google's
    GoogLeNet and Inception v3 weights were trained on (torchvision's ``transform_input``):
    ``x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5`` per RGB channel."""

    runs_on_gpu = True

    MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

    def _forward(self, ctx, x):
        scale = (self.STD / 0.5).astype(x.dtype)[:, None, None]
        shift = ((self.MEAN - 0.5) / 0.5).astype(x.dtype)[:, None, None]
        ctx.scale = scale
        return F.channel_affine(x, scale[:, 0, 0], shift[:, 0, 0])

    def _backward(self, ctx, grad_out):
        return grad_out * ctx.scale


class AuxGraph(Graph):
    """A graph with auxiliary classifiers, run as torchvision runs them: in training
    mode it returns ``(logits, *aux)``, in eval mode only the logits, without
    computing the auxiliary heads."""

    def __init__(self, inputs, logits, aux):
        super().__init__(inputs, [logits, *aux] if aux else logits)
        self.logits_nodes = self._order([logits])

    def _forward(self, ctx, *arrays):
        if self.training or self._single_output:
            return super()._forward(ctx, *arrays)
        return self._run(ctx, arrays, self.logits_nodes, self.outputs[:1], True)


def _truncated_normal(rng, std, shape, dtype):
    """N(0, std) cut to [-2, 2], as ``torch.nn.init.trunc_normal_(std=std, a=-2, b=2)``."""
    out = rng.normal(0, std, shape)
    while True:
        outside = np.abs(out) > 2
        if not outside.any():
            return out.astype(dtype)
        out[outside] = rng.normal(0, std, outside.sum())


def initialise(model, conv, linear=None, rng=None):
    """torchvision's initialisations. ``conv`` and ``linear`` name the rule for the
    weights of convolutions and linear layers: ``"kaiming"`` (normal, fan_out, ReLU
    gain) or ``("normal", std)``, both with zero biases, as in VGG and ResNet; or
    ``("truncated", std)``, biases left at PyTorch's default, as in GoogLeNet and
    Inception v3 (where a layer's ``stddev`` attribute overrides ``std``); ``None``
    leaves PyTorch's default. BatchNorm starts at the identity."""
    rng = rng or np.random.default_rng()
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.weight.data[...] = 1
            layer.bias.data[...] = 0
            continue
        rule = conv if isinstance(layer, nn.Conv2d) else \
            linear if isinstance(layer, nn.Linear) else None
        if rule is None:
            continue
        w = layer.weight.data
        if rule == "kaiming":
            fan_out = w.shape[0] * int(np.prod(w.shape[2:]))
            layer.weight.data = rng.normal(0, np.sqrt(2.0 / fan_out), w.shape).astype(w.dtype)
        elif rule[0] == "normal":
            layer.weight.data = rng.normal(0, rule[1], w.shape).astype(w.dtype)
        else:
            std = getattr(layer, "stddev", rule[1])
            layer.weight.data = _truncated_normal(rng, std, w.shape, w.dtype)
            continue
        if layer.bias is not None:
            layer.bias.data[...] = 0
