"""`videograin serve`: the engine process behind protocol v1 (protocol/SPEC.md).

One thread owns the ROUTER socket and all protocol state: it receives, validates, replies and streams.
Jobs run on a worker (worker.py) that reports back through events. Nothing a client sends can stop the
loop: every request is answered or, when unsigned, dropped and logged.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import logging
import os
import queue
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np
import torch
import zmq

from videograin import __version__
from videograin.engine.cache import InversionCache, cache_from_args
from videograin.engine.check import Finding, check_job
from videograin.engine.config import CONTROL_TYPES, TRACKERS, parse_settings
from videograin.engine.errors import JobError, VideograinError, excerpt
from videograin.engine.families import capabilities, family_warnings, model_family
from videograin.engine.inputs.job import MATTE_THRESHOLD, EditJob, load_job_mapping, validate_job
from videograin.engine.inputs.limits import MediaLimits, PixelBudget, encoded_size
from videograin.engine.inputs.media import decode_png, encode_png
from videograin.engine.models import RANDOM_MODELS
from videograin.engine.serving.access import MediaAccess
from videograin.engine.serving.retention import FrameStore, remove_stale_stores
from videograin.engine.serving.tracking import inline_track, paths_track, refuse_keyframes
from videograin.engine.serving.transport import SEND_HWM, Freshness, StreamBudget, raise_fd_limit, start_curve
from videograin.engine.serving.worker import FINAL_STATES, Job, JobWorker, PipelineSlot
from videograin.protocol import wire
from videograin.protocol.wire import Limits, Message, ProtocolError

log = logging.getLogger("videograin.server")

Handler = Callable[[bytes, Message], None]
# The trackers a `track` request may name (`welcome`'s **trackers**): sam3 cannot run here
# (inputs/mattes.py SAM3_UNSUPPORTED says why), so it is not offered.
OFFERED_TRACKERS = tuple(tracker for tracker in TRACKERS if tracker != "sam3")
PNG_HEADER_BYTES = 1 << 20  # of a PNG part, read for its size: IHDR comes first, ancillary chunks may follow
INTERNAL_MESSAGE_CHARS = 500  # of an unexpected exception's text in an `internal` error
HELD_JOBS = 4  # max_held_pixels' default, in max_pixels: four of the largest jobs at once (SPEC.md §5)


def held_pixels(job: Job) -> int:
    """The decoded pixels (width × height, summed) a queued job's input holds: frames, mattes, control maps;
    a track's frames and keyframe mattes."""
    if job.edit is not None:
        frames, masks, control = job.edit.frames, job.edit.masks, job.edit.control_maps
        images = [frames.shape[:3], *(stack.shape for stack in masks)]
        images += [control.shape[:3]] if control is not None else []
    else:
        keyframes = [key for region in job.track.regions for key in region.keyframes]
        images = [job.track.frames.shape[:3], *((1, *key.matte.shape) for key in keyframes)]
    return sum(count * height * width for count, height, width in images)


