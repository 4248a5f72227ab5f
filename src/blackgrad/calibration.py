"""Calibration: what an estimator must know about a device before it probes it.

A probe measures a slope as a difference of two device outputs divided by the
step between their inputs.  If the step is too small for the device, the
difference is the device's noise or the spacing of its output levels, not its
response, and a gradient built from it is noise that an optimiser such as
Adam follows as readily as a true one.  The float-precision default step
(3e-4 in float32) is right for a clean function and wrong for nearly every
physical device.

:func:`calibrate` measures, on a few points of real inputs and at a stated
cost, what the estimators need:

* the output noise: the spread of repeated evaluations at one input;
* the quantisation step: the spacing of the output levels (an ADC), if the
  outputs sit on a lattice;
* the output scale and the input scale;
* the probe step: the smallest step along a random ±1 direction (every
  coordinate moved by ``±h``, as the probing estimators move them) at which
  the output difference rises ``snr`` times above the noise floor;
* the length scale: the step at which the slope along such a direction has
  changed by half, i.e. how fast the response varies.

It returns a :class:`DeviceProfile`.  :class:`~blackgrad.BlackBox` calibrates
itself on its first training batch unless told otherwise, and hands the
profile to its estimator, which takes its step from it when none was given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
from torch import Tensor

from .estimators.base import evaluate_grouped, join

#: steps tried, as multiples of the input scale: 2**-12 … 1
STEP_GRID = tuple(2.0**k for k in range(-12, 1))


@dataclass(frozen=True)
class DeviceProfile:
    """What calibration measured about a device (see :func:`calibrate`).

    Attributes:
        noise: standard deviation of one output over repeated evaluations at
            the same input (root mean square over outputs and points).
        quantum: spacing of the output levels; 0.0 when the outputs do not
            sit on a lattice.
        scale: root-mean-square spread of the outputs across the points.
        input_scale: root-mean-square spread of the inputs across the batch
            (1.0 when the batch does not vary).
        step: the probe step per coordinate along random ±1 directions, or
            None for a clean (noise-free, unquantised) device, whose
            estimators keep their float-precision default.
        length_scale: the step along such directions at which the measured
            slope has changed by half from its value at ``step``; None if it
            changed less over every step tried (up to half the input scale).
        evaluations: device evaluations calibration spent.
    """

    noise: float
    quantum: float
    scale: float
    input_scale: float
    step: float | None
    length_scale: float | None
    evaluations: int

    @property
    def clean(self) -> bool:
        """True for a deterministic function with continuous outputs."""
        return self.noise == 0.0 and self.quantum == 0.0

    @property
    def noise_floor(self) -> float:
        """The error of one output reading: noise and rounding to the levels together."""
        return math.sqrt(self.noise**2 + self.quantum**2 / 12)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "DeviceProfile":
        names = {f.name for f in fields(cls)}
        missing = names - set(state)
        if missing:
            raise ValueError(f"a DeviceProfile state needs {sorted(names)}; missing {sorted(missing)}")
        return cls(**{name: state[name] for name in names})

    def __repr__(self) -> str:
        def number(value: float | None) -> str:
            return "None" if value is None else f"{value:.3g}"

        kind = "clean" if self.clean else "noisy" if self.quantum == 0 else "quantised" if self.noise == 0 else "noisy, quantised"
        return (
            f"DeviceProfile({kind}: noise={number(self.noise)}, quantum={number(self.quantum)}, "
            f"scale={number(self.scale)}, input_scale={number(self.input_scale)}, step={number(self.step)}, "
            f"length_scale={number(self.length_scale)}, evaluations={self.evaluations})"
        )


def calibration_cost(points: int, repeats: int, directions: int, steps: int = len(STEP_GRID)) -> int:
    """Evaluations :func:`calibrate` spends: ``points · (repeats + directions · steps)``."""
    return points * (repeats + directions * steps)


def calibrate(
    fun: Callable[..., Any],
    x: Tensor,
    theta: Tensor | None = None,
    *,
    points: int = 8,
    repeats: int = 8,
    directions: int = 2,
    snr: float = 2.0,
    seed: int = 0,
    numpy: bool = False,
) -> DeviceProfile:
    """Measure a device's noise, output levels, scales and probe step on inputs ``x``.

    Args:
        fun: the device, ``fun(x)`` or ``fun(x, theta)`` as for
            :class:`~blackgrad.BlackBox` — or a :class:`~blackgrad.prober.Prober`,
            whose ledger then counts the evaluations as ``calibration``.
        x: a batch of real inputs ``(B, *in_shape)``; the first ``points``
            rows are used, and the whole batch gives the input scale.
        theta: the device parameters ``(p,)`` (probed like the inputs), or None.
        points: input points to measure at (at most ``B``).
        repeats: evaluations of each point for the noise.
        directions: random ±1 directions per point for the step scan.
        snr: how far above the noise floor a probe difference must rise:
            its root mean square over the outputs must reach ``snr`` times the
            noise floor's.
        seed: seed of the scan directions.
        numpy: call ``fun`` with numpy arrays (ignored for a prober).

    Cost: exactly :func:`calibration_cost` ``(points, repeats, directions)``
    evaluations (8 · (8 + 2 · 13) = 272 with the defaults), made in
    ``1 + len(STEP_GRID)`` requests (one device call each, and one per
    direction when θ is probed).
    """
    from .prober import Prober

    _check_count("points", points)
    _check_count("repeats", repeats, least=2)
    _check_count("directions", directions)
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not math.isfinite(snr) or snr <= 0:
        raise ValueError(f"snr must be a positive number, got {snr!r}")
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError("calibrate needs a non-empty batch x of shape (B, *in_shape)")
    if not x.is_floating_point():
        raise TypeError(f"calibrate needs real floating-point inputs, got {x.dtype}")
    if isinstance(fun, Prober):
        prober = fun
        flat = x.detach().reshape(x.shape[0], prober.n_x)
    else:
        flat = x.detach().reshape(x.shape[0], -1)
        n_params = 0 if theta is None else theta.numel()
        prober = Prober(fun, tuple(x.shape[1:]), n_params=n_params, numpy=numpy, name=getattr(fun, "name", None))
    theta = None if theta is None else theta.detach().reshape(-1).to(flat)
    alpha = join(flat, theta)

    def evaluate(rows: Tensor, group: Tensor | None = None) -> Tensor:
        # the rows' θ groups are known where they are drawn: the prober need not find them
        return evaluate_grouped(prober.evaluate, rows, prober.n_x, theta, group, kind="calibration")

    base = alpha[: min(points, alpha.shape[0])]
    count, d = base.shape
    # the whole calibration fits the budget, or none of it is spent
    prober.check_budget(calibration_cost(count, repeats, directions), "calibration")
    spread = flat.std(0, unbiased=False).pow(2).mean().sqrt().item() if flat.shape[0] > 1 else 0.0
    input_scale = spread if spread > 0 else 1.0

    repeated = evaluate(base.repeat(repeats, 1)).reshape(repeats, count, -1)
    mean = repeated.mean(0)
    noise = repeated.var(0, unbiased=True).mean().sqrt().item()

    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (directions, count, d), generator=generator).mul_(2).sub_(1).to(alpha)
    signs[:, :, prober.n_x :] = signs[:, :1, prober.n_x :].clone()  # θ moves alike for all points: one call per direction
    starts = base.expand(directions, count, d).reshape(-1, d)
    group = None if theta is None else torch.arange(directions, device=alpha.device).repeat_interleave(count)
    signs = signs.reshape(-1, d)
    steps = [input_scale * fraction for fraction in STEP_GRID]
    slopes, rises, scanned = [], [], [repeated.reshape(-1, mean.shape[1])]
    for h in steps:
        moved = starts + h * signs
        taken = ((moved - starts) * signs).sum(1, keepdim=True) / d  # the step really taken, after rounding
        y = evaluate(moved, group)
        scanned.append(y)
        difference = y - mean.repeat(directions, 1)
        rises.append(difference.pow(2).mean(1).sqrt())
        slopes.append(difference / taken.clamp(min=torch.finfo(alpha.dtype).tiny))
    values = torch.cat(scanned)
    quantum = _level_spacing(values)
    scale = mean.std(0, unbiased=False).pow(2).mean().sqrt().item() if count > 1 else values.std().item()

    floor = math.sqrt(noise**2 + quantum**2 / 12) * math.sqrt(1 + 1 / repeats)  # of one difference
    step, length_scale = _choose_step(rises, slopes, steps, floor, snr)
    return DeviceProfile(
        noise=noise,
        quantum=quantum,
        scale=scale,
        input_scale=input_scale,
        step=step,
        length_scale=length_scale,
        evaluations=calibration_cost(count, repeats, directions, len(steps)),
    )


def _check_count(name: str, value: Any, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _level_spacing(values: Tensor) -> float:
    """The spacing of the lattice the outputs sit on, or 0.0 if they sit on none.

    The candidate is the smallest gap between distinct values of one output
    (or a half, third or quarter of it); it is accepted when every gap
    between neighbouring distinct values of every output is a whole multiple
    of it.  Continuous outputs, noisy or not, have gaps in no such ratio.
    """
    values = values.detach().double().cpu()
    tolerance = 64 * torch.finfo(torch.float32).eps * max(values.abs().max().item(), 1e-30)
    gaps = []
    for column in values.T:
        levels = torch.unique(column)
        gap = levels.diff()
        gaps.append(gap[gap > tolerance])
    gaps = torch.cat(gaps)
    if gaps.numel() < 8:  # too few distinct levels to tell a lattice from chance
        return 0.0
    smallest = gaps.min().item()
    for divisor in (1, 2, 3, 4):
        quantum = smallest / divisor
        ratio = gaps / quantum
        if bool(((ratio - ratio.round()).abs() < 0.02).all()):
            return quantum
    return 0.0


def _choose_step(
    rises: list[Tensor], slopes: list[Tensor], steps: list[float], floor: float, snr: float
) -> tuple[float | None, float | None]:
    """The probe step that balances noise against the bias of a finite step; and the length scale.

    A one-sided difference slope along a direction errs in two ways: the
    noise floor over the step, relatively ``floor / (a·h)`` with ``a`` the
    response's rate of change, and the curvature across the step, relatively
    about ``h / L`` with ``L`` the length scale over which the slope changes
    by its own size.  Their sum is smallest at ``h = sqrt(floor · L / a)``.
    Both ``a`` and ``L`` are read off the scan: ``a`` at the smallest step whose
    difference rises clearly (``snr`` times) above the noise floor, ``L`` from
    how the slope changes between consecutive steps that do.  A clean device
    (no floor) keeps the float-precision default step (None).
    """
    signal = [max(float(r.pow(2).median()) - floor**2, 0.0) ** 0.5 for r in rises]
    clear = [k for k, value in enumerate(signal) if value >= snr * floor and value > 0]
    if not clear:  # the response never rose above the noise: the largest step tried is the best guess
        return (None if floor == 0 else steps[-1]), None
    first = clear[0]
    rate = signal[first] / steps[first]
    estimates = []
    for k in clear[1:]:
        previous, current = slopes[k - 1], slopes[k]
        size = previous.pow(2).mean(1).sqrt().median().item()
        change = (current - previous).pow(2).mean(1).sqrt().median().item()
        noise = floor * math.sqrt(1 / steps[k] ** 2 + 1 / steps[k - 1] ** 2)  # of the change, in slope units
        change = max(change**2 - noise**2, 0.0) ** 0.5
        relative = change / max(size, 1e-30)
        if 0 < relative < 1.0 and k - 1 in clear:  # the bias still grows in proportion to the step
            # s(h) ≈ s₀ (1 + h / L): the change from h/2 to h is (h/2) / L
            estimates.append(steps[k] / (2 * relative))
    length_scale = float(torch.tensor(estimates).median()) if estimates else None
    if floor == 0:
        return None, length_scale
    if length_scale is None:  # no curvature seen up to the largest clear step: stay at the first clear one
        return steps[first], None
    best = math.sqrt(floor * length_scale / rate)
    return min(max(best, steps[0]), steps[-1]), length_scale


__all__ = ["DeviceProfile", "calibrate", "calibration_cost", "STEP_GRID"]
