"""Throughput of every blackgrad device at its default size, on the CPU.

Measures forward evaluations (``torch.no_grad``, float32, one batch of
``--batch`` samples per call) and reports samples per second of the fastest
call among at least ``--repeats`` calls spread over ``--seconds`` seconds, so
that other processes on a busy machine do not understate the device.

Each device is timed with one thread — the headline number, which neither
the core count nor other busy processes distort much — and with torch's
default number of threads.  Prints a Markdown table; the verdict column
compares the one-thread rate with the 10⁴ samples/s target.

    python benchmarks/device_throughput.py [--batch 1024] [--repeats 20] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

try:
    import blackgrad.devices as devices
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import blackgrad.devices as devices

#: the required minimum, samples per second at the default size
TARGET = 1e4


def cases() -> list[tuple[str, devices.Device, str]]:
    """(label, device, input range) for every device and wrapper at its defaults."""
    shg = devices.SHG()
    return [
        ("Linear(16, 16)", devices.Linear(16, 16), "normal"),
        ("SHG()", shg, "[-1, 1]"),
        ("KerrFiber()", devices.KerrFiber(), "[0, 1]"),
        ('KerrFiber(encoding="phase")', devices.KerrFiber(encoding="phase"), "[-1, 1]"),
        ("Oscillators()", devices.Oscillators(), "[-1, 1]"),
        ("Noisy(SHG())", devices.Noisy(shg, std=0.01), "[-1, 1]"),
        ("Quantized(SHG(), bits=8)", devices.Quantized(shg, bits=8, low=0.0, high=1.0), "[-1, 1]"),
        ("Saturating(SHG())", devices.Saturating(shg), "[-1, 1]"),
        ("Drifting(SHG())", devices.Drifting(shg), "[-1, 1]"),
        ("Faulty(SHG())", devices.Faulty(shg), "[-1, 1]"),
    ]


def sample_inputs(batch: int, n: int, kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if kind == "normal":
        return torch.randn(batch, n, generator=generator)
    low, high = (0.0, 1.0) if kind == "[0, 1]" else (-1.0, 1.0)
    return low + (high - low) * torch.rand(batch, n, generator=generator)


def samples_per_second(device: devices.Device, x: torch.Tensor, repeats: int, seconds: float) -> float:
    with torch.no_grad():
        device(x)  # warm-up: builds cached constants
        best, calls, deadline = float("inf"), 0, time.perf_counter() + seconds
        while calls < repeats or time.perf_counter() < deadline:
            start = time.perf_counter()
            device(x)
            best = min(best, time.perf_counter() - start)
            calls += 1
    return x.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{default_threads} threads by default, batch {args.batch}, float32, "
          f"fastest of >= {args.repeats} calls over {args.seconds:g} s, "
          f"load average {os.getloadavg()[0]:.2f} at start\n")
    print(f"| device | n → m | p | samples/s (1 thread) | samples/s ({default_threads} threads) | ≥ 10⁴ |")
    print("|---|---|---|---:|---:|:---:|")
    for label, device, kind in cases():
        x = sample_inputs(args.batch, device.in_features, kind)
        torch.set_num_threads(1)
        rate_single = samples_per_second(device, x, args.repeats, args.seconds)
        torch.set_num_threads(default_threads)
        rate_default = samples_per_second(device, x, args.repeats, args.seconds)
        ok = "yes" if rate_single >= TARGET else "**no**"
        print(f"| {label} | {device.in_features} → {device.out_features} | {device.n_params} "
              f"| {rate_single:,.0f} | {rate_default:,.0f} | {ok} |")
    # Other processes on the cores slow the multi-threaded column most: say how busy it was.
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
