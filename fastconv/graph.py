"""Symbolic graphs of layers: ``Input``, ``Graph`` (itself a ``Layer``) and shape inference.

Calling a layer on symbolic tensors records a node instead of computing. A
``Graph`` orders its nodes topologically, runs forward in that order and
backward in reverse, summing the gradients of a tensor that feeds several
nodes. It keeps one context per node, not per layer, so a layer used twice is
two nodes whose parameter gradients both add up. Shapes are inferred when the
graph is built, by running each layer on an empty batch (every operation of
fastconv accepts one) in eval mode, so a mismatch is reported at build time
with the layer's name.

Called on a model in eval mode, a graph runs for inference: it keeps no
contexts and drops each intermediate tensor after its last use, so the peak
memory is that of the widest cut of the graph, not the sum of its
activations; ``backward`` then needs another forward pass in training mode.
What decides is the mode of the layer the call starts from: a graph put in
eval mode inside a model that trains (frozen BatchNorm) keeps what backward
needs.
"""

import warnings

import numpy as np

from .backends import is_device_array
from .nn.module import Context, Layer


class SymbolicTensor:
    """A tensor of a graph under construction: its shape without the batch axis."""

    def __init__(self, shape, node=None, dtype=np.float32):
        self.shape, self.node, self.dtype = tuple(shape), node, np.dtype(dtype)

    def __repr__(self):
        return f"SymbolicTensor(shape={self.shape})"


def Input(shape, dtype=np.float32):
    """The symbolic input of a graph; ``shape`` excludes the batch axis."""
    return SymbolicTensor(shape, None, dtype)


class Node:
    """One call of a layer on symbolic tensors."""

    def __init__(self, layer, inputs):
        self.layer, self.inputs = layer, list(inputs)
        empty = [np.zeros((0,) + t.shape, dtype=t.dtype) for t in self.inputs]
        was_training = layer.training
        layer.eval()
        try:
            with warnings.catch_warnings():     # statistics of an empty batch are NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                out = layer._forward(Context(), *empty)
        except (ValueError, TypeError) as exc:
            shapes = ", ".join(str(t.shape) for t in self.inputs)
            raise ValueError(f"{_describe(layer)} cannot take inputs of shape {shapes} "
                             f"(batch axis left out): {exc}") from None
        finally:
            layer.train(was_training)
        self.output = SymbolicTensor(out.shape[1:], self, out.dtype)


def _describe(layer):
    name = getattr(layer, "name", None)
    return f"layer {name!r} ({type(layer).__name__})" if name else type(layer).__name__


def _symbolic_call(layer, inputs):
    if not all(isinstance(t, SymbolicTensor) for t in inputs):
        raise TypeError(f"{_describe(layer)}: cannot mix symbolic tensors and arrays")
    return Node(layer, inputs).output


