"""The benchmark's defaults section, its new tasks and its "no harm" column (quick, tiny data, one seed)."""

import json
import math

import pytest
from typer.testing import CliRunner

from blackgrad.bench import SECTION_SEEDS, plan, section_methods
from blackgrad.bench.methods import METHODS, Method
from blackgrad.bench.report import markdown, summarise
from blackgrad.bench.runner import build, run_one
from blackgrad.bench.tasks import HybridNet, tasks
from blackgrad.cli import app
from blackgrad.devices import SHG, Drifting, Quantized
from blackgrad.nets import FourierFeatures
from blackgrad.estimators import (
    SPSA,
    Broyden,
    DigitalTwin,
    FiniteDifference,
    LeastSquares,
    LearnedJacobian,
    LearnedVJP,
    Unbiased,
)
from blackgrad.module import BlackBox

runner = CliRunner()

NEW_TASKS = ("digits-drift-shg", "digits-coarse-shg", "digits-wide-shg")

#: each defaults-section method and the estimator it must build, as a new user would: the class's defaults
DEFAULTS = {
    "default-fd": lambda: FiniteDifference(),
    "default-spsa": lambda: SPSA(),
    "default-least-squares": lambda: LeastSquares(),
    "default-broyden": lambda: Broyden(),
    "default-twin": lambda: DigitalTwin(),
    "default-learned-jacobian": lambda: LearnedJacobian(),
    "default-learned-vjp": lambda: LearnedVJP(),
    "default-unbiased-twin": lambda: Unbiased(DigitalTwin()),
}


def _settings(estimator):
    """An estimator's plain settings (numbers, strings, None, tuples), with an inner estimator's."""
    plain = {k: v for k, v in vars(estimator).items() if v is None or isinstance(v, (bool, int, float, str, tuple))}
    if "inner" in vars(estimator):
        plain["inner"] = (type(estimator.inner), _settings(estimator.inner))
    return plain


def _box_estimators(method_name, task_name="moons-shg"):
    task = tasks()[task_name]
    model = build(task, METHODS[method_name], task.data(True), seed=0)
    return [box.estimator for box in model.boxes]


def test_the_section_holds_every_class_and_says_defaults():
    defaults = [name for name, m in METHODS.items() if m.section == "defaults"]
    assert defaults == ["default", *DEFAULTS]
    assert all("defaults" in METHODS[name].label for name in defaults)
    assert SECTION_SEEDS["defaults"] == 1


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_defaults_methods_build_each_class_with_its_defaults(name):
    # seed 0 (build's seed for layer 0 of seed 0) is also every seeded class's default seed
    fresh = DEFAULTS[name]()
    for estimator in _box_estimators(name):
        assert type(estimator) is type(fresh)
        assert _settings(estimator) == _settings(fresh)
        if hasattr(fresh, "step"):
            assert estimator.step == fresh.step  # the class default, not the task's probe_step
            assert estimator.step != tasks()["moons-shg"].probe_step
        # not the task's own Fourier frequencies either: the class's default features
        assert getattr(estimator, "embedding", None) == getattr(fresh, "embedding", None)
        assert not isinstance(getattr(estimator, "embedding", None), FourierFeatures)


def test_make_returning_none_leaves_blackbox_its_default():
    library_default = type(BlackBox(SHG()).estimator)
    (estimator,) = _box_estimators("default")
    assert type(estimator) is library_default
    # any method, and HybridNet itself
    quiet = Method("none", "none", make=lambda device, task, seed: None)
    task = tasks()["digits-deep-shg"]
    model = build(task, quiet, task.data(True), seed=1)
    assert [type(box.estimator) for box in model.boxes] == [library_default] * 3
    net = HybridNet(4, 2, [SHG()], [None])
    assert type(net.boxes[0].estimator) is library_default


def test_the_new_tasks_are_the_devices_asked_for():
    table = tasks()
    for name in NEW_TASKS:
        task = table[name]
        assert task.title and task.notes and task.frequencies and task.probe_step > 0
        assert task.sections == ("defaults",)  # the main section's default run stays as it was
    wrappers = []
    device = table["digits-drift-shg"].device(0)
    while hasattr(device, "inner"):
        wrappers.append(device)
        device = device.inner
    drift = next(w for w in wrappers if isinstance(w, Drifting))
    assert drift.rate > 0 and isinstance(drift.inner, SHG)
    coarse = table["digits-coarse-shg"].device(0)
    assert isinstance(coarse, Quantized) and coarse.bits == 5 and coarse.inner.std == 0.01
    wide = table["digits-wide-shg"].device(0)
    assert (wide.in_features, wide.out_features) == (64, 64)
    assert table["digits-wide-shg"].data(True).n_features == 64


@pytest.mark.parametrize("name", NEW_TASKS)
def test_the_new_tasks_train_one_quick_epoch_with_exact(name):
    task = tasks()[name]
    record = run_one(task, "exact", 0, task.data(True), task.quick_epochs)
    assert 0.0 <= record["accuracy"] <= 1.0 and len(record["curve"]) == task.quick_epochs
    assert record["evaluations_per_sample"] >= 1.0
    assert record["cosine"] > 0.99


