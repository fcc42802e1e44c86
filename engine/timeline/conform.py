"""Timeline files in and out, and the `videograin` track that carries the edited shots back.

The original timeline is never changed: the output is a deep copy with one more video track, named
`videograin`, just above the topmost video track. It holds one clip per edited shot at exactly the
shot's timeline range (gaps between), pointing at the edited frames (an image sequence) or at a movie
of them; each clip's metadata holds the job that made it and what its result.json reports.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import opentimelineio as otio
from opentimelineio.opentime import RationalTime, TimeRange
from opentimelineio.url_utils import url_from_filepath

from videograin.engine.errors import JobError
from videograin.engine.inputs.limits import check_json_depth
from videograin.engine.inputs.media import write_atomic
from videograin.engine.timeline import bundle
from videograin.engine.timeline.shots import MARKER_NAME, Places, Shot, resolve_path, url_path

BUNDLE = ".otioz"
# Only native OTIO keeps image sequences: the bundle adapter packs movie files only, and the other
# adapters (FCP XML, EDL) write no image-sequence references.
SEQUENCE_SUFFIXES = (".otio",)


@dataclass
class Edited:
    """A shot whose result is on disk: its folder (frames/, result.json...) and, if asked, a movie."""

    shot: Shot
    folder: Path
    report: dict  # result.json
    movie: Path | None = None
    seconds: float = 0.0  # wall time of this run's edit (reading, editing, writing results)
    reused: bool = False  # the result of an earlier run, for the same job


def read_timeline(path: Path, unpack_to: Path) -> tuple[otio.schema.Timeline, Places]:
    """Read a timeline through the OTIO adapter its suffix names; returns it and where its relative paths
    start: media next to the timeline file, or in a bundle (unpacked into `unpack_to`, which then holds
    nothing else); paths in notes next to the file the user gave."""
    if not path.is_file():
        raise JobError(f"timeline '{path}' does not exist")
    adapter = adapter_for(path)
    if path.suffix.lower() == BUNDLE:
        timeline, unpacked = bundle.unpack(path, unpack_to)
        places = Places(unpack_to, path.parent, unpacked)
    else:
        try:
            if adapter == "otio_json":  # read here, to be measured before OpenTimelineIO's reader recurses into it
                text = path.read_text(encoding="utf-8")
                check_json_depth(text, f"timeline '{path}'")
                timeline = otio.adapters.read_from_string(text, "otio_json")
            else:
                timeline = otio.adapters.read_from_file(str(path), adapter_name=adapter)
        except JobError:
            raise
        except Exception as exc:  # adapters raise anything from ValueError to their own errors
            raise JobError(f"timeline '{path}' cannot be read as {adapter}: {type(exc).__name__}: {exc}") from None
        places = Places(path.parent, path.parent)
    if not isinstance(timeline, otio.schema.Timeline):
        raise JobError(f"'{path}' holds a {type(timeline).__name__}, not a timeline: export the timeline itself")
    if places.bundle is not None and (outside := outside_media(timeline, places.media)):
        raise JobError(
            f"timeline '{path}' names media outside the bundle ({'; '.join(outside[:3])}): the result bundle "
            "would pack those files of this machine; a bundle holds its own media: export it again from the editor"
        )
    return timeline, places


def outside_media(timeline: otio.schema.Timeline, folder: Path) -> list[str]:
    """The clips whose media lie outside `folder`, as `clip 'name': 'path'`."""
    found = []
    for clip in timeline.find_clips():
        ref = clip.media_reference
        if isinstance(ref, otio.schema.ExternalReference | otio.schema.ImageSequenceReference) and ref.target_url:
            text = url_path(ref.target_url)
            if not resolve_path(folder, text).resolve().is_relative_to(folder.resolve()):
                found.append(f"clip '{clip.name}': '{text}'")
    return found


def adapter_for(path: Path) -> str:
    try:
        return otio.adapters.from_filepath(str(path)).name
    except otio.exceptions.OTIOError:
        known = ", ".join(
            sorted(
                {f".{s}" for a in otio.adapters.available_adapter_names() for s in otio.adapters.from_name(a).suffixes}
            )
        )
        raise JobError(
            f"no OpenTimelineIO adapter reads or writes '{path.suffix}' files here (installed: {known}); "
            "FCP XML needs `pip install otio-fcp-adapter`, other formats their otio-*-adapter plug-in"
        ) from None


def conformed(timeline: otio.schema.Timeline, edited: list[Edited]) -> otio.schema.Timeline:
    """A copy of `timeline` with the `videograin` track above its topmost video track."""
    result = copy.deepcopy(timeline)
    track = otio.schema.Track(MARKER_NAME, kind=otio.schema.TrackKind.Video)
    cursor = None
    for item in sorted(edited, key=lambda e: e.shot.range.start_time.to_seconds()):
        start = item.shot.range.start_time
        cursor = cursor if cursor is not None else RationalTime(0, start.rate)
        if start > cursor:
            track.append(otio.schema.Gap(source_range=TimeRange(RationalTime(0, start.rate), start - cursor)))
        track.append(_clip(item))
        cursor = item.shot.range.end_time_exclusive()
    stack = result.tracks
    video = [
        i for i, t in enumerate(stack) if isinstance(t, otio.schema.Track) and t.kind == otio.schema.TrackKind.Video
    ]
    stack.insert(video[-1] + 1 if video else len(stack), track)
    return result


def _clip(item: Edited) -> otio.schema.Clip:
    shot, rate = item.shot, item.shot.rate
    frames = item.report["frames"]
    available = TimeRange(RationalTime(0, rate), RationalTime(frames, rate))
    if item.movie is not None:
        reference = otio.schema.ExternalReference(url_from_filepath(str(item.movie.resolve())), available)
    else:
        reference = otio.schema.ImageSequenceReference(
            url_from_filepath(str((item.folder / "frames").resolve())) + "/",
            "",
            ".png",
            start_frame=0,
            frame_step=1,
            rate=rate,
            frame_zero_padding=5,
            available_range=available,
        )
    metadata = {
        "job": item.report["settings"],
        "job_hash": shot.job_hash,
        "results": str(item.folder.resolve()),
        "source_clip": shot.clip,
        "source_track": shot.track,
        "result": {k: v for k, v in item.report.items() if k != "settings"},
    }
    # Same duration as the shot, so the clip covers exactly the shot's range whatever the two rates.
    source_range = TimeRange(RationalTime(0, rate), shot.range.duration)
    return otio.schema.Clip(f"{shot.clip} (videograin)", reference, source_range, {MARKER_NAME: metadata})


def check_writable(timeline: otio.schema.Timeline, path: Path, base: Path, planned: list[Edited]) -> None:
    """Everything writing `path` could refuse, found before any edit: adapters that cannot express the
    result (an EDL holds one video track), bundles whose media are not files."""
    adapter = adapter_for(path)
    try:
        if path.suffix.lower() == BUNDLE:
            with tempfile.TemporaryDirectory() as folder:
                otio.adapters.write_to_file(
                    _absolute_media(timeline, base), str(Path(folder) / path.name), adapter_name=adapter, dryrun=True
                )
        else:
            otio.adapters.write_to_string(conformed(timeline, planned), adapter_name=adapter)
    except Exception as exc:
        raise JobError(f"'{path.name}' cannot be written as {adapter}: {type(exc).__name__}: {exc}") from None


def write_timeline(timeline: otio.schema.Timeline, path: Path, base: Path) -> None:
    """Write atomically: `path` is the previous file or the complete new one, never a torn write."""
    adapter = adapter_for(path)
    if path.suffix.lower() == BUNDLE:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.")) / path.name
        try:
            otio.adapters.write_to_file(_absolute_media(timeline, base), str(tmp), adapter_name=adapter)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.parent.rmdir()
    else:
        write_atomic(path, otio.adapters.write_to_string(timeline, adapter_name=adapter).encode())


def _absolute_media(timeline: otio.schema.Timeline, base: Path) -> otio.schema.Timeline:
    """A copy whose relative media paths are absolute: the bundle adapter would take them relative to the
    working directory, not to the timeline (it relinks every file into the bundle anyway)."""
    result = copy.deepcopy(timeline)
    for clip in result.find_clips():
        ref = clip.media_reference
        if isinstance(ref, otio.schema.ExternalReference) and not Path(url_path(ref.target_url)).is_absolute():
            ref.target_url = url_from_filepath(str(resolve_path(base, url_path(ref.target_url)).resolve()))
    return result
