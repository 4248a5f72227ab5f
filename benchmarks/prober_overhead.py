"""What the prober's safety costs per training step: input copies and the time-out's worker thread.

A torch device is handed copies of its inputs (so that one editing them in
place cannot corrupt the model), and with ``timeout=`` it runs in a worker
thread.  This times one training step (forward and backward) of a
:class:`~blackgrad.BlackBox` three ways, interleaved in one run on the same
data: without the copies (the prober as it was before them), with them (now),
and with them and ``timeout=60``.  Each number is the median of ``--repeats``
steps, after a warm-up; one thread.

    python benchmarks/prober_overhead.py [--repeats 200]
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
    import blackgrad as bg
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import blackgrad as bg
from blackgrad.devices import SHG
from blackgrad.estimators import SPSA, FiniteDifference
from blackgrad.prober import Prober


class UncopiedProber(Prober):
    """The prober without input copies for torch devices, as before they were added."""

    def _device_arguments(self, x, theta):
        if self.numpy:
            return super()._device_arguments(x, theta)
        batch = x.reshape((x.shape[0],) + self.in_shape)
        return (batch,) if self.n_params == 0 else (batch, theta)


def make_box(device, estimator, variant: str) -> bg.BlackBox:
    box = bg.BlackBox(device, estimator(), calibrate=False, timeout=60.0 if variant == "copies + timeout" else None)
    box(torch.randn(2, 16))  # builds the prober
    if variant == "no copies":
        box.prober.__class__ = UncopiedProber
    return box


def step(box: bg.BlackBox, x: torch.Tensor) -> float:
    x = x.clone().requires_grad_(True)
    start = time.perf_counter()
    box(x).pow(2).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 16)
    variants = ["no copies", "copies", "copies + timeout"]
    cases = [
        ("torch.tanh, SPSA(directions=4)", torch.tanh, lambda: SPSA(directions=4, step=1e-2)),
        ("torch.tanh, FiniteDifference()", torch.tanh, lambda: FiniteDifference(step=1e-2)),
        ("SHG(), SPSA(directions=4)", SHG(), lambda: SPSA(directions=4, step=1e-2)),
    ]
    print(
        f"torch {torch.__version__}, {platform.machine()}, 1 thread, batch {args.batch} x 16, median of {args.repeats} "
        f"steps, load average {os.getloadavg()[0]:.2f} at start"
    )
    print()
    print("| device, estimator | evaluations per step | " + " | ".join(f"{v} (ms)" for v in variants) + " | copies / no copies | timeout / no copies |")
    print("|---|---:|" + "---:|" * (len(variants) + 2))
    for label, device, estimator in cases:
        boxes = {v: make_box(device, estimator, v) for v in variants}
        times = {v: [] for v in variants}
        for _ in range(10):  # warm-up
            for v in variants:
                step(boxes[v], x)
        for _ in range(args.repeats):  # interleaved, so that load changes hit every variant alike
            for v in variants:
                times[v].append(step(boxes[v], x))
        median = {v: statistics.median(t) * 1e3 for v, t in times.items()}
        evaluations = boxes["copies"].calls.total // (args.repeats + 10)
        print(
            f"| {label} | {evaluations} | "
            + " | ".join(f"{median[v]:.3f}" for v in variants)
            + f" | {median['copies'] / median['no copies']:.3f} | {median['copies + timeout'] / median['no copies']:.3f} |"
        )
    print()
    print(f"(load average {os.getloadavg()[0]:.2f} at the end of the run.)")


if __name__ == "__main__":
    main()
