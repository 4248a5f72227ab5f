"""A linear device: the simplest black box, whose Jacobian is known in closed form."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Device, _make_generator


class Linear(Device):
    """``f(x, θ) = θ x``: a matrix–vector product with a trainable matrix.

    Physics: an idealised linear physical layer (a programmable optical
    interferometer mesh, a crossbar of conductances) with no nonlinearity and
    no noise.  It is the control case of the "restore the Jacobian" experiment:
    its exact VJP is ``grad_x = g θ`` and ``grad_θ = Σ_b g_bᵀ x_b``, so any
    estimator can be checked against the closed form.

    Input encoding: ``x`` of shape ``(B, n)``, any real values (dimensionless).
    Output measurement: ``y = x θᵀ`` of shape ``(B, m)``, same units as ``x``.
    θ: the ``m × n`` matrix flattened row-major, ``p = m·n``; the default θ is
    a seeded Gaussian divided by ``sqrt(n)`` (outputs of order ``|x|``).
    Default size: none, both sizes are required.
    Cost: one ``(B, n) × (n, m)`` matrix product, ``B·n·m`` multiply–adds.

    Args:
        in_features: ``n``.
        out_features: ``m``.
        seed: seeds the default θ.
    """

    name = "linear"

    def __init__(self, in_features: int, out_features: int, seed: int = 0) -> None:
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.n_params = self.in_features * self.out_features
        self.seed = seed
        generator = _make_generator(seed)
        self._theta0 = torch.randn(self.n_params, generator=generator, dtype=torch.float64) / math.sqrt(self.in_features)

    def matrix(self, theta: Tensor | None = None) -> Tensor:
        """θ (default: ``default_params()``) reshaped to the ``(m, n)`` matrix."""
        if theta is None:
            theta = self.default_params(torch.float64)
        return theta.reshape(self.out_features, self.in_features)

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        return x @ self.matrix(theta).T

    def _initial_params(self) -> Tensor:
        return self._theta0

    def __repr__(self) -> str:
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, seed={self.seed})"
