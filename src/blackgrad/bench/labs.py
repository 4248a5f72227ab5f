"""The benchmark's simulated laboratories: each built-in device with the noise, ADC or drift it is measured through."""

from __future__ import annotations

import math

from ..devices import SHG, Device, Drifting, Noisy, Oscillators, Quantized


def noisy_quantized(device: Device, noise: float, bits: int, seed: int) -> Device:
    """``device`` with additive measurement noise, then an ADC of ``bits`` bits over [0, 1]."""
    return Quantized(Noisy(device, std=noise, seed=seed), bits=bits, low=0.0, high=1.0)


def shg_lab(seed: int = 0) -> Device:
    """The main benchmark device: SHG with 1 % noise and an 8-bit spectrometer."""
    return noisy_quantized(SHG(), noise=0.01, bits=8, seed=seed)


def shg_gentle_lab(seed: int = 0) -> Device:
    """The deep task's layer: as :func:`shg_lab`, but π of phase per unit of input, not 3π.

    Through three layers in series a 3π phase range scrambles the pulse so
    thoroughly that even exact backprop barely trains; ±π (2π in all) keeps
    each layer oscillatory but leaves the stack trainable.
    """
    return noisy_quantized(SHG(phase_scale=math.pi), noise=0.01, bits=8, seed=seed)


#: the drifting task's random-walk step per device call (see :func:`shg_drifting_lab`)
DRIFT_RATE = 1.5e-3


def shg_drifting_lab(seed: int = 0) -> Device:
    """The main device whose optics drift: :class:`Drifting` SHG, then 1 % noise and the 8-bit ADC.

    The drift (a hidden per-output gain and offset, random walks of
    :data:`DRIFT_RATE` per device call) sits in the optics, before the noise
    and the spectrometer's ADC.  SHG outputs are about 0.15 on average, so the
    offset, ``rate · sqrt(calls)`` in output units, dominates.  A training run
    that only runs forward makes ~420 calls (20 epochs of 20 batches, and the
    20 tests): the response at fixed inputs then moves by 18 % of its rms on
    average (13–23 % over 20 seeds).  :class:`Drifting` steps once per call,
    and a call holds one θ: a method that probes in calls of its own sees more
    drift (one probe per sample, ~840 calls: 26 %; forward differences in
    θ, 18 calls a step: 69 %), as a slower measurement would in the lab.
    """
    return noisy_quantized(Drifting(SHG(), rate=DRIFT_RATE, seed=seed), noise=0.01, bits=8, seed=seed)


def shg_coarse_lab(seed: int = 0) -> Device:
    """SHG with 1 % noise and a coarse 5-bit ADC (32 levels over [0, 1], a step of 0.032)."""
    return noisy_quantized(SHG(), noise=0.01, bits=5, seed=seed)


def shg_wide_lab(seed: int = 0) -> Device:
    """A wide SHG: 64 inputs, 64 phase parameters, 64 outputs, 1 % noise and an 8-bit ADC.

    256 spectral bins keep two bins per mask block (the default SHG has four);
    the SH window then holds 384 bins, six per output.
    """
    return noisy_quantized(SHG(in_features=64, out_features=64, n_params=64, n_bins=256), noise=0.01, bits=8, seed=seed)


def oscillators_lab(seed: int = 0) -> Device:
    """Coupled Duffing oscillators read out with 1 % (of the output scale) noise.

    Integrated over 10 time units (one and a half periods) in 32 Runge–Kutta
    steps: the step size of the device's default, half its run, so half its cost.
    """
    return Noisy(Oscillators(seed=0, duration=10.0, steps=32), std=0.01, seed=seed)
