"""Backbones: torchvision's parameter counts and keys; eval-mode outputs match a PyTorch
model of the same architecture carrying the same weights; gradients match autograd."""

import weakref

import numpy as np
import pytest

import fastconv as fc
from fastconv import models, nn

from configs import rel_err

COUNTS = [  # torchvision's parameter counts
    (models.lenet5, {}, 61_706), (models.alexnet, {}, 61_100_840),
    (models.vgg16, {}, 138_357_544), (models.vgg16_bn, {}, 138_365_992),
    (models.resnet18, {}, 11_689_512), (models.resnet34, {}, 21_797_672),
    (models.resnet50, {}, 25_557_032), (models.resnet101, {}, 44_549_160),
    (models.resnet152, {}, 60_192_808),
    (models.googlenet, dict(aux_logits=False), 6_624_904),
    (models.googlenet, {}, 13_004_888),
    (models.inception_v3, dict(aux_logits=False), 23_834_568),
    (models.inception_v3, {}, 27_161_264),
]


@pytest.mark.parametrize("build,kwargs,count", COUNTS,
                         ids=[f"{b.__name__}{'-noaux' if k else ''}" for b, k, _ in COUNTS])
def test_parameter_counts_equal_torchvisions(build, kwargs, count):
    assert sum(p.data.size for p in build(**kwargs).parameters()) == count


def test_vgg_keys_and_classes():
    model = models.vgg11_bn(num_classes=7, init_weights=False)
    keys = list(model.state_dict())
    assert keys[:6] == ["features.0.weight", "features.0.bias", "features.1.weight",
                        "features.1.bias", "features.1.running_mean", "features.1.running_var"]
    assert keys[-1] == "classifier.6.bias" and model.state_dict()["classifier.6.bias"].shape == (7,)


