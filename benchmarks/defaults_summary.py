"""One table of the defaults section: each estimator's accuracy as a fraction of exact backprop's.

Reads the ``records.jsonl`` of ``blackgrad bench --section defaults --out DIR``
and prints a markdown table, tasks as columns, marking every run that ended
below readout-only training ("harm").  Given several files, a later file's
run of a (task, method) replaces an earlier one's: a partial re-run of some
methods read over a whole section.
Run: .venv/bin/python benchmarks/defaults_summary.py runs/defaults-2/records.jsonl [more records.jsonl ...]
"""
import json
import sys

LABELS = {
    "default-learned-jacobian": "LearnedJacobian() — BlackBox's default",
    "default-twin": "DigitalTwin()",
    "default-learned-vjp": "LearnedVJP()",
    "default-fd": "FiniteDifference()",
    "default-least-squares": "LeastSquares()",
    "default-spsa": "SPSA()",
    "default-broyden": "Broyden()",
    "default-unbiased-twin": "Unbiased(DigitalTwin())",
}

runs: dict[str, dict[str, dict]] = {}
for path in sys.argv[1:]:
    for line in open(path):
        record = json.loads(line)
        runs.setdefault(record["task"], {})[record["method"]] = record
tasks = list(runs)
print("| estimator (defaults) | evals / sample and layer | " + " | ".join(f"`{t}`" for t in tasks) + " |")
print("|---|---|" + "---|" * len(tasks))
for baseline in ("exact", "readout-only"):
    print(f"| {baseline} (accuracy) | 1 | " + " | ".join(f"{runs[t][baseline]['accuracy']:.3f}" for t in tasks) + " |")
for method, label in LABELS.items():
    cells, costs = [], set()
    for task in tasks:
        run, exact, readout = runs[task][method], runs[task]["exact"], runs[task]["readout-only"]
        cells.append(f"{run['accuracy'] / exact['accuracy']:.3f}" + (" **harm**" if run["accuracy"] < readout["accuracy"] else ""))
        costs.add(round(run["evaluations_per_sample"] / exact["evaluations_per_sample"], 2))  # exact spends 1 per layer
    cost = f"{min(costs):.2f}" if len(costs) == 1 else f"{min(costs):.2f}–{max(costs):.2f}"
    print(f"| {label} | {cost} | " + " | ".join(cells) + " |")
