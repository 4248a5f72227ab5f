"""Experiment ``backward-architectures``: deep fully connected net vs Log-Lin-Exp as the backward model.

The question pits a deep fully connected net against Log-Lin-Exp
(learnable products of powers, :class:`~blackgrad.nets.LogLinExp`) as the
model that learns a black box's backward pass from probes.  Here both sit in
the feature net ``h(α)`` of the library's VJP model,
``LearnedVJP(features=h)`` — a :class:`~blackgrad.estimators.learned_vjp.BilinearVJP`
``v(α, g) = ((g W_in) ⊙ h(α)) W_out``, linear in ``g`` — with

* ``mlp``: :class:`~blackgrad.nets.MLP` ``d → w → w → rank`` (GELU), the deep
  fully connected net (the estimator's default family);
* ``loglinexp``: :class:`~blackgrad.nets.LogLinExpNet` ``Linear(d, w) →
  LogLinExp(w, w) → Linear(w, rank)``, the library's Log-Lin-Exp net (exactly
  as many parameters as the MLP of the same width);
* ``loglinexp-direct``: ``LogLinExp(d, w) → Linear(w, rank)``: products of
  powers of the raw inputs, the form in which a product-of-powers device's
  Jacobian entries (monomials) are exactly representable.

Problems (``d = n`` inputs, ``m`` outputs, only ``∂/∂x`` is learned):

* ``linear``: ``f = Ax`` (:class:`~blackgrad.devices.Linear`), ``x ~ N(0, I)``
  — the "restore the Jacobian" control case (``restore-jacobian``);
* ``power``: ``f_i = Π_j x_j^{P_ij}`` with ``P_ij ∈ {−1, 0, 1}``, ``x`` log-uniform
  in ``[0.5, 2]`` — where Log-Lin-Exp should shine;
* ``oscillators``: a small :class:`~blackgrad.devices.Oscillators` network
  (coupled Duffing resonators), ``x ~ U(−1, 1)``.

Every run trains online: each epoch draws a fresh batch, calls ``vjp`` (one
one-sided probe per sample, then ``updates`` Adam steps on the replay
buffer), and every ``eval_every`` epochs the gradient fidelity is measured on
a fixed test set of ``(x, g)`` pairs: the mean cosine between the model's VJP
and the exact one (autograd through the clean physics; the estimator never
sees it).  Fidelity per probe is summarised by the mean test cosine over the
run (the area under the cosine-vs-probes curve divided by the budget) and by
the probes spent before the cosine first reaches ``target``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from blackgrad.devices import Linear, Oscillators
from blackgrad.estimators import LearnedVJP
from blackgrad.estimators.base import VJPQuery
from blackgrad.experiments import _common
from blackgrad.experiments._common import claim, save_figure, subplots, write_results
from blackgrad.nets import MLP, LogLinExp, LogLinExpNet

NAME = "backward-architectures"
TITLE = "Backward models: deep fully connected net vs Log-Lin-Exp"

ARCHITECTURES = ("mlp", "loglinexp", "loglinexp-direct")
LABELS = {"mlp": "fully connected (MLP)", "loglinexp": "Log-Lin-Exp net", "loglinexp-direct": "Log-Lin-Exp on raw inputs"}
COLORS = {"mlp": "tab:blue", "loglinexp": "tab:red", "loglinexp-direct": "tab:orange"}
PROBLEMS = ("linear", "power", "oscillators")


@dataclass
class Config:
    """Parameters of the ``backward-architectures`` experiment."""

    problems: tuple[str, ...] = PROBLEMS
    architectures: tuple[str, ...] = ARCHITECTURES
    n: int = 8  # inputs
    m: int = 8  # outputs
    widths: tuple[int, ...] = (16, 64)  # hidden width w of every architecture
    width: int = 64  # the width of the per-probe comparison (must be in widths)
    rank: int = 64  # width of the bilinear core
    epochs: int = 300
    batch: int = 32  # samples per epoch, one probe each
    updates: int = 4  # Adam steps per epoch
    minibatch: int = 256
    lr: float = 1e-2
    eval_every: int = 15  # epochs between fidelity measurements
    n_test: int = 256
    target: float = 0.9  # cosine whose first crossing is reported in probes
    oscillator_duration: float = 5.0  # about one period: learnable in the budget
    oscillator_steps: int = 16  # RK4 steps (the default step size, duration 20 / 64)
    seeds: int = 2
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        """A few seconds: one width, one seed, a fifth of the probes."""
        return cls(widths=(32,), width=32, epochs=30, eval_every=5, seeds=1, n_test=128)


# ----------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """A black box to learn the backward pass of: ``fun (B, n) → (B, m)``, an input law, the exact VJP."""

    name: str
    title: str
    fun: Callable[[Tensor], Tensor]
    draw: Callable[[int, torch.Generator], Tensor]
    exact_vjp: Callable[[Tensor, Tensor], Tensor]


def product_of_powers(n: int, m: int, seed: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Exponents ``P`` (``m × n``, entries −1, 0, 1 with probabilities ¼, ½, ¼) and ``x ↦ Π_j x_j^{P_ij}`` (x > 0)."""
    generator = torch.Generator().manual_seed(seed)
    exponents = torch.multinomial(torch.tensor([0.25, 0.5, 0.25]), n * m, replacement=True, generator=generator)
    exponents = (exponents - 1).reshape(m, n).double()
    return exponents, lambda x: torch.exp(torch.log(x) @ exponents.T.to(x.dtype))


