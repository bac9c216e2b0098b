"""Optimizers with PyTorch's update rules."""

import math

import numpy as np


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr!r}")
        self.lr = lr
        self.state = [dict() for _ in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None


class SGD(Optimizer):
    """``v = momentum*v + (1 - dampening)*(g + weight_decay*w)``; ``w -= lr*v`` (or
    ``lr*(g + momentum*v)`` with Nesterov), PyTorch's form (v starts as the first g)."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def step(self):
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                if "v" not in state:
                    state["v"] = np.array(g, copy=True)
                else:
                    state["v"] = self.momentum * state["v"] + (1 - self.dampening) * g
                g = g + self.momentum * state["v"] if self.nesterov else state["v"]
            p.data -= (self.lr * g).astype(p.data.dtype)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and L2 weight decay."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def step(self):
        b1, b2 = self.betas
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if not state:
                state.update(t=0, m=np.zeros_like(p.data), v=np.zeros_like(p.data),
                             scratch=np.empty_like(p.data))
            state["t"] += 1
            # in place, in PyTorch's order of operations: m.lerp_(g, 1 - b1),
            # v.mul_(b2).addcmul_(g, g, 1 - b2), w.addcdiv_(m, sqrt(v)/sqrt(1 - b2^t) + eps,
            # -lr/(1 - b1^t)); one scratch array per parameter and no temporaries
            m, v, scratch = state["m"], state["v"], state["scratch"]
            np.subtract(g, m, out=scratch)
            scratch *= 1 - b1
            m += scratch
            np.multiply(g, g, out=scratch)
            scratch *= 1 - b2
            v *= b2
            v += scratch
            np.sqrt(v, out=scratch)
            scratch /= math.sqrt(1 - b2 ** state["t"])
            scratch += self.eps
            np.divide(m, scratch, out=scratch)
            scratch *= self.lr / (1 - b1 ** state["t"])
            p.data -= scratch
