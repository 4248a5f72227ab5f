"""The side-by-side benchmark behind ``blackgrad bench`` (and the demo).

Every method trains the same hybrid physical–digital model on the same data
split, seeds and simulated device, in one run; see :func:`run_benchmark`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

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
) -> dict[str, Any]:
    """Run every (task, method, seed), write tables and figures into ``out``; return the summary.

    ``quick``: small data and few epochs, and — unless tasks are named — the
    main task alone: a smoke run well under a minute.
    ``threads``: torch threads during the run (default 1: the batches are
    small, so threading overhead outweighs the gain, and one busy core does
    not stall the run; None leaves torch's setting).
    """
    table = tasks()
    default_tasks = ["digits-shg"] if quick else list(table)
    for name in task_names or []:
        if name not in table:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(table)}")
    for name in method_names or []:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    selected = [table[name] for name in (task_names or default_tasks)]
    plan = []
    for task in selected:
        allowed = task.methods or tuple(METHODS)
        chosen = [m for m in (method_names or allowed) if m in allowed]
        if not chosen:
            raise ValueError(f"none of the methods asked for runs on task {task.name!r}; its methods: {', '.join(allowed)}")
        plan += [(task, method, seed) for method in chosen for seed in seeds]
    Path(out).mkdir(parents=True, exist_ok=True)
    records = []
    data_cache: dict[str, Any] = {}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        bar = tqdm(plan, disable=not progress, desc="benchmark")
        for task, method, seed in bar:
            bar.set_postfix_str(f"{task.name} {method} seed {seed}")
            if task.name not in data_cache:
                data_cache[task.name] = task.data(quick)
            data = data_cache[task.name]
            epochs = task.quick_epochs if quick else task.epochs
            records.append(run_one(task, method, seed, data, epochs))
            # one line per finished run: an interrupted benchmark keeps what it measured
            with open(Path(out) / "records.jsonl", "a") as log:
                log.write(json.dumps(records[-1]) + "\n")
    finally:
        torch.set_num_threads(previous_threads)
    header = (
        f"Benchmark ({'quick' if quick else 'full'}): seeds {list(seeds)}, "
        f"torch {torch.__version__}, {platform.machine()}, {threads or previous_threads} torch thread(s)."
    )
    return report.write(records, Path(out), {t.name: t.title for t in selected}, header)
