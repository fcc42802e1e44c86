"""What the edit is made of whatever the model: passes over a long clip, their inversions, and the result
they add up to. A family's pipeline (families/) runs the passes; these types carry them between its
stages, the inversion cache and processes (serving/ray_pool.py).

Long clips: when the clip has more frames than one pass holds (`window`), a few anchor frames, evenly
spread over the clip, join every pass. Each pass's frames attend to their own frames and the anchors;
anchors attend only among themselves, so they are identical in every pass and tie all passes to the
same appearance. Passes are therefore independent, and a pass can run in another process.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from videograin.engine.errors import CancelledError
from videograin.engine.metrics.attention_maps import AttentionMaps
from videograin.engine.metrics.leakage import LeakageMeter
from videograin.engine.progress import ProgressCallback, ProgressEvent

FrameCallback = Callable[[int, np.ndarray], None]


@dataclass
class EditResult:
    frames: np.ndarray  # (F, H, W, 3) uint8 at the working size
    leakage: dict[str, float] | None  # per phrase, when measured: over the modulated steps and levels
    cached_passes: int = 0  # passes whose inversion came from the inversion cache
    warp_error: float | None = None  # ×10³, under the source's flow (metrics/warp.py), when measured
    # phrase -> (modulated, plain) cross-attention maps (F, h, w) in [0, 1] (metrics/attention_maps.py)
    attention_maps: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    indices: list[int] | None = None  # clip index of each frame when only some passes ran; None: all, in order
    totals: PassTotals | None = None  # the sums behind the measurements, for `merge_passes`
    leakage_whole_run: dict[str, float] | None = None  # per phrase, over every step and level (metrics/leakage.py)


@dataclass
class PassTotals:
    """What an edit's measurements are summed from: results of passes run apart add up (`+`)."""

    names: list[str | None]  # region bit -> phrase (bit 0: the background phrase, or None)
    leakage: LeakageMeter | None = None
    attention_maps: AttentionMaps | None = None
    cached_passes: int = 0

    def __add__(self, other: PassTotals) -> PassTotals:
        return PassTotals(
            self.names, None if self.leakage is None else self.leakage + other.leakage,
            None if self.attention_maps is None else self.attention_maps + other.attention_maps,
            self.cached_passes + other.cached_passes,
        )

    def measurements(self) -> tuple[dict[str, float] | None, dict[str, tuple[np.ndarray, np.ndarray]] | None]:
        """Leakage per phrase and attention maps per phrase, as `EditResult` has them."""
        leakage = maps = None
        if self.leakage is not None:
            leakage = {self.names[bit]: share for bit, share in self.leakage.shares().items()}
        if self.attention_maps is not None:
            modulated, plain = (_unit(m) for m in self.attention_maps.result())
            maps = {name: (modulated[bit], plain[bit]) for bit, name in enumerate(self.names) if name}
        return leakage, maps

    def whole_run_leakage(self) -> dict[str, float] | None:
        """Leakage per phrase over every step and level, beside `measurements`' modulated figure."""
        if self.leakage is None:
            return None
        return {self.names[bit]: share for bit, share in self.leakage.shares("whole_run").items()}


def merge_passes(frames: Mapping[int, np.ndarray], totals: Sequence[PassTotals]) -> EditResult:
    """One result from passes run apart (`passes=`) that together make the clip: their frames by clip
    index, and their totals, summed before leakage and attention maps are normalised, as in one run."""
    summed = functools.reduce(operator.add, totals)
    leakage, maps = summed.measurements()
    return EditResult(np.stack([frames[i] for i in range(len(frames))]), leakage, summed.cached_passes,
                      attention_maps=maps, totals=summed, leakage_whole_run=summed.whole_run_leakage())


@dataclass
class PassInversion:
    """What inverting one pass yields that its edit reuses."""

    latents: torch.Tensor  # (F, C, h, w) or (1, C, T, h, w): the pass's frames inverted to the first edit timestep
    # noise level (timestep; 0 = the clean encoding) -> the pass's source latents there, for blending
    source: dict[int, torch.Tensor] = field(default_factory=dict)
    # timestep -> features recorded for injection (a family's own type: sd15/injection.py's Features)
    features: dict[int, Any] = field(default_factory=dict)


# Given a pass (its frame ids and anchor count) and the function that inverts it, an inversion and
# whether it was found rather than computed.
InversionSource = Callable[[dict, Callable[[], PassInversion]], tuple[PassInversion, bool]]



def plan_passes(num_frames: int, window: int) -> tuple[list[list[int]], int]:
    """Split clip frames into passes of at most `window` frames; anchors come last in each pass.

    Returns the passes (clip frame indices) and the number of anchors per pass (0 for one pass).
    """
    if num_frames <= window:
        return [list(range(num_frames))], 0
    if window < 2:
        raise ValueError("a window must hold at least 2 frames to share anchors")
    anchors_count = max(1, window // 4)
    anchors = sorted(set(np.linspace(0, num_frames - 1, anchors_count).round().astype(int).tolist()))
    rest = [i for i in range(num_frames) if i not in anchors]
    per_pass = window - len(anchors)
    return [rest[i : i + per_pass] + anchors for i in range(0, len(rest), per_pass)], len(anchors)



def _unit(maps: torch.Tensor) -> np.ndarray:
    """Each phrase's maps over the clip scaled into [0, 1] together, so frames compare."""
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
    return (maps / peak).numpy()


@dataclass
class StepReports:
    """What every step of an edit reports: a cancel check, then a progress event; edit steps of the first
    pass carry a preview (`preview` of the step's predicted clean latents) at the first step, every
    `preview_every` steps and at the last."""

    progress: ProgressCallback
    cancelled: Callable[[], bool]
    steps: int
    passes: int
    preview_every: int
    preview: Callable[[torch.Tensor], np.ndarray]

    def check_cancel(self) -> None:
        if self.cancelled():
            raise CancelledError("the edit was cancelled")

    def inverted(self, number: int) -> Callable[[int], None]:
        """The callback of pass `number`'s inversion steps."""

        def report(i: int) -> None:
            self.check_cancel()
            self.progress(ProgressEvent("invert", i + 1, self.steps, None, number, self.passes))

        return report

    def edited(self, number: int) -> Callable[[int, torch.Tensor], None]:
        """The callback of pass `number`'s edit steps."""

        def report(i: int, predicted: torch.Tensor) -> None:
            self.check_cancel()
            preview = None
            if number == 0 and (i == 0 or (i + 1) % self.preview_every == 0 or i + 1 == self.steps):
                preview = self.preview(predicted)
            self.progress(ProgressEvent("edit", i + 1, self.steps, preview, number, self.passes))

        return report
