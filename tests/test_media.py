"""Video in and out through PyAV: the media editors really hand over, made here with PyAV itself.

Each clip's frames are four flat quadrants whose colours step with the frame number, so a frame read
from the wrong place, turned the wrong way or converted with the wrong matrix shows in the pixels.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from videograin.engine.cli import main
from videograin.engine.errors import JobError
from videograin.engine.inputs.media import (
    VIDEO_SUFFIXES,
    probe_video,
    read_sequence,
    sequence_length,
    write_movie,
    write_png,
)

ROOT = Path(__file__).resolve().parents[1]


def quadrants(k: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame k: four flat colours, each stepping by 9 levels a frame (RGB uint8)."""
    image = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (40 + 9 * k, 180, 60)
    image[:h, w:] = (200, 50 + 9 * k, 90)
    image[h:, :w] = (70, 90, 210 - 9 * k)
    image[h:, w:] = (150 + 5 * k, 150, 40 + 5 * k)
    return image


def centres(image: np.ndarray) -> np.ndarray:
    """The mean colour of each quadrant's middle (edges blur under chroma subsampling)."""
    height, width = image.shape[:2]
    h, w = height // 2, width // 2
    boxes = [(0, 0), (0, w), (h, 0), (h, w)]
    return np.array([image[y + h // 4 : y + 3 * h // 4, x + w // 4 : x + 3 * w // 4].reshape(-1, 3).mean(0)
                     for y, x in boxes])


def assert_frame(image: np.ndarray, k: int, tolerance: float = 4.0) -> None:
    """`image` is frame k: its quadrants within `tolerance` levels, and nearer frame k than any other."""
    height, width = image.shape[:2]
    errors = [np.abs(centres(image) - centres(quadrants(j, width, height))).max() for j in range(k + 5)]
    assert errors[k] <= tolerance and int(np.argmin(errors)) == k, (k, errors)


def encode(
    path: Path, count: int, codec: str, pixel_format: str, rate: Fraction = Fraction(24), *, options=None,
    timecode: str | None = None, rotation: float | None = None, times_ms: list[int] | None = None,
    size: tuple[int, int] = (64, 48), container_format: str | None = None,
) -> None:
    """A clip as a camera or an editor writes it: BT.709, limited range, tagged so; 10-bit formats from
    16-bit RGB (values 8-bit cannot hold); optionally a start timecode, a display rotation, or frame times."""
    width, height = size
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = 1
        context.color_range = 1
        if times_ms is not None:
            stream.time_base = context.time_base = Fraction(1, 1000)
        if timecode:
            stream.metadata["timecode"] = timecode
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for k in range(count):
            if "10" in pixel_format:
                rgb = av.VideoFrame.from_ndarray(quadrants(k, width, height).astype(np.uint16) * 257 + 3, "rgb48le")
            else:
                rgb = av.VideoFrame.from_ndarray(quadrants(k, width, height), "rgb24")
            frame = rgb.reformat(format=pixel_format, src_colorspace="ITU709", dst_colorspace="ITU709",
                                 src_color_range="JPEG", dst_color_range="MPEG")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[k], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_prores_422_hq_10_bit_with_a_start_timecode(tmp_path):
    path = tmp_path / "A001_C002.mov"
    encode(path, 12, "prores_ks", "yuv422p10le", options={"profile": "3"}, timecode="01:00:00:00")
    info = probe_video(path)
    assert (info.frames, info.rate, info.pixel_format) == (12, 24, "yuv422p10le")
    assert info.start_frame == 86400 and not info.variable_rate
    frames = read_sequence(path, [9, 10, 11], "source")
    assert frames.shape == (3, 48, 64, 3) and frames.dtype == np.uint8
    for k, frame in zip([9, 10, 11], frames, strict=True):
        assert_frame(frame, k, tolerance=2.0)  # 10-bit 4:2:2 with the file's BT.709 matrix: near exact


def test_a_rotated_phone_clip_is_read_upright(tmp_path):
    """A phone films portrait into a landscape stream and stores a display matrix: turn 90° clockwise."""
    path = tmp_path / "IMG_0042.mp4"
    encode(path, 10, "libx264", "yuv420p", options={"g": "4", "crf": "12"}, rotation=-90)
    info = probe_video(path)
    assert (info.rotation, info.width, info.height, info.frames) == (270, 48, 64, 10)
    frames = read_sequence(path, [6], "source")
    assert frames.shape == (1, 64, 48, 3)
    assert_frame(np.rot90(frames[0], 1), 6)  # turned back, it is the frame as written


def test_a_variable_frame_rate_clip_is_reported_and_read_in_order(tmp_path):
    path = tmp_path / "screen.mp4"
    times = [0, 40, 80, 200, 240, 300, 400, 420, 440, 600]
    encode(path, 10, "libx264", "yuv420p", options={"crf": "12"}, times_ms=times)
    info = probe_video(path)
    assert info.variable_rate and info.frames == 10
    for k, frame in zip([3, 7, 9], read_sequence(path, [3, 7, 9], "source"), strict=True):
        assert_frame(frame, k)
    # A phone's jitter of a millisecond here and there keeps every frame on the 25 fps grid: constant.
    jittered = tmp_path / "phone.mp4"
    encode(jittered, 10, "libx264", "yuv420p", options={"crf": "12"},
           times_ms=[0, 40, 81, 120, 160, 199, 240, 281, 320, 360])
    assert not probe_video(jittered).variable_rate


def test_an_mxf_dnxhr_clip_counts_from_its_index(tmp_path):
    path = tmp_path / "A002C003.mxf"
    encode(path, 10, "dnxhd", "yuv422p", options={"profile": "dnxhr_hq"}, size=(256, 128))
    info = probe_video(path)
    assert (info.frames, info.rate, info.width, info.height) == (10, 24, 256, 128)
    frames = read_sequence(path, [8, 9], "source")
    for k, frame in zip([8, 9], frames, strict=True):
        assert_frame(frame, k)
    with pytest.raises(JobError, match=r"has 10 frames, frame 10 was asked for"):
        read_sequence(path, [10], "source")


def test_an_mpeg_program_stream_counts_every_decodable_frame(tmp_path):
    """Kdenlive's .mpg test media: OpenCV's count is an estimate (it said 4 for 5 there)."""
    path = tmp_path / "clip.mpg"
    encode(path, 5, "mpeg2video", "yuv420p", Fraction(25), options={"qscale": "2"})
    assert ".mpg" in VIDEO_SUFFIXES and ".mxf" in VIDEO_SUFFIXES and ".mov" in VIDEO_SUFFIXES
    assert sequence_length(path) == 5
    assert_frame(read_sequence(path, [4], "source")[0], 4, tolerance=10.0)  # MPEG-2 at 64x48: blocky


def test_seeking_to_a_trim_is_frame_accurate_across_keyframes(tmp_path):
    path = tmp_path / "long_gop.mp4"
    encode(path, 30, "libx264", "yuv420p", options={"g": "7", "bf": "2", "crf": "10"})
    wanted = [17, 18, 19, 29, 0]
    for k, frame in zip(wanted, read_sequence(path, wanted, "source"), strict=True):
        assert_frame(frame, k)


@pytest.mark.parametrize("codec,suffix,pixel_format", [("h264", ".mp4", "yuv420p"), ("prores", ".mov", "yuv422p10le")])
def test_written_movies_read_back_frame_for_frame(tmp_path, codec, suffix, pixel_format):
    frames = np.stack([quadrants(k, 66, 50) for k in range(6)])
    path = tmp_path / f"shot{suffix}"
    write_movie(path, frames, 24000 / 1001, codec)  # 23.976 as OTIO holds it
    info = probe_video(path)
    assert (info.frames, info.rate, info.pixel_format) == (6, Fraction(24000, 1001), pixel_format)
    back = read_sequence(path, list(range(6)), "movie")
    assert back.shape == frames.shape
    for k, frame in enumerate(back):
        assert_frame(frame, k)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_an_odd_sized_h264_movie_repeats_its_edge(tmp_path):
    frames = np.stack([quadrants(k, 65, 49) for k in range(3)])
    write_movie(tmp_path / "odd.mp4", frames, 12.0)
    back = read_sequence(tmp_path / "odd.mp4", [0, 1, 2], "movie")
    assert back.shape == (3, 50, 66, 3)
    for k, frame in enumerate(back):
        assert_frame(frame[:49, :65], k)
    np.testing.assert_allclose(back[:, 49, :65], back[:, 48, :65], atol=3)  # the repeated last row


def test_a_damaged_video_gives_one_error_naming_it(tmp_path):
    path = tmp_path / "broken.mov"
    path.write_bytes(b"\x00\x00\x00\x14ftypqt  " + os.urandom(2000))
    with pytest.raises(JobError, match=r"source: '.*broken.mov' cannot be read"):
        sequence_length(path, "source")


def test_a_videos_size_for_the_limits_is_read_without_decoding_and_a_damaged_one_is_refused(tmp_path):
    from videograin.engine.inputs.limits import video_size

    path = tmp_path / "IMG_0042.mp4"
    encode(path, 3, "libx264", "yuv420p", rotation=-90)
    assert video_size(path, "source") == (64, 48)  # as stored: the limits are square by default
    damaged = tmp_path / "broken.mov"
    damaged.write_bytes(b"\x00\x00\x00\x14ftypqt  " + os.urandom(2000))
    with pytest.raises(JobError, match=r"source: '.*broken.mov' cannot be opened as a video"):
        video_size(damaged, "source")


def test_check_reports_a_videos_frame_rate_as_ffmpeg_reads_it(tmp_path):
    job = _job_with_mask(tmp_path)
    encode(tmp_path / "clip.mp4", 4, "libx264", "yuv420p", Fraction(24000, 1001))  # NTSC film rate
    assert main(["check", str(job), "--out", str(tmp_path / "check"), "--device", "cpu"]) == 0
    clip = json.loads((tmp_path / "check" / "check.json").read_text())["summary"]["clip"]
    assert clip["fps"] == pytest.approx(24000 / 1001)


def test_a_playlist_or_concat_script_naming_other_files_is_never_followed(tmp_path):
    """FFmpeg would open what such a file names, outside any media root: the file is refused instead,
    whatever its suffix (FFmpeg goes by the content)."""
    from videograin.engine.inputs.limits import video_size

    segment = tmp_path / "outside" / "secret.ts"
    segment.parent.mkdir()
    encode(segment, 4, "libx264", "yuv420p", container_format="mpegts")
    root = tmp_path / "root"
    root.mkdir()
    playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:0.2,\n../outside/secret.ts\n#EXT-X-ENDLIST\n"
    files = {"clip.m3u8": playlist, "disguised.mp4": playlist, "list.ffconcat": "ffconcat version 1.0\nfile '../outside/secret.ts'\n"}
    for name, text in files.items():
        (root / name).write_text(text)
        with pytest.raises(JobError, match=f"'.*{name}' cannot be"):
            probe_video(root / name, "source")
        with pytest.raises(JobError, match=f"'.*{name}' cannot be"):
            video_size(root / name, "source")
    assert probe_video(segment).frames == 4  # the segment itself is a video like any other


def _job_with_mask(folder: Path) -> Path:
    frames = np.stack([quadrants(k) for k in range(4)])
    write_movie(folder / "clip.mp4", frames, 24.0)
    for k in range(4):
        write_png(folder / "mask" / f"{k:04d}.png", np.full((48, 64), 255, np.uint8))
    job = {"source_prompt": "a car", "prompt": "a red car", "regions": [{"phrase": "car", "mask": "mask"}],
           "source": {"path": "clip.mp4", "width": 64, "height": 64}, "model": "tiny", "steps": 1}
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    return folder / "job.yaml"


def test_an_os_error_reading_a_mask_is_one_error_naming_the_file(tmp_path, capsys):
    """A file the system refuses to read (here a folder where a frame should be: EISDIR, even as root)."""
    job = _job_with_mask(tmp_path)
    (tmp_path / "mask" / "0002.png").unlink()
    (tmp_path / "mask" / "0002.png").mkdir()
    assert main(["edit", str(job), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert "0002.png" in error and "mask of region 'car'" in error, error
    assert not (tmp_path / "out").exists()


def _without_dac_override() -> None:
    """As root, give up reading what permissions forbid (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) for the
    program about to run: root stays root, but a mode-000 file is refused as to anyone else."""
    if os.geteuid() == 0:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        for capability in (1, 2):
            if prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "cannot drop a capability")


def test_a_mask_without_read_permission_is_one_error_naming_the_file(tmp_path):
    """Permission denied, for real: a mode-000 mask (read by root without its override capabilities)."""
    mask = tmp_path / "0000.png"
    write_png(mask, np.full((8, 8), 255, np.uint8))
    mask.chmod(0)
    code = (
        "import sys; from pathlib import Path\n"
        "from videograin.engine.errors import JobError\n"
        "from videograin.engine.inputs.media import read_sequence\n"
        "try:\n    read_sequence(Path(sys.argv[1]), [0], 'mask of region car', grey=True)\n"
        "except JobError as exc:\n    print(exc); sys.exit(2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(mask)], capture_output=True, text=True,
                          preexec_fn=_without_dac_override, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"mask of region car: '{mask}' cannot be read: Permission denied" in done.stdout


def test_the_decode_bench_reads_both_codecs_with_both_libraries(tmp_path, capsys):
    report_path = tmp_path / "decode.json"
    assert main(["bench", "--decode", "--decode-frames", "2", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    for codec in ("h264", "prores"):
        assert report[codec]["opencv_frames_read"] == 2
        assert report[codec]["pyav_rgb_fps"] > 0 and report[codec]["pyav_decode_only_fps"] > 0
