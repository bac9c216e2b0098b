"""Layers, losses and optimizers: finite differences always, torch.nn when installed."""

import numpy as np
import pytest

from fastconv import nn

from configs import numeric_gradient, rel_err


def _fd_input_grad(layer, x, dy):
    return numeric_gradient(layer, x, dy)


def _fd_param_grad(layer, param, x, dy, eps=1e-6):
    g = np.zeros_like(param.data)
    for idx in np.ndindex(param.data.shape):
        keep = param.data[idx]
        param.data[idx] = keep + eps
        plus = np.vdot(layer(x), dy)
        param.data[idx] = keep - eps
        minus = np.vdot(layer(x), dy)
        param.data[idx] = keep
        g[idx] = (plus - minus) / (2 * eps)
    return g


LAYERS = [
    lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1),
    lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False),
    lambda: nn.Linear(6, 5),
    lambda: nn.ReLU(), lambda: nn.Tanh(), lambda: nn.Sigmoid(), lambda: nn.Softmax(dim=1),
    lambda: nn.MaxPool2d(2), lambda: nn.AvgPool2d(3, stride=2, padding=1),
    lambda: nn.AdaptiveAvgPool2d((2, 3)), lambda: nn.Flatten(), lambda: nn.Identity(),
    lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(2 * 2 * 1, 3)),
    lambda: nn.BatchNorm2d(4), lambda: nn.BatchNorm2d(4).eval(),
    lambda: nn.LocalResponseNorm(3, alpha=0.1, k=1.5),
    lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
]
INPUT = {"Conv2d": (2, 3, 5, 4), "Linear": (3, 6), "Sequential": (2, 3, 6, 5)}


def _input_for(layer, rng):
    name = type(layer).__name__
    shape = INPUT.get(name, (2, 4, 5, 6))
    if name == "Conv2d":
        shape = (2, layer.in_channels, 5, 4)
    return rng.standard_normal(shape)


@pytest.mark.parametrize("make", LAYERS, ids=lambda m: repr(m()).split("(")[0] + str(id(m))[-3:])
def test_layer_gradients_by_finite_differences(make):
    nn.manual_seed(0)
    layer = make().astype(np.float64)
    rng = np.random.default_rng(1)
    x = _input_for(layer, rng)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    gx = layer.backward(dy)
    assert rel_err(gx, _fd_input_grad(layer, x, dy)) <= 1e-6
    for name, p in layer.named_parameters():
        assert rel_err(p.grad, _fd_param_grad(layer, p, x, dy)) <= 1e-6, name


def test_a_layer_used_twice_keeps_two_contexts_and_sums_its_gradients():
    nn.manual_seed(1)
    shared = nn.Linear(4, 4).astype(np.float64)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4))
    dy = rng.standard_normal((3, 4))
    model(x)
    gx = model.backward(dy)
    assert rel_err(gx, _fd_input_grad(model, x, dy)) <= 1e-6
    assert rel_err(shared.weight.grad, _fd_param_grad(model, shared.weight, x, dy)) <= 1e-6


def test_losses_by_finite_differences():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4)) * 30        # large: the log-sum-exp shift matters
    target = np.array([0, 3, 1, 1, 2])
    for loss in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="sum")):
        value = loss(logits, target)
        assert np.isfinite(value)
        grad = loss.backward()
        numeric = _fd_input_grad(lambda z: np.array(loss(z, target)), logits, np.array(1.0))
        assert rel_err(grad, numeric) <= 1e-6
    mse = nn.MSELoss()
    y, t = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    mse(y, t)
    assert np.allclose(mse.backward(), 2 * (y - t) / y.size)


def test_state_dict_round_trip_and_atomic_failed_load():
    nn.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    other.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in state.items())
    assert other.state_dict()["0.weight"].dtype == np.float32       # cast to the parameter's dtype
    before = {k: v.copy() for k, v in other.state_dict().items()}
    bad = dict(state, **{"3.weight": np.zeros((3, 9), np.float32), "0.bias": state["0.bias"] + 1})
    with pytest.raises(ValueError, match="shape mismatch for 3.weight"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"missing keys \['3.bias'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "3.bias"})
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in before.items())


