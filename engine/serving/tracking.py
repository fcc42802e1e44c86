"""A `track` request (SPEC.md §3.11) read into the job the worker runs: the clip, and each region's
keyframe mattes and tracker, checked before anything is queued.

Structure that breaks the spec (a region that is not a map, a frame that is not an integer) is
`bad_header`; content that makes no valid tracking (a keyframe outside the clip, an empty or wrongly
sized matte, an unknown tracker, a path that does not exist) is `bad_job`, and says what to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from videograin.engine.config import MAX_REGIONS, EditSettings, SourceConfig
from videograin.engine.errors import EXCERPT_CHARS, JobError, excerpt
from videograin.engine.inputs.job import MATTE_THRESHOLD, frame_indices, sequence_pixels
from videograin.engine.inputs.limits import MediaLimits, PixelBudget, image_file_size
from videograin.engine.inputs.mattes import Keyframe, RegionTrack, check_keyframes
from videograin.engine.inputs.media import read_image, read_sequence, sequence_length
from videograin.engine.serving.access import MediaAccess
from videograin.protocol.wire import ProtocolError

SOURCE_KEYS = ("path", "start", "count", "stride")

# Decodes one image descriptor of the request: (descriptor, grey) -> (H, W, 3) RGB or (H, W) grey uint8.
ImageReader = Callable[[Any, bool], np.ndarray]


@dataclass
class TrackJob:
    """What a `track` request asks: the clip, and each region's keyframes and tracker."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    regions: list[RegionTrack]


def inline_track(header: dict[str, Any], read: ImageReader, max_frames: int) -> TrackJob:
    """The job of an inline `track`: frames and keyframe mattes are image descriptors of its parts."""
    descriptors = header.get("frames")
    if not isinstance(descriptors, list) or not descriptors:
        raise ProtocolError("bad_header", "an inline track needs 'frames': a list of image descriptors")
    if len(descriptors) > max_frames:
        raise ProtocolError("too_large", f"{len(descriptors)} frames is over the limit of {max_frames}")
    images = [read(descriptor, False) for descriptor in descriptors]
    if len({image.shape for image in images}) != 1:
        raise JobError("source frames differ in size")
    frames = np.stack(images)
    return _checked(frames, _regions(header, lambda key, what: read(key.get("matte"), True)))


def paths_track(header: dict[str, Any], limits: MediaLimits, access: MediaAccess, budget: PixelBudget) -> TrackJob:
    """The job of a paths `track`: the engine reads the clip and each keyframe's matte from its disk, where
    `access` allows, each image's size spent from `budget` before it is read."""
    source = _source(header.get("source"))
    path = access.locate(source.path, "source.path")
    if not path.exists():
        raise JobError(f"source: '{path}' does not exist")
    indices = frame_indices(source, sequence_length(path))
    limits.check_frames(len(indices), "source")
    budget.spend(sequence_pixels(path, indices, "source", access.locate, limits), "source")
    frames = read_sequence(path, indices, "source")

    def read_matte(key: dict[str, Any], what: str) -> np.ndarray:
        matte = access.locate(key.get("path"), f"{what}: path")
        if not matte.is_file():
            raise JobError(f"{what}: '{matte}' is not an image file (a keyframe's matte is one image)")
        width, height = image_file_size(matte, what)
        limits.check_size(width, height, f"{what}: '{matte}'")
        budget.spend(width * height, what)
        return read_image(matte, what, grey=True)

    return _checked(frames, _regions(header, read_matte))


def refuse_keyframes(settings: EditSettings) -> None:
    """A paths `submit` edits the mattes it names and never tracks: tracking is a job of its own (`track`),
    which runs on the worker, streams its mattes for a look before the edit, and can be cancelled alone.
    (An inline submit carries a matte per frame; its regions' keyframes are not read, as their `mask`.)"""
    for region in settings.regions:
        if region.keyframes:
            raise JobError(
                f"region '{region.phrase}' gives keyframes: a submit needs a matte for every frame. Track the "
                "keyframes first with a `track` request (SPEC.md §3.11) and submit the mattes it returns"
            )


def _checked(frames: np.ndarray, regions: list[RegionTrack]) -> TrackJob:
    check_keyframes(frames, regions)  # frame range, size, emptiness, tracker
    return TrackJob(frames, regions)


def _regions(header: dict[str, Any], read_matte: Callable[[dict[str, Any], str], np.ndarray]) -> list[RegionTrack]:
    regions = header["regions"]
    if not 1 <= len(regions) <= MAX_REGIONS:
        raise JobError(f"'regions' has {len(regions)} regions; give 1 to {MAX_REGIONS}, each with its keyframes")
    tracks = []
    for i, region in enumerate(regions):
        where = f"'track.regions[{i}]'"
        if not isinstance(region, dict):
            raise ProtocolError("bad_header", f"{where} must be a map: keyframes, tracker, tracker_model, name")
        for field in ("name", "tracker", "tracker_model"):
            if region.get(field) is not None and not isinstance(region[field], str):
                raise ProtocolError("bad_header", f"{where}.{field} must be a string")
        name = (region.get("name") or f"region {i}")[:EXCERPT_CHARS]  # for messages only: kept short
        keys = region.get("keyframes")
        if not isinstance(keys, list):
            raise ProtocolError("bad_header", f"{where}.keyframes must be a list of maps, each with a 'frame'")
        keyframes = []
        for j, key in enumerate(keys):
            frame = key.get("frame") if isinstance(key, dict) else None
            if not isinstance(frame, int) or isinstance(frame, bool):
                raise ProtocolError("bad_header", f"{where}.keyframes[{j}] must be a map with 'frame': an integer")
            matte = read_matte(key, f"keyframe {frame} of region '{name}'")
            keyframes.append(Keyframe(frame, matte >= MATTE_THRESHOLD))
        tracks.append(RegionTrack(keyframes, region.get("tracker") or "flow", region.get("tracker_model"), name))
    return tracks


def _source(source: Any) -> SourceConfig:
    """A paths track's `source` map, as the settings' `source` reads it (path, start, count, stride)."""
    if not isinstance(source, dict):
        raise ProtocolError("bad_header", "a paths track needs 'source': a map with 'path' (and start, count, stride)")
    unknown = sorted(set(source) - set(SOURCE_KEYS))
    if unknown:
        raise JobError(f"unknown setting 'source.{unknown[0]}' (known here: {', '.join(SOURCE_KEYS)})")
    for key in ("start", "count", "stride"):
        value = source.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise JobError(f"'source.{key}' must be int, got {excerpt(value)}")
    given = {key: value for key, value in source.items() if value is not None}  # nil counts as absent
    config = SourceConfig(path=given.get("path"), start=given.get("start", 0), count=given.get("count"),
                          stride=given.get("stride", 1))
    if config.start < 0 or config.stride < 1 or (config.count is not None and config.count < 1):
        raise JobError("source.start must be >= 0, source.stride >= 1 and source.count >= 1")
    return config

