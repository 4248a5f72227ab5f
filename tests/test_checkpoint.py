"""Checkpoint: a run killed at a random step and resumed ends bit for bit like an uninterrupted one."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import blackgrad as bg
from blackgrad.devices import Drifting, Faulty, Linear, Noisy, Quantized
from blackgrad.estimators import SPSA, FiniteDifference

pytest.importorskip("h5py")  # the run records every evaluation too
from blackgrad.recording import Recording  # noqa: E402

import checkpoint_run  # noqa: E402  (tests/ is on the path, as for pool_devices)

RUN = Path(checkpoint_run.__file__)
STEPS, EVERY = 60, 7  # EVERY does not divide the kill step, mostly: steps since the last save are redone


def _start(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(RUN), str(folder), str(STEPS), str(EVERY)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _kill_after(process: subprocess.Popen, step: int) -> int:
    """SIGKILL the run once it reports step ``step`` (bounded wait); returns the last step it reported."""
    deadline, last = time.monotonic() + 60, -1
    try:
        while last < step:
            assert time.monotonic() < deadline, "the run reported no progress within 60 s"
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                line = process.stdout.readline()
                assert line, f"the run ended before step {step}: {process.stderr.read()}"
                last = int(line.split()[1])
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return last


def test_a_run_killed_at_a_random_step_resumes_bit_for_bit(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    killed = _start(broken)
    checkpoint_run.main(whole, STEPS, EVERY)  # meanwhile, here: the same run, uninterrupted
    kill_step = random.Random(10).randrange(2 * EVERY, STEPS - 3 * EVERY)
    last = _kill_after(killed, kill_step)
    assert last < STEPS - 1, "the kill came too late to interrupt anything"
    assert not (broken / "final.pt").exists() and (broken / "run.pt").exists()
    checkpoint_run.main(broken, STEPS, EVERY)  # resumed here, from what the killed process saved in broken/run.pt

    a, b = (torch.load(folder / "final.pt", weights_only=True) for folder in (whole, broken))
    assert len(a["parameters"]) == len(b["parameters"]) == 5
    for p, q in zip(a["parameters"], b["parameters"]):
        assert torch.equal(p, q)
    # The ledger restored is the ledger at the checkpoint: the evaluations the killed run made
    # after its last save were made again by the resumed run and counted then, once.  So the
    # final ledger is the uninterrupted run's, evaluation for evaluation (only the seconds differ),
    # and equals the device's own count of the calls it answered, restored with it.
    ledger_a, ledger_b = ({k: v for k, v in r["ledger"].items() if k != "seconds"} for r in (a, b))
    assert ledger_a == ledger_b
    assert ledger_a["forward"] == 8 * STEPS and ledger_a["probe"] == 2 * 2 * 8 * STEPS and ledger_a["failed"] == 0
    assert a["device_calls"] == b["device_calls"] == ledger_a["device_calls"]
    # The recording keeps what the killed run evaluated after its last save (it was real and paid
    # for): those calls, checkpoint.abandoned, aside, it holds exactly the uninterrupted run's calls.
    start, stop = b["abandoned"]
    # five calls a step (the forward batch; a probe call per θ: 2 directions, 2 signs), fewer than EVERY steps
    assert 0 <= stop - start < 5 * EVERY
    with Recording(whole / "run.h5") as r, Recording(broken / "run.h5") as s:
        assert len(r) == ledger_a["device_calls"] and len(s) == len(r) + (stop - start)
        x, y = r.rows()
        assert x.shape[0] == ledger_a["total"]
        kept_calls = torch.ones(len(s), dtype=torch.bool)
        kept_calls[start:stop] = False
        kept = kept_calls.repeat_interleave(torch.from_numpy(s.calls["samples"].astype("int64")))
        sx, sy = s.rows()
        assert torch.equal(sx[kept], x) and torch.equal(sy[kept], y)


# ------------------------------------------------------------------ in process
def _run(every: int = 3, estimator=None, device=None):
    torch.manual_seed(0)
    device = device or Noisy(Drifting(Linear(3, 2, seed=1), rate=1e-2, seed=2), std=0.05, seed=3)
    box = bg.BlackBox(device, estimator or SPSA(directions=2, seed=4), params=device.default_params())
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), box)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), device


def _train(model, optimizer, steps, start=0, checkpoint=None):
    for step in range(start, steps):
        loss = model(torch.randn(4, 3)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if checkpoint is not None:
            checkpoint.step(step)


def _everything(model, optimizer, device):
    """Every state the checkpoint covers, as values to compare."""
    box = model[1]
    return (
        [p.detach().clone() for p in model.parameters()],
        box.estimator.state_dict(),
        {k: v for k, v in box.calls.as_dict().items() if k != "seconds"},  # wall time differs, of course
        device.state_dict(),
        torch.get_rng_state(),
        optimizer.state_dict()["state"],
    )


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("estimator", [lambda: SPSA(directions=2, seed=4), lambda: bg.estimators.DigitalTwin(seed=5)])
def test_restore_in_a_new_process_goes_on_exactly(tmp_path, estimator):
    model, optimizer, device = _run(estimator=estimator())
    _train(model, optimizer, 12)
    reference = _everything(model, optimizer, device)

    model, optimizer, device = _run(estimator=estimator())
    checkpoint = bg.Checkpoint(tmp_path / "c.pt", model, optimizer, every=4)
    _train(model, optimizer, 10, checkpoint=checkpoint)  # "killed" after step 9; saved after step 7
    assert checkpoint.saves == 2
    model, optimizer, device = _run(estimator=estimator())  # a new process builds everything again
    torch.manual_seed(123)  # and its generator is anywhere
    checkpoint = bg.Checkpoint(tmp_path / "c.pt", model, optimizer, every=4)
    start = checkpoint.restore()
    assert start == 8
    _train(model, optimizer, 12, start=start, checkpoint=checkpoint)
    assert _same(_everything(model, optimizer, device), reference)


def test_no_checkpoint_yet_starts_at_zero_and_changes_nothing(tmp_path):
    model, optimizer, device = _run()
    before = _everything(model, optimizer, device)
    assert bg.Checkpoint(tmp_path / "none.pt", model, optimizer).restore() == 0
    assert _same(_everything(model, optimizer, device), before)


def test_extra_is_restored_into_the_same_dict(tmp_path):
    model, optimizer, _ = _run()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    progress = {"epoch": 3, "seen": [1, 2], "scheduler": scheduler, "shuffle": torch.Generator().manual_seed(7)}
    checkpoint = bg.Checkpoint(tmp_path / "c.pt", model, optimizer, every=1, extra=progress)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    draw = torch.rand(3, generator=progress["shuffle"])
    checkpoint.save(5)
    progress.update(epoch=9, seen=[])
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    torch.rand(5, generator=progress["shuffle"])
    assert checkpoint.restore() == 5
    assert progress["epoch"] == 3 and progress["seen"] == [1, 2] and progress["scheduler"] is scheduler
    assert scheduler.last_epoch == 3
    assert not torch.equal(torch.rand(3, generator=progress["shuffle"]), draw)  # it goes on from after the draw
    progress["shuffle"].manual_seed(7)
    torch.rand(3, generator=progress["shuffle"])
    again = torch.rand(3, generator=progress["shuffle"])
    assert checkpoint.restore() == 5 and torch.equal(torch.rand(3, generator=progress["shuffle"]), again)


def test_a_checkpoint_of_another_layout_is_refused_and_nothing_changes(tmp_path):
    model, optimizer, device = _run()
    _train(model, optimizer, 3)
    bg.Checkpoint(tmp_path / "c.pt", model, optimizer).save(3)

    torch.manual_seed(0)
    other_device = Noisy(Drifting(Linear(3, 2, seed=1), rate=1e-2, seed=2), std=0.05, seed=3)
    wider = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), bg.BlackBox(other_device, SPSA(seed=4), params=other_device.default_params()))
    other_optimizer = torch.optim.SGD(wider.parameters(), lr=0.1)
    with pytest.raises(bg.CheckpointError, match=r"another layout than this run's, so nothing was restored: this model has 2\._extra_state, 2\.params which the checkpoint lacks; the checkpoint has 1\._extra_state, 1\.params which this model lacks; the checkpoint holds the devices \['box:1'\], this run has \['box:2'\]"):
        bg.Checkpoint(tmp_path / "c.pt", wider, other_optimizer).restore()

    fresh, fresh_optimizer, fresh_device = _run(estimator=FiniteDifference())
    before = _everything(fresh, fresh_optimizer, fresh_device)
    with pytest.raises(bg.CheckpointError, match=r"black box '1': this state was saved by a SPSA; it cannot be loaded into a FiniteDifference"):
        bg.Checkpoint(tmp_path / "c.pt", fresh, fresh_optimizer).restore()
    with pytest.raises(bg.CheckpointError, match=r"optimiser is SGD, this run's Adam"):
        bg.Checkpoint(tmp_path / "c.pt", fresh, torch.optim.Adam(fresh.parameters())).restore()
    quantized = Quantized(Linear(3, 2, seed=1), bits=4)
    plain_model, plain_optimizer, _ = _run(device=quantized)
    with pytest.raises(bg.CheckpointError, match=r"device box:1: this state was saved by a Noisy device; it cannot be loaded into a Quantized"):
        bg.Checkpoint(tmp_path / "c.pt", plain_model, plain_optimizer).restore()
    assert _same(_everything(fresh, fresh_optimizer, fresh_device), before)


class _Stubborn:
    """A device of one's own with the checkpoint protocol, whose state will not load."""

    name = "stubborn"

    def __call__(self, x, theta):
        return x[:, :2] * theta

    def state_dict(self):
        return {"temperature": 20.0}

    def load_state_dict(self, state):
        raise ValueError("the cryostat is warming up")


