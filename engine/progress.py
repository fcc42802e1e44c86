"""Progress events from long work, and the terminal's progress bars for them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm


@dataclass
class ProgressEvent:
    phase: str  # "load", "encode", "invert", "edit", "decode", "write"
    step: int  # steps (invert, edit) or frames (encode, decode) done in this phase
    total: int
    preview: np.ndarray | None = None  # RGB uint8, during "edit" every few steps
    pass_index: int = 0  # long clips run in passes, each inverted and edited in turn
    passes: int = 1


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """A callback for callers that do not watch."""


class ProgressBars:
    """One tqdm bar per phase, closed when the next phase starts; the ETA comes from tqdm.

    Step previews, when a path is given, are written there so an image viewer can follow the edit."""

    def __init__(self, preview_path: Path | None = None) -> None:
        self._bar: tqdm | None = None
        self._phase = ""
        self.preview_path = preview_path

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase != self._phase:
            self.close()
            self._phase = event.phase
            self._bar = tqdm(total=event.total, desc=f"{event.phase:>7}", unit="step", leave=True)
        self._bar.n = event.step
        self._bar.refresh()
        if event.preview is not None and self.preview_path is not None:
            from videograin.engine.inputs.media import write_png

            write_png(self.preview_path, event.preview)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
