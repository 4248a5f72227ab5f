"""The twin prior's slope weight: the learned estimators' defaults at several weights, as fractions of exact.

A learned estimator with ``prior="twin"`` (the default of ``LearnedJacobian``
and ``LearnedVJP``, and so of ``BlackBox(device)``) fits a digital twin to the
forward values and to its own probe slopes; ``PRIOR_SLOPE_WEIGHT`` in
``blackgrad/estimators/learned.py`` weighs the slopes against the values in
that fit.  This script sets it to each ``--weights`` value in turn and trains
the benchmark's defaults-section methods (``runner.run_one``, exactly as
``blackgrad bench --section defaults`` does) on each task and seed, appending
one record per run to ``--out`` (a run already there is not repeated).  It
then prints, for each method and weight (every run of them in ``--out``, at
whatever seed), each task's mean over the seeds of
each seed's accuracy as a fraction of exact backprop's at that seed, ± its
standard error, read from ``--baselines`` (the ``records.jsonl`` of a
``blackgrad bench --section defaults --methods exact,readout-only`` run on the
same seeds: results depend on the processor, so on the same machine).
"harm" marks a mean below readout only's.

    python benchmarks/prior_slope_weight.py --baselines DIR/records.jsonl --out runs.jsonl \
        [--weights 1 0.1] [--methods default default-learned-vjp] [--tasks ...] [--seeds 3] [--jobs 2] [--table]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from pathlib import Path

try:
    import blackgrad  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def train(job: tuple[float, str, str, int]) -> dict:
    """One run with the prior's slope weight set (in a worker process of its own)."""
    import torch

    import blackgrad.estimators.learned as learned
    from blackgrad.bench import runner
    from blackgrad.bench.tasks import tasks

    weight, task_name, method, seed = job
    torch.set_num_threads(1)
    learned.PRIOR_SLOPE_WEIGHT = weight
    task = tasks()[task_name]
    record = runner.run_one(task, method, seed, task.data(False), task.epochs)
    return {"prior_slope_weight": weight, "task": task_name, "method": method, "seed": seed,
            "accuracy": record["accuracy"], "evaluations_per_sample": record["evaluations_per_sample"]}


def table(runs: list[dict], baselines: dict[tuple[str, str, int], float], tasks: list[str]) -> str:
    lines = ["| method | prior slope weight | " + " | ".join(f"`{t}`" for t in tasks) + " |", "|---|---:|" + "---|" * len(tasks)]
    for method, weight in sorted({(r["method"], r["prior_slope_weight"]) for r in runs}, key=lambda k: (k[0], -k[1])):
        cells = []
        for task in tasks:
            mine = {r["seed"]: r["accuracy"] for r in runs if (r["method"], r["prior_slope_weight"], r["task"]) == (method, weight, task)}
            seeds = [s for s in sorted(mine) if (task, "exact", s) in baselines and (task, "readout-only", s) in baselines]
            if not seeds:
                cells.append("—")
                continue
            fractions = [mine[s] / baselines[task, "exact", s] for s in seeds]
            error = statistics.stdev(fractions) / len(seeds) ** 0.5 if len(seeds) > 1 else float("nan")
            harm = statistics.mean(mine[s] for s in seeds) < statistics.mean(baselines[task, "readout-only", s] for s in seeds)
            cells.append(f"{statistics.mean(fractions):.3f} ± {error:.3f} ({len(seeds)})" + (" **harm**" if harm else ""))
        lines.append(f"| {method} | {weight:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", required=True, nargs="+", help="records.jsonl files with exact and readout-only runs at the same seeds")
    parser.add_argument("--out", required=True, help="JSON lines, one per run; appended to, runs in it are kept")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--methods", nargs="+", default=["default", "default-learned-vjp"])
    parser.add_argument("--tasks", nargs="+", default=None, help="default: every task of the defaults section")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the table of the runs in --out, training none")
    arguments = parser.parse_args()

    from blackgrad.bench.tasks import tasks as all_tasks

    task_names = arguments.tasks or [name for name, task in all_tasks().items() if "defaults" in task.sections]
    unknown = sorted(set(task_names) - set(all_tasks()))
    if unknown:
        parser.error(f"unknown tasks {unknown}; known: {sorted(all_tasks())}")
    if any(not w >= 0 or w == float("inf") for w in arguments.weights):
        parser.error(f"weights must be finite and >= 0, got {arguments.weights}")
    baselines = {}
    for line in (line for path in arguments.baselines for line in open(path)):
        record = json.loads(line)
        if record["method"] in ("exact", "readout-only"):
            baselines[record["task"], record["method"], record["seed"]] = record["accuracy"]

    out = Path(arguments.out)
    runs = [json.loads(line) for line in out.open()] if out.exists() else []
    done = {(r["prior_slope_weight"], r["task"], r["method"], r["seed"]) for r in runs}
    jobs = [
        (weight, task, method, seed)
        for weight in arguments.weights
        for task in task_names
        for method in arguments.methods
        for seed in range(arguments.seeds)
        if (weight, task, method, seed) not in done and not arguments.table
    ]
    print(f"{len(jobs)} runs to do, {len(done)} already in {out}", file=sys.stderr)
    if jobs:
        run_all(jobs, arguments.jobs, out, runs)
    # the table reads every run in --out of these tasks, methods and weights, at whatever seed
    wanted = [r for r in runs if r["task"] in task_names and r["method"] in arguments.methods and r["prior_slope_weight"] in arguments.weights]
    print(table(wanted, baselines, task_names))


def run_all(jobs: list[tuple[float, str, str, int]], processes: int, out: Path, runs: list[dict]) -> None:
    """Train ``jobs`` in worker processes, appending each record to ``out`` (and ``runs``) as it ends."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool, out.open("a") as sink:
        for count, record in enumerate(pool.imap_unordered(train, jobs), 1):
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            runs.append(record)
            print(f"[{count}/{len(jobs)}] {record['task']} {record['method']} weight {record['prior_slope_weight']:g} "
                  f"seed {record['seed']}: {record['accuracy']:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
