"""`videograin timeline`: an OpenTimelineIO timeline in, the marked clips edited, a `videograin` track out.

Every timeline here is built with opentimelineio itself the way each editor writes it (Kdenlive, Resolve,
Premiere through FCP XML), its media written by the test (movies with OpenCV or PyAV, PNG sequences), and
edited on the tiny model at 64x64 with two steps.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

otio = pytest.importorskip("opentimelineio")
from conformance import interruptible  # noqa: E402
from conftest import limit, wait_for  # noqa: E402
from opentimelineio.opentime import RationalTime, TimeRange  # noqa: E402
from test_media import assert_frame, encode  # noqa: E402  (PyAV-made camera media)

from videograin.engine.cli import main  # noqa: E402
from videograin.engine.demo import DEMO_PROMPT, synthetic_clip  # noqa: E402
from videograin.engine.errors import JobError  # noqa: E402
from videograin.engine.inputs.media import list_frames, probe_video, read_sequence, write_png  # noqa: E402
from videograin.engine.timeline.command import plan  # noqa: E402
from videograin.engine.timeline.shots import marked_job  # noqa: E402
from videograin.protocol.client import EngineClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMELINE_RATE = 24.0
MOVIE_RATE = 48.0  # the movie's own rate: two media frames per timeline frame
SIZE = 64


def rt(value: float, rate: float = TIMELINE_RATE) -> RationalTime:
    return RationalTime(value, rate)


def tr(start: float, duration: float, rate: float = TIMELINE_RATE) -> TimeRange:
    return TimeRange(rt(start, rate), rt(duration, rate))


def note(spider_mask: str | None = None, iron_mask: str | None = None, **changes) -> str:
    """A note in the job file's keys; the iron man's matte comes from the track of that name by default."""
    iron = {"phrase": "iron man", **({"mask": iron_mask} if iron_mask else {})}
    spider = [{"phrase": "spider man", "mask": spider_mask}] if spider_mask else []
    job = {
        "source_prompt": "two men are jogging in a park",
        "prompt": DEMO_PROMPT,
        "regions": [iron, *spider],
        "background": {"phrase": "cherry blossoms"},
        "source": {"width": SIZE, "height": SIZE},
        "steps": 2,
        "model": "tiny",
        **changes,
    }
    return yaml.safe_dump(job, sort_keys=False)


def write_mattes(folder: Path, mattes: np.ndarray, pattern: str = "{:04d}.png", first: int = 0) -> None:
    for index, matte in enumerate(mattes):
        write_png(folder / pattern.format(first + index), matte.astype(np.uint8) * 255)


def write_movie(path: Path, frames: np.ndarray, fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def sequence(folder: str, prefix: str, start: int, count: int, rate: float = TIMELINE_RATE):
    return otio.schema.ImageSequenceReference(
        f"{folder}/",
        prefix,
        ".png",
        start_frame=start,
        frame_step=1,
        rate=rate,
        frame_zero_padding=4,
        available_range=tr(0, count, rate),
    )


def build_media(folder: Path) -> None:
    """A 16-frame movie at 48 fps, an 8-frame image sequence, their mattes."""
    clip, mattes = synthetic_clip(16, SIZE, SIZE)
    folder.mkdir(parents=True, exist_ok=True)
    write_movie(folder / "runners.mp4", clip, MOVIE_RATE)
    write_mattes(folder / "mattes_a", mattes[0, 4:8], "iron.{:04d}.png")  # the movie shot's 4 frames
    write_mattes(folder / "right_a", mattes[1, 4:8])  # as long as the shot
    for index, frame in enumerate(clip[::2]):
        write_png(folder / "seq" / f"shot.{1001 + index:04d}.png", frame)
    write_mattes(folder / "mattes_b", mattes[0, 2:8:2], "iron.{:04d}.png", first=1)  # the sequence shot's 3
    write_mattes(folder / "right_b", mattes[1, ::2])  # as long as the sequence: the same frames are read


def build_timeline(folder: Path, **notes) -> otio.schema.Timeline:
    """Two video tracks, a matte track 'iron man', an audio track. On V1: a trimmed movie clip (marked),
    a transition, an unmarked clip with a marker of another name. On V2: an image-sequence clip (marked).
    Relative media paths: relative to the timeline file."""
    timeline = otio.schema.Timeline("cut", global_start_time=rt(86400))
    timeline.metadata["studio"] = {"show": "test"}
    v1 = otio.schema.Track("V1", kind=otio.schema.TrackKind.Video)
    v2 = otio.schema.Track("V2", kind=otio.schema.TrackKind.Video)
    mattes = otio.schema.Track("Iron Man", kind=otio.schema.TrackKind.Video)  # matched case-insensitively
    audio = otio.schema.Track("A1", kind=otio.schema.TrackKind.Audio)
    movie = otio.schema.ExternalReference("runners.mp4", tr(0, 16, MOVIE_RATE))
    # Times in the timeline's rate, as Resolve writes them: frames 4..7 of the 48 fps movie.
    shot_a = otio.schema.Clip("runners", movie, tr(2, 2))
    shot_a.markers.append(
        otio.schema.Marker(
            "videograin",
            tr(2, 1),
            otio.schema.MarkerColor.RED,
            comment=notes.get("a", note(spider_mask="right_a")),
        )
    )
    other = otio.schema.Clip(
        "runners tail", otio.schema.ExternalReference("runners.mp4", tr(0, 16, MOVIE_RATE)), tr(5, 3)
    )
    other.markers.append(otio.schema.Marker("todo", tr(5, 1), comment="grade this"))
    v1.extend(
        [
            otio.schema.Gap(source_range=tr(0, 2)),
            shot_a,
            otio.schema.Transition(in_offset=rt(1), out_offset=rt(1)),
            other,
        ]
    )
    shot_b = otio.schema.Clip("seq", sequence("seq", "shot.", 1001, 8), tr(1, 3))  # frames 1002..1004
    shot_b.markers.append(
        otio.schema.Marker(
            "videograin",
            tr(1, 1),
            otio.schema.MarkerColor.GREEN,
            comment=notes.get("b", note(spider_mask="right_b")),
        )
    )
    v2.extend([otio.schema.Gap(source_range=tr(0, 10)), shot_b])
    mattes.extend(
        [
            otio.schema.Gap(source_range=tr(0, 2)),
            otio.schema.Clip("magic mask a", sequence("mattes_a", "iron.", 0, 4, MOVIE_RATE), tr(0, 4, MOVIE_RATE)),
            otio.schema.Gap(source_range=tr(0, 6)),
            otio.schema.Clip("magic mask b", sequence("mattes_b", "iron.", 1, 3), tr(0, 3)),
        ]
    )
    audio.append(otio.schema.Clip("music", otio.schema.MissingReference(), tr(0, 14)))
    timeline.tracks.extend([v1, v2, mattes, audio])
    return timeline


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A timeline file and its media in a fresh folder; returns the timeline's path."""
    build_media(tmp_path / "project")
    path = tmp_path / "project" / "cut.otio"
    otio.adapters.write_to_file(build_timeline(tmp_path / "project"), str(path))
    return path


