"""The graph builder: shapes at build time, fan-out, shared layers, joins, nesting."""

import numpy as np
import pytest

from fastconv import Graph, Input, nn

from configs import rel_err
from test_nn import _fd_input_grad, _fd_param_grad


def _residual_graph():
    nn.manual_seed(0)
    x = Input(shape=(3, 6, 5))
    stem = nn.Conv2d(3, 4, 3, padding=1)
    stem.name = "stem"
    y = nn.Tanh()(stem(x))
    shared = nn.Conv2d(4, 4, 3, padding=1)           # used twice: two nodes, one layer
    a = shared(y)
    b = shared(nn.Sigmoid()(a))
    joined = nn.Add()(y, b)                           # y fans out to `shared` and to Add
    branch = nn.Conv2d(4, 2, 1)(joined)
    out = nn.Concat()(joined, branch)
    return Graph(inputs=x, outputs=out), shared


def test_shapes_are_inferred_when_the_graph_is_built():
    graph, _ = _residual_graph()
    assert graph.outputs[0].shape == (6, 6, 5)
    assert list(graph.state_dict())[:2] == ["stem.weight", "stem.bias"]
    assert sum(1 for n in graph.nodes if isinstance(n.layer, nn.Conv2d)) == 4


def test_graph_backward_sums_fan_out_and_shared_layers():
    graph, shared = _residual_graph()
    graph.astype(np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 5))
    dy = rng.standard_normal((2, 6, 6, 5))
    graph(x)
    gx = graph.backward(dy)
    assert rel_err(gx, _fd_input_grad(graph, x, dy)) <= 1e-6
    assert rel_err(shared.weight.grad, _fd_param_grad(graph, shared.weight, x, dy)) <= 1e-6


def test_nested_graphs_and_several_inputs_and_outputs():
    nn.manual_seed(2)
    a, b = Input(shape=(5,)), Input(shape=(5,))
    inner_in = Input(shape=(5,))
    inner = Graph(inner_in, nn.Tanh()(nn.Linear(5, 5)(inner_in)))
    s = nn.Add()(inner(a), b)
    graph = Graph([a, b], [s, nn.Linear(5, 2)(s)]).astype(np.float64)
    rng = np.random.default_rng(3)
    xa, xb = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    out_s, out_t = graph(xa, xb)
    assert out_s.shape == (4, 5) and out_t.shape == (4, 2)
    ds, dt = rng.standard_normal((4, 5)), rng.standard_normal((4, 2))
    ga, gb = graph.backward((ds, dt))

    def f(za, zb):
        s_, t_ = graph(za, zb)
        return np.vdot(s_, ds) + np.vdot(t_, dt)

    eps = 1e-6
    for grad, which in ((ga, 0), (gb, 1)):
        numeric = np.zeros((4, 5))
        for idx in np.ndindex(4, 5):
            args_p, args_m = [xa.copy(), xb.copy()], [xa.copy(), xb.copy()]
            args_p[which][idx] += eps
            args_m[which][idx] -= eps
            numeric[idx] = (f(*args_p) - f(*args_m)) / (2 * eps)
        assert rel_err(grad, numeric) <= 1e-6


def test_shape_mismatch_is_reported_at_build_time_with_the_layer_name():
    x = Input(shape=(3, 8, 8))
    conv = nn.Conv2d(4, 8, 3)
    conv.name = "conv2"
    with pytest.raises(ValueError, match=r"layer 'conv2' \(Conv2d\) cannot take inputs of shape "
                                         r"\(3, 8, 8\).*weight has 4 input channels"):
        conv(x)
    with pytest.raises(ValueError, match="Linear cannot take inputs of shape"):
        nn.Linear(10, 2)(nn.Flatten()(x))


def test_building_leaves_batchnorm_statistics_alone():
    bn = nn.BatchNorm2d(3)
    x = Input((3, 4, 4))
    Graph(x, bn(x))
    assert bn.training and not bn.running_mean.any() and bn.num_batches_tracked == 0


def test_summary_counts_parameters_and_multiply_adds():
    from fastconv.models import lenet5

    text = lenet5().summary((1, 32, 32))
    macs = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert text.splitlines()[-1].split()[1:] == ["61,706", f"{macs:,}"]
    assert "conv2" in text and "(16, 10, 10)" in text
    graph, _ = _residual_graph()
    assert "stem" in graph.summary() and "(6, 6, 5)" in graph.summary()


def test_to_dot_draws_every_edge():
    graph, _ = _residual_graph()
    dot = graph.to_dot()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    edges = sum(len(n.inputs) for n in graph.nodes)
    assert dot.count("->") == edges and "in0 -> n0" in dot
