"""The wire format: a JSON header frame followed by one raw frame per array.

A message is a ZeroMQ multipart message::

    frame 0   header, UTF-8 JSON object:  {"v": 1, ..., "arrays": [{"dtype": "<f4", "shape": [1024, 16]}, ...]}
    frame 1…  the arrays' bytes, C order, one frame each, in the header's order

Arrays travel as their raw bytes with the dtype and shape in the header —
never as text, and never pickled: a server must not unpickle what a stranger
sends it.  Only plain numeric dtypes (bool, integers, floats, complex) are
accepted; ``decode`` checks every header field and every frame size before
it builds an array, and raises :class:`ProtocolError` with what was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from .errors import ProtocolError

#: version of the wire format; client and server must agree
VERSION = 1
#: the largest header accepted, in bytes (a header only carries a few fields)
MAX_HEADER_BYTES = 64 * 1024
#: the most dimensions one array may have
MAX_DIMS = 32
#: numpy dtype kinds that may travel: bool, signed/unsigned integer, float, complex
KINDS = "biufc"


def wire_array(value: Any, what: str) -> np.ndarray:
    """``value`` (a tensor, array or nested sequence) as a C-contiguous numpy array that may travel.

    Raises TypeError naming ``what`` for anything that is not plain numbers
    (objects, strings, bfloat16, which numpy cannot hold).
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch here
        dtype = str(getattr(value, "dtype", ""))
        if dtype == "torch.bfloat16":
            raise TypeError(f"{what} is bfloat16, which has no wire format; cast it to float32 first")
        value = value.detach().cpu().resolve_conj().resolve_neg().numpy()
    try:
        array = np.ascontiguousarray(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is a {type(value).__name__}, not an array of numbers ({err})") from err
    if array.dtype.kind not in KINDS or array.dtype.fields is not None:
        raise TypeError(
            f"{what} has dtype {array.dtype}, which cannot travel: only bool, integer, float and complex arrays can"
        )
    return array


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[Any]:
    """The frames of a message: ``header`` (plus version and array descriptions), then the arrays' bytes."""
    header = dict(header, v=VERSION, arrays=[{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays])
    # flat byte views: zmq sends the arrays' own buffers without another copy
    return [json.dumps(header).encode(), *(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)) for a in arrays)]


def parse_header(frame: bytes) -> dict[str, Any]:
    """The header of a message, checked to be a JSON object of this protocol's version."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(frame)} bytes; at most {MAX_HEADER_BYTES} are accepted")
    try:
        header = json.loads(bytes(frame).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the first frame is not a UTF-8 JSON header ({err})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the header must be a JSON object, got {type(header).__name__}")
    if header.get("v") != VERSION:
        raise ProtocolError(
            f"protocol version {header.get('v')!r}, this side speaks version {VERSION}: "
            "install the same blackgrad version on client and server"
        )
    return header


def parse_arrays(header: dict[str, Any], frames: Sequence[Any]) -> list[np.ndarray]:
    """The arrays of a message whose header is ``header`` and whose array frames are ``frames``.

    Every array is a fresh, writable copy: a device may edit its input in place.
    """
    specs = header.get("arrays")
    if not isinstance(specs, list):
        raise ProtocolError("the header has no 'arrays' list")
    if len(specs) != len(frames):
        raise ProtocolError(f"the header describes {len(specs)} arrays but {len(frames)} array frames came")
    arrays = []
    for i, (spec, frame) in enumerate(zip(specs, frames)):
        if not isinstance(spec, dict):
            raise ProtocolError(f"array {i}: its description must be an object with 'dtype' and 'shape'")
        try:
            dtype = np.dtype(spec.get("dtype"))
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"array {i}: dtype {spec.get('dtype')!r} is not a numpy dtype ({err})") from None
        if dtype.kind not in KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise ProtocolError(f"array {i}: dtype {dtype} is not allowed (only bool, integer, float, complex)")
        shape = spec.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise ProtocolError(f"array {i}: shape {shape!r} is not a list of at most {MAX_DIMS} non-negative ints")
        buffer = memoryview(frame)
        expected = dtype.itemsize * math.prod(shape)  # Python ints: no overflow
        if buffer.nbytes != expected:
            raise ProtocolError(
                f"array {i}: {dtype} of shape {tuple(shape)} needs {expected} bytes, its frame has {buffer.nbytes}"
            )
        arrays.append(np.frombuffer(buffer, dtype=dtype).reshape(shape).copy())
    return arrays
