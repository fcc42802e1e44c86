"""One edit in flight, driven by `tick()` from a timer on Blender's main thread. Plain Python (no bpy).

Frames arrive as PNG files' bytes and go into a staging folder next to the result folder; only a
finished edit is renamed into place, so a cancelled or failed edit leaves no half result behind
(unless the user asked to keep partial results, which then go to `<result>-partial`), nor a results
folder it had to create. Media exported for a path submit (`scratch`) live until the edit ends.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .engine_link import EngineClient, EngineError, frame_image

ACTIVE, DONE, FAILED, CANCELLED = "active", "done", "failed", "cancelled"


class EditSession:
    def __init__(self, client: EngineClient, result_folder: Path, keep_partial: bool = False,
                 scratch: Path | None = None) -> None:
        if result_folder.exists():
            raise EngineError("bad_job", f"'{result_folder}' already exists: results never overwrite files")
        self.client = client
        self.result_folder = result_folder
        self.keep_partial = keep_partial
        self.scratch = scratch
        # The folders this edit creates, deepest first: a failed edit removes those it leaves empty.
        self._created = [p for p in (result_folder.parent, *result_folder.parent.parents) if not p.exists()]
        result_folder.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(dir=result_folder.parent, prefix=f".{result_folder.name}.partial-"))
        self.job = ""
        self.state = ACTIVE
        self.phase, self.step, self.total = "queued", 0, 0
        self.frames_received = 0
        self.message = ""
        self.preview: np.ndarray | None = None
        self._preview_is_new = False
        self.summary: dict[str, Any] = {}

    def submit(self, settings: dict[str, Any], frames: Sequence[np.ndarray], mattes: Sequence[Sequence[np.ndarray]]) -> str:
        """Submit with the pixels inline: RGB frames and grey mattes as arrays."""
        return self._submitted(lambda: self.client.submit(settings, frames, mattes, result_encoding="png"))

    def submit_paths(self, settings: dict[str, Any]) -> str:
        """Submit a job whose media the engine reads from the disk we share (paths in `settings`).

        Through `request`: the client's `submit_paths` has no `result_encoding`, and results must come
        back as PNG files."""
        header = {"type": "submit", "settings": settings, "inline": False, "result_encoding": "png"}
        return self._submitted(lambda: self.client.request(header).header["job"])

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
        """0..1 over inversion and editing (editing steps cost about twice an inversion step)."""
        weights = {"invert": (0.0, 1 / 3), "edit": (1 / 3, 2 / 3), "decode": (1.0, 0.0)}
        start, span = weights.get(self.phase, (0.0, 0.0))
        return min(1.0, start + span * (self.step / self.total if self.total else 0.0))

    def frame_paths(self) -> list[Path]:
        folder = self.result_folder if self.state == DONE else self.staging
        return sorted(folder.glob("*.png"))

    def tick(self) -> bool:
        """Take in whatever the engine sent; True while the edit is still going."""
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
                if "preview" in h:
                    self.preview, self._preview_is_new = frame_image(message, "preview"), True
            elif message.type == "frame":
                (self.staging / f"{h['index']:05d}.png").write_bytes(message.parts[h["image"]["part"]])
                self.frames_received += 1
            elif message.type == "done":
                self.summary = dict(h)
                self.staging.rename(self.result_folder)
                self._end(DONE, f"{h['frames']} frames in {h['seconds']:.0f} s")
            elif message.type == "error":
                self._end(CANCELLED if h["code"] == "cancelled" else FAILED, h["message"])
        return self.state == ACTIVE

    def cancel(self) -> None:
        """Ask the engine to stop; the stream's closing `error` arrives through tick()."""
        if self.state == ACTIVE and self.job:
            try:
                self.client.cancel(self.job)
            except EngineError as exc:
                self._end(FAILED, exc.message)

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