class EngineServer:
    def __init__(
        self,
        address: str,
        key: str,
        pipeline_for: Callable[[str, str | None], Any] | None,
        default_model: str,
        device: str,
        limits: Limits | None = None,
        retention_s: float = 3600.0,
        heartbeat_s: float = 5.0,
        connection_file: Path | None = None,
        cache: InversionCache | None = None,
        worker: Callable[[FrameStore, threading.Event], JobWorker] | None = None,
        check_device: str | None = None,
        other_models: tuple[str, ...] = (),
        max_pixels: int = MediaLimits.max_pixels,
        max_held_pixels: int | None = None,
        access: MediaAccess | None = None,
        curve: bool = False,
        curve_clients: Path | None = None,
    ) -> None:
        """`worker` makes the worker from the frame store and the stop flag; by default one thread that
        runs jobs with `pipeline_for`'s pipelines (worker.py), else e.g. a pool of Ray actors (ray_pool.py).
        `check_device`: a device of this process that `check` fits passes to (default `device`; an engine
        on Ray names its workers' kind as `device`, which this process may not have). `other_models`: what
        a job may name besides `default_model` (`welcome`'s **models**); nothing else is ever loaded.
        `max_pixels` and `limits`' sizes and frames bound what a request may make the engine decode
        (inputs/limits.py); `max_held_pixels` (default HELD_JOBS × `max_pixels`) what the jobs waiting or
        running and the requests being read hold decoded, all together; `access` which paths it may read
        (access.py; default: any absolute path).
        `curve`: speak CurveZMQ (SPEC.md §1.1), letting in the connection file's client key and those in
        `curve_clients`."""
        self.key = key.encode()
        self.limits = limits or Limits()
        self.media_limits = MediaLimits(self.limits.max_width, self.limits.max_height, max_pixels, self.limits.max_frames)
        self.max_held_pixels = max_held_pixels or HELD_JOBS * max_pixels
        if self.max_held_pixels < max_pixels:
            raise VideograinError(f"max_held_pixels ({self.max_held_pixels:,}) is below max_pixels ({max_pixels:,}): "
                                  "no request could ever be read", code="bad_config")
        self.access = access or MediaAccess(None)
        self.default_model = default_model
        self.models = list(dict.fromkeys((default_model, *other_models)))
        self.device = device
        self.check_device = torch.device(check_device or device)
        self.retention_s = retention_s
        self.heartbeat_s = heartbeat_s
        self.connection_file = connection_file
        if connection_file is not None:
            claim_connection_file(connection_file)
        remove_stale_stores()
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # ZeroMQ closes the connection of a frame above this as soon as the frame's length arrives, before
        # it holds any of it: in HMAC mode a forger's 100 MB frames cost nothing. Frames up to 1 MiB over
        # the largest allowed part or header get a proper `too_large` reply.
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)  # streams are paced by StreamBudget below this
        self.authenticator, curve_keys = start_curve(self.context, self.socket, curve_clients) if curve else (None, None)
        # CURVE refuses replays itself (and a remote client's clock is not ours): HMAC mode checks freshness.
        self.freshness = None if curve else Freshness()
        self.budget = StreamBudget()
        self.waiting_streams: set[str] = set()  # jobs whose next frames wait for room in their peer's queue
        self.ended_streams: set[str] = set()  # jobs whose stream sent its end to the current peer
        if address.endswith(":0") and address.startswith("tcp://"):
            port = self.socket.bind_to_random_port(address.rsplit(":", 1)[0])
            address = f"{address.rsplit(':', 1)[0]}:{port}"
        else:
            self.socket.bind(address)
        self.address = address
        self.jobs: dict[str, Job] = {}
        self.peers_seen: dict[bytes, float] = {}
        # When the loop last found nothing unread on the socket: a peer is known to be silent only up to
        # then, since its newer messages may wait there while the loop streams (SPEC.md §4).
        self.read_all_at = time.monotonic()
        self.peer_part_mac: dict[bytes, str] = {}  # the part-MAC scheme each peer said it speaks (hello)
        self.store = FrameStore()
        self.stopping = threading.Event()
        if worker is None:
            self.worker = JobWorker(pipeline_for, self.store, self.stopping, cache, device)
        else:
            self.worker = worker(self.store, self.stopping)
        self._job_numbers = itertools.count(1)
        self._purged_at = 0.0
        # Requests whose media are read or whose layout is drawn run here, off the loop, so that pings are
        # answered meanwhile; the loop sends their replies (`_drain_prepared`).
        self.preparing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videograin-prepare")
        self.prepared: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0
        # One handler per request type of wire.REQUESTS: a new request is a schema entry there and an
        # `_on_<type>` method here.
        self.handlers: dict[str, Handler] = {kind: getattr(self, f"_on_{kind}") for kind in wire.REQUESTS}
        if connection_file is not None:
            wire.write_connection_file(connection_file, self.address, key, curve_keys)

    # -- the loop ----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.worker.start()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        log.info("engine listening on %s", self.address)
        try:
            while not self.stopping.is_set():
                if poller.poll(timeout=20):
                    for _ in range(64):  # bounded, so worker events are never starved
                        try:
                            frames = self._read_message()
                        except zmq.Again:
                            self.read_all_at = time.monotonic()
                            break
                        if frames is not None:
                            self._receive(frames)
                else:
                    self.read_all_at = time.monotonic()
                self._drain_prepared()
                self._drain_events()
                for job_id in list(self.waiting_streams):
                    self._pump(self.jobs[job_id])
                self._purge_expired()
        finally:
            self._shut_down()

    def stop(self) -> None:
        self.stopping.set()

    def _read_message(self) -> list | None:
        """The next message's frames (zmq.Again when none waits), or None for one with more frames than any
        request has: it is read to its end without being kept, and answered `too_large` only if signed.
        (ZeroMQ bounds each frame, not their count: two bytes of the wire make a frame, and a forger's
        million empty frames must cost a pass over them, not a million objects held.)"""
        frames = [self.socket.recv(zmq.NOBLOCK, copy=False)]  # the peer's routing id, then the message
        most = self.limits.max_parts + 3  # routing id, signature, header, parts
        while self.socket.get(zmq.RCVMORE):
            if len(frames) == most:
                self._drop_overlong(frames)
                return None
            frames.append(self.socket.recv(copy=False))
        return frames

    def _drop_overlong(self, frames: list) -> None:
        """Read the rest of a message that has `frames` and more, keeping none, and answer it if it is signed."""
        peer = bytes(frames[0].buffer)
        rest = (self.socket.recv() for _ in iter(lambda: self.socket.get(zmq.RCVMORE), 0))
        signed, count = wire.overlong_signed(self.key, [f.buffer for f in frames[1:]], rest)
        if not signed:
            log.warning("dropped a message of %d frames with a bad signature from peer %s", count, peer.hex())
            return
        ref = wire.read_id(frames[2].buffer)
        self._refuse(peer, ref, ProtocolError("too_large", f"more than {self.limits.max_parts} binary parts", ref))

    def _receive(self, frames: list) -> None:
        peer, body = bytes(frames[0].buffer), frames[1:]
        ref = None
        try:
            message = wire.unpack(self.key, body, self.limits)
            ref = message.header.get("id") if isinstance(message.header.get("id"), str) else None
            wire.check_request(message.header)
            if self.freshness is not None:  # before anything counts: a replay neither acts nor takes a place
                self.freshness.check(message.header, wire.timestamp_ms())
            if peer not in self.peers_seen:
                self._admit(peer)
            self.peers_seen[peer] = time.monotonic()  # any accepted request shows the peer is there
            self.handlers[message.type](peer, message)
        except Exception as exc:  # the engine must keep serving whatever a request does
            self._refuse(peer, ref, exc)

    def _refuse(self, peer: bytes, ref: str | None, exc: Exception) -> None:
        """The `error` reply to a request that raised `exc` (none to a forger)."""
        if isinstance(exc, ProtocolError):
            if exc.code == "bad_signature":
                log.warning("dropped a message with a bad signature from peer %s", peer.hex())
                return
            self.peers_seen[peer] = time.monotonic()  # signed, though refused: the peer is there all the same
            ref = ref if ref is not None else exc.ref  # "" is an id too (SPEC.md §5)
            self._send(peer, {"type": "error", "code": exc.code, "message": str(exc), "ref": ref})
        elif isinstance(exc, VideograinError):
            self._send(peer, {"type": "error", "code": exc.code, "message": str(exc), "ref": ref})
        else:
            log.error("request failed", exc_info=exc)
            text = f"{type(exc).__name__}: {exc}"[:INTERNAL_MESSAGE_CHARS]
            self._send(peer, {"type": "error", "code": "internal", "message": text, "ref": ref})

    def _prepare(self, peer: bytes, message: Message, build: Callable[[], Any], finish: Callable[[Any], None]) -> None:
        """Run `build` (reading media, drawing) off the loop; the loop then calls `finish` with its result,
        or answers the request with the error it raised."""
        if self.pending >= self.limits.max_queue:
            raise ProtocolError("queue_full", f"{self.pending} requests are being read; try again later")
        # Each request being read may decode up to max_pixels: admitted only if that still fits beside what
        # the jobs hold, so a few small, well-compressed requests cannot make the engine hold gigabytes each.
        held = sum(job.pixels for job in self.jobs.values()) + self.pending * self.media_limits.max_pixels
        if held + self.media_limits.max_pixels > self.max_held_pixels:
            raise ProtocolError("queue_full", f"the jobs waiting or running and the requests being read hold up to "
                                              f"{held:,} decoded pixels, and this request may decode "
                                              f"{self.media_limits.max_pixels:,} more, over this engine's limit of "
                                              f"{self.max_held_pixels:,} (max_held_pixels): try again when a job ends")
        self.pending += 1
        future = self.preparing.submit(build)
        future.add_done_callback(lambda done: self.prepared.put((peer, message, done, finish)))

    def _drain_prepared(self) -> None:
        while True:
            try:
                peer, message, done, finish = self.prepared.get_nowait()
            except queue.Empty:
                return
            self.pending -= 1
            try:
                finish(done.result())  # raises what `build` raised
            except Exception as exc:
                self._refuse(peer, message.header["id"], exc)

    def _admit(self, peer: bytes) -> None:
        """A new peer is served while fewer than max_connections are present (SPEC.md §5)."""
        now = time.monotonic()
        streaming = {job.peer for job in self.jobs.values() if job.id not in self.ended_streams}  # a stream not yet ended
        present = sum(1 for p, seen in self.peers_seen.items() if now - seen <= 3 * self.heartbeat_s or p in streaming)
        if present >= self.limits.max_connections:
            raise ProtocolError("busy", f"the engine serves {self.limits.max_connections} connections, its limit; "
                                        "try again later")

    def _send(self, peer: bytes, header: dict[str, Any], parts: list | tuple = (), budget: bool = False) -> None:
        """Send one message; with `budget`, what ZeroMQ holds of it counts against the peer's stream budget."""
        header = {"id": wire.new_id(), **header}
        try:
            frames = wire.pack(self.key, header, parts, self.peer_part_mac.get(peer))
            tracker = self.socket.send_multipart([peer, *frames], copy=False, track=budget)
        except zmq.ZMQError as exc:
            log.warning("could not send %s to %s: %s", header.get("type"), peer.hex(), exc)
            return
        if budget:
            self.budget.sent(peer, tracker, sum(len(part) for part in parts))

    def _reply(self, peer: bytes, request: Message, fields: dict[str, Any], parts: list | tuple = ()) -> None:
        self._send(peer, {"ref": request.header["id"], **fields}, parts)

    def _stream(self, job: Job, header: dict[str, Any], parts: list | tuple = (), budget: bool = False) -> None:
        """Send one message of the job's stream. A peer silent past 3 heartbeats detaches the stream
        (SPEC.md §4): nothing more of it goes out, `done` included, until a peer attaches. Silence runs
        from its last authenticated message to the last time the loop had read everything sent to it."""
        if job.peer is None:
            return
        seen = self.peers_seen.get(job.peer)
        if seen is None or self.read_all_at - seen > 3 * self.heartbeat_s:
            log.info("peer %s went silent: the stream of %s waits for an attach", job.peer.hex(), job.id)
            job.peer = None
            return
        self._send(job.peer, header, parts, budget)

    def _pump(self, job: Job, fresh: tuple[int, np.ndarray] | None = None) -> None:
        """Send the ready frames the job's peer lacks, in order, while its stream budget has room (the
        rest wait on disk for a later turn of the loop); once every frame is out, the attention maps and
        the stream's end. `fresh`: a frame just made, sent without reading it back. After a cancel's reply
        the stream carries only its end (SPEC.md §3.7): what the job made stays for an `attach`, which
        replays it."""
        quiet = job.cancel.is_set() and not job.replay
        while not quiet and job.peer is not None and job.stream_from < job.frames_ready:
            if not self.budget.room(job.peer):
                self.waiting_streams.add(job.id)
                return
            index = job.stream_from
            image = fresh[1] if fresh is not None and fresh[0] == index else self.store.get(job.id, index)
            self._stream(job, *self._frame_message(job, index, image), budget=True)
            job.stream_from = index + 1
        self.waiting_streams.discard(job.id)
        if job.peer is not None and job.final is not None and job.id not in self.ended_streams:
            self.ended_streams.add(job.id)
            for message in [] if quiet else job.attention:
                self._stream(job, *message)
            self._stream(job, job.final)

    # -- requests (wire.REQUESTS) ------------------------------------------------------------

    def _on_hello(self, peer: bytes, message: Message) -> None:
        h = message.header
        if wire.VERSION not in [v for v in h["versions"] if isinstance(v, int)]:
            raise ProtocolError("bad_version", f"no common protocol version: client speaks {excerpt(h['versions'])}, "
                                               "engine 1")
        spoken = [s for s in h.get("part_macs", []) if s in wire.PART_MACS]
        if spoken:
            self.peer_part_mac[peer] = spoken[0]
        else:
            self.peer_part_mac.pop(peer, None)
        self._reply(peer, message, {"type": "welcome", "version": wire.VERSION, "engine": self._capabilities()})

    def _on_ping(self, peer: bytes, message: Message) -> None:
        self._reply(peer, message, {"type": "pong"})

    def _on_status(self, peer: bytes, message: Message) -> None:
        h = message.header
        jobs = [self._job(h["job"])] if "job" in h else list(self.jobs.values())
        self._reply(peer, message, {"type": "status", "jobs": [self._describe(j) for j in jobs]})

    def _on_cancel(self, peer: bytes, message: Message) -> None:
        job = self._job(message.header["job"])
        dropped = job.state not in FINAL_STATES and self.worker.cancel(job)
        if dropped:
            self._end(job, "cancelled", {"type": "error", "job": job.id, "code": "cancelled", "message": "the job was cancelled"})
        self._reply(peer, message, {"type": "status", "jobs": [self._describe(job)]})
        if dropped:  # the reply first: a client waiting for it has not read past the stream's end
            self._pump(job)

    def _on_attach(self, peer: bytes, message: Message) -> None:
        h = message.header
        job = self._job(h["job"])
        if not 0 <= h["from_frame"] <= job.frames:
            raise ProtocolError("bad_header", f"'attach.from_frame' must be from 0 to the job's {job.frames} frames, got {h['from_frame']}")
        # One stream per job: an attach moves it (and its place) to this peer, whatever was under way.
        job.peer, job.stream_from, job.replay = peer, h["from_frame"], job.cancel.is_set()
        self.ended_streams.discard(job.id)
        self._reply(peer, message, {"type": "status", "jobs": [self._describe(job)]})
        self._pump(job)

    def _on_shutdown(self, peer: bytes, message: Message) -> None:
        self._reply(peer, message, {"type": "bye"})
        self.stop()

    def _on_submit(self, peer: bytes, message: Message) -> None:
        h = message.header
        encoding = self._room_for(message)
        preview_every = h.get("preview_every", 5)
        if preview_every < 1:
            raise ProtocolError("bad_header", "'submit.preview_every' must be at least 1 (edit steps)")

        def accept(edit: EditJob) -> None:
            job = Job(self._new_job_id(), edit, len(edit.frames), peer, encoding,
                      h.get("preview", True), preview_every, h.get("attention_maps", False))
            self._queue(peer, message, job)

        self._prepare(peer, message, lambda: self._edit_job(message), accept)

    def _queue(self, peer: bytes, message: Message, job: Job) -> None:
        job.pixels = held_pixels(job)
        self.jobs[job.id] = job
        self.worker.submit(job)
        self._reply(peer, message, {"type": "accepted", "job": job.id, "position": self.worker.position(job)})

    def _room_for(self, message: Message) -> str:
        """Before a job is read: room in the queue, and its result encoding (returned) one we send."""
        if len(self.worker.waiting) >= self.limits.max_queue:
            raise ProtocolError("queue_full", f"{len(self.worker.waiting)} jobs are waiting; try again later")
        encoding = message.header.get("result_encoding", "raw")
        if encoding not in ("raw", "png"):
            raise ProtocolError("bad_header", f"'{message.type}.result_encoding' must be 'raw' or 'png'")
        return encoding

    def _new_job_id(self) -> str:
        return f"job-{next(self._job_numbers)}-{wire.new_id()[:6]}"

    def _on_check(self, peer: bytes, message: Message) -> None:
        """The job a `submit` would make, checked and described (check.py) off the loop: nothing is
        queued, no model is loaded; the tokenizer is kept once read."""
        picks = message.header.get("layout_frames")
        if picks is not None and not all(isinstance(f, int) and not isinstance(f, bool) for f in picks):
            raise ProtocolError("bad_header", f"'check.layout_frames' must be a list of integers (clip frame "
                                              f"indices from 0), got {excerpt(picks)}")

        def build() -> tuple[dict[str, Any], bytes]:
            other_models: list[str] = []
            report = check_job(self._edit_job(message, other_models), self.check_device, picks)
            report.errors[:0] = [Finding("model_unavailable", reason) for reason in other_models]
            return report.as_dict(), encode_png(report.layout)

        def answer(built: tuple[dict[str, Any], bytes]) -> None:
            report, layout = built
            self._reply(peer, message, {"type": "check", **report, "layout": {"part": 0, "encoding": "png"}}, [layout])

        self._prepare(peer, message, build, answer)

    def _on_track(self, peer: bytes, message: Message) -> None:
        """A tracking job (SPEC.md §3.11): queued, cancelled and attached like a submit; its stream carries
        `matte` messages where an edit's carries `frame`s."""
        h = message.header
        encoding = self._room_for(message)

        def build() -> Any:
            self.access.check_models({f"regions[{i}].tracker_model": r.get("tracker_model")
                                      for i, r in enumerate(h["regions"]) if isinstance(r, dict)}, self.default_model)
            budget = PixelBudget(self.media_limits)
            if h["inline"]:
                read = lambda descriptor, grey: self._images([descriptor], message.parts, grey, budget)[0]  # noqa: E731
                return inline_track(h, read, self.limits.max_frames)
            return paths_track(h, self.media_limits, self.access, budget)

        def accept(track: Any) -> None:
            self._queue(peer, message, Job(self._new_job_id(), None, len(track.frames), peer, encoding,
                                           preview=False, kind="track", track=track))

        self._prepare(peer, message, build, accept)

    # -- jobs --------------------------------------------------------------------------------

    def _edit_job(self, message: Message, other_models: list[str] | None = None) -> EditJob:
        """The job of a `submit` or `check`: its pixels inline or read from the paths its settings name.
        Runs off the loop (`_prepare`). A model the engine does not load refuses a submit; a `check`
        passes `other_models` and finds the reason there, to report it among its errors."""
        settings = dict(message.header["settings"])
        settings.setdefault("model", self.default_model)
        self.access.check_models({key: settings.get(key) for key in ("model", "controlnet")}, self.default_model)
        refusal = self._other_model(settings)
        if refusal is not None and other_models is None:
            raise JobError(refusal)
        if refusal is not None:
            other_models.append(refusal)
        if message.header["inline"]:
            edit = self._inline_job(settings, message)
        else:
            refuse_keyframes(parse_settings(settings))  # before any media is read
            edit = load_job_mapping(settings, Path("/"), limits=self.media_limits, locate=self.access.locate)
        # What the model's family refuses (a ControlNet on Wan, a size off its multiple) is refused here,
        # before the job queues; what it only ignores is said by `check`.
        family_warnings(edit.settings, model_family(edit.settings.model), len(edit.frames))
        return edit

    def _other_model(self, settings: dict[str, Any]) -> str | None:
        """Why the job names weights this engine does not load, or None (SPEC.md §3.1 models): a job never
        makes the engine download what it was not started with. A random model builds its ControlNet too,
        so then any `controlnet` is fine."""
        named = [("model", settings["model"])]
        if settings["model"] not in RANDOM_MODELS and settings.get("controlnet") is not None:
            named.append(("controlnet", settings["controlnet"]))
        for key, name in named:
            if name not in self.models:
                return (
                    f"the job's {key} '{name}' is not one this engine loads: it loads {', '.join(self.models)} "
                    f"(welcome's models; jobs that name no model get {self.default_model}). "
                    + ("Name one of those (`videograin edit --model`)" if key == "model" else "Set controlnet to null")
                    + f", or start the engine with --allow-model {name}")
        return None

    def _capabilities(self) -> dict[str, Any]:
        return {
            "name": "videograin", "version": __version__, "device": self.device, "models": self.models,
            "control_types": list(CONTROL_TYPES), "heartbeat_s": self.heartbeat_s,
            "limits": {**self.limits.as_dict(), "max_pixels": self.media_limits.max_pixels,
                       "max_held_pixels": self.max_held_pixels},
            "part_macs": list(wire.PART_MACS), "workers": self.worker.workers(),
            "trackers": list(OFFERED_TRACKERS), "family": capabilities(self.default_model),
            "paths": self.access.mode, **({"media_roots": [str(r) for r in self.access.roots]} if self.access.roots else {}),
        }

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is not None and self._expired(job, time.monotonic()):  # the purge runs once a second
            self._forget(job_id)
            job = None
        if job is None:
            raise ProtocolError("unknown_job", f"no job '{job_id}' (never submitted, or no longer retained)")
        return job

    def _describe(self, job: Job) -> dict[str, Any]:
        return {"job": job.id, "state": job.state, "position": self.worker.position(job), "phase": job.phase,
                "step": job.step, "total": job.total, "frames": job.frames, "frames_ready": job.frames_ready,
                "error": job.error}

    def _inline_job(self, settings: dict[str, Any], message: Message) -> EditJob:
        h = message.header
        parsed = parse_settings(settings)
        frames_d, masks_d = h.get("frames"), h.get("masks")
        if not isinstance(frames_d, list) or not frames_d:
            raise ProtocolError("bad_header", "an inline submit needs 'frames': a list of image descriptors")
        if len(frames_d) > self.limits.max_frames:
            raise ProtocolError("too_large", f"{len(frames_d)} frames is over the limit of {self.limits.max_frames}")
        if not isinstance(masks_d, list) or len(masks_d) != len(parsed.regions):
            raise ProtocolError("bad_header", f"'masks' needs one list of mattes per region ({len(parsed.regions)})")
        self.media_limits.check_working_clip(len(frames_d), parsed.source.width, parsed.source.height)
        if parsed.flow.path:  # read by the worker: the same paths as a paths submit
            parsed.flow.path = str(self.access.locate(parsed.flow.path, "flow.path"))
        if parsed.control.type in ("depth", "pose"):
            parsed.control.path = str(self.access.locate(parsed.control.path, "control.path"))
        budget = PixelBudget(self.media_limits)
        images = self._images(frames_d, message.parts, grey=False, budget=budget)
        if len({image.shape for image in images}) != 1:
            raise JobError("source frames differ in size")
        frames = np.stack(images)
        masks = []
        for region, stack in zip(parsed.regions, masks_d):
            if not isinstance(stack, list) or len(stack) != len(frames_d):
                raise JobError(f"region '{region.phrase}': {len(stack) if isinstance(stack, list) else 0} mattes for {len(frames_d)} frames")
            images = self._images(stack, message.parts, grey=True, budget=budget)
            if any(m.shape != frames.shape[1:3] for m in images):
                raise JobError(f"region '{region.phrase}': matte size differs from the frames {frames.shape[2]}x{frames.shape[1]}")
            masks.append(np.stack(images) >= MATTE_THRESHOLD)
        control = None
        if isinstance(h.get("control_maps"), list):
            control = np.stack(self._images(h["control_maps"], message.parts, grey=False, budget=budget))
        elif parsed.control.type == "frames":
            raise JobError("control.type 'frames' needs 'control_maps' in an inline submit: one map per frame")
        edit = EditJob(parsed, frames, np.stack(masks), control)
        validate_job(edit)
        return edit

    def _images(self, descriptors: list, parts: list, grey: bool, budget: PixelBudget) -> list[np.ndarray]:
        """The images of `descriptors`, RGB or grey. Every image's size is known first (a raw descriptor's,
        a PNG's header) and spent from `budget` before any of them is decoded."""
        sources = [self._image_source(descriptor, parts) for descriptor in descriptors]
        budget.spend(sum(size[0] * size[1] for _, size in sources), f"{len(sources)} images of the request")
        images = []
        for source, _ in sources:
            if isinstance(source, np.ndarray):
                image = source
            else:
                part, data = source
                try:
                    image = decode_png(bytes(data))
                except ValueError:
                    raise JobError(f"part {part} is not a decodable PNG") from None
            if grey:
                image = image[..., 0] if image.shape[2] == 1 else image[..., :3].mean(-1).astype(np.uint8)
            elif image.shape[2] == 1:
                image = np.repeat(image, 3, axis=2)
            else:
                image = image[..., :3]
            images.append(np.ascontiguousarray(image))
        return images

    def _image_source(self, descriptor: Any, parts: list) -> tuple[Any, tuple[int, int]]:
        """A descriptor's raw pixels (a view of its part) or (part, PNG bytes), with its decoded size."""
        if not (isinstance(descriptor, dict) and descriptor.get("encoding") == "png"):
            image = wire.decode_raw(descriptor, parts, self.limits)
            return image, (image.shape[1], image.shape[0])
        part = descriptor.get("part")
        if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part < len(parts):
            raise ProtocolError("bad_header", f"image part {excerpt(part)} does not exist")
        data = memoryview(parts[part])
        size = encoded_size(bytes(data[:PNG_HEADER_BYTES]), f"part {part}")
        self.media_limits.check_size(*size, f"the PNG of part {part}")
        return (part, data), size

    def _drain_events(self) -> None:
        for kind, job, payload in self.worker.events():
            # After a cancel's reply the stream carries only its end (SPEC.md §3.7): what a cancelled
            # job made before the cancel took hold is kept for `attach`, not sent.
            cancelled = job.cancel.is_set()
            if kind == "start":
                job.state = "running"
            elif kind == "progress":
                event, eta = payload
                job.phase, job.step, job.total = event.phase, event.step, event.total
                header = {"type": "progress", "job": job.id, "phase": event.phase, "step": event.step,
                          "total": event.total, "eta_s": eta, "pass": event.pass_index, "passes": event.passes}
                parts = []
                if event.preview is not None and job.preview:
                    header["preview"], buffer = wire.raw_image(event.preview, 0)
                    parts = [buffer]
                if not cancelled:
                    self._stream(job, header, parts)
            elif kind == "frame":
                index, image = payload
                job.frames_ready = index + 1  # stored already, so `attach` may read it from now on
                if not cancelled:
                    self._pump(job, (index, image))
            elif kind == "attention":  # sent with the stream's end, after the last frame
                phrase, overlays = payload
                job.attention.append(self._attention_message(job, phrase, overlays))
            elif kind == "done":
                self._finish(job, "done", {"type": "done", "job": job.id, **payload})
            else:
                self._finish(job, kind, {"type": "error", "job": job.id, **payload})

    def _attention_message(self, job: Job, phrase: str, overlays: np.ndarray) -> tuple[dict[str, Any], list]:
        """One phrase's attention-map overlays, one image part per frame, encoded as the job's frames."""
        descriptors, parts = self._image_parts(job, overlays)
        return {"type": "attention", "job": job.id, "phrase": phrase, "images": descriptors}, parts

    def _image_parts(self, job: Job, images: np.ndarray) -> tuple[list[dict[str, Any]], list]:
        """Descriptors and parts of several images in one message, encoded as the job asked."""
        descriptors, parts = [], []
        for index, image in enumerate(images):
            if job.result_encoding == "png":
                descriptor, part = {"part": index, "encoding": "png"}, encode_png(image)
            else:
                descriptor, part = wire.raw_image(image, index)
            descriptors.append(descriptor)
            parts.append(part)
        return descriptors, parts

    def _frame_message(self, job: Job, index: int, image: np.ndarray) -> tuple[dict[str, Any], list]:
        if job.kind == "track":
            return self._matte_message(job, index, image)
        descriptors, parts = self._image_parts(job, image[None])
        return {"type": "frame", "job": job.id, "index": index, "image": descriptors[0]}, parts

    def _matte_message(self, job: Job, index: int, mattes: np.ndarray) -> tuple[dict[str, Any], list]:
        """One frame of a track job: (K, H, W) uint8 mattes, one grey part per region."""
        descriptors, parts = self._image_parts(job, mattes)
        return {"type": "matte", "job": job.id, "index": index, "mattes": descriptors}, parts

    def _finish(self, job: Job, state: str, final: dict[str, Any]) -> None:
        self._end(job, state, final)
        self._pump(job)

    def _end(self, job: Job, state: str, final: dict[str, Any]) -> None:
        job.state, job.finished_at, job.edit, job.track, job.pixels = state, time.monotonic(), None, None, 0
        job.error = final.get("code") if state != "done" else None
        job.final = final

    def _expired(self, job: Job, now: float) -> bool:
        return bool(job.finished_at) and now - job.finished_at > self.retention_s

    def _forget(self, job_id: str) -> None:
        del self.jobs[job_id]
        self.waiting_streams.discard(job_id)
        self.ended_streams.discard(job_id)
        self.store.drop(job_id)

    def _purge_expired(self) -> None:
        now = time.monotonic()
        if now - self._purged_at < 1.0:
            return
        self._purged_at = now
        for job_id in [j.id for j in self.jobs.values() if self._expired(j, now)]:
            self._forget(job_id)
        streaming = {job.peer for job in self.jobs.values()}
        for peer in [p for p, seen in self.peers_seen.items() if now - seen > self.retention_s and p not in streaming]:
            del self.peers_seen[peer]
            self.peer_part_mac.pop(peer, None)

    def _shut_down(self) -> None:
        self.stopping.set()
        for job in self.worker.drop_waiting():
            self._finish(job, "cancelled", {"type": "error", "job": job.id, "code": "shutting_down",
                                            "message": "the engine is shutting down"})
        self.preparing.shutdown(wait=False, cancel_futures=True)
        self.worker.close()
        self._drain_events()
        if self.connection_file is not None:
            self.connection_file.unlink(missing_ok=True)
        self.store.close()
        self.socket.close(linger=200)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()
        log.info("engine stopped")