def _record(method, accuracy, task="t"):
    return {
        "task": task,
        "method": method,
        "seed": 0,
        "accuracy": accuracy,
        "evaluations_per_sample": 1.0,
        "cosine": None,
        "wall_seconds": 1.0,
    }


def test_no_harm_marks_a_method_below_readout_only():
    records = [
        _record("exact", 0.9),
        _record("default-fd", 0.4),  # below readout-only: harmful
        _record("default-spsa", 0.5),  # equal: no harm
        _record("default-twin", 0.72),
        _record("readout-only", 0.5),
    ]
    rows = {row["method"]: row for row in summarise(records)["t"]}
    assert rows["default-fd"]["no_harm"] is False
    assert rows["default-spsa"]["no_harm"] is True
    assert rows["default-twin"]["no_harm"] is True
    assert math.isclose(rows["default-twin"]["fraction_of_exact"], 0.8)
    assert math.isclose(rows["default-fd"]["fraction_of_exact"], 0.4 / 0.9)
    text = markdown(summarise(records), {"t": "a task"})
    lines = text.splitlines()
    assert "### a task (`t`): estimators with their defaults" in lines
    assert "| method | test accuracy | evals / sample | VJP cosine | wall s | × exact | fidelity | no harm (≥ readout-only) |" in lines
    # classical estimators keep no fidelity of their own: a dash in that column
    assert "| FiniteDifference() (defaults) | 0.400 | 1.00 | — | 1.0 | 0.444 | — | **no** |" in lines
    assert "| SPSA() (defaults) | 0.500 | 1.00 | — | 1.0 | 0.556 | — | yes |" in lines
    # exact and readout-only sit in the same table, first and last
    table = [line for line in lines if line.startswith("| ") and "method" not in line]
    assert table[0].startswith("| exact backprop (the limit) | 0.900") and table[-1].startswith("| readout only")
    assert table[-1].endswith("| — |")
    # only exact and readout-only of the main section: no main table of their own
    assert text.count("### ") == 1
    # without readout-only there is nothing to compare with
    alone = summarise([_record("exact", 0.9), _record("default-fd", 0.4)])["t"]
    assert all(row["no_harm"] is None for row in alone)


def test_main_tables_keep_their_columns():
    records = [_record("exact", 0.9), _record("fd", 0.8), _record("readout-only", 0.5)]
    text = markdown(summarise(records), {"t": "a task"})
    assert "| method | test accuracy | evals / sample | VJP cosine | wall s | × exact |" in text.splitlines()
    assert "no harm" not in text and "defaults" not in text


def test_the_main_run_plans_what_it_always_did():
    core = ["exact", "fd", "spsa-8", "pat-twin", "twin-online", "twin-slopes", "unbiased-vjp", "readout-only", "cma-es"]
    everything = [
        "exact", "fd", "spsa-1", "spsa-8", "least-squares", "broyden", "pat-twin", "twin-online", "twin-slopes",
        "learned-jacobian", "learned-vjp", "unbiased-jacobian", "unbiased-vjp", "unbiased-twin", "readout-only", "cma-es",
    ]  # fmt: skip
    expected = [("digits-shg", m, s) for m in everything for s in (0, 1, 2)]
    for task in ("digits-oscillators", "moons-shg", "digits-deep-shg"):
        expected += [(task, m, s) for m in core for s in (0, 1, 2)]
    assert plan() == expected
    assert plan(quick=True, seeds=(0,)) == [("digits-shg", m, 0) for m in everything]


def test_the_defaults_section_plans_every_method_on_every_task():
    runs = plan(section="defaults", seeds=(0,))
    methods = ["exact", *[n for n, m in METHODS.items() if m.section == "defaults"], "readout-only"]
    assert runs == [(task, m, 0) for task in tasks() for m in methods]
    assert set(NEW_TASKS) <= {task for task, _, _ in runs}
    assert section_methods(tasks()["digits-oscillators"], "defaults") == tuple(methods)
    # named methods run in whichever section allows them on the task
    assert plan(task_names=["digits-oscillators"], method_names=["fd", "default-spsa", "spsa-1"], seeds=(0,)) == [
        ("digits-oscillators", "fd", 0),
        ("digits-oscillators", "default-spsa", 0),
    ]
    with pytest.raises(ValueError, match="unknown section 'other'"):
        plan(section="other")


def test_cli_section_runs_the_defaults_section(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--section", "defaults", "--tasks", "moons-shg", "--jobs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = {row["method"]: row for row in summary["tables"]["moons-shg"]}
    assert list(rows) == list(section_methods(tasks()["moons-shg"], "defaults"))
    assert {r["seed"] for r in summary["records"]} == {0}
    assert rows["default"]["estimator"] == type(BlackBox(SHG()).estimator).__name__
    assert rows["default-unbiased-twin"]["estimator"] == "Unbiased(DigitalTwin)"
    assert all(isinstance(rows[m]["no_harm"], bool) for m in rows)
    text = (tmp_path / "results.md").read_text()
    assert "defaults section" in text and "estimators with their defaults" in text and "no harm" in text
    assert f"so {rows['default']['estimator']} (defaults) |" in text
    result = runner.invoke(app, ["bench", "--quick", "--section", "nope"])
    assert result.exit_code == 2 and "unknown section 'nope'; known sections: main, defaults" in result.output
