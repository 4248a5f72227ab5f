"""The side-by-side benchmark behind ``blackgrad bench`` (and the demo).

Every method trains the same hybrid physical–digital model on the same data
split, seeds and simulated device, in one run; see :func:`run_benchmark`.

Two sections (:data:`SECTIONS`): ``main`` compares the estimators as tuned
for each task; ``defaults`` builds every estimator class with its class
defaults, as a new user would, beside exact backprop and readout-only
training, on every task.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import platform
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import report
from .methods import DEFAULTS_BASELINES, METHODS, SECTIONS, Method
from .runner import run_one
from .tasks import Task, tasks

__all__ = ["run_benchmark", "plan", "section_methods", "METHODS", "SECTIONS", "Method", "Task", "tasks", "run_one"]

#: seeds a section runs when none are given (the CLI's default; ``--quick`` runs one):
#: the defaults section runs every estimator class on every task, so one seed keeps it
#: within about 25 minutes on two cores
SECTION_SEEDS = {"main": 3, "defaults": 1}


def section_methods(task: Task, section: str) -> tuple[str, ...]:
    """The methods ``section`` runs on ``task`` when none are named.

    ``main``: the task's own list (``task.methods``), or every main-section
    method.  ``defaults``: exact backprop and readout-only (what each row is
    read against) and every defaults-section method, on every task.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; known sections: {', '.join(SECTIONS)}")
    if section == "defaults":
        exact, readout = DEFAULTS_BASELINES
        return (exact, *(name for name, m in METHODS.items() if m.section == "defaults"), readout)
    return task.methods or tuple(name for name, m in METHODS.items() if m.section == "main")


