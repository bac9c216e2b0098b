"""``Layer``, ``Parameter`` and the state-dict machinery, as in ``torch.nn.Module``.

A layer pairs ``_forward(ctx, *inputs)`` with ``_backward(ctx, grad_out)``.
``ctx`` is a fresh :class:`Context` for every call and keeps only what the
backward pass needs, so a layer called twice (two nodes of a graph) keeps two
contexts; parameter gradients accumulate with ``+=`` over every call.
Attribute names make the state-dict keys, as in PyTorch, so torchvision's
weights load without a mapping table.
"""

import numpy as np

from ..backends import get_backend, is_device_array


class Parameter:
    """A trainable array and its gradient (``None`` until a backward pass)."""

    def __init__(self, data):
        self.data = np.asarray(data)
        self.grad = None

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Context:
    """What one forward call leaves for its backward call.

    A call on a model (a layer with children) in eval mode runs for inference:
    its context and those its containers make for their children say
    ``inference``, no backward will follow, so a layer need keep nothing. A
    child in eval mode inside a model that trains (a frozen BatchNorm) runs
    with ``inference`` false, and so does a single layer called on its own. It
    also sets ``overwrite`` when the layer's first input is read for the last time and shares no memory with
    any other live array, so that the layer may write its output there (ReLU,
    BatchNorm, Add do, as PyTorch's ``inplace=True`` layers do). A layer whose
    class sets ``fuses_relu`` may be asked, by ``relu``, to apply the ReLU that
    alone reads its output, which then does not run: one pass over the
    activations instead of two. A convolution on the host may likewise be asked
    to apply the BatchNorm2d that alone reads its output (``bn``) and to add a
    ``residual`` array (the other input of the Add after it) before that ReLU,
    all in its epilogue. In backward, ``needs_input_grad`` is false when
    nobody wants the gradient of the layer's inputs (a network's data), so a
    convolution need not compute it.
    """

    inference = False
    overwrite = False
    relu = False
    bn = None
    residual = None
    needs_input_grad = True


def _host_copy(a):
    return a.copy_to_host() if is_device_array(a) else np.array(a, copy=True)


