"""Experiment ``activations``: the activation zoo on XOR and on handwritten digits.

The claims under test, first stated without numbers: the Cantor function with an identity
backward beats the identity activation; fixed Perlin-noise activations do
poorly compared to even ReLU; sin looks pretty efficient; a threshold forward
trains with a sigmoid backward; polynomials are bad activations; a too complex
activation ("jeff") can reduce performance.

Each activation of :data:`blackgrad.activations.ACTIVATIONS`, plus two
controls — the threshold and the Cantor staircase with their *true*
derivative (0 almost everywhere, so only the last layer learns) — is put in a
small MLP (two hidden layers) and trained with Adam on

* ``xor``: the point cloud of ``destroy-jacobian`` (four Gaussian clusters,
  label = XOR of the quadrant, 10 % of training labels flipped; clean test labels);
* ``digits``: scikit-learn's bundled 8×8 digits (``load_digits``, no download),
  standardised, a random train/test split per seed.

All activations and seeds train together as one ensemble (per-member
activations; each seed's initial net and minibatches are shared by all
activations), and accuracy is reported as mean ± std over seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from blackgrad import gradiator
from blackgrad.activations import ACTIVATIONS, cantor
from blackgrad.experiments import _common
from blackgrad.experiments._common import claim, save_figure, subplots, write_results
from blackgrad.experiments.destroy_jacobian import EnsembleMLP, MemberBlocks, train_ensemble, xor_cloud

NAME = "activations"
TITLE = "The activation zoo: surrogate backward passes, noise, sin, on XOR and digits"
TASKS = ("xor", "digits")
CHANCE = {"xor": 0.5, "digits": 0.1}


class _Elementwise(nn.Module):
    """A module around an elementwise function (for the controls)."""

    def __init__(self, fun: Callable[[Tensor], Tensor], name: str) -> None:
        super().__init__()
        self.fun, self.name = fun, name

    def forward(self, x: Tensor) -> Tensor:
        return self.fun(x)

    def extra_repr(self) -> str:
        return self.name


_threshold_true = gradiator(lambda x: (x > 0).to(x.dtype), lambda x, g: torch.zeros_like(g), name="threshold_true_grad")

#: activations whose backward is the true derivative, 0 almost everywhere: only the readout layer learns
CONTROLS: dict[str, Callable[[], nn.Module]] = {
    "threshold_true_grad": lambda: _Elementwise(_threshold_true, "1[x > 0], true derivative 0"),
    "cantor_true_grad": lambda: _Elementwise(cantor, "Cantor staircase, true derivative 0 a.e."),
}
ZOO = {**ACTIVATIONS, **CONTROLS}


@dataclass
class Config:
    """Parameters of the ``activations`` experiment."""

    activations: tuple[str, ...] = tuple(ZOO)
    seeds: int = 5
    hidden: int = 32  # width of both hidden layers
    xor_train: int = 512
    xor_test: int = 1000
    spread: float = 0.5
    label_noise: float = 0.1
    digits_test: int = 500  # of the 1797 digits
    steps: dict = field(default_factory=lambda: {"xor": 600, "digits": 600})
    batch_size: int = 32
    lr: float = 3e-3
    eval_every: int = 50
    plot_range: float = 3.0  # the activation figure spans [−plot_range, plot_range]
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        """A few seconds: the activations the claims need, two seeds, short training."""
        return cls(activations=("identity", "relu", "sin", "cantor", "perlin", "threshold_sigmoid"), seeds=2,
                   steps={"xor": 200, "digits": 150}, xor_test=500, eval_every=50)


def _check(config: Config) -> None:
    unknown = [a for a in config.activations if a not in ZOO]
    if unknown:
        raise ValueError(f"unknown activation(s) {unknown}; choose from {', '.join(ZOO)}")


def digits_sets(members: int, n_test: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``members`` random train/test splits of scikit-learn's digits, standardised on the training part."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x_all = torch.as_tensor(images, dtype=torch.float32)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    splits = [torch.randperm(len(y_all), generator=generator) for _ in range(members)]
    test, train = [s[:n_test] for s in splits], [s[n_test:] for s in splits]
    x_train = torch.stack([x_all[i] for i in train])
    # std floored at one grey level: near-constant border pixels are not blown up on the test part
    mean, std = x_train.mean(1, keepdim=True), x_train.std(1, keepdim=True).clamp_min(1.0)
    x_test = torch.stack([x_all[i] for i in test])
    return ((x_train - mean) / std, torch.stack([y_all[i] for i in train]),
            (x_test - mean) / std, torch.stack([y_all[i] for i in test]))


def _data(config: Config, task: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    if task == "xor":
        x, y, _ = xor_cloud(config.seeds, config.xor_train, config.spread, config.label_noise, generator)
        x_test, _, y_test = xor_cloud(config.seeds, config.xor_test, config.spread, 0.0, generator)
        return x, y, x_test, y_test
    return digits_sets(config.seeds, config.digits_test, generator)


def _train_task(config: Config, task: str) -> dict[str, Tensor]:
    """Train every activation on one task as one ensemble; return activation -> (seeds, evals) accuracy curves."""
    x, y, x_test, y_test = _data(config, task)
    s = config.seeds
    activation = MemberBlocks([(slice(i * s, (i + 1) * s), ZOO[name]()) for i, name in enumerate(config.activations)])
    sizes = (x.shape[-1], config.hidden, config.hidden, int(y.max()) + 1 if task == "digits" else 2)
    model = EnsembleMLP(s, sizes, activation, torch.Generator().manual_seed(config.seed + 1),
                        copies=len(config.activations))
    curves = train_ensemble(model, x, y, x_test, y_test, steps=config.steps[task], batch_size=config.batch_size,
                            lr=config.lr, eval_every=config.eval_every,
                            generator=torch.Generator().manual_seed(config.seed + 2))
    return dict(zip(config.activations, curves.split(s)))


def _slopes(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward values and the derivative the backward pass uses, elementwise."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    (grad,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return y.detach(), torch.zeros_like(x) if grad is None else grad


def _plot_zoo(config: Config):
    names = list(config.activations)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    x = torch.linspace(-config.plot_range, config.plot_range, 1501, dtype=torch.float64)
    for ax, name in zip(axes.ravel(), names):
        y, slope = _slopes(ZOO[name]().double(), x)
        ax.plot(x, y, label="forward σ(x)")
        ax.plot(x, slope, ls="--", label="backward ∂σ/∂x used")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Each activation (solid) and the derivative its backward pass uses (dashed)")
    fig.tight_layout()
    return fig


def _plot_accuracy(config: Config, table: dict):
    fig, axes = subplots(1, len(TASKS), figsize=(7 * len(TASKS), 4.2))
    names = list(config.activations)
    surrogate = {"threshold_sigmoid", "cantor", "jeff"}
    for ax, task in zip(axes, TASKS):
        means = [table[task][n]["mean"] for n in names]
        stds = [table[task][n]["std"] for n in names]
        colours = ["tab:orange" if n in surrogate else "tab:grey" if n in CONTROLS else "tab:blue" for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
        ax.axhline(CHANCE[task], color="black", ls="--", lw=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task}: test accuracy, mean ± std over {config.seeds} seeds")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("blue: true derivative; orange: surrogate backward; grey: control with the true (zero a.e.) derivative")
    fig.tight_layout()
    return fig


def run(config: Config, out: Path, progress: bool = True) -> dict:
    """Train the zoo on both tasks; write the table, figures and results; test the claims."""
    _check(config)
    out = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads cost more than they give
    try:
        curves = {task: _train_task(config, task) for task in _common.progress(TASKS, progress, desc=NAME)}
    finally:
        torch.set_num_threads(threads)
    table = {task: {name: {"mean": float(c[:, -1].mean()), "std": float(c[:, -1].std()),
                           "per_seed": c[:, -1].tolist()} for name, c in curves[task].items()} for task in TASKS}
    figures = [save_figure(_plot_accuracy(config, table), out, "accuracy.png"),
               save_figure(_plot_zoo(config), out, "activations.png")]
    result = {"name": NAME, "title": TITLE, "config": asdict(config), "figures": figures, "chance": CHANCE,
              "table": table, "claims": _claims(config, table)}
    return write_results(out, result)


def _beats(table: dict, a: str, b: str) -> tuple[bool, str]:
    """``a`` beats ``b`` on every task: a higher mean by more than the larger seed std."""
    wins, parts = [], []
    for task in TASKS:
        ra, rb = table[task][a], table[task][b]
        gap = ra["mean"] - rb["mean"]
        wins.append(gap > max(ra["std"], rb["std"]))
        parts.append(f"{task}: {a} {ra['mean']:.3f}±{ra['std']:.3f} vs {b} {rb['mean']:.3f}±{rb['std']:.3f}")
    return all(wins), "; ".join(parts)


def _claims(config: Config, table: dict) -> list[dict]:
    have = set(config.activations)
    claims = []
    rule = " (beats := higher mean by more than the larger seed std, on both tasks)"
    pairs = [
        ("cantor", "identity", "The Cantor function with identity as Jacobian replacement performs better than the "
                               "identity activation (MNIST, XOR)"),
        ("relu", "perlin", "Fixed Perlin-noise activations showed poor performances compared to even ReLU"),
        ("threshold_sigmoid", "threshold_true_grad", "A threshold forward trains with a sigmoid backward (smoothing "
                                                     "the Jacobian makes training possible)"),
        ("cantor", "cantor_true_grad", "The Cantor function's Jacobian is 0 almost everywhere; the identity "
                                       "replacement is what makes it train"),
        ("relu", "polynomial", "Polynomials are bad activation functions"),
        ("relu", "jeff", "A too complex activation function (jeff) can reduce performance"),
    ]
    for a, b, text in pairs:
        if {a, b} <= have:
            holds, measured = _beats(table, a, b)
            claims.append(claim(text, measured + rule, holds))
    if "sin" in have:
        parts, ok = [], []
        for task in TASKS:
            best = max(table[task], key=lambda n: table[task][n]["mean"])
            gap = table[task][best]["mean"] - table[task]["sin"]["mean"]
            ok.append(gap <= 0.03)
            parts.append(f"{task}: sin {table[task]['sin']['mean']:.3f}, best {best} {table[task][best]['mean']:.3f}")
        claims.append(claim("Monotonicity does not seem required: sin looks pretty efficient",
                            "; ".join(parts) + " (does well := within 0.03 of the best activation on both tasks)",
                            all(ok)))
    return claims
