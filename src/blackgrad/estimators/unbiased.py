"""A control-variate wrapper that makes any estimator unbiased."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from .base import DISTRIBUTIONS, Estimator, ProberLike, VJPQuery, _check_option, check_positive, _directional_slopes, _make_generator, resolve_scheme
from .fidelity import DEFAULT_GATE, Fidelity, FidelityMonitor
from .learned import LearnedEstimator


def check_coefficient(value: Any) -> str | float:
    """``"optimal"`` or a finite real number (not a bool); returns it (a number as a float)."""
    if isinstance(value, str):
        if value != "optimal":
            raise ValueError(f"unknown coefficient {value!r}; pass 'optimal' or a finite number")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"coefficient must be 'optimal' or a finite number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"coefficient must be 'optimal' or a finite number, got {value!r}")
    return float(value)


def _dot(a: Tensor, b: Tensor) -> float:
    """``Re Σ conj(a)·b`` over all entries, accumulated in float64."""
    return float((a.conj() * b).real.double().sum())


class Unbiased(Estimator):
    """``ĝ = X − c (Y − v)``: random-direction probes with the inner estimate ``v`` as control variate.

    With ``k`` random directions ``ε_i`` per sample (Rademacher or Gaussian,
    ``E[ε εᵀ] = I``, zero on inactive coordinates) and ``s_i`` the measured
    slope along ``ε_i``,

    * ``X = (1/k) Σ_i (gᵀ s_i) ε_i`` is plain SPSA: its mean is ``u``, the VJP
      of the difference slope;
    * ``Y = (1/k) Σ_i (v·ε_i) ε_i`` has the known mean ``v`` (``v`` the inner
      estimator's VJP restricted to the active coordinates), so ``Y − v`` has
      mean zero whatever the inner model's error.

    Hence ``ĝ(c) = X − c (Y − v) = c·v + (1/k) Σ_i (gᵀ s_i − c·v·ε_i) ε_i`` has
    mean ``u`` for every ``c`` that does not depend on the current probes.
    ``c = 0`` is plain SPSA, ``c = 1`` the classic correction
    ``v + (1/k) Σ (gᵀ s_i − v·ε_i) ε_i``.  The variance (summed over
    coordinates) ``Var X − 2c·E[X·(Y−v)] + c²·E|Y−v|²`` is least at
    ``c* = E[X·(Y−v)] / E|Y−v|²`` (a covariance over a variance, since
    ``E[Y−v] = 0``).  For one sample with ``d`` active coordinates and
    Rademacher directions the variance is ``(d−1)/k · |u − c·v|²`` and
    ``c* = u·v / |v|²`` (Gaussian: ``d+1`` for ``d−1``, the same ``c*``):
    never worse than plain SPSA (``c = 0``) or the classic correction
    (``c = 1``), and far better than both when ``v`` has the right direction
    but the wrong scale.  It cannot beat ``(d−1)/k · |u|² (1 − cos²(u, v))``:
    with one probe in many dimensions even a good model's estimate stays noisy.

    ``coefficient="optimal"`` estimates ``c*`` online.  After each backward
    pass the wrapper adds this pass's ``Σ (X − c·v)·(Y − v)`` and
    ``Σ |Y − v|²`` (summed over the batch and the active coordinates; ``c``
    the coefficient this pass used) to running sums in which the older sums
    are weighted by :attr:`DECAY` ``= 0.9`` (a memory of about ten passes, so
    that ``c`` follows an inner model that is still learning), and sets ``c``
    to their ratio for the *next* pass.  Centring ``X`` by ``c·v`` does not
    change the expectation (``E[v·(Y−v)] = 0``) but removes the noise that
    ``u·(Y−v)`` would add, which for a good model is most of it.  Before any
    data, and while ``Σ |Y−v|²`` is zero (``v = 0``), ``c`` is :attr:`START`
    ``= 1``, the classic correction: a fresh wrapper around a pre-fitted model
    is good from its first pass, and a bad model costs one pass at ``c = 1``
    before ``c`` moves.  ``c`` is not clipped: ``c* > 1`` is right for a model
    whose VJP is too small (``v = u/2`` gives ``c* = 2``, and zero variance)
    and ``c* < 0`` for one that points the wrong way.  A pass whose sums are
    not finite leaves ``c`` and the sums unchanged.

    What remains unbiased: with a fixed ``coefficient``, and with the online
    ``c`` (computed from past passes only, hence independent of the current
    directions given the past), every estimate has conditional mean ``u``,
    the VJP of the difference slope — the device's VJP for an affine device,
    up to the ``O(step)`` truncation error otherwise.  A ``c`` estimated from
    the probes it multiplies would not be unbiased.  ``c`` minimises the
    per-sample variance summed over the batch; on θ coordinates, shared by
    the batch, the directions of all samples agree, and the variance of the
    batch-summed θ gradient is not what ``c`` minimises.

    The gate.  The correction's variance grows with the dimension, and a
    corrected estimate whose noise swamps its mean trains the layers before
    the device worse than no gradient (under Adam, which normalises the
    step).  So the estimate scores itself by its spread, at no cost, as
    :class:`~blackgrad.estimators.SPSA` does (the cosine between its
    batch-summed estimate and that sum's mean, from the variance of the
    residual responses ``gᵀs_i − c·v·ε_i``), and each part (inputs, θ) is
    corrected only while its cosine is high and at least that of what the
    inner estimator alone would pass, scored on the same scale (the
    batch-summed gradients against the corrected estimate, which is
    unbiased).  Otherwise the part passes the inner estimator's gradient (a
    learned inner estimator's VJP through its own gate, so withheld while
    that is shut too): never much worse than the inner estimator, but not unbiased.
    ``gate=None`` keeps the estimate unbiased at every pass, whatever its
    variance.

    The same probes are then handed to a learned inner estimator as training
    rows (after ``v`` was computed, so the correction stays unbiased); a
    learned inner estimator is asked only for its model's VJP and spends no
    probes of its own.  Any other inner estimator runs its own ``vjp``.

    Cost per ``vjp``: ``k·B`` evaluations (``2·k·B`` with ``scheme="central"``),
    plus the inner estimator's own cost if it is not a learned one; the
    coefficient costs no evaluation.

    Args:
        inner: the estimator to correct.
        directions: ``k``, probes per sample.
        antithetic: the older spelling of ``scheme``: True is ``"central"``.
        step: perturbation size; default: the calibrated profile's, else from the dtype.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        seed: seed of the wrapper's own generator.
        coefficient: ``"optimal"`` (the default: ``c`` estimated online, as
            above) or a fixed finite number (``1.0``: the classic correction,
            exactly as before this option existed; ``0.0``: plain SPSA).
        scheme: ``"forward"`` (default, reusing the forward output) or ``"central"``.
        gate: ``(low, high)`` fidelity cosines of the gate, or None (see
            :class:`~blackgrad.estimators.fidelity.FidelityMonitor`).
        gate_rows: samples to score before the gate may open.

    Attributes:
        c: the coefficient the next backward pass will use (read-only; kept
            in :meth:`state_dict` with the running sums).
    """

    _repr_fields = ("inner", "directions", "scheme", "step", "coefficient")
    #: weight of the older running sums at each pass (``coefficient="optimal"``)
    DECAY = 0.9
    #: the coefficient before any data (``coefficient="optimal"``)
    START = 1.0

    def __init__(
        self,
        inner: Estimator,
        directions: int = 1,
        antithetic: bool | None = None,
        step: float | None = None,
        distribution: str = "rademacher",
        seed: int | None = 0,
        coefficient: str | float = "optimal",
        scheme: str | None = None,
        gate: tuple[float, float] | None = DEFAULT_GATE,
        gate_rows: int = 256,
    ) -> None:
        if not isinstance(inner, Estimator):
            raise TypeError(f"inner must be an Estimator, got {inner!r}")
        if inner.differentiates_device:
            raise ValueError("Unbiased(Exact()) makes no sense: Exact is already exact")
        check_positive("directions", directions, integer=True)
        check_positive("step", step, allow_none=True)
        _check_option("distribution", distribution, DISTRIBUTIONS)
        self.coefficient = check_coefficient(coefficient)
        self.monitor = FidelityMonitor(gate, gate_rows)  # validates the gate
        self.inner = inner
        self.directions = directions
        self.scheme = resolve_scheme(scheme, antithetic, "forward")
        self.step = step
        self.distribution = distribution
        self.generator = _make_generator(seed)
        self._c = self.START if self.coefficient == "optimal" else self.coefficient
        self._cross = 0.0  # running Σ (X − c·v)·(Y − v)
        self._power = 0.0  # running Σ |Y − v|²
        self._fell_back = {"inputs": False, "params": False}  # the last pass's choice, per part

    @property
    def antithetic(self) -> bool:
        """True for central (two-sided) differences."""
        return self.scheme == "central"

    @property
    def c(self) -> float:
        """The control-variate coefficient the next backward pass will use."""
        return self._c

    @property
    def needs_profile(self) -> bool:
        return self.step is None or self.inner.needs_profile

    @property
    def supports_complex(self) -> bool:
        return self.inner.supports_complex

    def calibrate(self, profile) -> None:
        super().calibrate(profile)
        self.inner.calibrate(profile)

    def observe(self, alpha: Tensor, y: Tensor) -> None:
        self.inner.observe(alpha, y)

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        self._fell_back = {"inputs": False, "params": False}
        alpha, k, batch = query.alpha, self.directions, query.batch
        learned = isinstance(self.inner, LearnedEstimator)
        if learned:
            self.inner.prepare(query.dim, query.y.shape[1], alpha, shared=query.shared)
            with torch.no_grad():
                estimate = self.inner.upstream_vjp(alpha, query.grad_out, query.shared)
        else:
            estimate = query.rows(self.inner.vjp(prober, query))
        if query.n_active == 0:
            return estimate
        h = self.probe_step(alpha.dtype, 2 if self.antithetic else 1)
        delta = query.directions(k, self.generator, self.distribution)  # (k, B, d)
        rows = alpha.repeat(k, 1)
        y = None if self.antithetic else query.y.repeat(k, 1)
        group = query.direction_groups(k)
        slope = _directional_slopes(prober, rows, delta.reshape(k * batch, -1), h, y, query, group).reshape(k, batch, -1)
        v = estimate * query.active.to(estimate.dtype)
        c = self._c  # from past passes only: independent of this pass's directions
        along = torch.einsum("bm,kbm->kb", query.grad_out, slope)  # gᵀ s_i
        projected = torch.einsum("bd,kbd->kb", v, delta)  # v·ε_i
        residual = along - c * projected  # gᵀ s_i − c·v·ε_i
        corrected = c * v + torch.einsum("kb,kbd->bd", residual, delta) / k
        if self.coefficient == "optimal":
            self._update_coefficient(
                torch.einsum("kb,kbd->bd", along, delta) / k - c * v,  # X − c·v
                torch.einsum("kb,kbd->bd", projected, delta) / k - v,  # Y − v
            )
        if learned:
            self.inner.learn(
                rows, delta.reshape(k * batch, -1), slope.reshape(k * batch, -1), query.grad_out.repeat(k, 1), step=h, central=self.antithetic
            )
        # what the inner estimator alone would pass: scored beside the correction, on its scale
        fallback = self.inner.gated(estimate, query.shared) if learned else estimate
        self.monitor.score_spread(corrected, residual, delta, query.shared, baseline=fallback)
        return self._choose(corrected, fallback, query.shared)

    def _choose(self, corrected: Tensor, fallback: Tensor, shared: Tensor) -> Tensor:
        """Each part: the corrected estimate while its gate is open and it scores at least as well as the fallback."""
        if self.monitor.gate is None:  # ungated: unbiased at every pass
            return corrected
        shared = shared.to(corrected.device)
        parts = []
        for part in ("inputs", "params"):
            own, other = self.monitor.part(part), self.monitor.baseline_cosine(part)
            better = own is not None and (other is None or own.cosine >= other)
            self._fell_back[part] = not (self.monitor.factor(part) and better)
            parts.append(fallback if self._fell_back[part] else corrected)
        return torch.where(shared, parts[1], parts[0])

    def withholds(self, part: str) -> bool:
        """Where it passed the inner estimator's answer, it withholds what the inner one withheld."""
        return self._fell_back[part] and self.inner.withholds(part)

    @property
    def fidelity(self) -> Fidelity | None:
        """The running self-scored fidelity of the inputs' batch-summed estimate (None before any)."""
        return self.monitor.part("inputs")

    def part_fidelity(self, part: str) -> Fidelity | None:
        """The running fidelity of ``part`` (``"inputs"`` or ``"params"``)."""
        return self.monitor.part(part)

    def _update_coefficient(self, x: Tensor, z: Tensor) -> None:
        """Fold this pass's ``Σ x·z`` and ``Σ |z|²`` into the sums and set ``c`` for the next pass.

        ``x = X − c·v`` and ``z = Y − v`` of this pass (see the class docstring).
        """
        cross, power = _dot(x.detach(), z.detach()), _dot(z.detach(), z.detach())
        if not (math.isfinite(cross) and math.isfinite(power)):
            return
        self._cross = self.DECAY * self._cross + cross
        self._power = self.DECAY * self._power + power
        if self._power > 0:
            self._c = self._cross / self._power

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
        state["coefficient"] = {"c": self._c, "cross": self._cross, "power": self._power}
        state["fidelity"] = self.monitor.state_dict()
        return state

    def check_state(self, state) -> None:
        super().check_state(state)
        self.inner.check_state(state["inner"])

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.inner.load_state_dict(state["inner"])
        saved = state.get("coefficient")  # absent in states saved before the coefficient existed
        if saved is not None and self.coefficient == "optimal":
            self._c, self._cross, self._power = float(saved["c"]), float(saved["cross"]), float(saved["power"])
        if "fidelity" in state:  # absent from states saved before the monitor existed
            self.monitor.load_state_dict(state["fidelity"])
