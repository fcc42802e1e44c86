"""Reading clips and mattes, writing frames and previews. Images are RGB uint8 arrays (H, W, 3).

Writes are atomic: a file appears complete under its final name or not at all.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np

from videograin.engine.errors import JobError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif"}


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_frames(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)


def sequence_length(path: Path) -> int:
    """Number of frames in a folder of images or a video file."""
    if path.is_dir():
        return len(list_frames(path))
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return count


def read_sequence(path: Path, indices: list[int], what: str, grey: bool = False) -> np.ndarray:
    """Read the frames at `indices` of a folder or video as (F, H, W, 3) RGB or (F, H, W) grey uint8."""
    if not path.exists():
        raise JobError(f"{what}: '{path}' does not exist")
    if path.is_dir():
        frames = [read_image(p, what, grey) for p in _pick(list_frames(path), indices, path, what)]
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        frames = _read_video(path, indices, what, grey)
    else:
        raise JobError(f"{what}: '{path}' is neither a folder of images nor a video file")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise JobError(f"{what}: frames of '{path}' differ in size: {sorted(shapes)}")
    return np.stack(frames)


def _pick(files: list[Path], indices: list[int], folder: Path, what: str) -> list[Path]:
    if not files:
        raise JobError(f"{what}: '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if max(indices) >= len(files):
        raise JobError(f"{what}: '{folder}' has {len(files)} frames, frame {max(indices)} was asked for")
    return [files[i] for i in indices]


def read_image(path: Path, what: str, grey: bool) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise JobError(f"{what}: '{path}' is not a readable image")
    return _to_uint8(image, grey)


def _to_uint8(image: np.ndarray, grey: bool) -> np.ndarray:
    if image.dtype != np.uint8:  # 16-bit PNG, float EXR
        scale = 255.0 / 65535.0 if image.dtype == np.uint16 else 255.0
        image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return image if grey else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        # A matte painted with alpha: transparent means "not in the region".
        if grey:
            return np.minimum(cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY), image[..., 3])
        image = image[..., :3]
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if grey else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_video(path: Path, indices: list[int], what: str, grey: bool) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise JobError(f"{what}: '{path}' cannot be opened as a video")
    wanted, frames, index = set(indices), {}, 0
    try:
        while index <= max(indices):
            ok, image = capture.read()
            if not ok:
                raise JobError(f"{what}: '{path}' has {index} frames, frame {max(indices)} was asked for")
            if index in wanted:
                frames[index] = _to_uint8(image, grey)
            index += 1
    finally:
        capture.release()
    return [frames[i] for i in indices]


def resize(images: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """Resize a stack of images; area averaging when shrinking keeps edges honest."""
    if images.shape[2] == width and images.shape[1] == height:
        return images
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if width < images.shape[2] else cv2.INTER_CUBIC
    return np.stack([cv2.resize(im, (width, height), interpolation=interpolation) for im in images])


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes so that `path` is either the old file or the complete new one, never a torn write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def encode_png(image: np.ndarray) -> bytes:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_png(path: Path, image: np.ndarray) -> None:
    write_atomic(path, encode_png(image))


def write_mp4(path: Path, frames: np.ndarray, fps: float = 12.0) -> None:
    """Write an MP4 preview (mp4v, OpenCV's bundled encoder) through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write MP4 to '{tmp}'")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    os.replace(tmp, path)


HEAT_LEGEND = "attention of the phrase's words at a pixel: 0 (blue) to its peak over the clip (red)"


def contact_sheet(
    rows: list[tuple[str, np.ndarray]], columns: int = 8, cell: int = 160, banner: str | None = None,
    heat_legend: bool = False,
) -> np.ndarray:
    """One labelled row of evenly spaced frames per (label, frames) — e.g. source, edit, then one per
    phrase's attention maps —, all rows the same length; an optional warning banner on top, and with
    `heat_legend` the heat maps' colour scale at the bottom. Text wraps to the sheet's width."""
    count, height, width = rows[0][1].shape[:3]
    picks = np.linspace(0, count - 1, num=min(columns, count)).round().astype(int)
    cell_h = max(1, round(cell * height / width))
    strips = []
    for label, frames in rows:
        strip = np.concatenate([cv2.resize(frames[i], (cell, cell_h), interpolation=cv2.INTER_AREA) for i in picks], 1)
        cv2.putText(strip, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        strips.append(strip)
    sheet_width = strips[0].shape[1]
    if banner:
        strips.insert(0, _text_strip(banner, sheet_width, (160, 0, 0)))
    if heat_legend:
        scale = np.linspace(0, 255, sheet_width - 12).astype(np.uint8)[None].repeat(12, 0)
        bar = np.full((20, sheet_width, 3), 24, np.uint8)
        bar[4:16, 6:-6] = cv2.cvtColor(cv2.applyColorMap(scale, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        strips += [bar, _text_strip(HEAT_LEGEND, sheet_width, (24, 24, 24))]
    return np.concatenate(strips, 0)


def _text_strip(text: str, width: int, background: tuple[int, int, int], scale: float = 0.45) -> np.ndarray:
    """`text` in white on a strip `width` wide, its words wrapped onto as many lines as it takes (a word
    wider than the strip is drawn smaller), so nothing is cut off."""
    font, margin, line_height = cv2.FONT_HERSHEY_SIMPLEX, 6, 18
    fits = lambda words, size=scale: cv2.getTextSize(words, font, size, 1)[0][0] <= width - 2 * margin  # noqa: E731
    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    strip = np.full((line_height * len(lines) + 8, width, 3), background, dtype=np.uint8)
    for row, line in enumerate(lines):
        size = scale
        while size > 0.2 and not fits(line, size):
            size *= 0.9
        cv2.putText(strip, line, (margin, 4 + line_height * (row + 1) - 5), font, size, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def heatmap_overlays(frames: np.ndarray, maps: np.ndarray, opacity: float = 0.55) -> np.ndarray:
    """Maps (F, h, w) in [0, 1] as a colour heat map (blue low, red high) over frames (F, H, W, 3)."""
    height, width = frames.shape[1:3]
    overlays = []
    for frame, heat in zip(frames, maps):
        heat = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        colour = cv2.cvtColor(cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET),
                              cv2.COLOR_BGR2RGB)
        overlays.append(cv2.addWeighted(frame, 1 - opacity, colour, opacity, 0))
    return np.stack(overlays)


def slug(text: str) -> str:
    """A file-name-safe form of a phrase: lowercase words joined by '_' ("Iron Man" -> "iron_man")."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "phrase"
