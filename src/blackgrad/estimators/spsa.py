"""Simultaneous-perturbation (random-direction) gradient estimates."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DISTRIBUTIONS, Estimator, ProberLike, VJPQuery, _check_option, check_positive, _directional_slopes, _make_generator, resolve_scheme
from .fidelity import DEFAULT_GATE, Fidelity, FidelityMonitor


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

    The estimate scores itself by its own spread, at no cost
    (:meth:`~blackgrad.estimators.fidelity.FidelityMonitor.score_spread`):
    the cosine between the batch-summed estimate and its mean, from the
    variance that the ``k`` directions leave.  With one direction that cosine
    is about ``sqrt(B/P)`` at best for ``P`` coordinates and ``B`` samples
    whose gradients agree — far lower when they do not, or when the device
    is noisy — and under an optimiser that normalises the step (Adam) such a
    gradient moves the layers before the device as far as a true one.  The
    estimate is therefore passed upstream through the monitor's gate: each
    part (inputs, θ) only while its cosine is high; ``gate=None`` passes it
    always.

    Cost per ``vjp``: ``2·k·B`` evaluations (central) or ``k·B``, whatever
    ``d`` and ``m``.

    Args:
        directions: ``k``, directions per sample.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        antithetic: the older spelling of ``scheme``: True is ``"central"``.
        step: perturbation size ``c``; default: the calibrated profile's, else from the dtype.
        seed: seed of the estimator's own generator.
        scheme: ``"central"`` (default) or ``"forward"``.
        gate: ``(low, high)`` fidelity cosines of the gate, or None (see
            :class:`~blackgrad.estimators.fidelity.FidelityMonitor`).
        gate_rows: samples to score before the gate may open.
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
        gate: tuple[float, float] | None = DEFAULT_GATE,
        gate_rows: int = 256,
    ) -> None:
        self.monitor = FidelityMonitor(gate, gate_rows)  # validates the gate
        check_positive("directions", directions, integer=True)
        _check_option("distribution", distribution, DISTRIBUTIONS)
        check_positive("step", step, allow_none=True)
        self.directions = directions
        self.distribution = distribution
        self.scheme = resolve_scheme(scheme, antithetic, "central")
        self.step = step
        self.generator = _make_generator(seed)

    @property
    def antithetic(self) -> bool:
        """True for central (two-sided) differences."""
        return self.scheme == "central"

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        if query.n_active == 0:
            return torch.zeros_like(query.alpha)
        k, batch = self.directions, query.batch
        c = self.probe_step(query.dtype, 2 if self.antithetic else 1)
        delta = query.directions(k, self.generator, self.distribution)  # (k, B, d)
        rows = query.alpha.expand(k, batch, -1).reshape(k * batch, -1)
        y = None if self.antithetic else query.y.repeat(k, 1)
        group = query.direction_groups(k)
        slope = _directional_slopes(prober, rows, delta.reshape(k * batch, -1), c, y, query, group).reshape(k, batch, -1)
        along = torch.einsum("bm,kbm->kb", query.grad_out, slope)  # gᵀ J δ_i
        estimate = torch.einsum("kb,kbd->bd", along, delta) / k
        self.monitor.score_spread(estimate, along, delta, query.shared)
        return self.monitor.apply(estimate, query.shared)

    def withholds(self, part: str) -> bool:
        return self.monitor.factor(part) == 0

    @property
    def fidelity(self) -> Fidelity | None:
        """The running self-scored fidelity of the inputs' batch-summed estimate (None before any)."""
        return self.monitor.part("inputs")

    def part_fidelity(self, part: str) -> Fidelity | None:
        """The running fidelity of ``part`` (``"inputs"`` or ``"params"``)."""
        return self.monitor.part(part)

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        if d == 0:
            return 0
        return (2 if self.antithetic else 1) * self.directions * batch

    def state_dict(self):
        state = super().state_dict()
        state["fidelity"] = self.monitor.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if "fidelity" in state:  # absent from states saved before the monitor existed
            self.monitor.load_state_dict(state["fidelity"])