class Graph(Layer):
    """A layer made of the nodes between ``inputs`` and ``outputs`` (one or a list each).

    Children are named by the layers' ``name`` attribute where set, else by their
    position ("0", "1", ...) in execution order; a shared layer is one child.
    """

    runs_on_gpu = True

    def __init__(self, inputs, outputs):
        super().__init__()
        self._single_input = isinstance(inputs, SymbolicTensor)
        self._single_output = isinstance(outputs, SymbolicTensor)
        self.inputs = [inputs] if self._single_input else list(inputs)
        self.outputs = [outputs] if self._single_output else list(outputs)
        self.nodes = self._order(self.outputs)
        self._plans = {}            # id of a node list -> what inference needs to know of it
        for i, layer in enumerate(dict.fromkeys(n.layer for n in self.nodes)):
            setattr(self, getattr(layer, "name", None) or str(i), layer)

    def _order(self, outputs):
        """The nodes that ``outputs`` depend on, in topological order (depth-first)."""
        order, state = [], {}
        for out in outputs:
            stack = [(out, False)]
            while stack:
                tensor, done = stack.pop()
                node = tensor.node
                if node is None:
                    if not any(tensor is t for t in self.inputs):
                        raise ValueError(f"Graph: {tensor} is not produced by any node and is "
                                         f"not one of the graph's inputs")
                    continue
                if done:
                    if state.get(id(node)) != "done":
                        state[id(node)] = "done"
                        order.append(node)
                    continue
                if state.get(id(node)) is not None:
                    continue
                state[id(node)] = "open"
                stack.append((tensor, True))
                stack.extend((t, False) for t in reversed(node.inputs))
        return order

    def _forward(self, ctx, *arrays):
        return self._run(ctx, arrays, self.nodes, self.outputs, self._single_output)

    def _run(self, ctx, arrays, nodes, outputs, single_output):
        """Run ``nodes`` (a topological order) on the input arrays and return ``outputs``."""
        if len(arrays) != len(self.inputs):
            raise ValueError(f"Graph: expected {len(self.inputs)} inputs, got {len(arrays)}")
        values = {id(t): a for t, a in zip(self.inputs, arrays)}
        ctx.steps = None if ctx.inference else []
        on_device = any(is_device_array(a) for a in arrays)
        last_use, plan = self._inference_plan(nodes, outputs, on_device) if ctx.inference \
            else ({}, {})
        for i, node in enumerate(nodes):
            how = plan.get(node)
            if isinstance(how, SymbolicTensor):     # applied by the chain ``how`` is part of
                values[id(node.output)] = values[id(how)]
            else:
                step = Context()
                if ctx.steps is None:
                    step.inference = True
                    step.overwrite = _may_overwrite(node, values, last_use.get(i, ()), arrays)
                    if how is not None:
                        bn, residual, step.relu = how
                        step.bn = None if bn is None else bn.layer
                        step.residual = None if residual is None else values[id(residual)]
                values[id(node.output)] = node.layer._forward(step, *(values[id(t)]
                                                                      for t in node.inputs))
            if ctx.steps is not None:
                ctx.steps.append((node, step))
            for key in last_use.get(i, ()):
                del values[key]
        out = [values[id(t)] for t in outputs]
        return out[0] if single_output else tuple(out)

    def _inference_plan(self, nodes, outputs, on_device):
        """The tensors' last readers, and the chains that run as one node this call:
        {node: (BatchNorm2d node or None, residual tensor or None, relu)} for the node
        that applies a chain, {node: the chain's tensor it reads} for a node applied
        by the chain's first node, whose result that tensor then is. The graph fixes
        the candidates (found once per node list); the layers' modes and where the
        arrays live decide which run fused."""
        from .nn.layers import folds_batch_norm, fuses_epilogue, fuses_relu

        key = id(nodes)
        if key not in self._plans:
            self._plans[key] = (_last_uses(nodes, outputs), _chains(nodes, outputs))
        last_use, chains = self._plans[key]
        plan = {}
        for head, bn, add, residual, relu in chains:
            if head in plan:            # applied by an earlier chain
                continue
            if bn is not None:                         # a convolution's epilogue
                if not folds_batch_norm(head.layer, bn.layer, on_device):
                    continue
            elif add is not None:
                if not fuses_epilogue(head.layer, on_device):
                    continue
            elif not fuses_relu(head.layer, relu.layer, on_device):
                continue
            plan[head] = (bn, residual, relu is not None)
            before = head.output
            for applied in (bn, add, relu):
                if applied is not None:
                    plan[applied], before = before, applied.output
        return last_use, plan

    def _backward(self, ctx, grad_out):
        if ctx.steps is None:
            raise RuntimeError("Graph.backward: the last forward ran in eval mode, which keeps "
                               "no activations; call train() and run forward again")
        grads = dict(zip((id(t) for t in self.outputs),
                         [grad_out] if self._single_output else grad_out))
        inputs = {id(t) for t in self.inputs}
        for node, step in reversed(ctx.steps):
            if all(id(t) in inputs for t in node.inputs):
                step.needs_input_grad = ctx.needs_input_grad
            g = grads.pop(id(node.output), None)
            if g is None:            # no output depends on this node
                continue
            g_in = node.layer._backward(step, g)
            for t, gi in zip(node.inputs, g_in if len(node.inputs) > 1 else (g_in,)):
                if gi is not None:          # None: the graph's input, not wanted
                    grads[id(t)] = gi if id(t) not in grads else grads[id(t)] + gi
        result = [grads.get(id(t)) for t in self.inputs]
        return result[0] if self._single_input else tuple(result)

    def to_dot(self):
        return to_dot(self)


def _last_uses(nodes, outputs):
    """{position in ``nodes``: ids of the tensors read there for the last time}, leaving
    out the outputs, so that inference can drop every other tensor when done with it."""
    last = {}
    for i, node in enumerate(nodes):
        for t in node.inputs:
            last[id(t)] = i
    for t in outputs:
        last.pop(id(t), None)
    by_node = {}
    for key, i in last.items():
        by_node.setdefault(i, []).append(key)
    return by_node


def _chains(nodes, outputs):
    """(head, bn, add, residual, relu) for each node that could apply the nodes after it
    at inference: a BatchNorm2d or an Add the ReLU after it; a Conv2d the BatchNorm2d
    after it, then an Add of its result and a tensor made before the convolution (the
    residual), then the ReLU. Each node of a chain is the one reader of the tensor
    before it, which is no graph output; the parts a chain lacks are None."""
    from .nn.layers import Add, BatchNorm2d, Conv2d, ReLU

    readers, position = {}, {node: i for i, node in enumerate(nodes)}
    for node in nodes:
        for t in node.inputs:
            readers.setdefault(id(t), []).append(node)

    def sole_reader(t, kind):
        found = readers.get(id(t), [])
        if len(found) != 1 or type(found[0].layer) is not kind \
                or sum(u is t for u in found[0].inputs) != 1 or any(t is o for o in outputs):
            return None
        return found[0]

    chains = []
    for node in nodes:
        t, bn, add, residual = node.output, None, None, None
        if type(node.layer) is Conv2d:
            bn = sole_reader(t, BatchNorm2d)
            t = t if bn is None else bn.output
            add = sole_reader(t, Add)
            if add is not None and len(add.inputs) == 2:
                residual = add.inputs[1] if add.inputs[0] is t else add.inputs[0]
                if residual.node is None or position[residual.node] < position[node]:
                    t = add.output
                else:
                    add = residual = None
            else:
                add = None
        elif type(node.layer) not in (BatchNorm2d, Add):
            continue
        relu = sole_reader(t, ReLU)
        if bn is not None or add is not None or relu is not None:
            chains.append((node, bn, add, residual, relu))
    return chains


