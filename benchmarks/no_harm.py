"""No harm, seed by seed: each method's accuracy minus readout-only training's, same task and seed.

Reads the ``records.jsonl`` of a defaults-section run with several seeds that
includes ``readout-only`` (e.g. ``blackgrad bench --section defaults --methods
default-spsa,readout-only --seeds 3 --out DIR``) and prints a markdown table:
for each method and task the per-seed differences and their mean.  A gated
estimator whose gate stays shut trains what readout-only training trains, but
not on the same device readings (its probes and calibration draw the
simulated noise too), so its differences scatter around zero by about the
spread between seeds.
Run: .venv/bin/python benchmarks/no_harm.py runs/defaults-8-seeds/records.jsonl
"""
import json
import sys
from statistics import mean

runs: dict[tuple[str, str], dict[int, float]] = {}
for line in open(sys.argv[1]):
    record = json.loads(line)
    runs.setdefault((record["task"], record["method"]), {})[record["seed"]] = record["accuracy"]
tasks = list(dict.fromkeys(task for task, _ in runs))
methods = [m for m in dict.fromkeys(method for _, method in runs) if m != "readout-only"]
print("| method | " + " | ".join(f"`{t}`" for t in tasks) + " |")
print("|---|" + "---|" * len(tasks))
readout = [runs[(t, "readout-only")] for t in tasks]
print("| readout-only (accuracy, per seed) | " + " | ".join(" / ".join(f"{a:.3f}" for _, a in sorted(r.items())) for r in readout) + " |")
for method in methods:
    cells = []
    for task, base in zip(tasks, readout):
        got = runs.get((task, method), {})
        seeds = sorted(set(got) & set(base))
        diffs = [got[s] - base[s] for s in seeds]
        cells.append(" / ".join(f"{d:+.3f}" for d in diffs) + f" (mean {mean(diffs):+.3f})" if diffs else "—")
    print(f"| {method} − readout-only | " + " | ".join(cells) + " |")
