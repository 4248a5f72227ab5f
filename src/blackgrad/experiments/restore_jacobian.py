"""Experiment ``restore-jacobian``: learn the Jacobian of ``f(x) = θx`` from probes.

The idea: train a backward model from perturbation probes, using the scalar
identity ``(gᵀJ)·dα = gᵀ(J dα)``: the model ``Ĵ`` is fitted so that
``Ĵ ε ≈ s``, the slope the device shows along a random direction ``ε``.  The
"restore the Jacobian" experiment helps the algorithm by giving it the
structure of the answer — for ``f(x) = θx`` the Jacobian is the constant
matrix ``θ`` (``dim_o × dim_i``) — so that one can watch how well ``Ĵ``
approaches ``θ``.  Its knobs:

* ``dim_sample``: the number of random probe directions per sample in a
  minibatch (random subspace sampling: the directions span a random
  ``dim_sample``-dimensional subspace of the ``dim_i`` inputs);
* the epoch count, ``∝ dim_i · dim_o / dim_sample`` (so every run spends the
  same number of probes per Jacobian entry);
* the training loss: MSE, cosine or their sum;
* ``initial_messup``: "the random parameters of J could be scaled at first"
  — here ``Ĵ₀ = initial_messup · R`` with ``R`` a Gaussian matrix whose
  entries have the true entries' standard deviation ``1/√dim_i`` (so
  ``initial_messup = 1`` is a random guess of the right scale).

The claims under test: at the same ``dim_sample`` in proportion, random subspace
sampling works better at higher dimension; the loss can go up while the sign
of every Jacobian entry keeps improving; cosine similarity cannot see scale.

Here the device is :class:`~blackgrad.devices.Linear` (its default θ is the
matrix to restore) and the learner is
``LearnedJacobian(model=ConstantJacobian(dim_o, dim_i))``, driven through the
estimator contract: each epoch is one ``vjp`` call on a fresh batch, which
spends ``dim_sample`` one-sided probes per sample, stores them in the replay
buffer and takes ``updates`` Adam steps.  Adam moves every entry by about
its learning rate per step, so the learning rate is given relative to the
entries' scale ``1/√dim_i``; the same relative rate then means the same
thing at every size.  Three studies share every run's diagnostics:

* **sampling**: every ``(dim_i, dim_o)`` of ``dims`` × every fraction
  ``dim_sample / dim_i``; MSE, ``initial_messup = 1``, default rate;
* **initial scale**: ``scale_dims`` × losses × ``messups`` × ``lrs``, every
  run ``scale_epochs`` long (convergence is bound by optimiser steps — see
  the sampling study — so every size gets the same number of steps);
* **loss rises**: every run is scanned for stretches where the (smoothed)
  training loss climbs above its best value so far while the fraction of
  entries of ``Ĵ`` with the right sign rises.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib import colormaps, ticker
import numpy as np
import torch

from blackgrad.devices import Linear
from blackgrad.estimators import LearnedJacobian
from blackgrad.estimators.base import VJPQuery
from blackgrad.experiments import _common
from blackgrad.experiments._common import claim, save_figure, subplots, write_results
from blackgrad.nets import ConstantJacobian

NAME = "restore-jacobian"
TITLE = "Restore the Jacobian of f(x) = θx from random-subspace probes"

LOSSES = ("mse", "cosine", "mse+cosine")
#: what every run records after each epoch
METRICS = ("loss", "relative_error", "sign_agreement", "direction_cosine", "scale_ratio")
#: points kept per curve in results.json (the figures use every epoch)
STORED_POINTS = 60


@dataclass
class Config:
    """Parameters of the ``restore-jacobian`` experiment."""

    dims: tuple[tuple[int, int], ...] = ((8, 8), (8, 64), (64, 8), (64, 64))  # (dim_i, dim_o); first = low, last = high
    sample_fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)  # dim_sample / dim_i
    probes_per_entry: float = 32.0  # epochs = probes_per_entry / batch · dim_i·dim_o / dim_sample
    batch: int = 16  # samples per epoch, each probed along dim_sample directions
    updates: int = 1  # Adam steps per epoch
    minibatch: int = 128  # replay rows per Adam step
    buffer: int = 4096  # replay buffer capacity, in probe rows
    lr: float = 0.1  # Adam learning rate in units of the entries' scale 1/√dim_i
    scale_dims: tuple[tuple[int, int], ...] = ((8, 8), (64, 64))  # sizes of the initial-scale study; last one drawn
    losses: tuple[str, ...] = LOSSES
    messups: tuple[float, ...] = (0.01, 1.0, 100.0)  # initial_messup values of the initial-scale study
    lrs: tuple[float, ...] = (0.1, 1.0)  # relative learning rates of the initial-scale study
    scale_fraction: float = 0.25  # dim_sample / dim_i of the initial-scale study
    scale_epochs: int = 512  # epochs of every initial-scale run (convergence is bound by Adam steps, not probes)
    rise_min: float = 0.1  # a loss rise counts from +10 % (smoothed over rise_window epochs) ...
    rise_sign_gain: float = 0.01  # ... with the sign agreement up ≥ 1 point (and ≥ 2 entries) meanwhile
    rise_window: int = 5
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        """A few seconds: 4×4 and 16×16, three fractions, the initial-scale study at 16×16 only."""
        return cls(dims=((4, 4), (16, 16)), sample_fractions=(0.25, 0.5, 1.0), probes_per_entry=16.0,
                   scale_dims=((16, 16),), scale_epochs=40)

    @property
    def low(self) -> tuple[int, int]:
        return tuple(self.dims[0])

    @property
    def high(self) -> tuple[int, int]:
        return tuple(self.dims[-1])


@dataclass(frozen=True)
class RunSpec:
    """One training run: sizes, probe directions per sample, loss, initial scale, relative learning rate."""

    dim_i: int
    dim_o: int
    dim_sample: int
    loss: str
    messup: float
    lr: float
    fixed_epochs: int | None = None  # None: the same probes per Jacobian entry

    def epochs(self, config: Config) -> int:
        """``fixed_epochs``, or ``∝ dim_i·dim_o / dim_sample``: the same probes per entry for every run."""
        if self.fixed_epochs is not None:
            return self.fixed_epochs
        return max(1, math.ceil(config.probes_per_entry / config.batch * self.dim_i * self.dim_o / self.dim_sample))

    def label(self) -> str:
        return (f"{self.dim_i}×{self.dim_o} dim_sample={self.dim_sample} {self.loss} initial_messup={self.messup:g} "
                f"relative lr={self.lr:g}")


def dim_sample_for(dim_i: int, fraction: float) -> int:
    """Probe directions per sample for a fraction of the input dimension (at least one)."""
    return max(1, round(fraction * dim_i))


def train_restore(spec: RunSpec, config: Config) -> dict[str, np.ndarray]:
    """Train ``Ĵ`` for one run; return the per-epoch curves of :data:`METRICS` and the probes spent.

    The device matrix (``Linear`` with seed ``config.seed``), the random
    direction of ``Ĵ₀`` and the input stream depend only on the sizes and the
    seed, so runs that differ in loss, scale or rate start from the same
    problem and see the same inputs.
    """
    n, m = spec.dim_i, spec.dim_o
    device = Linear(n, m, seed=config.seed)
    truth = device.matrix(device.default_params(torch.float64))
    entry_scale = 1 / math.sqrt(n)  # std of the true entries (Linear's default θ)
    init = torch.randn(m, n, generator=torch.Generator().manual_seed(config.seed + 1), dtype=torch.float64)
    model = ConstantJacobian(m, n).double()
    with torch.no_grad():
        model.matrix.copy_(spec.messup * entry_scale * init)
    estimator = LearnedJacobian(
        model=model, probes=spec.dim_sample, loss=spec.loss, lr=spec.lr * entry_scale, updates=config.updates,
        batch_size=config.minibatch, buffer=config.buffer, seed=config.seed,
    )
    data = torch.Generator().manual_seed(config.seed + 2)
    active, shared = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    epochs = spec.epochs(config)
    curves = {key: np.empty(epochs) for key in METRICS}
    truth_norm = truth.norm()
    for epoch in range(epochs):
        x = torch.randn(config.batch, n, generator=data, dtype=torch.float64)
        grad_out = torch.randn(config.batch, m, generator=data, dtype=torch.float64)
        estimator.vjp(device, VJPQuery(alpha=x, y=device(x), grad_out=grad_out, active=active, shared=shared))
        estimate = model.matrix.detach()
        curves["loss"][epoch] = np.mean(estimator.train_losses[-config.updates:])
        curves["relative_error"][epoch] = float((estimate - truth).norm() / truth_norm)
        curves["sign_agreement"][epoch] = float((torch.sign(estimate) == torch.sign(truth)).double().mean())
        curves["direction_cosine"][epoch] = float((estimate * truth).sum() / (estimate.norm() * truth_norm).clamp(min=1e-300))
        curves["scale_ratio"][epoch] = float(estimate.norm() / truth_norm)
    curves["probes"] = np.arange(1, epochs + 1) * estimator.probe_cost(n, m, config.batch)
    curves["initial_relative_error"] = float((spec.messup * entry_scale * init - truth).norm() / truth_norm)
    curves["initial_sign_agreement"] = float((torch.sign(init) == torch.sign(truth)).double().mean())
    return curves


def loss_rise(loss: np.ndarray, sign: np.ndarray, entries: int, rise_min: float, sign_gain: float,
              window: int = 5) -> dict | None:
    """The largest "loss went up, yet more signs are right" pair of epochs of one run, or None.

    The training loss is smoothed by a trailing mean of its log over
    ``window`` epochs (single minibatches are noisy).  An event is a pair of
    epochs ``a < b`` where the smoothed loss at ``b`` is at least
    ``1 + rise_min`` times that at ``a`` while the fraction of entries of
    ``Ĵ`` with the right sign has risen by at least ``sign_gain`` and by at
    least two entries.  Returns the pair with the largest sign gain:
    ``start``, ``end`` (0-based epochs), ``loss_ratio``, ``sign_from``, ``sign_to``.
    """
    window = max(1, min(window, len(loss)))
    smooth = np.convolve(np.log(np.maximum(loss, 1e-300)), np.ones(window) / window, mode="valid")
    signs = sign[window - 1:]
    later = np.triu(np.ones((len(smooth), len(smooth)), dtype=bool), k=1)  # [a, b] with a < b
    rise = smooth[None, :] - smooth[:, None]
    gain = signs[None, :] - signs[:, None]
    event = later & (rise >= np.log1p(rise_min)) & (gain >= max(sign_gain, 1.5 / entries))
    if not event.any():
        return None
    a, b = np.unravel_index(np.argmax(np.where(event, gain, -np.inf)), event.shape)
    offset = window - 1  # smoothed index i ends at epoch i + offset
    return {"start": int(a + offset), "end": int(b + offset), "loss_ratio": float(np.exp(rise[a, b])),
            "sign_from": float(signs[a]), "sign_to": float(signs[b])}


# ----------------------------------------------------------------------------- run


def plan(config: Config) -> tuple[list[RunSpec], list[RunSpec]]:
    """The runs of the sampling study and of the initial-scale study."""
    sampling = [RunSpec(n, m, dim_sample_for(n, fraction), "mse", 1.0, config.lr)
                for n, m in config.dims for fraction in config.sample_fractions]
    scale = [RunSpec(n, m, dim_sample_for(n, config.scale_fraction), loss, messup, lr, config.scale_epochs)
             for n, m in config.scale_dims for lr in config.lrs for loss in config.losses for messup in config.messups]
    return sampling, scale


def run(config: Config, out: Path, progress: bool = True) -> dict:
    """Train every run, scan it for loss rises, write figures and ``results.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sampling, scale = plan(config)
    specs = sampling + scale
    curves: dict[RunSpec, dict] = {}
    for spec in _common.progress(specs, progress, desc="restore runs"):
        curves[spec] = train_restore(spec, config)
    rises = {spec: loss_rise(c["loss"], c["sign_agreement"], spec.dim_i * spec.dim_o, config.rise_min,
                             config.rise_sign_gain, config.rise_window) for spec, c in curves.items()}
    sampling_table = _sampling_table(config, sampling, curves)
    scale_table = [{"dims": [s.dim_i, s.dim_o], "dim_sample": s.dim_sample, "loss": s.loss, "messup": s.messup,
                    "lr": s.lr, **{f"final_{key}": curves[s][key][-1] for key in METRICS}} for s in scale]
    figures = [
        _curves_figure(out, config, sampling, curves),
        _sampling_summary_figure(out, config, sampling_table),
        _scale_figure(out, config, scale, curves),
        _rise_figure(out, curves, rises),
    ]
    result = {
        "name": NAME,
        "title": TITLE,
        "config": asdict(config),
        "sampling": sampling_table,
        "initial_scale": scale_table,
        "runs": [_run_record(spec, config, curves[spec], rises[spec]) for spec in specs],
        "figures": figures,
        "claims": _claims(config, sampling_table, scale, curves, rises),
    }
    return write_results(out, result)


