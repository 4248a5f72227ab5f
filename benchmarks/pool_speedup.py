"""Device pools against one worker: a slow one-sample-at-a-time device, a batch of 64.

The simulated device takes 2.5 ms per sample and evaluates one sample at a
time, as a mechanical stage or a single-pixel camera does; it waits in
``time.sleep``, which releases the GIL, so even on a 2-core machine eight
workers can wait at once.  For each kind of pool — threads, processes, Ray
actors — a pool of one worker and a pool of ``--workers`` workers evaluate the
same batch, in one run, ``--repeats`` times each, taking turns (round robin,
so that a burst of load from other processes on a shared machine falls on
all of them alike).  The table gives the fastest and the median time per
batch, the speedup of the large pool over the one-worker pool of its kind
(the target: at least 6x with 8 workers; the verdict reads the fastest, as
the device throughput benchmark does, since other processes only ever slow
a call down), and the overhead: the fastest time beyond the device's own
for the largest share.  The plain device called directly is the reference
row; with Ray, bare actors holding the device, called directly with equal
shares and gathered with one ``ray.get``, give the floor of what Ray itself
costs for the same requests; RayPool has a row per transport (its shares over
each actor's ZeroMQ channel, or as Ray actor calls).  Every pool's output is checked equal to the
plain device's.

    python benchmarks/pool_speedup.py [--workers 8] [--batch 64] [--repeats 20] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    from blackgrad.pool import DevicePool, RayPool
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from blackgrad.pool import DevicePool, RayPool

#: seconds the device takes for one sample
PER_SAMPLE = 0.0025
#: the required speedup of the large pool over one worker
TARGET = 6.0
#: the rows of plain Ray actors called directly, without a pool
BARE = "ray, bare actors (no pool)"
#: RayPool's transports, each a row: shares over each actor's ZeroMQ channel, or as Ray actor calls
TRANSPORTS = {"zmq": "zmq channel", "ray": "ray calls"}


class SampleBySample:
    """A deterministic device that evaluates one sample at a time, ``PER_SAMPLE`` seconds each."""

    name = "sample-by-sample"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in x:
            time.sleep(PER_SAMPLE)
            rows.append(torch.sin(row) * torch.cos(2 * row))
        return torch.stack(rows)


class DeviceActor:
    """A plain Ray actor holding the device, called with numpy arrays: no pool around it."""

    def __init__(self) -> None:
        self.device = SampleBySample()

    def ping(self) -> int:
        return os.getpid()

    def run(self, x):
        return self.device(torch.from_numpy(x.copy())).numpy()


class BareActors:
    """``k`` plain Ray actors called directly, one equal share each, results gathered with one ``ray.get``.

    No scheduling, retries or ledger: the least a request to ``k`` actors
    costs in Ray itself, the floor for the RayPool rows.
    """

    def __init__(self, ray, k: int, options: dict) -> None:
        self.ray = ray
        actor = ray.remote(DeviceActor)
        self.actors = [actor.options(**options).remote() for _ in range(k)]
        ray.get([a.ping.remote() for a in self.actors])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shares = torch.tensor_split(x, len(self.actors))
        outputs = self.ray.get([a.run.remote(s.numpy()) for a, s in zip(self.actors, shares)])
        return torch.from_numpy(np.concatenate(outputs))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def time_batch(device, x: torch.Tensor) -> float:
    start = time.perf_counter()
    device(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray rows")
    args = parser.parse_args()

    x = torch.randn(args.batch, 16, generator=torch.Generator().manual_seed(0))
    device = SampleBySample()
    reference = device(x)
    print(
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}; device: {PER_SAMPLE * 1e3:g} ms per sample, one at a time; batch {args.batch}; "
        f"{args.repeats} batches each; load average {os.getloadavg()[0]:.2f} at start\n"
    )
    configurations = [("plain device (no pool)", 1, device)]
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    for k in (1, args.workers):
        configurations.append(("threads", k, DevicePool(factory=SampleBySample, workers=k)))
        configurations.append(("processes", k, DevicePool(factory=SampleBySample, workers=k, mode="processes")))
        if not args.no_ray:
            # the device waits rather than computes: the 2 x (1 + 8) pool actors and the 1 + 8 bare ones share the two CPUs
            for transport in TRANSPORTS:
                pool = RayPool(SampleBySample, workers=k, actor_options={"num_cpus": 0.1}, transport=transport)
                configurations.append((f"ray ({TRANSPORTS[transport]})", k, pool))
            configurations.append((BARE, k, BareActors(ray, k, {"num_cpus": 0.02})))
    kinds = ["plain device (no pool)", "threads", "processes", *(f"ray ({t})" for t in TRANSPORTS.values()), BARE]
    configurations.sort(key=lambda c: kinds.index(c[0]))
    for _, _, pool in configurations:
        assert torch.equal(pool(x), reference), "a pool's output differs from the plain device's"  # and warms it up
    # round robin: a burst of load on the shared machine falls on every configuration alike
    times = {index: [] for index in range(len(configurations))}
    for _ in range(args.repeats):
        for index, (_, _, pool) in enumerate(configurations):
            times[index].append(time_batch(pool, x))
    for kind, k, pool in configurations[1:]:
        if kind != BARE:
            assert pool.status().failures == 0
        pool.close()
    if not args.no_ray:
        ray.shutdown()
    one_worker = {kind: index for index, (kind, k, _) in enumerate(configurations) if k == 1}
    rows = []
    for index, (kind, k, _) in enumerate(configurations):
        best, median = min(times[index]), statistics.median(times[index])
        base = times[one_worker[kind]]
        speedups = None if k == 1 else (min(base) / best, statistics.median(base) / median)
        rows.append((kind, k, best, median, speedups))

    # overhead: the time beyond the device's own for the largest share (ceil(batch / k) samples)
    print(
        f"| pool | workers | fastest ms per batch of {args.batch} | median ms | overhead ms (fastest) "
        f"| speedup over 1 worker (fastest) | (median) | ≥ {TARGET:g}x |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for kind, k, best, median, speedups in rows:
        ideal = -(-args.batch // k) * PER_SAMPLE
        shown = ("", "") if speedups is None else tuple(f"{v:.2f}x" for v in speedups)
        verdict = "" if speedups is None else ("yes" if speedups[0] >= TARGET else "**no**")
        print(
            f"| {kind} | {k} | {best * 1e3:.1f} | {median * 1e3:.1f} | {(best - ideal) * 1e3:.1f} "
            f"| {shown[0]} | {shown[1]} | {verdict} |"
        )
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