def _autograd_vjp(fun: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def vjp(x: Tensor, g: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fun(leaf), leaf, g)
        return grad
    return vjp


def make_problem(name: str, config: Config) -> Problem:
    """Build problem ``name`` (one of :data:`PROBLEMS`) at the configured sizes, seeded by ``config.seed``."""
    n, m = config.n, config.m
    if name == "linear":
        device = Linear(n, m, seed=config.seed)
        return Problem(name, f"f = Ax ({n}→{m})", device, lambda count, g: torch.randn(count, n, generator=g, dtype=torch.float64),
                       lambda x, g: device.exact_vjp(x, None, g)[0])
    if name == "power":
        _, fun = product_of_powers(n, m, config.seed)
        low, high = math.log(0.5), math.log(2.0)
        return Problem(name, f"f_i = Π_j x_j^(P_ij) ({n}→{m})", fun,
                       lambda count, g: torch.exp(torch.rand(count, n, generator=g, dtype=torch.float64) * (high - low) + low),
                       _autograd_vjp(fun))
    if name == "oscillators":
        device = Oscillators(n, m, duration=config.oscillator_duration, steps=config.oscillator_steps, seed=config.seed)
        return Problem(name, f"Duffing oscillators ({n}→{m})", device,
                       lambda count, g: torch.rand(count, n, generator=g, dtype=torch.float64) * 2 - 1,
                       lambda x, g: device.exact_vjp(x, None, g)[0])
    raise ValueError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}")


def make_features(architecture: str, n: int, rank: int, width: int) -> nn.Module:
    """The feature net ``h: (B, n) → (B, rank)`` of one architecture (see the module docstring)."""
    if architecture == "mlp":
        return MLP(n, rank, (width, width))
    if architecture == "loglinexp":
        return LogLinExpNet(n, rank, width)
    if architecture == "loglinexp-direct":
        return nn.Sequential(LogLinExp(n, width), nn.Linear(width, rank))
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")


# ----------------------------------------------------------------------------- training


def train_backward(problem: Problem, architecture: str, width: int, seed: int, config: Config) -> dict:
    """Train one backward model online; return its fidelity curve and parameter count.

    ``seed`` fixes the model's initialisation, the estimator's probes and the
    training inputs; the test set depends only on ``config.seed``, so every
    run is measured on the same points.
    """
    n, m = config.n, config.m
    with torch.random.fork_rng():  # the nets initialise from the global generator
        torch.manual_seed(seed)
        features = make_features(architecture, n, config.rank, width)
        estimator = LearnedVJP(rank=config.rank, features=features, lr=config.lr, updates=config.updates,
                               batch_size=config.minibatch, seed=seed)
        estimator.prepare(n, m, torch.zeros((), dtype=torch.float64))  # builds the bilinear model now, seeded
    test = torch.Generator().manual_seed(config.seed + 1000)
    x_test = problem.draw(config.n_test, test)
    g_test = torch.randn(config.n_test, m, generator=test, dtype=torch.float64)
    exact = problem.exact_vjp(x_test, g_test)
    data = torch.Generator().manual_seed(seed + 1)
    active, shared = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)

    def fidelity() -> float:
        with torch.no_grad():
            predicted = estimator.predict_vjp(x_test, g_test)
        return float(nn.functional.cosine_similarity(predicted, exact, dim=1).mean())

    probes, cosines = [0], [fidelity()]
    cost = estimator.probe_cost(n, m, config.batch)
    for epoch in range(1, config.epochs + 1):
        x = problem.draw(config.batch, data)
        grad_out = torch.randn(config.batch, m, generator=data, dtype=torch.float64)
        estimator.vjp(problem.fun, VJPQuery(alpha=x, y=problem.fun(x), grad_out=grad_out, active=active, shared=shared))
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            probes.append(epoch * cost)
            cosines.append(fidelity())
    return {"probes": np.array(probes), "cosine": np.array(cosines),
            "parameters": sum(p.numel() for p in estimator.model.parameters()),
            "final_loss": float(np.mean(estimator.train_losses[-config.updates * 5:]))}


