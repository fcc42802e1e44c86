"""A complete edit request: settings plus the pixels they refer to, validated before any work starts.

A job comes from a YAML job file (`load_job`) or from a protocol `submit` (frames and mattes inline);
both end up as an `EditJob`, and `validate_job` gives one clear error for whatever is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from videograin.engine.config import EditSettings, RegionConfig, SourceConfig, parse_settings
from videograin.engine.errors import JobError
from videograin.engine.inputs.limits import MediaLimits, PixelBudget, image_file_size, video_size
from videograin.engine.inputs.mattes import Keyframe, RegionTrack, track_mattes
from videograin.engine.inputs.media import list_frames, read_image, read_sequence, sequence_length
from videograin.engine.progress import ProgressCallback, no_progress

MATTE_THRESHOLD = 128  # grey level at and above which a matte pixel is inside its region

# Where a path a job names is read: (the value as written, the setting's name) -> the path to read.
Locate = Callable[[str, str], Path]


@dataclass
class EditJob:
    settings: EditSettings
    frames: np.ndarray  # (F, H, W, 3) uint8, source resolution
    masks: np.ndarray  # (K, F, H, W) bool, one stack per region, source resolution
    control_maps: np.ndarray | None = None  # (F, H, W, 3) uint8, for control type "frames"
    # Which source frames the clip holds, and how many the source has (supplied flow is per source frame);
    # None for frames that arrived inline.
    indices: list[int] | None = None
    source_length: int | None = None

    @property
    def source_size(self) -> tuple[int, int]:
        return self.frames.shape[2], self.frames.shape[1]


def frame_indices(source: SourceConfig, length: int) -> list[int]:
    """The source frame numbers the job edits: start, start+stride, ... (count of them, or to the end)."""
    if source.start >= length:
        raise JobError(f"source.start is {source.start} but the source has {length} frames")
    indices = list(range(source.start, length, source.stride))
    if source.count is not None:
        if source.count > len(indices):
            raise JobError(
                f"source.count is {source.count} but only {len(indices)} frames exist from frame "
                f"{source.start} with stride {source.stride}"
            )
        indices = indices[: source.count]
    return indices


def load_job(path: str | Path, device: str = "auto", progress: ProgressCallback = no_progress) -> EditJob:
    """Read a YAML job file; relative paths in it are relative to the file's folder. Regions given by
    keyframes are tracked here (`load_job_mapping`)."""
    return load_job_mapping(read_job_file(path), Path(path).parent, device, progress)


def read_job_file(path: str | Path) -> object:
    """A job file's YAML as data, unchecked (`parse_settings` checks it)."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"job file '{path}' does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise JobError(f"job file '{path}' is not valid YAML: {exc}") from None


def load_job_mapping(
    data: object, base: Path, device: str = "auto", progress: ProgressCallback = no_progress,
    limits: MediaLimits = MediaLimits(), locate: Locate | None = None,
) -> EditJob:
    """Read the media a job mapping names; relative paths are relative to `base`, unless `locate` says
    where each path is read (the engine's media roots, serving/access.py).

    Everything `limits` bounds is checked before it is read: the working size, the frame count from the
    source's listing, every image's size from its header against the job's pixel budget.
    Regions given by keyframes are tracked through the edited frames now, before the job exists, so that
    everything downstream sees mattes on every frame and a bad keyframe fails before anything is written;
    SAM trackers run on `device` ("auto": the GPU when there is one) and report `progress` ("track")."""
    settings = parse_settings(data)
    src = settings.source
    limits.check_working_clip(1, src.width, src.height)
    locate = locate or (lambda value, what: resolve_path(base, value))
    budget = PixelBudget(limits)
    if not src.path:
        raise JobError("the job has no source.path: a folder of frames or a video file")
    source_path = locate(src.path, "source.path")
    src.path = str(source_path)
    if not source_path.exists():
        raise JobError(f"source: '{source_path}' does not exist")
    length = sequence_length(source_path)
    indices = frame_indices(src, length)
    limits.check_frames(len(indices), "source")
    limits.check_working_clip(len(indices), src.width, src.height)
    budget.spend(sequence_pixels(source_path, indices, "source", locate, limits), "source")
    frames = read_sequence(source_path, indices, "source")

    stacks: list[np.ndarray | None] = []
    for k, region in enumerate(settings.regions):
        if region.keyframes:
            stacks.append(None)  # tracked below
            continue
        if not region.mask:
            raise JobError(f"region '{region.phrase}' has no mask: a folder or video of mattes, or keyframes to track")
        mask_path = locate(region.mask, f"regions[{k}].mask")
        region.mask = str(mask_path)
        what = f"mask of region '{region.phrase}'"
        stacks.append(_read_aligned(mask_path, indices, length, what, True, budget, locate, limits) >= MATTE_THRESHOLD)
    for k, stack in tracked_mattes(settings.regions, frames, base, device, progress, budget, locate).items():
        stacks[k] = stack
    if len({stack.shape for stack in stacks}) != 1:
        sizes = ", ".join(f"'{r.phrase}' {m.shape[2]}x{m.shape[1]}" for r, m in zip(settings.regions, stacks))
        raise JobError(f"region mattes differ in size: {sizes}")
    masks = np.stack(stacks)

    control_maps = None
    if settings.control.type == "frames":
        control_path = locate(settings.control.path or "", "control.path")
        settings.control.path = str(control_path)
        control_maps = _read_aligned(control_path, indices, length, "control maps", False, budget, locate, limits)
    elif settings.control.type in ("depth", "pose"):
        settings.control.path = str(locate(settings.control.path or "", "control.path"))
    if settings.flow.path:
        settings.flow.path = str(locate(settings.flow.path, "flow.path"))
        if not Path(settings.flow.path).exists():
            raise JobError(f"flow.path: '{settings.flow.path}' does not exist")
    job = EditJob(settings, frames, masks, control_maps, indices, length)
    validate_job(job)
    return job


