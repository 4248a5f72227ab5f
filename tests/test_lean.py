"""The core needs only torch and numpy; the harness (the ``bench`` extra) stays beside it.

Each check runs in a fresh interpreter in which the harness's libraries cannot
be imported (a ``sys.meta_path`` finder refuses them), as on a plain
``pip install blackgrad``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blackgrad._launcher import HARNESS, INSTALL

ROOT = Path(__file__).resolve().parents[1]

#: the modules of the research harness: they may need the ``bench`` extra, nothing else may
HARNESS_MODULES = ("blackgrad.bench", "blackgrad.experiments", "blackgrad.demo", "blackgrad.cli")

# Every finder on sys.meta_path is wrapped so that it finds none of BLOCKED: to the import system
# and to importlib.util.find_spec they look exactly as if they were not installed.
# typer brings click and rich: a core that imported those would need the extra as well.
BLOCKER = """
import importlib.abc, sys

BLOCKED = {blocked!r}

class Uninstalled(importlib.abc.MetaPathFinder):
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        if hasattr(self.finder, "invalidate_caches"):
            self.finder.invalidate_caches()

assert not [name for name in sys.modules if name.split(".")[0] in BLOCKED]
sys.meta_path[:] = [Uninstalled(finder) for finder in sys.meta_path]
"""


def run_without(blocked: set[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which the modules ``blocked`` cannot be imported."""
    script = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_the_core_imports_and_trains_without_the_harness():
    blocked = set(HARNESS) | {"click", "rich"}
    result = run_without(
        blocked,
        f"""
        import importlib, pkgutil
        import torch
        import blackgrad as bg
        from blackgrad import devices, estimators

        harness = {HARNESS_MODULES!r}
        for info in pkgutil.walk_packages(bg.__path__, "blackgrad."):
            if not info.name.startswith(harness):
                importlib.import_module(info.name)  # every core module, pool and recording included

        torch.manual_seed(0)
        # the ones trained below ungated: a shut gate at a first pass would withhold the gradient (None)
        built = [
            estimators.Exact(), estimators.FiniteDifference(), estimators.ComplexStep(), estimators.SPSA(gate=None),
            estimators.LeastSquares(), estimators.Broyden(gate=None), estimators.StraightThrough(), estimators.DigitalTwin(),
            estimators.LearnedJacobian(), estimators.LearnedVJP(), estimators.Unbiased(estimators.LearnedVJP(gate=None), gate=None),
        ]
        assert {{type(e).__name__ for e in built}} | {{"Estimator", "VJPQuery", "VJP", "ProberLike", "GroupedProber", "LearnedEstimator"}} == set(estimators.__all__)
        weight = torch.randn(4, 4)  # square: StraightThrough's elementwise derivative needs n == m
        # One learned estimator trains here (Unbiased over LearnedVJP: the learned base, a head, the correction):
        # each one's first step costs seconds, and the twin trains below.
        trained = [e for e in built if not isinstance(e, estimators.LearnedEstimator)] + [built[-1]]
        for estimator in trained:  # a plain callable: the complex step needs one that takes complex inputs
            box = bg.BlackBox(lambda x: torch.tanh(x @ weight.to(x.dtype)), estimator)
            x = torch.randn(8, 4, requires_grad=True)
            box(x).sum().backward()
            assert x.grad is not None and x.grad.shape == (8, 4) and torch.isfinite(x.grad).all(), estimator
        for device in (devices.Noisy(devices.Linear(4, 3)), devices.Quantized(devices.SHG())):
            box = bg.BlackBox(device, estimators.SPSA(gate=None))
            x = torch.randn(8, device.in_features, requires_grad=True)
            box(x).sum().backward()
            assert torch.isfinite(x.grad).all(), device

        twin = bg.BlackBox(devices.Linear(4, 3), estimators.DigitalTwin())
        assert len(twin.pretrain(torch.randn(64, 4), epochs=2)) == 2  # no progress bar, no tqdm
        try:
            twin.pretrain(torch.randn(64, 4), epochs=2, progress=True)
        except ModuleNotFoundError as err:
            print("progress:", err)
        blocked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
        print("imported:", blocked)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stdout
    assert (
        "progress: progress=True draws its bar with tqdm, which is not installed: pip install tqdm "
        "(or pip install 'blackgrad[bench]'), or leave progress off" in result.stdout
    )


def test_the_harness_modules_leave_the_matplotlib_backend_alone():
    # Importing an experiment (or the benchmark) must not switch a notebook's backend, nor load pyplot.
    result = run_without(
        set(),
        f"""
        import importlib, pkgutil
        import matplotlib

        def refuse(*args, **kwargs):
            raise AssertionError(f"matplotlib.use{{args}} called")

        matplotlib.use = refuse
        import blackgrad as bg

        for info in pkgutil.walk_packages(bg.__path__, "blackgrad."):
            if info.name.startswith({HARNESS_MODULES!r}):
                importlib.import_module(info.name)
        print("pyplot loaded:", "matplotlib.pyplot" in sys.modules)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "pyplot loaded: False" in result.stdout


def test_the_command_without_typer_names_the_extra():
    result = run_without(
        {"typer", "click", "rich"},
        """
        from blackgrad._launcher import main

        sys.argv = ["blackgrad", "demo", "--quick"]
        main()
        """,
    )
    assert result.returncode == 1
    assert result.stderr == f"error: the blackgrad command needs the bench extra (typer is not installed): {INSTALL}\n"


def test_commands_that_need_the_harness_name_the_extra(tmp_path):
    commands = [["demo", "--quick"], ["bench", "--quick"], ["run", "losses", "--quick"], ["report"]]
    result = run_without(
        {"sklearn", "cma"},
        f"""
        import contextlib, io, json, os
        from blackgrad._launcher import main

        os.chdir({str(tmp_path)!r})
        answers = []
        for command in {commands!r}:
            sys.argv = ["blackgrad", *command]
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                try:
                    main()
                except SystemExit as exit:
                    answers.append([exit.code, stderr.getvalue()])
        print(json.dumps(answers))
        """,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.splitlines()[-1])
    assert answers == [
        [1, f"error: blackgrad {command[0]} needs the bench extra (scikit-learn, cma not installed): {INSTALL}\n"]
        for command in commands
    ]
    assert list(tmp_path.iterdir()) == []  # refused before any folder is made


def test_record_info_needs_only_typer(tmp_path):
    result = run_without(
        {"sklearn", "matplotlib", "tqdm", "cma"},
        f"""
        from blackgrad._launcher import main

        sys.argv = ["blackgrad", "record", "info", {str(tmp_path / "missing.h5")!r}]
        main()
        """,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: no recording {tmp_path / 'missing.h5'}: no such file"


def test_pyproject_keeps_the_core_lean():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert core == {"torch", "numpy"}
    bench = {dep.split(">")[0].strip() for dep in project["optional-dependencies"]["bench"]}
    assert bench == set(HARNESS.values())  # the launcher checks exactly what the extra installs
    assert project["scripts"]["blackgrad"] == "blackgrad._launcher:main"
    # `make demo` and `make test` install the harness beside the test extras
    installed = re.search(r"pip install .*-e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert installed and "bench" in installed.group(1).split(",")