def tracks_json(timeline: otio.schema.Timeline, names: list[str]) -> list[str]:
    return [otio.adapters.write_to_string(t, "otio_json") for t in timeline.tracks if t.name in names]


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def edit_reference(tmp_path: Path, job: dict, name: str) -> np.ndarray:
    """The frames `videograin edit` gives for the same job."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["edit", str(path), "--out", str(tmp_path / name), "--device", "cpu"]) == 0
    return read_sequence(tmp_path / name / "frames", list(range(len(list_frames(tmp_path / name / "frames")))), "ref")


def test_marked_clips_come_back_edited_on_a_new_track(project, tmp_path, capsys):
    source_bytes = project.read_bytes()
    out = tmp_path / "out" / "cut_edited.otio"
    assert main(["timeline", str(project), "--out", str(out), "--device", "cpu"]) == 0
    assert project.read_bytes() == source_bytes  # the input is never modified
    table = capsys.readouterr().out
    assert "clip 'runners' on track 'V1'" in table and "clip 'seq' on track 'V2'" in table

    original = otio.adapters.read_from_file(str(project))
    result = otio.adapters.read_from_file(str(out))
    names = ["V1", "V2", "Iron Man", "A1"]
    assert tracks_json(result, names) == tracks_json(original, names)  # every original untouched
    assert result.metadata["studio"]["show"] == "test"
    assert [t.name for t in result.tracks] == ["V1", "V2", "Iron Man", "videograin", "A1"]

    track = result.tracks[3]
    clips = list(track.find_clips())
    assert len(clips) == 2
    expected = {
        "runners": (original.tracks[0][1], 4, MOVIE_RATE),  # 2 timeline frames of a 48 fps movie: 4 frames
        "seq": (original.tracks[1][1], 3, TIMELINE_RATE),
    }
    for clip in clips:
        source, frames, rate = expected[clip.metadata["videograin"]["source_clip"]]
        assert clip.transformed_time_range(clip.trimmed_range(), result.tracks) == source.transformed_time_range(
            source.trimmed_range(), original.tracks
        )
        ref = clip.media_reference
        assert isinstance(ref, otio.schema.ImageSequenceReference) and ref.rate == rate
        assert ref.number_of_images_in_sequence() == frames
        paths = [Path(otio.url_utils.filepath_from_url(ref.target_url_for_image_number(i))) for i in range(frames)]
        assert all(p.is_file() for p in paths)
        meta = clip.metadata["videograin"]
        assert meta["job"]["prompt"] == DEMO_PROMPT and meta["job"]["steps"] == 2
        assert set(meta["result"]["leakage"]) == {"iron man", "spider man", "cherry blossoms"}

    # The same frames as `videograin edit` with the same job: trims, rates and mattes conformed exactly.
    folder = project.parent
    base = yaml.safe_load(note(spider_mask="x"))
    job_a = {
        **base,
        "source": {"path": str(folder / "runners.mp4"), "start": 4, "count": 4, "width": SIZE, "height": SIZE},
        "regions": [
            {"phrase": "iron man", "mask": str(folder / "mattes_a")},
            {"phrase": "spider man", "mask": str(folder / "right_a")},
        ],
    }
    job_b = {
        **base,
        "source": {"path": str(folder / "seq"), "start": 1, "count": 3, "width": SIZE, "height": SIZE},
        "regions": [
            {"phrase": "iron man", "mask": str(folder / "mattes_b")},
            {"phrase": "spider man", "mask": str(folder / "right_b")},
        ],
    }
    for job, name in ((job_a, "runners"), (job_b, "seq")):
        clip = next(c for c in clips if c.metadata["videograin"]["source_clip"] == name)
        frames_dir = Path(clip.metadata["videograin"]["results"]) / "frames"
        ours = read_sequence(frames_dir, list(range(len(list_frames(frames_dir)))), "ours")
        np.testing.assert_array_equal(ours, edit_reference(tmp_path, job, f"ref-{name}"))

    # A second run reuses both results, writing nothing new.
    results = out.parent / "cut_edited-videograin"
    before = snapshot(results)
    assert main(["timeline", str(project), "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert snapshot(results) == before and capsys.readouterr().out.count("reused") == 2


def test_a_changed_note_is_edited_again_and_force_edits_all(project, tmp_path):
    out = tmp_path / "out.otio"
    results = tmp_path / "out-videograin"
    otio.adapters.write_to_file(build_timeline(project.parent, b=note(spider_mask="right_b", seed=3)), str(project))
    assert main(["timeline", str(project), "--out", str(out), "--device", "cpu"]) == 0
    first = {p.name: json.loads((p / "result.json").read_text())["written"] for p in results.iterdir()}
    time.sleep(1.1)  # result.json times are in seconds
    otio.adapters.write_to_file(build_timeline(project.parent, b=note(spider_mask="right_b", seed=4)), str(project))
    assert main(["timeline", str(project), "--out", str(out), "--device", "cpu", "--overwrite", "--force"]) == 0
    second = {p.name: json.loads((p / "result.json").read_text())["written"] for p in results.iterdir()}
    assert len(second) == 3 and set(first) < set(second)  # the changed shot in a new folder, the old one kept
    runners = next(name for name in first if name.startswith("runners-"))
    assert second[runners] != first[runners]  # --force edited the unchanged shot again, in its own folder
    shot_b = otio.adapters.read_from_file(str(out)).tracks[3][-1]
    assert shot_b.metadata["videograin"]["job"]["seed"] == 4


def _broken(project: Path, change: str) -> None:
    """Break the project in one way."""
    folder = project.parent
    timeline = otio.adapters.read_from_file(str(project))
    shot_a, shot_b = timeline.tracks[0][1], timeline.tracks[1][1]
    if change == "offline movie":
        os.remove(folder / "runners.mp4")
    elif change == "offline frame":
        os.remove(folder / "seq" / "shot.1003.png")
    elif change == "unreadable note":
        shot_a.markers[0].comment = "prompt: [an iron man"
    elif change == "phrase not in prompt":
        shot_b.markers[0].comment = note(
            spider_mask="right_b", prompt="an iron man and a bat man under cherry blossoms"
        )
    elif change == "matte of the wrong length":
        os.remove(folder / "right_a" / "0003.png")
    elif change == "no matte":
        timeline.tracks[2].name = "mattes"
    elif change == "source in the note":
        shot_a.markers[0].comment = note(spider_mask="right_a", source={"path": "other.mp4"})
    elif change == "trim past the media":
        shot_a.source_range = tr(2, 9)
    elif change == "empty matte":
        for path in (folder / "right_b").iterdir():
            write_png(path, np.zeros((SIZE, SIZE), np.uint8))
    elif change == "no marker":
        shot_a.markers[0].name = shot_b.markers[0].name = "later"
    elif change == "keyframe missing":
        shot_b.markers[0].comment = spider_keyframes_note("nowhere.png")
    elif change == "kdenlive missing media":
        shot_a.media_reference = otio.schema.ExternalReference("", tr(0, 16, MOVIE_RATE))
    elif change == "windows path":
        shot_a.media_reference.target_url = r"C:\data\runners.mp4"
    elif change == "windows url":
        shot_a.media_reference.target_url = "file:///C:/My%20Media/runners.mp4"
    elif change == "marker on a nested sequence":  # a Resolve compound clip, its note where Resolve keeps it
        compound = otio.schema.Stack("compound 1", source_range=tr(0, 3))
        inner = otio.schema.Track("V1")
        inner.append(otio.schema.Clip("seq", sequence("seq", "shot.", 1001, 8), tr(1, 3)))
        compound.append(inner)
        compound.markers.append(otio.schema.Marker("videograin", tr(0, 1), metadata={
            "Resolve_OTIO": {"Note": note(spider_mask="right_b")}}))
        timeline.tracks[1][1] = compound
    elif change == "variable frame rate":
        encode(folder / "runners.mp4", 16, "libx264", "yuv420p", size=(SIZE, SIZE),
               times_ms=[0, 20, 40, 100, 120, 140, 160, 180, 200, 220, 240, 260, 280, 300, 320, 400])
    elif change == "damaged movie":
        (folder / "runners.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    elif change == "range without a rate":  # nothing foreseen: still one error, no traceback
        shot_a.source_range = TimeRange(RationalTime(2, 0), RationalTime(2, 0))
    elif change == "alias bomb":  # 408 bytes that a YAML loader with aliases expands to gigabytes
        rows = ["a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"] + [
            f"{b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]" for a, b in itertools.pairwise("abcdefghi")
        ]
        shot_a.markers[0].comment = "\n".join(rows)
    otio.adapters.write_to_file(timeline, str(project))


@pytest.mark.parametrize(
    "change,message",
    [
        ("offline movie", r"clip 'runners' on track 'V1': its media '.*runners.mp4' is offline"),
        ("offline frame", r"clip 'seq' on track 'V2': frame '.*shot.1003.png' of its image sequence is offline"),
        ("unreadable note", r"clip 'runners' on track 'V1': the note of its 'videograin' marker is not valid YAML"),
        ("phrase not in prompt", r"clip 'seq' on track 'V2': phrase 'spider man' does not occur in the prompt"),
        (
            "matte of the wrong length",
            r"clip 'runners' on track 'V1': the matte of 'spider man': .* has 3 frames; it needs",
        ),
        ("no matte", r"clip 'runners' on track 'V1': region 'iron man' has no matte: give it `mask:`"),
        ("source in the note", r"clip 'runners' on track 'V1': source.path in the note: the source is the clip itself"),
        ("trim past the media", r"clip 'runners' on track 'V1': the clip shows frames 4..21 of .* which has 16"),
        ("empty matte", r"clip 'seq' on track 'V2': region 'spider man': the matte is empty"),
        ("no marker", r"no clip carries a marker named 'videograin'"),
        ("keyframe missing", r"clip 'seq' on track 'V2': keyframe 0 of region 'spider man': '.*nowhere.png' is not an"),
        ("kdenlive missing media", r"clip 'runners' on track 'V1': its media is offline \(the editor wrote no path"),
        ("windows path", r"clip 'runners' on track 'V1': its media 'C:\\data\\runners.mp4' is a Windows path"),
        ("windows url", r"clip 'runners' on track 'V1': its media 'C:/My Media/runners.mp4' is a Windows path"),
        (
            "marker on a nested sequence",
            r"the nested sequence 'compound 1' on track 'V2' is marked 'videograin': nested sequences are not read",
        ),
        ("variable frame rate", r"clip 'runners' on track 'V1': its media '.*runners.mp4' has a variable frame rate"),
        ("damaged movie", r"clip 'runners' on track 'V1': its media: '.*runners.mp4' cannot be read"),
        ("range without a rate", r"clip 'runners' on track 'V1': its media or marker cannot be read \(\w+Error"),
        ("alias bomb", r"clip 'runners' on track 'V1': the note of its 'videograin' marker .*aliases are not read"),
    ],
)
def test_each_bad_input_gives_its_error_and_writes_nothing(project, tmp_path, capsys, change, message):
    _broken(project, change)
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    (out_folder / "keep.txt").write_text("mine")
    before, project_before = snapshot(out_folder), snapshot(project.parent)
    assert main(["timeline", str(project), "--out", str(out_folder / "cut.otio"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and len(error) < 2000
    assert re.search(message, error), error
    assert snapshot(out_folder) == before and snapshot(project.parent) == project_before


def spider_keyframes_note(key: str) -> str:
    """Shot b's note with the spider man given by one keyframe matte on the shot's first frame."""
    job = yaml.safe_load(note(spider_mask="x"))
    job["regions"][1] = {"phrase": "spider man", "keyframes": [{"frame": 0, "mask": key}]}
    return yaml.safe_dump(job, sort_keys=False)


def test_a_region_given_by_keyframes_is_tracked_through_its_shot(project, tmp_path):
    folder = project.parent
    _, mattes = synthetic_clip(16, SIZE, SIZE)
    write_png(folder / "spider_key.png", mattes[1, 2].astype(np.uint8) * 255)  # the seq shot's first frame
    otio.adapters.write_to_file(build_timeline(folder, b=spider_keyframes_note("spider_key.png")), str(project))
    out = tmp_path / "out.otio"
    assert main(["timeline", str(project), "--out", str(out), "--device", "cpu"]) == 0
    clip = next(c for c in otio.adapters.read_from_file(str(out)).tracks[3].find_clips()
                if c.metadata["videograin"]["source_clip"] == "seq")
    frames_dir = Path(clip.metadata["videograin"]["results"]) / "frames"
    ours = read_sequence(frames_dir, list(range(3)), "ours")
    # `videograin edit` with the same keyframe, counted from the first edited frame, gives the same frames.
    job = {
        **yaml.safe_load(note(spider_mask="x")),
        "source": {"path": str(folder / "seq"), "start": 1, "count": 3, "width": SIZE, "height": SIZE},
        "regions": [
            {"phrase": "iron man", "mask": str(folder / "mattes_b")},
            {"phrase": "spider man", "keyframes": [{"frame": 0, "mask": str(folder / "spider_key.png")}]},
        ],
    }
    np.testing.assert_array_equal(ours, edit_reference(tmp_path, job, "ref-keyframes"))
    # A changed keyframe file is a changed job: the shot is edited again.
    before = {p.name for p in (tmp_path / "out-videograin").iterdir()}
    time.sleep(0.01)
    write_png(folder / "spider_key.png", mattes[1, 3].astype(np.uint8) * 255)
    assert main(["timeline", str(project), "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert len({p.name for p in (tmp_path / "out-videograin").iterdir()} - before) == 1


def test_notes_are_read_where_each_editor_writes_them():
    job = "prompt: an iron man\nsteps: 3"

    def marked(marker):
        clip = otio.schema.Clip("c")
        clip.markers.append(marker)
        return marked_job(clip)

    resolve = otio.schema.Marker("videograin", metadata={"Resolve_OTIO": {"Keywords": [], "Note": job}})
    premiere = otio.schema.Marker("videograin", metadata={"fcp_xml": {"comment": job}})
    kdenlive = otio.schema.Marker("", comment="videograin\n" + job)  # its markers have a note and no name
    for marker in (resolve, premiere, kdenlive, otio.schema.Marker("VideoGrain ", comment=job)):
        assert marked(marker) == {"prompt": "an iron man", "steps": 3}
    assert marked(otio.schema.Marker("todo", comment=job)) is None
    clip = otio.schema.Clip("c", metadata={"videograin": {"steps": 9, "seed": 2}})
    clip.markers.append(otio.schema.Marker("videograin", comment=job))
    assert marked_job(clip) == {"prompt": "an iron man", "steps": 3, "seed": 2}  # the note wins over metadata


def test_fcp_xml_round_trip(project, tmp_path):
    """Premiere / FCP 7 XML through otio-fcp-adapter: notes in <comment>, no track names, so mattes by path."""
    if "fcp_xml" not in otio.adapters.available_adapter_names():
        pytest.skip("otio-fcp-adapter is not installed (pip install 'videograin[otio]')")
    folder = project.parent
    timeline = otio.schema.Timeline("cut")
    track = otio.schema.Track("V1", kind=otio.schema.TrackKind.Video)
    movie = otio.schema.ExternalReference(
        otio.url_utils.url_from_filepath(str(folder / "runners.mp4")), tr(0, 16, MOVIE_RATE)
    )
    clip = otio.schema.Clip("runners", movie, tr(2, 2))
    text = note(spider_mask=str(folder / "right_a"), iron_mask=str(folder / "mattes_a"))
    clip.markers.append(otio.schema.Marker("videograin", tr(2, 1), metadata={"fcp_xml": {"comment": text}}))
    track.extend([otio.schema.Gap(source_range=tr(0, 5)), clip])
    timeline.tracks.append(track)
    xml = tmp_path / "cut.xml"
    otio.adapters.write_to_file(timeline, str(xml))
    out = tmp_path / "cut_edited.xml"
    assert main(["timeline", str(xml), "--out", str(out), "--device", "cpu", "--movie-codec", "prores"]) == 0
    back = otio.adapters.read_from_file(str(out))
    video = [t for t in back.tracks if t.kind == otio.schema.TrackKind.Video]
    assert len(video) == 2  # the original and the edit above it (FCP XML keeps no track names)
    edited = list(video[1].find_clips())
    assert len(edited) == 1 and edited[0].range_in_parent() == tr(5, 2)
    path = Path(otio.url_utils.filepath_from_url(edited[0].media_reference.target_url))
    info = probe_video(path)
    assert info.frames == 4 and info.rate == MOVIE_RATE and path.suffix == ".mov"
    assert info.pixel_format == "yuv422p10le"  # ProRes 422 HQ, as asked
    assert video[0].find_clips()[0].markers[0].metadata["fcp_xml"]["comment"] == text  # kept


def test_otioz_bundle_in_and_out(project, tmp_path, capsys):
    """A bundle in gives a bundle out: its media unpacked to read, the edits bundled as movies."""
    folder = project.parent
    timeline = otio.schema.Timeline("cut")
    v1 = otio.schema.Track("V1", kind=otio.schema.TrackKind.Video)
    mattes = otio.schema.Track("iron man", kind=otio.schema.TrackKind.Video)
    _, matte_a = synthetic_clip(4, SIZE, SIZE)
    write_movie(folder / "matte.mp4", np.repeat(matte_a[0, :, :, :, None].astype(np.uint8) * 255, 3, axis=3), 24.0)
    clip = otio.schema.Clip(
        "runners", otio.schema.ExternalReference(str(folder / "runners.mp4"), tr(0, 16, MOVIE_RATE)), tr(0, 2)
    )
    clip.markers.append(otio.schema.Marker("videograin", tr(0, 1), comment=note()))
    v1.append(clip)
    mattes.append(
        otio.schema.Clip("mask", otio.schema.ExternalReference(str(folder / "matte.mp4"), tr(0, 4)), tr(0, 2))
    )
    timeline.tracks.extend([v1, mattes])
    bundle = tmp_path / "cut.otioz"
    otio.adapters.write_to_file(timeline, str(bundle))

    assert main(["timeline", str(bundle), "--out", str(tmp_path / "cut.otio"), "--device", "cpu"]) == 2
    # A 48 fps source over a 24 fps matte: the matte has half the frames.
    assert main(["timeline", str(bundle), "--out", str(tmp_path / "out.otioz"), "--device", "cpu"]) == 2
    matte_clip = timeline.tracks[1][0]
    matte_clip.media_reference.available_range = tr(0, 4, MOVIE_RATE)  # declared at the source's rate
    bundle.unlink()
    write_movie(
        folder / "matte.mp4", np.repeat(matte_a[0, :, :, :, None].astype(np.uint8) * 255, 3, axis=3), MOVIE_RATE
    )
    otio.adapters.write_to_file(timeline, str(bundle))
    out = tmp_path / "out.otioz"
    assert main(["timeline", str(bundle), "--out", str(out), "--device", "cpu"]) == 0
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    back = otio.adapters.read_from_file(str(out), extract_to_directory=str(unpacked))
    edit = back.tracks[-1].find_clips()[0]
    assert back.tracks[-1].name == "videograin" and edit.range_in_parent() == tr(0, 2)
    assert (unpacked / edit.media_reference.target_url).is_file()  # the edit's movie is in the bundle
    assert back.tracks[0][0].media_reference.target_url == "media/runners.mp4"
    # Planned again (unpacked anew, to a new folder): the finished shot is reused, not edited again.
    results = tmp_path / "out-videograin"
    before = snapshot(results)
    capsys.readouterr()
    assert main(["timeline", str(bundle), "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert capsys.readouterr().out.count("reused") == 1 and snapshot(results) == before


def test_without_opentimelineio_the_command_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "opentimelineio", None)
    assert main(["timeline", str(tmp_path / "in.otio"), "--out", str(tmp_path / "out.otio")]) == 2
    assert "pip install 'videograin[otio]'" in capsys.readouterr().err


def test_on_an_engine_ctrl_c_cancels_the_running_shot(project, tmp_path, tiny_engine):
    """Shot 1 edits on the engine; during shot 2 (many steps) Ctrl-C cancels it there and writes nothing."""
    timeline = build_timeline(project.parent, b=note(spider_mask="right_b", steps=400))
    otio.adapters.write_to_file(timeline, str(project))
    out = tmp_path / "out.otio"
    results = tmp_path / "out-videograin"
    process = subprocess.Popen(
        [sys.executable, "-m", "videograin", "timeline", str(project), "--out", str(out), "--engine", tiny_engine],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=interruptible,  # Ctrl-C reaches it even when the tests run in a background shell
    )
    client = EngineClient(tiny_engine)
    client.hello()
    try:
        def second_shot_running() -> list[str]:
            assert process.poll() is None, process.stdout.read()
            return any(results.glob("runners-*/result.json")) and _running(client)

        # Ctrl-C once shot 1 is done and shot 2 runs on the engine.
        running = wait_for(second_shot_running, "shot 1 done and shot 2 running", 120, every_s=0.2)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=limit(180))[0]
        assert process.returncode == 130, output
        assert "not written" in output and not out.exists()
        assert [p.name.split("-")[0] for p in results.iterdir()] == ["runners"]  # nothing for the cancelled shot
        report = json.loads(next(results.glob("runners-*/result.json")).read_text())
        assert report["engine"] and report["frames"] == 4
        # The engine stopped its work too.
        wait_for(lambda: client.status(running[0])[0]["state"] != "running", "the engine to stop shot 2", 30,
                 every_s=0.1)
        assert client.status(running[0])[0]["state"] == "cancelled"
    finally:
        client.close()


def _running(client) -> list[str]:
    return [job["job"] for job in client.status() if job["state"] == "running"]


def still_mattes(folder: Path, width: int, height: int) -> str:
    """Two still mattes (held over the shot), the iron man's on the left half, the spider man's on the right;
    returns a note that names them relative to the timeline."""
    left = np.zeros((height, width), bool)
    left[:, : width // 2] = True
    write_png(folder / "iron.png", left.astype(np.uint8) * 255)
    write_png(folder / "spider.png", (~left).astype(np.uint8) * 255)
    return note(spider_mask="spider.png", iron_mask="iron.png")


def one_clip_timeline(path: Path, reference, source_range: TimeRange, text: str) -> Path:
    """A timeline of one marked clip on V1, written to `path` (any OTIO format)."""
    timeline = otio.schema.Timeline("cut")
    track = otio.schema.Track("V1", kind=otio.schema.TrackKind.Video)
    clip = otio.schema.Clip("shot", reference, source_range)
    clip.markers.append(otio.schema.Marker("videograin", comment=text))
    track.append(clip)
    timeline.tracks.append(track)
    otio.adapters.write_to_file(timeline, str(path))
    return path


def planned_frames(path: Path, out: Path, **options) -> tuple[list[int], np.ndarray]:
    """Plan the timeline (reading and checking everything, editing nothing): the shot's media frame
    numbers and its frames."""
    the_plan = plan(path, out, **options)
    try:
        (shot,) = the_plan.shots
        return shot.source.indices, shot.load().frames
    finally:
        the_plan.close()


def test_a_kdenlive_still_is_held_over_its_clip(tmp_path):
    """Kdenlive writes a still's available range at rate 0 (planning crashed on NaN)."""
    still = np.stack([np.full((SIZE, SIZE, 3), (30, 120, 200), np.uint8)])
    write_png(tmp_path / "title.png", still[0])
    reference = otio.schema.ExternalReference("title.png", TimeRange(RationalTime(0, 0), RationalTime(0, 0)))
    path = one_clip_timeline(tmp_path / "cut.otio", reference, tr(0, 5), still_mattes(tmp_path, SIZE, SIZE))
    indices, frames = planned_frames(path, tmp_path / "out.otio")
    assert indices == [0] * 5
    np.testing.assert_array_equal(frames, np.repeat(still, 5, axis=0))