def claim_connection_file(path: Path) -> None:
    """Refuse to start over a running engine's connection file; remove a dead engine's (SPEC.md §1)."""
    if not path.exists():
        return
    try:
        info = wire.read_connection_file(path)
    except ProtocolError:
        log.warning("replacing '%s', which is not a readable connection file", path)
        return
    pid = info.get("pid")
    if wire.stale_pid(info) is not None:
        path.unlink(missing_ok=True)
        log.warning("removed the stale connection file of pid %s, which is no longer running: %s", pid, path)
    elif info.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid():
        raise VideograinError(
            f"an engine (pid {pid}) is running with connection file '{path}': stop it, or pass another --connection-file",
            code="bad_config",
        )


def check_bind(address: str, allow_remote: bool) -> None:
    if address.startswith("ipc://"):
        return
    parsed = urlparse(address)
    if parsed.scheme != "tcp" or not parsed.hostname:
        raise VideograinError(f"bind address '{address}' must be tcp://HOST:PORT or ipc://PATH", code="bad_config")
    host = parsed.hostname
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback and not allow_remote:
        raise VideograinError(
            f"'{address}' is not a loopback address: pass --allow-remote to open the engine to the network",
            code="bad_config",
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from videograin.engine.models import resolve_device

    check_bind(args.bind, args.allow_remote)
    raise_fd_limit()  # each peer holds a descriptor
    limits = Limits(max_frames=args.max_frames, max_part_bytes=args.max_part_bytes,
                    max_connections=args.max_connections)
    access = MediaAccess.for_engine(args.media_root, args.allow_remote)
    cache, pool = cache_from_args(args), None
    if args.ray is None:
        device = resolve_device(args.device)
        pipeline_for, worker, device_label = PipelineSlot(device), None, str(device)
        check_device = device_label
    else:
        from videograin.engine.serving.ray_pool import RayPool, RayWorker, connect

        connect(args.ray or None)
        pool = RayPool(args.workers, cache)
        pipeline_for, device_label, check_device = None, pool.device_label(), str(resolve_device(args.device))
        worker = lambda store, stopping: RayWorker(pool, store, stopping)  # noqa: E731
    server = EngineServer(
        args.bind, wire.new_key(), pipeline_for, args.model, device_label, limits=limits, retention_s=args.retention,
        heartbeat_s=args.heartbeat, connection_file=Path(args.connection_file), cache=cache, worker=worker,
        check_device=check_device, other_models=tuple(args.allow_model),
        max_pixels=args.max_pixels or MediaLimits.max_pixels, max_held_pixels=args.max_held_pixels, access=access,
        curve=args.curve or args.allow_remote,
        curve_clients=Path(args.curve_clients).expanduser() if args.curve_clients else None,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    print(f"videograin engine on {server.address}; connection file {args.connection_file}", flush=True)
    try:
        server.serve_forever()
    finally:
        if pool is not None:
            pool.close()
    return 0
