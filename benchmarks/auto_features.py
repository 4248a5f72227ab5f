"""Which input features should a learned backward model use when nobody told it the device's frequencies?

The benchmark gives its learned estimators ``FourierFeatures`` at each SHG
task's own phase frequencies (π, 2π, 3π per unit of input for 3π of phase),
which a default cannot know.  This script trains the benchmark tasks with the
online twin fitted to values and one-probe slopes (the ``twin-slopes``
method) under candidate embeddings ``E``::

    DigitalTwin(hidden=(128, 128), lr=2e-3, updates=4, batch_size=256, seed=seed,
                probes=1.0, slope_weight=1.0, step=task.probe_step, embedding=E)

and prints test accuracy, VJP cosine (estimated vs exact input gradient) and
wall seconds per run, beside exact backprop on the same tasks and seeds.

Candidates (``s`` is the input scale: the largest ``|α|`` of the first batch
the twin sees, unless the name says ``s=1``; ``α`` is the device's inputs
and parameters):

* ``none`` — plain MLP;  ``task`` — the task's own frequencies (today's
  benchmark; the Oscillators task has none, so there it is a plain MLP);
* ``oct a-b`` — ``MultiScaleFourier`` at octaves ``ω = π·m/s``, ``m`` from
  ``a`` to ``b`` (``oct .5-2``: ``π·(0.5, 1, 2)/s``); ``oct .5-8 s=1``: with
  ``s = 1`` (the documented input range); ``oct .5-8 learned``: trainable
  frequencies; ``… 1/f``, ``… 1/√f``: features at ``m`` weighted by ``1/m``
  or ``1/√m`` (``decay``);
* ``dense .5-6`` — ``π·(0.5, 1, 1.5, 2, 3, 4, 6)/s``; ``harm p-q`` — harmonics
  of ``pπ/s`` up to ``qπ/s``;
* ``rff σ`` — ``RandomFourierFeatures``, 128 Gaussian directions, ``σ`` in
  radians per input scale.

Stages (run one at a time; each prints its table and saves JSON under
``runs/auto_features/``):

* ``prune``: every candidate, quick-sized data (200 digits / 300 moons
  samples) for four times the task's number of epochs (one would be too few
  steps to train anything), seed 0.
* ``full``: the ``--embeddings`` given, full data, the task's epochs, seeds 0 and 1.
* ``devices``: every built-in device (SHG at 3π and π, Oscillators,
  KerrFiber with amplitude and phase inputs, Linear) on a stationary stream
  of uniform inputs in its documented range: the twin trains online through a
  ``BlackBox`` for ``--batches`` (300) batches of 64 with random output
  gradients; then the cosine between its VJP (ungated) and the exact one on
  512 held-out inputs.  The SHG devices' ``task`` is the benchmark's
  frequencies for their phase scale.

Run (one core; each a few minutes to a quarter of an hour):
     .venv/bin/python benchmarks/auto_features.py prune
     .venv/bin/python benchmarks/auto_features.py full --tasks digits-shg,digits-oscillators,moons-shg,digits-deep-shg \
         --embeddings "none,task,oct 1-4,oct .5-2,oct .25-4,oct .25-8 1/√f,dense .5-6"
     .venv/bin/python benchmarks/auto_features.py full --tasks digits-shg,digits-oscillators,moons-shg,digits-deep-shg \
         --embeddings "task,oct .5-2,harm 1/2-3" --out runs/auto_features/full_harm.json
     .venv/bin/python benchmarks/auto_features.py devices --embeddings "none,task,oct .5-2,oct 1-4,oct .25-4"
     .venv/bin/python benchmarks/auto_features.py devices --device SHG --batches 1000 --embeddings "task,oct .5-2,harm 1/2-3"
     .venv/bin/python benchmarks/auto_features.py table runs/auto_features/full.json ...

What it found (the full run above, seeds 0 and 1): ``oct .5-2``, π·(0.5, 1, 2)/s,
trained as well as the task's own frequencies on all four tasks (test accuracy
0.864 / 0.961 / 0.983 / 0.851 against 0.865 / 0.887 / 0.983 / 0.835 on
digits-SHG, digits-oscillators, moons-SHG, the three-layer SHG stack), where
a plain MLP reached 0.283 / 0.887 / 0.730 / 0.142.  Sets reaching higher
frequencies did as well on the 3π SHG tasks and failed the π stack
(``oct 1-4``: 0.422, ``dense .5-6``: 0.382); random Fourier features failed
all three pruning tasks (VJP cosine ≤ 0.28).  ``oct .5-2``'s VJP cosine stays
below the task's own frequencies on moons-SHG (0.84 against 0.92) and on the
stack (0.81 against 0.89), and on a stream of inputs filling [-1, 1] the 3π
SHG twin reached 0.71 with it against 0.88 told (``devices --device SHG
--batches 1000``).  ``harm 1/2-3``, π·(0.5, 1, …, 3)/s, closes that gap on
the 3π device (moons cosine 0.92, stream 0.86) at the price of the π stack
(accuracy 0.794, cosine 0.75) and twice the features.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from blackgrad.bench import methods
from blackgrad.bench.methods import Method
from blackgrad.bench.runner import COSINE_EVERY, run_one
from blackgrad.bench.tasks import oscillators_lab, shg_frequencies, shg_gentle_lab, shg_lab, tasks
from blackgrad.devices import KerrFiber, Linear, Noisy
from blackgrad.estimators import DigitalTwin
from blackgrad.module import BlackBox
from blackgrad.nets import FourierFeatures, MultiScaleFourier, RandomFourierFeatures

OUT = Path("runs/auto_features")

#: name -> (input width d, task or None) -> embedding module or None
CANDIDATES: dict[str, Callable[[int, object], nn.Module | None]] = {
    "none": lambda d, task: None,
    "task": lambda d, task: FourierFeatures(d, task.frequencies) if task.frequencies else None,
    "oct 1-4": lambda d, task: MultiScaleFourier(d, (1, 2, 4)),
    "oct .5-8": lambda d, task: MultiScaleFourier(d, (0.5, 1, 2, 4, 8)),
    "oct .5-8 s=1": lambda d, task: MultiScaleFourier(d, (0.5, 1, 2, 4, 8), scale=1.0),
    "dense .5-6": lambda d, task: MultiScaleFourier(d, (0.5, 1, 1.5, 2, 3, 4, 6)),
    "oct .5-8 learned": lambda d, task: MultiScaleFourier(d, (0.5, 1, 2, 4, 8), trainable=True),
    "oct .5-2": lambda d, task: MultiScaleFourier(d, (0.5, 1, 2)),
    "oct .25-2": lambda d, task: MultiScaleFourier(d, (0.25, 0.5, 1, 2)),
    "oct .25-4": lambda d, task: MultiScaleFourier(d, (0.25, 0.5, 1, 2, 4)),
    "harm 1/2-3": lambda d, task: MultiScaleFourier(d, (0.5, 1, 1.5, 2, 2.5, 3)),
    "harm 1/3-1": lambda d, task: MultiScaleFourier(d, (1 / 3, 2 / 3, 1)),
    "harm 1/3-2": lambda d, task: MultiScaleFourier(d, tuple(k / 3 for k in range(1, 7))),
    "harm 1/3-3": lambda d, task: MultiScaleFourier(d, tuple(k / 3 for k in range(1, 10))),
    "oct .25-8 1/f": lambda d, task: MultiScaleFourier(d, (0.25, 0.5, 1, 2, 4, 8), decay=1.0),
    "oct .25-4 1/f": lambda d, task: MultiScaleFourier(d, (0.25, 0.5, 1, 2, 4), decay=1.0),
    "oct .25-8 1/√f": lambda d, task: MultiScaleFourier(d, (0.25, 0.5, 1, 2, 4, 8), decay=0.5),
    "rff π": lambda d, task: RandomFourierFeatures(d, 128, sigma=math.pi),
    "rff 2π": lambda d, task: RandomFourierFeatures(d, 128, sigma=2 * math.pi),
    "rff 4π": lambda d, task: RandomFourierFeatures(d, 128, sigma=4 * math.pi),
}

TASKS = ("digits-shg", "digits-oscillators", "moons-shg")

#: the first round's candidates (the ``prune`` stage's default)
PRUNE = ("none", "task", "oct 1-4", "oct .5-8", "oct .5-8 s=1", "dense .5-6", "oct .5-8 learned", "rff π", "rff 2π", "rff 4π")


def twin(device, task, seed: int, embedding: nn.Module | None) -> DigitalTwin:
    return DigitalTwin(
        hidden=(128, 128), lr=2e-3, updates=4, batch_size=256, seed=seed,
        probes=1.0, slope_weight=1.0, step=task.probe_step, embedding=embedding,
    )


def register(name: str) -> str:
    """Put a ``twin-slopes`` method with embedding ``name`` into the benchmark's METHODS; returns its key."""
    key = f"twin-slopes[{name}]"
    factory = CANDIDATES[name]

    def make(device, task, seed):
        return twin(device, task, seed, factory(device.in_features + device.n_params, task))

    methods.METHODS[key] = Method(key, f"online twin + slopes, embedding {name}", make=make)
    return key


