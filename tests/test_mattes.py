"""Keyframe mattes tracked through a clip: flow accuracy on a known clip, SAM 2 through the same
interface on a tiny random model, job-file keyframes, errors, and `videograin mattes`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videograin.engine.cli import main
from videograin.engine.config import parse_settings
from videograin.engine.errors import CancelledError, JobError, ModelUnavailableError
from videograin.engine.inputs.job import load_job
from videograin.engine.inputs.mattes import (
    Keyframe,
    RegionTrack,
    crossing_blobs,
    exclusive,
    iou,
    track_mattes,
)
from videograin.engine.inputs.media import write_png

FRAMES = 24


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return crossing_blobs(FRAMES, 192, 144)


def mean_ious(tracked: np.ndarray, truth: np.ndarray) -> list[float]:
    return [float(np.mean([iou(tracked[k, f], truth[k, f]) for f in range(truth.shape[1])])) for k in range(len(truth))]


def keyed(truth: np.ndarray, frames: list[int], tracker: str = "flow", model: str | None = None) -> list[RegionTrack]:
    return [RegionTrack([Keyframe(f, truth[k, f]) for f in frames], tracker, model, f"blob {k}") for k in range(len(truth))]


def test_the_synthetic_clip_crosses_with_partial_occlusion(blobs):
    clip, truth = blobs
    assert clip.shape == (FRAMES, 144, 192, 3) and truth.shape == (2, FRAMES, 144, 192)
    areas = truth.sum(axis=(2, 3))
    # The front blob hides part of the other one mid-clip, never all of it, and they swap sides.
    assert areas[0].min() < 0.8 * areas[0, 0] and areas[0].min() > 0.3 * areas[0, 0]
    assert not (truth[0] & truth[1]).any()
    centre = lambda m: np.nonzero(m)[1].mean()
    assert centre(truth[0, 0]) < centre(truth[1, 0]) and centre(truth[0, -1]) > centre(truth[1, -1])


def test_flow_from_one_keyframe_follows_both_blobs(blobs):
    clip, truth = blobs
    tracked = track_mattes(clip, keyed(truth, [0]))
    assert tracked.shape == truth.shape and tracked.dtype == bool
    assert min(mean_ious(tracked, truth)) >= 0.9
    assert (tracked[:, 0] == truth[:, 0]).all()  # the keyframe is what was painted


def test_flow_from_a_middle_keyframe_tracks_both_ways(blobs):
    clip, truth = blobs
    tracked = track_mattes(clip, keyed(truth, [12]))
    assert min(mean_ious(tracked, truth)) >= 0.9


def test_flow_between_keyframes_at_both_ends(blobs):
    clip, truth = blobs
    tracked = track_mattes(clip, keyed(truth, [0, FRAMES - 1]))
    assert min(mean_ious(tracked, truth)) >= 0.93


def test_refinement_is_what_keeps_the_matte(blobs):
    from videograin.engine.inputs.mattes import TrackSettings

    clip, truth = blobs
    carried = track_mattes(clip, keyed(truth, [0]), settings=TrackSettings(refine=False))
    refined = track_mattes(clip, keyed(truth, [0]))
    assert min(mean_ious(refined, truth)) > max(mean_ious(carried, truth))


def test_overlapping_regions_stay_exclusive_and_the_later_one_wins(blobs):
    clip, truth = blobs
    grown = truth.copy()
    left = np.arange(192) < np.nonzero(truth[1, 0])[1].mean()
    grown[0, 0] |= truth[1, 0] & left  # the first matte painted over part of the second
    regions = keyed(grown, [0])
    tracked = track_mattes(clip, regions)
    assert not (tracked[0] & tracked[1]).any()
    overlap = grown[0, 0] & grown[1, 0]
    assert overlap.any() and tracked[1, 0][overlap].all() and not tracked[0, 0][overlap].any()


def test_exclusive_keeps_the_later_region():
    mattes = np.zeros((3, 1, 2, 2), bool)
    mattes[0, 0] = True
    mattes[1, 0, 0] = True
    mattes[2, 0, 0, 0] = True
    out = exclusive(mattes)
    assert out[2, 0, 0, 0] and not out[1, 0, 0, 0] and not out[0, 0, 0, 0]
    assert out[1, 0, 0, 1] and out[0, 0, 1].all() and out.sum(0).max() == 1


def test_progress_counts_up_to_the_total_and_cancel_stops(blobs):
    clip, truth = blobs
    events = []
    track_mattes(clip[:6], keyed(truth[:, :6], [0]), progress=events.append)
    steps = [e.step for e in events]
    assert {e.phase for e in events} == {"track"} and steps == sorted(steps)
    assert steps[-1] == events[-1].total == 2 * 2 * 6  # regions × both directions × frames
    seen = []
    with pytest.raises(CancelledError):
        track_mattes(clip[:6], keyed(truth[:, :6], [0]), progress=seen.append, cancelled=lambda: len(seen) > 3)
    assert seen[-1].step < seen[-1].total


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: r[0].keyframes.append(Keyframe(FRAMES, r[0].keyframes[0].matte)), "outside the clip"),
        (lambda r: r[0].keyframes.append(Keyframe(-1, r[0].keyframes[0].matte)), "outside the clip"),
        (lambda r: setattr(r[1].keyframes[0], "matte", np.zeros_like(r[1].keyframes[0].matte)), "empty"),
        (lambda r: setattr(r[0].keyframes[0], "matte", np.ones((10, 10), bool)), "10x10"),
        (lambda r: setattr(r[0], "tracker", "magic"), "flow, sam2, sam3"),
        (lambda r: r[0].keyframes.append(Keyframe(0, r[0].keyframes[0].matte)), "two keyframes on frame 0"),
        (lambda r: setattr(r[0], "keyframes", []), "at least one keyframe"),
    ],
)
def test_bad_keyframes_say_what_to_fix(blobs, change, words):
    clip, truth = blobs
    regions = keyed(truth, [0])
    change(regions)
    with pytest.raises(JobError, match=words):
        track_mattes(clip, regions)


def test_sam3_is_a_clear_error_naming_what_is_missing(blobs):
    clip, truth = blobs
    with pytest.raises(ModelUnavailableError, match="Sam3VideoModel.*torchvision.*sam2"):
        track_mattes(clip, keyed(truth, [0], tracker="sam3"))


# --- SAM 2 on a tiny random model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory) -> Path:
    """A SAM 2 video model of ~1.3 M random parameters at a 128² input, saved as a local folder."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    side, hidden = 128, 128  # the memory's 64 channels must divide the hidden size, and be smaller
    config = Sam2VideoConfig(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model", "hidden_size": 16, "embed_dim_per_stage": [16, 32, 64, 128],
                "blocks_per_stage": [1, 1, 2, 1], "num_attention_heads_per_stage": [1, 1, 1, 1], "image_size": [side, side],
                "window_positional_embedding_background_size": [2, 2], "window_size_per_stage": [4, 4, 4, 2],
                "global_attention_blocks": [3],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "backbone_feature_sizes": [[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
            "fpn_hidden_size": hidden,
        },
        prompt_encoder_config={"hidden_size": hidden, "image_size": side, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        image_size=side, num_maskmem=3, max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[side // 16] * 2, memory_encoder_hidden_size=hidden,
        mask_downsampler_embed_dim=hidden, memory_fuser_embed_dim=hidden, memory_fuser_intermediate_dim=64,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sam2") / "tiny-sam2"
    Sam2VideoModel(config).save_pretrained(folder)
    return folder


def test_sam2_runs_through_the_same_interface(blobs, tiny_sam2):
    clip, truth = blobs
    clip, truth = clip[:5, ::2, ::2], truth[:, :5, ::2, ::2]
    events = []
    regions = keyed(truth, [2], tracker="sam2", model=str(tiny_sam2))
    regions[1].keyframes.append(Keyframe(4, truth[1, 4]))
    tracked = track_mattes(clip, regions, device="cpu", progress=events.append)
    # Random weights: the masks mean nothing, but every frame of every region has one, at the clip's size.
    assert tracked.shape == truth.shape and tracked.dtype == bool
    assert not (tracked[0] & tracked[1]).any()
    assert (tracked[1, 4] == truth[1, 4]).all() and (tracked[1, 2] == truth[1, 2]).all()
    assert [e.step for e in events] == list(range(11)) and events[-1].total == 10


def test_sam2_cancel_and_devices(blobs, tiny_sam2):
    clip, truth = blobs
    clip, truth = clip[:4, ::2, ::2], truth[:, :4, ::2, ::2]
    seen = []
    with pytest.raises(CancelledError):
        track_mattes(clip, keyed(truth, [0], "sam2", str(tiny_sam2)), progress=seen.append, cancelled=lambda: len(seen) > 2)
    assert seen[-1].step < seen[-1].total
    if not torch.cuda.is_available():
        with pytest.raises(JobError, match="device 'cuda' is not available"):
            track_mattes(clip, keyed(truth, [0], "sam2", str(tiny_sam2)), device="cuda")
    else:
        assert track_mattes(clip, keyed(truth, [0], "sam2", str(tiny_sam2)), device="cuda").shape == truth.shape


def test_missing_sam2_weights_name_the_command_that_fetches_them(blobs):
    clip, truth = blobs
    with pytest.raises(ModelUnavailableError, match="hf download someone/no-such-sam2"):
        track_mattes(clip[:3], keyed(truth[:, :3], [0], "sam2", "someone/no-such-sam2"))


# --- job files and `videograin mattes` -----------------------------------------------------------------


def write_job(folder: Path, clip: np.ndarray, truth: np.ndarray, regions: list[dict], **extra) -> Path:
    for f, frame in enumerate(clip):
        write_png(folder / "frames" / f"{f:04d}.png", frame)
    for k in range(len(truth)):
        for f in range(len(clip)):
            write_png(folder / "keys" / f"{k}-{f}.png", truth[k, f].astype(np.uint8) * 255)
    job = {"source": {"path": "frames", "width": 64, "height": 64}, "source_prompt": "two blobs",
           "prompt": "a red blob and a blue blob", "regions": regions, "model": "tiny", "steps": 2, **extra}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def key(region: int, *frames: int) -> list[dict]:
    return [{"frame": f, "mask": f"keys/{region}-{f}.png"} for f in frames]


def test_a_job_region_with_keyframes_is_tracked_at_load(tmp_path, blobs):
    clip, truth = blobs
    path = write_job(tmp_path, clip, truth, [
        {"phrase": "red blob", "keyframes": key(0, 0, FRAMES - 1)},
        {"phrase": "blue blob", "keyframes": key(1, 0), "track": "flow"},
    ])
    job = load_job(path)
    assert job.masks.shape == truth.shape
    assert min(mean_ious(job.masks, truth)) >= 0.9
    assert job.settings.regions[0].keyframes[1].frame == FRAMES - 1
    assert Path(job.settings.regions[0].keyframes[0].mask).is_absolute()


def test_keyframe_frames_count_in_the_edited_clip(tmp_path, blobs):
    clip, truth = blobs
    # Every second source frame from 2: edited frame 3 is source frame 8.
    path = write_job(tmp_path, clip, truth, [
        {"phrase": "red blob", "keyframes": [{"frame": 3, "mask": "keys/0-8.png"}]},
        {"phrase": "blue blob", "mask": "blue"},
    ], source={"path": "frames", "start": 2, "stride": 2, "count": 8, "width": 64, "height": 64})
    for f in range(FRAMES):  # the second region has mattes on every source frame
        write_png(tmp_path / "blue" / f"{f:04d}.png", truth[1, f].astype(np.uint8) * 255)
    job = load_job(path)
    assert (job.masks[0, 3] == truth[0, 8]).all()
    assert np.mean([iou(job.masks[0, i], truth[0, 2 + 2 * i]) for i in range(8)]) >= 0.9
    data = yaml.safe_load(path.read_text())
    data["regions"][0]["keyframes"][0]["frame"] = 8
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(JobError, match="keyframe frame 8 is outside the clip: frames are numbered 0 to 7"):
        load_job(path)


@pytest.mark.parametrize(
    ("region", "words"),
    [
        ({"phrase": "red blob", "mask": "keys", "keyframes": key(0, 0)}, "both mask and keyframes"),
        ({"phrase": "red blob", "keyframes": key(0, 0), "track": "magic"}, "track is 'magic'"),
        ({"phrase": "red blob", "mask": "keys", "track": "sam2"}, "apply to keyframes"),
        ({"phrase": "red blob", "keyframes": key(0, 0), "tracker_model": "x"}, "track: flow needs none"),
        ({"phrase": "red blob", "keyframes": [{"frame": -2, "mask": "keys/0-0.png"}]}, "negative"),
        ({"phrase": "red blob", "keyframes": [{"frame": 0}]}, "needs mask"),
        ({"phrase": "red blob", "keyframes": ["keys/0-0.png"]}, "must be a mapping"),
        ({"phrase": "red blob"}, "or keyframes to track"),
        ({"phrase": "red blob", "keyframes": [{"frame": 0, "mask": "keys"}]}, "is not an image file"),
    ],
)
def test_bad_keyframes_in_a_job_file_say_what_to_fix(tmp_path, blobs, region, words):
    clip, truth = blobs
    path = write_job(tmp_path, clip[:3], truth[:, :3], [region, {"phrase": "blue blob", "keyframes": key(1, 0)}])
    with pytest.raises(JobError, match=words):
        load_job(path)


def test_keyframe_settings_round_trip_through_to_dict():
    data = {"prompt": "a red blob", "source_prompt": "a blob",
            "regions": [{"phrase": "red blob", "keyframes": [{"frame": 4, "mask": "k.png"}], "track": "sam2"}]}
    settings = parse_settings(data)
    again = parse_settings(settings.to_dict())  # what a protocol submit of this job carries
    assert again.regions == settings.regions and again.regions[0].keyframes[0].frame == 4


def test_videograin_mattes_writes_folders_a_sheet_and_a_report(tmp_path, blobs, capsys):
    clip, truth = blobs
    clip, truth = clip[:8], truth[:, :8]
    path = write_job(tmp_path, clip, truth, [
        {"phrase": "red blob", "keyframes": key(0, 0)},
        {"phrase": "blue blob", "keyframes": key(1, 0, 7)},
    ])
    out = tmp_path / "out" / "mattes"
    assert main(["mattes", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00-red-blob", "01-blue-blob", "contact_sheet.png", "mattes.json"]
    for folder in ("00-red-blob", "01-blue-blob"):
        assert sorted(p.name for p in (out / folder).iterdir()) == [f"{f:05d}.png" for f in range(8)]
    report = json.loads((out / "mattes.json").read_text())
    assert [r["keyframes"] for r in report["regions"]] == [[0], [0, 7]] and report["frames"] == 8
    assert (out / "contact_sheet.png").stat().st_size > 0
    from videograin.engine.inputs.media import read_sequence

    written = read_sequence(out / "01-blue-blob", list(range(8)), "written", grey=True) >= 128
    assert (written[7] == truth[1, 7]).all()
    # Never over what exists: a second run into the same folder is refused and changes nothing.
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["mattes", str(path), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.rglob("*")) == before
    assert [p.name for p in out.parent.iterdir()] == ["mattes"]  # no staging folder left behind


def test_videograin_mattes_with_a_bad_keyframe_writes_nothing(tmp_path, blobs, capsys):
    clip, truth = blobs
    path = write_job(tmp_path, clip[:4], truth[:, :4], [
        {"phrase": "red blob", "keyframes": key(0, 0)},
        {"phrase": "blue blob", "keyframes": [{"frame": 9, "mask": "keys/1-0.png"}]},
    ])
    out = tmp_path / "out"
    assert main(["mattes", str(path), "--out", str(out)]) == 2
    assert "keyframe frame 9 is outside the clip" in capsys.readouterr().err
    assert not out.exists()


def test_videograin_edit_tracks_keyframes_first(tmp_path, blobs):
    clip, truth = blobs
    clip, truth = clip[:4, ::2, ::2], truth[:, :4, ::2, ::2]
    path = write_job(tmp_path, clip, truth, [
        {"phrase": "red blob", "keyframes": key(0, 0)},
        {"phrase": "blue blob", "keyframes": key(1, 3)},
    ], control={"type": "none"}, flow={"method": "none"})
    out = tmp_path / "edit"
    assert main(["edit", str(path), "--out", str(out), "--device", "cpu"]) == 0
    assert len(list((out / "frames").iterdir())) == 4
    regions = json.loads((out / "result.json").read_text())["settings"]["regions"]
    assert [r["keyframes"][0]["frame"] for r in regions] == [0, 3]
