"""A user-given surrogate derivative: no probes at all."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .base import VJP, Estimator, ProberLike, VJPQuery


class StraightThrough(Estimator):
    """Backward through a surrogate instead of the device: zero evaluations.

    A surrogate gradient: a threshold forward with a sigmoid backward, or
    the Cantor function with an identity backward, trains where the true
    derivative (zero almost everywhere) cannot.

    Give exactly one of:

    * ``derivative``: ``"identity"`` or a function of the flat input ``x``
      ``(B, n)`` returning the elementwise derivative ``(B, n)``; the VJP is
      ``grad_out * derivative(x)``, so the device must map ``n`` numbers to
      ``n`` numbers.
    * ``surrogate``: a differentiable torch function with the device's flat
      calling convention, ``surrogate(x)`` or ``surrogate(x, θ)``, returning
      ``(B, m)``; the VJP is the surrogate's, evaluated at the real inputs.

    Cost per ``vjp``: 0 evaluations.
    """

    supports_complex = False  # its derivative or surrogate is a function of the inputs as given, not of real pairs
    _repr_fields = ("derivative", "surrogate")

    def __init__(self, derivative: str | Callable[[Tensor], Tensor] | None = "identity", surrogate: Callable[..., Tensor] | None = None) -> None:
        if surrogate is not None:
            derivative = None
        if derivative is None and surrogate is None:
            raise ValueError("StraightThrough needs a derivative ('identity' or a function) or a surrogate")
        if isinstance(derivative, str) and derivative != "identity":
            raise ValueError(f"unknown derivative {derivative!r}; give 'identity' or a function of x")
        if derivative is not None and not isinstance(derivative, str) and not callable(derivative):
            raise TypeError(f"derivative must be 'identity' or callable, got {type(derivative).__name__}")
        if surrogate is not None and not callable(surrogate):
            raise TypeError(f"surrogate must be callable, got {type(surrogate).__name__}")
        self.derivative = derivative
        self.surrogate = surrogate

    def vjp(self, prober: ProberLike, query: VJPQuery) -> VJP:
        x, theta, n = query.x, query.theta, query.n
        if self.surrogate is not None:
            inputs = (x.detach().requires_grad_(True),) + (() if theta is None else (theta.detach().requires_grad_(True),))
            with torch.enable_grad():
                out = self.surrogate(*inputs)
                grads = torch.autograd.grad(out, inputs, query.grad_out, allow_unused=True)
            # autograd already sums θ's gradient over the batch: the query takes the parts as they are
            return VJP(grads[0], grads[1] if len(grads) > 1 else None)
        if query.need_theta:
            raise ValueError("StraightThrough with a derivative has no gradient for device parameters θ; use surrogate=")
        if query.grad_out.shape[1] != n:
            raise ValueError(
                f"StraightThrough with an elementwise derivative needs as many outputs as inputs; "
                f"the device maps {n} numbers to {query.grad_out.shape[1]}"
            )
        if self.derivative == "identity":
            return VJP(query.grad_out)
        slope = self.derivative(x)
        if slope.shape != x.shape:
            raise ValueError(f"derivative returned shape {tuple(slope.shape)}, expected {tuple(x.shape)}")
        return VJP(query.grad_out * slope)

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        return 0
