"""One engine job in flight, driven by `tick()` from a timer on Blender's main thread: an edit
(`EditSession`) or the tracking of a region's keyframes (`TrackSession`). Plain Python (no bpy).

What comes back arrives as PNG files' bytes and goes into a staging folder next to the result folder;
only a finished job is renamed into place, so a cancelled or failed one leaves no half result behind
(unless the user asked to keep partial results, which then go to `<result>-partial`), nor a results
folder it had to create. Media exported for a path request (`scratch`) live until the job ends.

An edit's attention maps (when asked for) are kept inside its result folder as the engine's own
results are (`attention/<phrase>/00000.png`, one heat-map overlay per frame).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .engine_link import EngineClient, EngineError, frame_image
from .jobspec import FileRun

ACTIVE, DONE, FAILED, CANCELLED = "active", "done", "failed", "cancelled"
ATTENTION = "attention"


def slug(phrase: str) -> str:
    """A phrase's folder name for its attention maps, as the engine names them (inputs/media.py `slug`)."""
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_") or "phrase"


def attention_map(result_folder: Path, phrase: str, index: int) -> Path:
    """Where an edit's attention map of `phrase` on clip frame `index` is kept."""
    return result_folder / ATTENTION / slug(phrase) / f"{index:05d}.png"


class EngineSession:
    """What every job shares: the staging folder, the stream's progress, the end states, cancel."""

    def __init__(self, client: EngineClient, result_folder: Path, keep_partial: bool = False,
                 scratch: Path | None = None) -> None:
        if result_folder.exists():
            raise EngineError("bad_job", f"'{result_folder}' already exists: results never overwrite files")
        self.client = client
        self.result_folder = result_folder
        self.keep_partial = keep_partial
        self.scratch = scratch
        # The folders this job creates, deepest first: a failed job removes those it leaves empty.
        self._created = [p for p in (result_folder.parent, *result_folder.parent.parents) if not p.exists()]
        result_folder.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(dir=result_folder.parent, prefix=f".{result_folder.name}.partial-"))
        self.job = ""
        self.state = ACTIVE
        self.phase, self.step, self.total = "queued", 0, 0
        self.eta_s: float | None = None  # the engine's estimate of the seconds to go, when it sends one
        self.frames_received = 0
        self.message = ""
        self.preview: np.ndarray | None = None
        self._preview_is_new = False
        self.summary: dict[str, Any] = {}

    def _submitted(self, submit) -> str:
        try:
            self.job = submit()
        except EngineError as exc:
            self._end(FAILED, exc.message)
            raise
        return self.job

    def take_preview(self) -> np.ndarray | None:
        """The preview that arrived since the last call, if any."""
        if not self._preview_is_new:
            return None
        self._preview_is_new = False
        return self.preview

    @property
    def progress(self) -> float:
        """0..1 of the whole job."""
        return min(1.0, self.step / self.total) if self.total else 0.0

    def frame_paths(self) -> list[Path]:
        folder = self.result_folder if self.state == DONE else self.staging
        return sorted(folder.glob("*.png"))

    def tick(self) -> bool:
        """Take in whatever the engine sent; True while the job is still going."""
        if self.state != ACTIVE:
            return False
        try:
            messages = self.client.poll()
        except EngineError as exc:
            self._end(FAILED, exc.message)
            return False
        for message in messages:
            h = message.header
            if h.get("job") != self.job:
                continue
            if message.type == "progress":
                self.phase, self.step, self.total = h["phase"], h["step"], h["total"]
                self.eta_s = h.get("eta_s")
                if "preview" in h:
                    self.preview, self._preview_is_new = frame_image(message, "preview"), True
            elif message.type == "done":
                self.summary = dict(h)
                self.staging.rename(self.result_folder)
                self._end(DONE, self._done_message(h))
            elif message.type == "error":
                self._end(CANCELLED if h["code"] == "cancelled" else FAILED, h["message"])
            else:
                self._take(message)
        return self.state == ACTIVE

    def _take(self, message) -> None:
        """A stream message of this job's own kind (a frame, a matte)."""

    def _done_message(self, done: dict[str, Any]) -> str:
        return f"{done['frames']} frames in {done['seconds']:.0f} s"

    def _write(self, relative: str, data: bytes) -> None:
        path = self.staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def cancel(self) -> None:
        """Ask the engine to stop; the stream's closing `error` arrives through tick()."""
        if self.state == ACTIVE and self.job:
            try:
                self.client.cancel(self.job)
            except EngineError as exc:
                self._end(FAILED, exc.message)

    def fail(self, message: str) -> None:
        """End the job as failed from outside the stream (its engine is known to be gone)."""
        if self.state == ACTIVE:
            self._end(FAILED, message)

    def abandon(self) -> None:
        """Stop for good without waiting for the engine's answer: the file or the add-on is going away."""
        self.cancel()
        if self.state == ACTIVE:
            self._end(CANCELLED, "abandoned")
        self.close()

    def _end(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        if state == DONE:
            return
        if self.staging.exists():
            if self.keep_partial and any(self.staging.iterdir()):
                self.staging.rename(self.result_folder.with_name(self.result_folder.name + "-partial"))
            else:
                shutil.rmtree(self.staging, ignore_errors=True)
        for folder in self._created:
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()

    def close(self) -> None:
        self.client.close()


class EditSession(EngineSession):
    """An edit: its frames, and its attention maps when asked for."""

    def submit(self, settings: dict[str, Any], frames: Sequence[np.ndarray], mattes: Sequence[Sequence[np.ndarray]],
               attention_maps: bool = False) -> str:
        """Submit with the pixels inline: RGB frames and grey mattes as arrays."""
        return self._submitted(lambda: self.client.submit(settings, frames, mattes, result_encoding="png",
                                                          attention_maps=attention_maps))

    def submit_paths(self, settings: dict[str, Any], attention_maps: bool = False) -> str:
        """Submit a job whose media the engine reads from the disk we share (paths in `settings`)."""
        return self._submitted(lambda: self.client.submit_paths(settings, result_encoding="png",
                                                                attention_maps=attention_maps))

    @property
    def progress(self) -> float:
        """0..1 over inversion and editing (editing steps cost about twice an inversion step)."""
        weights = {"invert": (0.0, 1 / 3), "edit": (1 / 3, 2 / 3), "decode": (1.0, 0.0)}
        start, span = weights.get(self.phase, (0.0, 0.0))
        return min(1.0, start + span * (self.step / self.total if self.total else 0.0))

    def _take(self, message) -> None:
        h = message.header
        if message.type == "frame":
            self._write(f"{h['index']:05d}.png", message.parts[h["image"]["part"]])
            self.frames_received += 1
        elif message.type == "attention":
            for index, descriptor in enumerate(h["images"]):
                self._write(f"{ATTENTION}/{slug(h['phrase'])}/{index:05d}.png", message.parts[descriptor["part"]])


class TrackSession(EngineSession):
    """One region's keyframes tracked through the source: its mattes, one grey PNG per frame."""

    def track(self, frames: Sequence[np.ndarray], keyframes: dict[int, np.ndarray], tracker: str = "flow",
              tracker_model: str = "", name: str = "region") -> str:
        """Track with the pixels inline: RGB frames and the keyframes' grey mattes (clip index → matte)."""
        return self._submitted(lambda: self.client.track(frames, [keyframes], tracker, tracker_model or None, [name],
                                                         result_encoding="png"))

    def track_paths(self, source: FileRun, keyframes: dict[int, str], tracker: str = "flow",
                    tracker_model: str = "", name: str = "region") -> str:
        """Track media the engine reads from the disk we share: the source run and keyframe image files."""
        region = {"keyframes": [{"frame": frame, "path": path} for frame, path in keyframes.items()],
                  "tracker": tracker, "tracker_model": tracker_model or None, "name": name}
        run = {"path": source.path, "start": source.start, "count": source.count}
        return self._submitted(lambda: self.client.track_paths(run, [region], result_encoding="png"))

    def _take(self, message) -> None:
        if message.type == "matte":
            h = message.header
            self._write(f"{h['index']:05d}.png", message.parts[h["mattes"][0]["part"]])
            self.frames_received += 1

    def _done_message(self, done: dict[str, Any]) -> str:
        lost = (done.get("empty_frames") or [0])[0]
        text = super()._done_message(done)
        return f"{text}; the region was lost on {lost} frames: add a keyframe there" if lost else text
