"""The methods the benchmark compares, each a recipe for training a HybridNet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..devices import Device
from ..nets import FourierFeatures
from ..estimators import (
    SPSA,
    Broyden,
    DigitalTwin,
    Estimator,
    FiniteDifference,
    LeastSquares,
    LearnedJacobian,
    LearnedVJP,
    StraightThrough,
    Unbiased,
)


@dataclass(frozen=True)
class Method:
    """How to train: ``kind`` is ``"gradient"`` (an estimator per box), ``"readout"`` or ``"cma"``.

    ``make(device, task, seed)`` builds the estimator for one black box
    (``task.probe_step`` is the perturbation size, :func:`embedding` the
    task's input features for learned models); a ``make`` that returns None
    leaves the box to :class:`~blackgrad.module.BlackBox`'s own default;
    ``pretrain`` is the twin's pre-training budget in evaluations per
    training sample per epoch (amortised into the reported cost);
    ``section`` the part of the benchmark the method belongs to
    (:data:`SECTIONS`).
    """

    name: str
    label: str
    kind: str = "gradient"
    make: Callable[[Device, Any, int], Estimator | None] | None = None
    pretrain: float = 0.0
    section: str = "main"


#: the benchmark's sections: ``main`` compares the estimators as tuned for each task (its
#: probe step, Fourier features, probe counts); ``defaults`` builds every estimator class
#: as a new user would, with its class defaults
SECTIONS = ("main", "defaults")

#: the main-section methods every defaults-section table is read against
DEFAULTS_BASELINES = ("exact", "readout-only")


def embedding(device: Device, task: Any) -> FourierFeatures | None:
    """The learned models' input features for ``task``: Fourier features at its frequencies."""
    if not task.frequencies:
        return None
    return FourierFeatures(device.in_features + device.n_params, task.frequencies)


def learned(device: Device, task: Any, seed: int, **options: Any) -> dict[str, Any]:
    """Options shared by every learned estimator of the benchmark.

    (128, 128) hidden units: on the main task the online twin with slopes did
    as well with them as with (256, 256), in 70 % of the time
    (``benchmarks/twin_slope_fit.py``).  The size was chosen for that twin;
    BENCHMARKS.md lists what it cost the other learned methods.  Updates per
    backward pass: the class default (8; the twin used to take 4 in ``observe``
    and 4 more in ``learn``).
    """
    defaults = dict(hidden=(128, 128), lr=2e-3, batch_size=256, seed=seed, embedding=embedding(device, task))
    return {**defaults, **options}


def _exact(device: Device, task: Any, seed: int) -> Estimator:
    # The limit: the clean physics' exact VJP at the real (noisy) forward inputs.
    # A real device would not allow it.
    return StraightThrough(surrogate=device.reference)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("exact", "exact backprop (the limit)", make=_exact),
        Method("fd", "finite differences (forward)", make=lambda d, t, seed: FiniteDifference(step=t.probe_step, scheme="forward")),
        Method("spsa-1", "SPSA, 1 direction (antithetic)", make=lambda d, t, seed: SPSA(1, step=t.probe_step, seed=seed)),
        Method("spsa-8", "SPSA, 8 directions (antithetic)", make=lambda d, t, seed: SPSA(8, step=t.probe_step, seed=seed)),
        Method(
            "least-squares",
            "least squares, 4 probes + 8 neighbours",
            make=lambda d, t, seed: LeastSquares(probes=4, neighbors=8, step=t.probe_step, seed=seed),
        ),
        Method("broyden", "Broyden, 1 probe", make=lambda d, t, seed: Broyden(probes=1, step=t.probe_step, seed=seed)),
        Method(
            "pat-twin",
            "pre-trained twin, frozen (physics-aware training)",
            # the published anchor gets the larger twin: with (128, 128) it scored lower still
            make=lambda d, t, seed: DigitalTwin(**learned(d, t, seed, online=False, probes=0, hidden=(256, 256))),
            pretrain=1.0,
        ),
        Method("twin-online", "digital twin, online from forward data", make=lambda d, t, seed: DigitalTwin(**learned(d, t, seed, probes=0, slope_weight=0.0))),
        Method(
            "twin-slopes",
            "online twin fitted to values and 1-probe slopes",
            make=lambda d, t, seed: DigitalTwin(**learned(d, t, seed, probes=1.0, slope_weight=1.0, step=t.probe_step)),
        ),
        Method(
            "learned-jacobian",
            "learned Jacobian, 1 probe",
            make=lambda d, t, seed: LearnedJacobian(**learned(d, t, seed, step=t.probe_step, rank=16)),
        ),
        Method("learned-vjp", "learned VJP, 1 probe", make=lambda d, t, seed: LearnedVJP(**learned(d, t, seed, step=t.probe_step))),
        Method(
            "unbiased-jacobian",
            "learned Jacobian + unbiased correction, 1 probe",
            make=lambda d, t, seed: Unbiased(LearnedJacobian(**learned(d, t, seed, probes=0, rank=16)), step=t.probe_step, seed=seed + 1),
        ),
        Method(
            "unbiased-vjp",
            "learned VJP + unbiased correction, 1 probe",
            make=lambda d, t, seed: Unbiased(LearnedVJP(**learned(d, t, seed, probes=0)), step=t.probe_step, seed=seed + 1),
        ),
        Method(
            "unbiased-twin",
            "online twin + unbiased correction, 1 probe",
            # the twin takes its own slope as the wrapper measures the device's: one-sided, same step
            make=lambda d, t, seed: Unbiased(
                DigitalTwin(**learned(d, t, seed, slope_weight=1.0, step=t.probe_step)), step=t.probe_step, seed=seed + 1
            ),
        ),
        Method("readout-only", "readout only (reservoir computing)", kind="readout"),
        Method("cma-es", "separable CMA-ES on all digital parameters", kind="cma"),
        # The defaults section: each class as a new user would build it, no options but seed=
        # (none of the task's probe step, Fourier features or tuned sizes).  Whatever a class's
        # defaults are when the benchmark runs is what it measures.
        *(
            Method(name, f"{label} (defaults)", make=make, section="defaults")
            for name, label, make in [
                ("default", "BlackBox(device) with no estimator", lambda d, t, seed: None),
                ("default-fd", "FiniteDifference()", lambda d, t, seed: FiniteDifference()),
                ("default-spsa", "SPSA()", lambda d, t, seed: SPSA(seed=seed)),
                ("default-least-squares", "LeastSquares()", lambda d, t, seed: LeastSquares(seed=seed)),
                ("default-broyden", "Broyden()", lambda d, t, seed: Broyden(seed=seed)),
                ("default-twin", "DigitalTwin()", lambda d, t, seed: DigitalTwin(seed=seed)),
                ("default-learned-jacobian", "LearnedJacobian()", lambda d, t, seed: LearnedJacobian(seed=seed)),
                ("default-learned-vjp", "LearnedVJP()", lambda d, t, seed: LearnedVJP(seed=seed)),
                ("default-unbiased-twin", "Unbiased(DigitalTwin())", lambda d, t, seed: Unbiased(DigitalTwin(seed=seed), seed=seed + 1)),
            ]
        ),
    ]
}
