"""The job queue and the thread that runs jobs, one at a time, for the protocol loop (server.py).

The loop owns every job's protocol state and calls this class from its own thread only; the worker
thread reads a job's edit and cancel flag, runs it, stores its frames for `attach` and reports back
through events that the loop drains with `events()`. Another worker (a pool of GPUs, ray_pool.py)
offers the same methods and events.
"""

from __future__ import annotations

import gc
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from videograin.engine.cache import InversionCache
from videograin.engine.errors import CancelledError, VideograinError
from videograin.engine.inputs.job import EditJob
from videograin.engine.inputs.mattes import track_mattes
from videograin.engine.inputs.media import heatmap_overlays, resize
from videograin.engine.method.passes import EditResult
from videograin.engine.models import RANDOM_MODELS, device_name, get_pipeline
from videograin.engine.progress import ProgressEvent
from videograin.engine.runner import edit_clip
from videograin.engine.serving.retention import FrameStore
from videograin.engine.serving.tracking import TrackJob

log = logging.getLogger("videograin.server")

FINAL_STATES = ("done", "failed", "cancelled")
ATTENTION_SIDE = 320  # streamed attention overlays are thumbnails: this many pixels on the long side


@dataclass
class Job:
    id: str
    edit: EditJob | None  # dropped once the job ends: its source pixels are not needed for `attach`
    frames: int  # the clip's frame count
    peer: bytes | None  # where the stream goes; None while detached (SPEC.md §4)
    result_encoding: str = "raw"
    preview: bool = True
    preview_every: int = 5
    attention_maps: bool = False  # stream each phrase's attention maps before `done`
    stream_from: int = 0  # frames below this index are not streamed (`attach`'s from_frame)
    state: str = "queued"
    phase: str = "queued"
    step: int = 0
    total: int = 0
    frames_ready: int = 0  # frames decoded so far, kept in the FrameStore
    final: dict[str, Any] | None = None  # the stream's last message, kept for attach
    attention: list[tuple[dict[str, Any], list]] = field(default_factory=list)  # `attention` messages, kept for attach
    error: str | None = None
    finished_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # An `attach` after the cancel: its stream replays what the job kept (a live stream carries only its
    # end after a cancel's reply, SPEC.md §3.7).
    replay: bool = False
    # "edit", or "track": a tracking job, whose input is `track` (then `edit` is None), dropped once the
    # job ends as `edit` is. Its "frames" are each frame's mattes, (K, H, W) uint8 0/255, stored and
    # attachable as edited frames are.
    kind: str = "edit"
    track: TrackJob | None = None
    pixels: int = 0  # decoded pixels its input holds until it ends (max_held_pixels, SPEC.md §5)


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
        if done <= 0 or event.phase not in ("invert", "edit", "track"):
            return None
        per_step = (now - self.started) / done
        remaining = (event.total - event.step) * per_step
        if event.phase == "invert":
            remaining += self.steps * 2 * per_step
        return remaining


