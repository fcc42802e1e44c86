"""The wire format of protocol v1 (SPEC.md §1-2): signed multipart messages, part MACs, bounded
unpacking, images, connection files.

Pure Python + msgpack + numpy, so it ships inside editor plug-ins (Blender) unchanged. `cryptography`
is optional here: without it a side speaks no part-MAC scheme and signs whole messages (SPEC.md §2.3).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

try:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # a plug-in shipped without the wheel still speaks full-message HMAC
    AESGCM = None

VERSION = 1
MAX_ID_CHARS = 64
DEFAULT_CONNECTION_FILE = Path.home() / ".videograin" / "engine.json"
FRESHNESS_WINDOW_MS = 60_000  # a request's `ts` may be this far from the engine's clock (SPEC.md §2.5)
MAX_PID = 2**31  # pid_t is a signed 32-bit integer (Windows process ids are 32-bit too)

GMAC = "gmac-aes256"
PART_MACS: tuple[str, ...] = (GMAC,) if AESGCM is not None else ()
PART_KEY_LABEL = b"videograin-part-mac-v1"
NONCE_BYTES = 16

# Every advertised limit is reachable together (SPEC.md §5): a submit of max_frames frames, with mattes
# for up to 6 regions and control maps, fits max_parts, and its header fits max_header_bytes.
PARTS_PER_FRAME = 8
HEADER_BASE_BYTES = 65536  # settings and the fixed fields
BYTES_PER_PART = 128  # a raw descriptor with 64-bit integers (77 bytes) plus its part tag (34 bytes)


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
    max_frames: int = 1024
    max_width: int = 4096
    max_height: int = 4096
    max_queue: int = 16
    max_connections: int = 64  # peers served at once; one more gets `busy` (SPEC.md §5)
    max_parts: int = 0  # 0: derived from max_frames
    max_header_bytes: int = 0  # 0: derived from max_parts

    def __post_init__(self) -> None:
        self.max_parts = self.max_parts or PARTS_PER_FRAME * self.max_frames
        self.max_header_bytes = self.max_header_bytes or HEADER_BASE_BYTES + BYTES_PER_PART * self.max_parts

    @property
    def max_frame_bytes(self) -> int:
        """The largest ZeroMQ frame the engine's socket takes (SPEC.md §5); a larger one closes the connection."""
        return max(self.max_part_bytes, self.max_header_bytes) + 2**20

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


def timestamp_ms() -> int:
    """A request's `ts` (SPEC.md §2.5): milliseconds since the Unix epoch, now."""
    return time.time_ns() // 1_000_000


def sign(key: bytes, frames: list) -> bytes:
    """Lowercase hex HMAC-SHA256 over the frames concatenated (SPEC.md §2.1)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        mac.update(frame)
    return mac.hexdigest().encode()


def part_tags(key: bytes, nonce: bytes, parts: list | tuple) -> list[str]:
    """One GMAC tag per part (SPEC.md §2.3): AES-256-GCM under a key derived for this message alone,
    the part as additional data, nothing encrypted; the part's index is the IV."""
    message_key = hmac.new(key, PART_KEY_LABEL + nonce, hashlib.sha256).digest()
    gmac = AESGCM(message_key)
    return [gmac.encrypt(index.to_bytes(12, "big"), b"", part).hex() for index, part in enumerate(parts)]


def pack(key: bytes, header: dict[str, Any], parts: list | tuple = (), part_mac: str | None = None) -> list:
    """Header and parts → the frames to send: [signature, header, *parts]. Parts are not copied.

    With `part_mac` (a scheme both sides speak) and parts to send, the signature covers the header
    alone and the header lists one MAC per part; otherwise the signature covers every frame."""
    header = {"v": VERSION, **header}
    if part_mac is None or not parts:
        body = [msgpack.packb(header, use_bin_type=True), *parts]
        return [sign(key, body), *body]
    if part_mac not in PART_MACS:
        raise ValueError(f"part MAC scheme '{part_mac}' is not spoken here (speaks: {list(PART_MACS)})")
    nonce = secrets.token_bytes(NONCE_BYTES)
    header["part_mac"] = {"scheme": part_mac, "nonce": nonce.hex(), "tags": part_tags(key, nonce, parts)}
    packed = msgpack.packb(header, use_bin_type=True)
    return [sign(key, [packed]), packed, *parts]


