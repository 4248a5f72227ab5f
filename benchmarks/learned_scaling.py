"""Training-step time and peak memory of the learned estimators' defaults as the device widens.

The device is ``tanh(W x)`` with a random ``W`` of ``n × n`` (``n = m``),
the batch 32, one thread.  For each estimator and size a fresh subprocess
builds ``BlackBox(device, Estimator(), calibrate=False)`` and takes
``--steps`` training steps (forward, a loss, backward: the estimator's probes
and its online training) after the estimator's warm-up (``warmup`` backward
passes at the start that train ``WARMUP_FACTOR`` times as much); it prints
the first step's time, the median of the other warm-up steps, the median of
the steps after the warm-up and of their CPU time (one thread: on a machine
shared with other jobs, the time the step would take on an idle core), and
the process's peak resident memory (``ru_maxrss``) beside what it held
before the first step (torch, the device's ``W``, the batch), so that their
difference is what the estimator itself needed, and the size of its replay
buffers, allocated whole but empty when the first rows arrive: their pages
become resident as rows are written, so the peak holds the buffers' rows so
far, at most their full size.  A configuration that takes longer than
``--timeout`` seconds is reported as such.

    python benchmarks/learned_scaling.py [--sizes 256 1024 4096] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ESTIMATORS = ("DigitalTwin", "LearnedJacobian", "LearnedVJP")


def rss_mb() -> float:
    """The peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(name: str, n: int, steps: int) -> dict:
    import torch

    try:
        import blackgrad as bg
    except ImportError:  # running from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        import blackgrad as bg
    from blackgrad import estimators

    torch.set_num_threads(1)
    torch.manual_seed(0)
    weight = torch.randn(n, n) / n**0.5
    # A training loop builds its own optimiser before its first step, and the first torch.optim
    # optimiser of a process imports torch._dynamo (about a second): paid here, as it would be there.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    box = bg.BlackBox(lambda x: torch.tanh(x @ weight.T), getattr(estimators, name)(), calibrate=False)
    warmup = getattr(box.estimator, "warmup", 0)
    batches = [torch.randn(32, n) for _ in range(max(warmup, 1) + steps)]
    target = torch.randn(32, n)
    before = rss_mb()
    times, cpu = [], []
    for x in batches:
        x.requires_grad_(True)
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = (box(x) - target).pow(2).mean()
        loss.backward()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        # None while the estimator's gate is shut (its model is still untested): the step's work is done all the same
        assert x.grad is None or bool(torch.isfinite(x.grad).all())
    parameters = sum(p.numel() for p in box.estimator.model.parameters())
    prior = getattr(box.estimator, "prior", None)
    if prior is not None and prior.model is not None:
        parameters += sum(p.numel() for p in prior.model.parameters())
    buffers = [box.estimator.buffer] + [getattr(e, b) for e in (box.estimator, prior) if e is not None for b in ("values",) if hasattr(e, b)]
    if prior is not None:
        buffers.append(prior.buffer)
    # the replay buffers' full size (allocated empty: the peak holds only the pages rows were written to)
    full = sum(t.numel() * t.element_size() for buffer in buffers for t in buffer.data.values()) / 2**20
    after = slice(max(warmup, 1), None)  # the passes after the first and the warm-up
    return dict(
        first=times[0],
        warmup=statistics.median(times[1:warmup]) if warmup > 1 else None,
        later=statistics.median(times[after]),
        later_cpu=statistics.median(cpu[after]),
        before=before,
        peak=rss_mb(),
        parameters=parameters,
        buffers=full,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--one", nargs=2, metavar=("ESTIMATOR", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps)))
        return
    import torch

    print(
        f"torch {torch.__version__}, {platform.machine()}, 1 thread, batch 32, device tanh(Wx) with n = m, "
        f"{args.steps} steps each, load average {os.getloadavg()[0]:.2f} at start"
    )
    print()
    print(
        "| estimator | n = m | model parameters | first step (s) | other warm-up steps (s, median) | steps after the warm-up (s, median) "
        "| their CPU time (s) | peak memory (MB) | of it before the first step (MB) | replay buffers, full (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.estimators:
        for n in args.sizes:
            command = [sys.executable, __file__, "--one", name, str(n), "--steps", str(args.steps)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=True)
            except subprocess.TimeoutExpired:
                print(f"| {name} | {n} | | did not finish within {args.timeout:g} s | | | | | | |", flush=True)
                continue
            except subprocess.CalledProcessError as err:
                print(f"| {name} | {n} | | failed: {err.stderr.strip().splitlines()[-1]} | | | | | | |", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {name} | {n} | {r['parameters']:,} | {r['first']:.3f} | {'—' if r['warmup'] is None else format(r['warmup'], '.3f')} "
                f"| {r['later']:.3f} | {r['later_cpu']:.3f} | {r['peak']:.0f} | {r['before']:.0f} "
                f"| {r['buffers']:.0f} |",
                flush=True,
            )
    print()
    print(f"(load average {os.getloadavg()[0]:.2f} at the end of the run.)")


if __name__ == "__main__":
    main()
