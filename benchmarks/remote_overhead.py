"""What serving a device over the network costs, on loopback, side by side with the local call.

1. Round trip: a batch of 1024 × 16 float32 through ``devices.Linear(16, 16)``
   called locally, and through ``RemoteDevice`` to a ``blackgrad serve``
   subprocess on 127.0.0.1 serving the same device; calls alternate local /
   remote so that both see the same machine load.  Target: the remote call
   costs ≤ 2 ms more (median).
2. Training throughput: a small classifier around ``BlackBox(SHG())`` whose
   every call takes 1 ms more (``time.sleep``, an instrument's latency),
   trained locally and through a served copy, with the default estimator
   and with ``SPSA(directions=4)``; local and remote steps alternate.
   Target: remote ≥ 80 % of local steps per second.

Between them, two measurements of what idleness costs on the machine: the
round trip again with each call made after both processes sat idle for 3 ms
(as the server does while the trainer computes), and the training device's
own work, in this process, back to back and after 3 ms idle.

Both processes run torch on one thread.

    python benchmarks/remote_overhead.py [--calls 500] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

try:
    import blackgrad as bg
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import blackgrad as bg
from blackgrad import devices
from blackgrad.estimators import SPSA

HERE = Path(__file__).resolve().parent
TOKEN = "benchmark-token"
LATENCY = 0.001  # seconds added to every device call in the training comparison
BATCH, N_IN, N_CLASSES = 64, 16, 4
#: rows of one SPSA(directions=4) backward call for a batch of 64: the probes' shape
PROBES = 512
#: seconds a process sits idle before the "after idle" calls: about a training step's compute between two device calls
IDLE = 0.003


class WithLatency:
    """``device`` whose every call takes ``seconds`` longer, as an instrument's round trip does."""

    def __init__(self, device, seconds: float = LATENCY) -> None:
        self.device, self.seconds = device, seconds

    def __call__(self, x, theta=None):
        time.sleep(self.seconds)
        return self.device(x, theta)


def make_linear():
    """The round-trip device (served by ``blackgrad serve remote_overhead:make_linear``)."""
    torch.set_num_threads(1)
    return devices.Linear(16, 16)


def make_slow_shg():
    """The training device: SHG with 1 ms latency per call."""
    torch.set_num_threads(1)
    return WithLatency(devices.SHG())


class Served:
    """A ``blackgrad serve`` subprocess for one factory of this file, stopped by ``stop``."""

    def __init__(self, factory: str) -> None:
        env = os.environ.copy()
        paths = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[0] / "src"), *paths])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blackgrad.cli", "serve", f"remote_overhead:{factory}", "--port", "0",
             "--token", TOKEN, "--app-dir", str(HERE)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        first = self.process.stdout.readline()
        match = re.search(r"at (tcp://\S+)", first)
        if match is None:
            self.stop()
            raise RuntimeError(f"the server did not start: {first!r}")
        self.address = match.group(1)
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep the pipe drained

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def round_trip(calls: int) -> None:
    from blackgrad.remote import RemoteDevice

    device = make_linear()
    served = Served("make_linear")
    try:
        remote = RemoteDevice(served.address, token=TOKEN)
        x = torch.randn(1024, 16)
        assert torch.equal(remote(x), device(x))  # the same numbers come back
        local_times, remote_times = [], []
        idle_local, idle_remote = [], []
        with torch.no_grad():
            for _ in range(calls):
                start = time.perf_counter()
                device(x)
                local_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                remote(x)
                remote_times.append(time.perf_counter() - start)
            for _ in range(calls):  # the same calls, each after both processes sat idle
                time.sleep(IDLE)
                start = time.perf_counter()
                device(x)
                idle_local.append(time.perf_counter() - start)
                time.sleep(IDLE)
                start = time.perf_counter()
                remote(x)
                idle_remote.append(time.perf_counter() - start)
        status = remote.status()
    finally:
        served.stop()
    local_ms = statistics.median(local_times) * 1e3
    remote_ms = statistics.median(remote_times) * 1e3
    print(f"### Round trip of 1024 × 16 float32 through Linear(16, 16), {calls} calls each, alternating\n")
    print("| call | median ms | 10th percentile ms | 90th percentile ms |")
    print("|---|---:|---:|---:|")
    rows = (("local", local_times), ("remote (loopback)", remote_times),
            (f"local, after {IDLE * 1e3:g} ms idle", idle_local), (f"remote, after {IDLE * 1e3:g} ms idle", idle_remote))
    for label, times in rows:
        q = statistics.quantiles([t * 1e3 for t in times], n=10)
        print(f"| {label} | {statistics.median(times) * 1e3:.3f} | {q[0]:.3f} | {q[-1]:.3f} |")
    verdict = "yes" if remote_ms - local_ms <= 2.0 else "**no**"
    idle_gap = (statistics.median(idle_remote) - statistics.median(idle_local)) * 1e3
    print(f"\nremote − local (medians): {remote_ms - local_ms:.3f} ms; ≤ 2 ms: {verdict}; after {IDLE * 1e3:g} ms "
          f"idle: {idle_gap:.3f} ms; server counted {status['samples']} samples in {status['calls']} calls "
          f"(client: {remote.calls.samples} in {remote.calls.calls})\n")


