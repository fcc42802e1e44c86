"""Optical flow of a clip: forward and backward, with the pixels that have no consistent match.

Conventions (everywhere in the engine): a flow field is float32 (H, W, 2) holding (dx, dy) in pixels,
x to the right, y down, row 0 at the top; pixel centres sit at integer coordinates. For a clip of F
frames, `forward[t]` carries a pixel of frame t to frame t + 1 and `backward[t]` a pixel of frame t + 1
to frame t. Pixel (x, y) of frame t sits at (x, y) + forward[t][y, x] in frame t + 1.

Methods (`FlowConfig.method`, config.py; `none` computes no flow):
- `dis` (default, no weights): OpenCV's DIS. Preset `medium` by default: on a textured 512² pair it is
  within 0.05 px of a known shift (p99) where `fast` is within 0.15 px and `ultrafast` 0.17 px, and its
  ~0.18 s per pair and direction on two cores is small beside an edit; matte tracking at 720p, which must
  be fast, can ask for `fast`. Motions of more than about a tenth of the frame per frame defeat DIS (a
  70 px shift at 512 px is lost): supply flow or use `raft` for those.
- `farneback` (no weights): OpenCV's Farnebäck; smoother, slower, blurs motion boundaries.
- `raft`: torchvision's RAFT-Large (the flow the reference VideoGrain uses). Needs torchvision built for
  the installed torch, and the weights: `path` names a local state-dict file, else torchvision's own
  cache (~/.cache/torch/hub/checkpoints), filled once on a connected machine.
- `frames`: flow supplied by the editor (e.g. Blender's vector pass), read from `path`, a folder with two
  sub-folders `forward/` and `backward/`. Each holds one file per pair of consecutive frames, in natural
  name order (`0000.flo`, `0001.flo`, ... or `.npy`): file i of `forward/` is frame i → i + 1, file i of
  `backward/` is frame i + 1 → i. A file is a Middlebury `.flo` or a NumPy `.npy` array (H, W, 2) of
  floats in the convention above (Blender's vector pass is not: its rows run bottom-up and its four
  channels hold the motion towards both neighbours; whoever exports it converts). The folders hold either one file per consecutive pair of source frames (source length − 1;
  a clip sampled with a stride then gets the flows chained) or one per consecutive pair of edited frames
  (edited frames − 1). Any size: fields are resized to the frames' size, vectors scaled per axis.

Occlusion: the rule of Ruder, Dosovitskiy & Brox (GCPR 2016), which the code of Lai et al.'s warp-error
metric (ECCV 2018) also uses. Pixel x of frame t is occluded in frame t + 1 when w = forward(x) and
ŵ = backward(x + w) (bilinear) do not cancel (Sundaram, Brox & Keutzer, ECCV 2010),

    |w + ŵ|² > 0.01 · (|w|² + |ŵ|²) + 0.5,

or when x lies on a motion boundary, |∇u|² + |∇v|² > 0.01 · |w|² + 0.002 (forward differences; this
catches background about to be covered, which estimators tend to drag along with the object covering
it), or when x + w leaves the frame (its centre falls outside [−0.5, W − 0.5] × [−0.5, H − 0.5]).
`occluded_backward` is the same test with the roles swapped.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from videograin.engine.config import FlowConfig
from videograin.engine.errors import JobError, ModelUnavailableError
from videograin.engine.inputs.limits import check_media_path
from videograin.engine.inputs.media import natural_key

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# Sundaram et al.'s forward–backward tolerance: relative to the motion, plus half a pixel squared.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
# Ruder et al.'s motion boundaries: a steep flow gradient (squared forward differences).
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002
FLO_MAGIC = 202021.25  # Middlebury .flo header tag ("PIEH")
FLOW_SUFFIXES = (".flo", ".npy")
RAFT_BATCH = 4  # frame pairs per RAFT call


@dataclass
class ClipFlow:
    """Flow between consecutive frames of a clip of F frames, each array with F − 1 entries."""

    forward: np.ndarray  # (F−1, H, W, 2) float32: frame t → t + 1
    backward: np.ndarray  # (F−1, H, W, 2) float32: frame t + 1 → t
    occluded_forward: np.ndarray  # (F−1, H, W) bool: pixels of frame t without a consistent match in t + 1
    occluded_backward: np.ndarray  # (F−1, H, W) bool: pixels of frame t + 1 without one in t

    @classmethod
    def from_fields(cls, forward: np.ndarray, backward: np.ndarray) -> ClipFlow:
        forward, backward = forward.astype(np.float32, copy=False), backward.astype(np.float32, copy=False)
        return cls(forward, backward, occlusion(forward, backward), occlusion(backward, forward))


def clip_flow(
    frames: np.ndarray,
    config: FlowConfig,
    indices: list[int] | None = None,
    source_length: int | None = None,
    device: str = "cpu",
) -> ClipFlow:
    """Flow of `frames` (F, H, W, 3) RGB uint8 at their own size.

    `indices` (source frame of each clip frame) and `source_length` serve supplied flow only: they say
    which supplied files belong to the clip. `device` serves RAFT only.
    """
    config.check()
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise JobError("flow needs RGB uint8 frames (F, H, W, 3)")
    height, width = frames.shape[1:3]
    if config.method == "frames":
        indices = list(range(len(frames))) if indices is None else indices
        source_length = len(frames) if source_length is None else source_length
        forward, backward = read_flow(Path(config.path), indices, source_length, width, height)
    elif config.method == "raft":
        forward, backward = raft_flow(frames, config.path, device)
    else:
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        pairs = [(grey[t], grey[t + 1]) for t in range(len(grey) - 1)]
        pairs += [(b, a) for a, b in pairs]
        estimate = lambda pair: _estimate(config, *pair)
        # OpenCV releases the GIL: pairs run in parallel, one estimator object per call.
        with ThreadPoolExecutor(max_workers=max(1, min(len(pairs), os.cpu_count() or 1))) as pool:
            fields = list(pool.map(estimate, pairs))
        empty = np.zeros((0, height, width, 2), np.float32)
        forward = np.stack(fields[: len(pairs) // 2]) if pairs else empty
        backward = np.stack(fields[len(pairs) // 2 :]) if pairs else empty
    return ClipFlow.from_fields(forward, backward)


def _estimate(config: FlowConfig, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    if config.method == "farneback":
        return cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 4, 15, 3, 5, 1.2, 0)
    return cv2.DISOpticalFlow_create(DIS_PRESETS[config.preset]).calc(first, second, None)


def warp(image: np.ndarray, flow: np.ndarray, nearest: bool = False, border: float = 0.0) -> np.ndarray:
    """Backward warp: out[y, x] = image at (x, y) + flow[y, x], bilinear (or nearest), `border` outside.

    To bring frame t + 1 onto frame t use `warp(frame[t + 1], forward[t])`; frame t onto t + 1:
    `warp(frame[t], backward[t])` (the warp-error metric; exclude `occluded_backward[t]`).
    image: (H, W) or (H, W, C ≤ 4), any dtype cv2.remap takes; flow: (H, W, 2).
    """
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(
        image, (xs + flow[..., 0]).astype(np.float32), (ys + flow[..., 1]).astype(np.float32),
        cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border,
    )


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The flow of `first` followed by `second` (e.g. t → t + 1 then t + 1 → t + 2 gives t → t + 2)."""
    return first + warp(second, first)


