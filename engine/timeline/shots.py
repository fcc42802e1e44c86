"""The shots of an OpenTimelineIO timeline: the clips marked for editing, their notes and their media.

A clip is a shot when it carries a marker named `videograin`. The marker's note holds the edit in the job
file's keys (YAML or JSON). Editors keep a note in different places, all read here:
`Marker.comment` (OTIO 0.16+, Kdenlive's native export), `metadata["Resolve_OTIO"]["Note"]` (DaVinci
Resolve's native export) and `metadata["fcp_xml"]["comment"]` (FCP 7 XML, Premiere, through
otio-fcp-adapter). Kdenlive's markers have no name, only a note: there a note whose first line is
`videograin` marks the clip. The clip's `metadata["videograin"]` (a mapping) is read too, the note's keys
on top of it.

Everything that can be wrong with a shot is found by `find_shots` and `Shot.load`, each error naming the
clip, its track and what to fix, before anything is edited or written; whatever else goes wrong reading a
clip (an export or a file nobody foresaw) becomes such an error too, never a traceback.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np
import opentimelineio as otio
import yaml
from opentimelineio.opentime import RationalTime, TimeRange

from videograin.engine.config import EditSettings, RegionConfig, parse_settings, region_name
from videograin.engine.errors import JobError
from videograin.engine.inputs.job import (
    MATTE_THRESHOLD,
    EditJob,
    resolve_path,
    sequence_pixels,
    tracked_mattes,
    validate_job,
)
from videograin.engine.inputs.limits import MediaLimits, PixelBudget, image_file_size
from videograin.engine.inputs.media import IMAGE_SUFFIXES, list_frames, probe_video, read_sequence, sequence_length
from videograin.engine.timeline.bundle import Bundle

MARKER_NAME = "videograin"
# Job keys a note may set under `source`: the rest (path, start, count, stride) comes from the clip.
NOTE_SOURCE_KEYS = {"width", "height"}
# A note is a few lines of job keys; the limit keeps a hostile one from costing memory and time.
MAX_NOTE_CHARS = 64 * 1024
MAX_MESSAGE_CHARS = 1000  # an error quotes at most this much of what it refuses
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Places:
    """Where a timeline's relative paths start: its clips' media (in the unpacked bundle, for an
    `.otioz`) and the paths its notes name (next to the timeline file or bundle the user gave)."""

    media: Path
    notes: Path
    bundle: Bundle | None = None

    def name(self, path: Path) -> str:
        """A path as a job's identity names it: inside a bundle, relative to it (the unpack folder changes)."""
        if self.bundle is not None and path.resolve().is_relative_to(self.bundle.folder.resolve()):
            return f"<bundle>/{path.resolve().relative_to(self.bundle.folder.resolve()).as_posix()}"
        return str(path)

    def identity(self, path: Path) -> list:
        """What a result depends on of a file: in a bundle what the bundle records (name, size, CRC: the
        unpacked copy is new each run), else its path, size and modification time."""
        recorded = self.bundle.identity(path.resolve()) if self.bundle is not None else None
        if recorded is not None:
            return list(recorded)
        stat = path.stat()
        return [str(path), stat.st_size, stat.st_mtime_ns]


@dataclass
class Footage:
    """Frames `indices` of a movie, a folder of images or a still (all 0), as `read_sequence` reads them."""

    path: Path
    indices: list[int]

    def pixels(self, what: str) -> int:
        """What reading these frames decodes, from the images' headers or the video's container."""
        if self.path.is_file() and self.path.suffix.lower() in IMAGE_SUFFIXES:  # a still, held
            width, height = image_file_size(self.path, what)
            return len(self.indices) * width * height
        return sequence_pixels(self.path, self.indices, what, lambda path, _: Path(path), MediaLimits())

    def identity(self, places: Places) -> list:
        """What a result depends on: the frames and the files they come from."""
        files = [self.path] if self.path.is_file() else [list_frames(self.path)[i] for i in self.indices]
        return [places.name(self.path), self.indices[0], len(self.indices), [places.identity(f) for f in files]]


