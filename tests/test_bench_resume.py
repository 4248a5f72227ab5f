"""A benchmark folder resumes: recorded runs are skipped, cut-short and interrupted ones redone, tables as if uninterrupted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blackgrad.bench import rebuild, run_benchmark
from blackgrad.bench.records import RECORDS, Appender, RecordsError, RecordsWarning, read

#: a tiny benchmark: four quick runs of about half a second in all on one core
TINY = dict(quick=True, task_names=["moons-shg"], method_names=["exact", "readout-only"], seeds=(0, 1), progress=False)
RUNS = 4


def _measured(summary):
    """What a run measured: the tables and records without the wall times and how they were run."""
    tables = {task: [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows] for task, rows in summary["tables"].items()}
    runs = [{k: v for k, v in r.items() if k not in ("wall_seconds", "environment")} for r in summary["records"]]
    return tables, runs


def _lines(folder):
    return (folder / RECORDS).read_text().splitlines()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    return folder, run_benchmark(folder, **TINY)


def test_a_complete_folder_runs_nothing_again_and_reports_the_same(uninterrupted, tmp_path):
    folder, summary = uninterrupted
    shutil.copy(folder / RECORDS, tmp_path / RECORDS)
    before = (tmp_path / RECORDS).read_bytes()
    again = run_benchmark(tmp_path, **{**TINY, "jobs": 2})  # no run left: no worker is started
    assert (tmp_path / RECORDS).read_bytes() == before  # nothing ran, nothing appended
    assert again["records"] == summary["records"] and again["markdown"] == summary["markdown"]
    # the report, from the records alone, writes the very files the benchmark wrote
    (tmp_path / "results.md").unlink()
    rebuilt = rebuild(tmp_path)
    assert rebuilt["markdown"] == summary["markdown"]
    assert (tmp_path / "results.md").read_text() == (folder / "results.md").read_text()
    assert (tmp_path / "moons-shg.png").stat().st_size > 0


def test_missing_and_cut_short_records_are_run_again_once(uninterrupted, tmp_path):
    folder, summary = uninterrupted
    lines = _lines(folder)
    # the second record deleted, the last one cut short in the middle of its write
    (tmp_path / RECORDS).write_text(lines[0] + "\n" + lines[2] + "\n" + lines[3][:40])
    with pytest.warns(RecordsWarning, match=r"the last line \(40 bytes\) was cut short"):
        assert [r["seed"] for r in read(tmp_path / RECORDS)] == [0, 0]
    with pytest.warns(RecordsWarning, match="cut short"):
        resumed = run_benchmark(tmp_path, **TINY)
    recorded = [json.loads(line) for line in _lines(tmp_path)]  # every line whole
    keys = [(r["method"], r["seed"]) for r in recorded]
    assert len(keys) == RUNS and set(keys) == {(m, s) for m in ("exact", "readout-only") for s in (0, 1)}
    assert _measured(resumed) == _measured(summary)


def test_an_interrupted_benchmark_keeps_whole_records_and_resumes_to_the_same_tables(uninterrupted, tmp_path, monkeypatch):
    import blackgrad.bench as bench

    folder, summary = uninterrupted
    train = bench._run_planned
    calls = []

    def interrupted_in_the_third_run(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third run trains
        return train(*args)

    monkeypatch.setattr(bench, "_run_planned", interrupted_in_the_third_run)
    with pytest.raises(bench.BenchmarkInterrupted, match=f"interrupted: 2 of the {RUNS} planned runs are recorded in"):
        run_benchmark(tmp_path, **TINY)
    assert len(_lines(tmp_path)) == 2 and not (tmp_path / "results.md").exists()
    resumed = run_benchmark(tmp_path, **TINY)
    assert len(calls) == RUNS + 1  # the two recorded runs were not trained again
    assert len(_lines(tmp_path)) == RUNS
    assert _measured(resumed) == _measured(summary)


def test_ctrl_c_stops_the_command_with_whole_records_and_a_way_to_resume(uninterrupted, tmp_path):
    folder, summary = uninterrupted
    # exact backprop first, then SPSA (seconds): the interrupt falls inside SPSA's run
    command = [sys.executable, "-m", "blackgrad.cli", "bench", "--quick", "--tasks", "moons-shg",
               "--methods", "exact,spsa-8", "--seeds", "1", "--jobs", "1", "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ((tmp_path / RECORDS).exists() and (tmp_path / RECORDS).read_text().count("\n") >= 1):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no run was recorded within a minute"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert f"error: interrupted: 1 of the 2 planned runs are recorded in {tmp_path / RECORDS}; run the same command again" in err
    (recorded,) = [json.loads(line) for line in _lines(tmp_path)]
    reference = next(r for r in summary["records"] if (r["method"], r["seed"]) == ("exact", 0))
    assert _measured({"tables": {}, "records": [recorded]}) == _measured({"tables": {}, "records": [reference]})
    resumed = run_benchmark(tmp_path, **{**TINY, "method_names": ["exact", "spsa-8"], "seeds": (0,)})
    assert [(r["method"], r["seed"]) for r in map(json.loads, _lines(tmp_path))] == [("exact", 0), ("spsa-8", 0)]
    assert {row["method"] for row in resumed["tables"]["moons-shg"]} == {"exact", "spsa-8"}


def test_records_of_another_configuration_are_refused_before_anything_runs(uninterrupted, tmp_path):
    folder, _ = uninterrupted
    shutil.copy(folder / RECORDS, tmp_path / RECORDS)
    before = (tmp_path / RECORDS).read_bytes()
    # the full benchmark trains 20 epochs on more data: its rows must not be averaged with quick ones
    with pytest.raises(RecordsError, match=r"another configuration \(moons-shg / exact / seed 0: epochs 1 there, 20 now, quick True there"):
        run_benchmark(tmp_path, **{**TINY, "quick": False, "method_names": ["exact"], "seeds": (5,)})
    assert (tmp_path / RECORDS).read_bytes() == before and not (tmp_path / "results.md").exists()


def test_records_that_cannot_be_resumed_are_refused(uninterrupted, tmp_path):
    folder, _ = uninterrupted
    first = json.loads(_lines(folder)[0])
    path = tmp_path / RECORDS
    old = {k: v for k, v in first.items() if k != "config"}  # as written before runs had a configuration
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(RecordsError, match="records without their configuration .* delete .* to start again"):
        run_benchmark(tmp_path, **TINY)
    path.write_text(json.dumps(first) + "\n" + json.dumps(first) + "\n")
    with pytest.raises(RecordsError, match="two records of moons-shg / exact / seed 0"):
        run_benchmark(tmp_path, **TINY)
    path.write_text(json.dumps(first) + "\n{not json\n" + json.dumps(first) + "\n")
    with pytest.raises(RecordsError, match="line 2, is not a JSON record"):
        read(path)
    path.write_text(json.dumps({**first, "method": "magic"}) + "\n")
    with pytest.raises(RecordsError, match="method 'magic', unknown here; known methods: exact,"):
        rebuild(tmp_path)


def test_a_run_named_twice_is_run_and_recorded_once(tmp_path):
    summary = run_benchmark(tmp_path, **{**TINY, "method_names": ["readout-only", "readout-only"], "seeds": (0, 0)})
    assert len(summary["records"]) == 1 and len(_lines(tmp_path)) == 1


def test_two_benchmarks_cannot_write_one_folder_at_once(tmp_path):
    with Appender(tmp_path / RECORDS):
        with pytest.raises(RecordsError, match="is being written by another benchmark"):
            run_benchmark(tmp_path, **TINY)
    with Appender(tmp_path / RECORDS):  # released on close
        pass


def test_rebuild_needs_records(tmp_path):
    with pytest.raises(RecordsError, match="holds no records.jsonl: it is not a benchmark folder"):
        rebuild(tmp_path)
    (tmp_path / RECORDS).write_text('{"task": "moons-shg", "method": "exa')
    with pytest.warns(RecordsWarning), pytest.raises(RecordsError, match="holds no finished run"):
        rebuild(tmp_path)


def test_every_record_and_the_tables_header_name_the_processor(uninterrupted):
    # the same code and seed can train to another accuracy on another processor: a record says where it ran
    from blackgrad.bench import cpu_model

    folder, summary = uninterrupted
    cpu = cpu_model()
    assert isinstance(cpu, str) and cpu
    assert {r["environment"]["cpu"] for r in summary["records"]} == {cpu}
    assert f"({cpu})" in (folder / "results.md").read_text().splitlines()[0]