def idle_device(calls: int) -> None:
    """The training device's work (SHG, no latency) on the SPSA probes' batch, back to back and after idling."""
    device = devices.SHG()
    x = torch.rand(PROBES, N_IN, generator=torch.Generator().manual_seed(1)) * 2 - 1
    busy, idle = [], []
    with torch.no_grad():
        for _ in range(calls):
            start = time.perf_counter()
            device(x)
            busy.append(time.perf_counter() - start)
        for _ in range(calls):
            time.sleep(IDLE)
            start = time.perf_counter()
            device(x)
            idle.append(time.perf_counter() - start)
    print(f"### SHG() on {PROBES} × {N_IN} in one process, {calls} calls back to back, then {calls} each after "
          f"{IDLE * 1e3:g} ms idle\n")
    print("| calls | median ms | 10th percentile ms | 90th percentile ms |")
    print("|---|---:|---:|---:|")
    for label, times in (("back to back", busy), (f"after {IDLE * 1e3:g} ms idle", idle)):
        q = statistics.quantiles([t * 1e3 for t in times], n=10)
        print(f"| {label} | {statistics.median(times) * 1e3:.3f} | {q[0]:.3f} | {q[-1]:.3f} |")
    print(f"\nafter idling / back to back (medians): {statistics.median(idle) / statistics.median(busy):.2f}\n")


def make_model(fun, estimator_name: str, seed: int = 0):
    """The classifier around ``BlackBox(fun)``; the same seed gives local and remote the same start."""
    torch.manual_seed(seed)
    estimator = SPSA(directions=4) if estimator_name == "SPSA(directions=4)" else None
    box = bg.BlackBox(fun, estimator)
    model = nn.Sequential(nn.Linear(N_IN, N_IN), nn.Tanh(), box, nn.Linear(16, N_CLASSES))
    return model, box, torch.optim.Adam(model.parameters(), lr=1e-2)


class Trainer:
    """One training run of the benchmark's model around ``fun``, advanced a step at a time."""

    def __init__(self, fun, estimator_name: str) -> None:
        self.model, self.box, self.optimiser = make_model(fun, estimator_name)
        generator = torch.Generator().manual_seed(0)
        self.data = torch.rand(BATCH, N_IN, generator=generator) * 2 - 1
        self.target = torch.randint(0, N_CLASSES, (BATCH,), generator=generator)

    def step(self) -> float:
        """One training step; its wall time in seconds."""
        start = time.perf_counter()
        self.optimiser.zero_grad()
        nn.functional.cross_entropy(self.model(self.data), self.target).backward()
        self.optimiser.step()
        return time.perf_counter() - start


def training(steps: int) -> None:
    from blackgrad.remote import RemoteDevice

    served = Served("make_slow_shg")
    rows = []
    try:
        for name in ("BlackBox(device) (default)", "SPSA(directions=4)"):
            local = Trainer(make_slow_shg(), name)
            remote = Trainer(RemoteDevice(served.address, token=TOKEN), name)
            local.step(), remote.step()  # warm-up: calibration, caches, connection
            calls = local.box.calls.device_calls
            device = remote.box.fun
            device.calls.reset()
            served_before = device.status()
            local_seconds, local_calls = local.box.calls.seconds, local.box.calls.device_calls
            local_times, remote_times = [], []
            for _ in range(steps):  # alternating steps: both see the same machine load
                local_times.append(local.step())
                remote_times.append(remote.step())
            calls = (local.box.calls.device_calls - calls) / steps
            served_after = device.status()
            served_seconds = (served_after["seconds"] - served_before["seconds"]) / (served_after["calls"] - served_before["calls"])
            local_inside = (local.box.calls.seconds - local_seconds) / (local.box.calls.device_calls - local_calls)
            per_call = (local_inside, served_seconds, device.calls.seconds / device.calls.calls)
            same = all(torch.equal(a, b) for a, b in zip(local.model.parameters(), remote.model.parameters()))
            rows.append((name, calls, local_times, remote_times, same, per_call))
    finally:
        served.stop()
    print(f"### Training through SHG() with {LATENCY * 1e3:g} ms latency per call: batch {BATCH}, "
          f"{steps} steps each after one warm-up step, local and remote steps alternating\n")
    print("| estimator | device calls per step | local steps/s | remote steps/s | remote / local | ≥ 0.80 "
          "| remote / local (mean step) | same parameters |")
    print("|---|---:|---:|---:|---:|:---:|---:|:---:|")
    for name, calls, local_times, remote_times, same, _ in rows:
        local_rate, remote_rate = 1 / statistics.median(local_times), 1 / statistics.median(remote_times)
        ratio = remote_rate / local_rate
        print(f"| {name} | {calls:.0f} | {local_rate:.1f} | {remote_rate:.1f} | {ratio:.3f} | "
              f"{'yes' if ratio >= 0.8 else '**no**'} | {sum(local_times) / sum(remote_times):.3f} | {'yes' if same else 'no'} |")
    print("\n(steps/s from the median step time; the mean-step column is the ratio of the total times)\n")
    print("Where the remote time goes, per device call (mean over the timed steps):\n")
    print("| estimator | local: inside the device, ms | server: inside the device, ms | remote client: call to reply, ms "
          "| transport (client − server), ms |")
    print("|---|---:|---:|---:|---:|")
    for name, *_, (local_inside, inside, client) in rows:
        print(f"| {name} | {local_inside * 1e3:.3f} | {inside * 1e3:.3f} | {client * 1e3:.3f} | {(client - inside) * 1e3:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="round-trip calls, local and remote each")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps, local and remote each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"one torch thread per process, load average {os.getloadavg()[0]:.2f} at start\n")
    round_trip(args.calls)
    idle_device(args.calls // 2)
    training(args.steps)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
