"""Every device evaluation recorded to HDF5: what, how it survives a kill, how it is read, summarised and fitted from."""

import copy
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("h5py")

import blackgrad as bg
from blackgrad.cli import app
from blackgrad.estimators import SPSA, DigitalTwin, FiniteDifference, LearnedJacobian
from blackgrad.recording import KINDS, Recorder, Recording, RecordingError


def device(x, theta):
    return torch.sin(x * theta[0]) + theta[1]


def test_every_evaluation_is_recorded_with_its_kind_inputs_and_outputs(tmp_path):
    path = tmp_path / "run.h5"
    box = bg.BlackBox(device, SPSA(directions=2, seed=0), params=torch.tensor([1.5, 0.25]), record=path, max_batch=16)
    x = torch.randn(20, 3, requires_grad=True)
    box(x).sum().backward()
    box.recorder.close()
    with Recording(path) as recording:
        summary = recording.summary()
        (only,) = summary["boxes"]
        assert only["name"] == "device" and only["in_shape"] == [3] and only["n_params"] == 2 and only["out_shape"] == [3]
        # the recording holds exactly what the ledger counted, kind by kind, call by call
        assert {k: only["kinds"][k]["samples"] for k in KINDS} == {k: getattr(box.calls, k) for k in KINDS}
        assert summary["calls"] == box.calls.device_calls and summary["samples"] == box.calls.total
        assert list(recording.calls["call"]) == list(range(summary["calls"]))
        assert list(recording.calls["device_call"]) == list(range(1, box.calls.device_calls + 1))
        assert (recording.calls["samples"] <= 16).all()  # one row per device call, as max_batch split them
        # inputs are α = (x, θ) as sent, outputs as returned (float64 holds float32 exactly)
        alpha, y = recording.rows(kinds=("forward",))
        assert torch.equal(alpha, torch.cat([x.detach(), torch.tensor([[1.5, 0.25]]).expand(20, 2)], 1).double())
        assert torch.equal(y, device(x.detach(), torch.tensor([1.5, 0.25])).double())
        alpha, y = recording.rows()
        assert alpha.shape == (box.calls.total, 5)
        # every probe row too, with the θ its call was sent (probes move θ as well)
        assert torch.allclose(y, torch.sin(alpha[:, :3] * alpha[:, 3:4]) + alpha[:, 4:5], atol=1e-6)
        assert alpha[:, 3:].unique(dim=0).shape[0] > 1
        times = recording.calls["time"]
        assert (times[1:] >= times[:-1]).all() and times[0] > time.time() - 600


def test_complex_evaluations_come_back_as_they_were(tmp_path):
    from blackgrad.estimators import Exact

    box = bg.BlackBox(lambda x: x * x, Exact(), record=tmp_path / "c.h5", calibrate=False)
    x = torch.randn(3, 2, dtype=torch.complex64)
    y = box(x)
    box.recorder.close()
    with Recording(tmp_path / "c.h5") as recording:
        alpha, out = recording.rows()
    assert torch.equal(alpha, x.to(torch.complex128)) and torch.equal(out, y.to(torch.complex128))


def test_one_recorder_keeps_several_boxes_apart(tmp_path):
    with Recorder(tmp_path / "two.h5") as recorder:
        a = bg.BlackBox(torch.sin, FiniteDifference(), record=recorder, name="a", calibrate=False)
        b = bg.BlackBox(lambda x: x.sum(1, keepdim=True), FiniteDifference(), record=recorder, name="b", calibrate=False)
        a(torch.randn(4, 2))
        b(torch.randn(3, 5))
        a(torch.randn(2, 2))
    with Recording(tmp_path / "two.h5") as recording:
        assert [box["name"] for box in recording.boxes] == ["a", "b"]
        assert recording.rows(box="a")[0].shape == (6, 2) and recording.rows(box="b")[1].shape == (3, 1)
        with pytest.raises(RecordingError, match=r"holds 2 boxes; say which with box= \(its boxes: 0: 'a', 1: 'b'\)"):
            recording.rows()
        with pytest.raises(RecordingError, match="holds no probe evaluation of box 0"):
            recording.rows(box=0, kinds=("probe",))


WRITER = textwrap.dedent(
    """
    import sys, torch, blackgrad as bg
    from blackgrad.estimators import SPSA
    box = bg.BlackBox(lambda x: torch.sin(3 * x), SPSA(directions=2, seed=0), record=sys.argv[1], calibrate=False)
    x = torch.randn(64, 6, requires_grad=True, generator=torch.Generator().manual_seed(0))
    while True:
        box(x).sum().backward()
        print(box.calls.device_calls, flush=True)
    """
)


