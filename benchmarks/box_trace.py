"""Where a run through black boxes gains or loses, epoch by epoch: each box's VJP against the device's exact one.

Trains one (task, method, seed) of ``blackgrad bench`` exactly as
``runner.run_one`` does (the same model, batches and estimator streams: the
final accuracy is the benchmark's to the digit) and, at every backward pass
of every box, compares what its estimator stands for with the simulated
device's exact VJP at the same inputs and the same loss gradient:

* ``x``: the mean over the batch of each sample's cosine (inputs part);
* ``Σx``: the cosine of the batch sums (the gradient of a bias just before
  the device, the simplest upstream parameter);
* ``θ``: the cosine of θ's gradient (its batch sum, what the optimiser gets);

for the whole estimate before its gate and, for an estimator with a twin
prior (the box's default), for the prior's VJP alone.  Also each part's
share of passes with its gate open, and the correction's share ``κ``.
Each epoch's line gives the test accuracy after it and the means over its
passes.  The comparisons spend no device evaluation and do not change the
run (the exact VJP is the simulator's own).

    python benchmarks/box_trace.py [--task digits-deep-shg] [--method default] [--seed 0] [--prior-slope-weight W]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

try:
    import blackgrad  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import blackgrad.estimators.learned as learned
from blackgrad.bench import runner
from blackgrad.bench.methods import METHODS
from blackgrad.bench.tasks import tasks


def row_cosine(a: Tensor, b: Tensor) -> float:
    keep = (a.norm(dim=1) > 0) & (b.norm(dim=1) > 0)
    return float(nn.functional.cosine_similarity(a[keep], b[keep], dim=1).mean()) if keep.any() else float("nan")


def cosine(a: Tensor, b: Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) if a.norm() > 0 and b.norm() > 0 else float("nan")


def traced(estimator, device, log: dict[str, list[float]]):
    """``estimator.vjp`` that also logs its comparisons with ``device``'s exact VJP into ``log``."""
    vjp = estimator.vjp

    def traced_vjp(prober, query):
        passed = vjp(prober, query)
        with torch.no_grad():
            theta = None if query.theta is None else query.theta.detach()
            exact_x, exact_theta = device.exact_vjp(query.x.detach(), theta, query.grad_out)
            n = exact_x.shape[1]
            estimates = {"": estimator.upstream_vjp(query.alpha, query.grad_out, query.shared)}
            if getattr(estimator, "prior", None) is not None:
                estimates["prior "] = estimator.prior.predict_vjp(query.alpha, query.grad_out)
            for label, estimate in estimates.items():
                log.setdefault(label + "x", []).append(row_cosine(estimate[:, :n], exact_x))
                log.setdefault(label + "Σx", []).append(cosine(estimate[:, :n].sum(0), exact_x.sum(0)))
                if exact_theta is not None:
                    log.setdefault(label + "θ", []).append(cosine(estimate[:, n:].sum(0), exact_theta))
            if hasattr(estimator, "monitor"):
                for part, label in ((0, "x"), (1, "θ")):
                    log.setdefault(f"open {label}", []).append(float(estimator.monitor.open[part]))
            if getattr(estimator, "prior", None) is not None:
                kappa = estimator.correction_share.weights()
                log.setdefault("κ x", []).append(float(kappa[0]))
                log.setdefault("κ θ", []).append(float(kappa[1]))
        return passed

    estimator.vjp = traced_vjp


def mean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-deep-shg")
    parser.add_argument("--method", default="default", help="a method of the benchmark (default: the box's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-slope-weight", type=float, default=None, help="set PRIOR_SLOPE_WEIGHT (a twin prior's slope weight) for this run")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the benchmark trains: the same numbers
    if args.prior_slope_weight is not None:
        learned.PRIOR_SLOPE_WEIGHT = args.prior_slope_weight
    task = tasks()[args.task]
    data = task.data(False)
    model = runner.build(task, METHODS[args.method], data, args.seed)
    logs: list[dict[str, list[float]]] = [{} for _ in model.boxes]
    for box, device, log in zip(model.boxes, model.devices, logs):
        traced(box.estimator, device, log)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=task.lr)
    generator = torch.Generator().manual_seed(args.seed)
    n_train = data.x_train.shape[0]
    print(f"{args.task}, {args.method}, seed {args.seed}: cosines with the exact VJP, means over each epoch's passes")
    for epoch in range(task.epochs):
        for log in logs:
            log.clear()
        order = torch.randperm(n_train, generator=generator)
        for begin in range(0, n_train, task.batch_size):
            index = order[begin : begin + task.batch_size]
            loss = nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1:2d}: accuracy {runner.accuracy(model, data.x_test, data.y_test):.3f}")
        for number, log in enumerate(logs):
            print(f"  box {number}: " + "  ".join(f"{key} {mean(values):+.2f}" for key, values in log.items()))


if __name__ == "__main__":
    main()
