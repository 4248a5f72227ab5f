"""Exact autodiff through the device, the reference for every other estimator."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import VJP, Estimator, ProberLike, VJPQuery


class Exact(Estimator):
    """Backpropagation through ``fun`` itself, when it is differentiable torch code.

    The limit the other estimators are measured against: a real physical
    device would not allow it.  ``BlackBox(fun, Exact())`` is
    ``BlackBox(fun, differentiable=True)``: the forward call keeps its
    autograd graph and torch differentiates it, so the backward pass costs
    **no** probe evaluations (one evaluation per training sample in all)
    and second derivatives are exact too; this ``vjp`` is not called there,
    as torch's own backward is the exact one.  Called directly,
    :meth:`vjp` re-evaluates the device with autograd on: ``B`` probe
    evaluations per batch of ``B``, whatever ``n`` and ``m``.

    Raises :class:`~blackgrad.errors.DeviceOutputError` if the device output
    carries no autograd graph (numpy code, ``detach``, integer arithmetic).
    """

    differentiates_device = True

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor | VJP:
        grouped = getattr(prober, "evaluate", None)
        if grouped is None:  # a function of rows α: differentiate through the rows
            alpha = query.alpha.detach().requires_grad_(True)
            with torch.enable_grad():
                y = prober(alpha, differentiable=True)
                require_graph(y, getattr(prober, "name", "device"))
                (grad,) = torch.autograd.grad(y, alpha, query.grad_out)
            return grad
        # x and θ as the device takes them: θ's gradient comes summed over the batch
        x = query.x.detach().requires_grad_(True)
        inputs = (x,) if query.theta is None else (x, query.theta.detach().requires_grad_(True))
        with torch.enable_grad():
            y = grouped(*inputs, differentiable=True)
            require_graph(y, prober.name)
            grads = torch.autograd.grad(y, inputs, query.grad_out, allow_unused=True)
        # a device that ignores an input has a zero gradient there, not None
        grads = tuple(torch.zeros_like(leaf) if grad is None else grad for grad, leaf in zip(grads, inputs))
        return grads[0] if query.theta is None else VJP(*grads)

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        return batch


def require_graph(y: Tensor, name: str) -> None:
    from ..errors import DeviceOutputError

    if not y.requires_grad:
        raise DeviceOutputError(
            f"the Exact estimator needs black box {name!r} to be differentiable torch code, "
            "but its output carries no autograd graph (numpy, detach or integer arithmetic?); "
            "choose a probing estimator such as FiniteDifference or SPSA"
        )
