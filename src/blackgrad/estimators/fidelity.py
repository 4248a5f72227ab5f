"""A fidelity monitor: how well an estimator's model predicts probes it has not yet used.

Estimators that keep a model of the device — the learned ones, and
:class:`~blackgrad.estimators.Broyden`'s one Jacobian — can test it for free:
each new probe row measures ``gᵀs``, the loss gradient ``g`` flowing at that
point times the device's slope ``s`` along a random direction ``ε``, and the
model predicts it, before it learns from the row, as ``v̂·ε`` from its own VJP
``v̂``.  Since ``E[(a·ε)(b·ε)] = a·b`` for Rademacher ``ε``, the cosine between
predictions and measurements over many rows estimates the cosine between the
model's VJP and the device's — pulled down by the measurement noise.  Where
the device was calibrated, the noise's known share of the measured responses'
power is taken out (at most halving it, so that an overestimated noise can
at most raise a cosine by √2).

The monitor keeps that running score for the inputs ``x`` and the device
parameters ``θ`` apart, and turns it into a *gate*: the
factor each part's VJP is passed upstream with.  With an optimiser such as
Adam, which normalises the step, a gradient of noise moves the layers before
the device as far as a true one; a closed gate leaves them where they are.

θ is scored on what is passed upstream for it: its gradient summed over the
batch, where a model's bias adds up instead of averaging out and each
sample's measurement noise averages out instead of adding up.  Rows that
moved θ alone, along one direction ``ε``, together measure ``Σ_b g_bᵀ J_θ(b) ε``,
the summed gradient's component along ``ε``, when their responses are
summed (weighted by each row's ``|g_b|``); each such sum is one scored
pair.  Row by row, on a noisy device, each row's noise swamps its share of
the signal, and a good θ gradient scores below the gate.

An estimator with a prior passes its correction of the prior in the share
that fits held-out rows best (:class:`CorrectionShare`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: the parts of ``α`` scored and gated apart: the inputs ``x`` and the device parameters ``θ``
PARTS = ("inputs", "params")
#: the default gate: opens at fidelity 0.6, closes again below 0.4
DEFAULT_GATE = (0.4, 0.6)


@dataclass(frozen=True)
class Fidelity:
    """A running score of a model's VJP on probe rows it had not learned from.

    Attributes:
        cosine: running cosine between predicted and measured responses.
        relative_error: running ``Σ (p − t)² / Σ t²``.
        rows: probe rows scored so far.
    """

    cosine: float
    relative_error: float
    rows: int

    def __repr__(self) -> str:
        return f"Fidelity(cosine={self.cosine:.3f}, relative_error={self.relative_error:.3f}, rows={self.rows})"


def check_gate(gate: Any, gate_rows: Any) -> tuple[float, float] | None:
    """Validate the ``gate`` and ``gate_rows`` options; returns the gate as floats."""
    if isinstance(gate_rows, bool) or not isinstance(gate_rows, int) or gate_rows < 0:
        raise ValueError(f"gate_rows must be a non-negative int, got {gate_rows!r}")
    if gate is None:
        return None
    if (
        not isinstance(gate, (tuple, list))
        or len(gate) != 2
        or any(isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) for g in gate)
        or not -1 <= gate[0] < gate[1] <= 1
    ):
        raise ValueError(f"gate must be None or two cosines (low, high) with -1 <= low < high <= 1, got {gate!r}")
    return float(gate[0]), float(gate[1])


def _summed_by_direction(
    predicted: Tensor, measured: Tensor, noise: Tensor, weight: Tensor, theta_direction: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Responses summed over the rows that share a θ direction: one ``(predicted, measured, noise)`` per direction.

    Weighted by each row's ``weight`` and divided by the group's total
    weight, so that each direction's pair is on the scale of one row and a
    batch with larger gradients does not outweigh the rest; the noise
    variances add with the squared weights.
    """
    _, group = torch.unique(theta_direction, dim=0, return_inverse=True)
    total = torch.zeros(int(group.max()) + 1, dtype=weight.dtype, device=weight.device).index_add_(0, group, weight)
    total = total.clamp(min=1e-30)

    def summed(values: Tensor, power: int = 1) -> Tensor:
        return torch.zeros_like(total).index_add_(0, group, weight.pow(power) * values) / total.pow(power)

    return summed(predicted), summed(measured), summed(noise, 2)


