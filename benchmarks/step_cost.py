"""Compute per training step on the main task: the box's default estimator beside exact backprop.

The main task of ``blackgrad bench`` (``digits-shg``: digits through noisy
8-bit SHG, batch 64) is built for each method with the benchmark's own
``runner.build`` at one seed; each model takes ``--warmup`` training steps
(past the calibration on the first batch and the first steps, which build
the estimators' models and fill their buffers), then ``--steps`` timed ones.
A step is what ``runner.run_one`` does with a batch: the forward pass,
cross-entropy, ``zero_grad``, backward (the estimator's probes and its online
training), ``optimizer.step()`` (the gradient-cosine bookkeeping of every
fifth step is left out).  The steps are interleaved round-robin across the
methods, each on the same batch, in an order that rotates from step to step,
so that a change of load hits every method alike.

Per method: the median wall time of a step and of its CPU time
(``time.process_time``; one thread, so on a machine shared with other jobs
the time the step would take on an idle core), and their ratios to exact
backprop's in the same run.  Then where each method's step goes (medians
per step, wall time): inside the device calls (the prober's ledger,
``box.calls.seconds``: forward and probes), in the estimator's training
(``update``, timed by a wrapper around it; for the default split into the
twin prior's updates and the Jacobian correction's), and the rest (the
digital model, autograd, the estimator's scoring, probe bookkeeping, Adam).

With ``--variants``, each ``KEY=VALUE[;KEY=VALUE…]`` adds a method
``default[KEY=VALUE]``: ``LearnedJacobian(seed=seed, KEY=VALUE)``, the
default with options that are not its own (its twin prior takes
``updates``, ``batch_size``, ``hidden`` from it), to measure what a change of
default would save; what it would cost in accuracy is another run's.

    python benchmarks/step_cost.py [--steps 300] [--warmup 30] [--methods exact default ...] [--variants updates=2 ...]
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

try:
    import blackgrad  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from blackgrad.bench import runner
from blackgrad.bench.methods import METHODS, Method
from blackgrad.estimators import LearnedJacobian
from blackgrad.bench.tasks import tasks

DEFAULT_METHODS = ("exact", "default", "default-twin", "default-learned-vjp", "readout-only")


class Timer:
    """Wraps a bound method of one object and adds the wall time of every call to ``seconds``."""

    def __init__(self, owner: Any, name: str) -> None:
        self.seconds = 0.0
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)  # an instance attribute: only this object's calls are timed


class Runner:
    """One method's model and optimiser, stepped as ``runner.run_one`` steps it, with its time split."""

    def __init__(self, name: str, task: Any, data: Any, seed: int) -> None:
        method = METHODS[name]
        self.name = name
        self.model = runner.build(task, method, data, seed)
        if method.kind == "readout":
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            self.model.readout.requires_grad_(True)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=task.lr)
        # the timers: the whole update of each box's estimator, and, where it has a prior, the prior's part
        self.updates: list[Timer] = []
        self.priors: list[Timer] = []
        for box in self.model.boxes:
            estimator = box.estimator
            if hasattr(estimator, "update"):
                self.updates.append(Timer(estimator, "update"))
            prior = getattr(estimator, "prior", None)
            if prior is not None:
                self.priors.append(Timer(prior, "update"))
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.device: list[float] = []
        self.training: list[float] = []
        self.prior_training: list[float] = []

    def _device_seconds(self) -> float:
        return sum(box.calls.seconds for box in self.model.boxes)

    def step(self, x: torch.Tensor, y: torch.Tensor, keep: bool) -> None:
        device = self._device_seconds()
        training = sum(t.seconds for t in self.updates)
        prior = sum(t.seconds for t in self.priors)
        start, start_cpu = time.perf_counter(), time.process_time()
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if keep:
            self.wall.append(wall)
            self.cpu.append(cpu)
            self.device.append(self._device_seconds() - device)
            self.training.append(sum(t.seconds for t in self.updates) - training)
            self.prior_training.append(sum(t.seconds for t in self.priors) - prior)


def batches(data: Any, batch_size: int, seed: int):
    """The training batches in the order ``runner.run_one`` draws them, epoch after epoch, endlessly."""
    generator = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    while True:
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n, batch_size):
            index = order[begin : begin + batch_size]
            yield data.x_train[index], data.y_train[index]


def variant(text: str) -> str:
    """Register ``default[text]``: the box's default estimator with the options ``text`` (``k=v,k=v``)."""
    options = {}
    for item in text.split(";"):
        key, value = item.split("=", 1)
        options[key.strip()] = ast.literal_eval(value.strip())
    name = f"default[{text}]"
    METHODS[name] = Method(name, f"LearnedJacobian({text})", make=lambda d, t, seed: LearnedJacobian(seed=seed, **options), section="defaults")
    return name


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-shg")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--variants", nargs="*", default=[], help="KEY=VALUE[;KEY=VALUE]: the default with these options")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per method first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = tasks()[args.task]
    data = task.data(False)
    print(
        f"torch {torch.__version__}, {platform.machine()}, 1 thread, task {task.name} (batch {task.batch_size}), seed {args.seed}, "
        f"{args.warmup} warm-up steps then median of {args.steps} steps per method, interleaved; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    print()
    names = list(args.methods) + [variant(text) for text in args.variants]
    runners = [Runner(name, task, data, args.seed) for name in names]
    stream = batches(data, task.batch_size, args.seed)
    for index in range(args.warmup + args.steps):
        x, y = next(stream)
        shift = index % len(runners)
        for r in runners[shift:] + runners[:shift]:  # the order rotates: none always runs first
            r.step(x, y, keep=index >= args.warmup)
    median = {r.name: (statistics.median(r.wall), statistics.median(r.cpu)) for r in runners}
    exact = median.get("exact")
    print("| method | estimator | wall ms / step | CPU ms / step | wall ÷ exact | CPU ÷ exact |")
    print("|---|---|---:|---:|---:|---:|")
    for r in runners:
        wall, cpu = median[r.name]
        ratio = ("", "") if exact is None else (f"{wall / exact[0]:.2f}×", f"{cpu / exact[1]:.2f}×")
        described = runner._describe(r.model.boxes[0].estimator) if METHODS[r.name].kind == "gradient" else "(none asked)"
        print(f"| {r.name} | {described} | {ms(wall)} | {ms(cpu)} | {ratio[0]} | {ratio[1]} |")
    print()
    print("Where a step goes (wall ms, medians per step; the parts' medians need not add up to the step's):")
    print()
    print("| method | step | device calls | estimator training | of it the twin prior's | rest (step − device − training) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in runners:
        rest = [w - d - t for w, d, t in zip(r.wall, r.device, r.training)]
        prior = ms(statistics.median(r.prior_training)) if r.priors else ""
        training = ms(statistics.median(r.training)) if r.updates else ""
        print(f"| {r.name} | {ms(statistics.median(r.wall))} | {ms(statistics.median(r.device))} | {training} | {prior} | {ms(statistics.median(rest))} |")
    print()
    print(f"(load average {os.getloadavg()[0]:.2f} at the end of the run.)")


if __name__ == "__main__":
    main()
