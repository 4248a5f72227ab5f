"""Device pools against one worker: a slow one-sample-at-a-time device, a batch of 64.

The simulated device takes 2.5 ms per sample and evaluates one sample at a
time, as a mechanical stage or a single-pixel camera does; it waits in
``time.sleep``, which releases the GIL, so even on a 2-core machine eight
workers can wait at once.  For each kind of pool — threads, processes, Ray
actors — a pool of one worker and a pool of ``--workers`` workers evaluate the
same batch, in one run, ``--repeats`` times each; the table gives the median
time per batch and the speedup of the large pool over the one-worker pool of
its kind (the target: at least 6x with 8 workers), and the overhead: the time
beyond the device's own for the largest share.  The plain device called
directly is the reference row.  Every pool's output is checked equal to the
plain device's.

    python benchmarks/pool_speedup.py [--workers 8] [--batch 64] [--repeats 10] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

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


class SampleBySample:
    """A deterministic device that evaluates one sample at a time, ``PER_SAMPLE`` seconds each."""

    name = "sample-by-sample"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in x:
            time.sleep(PER_SAMPLE)
            rows.append(torch.sin(row) * torch.cos(2 * row))
        return torch.stack(rows)


def median_seconds(device, x: torch.Tensor, repeats: int, reference: torch.Tensor) -> float:
    assert torch.equal(device(x), reference), "a pool's output differs from the plain device's"  # warm-up and check
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        device(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray rows")
    args = parser.parse_args()

    x = torch.randn(args.batch, 16, generator=torch.Generator().manual_seed(0))
    device = SampleBySample()
    reference = device(x)
    print(
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}; device: {PER_SAMPLE * 1e3:g} ms per sample, one at a time; batch {args.batch}; "
        f"median of {args.repeats} batches; load average {os.getloadavg()[0]:.2f} at start\n"
    )
    rows = [("plain device (no pool)", 1, median_seconds(device, x, args.repeats, reference), None)]
    pools = [
        ("threads", lambda k: DevicePool(factory=SampleBySample, workers=k)),
        ("processes", lambda k: DevicePool(factory=SampleBySample, workers=k, mode="processes")),
    ]
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        # the device waits rather than computes: eight actors share the two CPUs
        pools.append(("ray", lambda k: RayPool(SampleBySample, workers=k, actor_options={"num_cpus": 0.25})))
    for kind, make in pools:
        timed = {}
        for k in (1, args.workers):
            with make(k) as pool:
                timed[k] = median_seconds(pool, x, args.repeats, reference)
                assert pool.status().failures == 0
        rows.append((f"{kind}", 1, timed[1], None))
        rows.append((f"{kind}", args.workers, timed[args.workers], timed[1] / timed[args.workers]))
    if not args.no_ray:
        ray.shutdown()

    # overhead: the time beyond the device's own for the largest share (ceil(batch / k) samples)
    print(
        f"| pool | workers | ms per batch of {args.batch} | overhead ms | samples/s | speedup over 1 worker | ≥ {TARGET:g}x |"
    )
    print("|---|---:|---:|---:|---:|---:|:---:|")
    for kind, k, seconds, speedup in rows:
        ideal = -(-args.batch // k) * PER_SAMPLE
        shown = "" if speedup is None else f"{speedup:.2f}x"
        verdict = "" if speedup is None else ("yes" if speedup >= TARGET else "**no**")
        print(
            f"| {kind} | {k} | {seconds * 1e3:.1f} | {(seconds - ideal) * 1e3:.1f} | {args.batch / seconds:,.0f} "
            f"| {shown} | {verdict} |"
        )
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