def test_a_writer_killed_at_any_moment_leaves_a_readable_file_lacking_at_most_the_call_in_flight(tmp_path):
    path = tmp_path / "killed.h5"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reported = 0
        deadline = time.monotonic() + 60
        while reported < 30:  # a few steps in, and at a moment the test does not choose
            line = process.stdout.readline()
            assert line, process.stderr.read()
            reported = int(line)
            assert time.monotonic() < deadline
        with pytest.raises(RecordingError, match="is being recorded into by another process"):
            Recorder(path)  # a second writer would write where nobody reads
        with Recording(path) as live:  # a live recording can be read
            assert len(live) >= reported
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with Recording(path) as recording:
        calls = recording.calls
        # every completed call is there, in order; the one in flight, at most, is not
        assert len(calls) >= reported and list(calls["device_call"]) == list(range(1, len(calls) + 1))
        alpha, y = recording.rows()
        assert torch.equal(y, torch.sin(3 * alpha.float()).double())  # no call torn: each row as the device returned it
        assert "calls" in recording.summary()
    # the recording continues where it stopped
    box = bg.BlackBox(lambda x: torch.sin(3 * x), FiniteDifference(), record=path, calibrate=False)
    box(torch.zeros(5, 6))
    box.recorder.close()
    with Recording(path) as recording:
        assert len(recording.boxes) == 1 and len(recording) == len(calls) + 1 and not recording.cut_short
        assert torch.equal(recording.rows()[0][-5:], torch.zeros(5, 6, dtype=torch.float64))


def test_a_twin_fits_from_a_recording_without_evaluating_anything(tmp_path):
    path = tmp_path / "fit.h5"
    box = bg.BlackBox(torch.sin, FiniteDifference(), record=path, calibrate=False)
    with torch.no_grad():
        box(torch.rand(512, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    box.recorder.close()
    twin = DigitalTwin(seed=0)
    losses = twin.fit(path, epochs=30)
    assert losses[-1] < 0.1 * losses[0]
    probe = torch.rand(64, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert (twin.model(probe) - torch.sin(probe)).abs().max() < 0.1
    with Recording(path) as recording, pytest.raises(TypeError, match="not both a recording and alpha"):
        DigitalTwin().fit(recording, probe)
    # the learned Jacobian's twin prior pre-fits the same way, and the box then spends only its own probes
    learned = LearnedJacobian(seed=0)
    assert learned.prior.fit(path, epochs=5)[-1] < 0.5
    fitted = bg.BlackBox(torch.sin, learned, calibrate=False)
    fitted(probe.requires_grad_()).sum().backward()
    assert fitted.calls.forward == 64 and fitted.calls.probe == 64


def test_boxes_given_one_path_share_its_recorder_and_a_second_recorder_is_refused(tmp_path):
    path = tmp_path / "one.h5"
    a = bg.BlackBox(torch.sin, FiniteDifference(), record=path, name="a", calibrate=False)
    b = bg.BlackBox(torch.cos, FiniteDifference(), record=str(path), name="b", calibrate=False)
    assert a.recorder is b.recorder
    with pytest.raises(RecordingError, match="is being recorded into already by Recorder.* in this process"):
        Recorder(path)
    a(torch.zeros(2, 3))
    b(torch.zeros(4, 3))
    with Recording(path) as recording:  # read while it is being written
        assert [box["name"] for box in recording.boxes] == ["a", "b"] and recording.summary()["samples"] == 6
    a.recorder.close()
    with Recorder(path) as again:  # closed: the file may be continued
        assert "calls=2, boxes=2" in repr(again)


def test_a_recorder_is_shared_by_copies_and_refuses_pickling(tmp_path):
    model = torch.nn.Sequential(bg.BlackBox(torch.sin, FiniteDifference(), record=tmp_path / "r.h5", calibrate=False))
    twin = copy.deepcopy(model)
    assert twin[0].recorder is model[0].recorder
    with pytest.raises(TypeError, match="a Recorder cannot be pickled: it holds .* open for writing"):
        pickle.dumps(model[0].recorder)
    with pytest.raises(TypeError, match="record must be a path or a blackgrad.recording.Recorder, got int"):
        bg.BlackBox(torch.sin, record=3)
    model[0].recorder.close()


def test_what_is_not_a_recording_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["x"] = [1, 2]
    with pytest.raises(RecordingError, match="is an HDF5 file but not a blackgrad recording"):
        Recording(tmp_path / "other.h5")
    with pytest.raises(RecordingError, match="is an HDF5 file but not a blackgrad recording"):
        Recorder(tmp_path / "other.h5")  # and it is left alone
    assert list(h5py.File(tmp_path / "other.h5", "r")) == ["x"]
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(RecordingError, match="is not an HDF5 file, or is damaged"):
        Recording(tmp_path / "text.h5")


def test_record_info_summarises_a_recording_and_refuses_other_files(tmp_path):
    path = tmp_path / "info.h5"
    box = bg.BlackBox(torch.sin, SPSA(directions=1, seed=0), record=path, name="shg")
    box(torch.randn(10, 4, requires_grad=True)).sum().backward()
    box.recorder.close()
    runner = CliRunner()
    result = runner.invoke(app, ["record", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: a blackgrad recording (format 1), {box.calls.device_calls} calls, {box.calls.total} samples" in result.output
    assert "box 0 'shg': inputs (4,) + 0 parameters (α of 4), outputs (4,)" in result.output
    assert f"forward: 10 samples in 1 calls" in result.output
    assert f"probe: {box.calls.probe} samples" in result.output and f"calibration: {box.calls.calibration} samples" in result.output
    result = runner.invoke(app, ["record", "info", str(tmp_path / "missing.h5")])
    assert result.exit_code == 2 and result.output.strip() == f"error: no recording {tmp_path / 'missing.h5'}: no such file"
    assert not (tmp_path / "missing.h5").exists()
    result = runner.invoke(app, ["record", "info", str(tmp_path)])
    assert result.exit_code == 2 and f"error: {tmp_path} is not a file; a recording is the HDF5 file" in result.output