class JobWorker:
    """One thread, one job at a time, in submission order.

    Events, drained on the loop's thread by `events()`: ("start", job, None), ("progress", job,
    (ProgressEvent, eta_s)), ("frame", job, (index, image)), ("attention", job, (phrase, overlays)) when
    asked, then one of ("done", job, fields of `done`), ("failed" | "cancelled", job, {"code", "message"}).
    A track job's "frame" events carry each frame's mattes, (K, H, W) uint8. All jobs share one inversion
    cache (`cache`, None: none); trackers that use a model (SAM 2) run on `device`.
    """

    def __init__(self, pipeline_for: Callable[[str, str | None], Any] | None, store: FrameStore,
                 stopping: threading.Event, cache: InversionCache | None = None, device: str = "cpu") -> None:
        self.pipeline_for = pipeline_for
        self.device = device
        self.store = store
        self.stopping = stopping
        self.cache = cache
        self.waiting: list[Job] = []
        self.running: Job | None = None
        # The job the thread has taken: from then on cancelling only asks it to stop. The lock makes
        # "taken" and "dropped while waiting" exclusive, so a job never ends twice.
        self._taken: Job | None = None
        self._lock = threading.Lock()
        self._todo: queue.Queue = queue.Queue()
        self._events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="videograin-worker", daemon=True)

    # -- the loop's side ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.waiting.append(job)
        self._todo.put(job)

    def position(self, job: Job) -> int:
        """Jobs ahead of this one: 0 while it runs (or has run)."""
        if job not in self.waiting:
            return 0
        return self.waiting.index(job) + (self.running is not None)

    def cancel(self, job: Job) -> bool:
        """Ask the job to stop; True when it was still waiting and is dropped at once (no events follow)."""
        with self._lock:
            job.cancel.set()
            if job in self.waiting and job is not self._taken:
                self.waiting.remove(job)
                return True
        return False

    def drop_waiting(self) -> list[Job]:
        """Every waiting job, cancelled and dropped (the engine is stopping); a job the thread has taken
        is left to stop with the engine."""
        with self._lock:
            dropped = [job for job in self.waiting if job is not self._taken]
            self.waiting = [job for job in self.waiting if job is self._taken]
            for job in dropped:
                job.cancel.set()
        return dropped

    def workers(self) -> list[dict[str, str]]:
        """Who edits (`welcome`'s **workers**): this process, on its device."""
        return [{"node": socket.gethostname(), "device": self.device, "name": device_name(self.device)}]

    def events(self) -> Iterator[tuple[str, Job, Any]]:
        while True:
            try:
                kind, job, payload = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "start":
                if job in self.waiting:
                    self.waiting.remove(job)
                self.running = job
            elif kind in FINAL_STATES and self.running is job:
                self.running = None
            yield kind, job, payload

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop after the current job (which `stopping` cancels within a step)."""
        self._todo.put(None)
        self._thread.join(timeout=timeout_s)

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._todo.get()
            if job is None:
                return
            with self._lock:
                if job.cancel.is_set():
                    continue
                self._taken = job
            self._events.put(("start", job, None))
            try:
                fields = self._track(job) if job.kind == "track" else self._edit(job)
                if job.cancel.is_set():  # it came while the last frames were made: the client was told it stops
                    raise CancelledError(f"the {job.kind} was cancelled")
                self._events.put(("done", job, fields))
            except CancelledError as exc:
                code = "shutting_down" if self.stopping.is_set() and not job.cancel.is_set() else exc.code
                self._events.put(("cancelled", job, {"code": code, "message": str(exc)}))
            except VideograinError as exc:
                self._events.put(("failed", job, {"code": exc.code, "message": str(exc)}))
            except Exception as exc:
                log.exception("job %s failed", job.id)
                self._events.put(("failed", job, {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}))
            finally:
                free_device_memory()

    def _edit(self, job: Job) -> dict[str, Any]:
        """Run the job; returns the fields of its `done` message."""
        started = time.perf_counter()
        clock = EtaClock(job.edit.settings.steps)
        settings = job.edit.settings
        self._progress(job, ProgressEvent("load", 0, 1), None)
        pipe = self.pipeline_for(settings.model, settings.controlnet_id)
        self._progress(job, ProgressEvent("load", 1, 1), None)
        result = edit_clip(
            job.edit, pipe,
            progress=lambda event: self._progress(job, event, clock.update(event)),
            cancelled=lambda: job.cancel.is_set() or self.stopping.is_set(),
            measure_leakage=True,
            on_frame=lambda index, image: self._frame_decoded(job, index, image),
            cache=self.cache,
            attention_maps=job.attention_maps,
            preview_every=job.preview_every,
        )
        for event in attention_events(job, result):
            self._events.put(event)
        return done_fields(job, result, time.perf_counter() - started)

    def _track(self, job: Job) -> dict[str, Any]:
        """Track the job's keyframes through its clip; the mattes go out frame by frame once every frame
        is tracked (the trackers work on the whole clip at once). Returns the fields of its `done`."""
        started = time.perf_counter()
        clock = EtaClock(0)
        mattes = track_mattes(
            job.track.frames, job.track.regions, self.device,
            progress=lambda event: self._progress(job, event, clock.update(event)),
            cancelled=lambda: job.cancel.is_set() or self.stopping.is_set(),
        )
        for index in range(mattes.shape[1]):
            self._frame_decoded(job, index, mattes[:, index].astype(np.uint8) * 255)
        lost = [int(np.count_nonzero(~stack.any(axis=(1, 2)))) for stack in mattes]
        return {"frames": mattes.shape[1], "seconds": time.perf_counter() - started, "empty_frames": lost}

    def _progress(self, job: Job, event: ProgressEvent, eta_s: float | None) -> None:
        self._events.put(("progress", job, (event, eta_s)))

    def _frame_decoded(self, job: Job, index: int, image: np.ndarray) -> None:
        """Store the frame for `attach` here, keeping disk writes off the socket loop, then hand it on."""
        self.store.put(job.id, index, image)
        self._events.put(("frame", job, (index, image)))


def attention_events(job: Job, result: EditResult) -> list[tuple[str, Job, Any]]:
    """The ("attention", job, (phrase, overlays)) events of a finished edit, when it has maps."""
    if not result.attention_maps:
        return []
    small = resize(job.edit.frames, *attention_size(job.edit.source_size))
    return [("attention", job, (phrase, heatmap_overlays(small, modulated)))
            for phrase, (modulated, _) in result.attention_maps.items()]


def done_fields(job: Job, result: EditResult, seconds: float) -> dict[str, Any]:
    """The fields of a finished job's `done` message."""
    return {"frames": len(result.frames), "seconds": seconds, "leakage": result.leakage,
            "leakage_whole_run": result.leakage_whole_run, "warp_error": result.warp_error,
            "inversion_cached": result.cached_passes > 0, "random_weights": job.edit.settings.model in RANDOM_MODELS}


class PipelineSlot:
    """The pipeline a job asks for, kept between jobs: one model on the device at a time."""

    def __init__(self, device) -> None:
        self.device = device
        self.loaded: dict[tuple[str, str | None], Any] = {}

    def __call__(self, model: str, controlnet: str | None):
        key = (model, controlnet)
        if key not in self.loaded:
            self.loaded.clear()
            free_device_memory()
            self.loaded[key] = get_pipeline(model, controlnet, self.device)
        return self.loaded[key]


def attention_size(source_size: tuple[int, int], longest: int = ATTENTION_SIDE) -> tuple[int, int]:
    """(width, height) of streamed attention overlays: the source's aspect, `longest` on the long side."""
    width, height = source_size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
