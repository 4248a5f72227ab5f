"""The ``blackgrad`` command line: the demo, the benchmark and the seed experiments."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _run_folder(kind: str, out: Optional[Path]) -> Path:
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{kind}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cores() -> int:
    """The cores this process may run on (all of them where the OS cannot say).

    A container's CPU quota is not seen here; pass ``--jobs`` there.
    """
    if hasattr(os, "process_cpu_count"):  # Python ≥ 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/demo-<time>)"),
    quick: bool = typer.Option(False, help="a few-second version (used by the tests)"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Train a hybrid model on digits through a black box, next to exact backprop."""
    from .demo import run_demo

    folder = _run_folder("demo", out)
    report = run_demo(folder, quick=quick, seed=seed)
    typer.echo(f"\nreport written to {report}")


@app.command()
def bench(
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/bench-<time>)"),
    quick: bool = typer.Option(False, help="smoke run: small data, 1 epoch, 1 seed, the main task only unless --tasks"),
    section: str = typer.Option(
        "main",
        help="main: the estimators as tuned for each task; defaults: every estimator class with its defaults, "
        "beside exact and readout-only, on every task",
    ),
    tasks: Optional[str] = typer.Option(None, help="comma-separated task names (default: all of the section's)"),
    methods: Optional[str] = typer.Option(None, help="comma-separated method names (default: the section's list for each task)"),
    seeds: Optional[int] = typer.Option(None, help="number of seeds 0, 1, ... (default 3, 1 in the defaults section; 1 with --quick)"),
    jobs: Optional[int] = typer.Option(None, help="runs trained at once, one process and one torch thread each (default: one per core)"),
    ray: Optional[str] = typer.Option(
        None, help="run the runs as Ray tasks: 'local' (a local Ray of --jobs CPUs) or a cluster's address (needs blackgrad[ray])"
    ),
) -> None:
    """Compare gradient estimators side by side on simulated physical devices."""
    from .bench import SECTION_SEEDS, SECTIONS, run_benchmark

    if section not in SECTIONS:
        typer.echo(f"unknown section {section!r}; known sections: {', '.join(SECTIONS)}", err=True)
        raise typer.Exit(2)
    seeds = seeds if seeds is not None else (1 if quick else SECTION_SEEDS[section])
    if seeds < 1:
        typer.echo("--seeds must be at least 1", err=True)
        raise typer.Exit(2)
    jobs = jobs if jobs is not None else _cores()
    if jobs < 1:
        typer.echo("--jobs must be at least 1", err=True)
        raise typer.Exit(2)
    task_names = tasks.split(",") if tasks else None
    method_names = methods.split(",") if methods else None
    folder = _run_folder("bench", out)
    try:
        summary = run_benchmark(
            folder,
            quick=quick,
            task_names=task_names,
            method_names=method_names,
            seeds=tuple(range(seeds)),
            jobs=jobs,
            section=section,
            ray=ray,
        )
    except ValueError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2)
    typer.echo("\n" + summary["markdown"])
    typer.echo(f"tables and figures written to {folder}")


@app.command("run")
def run_experiment(
    name: str = typer.Argument(..., help="experiment name, or 'all'"),
    quick: bool = typer.Option(False, help="small, fast variant"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/experiments)"),
    threads: int = typer.Option(1, help="torch threads (small models: one thread is fastest, and robust to a busy core)"),
) -> None:
    """Run one of the seed experiments (or all of them) and rebuild the index report."""
    import torch

    from .experiments import EXPERIMENTS, available, load
    from .experiments.report import write_index

    torch.set_num_threads(threads)
    root = out if out is not None else Path("runs") / "experiments"
    names = available() if name == "all" else [name]
    for experiment in names:
        try:
            module = load(experiment)
        except KeyError as err:
            typer.echo(str(err.args[0]), err=True)
            raise typer.Exit(2)
        config = module.Config.quick() if quick else module.Config()
        typer.echo(f"running {experiment} ({'quick' if quick else 'full'}) -> {root / experiment}")
        result = module.run(config, root / experiment, progress=True)
        for row in result.get("claims", []):
            mark = "holds" if row["holds"] else "DOES NOT HOLD"
            typer.echo(f"  [{mark}] {row['claim']} -- {row['measured']}")
    index = write_index(root, [e for e in EXPERIMENTS if (root / e / "results.json").exists()])
    typer.echo(f"index report: {index}")


@app.command()
def report(folder: Path = typer.Argument(Path("runs") / "experiments", help="folder holding experiment results")) -> None:
    """Rebuild the HTML index report of experiments already run."""
    from .experiments import EXPERIMENTS
    from .experiments.report import write_index

    index = write_index(folder, [e for e in EXPERIMENTS if (folder / e / "results.json").exists()])
    typer.echo(f"index report: {index}")


if __name__ == "__main__":  # pragma: no cover
    app()