def test_dropout_is_identity_in_eval_and_scales_in_training():
    nn.manual_seed(5)
    drop = nn.Dropout(0.25)
    x = np.ones((1000, 10))
    y = drop(x)
    kept = y != 0
    assert np.allclose(y[kept], 1 / 0.75) and 0.7 < kept.mean() < 0.8
    assert np.array_equal(drop.backward(np.ones_like(x)), y)
    drop.eval()
    assert np.array_equal(drop(x), x)


def test_optimizers_follow_pytorch_update_rules():
    p = nn.Parameter(np.array([1.0, -2.0]))
    sgd = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    v = None
    w = p.data.copy()
    for g in (np.array([0.5, 1.0]), np.array([-1.0, 0.25])):
        p.grad = g
        sgd.step()
        d = g + 0.01 * w
        v = d if v is None else 0.9 * v + d
        w = w - 0.1 * (d + 0.9 * v)
        assert np.allclose(p.data, w)
    q = nn.Parameter(np.array([0.5]))
    adam = nn.Adam([q], lr=0.01)
    q.grad = np.array([2.0])
    adam.step()
    assert np.allclose(q.data, 0.5 - 0.01)       # first Adam step moves by lr * sign(g)


torch = pytest.importorskip("torch")


def _torch_pair(make_fc, make_torch):
    nn.manual_seed(6)
    ours = make_fc().astype(np.float64)
    theirs = make_torch().double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


PAIRS = [
    (lambda: nn.Conv2d(3, 6, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=3),
     lambda: torch.nn.Conv2d(3, 6, (3, 5), stride=2, padding=(1, 2), groups=3), (2, 3, 9, 8)),
    (lambda: nn.Linear(7, 4), lambda: torch.nn.Linear(7, 4), (5, 7)),
    (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda: torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
     (2, 3, 8, 7)),
    (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
     lambda: torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 8, 7)),
    (lambda: nn.Softmax(1), lambda: torch.nn.Softmax(1), (4, 6)),
]


@pytest.mark.parametrize("make_fc,make_torch,shape", PAIRS)
def test_layers_match_torch_nn(make_fc, make_torch, shape):
    ours, theirs = _torch_pair(make_fc, make_torch)
    x = np.random.default_rng(7).standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = np.random.default_rng(8).standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    assert rel_err(ours(x), yt.detach().numpy()) <= 1e-12
    assert rel_err(ours.backward(dy), xt.grad.numpy()) <= 1e-12
    for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == tname and rel_err(p.grad, tp.grad.numpy()) <= 1e-12


def test_lenet_like_training_steps_match_torch():
    """Two SGD steps of a LeNet-like net: same losses and weights as torch.nn."""
    def ours_net():
        return nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 10))
    T = torch.nn
    theirs = T.Sequential(T.Conv2d(1, 6, 5), T.Tanh(), T.AvgPool2d(2), T.Conv2d(6, 16, 5),
                          T.ReLU(), T.MaxPool2d(2), T.Flatten(), T.Linear(16 * 5 * 5, 10)).double()
    ours = ours_net().astype(np.float64)
    ours.load_state_dict(theirs.state_dict())
    opt = nn.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(9)
    x, target = rng.standard_normal((4, 1, 32, 32)), rng.integers(0, 10, 4)
    loss_fn, tloss_fn = nn.CrossEntropyLoss(), T.CrossEntropyLoss()
    for _ in range(2):
        opt.zero_grad()
        loss = loss_fn(ours(x), target)
        ours.backward(loss_fn.backward())
        opt.step()
        topt.zero_grad()
        tloss = tloss_fn(theirs(torch.tensor(x)), torch.tensor(target))
        tloss.backward()
        topt.step()
        assert abs(loss - tloss.item()) <= 1e-10
    for key, value in theirs.state_dict().items():
        assert rel_err(ours.state_dict()[key], value.numpy()) <= 1e-10, key