@dataclass
class Shot:
    """One marked clip: where it sits in the timeline and everything its edit reads."""

    clip: str
    track: str
    range: TimeRange  # in the timeline (the top-level stack's time)
    rate: float  # frame rate of the clip's media: the edited frames have the same
    settings: EditSettings  # parsed from the note; source.path/start/count filled from the clip
    source: Footage
    mattes: list[Footage | None]  # one per region, in the note's order; None: tracked from its keyframes
    control: Footage | None
    job_hash: str  # what the result depends on (`job_hash`): a changed job gets a new results folder
    _tracked: dict[int, np.ndarray] | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return f"clip '{self.clip}' on track '{self.track}'"

    def load(self, device: str = "auto") -> EditJob:
        """Read the pixels and validate the job; errors name the clip and its track. Regions given by
        keyframes are tracked through the shot on the first load (trackers with a model on `device`)."""
        with _about(self.name):
            # Every image's size from its header, all spent from one budget before anything is decoded (as
            # `edit` reads a job): a matte held over the shot at 8192² would otherwise be read in full first.
            budget = PixelBudget(MediaLimits())
            named = [(self.source, "source")] + [(m, _matte_name(r, k)) for k, (r, m) in
                                                 enumerate(zip(self.settings.regions, self.mattes, strict=True)) if m]
            for footage, what in named + ([(self.control, "control maps")] if self.control else []):
                budget.spend(footage.pixels(what), what)
            frames = read_sequence(self.source.path, self.source.indices, "source")
            if self._tracked is None:
                self._tracked = tracked_mattes(self.settings.regions, frames, Path("/"), device)
            stacks = []
            for k, (region, matte) in enumerate(zip(self.settings.regions, self.mattes, strict=True)):
                if matte is None:
                    stacks.append(self._tracked[k])
                    continue
                name = _matte_name(region, k)
                stack = read_sequence(matte.path, matte.indices, name, grey=True)
                if stack.shape[1:] != frames.shape[1:3]:
                    raise JobError(
                        f"{name} ({matte.path}) is {stack.shape[2]}x{stack.shape[1]}, "
                        f"the clip {frames.shape[2]}x{frames.shape[1]}: render the matte at the clip's size"
                    )
                stacks.append(stack >= MATTE_THRESHOLD)
            control = None
            if self.control is not None:
                control = read_sequence(self.control.path, self.control.indices, "control maps")
            job = EditJob(self.settings, frames, np.stack(stacks), control)
            validate_job(job)
        return job


def _matte_name(region: RegionConfig, index: int) -> str:
    """For messages: the matte of 'iron man', or the matte of region 3 (no phrase)."""
    return f"the matte of '{region.phrase}'" if region.phrase else f"the matte of {region_name(region, index)}"


