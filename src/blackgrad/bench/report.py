"""Tables and figures of benchmark records."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .methods import DEFAULTS_BASELINES, METHODS


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task, one row per method: means over seeds, and accuracy relative to exact backprop.

    ``no_harm``: whether the method's mean accuracy reached at least that of
    readout-only training (the encoders and devices left at their random
    start) on the same task; None where readout-only did not run.  A method
    below it did worse than not training the layers before the readout at all.
    """
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[record["task"]][record["method"]].append(record)
    tables = {}
    for task, by_method in grouped.items():
        exact = by_method.get("exact")
        exact_accuracy = statistics.fmean(r["accuracy"] for r in exact) if exact else None
        readout = by_method.get("readout-only")
        readout_accuracy = statistics.fmean(r["accuracy"] for r in readout) if readout else None
        rows = []
        for method, runs in by_method.items():
            accuracy, spread = _mean_std([r["accuracy"] for r in runs])
            cosines = [r["cosine"] for r in runs if r["cosine"] is not None]
            fidelities = [r["fidelity"] for r in runs if r.get("fidelity") is not None]
            rows.append(
                {
                    "method": method,
                    "label": METHODS[method].label,
                    "seeds": len(runs),
                    "accuracy": accuracy,
                    "accuracy_std": spread,
                    "evaluations_per_sample": statistics.fmean(r["evaluations_per_sample"] for r in runs),
                    "cosine": statistics.fmean(cosines) if cosines else None,
                    "fidelity": statistics.fmean(fidelities) if fidelities else None,
                    "wall_seconds": statistics.fmean(r["wall_seconds"] for r in runs),
                    "fraction_of_exact": accuracy / exact_accuracy if exact_accuracy else None,
                    "section": METHODS[method].section,
                    "estimator": runs[0].get("estimator"),
                    "no_harm": None if readout_accuracy is None else accuracy >= readout_accuracy,
                }
            )
        tables[task] = rows
    return tables


def _cells(row: dict[str, Any], label: str | None = None) -> str:
    cosine = "—" if row["cosine"] is None else f"{row['cosine']:.3f}"
    fraction = "—" if row["fraction_of_exact"] is None else f"{row['fraction_of_exact']:.3f}"
    # one seed has no spread to show
    accuracy = f"{row['accuracy']:.3f}" + (f" ± {row['accuracy_std']:.3f}" if row["seeds"] > 1 else "")
    return f"| {label or row['label']} | {accuracy} | {row['evaluations_per_sample']:.2f} | {cosine} | {row['wall_seconds']:.1f} | {fraction} |"


def _fidelity(row: dict[str, Any]) -> str:
    return "—" if row.get("fidelity") is None else f"{row['fidelity']:.3f}"


def _no_harm(row: dict[str, Any]) -> str:
    if row["method"] == "readout-only" or row["no_harm"] is None:
        return "—"
    return "yes" if row["no_harm"] else "**no**"


def _defaults_label(row: dict[str, Any]) -> str:
    """The label, naming the class BlackBox chose where the method left the choice to it."""
    if row["method"] == "default" and row.get("estimator"):
        label = row["label"].removesuffix(" (defaults)")
        return f"{label}, so {row['estimator']} (defaults)"
    return row["label"]


def markdown(tables: dict[str, list[dict[str, Any]]], titles: dict[str, str]) -> str:
    """One table per task and section.

    The main section's table as it always was.  The defaults section's
    table holds exact backprop and readout-only beside the estimators built
    with their class defaults, and adds "no harm": whether the method
    reached at least readout-only's accuracy.  A task whose records hold no
    main-section method but those two gets the defaults table alone.
    """
    lines = []
    for task, rows in tables.items():
        defaults = [row for row in rows if row["section"] == "defaults"]
        main = [row for row in rows if row["section"] != "defaults"]
        if not defaults or any(row["method"] not in DEFAULTS_BASELINES for row in main):
            lines += [
                f"### {titles.get(task, task)} (`{task}`)",
                "",
                "| method | test accuracy | evals / sample | VJP cosine | wall s | × exact |",
                "|---|---|---|---|---|---|",
            ]
            lines += [_cells(row) for row in main]
            lines.append("")
        if defaults:
            baselines = {row["method"]: row for row in main if row["method"] in DEFAULTS_BASELINES}
            shown = [baselines[name] for name in DEFAULTS_BASELINES[:1] if name in baselines] + defaults
            shown += [baselines[name] for name in DEFAULTS_BASELINES[1:] if name in baselines]
            lines += [
                f"### {titles.get(task, task)} (`{task}`): estimators with their defaults",
                "",
                "Each estimator class as a new user would build it: its defaults, `seed=` alone. "
                "No harm: at least the accuracy of readout-only training. "
                "Fidelity: the learned estimator's own final score of its VJP on probe rows it had not trained on.",
                "",
                "| method | test accuracy | evals / sample | VJP cosine | wall s | × exact | fidelity | no harm (≥ readout-only) |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += [_cells(row, _defaults_label(row)) + f" {_fidelity(row)} | {_no_harm(row)} |" for row in shown]
            lines.append("")
    return "\n".join(lines)


def figures(records: list[dict[str, Any]], out: Path) -> list[str]:
    """Accuracy vs device evaluations, and gradient cosine over training, one pair per task."""
    # A Figure outside pyplot: no backend is chosen or switched, and savefig renders with Agg.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    names = []
    for task in dict.fromkeys(r["task"] for r in records):
        runs = [r for r in records if r["task"] == task]
        fig = Figure(figsize=(13, 4.5))
        left, right = fig.subplots(1, 2)
        colours = colormaps["tab20"].colors  # 16 methods: the default cycle of 10 would repeat
        for index, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
            colour = colours[index % len(colours)]
            style = ("-", "--", ":")[index // len(colours) % 3]  # both sections at once: more than 20
            mine = [r for r in runs if r["method"] == method]
            first = mine[0]
            evaluations = [e for e, _ in first["curve"]]
            # mean over seeds, epoch by epoch (all seeds share the schedule)
            length = min(len(r["curve"]) for r in mine)
            mean_accuracy = [statistics.fmean(r["curve"][i][1] for r in mine) for i in range(length)]
            left.plot(
                evaluations[:length], mean_accuracy, style, marker="o", markersize=3, color=colour, label=METHODS[method].label
            )
            if first["cosine_curve"]:
                steps = [s for s, _ in first["cosine_curve"]]
                right.plot(steps, [c for _, c in first["cosine_curve"]], style, color=colour, lw=1)
        left.set_xscale("log")
        left.set_xlabel("device evaluations per training sample (cumulative)")
        left.set_ylabel("test accuracy")
        left.set_title(f"{task}: accuracy vs device evaluations")
        right.set_xlabel("training step")
        right.set_ylabel("cosine(estimated VJP, exact VJP)")
        right.set_title(f"{task}: gradient fidelity (seed {runs[0]['seed']})")
        fig.legend(*left.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        fig.tight_layout()
        name = f"{task}.png"
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        names.append(name)
    return names


def write(records: list[dict[str, Any]], out: Path, titles: dict[str, str], header: str) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the figures into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tables = summarise(records)
    table_text = markdown(tables, titles)
    names = figures(records, out)
    (out / "results.json").write_text(json.dumps({"tables": tables, "records": records}, indent=1))
    (out / "results.md").write_text(header + "\n\n" + table_text + "\n" + "\n".join(f"![{n}]({n})" for n in names) + "\n")
    return {"tables": tables, "records": records, "markdown": table_text, "figures": names}