def occlusion(flow: np.ndarray, reverse: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels whose `flow` leaves the frame, fails the forward–backward check or lies on a
    motion boundary."""
    height, width = flow.shape[1:3]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    masks = []
    for there, back in zip(flow, reverse):
        back_there = warp(back, there)
        motion = np.square(there).sum(-1)
        mismatch = np.square(there + back_there).sum(-1)
        inconsistent = mismatch > CONSISTENCY_RELATIVE * (motion + np.square(back_there).sum(-1)) + CONSISTENCY_ABSOLUTE
        # Forward differences of both components, zero on the last row / column.
        steep = np.zeros((height, width), np.float32)
        steep[:, :-1] += np.square(np.diff(there, axis=1)).sum(-1)
        steep[:-1, :] += np.square(np.diff(there, axis=0)).sum(-1)
        boundary = steep > BOUNDARY_RELATIVE * motion + BOUNDARY_ABSOLUTE
        tx, ty = xs + there[..., 0], ys + there[..., 1]
        # A pixel spans ±0.5 around its centre: sub-pixel noise at the border does not make it leave.
        outside = (tx < -0.5) | (tx > width - 0.5) | (ty < -0.5) | (ty > height - 0.5)
        masks.append(outside | inconsistent | boundary)
    return np.stack(masks) if masks else np.zeros(flow.shape[:3], bool)


def resize_flow(flow: np.ndarray, width: int, height: int) -> np.ndarray:
    """A flow field (H, W, 2) at another size: resampled, and its vectors scaled per axis."""
    old_height, old_width = flow.shape[:2]
    if (old_width, old_height) == (width, height):
        return flow
    shrink = width * height < old_width * old_height
    resized = cv2.resize(flow, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return resized * np.array([width / old_width, height / old_height], np.float32)


# --- supplied flow ---------------------------------------------------------------------------------


def read_flow(
    path: Path, indices: list[int], source_length: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Supplied forward and backward flow for the clip's frames (`indices` into the source), resized."""
    if not path.is_dir():
        raise JobError(f"flow: '{path}' is not a folder with forward/ and backward/ flow files")
    files = {name: _flow_files(path / name) for name in ("forward", "backward")}
    count = len(files["forward"])
    if len(files["backward"]) != count:
        raise JobError(f"flow: '{path}' has {count} forward but {len(files['backward'])} backward flow files")
    if count == source_length - 1:
        spans = [list(range(a, b)) for a, b in itertools.pairwise(indices)]
    elif count == len(indices) - 1:
        spans = [[i] for i in range(len(indices) - 1)]
    else:
        raise JobError(
            f"flow: '{path}' has {count} files per direction; it needs one per pair of consecutive "
            f"source frames ({source_length - 1}) or of edited frames ({len(indices) - 1})"
        )
    if any(not span for span in spans):
        raise JobError("flow: supplied flow needs the clip's frames in increasing source order")
    needed = sorted({i for span in spans for i in span})
    raw = {(name, i): read_flow_file(paths[i]) for name, paths in files.items() for i in needed}
    sizes = {field.shape for field in raw.values()}
    if len(sizes) > 1:
        raise JobError(f"flow: files in '{path}' differ in size: {sorted(sizes)}")
    fields = {key: resize_flow(field, width, height) for key, field in raw.items()}
    ahead, behind = [], []
    for span in spans:
        # A stride between edited frames: chain the source pairs in between.
        chained = fields["forward", span[0]]
        for i in span[1:]:
            chained = compose(chained, fields["forward", i])
        ahead.append(chained)
        chained = fields["backward", span[-1]]
        for i in reversed(span[:-1]):
            chained = compose(chained, fields["backward", i])
        behind.append(chained)
    empty = np.zeros((0, height, width, 2), np.float32)
    return (np.stack(ahead), np.stack(behind)) if spans else (empty, empty)


def _flow_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise JobError(f"flow: '{folder}' is missing; supplied flow needs forward/ and backward/ folders")
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FLOW_SUFFIXES), key=natural_key)


