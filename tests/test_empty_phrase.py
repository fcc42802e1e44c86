"""A region with no phrase, as the reference's configs have (`trunk` with the phrase ''): no text tokens,
but its own bit in the layout, so self-attention keeps its features apart. Accepted in job files, by the
edit, by `check` and in timeline notes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videograin.engine.check import check_job, format_report
from videograin.engine.config import parse_settings
from videograin.engine.demo import DEMO_PROMPT, synthetic_clip
from videograin.engine.errors import JobError
from videograin.engine.inputs.job import EditJob, load_job
from videograin.engine.inputs.media import write_png
from videograin.engine.method.families.sd15 import pipeline as pipeline_module
from videograin.engine.method.layout import BACKGROUND_BIT, region_bit
from videograin.engine.runner import edit_clip

JOB = {"source_prompt": "two men jog", "prompt": "an iron man and a spider man jog", "model": "tiny"}


def test_a_region_may_have_an_empty_or_no_phrase_and_two_such_are_no_duplicates():
    settings = parse_settings({**JOB, "regions": [
        {"phrase": "iron man", "mask": "a"}, {"phrase": "", "mask": "b"}, {"mask": "c"}, {"phrase": "  ", "mask": "d"},
    ]})
    assert [r.phrase for r in settings.regions] == ["iron man", "", "", ""]
    assert settings.phrases == ["iron man"]
    with pytest.raises(JobError, match="share the same phrase"):  # named phrases still differ
        parse_settings({**JOB, "regions": [{"phrase": "iron man"}, {"phrase": "Iron Man"}]})
    with pytest.raises(JobError, match=r"region 2 \(no phrase\): track is 'sift'"):
        parse_settings({**JOB, "regions": [{"phrase": "iron man"}, {"keyframes": [], "track": "sift"}]})


def _trunk(job_path: Path, frames: int, size: int) -> Path:
    """Add a third region with the phrase '' to a demo job: a strip down the frames' left edge."""
    trunk = np.zeros((size, size), np.uint8)
    trunk[:, : size // 4] = 255
    for f in range(frames):
        write_png(job_path.parent / "masks" / "trunk" / f"{f:04d}.png", trunk)
    data = yaml.safe_load(job_path.read_text())
    data["regions"].append({"phrase": "", "mask": "masks/trunk"})
    job_path.write_text(yaml.safe_dump(data))
    return job_path


def test_an_empty_phrase_region_edits_and_is_grouped_in_self_attention(demo_job, tiny_pipe, monkeypatch):
    job = load_job(_trunk(demo_job, frames=4, size=64))
    contexts = []
    install = pipeline_module.install_processors

    def spy(unet, controlnet, ctx, **kwargs):
        contexts.append(ctx)
        install(unet, controlnet, ctx, **kwargs)

    monkeypatch.setattr(pipeline_module, "install_processors", spy)
    result = edit_clip(job, tiny_pipe)
    assert result.frames.shape == job.frames.shape and result.frames.dtype == np.uint8
    (ctx,) = contexts
    trunk = region_bit(2)
    # No text token carries the region's bit; the named regions' phrases still have theirs.
    assert not (ctx.token_regions & trunk).any()
    assert (ctx.token_regions & region_bit(0)).any() and (ctx.token_regions & region_bit(1)).any()
    # In the layout of the modulated resolution (4x4 for a 64² clip), the strip's cells are the region's
    # own: positive in self-attention with each other, apart from the background.
    level = ctx.layout.level(4 * 4, torch.device("cpu"))
    assert level.modulated
    strip = level.regions.reshape(4, 4, 4)[:, :, 0]  # (frames, rows) of the leftmost column
    assert (strip & trunk).all() and not (strip & BACKGROUND_BIT).any()
    assert (level.regions == BACKGROUND_BIT).any()


def test_check_shows_a_region_with_no_phrase():
    masks = np.zeros((2, 2, 64, 64), bool)
    masks[0, :, 8:40, 8:40] = True
    masks[1, :, 30:60, 30:60] = True  # overlaps the first: a warning names both
    settings = parse_settings({**JOB, "regions": [{"phrase": "iron man"}, {"phrase": ""}],
                               "source": {"width": 64, "height": 64}})
    report = check_job(EditJob(settings, np.full((2, 64, 64, 3), 120, np.uint8), masks), torch.device("cpu"))
    first, second = report.summary["regions"]
    assert first["phrase"] == "iron man" and first["tokens"]
    assert second["phrase"] == "" and second["tokens"] == [] and second["cells"]
    assert not report.errors
    assert any("region 2 (no phrase)" in f.message for f in report.warnings if f.code == "regions_overlap")
    row = next(line for line in format_report(report).splitlines() if line.strip().startswith("2 "))
    assert "(no phrase)" in row and "no tokens" in row


def test_a_timeline_note_region_with_no_phrase_needs_a_matte_of_its_own(tmp_path):
    otio = pytest.importorskip("opentimelineio")
    from opentimelineio.opentime import RationalTime, TimeRange

    from videograin.engine.timeline.shots import Places, find_shots

    clip, mattes = synthetic_clip(4, 64, 64)
    for f in range(4):
        write_png(tmp_path / "frames" / f"{f:04d}.png", clip[f])
        write_png(tmp_path / "left" / f"{f:04d}.png", mattes[0, f].astype(np.uint8) * 255)
    span = TimeRange(RationalTime(0, 24), RationalTime(4, 24))

    def timeline(regions: list[dict]):
        note = {"source_prompt": "two men jog", "prompt": DEMO_PROMPT, "regions": regions, "model": "tiny",
                "source": {"width": 64, "height": 64}}
        shot = otio.schema.Clip("runners", otio.schema.ExternalReference("frames", span), span)
        shot.markers.append(otio.schema.Marker("videograin", span, comment=yaml.safe_dump(note)))
        # An unnamed video track: a region with no phrase must not take it for its matte track.
        unnamed = otio.schema.Track("", kind=otio.schema.TrackKind.Video)
        unnamed.append(otio.schema.Clip("matte", otio.schema.ExternalReference("left", span), span))
        v1 = otio.schema.Track("V1", kind=otio.schema.TrackKind.Video)
        v1.append(shot)
        cut = otio.schema.Timeline("cut")
        cut.tracks.extend([v1, unnamed])
        return cut

    with pytest.raises(JobError, match=r"region 2 \(no phrase\) has no matte: a region with no phrase names no "
                                       r"track, so give it `mask:`"):
        find_shots(timeline([{"phrase": "iron man", "mask": "left"}, {"phrase": ""}]), Places(tmp_path, tmp_path))
    (shot,) = find_shots(timeline([{"phrase": "iron man", "mask": "left"}, {"mask": "left"}]), Places(tmp_path, tmp_path))
    assert shot.settings.regions[1].phrase == "" and shot.mattes[1].path == tmp_path / "left"