def unpack(key: bytes, frames: list, limits: Limits) -> Message:
    """Verify and decode received frames (each bytes, memoryview or zmq.Frame).

    Raises ProtocolError("bad_signature") for a message to drop silently, any other code for one to
    answer with an `error`. Nothing unauthenticated is unpacked, and nothing is answered before every
    byte of the message is authenticated.
    """
    buffers = [f.buffer if hasattr(f, "buffer") else f for f in frames]
    if len(buffers) < 2:  # nothing to verify: as unsigned as a wrong signature
        raise ProtocolError("bad_signature", "a message needs a signature and a header frame")
    signature, header_bytes, parts = bytes(buffers[0]).lower(), buffers[1], buffers[2:]
    header_signed = hmac.compare_digest(signature, sign(key, [header_bytes]))
    if not header_signed and not (parts and hmac.compare_digest(signature, sign(key, buffers[1:]))):
        raise ProtocolError("bad_signature", "signature missing or wrong")
    if len(header_bytes) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header of {len(header_bytes)} bytes is over {limits.max_header_bytes}",
                            read_id(header_bytes))
    header = _decode_header(header_bytes, limits)
    # Signed alone, the header must vouch for the parts' bytes. Without any (no parts, or empty ones)
    # the message is valid in both forms and there is nothing more to check.
    if header_signed and any(len(part) for part in parts):
        _verify_part_macs(key, header.get("part_mac"), parts)
    ref = header.get("id") if isinstance(header.get("id"), str) else None
    version = header.get("v")
    if type(version) is not int or version != VERSION:  # 1.0 and true are not the integer 1 (SPEC.md §2.1)
        raise ProtocolError("bad_version", f"protocol version {version!r} is not spoken here (1 is)", ref)
    check_part_sizes(parts, limits, ref)
    return Message(header, parts)


def overlong_signed(key: bytes, head: list, rest: Iterable[bytes]) -> tuple[bool, int]:
    """Whether a message too long to hold ([signature, header, parts...] = `head` then `rest`, consumed
    once, nothing kept) is signed in either form of §2.2, and how many frames it had."""
    signature, header = bytes(head[0]).lower(), head[1]
    whole = hmac.new(key, digestmod=hashlib.sha256)
    count = 0
    for count, frame in enumerate(itertools.chain(head[1:], rest), start=2):
        whole.update(frame)
    header_signed = hmac.compare_digest(signature, sign(key, [header]))
    return header_signed or hmac.compare_digest(signature, whole.hexdigest().encode()), count


def check_part_sizes(parts: list | tuple, limits: Limits, ref: str | None = None) -> None:
    """ProtocolError("too_large") for parts past `limits` (SPEC.md §5): the engine's check on receipt, and
    a client's before sending (a frame past the cap would close its connection without a reply)."""
    sizes = [len(part) for part in parts]
    if len(sizes) > limits.max_parts:
        raise ProtocolError("too_large", f"more than {limits.max_parts} binary parts", ref)
    if sizes and max(sizes) > limits.max_part_bytes:
        raise ProtocolError("too_large", f"a part of {max(sizes)} bytes is over {limits.max_part_bytes}", ref)
    if sum(sizes) > limits.max_message_bytes:
        raise ProtocolError("too_large", f"message over {limits.max_message_bytes} bytes", ref)


def _decode_header(header_bytes: Any, limits: Limits) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(
            header_bytes, raw=False, strict_map_key=True, max_str_len=limits.max_header_bytes,
            max_bin_len=limits.max_header_bytes, max_ext_len=0, max_array_len=limits.max_parts + 64, max_map_len=4096,
        )
    except Exception as exc:  # msgpack raises several types, all meaning "not a valid header"
        ref = read_id(header_bytes) if _whole_map(header_bytes) else None  # a map after all: say which request
        reason = str(exc)[:200] or type(exc).__name__  # e.g. "int is not allowed for map key ..."
        raise ProtocolError("malformed", f"header refused by msgpack: {reason}", ref) from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed", "header must be a msgpack map")
    if not all(isinstance(name, str) for name in header):
        raise ProtocolError("malformed", "header keys must be msgpack str", read_id(header_bytes))
    return header


