"""Smoke tests of `blackgrad bench --quick`, the demo and the CLI's errors."""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from blackgrad.cli import app

runner = CliRunner()


def test_bench_quick_writes_tables_with_exact_costs(tmp_path):
    result = runner.invoke(
        app,
        ["bench", "--quick", "--tasks", "moons-shg", "--methods", "exact,spsa-8,readout-only,cma-es", "--seeds", "1", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = {row["method"]: row for row in summary["tables"]["moons-shg"]}
    assert set(rows) == {"exact", "spsa-8", "readout-only", "cma-es"}
    # the ledger's cost per training sample: forward only, or forward + 2 × 8 antithetic probes
    assert rows["exact"]["evaluations_per_sample"] == 1.0
    assert rows["readout-only"]["evaluations_per_sample"] == 1.0
    assert rows["spsa-8"]["evaluations_per_sample"] == 17.0
    assert 0 < rows["cma-es"]["evaluations_per_sample"] <= 10.0
    assert rows["exact"]["cosine"] > 0.99  # the limit: the exact VJP of the clean physics (float32 cosines)
    assert rows["exact"]["fraction_of_exact"] == 1.0
    assert (tmp_path / "moons-shg.png").stat().st_size > 0
    assert "| exact backprop (the limit) |" in (tmp_path / "results.md").read_text()


def test_demo_quick_writes_a_report(tmp_path):
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "exact backprop (the limit)" in report and "readout only" in report
    assert "![digits-shg.png](digits-shg.png)" in report
    assert "±" not in report  # one seed: no spread to show
    # rebuilt from the records alone, by the report command
    (tmp_path / "report.md").write_text("stale")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").read_text() == report


def test_unknown_names_are_rejected_with_the_known_ones():
    result = runner.invoke(app, ["bench", "--quick", "--methods", "magic"])
    assert result.exit_code == 2 and "unknown method 'magic'; known methods: exact," in result.output
    result = runner.invoke(app, ["run", "nope", "--quick"])
    assert result.exit_code == 2 and "unknown experiment 'nope'" in result.output


def test_parallel_runs_give_the_records_of_serial_ones(tmp_path):
    from blackgrad.bench import run_benchmark

    def records(jobs):
        summary = run_benchmark(
            tmp_path / f"jobs{jobs}", quick=True, task_names=["moons-shg"], method_names=["exact", "spsa-8"], seeds=(0,), progress=False, jobs=jobs
        )
        return {(r["method"], r["seed"]): (r["accuracy"], r["evaluations"], r["curve"]) for r in summary["records"]}

    assert records(1) == records(2)


def test_bad_jobs_are_rejected(tmp_path):
    from blackgrad.bench import run_benchmark

    result = runner.invoke(app, ["bench", "--quick", "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs must be at least 1" in result.output
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        run_benchmark(tmp_path, quick=True, jobs=0, progress=False)


def test_normalized_stack_keeps_the_third_layer_input_sample_dependent():
    import torch

    from blackgrad.bench.methods import METHODS
    from blackgrad.bench.runner import build
    from blackgrad.bench.tasks import tasks

    task = tasks()["digits-deep-shg"]
    data = task.data(True)
    spread = {}
    for normalize in (False, True):
        model = build(replace(task, normalize=normalize), METHODS["exact"], data, seed=0)
        with torch.no_grad():
            h = data.x_train
            for encoder, box in zip(model.encoders, model.boxes):
                u = torch.tanh(encoder(h))
                h = box(u)
        spread[normalize] = u.std(0).mean().item()  # the third device's input, across samples
    assert spread[True] > 4 * spread[False]