def test_a_restore_that_fails_half_way_is_rolled_back(tmp_path):
    torch.manual_seed(0)
    box = bg.BlackBox(_Stubborn(), SPSA(seed=4), params=torch.ones(2))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), box)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = bg.Checkpoint(tmp_path / "c.pt", model, optimizer)
    checkpoint.save(1)
    _train(model, optimizer, 2)  # the model, ledger, estimator and optimiser move on from the save
    before = ([p.detach().clone() for p in model.parameters()], box.calls.as_dict(), box.estimator.generator.get_state(), torch.get_rng_state())
    with pytest.raises(bg.CheckpointError, match=r"does not fit this run \(ValueError: the cryostat is warming up\); nothing was restored"):
        checkpoint.restore()
    after = ([p.detach().clone() for p in model.parameters()], box.calls.as_dict(), box.estimator.generator.get_state(), torch.get_rng_state())
    assert _same(after, before)


def test_a_save_cut_short_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, _ = _run()
    checkpoint = bg.Checkpoint(tmp_path / "c.pt", model, optimizer, every=2)
    _train(model, optimizer, 2, checkpoint=checkpoint)
    saved = (tmp_path / "c.pt").read_bytes()

    def torn(state, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        _train(model, optimizer, 4, start=2, checkpoint=checkpoint)
    assert (tmp_path / "c.pt").read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left behind


def test_bad_arguments_are_refused(tmp_path):
    model, optimizer, _ = _run()
    with pytest.raises(ValueError, match="every must be a positive int"):
        bg.Checkpoint(tmp_path / "c.pt", model, optimizer, every=0)
    with pytest.raises(TypeError, match="extra must be a dict"):
        bg.Checkpoint(tmp_path / "c.pt", model, optimizer, extra=[1])
    with pytest.raises(TypeError, match=r"devices\['lamp'\] has no state_dict"):
        bg.Checkpoint(tmp_path / "c.pt", model, optimizer, devices={"lamp": object()})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(bg.CheckpointError, match="cannot read the checkpoint"):
        bg.Checkpoint(tmp_path / "junk.pt", model, optimizer).restore()


# --------------------------------------------------------------- device state
def test_devices_save_and_restore_their_state():
    def make():
        return Faulty(Noisy(Drifting(Quantized(Linear(3, 2, seed=1), bits=6), rate=0.01, seed=2), std=0.1, seed=3), nan_rate=0.3, seed=4)

    device, x = make(), torch.randn(5, 3)
    for _ in range(4):
        device(x)
    state = device.state_dict()
    ahead = [device(x) for _ in range(3)]
    copy = make()
    copy.load_state_dict(state)
    again = [copy(x) for _ in range(3)]
    assert all(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True) for a, b in zip(ahead, again))  # the same NaNs too
    assert copy.calls == device.calls == 7 and copy.inner.inner.calls == device.inner.inner.calls
    fresh = make()
    with pytest.raises(ValueError, match="saved by a Noisy device; it cannot be loaded into a Drifting"):
        fresh.load_state_dict({**state, "inner": {**state["inner"], "inner": {**state["inner"]["inner"], "kind": "Noisy"}}})
    assert fresh.calls == 0 and fresh.inner.inner.calls == 0  # checked whole before anything changed