class Layer:
    """Base class of every layer: parameters, buffers and children in attribute order."""

    runs_on_gpu = False
    """Whether the layer's inference runs on device arrays (see :meth:`to`)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_last_ctx", None)
        object.__setattr__(self, "device", "cpu")

    def __setattr__(self, name, value):
        for table in (self._parameters, self._buffers, self._children):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Layer):
            self._children[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """A state array that is not trained (BatchNorm's running statistics)."""
        self._buffers[name] = None
        object.__setattr__(self, name, array)

    # -- running ----------------------------------------------------------
    def _forward(self, ctx, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not define _forward")

    def _backward(self, ctx, grad_out):
        raise NotImplementedError(f"{type(self).__name__} does not define _backward")

    def forward(self, *inputs):
        """Run the layer; the context is kept for the next :meth:`backward`.

        On symbolic tensors (``fastconv.Input``) it records a graph node instead.
        """
        from ..graph import SymbolicTensor, _symbolic_call

        if any(isinstance(a, SymbolicTensor) for a in inputs):
            return _symbolic_call(self, inputs)
        ctx = Context()
        # a model (a layer with children) called in eval mode runs for inference;
        # the mode of the outermost call decides, for every layer below it
        ctx.inference = not self.training and bool(self._children)
        if self.device == "cuda":
            if self.training:
                raise RuntimeError(
                    f"{type(self).__name__}: layers on the GPU run inference only; call "
                    f".eval() first (training runs on the host: .to('cpu'))")
            ctx.inference = True
            cuda = get_backend("cuda")
            inputs = tuple(a if is_device_array(a) else cuda.to_device(a) for a in inputs)
        out = self._forward(ctx, *inputs)
        object.__setattr__(self, "_last_ctx", ctx)
        return out

    __call__ = forward

    def backward(self, grad_out, *, input_grad=True):
        """Gradient of the last forward call's inputs; adds into parameter gradients.

        With ``input_grad=False`` the gradient of the inputs is not wanted (they are
        data, as a tensor without ``requires_grad`` is in PyTorch): the layers that
        read them compute only their parameters' gradients, and ``None`` is returned.
        """
        if self._last_ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward first")
        if self.device == "cuda":
            raise RuntimeError(f"{type(self).__name__}.backward: layers on the GPU run "
                               f"inference only; training runs on the host (.to('cpu'))")
        self._last_ctx.needs_input_grad = bool(input_grad)
        grad = self._backward(self._last_ctx, grad_out)
        return grad if input_grad else None

    # -- parameters and state --------------------------------------------
    def named_children(self):
        return iter(self._children.items())

    def modules(self):
        """This layer and every layer below it, each once, parents first."""
        return list(dict.fromkeys(layer for _, layer in self._named_layers("")))

    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, child in self._children.items():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for path, layer, name in self._buffer_slots(prefix):
            yield path, getattr(layer, name)

    def _buffer_slots(self, prefix=""):
        """(dotted name, owning layer, attribute) of every buffer, walking the children."""
        for path, layer in self._named_layers(prefix):
            for name in layer._buffers:
                yield path + name, layer, name

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        object.__setattr__(self, "training", bool(mode))
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move parameters and buffers to ``"cuda"`` (numba device arrays) or back to
        ``"cpu"`` (NumPy arrays), in place, as ``torch.nn.Module.to``; returns self.

        On the GPU a layer runs inference, in eval mode: the activations stay on
        the device from layer to layer, NumPy inputs are copied there first and the
        result is a device array (``.copy_to_host()`` brings it back). Training
        runs on the host. Integer buffers (``num_batches_tracked``) stay on the host.
        """
        if device not in ("cpu", "cuda"):
            raise ValueError(f"to: device must be 'cpu' or 'cuda', got {device!r}")
        layers = self.modules()
        if device == "cuda":
            cuda = get_backend("cuda")          # says why where there is no GPU
            unsupported = sorted({type(layer).__name__ for layer in layers
                                  if not layer.runs_on_gpu})
            if unsupported:
                raise ValueError(f"to: {', '.join(unsupported)} cannot run on the GPU; the "
                                 f"model stays on the host")
            move = (lambda a: a if is_device_array(a) else cuda.to_device(a))
        else:
            move = (lambda a: a.copy_to_host() if is_device_array(a) else a)
        for layer in layers:
            for p in layer._parameters.values():
                p.data, p.grad = move(p.data), None
            for name in layer._buffers:
                value = getattr(layer, name)
                if value.dtype.kind == "f":
                    object.__setattr__(layer, name, move(value))
            object.__setattr__(layer, "device", device)
        return self

    def astype(self, dtype):
        """Convert parameters and buffers in place (like PyTorch's ``.double()``)."""
        if self.device != "cpu":
            raise RuntimeError("astype: the layer is on the GPU; convert it on the host "
                               "(.to('cpu'))")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"astype: dtype must be float32 or float64, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None if p.grad is None else p.grad.astype(dtype)
        for _, layer, name in self._buffer_slots():
            value = getattr(layer, name)
            if value.dtype.kind == "f":
                object.__setattr__(layer, name, value.astype(dtype))
        return self

    def state_dict(self):
        """Parameters and buffers by dotted name, layer by layer in PyTorch's order: NumPy
        copies, also of a layer on the GPU."""
        state = {}
        for prefix, layer in self._named_layers(""):
            for name, p in layer._parameters.items():
                state[prefix + name] = _host_copy(p.data)
            for name in layer._buffers:
                state[prefix + name] = _host_copy(getattr(layer, name))
        return state

    def load_state_dict(self, mapping, strict=True):
        """Copy values into parameters and buffers, cast to their dtype.

        Every key and shape is checked before anything is written, so a failed
        load leaves the layer unchanged. BatchNorm's ``num_batches_tracked`` is
        ignored. Values may be anything ``np.asarray`` takes (torch tensors too).
        """
        targets = {name: p for name, p in self.named_parameters()}
        owners = {path: (layer, name) for path, layer, name in self._buffer_slots()}
        wanted = {k for k in set(targets) | set(owners) if not k.endswith("num_batches_tracked")}
        given = {k for k in mapping if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(wanted - given), sorted(given - wanted)
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        staged = {}
        mismatched = []
        for key in sorted(wanted & given):
            value = np.asarray(mapping[key])
            current = targets[key].data if key in targets else getattr(*owners[key])
            if value.shape != np.shape(current):
                mismatched.append(f"{key}: expected {np.shape(current)}, got {value.shape}")
            else:
                staged[key] = value.astype(current.dtype, copy=True)
                if is_device_array(current):
                    staged[key] = get_backend("cuda").to_device(staged[key])
        if mismatched:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(mismatched))
        for key, value in staged.items():
            if key in targets:
                targets[key].data = value
            else:
                object.__setattr__(*owners[key], value)
        return missing, unexpected

    def _named_layers(self, prefix):
        yield prefix, self
        for name, child in self._children.items():
            yield from child._named_layers(prefix + name + ".")

    def summary(self, input_shape=None):
        """Table of each step's output shape, parameters and multiply-adds (fastconv.graph.summary)."""
        from ..graph import summary

        return summary(self, input_shape)

    def __repr__(self):
        extra = self.extra_repr()
        children = "".join(f"\n  ({name}): " + repr(child).replace("\n", "\n  ")
                           for name, child in self._children.items())
        return f"{type(self).__name__}({extra}{children}{chr(10) if children else ''})"

    def extra_repr(self):
        return ""
