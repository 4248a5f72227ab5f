"""A fault soak: a long training run through a faulty device, killed half-way and resumed, against a fault-free run.

Two training runs of the same small model, side by side, each in its own
process: ``Linear(2, 2) → BlackBox → Linear(2, 1)``, SPSA(directions=1)
gradients, batches of 4 from torch's global generator, plain SGD.

* the *reference*: the device answers every call (a ``Faulty`` wrapper with
  every rate 0, so that it counts its calls and samples all the same);
* the *soak*: ``Faulty`` injects ``--rate`` of each fault kind into the
  device calls — a raised error, a NaN reading, an output cut one sample
  short (the wrong shape) and a hang past the box's time-out — and the box
  retries every one of them (``RetryPolicy(retries=6, retry_malformed=True,
  timeout=...)``); every evaluation is recorded (``record=``); a
  ``Checkpoint`` is saved every ``--every`` steps; half-way the process is
  killed with SIGKILL and a new one resumes from the checkpoint.

Then it checks, and prints as a table: no step lost (every step's loss was
logged, and the steps the resumed run did again gave the same losses as
before the kill); no evaluation counted twice or not at all (the ledger
against the device's own counts of calls and samples, and against the
recording's rows, the calls the killed run made after its last checkpoint
set aside); the recording complete; and the final parameters and every
step's loss equal to the reference's, bit for bit.  The inner device is
deterministic (``Linear``) because a retried call must read the same value
again for the comparison with the fault-free run to hold; the figure
(``--out``) shows the two loss curves and the kill.

    python benchmarks/soak.py [--steps 100000] [--every 1000] [--rate 0.01] [--timeout 0.05] [--out docs/benchmarks/soak]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import blackgrad as bg
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import blackgrad as bg

from blackgrad.devices import Faulty, Linear
from blackgrad.estimators import SPSA

BATCH = 4
TARGET = torch.tensor([[0.5], [-1.0]])  # a linear map the model can learn: the loss falls to SPSA's noise
PROGRESS = 100  # a child reports every this many steps


# --------------------------------------------------------------------- child
def child(kind: str, folder: Path, steps: int, every: int, rate: float, timeout: float) -> None:
    """One training run (``reference`` or ``soak``); resumes from ``folder/run.pt`` when it is there."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rates = dict(error_rate=rate, nan_rate=rate, hang_rate=rate, shape_rate=rate) if kind == "soak" else {}
    device = Faulty(Linear(2, 2, seed=1), seed=2, hang=2 * timeout, **rates)
    box = bg.BlackBox(
        device,
        SPSA(directions=1, seed=3),
        in_shape=(2,),
        retries=bg.RetryPolicy(retries=6, retry_malformed=True, timeout=timeout),
        record=folder / "run.h5" if kind == "soak" else None,
        name="soaked" if kind == "soak" else "reference",
    )
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), box, torch.nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    checkpoint = bg.Checkpoint(folder / "run.pt", model, optimizer, every=every)
    start = checkpoint.restore()
    began = time.perf_counter()
    with open(folder / "losses.txt", "a") as log:
        for step in range(start, steps):
            x = torch.randn(BATCH, 2)
            loss = (model(x) - x @ TARGET).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            log.write(f"{step} {loss.item().hex()}\n")
            log.flush()  # a kill loses no logged step
            checkpoint.step(step)
            if (step + 1) % PROGRESS == 0:
                print(f"step {step}", flush=True)
    counts = {name: getattr(device, name) for name in Faulty._COUNTERS}
    abandoned = checkpoint.abandoned.get(str(box.recorder.path), range(0)) if box.recorder else range(0)
    torch.save(
        {
            "parameters": [p.detach().clone() for p in model.parameters()],
            "ledger": box.calls.as_dict(),
            "device": counts,
            "abandoned": (abandoned.start, abandoned.stop),
            "start": start,
            "seconds": time.perf_counter() - began,
        },
        folder / "final.pt",
    )


# -------------------------------------------------------------------- parent
def launch(kind: str, folder: Path, args: argparse.Namespace) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--child", kind, "--work", str(folder), "--steps", str(args.steps),
               "--every", str(args.every), "--rate", str(args.rate), "--timeout", str(args.timeout)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_after(process: subprocess.Popen, step: int, limit: float) -> int:
    """SIGKILL ``process`` once it reports ``step`` or later (waiting at most ``limit`` s); the last step it reported."""
    deadline, last = time.monotonic() + limit, -1
    try:
        while last < step:
            if time.monotonic() > deadline:
                raise SystemExit(f"the soak reported no step {step} within {limit:.0f} s")
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                line = process.stdout.readline()
                if not line:
                    raise SystemExit(f"the soak ended before step {step}: {process.stderr.read()}")
                last = int(line.split()[1])
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    return last