def _sampling_table(config: Config, sampling, curves) -> list[dict]:
    """Per sampling run: final errors, and the error after as many Adam steps as the low-dimensional run took.

    With that normalisation (the same probes per entry) a run takes ``∝ dim_o / fraction`` steps, so a
    larger run has also taken more optimiser steps; the second number removes
    that difference.
    """
    low_epochs = {s.dim_sample / s.dim_i: s.epochs(config) for s in sampling if (s.dim_i, s.dim_o) == config.low}
    rows = []
    for s in sampling:
        fraction = s.dim_sample / s.dim_i
        steps = min(low_epochs.get(fraction, s.epochs(config)), s.epochs(config))
        rows.append({"dims": [s.dim_i, s.dim_o], "fraction": fraction, "dim_sample": s.dim_sample,
                     "epochs": s.epochs(config), "final_relative_error": curves[s]["relative_error"][-1],
                     "final_sign_agreement": curves[s]["sign_agreement"][-1], "low_steps": steps,
                     "relative_error_at_low_steps": curves[s]["relative_error"][steps - 1],
                     "sign_agreement_at_low_steps": curves[s]["sign_agreement"][steps - 1]})
    return rows


def _run_record(spec: RunSpec, config: Config, curve: dict, rise: dict | None) -> dict:
    epochs = spec.epochs(config)
    keep = np.unique(np.linspace(0, epochs - 1, min(epochs, STORED_POINTS)).round().astype(int))
    return {
        **asdict(spec),
        "epochs": epochs,
        "probes": int(curve["probes"][-1]),
        "probes_per_entry": float(curve["probes"][-1] / (spec.dim_i * spec.dim_o)),
        "initial_relative_error": curve["initial_relative_error"],
        "initial_sign_agreement": curve["initial_sign_agreement"],
        "final": {key: float(curve[key][-1]) for key in METRICS},
        "loss_rise": rise,
        "curves": {"epoch": keep, **{key: curve[key][keep] for key in METRICS}},
    }


