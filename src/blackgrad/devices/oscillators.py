"""A network of driven, coupled Duffing oscillators integrated in time."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Device, _make_generator, working_dtype


class Oscillators(Device):
    """Coupled nonlinear (Duffing) oscillators driven by the inputs.

    Physics: ``n_oscillators`` hardening Duffing resonators (think of a MEMS
    resonator array) joined by a fixed random spring network::

        q̈ᵢ = -ωᵢ² qᵢ - β qᵢ³ - γ q̇ᵢ + Σⱼ kᵢⱼ (qⱼ - qᵢ) + Fᵢ(t)

    with natural frequencies ``ωᵢ`` drawn uniformly in ``[0.8, 1.2]``, spring
    constants ``kᵢⱼ = kⱼᵢ = coupling · |N(0, 1)| / sqrt(n_oscillators)`` (the
    network is always stable: its stiffness matrix is positive definite),
    cubic stiffness ``β = nonlinearity`` and damping ``γ = damping``.  The
    frequencies and springs are hidden, fixed by ``seed``.  The oscillators
    start at rest and are integrated with classical fourth-order Runge–Kutta,
    ``steps`` fixed steps over ``duration``.

    Input encoding: input ``i`` is the amplitude of a sinusoidal force on
    oscillator ``i``, ``Fᵢ(t) = drive_scale · xᵢ · cos((1 + θᵢ) t)``; inputs
    are meant to lie in ``[-1, 1]`` (the response is odd: ``f(-x) = -f(x)``).
    Oscillators ``i ≥ in_features`` are not driven.

    θ: the drive-frequency detunings ``θᵢ`` of the ``in_features`` driven
    oscillators (``p = in_features``), default zeros (all driven at ω = 1).

    Output measurement: the positions ``qᵢ(duration)`` of oscillators
    ``0 … out_features-1`` at the end of the run.

    Units: time in units where the mean natural frequency is 1 rad per unit
    (a period is about 6.3); positions and forces in units where β = 1 sets
    the scale at which the cubic stiffness matches the linear one.  Outputs
    are of order 1 for inputs of order 1.

    Default sizes: 16 inputs, 16 outputs, 16 oscillators, 16 parameters,
    duration 20 (about three periods; the amplitude decay time ``2/γ`` is also
    20, so transients still matter at the readout), 64 steps.  The RK4 error
    at the defaults is about 1 % (relative L2 distance of the outputs from a
    4000-step solution on random inputs); it falls as ``1/steps⁴``.
    Cost: ``4·steps`` evaluations of the force, each a ``(B, n) × (n, n)``
    matrix product plus ``O(B·n)`` elementwise work.

    Args:
        in_features: number of driven oscillators.
        out_features: number of oscillators read out.
        n_oscillators: size of the network (default ``max(in, out)``).
        coupling: scale of the random spring constants.
        nonlinearity: cubic stiffness β.
        damping: damping rate γ.
        drive_scale: force amplitude per unit of input.
        duration: integration time.
        steps: Runge–Kutta steps.
        seed: seeds the hidden frequencies and springs.
    """

    name = "oscillators"

    def __init__(
        self,
        in_features: int = 16,
        out_features: int = 16,
        n_oscillators: int | None = None,
        coupling: float = 0.2,
        nonlinearity: float = 1.0,
        damping: float = 0.1,
        drive_scale: float = 1.0,
        duration: float = 20.0,
        steps: int = 64,
        seed: int = 0,
    ) -> None:
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.n_oscillators = int(n_oscillators) if n_oscillators is not None else max(self.in_features, self.out_features)
        if self.n_oscillators < max(self.in_features, self.out_features):
            raise ValueError(
                f"n_oscillators={n_oscillators} is smaller than in_features={in_features} or out_features={out_features}"
            )
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.n_params = self.in_features
        self.coupling = float(coupling)
        self.nonlinearity = float(nonlinearity)
        self.damping = float(damping)
        self.drive_scale = float(drive_scale)
        self.duration = float(duration)
        self.steps = int(steps)
        self.seed = seed
        generator = _make_generator(seed)
        n = self.n_oscillators
        self.natural_frequencies = 0.8 + 0.4 * torch.rand(n, generator=generator, dtype=torch.float64)
        springs = torch.randn(n, n, generator=generator, dtype=torch.float64).abs().triu(1) * (self.coupling / math.sqrt(n))
        self.springs = springs + springs.T

    def stiffness(self) -> Tensor:
        """Linear stiffness matrix ``K`` (float64): the linear force is ``-K q``.

        ``K = diag(ω²) + L`` with ``L`` the Laplacian of the spring network,
        symmetric and positive definite.
        """
        laplacian = torch.diag(self.springs.sum(1)) - self.springs
        return torch.diag(self.natural_frequencies**2) + laplacian

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        dtype, device, out_dtype = working_dtype(x.dtype), x.device, x.dtype
        n, dt = self.n_oscillators, self.duration / self.steps
        negative_stiffness = self._cached("negative_stiffness", dtype, device, lambda: -self.stiffness())
        # Runge–Kutta samples the force at t, t + dt/2 and t + dt: 2·steps + 1 times,
        # all computed in one tensor op rather than one small op per stage.
        times = torch.arange(2 * self.steps + 1, dtype=dtype, device=device) * (dt / 2)
        drive_shapes = torch.cos(times[:, None] * (1.0 + theta.to(dtype)))  # (T, in_features)
        drives = drive_shapes[:, None, :] * (x.to(dtype) * self.drive_scale)  # (T, B, in_features)
        if self.in_features < n:  # undriven oscillators get a zero force
            drives = torch.nn.functional.pad(drives, (0, n - self.in_features))

        def acceleration(position: Tensor, velocity: Tensor, time_index: int) -> Tensor:
            # Fused ops: the integrator is bound by per-op overhead at these sizes.
            linear = torch.addmm(drives[time_index], position, negative_stiffness)
            linear = torch.add(linear, velocity, alpha=-self.damping)
            return torch.add(linear, position**3, alpha=-self.nonlinearity)

        position = torch.zeros(x.shape[0], n, dtype=dtype, device=device)  # at rest
        velocity = torch.zeros_like(position)
        for step in range(self.steps):
            now, middle, end = 2 * step, 2 * step + 1, 2 * step + 2
            a1 = acceleration(position, velocity, now)
            v2 = torch.add(velocity, a1, alpha=dt / 2)
            a2 = acceleration(torch.add(position, velocity, alpha=dt / 2), v2, middle)
            v3 = torch.add(velocity, a2, alpha=dt / 2)
            a3 = acceleration(torch.add(position, v2, alpha=dt / 2), v3, middle)
            v4 = torch.add(velocity, a3, alpha=dt)
            a4 = acceleration(torch.add(position, v3, alpha=dt), v4, end)
            # The classical RK4 update; with v1 = v the position part simplifies to
            # q + dt·v + dt²/6·(a1 + a2 + a3).
            middle_sum = a2 + a3
            position = torch.add(torch.add(position, velocity, alpha=dt), a1 + middle_sum, alpha=dt * dt / 6)
            velocity = torch.add(velocity, torch.add(a1 + a4, middle_sum, alpha=2.0), alpha=dt / 6)
        return position[:, : self.out_features].to(out_dtype)

    def __repr__(self) -> str:
        return (
            f"Oscillators(in_features={self.in_features}, out_features={self.out_features}, "
            f"n_oscillators={self.n_oscillators}, coupling={self.coupling}, nonlinearity={self.nonlinearity}, "
            f"damping={self.damping}, duration={self.duration}, steps={self.steps}, seed={self.seed})"
        )
