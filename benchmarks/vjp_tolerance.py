"""How good must a box's VJP be?  Exact backprop with every box's VJP degraded to a stated cosine.

Each box of a ``blackgrad bench`` task passes the simulated device's exact
VJP plus random noise orthogonal to it, scaled so that its cosine with the
exact VJP is what the row says: ``c_x`` for every sample's input gradient
(noise drawn anew per sample and step), ``c_θ`` for θ's gradient (summed
over the batch, as the optimiser gets it).  Everything else is the
benchmark's exact run (``runner.run_one``, the same seeds, data and
training).  An estimator on that task needs at least the cosines of the
first row that reaches the accuracy it is asked for — with noise of this
kind; an estimator's own errors may be worse (a bias that does not average
out over a batch) or better (errors along directions the loss ignores).

    python benchmarks/vjp_tolerance.py [--task digits-deep-shg] [--seeds 6] [--cosines "1,1 1,0.75 0.95,0.95 0.9,0.9 0.9,1 0.75,1 0.75,0.75"]

Prints, per pair of cosines, the mean test accuracy over the seeds with its
standard error, and the mean of each seed's fraction of exact backprop's
accuracy (the first row, 1,1, is exact backprop itself).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
from torch import Tensor

try:
    import blackgrad  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from blackgrad.bench import methods, runner
from blackgrad.bench.tasks import tasks
from blackgrad.estimators import StraightThrough
from blackgrad.estimators.base import VJP


def degraded(exact: Tensor, cosine: float, generator: torch.Generator) -> Tensor:
    """``exact`` ``(..., k)`` plus noise orthogonal to each last-axis vector: cosine ``cosine`` with it."""
    if cosine >= 1:
        return exact
    noise = torch.randn(exact.shape, generator=generator, dtype=exact.dtype)
    power = exact.pow(2).sum(-1, keepdim=True).clamp(min=1e-30)
    noise = noise - (noise * exact).sum(-1, keepdim=True) / power * exact
    noise = noise / noise.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    return exact + math.tan(math.acos(cosine)) * exact.norm(dim=-1, keepdim=True) * noise


class DegradedExact(StraightThrough):
    """The device's exact VJP (the benchmark's ``exact``), degraded to cosines ``(c_x, c_θ)``."""

    def __init__(self, reference, cosines: tuple[float, float], seed: int) -> None:
        super().__init__(surrogate=reference)
        self.cosines = cosines
        self.generator = torch.Generator().manual_seed(seed)

    def vjp(self, prober, query) -> VJP:
        exact = super().vjp(prober, query)
        theta = None if exact.theta is None else degraded(exact.theta, self.cosines[1], self.generator)
        return VJP(degraded(exact.x, self.cosines[0], self.generator), theta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-deep-shg")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--cosines", default="1,1 1,0.75 0.95,0.95 0.9,0.9 0.9,1 0.75,1 0.75,0.75", help="pairs c_x,c_θ")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the benchmark trains
    task = tasks()[args.task]
    data = task.data(False)
    pairs = [tuple(float(c) for c in pair.split(",")) for pair in args.cosines.split()]
    if any(len(p) != 2 or not all(0 < c <= 1 for c in p) for p in pairs):
        raise SystemExit(f"--cosines takes pairs c_x,c_θ in (0, 1], got {args.cosines!r}")
    exact: dict[int, float] = {}
    print(f"{args.task}, seeds 0–{args.seeds - 1}: exact backprop with each box's VJP degraded to cosines (c_x, c_θ)")
    print()
    print("| c_x | c_θ | accuracy (mean ± s.e.) | fraction of exact (mean ± s.e.) | per seed |")
    print("|---:|---:|---|---|---|")
    for pair in [(1.0, 1.0)] + [p for p in pairs if p != (1.0, 1.0)]:
        original = methods.METHODS["exact"]
        methods.METHODS["exact"] = methods.Method("exact", "degraded exact", make=lambda d, t, seed: DegradedExact(d.reference, pair, seed))
        try:
            accuracies = {seed: runner.run_one(task, "exact", seed, data, task.epochs)["accuracy"] for seed in range(args.seeds)}
        finally:
            methods.METHODS["exact"] = original
        if pair == (1.0, 1.0):
            exact = accuracies
        fractions = [accuracies[s] / exact[s] for s in accuracies]

        def spread(values: list[float]) -> str:
            error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
            return f"{statistics.mean(values):.3f} ± {error:.3f}"

        print(
            f"| {pair[0]:g} | {pair[1]:g} | {spread(list(accuracies.values()))} | {spread(fractions)} | "
            + " / ".join(f"{a:.3f}" for a in accuracies.values())
            + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
