"""Bad input to every command ends in a one-line error and a non-zero exit, never a traceback or a stray folder."""

import json
import os

import pytest
from typer.testing import CliRunner

from blackgrad.cli import app

runner = CliRunner()


def _refused(args, message, code=2):
    """Run the command; it must exit with ``code`` and ``message`` on the line that starts with 'error'."""
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and message in errors[0], result.output
    return result


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_run_refuses_fewer_than_one_thread(threads, tmp_path):
    _refused(["run", "losses", "--quick", "--threads", threads, "--out", str(tmp_path / "x")],
             "Invalid value for '--threads': Input should be greater than or equal to 1")
    assert not (tmp_path / "x").exists()


def test_run_refuses_a_thread_count_that_is_not_a_number(tmp_path):
    _refused(["run", "losses", "--threads", "two", "--out", str(tmp_path / "x")], "Invalid value for '--threads'")
    assert not (tmp_path / "x").exists()


def test_run_refuses_an_unknown_experiment_before_making_its_folder(tmp_path):
    _refused(["run", "nope", "--out", str(tmp_path / "x")], "unknown experiment 'nope'; known experiments:")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", [["demo", "--quick"], ["bench", "--quick"], ["run", "losses", "--quick"]])
def test_an_out_that_cannot_be_written_is_refused(command, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # (a read-only folder would not stop root, who runs CI: a file in the way stops everyone)
    _refused([*command, "--out", str(blocker)], f"--out {blocker} is a file, not a folder")
    _refused([*command, "--out", str(blocker / "inside")], f"cannot write into --out {blocker / 'inside'}: Not a directory")
    assert blocker.read_text() == ""


def test_demo_refuses_a_negative_seed(tmp_path):
    _refused(["demo", "--quick", "--seed", "-1", "--out", str(tmp_path / "x")], "Invalid value for '--seed'")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--methods", "exact,,spsa-8"], "--methods 'exact,,spsa-8' holds an empty name"),
        (["--tasks", ""], "--tasks '' holds an empty name"),
        (["--methods", "magic"], "unknown method 'magic'; known methods: exact,"),
        (["--tasks", "mars"], "unknown task 'mars'; known tasks: digits-shg,"),
        (["--section", "all"], "unknown section 'all'; known sections: main, defaults"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--jobs", "-1"], "--jobs must be at least 1"),
    ],
)
def test_bench_refuses_bad_options_before_making_a_folder(options, message, tmp_path):
    _refused(["bench", "--quick", *options, "--out", str(tmp_path / "x")], message)
    assert not (tmp_path / "x").exists()


def test_bench_names_may_have_spaces_after_commas(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--tasks", "moons-shg", "--methods", "readout-only, readout-only", "--jobs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 1  # one run, named twice


def test_report_on_a_missing_folder_is_refused_and_creates_nothing(tmp_path):
    missing = tmp_path / "missing" / "runs"
    _refused(["report", str(missing)], f"no folder {missing}")
    assert not (tmp_path / "missing").exists()


def test_report_on_a_file_or_a_folder_of_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _refused(["report", str(tmp_path / "notes.txt")], "is a file")
    _refused(["report", str(tmp_path)], "holds neither benchmark records (records.jsonl) nor experiment results")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_report_rebuilds_a_benchmark_folder_from_its_records(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--tasks", "moons-shg", "--methods", "exact,readout-only", "--jobs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "results.md").read_text()
    for name in ("results.md", "results.json", "moons-shg.png"):
        (tmp_path / name).unlink()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results.md").read_text() == written
    assert "| exact backprop (the limit) |" in result.output
    assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 2
    assert (tmp_path / "moons-shg.png").stat().st_size > 0


def test_report_and_bench_refuse_a_damaged_record_file_in_one_line(tmp_path):
    (tmp_path / "records.jsonl").write_text("{broken\n")
    _refused(["report", str(tmp_path)], "records.jsonl, line 1, is not a JSON record")
    _refused(["bench", "--quick", "--tasks", "moons-shg", "--methods", "exact", "--out", str(tmp_path)],
             "records.jsonl, line 1, is not a JSON record")
    assert (tmp_path / "records.jsonl").read_text() == "{broken\n"


def test_a_cut_short_record_is_a_one_line_warning(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"task": "moons-shg", "meth')
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "warning: " in result.output and "the last line (27 bytes) was cut short" in result.output
    assert "holds no finished run" in result.output
