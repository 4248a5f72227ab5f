"""blackgrad: train models that contain a black box with ordinary PyTorch backprop.

The black box — a physical device, a simulator, non-differentiable code — runs
for real in the forward pass; a gradient estimator supplies the backward pass.
"""

from . import activations, devices, estimators, losses, nets, transforms
from .calibration import DeviceProfile, calibrate
from .errors import (
    BlackGradError,
    BudgetExhausted,
    CheckpointError,
    DeviceError,
    DeviceOutputError,
    DeviceTimeout,
    GradientShapeError,
    InputShapeError,
    NoGradientError,
    PoolError,
)
from .function import gradiator, no_grad
from .module import BlackBox
from .checkpoint import Checkpoint
from .prober import Ledger, Prober, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "BlackBox",
    "Checkpoint",
    "calibrate",
    "DeviceProfile",
    "gradiator",
    "no_grad",
    "estimators",
    "devices",
    "nets",
    "losses",
    "activations",
    "transforms",
    "Ledger",
    "Prober",
    "RetryPolicy",
    "BlackGradError",
    "BudgetExhausted",
    "CheckpointError",
    "DeviceError",
    "DeviceOutputError",
    "DeviceTimeout",
    "GradientShapeError",
    "InputShapeError",
    "NoGradientError",
    "PoolError",
]