def test_an_mpg_clip_is_read_to_its_last_frame(tmp_path):
    """Kdenlive's test media: an MPEG-PS .mpg was refused, then miscounted (a trim to its end refused)."""
    encode(tmp_path / "clip.mpg", 5, "mpeg2video", "yuv420p", Fraction(25), options={"qscale": "2"})
    reference = otio.schema.ExternalReference("clip.mpg", tr(0, 5, 25))
    path = one_clip_timeline(tmp_path / "cut.otio", reference, tr(2, 3, 25), still_mattes(tmp_path, 64, 48))
    indices, frames = planned_frames(path, tmp_path / "out.otio")
    assert indices == [2, 3, 4]
    for k, frame in zip(indices, frames, strict=True):
        assert_frame(frame, k, tolerance=10.0)


@pytest.mark.parametrize("available", [None, "from the timecode"])
def test_a_timecoded_prores_clip_is_trimmed_in_media_time(tmp_path, available):
    """Resolve and Premiere give source ranges in the media's time: 01:00:00:03 is its fourth frame,
    whether the reference states the media's range or not."""
    encode(tmp_path / "A001.mov", 12, "prores_ks", "yuv422p10le", options={"profile": "3"}, timecode="01:00:00:00")
    declared = tr(86400, 12) if available else None
    reference = otio.schema.ExternalReference("A001.mov", declared)
    path = one_clip_timeline(tmp_path / "cut.otio", reference, tr(86403, 4), still_mattes(tmp_path, 64, 48))
    indices, frames = planned_frames(path, tmp_path / "out.otio")
    assert indices == [3, 4, 5, 6]
    for k, frame in zip(indices, frames, strict=True):
        assert_frame(frame, k, tolerance=2.0)