def tracked_mattes(
    regions: list[RegionConfig], frames: np.ndarray, base: Path, device: str = "auto",
    progress: ProgressCallback = no_progress, budget: PixelBudget | None = None, locate: Locate | None = None,
) -> dict[int, np.ndarray]:
    """The mattes of the regions given by keyframes (their number → (F, H, W) bool), tracked through
    `frames`; keyframe paths are relative to `base` (or where `locate` says). Other regions are left out.
    The keyframes and the tracked mattes are spent from `budget` before they are read or made."""
    budget = budget or PixelBudget(MediaLimits())
    locate = locate or (lambda value, what: resolve_path(base, value))
    tracks = {k: _read_keyframes(region, locate, budget) for k, region in enumerate(regions) if region.keyframes}
    if not tracks:
        return {}
    budget.spend(len(tracks) * frames.shape[0] * frames.shape[1] * frames.shape[2], "the tracked mattes")
    return dict(zip(tracks, track_mattes(frames, list(tracks.values()), device, progress)))


def _read_keyframes(region: RegionConfig, locate: Locate, budget: PixelBudget) -> RegionTrack:
    """A region's keyframe mattes, read (frame range, size and emptiness are checked against the clip by
    `check_keyframes`, when tracking starts)."""
    keyframes = []
    for key in region.keyframes:
        what = f"keyframe {key.frame} of region '{region.phrase}'"
        path = locate(key.mask, f"{what}: mask")
        key.mask = str(path)
        if not path.is_file():
            raise JobError(f"{what}: '{path}' is not an image file (a keyframe's mask is one image)")
        budget.spend(_pixels(image_file_size(path, what), budget.limits, f"{what}: '{path}'"), what)
        keyframes.append(Keyframe(key.frame, read_image(path, what, grey=True) >= MATTE_THRESHOLD))
    return RegionTrack(keyframes, region.track, region.tracker_model, region.phrase)


def resolve_path(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _read_aligned(
    path: Path, indices: list[int], source_length: int, what: str, grey: bool, budget: PixelBudget, locate: Locate,
    limits: MediaLimits,
) -> np.ndarray:
    """Read a sequence aligned with the source: either as long as the source, or one per edited frame."""
    if not path.exists():
        raise JobError(f"{what}: '{path}' does not exist")
    length = sequence_length(path)
    picked = indices if length == source_length else list(range(length)) if length == len(indices) else None
    if picked is not None:
        budget.spend(sequence_pixels(path, picked, what, locate, limits), what)
        return read_sequence(path, picked, what, grey)
    raise JobError(
        f"{what}: '{path}' has {length} frames; it needs one per source frame ({source_length}) "
        f"or one per edited frame ({len(indices)})"
    )


def sequence_pixels(path: Path, indices: list[int], what: str, locate: Locate, limits: MediaLimits) -> int:
    """The pixels frames `indices` of a folder or video decode to, each frame's size within `limits`, from
    the folder's listing and its images' headers (each image also where `locate` allows it: a link in the
    folder may point anywhere) or from the video's container, before any frame is decoded."""
    if not path.is_dir():
        return len(indices) * _pixels(video_size(path, what), limits, f"{what}: '{path}'")
    files = list_frames(path)
    if indices and max(indices) >= len(files):
        raise JobError(f"{what}: '{path}' has {len(files)} frames, frame {max(indices)} was asked for")
    return sum(_pixels(image_file_size(locate(str(files[i].absolute()), what), what), limits, f"{what}: '{files[i]}'")
               for i in indices)


def _pixels(size: tuple[int, int], limits: MediaLimits, what: str) -> int:
    limits.check_size(*size, what)
    return size[0] * size[1]


def validate_job(job: EditJob) -> None:
    """Check everything that can be checked before loading a model; raise one clear JobError."""
    s = job.settings
    if job.frames.ndim != 4 or job.frames.shape[3] != 3 or job.frames.dtype != np.uint8:
        raise JobError("source frames must be RGB uint8 images")
    count, height, width = job.frames.shape[:3]
    if count < 1:
        raise JobError("the source has no frames")
    if job.masks.shape[0] != len(s.regions):
        raise JobError(f"{len(s.regions)} regions but {job.masks.shape[0]} matte stacks")
    for region, stack in zip(s.regions, job.masks):
        name = f"region '{region.phrase}'"
        if stack.shape[0] != count:
            raise JobError(f"{name}: {stack.shape[0]} matte frames for {count} source frames")
        if stack.shape[1:] != (height, width):
            raise JobError(
                f"{name}: matte size {stack.shape[2]}x{stack.shape[1]} differs from the source {width}x{height}"
            )
        if not stack.any():
            raise JobError(f"{name}: the matte is empty (no white pixels in any frame); paint the region")
    if job.control_maps is not None and job.control_maps.shape[:3] != job.frames.shape[:3]:
        raise JobError("control maps must match the source frames in count and size")
