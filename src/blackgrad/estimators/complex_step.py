"""The complex-step derivative: no subtractive cancellation."""

from __future__ import annotations

import torch
from torch import Tensor

from .._dtypes import complex_dtype
from ..errors import DeviceOutputError
from .base import Estimator, ProberLike, VJPQuery, check_positive


class ComplexStep(Estimator):
    """``J e_j = Im f(α + i·h·e_j) / h``, exact to rounding for any tiny ``h``.

    Works when the device is a real-analytic function implemented with
    complex-aware arithmetic (a simulator, not an instrument): it is called
    with complex input and must return complex output.  There is no
    difference of nearly equal numbers, so ``h = 1e-20`` gives the derivative
    to machine precision.

    Cost per ``vjp``: ``d·B`` complex evaluations for ``d`` active coordinates.
    """

    supports_complex = False  # the imaginary step extends a real function: a complex input leaves it no room
    _repr_fields = ("step",)

    def __init__(self, step: float = 1e-20) -> None:
        check_positive("step", step)
        self.step = step

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        alpha, grad, index = query.by_column()
        k, batch = index.numel(), query.batch
        if k == 0:
            return grad
        probes = alpha.to(complex_dtype(alpha.dtype)).expand(k, batch, -1).clone()
        probes[torch.arange(k, device=alpha.device), :, index] += 1j * self.step
        moves_theta = index >= query.n  # a θ coordinate's probes share a θ of their own; 0 is the query's
        group = torch.where(moves_theta, torch.arange(1, k + 1, device=alpha.device), 0).repeat_interleave(batch)
        f = query.evaluate(prober, probes.reshape(k * batch, -1), group if bool(moves_theta.any()) else None)
        if not f.is_complex():
            raise DeviceOutputError(
                f"ComplexStep needs black box {prober.name!r} to keep complex arithmetic, "
                "but it returned a real tensor for complex input (abs, real or a cast to float?)"
            )
        columns = f.imag.reshape(k, batch, -1) / self.step
        grad[:, index] = torch.einsum("bm,kbm->bk", query.grad_out, columns.to(alpha.dtype))
        return grad

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        return d * batch
