"""Simulated physical systems written in torch, to be trained through as black boxes.

Every device follows one contract (see :mod:`blackgrad.devices.base`):
``device(x, theta=None) -> y`` maps a batch ``x`` of shape ``(B, n)`` and a
flat parameter vector ``theta`` of shape ``(p,)`` to measurements ``(B, m)``;
``reference`` is the clean differentiable physics and ``exact_vjp`` its exact
vector–Jacobian product, used to measure gradient estimators.

Devices:

* :class:`Linear` — ``θ x``, the closed-form control case.
* :class:`SHG` — second-harmonic generation of a phase-shaped femtosecond pulse.
* :class:`KerrFiber` — a shaped pulse through a nonlinear fibre (split-step Fourier).
* :class:`Oscillators` — a driven network of coupled Duffing oscillators.

Imperfections, composable around any device: :class:`Noisy`,
:class:`Quantized`, :class:`Saturating`, :class:`Drifting`, :class:`Faulty`.
"""

from .base import Device
from .imperfections import DeviceWrapper, Drifting, Faulty, Noisy, Quantized, Saturating
from .kerr import KerrFiber
from .linear import Linear
from .oscillators import Oscillators
from .shg import SHG

__all__ = [
    "Device",
    "DeviceWrapper",
    "Drifting",
    "Faulty",
    "KerrFiber",
    "Linear",
    "Noisy",
    "Oscillators",
    "Quantized",
    "SHG",
    "Saturating",
]
