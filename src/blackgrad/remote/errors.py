"""The exceptions of a device served over the network (importable without pyzmq)."""

from __future__ import annotations

from ..errors import BlackGradError


class RemoteError(BlackGradError):
    """Base class of the errors of :mod:`blackgrad.remote`."""


class RemoteUnavailable(RemoteError):
    """No reply came from the server within the call's time-out (resends included)."""


class RemoteRefused(RemoteError):
    """The server refused the request: the token was missing or wrong.  Nothing was evaluated."""


class RemoteDeviceError(RemoteError):
    """The served device raised (or returned something unusable); the message is the device's own."""


class ProtocolError(RemoteError):
    """A message that does not follow the wire format (sent, or received)."""
