"""Small networks used as learned backward models.

* :class:`MLP` — the deep fully connected net.
* :class:`LogLinExp` — the Log-Lin-Exp layer: learnable products of powers.
* :class:`LogLinExpNet` — Linear → LogLinExp → Linear, an alternative to the
  fully connected net for devices that multiply their inputs.
* :class:`ConstantJacobian` — a Jacobian model with the structure of a linear
  device given (for ``f = θx`` it learns ``J = θ``, the device matrix itself).
* :class:`FourierFeatures` — periodic input features, for devices whose inputs
  are phases (or that respond with high spatial frequency).
* :class:`MultiScaleFourier` — periodic features at octave-spaced frequencies
  relative to the scale of the inputs seen, for devices whose frequencies are
  not known (the learned estimators' default input features).
* :class:`RandomFourierFeatures` — sines and cosines of random projections of
  the inputs (Gaussian frequencies relative to the scale of the inputs seen).
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


class _InputScaled(nn.Module):
    """Features whose frequencies are relative to an input scale ``s``.

    ``s`` is given, or taken from the first batch the module sees (the
    largest ``|z|`` in it; 1 if that batch is all zeros) and kept in the
    ``scale`` buffer, so it is saved and restored with ``state_dict``.
    """

    def __init__(self, scale: float | None) -> None:
        super().__init__()
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number or None, got {scale!r}")
        self.register_buffer("scale", torch.tensor(math.nan if scale is None else float(scale)))
        self._calibrated = scale is not None

    def calibrate(self, z: Tensor) -> None:
        """Set the input scale from the batch ``z``: its largest ``|z|`` (1 if all zeros)."""
        with torch.no_grad():
            peak = z.detach().abs().amax().to(self.scale)
            self.scale.copy_(torch.where(peak > 0, peak, torch.ones_like(peak)))
        self._calibrated = True

    def _scale_for(self, z: Tensor) -> Tensor:
        if not self._calibrated:
            if bool(torch.isnan(self.scale)):
                self.calibrate(z)
            self._calibrated = True
        return self.scale.to(z.dtype)

    def _load_from_state_dict(self, *args, **kwargs):  # a loaded scale may be unset (nan): look again
        super()._load_from_state_dict(*args, **kwargs)
        self._calibrated = False


class MultiScaleFourier(_InputScaled):
    """``z ↦ (z, sin(ω_k z), cos(ω_k z))`` with ``ω_k = π·m_k / s``: octaves relative to the input scale ``s``.

    For a device whose frequencies nobody gave (compare
    :class:`FourierFeatures`, which is told them).  The default multiples
    ``m_k = 0.5, 1, 2`` give periods of ``4s``, ``2s`` and ``s``: half a
    period, one and two periods across inputs in ``[-s, s]``.
    The net's products of these make the harmonics above them, so one set
    served SHG at 3π and at π of phase per unit of input and the drive
    detunings of :class:`~blackgrad.devices.Oscillators`; the raw ``z`` keeps
    smooth responses (linear devices, amplitudes) as easy as for a plain MLP.
    Sets reaching higher (to ``6π/s``) gave the 3π SHG of the moons task a
    better VJP cosine and three π SHG layers in series a much worse one
    (``benchmarks/auto_features.py``).

    ``s`` (``scale``) is given, or ``None``: the largest ``|z|`` of the first
    batch the module sees (for a black box: the first inputs it was run on),
    stored in the ``scale`` buffer and kept from then on (a later, wider batch
    does not move it: the net's weights are fitted to the features as they
    are).  ``out_features = in_features · (1 + 2K)`` for ``K`` multiples.

    Args:
        in_features: input size.
        multiples: the ``m_k``, in half-periods per input scale (``ω_k = π m_k / s``).
        scale: the input scale ``s``, or None to take it from the first batch.
        trainable: learn the multiples (one set per input, initialised at
            ``multiples``) with the model; otherwise they are a fixed buffer.
        decay: the features at ``m_k`` are multiplied by ``(min m / m_k)^decay``
            (0: all of amplitude 1), a prior against high frequencies: the net
            needs larger weights to use them.
    """

    def __init__(
        self,
        in_features: int,
        multiples: Sequence[float] = (0.5, 1, 2),
        scale: float | None = None,
        trainable: bool = False,
        decay: float = 0.0,
    ) -> None:
        super().__init__(scale)
        if not multiples:
            raise ValueError("MultiScaleFourier needs at least one multiple")
        if any(not (math.isfinite(m) and m > 0) for m in multiples):
            raise ValueError(f"multiples must be positive, got {tuple(multiples)}")
        if not (math.isfinite(decay) and decay >= 0):
            raise ValueError(f"decay must be a non-negative number, got {decay!r}")
        self.decay = float(decay)
        lowest = min(float(m) for m in multiples)
        self.register_buffer("amplitudes", torch.tensor([(lowest / float(m)) ** self.decay for m in multiples]))
        self._unit_amplitudes = bool((self.amplitudes == 1).all())
        self.in_features = int(in_features)
        self.out_features = self.in_features * (1 + 2 * len(multiples))
        grid = torch.tensor([float(m) for m in multiples]).expand(self.in_features, -1).clone()
        if trainable:
            self.multiples = nn.Parameter(grid)
        else:
            self.register_buffer("multiples", grid)

    def frequencies(self) -> Tensor:
        """The angular frequencies ``π m_k / s``, ``(in_features, K)`` (nan before the scale is known)."""
        return math.pi * self.multiples / self.scale

    def forward(self, z: Tensor) -> Tensor:
        omega = math.pi * self.multiples.to(z.dtype) / self._scale_for(z)
        angles = z.unsqueeze(-1) * omega
        if getattr(self, "_unit_amplitudes", False):  # decay 0: a product by ones would change no bit, forward or backward
            return torch.cat([z, torch.sin(angles).flatten(1), torch.cos(angles).flatten(1)], dim=1)
        amplitudes = self.amplitudes.to(z.dtype)
        return torch.cat([z, (torch.sin(angles) * amplitudes).flatten(1), (torch.cos(angles) * amplitudes).flatten(1)], dim=1)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._unit_amplitudes = bool((self.amplitudes == 1).all())


class RandomFourierFeatures(_InputScaled):
    """``z ↦ (z, sin(z B / s), cos(z B / s))`` with ``B ~ N(0, σ²)``, ``(in_features, features)``.

    Random Fourier features (Rahimi & Recht 2007; Tancik et al. 2020): each
    feature is a plane wave in a random direction, with an angular frequency
    per unit of input scale drawn with standard deviation ``sigma``.  ``B`` is
    drawn from ``seed`` (the same on every construction) and fixed.
    ``s``: as :class:`MultiScaleFourier`.  ``out_features = in_features + 2·features``.

    Args:
        in_features: input size.
        features: number of random directions ``K``.
        sigma: standard deviation of each entry of ``B``, in radians per input scale.
        scale: the input scale ``s``, or None to take it from the first batch.
        seed: seeds ``B``.
    """

    def __init__(self, in_features: int, features: int = 128, sigma: float = math.pi, scale: float | None = None, seed: int = 0) -> None:
        super().__init__(scale)
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.in_features = int(in_features)
        self.out_features = self.in_features + 2 * features
        self.sigma = float(sigma)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(self.in_features, features, generator=generator) * self.sigma)

    def forward(self, z: Tensor) -> Tensor:
        angles = z @ (self.projection.to(z.dtype) / self._scale_for(z))
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
