"""The demo: digits through a simulated noisy, quantized SHG device, trained end to end.

A hybrid model — a digital Linear+tanh layer, the physical layer (second-
harmonic generation of a shaped femtosecond pulse, with 1 % noise and an
8-bit spectrometer), a digital readout — is trained three ways, side by side
on the same split and seed: as `BlackBox(device)` with no options (it
calibrates itself and uses the recommended gradient estimator), with
exact backprop through the clean physics (the limit a real device would not
allow), and with the readout alone (reservoir computing, no gradient through
the device).
"""

from __future__ import annotations

from pathlib import Path

from .bench import run_benchmark

#: the estimator the demo recommends: BlackBox's own default, with no options (see BENCHMARKS.md for why)
RECOMMENDED = "default"


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> Path:
    """Train, print a table next to exact backprop, write ``out/report.md``; return its path."""
    methods = ["exact", RECOMMENDED, "readout-only"]
    summary = run_benchmark(out, quick=quick, task_names=["digits-shg"], method_names=methods, seeds=(seed,))
    print()
    print(summary["markdown"])
    return write_report(out, summary)


def write_report(out: Path, summary: dict) -> Path:
    """Write ``out/report.md`` from a benchmark summary (``blackgrad report`` rewrites it from the records)."""
    report = out / "report.md"
    report.write_text(
        "# blackgrad demo\n\n"
        + (__doc__ or "").strip()
        + "\n\n"
        + summary["markdown"]
        + "\n"
        + "\n".join(f"![{name}]({name})" for name in summary["figures"])
        + "\n\nRe-run with `blackgrad demo`; the full comparison is `blackgrad bench`.\n"
    )
    return report