def bundled(project: Path, bundle: Path, text: str, source_range: TimeRange = tr(2, 2)) -> Path:
    """An .otioz of the project's movie, its marker's note naming mattes relative to the bundle."""
    bundle.unlink(missing_ok=True)
    reference = otio.schema.ExternalReference(str(project.parent / "runners.mp4"), tr(0, 16, MOVIE_RATE))
    return one_clip_timeline(bundle, reference, source_range, text)


def test_an_otioz_reads_notes_next_to_it_and_names_its_own_files(project, tmp_path):
    folder = project.parent
    bundle = bundled(project, folder / "cut.otioz", note(spider_mask="right_a", iron_mask="mattes_a"))
    indices, _ = planned_frames(bundle, tmp_path / "out.otioz")  # the mattes next to the bundle, as README says
    assert indices == [4, 5, 6, 7]
    first = plan(bundle, tmp_path / "out.otioz")
    first.close()
    second = plan(bundle, tmp_path / "out.otioz")
    second.close()
    # The same job on every run (no unpack path, no extraction time in it): finished shots are reused.
    assert first.shots[0].job_hash == second.shots[0].job_hash
    # Errors name the bundle's files as the user knows them, not the temporary unpack folder.
    bundled(project, bundle, note(spider_mask="right_a", iron_mask="gone"))
    with pytest.raises(JobError, match=r"the matte of 'iron man': '.*project/gone' does not exist"):
        plan(bundle, tmp_path / "out.otioz")
    bundled(project, bundle, note(spider_mask="right_a", iron_mask="mattes_a"), tr(2, 20))
    with pytest.raises(JobError) as error:
        plan(bundle, tmp_path / "out.otioz")
    assert f"'{bundle}/media/runners.mp4', which has 16" in str(error.value)
    assert "videograin-otio-" not in str(error.value)


