"""Every limit enforced before the memory is spent, and the trust boundary of SPEC.md §1, against real
engines (tests/conformance.py) and in the CLI: each refusal is a clear error, the engine keeps
answering, and then serves a normal job."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conformance import RawPeer, collect_stream, inline_job, start_engine

from videograin.engine.config import parse_settings
from videograin.engine.demo import write_demo_inputs
from videograin.engine.errors import JobError, excerpt
from videograin.engine.inputs.job import load_job, load_job_mapping
from videograin.engine.inputs.limits import MediaLimits, PixelBudget, encoded_size, image_file_size, open_regular
from videograin.engine.inputs.media import write_movie

MAX_FRAMES = 8
MAX_PIXELS = 2**26  # 67 M: 8 frames at 2048², not at 4096²


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, pixels: bool = True) -> bytes:
    """A PNG of `width`×`height` black grey pixels that any decoder reads (a few hundred KB for 10000²),
    or with `pixels` False its header alone, which no decoder reads."""
    data = b""
    if pixels:
        packer, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte + one byte per pixel
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b""))


def exr_header(width: int, height: int) -> bytes:
    """The start of an OpenEXR file: magic, version, a channels attribute and the dataWindow."""
    def attribute(name: bytes, kind: bytes, value: bytes) -> bytes:
        return name + b"\0" + kind + b"\0" + struct.pack("<i", len(value)) + value

    return (b"\x76\x2f\x31\x01" + struct.pack("<i", 2) + attribute(b"channels", b"chlist", b"R\0" + bytes(17))
            + attribute(b"dataWindow", b"box2i", struct.pack("<4i", 10, 20, 10 + width - 1, 20 + height - 1)) + b"\0")


# -- without an engine -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_an_image_size_is_read_from_its_header(tmp_path, suffix):
    path = tmp_path / f"frame{suffix}"
    ok, data = cv2.imencode(suffix, np.zeros((30, 70, 3), np.uint8))
    path.write_bytes(data.tobytes())
    assert image_file_size(path, "frame") == (70, 30)


def test_a_header_is_read_without_decoding():
    assert encoded_size(grey_png(10000, 10000, pixels=False), "part 0") == (10000, 10000)
    assert len(grey_png(10000, 10000)) < 200_000  # what an attacker sends: small, and 100 MB decoded


def test_an_exr_size_comes_from_its_data_window(tmp_path):
    path = tmp_path / "frame.exr"
    path.write_bytes(exr_header(640, 360) + bytes(64))
    assert image_file_size(path, "frame") == (640, 360)


def test_an_image_without_a_readable_header_is_refused(tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(b"not a png")
    with pytest.raises(JobError, match="frame: '.*frame.png' is not a readable image"):
        image_file_size(path, "frame")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_only_regular_files_are_opened(tmp_path, kind):
    path = tmp_path / "0000.png"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(JobError, match="is not a regular file"):
        open_regular(path, "frame")


def test_a_fifo_is_never_read_as_supplied_flow(tmp_path):
    from videograin.engine.inputs.flow import read_flow_file

    os.mkfifo(tmp_path / "0000.npy")
    with pytest.raises(JobError, match="flow: '.*0000.npy' is not a regular file"):
        read_flow_file(tmp_path / "0000.npy")


def test_the_pixel_budget_is_spent_before_reading():
    budget = PixelBudget(MediaLimits(max_pixels=1000))
    budget.spend(600, "source")
    with pytest.raises(JobError, match=r"mask would decode 600 pixels, over what is left \(400\)"):
        budget.spend(600, "mask")


def test_an_excerpt_is_bounded_whatever_the_value():
    bomb: list = [0]
    for _ in range(30):
        bomb = [bomb] * 30  # what a YAML alias bomb builds: 30**30 leaves, as shared references
    assert len(excerpt(bomb)) <= 80 and len(excerpt("x" * 10**7)) <= 80 and len(excerpt(10**5000)) <= 80


@pytest.mark.parametrize("key, value", [
    ("guidance", float("nan")), ("guidance", float("inf")), ("control.scale", float("nan")),
    ("modulation.cross", float("-inf")), ("modulation.self", float("nan")), ("modulation.decay", float("inf")),
    ("modulation.until", float("nan")), ("control.scale", -1.0), ("guidance", 1e9), ("seed", 2**70),
])
def test_numbers_are_finite_and_in_range_and_named(key, value):
    settings = {"source_prompt": "a", "prompt": "an iron man", "regions": [{"phrase": "iron man"}]}
    if "." in key:
        section, name = key.split(".")
        settings[section] = {name: value}
    else:
        settings[key] = value
    with pytest.raises(JobError, match=f"'{key}' must"):
        parse_settings(settings)


def test_a_yaml_alias_bomb_is_refused_with_a_short_message(tmp_path):
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 leaves, 400 bytes
    job = tmp_path / "job.yaml"
    job.write_text(f"source_prompt: a\nprompt: an iron man\nguidance: [{', '.join(levels)}]\n"
                   "regions: [{phrase: iron man, mask: m}]\n")
    with pytest.raises(JobError) as refused:
        load_job(job)
    assert "'guidance' must be float" in str(refused.value) and len(str(refused.value)) < 200


def test_the_cli_reads_no_pixel_past_its_limits(demo_job):
    """The same checks as the engine's, on a job file: sizes from headers, before anything is decoded."""
    data = yaml.safe_load(demo_job.read_text())
    frames = demo_job.parent / data["source"]["path"]
    (frames / "0002.png").write_bytes(grey_png(10000, 10000))
    with pytest.raises(JobError, match="0002.png' is 10000x10000, over this engine's limit of 4096x4096"):
        load_job_mapping(data, demo_job.parent, limits=MediaLimits(4096, 4096))
    with pytest.raises(JobError, match="0002.png' is 10000x10000, over this engine's limit of 8192x8192"):
        load_job(demo_job)  # the CLI's own limits
    data["source"]["width"] = 800000
    with pytest.raises(JobError, match=r"working size .* is 800000x\d+, over this engine's limit"):
        load_job_mapping(data, demo_job.parent)