def summarise(curve: dict, target: float) -> dict:
    """Mean cosine over the run (trapezoid over probes / budget), final cosine, probes to reach ``target``."""
    probes, cosine = curve["probes"], curve["cosine"]
    area = float(np.sum((cosine[1:] + cosine[:-1]) / 2 * np.diff(probes)) / probes[-1])
    reached = np.nonzero(cosine >= target)[0]
    return {"mean_cosine": area, "final_cosine": float(cosine[-1]),
            "probes_to_target": int(probes[reached[0]]) if len(reached) else None}


# ----------------------------------------------------------------------------- run


def run(config: Config, out: Path, progress: bool = True) -> dict:
    """Train every (problem, architecture, width, seed); write figures and ``results.json``."""
    if config.width not in config.widths:
        raise ValueError(f"width {config.width} must be one of widths {config.widths}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problems = {name: make_problem(name, config) for name in config.problems}
    seeds = [config.seed + k for k in range(config.seeds)]
    jobs = [(p, a, w, s) for p in config.problems for a in config.architectures for w in config.widths for s in seeds]
    curves = {}
    for p, a, w, s in _common.progress(jobs, progress, desc="backward models"):
        curves[(p, a, w, s)] = train_backward(problems[p], a, w, s, config)
    runs = [{"problem": p, "architecture": a, "width": w, "seed": s, "parameters": c["parameters"],
             **summarise(c, config.target), "final_training_loss": c["final_loss"],
             "curve": {"probes": c["probes"], "cosine": c["cosine"]}} for (p, a, w, s), c in curves.items()]
    table = _table(config, runs)
    figures = [_probes_figure(out, config, problems, curves, seeds), _parameters_figure(out, config, problems, table)]
    result = {
        "name": NAME,
        "title": TITLE,
        "config": asdict(config),
        "table": table,
        "runs": runs,
        "figures": figures,
        "claims": _claims(config, problems, table),
    }
    return write_results(out, result)


def _table(config: Config, runs: list[dict]) -> list[dict]:
    """Seed means per (problem, architecture, width)."""
    rows = []
    for p in config.problems:
        for a in config.architectures:
            for w in config.widths:
                group = [r for r in runs if (r["problem"], r["architecture"], r["width"]) == (p, a, w)]
                reached = [r["probes_to_target"] for r in group]
                rows.append({
                    "problem": p, "architecture": a, "width": w, "parameters": group[0]["parameters"],
                    "mean_cosine": float(np.mean([r["mean_cosine"] for r in group])),
                    "final_cosine": float(np.mean([r["final_cosine"] for r in group])),
                    "final_cosine_per_seed": [r["final_cosine"] for r in group],
                    "mean_cosine_per_seed": [r["mean_cosine"] for r in group],
                    # a seed that never reached the target counts as "more than the budget"
                    "probes_to_target": None if None in reached else float(np.mean(reached)),
                })
    return rows


# ----------------------------------------------------------------------------- claims


def _claims(config: Config, problems: dict[str, Problem], table: list[dict]) -> list[dict]:
    row = {(r["problem"], r["architecture"], r["width"]): r for r in table}
    budget = config.epochs * config.batch
    claims = []

    def describe(p: str, a: str) -> str:
        r = row[(p, a, config.width)]
        reach = f"{r['probes_to_target']:.0f}" if r["probes_to_target"] is not None else f"> {budget}"
        by_width = ", ".join(f"w={w}: {row[(p, a, w)]['final_cosine']:.3f} ({row[(p, a, w)]['parameters']} params)"
                             for w in config.widths)
        return (f"{LABELS[a]}: mean {r['mean_cosine']:.3f}, final {r['final_cosine']:.4f}, "
                f"{reach} probes to {config.target:g}; final by width {by_width}")

    if "linear" in config.problems:
        finals = {a: row[("linear", a, config.width)]["final_cosine"] for a in config.architectures}
        claims.append(claim(
            "Restore J on f(x) = Ax: a learned backward model recovers the gradient of a linear map",
            f"final test cosine to the exact VJP after {budget} probes (width {config.width}, mean of "
            f"{config.seeds} seed(s)): " + ", ".join(f"{LABELS[a]} {c:.4f}" for a, c in finals.items())
            + "; holds if every architecture ends above 0.99",
            all(c > 0.99 for c in finals.values())))
    if "mlp" in config.architectures:
        for p in config.problems:
            mlp = row[(p, "mlp", config.width)]
            for a in [a for a in config.architectures if a != "mlp"]:
                lle = row[(p, a, config.width)]
                per_seed = list(zip(lle["mean_cosine_per_seed"], mlp["mean_cosine_per_seed"]))
                claims.append(claim(
                    f"Deep fully connected net vs Log-Lin-Exp (the question, as a testable statement) on "
                    f"{problems[p].title}: {LABELS[a]} reaches a higher gradient cosine per probe",
                    f"test cosine over {budget} probes, width {config.width}, mean of {config.seeds} seed(s) — "
                    f"{describe(p, a)}; {describe(p, 'mlp')}; holds if its mean cosine over the run is higher in "
                    "every seed",
                    all(x > y for x, y in per_seed)))
    return claims


# ----------------------------------------------------------------------------- figures


def _probes_figure(out: Path, config: Config, problems, curves, seeds) -> str:
    fig, axes = subplots(1, len(config.problems), figsize=(4.6 * len(config.problems), 3.8), squeeze=False)
    for ax, p in zip(axes[0], config.problems):
        for a in config.architectures:
            # 1 − cosine on log axes: the last digits of a good fit and the first probes both show
            stack = 1 - np.array([curves[(p, a, config.width, s)]["cosine"][1:] for s in seeds])
            probes = curves[(p, a, config.width, seeds[0])]["probes"][1:]
            ax.loglog(probes, stack.mean(0), color=COLORS[a], lw=1.4, label=LABELS[a])
            if len(seeds) > 1:
                ax.fill_between(probes, stack.min(0), stack.max(0), color=COLORS[a], alpha=0.2, lw=0)
        ax.set_title(problems[p].title, fontsize=10)
        ax.set_xlabel("probes spent")
    axes[0, 0].set_ylabel("1 − cosine to the exact VJP (test set)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Gradient fidelity vs probes, width {config.width}"
                 + (f" (band: min–max over {len(seeds)} seeds)" if len(seeds) > 1 else ""), fontsize=11)
    return save_figure(fig, out, "fidelity_vs_probes.png")


def _parameters_figure(out: Path, config: Config, problems, table) -> str:
    fig, axes = subplots(1, len(config.problems), figsize=(4.6 * len(config.problems), 3.6), squeeze=False)
    for ax, p in zip(axes[0], config.problems):
        for a in config.architectures:
            rows = sorted((r for r in table if (r["problem"], r["architecture"]) == (p, a)), key=lambda r: r["parameters"])
            ax.loglog([r["parameters"] for r in rows], [1 - r["final_cosine"] for r in rows], "o-", color=COLORS[a],
                      label=LABELS[a])
            for r in rows:
                ax.annotate(f"w={r['width']}", (r["parameters"], 1 - r["final_cosine"]), textcoords="offset points",
                            xytext=(3, 4), fontsize=6, color=COLORS[a])
        ax.set_title(problems[p].title, fontsize=10)
        ax.set_xlabel("parameters of the backward model")
    axes[0, 0].set_ylabel(f"1 − final test cosine ({config.epochs * config.batch} probes)")
    axes[0, 0].legend(fontsize=8)
    return save_figure(fig, out, "fidelity_vs_parameters.png")