def job_hash(settings: EditSettings, footage: list[Footage], places: Places) -> str:
    """A job's identity: its settings and every file it reads, named so that the same bundle or
    timeline gives the same hash on every run."""
    keyframes = [places.identity(Path(key.mask)) for region in settings.regions for key in region.keyframes]
    described = settings.to_dict()
    described["source"] = {**described["source"], "path": places.name(Path(settings.source.path))}
    key = {"settings": described, "media": [f.identity(places) for f in footage], "keyframes": keyframes}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def _about(name: str) -> Iterator[None]:
    """Prefix a JobError raised inside with the clip it concerns; any other exception while reading the
    clip becomes such an error too (its details in the log, `-v`)."""
    try:
        yield
    except JobError as exc:
        text = bounded(str(exc))
        raise JobError(text if text.startswith(name) else f"{name}: {text}") from None
    except Exception as exc:
        log.info("reading %s failed", name, exc_info=True)
        raise JobError(
            f"{name}: its media or marker cannot be read ({type(exc).__name__}: {bounded(str(exc), 200)}): check "
            "the clip's media plays in the editor, relink it or export the timeline again"
        ) from None


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def find_shots(timeline: otio.schema.Timeline, places: Places, model: str | None = None) -> list[Shot]:
    """Every clip marked `videograin` on a video track, as a shot.

    `model` overrides every shot's model (the CLI's `--model`). Raises one JobError for the first problem.
    """
    video = [t for t in timeline.tracks if isinstance(t, otio.schema.Track) and t.kind == otio.schema.TrackKind.Video]
    if any(t.name == MARKER_NAME for t in video):
        raise JobError(
            f"the timeline already has a video track named '{MARKER_NAME}' (an output of `videograin timeline`?): "
            "run on the timeline you exported from the editor, or rename that track"
        )
    shots = []
    for track in video:
        for item in track:
            if isinstance(item, otio.schema.Clip):
                with _about(f"clip '{item.name}' on track '{track.name}'"):
                    job = marked_job(item)
                    if job is not None:
                        shots.append(_shot(item, track, job, timeline, video, places, model))
            elif isinstance(item, otio.core.Composition):
                name = f"the nested sequence '{item.name}' on track '{track.name}'"
                with _about(name):
                    itself = marked_job(item) is not None  # a Resolve compound clip's or nested sequence's marker
                    inside = any(marked_job(c) is not None for c in item.find_clips())
                if itself or inside:
                    raise JobError(
                        f"{'' if itself else 'a clip inside '}{name} is marked '{MARKER_NAME}': nested sequences "
                        "are not read; decompose it onto the timeline (Resolve: Decompose in Place) or render it "
                        "to a new clip, and mark a clip on a top-level track"
                    )
    if not shots:
        raise JobError(
            f"no clip carries a marker named '{MARKER_NAME}': add one to each clip to edit, its note holding the "
            "edit in the job file's keys (see README, 'Other editors: OpenTimelineIO')"
        )
    _check_overlaps(shots)
    return shots


def marked_job(clip: otio.core.Item) -> dict | None:
    """The job mapping a clip's `videograin` marker and metadata give, or None when it has no such marker."""
    for marker in clip.markers:
        note = _note(marker)
        first, _, rest = note.strip().partition("\n")
        if marker.name.strip().lower() == MARKER_NAME:
            text = note
        elif first.strip().lower() == MARKER_NAME:  # Kdenlive: a note and no name
            text = rest
        else:
            continue
        if len(text) > MAX_NOTE_CHARS:
            raise JobError(
                f"the note of its '{MARKER_NAME}' marker has {len(text)} characters, more than a note may "
                f"({MAX_NOTE_CHARS}): keep the edit's keys in it, nothing else"
            )
        try:
            from_note = yaml.load(text, Loader=_NoteLoader) if text.strip() else {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{getattr(exc, 'problem', None) or 'cannot be parsed'}" + (
                f" at line {mark.line + 1}" if mark else ""
            )
            raise JobError(
                f"the note of its '{MARKER_NAME}' marker is not valid YAML or JSON ({where}); "
                "write the edit as `key: value` lines, e.g. `prompt: an iron man is jogging`"
            ) from None
        if not isinstance(from_note, dict):
            raise JobError(
                f"the note of its '{MARKER_NAME}' marker must hold job keys (`prompt: ...`, `regions: ...`), "
                f"not {type(from_note).__name__} {bounded(repr(from_note), 80)}"
            )
        from_metadata = clip.metadata.get(MARKER_NAME)
        base = dict(from_metadata) if isinstance(from_metadata, Mapping) else {}
        return _plain({**base, **from_note})
    return None


class _NoteLoader(yaml.SafeLoader):
    """YAML without aliases: `*name` repeats a value, and a few hundred bytes of nested aliases repeat one
    into gigabytes. A note has no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"an alias (*{bounded(event.anchor, 40)}): aliases are not read in notes, write "
                "each value out", event.start_mark,
            )
        return super().compose_node(parent, index)


def _note(marker: otio.schema.Marker) -> str:
    """The marker's free text, wherever the editor that wrote the file keeps it."""
    resolve = marker.metadata.get("Resolve_OTIO")
    fcp = marker.metadata.get("fcp_xml")
    for note in (
        marker.comment,
        resolve.get("Note") if isinstance(resolve, Mapping) else None,
        fcp.get("comment") if isinstance(fcp, Mapping) else None,
    ):
        if isinstance(note, str) and note.strip():
            return note
    return ""


