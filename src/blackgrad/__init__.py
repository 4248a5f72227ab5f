"""blackgrad: train models that contain a black box with ordinary PyTorch backprop.

The black box — a physical device, a simulator, non-differentiable code — runs
for real in the forward pass; a gradient estimator supplies the backward pass.
"""

from importlib import metadata as _metadata

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
from .function import gradiator, no_grad, nondifferentiable
from .module import BlackBox
from .checkpoint import Checkpoint
from .prober import Ledger, Prober, RetryPolicy

try:  # the version is the installed package's, written once in pyproject.toml
    __version__ = _metadata.version("blackgrad")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "BlackBox",
    "Checkpoint",
    "calibrate",
    "DeviceProfile",
    "gradiator",
    "nondifferentiable",
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
