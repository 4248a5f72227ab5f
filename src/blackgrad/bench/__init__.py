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
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import records, report
from .methods import DEFAULTS_BASELINES, METHODS, SECTIONS, Method
from .runner import run_one
from .tasks import Task, tasks

__all__ = [
    "run_benchmark",
    "rebuild",
    "run_config",
    "BenchmarkInterrupted",
    "plan",
    "section_methods",
    "METHODS",
    "SECTIONS",
    "Method",
    "Task",
    "tasks",
    "run_one",
]

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
    return list(dict.fromkeys(runs))  # a name or seed given twice is one run, recorded once


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
    """Run every (task, method, seed) not yet recorded in ``out``, write tables and figures; return the summary.

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

    Each finished run is appended at once to ``out/records.jsonl``
    (:mod:`~blackgrad.bench.records`).  A folder that already holds records
    is resumed: runs recorded there are skipped, the missing ones run and
    are appended, so an interrupted benchmark (``KeyboardInterrupt``, raised
    as :class:`BenchmarkInterrupted`) loses only the runs in flight.  A folder
    holds one configuration: a record trained with other settings than this
    call would use (``quick`` or not, another version's epochs) raises
    :class:`~blackgrad.bench.records.RecordsError` before anything runs, as
    two configurations averaged into one table row would be a wrong answer.
    The tables cover every record in the folder (:func:`rebuild` writes the
    same from the records alone).

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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / records.RECORDS
    with records.Appender(path) as log:  # locked: no other benchmark writes the folder meanwhile
        found = records.read(path)
        _check_resumable(found, quick, path)
        records.drop_cut_short_line(path)  # warned about by read: its run is run again
        done = {records.key(record) for record in found}
        todo = [run for run in runs if run not in done]
        environment = _environment(section, threads, jobs, len(todo), ray)

        def execute() -> Iterator[dict[str, Any]]:
            return _execute(todo, quick, threads, jobs) if ray is None else _execute_on_ray(todo, quick, threads, jobs, ray)

        def settings(record: dict[str, Any]) -> dict[str, Any]:
            return run_config(table[record["task"]], METHODS[record["method"]], quick)

        _record_runs(log, path, runs, len(runs) - len(todo), execute, settings, environment, progress)
        # the tables of the records as written, exactly as rebuild() reads them back
        return _write(out, records.read(path))


def cpu_model() -> str:
    """The processor's model name, as the operating system gives it ("unknown" where it gives none).

    Recorded with every run: the same code and seed can train to another
    accuracy on another processor, whose vector units round sums in another
    order — on the three-layer stack by as much as its spread between seeds
    (BENCHMARKS.md) — so a record says where it was computed.
    """
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or "unknown"
    except OSError:
        pass
    return platform.processor() or "unknown"


def _environment(section: str, threads: int | None, jobs: int, todo: int, ray: str | None) -> dict[str, Any]:
    """What every record of this call says about where and how it ran."""
    workers = min(jobs, todo) or 1
    threads_per_run = threads if threads is not None else (1 if workers > 1 else torch.get_num_threads())
    return {
        "section": section,
        "threads": threads_per_run,
        "workers": workers,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        **({} if ray is None else {"ray": ray}),  # run as Ray tasks, local or on a cluster
    }


def _record_runs(log, path: Path, runs: list, recorded: int, execute, settings, environment: dict[str, Any], progress: bool) -> None:
    """Append each run's record to ``log`` the moment it finishes, under a bar counting the ``runs`` recorded.

    On Ctrl-C, :class:`BenchmarkInterrupted` says how many of ``runs`` the
    file at ``path`` holds, wherever the interrupt fell.
    """
    bar = tqdm(total=len(runs), initial=recorded, disable=not progress, desc="benchmark")
    try:
        for record in execute():
            record["config"] = settings(record)
            record["environment"] = environment
            log.append(record)
            fidelity = "" if record.get("fidelity") is None else f" fidelity {record['fidelity']:.2f}"
            bar.set_postfix_str(f"{record['task']} {record['method']} seed {record['seed']}: {record['accuracy']:.3f}{fidelity}")
            bar.update()
    except KeyboardInterrupt:
        found = {records.key(record) for record in records.read(path)}
        raise BenchmarkInterrupted(path, sum(run in found for run in runs), len(runs)) from None
    finally:
        bar.close()


class BenchmarkInterrupted(KeyboardInterrupt):
    """A benchmark was interrupted; the runs that finished are recorded and a rerun resumes it."""

    def __init__(self, path: Path, recorded: int, planned: int):
        self.path, self.recorded, self.planned = path, recorded, planned
        rest = "to write the tables" if recorded == planned else "to run the rest"
        super().__init__(
            f"interrupted: {recorded} of the {planned} planned runs are recorded in {path}; "
            f"run the same command again {rest}"
        )


def run_config(task: Task, method: Method, quick: bool) -> dict[str, Any]:
    """Every setting that changes what a run of ``method`` on ``task`` measures, JSON-ready.

    Two records of one (task, method, seed) measured the same thing exactly
    when these agree (the devices' physics is fixed by the task and the
    package version).
    """
    from .. import __version__

    data = _data(task.name, quick)
    settings = {
        "version": __version__,
        "quick": quick,
        "epochs": task.quick_epochs if quick else task.epochs,
        "train_samples": int(data.x_train.shape[0]),
        "test_samples": int(data.x_test.shape[0]),
        "layers": task.layers,
        "batch_size": task.batch_size,
        "lr": task.lr,
        "probe_step": task.probe_step,
        "frequencies": task.frequencies,
        "pretrain_epochs": task.pretrain_epochs,
        "normalize": task.normalize,
        "kind": method.kind,
        "pretrain": method.pretrain,
    }
    return json.loads(json.dumps(settings))  # as read back from a record: tuples are lists


def _known(found: list[dict[str, Any]], path: Path) -> dict[str, Task]:
    """The tasks of this version; a record of a task or method it does not know is an error."""
    table = tasks()
    for record in found:
        if record["task"] not in table:
            raise records.RecordsError(f"{path} holds a run of task {record['task']!r}, unknown here; known tasks: {', '.join(table)}")
        if record["method"] not in METHODS:
            raise records.RecordsError(
                f"{path} holds a run of method {record['method']!r}, unknown here; known methods: {', '.join(METHODS)}"
            )
    return table


def _check_resumable(found: list[dict[str, Any]], quick: bool, path: Path) -> None:
    """Refuse, before anything runs, a folder whose records another configuration trained, or that repeats a run."""
    table = _known(found, path)
    seen = set()
    advice = f"use another --out folder, or delete {path} to start again"
    for record in found:
        run = records.key(record)
        name = f"{run[0]} / {run[1]} / seed {run[2]}"
        if run in seen:
            raise records.RecordsError(f"{path} holds two records of {name}; delete one of them")
        seen.add(run)
        if "config" not in record:
            raise records.RecordsError(
                f"{path} holds records without their configuration (written before benchmarks could be resumed), "
                f"so they cannot be resumed: {advice}"
            )
        expected = run_config(table[run[0]], METHODS[run[1]], quick)
        if record["config"] != expected:
            changed = ", ".join(
                f"{field} {record['config'].get(field)!r} there, {expected.get(field)!r} now"
                for field in sorted(set(expected) | set(record["config"]))
                if record["config"].get(field) != expected.get(field)
            )
            raise records.RecordsError(
                f"{path} holds runs of another configuration ({name}: {changed}); "
                f"its tables would mix the two: {advice}"
            )


def rebuild(out: Path) -> dict[str, Any]:
    """Write the tables and figures of the benchmark folder ``out`` from its ``records.jsonl`` alone.

    The same files, from the same records, as :func:`run_benchmark` wrote
    (a cut-short last line is left out with a warning); the folder is only
    read, apart from them.
    """
    out = Path(out)
    path = out / records.RECORDS
    if not path.is_file():
        raise records.RecordsError(f"{out} holds no {records.RECORDS}: it is not a benchmark folder")
    found = records.read(path)
    if not found:
        raise records.RecordsError(f"{path} holds no finished run: there is nothing to report")
    _known(found, path)
    return _write(out, found)


def _write(out: Path, found: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables and figures of ``found``, in an order that depends on the records alone.

    Not the order the runs finished in (resumed, or on several workers): by
    task in the order of :func:`tasks`; then the methods that estimate
    gradients in the order of :data:`METHODS`, then those that do not
    (readout-only, CMA-ES): each section's own order (:func:`section_methods`);
    then seed.
    """
    table = tasks()
    task_order, method_order = {name: i for i, name in enumerate(table)}, {name: i for i, name in enumerate(METHODS)}

    def order(record: dict[str, Any]) -> tuple:
        method = record["method"]
        return task_order[record["task"]], METHODS[method].kind != "gradient", method_order[method], record["seed"]

    found = sorted(found, key=order)
    titles = {name: table[name].title for name in dict.fromkeys(r["task"] for r in found)}
    return report.write(found, out, titles, _header(found))


