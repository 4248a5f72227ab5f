"""A device served over the network: ``serve`` on the lab PC, ``RemoteDevice`` on the trainer.

Needs the optional extra: ``pip install 'blackgrad[remote]'`` (pyzmq).
See docs/remote-device.md.
"""

from .errors import ProtocolError, RemoteDeviceError, RemoteError, RemoteRefused, RemoteUnavailable

try:
    import zmq  # noqa: F401
except ImportError as err:  # the core library works without the extra; this part does not
    raise ImportError(
        "blackgrad.remote needs pyzmq, which is not installed: pip install 'blackgrad[remote]'"
    ) from err

from .client import RemoteDevice, RemoteLedger
from .server import Server, ServerLedger, serve

__all__ = [
    "serve",
    "Server",
    "ServerLedger",
    "RemoteDevice",
    "RemoteLedger",
    "RemoteError",
    "RemoteUnavailable",
    "RemoteRefused",
    "RemoteDeviceError",
    "ProtocolError",
]