# ----------------------------------------------------------------------------- claims


def _fmt_dims(n: int, m: int) -> str:
    return f"{n}×{m}"


def _claims(config: Config, sampling_table, scale, curves, rises) -> list[dict]:
    """Every claim of the experiment, in the order of the report."""
    final, sizes = _final_at_default_lr(config, scale, curves)
    return [
        *_sampling_claims(config, sampling_table),
        _loss_rise_claim(config, curves, rises),
        *_cosine_scale_claim(config, final, sizes),
        *_mse_messup_claims(config, final, sizes),
        *_summed_losses_claim(config, final, sizes),
    ]


def _sampling_claims(config: Config, sampling_table) -> list[dict]:
    """Random subspace sampling works better at higher dimension, and why (the probes, not the steps)."""
    claims = []
    low, high = config.low, config.high
    table = {(tuple(r["dims"]), r["fraction"]): r for r in sampling_table}
    fractions = [f for f in sorted({r["fraction"] for r in sampling_table}) if (low, f) in table and (high, f) in table]
    if low != high and fractions:
        pairs = {f: (table[(low, f)], table[(high, f)]) for f in fractions}
        claims.append(claim(
            "For the same dim_sample (in proportion), random subspace sampling works better at higher dimension "
            "(epochs ∝ dim_i·dim_o/dim_sample)",
            f"final ‖Ĵ−θ‖/‖θ‖ (right-sign fraction), {_fmt_dims(*low)} → {_fmt_dims(*high)}, every run spending "
            f"{config.probes_per_entry:g} probes per entry (MSE, initial_messup 1): "
            + ", ".join(f"dim_sample/dim_i = {f:g}: {a['final_relative_error']:.2g} ({a['final_sign_agreement']:.3f}) → "
                        f"{b['final_relative_error']:.2g} ({b['final_sign_agreement']:.3f})" for f, (a, b) in pairs.items())
            + "; holds if the high-dimensional error is lower at every fraction",
            all(b["final_relative_error"] < a["final_relative_error"] for a, b in pairs.values())))
        claims.append(claim(
            "(our reading of the above) the higher-dimensional advantage comes from the probes themselves, not "
            "from the extra optimiser steps the epoch normalisation gives larger runs",
            f"‖Ĵ−θ‖/‖θ‖ after as many Adam steps as the {_fmt_dims(*low)} run took, {_fmt_dims(*low)} → "
            f"{_fmt_dims(*high)}: "
            + ", ".join(f"{f:g} ({a['low_steps']} steps): {a['final_relative_error']:.2g} → "
                        f"{b['relative_error_at_low_steps']:.2g}" for f, (a, b) in pairs.items())
            + f" (the whole {_fmt_dims(*high)} runs take {high[1] / low[1]:g}× as many steps); holds if the "
              "high-dimensional error is ≥ 20 % lower at every fraction at equal steps",
            all(b["relative_error_at_low_steps"] < 0.8 * a["final_relative_error"] for a, b in pairs.values())))
    return claims


