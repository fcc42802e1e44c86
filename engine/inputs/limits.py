"""What a job may make the engine read, checked before the memory is spent.

Media are opened only when they are regular files: a FIFO, device or socket named as a frame would
block its reader for good. An encoded image's decoded size is read from its header (Pillow reads the
header alone; OpenEXR's is read here) before it is decoded, so a small file that decodes to gigabytes
is refused for what it would cost. A job's pixels (every image it decodes, summed) are held to one
budget, spent before each image or sequence is read.
"""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from videograin.engine.errors import JobError

EXR_MAGIC = b"\x76\x2f\x31\x01"
EXR_HEADER_BYTES = 1 << 16  # an EXR header's attributes, read no further


@dataclass(frozen=True)
class MediaLimits:
    """`max_width`/`max_height` bound every decoded image and the working size; `max_pixels` bounds the
    pixels of all a job's images together (width × height each, summed) and its frames at the working
    size; `max_frames` (None: no count of its own) the frames of a clip, checked from its listing."""

    max_width: int = 8192
    max_height: int = 8192
    max_pixels: int = 2**30
    max_frames: int | None = None

    def check_size(self, width: int, height: int, what: str) -> None:
        if width > self.max_width or height > self.max_height:
            raise JobError(f"{what} is {width}x{height}, over this engine's limit of {self.max_width}x"
                           f"{self.max_height} (max_width, max_height)")

    def check_frames(self, count: int, what: str) -> None:
        if self.max_frames is not None and count > self.max_frames:
            raise JobError(f"{what}: {count} frames is over this engine's limit of {self.max_frames} (max_frames): "
                           "edit fewer frames (source.count, source.stride)")

    def check_working_clip(self, frames: int, width: int, height: int) -> None:
        """The clip at the working size: each side, then frames × width × height."""
        self.check_size(width, height, "the working size (source.width, source.height)")
        if frames * width * height > self.max_pixels:
            raise JobError(f"{frames} frames at the working size {width}x{height} are {frames * width * height:,} "
                           f"pixels, over this engine's limit of {self.max_pixels:,} (max_pixels): edit fewer "
                           "frames or at a smaller working size")


class PixelBudget:
    """The pixels one job may still decode; spent before each image or sequence is read."""

    def __init__(self, limits: MediaLimits) -> None:
        self.limits = limits
        self.left = limits.max_pixels

    def spend(self, pixels: int, what: str) -> None:
        if pixels > self.left:
            raise JobError(f"{what} would decode {pixels:,} pixels, over what is left ({self.left:,}) of this "
                           f"engine's limit of {self.limits.max_pixels:,} pixels per job (max_pixels): edit fewer "
                           "or smaller frames")
        self.left -= pixels


MAX_JSON_DEPTH = 512  # an editor's timeline nests a few dozen levels; OpenTimelineIO's reader crashes near 60,000
# A string, or an unterminated one to the end: possessive, so that no input makes the scan quadratic.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)')


def check_json_depth(text: str, what: str, most: int = MAX_JSON_DEPTH) -> None:
    """JobError for JSON nested deeper than `most` lists and maps, found without parsing it: a parser that
    recurses (OpenTimelineIO's) crashes the process on a few hundred kilobytes of brackets."""
    brackets = re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text)).encode()
    steps = np.frombuffer(brackets, np.uint8)
    depth = np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)) if steps.size else np.zeros(1)
    if depth.max() > most:
        raise JobError(f"{what} nests {int(depth.max())} levels of lists and maps, more than the {most} a timeline "
                       "needs: it is damaged or not written by an editor")