def plan(
    quick: bool = False,
    task_names: Sequence[str] | None = None,
    method_names: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    section: str = "main",
) -> list[tuple[str, str, int]]:
    """The (task, method, seed) runs :func:`run_benchmark` trains, in order.

    Tasks: those named, or else every task of ``section`` (``task.sections``;
    ``quick``: the main task alone).  Methods: those named that may run on
    the task in some section, or else :func:`section_methods`.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; known sections: {', '.join(SECTIONS)}")
    table = tasks()
    default_tasks = ["digits-shg"] if quick else [name for name, task in table.items() if section in task.sections]
    for name in task_names or []:
        if name not in table:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(table)}")
    for name in method_names or []:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    runs = []
    for task in [table[name] for name in (task_names or default_tasks)]:
        if method_names:
            allowed = set(section_methods(task, "main")) | set(section_methods(task, "defaults"))
            chosen = [m for m in method_names if m in allowed]
            if not chosen:
                raise ValueError(
                    f"none of the methods asked for runs on task {task.name!r}; its methods: {', '.join(sorted(allowed))}"
                )
        else:
            chosen = list(section_methods(task, section))
        runs += [(task.name, method, seed) for method in chosen for seed in seeds]
    return runs


def run_benchmark(
    out: Path,
    quick: bool = False,
    task_names: Sequence[str] | None = None,
    method_names: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool = True,
    threads: int | None = 1,
    jobs: int = 1,
    section: str = "main",
    ray: str | None = None,
) -> dict[str, Any]:
    """Run every (task, method, seed), write tables and figures into ``out``; return the summary.

    ``quick``: small data and few epochs, and — unless tasks are named — the
    main task alone: a smoke run well under a minute.
    ``section``: which part of the benchmark runs when no tasks or methods
    are named (:func:`plan`): ``"main"`` or ``"defaults"``.
    ``threads``: torch threads per run (default 1: the batches are small, so
    threading overhead outweighs the gain, and one busy core does not stall
    the run; None leaves torch's setting).
    ``jobs``: runs trained at once, each in its own process (every run seeds
    itself, so the records do not depend on ``jobs``).  Worker processes
    import the package afresh and look tasks and methods up by name: with
    ``jobs > 1`` only the built-in :func:`tasks` and :data:`METHODS` run, not
    entries a caller added or replaced at run time.
    ``ray``: run every run as a Ray task (one CPU each) instead: ``"local"``
    starts a local Ray of ``jobs`` CPUs, anything else is the address of a
    cluster to join (whose nodes must have blackgrad installed); a Ray
    already initialised in this process is used as it is.  The records are
    those of ``jobs=1``.
    """
    runs = plan(quick, task_names, method_names, seeds, section)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    table = tasks()
    selected = [table[name] for name in dict.fromkeys(task for task, _, _ in runs)]
    Path(out).mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=len(runs), disable=not progress, desc="benchmark")
    # one line per finished run: an interrupted benchmark keeps what it measured
    with open(Path(out) / "records.jsonl", "a") as log:
        executed = _execute(runs, quick, threads, jobs) if ray is None else _execute_on_ray(runs, quick, threads, jobs, ray)
        for record in executed:
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            fidelity = "" if record.get("fidelity") is None else f" fidelity {record['fidelity']:.2f}"
            bar.set_postfix_str(f"{record['task']} {record['method']} seed {record['seed']}: {record['accuracy']:.3f}{fidelity}")
            bar.update()
    bar.close()
    order = {run: index for index, run in enumerate(runs)}
    records.sort(key=lambda r: order[(r["task"], r["method"], r["seed"])])
    workers = min(jobs, len(runs))
    threads_per_run = threads if threads is not None else (1 if workers > 1 else torch.get_num_threads())
    mode = ("quick" if quick else "full") + (f", {section} section" if section != "main" else "")
    header = (
        f"Benchmark ({mode}): seeds {list(seeds)}, "
        f"torch {torch.__version__}, {platform.machine()}, {threads_per_run} torch thread(s) per run, "
        + (f"{workers} run(s) at once." if ray is None else f"runs as Ray tasks ({ray}).")
    )
    return report.write(records, Path(out), {t.name: t.title for t in selected}, header)


def _execute(runs: list[tuple[str, str, int]], quick: bool, threads: int | None, jobs: int) -> Iterator[dict[str, Any]]:
    """Yield the record of each planned run as it finishes: in this process, or in ``jobs`` workers."""
    if jobs == 1 or len(runs) == 1:
        previous = torch.get_num_threads()
        try:
            for run in runs:
                yield _run_planned(*run, quick, threads)
        finally:
            torch.set_num_threads(previous)
        return
    # spawn, not fork: a forked child of a process that has used torch's thread pools can hang
    context = multiprocessing.get_context("spawn")
    # workers that each took torch's default of one thread per core would oversubscribe the cores
    per_worker = threads if threads is not None else 1
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=context) as pool:
        futures = [pool.submit(_run_planned, *run, quick, per_worker) for run in runs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _execute_on_ray(
    runs: list[tuple[str, str, int]], quick: bool, threads: int | None, jobs: int, address: str
) -> Iterator[dict[str, Any]]:
    """Yield the record of each planned run as it finishes, each trained in a Ray task."""
    try:
        import ray
    except ImportError as err:
        raise ValueError("--ray needs Ray: pip install 'blackgrad[ray]'") from err
    started = not ray.is_initialized()
    if started and address == "local":
        # the workers import the blackgrad this process runs, wherever it lies
        source = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    elif started:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as err:
            raise ValueError(
                f"--ray {address}: could not join a Ray cluster there ({type(err).__name__}: {err}); check the "
                "address (`ray status` on the head node shows it) and that this machine can reach it, or use --ray local"
            ) from err
    pending = []
    try:
        train = ray.remote(num_cpus=1)(_run_planned)
        pending = [train.remote(*run, quick, threads if threads is not None else 1) for run in runs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:  # interrupted or failed: stop what has not run
            ray.cancel(ref)
        if started:
            ray.shutdown()


@functools.lru_cache(maxsize=None)
def _data(task_name: str, quick: bool):
    return tasks()[task_name].data(quick)


def _run_planned(task_name: str, method: str, seed: int, quick: bool, threads: int | None) -> dict[str, Any]:
    """Train one planned run (by names, so that it can be sent to a worker process)."""
    if threads is not None:
        torch.set_num_threads(threads)
    task = tasks()[task_name]
    return run_one(task, method, seed, _data(task_name, quick), task.quick_epochs if quick else task.epochs)
