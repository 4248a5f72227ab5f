"""What calibration measures on each benchmark device, at a realistic first batch.

The first batch is what a BlackBox sees on its first training step: 64
training digits through a freshly initialised Linear(64, 16) and tanh, with
the device's default θ.  Prints one DeviceProfile per device, beside the
probe step the benchmark's authors chose for its task by hand.
Run: .venv/bin/python benchmarks/calibration_steps.py
"""
import torch

import blackgrad as bg
from blackgrad.bench.tasks import digits, oscillators_lab, shg_coarse_lab, shg_gentle_lab, shg_lab
from blackgrad.devices import SHG, Linear, Quantized

torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.tanh(torch.nn.Linear(64, 16)(digits().x_train[:64])).detach()
devices = [
    ("noisy 8-bit SHG (digits-shg)", shg_lab(), 0.02),
    ("noisy 8-bit π-SHG (digits-deep-shg)", shg_gentle_lab(), 0.06),
    ("noisy oscillators (digits-oscillators)", oscillators_lab(), 0.02),
    ("noisy 5-bit SHG (digits-coarse-shg)", shg_coarse_lab(), 0.04),
    ("clean SHG", SHG(), None),
    ("clean Linear(16, 16)", Linear(16, 16), None),
    ("noise-free 8-bit SHG", Quantized(SHG(), bits=8, low=0.0, high=1.0), None),
]
print("| device | hand-chosen step | profile |")
print("|---|---|---|")
for name, device, chosen in devices:
    theta = device.default_params() if device.n_params else None
    print(f"| {name} | {chosen if chosen is not None else '—'} | `{bg.calibrate(device, x, theta)!r}` |")