def _plain(value):
    """OTIO's AnyDictionary/AnyVector as plain dicts and lists (what `parse_settings` expects)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _shot(clip, track, job: dict, timeline, video: list, places: Places, model: str | None) -> Shot:
    source = job.get("source") or {}
    if not isinstance(source, dict) or set(source) - NOTE_SOURCE_KEYS:
        extra = ", ".join(f"source.{k}" for k in (set(source) - NOTE_SOURCE_KEYS if isinstance(source, dict) else []))
        raise JobError(
            f"{extra or 'source'} in the note: the source is the clip itself (its media and trims); "
            "a note may set only source.width and source.height"
        )
    if any(isinstance(effect, otio.schema.TimeEffect) for effect in clip.effects):
        raise JobError("the clip has a speed change (time effect): render it to a new clip, or remove the change")
    trimmed = clip.trimmed_range()
    in_timeline = clip.transformed_time_range(trimmed, timeline.tracks)
    footage, rate = clip_footage(clip, trimmed, places.media)
    job["source"] = {**source, "path": str(footage.path), "start": footage.indices[0], "count": len(footage.indices)}
    if model:
        job["model"] = model
    settings = parse_settings(job)  # unknown keys, phrases not in the prompt, bad values
    media_length = sequence_length(footage.path)
    mattes = []
    for k, region in enumerate(settings.regions):
        name = region_name(region, k)
        if region.keyframes:  # frames counted from the shot's first, as in a job file's edited clip
            for key in region.keyframes:
                what = f"keyframe {key.frame} of {name}"
                key.mask = str(local_path(places.notes, key.mask, what))
                if not Path(key.mask).is_file():
                    raise JobError(f"{what}: '{key.mask}' is not an image file")
            mattes.append(None)
        elif region.mask:
            what = _matte_name(region, k)
            region.mask = str(local_path(places.notes, region.mask, what))
            mattes.append(aligned(Path(region.mask), footage, media_length, what))
        elif not region.phrase:  # a matte track is found by its region's phrase
            raise JobError(
                f"{name} has no matte: a region with no phrase names no track, so give it `mask:` (a folder or "
                "movie of mattes) or `keyframes:` (mattes on a few frames, tracked) in the note"
            )
        else:
            mattes.append(_matte_track(region.phrase, in_timeline, footage, timeline, video, places.media))
    control = None
    if settings.control.path:
        settings.control.path = str(local_path(places.notes, settings.control.path, "control.path"))
        if settings.control.type == "frames":
            control = aligned(Path(settings.control.path), footage, media_length, "control maps")
    if settings.flow.path:
        settings.flow.path = str(local_path(places.notes, settings.flow.path, "flow.path"))
    shot_range = TimeRange(in_timeline.start_time, trimmed.duration)
    footages = [footage, *filter(None, mattes), *([control] if control else [])]
    return Shot(clip.name, track.name, shot_range, rate, settings, footage, mattes, control,
                job_hash(settings, footages, places))


def clip_footage(clip: otio.schema.Clip, trimmed: TimeRange, base: Path) -> tuple[Footage, float]:
    """The media frames a clip shows over `trimmed` (its source time), and the media's frame rate.

    Source times are in the media's time, from the start its `available_range` states; without one, from
    the file's start timecode when the clip's times lie after it (Resolve, Premiere), else from 0."""
    ref = clip.media_reference
    if isinstance(ref, otio.schema.ImageSequenceReference):
        return _sequence_footage(ref, trimmed, base), ref.rate
    if not isinstance(ref, otio.schema.ExternalReference):
        kind = type(ref).__name__
        raise JobError(f"the clip has no media file ({kind}): relink it to its media in the editor, then export again")
    if not ref.target_url.strip():  # Kdenlive's missing media
        raise JobError("its media is offline (the editor wrote no path for it): relink the clip, then export again")
    path = local_path(base, url_path(ref.target_url), "its media")
    if not path.exists():
        raise JobError(f"its media '{path}' is offline (no such file): relink the clip or restore the file")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:  # a still, held over the clip
        rate = trimmed.duration.rate
        count = max(1, round(trimmed.duration.to_seconds() * rate))
        _within_budget(count, image_file_size(path, "its media"))
        return Footage(path, [0] * count), rate
    info = probe_video(path, "its media") if path.is_file() else None
    if info is not None and info.variable_rate:
        raise JobError(
            f"its media '{path}' has a variable frame rate (on average {float(info.rate):.3f} fps): its frames do not "
            "sit at fixed times, so the clip's trims cannot be matched frame for frame; convert it to a constant "
            f"rate (e.g. ffmpeg -i {path.name} -fps_mode cfr -r {round(info.rate)} -c:a copy fixed.mov) and relink"
        )
    available = ref.available_range
    declared = available is not None and available.start_time.rate > 0
    rate = available.start_time.rate if declared else float(info.rate) if info else trimmed.start_time.rate
    media_start = available.start_time if declared else RationalTime(0, rate)
    if not declared and info is not None and info.start_frame:
        timecode = RationalTime(info.start_frame, float(info.rate))
        media_start = timecode if trimmed.start_time >= timecode else media_start
    first = round((trimmed.start_time - media_start).to_seconds() * rate)
    count = round(trimmed.duration.to_seconds() * rate)
    if info is not None:
        _within_budget(count, (info.width, info.height))
    length = info.frames if info is not None else sequence_length(path)
    if count < 1 or first < 0 or first + count > length:
        raise JobError(
            f"the clip shows frames {first}..{first + count - 1} of '{path}', which has {length}: "
            "the clip's trims run past its media; relink it to the full media"
        )
    return Footage(path, list(range(first, first + count))), rate


def _within_budget(count: int, size: tuple[int, int]) -> None:
    """The clip's frames at their size fit the pixels one edit may decode (as `edit` counts a job's), checked
    before a frame list of that length is made: a clip's duration is only a number in the timeline."""
    PixelBudget(MediaLimits()).spend(count * size[0] * size[1], f"the clip's {count:,} frames of {size[0]}x{size[1]}")


