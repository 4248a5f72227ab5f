"""The exceptions blackgrad raises.

Every failure says what was wrong and where; none of them is ever turned into a
warning or a silently wrong gradient.
"""

from __future__ import annotations


class BlackGradError(Exception):
    """Base class of all errors raised by blackgrad."""


class DeviceError(BlackGradError):
    """The black box raised, even after the retries the policy allows."""


class DeviceTimeout(DeviceError, TimeoutError):
    """A device call did not answer within the black box's ``timeout``, even after the retries allowed.

    The call was abandoned, not stopped: Python cannot kill a running
    function, so a hung call may go on in its worker thread; whatever it
    returns later is discarded and never counted twice.
    """


class PoolError(DeviceError):
    """Every worker of a device pool failed on a request, or a pool could not start its workers."""


class DeviceOutputError(BlackGradError):
    """The black box returned something unusable: wrong shape, type, NaN or Inf."""


class InputShapeError(BlackGradError, ValueError):
    """An input to a black box or an estimator has the wrong shape."""


class BudgetExhausted(BlackGradError):
    """The evaluation budget of a black box is spent; no evaluation was made."""


class NoGradientError(BlackGradError, RuntimeError):
    """A gradient was needed through a function declared to have none."""


class GradientShapeError(BlackGradError, ValueError):
    """A user-supplied gradient function returned the wrong number or shape of gradients."""


class CheckpointError(BlackGradError):
    """A checkpoint cannot be read, or does not fit the run restoring it; nothing was restored."""
