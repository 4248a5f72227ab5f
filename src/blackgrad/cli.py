"""The ``blackgrad`` command line: the demo, the benchmark, the experiments, recordings and the device server."""

# Part of the research harness, with the bench extra (pip install 'blackgrad[bench]'); the
# installed command starts in blackgrad._launcher, which says so when typer is missing.
# The docstring above is the command's --help.

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import importlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, List, NoReturn, Optional

import typer

from ._launcher import INSTALL, missing_harness

# Plain click messages, not rich panels: an error is one line, whatever the terminal's width.
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)


def _fail(message: str, code: int = 2) -> NoReturn:
    """End the command with a one-line error (exit status 2: bad input; 1: it failed)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _need_harness(command: str) -> None:
    """End ``blackgrad COMMAND`` with a one-line error when part of the ``bench`` extra is missing."""
    absent = missing_harness()
    if absent:
        _fail(f"blackgrad {command} needs the bench extra ({', '.join(absent)} not installed): {INSTALL}", 1)


def _writable(folder: Path, option: str = "--out") -> Path:
    """``folder``, created if missing, once a file can be written in it; else a one-line error."""
    if folder.exists() and not folder.is_dir():
        _fail(f"{option} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        _fail(f"cannot write into {option} {folder}: {err.strerror or err}")
    return folder


def _run_folder(kind: str, out: Optional[Path]) -> Path:
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{kind}-{stamp}"
    return _writable(out)


def _names(text: Optional[str], option: str) -> Optional[list[str]]:
    """A comma-separated list of names, spaces around them ignored; an empty name is an error."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        _fail(f"{option} {text!r} holds an empty name; give names separated by single commas")
    return names


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show warnings as ``warning: ...`` lines, without the source line Python adds."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        typer.echo(f"warning: {message}", err=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


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
    seed: int = typer.Option(0, min=0, help="random seed"),
) -> None:
    """Train a hybrid model on digits through a black box, next to exact backprop.

    A folder that already holds some of the runs (an interrupted demo) is resumed.
    """
    _need_harness("demo")
    from .bench import BenchmarkInterrupted
    from .bench.records import RecordsError
    from .demo import run_demo

    folder = _run_folder("demo", out)
    try:
        with _one_line_warnings():
            report = run_demo(folder, quick=quick, seed=seed)
    except RecordsError as err:
        _fail(str(err))
    except BenchmarkInterrupted as err:
        _fail(str(err), 130)
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
    """Compare gradient estimators side by side on simulated physical devices.

    Each finished run is appended to OUT/records.jsonl.  Run again on the same
    --out folder (after Ctrl-C, or with more tasks, methods or seeds), it skips
    the runs recorded there and runs the others; a folder whose records were
    trained with other settings (--quick or not) is refused.
    """
    _need_harness("bench")
    from .bench import SECTION_SEEDS, SECTIONS, BenchmarkInterrupted, plan, run_benchmark
    from .bench.records import RecordsError

    if section not in SECTIONS:
        _fail(f"unknown section {section!r}; known sections: {', '.join(SECTIONS)}")
    seeds = seeds if seeds is not None else (1 if quick else SECTION_SEEDS[section])
    if seeds < 1:
        _fail("--seeds must be at least 1")
    jobs = jobs if jobs is not None else _cores()
    if jobs < 1:
        _fail("--jobs must be at least 1")
    task_names = _names(tasks, "--tasks")
    method_names = _names(methods, "--methods")
    settings = dict(quick=quick, task_names=task_names, method_names=method_names, seeds=tuple(range(seeds)), section=section)
    try:
        plan(**settings)  # unknown names are refused before a folder is made
    except ValueError as err:
        _fail(str(err))
    folder = _run_folder("bench", out)
    try:
        with _one_line_warnings():
            summary = run_benchmark(folder, jobs=jobs, ray=ray, **settings)
    except (RecordsError, ValueError) as err:
        _fail(str(err))
    except BenchmarkInterrupted as err:
        _fail(str(err), 130)
    typer.echo("\n" + summary["markdown"])
    typer.echo(f"tables and figures written to {folder}")


@app.command("run")
def run_experiment(
    name: str = typer.Argument(..., help="experiment name, or 'all'"),
    quick: bool = typer.Option(False, help="small, fast variant"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/experiments)"),
    threads: int = typer.Option(1, min=1, help="torch threads (small models: one thread is fastest, and robust to a busy core)"),
) -> None:
    """Run one of the experiments (or all of them) and rebuild the index report."""
    _need_harness("run")
    import torch

    from .experiments import EXPERIMENTS, available, load
    from .experiments.report import write_index

    names = available() if name == "all" else [name]
    try:
        modules = {experiment: load(experiment) for experiment in names}
    except KeyError as err:
        _fail(str(err.args[0]))
    root = _writable(out if out is not None else Path("runs") / "experiments")
    torch.set_num_threads(threads)
    for experiment, module in modules.items():
        config = module.Config.quick() if quick else module.Config()
        typer.echo(f"running {experiment} ({'quick' if quick else 'full'}) -> {root / experiment}")
        result = module.run(config, root / experiment, progress=True)
        for row in result.get("claims", []):
            mark = "holds" if row["holds"] else "DOES NOT HOLD"
            typer.echo(f"  [{mark}] {row['claim']} -- {row['measured']}")
    index = write_index(root, [e for e in EXPERIMENTS if (root / e / "results.json").exists()])
    typer.echo(f"index report: {index}")