@pytest.mark.parametrize("command", ["edit", "mattes"])
def test_out_through_a_link_keeps_the_results(demo_job, tmp_path, command):
    """`--out` naming a link to an empty folder: the results land in that folder, none is thrown away."""
    from videograin.engine.cli import main

    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    extra = ["--model", "tiny", "--no-cache"] if command == "edit" else []
    assert main([command, str(demo_job), "--out", str(link), "--device", "cpu", *extra]) == 0
    assert link.is_symlink() and (target / ("result.json" if command == "edit" else "mattes.json")).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


# -- against a running engine ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    process, info, _ = start_engine(tmp_path_factory.mktemp("engine"), "--heartbeat", "1",
                                    "--max-frames", str(MAX_FRAMES), "--max-pixels", str(MAX_PIXELS))
    yield process, info
    process.kill()
    process.wait()


@pytest.fixture()
def peer(engine):
    peer = RawPeer(engine[1])
    yield peer
    peer.close()


def paths_job(folder: Path, **source) -> dict:
    """A paths `check` of the demo clip in `folder` (write_demo_inputs), on the tiny model."""
    return {"type": "check", "inline": False, "settings": {
        "source_prompt": "two men jogging", "prompt": "an iron man and a spider man are jogging", "model": "tiny",
        "steps": 2,
        "source": {"path": str(folder / "frames"), "width": 64, "height": 64, **source},
        "regions": [{"phrase": "iron man", "mask": str(folder / "masks/left")},
                    {"phrase": "spider man", "mask": str(folder / "masks/right")}]}}


def refused(peer: RawPeer, header: dict, parts: list[bytes] = (), code: str = "bad_job") -> str:
    reply = peer.request(header, parts, timeout=60)
    assert reply["type"] == "error" and reply["code"] == code, reply
    return reply["message"]


def serves_a_normal_job(peer: RawPeer, engine) -> None:
    assert engine[0].poll() is None, "engine process died"
    assert peer.request({"type": "ping"}, timeout=5)["type"] == "pong"
    header, parts = inline_job(frames=2, steps=2)
    stream = collect_stream(peer, peer.request(header, parts)["job"])
    assert stream[-1][0]["type"] == "done" and [m[0]["type"] for m in stream].count("frame") == 2


def test_welcome_states_the_limits_and_the_paths(peer):
    engine = peer.request({"type": "hello", "versions": [1]})["engine"]
    limits = engine["limits"]
    assert limits["max_frames"] == MAX_FRAMES and limits["max_width"] == limits["max_height"] == 4096
    assert limits["max_pixels"] == MAX_PIXELS and engine["paths"] == "any"


def test_an_oversized_working_size_is_refused_before_anything_is_drawn(peer, engine):
    header, parts = inline_job(frames=2)
    header["type"] = "check"
    header["settings"]["source"] = {"width": 800000, "height": 800000}
    assert "800000x800000, over this engine's limit of 4096x4096" in refused(peer, header, parts)
    header["settings"]["source"] = {"width": 4096, "height": 4096}  # 8 frames of it: 134 M pixels
    message = refused(peer, {**header, "frames": header["frames"] * 4}, parts)
    assert f"8 frames at the working size 4096x4096 are 134,217,728 pixels, over this engine's limit of {MAX_PIXELS:,}" in message
    serves_a_normal_job(peer, engine)