def check_media_path(path: Path, what: str) -> None:
    """A folder or a regular file (stat follows links), else JobError: never a FIFO, device or socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise JobError(f"{what}: '{path}' does not exist") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise JobError(f"{what}: '{path}' is not a regular file or folder (a FIFO, device or socket is never read)")


def open_regular(path: Path, what: str) -> BinaryIO:
    """`path` opened for reading when it is a regular file. Checked before the open (a device is never
    opened) and again on the open file, which O_NONBLOCK opens at once even when a FIFO was swapped in."""
    check_media_path(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise JobError(f"{what}: '{path}' cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise JobError(f"{what}: '{path}' is not a regular file (a FIFO, device or socket is never read)")
    return os.fdopen(fd, "rb")


def image_size(stream: BinaryIO, what: str) -> tuple[int, int]:
    """(width, height) an encoded image decodes to, from its header alone."""
    start = stream.tell()
    if stream.read(4) == EXR_MAGIC:
        return _exr_size(stream.read(EXR_HEADER_BYTES), what)
    stream.seek(start)
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limits decide
            with Image.open(stream) as image:
                return image.size
    except Image.DecompressionBombError:
        raise JobError(f"{what}: its header says it decodes to more than {2 * Image.MAX_IMAGE_PIXELS:,} "
                       "pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        raise JobError(f"{what} is not a readable image (no PNG, JPEG, BMP, TIFF, WebP or EXR header)") from None
    finally:
        stream.seek(start)


def _exr_size(header: bytes, what: str) -> tuple[int, int]:
    """OpenEXR's dataWindow attribute (box2i: xMin, yMin, xMax, yMax) from the header's attributes."""
    at = 4  # after the version field
    while at < len(header) and header[at] != 0:
        name_end = header.find(b"\0", at)
        type_end = header.find(b"\0", name_end + 1)
        if name_end < 0 or type_end < 0 or type_end + 4 > len(header):
            break
        (size,) = struct.unpack_from("<i", header, type_end + 1)
        value = type_end + 5
        if header[at:name_end] == b"dataWindow" and size == 16 and value + 16 <= len(header):
            x0, y0, x1, y1 = struct.unpack_from("<4i", header, value)
            return x1 - x0 + 1, y1 - y0 + 1
        at = value + max(size, 0)
    raise JobError(f"{what} is not a readable image (an EXR header without a dataWindow)")


def image_file_size(path: Path, what: str) -> tuple[int, int]:
    """The decoded size of an image file, from its header; JobError when it is not a regular file."""
    with open_regular(path, what) as stream:
        return image_size(stream, f"{what}: '{path}'")


def read_image_file(path: Path, what: str, limits: MediaLimits = MediaLimits()) -> bytes:
    """An image file's bytes, read once it is known to be a regular file whose header says it decodes
    within `limits`."""
    with open_regular(path, what) as stream:
        width, height = image_size(stream, f"{what}: '{path}'")
        limits.check_size(width, height, f"{what}: '{path}'")
        return stream.read()


def encoded_size(data: bytes, what: str) -> tuple[int, int]:
    """The decoded size of an image sent as bytes (a PNG part), from its header."""
    return image_size(io.BytesIO(data), what)


# Demuxers that open more than the file they are given, by what the file says: playlists (HLS segments),
# concat scripts, filter graphs (`movie=`), session descriptions and streams (network), image patterns,
# DASH manifests, VobSub's companion file. A file under a media root could name any file outside it.
REFERENCING_DEMUXERS = frozenset({"hls", "concat", "lavfi", "sdp", "rtsp", "rtp", "image2", "webm_dash_manifest",
                                  "vobsub", "dash", "imf"})


@functools.cache
def _self_contained_demuxers() -> str:
    names = []
    for name in av.formats_available:
        try:
            av.ContainerFormat(name, "r")
        except ValueError:  # a muxer only
            continue
        if name not in REFERENCING_DEMUXERS:
            names.append(name)
    return ",".join(sorted(names))


def open_video(path: Path) -> av.container.InputContainer:
    """`path` opened by FFmpeg as itself alone: the local file protocol only, and no demuxer that opens other
    files a file names (REFERENCING_DEMUXERS), whatever the file's suffix (FFmpeg probes the content)."""
    return av.open(str(path), container_options={"protocol_whitelist": "file",
                                                 "format_whitelist": _self_contained_demuxers()})


def video_size(path: Path, what: str) -> tuple[int, int]:
    """The frame size a video's stream declares (as stored, before any rotation; the limits are square by
    default), read by FFmpeg from the container without decoding a frame."""
    with open_regular(path, what):
        pass
    try:
        with open_video(path) as container:
            if not container.streams.video:
                raise JobError(f"{what}: '{path}' has no video stream")
            context = container.streams.video[0].codec_context
            return context.width, context.height
    except av.FFmpegError:
        raise JobError(f"{what}: '{path}' cannot be opened as a video") from None