def finish(process: subprocess.Popen, what: str, limit: float) -> None:
    try:
        _, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        raise SystemExit(f"the {what} run did not finish within {limit:.0f} s")
    if process.returncode != 0:
        raise SystemExit(f"the {what} run failed:\n{err}")


def read_losses(path: Path) -> list[tuple[int, float]]:
    """The logged (step, loss) pairs in order; a line a kill cut short is left out."""
    pairs = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                pairs.append((int(parts[0]), float.fromhex(parts[1])))
            except ValueError:
                pass
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=1000, help="steps between checkpoints")
    parser.add_argument("--rate", type=float, default=0.01, help="probability of each fault kind per device call")
    parser.add_argument("--timeout", type=float, default=0.05, help="the box's time-out, s (a hang lasts twice as long)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figure and summary.json")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs' files (default: a temporary one)")
    parser.add_argument("--child", choices=("reference", "soak"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.steps, args.every, args.rate, args.timeout)
        return
    if args.steps < 4 * args.every or args.every % (2 * PROGRESS):
        parser.error(f"--steps must be at least 4 × --every, and --every a multiple of {2 * PROGRESS}, so that the kill falls between checkpoints")
    work = args.work or Path(tempfile.mkdtemp(prefix="blackgrad-soak-"))
    load = os.getloadavg()[0]
    began = time.perf_counter()
    reference = launch("reference", work / "reference", args)
    soak = launch("soak", work / "soak", args)
    limit = 6 * 3600
    # half-way, between two checkpoints (the steps since the last one are redone); the process runs
    # on a little after reporting it, before the signal lands
    kill_step = (args.steps // 2 // args.every) * args.every + args.every // 2 - 1
    last = kill_after(soak, kill_step, limit)
    killed_at = time.perf_counter() - began
    resumed = launch("soak", work / "soak", args)
    finish(resumed, "resumed soak", limit)
    finish(reference, "reference", limit)
    wall = time.perf_counter() - began
    report(args, work, last, killed_at, wall, load)


def report(args: argparse.Namespace, work: Path, last: int, killed_at: float, wall: float, load: float) -> None:
    from blackgrad.recording import KINDS, Recording

    ref = torch.load(work / "reference" / "final.pt", weights_only=True)
    soak = torch.load(work / "soak" / "final.pt", weights_only=True)
    ledger, device = soak["ledger"], soak["device"]
    resumed_at = soak["start"]
    steps = args.steps

    # steps: the killed process logged 0 .. (its death), the resumed one resumed_at .. steps-1
    logged = read_losses(work / "soak" / "losses.txt")
    first = {}
    redone_same = redone = 0
    for step, loss in logged:
        if step in first:
            redone += 1
            redone_same += first[step] == loss
        else:
            first[step] = loss
    reference_losses = dict(read_losses(work / "reference" / "losses.txt"))
    lost = sum(1 for step in range(steps) if step not in first)
    losses_equal = all(first.get(step) == reference_losses.get(step) for step in range(steps))
    parameters_equal = all(torch.equal(p, q) for p, q in zip(soak["parameters"], ref["parameters"]))

    faults = device["errors"] + device["hangs"] + device["bad_shapes"] + device["nan_calls"]
    with Recording(work / "soak" / "run.h5") as recording:
        calls = recording.calls
        start, stop = soak["abandoned"]
        keep = torch.ones(len(calls), dtype=torch.bool)
        keep[start:stop] = False
        kept = calls[keep.numpy()]
        recorded = {kind: int(kept["samples"][kept["kind"] == k].sum()) for k, kind in enumerate(KINDS)}
        numbers = kept["device_call"].astype("int64")
        increasing = bool((numbers[1:] > numbers[:-1]).all())
        abandoned_samples = int(calls["samples"][start:stop].sum())
        cut_short = recording.cut_short
    used = sum(recorded.values())
    late_calls = device["calls"] - faults - len(kept)  # neither faulted nor recorded: answered too late
    late_samples = device["samples"] - device["faulty_samples"] - used

    checks = [
        ("steps run (each counted once)", steps, len(first), lost == 0),
        ("steps lost", 0, lost, lost == 0),
        ("steps redone after the kill, same loss", redone, redone_same, redone == redone_same),
        ("forward samples: ledger = batch × steps", BATCH * steps, ledger["forward"], ledger["forward"] == BATCH * steps),
        ("probe samples: ledger = 2 × batch × steps", 2 * BATCH * steps, ledger["probe"], ledger["probe"] == 2 * BATCH * steps),
        ("calibration samples: ledger = reference's", ref["ledger"]["calibration"], ledger["calibration"],
         ledger["calibration"] == ref["ledger"]["calibration"]),
        ("samples: ledger total = device's count", device["samples"], ledger["total"], ledger["total"] == device["samples"]),
        # failed: every sample the device was handed and the box did not use — the faults' and those of calls
        # the device answered only after the time-out (a loaded machine), which the box abandoned and retried
        ("failed samples: ledger = device's samples − recorded samples", device["samples"] - used, ledger["failed"],
         ledger["failed"] == device["samples"] - used),
        ("  of which the injected faults'", device["faulty_samples"], device["faulty_samples"], ledger["failed"] >= device["faulty_samples"]),
        ("  of which calls answered after the time-out (retried)", "—", f"{late_calls} calls, {late_samples} samples",
         late_calls >= 0 and late_samples == ledger["failed"] - device["faulty_samples"]),
        *(
            (f"recorded {kind} samples = ledger {kind}", ledger[kind], recorded[kind], recorded[kind] == ledger[kind])
            for kind in KINDS
        ),
        ("recorded calls in device-call order (none twice)", "increasing", "increasing" if increasing else "not", increasing),
        ("final parameters = fault-free run's (torch.equal)", "equal", "equal" if parameters_equal else "differ", parameters_equal),
        ("every step's loss = fault-free run's", "equal", "equal" if losses_equal else "differ", losses_equal),
    ]
    print(
        f"torch {torch.__version__}, {platform.machine()}, 1 thread per run, {steps} steps of batch {BATCH}, "
        f"checkpoint every {args.every}, {args.rate:.0%} of each fault kind, time-out {args.timeout:g} s, "
        f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at the end"
    )
    print()
    print(
        f"faults injected into {device['calls']} device calls: {device['errors']} errors, {device['nan_calls']} NaN readings, "
        f"{device['bad_shapes']} wrong shapes, {device['hangs']} hangs past the time-out ({faults} in all, every one retried); "
        f"{late_calls} more calls were answered only after the time-out (the machine was loaded), abandoned and retried"
    )
    print(
        f"killed with SIGKILL after step {last} was reported ({killed_at:.0f} s in); resumed at step {resumed_at} from the "
        f"checkpoint; the killed run's {stop - start} calls ({abandoned_samples} samples) after that checkpoint stay in "
        f"the recording, set aside (checkpoint.abandoned)"
    )
    print(
        f"wall time: {wall:.0f} s for the whole soak (the reference run alongside); the resumed soak process ran "
        f"{steps - resumed_at} steps in {soak['seconds']:.0f} s, the reference {steps} steps in {ref['seconds']:.0f} s"
    )
    print()
    print("| check | expected | soak | ok |")
    print("|---|---:|---:|---|")
    for name, expected, got, ok in checks:
        print(f"| {name} | {expected} | {got} | {'yes' if ok else 'NO'} |")
    if cut_short:
        print("\n(the recording's last call was cut short by the kill and is left out on reading)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {name: {"expected": expected, "soak": got, "ok": ok} for name, expected, got, ok in checks}
        (args.out / "summary.json").write_text(json.dumps({"steps": steps, "killed_after": last, "resumed_at": resumed_at,
                                                           "device": device, "ledger": ledger, "checks": summary}, indent=1))
        figure(args.out / "soak.png", first, reference_losses, steps, last, resumed_at)
        print(f"\nfigure: {args.out / 'soak.png'}")
    if not all(ok for *_, ok in checks):
        raise SystemExit("some checks failed")


def figure(path: Path, soak: dict[int, float], reference: dict[int, float], steps: int, killed: int, resumed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    window = max(steps // 200, 1)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for losses, label, style in ((reference, "fault-free reference", "-"), (soak, "soak: faults, killed, resumed", "--")):
        values = np.array([losses[s] for s in range(steps)])
        mean = values[: len(values) // window * window].reshape(-1, window).mean(1)
        ax.plot((np.arange(mean.size) + 0.5) * window, mean, style, label=label)
    ax.axvline(killed, color="red", lw=0.8)
    ax.axvline(resumed, color="green", lw=0.8)
    ax.text(killed, ax.get_ylim()[1], " killed", color="red", va="top", fontsize=8)
    ax.text(resumed, ax.get_ylim()[1] * 0.9, "resumed ", color="green", va="top", ha="right", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (mean of {window} steps)")
    ax.set_yscale("log")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
