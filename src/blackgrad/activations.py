"""An activation zoo, including activations whose backward is a surrogate.

The idea behind it: the backward pass of an activation is "only a direction
indicator": a function whose true derivative is useless (zero almost
everywhere) still trains if the backward pass uses a sensible surrogate.  The
examples, all here as ``nn.Module`` s acting elementwise:

============================  ===========================================  ==========================================
name                          forward ``σ(x)``                             backward (what ``∂σ/∂x`` is taken to be)
============================  ===========================================  ==========================================
``identity``                  ``x``                                        ``1``
``relu``, ``gelu``            as in torch                                  true derivative
``sin``                       ``sin(ω x)``                                 true derivative
``polynomial``                ``Σ_k λ_k x^k`` (default ``x + x²/2``)       true derivative
``threshold_sigmoid``         ``1[x > 0]``                                 surrogate ``s(x)(1 − s(x))``, ``s`` = sigmoid
``cantor``                    Cantor staircase (below)                     surrogate ``1`` (identity)
``perlin``                    fixed 1-D Perlin gradient noise              true derivative
``jeff``                      sinusoids + chaotic logistic-map term        surrogate: derivative of the sinusoids only
============================  ===========================================  ==========================================

The surrogate backward passes are built with :func:`blackgrad.gradiator`, the
same tool a user would use for a black box with a hand-given derivative (an
equivalent route is ``BlackBox(cantor, StraightThrough("identity"))``).

:data:`ACTIVATIONS` maps each name to a factory (call it with no argument for
the defaults).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor, nn

from .estimators.base import _make_generator
from .function import gradiator

__all__ = [
    "Sin",
    "Polynomial",
    "ThresholdSigmoid",
    "Cantor",
    "Perlin",
    "Jeff",
    "cantor",
    "threshold",
    "jeff",
    "ACTIVATIONS",
]


class Sin(nn.Module):
    """``sin(ω x)``: oscillating, not monotone, yet claimed "pretty efficient" (``blackgrad run activations`` measures it)."""

    def __init__(self, frequency: float = 1.0) -> None:
        super().__init__()
        self.frequency = float(frequency)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.frequency * x)

    def extra_repr(self) -> str:
        return f"frequency={self.frequency:g}"


class Polynomial(nn.Module):
    """``σ(x) = Σ_k λ_k x^k`` with fixed coefficients ``λ = coefficients`` (constant term first).

    The cautionary example: compositions of polynomials stay
    polynomials (no universal approximation), their degree multiplies with
    depth and their derivative is unbounded.  Default ``x + x²/2``.
    """

    def __init__(self, coefficients: tuple[float, ...] = (0.0, 1.0, 0.5)) -> None:
        super().__init__()
        if len(coefficients) == 0:
            raise ValueError("Polynomial needs at least one coefficient")
        self.coefficients = tuple(float(c) for c in coefficients)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.full_like(x, self.coefficients[-1])
        for c in reversed(self.coefficients[:-1]):  # Horner
            out = out * x + c
        return out

    def extra_repr(self) -> str:
        return f"coefficients={self.coefficients}"


def _heaviside(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _sigmoid_slope(x: Tensor, grad: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return grad * s * (1 - s)


#: ``1[x > 0]`` forward, the derivative of the sigmoid backward.
threshold = gradiator(_heaviside, _sigmoid_slope, name="threshold_sigmoid")


class ThresholdSigmoid(nn.Module):
    """Threshold forward ``1[x > 0]`` (values 0 and 1), sigmoid derivative ``s(x)(1 − s(x))`` backward.

    The true derivative is zero except at 0, so plain backprop cannot train
    the layers before it; the sigmoid's derivative — a smoothed step — can.
    """

    def forward(self, x: Tensor) -> Tensor:
        return threshold(x)


_CHUNK = 8  # ternary digits read per table lookup


@functools.lru_cache(maxsize=None)
def _ternary_table(k: int) -> tuple[Tensor, Tensor]:
    """For every string of ``k`` ternary digits (as the integer it writes): its Cantor
    contribution on ``[0, 1)`` and whether it contains no digit 1 (so reading goes on)."""
    codes = torch.arange(3**k)
    value = torch.zeros(3**k, dtype=torch.float64)
    alive = torch.ones(3**k, dtype=torch.bool)
    for j in range(k):
        digit = codes // 3 ** (k - 1 - j) % 3
        value += 2.0 ** -(j + 1) * (alive & (digit >= 1))
        alive &= digit != 1
    return value, alive


def cantor(x: Tensor, digits: int = 32) -> Tensor:
    """The Cantor function extended to ℝ by ``C(x + 1) = C(x) + 1``, to ``digits`` ternary digits.

    On ``[0, 1]``: write ``x = 0.t₁t₂t₃…`` in base 3; cut the expansion after
    the first digit ``1`` (keeping that ``1``); replace each ``2`` by ``1``; read
    the result in base 2.  So ``C(1/3) = C(2/3) = 1/2``, ``C(1/4) = 1/3``,
    ``C(0) = 0``, ``C(1) = 1``.  Only the first ``digits`` ternary digits of
    the fractional part are read, so the value is exact up to ``2^−digits``
    (``digits = 32``: ``2.3e−10``); the digits are computed in float64, eight
    at a time through a lookup table, and the result is returned in ``x``'s dtype.

    Extension: ``C(x) = ⌊x⌋ + C(x − ⌊x⌋)``, the "devil's staircase" repeated
    with unit rise per unit run.  It is continuous, non-decreasing, odd
    (``C(−x) = −C(x)``, from ``C(1 − u) = 1 − C(u)``) and stays within a
    bounded distance of the identity — an identity with a fractal
    nonlinearity whose derivative is 0 almost everywhere.  Plain autograd
    through this function gives that derivative: 0.
    """
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be a positive int, got {digits!r}")
    work = x.detach().to(torch.float64)
    t = work - torch.floor(work)
    value = torch.zeros_like(t)
    alive = torch.ones_like(t, dtype=torch.bool)  # no digit 1 read yet
    scale = 1.0
    for start in range(0, digits, _CHUNK):
        k = min(_CHUNK, digits - start)
        table_value, table_alive = (part.to(x.device) for part in _ternary_table(k))
        t = t * 3**k
        code = torch.floor(t)
        t = t - code
        code = code.long().clamp_(0, 3**k - 1)
        value += scale * torch.where(alive, table_value[code], 0.0)
        alive &= table_alive[code]
        scale *= 2.0**-k
    # floor(x) keeps the result in x's graph with its true derivative, 0
    return torch.floor(x) + value.to(x.dtype)


def _identity_slope(x: Tensor, digits: int, grad: Tensor) -> tuple[Tensor, None]:
    return grad, None


_cantor_identity = gradiator(cantor, _identity_slope, name="cantor")


class Cantor(nn.Module):
    """The Cantor staircase :func:`cantor` forward, identity backward.

    The claim: "the Jacobian is 0 almost everywhere, but if one uses identity
    as a Jacobian replacement, we get better performances than identity
    activation function".

    Args:
        digits: ternary digits read (resolution ``2^−digits``).
    """

    def __init__(self, digits: int = 32) -> None:
        super().__init__()
        self.digits = digits

    def forward(self, x: Tensor) -> Tensor:
        return _cantor_identity(x, self.digits)

    def extra_repr(self) -> str:
        return f"digits={self.digits}"


class Perlin(nn.Module):
    """A fixed, seeded 1-D Perlin (gradient) noise ``σ(x) = amplitude ⋅ n(frequency ⋅ x)``.

    Lattice point ``i ∈ ℤ`` carries a slope ``g_i`` drawn uniformly in
    ``[−1, 1]`` from a generator seeded with ``seed`` (a table of ``period``
    slopes, repeated with that period).  With ``i = ⌊u⌋``, ``t = u − i`` and the
    quintic fade ``f(t) = 6t⁵ − 15t⁴ + 10t³``::

        n(u) = g_i ⋅ t + f(t) ⋅ (g_{i+1} ⋅ (t − 1) − g_i ⋅ t)

    so ``n`` vanishes at the integers, has slope ``g_i`` there, is C¹ and lies
    in ``[−1/2, 1/2]`` (the default ``amplitude = 2`` spans ``[−1, 1]``).  The
    backward pass is the true derivative (plain autograd).  Such fixed noise
    activations are claimed to do "poorly compared to even ReLU".
    """

    def __init__(self, seed: int = 0, frequency: float = 1.0, amplitude: float = 2.0, period: int = 256) -> None:
        super().__init__()
        if period < 2:
            raise ValueError(f"period must be at least 2, got {period!r}")
        self.seed, self.frequency, self.amplitude, self.period = seed, float(frequency), float(amplitude), int(period)
        slopes = torch.rand(self.period, generator=_make_generator(seed), dtype=torch.float64) * 2 - 1
        self.register_buffer("slopes", slopes)

    def forward(self, x: Tensor) -> Tensor:
        u = self.frequency * x
        cell = torch.floor(u)
        t = u - cell  # floor has zero derivative, so dt/dx = frequency: autograd is exact
        i = cell.long().remainder(self.period)
        g0 = self.slopes[i].to(x.dtype)
        g1 = self.slopes[(i + 1).remainder(self.period)].to(x.dtype)
        fade = t * t * t * (t * (6 * t - 15) + 10)
        return self.amplitude * (g0 * t + fade * (g1 * (t - 1) - g0 * t))

    def extra_repr(self) -> str:
        return f"seed={self.seed}, frequency={self.frequency:g}, amplitude={self.amplitude:g}, period={self.period}"


#: Jeff's incommensurate angular frequencies √p for the first eight primes.
_JEFF_FREQUENCIES = tuple(math.sqrt(p) for p in (2, 3, 5, 7, 11, 13, 17, 19))
_JEFF_NORM = sum(k**-0.5 for k in range(1, len(_JEFF_FREQUENCIES) + 1))


def _jeff_waves(x: Tensor) -> tuple[Tensor, Tensor]:
    """The sinusoid part of Jeff and its derivative."""
    value, slope = torch.zeros_like(x), torch.zeros_like(x)
    for k, omega in enumerate(_JEFF_FREQUENCIES, start=1):
        phase = omega * x + k
        value += torch.sin(phase) / math.sqrt(k)
        slope += omega * torch.cos(phase) / math.sqrt(k)
    return value / _JEFF_NORM, slope / _JEFF_NORM


def _jeff_forward(x: Tensor) -> Tensor:
    u = torch.abs(torch.remainder(x / 2, 2) - 1)  # triangle wave: ℝ → [0, 1], period 4
    for _ in range(6):
        u = 3.9 * u * (1 - u)  # logistic map in its chaotic regime
    return _jeff_waves(x)[0] + 0.5 * (u - 0.5)


def _jeff_backward(x: Tensor, grad: Tensor) -> Tensor:
    return grad * _jeff_waves(x)[1]


#: Jeff's forward with its surrogate backward (see :class:`Jeff`).
jeff = gradiator(_jeff_forward, _jeff_backward, name="jeff")


class Jeff(nn.Module):
    """A deliberately over-complex activation ("jeff"), defined here as::

        jeff(x) = W(x) + ½ ⋅ (L⁶(v(x)) − ½)
        W(x)    = (1/Z) Σ_{k=1..8} sin(ω_k x + k) / √k,   ω_k = √p_k, p = 2, 3, 5, …, 19,
                  Z = Σ_{k=1..8} 1/√k   (so |W| ≤ 1)
        v(x)    = |((x/2) mod 2) − 1|                    (triangle wave of period 4, in [0, 1])
        L(u)    = 3.9 ⋅ u ⋅ (1 − u)                       (logistic map, chaotic at r = 3.9)

    Eight incommensurate sinusoids (never periodic) plus six iterations of a
    chaotic map of a folded input: a bounded, deterministic function that
    would take "a tremendous amount of computation to resimulate".

    Backward (a stated surrogate): ``W′(x)``, the exact derivative of the
    sinusoid part; the chaotic term's derivative (a product of six factors
    ``3.9 (1 − 2u)``, up to ~900 in size and changing sign at a fine scale)
    is dropped, i.e. treated as fixed noise.
    """

    def forward(self, x: Tensor) -> Tensor:
        return jeff(x)


#: activation name -> factory with the defaults above
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sin": Sin,
    "polynomial": Polynomial,
    "threshold_sigmoid": ThresholdSigmoid,
    "cantor": Cantor,
    "perlin": Perlin,
    "jeff": Jeff,
}
