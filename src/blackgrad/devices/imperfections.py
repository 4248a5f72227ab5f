"""Imperfections of real hardware, as wrappers composable around any device.

Each wrapper is itself a :class:`~blackgrad.devices.Device` with the wrapped
device's sizes, parameters and default θ, so they stack::

    device = Faulty(Noisy(Quantized(SHG(), bits=8), std=0.01), error_rate=0.01)

A call runs the imperfect measurement; :meth:`~blackgrad.devices.Device.reference`
is the clean differentiable physics underneath (the innermost device's, with
only the smooth, deterministic :class:`Saturating` kept), so ``exact_vjp``
of a wrapped device is the gradient of the ideal device.

Randomness (noise, drift, faults) is drawn on the CPU from a generator the
wrapper owns, seeded by its ``seed``, and moved to x's device: the same seed
gives the same sequence of outputs, on CPU and CUDA alike.  ``state_dict()``
holds each wrapper's generator, drift and counters and its inner device's,
so a checkpointed run resumes with the same device.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from .base import Device, _make_generator


class DeviceWrapper(Device):
    """A device that wraps another one and delegates sizes, θ and reference.

    Subclasses implement :meth:`_forward` in terms of ``self.inner(x, theta)``.
    """

    def __init__(self, inner: Device) -> None:
        if not isinstance(inner, Device):
            raise TypeError(f"{type(self).__name__} wraps a blackgrad Device, got {type(inner).__name__}")
        self.inner = inner
        self.in_features = inner.in_features
        self.out_features = inner.out_features
        self.n_params = inner.n_params

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{type(self).__name__.lower()}({self.inner.name})"

    def _initial_params(self) -> Tensor:
        return self.inner._initial_params()

    def _reference(self, x: Tensor, theta: Tensor | None) -> Tensor:
        return self.inner._reference(x, theta)

    def _describe(self) -> str:
        """The wrapper's own settings, for ``repr``."""
        return ""

    def state_dict(self) -> dict[str, Any]:
        """This wrapper's state and, under ``inner``, its inner device's."""
        return {**super().state_dict(), "inner": self.inner.state_dict()}

    def check_state(self, state: dict[str, Any]) -> None:
        super().check_state(state)
        if "inner" not in state:
            raise ValueError(f"this state of a {state['kind']} holds no state of its inner device")
        self.inner.check_state(state["inner"])  # the whole stack is checked before any of it changes

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self._load_state_unchecked(state)

    def __repr__(self) -> str:
        settings = self._describe()
        return f"{type(self).__name__}({self.inner!r}{', ' + settings if settings else ''})"


class Noisy(DeviceWrapper):
    """Additive Gaussian measurement noise (detector and readout noise).

    ``y = f(x, θ) + std · ε`` with ``ε ~ N(0, 1)`` independent per output, or,
    with ``relative=True``, ``y = f + std · |f| · ε`` (shot-noise-like noise
    proportional to the signal).  ``std`` is in the output's units (absolute)
    or a fraction (relative).  A fresh draw on every call; ``reference`` is
    the clean inner reference.  Cost: the inner call plus one Gaussian draw
    of ``B·m`` numbers.
    """

    def __init__(self, device: Device, std: float = 0.01, relative: bool = False, seed: int = 0) -> None:
        super().__init__(device)
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.std = float(std)
        self.relative = bool(relative)
        self.seed = seed
        self.generator = _make_generator(seed)

    def _state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        y = self.inner(x, theta)
        noise = torch.randn(y.shape, generator=self.generator, dtype=y.dtype).to(y.device)
        scale = self.std * y.abs() if self.relative else self.std
        return y + scale * noise

    def _describe(self) -> str:
        return f"std={self.std}, relative={self.relative}, seed={self.seed}"


