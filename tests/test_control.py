"""Control maps: canny from OpenCV, depth and pose from local transformers estimators (tiny, random)."""

from __future__ import annotations

import numpy as np
import pytest

from videograin.engine.config import ControlConfig
from videograin.engine.errors import JobError, ModelUnavailableError
from videograin.engine.inputs.control import control_maps, draw_skeleton, region_boxes

FRAMES = np.zeros((2, 80, 96, 3), np.uint8)
FRAMES[:, 20:60, 30:70] = 255
MASKS = np.zeros((2, 2, 80, 96), bool)
MASKS[0, :, 10:70, 5:40] = True
MASKS[1, 1, 20:60, 50:90] = True


def test_canny_marks_the_square_outline():
    maps = control_maps(ControlConfig(type="canny"), FRAMES, MASKS)
    assert maps.shape == FRAMES.shape
    assert maps[0, 18:22, 40].max() == 255 and maps[0, 40, 50].max() == 0 and maps[0, 5, 5].max() == 0


def test_none_and_supplied_frames():
    assert control_maps(ControlConfig(type="none"), FRAMES, MASKS) is None
    supplied = np.full_like(FRAMES, 7)
    assert control_maps(ControlConfig(type="frames", path="x"), FRAMES, MASKS, supplied) is supplied
    with pytest.raises(JobError):
        control_maps(ControlConfig(type="frames", path="x"), FRAMES, MASKS)


def test_depth_from_a_local_estimator(tmp_path):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=64,
        patch_size=16, neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3],
    )
    DPTForDepthEstimation(config).save_pretrained(tmp_path)
    DPTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    maps = control_maps(ControlConfig(type="depth", path=str(tmp_path)), FRAMES, MASKS)
    assert maps.shape == FRAMES.shape
    assert maps.min() == 0 and maps.max() == 255  # normalised over the clip
    assert (maps[..., 0] == maps[..., 2]).all()


def test_pose_from_a_local_estimator_on_region_boxes(tmp_path):
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    backbone = VitPoseBackboneConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=[64, 48], patch_size=[16, 16], out_indices=[2],
    )
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).save_pretrained(tmp_path)
    VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(tmp_path)
    assert region_boxes(MASKS, 0) == [[5.0, 10.0, 35.0, 60.0]]
    maps = control_maps(ControlConfig(type="pose", path=str(tmp_path)), FRAMES, MASKS)
    assert maps.shape == FRAMES.shape
    for f in range(2):  # whatever random weights find lies inside the people's boxes
        ys, xs = np.nonzero(maps[f].any(-1))
        assert len(xs) and xs.min() >= 0


def test_missing_estimator_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="depth estimator"):
        control_maps(ControlConfig(type="depth", path=str(tmp_path / "none")), FRAMES, MASKS)


def test_skeleton_drawing_joins_confident_points_only():
    canvas = np.zeros((100, 100, 3), np.uint8)
    points = np.array([[50, 10], [48, 8], [52, 8], [45, 9], [55, 9], [40, 30], [60, 30], [35, 50], [65, 50],
                       [30, 70], [70, 70], [45, 60], [55, 60], [45, 80], [55, 80], [45, 95], [55, 95]], float)
    scores = np.ones(17)
    scores[9] = 0.0  # left wrist unseen
    draw_skeleton(canvas, points, scores)
    assert canvas[30, 50].any()  # the neck, midway between the shoulders, is drawn
    assert not canvas[70, 30].any()  # the unseen wrist is not