class CorrectionShare:
    """How much of a learned correction to pass on top of its prior, per part: a least-squares weight.

    An estimator with a prior (a twin) passes ``prior + κ · correction`` for
    each part (inputs, θ) instead of their plain sum.  ``κ`` is the weight
    that best fits held-out rows — scored before either model trained on
    them — ``κ = Σ r c / Σ c²``, with ``r`` a row's measured response less
    the prior's prediction and ``c`` the correction's prediction, clamped to
    ``[0, 1]``.  Measurement noise in ``r`` is independent of ``c``, so it
    averages out of the numerator: a correction that has only fitted noise
    gets ``κ`` near 0 (the prior alone passes), one that explains what the
    prior leaves gets ``κ`` near 1.  Running sums with the monitor's decay,
    so that ``κ`` follows the correction as it learns.
    """

    DECAY = 0.9

    def __init__(self) -> None:
        self.sums = torch.zeros(len(PARTS), 2, dtype=torch.float64)  # Σ r·c, Σ c² per part

    def weights(self) -> Tensor:
        """``κ`` ``(2,)`` for (inputs, θ); 1 (the plain sum) for a part before any row."""
        cross, power = self.sums[:, 0], self.sums[:, 1]
        kappa = torch.where(power > 0, cross / power.clamp(min=1e-300), torch.ones_like(power))
        return kappa.clamp(0.0, 1.0)

    def add(self, residual: Tensor, correction: Tensor, moved: Tensor) -> None:
        """Rows' ``residual`` ``(N,)``, the correction's part of each prediction ``(N, 2)``, and which parts each row moved ``(N, 2)``.

        A row that moved both parts counts for both, each weight fitted on
        its own term with the other's counted as noise (by default a
        learned estimator's rows move one part each).
        """
        residual, correction = residual.detach().double(), correction.detach().double()
        for index in range(len(PARTS)):
            mask = moved[:, index]
            if bool(mask.any()):
                c = correction[mask, index]
                added = torch.stack([(residual[mask] * c).sum(), c.pow(2).sum()]).cpu()
                self.sums[index] = self.DECAY * self.sums[index] + added

    def apply(self, grad: Tensor, prior: Tensor, shared: Tensor) -> Tensor:
        """``prior + κ (grad − prior)`` per part, ``grad`` the whole estimate ``(B, d)`` (prior and correction)."""
        kappa = self.weights().to(device=grad.device, dtype=grad.real.dtype)
        factor = torch.where(shared.to(grad.device), kappa[1], kappa[0])
        return prior + factor * (grad - prior)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"].clone()


