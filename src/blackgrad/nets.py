"""Small networks used as learned backward models.

* :class:`MLP` — the deep fully connected net.
* :class:`LogLinExp` — seed 001's Log-Lin-Exp layer: learnable products of powers.
* :class:`LogLinExpNet` — Linear → LogLinExp → Linear, the architecture seed 001
  compares with the fully connected net.
* :class:`ConstantJacobian` — a Jacobian model with the structure of a linear
  device given (seed 001's restore experiment: ``J = θ`` for ``f = θx``).
* :class:`FourierFeatures` — periodic input features, for devices whose inputs
  are phases (or that respond with high spatial frequency).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """A fully connected net ``in_features → hidden… → out_features`` with GELU between layers."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (64, 64), activation: type[nn.Module] = nn.GELU):
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), activation()]
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


class FourierFeatures(nn.Module):
    """``z ↦ (z, sin(ω_k z), cos(ω_k z))`` for each input and frequency ``ω_k``.

    A plain MLP learns high-frequency functions very slowly (spectral bias);
    a phase-encoded optical device responds to its inputs through
    ``exp(i·scale·z)``, so giving the model ``sin`` and ``cos`` of the input at
    the device's own frequencies turns an oscillatory target into a smooth
    one.  ``out_features = in_features · (1 + 2·len(frequencies))``.

    Args:
        in_features: input size.
        frequencies: angular frequencies, in radians per unit of input (for
            :class:`~blackgrad.devices.SHG` with ``phase_scale = 3π``:
            ``(π, 2π, 3π)``).
    """

    def __init__(self, in_features: int, frequencies: Sequence[float]):
        super().__init__()
        if not frequencies:
            raise ValueError("FourierFeatures needs at least one frequency")
        self.in_features = in_features
        self.out_features = in_features * (1 + 2 * len(frequencies))
        self.register_buffer("frequencies", torch.tensor([float(f) for f in frequencies]))

    def forward(self, z: Tensor) -> Tensor:
        angles = (z.unsqueeze(-1) * self.frequencies.to(z.dtype)).flatten(1)
        return torch.cat([z, torch.sin(angles), torch.cos(angles)], dim=1)


def embedded(embedding: nn.Module | None, d: int, make: "Callable[[int], nn.Module]") -> nn.Module:
    """``make(width)`` preceded by ``embedding`` (whose ``out_features`` gives the width)."""
    if embedding is None:
        return make(d)
    return nn.Sequential(embedding, make(embedding.out_features))


class LogLinExp(nn.Module):
    """Learnable products of powers: ``out_i = Re Π_j z_j^{W_ij} · exp(b_i)``.

    Writing each input in polar form, ``z_j = |z_j| · e^{iπ[z_j < 0]}``, the
    product of powers is computed in log space, with the sign carried
    separately as a phase::

        out_i = exp(Σ_j W_ij · log max(|z_j|, ε) + b_i) · cos(π Σ_j W_ij · [z_j < 0])

    For integer exponents this is exactly the signed monomial ``Π_j z_j^{W_ij}``
    (e.g. ``W = [1, 1]`` gives ``z_1 z_2`` with its sign); for real exponents it
    is the real part of the principal complex power, a smooth interpolation.
    Zeros: ``|z_j|`` is clamped below at ``eps`` (default 1e-6) so the log is
    finite; a zero input then behaves like ``±eps``, which makes a positive
    power of it vanish and a negative power large but finite.  Gradients flow
    to ``W`` and ``b`` and, through the ``log``, to ``z`` (the sign indicator
    ``[z_j < 0]`` is piecewise constant).
    """

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-6, init_scale: float = 0.5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * init_scale / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, z: Tensor) -> Tensor:
        log_magnitude = z.abs().clamp(min=self.eps).log()
        negative = (z < 0).to(z.dtype)
        magnitude = torch.exp(log_magnitude @ self.weight.T + self.bias)
        return magnitude * torch.cos(math.pi * (negative @ self.weight.T))


class LogLinExpNet(nn.Sequential):
    """``Linear → LogLinExp → Linear``: products of powers of learned linear features."""

    def __init__(self, in_features: int, out_features: int, width: int = 64):
        super().__init__(nn.Linear(in_features, width), LogLinExp(width, width), nn.Linear(width, out_features))


class ConstantJacobian(nn.Module):
    """A Jacobian model that ignores its input: ``J(α) = M``, one learnable ``m × d`` matrix.

    The structure of a linear device given to :class:`~blackgrad.estimators.LearnedJacobian`:
    trained on ``f = θx`` it converges to ``θ`` itself.  ``scale`` sets the
    initial entries' standard deviation (0: start from zero).
    """

    def __init__(self, out_features: int, in_features: int, scale: float = 0.0):
        super().__init__()
        self.matrix = nn.Parameter(torch.randn(out_features, in_features) * scale)

    def forward(self, alpha: Tensor) -> Tensor:
        return self.matrix.expand(alpha.shape[0], -1, -1)
