"""Finite differences along the coordinate axes."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimator, ProberLike, VJPQuery, _check_option, _steps_taken, check_positive


class FiniteDifference(Estimator):
    """Coordinate finite differences: column ``j`` of the Jacobian from a step along ``e_j``.

    ``central``: ``J e_j ≈ (f(α + h e_j) − f(α − h e_j)) / 2h``, error O(h²).
    ``forward``: ``J e_j ≈ (f(α + h e_j) − f(α)) / h`` reusing the forward
    output, error O(h).

    Cost per ``vjp`` on a batch of ``B`` with ``d`` active coordinates:
    ``2·d·B`` evaluations (central) or ``d·B`` (forward), whatever ``m``.

    Args:
        step: relative step (``h_j = step · max(1, |α_j|)``); default the
            step of the device profile that :class:`~blackgrad.BlackBox`
            calibrated, taken as it was measured: an absolute displacement of
            the moved coordinate; else
            :func:`~blackgrad.estimators.base.default_step` for the dtype,
            relative (right for clean float functions only).
        scheme: ``"central"`` or ``"forward"``.
    """

    _repr_fields = ("step", "scheme")

    def __init__(self, step: float | None = None, scheme: str = "central") -> None:
        _check_option("scheme", scheme, ("central", "forward"))
        check_positive("step", step, allow_none=True)
        self.step = step
        self.scheme = scheme

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        alpha, grad, index = query.by_column()
        k, batch = index.numel(), query.batch
        if k == 0:
            return grad
        central = self.scheme == "central"
        base = self.probe_step(alpha.dtype, 2 if central else 1)
        rows = torch.arange(k, device=alpha.device)
        if self._step_is_absolute:
            h = alpha.new_full((k, batch), base)
        else:
            h = base * alpha[:, index].abs().clamp(min=1.0).T  # (k, B)
        plus = alpha.expand(k, batch, -1).clone()
        plus[rows, :, index] += h
        at = alpha[:, index].T  # (k, B): each moved coordinate where it was
        taken = _steps_taken(at, plus[rows, :, index])
        # the θ group of each probe row: a θ coordinate's probes share a θ of their own, 0 is the query's
        moves_theta = index >= query.n
        group = None
        if bool(moves_theta.any()):
            group = torch.where(moves_theta, rows + 1, 0).repeat_interleave(batch)
        if central:
            minus = alpha.expand(k, batch, -1).clone()
            minus[rows, :, index] -= h
            taken = _steps_taken(at, plus[rows, :, index], minus[rows, :, index])
            # One request for the whole backward pass: it is packed into as few
            # device calls as possible and either fits the budget or spends nothing.
            both = None if group is None else torch.cat([group, torch.where(group > 0, group + k, 0)])
            f_plus, f_minus = query.evaluate(prober, torch.cat([plus, minus]).reshape(2 * k * batch, -1), both).reshape(2, k, batch, -1)
            columns = (f_plus - f_minus) / taken.unsqueeze(-1)
        else:
            f_plus = query.evaluate(prober, plus.reshape(k * batch, -1), group).reshape(k, batch, -1)
            columns = (f_plus - query.y) / taken.unsqueeze(-1)
        grad[:, index] = torch.einsum("bm,kbm->bk", query.grad_out, columns)
        return grad

    @property
    def _step_is_absolute(self) -> bool:
        """A calibrated step is a displacement, measured as such; a given or dtype step is relative."""
        return self.step is None and self.profile is not None and self.profile.step is not None

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        return (2 if self.scheme == "central" else 1) * d * batch