def _may_overwrite(node, values, dying, protected):
    """Whether ``node`` may write over its first input: the tensor is read there for
    the last time, only once, and shares no memory with any other live array or
    with the caller's inputs (a layer such as Flatten or eval-mode Dropout returns
    a view of its input, or the input itself)."""
    first = node.inputs[0]
    if id(first) not in dying or sum(t is first for t in node.inputs) > 1:
        return False
    a = values[id(first)]
    if is_device_array(a) or not a.flags.writeable:
        return False
    others = [v for key, v in values.items() if key != id(first)]
    return not any(np.may_share_memory(a, v) for v in others + list(protected))


# ---------------------------------------------------------------------------
# Summary and Graphviz
# ---------------------------------------------------------------------------

def _macs(layer, in_shapes, out_shape):
    """Multiply-adds of one call on a single example (convolutions and linear layers)."""
    from .nn import Conv2d, ConvTranspose2d, Linear

    out = int(np.prod(out_shape))
    if isinstance(layer, Conv2d):
        return out * (layer.in_channels // layer.groups) * int(np.prod(layer.kernel_size))
    if isinstance(layer, ConvTranspose2d):
        return int(np.prod(in_shapes[0])) * int(np.prod(layer.weight.data.shape[1:]))
    if isinstance(layer, Linear):
        return out // layer.out_features * layer.in_features * layer.out_features
    return 0


def _rows(model, input_shape):
    """(name, type, output shape, parameters, MACs) for each step of a Graph or Sequential."""
    if isinstance(model, Graph):
        names = {id(layer): name for name, layer in model.named_children()}
        for node in model.nodes:
            layer = node.layer
            yield (names[id(layer)], type(layer).__name__, node.output.shape,
                   sum(p.data.size for p in layer.parameters()),
                   _macs(layer, [t.shape for t in node.inputs], node.output.shape))
        return
    if input_shape is None:
        raise ValueError("summary: input_shape (without the batch axis) is needed for a "
                         "layer that is not a Graph")
    shape = tuple(input_shape)
    for name, layer in _leaves(model):
        node = Node(layer, [SymbolicTensor(shape)])
        yield (name, type(layer).__name__, node.output.shape,
               sum(p.data.size for p in layer.parameters()), _macs(layer, [shape],
                                                                  node.output.shape))
        shape = node.output.shape


def _leaves(layer, prefix=""):
    """(dotted name, layer) of the steps of a Sequential, nested ones opened up."""
    from .nn import Sequential

    if not isinstance(layer, Sequential):
        yield prefix or type(layer).__name__, layer
        return
    for name, child in layer.named_children():
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name)


def summary(model, input_shape=None):
    """A table of every step's name, type, output shape, parameters and multiply-adds
    (per example), with totals, as torchinfo and Keras print."""
    rows = list(_rows(model, input_shape))
    lines = [f"{'layer':<24}{'type':<20}{'output shape':<22}{'params':>12}{'MACs':>16}"]
    lines.append("-" * len(lines[0]))
    for name, kind, shape, params, macs in rows:
        lines.append(f"{name:<24}{kind:<20}{str(shape):<22}{params:>12,}{macs:>16,}")
    lines.append("-" * len(lines[0]))
    total_params = sum(p.data.size for p in model.parameters())
    total_macs = sum(r[4] for r in rows)
    lines.append(f"{'total':<66}{total_params:>12,}{total_macs:>16,}")
    return "\n".join(lines)


def to_dot(graph):
    """Graphviz DOT text of a graph: a box per node, an edge per tensor."""
    names = {id(layer): name for name, layer in graph.named_children()}
    ids = {id(node): f"n{i}" for i, node in enumerate(graph.nodes)}
    lines = ["digraph fastconv {", "  rankdir=TB;", "  node [shape=box];"]
    for i, t in enumerate(graph.inputs):
        lines.append(f'  in{i} [label="input {t.shape}", shape=ellipse];')
    for node in graph.nodes:
        label = f"{names[id(node.layer)]}: {type(node.layer).__name__}\\n{node.output.shape}"
        lines.append(f'  {ids[id(node)]} [label="{label}"];')
        for t in node.inputs:
            source = ids[id(t.node)] if t.node is not None else \
                f"in{next(i for i, s in enumerate(graph.inputs) if s is t)}"
            lines.append(f"  {source} -> {ids[id(node)]};")
    lines.append("}")
    return "\n".join(lines)