def _loss_rise_claim(config: Config, curves, rises) -> dict:
    """The loss can rise while the signs of Ĵ keep improving: the events found."""
    found = {spec: event for spec, event in rises.items() if event is not None}
    default = [spec for spec in curves if spec.lr == config.lr]
    default_found = [spec for spec in default if spec in found]
    examples = sorted(found.items(), key=lambda item: item[1]["sign_from"] - item[1]["sign_to"])[:3]
    return claim(
        "The loss can go up while the sign of the Jacobian's components keeps improving",
        f"event := epochs a < b where the training loss (log-mean over {config.rise_window} epochs) is "
        f"≥ {1 + config.rise_min:g}× higher at b than at a while the fraction of entries of Ĵ with the right sign "
        f"is ≥ {config.rise_sign_gain:g} (and 2 entries) higher. "
        f"Found in {len(found)} of {len(curves)} runs ({len(default_found)} of {len(default)} at the default "
        f"relative learning rate {config.lr:g}, {len(found) - len(default_found)} of {len(curves) - len(default)} "
        "at larger ones)"
        + ("; largest: " + "; ".join(
            f"{spec.label()}: epochs {e['start']}–{e['end']}, loss ×{e['loss_ratio']:.2f}, signs "
            f"{e['sign_from']:.3f} → {e['sign_to']:.3f}" for spec, e in examples) if examples else ""),
        bool(found))


