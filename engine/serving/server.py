"""`videograin serve`: the engine process behind protocol v1 (protocol/SPEC.md).

One thread owns the ROUTER socket and all protocol state; one worker thread runs jobs, one at a time,
and hands events back through a queue. Nothing a client sends can stop the loop: every request is
answered or, when unsigned, dropped and logged.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import itertools
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np
import zmq

from videograin import __version__
from videograin.engine.config import CONTROL_TYPES, parse_settings
from videograin.engine.errors import CancelledError, JobError, VideograinError
from videograin.engine.inputs.job import MATTE_THRESHOLD, EditJob, load_job_mapping, validate_job
from videograin.engine.inputs.media import decode_png, encode_png
from videograin.engine.models import RANDOM_MODELS
from videograin.engine.progress import ProgressEvent
from videograin.engine.runner import edit_clip
from videograin.engine.serving.retention import FrameStore
from videograin.protocol import wire
from videograin.protocol.wire import Limits, Message, ProtocolError

log = logging.getLogger("videograin.server")

FINAL_STATES = ("done", "failed", "cancelled")


@dataclass
class Job:
    id: str
    edit: EditJob
    peer: bytes
    result_encoding: str = "raw"
    preview: bool = True
    state: str = "queued"
    phase: str = "queued"
    step: int = 0
    total: int = 0
    frames_ready: int = 0  # frames decoded so far, kept in the server's FrameStore
    final: tuple[dict[str, Any], list] | None = None  # the stream's last message, kept for attach
    error: str | None = None
    finished_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


class EtaClock:
    """Remaining time from the pace of the current phase; sampling steps cost about twice an inversion
    step (classifier-free guidance doubles the batch)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.phase, self.started, self.first_step = "", 0.0, 0

    def update(self, event: ProgressEvent) -> float | None:
        now = time.perf_counter()
        if event.phase != self.phase:
            self.phase, self.started, self.first_step = event.phase, now, event.step
            return None
        done = event.step - self.first_step
        if done <= 0 or event.phase not in ("invert", "edit"):
            return None
        per_step = (now - self.started) / done
        remaining = (event.total - event.step) * per_step
        if event.phase == "invert":
            remaining += self.steps * 2 * per_step
        return remaining