class Quantized(DeviceWrapper):
    """An analogue-to-digital converter: ``2**bits`` levels over ``[low, high]``.

    Outputs are clipped to ``[low, high]`` and rounded to the nearest of the
    ``2**bits`` evenly spaced levels, so the measured output is piecewise
    constant in ``x`` and θ: its autograd gradient is zero almost everywhere
    (the rounding and clipping have zero derivative), which is exactly why a
    gradient estimator is needed.  ``reference`` is the clean inner
    reference.

    The range is one scalar interval for all outputs (one ADC).  Give ``low``
    and ``high``, or leave them None and call :meth:`calibrate` on a typical
    batch; an uncalibrated device calibrates itself on the first batch it
    sees.  Cost: the inner call plus ``O(B·m)``.
    """

    def __init__(self, device: Device, bits: int = 8, low: float | None = None, high: float | None = None) -> None:
        super().__init__(device)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24:
            raise ValueError(f"bits must be an int in [1, 24], got {bits!r}")
        if (low is None) != (high is None):
            raise ValueError("give both low and high, or neither (then calibrate)")
        if low is not None and not low < high:
            raise ValueError(f"low must be smaller than high, got low={low}, high={high}")
        self.bits = bits
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)

    @property
    def levels(self) -> int:
        """Number of distinct output values, ``2**bits``."""
        return 2**self.bits

    def calibrate(self, x: Tensor, theta: Tensor | None = None, margin: float = 0.05) -> tuple[float, float]:
        """Set the range to the span of the clean outputs on ``x``, widened by ``margin``.

        ``margin`` is a fraction of the span added on each side, so later
        inputs a little outside the calibration batch are not clipped.
        Returns ``(low, high)``.
        """
        with torch.no_grad():
            y = self.reference(x, theta)
        low, high = float(y.min()), float(y.max())
        pad = margin * (high - low) if high > low else max(abs(high), 1.0) * margin
        self.low, self.high = low - pad, high + pad
        return self.low, self.high

    def _state(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}  # set by the first batch when not given

    def _load_state(self, state: dict[str, Any]) -> None:
        self.low, self.high = state["low"], state["high"]

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        if self.low is None:
            self.calibrate(x, theta)
        y = self.inner(x, theta)
        step = (self.high - self.low) / (self.levels - 1)
        codes = torch.round((y.clamp(self.low, self.high) - self.low) / step)
        return codes * step + self.low

    def _describe(self) -> str:
        return f"bits={self.bits}, low={self.low}, high={self.high}"


class Saturating(DeviceWrapper):
    """Soft saturation of the detector: ``y = level · tanh(f / level)``.

    Linear for ``|f| ≪ level``, bounded by ``±level`` (in output units).
    Because the saturation is smooth and deterministic it is part of the
    physics: ``reference`` *includes* it (``level · tanh(reference / level)``),
    so ``exact_vjp`` is the true gradient of the saturated device.
    Cost: the inner call plus ``O(B·m)``.
    """

    def __init__(self, device: Device, level: float = 1.0) -> None:
        super().__init__(device)
        if level <= 0:
            raise ValueError(f"level must be > 0, got {level}")
        self.level = float(level)

    def _saturate(self, y: Tensor) -> Tensor:
        return self.level * torch.tanh(y / self.level)

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        return self._saturate(self.inner(x, theta))

    def _reference(self, x: Tensor, theta: Tensor | None) -> Tensor:
        return self._saturate(self.inner._reference(x, theta))

    def _describe(self) -> str:
        return f"level={self.level}"