@app.command()
def report(
    folder: Path = typer.Argument(
        Path("runs") / "experiments", help="a benchmark or demo folder (holding records.jsonl), or the experiments' folder"
    ),
) -> None:
    """Rebuild the tables and figures of a benchmark from its records, or the experiments' index report.

    A folder holding records.jsonl (from `blackgrad bench` or `blackgrad demo`)
    gets results.md, results.json and the figures again, from the records
    alone; the experiments' folder gets its index.html.  Nothing is run.
    """
    _need_harness("report")
    from .bench import rebuild
    from .bench.records import RECORDS, RecordsError
    from .experiments import EXPERIMENTS
    from .experiments.report import write_index

    if not folder.exists():
        _fail(f"no folder {folder}: give a folder written by blackgrad bench, demo or run")
    if not folder.is_dir():
        _fail(f"{folder} is a file; give the folder written by blackgrad bench, demo or run")
    try:
        if (folder / RECORDS).exists():
            try:
                with _one_line_warnings():
                    summary = rebuild(folder)
            except RecordsError as err:
                _fail(str(err))
            if (folder / "report.md").exists():  # a demo's folder: its report too
                from .demo import write_report

                write_report(folder, summary)
            typer.echo("\n" + summary["markdown"])
            typer.echo(f"tables and figures written to {folder}")
            return
        done = [e for e in EXPERIMENTS if (folder / e / "results.json").exists()]
        if not done:
            _fail(
                f"{folder} holds neither benchmark records ({RECORDS}) nor experiment results (<name>/results.json); "
                f"give a folder written by blackgrad bench, demo or run"
            )
        index = write_index(folder, done)
    except OSError as err:
        _fail(f"cannot write the report into {folder}: {err.strerror or err}", 1)
    typer.echo(f"index report: {index}")


record_app = typer.Typer(no_args_is_help=True, help="Recordings of device evaluations (BlackBox(..., record=PATH)).")
app.add_typer(record_app, name="record")


@record_app.command("info")
def record_info(path: Path = typer.Argument(..., help="the HDF5 file a BlackBox recorded into")) -> None:
    """Summarise a recording: its boxes, and the calls and samples of each kind."""
    from .recording import Recording, RecordingError, describe

    try:
        with Recording(path) as recording:
            summary = recording.summary()
    except RecordingError as err:
        _fail(str(err))
    typer.echo(describe(summary))


def _factory_arguments(values: List[str]) -> tuple[list[Any], dict[str, Any]]:
    """``VALUE`` and ``NAME=VALUE`` words as positional and keyword arguments (Python literals, else strings)."""

    def literal(text: str) -> Any:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and name.isidentifier():
            kwargs[name] = literal(rest)
        elif kwargs:
            raise ValueError(f"positional factory argument {value!r} after keyword arguments")
        else:
            args.append(literal(value))
    return args, kwargs


def _load_factory(spec: str, app_dir: Path) -> Any:
    """The object named by ``module:attribute``, imported with ``app_dir`` first on the path."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"the factory must be given as module:function (e.g. my_lab.devices:make_camera), got {spec!r}")
    sys.path.insert(0, str(app_dir.resolve()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import module {module_name!r} ({type(err).__name__}: {err}); run from the folder that holds it, "
            "give --app-dir, or install it"
        ) from None
    except Exception as err:  # the module itself fails: its error, not a traceback of ours
        raise ValueError(f"importing module {module_name!r} raised {type(err).__name__}: {err}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec} is a {type(target).__name__}, not a function that makes the device")
    return target


@app.command("serve")
def serve_device(
    factory: str = typer.Argument(..., help="module:function that returns the device, e.g. my_lab.devices:make_camera"),
    arguments: Optional[List[str]] = typer.Argument(
        None, help="arguments for the factory: VALUE or NAME=VALUE, read as Python literals (else as strings)"
    ),
    port: int = typer.Option(5555, help="TCP port (0: any free one, printed at start)"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on; 0.0.0.0 for every interface (then mind the firewall)"),
    token: Optional[str] = typer.Option(
        None, envvar="BLACKGRAD_TOKEN", help="the shared token clients must send (default: generate one and print it)"
    ),
    numpy: bool = typer.Option(False, help="call the device with numpy arrays instead of torch tensors"),
    app_dir: Path = typer.Option(Path("."), help="folder searched first for the factory's module"),
    drop_replies: int = typer.Option(0, hidden=True, help="fault injection for tests: lose the first N replies"),
) -> None:
    """Serve a device to the network: clients train through it with blackgrad.remote.RemoteDevice."""
    import signal

    try:
        from .remote import serve
    except ImportError as err:
        _fail(str(err))
    try:
        args, kwargs = _factory_arguments(arguments or [])
        make = _load_factory(factory, app_dir)
    except ValueError as err:
        _fail(str(err))
    try:
        device = make(*args, **kwargs)
    except Exception as err:
        _fail(f"the factory {factory} raised {type(err).__name__}: {err}")
    if not callable(device):
        _fail(f"the factory {factory} returned a {type(device).__name__}, which is not a callable device")

    def stop(signum: int, frame: Any) -> None:  # SIGTERM ends the service like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        ledger = serve(
            device, port=port, host=host, token=token, numpy=numpy, name=factory, drop_replies=drop_replies,
            announce=typer.echo,
        )
    except (OSError, ValueError, TypeError) as err:
        _fail(str(err))
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(f"stopped; served {ledger.samples} samples in {ledger.calls} calls ({ledger.errors} errors, "
               f"{ledger.refusals} refusals, {ledger.malformed} malformed, {ledger.replayed} replayed)")


if __name__ == "__main__":  # pragma: no cover
    app()
