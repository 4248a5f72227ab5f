"""One table of the defaults section: each estimator's accuracy as a fraction of exact backprop's.

Reads the ``records.jsonl`` of ``blackgrad bench --section defaults --out DIR``
and prints a markdown table, tasks as columns, marking every run that ended
below readout-only training ("harm").  Given several files, a later file's
run of a (task, method) replaces an earlier one's: a partial re-run of some
methods read over a whole section.  Only one seed's runs are read (``--seed``,
default 0); a method with no run in a file is left out of the table.
Run: .venv/bin/python benchmarks/defaults_summary.py [--seed N] runs/defaults-2/records.jsonl [more records.jsonl ...]
"""
import argparse
import json

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
parser.add_argument("--seed", type=int, default=0, help="the seed whose runs are read (default 0)")
parser.add_argument("records", nargs="+", help="records.jsonl files, later ones replacing earlier runs")
arguments = parser.parse_args()
runs: dict[str, dict[str, dict]] = {}
for path in arguments.records:
    for line in open(path):
        record = json.loads(line)
        if record["seed"] == arguments.seed:
            runs.setdefault(record["task"], {})[record["method"]] = record
tasks = list(runs)
print("| estimator (defaults) | evals / sample and layer | " + " | ".join(f"`{t}`" for t in tasks) + " |")
print("|---|---|" + "---|" * len(tasks))
for baseline in ("exact", "readout-only"):
    print(f"| {baseline} (accuracy) | 1 | " + " | ".join(f"{runs[t][baseline]['accuracy']:.3f}" for t in tasks) + " |")
for method, label in LABELS.items():
    if not any(method in runs[task] for task in tasks):
        continue
    cells, costs = [], set()
    for task in tasks:
        if method not in runs[task]:
            cells.append("—")
            continue
        run, exact, readout = runs[task][method], runs[task]["exact"], runs[task]["readout-only"]
        cells.append(f"{run['accuracy'] / exact['accuracy']:.3f}" + (" **harm**" if run["accuracy"] < readout["accuracy"] else ""))
        costs.add(round(run["evaluations_per_sample"] / exact["evaluations_per_sample"], 2))  # exact spends 1 per layer
    cost = f"{min(costs):.2f}" if len(costs) == 1 else f"{min(costs):.2f}–{max(costs):.2f}"
    print(f"| {label} | {cost} | " + " | ".join(cells) + " |")
