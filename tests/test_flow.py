"""Optical flow of a clip: estimation, occlusion, warping, supplied flow files and the RAFT wrapper."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from videograin.engine.config import FlowConfig
from videograin.engine.errors import JobError, ModelUnavailableError
from videograin.engine.inputs.flow import (
    FLO_MAGIC,
    ClipFlow,
    clip_flow,
    compose,
    read_flow_file,
    resize_flow,
    warp,
)


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth-to-fine random colour texture, (H, W, 3) uint8: flow can be measured everywhere."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cell, amplitude in ((32, 1.0), (8, 0.6), (3, 0.3)):
        noise = rng.random((height // cell + 3, width // cell + 3, 3)).astype(np.float32)
        size = ((width // cell + 3) * cell, (height // cell + 3) * cell)
        big = cv2.resize(noise, size, interpolation=cv2.INTER_CUBIC)
        image += amplitude * big[cell : cell + height, cell : cell + width]
    image -= image.min()
    return (image / image.max() * 255).astype(np.uint8)


def translated_clip(frames: int, height: int, width: int, dx: int, dy: int) -> np.ndarray:
    """Frames of one texture whose content moves by (dx, dy) pixels per frame."""
    pad_x, pad_y = abs(dx) * frames, abs(dy) * frames
    big = texture(height + 2 * pad_y, width + 2 * pad_x)
    tops, lefts = [pad_y - t * dy for t in range(frames)], [pad_x - t * dx for t in range(frames)]
    return np.stack([big[y : y + height, x : x + width] for y, x in zip(tops, lefts)])


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_translation_is_measured_within_half_a_pixel(method):
    dx, dy = 5, -3
    frames = translated_clip(3, 96, 128, dx, dy)
    flow = clip_flow(frames, FlowConfig(method=method))
    assert flow.forward.shape == flow.backward.shape == (2, 96, 128, 2)
    assert flow.occluded_forward.shape == (2, 96, 128) and flow.occluded_forward.dtype == bool
    interior = (slice(None), slice(12, -12), slice(12, -12))
    assert np.abs(flow.forward[interior] - [dx, dy]).max() < 0.5
    assert np.abs(flow.backward[interior] - [-dx, -dy]).max() < 0.5
    # The band whose content leaves the frame is occluded; the rest is consistent.
    xs = np.arange(128)
    leaving = xs + dx > 127
    assert flow.occluded_forward[:, 12:-12][:, :, leaving].all()
    assert not flow.occluded_forward[interior].any()
    # Content of frame t + 1 that came from outside frame t: 5 columns on the left, 3 rows at the bottom.
    assert flow.occluded_backward[:, -3:, 12:-12].all() and flow.occluded_backward[:, 12:-12, :5].all()
    assert not flow.occluded_backward[interior].any()


def test_covered_and_departing_objects_are_occluded():
    """A square sliding over a still background covers a strip ahead of it; another leaves the frame."""
    height, width, speed, side = 112, 128, 6, 32
    background, square = texture(height, width, seed=1), texture(side, side, seed=2)
    frames = []
    for t in range(3):
        frame = background.copy()
        frame[64 : 64 + side, 20 + speed * t : 20 + speed * t + side] = square  # covers the background
        x = width - 24 + speed * t  # walks out of the right edge
        frame[8 : 8 + side, x:] = square[:, : width - x]
        frames.append(frame)
    flow = clip_flow(np.stack(frames), FlowConfig())
    for t in range(2):
        occluded = flow.occluded_forward[t]
        ahead = 20 + speed * t + side  # first background column right of the square
        assert occluded[68 : 60 + side, ahead + 1 : ahead + speed - 1].mean() > 0.8  # about to go under it
        assert occluded[12 : 4 + side, width - speed + 1 :].mean() > 0.8  # leaves the frame
        left = width - 24 + speed * t  # the departing square's left edge
        assert occluded[12 : 4 + side, left + 4 : width - speed - 2].mean() < 0.1  # its part that stays inside
        assert occluded[100:, 80:].mean() < 0.02  # background away from both squares keeps its match


def test_warp_brings_the_next_frame_back_exactly_for_integer_flow():
    frames = translated_clip(2, 40, 48, 3, 2)
    forward = np.zeros((40, 48, 2), np.float32) + [3, 2]
    warped = warp(frames[1], forward)
    assert np.array_equal(warped[:-2, :-3], frames[0][:-2, :-3])
    assert (warped[-2:] == 0).all()  # outside the next frame: the border value
    matte = np.zeros((40, 48), np.uint8)
    matte[10:20, 10:20] = 255
    assert np.array_equal(warp(matte, -forward, nearest=True)[12:22, 13:23], matte[10:20, 10:20])


def test_compose_chains_two_steps():
    first = np.zeros((20, 30, 2), np.float32) + [2, 1]
    second = np.zeros((20, 30, 2), np.float32) + [3, -1]
    assert np.allclose(compose(first, second)[:-2, :-3], [5, 0])


def test_resize_flow_scales_vectors_per_axis():
    flow = np.zeros((50, 100, 2), np.float32) + [10, 4]
    resized = resize_flow(flow, 25, 100)
    assert resized.shape == (100, 25, 2)
    assert np.allclose(resized, [2.5, 8])


# --- supplied flow ---------------------------------------------------------------------------------


def write_flo(path: Path, flow: np.ndarray) -> None:
    height, width = flow.shape[:2]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()
    path.write_bytes(header + flow.astype("<f4").tobytes())


def supplied(folder: Path, fields: list[tuple[float, float]], size=(24, 32), suffix=".npy") -> Path:
    """Constant supplied flow fields, one per pair; backward is the exact inverse."""
    for name, sign in (("forward", 1), ("backward", -1)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, (dx, dy) in enumerate(fields):
            field = np.zeros((*size, 2), np.float32) + [sign * dx, sign * dy]
            path = folder / name / f"{i:04d}{suffix}"
            np.save(path, field) if suffix == ".npy" else write_flo(path, field)
    return folder


@pytest.mark.parametrize("suffix", [".npy", ".flo"])
def test_supplied_flow_is_read_resized_and_checked(tmp_path, suffix):
    folder = supplied(tmp_path / "flow", [(2, 1), (4, -2)], suffix=suffix)
    frames = np.zeros((3, 48, 64, 3), np.uint8)  # twice the files' size
    flow = clip_flow(frames, FlowConfig(method="frames", path=str(folder)))
    assert np.allclose(flow.forward[0], [4, 2]) and np.allclose(flow.forward[1], [8, -4])
    assert np.allclose(flow.backward[1], [-8, 4])
    assert not flow.occluded_forward[0, :-2, :-4].any() and flow.occluded_forward[0, :, -4:].all()


def test_supplied_flow_for_the_source_serves_a_strided_clip(tmp_path):
    folder = supplied(tmp_path / "flow", [(1, 0), (2, 0), (3, 1), (4, 0), (5, 0)])  # a 6-frame source
    frames = np.zeros((3, 24, 32, 3), np.uint8)
    flow = clip_flow(frames, FlowConfig(method="frames", path=str(folder)), indices=[1, 3, 5], source_length=6)
    interior = (slice(0, 12), slice(0, 12))
    assert np.allclose(flow.forward[0][interior], [2 + 3, 1]) and np.allclose(flow.forward[1][interior], [4 + 5, 0])
    assert np.allclose(flow.backward[0][-12:, -12:], [-5, -1])


def bad_flow(tmp_path: Path, case: str) -> Path:
    folder = supplied(tmp_path / "flow", [(1, 0), (1, 0)])
    forward = folder / "forward"
    if case == "missing backward":
        for p in (folder / "backward").iterdir():
            p.unlink()
        (folder / "backward").rmdir()
    elif case == "uneven":
        (folder / "backward" / "0001.npy").unlink()
    elif case == "count":
        np.save(forward / "0002.npy", np.zeros((24, 32, 2), np.float32))
        np.save(folder / "backward" / "0002.npy", np.zeros((24, 32, 2), np.float32))
    elif case == "shape":
        np.save(forward / "0001.npy", np.zeros((24, 32, 3), np.float32))
    elif case == "sizes":
        np.save(forward / "0001.npy", np.zeros((12, 16, 2), np.float32))
    elif case == "nan":
        np.save(forward / "0001.npy", np.full((24, 32, 2), np.nan, np.float32))
    elif case == "flo header":
        (forward / "0001.npy").unlink()
        (forward / "0001.flo").write_bytes(b"PIEX" + bytes(8))
    elif case == "not a folder":
        return folder / "forward" / "0000.npy"
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing backward", "backward"),
        ("uneven", "2 forward but 1 backward"),
        ("count", "one per pair of consecutive source frames (2) or of edited frames (2)"),
        ("shape", "(height, width, 2)"),
        ("sizes", "differ in size"),
        ("nan", "finite"),
        ("flo header", "Middlebury"),
        ("not a folder", "not a folder"),
    ],
)
def test_bad_supplied_flow_gives_one_clear_error(tmp_path, case, message):
    path = bad_flow(tmp_path, case)
    with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)")):
        clip_flow(np.zeros((3, 24, 32, 3), np.uint8), FlowConfig(method="frames", path=str(path)))


@pytest.mark.parametrize(
    "config, message",
    [
        (FlowConfig(method="sift"), "'flow.method' is 'sift'"),
        (FlowConfig(preset="slow"), "'flow.preset' is 'slow'"),
        (FlowConfig(method="frames"), "needs 'flow.path'"),
    ],
)
def test_bad_flow_settings_are_named(config, message):
    with pytest.raises(JobError, match=message):
        config.check()


def test_single_frame_has_empty_flow():
    flow = clip_flow(np.zeros((1, 16, 16, 3), np.uint8), FlowConfig())
    assert flow.forward.shape == (0, 16, 16, 2) and flow.occluded_forward.shape == (0, 16, 16)


def test_read_flow_file_round_trips_flo(tmp_path):
    field = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", field)
    assert np.array_equal(read_flow_file(tmp_path / "a.flo"), field)


# --- RAFT ------------------------------------------------------------------------------------------


def test_raft_without_torchvision_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # importing it raises ImportError
    with pytest.raises(ModelUnavailableError, match="torchvision") as raised:
        clip_flow(np.zeros((2, 16, 16, 3), np.uint8), FlowConfig(method="raft"))
    assert "flow.method 'dis'" in str(raised.value)


class FakeRaft(torch.nn.Module):
    """Stands in for torchvision's RAFT: 'flow' = (second − first, first) of the red channel."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, first, second):
        assert first.shape[-1] % 8 == 0 and first.shape[-2] % 8 == 0
        return [torch.zeros_like(first[:, :2]), torch.stack([second[:, 0] - first[:, 0], first[:, 0]], 1) * self.scale]