class FidelityMonitor:
    """Running fidelity per part, and the gate it sets.

    The gate is all or nothing, with hysteresis: a part's gate opens once
    its fidelity reaches ``high`` (after ``gate_rows`` rows) and closes again
    only if it falls below ``low``.  Not a ramp, and not a flicker: Adam
    normalises the step, so a VJP scaled by 0.2 moves the layers as far as the
    whole one, and a gradient that follows a run of zeros (its second-moment
    estimate decayed) moves them further still.  A shut part's VJP is zero
    here (:meth:`apply`); the estimator then says it withholds the part
    (:meth:`~blackgrad.estimators.Estimator.withholds`), and a
    :class:`~blackgrad.BlackBox` passes None for it, so that the optimiser
    skips the layers before the device and keeps no state for them until
    the gate opens.

    Args:
        gate: ``(low, high)`` fidelity cosines (see above); None: never gated.
        gate_rows: probe rows of a part to score before its gate may open.
    """

    #: weight kept by the running sums at each scored batch (a memory of about ten batches)
    DECAY = 0.9

    def __init__(self, gate: tuple[float, float] | None = DEFAULT_GATE, gate_rows: int = 256) -> None:
        self.gate = check_gate(gate, gate_rows)
        self.gate_rows = gate_rows
        self.sums = torch.zeros(len(PARTS), 4, dtype=torch.float64)  # Σ p·t, Σ p², Σ t², Σ noise² per part
        self.baseline = torch.zeros(len(PARTS), 2, dtype=torch.float64)  # Σ b·Σ estimate, Σ |b|² per part (score_spread)
        self.rows = [0] * len(PARTS)
        self.open = [False] * len(PARTS)

    @property
    def scored(self) -> int:
        """Rows scored so far, whatever part they moved."""
        return max(self.rows)

    def score(
        self,
        predicted: Tensor,
        measured: Tensor,
        direction: Tensor,
        shared: Tensor | None,
        noise: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> None:
        """Add rows: the model's ``predicted`` and the ``measured`` responses ``(N,)``.

        A row counts for the inputs if its ``direction`` ``(N, d)`` moved any
        input, for the parameters if it moved any coordinate marked in
        ``shared`` ``(d,)`` (None: no parameters).  ``noise`` ``(N,)``: the
        variance the measurement noise adds to each measured response, if known.
        ``weight`` ``(N,)``: each row's share of the batch sum (the norm of
        the loss gradient it was measured with, the responses being of the
        normalised gradient); with it, the rows that moved θ alone are scored
        on their sum, one pair per θ direction (module docstring).  Rows that
        moved the inputs too (a twin's, an ``Unbiased`` wrapper's) are scored
        one by one, as without ``weight``: summed, they let
        ``Unbiased(DigitalTwin())`` train below readout only on three of the
        benchmark's seven tasks (BENCHMARKS.md).
        """
        predicted, measured = predicted.detach().double(), measured.detach().double()
        noise = torch.zeros_like(measured) if noise is None else noise.detach().double().to(measured.device)
        moved = direction != 0
        shared = torch.zeros(moved.shape[1], dtype=torch.bool) if shared is None else shared
        shared = shared.to(moved.device)
        moved_inputs, moved_params = (moved & ~shared).any(1), (moved & shared).any(1)
        for index, mask in enumerate((moved_inputs, moved_params)):
            p, t, v = predicted[mask], measured[mask], noise[mask]
            if not p.numel():
                continue
            if index == 1 and weight is not None:
                alone = ~moved_inputs[mask]  # rows that moved θ alone are summed; rows that moved both stay rows
                if bool(alone.any()):
                    ps, ts, vs = _summed_by_direction(
                        p[alone], t[alone], v[alone], weight.detach().double()[mask][alone], direction[mask][alone][:, shared]
                    )
                    p, t, v = torch.cat([ps, p[~alone]]), torch.cat([ts, t[~alone]]), torch.cat([vs, v[~alone]])
            sums = torch.stack([(p * t).sum(), p.pow(2).sum(), t.pow(2).sum(), v.sum()]).cpu()
            self.sums[index] = self.DECAY * self.sums[index] + sums
            self.rows[index] += int(mask.sum())
            self._move_gate(index)

    def score_spread(
        self, estimate: Tensor, responses: Tensor, directions: Tensor, shared: Tensor, baseline: Tensor | None = None
    ) -> None:
        """Score a random-direction estimate by its own spread (no model to compare with).

        ``estimate`` ``(B, d)`` is ``v + (1/k) Σ_i r_i ε_i`` with ``k``
        directions ``ε_i`` ``(k, B, d)`` (Rademacher or Gaussian, zero where
        inactive, θ's coordinates shared by the batch) and their responses
        ``r_i`` ``(k, B)``, and any fixed ``v``.  Each part is scored on its
        sum over the batch — for θ the gradient passed upstream, for the
        inputs the gradient of a bias just before the device, the simplest
        upstream parameter.  With ``P`` coordinates in a part, a single
        direction's term ``r ε`` has variance about ``P·E[r²]`` summed over
        them, so the variance of the batch sum is estimated as
        ``P/k² Σ_{i,b} r²`` for the inputs (independent across the batch) and
        ``P/k² Σ_i (Σ_b r)²`` for θ (one direction per ``i`` for the whole
        batch).  The sum's power less that variance estimates the power of
        its mean, and the cosine between the sum and its mean is
        ``sqrt(1 − variance / power)``.  (The estimate counts the
        measurement noise in ``r`` as variance, as it should, and errs high
        by ``|mean|²/P`` per term for Rademacher directions: a little
        pessimistic in few dimensions.)  Each scored pass counts as ``B`` rows.

        A ``baseline`` ``(B, d)`` — another gradient for the same batch, drawn
        before these directions (an inner model's, say) — is scored on the
        same scale: the estimate is unbiased, so its batch sum's product with
        the baseline's estimates the baseline's product with the true sum
        (:meth:`baseline_cosine`).
        """
        estimate, responses = estimate.detach().double(), responses.detach().double()
        k, batch = responses.shape
        moved = (directions != 0).any(0).any(0).cpu()  # (d,) active coordinates
        shared = shared.cpu()
        for index, mask in enumerate((moved & ~shared, moved & shared)):
            count = int(mask.sum())
            if count == 0 or batch == 0:
                continue
            summed = estimate[:, mask.to(estimate.device)].sum(0)
            power = summed.pow(2).sum()
            if baseline is not None:
                other = baseline.detach().double()[:, mask.to(estimate.device)].sum(0)
                scored = torch.stack([(other * summed).sum(), other.pow(2).sum()]).cpu()
                self.baseline[index] = self.DECAY * self.baseline[index] + scored
            if index == 0:
                variance = count * responses.pow(2).sum() / k**2
            else:
                variance = count * responses.sum(1).pow(2).sum() / k**2
            signal = power - variance
            sums = torch.stack([signal, power, signal, torch.zeros_like(power)]).cpu()
            self.sums[index] = self.DECAY * self.sums[index] + sums
            self.rows[index] += batch
            self._move_gate(index)

    def _move_gate(self, index: int) -> None:
        if self.gate is None:
            return
        cosine = self.part(PARTS[index]).cosine
        low, high = self.gate
        if self.open[index]:
            self.open[index] = cosine >= low
        else:
            self.open[index] = self.rows[index] >= self.gate_rows and cosine >= high

    def part(self, part: str) -> Fidelity | None:
        """The running fidelity of ``part`` (``"inputs"`` or ``"params"``); None before any row."""
        index = PARTS.index(part)
        if self.rows[index] == 0:
            return None
        pt, pp, tt, noise = self.sums[index].tolist()
        signal = max(tt - noise, tt / 2)  # the measured power less the noise's share, at most halved
        cosine = min(pt / math.sqrt(pp * signal), 1.0) if pp > 0 and signal > 0 else 0.0
        relative = (pp - 2 * pt + signal) / signal if signal > 0 else float("inf")
        return Fidelity(cosine=cosine, relative_error=relative, rows=self.rows[index])

    def baseline_cosine(self, part: str) -> float | None:
        """The running cosine of the ``baseline`` given to :meth:`score_spread` with the true batch sums.

        None before any baseline with a non-zero sum, or while the spread
        leaves no signal to compare with.
        """
        index = PARTS.index(part)
        cross, power = self.baseline[index].tolist()
        signal = float(self.sums[index, 2])
        if power <= 0 or signal <= 0:
            return None
        return max(-1.0, min(cross / math.sqrt(power * signal), 1.0))

    def factor(self, part: str) -> float:
        """The factor ``part``'s VJP is passed upstream with."""
        if self.gate is None:
            return 1.0
        return 1.0 if self.open[PARTS.index(part)] else 0.0

    def apply(self, grad: Tensor, shared: Tensor, fallback: Tensor | None = None) -> Tensor:
        """``grad`` ``(B, d)`` with each part scaled by its gate.

        With a ``fallback`` ``(B, d)``, a shut part passes the fallback instead of zero.
        """
        shared = shared.to(grad.device)
        if fallback is None:
            return torch.where(shared, grad * self.factor("params"), grad * self.factor("inputs"))
        params = grad if self.factor("params") else fallback
        inputs = grad if self.factor("inputs") else fallback
        return torch.where(shared, params, inputs)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "rows": list(self.rows), "open": list(self.open), "baseline": self.baseline.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.rows = state["sums"].clone(), [int(r) for r in state["rows"]]
        if self.sums.shape[1] == 3:  # saved before the noise sum existed
            self.sums = torch.cat([self.sums, torch.zeros(len(PARTS), 1, dtype=torch.float64)], 1)
        self.open = [bool(o) for o in state["open"]]
        # absent from states saved before baselines were scored
        self.baseline = state["baseline"].clone() if "baseline" in state else torch.zeros(len(PARTS), 2, dtype=torch.float64)