def _final_at_default_lr(config: Config, scale, curves) -> tuple[dict, list]:
    """The final metrics of the scale runs at the default learning rate, and their (dim_i, dim_o) sizes."""
    at_default = [spec for spec in scale if spec.lr == config.lr]
    final = {(s.dim_i, s.dim_o, s.loss, s.messup): {key: curves[s][key][-1] for key in METRICS} for s in at_default}
    sizes = list(dict.fromkeys((s.dim_i, s.dim_o) for s in at_default))
    return final, sizes


def _cosine_scale_claim(config: Config, final: dict, sizes: list) -> list[dict]:
    """Cosine similarity cannot see scale (no claim when the cosine or MSE runs are absent)."""
    messups = sorted(config.messups)
    claims = []
    if {"cosine", "mse"} <= set(config.losses) and sizes:
        cosine = {(size, mu): (final[(*size, "cosine", mu)], final[(*size, "mse", mu)]) for size in sizes for mu in messups}
        mse_restored = [abs(m["scale_ratio"] - 1) < 0.1 for (size, mu), (_, m) in cosine.items() if mu <= 1]
        claims.append(claim(
            "Cosine similarity cannot see scale: a cosine-trained backward model gets the direction but not the size",
            "final ‖Ĵ‖/‖θ‖ and cos(Ĵ, θ) as matrices, cosine loss (MSE from the same start): "
            + "; ".join(f"{_fmt_dims(*size)} messup {mu:g}: {c['scale_ratio']:.3g}, {c['direction_cosine']:.4f} "
                        f"({m['scale_ratio']:.3g}, {m['direction_cosine']:.4f})" for (size, mu), (c, m) in cosine.items())
            + "; holds if every cosine run's norm ends ≥ 10 % off while MSE, from every initial scale ≤ 1, ends "
              "within 10 %",
            all(abs(c["scale_ratio"] - 1) > 0.1 for c, _ in cosine.values()) and bool(mse_restored) and all(mse_restored)))
    return claims


