"""Experiment ``autodiff-basics``: six ways to differentiate ``z_20(x)``.

The example, a classic of automatic-differentiation lectures, is the recursion ``z_{n+1} = sin(z_n·x) + x``, ``z_0 = 0``,
run for 20 steps.  We compute ``dz_20/dx`` by

(a) the analytic recursion ``dz_{n+1} = cos(z_n x)(z_n + x dz_n) + 1``,
(b) forward mode with dual numbers (operator overloading, tangent carried along),
(c) reverse mode written out: a tape of the ``z_n``, then a backward adjoint sweep,
(d) PyTorch autograd,
(e) central differences ``(f(x+h) − f(x−h)) / 2h``,
(f) the complex step ``Im f(x + ih) / h`` (complex128),

check that (b)–(d) and (f) agree with (a) to rounding, and show the step-size
trade-off: central differences have a V-shaped error (truncation ``O(h²)`` for
large ``h``, cancellation ``O(ε/h)`` for small ``h``) while the complex step,
which subtracts nothing, keeps improving down to machine precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from blackgrad.experiments import _common
from blackgrad.experiments._common import claim, save_figure, subplots, write_results

NAME = "autodiff-basics"
TITLE = "Automatic differentiation basics: z_{n+1} = sin(z_n x) + x by six methods"

#: the exact methods, compared with the analytic recursion
EXACT_METHODS = ("forward_dual", "reverse_tape", "torch_autograd", "complex_step")


@dataclass
class Config:
    """Parameters of the ``autodiff-basics`` experiment."""

    n_steps: int = 20  # the recursion length (the lecture's 20)
    points: tuple[float, ...] = (0.3, 0.7, 1.0, 1.3)  # x where the methods are compared
    error_point: float = 1.0  # x of the error-vs-step-size study
    h_max_exponent: float = -1.0  # steps h = 10^e for e from h_max_exponent ...
    h_min_exponent: float = -20.0  # ... down to h_min_exponent
    n_h: int = 96  # number of step sizes
    complex_h: float = 1e-20  # the complex step reported in the table
    x_range: tuple[float, float] = (0.0, 1.5)  # the lecture's plotting range
    n_x: int = 301

    @classmethod
    def quick(cls) -> "Config":
        """Coarser step-size sweep and curve; the same comparisons."""
        return cls(n_h=39, n_x=101)


# ----------------------------------------------------------------------------- the function


def z_final(x, n_steps: int = 20):
    """``z_n(x)`` for ``z_{k+1} = sin(z_k x) + x``, ``z_0 = 0``; works on numpy (real or complex) and duals."""
    z = 0.0 * x
    for _ in range(n_steps):
        z = _sin(z * x) + x
    return z


def _sin(value):
    return value.sin() if isinstance(value, Dual) else np.sin(value)


# ----------------------------------------------------------------------------- (a) analytic


def derivative_analytic(x: np.ndarray, n_steps: int = 20) -> np.ndarray:
    """(a) The lecture's recursion ``dz_{n+1} = x cos(z_n x) dz_n + z_n cos(z_n x) + 1``, ``dz_0 = 0``."""
    z = np.zeros_like(x)
    dz = np.zeros_like(x)
    for _ in range(n_steps):
        c = np.cos(z * x)
        z, dz = np.sin(z * x) + x, c * (z + x * dz) + 1.0
    return dz


# ----------------------------------------------------------------------------- (b) forward


class Dual:
    """A dual number ``value + tangent·δ`` with ``δ² = 0``: forward-mode AD by operator overloading.

    Supports what the recursion needs (``+``, ``*`` with duals or plain numbers,
    ``sin``); ``Dual(x, 1)`` seeds ``dx = 1`` so the tangent of the output is ``df/dx``.
    """

    __slots__ = ("value", "tangent")

    def __init__(self, value, tangent=0.0):
        self.value = value
        self.tangent = tangent

    @staticmethod
    def _lift(other) -> "Dual":
        return other if isinstance(other, Dual) else Dual(other, 0.0)

    def __add__(self, other) -> "Dual":
        other = self._lift(other)
        return Dual(self.value + other.value, self.tangent + other.tangent)

    __radd__ = __add__

    def __mul__(self, other) -> "Dual":
        other = self._lift(other)
        # product rule: d(uv) = u dv + v du
        return Dual(self.value * other.value, self.value * other.tangent + self.tangent * other.value)

    __rmul__ = __mul__

    def sin(self) -> "Dual":
        return Dual(np.sin(self.value), np.cos(self.value) * self.tangent)


def derivative_forward(x: np.ndarray, n_steps: int = 20) -> np.ndarray:
    """(b) Forward mode: run the unchanged function on ``Dual(x, 1)`` and read the tangent."""
    return z_final(Dual(x, np.ones_like(x)), n_steps).tangent


# ----------------------------------------------------------------------------- (c) reverse


