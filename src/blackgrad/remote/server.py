"""The server in front of one device: any number of clients, one evaluation at a time.

One loop, in the thread that called :meth:`Server.run` (usually the main
thread, where the factory built the device: some instrument drivers insist
on it), owns the ZeroMQ ROUTER socket and the device.  It takes in every
message that has arrived — refusing those without the token, answering
status requests and malformed messages, replaying a reply it still
remembers, and appending evaluation requests to one FIFO queue — and then
evaluates the oldest request.  So the device sees exactly one evaluation at a
time, in arrival order, whatever the number of clients; a status request is
answered between two evaluations.  One thread means no hand-over between
threads on the way from the socket to the device and back, which is most of
what a round trip on one machine costs.
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import secrets
import sys
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import zmq

from .errors import ProtocolError
from .protocol import encode, parse_arrays, parse_header, wire_array

#: the longest client id accepted (clients send a 32-character uuid)
MAX_CLIENT_ID = 128
#: the most messages taken in between two evaluations (a flood of them must not starve the device)
MAX_INTAKE = 1000


@dataclasses.dataclass
class ServerLedger:
    """What a server did, answered by every status request.

    Attributes:
        samples: samples the device evaluated in calls that returned.
        calls: calls made to the device (those that raised included).
        seconds: wall time spent inside the device.
        errors: device calls that raised or returned something that is not an array.
        refusals: requests refused for a missing or wrong token (nothing evaluated).
        malformed: messages that broke the wire format (answered with an error, nothing evaluated).
        replayed: resent requests answered from memory or joined to their evaluation in progress,
            instead of being evaluated again.
    """

    samples: int = 0
    calls: int = 0
    seconds: float = 0.0
    errors: int = 0
    refusals: int = 0
    malformed: int = 0
    replayed: int = 0


class Server:
    """Serves ``device`` on ``tcp://host:port``; :meth:`run` blocks and evaluates.

    Args:
        device: ``device(x)`` or ``device(x, theta)``, as for
            :class:`~blackgrad.BlackBox`: a batch ``x`` of shape ``(B, ...)``
            (and a flat θ when the client sends one) in, a batch out.
        port: the TCP port; 0 picks a free one (see :attr:`address`).
        host: the interface to listen on: ``127.0.0.1`` (this machine only)
            unless told otherwise, e.g. ``0.0.0.0`` for every interface.
        token: the shared secret every request must carry; ``None``
            generates one with :mod:`secrets` (see :attr:`token`).
        numpy: hand the device numpy arrays instead of torch tensors.
        name: how the status and messages name the device.
        replay_cache: how many recent replies are remembered, by (client,
            request id), to answer a request resent after a lost reply.  A
            client only ever resends its latest request, so this is the
            number of clients that can lose a reply at the same time.
        replay_bytes: the most bytes those replies may hold together (the
            latest reply is always kept).
        max_message_bytes: larger messages are dropped by ZeroMQ (and their
            connection closed) before they reach memory.
        drop_replies: a fault-injection hook for tests: the first this many
            evaluation replies are computed and remembered but not sent, as
            if the network had lost them.
    """

    def __init__(
        self,
        device: Callable[..., Any],
        port: int = 5555,
        host: str = "127.0.0.1",
        token: str | None = None,
        *,
        numpy: bool = False,
        name: str | None = None,
        replay_cache: int = 64,
        replay_bytes: int = 2**28,
        max_message_bytes: int = 2**30,
        drop_replies: int = 0,
    ) -> None:
        if not callable(device):
            raise TypeError(f"serve needs a callable device, got {type(device).__name__}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string, or None to generate one")
        if not isinstance(replay_cache, int) or replay_cache < 1:
            raise ValueError(f"replay_cache must be a positive int, got {replay_cache!r}")
        if not isinstance(replay_bytes, int) or replay_bytes < 0:
            raise ValueError(f"replay_bytes must be a non-negative int, got {replay_bytes!r}")
        self.device = device
        self.numpy = numpy
        self.name = name or getattr(device, "name", None) or getattr(device, "__name__", None) or type(device).__name__
        self.token = token if token is not None else secrets.token_urlsafe(24)
        self.token_generated = token is None
        self.ledger = ServerLedger()
        self._replay_size = replay_cache
        self._replay_bytes = replay_bytes
        self._replies_bytes = 0
        self._drop = drop_replies
        self._stop = threading.Event()
        self._queue: collections.deque[tuple[tuple[str, int], list[np.ndarray]]] = collections.deque()
        # who waits for each queued request (the newest connection it came on), and the replies remembered
        self._pending: dict[tuple[str, int], bytes] = {}
        self._replies: collections.OrderedDict[tuple[str, int], list[Any]] = collections.OrderedDict()

        self._context = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        try:
            if port == 0:
                self._router.bind(f"tcp://{host}:*")
            else:
                self._router.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as err:
            self._context.destroy(linger=0)
            raise OSError(
                f"cannot listen on tcp://{host}:{port}: {err} (is another server using the port? choose another "
                "with port=/--port; is the host an address of this machine?)"
            ) from None
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.address.rsplit(":", 1)[1])

    # ------------------------------------------------------------------ public
    def run(self) -> ServerLedger:
        """Serve until :meth:`stop` (or Ctrl-C); returns the ledger.  The device runs in this thread."""
        try:
            while not self._stop.is_set():
                # take in what has arrived (waiting a little only when there is nothing to do) ...
                wait = 0 if self._queue else 100
                for _ in range(MAX_INTAKE):
                    if not self._router.poll(wait, zmq.POLLIN):
                        break
                    wait = 0
                    frames = self._router.recv_multipart(copy=False)
                    try:
                        self._handle(frames[0].bytes, frames[1:])
                    except Exception:  # a bug answering one message must not end the service
                        traceback.print_exc(file=sys.stderr)
                # ... then evaluate the oldest request
                if self._queue:
                    key, arrays = self._queue.popleft()
                    self._send_result(key, self._evaluate(key[1], arrays))
        finally:
            self._context.destroy(linger=0)
        return self.ledger

    def stop(self) -> None:
        """Ask :meth:`run` to return (from any thread); the evaluation in progress finishes first."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """The ledger, the number of requests waiting and the device's name, as a status request answers them."""
        return dict(dataclasses.asdict(self.ledger), queue=len(self._queue), device=self.name)

    # --------------------------------------------------------------- internal
    def _evaluate(self, request_id: int, arrays: list[np.ndarray]) -> list[Any]:
        """One device call; the reply's frames (the output, or the device's error)."""
        args: tuple[Any, ...] = tuple(arrays)
        if not self.numpy:
            import torch

            args = tuple(torch.from_numpy(a) for a in args)
        start = time.perf_counter()
        try:
            output = wire_array(self.device(*args), "the device's output")
        except Exception as err:  # the device's failure is the client's to hear, not the server's end
            traceback.print_exc(file=sys.stderr)
            self.ledger.calls += 1
            self.ledger.errors += 1
            self.ledger.seconds += time.perf_counter() - start
            return encode({"id": request_id, "ok": False, "error": "device", "type": type(err).__name__, "message": str(err)})
        self.ledger.calls += 1
        self.ledger.samples += int(arrays[0].shape[0])
        self.ledger.seconds += time.perf_counter() - start
        return encode({"id": request_id, "ok": True}, [output])

    def _handle(self, identity: bytes, body: list[Any]) -> None:
        if not body:
            self._malformed(identity, None, "an empty message")
            return
        try:
            header = parse_header(body[0].buffer)
        except ProtocolError as err:
            self._malformed(identity, None, str(err))
            return
        request_id = header.get("id")
        given = header.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
            self.ledger.refusals += 1
            reason = "no token" if given is None else "a wrong token"
            self._reply(identity, {"id": request_id, "ok": False, "error": "refused", "message": f"the request carried {reason}"})
            return
        op = header.get("op")
        if op == "status":
            self._reply(identity, {"id": request_id, "ok": True, "status": self.status()})
            return
        if op != "eval":
            self._malformed(identity, request_id, f"unknown op {op!r}; expected 'eval' or 'status'")
            return
        client = header.get("client")
        if not isinstance(client, str) or not 0 < len(client) <= MAX_CLIENT_ID:
            self._malformed(identity, request_id, f"'client' must be a string of 1 to {MAX_CLIENT_ID} characters")
            return
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            self._malformed(identity, request_id, "'id' must be an integer")
            return
        key = (client, request_id)
        if key in self._replies:  # a resend after a lost reply: answer from memory
            self.ledger.replayed += 1
            self._replies.move_to_end(key)
            self._router.send_multipart([identity, *self._replies[key]])
            return
        if key in self._pending:  # a resend while it waits: answer the newest connection when its turn comes
            self.ledger.replayed += 1
            self._pending[key] = identity
            return
        try:
            arrays = parse_arrays(header, body[1:])
        except ProtocolError as err:
            self._malformed(identity, request_id, str(err))
            return
        if len(arrays) not in (1, 2) or arrays[0].ndim == 0 or (len(arrays) == 2 and arrays[1].ndim != 1):
            shapes = [tuple(a.shape) for a in arrays]
            self._malformed(identity, request_id, f"an evaluation sends x (B, ...) and optionally a flat theta, got shapes {shapes}")
            return
        self._pending[key] = identity
        self._queue.append((key, arrays))

    def _send_result(self, key: tuple[str, int], frames: list[Any]) -> None:
        identity = self._pending.pop(key)
        self._replies[key] = frames
        self._replies_bytes += _size(frames)
        while len(self._replies) > 1 and (
            len(self._replies) > self._replay_size or self._replies_bytes > self._replay_bytes
        ):
            self._replies_bytes -= _size(self._replies.popitem(last=False)[1])
        if self._drop > 0:  # the fault-injection hook: as if this reply were lost on the way
            self._drop -= 1
            return
        # a client that left meanwhile is no longer routable: ROUTER drops the reply, and we go on
        self._router.send_multipart([identity, *frames])

    def _reply(self, identity: bytes, header: dict[str, Any]) -> None:
        self._router.send_multipart([identity, *encode(header)])

    def _malformed(self, identity: bytes, request_id: Any, message: str) -> None:
        self.ledger.malformed += 1
        if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
            request_id = None
        self._reply(identity, {"id": request_id, "ok": False, "error": "malformed", "message": message})