def read_flow_file(file: Path) -> np.ndarray:
    """One flow field (H, W, 2) float32 from a Middlebury .flo or a .npy file; JobError if malformed."""
    check_media_path(file, "flow")  # a FIFO would block the reader for good
    try:
        if file.suffix.lower() == ".npy":
            flow = np.load(file, allow_pickle=False)
        else:
            flow = _read_flo(file)
    except (OSError, ValueError) as exc:
        raise JobError(f"flow: '{file}' cannot be read ({exc})") from None
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] < 1 or flow.shape[1] < 1:
        raise JobError(f"flow: '{file}' has shape {flow.shape}; a flow field is (height, width, 2)")
    if not np.issubdtype(flow.dtype, np.floating) or not np.isfinite(flow).all():
        raise JobError(f"flow: '{file}' must hold finite floats (dx, dy) in pixels")
    return flow.astype(np.float32, copy=False)


def _read_flo(file: Path) -> np.ndarray:
    data = file.read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != FLO_MAGIC:
        raise ValueError("not a Middlebury .flo file (bad header)")
    width, height = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if width < 1 or height < 1 or len(data) != 12 + width * height * 8:
        raise ValueError(f"header says {width}x{height} but the file holds {len(data) - 12} bytes of flow")
    return np.frombuffer(data[12:], "<f4").reshape(height, width, 2).copy()


# --- RAFT ------------------------------------------------------------------------------------------


def raft_flow(frames: np.ndarray, weights: str | None, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward flow from torchvision's RAFT-Large (the reference VideoGrain's flow)."""
    import torch
    import torch.nn.functional as F

    model = _raft_model(weights).to(device).eval()
    height, width = frames.shape[1:3]
    # RAFT works on sizes divisible by 8 and images scaled to [-1, 1] (torchvision's Raft_Large transforms).
    pad = (0, -width % 8, 0, -height % 8)
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    images = F.pad(images, pad, mode="replicate")
    first, second = images[:-1], images[1:]
    fields = []
    with torch.no_grad():
        for a, b in ((first, second), (second, first)):
            out = [
                model(a[i : i + RAFT_BATCH].to(device), b[i : i + RAFT_BATCH].to(device))[-1].float().cpu()
                for i in range(0, len(a), RAFT_BATCH)
            ]
            flow = torch.cat(out) if out else torch.zeros(0, 2, *images.shape[2:])
            fields.append(flow[:, :, :height, :width].permute(0, 2, 3, 1).numpy())
    return fields[0], fields[1]


def _raft_model(weights: str | None):
    import torch

    try:
        from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
    except ImportError:
        raise ModelUnavailableError(
            f"flow method 'raft' needs torchvision built for torch {torch.__version__.split('+')[0]} "
            "(pip install the torchvision release paired with it) and RAFT-Large weights; "
            "or use flow.method 'dis', which needs no weights"
        ) from None
    model = raft_large(weights=None, progress=False)
    try:
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        else:
            state = Raft_Large_Weights.DEFAULT.get_state_dict(progress=False)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 -- offline hub, missing or foreign file: all mean "no usable weights"
        raise ModelUnavailableError(
            f"RAFT-Large weights cannot be loaded ({type(exc).__name__}: {exc}); on a connected machine run "
            "python -c \"from torchvision.models.optical_flow import raft_large, Raft_Large_Weights as W; "
            "raft_large(weights=W.DEFAULT)\" (fills ~/.cache/torch/hub/checkpoints) or give flow.path the "
            "downloaded raft_large_*.pth file"
        ) from None
    return model
