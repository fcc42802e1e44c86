"""Reference client for protocol v1 (SPEC.md). Depends on pyzmq, msgpack and numpy only, so editor
plug-ins can ship it as is.

Two styles: blocking (`events()`, for scripts and the CLI) and non-blocking (`poll()`, for a GUI timer
on the main thread, e.g. Blender's `bpy.app.timers`): `poll()` never waits longer than its timeout and
keeps the heartbeat going.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zmq

from . import wire
from .wire import Limits, Message, ProtocolError

STREAM_TYPES = ("progress", "frame", "matte", "attention", "done", "error")
Image = np.ndarray | bytes  # a uint8 array sent raw, or a PNG file's bytes sent as they are


class EngineError(Exception):
    """The engine answered with `error`, or cannot be reached (`no_engine`, `engine_gone`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class EngineClient:
    """A DEALER connection to one engine. `connection` is a connection file (default
    ~/.videograin/engine.json) or its parsed contents."""

    def __init__(self, connection: str | Path | dict[str, Any] | None = None, heartbeat_s: float = 5.0) -> None:
        info = connection if isinstance(connection, dict) else _read(connection or wire.DEFAULT_CONNECTION_FILE)
        self.address, self._key = info["address"], info["key"].encode()
        self.heartbeat_s = heartbeat_s
        self._part_mac = _shared_part_mac(info.get("part_macs"))
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # CURVE mode: ZeroMQ reports a refused key only as a socket event, watched here for a clear error.
        self._handshakes: zmq.Socket | None = None
        if info.get("curve") is not None:
            _use_curve(self._socket, info["curve"])
            self._curve_key = info["curve"]["public_key"]
            self._handshakes = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._socket.connect(self.address)
        self._limits = Limits()
        self._pending: list[Message] = []
        self._last_sent = self._last_heard = time.monotonic()
        self.capabilities: dict[str, Any] | None = None
        # The streams this client follows (SPEC.md §3.6): job → the next frame index it lacks. After a
        # silence the engine may have detached them; poll() attaches again from there.
        self._following: dict[str, int] = {}
        self._ended: set[str] = set()
        self._reattaching: dict[str, str] = {}  # attach request id → job

    # -- low level ---------------------------------------------------------------------------

    def send(self, header: dict[str, Any], parts: list | tuple = ()) -> str:
        if self.capabilities is not None:  # the engine's own limits, from its welcome
            try:
                wire.check_part_sizes(parts, self._limits)
            except ProtocolError as exc:
                raise EngineError("too_large", f"not sent: {exc} (this engine's limit, SPEC.md §5)") from None
        header = {"id": wire.new_id(), "ts": wire.timestamp_ms(), **header}
        self._socket.send_multipart(wire.pack(self._key, header, parts, self._part_mac), copy=False)
        self._last_sent = time.monotonic()
        return header["id"]

    def _receive(self, timeout_s: float) -> Message | None:
        if not self._socket.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self._socket.recv_multipart(copy=False)
        self._last_heard = time.monotonic()
        try:
            return wire.unpack(self._key, frames, self._limits)
        except ProtocolError as exc:
            raise EngineError("malformed", f"the engine sent an invalid message: {exc}") from None

    def request(self, header: dict[str, Any], parts: list | tuple = (), timeout_s: float = 30.0) -> Message:
        """Send a request and wait for its reply; stream events that arrive meanwhile are kept for poll()."""
        msg_id = self.send(header, parts)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self._receive(left)
            if message is None:
                break
            if message.header.get("ref") == msg_id:
                if message.type == "error":
                    raise EngineError(message.header.get("code", "internal"), message.header.get("message", ""))
                return message
            self._keep(message)
        if self._handshakes is not None and self._handshakes.poll(0):
            raise EngineError("refused", f"the engine at {self.address} refused this client's CURVE key "
                                         f"{self._curve_key}: ask its operator to allow it "
                                         "(SPEC.md §1.1)")
        raise EngineError("no_engine", f"no answer from the engine at {self.address} within {timeout_s:g} s; is it running?")

    # -- requests ----------------------------------------------------------------------------

    def hello(self, client: str = "videograin-client", timeout_s: float = 10.0) -> dict[str, Any]:
        reply = self.request({"type": "hello", "versions": [wire.VERSION], "client": client,
                              "part_macs": list(wire.PART_MACS)}, timeout_s=timeout_s)
        self.capabilities = reply.header["engine"]
        self._part_mac = _shared_part_mac(self.capabilities.get("part_macs"))
        self._limits = Limits(**{k: v for k, v in self.capabilities["limits"].items() if k in Limits.__dataclass_fields__})
        self.heartbeat_s = float(self.capabilities.get("heartbeat_s", self.heartbeat_s))
        return self.capabilities

    def submit(
        self,
        settings: dict[str, Any],
        frames: Sequence[Image],
        masks: Sequence[Sequence[Image]],
        control_maps: Sequence[Image] | None = None,
        result_encoding: str = "raw",
        **options: Any,
    ) -> str:
        """Submit a job with its pixels inline; returns the job id.

        Images are uint8 arrays, (H, W, 3|4) frames and (H, W) mattes (bool or 0..255), sent raw, or
        PNG files' bytes, sent as they are (for callers without an image library, like Blender).
        `options`: the submit's optional fields (SPEC.md §3.2), e.g. preview_every=1, attention_maps=True.
        """
        header, parts = _inline("submit", settings, frames, masks, control_maps)
        header.update(result_encoding=result_encoding, **options)
        return self._follow(self.request(header, parts).header["job"], 0)

    def check(
        self,
        settings: dict[str, Any],
        frames: Sequence[Image] | None = None,
        masks: Sequence[Sequence[Image]] | None = None,
        control_maps: Sequence[Image] | None = None,
        timeout_s: float = 60.0,
        layout_frames: Sequence[int] | None = None,
    ) -> tuple[dict[str, Any], bytes]:
        """Check a job before submitting it (SPEC.md §3.8): pixels inline as for `submit`, or none to have
        the engine read the paths in `settings`. Returns the reply (ok, errors, warnings, summary) and
        layout.png's bytes. `layout_frames`: the clip frames (from 0) the picture shows, by default up to
        four spread over the clip. Settings or pixels a submit would refuse raise EngineError."""
        if frames is None:
            header, parts = {"type": "check", "settings": settings, "inline": False}, []
        else:
            header, parts = _inline("check", settings, frames, [] if masks is None else masks, control_maps)
        if layout_frames is not None:
            header["layout_frames"] = list(layout_frames)
        reply = self.request(header, parts, timeout_s=timeout_s)
        return reply.header, bytes(reply.parts[reply.header["layout"]["part"]])

    def track(
        self,
        frames: Sequence[Image],
        keyframes: Sequence[Mapping[int, Image]],
        tracker: str = "flow",
        tracker_model: str | None = None,
        names: Sequence[str] | None = None,
        result_encoding: str = "raw",
    ) -> str:
        """Track keyframe mattes through a clip sent inline (SPEC.md §3.11); returns the job id. Its stream
        carries one `matte` message per frame (`matte_images`), then `done`.

        `keyframes`: one mapping per region, clip frame index → (H, W) matte (bool or 0..255, white = the
        region) on that frame. Every region uses `tracker` (`welcome`'s **trackers**) and `tracker_model`.
        """
        parts: list = []
        add = functools.partial(_add_image, parts)
        header = {"type": "track", "inline": True, "result_encoding": result_encoding,
                  "frames": [add(f) for f in frames], "regions": []}
        for k, keys in enumerate(keyframes):
            region = {"keyframes": [{"frame": frame, "matte": add(matte)} for frame, matte in keys.items()],
                      "tracker": tracker, "tracker_model": tracker_model}
            if names is not None:
                region["name"] = names[k]
            header["regions"].append(region)
        return self._follow(self.request(header, parts).header["job"], 0)

    def track_paths(self, source: dict[str, Any], regions: list[dict[str, Any]], result_encoding: str = "raw") -> str:
        """Track keyframes the engine reads from a shared disk: `source` {path, start, count, stride}, each
        region {keyframes: [{frame, path}], tracker, tracker_model, name}, absolute paths (SPEC.md §3.11)."""
        header = {"type": "track", "inline": False, "source": source, "regions": regions,
                  "result_encoding": result_encoding}
        return self._follow(self.request(header).header["job"], 0)

    def submit_paths(self, settings: dict[str, Any], result_encoding: str = "raw", **options: Any) -> str:
        """Submit a job whose media the engine reads from a shared disk (absolute paths in settings);
        `result_encoding` and `options` as for `submit`."""
        header = {"type": "submit", "settings": settings, "inline": False, "result_encoding": result_encoding, **options}
        return self._follow(self.request(header).header["job"], 0)

    def cancel(self, job: str) -> dict[str, Any]:
        return self.request({"type": "cancel", "job": job}).header["jobs"][0]

    def attach(self, job: str, from_frame: int = 0) -> dict[str, Any]:
        """Take over the job's stream: ready frames from `from_frame` on are sent again, then the rest."""
        self._follow(job, from_frame)
        return self.request({"type": "attach", "job": job, "from_frame": from_frame}).header["jobs"][0]

    def status(self, job: str | None = None) -> list[dict[str, Any]]:
        return self.request({"type": "status", **({"job": job} if job else {})}).header["jobs"]

    def ping(self, timeout_s: float = 5.0) -> float:
        started = time.perf_counter()
        self.request({"type": "ping"}, timeout_s=timeout_s)
        return time.perf_counter() - started

    def shutdown(self) -> None:
        self.request({"type": "shutdown"})

    # -- the job stream ----------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.0) -> list[Message]:
        """Stream messages received so far (progress, frame, matte, attention, done, error); waits at most `timeout_s`.

        Sends a heartbeat ping when nothing was sent for heartbeat_s, attaches again to the streams it
        follows after a longer silence (the engine detaches a silent peer's streams, SPEC.md §4), and
        raises EngineError `engine_gone` after 3 heartbeats without a word from the engine.
        """
        now = time.monotonic()
        if self._following and now - self._last_sent > 2 * self.heartbeat_s:
            for job, next_frame in self._following.items():
                self._reattaching[self.send({"type": "attach", "job": job, "from_frame": next_frame})] = job
        elif now - self._last_sent >= self.heartbeat_s:
            self.send({"type": "ping"})
        deadline = now + timeout_s
        while True:
            message = self._receive(max(0.0, deadline - time.monotonic()) if not self._pending else 0.0)
            if message is None:
                break
            self._keep(message)
        if time.monotonic() - self._last_heard > 3 * self.heartbeat_s:
            raise EngineError("engine_gone", f"the engine at {self.address} stopped answering")
        events, self._pending = self._pending, []
        return events

    def events(self, job: str, timeout_s: float = 3600.0) -> Iterator[Message]:
        """Yield the job's stream until its `done` (an `error` raises EngineError)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.poll(timeout_s=min(self.heartbeat_s, 0.5)):
                if message.header.get("job") != job:
                    continue
                if message.type == "error":
                    raise EngineError(message.header["code"], message.header["message"])
                yield message
                if message.type == "done":
                    return
        raise EngineError("timeout", f"job {job} did not finish within {timeout_s:g} s")

    def close(self) -> None:
        if self._handshakes is not None:
            self._socket.disable_monitor()
            self._handshakes.close(linger=0)
        self._socket.close(linger=0)

    # -- following streams -------------------------------------------------------------------

    def _follow(self, job: str, from_frame: int) -> str:
        self._following[job] = from_frame
        self._ended.discard(job)
        return job

    def _keep(self, message: Message) -> None:
        """Queue a stream message for poll(), minus what an attach sent twice; a failed re-attach
        becomes the job's `error`."""
        h = message.header
        lost = self._reattaching.pop(h["ref"], None) if isinstance(h.get("ref"), str) else None
        if lost is not None and message.type == "error" and lost in self._following:
            h = {"type": "error", "job": lost, "code": h.get("code", "internal"),
                 "message": f"the job's stream was lost and attaching again failed: {h.get('message', '')}"}
            message = Message(h)
        if message.type not in STREAM_TYPES:
            return
        job = h.get("job")
        if message.type in ("frame", "matte") and job in self._following and isinstance(h.get("index"), int):
            if h["index"] < self._following[job]:
                return  # sent again by an attach, already delivered
            self._following[job] = h["index"] + 1
        elif message.type in ("done", "error") and isinstance(job, str):
            if job in self._ended:
                return  # the end of a stream that an attach sent again
            if self._following.pop(job, None) is not None:
                self._ended.add(job)
        self._pending.append(message)


def _inline(
    kind: str, settings: dict[str, Any], frames: Sequence[Image],
    masks: Sequence[Sequence[Image]], control_maps: Sequence[Image] | None,
) -> tuple[dict[str, Any], list]:
    """The header and parts of an inline `submit` or `check`: arrays sent raw, PNG bytes as they are."""
    parts: list = []
    add = functools.partial(_add_image, parts)
    header = {"type": kind, "settings": settings, "inline": True,
              "frames": [add(f) for f in frames], "masks": [[add(m) for m in stack] for stack in masks]}
    if control_maps is not None:
        header["control_maps"] = [add(c) for c in control_maps]
    return header, parts


def frame_image(message: Message, field: str = "image") -> np.ndarray:
    """The (H, W, C) uint8 image a `frame` (or a `progress` preview, field="preview") carries."""
    return wire.decode_raw(message.header[field], message.parts, Limits())


def matte_images(message: Message) -> list[np.ndarray]:
    """The (H, W) uint8 mattes, one per region (0 or 255), of a raw-encoded `matte` message."""
    return [wire.decode_raw(d, message.parts, Limits())[..., 0] for d in message.header["mattes"]]


def attention_images(message: Message) -> list[np.ndarray]:
    """The (H, W, 3) uint8 overlays, one per frame, of a raw-encoded `attention` message."""
    return [wire.decode_raw(d, message.parts, Limits()) for d in message.header["images"]]


def _add_image(parts: list, image: Image) -> dict[str, Any]:
    """Append an image to a message's parts; returns its descriptor (SPEC.md §2.4)."""
    if isinstance(image, (bytes, bytearray)):
        descriptor, buffer = {"part": len(parts), "encoding": "png"}, image
    else:
        image = image.astype(np.uint8) * 255 if image.dtype == bool else image
        descriptor, buffer = wire.raw_image(image, len(parts))
    parts.append(buffer)
    return descriptor


def _read(path: str | Path) -> dict[str, Any]:
    try:
        info = wire.read_connection_file(path)
    except ProtocolError as exc:
        raise EngineError(exc.code, str(exc)) from None
    pid = wire.stale_pid(info)
    if pid is not None:
        raise EngineError("no_engine", f"engine not running (stale connection file of pid {pid}): start the engine "
                                       f"again, which replaces '{path}'")
    return info


def _use_curve(socket: zmq.Socket, keys: Any) -> None:
    """Make the socket a CURVE client with the connection file's keys (SPEC.md §1.1)."""
    if not zmq.has("curve"):
        raise EngineError("no_engine", "the engine speaks CURVE, which this pyzmq's libzmq lacks: install a pyzmq wheel")
    try:
        socket.curve_serverkey = keys["server_key"].encode()
        socket.curve_publickey = keys["public_key"].encode()
        socket.curve_secretkey = keys["secret_key"].encode()
    except (TypeError, KeyError, AttributeError, zmq.ZMQError) as exc:
        raise EngineError("no_engine", "the connection file's 'curve' needs server_key, public_key and secret_key, "
                                       f"each 40 Z85 characters ({type(exc).__name__}: {exc})") from None


def _shared_part_mac(schemes: Any) -> str | None:
    """The first part-MAC scheme the engine lists that this side speaks (SPEC.md §2.3), or None."""
    return next((s for s in schemes or () if s in wire.PART_MACS), None)
