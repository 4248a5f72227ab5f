"""The side-by-side benchmark behind ``blackgrad bench`` (and the demo).

Every method trains the same hybrid physical–digital model on the same data
split, seeds and simulated device, in one run; see :func:`run_benchmark`.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import platform
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import report
from .methods import METHODS, Method
from .runner import run_one
from .tasks import Task, tasks

__all__ = ["run_benchmark", "METHODS", "Method", "Task", "tasks", "run_one"]


def run_benchmark(
    out: Path,
    quick: bool = False,
    task_names: Sequence[str] | None = None,
    method_names: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool = True,
    threads: int | None = 1,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every (task, method, seed), write tables and figures into ``out``; return the summary.

    ``quick``: small data and few epochs, and — unless tasks are named — the
    main task alone: a smoke run well under a minute.
    ``threads``: torch threads per run (default 1: the batches are small, so
    threading overhead outweighs the gain, and one busy core does not stall
    the run; None leaves torch's setting).
    ``jobs``: runs trained at once, each in its own process (every run seeds
    itself, so the records do not depend on ``jobs``).  Worker processes
    import the package afresh and look tasks and methods up by name: with
    ``jobs > 1`` only the built-in :func:`tasks` and :data:`METHODS` run, not
    entries a caller added or replaced at run time.
    """
    table = tasks()
    default_tasks = ["digits-shg"] if quick else list(table)
    for name in task_names or []:
        if name not in table:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(table)}")
    for name in method_names or []:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    selected = [table[name] for name in (task_names or default_tasks)]
    plan = []
    for task in selected:
        allowed = task.methods or tuple(METHODS)
        chosen = [m for m in (method_names or allowed) if m in allowed]
        if not chosen:
            raise ValueError(f"none of the methods asked for runs on task {task.name!r}; its methods: {', '.join(allowed)}")
        plan += [(task.name, method, seed) for method in chosen for seed in seeds]
    Path(out).mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=len(plan), disable=not progress, desc="benchmark")
    # one line per finished run: an interrupted benchmark keeps what it measured
    with open(Path(out) / "records.jsonl", "a") as log:
        for record in _execute(plan, quick, threads, jobs):
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix_str(f"{record['task']} {record['method']} seed {record['seed']}")
            bar.update()
    bar.close()
    order = {run: index for index, run in enumerate(plan)}
    records.sort(key=lambda r: order[(r["task"], r["method"], r["seed"])])
    workers = min(jobs, len(plan))
    threads_per_run = threads if threads is not None else (1 if workers > 1 else torch.get_num_threads())
    header = (
        f"Benchmark ({'quick' if quick else 'full'}): seeds {list(seeds)}, "
        f"torch {torch.__version__}, {platform.machine()}, {threads_per_run} torch thread(s) per run, "
        f"{workers} run(s) at once."
    )
    return report.write(records, Path(out), {t.name: t.title for t in selected}, header)


def _execute(plan: list[tuple[str, str, int]], quick: bool, threads: int | None, jobs: int) -> Iterator[dict[str, Any]]:
    """Yield the record of each planned run as it finishes: in this process, or in ``jobs`` workers."""
    if jobs == 1 or len(plan) == 1:
        previous = torch.get_num_threads()
        try:
            for run in plan:
                yield _run_planned(*run, quick, threads)
        finally:
            torch.set_num_threads(previous)
        return
    # spawn, not fork: a forked child of a process that has used torch's thread pools can hang
    context = multiprocessing.get_context("spawn")
    # workers that each took torch's default of one thread per core would oversubscribe the cores
    per_worker = threads if threads is not None else 1
    with ProcessPoolExecutor(max_workers=min(jobs, len(plan)), mp_context=context) as pool:
        futures = [pool.submit(_run_planned, *run, quick, per_worker) for run in plan]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


@functools.lru_cache(maxsize=None)
def _data(task_name: str, quick: bool):
    return tasks()[task_name].data(quick)


def _run_planned(task_name: str, method: str, seed: int, quick: bool, threads: int | None) -> dict[str, Any]:
    """Train one planned run (by names, so that it can be sent to a worker process)."""
    if threads is not None:
        torch.set_num_threads(threads)
    task = tasks()[task_name]
    return run_one(task, method, seed, _data(task_name, quick), task.quick_epochs if quick else task.epochs)
