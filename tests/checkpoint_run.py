"""A small training run through a noisy, drifting device, checkpointed: the subprocess of test_checkpoint.py.

``python checkpoint_run.py DIR STEPS EVERY`` (or ``main``) trains for STEPS steps, saving
``DIR/run.pt`` every EVERY steps and recording every evaluation into
``DIR/run.h5``; it resumes from the checkpoint when one is there.  It prints
``step N`` once step N is done (so that a test can kill it at a step), and
at the end writes ``DIR/final.pt``: the parameters, the ledger, the
device's own call count and the recording's abandoned range.

Everything random comes from fixed seeds: the model's initial weights and
the batches from torch's global generator (saved by the checkpoint), the
noise and drift from the device's generators, the probe directions from the
estimator's; the ``order`` of ``extra`` stands for a data loader's position.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import blackgrad as bg
from blackgrad.devices import Drifting, Linear, Noisy
from blackgrad.estimators import SPSA


def main(folder: Path, steps: int, every: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = Noisy(Drifting(Linear(4, 3, seed=1), rate=1e-3, seed=2), std=0.01, seed=3)
    box = bg.BlackBox(device, SPSA(directions=2, seed=4), params=device.default_params(), record=folder / "run.h5")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), box, torch.nn.Linear(3, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    progress = {"order": torch.randperm(64), "seen": 0}  # a data loader's shuffled order and position
    data = torch.randn(64, 4)
    target = data.sum(1, keepdim=True).sin()
    checkpoint = bg.Checkpoint(folder / "run.pt", model, optimizer, every=every, extra=progress)
    for step in range(checkpoint.restore(), steps):
        rows = progress["order"][progress["seen"] % 64 : progress["seen"] % 64 + 8]
        progress["seen"] += 8
        x = data[rows] + 0.01 * torch.randn(8, 4)  # the global generator, restored by the checkpoint
        loss = (model(x) - target[rows]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        checkpoint.step(step)
        print(f"step {step}", flush=True)
        time.sleep(0.002)  # a slower device: time for the test to kill the run part-way
    abandoned = checkpoint.abandoned.get(str(box.recorder.path), range(0))
    torch.save(
        {
            "parameters": [p.detach().clone() for p in model.parameters()],
            "ledger": box.calls.as_dict(),
            "device_calls": device.inner.calls,  # the drifting device's own count of the calls it answered
            "abandoned": (abandoned.start, abandoned.stop),
        },
        folder / "final.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