def test_resnet_keys_follow_torchvision_modules():
    keys = list(models.resnet50(num_classes=10).state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.downsample.0.weight" in keys and "layer2.1.downsample.0.weight" not in keys
    assert "layer4.2.bn3.running_var" in keys and keys[-2:] == ["fc.weight", "fc.bias"]


def test_zero_init_residual_starts_every_block_at_the_identity():
    model = models.resnet18(zero_init_residual=True)
    state = model.state_dict()
    assert all(not state[k].any() for k in state if k.endswith("bn2.weight"))
    assert state["layer1.0.bn1.weight"].all()


def test_resnet_with_dilation_keeps_the_map_size():
    model = models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    assert model.nodes[-4].output.shape == (2048, 28, 28)
    with pytest.raises(ValueError, match="replace_stride_with_dilation"):
        models.resnet50(replace_stride_with_dilation=[True])
    with pytest.raises(ValueError, match="dilation"):
        models.resnet18(replace_stride_with_dilation=[False, False, True])


def test_initialisation_follows_torchvision():
    model = models.resnet50()
    w = model.state_dict()["layer3.0.conv2.weight"]              # 256 x 256 x 3 x 3
    assert abs(w.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.02      # Kaiming, fan_out
    g = models.googlenet(aux_logits=False).state_dict()
    assert abs(g["inception4a.branch2.1.conv.weight"].std() / 0.01 - 1) < 0.02
    i = models.inception_v3()
    assert abs(i.state_dict()["AuxLogits.fc.weight"].std() / 0.001 - 1) < 0.02
    # torchvision's stddev mark on AuxLogits.conv1 never reaches its convolution
    assert abs(i.state_dict()["AuxLogits.conv1.conv.weight"].std() / 0.1 - 1) < 0.02
    assert abs(i.state_dict()["Mixed_6b.branch1x1.conv.weight"].std() / 0.1 - 1) < 0.02


def test_aux_heads_run_in_training_only():
    model = models.googlenet(num_classes=5)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    logits, aux2, aux1 = model.train()(x)
    assert logits.shape == aux2.shape == aux1.shape == (2, 5)
    assert model.eval()(x).shape == (2, 5)
    logits, aux = models.inception_v3(num_classes=3).train()(    # its aux head needs 299
        np.zeros((2, 3, 299, 299), np.float32))
    assert logits.shape == aux.shape == (2, 3)


def test_eval_forward_frees_activations_after_their_last_use():
    seen, alive = [], []

    class Probe(nn.Layer):
        """Keeps a weak reference to its input."""
        def _forward(self, ctx, x):
            seen.append(weakref.ref(x))
            return x + 1

    class Check(nn.Layer):
        """Notes which of the probes' inputs are still alive when it runs."""
        def _forward(self, ctx, x):
            alive.append([r() is not None for r in seen])
            return x

    x = fc.Input((2, 3, 3))
    a = Probe()(x)
    c = Probe()(Probe()(a))
    graph = fc.Graph(x, Check()(nn.Add()(c, a)))          # a is needed up to the Add
    seen.clear(), alive.clear()
    image = np.zeros((1, 2, 3, 3), np.float32)
    graph.eval()(image)
    assert alive == [[True, False, False]]                 # only the caller's image is left
    seen.clear(), alive.clear()
    graph.train()(image)
    assert alive == [[True, True, True]]                   # training keeps what backward needs
    with pytest.raises(RuntimeError, match="eval mode"):
        graph.eval()(image)
        graph.backward(np.ones((1, 2, 3, 3), np.float32))
    seq = nn.Sequential(nn.ReLU(), nn.ReLU()).eval()
    seq(image)
    with pytest.raises(RuntimeError, match="eval mode"):
        seq.backward(image)


torch = pytest.importorskip("torch")
from fastconv.models.torch_reference import build as torch_reference   # noqa: E402


def _randomise_batchnorm(reference):
    """Non-trivial BatchNorm statistics and affine parameters."""
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _pair(name, **kwargs):
    torch.manual_seed(0)
    reference = torch_reference(name)
    _randomise_batchnorm(reference)
    ours = getattr(models, name)(**kwargs)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("name,size", [
    ("alexnet", 67), ("vgg11_bn", 32), ("resnet18", 64), ("resnet50", 96),
    ("googlenet", 96), ("inception_v3", 75)])
def test_eval_outputs_match_pytorch_with_the_same_weights(name, size):
    kwargs = {} if name == "alexnet" else dict(init_weights=False) \
        if name.startswith(("vgg", "googlenet", "inception")) else {}
    ours, reference = _pair(name, **kwargs)
    assert set(ours.state_dict()) == set(reference.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(x)).numpy()
    assert rel_err(ours.eval()(x), expected) <= 1e-3


@pytest.mark.parametrize("name,sizes", [
    ("resnet18", [1, 7, 33, 224]), ("googlenet", [8, 14, 15, 57, 224]),
    ("inception_v3", [74, 75, 80, 299])])
def test_accepts_exactly_the_input_sizes_torchvision_accepts(name, sizes):
    ours, reference = models.__dict__[name](num_classes=4), torch_reference(name)
    ours.eval(), reference.eval()
    for size in sizes:
        x = np.zeros((1, 3, size, size), np.float32)
        try:
            with torch.no_grad():
                expected = tuple(reference(torch.from_numpy(x)).shape)
        except RuntimeError:
            with pytest.raises(ValueError):
                ours(x)
            continue
        assert ours(x).shape == (1, 4) and expected == (1, 1000), size


def _gradient_pair(name, size):
    """Models in float64 training mode with the dropouts off; the reference's
    auxiliary outputs summed into the loss with fixed weights."""
    ours, reference = _pair(name, **({} if name.startswith("resnet") else
                                     dict(init_weights=False, dropout=0.0, dropout_aux=0.0)))
    reference.double().train()
    for m in reference.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ours.astype(np.float64).train()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, size, size))
    xt = torch.from_numpy(x).requires_grad_()
    out_t = reference(xt)
    out_t = (out_t,) if isinstance(out_t, torch.Tensor) else tuple(out_t)
    weights = [rng.standard_normal(o.shape) for o in out_t]
    sum(((o * torch.from_numpy(w)).sum() for o, w in zip(out_t, weights))).backward()
    out = ours(x)
    out = out if isinstance(out, tuple) else (out,)
    for o, t in zip(out, out_t):
        assert rel_err(o, t.detach().numpy()) <= 1e-9
    grad_x = ours.backward(tuple(weights) if len(weights) > 1 else weights[0])
    return ours, reference, grad_x, xt.grad.numpy()


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("googlenet", 64)])
def test_parameter_gradients_match_autograd(name, size):
    ours, reference, grad_x, expected_x = _gradient_pair(name, size)
    assert rel_err(grad_x, expected_x) <= 1e-8
    expected = dict(reference.named_parameters())
    for key, p in ours.named_parameters():
        assert rel_err(p.grad, expected[key].grad.numpy()) <= 1e-8, key
    # the running statistics moved as PyTorch's did
    state = reference.state_dict()
    for key, value in ours.state_dict().items():
        if "running" in key:
            assert rel_err(value, state[key].numpy()) <= 1e-10, key


@pytest.mark.parametrize("build,channels", [
    (models.lenet5, 1),
    (lambda: models.googlenet(num_classes=4, aux_logits=False, dropout=0.0), 3)])
def test_backward_without_the_input_gradient_gives_the_same_parameter_gradients(build, channels):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, channels, 32, 32)).astype(np.float32)
    model = build()
    out = model(x)
    g = rng.standard_normal(out.shape).astype(np.float32)
    assert model.backward(g).shape == x.shape
    full = {k: p.grad.copy() for k, p in model.named_parameters()}
    model.zero_grad()
    model(x)
    assert model.backward(g, input_grad=False) is None
    for k, p in model.named_parameters():
        assert np.array_equal(p.grad, full[k]), k