def train_tasks(names: list[str], task_names: list[str], seeds: list[int], quick: bool, epochs_factor: int = 1) -> list[dict]:
    records = []
    all_tasks = tasks()
    for task_name in task_names:
        task = all_tasks[task_name]
        data = task.data(quick)
        for seed in seeds:
            for name in ["exact"] + names:
                key = "exact" if name == "exact" else register(name)
                record = run_one(task, key, seed, data, task.epochs * epochs_factor)
                steps = task.epochs * epochs_factor * math.ceil(data.x_train.shape[0] / task.batch_size)
                # the runner skips a cosine when every estimated gradient is zero (the fidelity gate shut)
                open_share = len(record.pop("cosine_curve")) / math.ceil(steps / COSINE_EVERY)
                record.update(embedding=name, quick=quick, epochs=task.epochs * epochs_factor, gate_open=open_share)
                records.append(record)
                cosine = "-" if record["cosine"] is None else f"{record['cosine']:.3f}"
                print(
                    f"  {task_name} seed {seed} {name}: accuracy {record['accuracy']:.3f} cosine {cosine} "
                    f"{record['wall_seconds']:.1f} s",
                    file=sys.stderr, flush=True,
                )
    return records


# ------------------------------------------------------------------ devices
class Setting:
    """What the ``task`` candidate and the twin read from a task: its probe step and (told) frequencies."""

    def __init__(self, probe_step: float, frequencies: tuple[float, ...] = ()) -> None:
        self.probe_step = probe_step
        self.frequencies = frequencies