def derivative_reverse(x: np.ndarray, n_steps: int = 20) -> np.ndarray:
    """(c) Reverse mode as in the lecture: record the tape ``z_0 … z_n``, then sweep back.

    With the adjoint ``z̄ = ∂z_n/∂z_k`` (seed ``z̄ = 1`` at ``k = n``), each step
    ``z_{k+1} = sin(z_k x) + x`` adds ``z̄ (z_k cos(z_k x) + 1)`` to ``x̄`` and
    maps ``z̄ ← z̄ x cos(z_k x)``.
    """
    tape = [np.zeros_like(x)]
    for _ in range(n_steps):
        tape.append(np.sin(tape[-1] * x) + x)
    z_bar = np.ones_like(x)
    x_bar = np.zeros_like(x)
    for z in reversed(tape[:-1]):
        c = np.cos(z * x)
        x_bar = x_bar + (z * c + 1.0) * z_bar
        z_bar = x * c * z_bar
    return x_bar


# ----------------------------------------------------------------------------- (d) autograd


def derivative_autograd(x: np.ndarray, n_steps: int = 20) -> np.ndarray:
    """(d) PyTorch autograd in float64 (the points are independent, so ∇ of the sum is elementwise)."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    z = torch.zeros_like(xt)
    for _ in range(n_steps):
        z = torch.sin(z * xt) + xt
    (grad,) = torch.autograd.grad(z.sum(), xt)
    return grad.numpy()


# ----------------------------------------------------------------------------- (e), (f) numerical


def derivative_central(x: np.ndarray, h: float, n_steps: int = 20) -> np.ndarray:
    """(e) Central differences ``(f(x+h) − f(x−h)) / 2h``: error ``O(h²)`` plus cancellation ``O(ε/h)``."""
    return (z_final(x + h, n_steps) - z_final(x - h, n_steps)) / (2.0 * h)


def derivative_complex_step(x: np.ndarray, h: float, n_steps: int = 20) -> np.ndarray:
    """(f) Complex step ``Im f(x + ih) / h`` in complex128: ``O(h²)`` and no subtraction, so any tiny ``h`` works."""
    return np.imag(z_final(np.asarray(x, dtype=np.complex128) + 1j * h, n_steps)) / h


# ----------------------------------------------------------------------------- run


def run(config: Config, out: Path, progress: bool = True) -> dict:
    """Compare the six derivatives, sweep the step size, write figures and results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = config.n_steps
    points = np.asarray(config.points, dtype=np.float64)
    exact = {
        "analytic": derivative_analytic(points, n),
        "forward_dual": derivative_forward(points, n),
        "reverse_tape": derivative_reverse(points, n),
        "torch_autograd": derivative_autograd(points, n),
        "complex_step": derivative_complex_step(points, config.complex_h, n),
    }
    reference = exact["analytic"]
    relative = {name: np.abs(values - reference) / np.abs(reference) for name, values in exact.items()}

    # step-size sweep at one point
    hs = np.logspace(config.h_max_exponent, config.h_min_exponent, config.n_h)
    x0 = np.array([config.error_point])
    ref0 = derivative_analytic(x0, n)[0]
    central_err, complex_err = [], []
    for h in _common.progress(hs, progress, desc="step sizes"):
        central_err.append(abs(derivative_central(x0, h, n)[0] - ref0) / abs(ref0))
        complex_err.append(abs(derivative_complex_step(x0, h, n)[0] - ref0) / abs(ref0))
    central_err, complex_err = np.array(central_err), np.array(complex_err)
    best = int(np.argmin(central_err))
    # central differences at every point with their best step, for the table
    central_best = derivative_central(points, hs[best], n)
    relative["central_best_h"] = np.abs(central_best - reference) / np.abs(reference)

    table = [
        {"x": float(x), "analytic": float(reference[i]),
         **{name: float(exact[name][i]) for name in EXACT_METHODS},
         "central_best_h": float(central_best[i]),
         "relative_errors": {name: float(relative[name][i]) for name in relative if name != "analytic"}}
        for i, x in enumerate(points)
    ]
    worst = {name: float(relative[name].max()) for name in relative if name != "analytic"}

    figures = [
        _curve_figure(out, config),
        _error_figure(out, hs, central_err, complex_err, config, best),
    ]
    claims = _claims(config, worst, hs, central_err, complex_err, best)
    result = {
        "name": NAME,
        "title": TITLE,
        "config": asdict(config),
        "table": table,
        "max_relative_error": worst,
        "step_sweep": {"h": hs, "central_relative_error": central_err,
                       "complex_step_relative_error": complex_err,
                       "central_best_h": float(hs[best]),
                       "central_best_error": float(central_err[best])},
        "figures": figures,
        "claims": claims,
    }
    return write_results(out, result)


def _slope(hs: np.ndarray, errors: np.ndarray, low: float, high: float) -> float:
    """Log-log slope of ``errors`` over the steps ``low ≤ h ≤ high`` (nonzero errors only)."""
    keep = (hs >= low) & (hs <= high) & (errors > 0)
    return float(np.polyfit(np.log10(hs[keep]), np.log10(errors[keep]), 1)[0])