def _mse_messup_claims(config: Config, final: dict, sizes: list) -> list[dict]:
    """MSE sees the scale, but badly from a wrong initial scale: one claim per initial_messup ≠ 1."""
    messups = sorted(config.messups)
    claims = []
    if "mse" in config.losses and 1.0 in messups and sizes:
        for mu in [mu for mu in messups if mu != 1.0]:
            rows = {size: (final[(*size, "mse", 1.0)], final[(*size, "mse", mu)], final.get((*size, "cosine", mu)))
                    for size in sizes}
            which = "too large" if mu > 1 else "too small"
            claims.append(claim(
                f"MSE sees the scale, but badly when the initial scale is off ({which}: initial_messup = {mu:g})",
                "MSE, final relative error from the right scale → from this one (its cos(Ĵ, θ); the cosine "
                "loss's from the same start): "
                + "; ".join(f"{_fmt_dims(*size)}: {good['relative_error']:.2g} → {bad['relative_error']:.2g} "
                            f"({bad['direction_cosine']:.3f}" + (f"; {cos['direction_cosine']:.3f})" if cos else ")")
                            for size, (good, bad, cos) in rows.items())
                + "; holds if the error is ≥ 10× larger than from the right scale at every size",
                all(bad["relative_error"] >= 10 * good["relative_error"] for good, bad, _ in rows.values())))
    return claims


def _summed_losses_claim(config: Config, final: dict, sizes: list) -> list[dict]:
    """1 − cos + MSE has a single minimum: the full Jacobian, scale included."""
    messups = sorted(config.messups)
    claims = []
    if {"mse", "mse+cosine"} <= set(config.losses) and sizes:
        both = {(size, mu): (final[(*size, "mse+cosine", mu)], final[(*size, "mse", mu)]) for size in sizes for mu in messups}
        small = [pair for (size, mu), pair in both.items() if mu <= 1]
        claims.append(claim(
            "Summing the two losses (1 − cos + MSE) gives a single minimum: the full Jacobian, scale included",
            "final relative error, mse+cosine (MSE alone): "
            + "; ".join(f"{_fmt_dims(*size)} messup {mu:g}: {s['relative_error']:.2g} ({m['relative_error']:.2g})"
                        for (size, mu), (s, m) in both.items())
            + "; holds if the sum restores Ĵ to < 1 % from every initial scale ≤ 1 (larger ones: see the MSE rows)",
            bool(small) and all(s["relative_error"] < 0.01 for s, _ in small)))
    return claims


# ----------------------------------------------------------------------------- figures


def _colors(count: int):
    return colormaps["viridis"](np.linspace(0, 0.85, max(count, 1)))


def _curves_figure(out: Path, config: Config, sampling, curves) -> str:
    panels = list(dict.fromkeys((config.low, config.high)))
    fig, axes = subplots(3, len(panels), figsize=(4.8 * len(panels), 7.5), squeeze=False, sharex="col")
    for column, dims in enumerate(panels):
        specs = [s for s in sampling if (s.dim_i, s.dim_o) == dims]
        for spec, color in zip(specs, _colors(len(specs))):
            c = curves[spec]
            per_entry = c["probes"] / (spec.dim_i * spec.dim_o)
            label = f"dim_sample {spec.dim_sample} ({spec.dim_sample / spec.dim_i:g}·dim_i), {spec.epochs(config)} epochs"
            axes[0, column].semilogy(per_entry, c["loss"], color=color, lw=0.8, label=label)
            axes[1, column].semilogy(per_entry, c["relative_error"], color=color, lw=1.2)
            axes[2, column].plot(per_entry, c["sign_agreement"], color=color, lw=1.2)
        axes[0, column].set_title(f"dim_i × dim_o = {_fmt_dims(*dims)} (MSE, initial_messup 1)", fontsize=10)
        axes[0, column].legend(fontsize=7)
        axes[2, column].set_xlabel("probes per Jacobian entry")
    axes[0, 0].set_ylabel("training loss (MSE)")
    axes[1, 0].set_ylabel("‖Ĵ − θ‖ / ‖θ‖")
    axes[2, 0].set_ylabel("right-sign fraction of entries")
    fig.suptitle("Restoring θ of f(x) = θx from random-subspace probes", fontsize=11)
    return save_figure(fig, out, "sampling_curves.png")