def _sequence_footage(ref: otio.schema.ImageSequenceReference, trimmed: TimeRange, base: Path) -> Footage:
    """An image sequence's frames over `trimmed`, as indices into its folder's sorted images."""
    try:
        first = ref.frame_for_time(trimmed.start_time)
    except ValueError:
        raise JobError(
            f"the clip starts at {trimmed.start_time.to_seconds():.3f} s, outside its image sequence's "
            f"{ref.number_of_images_in_sequence()} frames: relink it to the full sequence"
        ) from None
    count = round(trimmed.duration.to_seconds() * ref.rate)
    start = (first - ref.start_frame) // ref.frame_step
    first_path = local_path(base, url_path(ref.target_url_for_image_number(start)), "its image sequence")
    if first_path.is_file():  # else reported offline below, with the others
        _within_budget(count, image_file_size(first_path, "its image sequence"))
    numbers = [start + k for k in range(count)]
    paths = [local_path(base, url_path(ref.target_url_for_image_number(n)), "its image sequence") for n in numbers]
    folder = paths[0].parent
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise JobError(
            f"frame '{missing}' of its image sequence is offline (no such file): restore it or relink the clip"
        )
    listed = {p: i for i, p in enumerate(list_frames(folder))}
    indices = [listed.get(p) for p in paths]
    if None in indices or indices != list(range(indices[0], indices[0] + count)):
        raise JobError(
            f"the folder '{folder}' holds other images among the sequence's frames: keep each image sequence "
            "in a folder of its own"
        )
    return Footage(folder, indices)