def _size(frames: list[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def serve(
    device: Callable[..., Any],
    port: int = 5555,
    host: str = "127.0.0.1",
    token: str | None = None,
    *,
    numpy: bool = False,
    name: str | None = None,
    replay_cache: int = 64,
    replay_bytes: int = 2**28,
    drop_replies: int = 0,
    announce: Callable[[str], None] | None = print,
) -> ServerLedger:
    """Serve ``device`` to the network until interrupted (Ctrl-C); returns the server's ledger.

    The device runs in the calling thread, one evaluation at a time, in the
    order requests arrive.  Clients connect with
    :class:`~blackgrad.remote.RemoteDevice` and must send the token: the one
    given, or — when ``token`` is None — one generated here and printed at
    start.  ``announce`` receives the start-up lines (address, token,
    advice); None prints nothing.  The other arguments are :class:`Server`'s.

    Example (on the lab PC)::

        from blackgrad.remote import serve
        serve(camera, port=5555, numpy=True)   # prints the address and the token
    """
    server = Server(
        device, port, host, token, numpy=numpy, name=name, replay_cache=replay_cache, replay_bytes=replay_bytes,
        drop_replies=drop_replies,
    )
    if announce is not None:
        for line in startup_lines(server, host):
            announce(line)
    try:
        return server.run()
    except KeyboardInterrupt:
        return server.ledger


def startup_lines(server: Server, host: str) -> list[str]:
    """What a starting server tells its operator: where it listens, the token, and the exposure."""
    lines = [f"blackgrad: serving {server.name} at {server.address}"]
    if server.token_generated:
        lines.append(f"token: {server.token}")
        lines.append("(clients pass it as RemoteDevice(address, token=...); give --token/token= to keep one across restarts)")
    else:
        lines.append("token: as given")
    if host not in ("127.0.0.1", "localhost", "::1"):
        lines.append(
            f"listening on {host}, not only this machine: let the firewall admit port {server.port} from the "
            "trainer's address alone; the token travels unencrypted, so outside a trusted network use an SSH tunnel"
        )
    return lines
