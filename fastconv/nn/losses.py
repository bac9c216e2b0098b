"""Losses: a forward to a scalar and a backward from dL/dloss (1 by default)."""

import numpy as np

from .module import Layer


class _Loss(Layer):
    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', "
                             f"got {reduction!r}")
        self.reduction = reduction

    def backward(self, grad_out=1.0):
        return super().backward(grad_out)


class CrossEntropyLoss(_Loss):
    """``-log softmax(logits)[target]`` averaged (or summed) over the batch, computed
    from the logits with the log-sum-exp shift, so it neither overflows nor underflows.

    logits: (N, classes); target: (N,) class indices.
    """

    def _forward(self, ctx, logits, target):
        target = np.asarray(target)
        if logits.ndim != 2 or target.shape != logits.shape[:1]:
            raise ValueError(f"CrossEntropyLoss: expected logits (N, classes) and target (N,), "
                             f"got {logits.shape} and {target.shape}")
        if target.dtype.kind not in "iu" or target.min(initial=0) < 0 \
                or target.max(initial=0) >= logits.shape[1]:
            raise ValueError(f"CrossEntropyLoss: target must hold class indices in "
                             f"[0, {logits.shape[1]}), got dtype {target.dtype}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_p = shifted - log_sum
        rows = np.arange(len(target))
        ctx.p, ctx.target, ctx.rows = np.exp(log_p), target, rows
        losses = -log_p[rows, target]
        return losses.mean() if self.reduction == "mean" else losses.sum()

    def _backward(self, ctx, grad_out):
        grad = ctx.p.copy()
        grad[ctx.rows, ctx.target] -= 1
        scale = grad_out / (len(ctx.target) if self.reduction == "mean" else 1)
        return (grad * scale).astype(ctx.p.dtype)


class MSELoss(_Loss):
    """Mean (or sum) of squared differences."""

    def _forward(self, ctx, y, target):
        ctx.diff = np.asarray(y) - np.asarray(target)
        squares = ctx.diff * ctx.diff
        return squares.mean() if self.reduction == "mean" else squares.sum()

    def _backward(self, ctx, grad_out):
        scale = 2 * grad_out / (ctx.diff.size if self.reduction == "mean" else 1)
        return (ctx.diff * scale).astype(ctx.diff.dtype)