def test_an_otioz_that_would_unpack_past_its_budget_is_refused(tmp_path):
    bundle = tmp_path / "bomb.otioz"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("content.otio", otio.adapters.write_to_string(otio.schema.Timeline("cut")))
        with archive.open("media/zeros.mov", "w") as member:
            for _ in range(100):
                member.write(bytes(2**20))  # 100 MiB of zeros: about 100 KiB packed
    assert bundle.stat().st_size < 2**20
    with pytest.raises(JobError, match=r"would unpack to 100.0 MiB, more than this bundle may take"):
        plan(bundle, tmp_path / "out.otioz")
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("videograin-otio-*/media/zeros.mov"))


def test_an_otioz_naming_media_outside_itself_is_refused(project, tmp_path):
    """A bundle whose timeline names files of this machine (`../`, absolute): the result bundle would
    carry them back to whoever sent it."""
    (tmp_path / "secret.txt").write_text("mine")
    for target in ("../../../../../../../../" + str(tmp_path / "secret.txt"), str(tmp_path / "secret.txt")):
        timeline = otio.schema.Timeline("cut")
        track = otio.schema.Track("V1", kind=otio.schema.TrackKind.Video)
        track.append(otio.schema.Clip("innocent", otio.schema.ExternalReference(target), tr(0, 1)))
        timeline.tracks.append(track)
        bundle = tmp_path / "in.otioz"
        bundle.unlink(missing_ok=True)
        with zipfile.ZipFile(bundle, "w") as archive:
            archive.writestr("content.otio", otio.adapters.write_to_string(timeline))
        with pytest.raises(JobError, match=r"names media outside the bundle \(clip 'innocent': .*secret.txt'\)"):
            plan(bundle, tmp_path / "out.otioz")