def device_suite() -> dict[str, tuple[object, float, float, Setting]]:
    """name -> (device, low, high, setting): every built-in device, in its documented input range.

    The SHG devices are told the benchmark tasks' frequencies (for ``task``); the others have none.
    """
    return {
        "SHG 3π (noisy 8-bit)": (shg_lab(0), -1.0, 1.0, Setting(0.02, shg_frequencies(3 * math.pi))),
        "SHG π (noisy 8-bit)": (shg_gentle_lab(0), -1.0, 1.0, Setting(0.06, shg_frequencies(math.pi))),
        "Oscillators (1 % noise)": (oscillators_lab(0), -1.0, 1.0, Setting(0.02)),
        "KerrFiber amplitude (1 % noise)": (Noisy(KerrFiber(), std=0.01, seed=0), 0.0, 1.0, Setting(0.02)),
        "KerrFiber phase π (1 % noise)": (Noisy(KerrFiber(encoding="phase"), std=0.01, seed=0), -1.0, 1.0, Setting(0.02)),
        "Linear 16→16": (Linear(16, 16), -1.0, 1.0, Setting(0.02)),
    }


def stream(device, low: float, high: float, setting: Setting, name: str, seed: int, batches: int = 300, batch: int = 64) -> dict:
    """Train the twin online through a BlackBox on uniform inputs; score its VJP on 512 held-out ones."""
    torch.manual_seed(seed)
    d = device.in_features + device.n_params
    estimator = twin(device, setting, seed, CANDIDATES[name](d, setting))
    params = device.default_params() if device.n_params else None
    box = BlackBox(device, estimator, params=params)
    generator = torch.Generator().manual_seed(seed)

    def draw(count: int) -> torch.Tensor:
        return torch.rand(count, device.in_features, generator=generator) * (high - low) + low

    start = time.perf_counter()
    for _ in range(batches):
        x = draw(batch).requires_grad_(True)
        y = box(x)
        y.backward(torch.randn(y.shape, generator=generator))
    wall = time.perf_counter() - start
    x = draw(512)
    theta = None if box.params is None else box.params.detach()
    g = torch.randn(512, device.out_features, generator=generator)
    exact, _ = device.exact_vjp(x, theta, g)
    alpha = x if theta is None else torch.cat([x, theta.expand(512, -1)], 1)
    predicted = estimator.predict_vjp(alpha, g)[:, : device.in_features]
    cosine = nn.functional.cosine_similarity(predicted, exact, dim=1).mean().item()
    return {
        "device": None, "embedding": name, "seed": seed, "batches": batches,
        "cosine": cosine, "gate": estimator.gate_factor(), "wall_seconds": wall,
    }