def _header(found: list[dict[str, Any]]) -> str:
    """The line above the tables: the mode and seeds, and how the runs were run (from the records)."""

    def values(field: str) -> list[Any]:
        return list(dict.fromkeys(r["environment"][field] for r in found if field in r.get("environment", {})))

    def joined(field: str) -> str:
        return " / ".join(str(v) for v in values(field))

    modes = list(dict.fromkeys(r["config"]["quick"] for r in found if "config" in r))
    mode = " / ".join("quick" if quick else "full" for quick in modes) or "mode not recorded"
    sections = [s for s in values("section") if s != "main"]
    if sections:
        mode += ", " + " / ".join(sections) + " section"
    seeds = sorted({r["seed"] for r in found})
    text = f"Benchmark ({mode}): seeds {seeds}"
    if values("torch"):
        text += (
            f", torch {joined('torch')}, {joined('machine')}"
            + (f" ({joined('cpu')})" if values("cpu") else "")
            + f", {joined('threads')} torch thread(s) per run, "
            + (f"runs as Ray tasks ({joined('ray')})" if values("ray") else f"{joined('workers')} run(s) at once")
        )
    return text + "."


def _execute(runs: list[tuple[str, str, int]], quick: bool, threads: int | None, jobs: int) -> Iterator[dict[str, Any]]:
    """Yield the record of each planned run as it finishes: in this process, or in ``jobs`` workers."""
    if not runs:  # all recorded already: no workers to start
        return
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
    # Ctrl-C reaches the whole process group: the workers ignore it and this process,
    # which alone writes the records, stops them
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=context, initializer=_ignore_interrupts) as pool:
        futures = [pool.submit(_run_planned, *run, quick, per_worker) for run in runs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            # the runs in flight are lost either way: stop their workers rather than wait for them
            workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                process.terminate()
            raise


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
