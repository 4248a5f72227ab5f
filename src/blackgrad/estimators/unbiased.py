"""A control-variate wrapper that makes any estimator unbiased."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DISTRIBUTIONS, Estimator, VJPQuery, check_option, check_positive, default_step, directional_slopes, make_generator
from .learned import LearnedEstimator


class Unbiased(Estimator):
    """``ĝ = v + (1/k) Σ_i (gᵀ s_i − v·ε_i) ε_i`` with ``v`` the inner estimate.

    The inner estimator's VJP ``v`` serves as a control variate for ``k``
    random-direction probes (Rademacher ``ε_i``, ``E[ε εᵀ] = I``; ``s_i`` the
    measured slope along ``ε_i``).  Whatever the inner model's error, the
    expectation is ``v + (gᵀJ − v) = gᵀJ``, the true VJP (of the difference
    slope); the variance is that of SPSA applied to the *residual*
    ``gᵀJ − v``, so it shrinks as the inner model improves.

    The same probes are then handed to a learned inner estimator as training
    rows (after ``v`` was computed, so the correction stays unbiased); a
    learned inner estimator is asked only for its model's VJP and spends no
    probes of its own.  Any other inner estimator runs its own ``vjp``.

    Cost per ``vjp``: ``k·B`` evaluations (``2·k·B`` with ``antithetic=True``),
    plus the inner estimator's own cost if it is not a learned one.

    Args:
        inner: the estimator to correct.
        directions: ``k``, probes per sample.
        antithetic: two-sided differences.
        step: perturbation size; default from the dtype.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        seed: seed of the wrapper's own generator.
    """

    _repr_fields = ("inner", "directions", "antithetic", "step")

    def __init__(
        self,
        inner: Estimator,
        directions: int = 1,
        antithetic: bool = False,
        step: float | None = None,
        distribution: str = "rademacher",
        seed: int | None = 0,
    ) -> None:
        if not isinstance(inner, Estimator):
            raise TypeError(f"inner must be an Estimator, got {inner!r}")
        if inner.differentiates_device:
            raise ValueError("Unbiased(Exact()) makes no sense: Exact is already exact")
        check_positive("directions", directions, integer=True)
        check_positive("step", step, allow_none=True)
        check_option("distribution", distribution, DISTRIBUTIONS)
        self.inner = inner
        self.directions = directions
        self.antithetic = bool(antithetic)
        self.step = step
        self.distribution = distribution
        self.generator = make_generator(seed)

    def observe(self, alpha: Tensor, y: Tensor) -> None:
        self.inner.observe(alpha, y)

    def vjp(self, prober, query: VJPQuery) -> Tensor:
        alpha, k, batch = query.alpha, self.directions, query.batch
        learned = isinstance(self.inner, LearnedEstimator)
        if learned:
            self.inner.prepare(query.dim, query.y.shape[1], alpha)
            with torch.no_grad():
                estimate = self.inner.predict_vjp(alpha, query.grad_out)
        else:
            estimate = self.inner.vjp(prober, query)
        if query.n_active == 0:
            return estimate
        h = self.step if self.step is not None else default_step(alpha.dtype, 2 if self.antithetic else 1)
        delta = query.directions(k, self.generator, self.distribution)  # (k, B, d)
        rows = alpha.repeat(k, 1)
        y = None if self.antithetic else query.y.repeat(k, 1)
        slope = directional_slopes(prober, rows, delta.reshape(k * batch, -1), h, y).reshape(k, batch, -1)
        active = query.active.to(estimate.dtype)
        residual = torch.einsum("bm,kbm->kb", query.grad_out, slope) - torch.einsum("bd,kbd->kb", estimate * active, delta)
        corrected = estimate * active + torch.einsum("kb,kbd->bd", residual, delta) / k
        if learned:
            self.inner.learn(
                rows, delta.reshape(k * batch, -1), slope.reshape(k * batch, -1), query.grad_out.repeat(k, 1), step=h, central=self.antithetic
            )
        return corrected

    def fit(self, *args, **kwargs):
        """Pre-fit the inner estimator (e.g. a :class:`~blackgrad.estimators.DigitalTwin`)."""
        fit = getattr(self.inner, "fit", None)
        if fit is None:
            raise TypeError(f"{type(self.inner).__name__} cannot be pre-trained; DigitalTwin can")
        return fit(*args, **kwargs)

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        if d == 0:
            return 0
        own = (2 if self.antithetic else 1) * self.directions * batch
        inner = 0 if isinstance(self.inner, LearnedEstimator) else self.inner.probe_cost(d, m, batch)
        return own + inner

    def state_dict(self):
        state = super().state_dict()
        state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.inner.load_state_dict(state["inner"])