def _sampling_summary_figure(out: Path, config: Config, sampling_table) -> str:
    fig, ax = subplots(figsize=(6, 4))
    sizes = list(dict.fromkeys(tuple(r["dims"]) for r in sampling_table))
    for size, color in zip(sizes, _colors(len(sizes))):
        rows = [r for r in sampling_table if tuple(r["dims"]) == size]
        fractions = [r["fraction"] for r in rows]
        ax.loglog(fractions, [r["final_relative_error"] for r in rows], "o-", color=color,
                  label=f"{_fmt_dims(*size)}, whole run")
        if size != config.low:
            ax.loglog(fractions, [r["relative_error_at_low_steps"] for r in rows], "s--", color=color, ms=4, lw=0.9,
                      label=f"{_fmt_dims(*size)}, after the {_fmt_dims(*config.low)} run's steps")
    ax.set_xlabel("dim_sample / dim_i")
    ax.set_xticks(sorted({r["fraction"] for r in sampling_table}))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel("‖Ĵ − θ‖ / ‖θ‖")
    ax.set_title(f"every run: {config.probes_per_entry:g} probes per entry, epochs ∝ dim_i·dim_o/dim_sample", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out, "sampling_summary.png")


def _scale_figure(out: Path, config: Config, scale, curves) -> str:
    size = tuple(config.scale_dims[-1])
    specs = [s for s in scale if (s.dim_i, s.dim_o) == size and s.lr == config.lr]
    fig, (ax_direction, ax_scale) = subplots(1, 2, figsize=(11, 4.2), sharex=True)
    colors = dict(zip(LOSSES, ("tab:blue", "tab:red", "tab:green")))
    styles = dict(zip(sorted(config.messups), ("--", "-", ":", "-.")))
    for spec in specs:
        c = curves[spec]
        epochs = np.arange(1, len(c["loss"]) + 1)
        direction = np.maximum(1 - c["direction_cosine"], 1e-16)  # exact alignment cannot be drawn on a log axis
        style = dict(color=colors.get(spec.loss), ls=styles.get(spec.messup, "-"), lw=1.1)
        ax_direction.semilogy(epochs, direction, label=f"{spec.loss}, initial_messup {spec.messup:g}", **style)
        ax_scale.semilogy(epochs, c["scale_ratio"], **style)
    ax_direction.set_ylabel("1 − cos(Ĵ, θ)   (direction error)")
    ax_scale.set_ylabel("‖Ĵ‖ / ‖θ‖   (scale)")
    ax_scale.axhline(1, color="0.5", lw=0.7)
    for ax in (ax_direction, ax_scale):
        ax.set_xlabel("epoch (one Adam step each)")
    ax_direction.legend(fontsize=7, ncol=1)
    fig.suptitle(f"Training loss vs initial scale, {_fmt_dims(*size)}, relative lr {config.lr:g}", fontsize=11)
    return save_figure(fig, out, "initial_scale.png")


def _rise_figure(out: Path, curves, rises) -> str:
    found = [(spec, event) for spec, event in rises.items() if event is not None]
    fig, ax = subplots(figsize=(6, 3.8))
    if not found:
        ax.text(0.5, 0.5, "no stretch of rising loss with improving signs found", ha="center", va="center")
        ax.set_axis_off()
        return save_figure(fig, out, "loss_rise.png")
    spec, event = max(found, key=lambda item: item[1]["sign_to"] - item[1]["sign_from"])
    c = curves[spec]
    end = min(len(c["loss"]), max(4 * event["end"], 40))  # zoom on the event
    epochs = np.arange(1, end + 1)
    ax.semilogy(epochs, c["loss"][:end], color="tab:blue", lw=1)
    ax.set_ylabel("training loss", color="tab:blue")
    twin = ax.twinx()
    twin.plot(epochs, c["sign_agreement"][:end], color="tab:red", lw=1.2)
    twin.set_ylabel("right-sign fraction", color="tab:red")
    for at in (event["start"], event["end"]):
        ax.axvline(at + 1, color="0.4", lw=0.8, ls="--")
    ax.set_title(f"{spec.label()}\nfrom epoch {event['start'] + 1} to {event['end'] + 1}: loss ×{event['loss_ratio']:.2f}, "
                 f"right signs {event['sign_from']:.3f} → {event['sign_to']:.3f}", fontsize=8)
    ax.set_xlabel("epoch")
    return save_figure(fig, out, "loss_rise.png")