def _claims(config, worst, hs, central_err, complex_err, best) -> list[dict]:
    h_best, e_best = hs[best], central_err[best]
    points = ", ".join(f"{p:g}" for p in config.points)
    exact_worst = max(worst[name] for name in ("forward_dual", "reverse_tape", "torch_autograd"))
    tiny = hs <= 1e-8
    complex_floor = float(complex_err[tiny].max())
    central_smallest_h = float(central_err[-1])
    truncation_slope = _slope(hs, central_err, 1e-3, 1e-1)
    complex_slope = _slope(hs, complex_err, 1e-3, 1e-1)
    ratio = e_best / complex_floor if complex_floor > 0 else float("inf")
    return [
        claim(
            "Forward mode (dual numbers), reverse mode (tape + adjoint sweep) and autograd give the "
            "same dz_20/dx as the analytic recursion",
            f"largest relative difference to the analytic recursion at x ∈ {{{points}}}: forward "
            f"{worst['forward_dual']:.1e}, reverse {worst['reverse_tape']:.1e}, autograd "
            f"{worst['torch_autograd']:.1e}",
            exact_worst < 1e-12,
        ),
        claim(
            "The complex step Im f(x+ih)/h is exact to machine precision at a tiny step "
            f"(h = {config.complex_h:g})",
            f"largest relative error at x ∈ {{{points}}}: {worst['complex_step']:.1e}; over every "
            f"h ≤ 1e-8 at x = {config.error_point:g}: {complex_floor:.1e}",
            worst["complex_step"] < 1e-12 and complex_floor < 1e-12,
        ),
        claim(
            "Central differences are numerically unstable: the error falls as O(h²) until "
            "cancellation takes over (a V shape), so they stay far from machine precision",
            f"at x = {config.error_point:g}: slope {truncation_slope:.2f} for 1e-3 ≤ h ≤ 1e-1, best "
            f"relative error {e_best:.1e} at h = {h_best:.1e}, {central_smallest_h:.1e} at "
            f"h = {hs[-1]:.0e}; best-step error over all points {worst['central_best_h']:.1e}",
            abs(truncation_slope - 2) < 0.2 and e_best > 1e-13 and central_smallest_h > 100 * e_best,
        ),
        claim(
            "The complex step looks first order but is second-order accurate, and keeps improving "
            "as h shrinks where central differences break down",
            f"complex-step slope {complex_slope:.2f} for 1e-3 ≤ h ≤ 1e-1; its worst error over "
            f"h ≤ 1e-8 ({complex_floor:.1e}) is {ratio:.1e}× below the best central difference",
            abs(complex_slope - 2) < 0.2 and complex_floor * 1e3 < e_best,
        ),
    ]


# ----------------------------------------------------------------------------- figures


def _curve_figure(out: Path, config: Config) -> str:
    xs = np.linspace(*config.x_range, config.n_x)
    n = config.n_steps
    fig, (ax_f, ax_d) = subplots(1, 2, figsize=(12, 4.2))
    ax_f.plot(xs, z_final(xs, n), color="k")
    ax_f.set_xlabel("x")
    ax_f.set_ylabel(rf"$z_{{{n}}}(x)$")
    ax_f.set_title(rf"$z_{{k+1}} = \sin(z_k x) + x$, $z_0 = 0$, {n} steps", fontsize=10)
    ax_d.plot(xs, derivative_autograd(xs, n), "r-", lw=4, alpha=0.5, label="autograd")
    ax_d.plot(xs, derivative_forward(xs, n), "b-", lw=1.5, label="forward (dual numbers)")
    ax_d.plot(xs, derivative_reverse(xs, n), "y:", lw=2, label="reverse (tape)")
    ax_d.plot(xs, derivative_complex_step(xs, config.complex_h, n), "k-.", lw=1,
              label=f"complex step h = {config.complex_h:g}")
    ax_d.set_xlabel("x")
    ax_d.set_ylabel(rf"$dz_{{{n}}}/dx$")
    ax_d.set_title("the derivative by four methods (the curves coincide)", fontsize=10)
    ax_d.legend(fontsize=8)
    return save_figure(fig, out, "function_and_derivative.png")


def _error_figure(out, hs, central_err, complex_err, config, best) -> str:
    fig, ax = subplots(figsize=(6.5, 4.5))
    floor = 1e-17  # exact zeros cannot be drawn on a log axis
    ax.loglog(hs, np.maximum(central_err, floor), "b-", marker=".", label="central difference")
    ax.loglog(hs, np.maximum(complex_err, floor), "r--", marker=".", label="complex step")
    ax.axvline(hs[best], color="b", lw=0.7, ls=":")
    ax.annotate(f"best h ≈ {hs[best]:.0e}", (hs[best], central_err[best]), textcoords="offset points",
                xytext=(8, -14), fontsize=8, color="b")
    ax.axhline(np.finfo(float).eps, color="0.5", lw=0.7, ls=":")
    ax.text(hs[0], np.finfo(float).eps * 1.6, "machine ε", fontsize=8, color="0.4", ha="right")
    ax.set_xlabel("step size h")
    ax.set_ylabel(rf"relative error of $dz_{{{config.n_steps}}}/dx$ at x = {config.error_point:g}")
    ax.set_title("central differences: V shape; complex step: down to machine precision",
                 fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out, "step_size_error.png")
