"""The benchmark's hybrid physical–digital model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..devices import Device
from ..estimators.base import Estimator
from ..module import BlackBox


class HybridNet(nn.Module):
    """Digital → physical → … → digital: ``layers`` black boxes, each after a Linear+tanh.

    The tanh keeps every device input in ``[-1, 1]``, the range the devices
    are specified for.  Each black box owns its device parameters θ.  An estimator of None
    leaves the box to :class:`~blackgrad.module.BlackBox`'s own default.

    With ``normalize``, each device's output is batch-normalised before the
    next Linear (and the readout).  Without it a stack fades: an SHG layer's
    outputs vary little from sample to sample next to their mean, the next
    Linear's default initialisation passes on less of that variation, and by
    the third layer the device inputs hardly depend on the sample at all.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        devices: list[Device],
        estimators: list[Estimator | None],
        normalize: bool = False,
    ):
        super().__init__()
        self.encoders = nn.ModuleList()
        self.boxes = nn.ModuleList()
        self.devices = devices
        width = n_features
        for index, (device, estimator) in enumerate(zip(devices, estimators)):
            linear = nn.Linear(width, device.in_features)
            self.encoders.append(nn.Sequential(nn.BatchNorm1d(width), linear) if normalize and index > 0 else linear)
            params = device.default_params() if device.n_params else None
            self.boxes.append(BlackBox(device, estimator, params=params, name=f"{device.name}[{index}]"))
            width = device.out_features
        self.readout = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, n_classes)) if normalize else nn.Linear(width, n_classes)
        self.recorded: list[tuple[Tensor, Tensor]] = []  # (input, output) of each box, with record=True

    def forward(self, x: Tensor, record: bool = False) -> Tensor:
        """With ``record``, keep each box's input and output (with ``.grad`` after backward)."""
        self.recorded = []
        h = x
        for encoder, box in zip(self.encoders, self.boxes):
            u = torch.tanh(encoder(h))
            h = box(u)
            if record and u.requires_grad:
                u.retain_grad()
                h.retain_grad()
                self.recorded.append((u, h))
        return self.readout(h)

    def digital_parameters(self) -> list[nn.Parameter]:
        return [p for m in list(self.encoders) + [self.readout] for p in m.parameters()]

    def evaluations(self) -> int:
        return sum(box.calls.total for box in self.boxes)