class Drifting(DeviceWrapper):
    """Slow drift of a hidden per-output gain and offset (temperature, alignment).

    ``y = gain ⊙ f(x, θ) + offset`` with ``gain`` and ``offset`` vectors of
    length ``m``, hidden from the model.  Before every call each of them takes
    one random-walk step: ``log(gain) += rate · N(0, 1)`` (the gain stays
    positive) and ``offset += rate · N(0, 1)``, in output units.  The ``k``-th
    call therefore sees a drift of about ``rate · sqrt(k)``.  ``reference``
    is the clean inner reference (no drift); :meth:`reset` returns to
    ``gain = 1, offset = 0`` and reseeds.  Cost: the inner call plus ``O(B·m)``.
    """

    def __init__(self, device: Device, rate: float = 1e-3, seed: int = 0) -> None:
        super().__init__(device)
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Undo all drift and restart the random walk from the seed."""
        self.generator = _make_generator(self.seed)
        self.log_gain = torch.zeros(self.out_features, dtype=torch.float64)
        self.offset = torch.zeros(self.out_features, dtype=torch.float64)
        self.calls = 0

    @property
    def gain(self) -> Tensor:
        """The current hidden gain (float64, ``(m,)``)."""
        return self.log_gain.exp()

    def _state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "log_gain": self.log_gain.clone(),
            "offset": self.offset.clone(),
            "calls": self.calls,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.log_gain = state["log_gain"].clone().to(torch.float64)
        self.offset = state["offset"].clone().to(torch.float64)
        self.calls = int(state["calls"])

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        steps = torch.randn(2, self.out_features, generator=self.generator, dtype=torch.float64) * self.rate
        self.log_gain += steps[0]
        self.offset += steps[1]
        self.calls += 1
        y = self.inner(x, theta)
        return y * self.gain.to(y) + self.offset.to(y)

    def _describe(self) -> str:
        return f"rate={self.rate}, seed={self.seed}"


class Faulty(DeviceWrapper):
    """Fault injection: failing, hanging and malformed calls, NaN readings and latency.

    On every call, in this order: sleep ``latency`` seconds; draw the
    call's faults; with probability ``hang_rate`` hang — sleep ``hang``
    seconds (longer than the black box's ``timeout``, so that it abandons
    the call), then raise :class:`RuntimeError` without running the inner
    device, so an abandoned call changes no state; with probability
    ``error_rate`` raise :class:`RuntimeError` (the message says it is an
    injected fault); otherwise run the inner device and, with probability
    ``shape_rate``, return the output without its last sample (a readout
    cut short: the wrong shape), or, with probability ``nan_rate``, replace
    one randomly chosen sample (row) by NaN.  The draws are made on every
    call, so the fault sequence depends only on the seed and the number of
    calls (the draws for hangs and wrong shapes only when one of their rates
    is set, which keeps the sequences of the other faults as they were).

    Counters: ``calls``; ``errors``, ``hangs``, ``bad_shapes`` and
    ``nan_calls``, the calls given each fault; ``samples``, every sample
    handed to the device, and ``faulty_samples``, those of calls given a
    fault — the device's own count, to hold a ledger against.
    ``reference`` is the clean inner reference.  Cost: the inner call plus
    ``latency`` (and ``hang`` for a hung call).
    """

    def __init__(
        self,
        device: Device,
        error_rate: float = 0.0,
        nan_rate: float = 0.0,
        latency: float = 0.0,
        seed: int = 0,
        *,
        hang_rate: float = 0.0,
        hang: float = 1.0,
        shape_rate: float = 0.0,
    ) -> None:
        super().__init__(device)
        rates = (("error_rate", error_rate), ("nan_rate", nan_rate), ("hang_rate", hang_rate), ("shape_rate", shape_rate))
        for label, rate in rates:
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{label} must lie in [0, 1], got {rate}")
        for label, seconds in (("latency", latency), ("hang", hang)):
            if not seconds >= 0:
                raise ValueError(f"{label} must be >= 0 seconds, got {seconds}")
        self.error_rate = float(error_rate)
        self.nan_rate = float(nan_rate)
        self.hang_rate = float(hang_rate)
        self.shape_rate = float(shape_rate)
        self.latency = float(latency)
        self.hang = float(hang)
        self.seed = seed
        self.generator = _make_generator(seed)
        self.calls = self.errors = self.nan_calls = self.hangs = self.bad_shapes = 0
        self.samples = self.faulty_samples = 0

    _COUNTERS = ("calls", "errors", "nan_calls", "hangs", "bad_shapes", "samples", "faulty_samples")

    def _state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), **{name: getattr(self, name) for name in self._COUNTERS}}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        for name in self._COUNTERS:
            setattr(self, name, int(state[name]))

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        self.calls += 1
        self.samples += x.shape[0]
        if self.latency > 0:
            time.sleep(self.latency)
        error_draw, nan_draw, row_draw = torch.rand(3, generator=self.generator, dtype=torch.float64).tolist()
        hang_draw = shape_draw = 1.0
        if self.hang_rate > 0 or self.shape_rate > 0:
            hang_draw, shape_draw = torch.rand(2, generator=self.generator, dtype=torch.float64).tolist()
        if hang_draw < self.hang_rate:
            self.hangs += 1
            self.faulty_samples += x.shape[0]
            time.sleep(self.hang)
            raise RuntimeError(f"injected hang: {self.name} answered call {self.calls} only after {self.hang:g} s")
        if error_draw < self.error_rate:
            self.errors += 1
            self.faulty_samples += x.shape[0]
            raise RuntimeError(f"injected fault: {self.name} failed on call {self.calls} (error_rate={self.error_rate})")
        y = self.inner(x, theta)
        if shape_draw < self.shape_rate:
            self.bad_shapes += 1
            self.faulty_samples += x.shape[0]
            return y[:-1]
        if nan_draw < self.nan_rate and y.shape[0] > 0:
            self.nan_calls += 1
            self.faulty_samples += x.shape[0]
            row = min(int(row_draw * y.shape[0]), y.shape[0] - 1)
            poisoned = torch.zeros(y.shape[0], 1, dtype=torch.bool, device=y.device)
            poisoned[row] = True
            y = y.masked_fill(poisoned, float("nan"))  # out of place: keeps y's autograd graph valid
        return y

    def _describe(self) -> str:
        settings = f"error_rate={self.error_rate}, nan_rate={self.nan_rate}, latency={self.latency}, seed={self.seed}"
        if self.hang_rate or self.shape_rate:
            settings += f", hang_rate={self.hang_rate}, hang={self.hang}, shape_rate={self.shape_rate}"
        return settings