def test_a_png_whose_header_says_10000_squared_is_never_decoded(peer, engine, demo_job):
    header, parts = inline_job(frames=2)
    bomb = grey_png(10000, 10000)
    header["frames"][1] = {"part": len(parts), "encoding": "png"}
    message = refused(peer, header, [*parts, bomb])
    assert f"the PNG of part {len(parts)} is 10000x10000, over this engine's limit of 4096x4096" in message
    (demo_job.parent / "frames" / "0001.png").write_bytes(bomb)
    assert "0001.png' is 10000x10000, over this engine's limit" in refused(peer, paths_job(demo_job.parent))
    serves_a_normal_job(peer, engine)


def test_a_folder_of_too_many_frames_is_refused_from_its_listing(peer, engine, tmp_path):
    folder = write_demo_inputs(tmp_path / "clip", frames=MAX_FRAMES + 1, size=64, steps=2).parent
    for frame in (folder / "frames").iterdir():
        frame.write_bytes(b"unreadable: never read")  # had any been read, the error would say so
    message = refused(peer, paths_job(folder))
    assert f"{MAX_FRAMES + 1} frames is over this engine's limit of {MAX_FRAMES}" in message
    serves_a_normal_job(peer, engine)


def test_the_pixel_budget_counts_headers_before_reading(peer, engine, tmp_path):
    folder = write_demo_inputs(tmp_path / "clip", frames=MAX_FRAMES, size=64, steps=2).parent
    for frame in (folder / "frames").iterdir():
        frame.write_bytes(grey_png(4096, 4096, pixels=False))  # 8 × 16.8 M pixels, and no pixel to decode
    message = refused(peer, paths_job(folder))
    assert f"source would decode 134,217,728 pixels, over what is left ({MAX_PIXELS:,})" in message
    serves_a_normal_job(peer, engine)


@pytest.mark.parametrize("where", ["source", "frame"])
def test_a_fifo_is_never_opened_as_media(peer, engine, demo_job, where):
    folder = demo_job.parent
    header = paths_job(folder)
    if where == "source":
        fifo = folder / "clip.mp4"
        header["settings"]["source"]["path"] = str(fifo)
    else:
        fifo = folder / "frames" / "0002.png"
        fifo.unlink()
    os.mkfifo(fifo)
    assert f"'{fifo}' is not a regular file" in refused(peer, header)
    serves_a_normal_job(peer, engine)


@pytest.mark.parametrize("key, value", [("guidance", float("nan")), ("control", {"scale": float("inf")}),
                                        ("modulation", {"cross": float("nan")})])
def test_nan_and_infinite_numbers_are_refused_by_name(peer, engine, key, value):
    header, parts = inline_job(frames=2)
    header["settings"][key] = value
    name = key if key == "guidance" else f"{key}.{next(iter(value))}"
    assert f"'{name}' must be a finite number" in refused(peer, header, parts)
    serves_a_normal_job(peer, engine)


@pytest.mark.parametrize("path", ["frames", "~/frames", "./frames"])
def test_relative_and_home_paths_are_refused(peer, engine, path):
    header = paths_job(Path("/unused"))
    header["settings"]["source"]["path"] = path
    assert "source.path must be an absolute path on the engine's disk" in refused(peer, header)


def test_pings_are_answered_while_a_check_draws_its_layout(peer, engine, tmp_path):
    """A check at a large working size takes seconds to draw: a ping sent after it is answered first."""
    folder = write_demo_inputs(tmp_path / "clip", frames=MAX_FRAMES, size=64, steps=2).parent
    check_id = peer.send(paths_job(folder, width=2048, height=2048))
    ping_id = peer.send({"type": "ping"})
    order = []
    while len(order) < 2:
        got = peer.recv(120)
        assert got is not None, order
        if got[0].get("ref") in (check_id, ping_id):
            order.append(got[0]["type"])
    assert order == ["pong", "check"]
    serves_a_normal_job(peer, engine)


def test_the_jobs_held_together_are_bounded_not_only_each_request(tmp_path):
    """max_held_pixels: a request is read only while max_pixels more fit beside what the jobs waiting or
    running hold; small, well-compressed requests could otherwise make the engine hold max_pixels each."""
    process, info, _ = start_engine(tmp_path, "--max-pixels", str(2**20), "--max-held-pixels", str(2**20))
    peer = RawPeer(info)
    try:
        assert peer.request({"type": "hello", "versions": [1]})["engine"]["limits"]["max_held_pixels"] == 2**20
        header, parts = inline_job(frames=2, steps=30)  # runs a while: held until it ends
        job = peer.request(header, parts)["job"]
        reply = peer.request(*inline_job(frames=2, steps=1))
        assert reply["code"] == "queue_full" and "(max_held_pixels): try again when a job ends" in reply["message"]
        assert collect_stream(peer, job)[-1][0]["type"] == "done"
        serves_a_normal_job(peer, (process, info))  # the ended job holds nothing
    finally:
        peer.close()
        process.kill()
        process.wait()