def aligned(path: Path, source: Footage, media_length: int, what: str) -> Footage:
    """A sequence lined up with the shot: as long as the clip's media (same frames) or as the shot; a
    single image is held over the shot."""
    if not path.exists():
        raise JobError(f"{what}: '{path}' does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return Footage(path, [0] * len(source.indices))
    length = sequence_length(path, what)
    if length == media_length:
        return Footage(path, source.indices)
    if length == len(source.indices):
        return Footage(path, list(range(length)))
    raise JobError(
        f"{what}: '{path}' has {length} frames; it needs one per frame of the clip's media ({media_length}) "
        f"or one per frame of the clip ({len(source.indices)})"
    )


def _matte_track(phrase: str, shot_range: TimeRange, source: Footage, timeline, video: list, base: Path) -> Footage:
    """The matte of `phrase` from a clip on the video track of that name, over the shot's time."""
    tracks = [t for t in video if t.name.strip().lower() == phrase.strip().lower()]
    if not tracks:
        raise JobError(
            f"region '{phrase}' has no matte: give it `mask:` (a folder or movie of mattes) or `keyframes:` (mattes "
            f"on a few frames, tracked) in the note, or put its matte clip on a video track named '{phrase}', "
            "lined up with the clip"
        )
    for item in tracks[0]:
        if not isinstance(item, otio.schema.Clip):
            continue
        there = item.transformed_time_range(item.trimmed_range(), timeline.tracks)
        if there.start_time <= shot_range.start_time < there.end_time_exclusive():
            if there.end_time_exclusive() < shot_range.end_time_exclusive():
                raise JobError(
                    f"the matte clip '{item.name}' on track '{tracks[0].name}' ends before the clip does: "
                    "extend it over the whole clip"
                )
            offset = shot_range.start_time - there.start_time
            start = item.trimmed_range().start_time + offset
            with _about(f"the matte clip '{item.name}' on track '{tracks[0].name}'"):
                matte, _ = clip_footage(item, TimeRange(start, shot_range.duration), base)
            if matte.path.is_file() and matte.path.suffix.lower() in IMAGE_SUFFIXES:
                return Footage(matte.path, [0] * len(source.indices))  # a still matte, held over the shot
            if len(matte.indices) != len(source.indices):
                raise JobError(
                    f"the matte clip '{item.name}' on track '{tracks[0].name}' has {len(matte.indices)} frames over "
                    f"the clip's {len(source.indices)}: render the matte at the frame rate of the clip's media"
                )
            return matte
    raise JobError(
        f"the track '{tracks[0].name}' has no matte clip under the clip: line the matte up with the clip "
        f"(from {shot_range.start_time.to_seconds():.3f} s)"
    )


def _check_overlaps(shots: list[Shot]) -> None:
    ordered = sorted(shots, key=lambda s: s.range.start_time.to_seconds())
    for before, after in itertools.pairwise(ordered):
        if after.range.start_time < before.range.end_time_exclusive():
            raise JobError(
                f"{before.name} and {after.name} overlap in the timeline; the '{MARKER_NAME}' track holds one "
                "edited clip at a time: remove one of the two markers"
            )


def url_path(url: str) -> str:
    """A media reference's target URL (file://, or a plain path) as a path string."""
    return otio.url_utils.filepath_from_url(url) if url.startswith("file:") else url


def local_path(base: Path, text: str, what: str) -> Path:
    """A path the timeline names, on this machine: a relative one starts at `base`. A Windows path (drive
    letter or share) that is not here is said to be one, rather than taken as a relative path."""
    path = resolve_path(base, text)
    if os.name != "nt" and PureWindowsPath(text).drive and not path.exists():
        raise JobError(
            f"{what} '{text}' is a Windows path, not found on this machine (the timeline was made on Windows): "
            "relink the media to where it is here in the editor and export again, or edit on the Windows machine"
        )
    return path
