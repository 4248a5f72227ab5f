"""Why the online twin with slopes lost accuracy on the main task: the training order, the gate.

The twin used to take half its optimiser steps when a forward batch arrived
(``observe``) and half after the probes (``learn``), and passed its VJP
upstream ungated.  Now every step happens once, after the probes
(``update``), and a fidelity gate holds the VJP back until the model scores
well.  This trains the benchmark's twin-slopes method on digits-SHG (seeds
0, 1, 2) with each combination and prints a table.
Run: .venv/bin/python benchmarks/twin_training_order.py
"""
import statistics

import torch

from blackgrad.bench import runner
from blackgrad.bench.methods import METHODS, Method, learned
from blackgrad.bench.tasks import tasks
from blackgrad.estimators import DigitalTwin

torch.set_num_threads(1)


class SplitStepsTwin(DigitalTwin):
    """The old order: half the steps on arrival of a forward batch, half after the probes."""

    def observe(self, alpha, y):
        super().observe(alpha, y)
        if self.online:
            self.train(self.updates // 2)

    def update(self):
        if self.online:
            self.train(self.updates - self.updates // 2)


def twin(kind, gate):
    def make(device, task, seed):
        options = learned(device, task, seed, probes=1.0, slope_weight=1.0, step=task.probe_step)
        return kind(**options, gate=(0.4, 0.6) if gate else None)

    return make


task = tasks()["digits-shg"]
data = task.data(False)
print("| training order | gate | accuracy, seeds 0, 1, 2 | mean |")
print("|---|---|---|---|")
for order, kind in (("all steps after the probes (now)", DigitalTwin), ("half on arrival, half after the probes (before)", SplitStepsTwin)):
    for gate in (True, False):
        name = f"order-{kind.__name__}-{gate}"
        METHODS[name] = Method(name, name, make=twin(kind, gate))
        accuracies = [runner.run_one(task, name, seed, data, task.epochs)["accuracy"] for seed in (0, 1, 2)]
        print(f"| {order} | {'(0.4, 0.6)' if gate else 'none'} | {', '.join(f'{a:.3f}' for a in accuracies)} | {statistics.fmean(accuracies):.3f} |", flush=True)
