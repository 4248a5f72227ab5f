"""``RemoteDevice``: a device served elsewhere, called like a local one."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from typing import Any

import numpy as np
import zmq

from .errors import ProtocolError, RemoteDeviceError, RemoteRefused, RemoteUnavailable
from .protocol import encode, parse_arrays, parse_header, wire_array


@dataclasses.dataclass
class RemoteLedger:
    """What one :class:`RemoteDevice` got from its server.

    Attributes:
        samples: samples evaluated in calls that returned an output.
        calls: device calls answered (those where the device raised included).
        errors: calls the device answered with an error.
        seconds: wall time of the answered calls, round trips included.
        resends: requests sent again after ``retry_interval`` without a reply.
    """

    samples: int = 0
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    resends: int = 0

    def reset(self) -> None:
        """Set every count back to zero."""
        self.samples = self.calls = self.errors = self.resends = 0
        self.seconds = 0.0


class RemoteDevice:
    """A device served by ``blackgrad serve`` (or :func:`~blackgrad.remote.serve`), as a callable.

    ``RemoteDevice(address, token=...)`` is used wherever a device is:
    ``BlackBox(RemoteDevice("tcp://lab-pc:5555", token=token), ...)``, with
    or without ``params`` (θ travels with every call) and with or without
    ``numpy=True`` (it answers numpy arrays when called with numpy arrays,
    tensors otherwise).  Inputs and outputs travel as raw bytes with their
    dtype and shape.

    Args:
        address: the server's address, ``tcp://host:port`` (``host:port``
            is read as TCP).
        token: the token the server printed at start (or was given).
        timeout: the longest one call waits for its reply, in seconds,
            resends included; then :class:`~blackgrad.remote.RemoteUnavailable`
            names the address and what to check.  Make it longer than the
            device's slowest call plus the queue ahead of it.
        retry_interval: after this long without a reply the request is sent
            again on a fresh connection (the "lazy pirate" pattern), with the
            same request id: a server that already evaluated it answers from
            memory, one still evaluating it answers when done — the device
            is never evaluated twice for one call.
        name: how errors and a :class:`~blackgrad.BlackBox` name the device.

    One call at a time goes through a ``RemoteDevice`` (calls from several
    threads wait for each other); several ``RemoteDevice`` objects may
    share one server, which evaluates their requests one at a time in
    arrival order.  A copy made by pickling (a worker process) is a new
    client with its own id and ledger.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry_interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"address must be a string such as 'tcp://lab-pc:5555', got {address!r}")
        if "://" not in address:
            address = f"tcp://{address}"
        if not address.startswith(("tcp://", "ipc://")) or address.endswith(":"):
            raise ValueError(f"address must look like 'tcp://host:port', got {address!r}")
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a string (the one the server printed), got {type(token).__name__}")
        if not timeout > 0 or not retry_interval > 0:
            raise ValueError(f"timeout and retry_interval must be > 0 seconds, got {timeout!r} and {retry_interval!r}")
        self.address = address
        self.token = token
        self.timeout = float(timeout)
        self.retry_interval = float(retry_interval)
        self.name = name or f"remote device at {address}"
        self._start()

    def _start(self) -> None:
        self.client_id = uuid.uuid4().hex  # (client id, request id) names a request for the server's memory
        self.calls = RemoteLedger()
        self._next_id = 0
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public
    def __call__(self, x: Any, theta: Any = None) -> Any:
        """Evaluate a batch ``x`` (and θ) on the served device; the output in x's kind (tensor or numpy)."""
        arrays = [wire_array(x, "the input x")]
        if arrays[0].ndim == 0:
            raise ValueError(f"{self.name}: x must be a batch (B, ...), got a scalar")
        if theta is not None:
            arrays.append(wire_array(theta, "theta").reshape(-1))
        start = time.perf_counter()
        header, outputs = self._request({"op": "eval"}, arrays)
        if not header.get("ok"):
            if header.get("error") == "device":  # the device ran and raised: a call, as the server counts it
                self._count(start, error=True)
                raise RemoteDeviceError(
                    f"the device served at {self.address} raised {header.get('type', 'an error')}: {header.get('message')}"
                )
            self._raise_refusal(header)
        if len(outputs) != 1:
            raise ProtocolError(f"{self.address} answered an evaluation with {len(outputs)} arrays instead of one")
        self._count(start, samples=int(arrays[0].shape[0]))
        output = outputs[0]
        if isinstance(x, np.ndarray):
            return output
        import torch

        return torch.from_numpy(output)

    def status(self) -> dict[str, Any]:
        """The server's ledger (samples, calls, seconds, errors, refusals, malformed, replayed), queue and device."""
        header, _ = self._request({"op": "status"}, [])
        if not header.get("ok"):
            self._raise_refusal(header)
        return header["status"]

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            self._drop_socket()

    def __enter__(self) -> "RemoteDevice":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("address", "token", "timeout", "retry_interval", "name")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()  # a new client: a shared id would let two processes be answered each other's replies

    def __repr__(self) -> str:
        return f"RemoteDevice({self.address!r}, timeout={self.timeout:g})"

    # ---------------------------------------------------------------- internal
    def _request(self, header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Send one request and wait for its reply, resending on fresh connections until ``timeout``."""
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            frames = encode(dict(header, id=request_id, client=self.client_id, token=self.token), arrays)
            deadline = time.monotonic() + self.timeout
            sends = 0
            while True:
                if self._socket is None:
                    self._socket = zmq.Context.instance().socket(zmq.DEALER)
                    self._socket.setsockopt(zmq.LINGER, 0)
                    self._socket.connect(self.address)
                self._socket.send_multipart(frames)
                sends += 1
                wait_until = min(deadline, time.monotonic() + self.retry_interval)
                while (left := wait_until - time.monotonic()) > 0:
                    if not self._socket.poll(max(1, int(left * 1000))):
                        continue
                    reply = self._socket.recv_multipart(copy=False)
                    reply_header = parse_header(reply[0].buffer)
                    if reply_header.get("id") not in (request_id, None):
                        continue  # a late answer to an earlier request: not ours
                    if reply_header.get("ok") is False and reply_header.get("error") == "malformed":
                        raise ProtocolError(f"{self.address} could not read the request: {reply_header.get('message')}")
                    return reply_header, parse_arrays(reply_header, reply[1:])
                # No reply in time: the request or its reply may be lost, or the connection stuck.
                # A fresh socket forgets both; the resend carries the same id.
                self._drop_socket()
                if time.monotonic() >= deadline:
                    raise RemoteUnavailable(
                        f"no reply from {self.address} within timeout={self.timeout:g} s ({sends} sends). Check that "
                        f"`blackgrad serve` is running there and listening on that address and port (it binds to "
                        f"127.0.0.1 unless given --host), that a firewall lets TCP through to the port, and that the "
                        f"device answers a call in less than the timeout (raise timeout= for a slow device or a long queue). "
                        f"A wrong token is not the cause: the server answers it with a refusal"
                    )
                self.calls.resends += 1

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _count(self, start: float, samples: int = 0, error: bool = False) -> None:
        self.calls.calls += 1
        self.calls.samples += samples
        self.calls.errors += int(error)
        self.calls.seconds += time.perf_counter() - start

    def _raise_refusal(self, header: dict[str, Any]) -> None:
        if header.get("error") == "refused":
            raise RemoteRefused(
                f"{self.address} refused the request: {header.get('message')}; nothing was evaluated. Pass the token "
                "the server printed at start: RemoteDevice(address, token=...)"
            )
        raise ProtocolError(f"{self.address} answered {header!r}, which is not a reply this client understands")