def test_an_existing_out_is_not_overwritten_without_a_word(project, tmp_path, capsys):
    out = tmp_path / "cut_edited.otio"
    out.write_text("the user's own file")
    assert main(["timeline", str(project), "--out", str(out), "--device", "cpu"]) == 2
    assert "exists: pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_text() == "the user's own file" and not (tmp_path / "cut_edited-videograin").exists()




def test_a_still_held_for_a_billion_frames_is_refused_before_any_frame_list_is_made(tmp_path):
    """A clip's duration is only a number in the timeline: a 3 KB file asked for gigabytes of frame numbers."""
    write_png(tmp_path / "title.png", np.zeros((64, 64, 3), np.uint8))
    reference = otio.schema.ExternalReference("title.png", TimeRange(RationalTime(0, 0), RationalTime(0, 0)))
    path = one_clip_timeline(tmp_path / "cut.otio", reference, tr(0, 1e9 / TIMELINE_RATE), still_mattes(tmp_path, 64, 64))
    with pytest.raises(JobError, match=r"the clip's \d\d,\d{3},\d{3} frames of 64x64 would decode .* \(max_pixels\)"):
        plan(path, tmp_path / "out.otio").close()


@pytest.mark.parametrize("suffix", [".otio", ".otioz"])
def test_a_timeline_nested_past_any_editor_is_one_clear_error(tmp_path, suffix):
    """OpenTimelineIO's reader recurses: 100,000 nested lists (200 KB, a few hundred bytes zipped) ended the
    process with a segmentation fault."""
    content = '{"OTIO_SCHEMA": "Timeline.1", "metadata": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    path = tmp_path / f"deep{suffix}"
    if suffix == ".otioz":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr("content.otio", content)
    else:
        path.write_text(content)
    with pytest.raises(JobError, match="nests 100002 levels of lists and maps, more than the 512"):
        plan(path, tmp_path / f"out{suffix}").close()


def test_a_shot_reads_nothing_past_the_pixel_budget_its_mattes_included(tmp_path):
    """A 64² clip with a matte held over it at 4096²: sizes come from headers, all spent before any image
    is decoded (the matte was read in full, 100 × 16.7 M pixels, before its size was compared)."""
    write_png(tmp_path / "title.png", np.zeros((64, 64, 3), np.uint8))
    reference = otio.schema.ExternalReference("title.png", TimeRange(RationalTime(0, 0), RationalTime(0, 0)))
    write_png(tmp_path / "iron.png", np.full((4096, 4096), 255, np.uint8))
    write_png(tmp_path / "spider.png", np.full((64, 64), 255, np.uint8))
    text = note(spider_mask="spider.png", iron_mask="iron.png")
    path = one_clip_timeline(tmp_path / "cut.otio", reference, tr(0, 100), text)  # 100 frames
    with pytest.raises(JobError, match=r"the matte of 'iron man' would decode 1,677,721,600 pixels.*\(max_pixels\)"):
        plan(path, tmp_path / "out.otio").close()  # planning loads each shot, to check it