def _whole_map(header_bytes: Any) -> bool:
    """Whether a header the bounded unpacker refused is a whole msgpack map all the same (a key that is not
    a str, a list longer than a header needs), as opposed to bytes that are no msgpack map at all."""
    try:
        return isinstance(msgpack.unpackb(header_bytes, raw=False, strict_map_key=False, max_ext_len=0), dict)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException):  # not msgpack, or cut short
        return False


def _verify_part_macs(key: bytes, part_mac: Any, parts: list) -> None:
    """Check a header-signed message's parts against the MACs its header lists; drop it otherwise."""
    if not isinstance(part_mac, dict) or part_mac.get("scheme") not in PART_MACS:
        raise ProtocolError("bad_signature", "parts without a part MAC scheme spoken here")
    nonce, tags = part_mac.get("nonce"), part_mac.get("tags")
    if not (isinstance(nonce, str) and len(nonce) == 2 * NONCE_BYTES and isinstance(tags, list)
            and len(tags) == len(parts) and all(isinstance(tag, str) for tag in tags)):
        raise ProtocolError("bad_signature", "part MACs do not match the parts")
    try:
        expected = part_tags(key, bytes.fromhex(nonce), parts)
    except ValueError:
        raise ProtocolError("bad_signature", "part MAC nonce is not hex") from None
    # Every tag is compared, so the time taken says nothing about which one failed.
    matches = [hmac.compare_digest(tag.lower().encode(), wanted.encode()) for tag, wanted in zip(tags, expected)]
    if not all(matches):
        raise ProtocolError("bad_signature", "a part does not match its MAC")


def read_id(header_bytes: Any) -> str | None:
    """The `id` of a header too large to unpack: its other values are skipped, never built."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(header_bytes), 1))
    try:
        unpacker.feed(header_bytes)
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == "id":
                value = unpacker.unpack()
                return value if isinstance(value, str) and len(value) <= MAX_ID_CHARS else None
            unpacker.skip()
    except Exception:  # not a map, or cut short: no id to read
        pass
    return None


# -- header schema (SPEC.md §3) ------------------------------------------------------------------

_STR, _INT, _BOOL, _MAP, _LIST = str, int, bool, dict, list
_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", dict: "a map", list: "a list"}

# Request type → its fields: (type, required). A new request is one entry here plus its handler
# (`EngineServer._on_<type>`).
REQUESTS: dict[str, dict[str, tuple[type, bool]]] = {
    "hello": {"versions": (_LIST, True), "client": (_STR, False), "part_macs": (_LIST, False)},
    "submit": {"settings": (_MAP, True), "inline": (_BOOL, True), "frames": (_LIST, False),
               "masks": (_LIST, False), "control_maps": (_LIST, False), "result_encoding": (_STR, False),
               "preview": (_BOOL, False), "preview_every": (_INT, False), "attention_maps": (_BOOL, False)},
    "check": {"settings": (_MAP, True), "inline": (_BOOL, True), "frames": (_LIST, False), "masks": (_LIST, False),
              "control_maps": (_LIST, False), "layout_frames": (_LIST, False)},
    "cancel": {"job": (_STR, True)},
    "status": {"job": (_STR, False)},
    "attach": {"job": (_STR, True), "from_frame": (_INT, True)},
    "ping": {},
    "shutdown": {},
    "track": {"inline": (_BOOL, True), "regions": (_LIST, True), "frames": (_LIST, False), "source": (_MAP, False),
              "result_encoding": (_STR, False)},
}


def check_request(header: dict[str, Any]) -> None:
    """Check a request header's type and fields against the spec; ProtocolError otherwise.

    An optional field sent as nil counts as absent (a JavaScript `undefined` encodes to nil): it is
    removed from `header`."""
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in REQUESTS:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r} (known: {', '.join(REQUESTS)})")
    msg_id = header.get("id")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= MAX_ID_CHARS:
        raise ProtocolError("bad_header", f"'id' must be a string of 1 to {MAX_ID_CHARS} characters")
    for name, (kind_of, required) in REQUESTS[kind].items():
        if header.get(name) is None and not required:
            header.pop(name, None)
            continue
        if name not in header:
            raise ProtocolError("bad_header", f"'{kind}' needs the field '{name}'")
        value = header[name]
        if not isinstance(value, kind_of) or (kind_of is int and isinstance(value, bool)):
            raise ProtocolError("bad_header", f"'{kind}.{name}' must be {_TYPE_WORDS[kind_of]}, got {_type_word(value)}")


def _type_word(value: Any) -> str:
    """A received value's msgpack type, as the spec names types."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, bytes):
        return "bin (strings must be msgpack str)"
    if isinstance(value, float):
        return "a float"
    return next((word for kind, word in _TYPE_WORDS.items() if isinstance(value, kind)), type(value).__name__)


