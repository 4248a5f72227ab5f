"""Experiment ``destroy-jacobian``: how wrong can the backward pass be and still train?

The question, as first asked: train fully connected nets of Linear + GELU on an XOR problem — a
Gaussian point cloud with some labels flipped — and damage the backward pass:
flip the sign of random components of ``∇x`` (the gradient sent from layer
to layer), of ``∇θ`` (the parameter gradients) or of ``θ`` (the weights the
backward pass multiplies by), or keep only their sign.  The claims under test:
sign-only ``∇θ`` works but sign-only ``∇x`` does not, that learning survives a
flip probability ``p = 0.45``, that "intermediate values for sign keeping" are
worth a look, and that deeper nets are unstable even without perturbation.

Here, for every depth and for each target ``∇x``, ``∇θ``, ``θ``:

* flips: :class:`~blackgrad.transforms.SignFlip` ``(p)`` for each ``p``;
* sign keeping: :class:`~blackgrad.transforms.PowerSign` ``(γ)``,
  ``|g|^γ ⋅ sign(g)`` — ``γ = 0`` is sign-only, ``γ = 1`` unperturbed.

``∇x`` is damaged by a :class:`~blackgrad.transforms.PerturbBackward` at the
input of every Linear layer but the first, ``∇θ`` by
:func:`~blackgrad.transforms.apply_to_gradients` before each optimiser step,
``θ`` by :func:`~blackgrad.transforms.feedback_linear` (the backward pass uses
``T(W)`` instead of ``W`` for ``∇x``; the forward pass is exact).  The claim
does not say at which learning rate deep nets were unstable, so the
unperturbed nets are also trained at every rate of ``stability_lrs``.

All configurations of one depth train together as one ensemble of
independent nets (every operation is per member, the optimiser included);
each seed's initial net and minibatches are shared by all configurations, so
differences are the perturbation's.  ``p = 0`` and ``γ = 1`` are the same
unperturbed run.  Accuracy is measured on clean labels (the quadrant XOR of
the point), so a perfect classifier scores 1 and chance is 0.5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from blackgrad.experiments import _common
from blackgrad.experiments._common import claim, save_figure, subplots, write_results
from blackgrad.transforms import PerturbBackward, PowerSign, SignFlip, apply_to_gradients, feedback_linear

NAME = "destroy-jacobian"
TITLE = "Destroy the Jacobian: sign flips and sign-only gradients on XOR"

#: where a transform is applied, and how the figures name it
TARGETS = {"grad_x": "∇x", "grad_theta": "∇θ", "theta": "θ (in the backward pass)"}
CHANCE = 0.5
#: a seed "learned" if its clean test accuracy is at least halfway from chance to perfect
LEARNED = 0.75
#: a drawdown this large (accuracy points lost late in training) marks an unstable run; test-set
#: noise alone (1000 points, ~12 evaluations) gives drawdowns of about 0.015
UNSTABLE_DRAWDOWN = 0.05


@dataclass
class Config:
    """Parameters of the ``destroy-jacobian`` experiment."""

    depths: tuple[int, ...] = (1, 2, 4, 8)  # hidden layers
    width: int = 32
    flip_probabilities: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6)
    gammas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # |g|^γ sign(g); 0 = sign only
    seeds: int = 5
    n_train: int = 512
    n_test: int = 1000
    spread: float = 0.5  # std of each Gaussian cluster; centres at (±1, ±1)
    label_noise: float = 0.1  # fraction of training labels flipped
    steps: int = 600
    batch_size: int = 32
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    lr: float = 3e-3  # of every perturbed run
    stability_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)  # unperturbed nets, for the instability claim
    eval_every: int = 25
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        """A few seconds: two depths, p ∈ {0, 0.45, 0.5}, γ ∈ {0, 1}, two seeds."""
        return cls(depths=(1, 4), flip_probabilities=(0.0, 0.45, 0.5), gammas=(0.0, 1.0), seeds=2, steps=300,
                   n_test=500, stability_lrs=(3e-3, 3e-2))


def xor_cloud(members: int, n: int, spread: float, label_noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``members`` independent XOR data sets: points, noisy labels, clean labels.

    Each point comes from one of four Gaussian clusters centred at ``(±1, ±1)``
    with standard deviation ``spread``; its clean label is 1 when its two
    coordinates have opposite signs (the XOR of its quadrant), and a fraction
    ``label_noise`` of the labels is flipped.  Shapes ``(members, n, 2)``,
    ``(members, n)``, ``(members, n)``.
    """
    centres = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    cluster = torch.randint(0, 4, (members, n), generator=generator)
    x = centres[cluster] + spread * torch.randn(members, n, 2, generator=generator)
    clean = (x[..., 0] * x[..., 1] < 0).long()
    flipped = torch.rand(members, n, generator=generator) < label_noise
    return x, clean ^ flipped.long(), clean