class EngineServer:
    def __init__(
        self,
        address: str,
        key: str,
        pipeline_for: Callable[[str, str | None], Any],
        default_model: str,
        device: str,
        limits: Limits | None = None,
        retention_s: float = 3600.0,
        heartbeat_s: float = 5.0,
        connection_file: Path | None = None,
    ) -> None:
        self.key = key.encode()
        self.limits = limits or Limits()
        self.pipeline_for = pipeline_for
        self.default_model = default_model
        self.device = device
        self.retention_s = retention_s
        self.heartbeat_s = heartbeat_s
        self.connection_file = connection_file
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Hard cap per frame: ZeroMQ drops the connection above it, before any memory is spent;
        # parts between max_part_bytes and this get a proper `too_large` reply.
        self.socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_part_bytes + 2**20)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if address.endswith(":0") and address.startswith("tcp://"):
            port = self.socket.bind_to_random_port(address.rsplit(":", 1)[0])
            address = f"{address.rsplit(':', 1)[0]}:{port}"
        else:
            self.socket.bind(address)
        self.address = address
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self.running: Job | None = None
        self.peers_seen: dict[bytes, float] = {}
        self.store = FrameStore()
        self.events: queue.Queue = queue.Queue()
        self.work: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self._job_numbers = itertools.count(1)
        self.worker = threading.Thread(target=self._work, name="videograin-worker", daemon=True)
        if connection_file is not None:
            wire.write_connection_file(connection_file, self.address, key)

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
                            frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._receive(frames)
                self._drain_events()
                self._purge_expired()
        finally:
            self._shut_down()

    def stop(self) -> None:
        self.stopping.set()

    def _receive(self, frames: list) -> None:
        peer, body = bytes(frames[0].buffer), frames[1:]
        ref = None
        try:
            message = wire.unpack(self.key, body, self.limits)
            ref = message.header.get("id") if isinstance(message.header.get("id"), str) else None
            wire.check_request(message.header)
            self.peers_seen[peer] = time.monotonic()
            self._handle(peer, message)
        except ProtocolError as exc:
            if exc.code == "bad_signature":
                log.warning("dropped a message with a bad signature from peer %s", peer.hex())
                return
            self._send(peer, {"type": "error", "code": exc.code, "message": str(exc), "ref": ref or exc.ref})
        except VideograinError as exc:
            self._send(peer, {"type": "error", "code": exc.code, "message": str(exc), "ref": ref})
        except Exception as exc:  # the engine must keep serving whatever a request does
            log.exception("request failed")
            self._send(peer, {"type": "error", "code": "internal", "message": f"{type(exc).__name__}: {exc}", "ref": ref})

    def _send(self, peer: bytes, header: dict[str, Any], parts: list | tuple = ()) -> None:
        header = {"id": wire.new_id(), **header}
        try:
            self.socket.send_multipart([peer, *wire.pack(self.key, header, parts)], copy=False)
        except zmq.ZMQError as exc:
            log.warning("could not send %s to %s: %s", header.get("type"), peer.hex(), exc)

    def _peer_alive(self, peer: bytes) -> bool:
        seen = self.peers_seen.get(peer)
        return seen is not None and time.monotonic() - seen < 3 * self.heartbeat_s

    # -- requests ----------------------------------------------------------------------------

    def _handle(self, peer: bytes, message: Message) -> None:
        h = message.header
        reply = {"ref": h["id"]}
        kind = h["type"]
        if kind == "hello":
            if wire.VERSION not in [v for v in h["versions"] if isinstance(v, int)]:
                raise ProtocolError("bad_version", f"no common protocol version: client speaks {h['versions']}, engine 1")
            self._send(peer, {**reply, "type": "welcome", "version": wire.VERSION, "engine": self._capabilities()})
        elif kind == "ping":
            self._send(peer, {**reply, "type": "pong"})
        elif kind == "submit":
            self._submit(peer, message)
        elif kind == "status":
            jobs = [self._job(h["job"])] if "job" in h else list(self.jobs.values())
            self._send(peer, {**reply, "type": "status", "jobs": [self._describe(j) for j in jobs]})
        elif kind == "cancel":
            job = self._job(h["job"])
            self._cancel(job)
            self._send(peer, {**reply, "type": "status", "jobs": [self._describe(job)]})
        elif kind == "attach":
            job = self._job(h["job"])
            job.peer = peer
            self._send(peer, {**reply, "type": "status", "jobs": [self._describe(job)]})
            for index in range(max(0, h["from_frame"]), job.frames_ready):
                self._send_frame(job, index, self.store.get(job.id, index))
            if job.final is not None:
                self._send(peer, *job.final)
        elif kind == "shutdown":
            self._send(peer, {**reply, "type": "bye"})
            self.stop()

    def _capabilities(self) -> dict[str, Any]:
        return {
            "name": "videograin", "version": __version__, "device": self.device, "models": [self.default_model],
            "control_types": list(CONTROL_TYPES), "limits": self.limits.as_dict(), "heartbeat_s": self.heartbeat_s,
        }

    def _job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise ProtocolError("unknown_job", f"no job '{job_id}' (never submitted, or no longer retained)")
        return self.jobs[job_id]

    def _position(self, job: Job) -> int:
        """Jobs ahead of this one: 0 while it runs (or has run)."""
        if job not in self.queue:
            return 0
        return self.queue.index(job) + (self.running is not None)

    def _describe(self, job: Job) -> dict[str, Any]:
        return {"job": job.id, "state": job.state, "position": self._position(job), "phase": job.phase, "step": job.step,
                "total": job.total, "frames_ready": job.frames_ready, "error": job.error}

    def _submit(self, peer: bytes, message: Message) -> None:
        h = message.header
        if len(self.queue) >= self.limits.max_queue:
            raise ProtocolError("queue_full", f"{len(self.queue)} jobs are waiting; try again later")
        encoding = h.get("result_encoding", "raw")
        if encoding not in ("raw", "png"):
            raise ProtocolError("bad_header", "result_encoding must be 'raw' or 'png'")
        settings = dict(h["settings"])
        settings.setdefault("model", self.default_model)
        edit = self._inline_job(settings, message) if h["inline"] else load_job_mapping(settings, Path("/"))
        if len(edit.frames) > self.limits.max_frames:
            raise JobError(f"{len(edit.frames)} frames is over this engine's limit of {self.limits.max_frames}")
        job = Job(f"job-{next(self._job_numbers)}-{wire.new_id()[:6]}", edit, peer, encoding, h.get("preview", True))
        self.jobs[job.id] = job
        self.queue.append(job)
        self.work.put(job)
        self._send(peer, {"ref": h["id"], "type": "accepted", "job": job.id, "position": self._position(job)})

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
        images = self._images(frames_d, message.parts, grey=False)
        if len({image.shape for image in images}) != 1:
            raise JobError("source frames differ in size")
        frames = np.stack(images)
        masks = []
        for region, stack in zip(parsed.regions, masks_d):
            if not isinstance(stack, list) or len(stack) != len(frames_d):
                raise JobError(f"region '{region.phrase}': {len(stack) if isinstance(stack, list) else 0} mattes for {len(frames_d)} frames")
            images = self._images(stack, message.parts, grey=True)
            if any(m.shape != frames.shape[1:3] for m in images):
                raise JobError(f"region '{region.phrase}': matte size differs from the frames {frames.shape[2]}x{frames.shape[1]}")
            masks.append(np.stack(images) >= MATTE_THRESHOLD)
        control = None
        if isinstance(h.get("control_maps"), list):
            control = np.stack(self._images(h["control_maps"], message.parts, grey=False))
        edit = EditJob(parsed, frames, np.stack(masks), control)
        validate_job(edit)
        return edit

    def _images(self, descriptors: list, parts: list, grey: bool) -> list[np.ndarray]:
        images = []
        for descriptor in descriptors:
            if isinstance(descriptor, dict) and descriptor.get("encoding") == "png":
                part = descriptor.get("part")
                if not isinstance(part, int) or not 0 <= part < len(parts):
                    raise ProtocolError("bad_header", f"image part {part!r} does not exist")
                try:
                    image = decode_png(bytes(parts[part]))
                except ValueError:
                    raise JobError(f"part {part} is not a decodable PNG") from None
            else:
                image = wire.decode_raw(descriptor, parts, self.limits)
            if grey:
                image = image[..., 0] if image.shape[2] == 1 else image[..., :3].mean(-1).astype(np.uint8)
            elif image.shape[2] == 1:
                image = np.repeat(image, 3, axis=2)
            else:
                image = image[..., :3]
            images.append(np.ascontiguousarray(image))
        return images

    def _cancel(self, job: Job) -> None:
        if job.state in FINAL_STATES:
            return
        job.cancel.set()
        if job in self.queue:
            self.queue.remove(job)
            self._finish(job, "cancelled", {"type": "error", "job": job.id, "code": "cancelled", "message": "the job was cancelled"})

    # -- worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            if job.cancel.is_set():
                continue
            self.events.put(("start", job, None))
            started = time.perf_counter()
            clock = EtaClock(job.edit.settings.steps)
            try:
                s = job.edit.settings
                self.events.put(("progress", job, (ProgressEvent("load", 0, 1), None)))
                pipe = self.pipeline_for(s.model, s.controlnet_id)
                self.events.put(("progress", job, (ProgressEvent("load", 1, 1), None)))
                result = edit_clip(
                    job.edit, pipe,
                    progress=lambda e: self.events.put(("progress", job, (e, clock.update(e)))),
                    cancelled=lambda: job.cancel.is_set() or self.stopping.is_set(),
                    measure_leakage=True,
                    on_frame=lambda index, image: self._frame_decoded(job, index, image),
                )
                self.events.put(("done", job, {"type": "done", "job": job.id, "frames": len(result.frames),
                                                "seconds": time.perf_counter() - started, "leakage": result.leakage,
                                                "random_weights": s.model in RANDOM_MODELS}))
            except CancelledError as exc:
                code = "shutting_down" if self.stopping.is_set() and not job.cancel.is_set() else exc.code
                self.events.put(("cancelled", job, {"type": "error", "job": job.id, "code": code, "message": str(exc)}))
            except VideograinError as exc:
                self.events.put(("failed", job, {"type": "error", "job": job.id, "code": exc.code, "message": str(exc)}))
            except Exception as exc:
                log.exception("job %s failed", job.id)
                self.events.put(("failed", job, {"type": "error", "job": job.id, "code": "internal",
                                                 "message": f"{type(exc).__name__}: {exc}"}))
            finally:
                _free_device_memory()

    def _frame_decoded(self, job: Job, index: int, image: np.ndarray) -> None:
        """On the worker: store the frame for `attach` (disk I/O off the socket loop), then hand it on."""
        self.store.put(job.id, index, image)
        self.events.put(("frame", job, (index, image)))

    def _drain_events(self) -> None:
        while True:
            try:
                kind, job, payload = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "start":
                if job in self.queue:
                    self.queue.remove(job)
                self.running, job.state = job, "running"
            elif kind == "progress":
                event, eta = payload
                job.phase, job.step, job.total = event.phase, event.step, event.total
                header = {"type": "progress", "job": job.id, "phase": event.phase, "step": event.step,
                          "total": event.total, "eta_s": eta}
                parts = []
                if event.preview is not None and job.preview:
                    header["preview"], buffer = wire.raw_image(event.preview, 0)
                    parts = [buffer]
                if self._peer_alive(job.peer):
                    self._send(job.peer, header, parts)
            elif kind == "frame":
                index, image = payload
                job.frames_ready += 1  # stored already, so `attach` may read it from now on
                self._send_frame(job, index, image)
            else:
                state = {"done": "done", "cancelled": "cancelled", "failed": "failed"}[kind]
                self._finish(job, state, payload)

    def _send_frame(self, job: Job, index: int, image: np.ndarray) -> None:
        if not self._peer_alive(job.peer):
            return  # the client is gone: the frame waits in the store for `attach`, not in a dead queue
        if job.result_encoding == "png":
            descriptor, part = {"part": 0, "encoding": "png"}, encode_png(image)
        else:
            descriptor, part = wire.raw_image(image, 0)
        self._send(job.peer, {"type": "frame", "job": job.id, "index": index, "image": descriptor}, [part])

    def _finish(self, job: Job, state: str, final: dict[str, Any]) -> None:
        job.state, job.finished_at = state, time.monotonic()
        job.error = final.get("code") if state != "done" else None
        job.final = (final, [])
        if self.running is job:
            self.running = None
        self._send(job.peer, final)

    def _purge_expired(self) -> None:
        now = time.monotonic()
        for job_id in [j.id for j in self.jobs.values() if j.finished_at and now - j.finished_at > self.retention_s]:
            del self.jobs[job_id]
            self.store.drop(job_id)

    def _shut_down(self) -> None:
        self.stopping.set()
        for job in list(self.queue):
            self.queue.remove(job)
            job.cancel.set()
            self._finish(job, "cancelled", {"type": "error", "job": job.id, "code": "shutting_down",
                                            "message": "the engine is shutting down"})
        self.work.put(None)
        self.worker.join(timeout=60)
        self._drain_events()
        if self.connection_file is not None:
            self.connection_file.unlink(missing_ok=True)
        self.store.close()
        self.socket.close(linger=200)
        self.context.term()
        log.info("engine stopped")


