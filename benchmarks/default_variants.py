"""Variants of the box's default estimator, trained as the defaults section trains it, beside the default.

``BlackBox(device)`` with no estimator builds ``blackgrad.module.default_estimator(seed)``.
Each variant below replaces that function with one that builds the default
with some options changed (or another estimator), and trains the defaults
section's ``"default"`` method (``runner.run_one``, exactly as ``blackgrad
bench --section defaults`` does) on each task and seed, appending one record
per run to ``--out`` (a run already there is not repeated).  The variant
``default`` changes nothing: it is the reference.

It then prints, per task and variant (every run of it in ``--out``), the
mean over the seeds of each seed's accuracy as a fraction of exact
backprop's at that seed, ± its standard error, read from ``--baselines``
(the ``records.jsonl`` of a ``blackgrad bench --section defaults --methods
exact`` run on the same seeds and the same processor), and,
seed by seed against ``default`` at the seeds both ran, the mean difference
of the fractions ± its standard error and at how many seeds the variant was
better.  The stack's per-seed accuracies move by ±0.1 between variants, so
only a difference of two standard errors or more says anything.

    python benchmarks/default_variants.py --baselines DIR/records.jsonl --out runs.jsonl \
        [--variants default joint ...] [--tasks digits-deep-shg] [--seeds 12 | --seed-list 1 3 5] [--jobs 2] [--table]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from pathlib import Path
from typing import Callable

try:
    import blackgrad  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _without_correction(estimator):
    """The twin prior alone, behind the estimator's gate: the correction's share held at zero."""
    import torch

    estimator.correction_share.weights = lambda: torch.zeros(2)
    return estimator


def _variants() -> dict[str, tuple[str, Callable[[int], object]]]:
    """name → (what it changes, seed → estimator)."""
    from blackgrad.estimators import DigitalTwin, LearnedJacobian

    def joint(estimator):
        estimator.separate_parts = False  # an instance attribute over the class's
        return estimator

    def no_snr(estimator):
        estimator.prior.slope_snr = None
        return estimator

    return {
        "default": ("the box's default, unchanged", lambda seed: LearnedJacobian(seed=seed)),
        "twin": ("DigitalTwin() in its place", lambda seed: DigitalTwin(seed=seed)),
        "joint": ("probe rows move inputs and θ together (separate_parts=False)", lambda seed: joint(LearnedJacobian(seed=seed))),
        "nowarm": ("no warm-up (warmup=0, the prior's too)", lambda seed: LearnedJacobian(seed=seed, warmup=0)),
        "nocorr": ("the correction's share held at zero: the prior alone", lambda seed: _without_correction(LearnedJacobian(seed=seed))),
        "priornosnr": ("the prior's slopes never discounted (slope_snr=None)", lambda seed: no_snr(LearnedJacobian(seed=seed))),
        "twinlike": (
            "all four above: the prior trained and used as DigitalTwin() is",
            lambda seed: _without_correction(no_snr(joint(LearnedJacobian(seed=seed, warmup=0)))),
        ),
        "joint-nowarm": ("joint and nowarm", lambda seed: joint(LearnedJacobian(seed=seed, warmup=0))),
    }


def train(job: tuple[str, str, int]) -> dict:
    """One run with the box's default replaced by the variant (in a worker process of its own)."""
    import torch

    import blackgrad.module as module
    from blackgrad.bench import runner
    from blackgrad.bench.tasks import tasks

    variant, task_name, seed = job
    torch.set_num_threads(1)
    make = _variants()[variant][1]
    module.default_estimator = lambda seed=0: make(seed)
    task = tasks()[task_name]
    record = runner.run_one(task, "default", seed, task.data(False), task.epochs)
    return {"variant": variant, "task": task_name, "seed": seed, "accuracy": record["accuracy"],
            "evaluations_per_sample": record["evaluations_per_sample"], "curve": record["curve"]}


def _mean_error(values: list[float]) -> str:
    """``mean ± standard error`` of one or more values (the error is nan for one)."""
    error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):+.3f} ± {error:.3f}"


def table(runs: list[dict], exact: dict[tuple[str, int], float], tasks: list[str]) -> str:
    """Markdown: each variant's fraction of exact (``exact``: (task, seed) → accuracy) and its difference from ``default``."""
    lines = ["| task | variant | fraction of exact | against `default`, seed by seed | better at |", "|---|---|---|---|---|"]
    for task in tasks:
        fractions: dict[str, dict[int, float]] = {}
        for run in runs:
            if run["task"] == task and (task, run["seed"]) in exact:
                fractions.setdefault(run["variant"], {})[run["seed"]] = run["accuracy"] / exact[task, run["seed"]]
        for variant, mine in sorted(fractions.items(), key=lambda item: item[0] != "default"):
            seeds = sorted(mine)
            cell = f"{_mean_error([mine[s] for s in seeds]).lstrip('+')} ({len(seeds)})"
            reference = fractions.get("default", {})
            common = [s for s in seeds if s in reference]
            if variant == "default" or not common:
                lines.append(f"| `{task}` | {variant} | {cell} | — | — |")
                continue
            differences = [mine[s] - reference[s] for s in common]
            better = sum(d > 0 for d in differences)
            lines.append(f"| `{task}` | {variant} | {cell} | {_mean_error(differences)} ({len(common)}) | {better} of {len(common)} |")
    return "\n".join(lines)


def main() -> None:
    variants = _variants()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="variants: " + "; ".join(f"{k}: {v[0]}" for k, v in variants.items()))
    parser.add_argument("--baselines", required=True, nargs="+", help="records.jsonl files with exact runs at the same seeds")
    parser.add_argument("--out", required=True, help="JSON lines, one per run; appended to, runs in it are kept")
    parser.add_argument("--variants", nargs="+", default=["default"], choices=sorted(variants))
    parser.add_argument("--tasks", nargs="+", default=["digits-deep-shg"])
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1")
    seeds.add_argument("--seed-list", type=int, nargs="+", help="these seeds")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="only print the table of what --out holds")
    arguments = parser.parse_args()

    from blackgrad.bench.tasks import tasks as all_tasks

    unknown = sorted(set(arguments.tasks) - set(all_tasks()))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(all_tasks())}")
    out = Path(arguments.out)
    runs = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if not arguments.table:
        done = {(r["variant"], r["task"], r["seed"]) for r in runs}
        seed_list = arguments.seed_list or list(range(arguments.seeds))
        # seed-major, so that a stopped sweep has every variant at its first seeds
        jobs = [(v, t, s) for s in seed_list for t in arguments.tasks for v in arguments.variants if (v, t, s) not in done]
        with multiprocessing.get_context("spawn").Pool(arguments.jobs) as pool, out.open("a") as sink:
            for record in pool.imap_unordered(train, jobs):
                print(f"{record['variant']} {record['task']} seed {record['seed']}: {record['accuracy']:.3f}", flush=True)
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                runs.append(record)
    exact = {}
    for path in arguments.baselines:
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            if record["method"] == "exact":
                exact[record["task"], record["seed"]] = record["accuracy"]
    print(table(runs, exact, sorted({r["task"] for r in runs}, key=list(all_tasks()).index)))


if __name__ == "__main__":
    main()
