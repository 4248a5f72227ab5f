"""How should an online twin fit the measured probe slopes, and how big should it be?

The benchmark's ``twin-slopes`` method (digits through noisy 8-bit SHG) trained
with the twin's slope taken two ways — its exact directional derivative
(``slope_fit="jvp"``) or the same one-sided difference quotient, same step,
that measured the device (``slope_fit="difference"``) — and with two hidden
sizes, on seeds 0, 1, 2.  Prints one row per setting: test accuracy mean ± std,
VJP cosine, and the mean wall time of a training run.

Run: .venv/bin/python benchmarks/twin_slope_fit.py   (about 15 minutes on one core)
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from blackgrad.bench import methods
from blackgrad.bench.runner import run_one
from blackgrad.bench.tasks import tasks
from blackgrad.estimators import DigitalTwin

SEEDS = (0, 1, 2)
SETTINGS = [
    ("jvp", (256, 256)),
    ("jvp", (128, 128)),
    ("difference", (256, 256)),
    ("difference", (128, 128)),
]


def main() -> None:
    torch.set_num_threads(1)
    task = tasks()["digits-shg"]
    data = task.data(False)
    print("| slope fit | hidden | test accuracy | VJP cosine | wall s per run |")
    print("|---|---|---|---|---|")
    for slope_fit, hidden in SETTINGS:

        def make(device, task, seed, slope_fit=slope_fit, hidden=hidden):
            options = dict(probes=1.0, slope_weight=1.0, step=task.probe_step, slope_fit=slope_fit, hidden=hidden)
            return DigitalTwin(**methods.learned(device, task, seed, **options))

        methods.METHODS["twin-slopes"] = dataclasses.replace(methods.METHODS["twin-slopes"], make=make)
        runs = [run_one(task, "twin-slopes", seed, data, task.epochs) for seed in SEEDS]
        accuracy = [r["accuracy"] for r in runs]
        print(
            f"| {slope_fit} | {hidden} | {statistics.mean(accuracy):.3f} ± {statistics.stdev(accuracy):.3f} "
            f"| {statistics.mean(r['cosine'] for r in runs):.3f} | {statistics.mean(r['wall_seconds'] for r in runs):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
