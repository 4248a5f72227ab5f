"""Where a RayPool request's time goes: Ray's own cost per request, what the pool adds, and idle gaps.

A device that returns its input at once (no waiting), a batch of 64 × 16
float32, on a local Ray of 2 CPUs.  For 1 and for ``--workers`` actors, each
timed ``--calls`` times, the kinds taking turns call by call:

* ``ping``: one empty actor call per actor, gathered with one ``ray.get`` —
  the least a round trip to those actors costs in Ray;
* ``bare actors``: plain actors holding the device, called directly with
  their share as a numpy array, gathered with one ``ray.get``;
* ``RayPool``: the same request through the pool (shares, packing, ledger,
  fault handling), once per transport: ``zmq`` (each actor's ZeroMQ channel)
  and ``ray`` (a Ray actor call per share).

Each is timed right after the previous call (``gap 0``) and after the
calling process has slept ``--gap`` seconds, as a trainer's compute or the
other rows of the pool benchmark leave Ray's processes idle between
requests.

    python benchmarks/ray_call_cost.py [--workers 8] [--calls 100] [--gap 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    from blackgrad.pool import RayPool
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from blackgrad.pool import RayPool


class Echo:
    """A device that answers at once: its input."""

    name = "echo"

    def __call__(self, x):
        return x


class EchoActor:
    def ping(self) -> int:
        return os.getpid()

    def run(self, x):
        return Echo()(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds of idleness before the 'after a gap' calls")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"{os.cpu_count()} cores, Ray {ray.__version__}, torch {torch.__version__}; batch 64 x 16 float32; "
          f"{args.calls} calls each; load average {os.getloadavg()[0]:.2f} at start\n")
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    actor_class = ray.remote(EchoActor)
    kinds = {}
    for k in (1, args.workers):
        actors = [actor_class.options(num_cpus=0.05).remote() for _ in range(k)]
        ray.get([a.ping.remote() for a in actors])

        def ping(x, actors=actors):
            ray.get([a.ping.remote() for a in actors])

        def bare(x, actors=actors):
            shares = torch.tensor_split(x, len(actors))
            return torch.from_numpy(np.concatenate(ray.get([a.run.remote(s.numpy()) for a, s in zip(actors, shares)])))

        kinds[("ping", k)] = ping
        kinds[("bare actors", k)] = bare
        assert torch.equal(bare(x), x)
        for transport in ("zmq", "ray"):  # the shares over each actor's ZeroMQ channel, or as Ray actor calls
            pool = RayPool(Echo, workers=k, actor_options={"num_cpus": 0.05}, transport=transport)
            assert torch.equal(pool(x), x)
            kinds[(f"RayPool ({transport})", k)] = pool
    times = {(kind, k, gap): [] for (kind, k) in kinds for gap in (0.0, args.gap)}
    for _ in range(args.calls):
        for (kind, k), call in kinds.items():
            for gap in (0.0, args.gap):
                time.sleep(gap)
                start = time.perf_counter()
                call(x)
                times[(kind, k, gap)].append(time.perf_counter() - start)
    print(f"| request to | actors | gap 0: median ms | fastest ms | after {args.gap:g} s idle: median ms | fastest ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, k in kinds:
        hot, cold = times[(kind, k, 0.0)], times[(kind, k, args.gap)]
        print(f"| {kind} | {k} | {statistics.median(hot) * 1e3:.2f} | {min(hot) * 1e3:.2f} "
              f"| {statistics.median(cold) * 1e3:.2f} | {min(cold) * 1e3:.2f} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    for (kind, _), call in kinds.items():
        if kind.startswith("RayPool"):
            call.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
