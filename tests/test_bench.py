"""Smoke tests of `blackgrad bench --quick`, the demo and the CLI's errors."""

import json

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


def test_unknown_names_are_rejected_with_the_known_ones():
    result = runner.invoke(app, ["bench", "--quick", "--methods", "magic"])
    assert result.exit_code == 2 and "unknown method 'magic'; known methods: exact," in result.output
    result = runner.invoke(app, ["run", "nope", "--quick"])
    assert result.exit_code == 2 and "unknown experiment 'nope'" in result.output
