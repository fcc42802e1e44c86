"""Progress events from long work, and the terminal's progress bars for them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import numpy as np
from tqdm.auto import tqdm

# What a phase's `step` counts; any other phase (load) is one piece of work, shown without a count.
UNITS = {"invert": "step", "edit": "step", "encode": "frame", "decode": "frame", "track": "step"}
# A track's count runs over every region's frames, both ways for the flow tracker: 32 for two regions of
# an 8-frame clip, which its bar must not call frames.
NAMES = {"track": "track (a step: one frame of one region, one way)"}
# tqdm's own rate and ETA are left out: `ProgressBars` puts its own in the postfix.
COUNTED_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s{postfix}"


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
    """One tqdm line per phase (and pass), closed when the next one starts.

    A phase starts when the previous event arrived, so its first line shows nothing done and no rate.
    Rates are what was done over the time it took: the first update's from the phase's start (a phase
    that reports every step at once, a cached inversion, gets none), later ones from the first update on,
    and so does the ETA, leaving out the first step's warm-up. Step previews, when a path is given, are
    written there so an image viewer can follow the edit."""

    def __init__(self, preview_path: Path | None = None, file: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.preview_path = preview_path
        self.file = file
        self.clock = clock
        self._bar: tqdm | None = None
        self._key: tuple[str, int] | None = None
        self._last_event = clock()
        self._frames_done: dict[str, int] = {}  # frame phases count the clip's frames across passes

    def __call__(self, event: ProgressEvent) -> None:
        now = self.clock()
        key = (event.phase, event.pass_index)
        if key != self._key:
            self.close()
            self._open(event, started=self._last_event)
        self._last_event = now
        unit = UNITS.get(event.phase)
        if unit is None:
            state = f"done in {now - self._started:.1f} s" if event.step >= event.total else "..."
            self._bar.set_description_str(f"{self._name}: {state}", refresh=False)
        else:
            self._bar.n = event.step
            self._bar.set_postfix_str(self._pace(event, unit, now), refresh=False)
            if unit == "frame":
                self._frames_done[event.phase] = event.step
        self._bar.refresh()
        if event.preview is not None and self.preview_path is not None:
            from videograin.engine.inputs.media import write_png

            write_png(self.preview_path, event.preview)

    def _open(self, event: ProgressEvent, started: float) -> None:
        self._key, self._started, self._first = (event.phase, event.pass_index), started, None
        name = NAMES.get(event.phase, event.phase)
        name = name if event.passes == 1 else f"{name} (pass {event.pass_index + 1}/{event.passes})"
        self._name = f"{name:>7}"
        unit = UNITS.get(event.phase)
        if unit is None:  # one piece of work: no count, no rate
            self._bar = tqdm(total=None, desc=self._name, bar_format="{desc}", file=self.file, leave=True)
            return
        done = self._frames_done.get(event.phase, 0) if unit == "frame" else 0
        self._initial = done if event.step >= done else 0
        self._bar = tqdm(total=event.total, initial=self._initial, desc=self._name, unit=unit, file=self.file,
                         leave=True, bar_format=COUNTED_BAR)

    def _pace(self, event: ProgressEvent, unit: str, now: float) -> str:
        """Elapsed time, rate and ETA of the current phase, as far as they are known."""
        shown = [f"{_clock(now - self._started)} elapsed"]
        done = event.step - self._initial
        if done <= 0:
            return ", ".join(shown)
        if self._first is None:
            self._first = (now, event.step)
            # A phase whose steps all arrive at once did not run them one by one: no rate to show.
            if not (unit == "step" and done > 1) and now > self._started:
                shown.append(_rate(done / (now - self._started), unit))
        elif event.step > self._first[1] and now > self._first[0]:
            rate = (event.step - self._first[1]) / (now - self._first[0])
            shown += [_rate(rate, unit), f"ETA {_clock((event.total - event.step) / rate)}"]
        return ", ".join(shown)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._key = None


def _rate(per_second: float, unit: str) -> str:
    return f"{1 / per_second:.1f} s/{unit}" if per_second < 1 else f"{per_second:.1f} {unit}s/s"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