# -- the trust boundary ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, Path]:
    """A media root holding a demo clip, and a folder outside it holding another."""
    base = tmp_path_factory.mktemp("media")
    inside = write_demo_inputs(base / "root" / "shot", frames=2, size=64, steps=2).parent
    outside = write_demo_inputs(base / "private" / "shot", frames=2, size=64, steps=2).parent
    return inside, outside


@pytest.fixture(scope="module")
def rooted(tmp_path_factory, media):
    process, info, _ = start_engine(tmp_path_factory.mktemp("rooted"), "--heartbeat", "1",
                                    "--media-root", str(media[0].parent))
    peer = RawPeer(info)
    yield peer, (process, info)
    peer.close()
    process.kill()
    process.wait()


def test_a_rooted_engine_reads_inside_its_roots(rooted, media):
    peer, engine = rooted
    welcome = peer.request({"type": "hello", "versions": [1]})["engine"]
    assert welcome["paths"] == "roots" and welcome["media_roots"] == [str(media[0].parent.resolve())]
    reply = peer.request(paths_job(media[0]), timeout=60)
    assert reply["type"] == "check" and reply["ok"], reply
    submit = {**paths_job(media[0]), "type": "submit"}
    assert collect_stream(peer, peer.request(submit)["job"], timeout=600)[-1][0]["type"] == "done"


def test_no_answer_tells_whether_a_path_outside_the_roots_exists(rooted, media):
    peer, engine = rooted
    inside, outside = media
    answers = {}
    for name, folder in (("existing", outside), ("missing", outside.parent / "nothing"),
                         ("missing inside", inside.parent / "nothing")):
        header = paths_job(inside)
        header["settings"]["source"]["path"] = str(folder / "frames")
        answers[name] = refused(peer, header).replace(str(folder / "frames"), "PATH")
    assert answers["existing"] == answers["missing"] == answers["missing inside"], answers
    assert "is not a file or folder this engine may read" in answers["existing"]
    serves_a_normal_job(peer, engine)


def test_links_out_of_the_roots_are_refused(rooted, media):
    peer, engine = rooted
    inside, outside = media
    (inside / "escape").symlink_to(outside / "frames")
    header = paths_job(inside)
    header["settings"]["source"]["path"] = str(inside / "escape")
    assert "is not a file or folder this engine may read" in refused(peer, header)
    header = paths_job(inside)
    (inside / "frames" / "0001.png").unlink()
    (inside / "frames" / "0001.png").symlink_to(outside / "frames" / "0001.png")  # one frame links out
    try:
        assert "0001.png' is not a file or folder this engine may read" in refused(peer, header)
    finally:
        (inside / "frames" / "0001.png").unlink()
        shutil.copyfile(outside / "frames" / "0001.png", inside / "frames" / "0001.png")
    header["settings"]["model"] = str(outside)
    assert "model: " in refused(peer, header)
    serves_a_normal_job(peer, engine)


def test_a_playlist_inside_the_roots_naming_a_file_outside_is_refused(rooted, media):
    peer, engine = rooted
    inside, outside = media
    segment = outside / "clip.ts"
    frames = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((outside / "frames").iterdir())])
    write_movie(segment.with_suffix(".mp4"), frames, 24.0)
    segment.with_suffix(".mp4").rename(segment)  # any video FFmpeg reads will do as a segment
    playlist = inside / "clip.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:0.1,\n{os.path.relpath(segment, inside)}\n"
                        "#EXT-X-ENDLIST\n")
    header = paths_job(inside)
    header["settings"]["source"]["path"] = str(playlist)
    assert "clip.m3u8' cannot be" in refused(peer, header)
    serves_a_normal_job(peer, engine)


def test_a_remote_engine_without_roots_reads_no_path(tmp_path, media):
    process, info, _ = start_engine(tmp_path, "--allow-remote")
    peer = RawPeer(info)
    try:
        assert peer.request({"type": "hello", "versions": [1]})["engine"]["paths"] == "none"
        assert "this engine reads no paths" in refused(peer, paths_job(media[0]))
        track = {"type": "track", "inline": False, "source": {"path": str(media[0] / "frames")},
                 "regions": [{"keyframes": [{"frame": 0, "path": str(media[0] / "masks/left/0000.png")}]}]}
        assert "this engine reads no paths" in refused(peer, track)
        serves_a_normal_job(peer, (process, info))
    finally:
        peer.close()
        process.kill()
        process.wait()
