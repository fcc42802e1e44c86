"""The edit end to end on the tiny model: job file in, frames out, bad jobs refused with nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from videograin.engine.config import ModulationConfig
from videograin.engine.demo import synthetic_clip
from videograin.engine.errors import JobError
from videograin.engine.inputs.job import load_job
from videograin.engine.inputs.media import list_frames, write_png
from videograin.engine.runner import check_output_folder, edit_clip, write_results


def _rewrite(job_path: Path, **changes) -> Path:
    data = yaml.safe_load(job_path.read_text())
    for dotted, value in changes.items():
        node, *path, last = [data, *dotted.split("__")]
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last if not isinstance(node, list) else int(last)] = value
    job_path.write_text(yaml.safe_dump(data))
    return job_path


def test_job_to_frames_of_source_count_and_size(tmp_path, tiny_pipe):
    # A non-square 96x80 source edited at 64x64: results come back at the source size.
    clip, mattes = synthetic_clip(6, 96, 80)
    for f in range(6):
        write_png(tmp_path / "src" / f"{f:03d}.png", clip[f])
        write_png(tmp_path / "left" / f"{f:03d}.png", mattes[0, f].astype(np.uint8) * 255)
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump({
        "source": {"path": "src", "start": 1, "count": 2, "stride": 2, "width": 64, "height": 64},
        "source_prompt": "a man", "prompt": "an iron man", "steps": 3,
        "regions": [{"phrase": "iron man", "mask": "left"}], "model": "tiny",
    }))
    job = load_job(job_path)
    assert job.frames.shape == (2, 80, 96, 3)
    np.testing.assert_array_equal(job.frames[1], clip[3])  # start 1, stride 2 -> frames 1 and 3
    result = edit_clip(job, tiny_pipe)
    assert result.frames.shape == (2, 80, 96, 3) and result.frames.dtype == np.uint8

    write_results(tmp_path / "out", job, result, random_weights=True)
    frames = list_frames(tmp_path / "out" / "frames")
    assert len(frames) == 2 and cv2.imread(str(frames[0])).shape == (80, 96, 3)
    report = json.loads((tmp_path / "out" / "result.json").read_text())
    assert report["random_weights"] and "not an edit" in report["note"]
    capture = cv2.VideoCapture(str(tmp_path / "out" / "preview.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert cv2.imread(str(tmp_path / "out" / "contact_sheet.png")) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left behind


def test_same_seed_same_frames_and_settings_matter(demo_job, tiny_pipe):
    job = load_job(demo_job)
    first, second = edit_clip(job, tiny_pipe).frames, edit_clip(job, tiny_pipe).frames
    np.testing.assert_array_equal(first, second)
    job.settings.prompt = job.settings.prompt.replace("jogging", "walking")
    assert not np.array_equal(edit_clip(job, tiny_pipe).frames, first)


def test_modulation_lowers_cross_attention_leakage(demo_job, tiny_pipe):
    job = load_job(demo_job)
    # Modulate every step with a constant λ (the reference's 15-step schedule at (t − 1)/1000)^5 is nearly
    # 0 after the first steps of a 5-step edit), at every level (the `area` rules; the reference rules
    # leave the finest level, half of the tiny UNet's, alone, so the effect there is smaller).
    # Whole-run figures: an unmodulated run has no modulated steps to report on.
    job.settings.modulation = ModulationConfig(enabled=False)
    plain = edit_clip(job, tiny_pipe, measure_leakage=True).leakage_whole_run
    job.settings.modulation = ModulationConfig(decay=0.0, layout="area")
    modulated = edit_clip(job, tiny_pipe, measure_leakage=True).leakage_whole_run
    job.settings.modulation = ModulationConfig(decay=0.0)
    reference = edit_clip(job, tiny_pipe, measure_leakage=True).leakage_whole_run
    assert set(plain) == {"iron man", "spider man", "cherry blossoms"}
    for phrase in plain:
        assert modulated[phrase] < 0.85 * plain[phrase], (phrase, plain[phrase], modulated[phrase])
        assert reference[phrase] < 0.95 * plain[phrase], (phrase, plain[phrase], reference[phrase])


def test_windowed_long_clip_edits_every_frame(demo_job, tiny_pipe):
    from videograin.engine.method.pipeline import plan_passes

    passes, anchors = plan_passes(10, 4)
    covered = sorted({f for p in passes for f in p})
    assert covered == list(range(10)) and all(len(p) <= 4 for p in passes)
    assert len({tuple(p[-anchors:]) for p in passes}) == 1  # the same anchors in every pass
    job = load_job(demo_job)
    whole = edit_clip(job, tiny_pipe).frames
    job.settings.window = 4
    assert np.array_equal(edit_clip(job, tiny_pipe).frames, whole)  # the clip fits one pass
    job.settings.window = 3
    windowed = edit_clip(job, tiny_pipe).frames
    assert windowed.shape == whole.shape and not np.array_equal(windowed, whole)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"regions__0__phrase": "batman"}, "phrase 'batman' does not occur in the prompt"),
        ({"regions__1__mask": "missing"}, "does not exist"),
        ({"source__path": "nowhere"}, "does not exist"),
        ({"control__type": "sketch"}, "is not one of"),
        ({"steps": "many"}, "must be int"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"source__count": 9}, "only 4 frames exist"),
    ],
)
def test_bad_job_settings_give_one_clear_error(demo_job, change, message):
    with pytest.raises(JobError, match=message):
        load_job(_rewrite(demo_job, **change))


def test_broken_mattes_give_clear_errors(demo_job):
    masks = demo_job.parent / "masks"
    (masks / "left" / "0003.png").unlink()
    with pytest.raises(JobError, match="has 3 frames; it needs one per source frame"):
        load_job(demo_job)
    write_png(masks / "left" / "0003.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(JobError, match="differ in size"):
        load_job(demo_job)
    for f in range(4):
        write_png(masks / "left" / f"{f:04d}.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(JobError, match="'iron man': the matte is empty"):
        load_job(demo_job)
    (masks / "left" / "0002.png").write_bytes(b"not a png")
    with pytest.raises(JobError, match="not a readable image"):
        load_job(demo_job)


def test_output_folder_is_never_overwritten(demo_job, tmp_path):
    job = load_job(demo_job)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(JobError, match="not empty"):
        check_output_folder(busy, job)
    with pytest.raises(JobError, match="inside the job's media"):
        check_output_folder(Path(job.settings.source.path) / "out", job)
    check_output_folder(tmp_path / "fresh", job)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videograin", *args], capture_output=True, text=True, timeout=300)


def test_cli_bad_job_writes_nothing(demo_job, tmp_path):
    _rewrite(demo_job, prompt="two robots dance")
    out = tmp_path / "result"
    run = _cli("edit", str(demo_job), "--out", str(out), "--device", "cpu")
    assert run.returncode == 2
    assert "error [bad_job]: phrase 'iron man' does not occur in the prompt" in run.stderr
    assert not out.exists() and {p.name for p in tmp_path.iterdir()} == {"input"}


def test_cli_edit_writes_results(demo_job, tmp_path):
    out = tmp_path / "result"
    run = _cli("edit", str(demo_job), "--out", str(out), "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert "not an edit" in run.stdout and "leakage" in run.stdout
    assert len(list_frames(out / "frames")) == 4
    shutil.rmtree(out)


def test_example_job_is_valid():
    job = load_job(Path(__file__).parents[1] / "examples" / "two-runners" / "job.yaml")
    assert job.frames.shape == (8, 128, 128, 3) and job.masks.shape == (2, 8, 128, 128)
    assert [r.phrase for r in job.settings.regions] == ["iron man", "spider man"]


def test_control_maps_supplied_as_frames(demo_job, tiny_pipe):
    maps = demo_job.parent / "depth"
    for f in range(4):
        write_png(maps / f"{f:04d}.png", np.full((64, 64, 3), 40 * f, np.uint8))
    job = load_job(_rewrite(demo_job, control={"type": "frames", "path": "depth"}))
    assert job.control_maps.shape == (4, 64, 64, 3) and job.control_maps[3].max() == 120
    canny = edit_clip(load_job(_rewrite(demo_job, control={"type": "canny"})), tiny_pipe).frames
    assert not np.array_equal(edit_clip(job, tiny_pipe).frames, canny)  # the maps steer the ControlNet
    (maps / "0003.png").unlink()
    with pytest.raises(JobError, match="control maps: .* has 3 frames"):
        load_job(_rewrite(demo_job, control={"type": "frames", "path": "depth"}))