def _free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    from videograin.engine.models import get_pipeline, resolve_device

    check_bind(args.bind, args.allow_remote)
    device = resolve_device(args.device)
    cache: dict[tuple[str, str | None], Any] = {}

    def pipeline_for(model: str, controlnet: str | None):
        key = (model, controlnet)
        if key not in cache:
            cache.clear()  # one model on the device at a time
            _free_device_memory()
            cache[key] = get_pipeline(model, controlnet, device)
        return cache[key]

    limits = Limits(max_frames=args.max_frames, max_part_bytes=args.max_part_bytes)
    server = EngineServer(
        args.bind, wire.new_key(), pipeline_for, args.model, str(device), limits=limits, retention_s=args.retention,
        heartbeat_s=args.heartbeat, connection_file=Path(args.connection_file),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    print(f"videograin engine on {server.address}; connection file {args.connection_file}", flush=True)
    server.serve_forever()
    return 0


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="run the engine server (protocol v1, see protocol/SPEC.md)")
    serve.add_argument("--bind", default="tcp://127.0.0.1:0", help="tcp://127.0.0.1:PORT (0: any free port) or ipc://PATH")
    serve.add_argument("--allow-remote", action="store_true", help="allow a non-loopback bind address")
    serve.add_argument("--connection-file", default=str(Path.home() / ".videograin" / "engine.json"))
    serve.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5",
                       help="model for jobs that name none: hub id, local folder, 'tiny' or 'sd15-random'")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--retention", type=float, default=3600.0, help="seconds finished results stay attachable (kept on disk in the temp folder, not in RAM)")
    serve.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    serve.add_argument("--max-frames", type=int, default=Limits.max_frames)
    serve.add_argument("--max-part-bytes", type=int, default=Limits.max_part_bytes, help="largest binary part (image)")
    serve.set_defaults(run=cmd_serve)