MORE_PAIRS = [
    (lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2),
     lambda: torch.nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2), (2, 4, 5, 6)),
    (lambda: nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0),
     lambda: torch.nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0), (2, 7, 4, 3)),
    (lambda: nn.LocalResponseNorm(4), lambda: torch.nn.LocalResponseNorm(4), (2, 6, 3, 3)),
]


@pytest.mark.parametrize("make_fc,make_torch,shape", MORE_PAIRS)
def test_more_layers_match_torch_nn(make_fc, make_torch, shape):
    test_layers_match_torch_nn(make_fc, make_torch, shape)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_matches_torch_in_train_and_eval(training):
    ours, theirs = _torch_pair(lambda: nn.BatchNorm2d(3, momentum=0.2),
                               lambda: torch.nn.BatchNorm2d(3, momentum=0.2))
    rng = np.random.default_rng(10)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
        theirs.running_mean.uniform_(-1, 1)
        theirs.running_var.uniform_(0.5, 2)
    ours.load_state_dict(theirs.state_dict())
    ours.train(training)
    theirs.train(training)
    for _ in range(2):
        x = rng.standard_normal((4, 3, 5, 6)) * 3 + 1
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        assert rel_err(ours(x), yt.detach().numpy()) <= 1e-12
        assert rel_err(ours.backward(dy), xt.grad.numpy()) <= 1e-10
        for (name, p), tp in zip(ours.named_parameters(), theirs.parameters()):
            assert rel_err(p.grad, tp.grad.numpy()) <= 1e-10, name
            p.grad, tp.grad = None, None
    for key in ("running_mean", "running_var"):
        assert rel_err(ours.state_dict()[key], theirs.state_dict()[key].numpy()) <= 1e-12


def test_joins_send_each_input_its_share_of_the_gradient():
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 5, 4, 4))
    cat = nn.Concat()
    y = cat(a, b)
    assert y.shape == (2, 8, 4, 4) and np.array_equal(y[:, 3:], b)
    g = rng.standard_normal(y.shape)
    ga, gb = cat.backward(g)
    assert np.array_equal(ga, g[:, :3]) and np.array_equal(gb, g[:, 3:])
    add = nn.Add()
    assert np.array_equal(add(a, a, a), 3 * a)
    assert all(np.array_equal(gi, g) for gi in add.backward(g))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_steps_match_torch(weight_decay):
    rng = np.random.default_rng(10)
    w0 = rng.standard_normal((3, 4))
    p = nn.Parameter(w0.copy())
    q = torch.tensor(w0.copy(), requires_grad=True)
    ours = nn.Adam([p], lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    theirs = torch.optim.Adam([q], lr=0.02, betas=(0.8, 0.95), eps=1e-6,
                              weight_decay=weight_decay)
    for _ in range(5):
        g = rng.standard_normal((3, 4))
        p.grad, q.grad = g.copy(), torch.tensor(g)
        ours.step()
        theirs.step()
        assert rel_err(p.data, q.detach().numpy()) <= 1e-14


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_convolution_takes_the_inference_algorithm_only_when_no_backward_follows(backend,
                                                                               monkeypatch):
    """auto may pick the direct kernels (fast forward, slow gradients) only where no
    backward pass follows, in a model called in eval mode: a strided 3x3 layer runs
    im2col in training and when called alone in eval mode (it may still backpropagate),
    direct inside a model in eval mode, with the same output."""
    import fastconv.functional as F

    ran = []
    conv2d = F.conv2d

    def recording(*args, algorithm, **kwargs):
        ran.append(algorithm)
        return conv2d(*args, algorithm=algorithm, **kwargs)

    monkeypatch.setattr(F, "conv2d", recording)
    rng = np.random.default_rng(0)
    layer = nn.Conv2d(16, 32, 3, stride=2, padding=1, backend=backend)
    model = nn.Sequential(layer)
    x = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    trained = model(x)
    model.eval()
    alone = layer(x)
    evaluated = model(x)
    assert ran == ["im2col", "im2col", "direct"]
    assert rel_err(alone, trained) < 1e-5
    assert rel_err(evaluated, trained) < 1e-5
