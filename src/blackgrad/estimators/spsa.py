"""Simultaneous-perturbation (random-direction) gradient estimates."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DISTRIBUTIONS, Estimator, VJPQuery, check_option, check_positive, directional_slopes, make_generator, resolve_scheme


class SPSA(Estimator):
    """Random-direction VJP estimates: ``ĝ = (1/k) Σ_i (gᵀ Δf_i / c) δ_i``.

    Each direction ``δ_i`` has independent zero-mean, unit-variance entries
    (Rademacher ±1 or Gaussian), so ``E[δ δᵀ] = I`` and the estimate is an
    unbiased estimate of the VJP of the finite-difference slope; its variance
    falls like ``1/k``.  ``scheme="central"`` (antithetic, the default) uses
    ``Δf = (f(α+cδ) − f(α−cδ))/2``, ``scheme="forward"`` the one-sided
    ``Δf = f(α+cδ) − f(α)`` reusing the forward output.
    θ (shared) coordinates are perturbed identically across the batch, so each
    direction is one device call.

    Cost per ``vjp``: ``2·k·B`` evaluations (central) or ``k·B``, whatever
    ``d`` and ``m``.

    Args:
        directions: ``k``, directions per sample.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        antithetic: the older spelling of ``scheme``: True is ``"central"``.
        step: perturbation size ``c``; default: the calibrated profile's, else from the dtype.
        seed: seed of the estimator's own generator.
        scheme: ``"central"`` (default) or ``"forward"``.
    """

    _repr_fields = ("directions", "distribution", "scheme", "step")

    def __init__(
        self,
        directions: int = 1,
        distribution: str = "rademacher",
        antithetic: bool | None = None,
        step: float | None = None,
        seed: int | None = 0,
        scheme: str | None = None,
    ) -> None:
        check_positive("directions", directions, integer=True)
        check_option("distribution", distribution, DISTRIBUTIONS)
        check_positive("step", step, allow_none=True)
        self.directions = directions
        self.distribution = distribution
        self.scheme = resolve_scheme(scheme, antithetic, "central")
        self.step = step
        self.generator = make_generator(seed)

    @property
    def antithetic(self) -> bool:
        """True for central (two-sided) differences."""
        return self.scheme == "central"

    def vjp(self, prober, query: VJPQuery) -> Tensor:
        alpha = query.alpha
        if query.n_active == 0:
            return torch.zeros_like(alpha)
        k, batch = self.directions, query.batch
        c = self.probe_step(alpha.dtype, 2 if self.antithetic else 1)
        delta = query.directions(k, self.generator, self.distribution)  # (k, B, d)
        rows = alpha.expand(k, batch, -1).reshape(k * batch, -1)
        y = None if self.antithetic else query.y.repeat(k, 1)
        slope = directional_slopes(prober, rows, delta.reshape(k * batch, -1), c, y).reshape(k, batch, -1)
        along = torch.einsum("bm,kbm->kb", query.grad_out, slope)  # gᵀ J δ_i
        return torch.einsum("kb,kbd->bd", along, delta) / k

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        if d == 0:
            return 0
        return (2 if self.antithetic else 1) * self.directions * batch