class EnsembleMLP(nn.Module):
    """A stack of independent fully connected nets evaluated at once: ``(M, B, in) → (M, B, out)``.

    ``members`` nets with layer sizes ``sizes`` and ``activation`` between
    layers, initialised as ``nn.Linear`` (``U(−1/√in, 1/√in)``) from
    ``generator``, each repeated ``copies`` times (``M = copies ⋅ members``,
    copy-major) so that several conditions start from the same nets.  All
    weights and biases live in one parameter ``flat`` of shape ``(M, P)``
    (one tensor for the optimiser and for ``∇θ`` transforms: fewer, larger
    operations).  ``grad_x`` (a transform) damages the gradient at the input
    of every layer but the first; ``feedback`` (a transform) replaces ``W`` by
    ``feedback(W)`` in the backward pass.  Both see stacked tensors whose
    first dimension counts the ``M`` members.
    """

    def __init__(self, members: int, sizes: tuple[int, ...], activation: Callable[[Tensor], Tensor], generator: torch.Generator,
                 copies: int = 1, grad_x: Callable[[Tensor], Tensor] | None = None,
                 feedback: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.perturb = None if grad_x is None else PerturbBackward(grad_x)
        self.feedback = feedback
        self.shapes = list(zip(sizes[:-1], sizes[1:]))
        chunks = []
        for fan_in, fan_out in self.shapes:
            bound = fan_in**-0.5
            chunks.append((torch.rand(members, fan_out * fan_in, generator=generator) * 2 - 1) * bound)
            chunks.append((torch.rand(members, fan_out, generator=generator) * 2 - 1) * bound)
        self.flat = nn.Parameter(torch.cat(chunks, 1).repeat(copies, 1))

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        # One split, not many slices: its backward is a single concatenation.
        chunks = self.flat.split([size for fan_in, fan_out in self.shapes for size in (fan_out * fan_in, fan_out)], 1)
        for i, (fan_in, fan_out) in enumerate(self.shapes):
            weight, bias = chunks[2 * i].view(-1, fan_out, fan_in), chunks[2 * i + 1]
            if i > 0 and self.perturb is not None:
                x = self.perturb(x)
            if self.feedback is not None:
                x = feedback_linear(x, weight, bias, self.feedback)
            else:
                x = torch.baddbmm(bias.unsqueeze(1), x, weight.mT)
            if i < len(self.shapes) - 1:
                x = self.activation(x)
        return x


OPTIMIZERS = ("adam", "sgd")


def train_ensemble(model: EnsembleMLP, x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, *, steps: int,
                   batch_size: int, lr: float | list[float], eval_every: int, generator: torch.Generator,
                   grad_theta: Callable[[Tensor], Tensor] | None = None, optimizer: str = "adam") -> Tensor:
    """Train every member on minibatches of its data set; return test accuracy curves.

    ``x (S, N, in)``, ``y (S, N)``, ``x_test``, ``y_test`` hold ``S`` data
    sets; member ``m`` of the ``M = copies ⋅ S`` members uses data set
    ``m mod S`` and the same minibatches as the other copies.  The loss is the
    sum over members of each one's mean cross-entropy, so each member gets
    exactly its own gradient.  ``grad_theta`` (a transform) is applied to the
    parameter gradients before each step.

    ``optimizer``: ``"adam"`` (β = (0.9, 0.999), ε = 1e-8) or ``"sgd"``
    (momentum 0.9), written out elementwise so that ``lr`` may be one value
    per member (a list of ``M``) as well as one for all; members never interact.

    Returns ``(M, steps // eval_every + 1)`` accuracies, the last after the final step.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    sets, n = y.shape
    members = model.members
    copies = members // sets
    x, y, x_test, y_test = (t.repeat(copies, *([1] * (t.dim() - 1))) for t in (x, y, x_test, y_test))
    rows = torch.arange(members).unsqueeze(1)
    flat = model.flat
    rate = torch.as_tensor(lr, dtype=flat.dtype).reshape(-1, 1)
    first, second = torch.zeros_like(flat), torch.zeros_like(flat)  # Adam's moments / SGD's momentum buffer
    curve = []
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                curve.append((model(x_test).argmax(-1) == y_test).double().mean(1))
        if step == steps:
            break
        index = torch.randint(0, n, (sets, batch_size), generator=generator).repeat(copies, 1)
        logits = model(x[rows, index])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y[rows, index].flatten(), reduction="none")
        flat.grad = None
        loss.view(members, batch_size).mean(1).sum().backward()
        if grad_theta is not None:
            apply_to_gradients(model.parameters(), grad_theta)
        with torch.no_grad():
            grad = flat.grad
            if optimizer == "adam":
                first.lerp_(grad, 0.1)
                second.mul_(0.999).addcmul_(grad, grad, value=0.001)
                t = step + 1
                denominator = (second / (1 - 0.999**t)).sqrt_().add_(1e-8)
                flat.sub_(rate * (first / (1 - 0.9**t)) / denominator)
            else:
                first.mul_(0.9).add_(grad)
                flat.sub_(rate * first)
    return torch.stack(curve, 1)


def _conditions(config: Config) -> list[tuple[str, str, float]]:
    """(family, target, value) of every run at one depth.

    ``("none", "", 0)`` is the unperturbed net at ``config.lr``; ``("lr", "", η)``
    the unperturbed net at another learning rate ``η`` of ``stability_lrs``.
    """
    runs = [("none", "", 0.0)]
    for target in TARGETS:
        runs += [("flip", target, p) for p in config.flip_probabilities if p > 0]
        runs += [("power", target, g) for g in config.gammas if g != 1]
    return runs + [("lr", "", lr) for lr in config.stability_lrs if lr != config.lr]


class MemberBlocks:
    """An elementwise map of a whole ensemble that applies its own map to each block of members.

    ``blocks`` lists ``(slice of members, map)`` in increasing, disjoint order
    (slices of the first dimension); members outside every block pass through
    unchanged.  Used for per-condition transforms here and per-member
    activations in the ``activations`` experiment.
    """

    def __init__(self, blocks: list[tuple[slice, Callable[[Tensor], Tensor]]]) -> None:
        self.blocks = blocks

    def __call__(self, g: Tensor) -> Tensor:
        parts, position = [], 0
        for members, transform in self.blocks:
            parts += [g[position:members.start], transform(g[members])]
            position = members.stop
        return torch.cat(parts + [g[position:]])


def _target_transform(conditions: list[tuple[str, str, float]], target: str, seeds: int, seed: int) -> MemberBlocks:
    """The transform of one target for the whole ensemble (copy-major, ``seeds`` members per condition).

    The flip conditions of a target are consecutive, and so are its power
    conditions: one :class:`SignFlip` with per-member ``p`` and one
    :class:`PowerSign` with per-member ``γ`` cover them.
    """
    blocks = []
    for family, make in (("flip", lambda v: SignFlip(v, seed=seed)), ("power", PowerSign)):
        rows = [i for i, (f, t, _) in enumerate(conditions) if (f, t) == (family, target)]
        if rows:
            values = [conditions[i][2] for i in rows for _ in range(seeds)]
            blocks.append((slice(rows[0] * seeds, (rows[-1] + 1) * seeds), make(values)))
    return MemberBlocks(blocks)


def _run_depth(config: Config, depth: int, conditions: list[tuple[str, str, float]]) -> dict:
    """Train every condition at one depth as one ensemble; return condition -> (seeds, evals) curves."""
    data = torch.Generator().manual_seed(config.seed)
    x, y, _ = xor_cloud(config.seeds, config.n_train, config.spread, config.label_noise, data)
    x_test, _, y_test = xor_cloud(config.seeds, config.n_test, config.spread, 0.0, data)
    transforms = {t: _target_transform(conditions, t, config.seeds, config.seed + 1 + i) for i, t in enumerate(TARGETS)}
    # Every condition starts from the same nets and sees the same minibatches: differences are the perturbation's.
    model = EnsembleMLP(config.seeds, (2,) + (config.width,) * depth + (2,), nn.GELU(),
                        torch.Generator().manual_seed(config.seed + 100 * depth), copies=len(conditions),
                        grad_x=transforms["grad_x"], feedback=transforms["theta"])
    rates = [value if family == "lr" else config.lr for family, _, value in conditions for _ in range(config.seeds)]
    curves = train_ensemble(model, x, y, x_test, y_test, steps=config.steps, batch_size=config.batch_size,
                            lr=rates, eval_every=config.eval_every, optimizer=config.optimizer,
                            generator=torch.Generator().manual_seed(config.seed + 2), grad_theta=transforms["grad_theta"])
    return dict(zip(conditions, curves.split(config.seeds)))


def _summary(final: Tensor) -> dict:
    return {"mean": float(final.mean()), "std": float(final.std()) if final.numel() > 1 else 0.0,
            "per_seed": final.tolist()}


def _sweep(config: Config, finals: dict, family: str) -> dict:
    """target -> depth -> list of summaries along the family's values (shared baseline filled in)."""
    values = config.flip_probabilities if family == "flip" else config.gammas
    identity = 0.0 if family == "flip" else 1.0
    return {target: {depth: [_summary(finals[(depth, "none", "", 0.0)] if v == identity else finals[(depth, family, target, v)])
                             for v in values] for depth in config.depths} for target in TARGETS}


def _at(sweep: dict, values: tuple[float, ...], target: str, depth: int, value: float) -> float:
    return sweep[target][depth][list(values).index(value)]["mean"]


def _plot_sweep(sweep: dict, values: tuple[float, ...], config: Config, xlabel: str, title: str):
    fig, axes = subplots(1, len(TARGETS), figsize=(5.2 * len(TARGETS), 4.2), sharey=True)
    for ax, (target, label) in zip(axes, TARGETS.items()):
        for depth in config.depths:
            rows = sweep[target][depth]
            ax.errorbar(values, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o", capsize=3,
                        label=f"{depth} hidden")
        ax.axhline(CHANCE, color="grey", ls="--", lw=1)
        ax.set_title(f"perturbed: {label}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"clean test accuracy (mean ± std, {config.seeds} seeds)")
    axes[0].set_ylim(0, 1.02)
    axes[-1].legend(title="depth")
    fig.suptitle(title)
    return fig


def _plot_training(config: Config, curves: dict):
    data = torch.Generator().manual_seed(config.seed)
    x, y, _ = xor_cloud(1, config.n_train, config.spread, config.label_noise, data)
    fig, axes = subplots(1, 1 + len(config.depths), figsize=(4.2 * (1 + len(config.depths)), 3.8))
    axes[0].scatter(x[0, :, 0], x[0, :, 1], c=y[0], cmap="coolwarm", s=6)
    axes[0].set_title(f"training data ({config.label_noise:.0%} labels flipped)")
    axes[0].set_aspect("equal")
    steps = np.minimum(np.arange(curves[config.depths[0]].shape[1]) * config.eval_every, config.steps)
    for ax, depth in zip(axes[1:], config.depths):
        for member in curves[depth]:
            ax.plot(steps, member, lw=1)
        ax.axhline(CHANCE, color="grey", ls="--", lw=1)
        ax.set_ylim(0.3, 1.02)
        ax.set_title(f"{depth} hidden layer(s), unperturbed")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].set_ylabel("clean test accuracy (one line per seed)")
    return fig


def _instability(curve: Tensor) -> dict:
    """Failure rate, final accuracy (mean, seed std) and drawdown of one unperturbed configuration.

    Drawdown: in the second half of training, the largest fall of the test
    accuracy below the best value reached earlier in that half (mean over
    seeds).  A net still improving has none; one that loses what it learned
    has.  ``unstable``: some seed fails (final accuracy below :data:`LEARNED`)
    or the drawdown reaches :data:`UNSTABLE_DRAWDOWN`.
    """
    final = curve[:, -1]
    late = curve[:, curve.shape[1] // 2:]
    drawdown = float((late.cummax(1).values - late).max(1).values.mean())
    failure_rate = float((final < LEARNED).double().mean())
    return {"failure_rate": failure_rate, "drawdown": drawdown, **_summary(final),
            "unstable": failure_rate > 0 or drawdown >= UNSTABLE_DRAWDOWN}


def _plot_stability(config: Config, stability: dict):
    fig, axes = subplots(1, 2, figsize=(11, 4))
    for lr in config.stability_lrs:
        rows = [stability[d][lr] for d in config.depths]
        axes[0].errorbar(config.depths, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o",
                         capsize=3, label=f"lr {lr:g}")
        axes[1].plot(config.depths, [r["drawdown"] for r in rows], marker="o", label=f"lr {lr:g}")
    axes[0].set_ylabel(f"final clean test accuracy (mean ± std, {config.seeds} seeds)")
    axes[1].axhline(UNSTABLE_DRAWDOWN, color="grey", ls="--", lw=1)
    axes[1].set_ylabel("drawdown in the second half of training")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(config.depths, [str(d) for d in config.depths])
        ax.set_xlabel("hidden layers")
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.suptitle(f"Unperturbed nets: depth against learning rate ({config.optimizer})")
    return fig


def run(config: Config, out: Path, progress: bool = True) -> dict:
    """Train every (depth, perturbation) configuration; write figures and results; test the claims."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    out = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads cost more than they give
    try:
        conditions = _conditions(config)
        curves = {}
        for depth in _common.progress(config.depths, progress, desc=NAME):
            curves.update({(depth, *c): curve for c, curve in _run_depth(config, depth, conditions).items()})
    finally:
        torch.set_num_threads(threads)
    finals = {job: curve[:, -1] for job, curve in curves.items()}
    flips, powers = _sweep(config, finals, "flip"), _sweep(config, finals, "power")
    baseline = {depth: curves[(depth, "none", "", 0.0)] for depth in config.depths}
    stability = {depth: {lr: _instability(baseline[depth] if lr == config.lr else curves[(depth, "lr", "", lr)])
                         for lr in config.stability_lrs} for depth in config.depths}

    figures = [
        save_figure(_plot_sweep(flips, config.flip_probabilities, config, "flip probability p",
                                "Random sign flips: each component's sign flipped with probability p"), out, "accuracy_vs_p.png"),
        save_figure(_plot_sweep(powers, config.gammas, config, "γ  (|g|^γ sign g; 0 = sign only, 1 = exact)",
                                "Partial sign keeping"), out, "accuracy_vs_gamma.png"),
        save_figure(_plot_training(config, baseline), out, "training_curves.png"),
        save_figure(_plot_stability(config, stability), out, "stability.png"),
    ]

    result = {"name": NAME, "title": TITLE, "config": asdict(config), "figures": figures,
              "chance": CHANCE, "learned_threshold": LEARNED, "unstable_drawdown": UNSTABLE_DRAWDOWN,
              "flip": flips, "power": powers, "stability": stability,
              "claims": _claims(config, flips, powers, stability)}
    return write_results(out, result)


def _claims(config: Config, flips: dict, powers: dict, stability: dict) -> list[dict]:
    claims = []
    depths = config.depths

    def verdicts(rows: dict, test) -> tuple[bool, str]:
        """Whether ``test`` holds at every depth, and at which depths it does / does not."""
        good = [d for d, row in rows.items() if test(*row)]
        bad = [d for d in rows if d not in good]
        return not bad, f" — holds at depths {good or 'none'}, fails at {bad or 'none'}"

    if 0.0 in config.gammas:
        for target, text, test, rule in (
            ("grad_theta", "Keeping only the sign of ∇θ seems to work fine",
             lambda s, b: s >= b - 0.05, "within 0.05 of unperturbed"),
            ("grad_x", "…however, this is not true for ∇x (sign-only ∇x does not train)",
             lambda s, b: s < b - 0.10, "more than 0.10 below unperturbed"),
        ):
            rows = {d: (_at(powers, config.gammas, target, d, 0.0), _at(powers, config.gammas, target, d, 1.0))
                    for d in depths}
            holds, where = verdicts(rows, test)
            claims.append(claim(text, f"sign-only {TARGETS[target]} accuracy {rule}, at every depth? "
                                + ", ".join(f"depth {d}: {s:.3f} (unperturbed {b:.3f})" for d, (s, b) in rows.items())
                                + where, holds))
    if {0.45, 0.5} <= set(config.flip_probabilities):
        for target in ("grad_x", "grad_theta"):
            rows = {d: (_at(flips, config.flip_probabilities, target, d, 0.45),
                        _at(flips, config.flip_probabilities, target, d, 0.5)) for d in depths}
            holds, where = verdicts(rows, lambda a, b: a >= LEARNED and a >= b + 0.05)
            claims.append(claim(
                f"Learning is robust to random sign flips of {TARGETS[target]}: even at p = 0.45 we are able to learn",
                f"accuracy at p = 0.45 ≥ {LEARNED} and ≥ 0.05 above the information-free p = 0.5, at every depth? "
                + ", ".join(f"depth {d}: {a:.3f} (p=0.5: {b:.3f})" for d, (a, b) in rows.items()) + where, holds))
    if len(depths) > 1:
        shallow, deep = min(depths), max(depths)
        unstable = {d: [lr for lr in config.stability_lrs if stability[d][lr]["unstable"]] for d in (shallow, deep)}
        claims.append(claim(
            "As the model gets deeper, even without perturbation, we get instability",
            f"unstable := some seed ends below {LEARNED} or the drawdown (largest fall below the best accuracy in "
            f"the second half of training) is ≥ {UNSTABLE_DRAWDOWN}; holds if the deepest net is unstable at every "
            f"learning rate where the shallowest is, and at more.  Unstable at lr: depth {shallow}: "
            f"{unstable[shallow] or 'none'}, depth {deep}: {unstable[deep] or 'none'} (of {list(config.stability_lrs)}); "
            "drawdown by lr: " + "; ".join(
                f"depth {d}: " + ", ".join(f"{stability[d][lr]['drawdown']:.3f}" for lr in config.stability_lrs)
                for d in (shallow, deep)),
            set(unstable[shallow]) < set(unstable[deep])))
    return claims
