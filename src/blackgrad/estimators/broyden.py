"""The rank-one (Broyden) secant update of one Jacobian kept across steps."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimator, ProberLike, VJPQuery, _make_generator, _steps_taken, check_positive
from .fidelity import Fidelity, FidelityMonitor

#: Broyden's gate opens at 0.8 and closes below 0.6: stricter than the learned
#: estimators' (0.4, 0.6), because one Jacobian for every input can predict the
#: probes well and still give a gradient that harms (see the class docstring)
BROYDEN_GATE = (0.6, 0.8)


class Broyden(Estimator):
    """One Jacobian estimate ``J`` (``m × d``) refined by rank-one secant updates.

    The secant view of one sample: a pair ``(dx, df)`` says only how ``J``
    acts along ``dx``, so the smallest change that satisfies ``J dx = df`` is
    the rank-one update ``J ← J + (df − J dx) dxᵀ / (dxᵀdx)``.  The estimate is
    kept online across training steps; each ``vjp`` first spends ``probes``
    random (Rademacher) probes per sample, applies their updates one by one,
    then returns ``gᵀ J``.  With ``observe_forward=True`` the differences
    between consecutive forward samples update ``J`` too, for free.

    One ``J`` for all inputs: exact for linear devices once the probes have
    spanned the input space, an averaged Jacobian for nonlinear ones (use
    :class:`~blackgrad.estimators.LeastSquares` for a local one).

    Each probe is first scored against the Jacobian as it stands (a
    :class:`~blackgrad.estimators.fidelity.FidelityMonitor`), and the VJP is
    passed upstream through the monitor's gate: one Jacobian for a device
    whose Jacobian varies strongly with its input predicts little, and its
    gradient then trains worse than none.  The gate is stricter than the
    learned estimators' (:data:`BROYDEN_GATE`): on the benchmark's coupled
    oscillators (defaults section, seeds 0 and 1) Broyden() with a
    (0.4, 0.6) gate trained to 0.669 and 0.496 against readout only's 0.750
    and 0.744 (its probe score ended at 0.25 and 0.86: a high score did not
    make its gradient a good one); with (0.6, 0.8) to 0.754 and 0.743, and on
    the six other tasks both gates gave the same runs.

    Cost per ``vjp``: ``probes·B`` evaluations.

    Args:
        probes: probes per sample at each backward pass (0: learn from forward
            data only, which needs ``observe_forward=True``; nothing is then
            scored, and nothing gated).
        step: perturbation size; default: the calibrated profile's, else from the dtype.
        observe_forward: also learn from consecutive forward samples.
        gate: ``(low, high)`` fidelity cosines of the gate, or None (see
            :class:`~blackgrad.estimators.fidelity.FidelityMonitor`).
        gate_rows: probes to score before the gate may open.
        seed: seed of the estimator's own generator.
    """

    _repr_fields = ("probes", "step", "observe_forward")

    def __init__(
        self,
        probes: int = 1,
        step: float | None = None,
        observe_forward: bool = False,
        gate: tuple[float, float] | None = BROYDEN_GATE,
        gate_rows: int = 256,
        seed: int | None = 0,
    ) -> None:
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
            raise ValueError(f"probes must be a non-negative int, got {probes!r}")
        if probes == 0 and not observe_forward:
            raise ValueError("Broyden with probes=0 learns nothing unless observe_forward=True")
        check_positive("step", step, allow_none=True)
        self.monitor = FidelityMonitor(gate, gate_rows)
        self.probes = probes
        self.step = step
        self.observe_forward = bool(observe_forward)
        self.generator = _make_generator(seed)
        self.jacobian: Tensor | None = None

    def _ensure(self, m: int, d: int, like: Tensor) -> Tensor:
        if self.jacobian is None:
            self.jacobian = torch.zeros(m, d, dtype=like.dtype, device=like.device)
        elif self.jacobian.shape != (m, d):
            raise ValueError(f"Broyden holds a {tuple(self.jacobian.shape)} Jacobian but the device now maps {d} -> {m}")
        return self.jacobian.to(like)

    def _update(self, jacobian: Tensor, dx: Tensor, df: Tensor) -> Tensor:
        """Apply the rank-one updates of the pairs ``dx (N, d)``, ``df (N, m)`` in order."""
        for step_x, step_f in zip(dx, df):
            norm = step_x @ step_x
            if norm > 0:
                jacobian = jacobian + torch.outer(step_f - jacobian @ step_x, step_x) / norm
        return jacobian

    def observe(self, alpha: Tensor, y: Tensor) -> None:
        if not self.observe_forward or alpha.shape[0] < 2:
            return
        jacobian = self._ensure(y.shape[1], alpha.shape[1], alpha)
        self.jacobian = self._update(jacobian, alpha.diff(dim=0), y.diff(dim=0))

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        alpha = query.alpha
        jacobian = self._ensure(query.y.shape[1], query.dim, alpha)
        if self.probes > 0 and query.n_active > 0:
            h = self.probe_step(alpha.dtype, 1)
            dx = h * query.directions(self.probes, self.generator)  # (P, B, d)
            probes = (alpha + dx).reshape(-1, query.dim)
            df = query.evaluate(prober, probes, query.direction_groups(self.probes)).reshape(self.probes, query.batch, -1) - query.y
            dx = _steps_taken(alpha.repeat(self.probes, 1), probes)
            df = df.reshape(-1, df.shape[-1])
            g = query.grad_out.repeat(self.probes, 1)
            g = g / g.norm(dim=1, keepdim=True).clamp(min=1e-30)
            # scored before the Jacobian learns from these pairs: a held-out test
            self.monitor.score(((dx @ jacobian.T) * g).sum(1), (df * g).sum(1), dx, query.shared.cpu())
            jacobian = self._update(jacobian, dx, df)
        self.jacobian = jacobian
        grad = query.grad_out @ jacobian
        return grad if self.probes == 0 else self.monitor.apply(grad, query.shared)

    def withholds(self, part: str) -> bool:
        return self.probes > 0 and self.monitor.factor(part) == 0

    @property
    def fidelity(self) -> Fidelity | None:
        """The running fidelity of the Jacobian on the inputs' probes, before it learned from them."""
        return self.monitor.part("inputs")

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        return self.probes * batch if d > 0 else 0

    def state_dict(self):
        state = super().state_dict()
        state["jacobian"] = None if self.jacobian is None else self.jacobian.clone()
        state["fidelity"] = self.monitor.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.jacobian = None if state.get("jacobian") is None else state["jacobian"].clone()
        if "fidelity" in state:
            self.monitor.load_state_dict(state["fidelity"])
