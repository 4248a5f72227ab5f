"""One table of the defaults section: each estimator's accuracy as a fraction of exact backprop's.

Reads the ``records.jsonl`` of ``blackgrad bench --section defaults --out DIR``
and prints a markdown table, tasks as columns, marking every run that ended
below readout-only training ("harm").  Given several files, a later file's
run of a (task, method, seed) replaces an earlier one's: a partial re-run of
some methods read over a whole section.  A method with no run in a file is
left out of the table.

One seed's runs (``--seed``, default 0), or, with ``--mean``, every seed's:
each cell the mean over the seeds of each seed's fraction of exact, ± its
standard error, and the number of seeds (where one run can move by as much
as the spread between seeds — the three-layer stack — one seed's fraction
says little).  "harm" then marks a mean below readout only's.
Run: .venv/bin/python benchmarks/defaults_summary.py [--seed N | --mean] runs/defaults-2/records.jsonl [more records.jsonl ...]
"""
import argparse
import json
import statistics

LABELS = {
    "default": "BlackBox(device) with no estimator",
    "default-learned-jacobian": "LearnedJacobian()",
    "default-twin": "DigitalTwin()",
    "default-learned-vjp": "LearnedVJP()",
    "default-fd": "FiniteDifference()",
    "default-least-squares": "LeastSquares()",
    "default-spsa": "SPSA()",
    "default-broyden": "Broyden()",
    "default-unbiased-twin": "Unbiased(DigitalTwin())",
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
choice = parser.add_mutually_exclusive_group()
choice.add_argument("--seed", type=int, default=0, help="the seed whose runs are read (default 0)")
choice.add_argument("--mean", action="store_true", help="every seed's runs: means of the fractions, ± standard errors")
parser.add_argument("records", nargs="+", help="records.jsonl files, later ones replacing earlier runs")
arguments = parser.parse_args()
runs: dict[str, dict[str, dict[int, dict]]] = {}  # task → method → seed → record
for path in arguments.records:
    for line in open(path):
        record = json.loads(line)
        if arguments.mean or record["seed"] == arguments.seed:
            runs.setdefault(record["task"], {}).setdefault(record["method"], {})[record["seed"]] = record
tasks = list(runs)


def accuracies(task: str, method: str, seeds) -> list[float]:
    return [runs[task][method][seed]["accuracy"] for seed in seeds]


def baseline_cell(task: str, baseline: str) -> str:
    values = accuracies(task, baseline, sorted(runs[task][baseline]))
    return f"{values[0]:.3f}" if len(values) == 1 else f"{statistics.mean(values):.3f} ({len(values)})"


def cell(task: str, method: str) -> str:
    exact, readout = runs[task]["exact"], runs[task]["readout-only"]
    seeds = sorted(set(runs[task][method]) & set(exact) & set(readout))
    if not seeds:
        return "—"
    fractions = [a / e for a, e in zip(accuracies(task, method, seeds), accuracies(task, "exact", seeds))]
    harm = statistics.mean(accuracies(task, method, seeds)) < statistics.mean(accuracies(task, "readout-only", seeds))
    text = f"{fractions[0]:.3f}"
    if arguments.mean:
        error = statistics.stdev(fractions) / len(fractions) ** 0.5 if len(fractions) > 1 else float("nan")
        text = f"{statistics.mean(fractions):.3f} ± {error:.3f} ({len(fractions)})"
    return text + (" **harm**" if harm else "")


print("| estimator (defaults) | evals / sample and layer | " + " | ".join(f"`{t}`" for t in tasks) + " |")
print("|---|---|" + "---|" * len(tasks))
for baseline in ("exact", "readout-only"):
    print(f"| {baseline} (accuracy) | 1 | " + " | ".join(baseline_cell(t, baseline) for t in tasks) + " |")
for method, label in LABELS.items():
    if not any(method in runs[task] for task in tasks):
        continue
    costs = {
        round(record["evaluations_per_sample"] / runs[task]["exact"][seed]["evaluations_per_sample"], 2)  # exact spends 1 per layer
        for task in tasks
        for seed, record in runs[task].get(method, {}).items()
        if seed in runs[task]["exact"]
    }
    cost = f"{min(costs):.2f}" if len(costs) == 1 else f"{min(costs):.2f}–{max(costs):.2f}"
    print(f"| {label} | {cost} | " + " | ".join(cell(t, method) if method in runs[t] else "—" for t in tasks) + " |")