def fake_torchvision(monkeypatch, weights_error: Exception | None = None):
    class Weights:
        @staticmethod
        def get_state_dict(progress):
            if weights_error is not None:
                raise weights_error
            return FakeRaft().state_dict()

    optical_flow = types.ModuleType("torchvision.models.optical_flow")
    optical_flow.raft_large = lambda weights=None, progress=False: FakeRaft()
    optical_flow.Raft_Large_Weights = types.SimpleNamespace(DEFAULT=Weights)
    for name in ("torchvision", "torchvision.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "torchvision.models.optical_flow", optical_flow)


def test_raft_wrapper_orders_pairs_pads_and_crops(monkeypatch):
    fake_torchvision(monkeypatch)
    frames = np.random.default_rng(0).integers(0, 256, (6, 13, 21, 3), dtype=np.uint8)  # sizes not /8, > 1 batch
    flow = clip_flow(frames, FlowConfig(method="raft"))
    scaled = frames[..., 0].astype(np.float32) / 127.5 - 1
    assert flow.forward.shape == (5, 13, 21, 2)
    assert np.allclose(flow.forward[..., 0], scaled[1:] - scaled[:-1], atol=1e-5)
    assert np.allclose(flow.forward[..., 1], scaled[:-1], atol=1e-5)
    assert np.allclose(flow.backward[..., 1], scaled[1:], atol=1e-5)


def test_raft_weights_missing_or_from_a_file(monkeypatch, tmp_path):
    fake_torchvision(monkeypatch, weights_error=OSError("no network"))
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ModelUnavailableError, match="flow.path"):
        clip_flow(frames, FlowConfig(method="raft"))
    torch.save(FakeRaft().state_dict(), tmp_path / "raft.pth")
    assert isinstance(clip_flow(frames, FlowConfig(method="raft", path=str(tmp_path / "raft.pth"))), ClipFlow)