# -- images (SPEC.md §2.4) -----------------------------------------------------------------------

def raw_image(image: np.ndarray, part: int) -> tuple[dict[str, int | str], memoryview]:
    """Descriptor and zero-copy buffer for an (H, W), (H, W, 1|3|4) uint8 image."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    channels = 1 if image.ndim == 2 else image.shape[2]
    descriptor = {"part": part, "encoding": "raw", "width": image.shape[1], "height": image.shape[0], "channels": channels}
    return descriptor, memoryview(image).cast("B")


def decode_raw(descriptor: Any, parts: list, limits: Limits) -> np.ndarray:
    """Image of a `raw` descriptor as (H, W, C) uint8, checked against the part's size."""
    if not isinstance(descriptor, dict) or descriptor.get("encoding") != "raw":
        raise ProtocolError("bad_header", "expected an image descriptor with encoding 'raw' or 'png'")
    part = descriptor.get("part")
    width, height, channels = (descriptor.get(k) for k in ("width", "height", "channels"))
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (part, width, height, channels)):
        raise ProtocolError("bad_header", "a raw image descriptor needs integer part, width, height and channels")
    if not 0 <= part < len(parts):
        raise ProtocolError("bad_header", f"image part {part} does not exist ({len(parts)} parts)")
    if not (0 < width <= limits.max_width and 0 < height <= limits.max_height) or channels not in (1, 3, 4):
        raise ProtocolError("bad_header", f"image {width}x{height}x{channels} is outside the limits")
    data = parts[part]
    if len(data) != width * height * channels:
        raise ProtocolError("bad_header", f"part {part} has {len(data)} bytes, {width}x{height}x{channels} needs {width * height * channels}")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)


# -- connection files (SPEC.md §1) ---------------------------------------------------------------

def write_connection_file(path: Path, address: str, key: str, curve: dict[str, str] | None = None) -> None:
    """Write the engine's connection file (SPEC.md §1). `curve`: the CURVE keys (§1.1) of an engine that
    speaks it."""
    info = {"address": address, "key": key, "signature_scheme": "hmac-sha256", "part_macs": list(PART_MACS),
            "protocol": VERSION, "pid": os.getpid(), "host": socket.gethostname()}
    if curve is not None:
        info["curve"] = curve
    write_private_json(path, info)


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON with mode 0600 from the start (never readable by others): under a fresh random name,
    opened with O_EXCL and O_NOFOLLOW (nothing planted there is written through), then renamed over
    `path`. A folder made for it is 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(8):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:  # taken (or planted): another random name
            continue
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    raise OSError(f"no free temporary name beside '{path}'")


def read_connection_file(path: str | Path) -> dict[str, Any]:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ProtocolError("no_engine", f"cannot read connection file '{path}': {exc}") from None
    if not isinstance(info, dict) or not {"address", "key"} <= set(info):
        raise ProtocolError("no_engine", f"'{path}' is not a videograin connection file")
    return info


def stale_pid(info: dict[str, Any]) -> int | None:
    """The pid of a connection file whose engine ran on this machine and is no longer running."""
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or info.get("host") != socket.gethostname():
        return None  # another machine's engine (or an old file without host): its pid means nothing here
    return None if pid_alive(pid) else pid


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a zombie does not count)."""
    if not 0 < pid < MAX_PID:  # no system numbers processes beyond this: os.kill would overflow
        return False
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): existence is all we can tell


def _windows_pid_alive(pid: int) -> bool:
    # os.kill(pid, 0) would terminate the process on Windows: ask the kernel instead.
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists, it is not ours
    try:
        code = wintypes.DWORD()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