def test_faulty_hangs_and_cut_readouts_are_retried_and_counted_once():
    clean = Linear(3, 2, seed=1)
    faulty = Faulty(Linear(3, 2, seed=1), error_rate=0.1, nan_rate=0.1, seed=0, hang_rate=0.1, hang=0.2, shape_rate=0.1)
    box = bg.BlackBox(faulty, FiniteDifference(step=1e-3), params=clean.default_params(), timeout=0.05,
                      retries=bg.RetryPolicy(retries=8, retry_malformed=True), calibrate=False)
    reference = bg.BlackBox(clean, FiniteDifference(step=1e-3), params=clean.default_params(), calibrate=False)
    for _ in range(10):
        x = torch.randn(4, 3, requires_grad=True)
        box(x).sum().backward()
        y = x.detach().requires_grad_()
        reference(y).sum().backward()
        assert torch.equal(x.grad, y.grad)
    assert torch.equal(box.params.grad, reference.params.grad)
    assert faulty.hangs > 0 and faulty.bad_shapes > 0 and faulty.errors > 0 and faulty.nan_calls > 0
    # every sample handed to the device is in the ledger once: failed if its call was given a fault
    assert box.calls.total == faulty.samples and box.calls.failed == faulty.faulty_samples
    assert box.calls.device_calls == faulty.calls
    assert box.calls.total - box.calls.failed == reference.calls.total


def test_a_cut_readout_is_not_retried_unless_asked():
    faulty = Faulty(Linear(3, 2, seed=1), shape_rate=1.0)
    box = bg.BlackBox(faulty, FiniteDifference(), retries=3, calibrate=False, name="adc")
    with pytest.raises(bg.DeviceOutputError, match=r"'adc' returned shape \(3, 2\) for a forward batch of 4 samples"):
        box(torch.randn(4, 3))
    assert faulty.calls == 1 and box.calls.failed == 4
    box = bg.BlackBox(faulty, FiniteDifference(), retries=bg.RetryPolicy(retries=3, retry_malformed=True), calibrate=False, name="adc")
    with pytest.raises(bg.DeviceOutputError, match=r"returned shape \(3, 2\).*\(attempt 4 of 4\)"):
        box(torch.randn(4, 3))
    assert faulty.calls == 5 and box.calls.failed == 16
