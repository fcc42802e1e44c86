"""Reading clips and mattes, writing frames and movies. Images are RGB uint8 arrays (H, W, 3).

Video goes through FFmpeg's libraries (PyAV): exact frame counts, frame-accurate seeking, start
timecode, rotation and 10-bit sources; OpenCV reads and writes image files. Writes are atomic: a file
appears complete under its final name or not at all.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from videograin.engine.errors import JobError
from videograin.engine.inputs.limits import check_media_path, open_video, read_image_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr"}


def _video_suffixes() -> frozenset[str]:
    """Every suffix FFmpeg here opens: its demuxers' own, and those of the muxers of formats it also
    demuxes (`.mpg`, `.mxf` are named only there); image files stay with OpenCV."""
    suffixes: set[str] = set()
    for name in av.formats_available:
        if name.startswith("image2"):
            continue
        for mode in ("r", "w"):
            try:
                suffixes |= av.ContainerFormat(name, mode).extensions
            except ValueError:  # no demuxer (then its muxer is not asked) or no muxer of that name
                if mode == "r":
                    break
    return frozenset(f".{suffix}" for suffix in suffixes) - IMAGE_SUFFIXES


VIDEO_SUFFIXES = _video_suffixes()
# YUV to RGB where the file does not say: BT.709 for HD and larger, BT.601 below (what players assume).
HD_HEIGHT = 720
_COLORSPACES = {1: "ITU709", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020"}  # AVColorSpace
# swscale's defaults are off by up to 3 levels on flat colour: exact rounding and full chroma resolution.
_SCALING = (
    av.video.reformatter.Interpolation.BILINEAR
    | av.video.reformatter.Interpolation.ACCURATE_RND
    | av.video.reformatter.Interpolation.FULL_CHR_H_INT
    | av.video.reformatter.Interpolation.FULL_CHR_H_INP
)


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_frames(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Every OS or FFmpeg error while reading `path` as the one clear error that names the file."""
    try:
        yield
    except JobError:
        raise
    except (OSError, av.FFmpegError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise JobError(f"{what}: '{path}' cannot be read: {reason[:200]}") from None


def sequence_length(path: Path, what: str = "media") -> int:
    """Number of frames in a folder of images, a video file (exact) or an image file (one)."""
    check_media_path(path, what)
    with reading(path, what):
        if path.is_dir():
            return len(list_frames(path))
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return 1
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return probe_video(path, what).frames
    raise JobError(f"{what}: '{path}' is neither a folder of images, an image nor a video file")


def read_sequence(path: Path, indices: list[int], what: str, grey: bool = False) -> np.ndarray:
    """Read the frames at `indices` of a folder, a video or one image (frame 0) as (F, H, W, 3) RGB or
    (F, H, W) grey uint8."""
    check_media_path(path, what)
    with reading(path, what):
        if path.is_dir():
            frames = [read_image(p, what, grey) for p in _pick(list_frames(path), indices, path, what)]
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            frames = _read_video(path, indices, what, grey)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if max(indices) > 0:
                raise JobError(f"{what}: '{path}' is one image, frame {max(indices)} was asked for")
            frames = [read_image(path, what, grey)] * len(indices)
        else:
            raise JobError(f"{what}: '{path}' is neither a folder of images, an image nor a video file")
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
    with reading(path, what):
        data = np.frombuffer(read_image_file(path, what), dtype=np.uint8)
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


@dataclass(frozen=True)
class VideoInfo:
    """A video file's first video stream, as FFmpeg reads it."""

    frames: int  # exact: the container's sample index (QuickTime/MP4, MXF) or counted by decoding
    rate: Fraction  # frames per second (the average, when the rate varies)
    width: int  # as shown: after rotation
    height: int
    rotation: int  # degrees counterclockwise that each decoded frame is turned: 0, 90, 180 or 270
    start_frame: int  # the start timecode as a frame number at `rate` (0 without a timecode)
    variable_rate: bool  # frames not on a fixed grid: frame numbers and times do not map by the rate
    pixel_format: str  # as decoded, e.g. yuv422p10le (10-bit 4:2:2)
    time_base: Fraction
    start_pts: int  # the first frame's timestamp, in time_base


def probe_video(path: Path, what: str = "media") -> VideoInfo:
    """What a video file holds; read once per file version (size, modification time) in a process."""
    with reading(path, what):
        stat = path.stat()
        return _probe(str(path), stat.st_size, stat.st_mtime_ns, what)


@functools.lru_cache(maxsize=64)
def _probe(path: str, size: int, mtime_ns: int, what: str) -> VideoInfo:
    with open_video(Path(path)) as container:
        if not container.streams.video:
            raise JobError(f"{what}: '{path}' has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = next(container.decode(stream), None)
        if first is None:
            raise JobError(f"{what}: '{path}' has no decodable frame")
        rate = Fraction(stream.average_rate or stream.base_rate or stream.guessed_rate or 0)
        base = Fraction(stream.base_rate or rate)
        rotation = round(first.rotation / 90) % 4 * 90
        frames = _indexed_frames(container, stream)
        variable = _off_the_grid(stream)
        if variable is None:  # no index of every frame's time: the average rate against the stream's base rate
            variable = bool(rate and base and abs(rate / base - 1) > Fraction(1, 100))
        timecode = stream.metadata.get("timecode") or container.metadata.get("timecode") or next(
            (s.metadata["timecode"] for s in container.streams if "timecode" in s.metadata), None
        )
        start_pts = first.pts if first.pts is not None else 0
        time_base = Fraction(stream.time_base)  # read while the container is open
    if frames is None:
        with open_video(Path(path)) as container:  # no exact index: count by decoding
            container.streams.video[0].thread_type = "AUTO"
            frames = sum(1 for _ in container.decode(video=0))
    width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    return VideoInfo(
        frames,
        rate,
        width,
        height,
        rotation,
        _timecode_frame(timecode, rate) if timecode else 0,
        variable,
        first.format.name,
        time_base,
        start_pts,
    )


def _indexed_frames(container, stream) -> int | None:
    """The frame count the container states exactly: QuickTime/MP4's sample table, MXF's duration in
    edit units; None for containers whose count is an estimate (MPEG-PS/TS, Matroska, AVI...)."""
    if "mov" in container.format.name.split(",") and stream.frames > 0:
        return stream.frames
    edit_unit = 1 / stream.base_rate if stream.base_rate else None
    if container.format.name == "mxf" and stream.duration and stream.time_base == edit_unit:
        return stream.duration
    return None


def _off_the_grid(stream) -> bool | None:
    """Whether a frame's time lies more than half a frame off the grid of the usual frame duration (then
    frame numbers and times do not map by a rate), from an index of every frame's time (QuickTime/MP4);
    None without one. Jitter of a timestamp unit, as phones write, stays on the grid."""
    entries = stream.index_entries
    if len(entries) < 3 or len(entries) != stream.frames:
        return None
    times = np.array([entry.timestamp for entry in entries], np.float64)
    step = float(np.median(np.diff(times)))
    if step <= 0:
        return None
    return bool(np.abs(times - (times[0] + step * np.arange(len(times)))).max() > step / 2)


def _timecode_frame(timecode: str, rate: Fraction) -> int:
    """'HH:MM:SS:FF' (';' before FF: drop-frame) as a frame number at `rate`."""
    match = re.fullmatch(r"(\d+):(\d+):(\d+)([:;.,])(\d+)", timecode.strip())
    if not match or not rate:
        return 0
    hours, minutes, seconds, separator, frame = match.groups()
    nominal = round(rate)
    total_minutes = int(hours) * 60 + int(minutes)
    number = (total_minutes * 60 + int(seconds)) * nominal + int(frame)
    if separator in ";,":  # drop-frame: frame numbers 0 and 1 (2 per 30) skipped each minute but every tenth
        number -= round(nominal / 15) * (total_minutes - total_minutes // 10)
    return number


def _read_video(path: Path, indices: list[int], what: str, grey: bool) -> list[np.ndarray]:
    info = probe_video(path, what)
    if max(indices) >= info.frames:
        raise JobError(f"{what}: '{path}' has {info.frames} frames, frame {max(indices)} was asked for")
    wanted, frames = set(indices), {}
    for index, frame in _decoded(path, info, min(indices)):
        if index in wanted:
            frames[index] = _to_rgb(frame, info.rotation, grey)
        if index >= max(indices):
            break
    if len(frames) < len(wanted):
        missing = min(wanted - frames.keys())
        raise JobError(f"{what}: frame {missing} of '{path}' cannot be decoded (the file is damaged or cut short)")
    return [frames[i] for i in indices]


def _decoded(path: Path, info: VideoInfo, first: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """(frame number, frame) from `first` on, or from a frame before it. A constant-rate file is entered
    at the keyframe before `first`, each frame numbered by its timestamp; otherwise (variable rate,
    missing timestamps, a seek that lands past `first`) frames are decoded from the start and counted."""
    if first > 0 and not info.variable_rate and info.rate:
        with open_video(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            per_frame = 1 / (info.rate * info.time_base)  # timestamp units per frame
            container.seek(info.start_pts + int(first * per_frame), stream=stream, backward=True)
            numbered = ((None if f.pts is None else round((f.pts - info.start_pts) / per_frame), f)
                        for f in container.decode(stream))
            head = next(numbered, None)
            if head is not None and head[0] is not None and head[0] <= first:
                yield head
                for index, frame in numbered:
                    if index is None:
                        break  # a frame without a timestamp: numbers from here on would be guesses
                    yield index, frame
                return
    with open_video(path) as container:
        container.streams.video[0].thread_type = "AUTO"
        yield from enumerate(container.decode(video=0))


def _to_rgb(frame: av.VideoFrame, rotation: int, grey: bool) -> np.ndarray:
    """A decoded frame as 8-bit RGB (or grey), turned upright. YUV (8, 10 or 12 bit) is converted with the
    matrix and range the file states (else BT.709 for HD, BT.601 below; limited range but for JPEG YUV)."""
    colorspace = _COLORSPACES.get(frame.colorspace, "ITU709" if frame.height >= HD_HEIGHT else "ITU601")
    color_range = frame.color_range or (2 if frame.format.name.startswith("yuvj") else 1)
    image = frame.reformat(
        format="rgb24", src_colorspace=colorspace, dst_colorspace=colorspace, src_color_range=color_range,
        dst_color_range="JPEG", interpolation=_SCALING,
    ).to_ndarray()
    image = np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation else image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if grey else image


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


# Movie encoders: H.264 plays everywhere; ProRes 422 HQ (10-bit) is what editors prefer to cut with.
MOVIE_CODECS = {
    "h264": ("libx264", "yuv420p", "mp4", {"crf": "16", "preset": "medium"}),
    "prores": ("prores_ks", "yuv422p10le", "mov", {"profile": "3"}),
}


def movie_suffix(codec: str) -> str:
    return f".{MOVIE_CODECS[codec][2]}"


def write_movie(path: Path, frames: np.ndarray, fps: float, codec: str = "h264") -> None:
    """Write RGB frames as a movie (BT.709, limited range, tagged so) through a temporary name."""
    encoder, pixel_format, container_format, options = MOVIE_CODECS[codec]
    frames = _even_sized(frames) if pixel_format == "yuv420p" else frames
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with av.open(tmp, "w", format=container_format) as container:
            stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001), options=options)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = pixel_format
            context = stream.codec_context
            context.colorspace = context.color_primaries = context.color_trc = 1  # BT.709
            context.color_range = 1  # limited ("MPEG")
            for image in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(
                    format=pixel_format, src_colorspace="ITU709", dst_colorspace="ITU709",
                    src_color_range="JPEG", dst_color_range="MPEG", interpolation=_SCALING,
                )
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_mp4(path: Path, frames: np.ndarray, fps: float = 12.0) -> None:
    """The preview movie: H.264 in MP4."""
    write_movie(path, frames, fps, "h264")


def _even_sized(frames: np.ndarray) -> np.ndarray:
    """4:2:0 needs even sides: an odd one gets its last row or column repeated."""
    height, width = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


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
