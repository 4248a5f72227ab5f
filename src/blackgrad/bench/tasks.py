"""Benchmark tasks: which data goes through which laboratory, with which training settings; the registry.

The pieces live in files of their own — the datasets in :mod:`.data`, the
devices as measured in :mod:`.labs`, the hybrid model in :mod:`.model` — and
are re-exported here, where the benchmark scripts have always found them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..devices import Device
from .data import Data, digits, moons
from .labs import (
    DRIFT_RATE,
    noisy_quantized,
    oscillators_lab,
    shg_coarse_lab,
    shg_drifting_lab,
    shg_gentle_lab,
    shg_lab,
    shg_wide_lab,
)
from .model import HybridNet

__all__ = [
    "Task",
    "tasks",
    "shg_frequencies",
    "SHG_FREQUENCIES",
    "Data",
    "digits",
    "moons",
    "HybridNet",
    "DRIFT_RATE",
    "noisy_quantized",
    "oscillators_lab",
    "shg_coarse_lab",
    "shg_drifting_lab",
    "shg_gentle_lab",
    "shg_lab",
    "shg_wide_lab",
]


@dataclass
class Task:
    """One benchmark task: data, how to build its device(s), training settings.

    ``probe_step`` is the perturbation size every probing estimator uses on
    this task: on a noisy, quantized device it must move the output by more
    than the noise and the ADC step, far above the float32 default.  (The
    defaults section ignores it: its estimators keep their class defaults.)

    ``methods`` restricts the main section on this task; the defaults section
    runs all of its methods everywhere.  ``sections`` names the sections whose
    run, when no tasks are named, includes this task.
    """

    name: str
    title: str
    data: Callable[[bool], Data]
    device: Callable[[int], Device]
    layers: int = 1
    epochs: int = 20
    quick_epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-2
    probe_step: float = 0.02
    frequencies: tuple[float, ...] = ()  # Fourier input features of learned models (empty: none)
    pretrain_epochs: int = 40
    normalize: bool = False  # batch-normalise each device's output before the next digital layer
    methods: tuple[str, ...] | None = None  # the main section's methods here (None: all of them)
    sections: tuple[str, ...] = ("main", "defaults")  # the sections whose default run includes this task
    notes: str = ""
    extra: dict = field(default_factory=dict)


def shg_frequencies(phase_scale: float) -> tuple[float, ...]:
    """Fourier features that make an SHG response smooth: ⅓, ⅔ and 1 times its phase per unit input."""
    return tuple(phase_scale * k / 3 for k in (1, 2, 3))


#: SHG writes phase 3π per unit of input: features at π, 2π, 3π make its response smooth
SHG_FREQUENCIES = shg_frequencies(3 * math.pi)


def tasks() -> dict[str, Task]:
    """The benchmark's tasks, by name."""
    core = ("exact", "fd", "spsa-8", "pat-twin", "twin-online", "twin-slopes", "unbiased-vjp", "readout-only", "cma-es")
    return {
        task.name: task
        for task in [
            Task(
                "digits-shg",
                "digits through noisy 8-bit SHG",
                lambda quick: digits(200 if quick else None),
                shg_lab,
                frequencies=SHG_FREQUENCIES,
                notes="SHG (16 inputs, 16 trainable phase blocks, 16 outputs), 1 % noise, 8-bit ADC",
            ),
            Task(
                "digits-oscillators",
                "digits through noisy coupled oscillators",
                lambda quick: digits(200 if quick else None),
                oscillators_lab,
                methods=core,
                notes="16 Duffing oscillators (16 trainable drive detunings), 1 % noise, 10 time units",
            ),
            Task(
                "moons-shg",
                "two moons through noisy 8-bit SHG",
                lambda quick: moons(300 if quick else 600),
                shg_lab,
                frequencies=SHG_FREQUENCIES,
                epochs=20,
                batch_size=32,
                methods=core,
            ),
            Task(
                "digits-deep-shg",
                "digits through three SHG layers in series",
                lambda quick: digits(200 if quick else None),
                shg_gentle_lab,
                frequencies=shg_frequencies(math.pi),
                layers=3,
                epochs=12,
                normalize=True,
                probe_step=0.06,  # the same phase step as 0.02 on a 3π layer: a third of the phase per unit
                methods=core,
                notes=(
                    "three noisy 8-bit SHG layers (phase ±π) with digital BatchNorm, Linear and tanh "
                    "between them: errors compound"
                ),
            ),
            # Three devices a method that claims to work on any device must survive.  They run in
            # the defaults section; the main section runs its core methods on them when named
            # (``--tasks``), but its default run leaves them out to keep its cost.
            Task(
                "digits-drift-shg",
                "digits through slowly drifting noisy 8-bit SHG",
                lambda quick: digits(200 if quick else None),
                shg_drifting_lab,
                frequencies=SHG_FREQUENCIES,
                methods=core,
                sections=("defaults",),
                notes=(
                    f"the main task's SHG with a hidden per-output gain and offset drifting as random walks "
                    f"({DRIFT_RATE:g} per device call, before the noise and ADC): the response moves by "
                    "about 18 % over a forward-only training run, more for methods that probe in calls of "
                    "their own, so a twin frozen after pre-training goes stale"
                ),
            ),
            Task(
                "digits-coarse-shg",
                "digits through noisy SHG with a 5-bit ADC",
                lambda quick: digits(200 if quick else None),
                shg_coarse_lab,
                frequencies=SHG_FREQUENCIES,
                # twice the main task's step: a one-sided difference at 0.02 mostly sees the
                # 0.032 ADC step and the noise (forward-difference VJP cosine 0.26 at 0.02, 0.43 at 0.04)
                probe_step=0.04,
                methods=core,
                sections=("defaults",),
                notes="the main task's SHG, 1 % noise, 5-bit ADC: 32 levels over [0, 1]",
            ),
            Task(
                "digits-wide-shg",
                "digits through a wide (64 → 64) noisy 8-bit SHG",
                lambda quick: digits(200 if quick else None),
                shg_wide_lab,
                frequencies=SHG_FREQUENCIES,
                methods=core,
                sections=("defaults",),
                notes="SHG with 64 inputs, 64 trainable phase blocks, 64 outputs (256 spectral bins), 1 % noise, 8-bit ADC",
            ),
        ]
    }