def run_devices(names: list[str], seeds: list[int], batches: int = 300, only: str | None = None) -> list[dict]:
    records = []
    for device_name, (device, low, high, setting) in device_suite().items():
        if only is not None and only not in device_name:
            continue
        for seed in seeds:
            for name in names:
                record = stream(device, low, high, setting, name, seed, batches=batches)
                record["device"] = device_name
                records.append(record)
                print(f"  {device_name} seed {seed} {name}: cosine {record['cosine']:.3f} {record['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    return records


# ------------------------------------------------------------------- tables
def _mean(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def task_table(records: list[dict]) -> str:
    lines = [
        "| task | data, epochs | embedding | seeds | test accuracy | VJP cosine | gate open | wall s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["embedding"]), []).append(r)
    for (task, name), runs in groups.items():
        seeds = ",".join(str(r["seed"]) for r in runs)
        cosines = [r["cosine"] for r in runs if r["cosine"] is not None]
        wall = statistics.mean(r["wall_seconds"] for r in runs)
        label = "exact backprop" if name == "exact" else name
        size = f"{'quick' if runs[0]['quick'] else 'full'}, {runs[0]['epochs']}"
        lines.append(
            f"| {task} | {size} | {label} | {seeds} | {_mean([r['accuracy'] for r in runs])} | {_mean(cosines)} "
            f"| {statistics.mean(r['gate_open'] for r in runs):.2f} | {wall:.1f} |"
        )
    lines.append("")
    lines.append(
        "VJP cosine: estimated vs exact input gradient, every 5th step, over the steps where the fidelity gate let "
        "a gradient through; gate open: the share of those steps."
    )
    return "\n".join(lines)


def device_table(records: list[dict]) -> str:
    names = list(dict.fromkeys(r["embedding"] for r in records))
    devices = list(dict.fromkeys(r["device"] for r in records))
    lines = ["| device (stream of uniform inputs) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for device in devices:
        cells = []
        for name in names:
            runs = [r for r in records if r["device"] == device and r["embedding"] == name]
            gate = statistics.mean(r.get("gate", 1.0) for r in runs)
            cells.append(f"{statistics.mean(r['cosine'] for r in runs):.3f}" + ("" if gate >= 1 else f" (gate {gate:.2f})"))
        lines.append(f"| {device} | " + " | ".join(cells) + " |")
    wall = [f"{statistics.mean(r['wall_seconds'] for r in records if r['embedding'] == n):.1f}" for n in names]
    lines.append("| wall s per run (mean) | " + " | ".join(wall) + " |")
    lines.append("")
    lines.append("VJP cosine of the twin's model on 512 held-out inputs; (gate g): the fidelity gate passed only g of it upstream at the end.")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("prune", "full", "devices", "table"))
    parser.add_argument("files", nargs="*", help="for 'table': JSON files to print")
    parser.add_argument("--embeddings", default=None, help="comma-separated names (default: prune's first-round list)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default=None, help="comma-separated (default: prune 0, full 0,1, devices 0)")
    parser.add_argument("--epochs-factor", type=int, default=None, help="epochs = task.epochs × this (default: prune 4, full 1)")
    parser.add_argument("--batches", type=int, default=300, help="devices: training batches per stream")
    parser.add_argument("--device", default=None, help="devices: only those whose name contains this")
    parser.add_argument("--out", default=None, help="JSON file (default runs/auto_features/<stage>.json)")
    args = parser.parse_args()
    if args.stage == "table":
        for file in args.files:
            records = json.loads(Path(file).read_text())
            print(device_table(records) if records and "device" in records[0] else task_table(records))
            print()
        return
    names = [n for n in (args.embeddings or ",".join(PRUNE)).split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown embeddings {unknown}; choose from {list(CANDIDATES)}")
    default_seeds = {"prune": "0", "full": "0,1", "devices": "0"}[args.stage]
    seeds = [int(s) for s in (args.seeds or default_seeds).split(",")]
    if args.stage == "devices":
        records = run_devices(names, seeds, args.batches, args.device)
        table = device_table(records)
    else:
        records = train_tasks(names, args.tasks.split(","), seeds, quick=args.stage == "prune", epochs_factor=args.epochs_factor or (4 if args.stage == "prune" else 1))
        table = task_table(records)
    out = Path(args.out) if args.out else OUT / f"{args.stage}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    print(table)


if __name__ == "__main__":
    main()
