"""What wrapping a cheap device costs: a bare ``autograd.Function``, ``gradiator`` and ``BlackBox`` side by side.

One training step — forward and backward — through a device that is
``torch.sin`` with the known derivative ``cos``, three ways, interleaved in
one run on the same data:

* a hand-written ``torch.autograd.Function`` (forward ``sin``, backward
  ``g · cos x``): the least any wrapper can cost;
* ``blackgrad.gradiator(torch.sin, lambda x, g: g * torch.cos(x))``;
* ``BlackBox(torch.sin, StraightThrough(derivative=torch.cos), calibrate=False)``:
  the whole black-box path (validation, the ledger, the prober's input copy,
  the estimator's query), with an estimator that spends no evaluation, so
  that what is timed is the wrapper and not the estimator;
* the same box with ``copy_inputs=False``: a device that promises not to
  edit its inputs is handed them without the prober's copy (θ would still
  be copied; a broken promise is caught by the version counter).

Each number is the median of ``--repeats`` steps after a warm-up, one
thread, the variants taking turns in a rotating order; the ratios are to the
bare function in the same run.  Each
variant's gradient is checked against the bare function's first.

    python benchmarks/wrapper_overhead.py [--repeats 2000] [--parts]

``--parts`` adds the box without its input copy, without the finite check of
its output, and without both — switched off inside the benchmark (the
library keeps both): what each costs, and what is left, the box's Python.
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
from blackgrad.estimators import StraightThrough


class BareSin(torch.autograd.Function):
    """``sin`` with its derivative written by hand: the baseline.

    In the classic style (``forward(ctx, x)``), the cheapest torch offers: a
    ``setup_context`` function has its arguments bound with ``inspect`` on
    every call, some 25 µs.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x)


def without(box: bg.BlackBox, check: bool = True, copy: bool = True):
    """``box`` with its output's finite check and/or its input copy switched off, for ``--parts``.

    A diagnostic only (the library has no such switch: both are part of
    what a box promises): it swaps the prober's module-level helpers for the
    duration of one call.
    """
    from blackgrad import prober

    check_fn, copy_fn = prober.all_finite, prober._private_copy

    def call(x: torch.Tensor) -> torch.Tensor:
        if not check:
            prober.all_finite = lambda t: True
        if not copy:
            prober._private_copy = lambda t: t
        try:
            return box(x)
        finally:
            prober.all_finite, prober._private_copy = check_fn, copy_fn

    return call


def wrappers(parts: bool = False) -> dict[str, object]:
    box = bg.BlackBox(torch.sin, StraightThrough(derivative=torch.cos), calibrate=False)
    funs = {
        "bare autograd.Function": BareSin.apply,
        "gradiator": bg.gradiator(torch.sin, lambda x, g: g * torch.cos(x)),
        "BlackBox(StraightThrough)": box,
    }
    try:
        funs["… copy_inputs=False"] = bg.BlackBox(torch.sin, StraightThrough(derivative=torch.cos), calibrate=False, copy_inputs=False)
    except TypeError:  # a library from before copy_inputs: the columns it has
        pass
    if parts:  # what the box's two per-call safeguards cost, and what is left without them
        new_box = lambda: bg.BlackBox(torch.sin, StraightThrough(derivative=torch.cos), calibrate=False)
        funs["… no input copy"] = without(new_box(), copy=False)
        funs["… no output check"] = without(new_box(), check=False)
        funs["… neither"] = without(new_box(), check=False, copy=False)
    return funs


def step(fun, x: torch.Tensor, grad: torch.Tensor) -> float:
    x.grad = None  # the gradient is stored, not added to an earlier one: no extra pass in any variant
    start = time.perf_counter()
    fun(x).backward(grad)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument(
        "--parts", action="store_true", help="add the box without its input copy, its output's finite check, and both (a diagnostic)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {platform.machine()}, 1 thread, median of {args.repeats} steps "
        f"(forward + backward), load average {os.getloadavg()[0]:.2f} at start"
    )
    print()
    names = list(wrappers(args.parts))
    print("| batch × features | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for batch, features in ((64, 16), (1024, 256)):
        funs = wrappers(args.parts)
        x = torch.randn(batch, features, requires_grad=True)
        grad = torch.randn(batch, features)
        reference = BareSin.apply(x)
        reference.backward(grad)
        expected, x.grad = x.grad.clone(), None
        for name, fun in funs.items():  # all compute the same thing
            fun(x).backward(grad)
            torch.testing.assert_close(x.grad, expected, msg=f"{name} gave another gradient")
            x.grad = None
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(max(args.repeats // 10, 10)):  # warm-up
            for fun in funs.values():
                step(fun, x, grad)
        order = list(funs)
        for repeat in range(args.repeats):
            # interleaved, so that load changes hit every variant alike, in an order that rotates:
            # a step runs faster or slower for the one before it (what it left in the caches), and
            # a fixed order would charge that to the same variant every time
            for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
                times[name].append(step(funs[name], x, grad))
        x.grad = None
        median = {name: statistics.median(t) for name, t in times.items()}
        bare = median[names[0]]
        cells = [f"1.00× ({bare * 1e6:.0f} µs)" if bare < 1e-3 else f"1.00× ({bare * 1e3:.2f} ms)"]
        cells += [f"{median[name] / bare:.2f}×" for name in names[1:]]
        print(f"| {batch} × {features} | " + " | ".join(cells) + " |")
    print()
    print(f"(load average {os.getloadavg()[0]:.2f} at the end of the run.)")


if __name__ == "__main__":
    main()
