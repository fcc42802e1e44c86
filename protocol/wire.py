"""The wire format of protocol v1 (SPEC.md §2): signed multipart messages, bounded unpacking, images.

Pure Python + msgpack + numpy, so it ships inside editor plug-ins (Blender) unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

VERSION = 1
MAX_HEADER_BYTES = 65536
MAX_ID_CHARS = 64


class ProtocolError(Exception):
    """A message that breaks the spec; `code` is the spec's error code, `ref` the message's id if read."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.ref = ref


@dataclass
class Limits:
    max_part_bytes: int = 64 * 2**20  # a 4K RGB frame is 25 MiB
    max_message_bytes: int = 2 * 2**30
    max_parts: int = 8192
    max_frames: int = 1024
    max_width: int = 4096
    max_height: int = 4096
    max_queue: int = 16
    max_header_bytes: int = MAX_HEADER_BYTES

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Message:
    header: dict[str, Any]
    parts: list[bytes | memoryview] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.header.get("type", "")


def new_key() -> str:
    return secrets.token_hex(32)


def new_id() -> str:
    return secrets.token_hex(8)


def sign(key: bytes, frames: list) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        mac.update(frame)
    return mac.hexdigest().encode()


def pack(key: bytes, header: dict[str, Any], parts: list | tuple = ()) -> list:
    """Header and parts → the frames to send: [signature, header, *parts]. Parts are not copied."""
    body = [msgpack.packb({"v": VERSION, **header}, use_bin_type=True), *parts]
    return [sign(key, body), *body]


def unpack(key: bytes, frames: list, limits: Limits) -> Message:
    """Verify and decode received frames (each bytes, memoryview or zmq.Frame).

    Raises ProtocolError("bad_signature") for a message to drop silently, any other code for one to
    answer with an `error`.
    """
    buffers = [f.buffer if hasattr(f, "buffer") else f for f in frames]
    if len(buffers) < 2:  # nothing to verify: as unsigned as a wrong signature
        raise ProtocolError("bad_signature", "a message needs a signature and a header frame")
    signature, body = bytes(buffers[0]), buffers[1:]
    if not hmac.compare_digest(signature, sign(key, body)):
        raise ProtocolError("bad_signature", "signature missing or wrong")
    if len(body[0]) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header over {limits.max_header_bytes} bytes")
    try:
        header = msgpack.unpackb(
            body[0], raw=False, strict_map_key=True, max_str_len=limits.max_header_bytes, max_bin_len=0,
            max_ext_len=0, max_array_len=limits.max_parts + 64, max_map_len=4096,
        )
    except Exception as exc:  # msgpack raises several types, all meaning "not a valid header"
        raise ProtocolError("malformed", f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed", "header must be a msgpack map")
    ref = header.get("id") if isinstance(header.get("id"), str) else None
    if header.get("v") != VERSION:
        raise ProtocolError("bad_version", f"protocol version {header.get('v')!r} is not spoken here (1 is)", ref)
    sizes = [len(part) for part in body[1:]]
    if len(sizes) > limits.max_parts:
        raise ProtocolError("too_large", f"more than {limits.max_parts} binary parts", ref)
    if sizes and max(sizes) > limits.max_part_bytes:
        raise ProtocolError("too_large", f"a part of {max(sizes)} bytes is over {limits.max_part_bytes}", ref)
    if sum(sizes) > limits.max_message_bytes:
        raise ProtocolError("too_large", f"message over {limits.max_message_bytes} bytes", ref)
    return Message(header, body[1:])


# -- header schema (SPEC.md §3) ------------------------------------------------------------------

_STR, _INT, _BOOL, _MAP, _LIST = str, int, bool, dict, list
REQUESTS: dict[str, dict[str, tuple[type, bool]]] = {
    "hello": {"versions": (_LIST, True), "client": (_STR, False)},
    "submit": {"settings": (_MAP, True), "inline": (_BOOL, True), "frames": (_LIST, False),
               "masks": (_LIST, False), "control_maps": (_LIST, False), "result_encoding": (_STR, False),
               "preview": (_BOOL, False)},
    "cancel": {"job": (_STR, True)},
    "status": {"job": (_STR, False)},
    "attach": {"job": (_STR, True), "from_frame": (_INT, True)},
    "ping": {},
    "shutdown": {},
}


def check_request(header: dict[str, Any]) -> None:
    """Check a request header's type and fields against the spec; ProtocolError otherwise."""
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in REQUESTS:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
    msg_id = header.get("id")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= MAX_ID_CHARS:
        raise ProtocolError("bad_header", f"'id' must be a string of 1 to {MAX_ID_CHARS} characters")
    for name, (kind_of, required) in REQUESTS[kind].items():
        if name not in header:
            if required:
                raise ProtocolError("bad_header", f"'{kind}' needs the field '{name}'")
            continue
        value = header[name]
        if not isinstance(value, kind_of) or (kind_of is int and isinstance(value, bool)):
            raise ProtocolError("bad_header", f"'{kind}.{name}' must be {kind_of.__name__}")


# -- images (SPEC.md §2.2) -----------------------------------------------------------------------

def raw_image(image: np.ndarray, part: int) -> tuple[dict[str, int | str], memoryview]:
    """Descriptor and zero-copy buffer for an (H, W), (H, W, 1|3|4) uint8 image."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    channels = 1 if image.ndim == 2 else image.shape[2]
    descriptor = {"part": part, "encoding": "raw", "width": image.shape[1], "height": image.shape[0], "channels": channels}
    return descriptor, memoryview(image).cast("B")


def decode_raw(descriptor: Any, parts: list, limits: Limits) -> np.ndarray:
    """Image of a `raw` descriptor as (H, W, C) uint8, checked against the part's size."""
    if not isinstance(descriptor, dict) or descriptor.get("encoding") != "raw":
        raise ProtocolError("bad_header", "expected a raw image descriptor")
    part = descriptor.get("part")
    width, height, channels = (descriptor.get(k) for k in ("width", "height", "channels"))
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (part, width, height, channels)):
        raise ProtocolError("bad_header", "image descriptor needs integer part, width, height, channels")
    if not 0 <= part < len(parts):
        raise ProtocolError("bad_header", f"image part {part} does not exist ({len(parts)} parts)")
    if not (0 < width <= limits.max_width and 0 < height <= limits.max_height) or channels not in (1, 3, 4):
        raise ProtocolError("bad_header", f"image {width}x{height}x{channels} is outside the limits")
    data = parts[part]
    if len(data) != width * height * channels:
        raise ProtocolError("bad_header", f"part {part} has {len(data)} bytes, {width}x{height}x{channels} needs {width * height * channels}")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)


# -- connection files (SPEC.md §1) ---------------------------------------------------------------

def write_connection_file(path: Path, address: str, key: str) -> None:
    """Write the connection file with mode 0600 from the start (never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"address": address, "key": key, "signature_scheme": "hmac-sha256", "protocol": VERSION,
                   "pid": os.getpid()}, handle)
    os.replace(tmp, path)


def read_connection_file(path: str | Path) -> dict[str, Any]:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ProtocolError("no_engine", f"cannot read connection file '{path}': {exc}") from None
    if not isinstance(info, dict) or not {"address", "key"} <= set(info):
        raise ProtocolError("no_engine", f"'{path}' is not a videograin connection file")
    return info
