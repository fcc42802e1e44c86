"""ControlNet condition maps for a clip: RGB uint8 (F, H, W, 3), same size as the frames.

- canny: OpenCV edges, no weights.
- frames: maps supplied by the caller (e.g. depth rendered by Blender), already in the job.
- depth: a transformers depth estimator (DPT, Depth Anything, ...) from a local folder; normalised over
  the whole clip so brightness means the same depth in every frame.
- pose: a transformers ViTPose model from a local folder, run on each region's bounding box (regions
  are the people), drawn as an OpenPose-style skeleton, which the openpose ControlNet expects.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch

from videograin.engine.config import ControlConfig
from videograin.engine.errors import JobError, ModelUnavailableError

# OpenPose body order: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip,
# r-knee, r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear. COCO index of each (neck: None).
OPENPOSE_FROM_COCO = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
OPENPOSE_LIMBS = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
]
KEYPOINT_MIN_SCORE = 0.3


def control_maps(
    config: ControlConfig, frames: np.ndarray, masks: np.ndarray, supplied: np.ndarray | None = None
) -> np.ndarray | None:
    """Maps for `frames` (F, H, W, 3); `masks` (K, F, H, W) give pose its person boxes."""
    if config.type == "none":
        return None
    if config.type == "canny":
        return canny_maps(frames, config.low_threshold, config.high_threshold)
    if config.type == "frames":
        if supplied is None:
            raise JobError("control type 'frames' needs control maps, one per source frame")
        return supplied
    if config.type == "depth":
        return depth_maps(frames, config.path)
    if config.type == "pose":
        return pose_maps(frames, masks, config.path)
    raise JobError(f"unknown control type '{config.type}'")


def canny_maps(frames: np.ndarray, low: int, high: int) -> np.ndarray:
    edges = [cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), low, high) for f in frames]
    return np.repeat(np.stack(edges)[..., None], 3, axis=-1)


def _load(loader, path: str | None, what: str):
    try:
        return loader.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"the {what} estimator in '{path}' cannot be loaded ({exc}); give control.path a local folder "
            "with a transformers model and its processor config"
        ) from None


@torch.no_grad()
def depth_maps(frames: np.ndarray, path: str | None) -> np.ndarray:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = _load(AutoImageProcessor, path, "depth")
    model = _load(AutoModelForDepthEstimation, path, "depth").eval()
    height, width = frames.shape[1:3]
    depths = []
    for frame in frames:
        predicted = model(**processor(images=frame, return_tensors="pt")).predicted_depth
        depths.append(
            torch.nn.functional.interpolate(predicted[:, None].float(), (height, width), mode="bicubic")[0, 0].numpy()
        )
    depth = np.stack(depths)
    span = depth.max() - depth.min()
    grey = ((depth - depth.min()) / span * 255 if span > 0 else np.zeros_like(depth)).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def region_boxes(masks: np.ndarray, frame: int) -> list[list[float]]:
    """COCO boxes [x, y, w, h] of every region present in `frame`."""
    boxes = []
    for mask in masks[:, frame]:
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)])
    return boxes


@torch.no_grad()
def pose_maps(frames: np.ndarray, masks: np.ndarray, path: str | None) -> np.ndarray:
    from transformers import AutoProcessor, VitPoseForPoseEstimation

    processor = _load(AutoProcessor, path, "pose")
    model = _load(VitPoseForPoseEstimation, path, "pose").eval()
    canvases = np.zeros_like(frames)
    for index, frame in enumerate(frames):
        boxes = region_boxes(masks, index)
        if not boxes:
            continue
        inputs = processor(frame, boxes=[boxes], return_tensors="pt")
        people = processor.post_process_pose_estimation(model(**inputs), boxes=[boxes])[0]
        for person in people:
            draw_skeleton(canvases[index], person["keypoints"].numpy(), person["scores"].numpy())
    return canvases


def draw_skeleton(canvas: np.ndarray, coco_points: np.ndarray, scores: np.ndarray) -> None:
    """Draw one COCO-17 person in OpenPose's 18-point layout, one hue per limb."""
    points: list[tuple[int, int] | None] = []
    for coco in OPENPOSE_FROM_COCO:
        if coco is None:  # neck: midway between the shoulders
            seen = scores[5] >= KEYPOINT_MIN_SCORE and scores[6] >= KEYPOINT_MIN_SCORE
            points.append(tuple(((coco_points[5] + coco_points[6]) / 2).round().astype(int)) if seen else None)
        else:
            points.append(tuple(coco_points[coco].round().astype(int)) if scores[coco] >= KEYPOINT_MIN_SCORE else None)
    thickness = max(2, canvas.shape[0] // 128)
    for number, (a, b) in enumerate(OPENPOSE_LIMBS):
        if points[a] is not None and points[b] is not None:
            colour = [round(c * 255) for c in colorsys.hsv_to_rgb(number / len(OPENPOSE_LIMBS), 1.0, 0.6)]
            cv2.line(canvas, points[a], points[b], colour, thickness * 2, cv2.LINE_AA)
    for number, point in enumerate(points):
        if point is not None:
            colour = [round(c * 255) for c in colorsys.hsv_to_rgb(number / len(points), 1.0, 1.0)]
            cv2.circle(canvas, point, thickness * 2, colour, -1, cv2.LINE_AA)
