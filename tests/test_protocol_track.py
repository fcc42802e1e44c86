"""The `track` request (SPEC.md §3.11) against a real engine, spoken with raw pyzmq + msgpack
(tests/conformance.py), and through the reference client."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from conformance import RawPeer, collect_stream, inline_job, start_engine
from conftest import limit, wait_for

from videograin.engine.inputs.mattes import crossing_blobs, iou
from videograin.engine.inputs.media import write_png

WIDTH, HEIGHT, FRAMES = 128, 96, 12


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    process, info, connection = start_engine(tmp_path_factory.mktemp("engine"), "--heartbeat", "1")
    yield process, info, connection
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture()
def peer(engine):
    peer = RawPeer(engine[1])
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def blobs():
    """Two textured blobs crossing, and the truth of what is visible of each."""
    return crossing_blobs(FRAMES, WIDTH, HEIGHT)


def track_request(clip: np.ndarray, keyframes: list[dict[int, np.ndarray]], **fields) -> tuple[dict, list[bytes]]:
    """An inline track header (without v/id) and its parts: raw RGB frames, then 1-channel keyframe mattes."""
    parts: list[bytes] = []

    def image(array: np.ndarray) -> dict:
        parts.append(np.ascontiguousarray(array).tobytes())
        channels = 1 if array.ndim == 2 else array.shape[2]
        return {"part": len(parts) - 1, "encoding": "raw", "width": array.shape[1], "height": array.shape[0],
                "channels": channels}

    frames = [image(f) for f in clip]
    regions = [{"name": f"blob {k}",
                "keyframes": [{"frame": f, "matte": image(m.astype(np.uint8) * 255)} for f, m in keys.items()]}
               for k, keys in enumerate(keyframes)]
    return {"type": "track", "inline": True, "frames": frames, "regions": regions, **fields}, parts


def mattes_of(stream: list[tuple[dict, list[bytes]]]) -> np.ndarray:
    """(K, F, H, W) uint8 from a stream's raw `matte` messages, checking each frame comes once, in order."""
    messages = [m for m in stream if m[0]["type"] == "matte"]
    frames = []
    for index, (head, body) in enumerate(messages):
        assert head["index"] == index
        planes = []
        for d in head["mattes"]:
            assert d["encoding"] == "raw" and d["channels"] == 1
            planes.append(np.frombuffer(body[d["part"]], np.uint8).reshape(d["height"], d["width"]))
        frames.append(planes)
    return np.array(frames).transpose(1, 0, 2, 3)


def test_track_streams_a_matte_per_frame_that_follows_each_region(peer, engine, blobs):
    clip, truth = blobs
    welcome = peer.request({"type": "hello", "versions": [1]})
    assert welcome["engine"]["trackers"] == ["flow", "sam2"]
    header, parts = track_request(clip, [{0: truth[0, 0]}, {0: truth[1, 0]}])
    accepted = peer.request(header, parts)
    assert accepted["type"] == "accepted" and accepted["position"] == 0
    stream = collect_stream(peer, accepted["job"])
    kinds = [m[0]["type"] for m in stream]
    assert kinds[-1] == "done" and kinds.count("matte") == FRAMES and "frame" not in kinds
    progress = [m[0] for m in stream if m[0]["type"] == "progress"]
    assert progress and {p["phase"] for p in progress} == {"track"} and progress[-1]["step"] == progress[-1]["total"]
    assert kinds.index("matte") > max(i for i, k in enumerate(kinds) if k == "progress")
    mattes = mattes_of(stream)
    assert mattes.shape == (2, FRAMES, HEIGHT, WIDTH) and set(np.unique(mattes)) <= {0, 255}
    tracked = mattes == 255
    for k in range(2):
        assert np.array_equal(tracked[k, 0], truth[k, 0]), "a keyframe comes back as it was sent"
        assert np.mean([iou(tracked[k, f], truth[k, f]) for f in range(FRAMES)]) >= 0.9, k
    assert not (tracked[0] & tracked[1]).any(), "tracked regions are exclusive"
    done = stream[-1][0]
    assert done["frames"] == FRAMES and done["empty_frames"] == [0, 0] and done["seconds"] > 0
    status = peer.request({"type": "status", "job": accepted["job"]})["jobs"][0]
    assert status["state"] == "done" and status["phase"] == "track" and status["frames_ready"] == FRAMES


def test_a_paths_track_reads_the_engines_disk_and_matches_inline(peer, engine, blobs, tmp_path):
    clip, truth = blobs
    for f, frame in enumerate(clip):
        write_png(tmp_path / "clip" / f"{f:03d}.png", frame)
    write_png(tmp_path / "key.png", truth[1, 3].astype(np.uint8) * 255)
    header = {"type": "track", "inline": False, "result_encoding": "png",
              "source": {"path": str(tmp_path / "clip"), "start": 2, "count": 8, "stride": 1},
              "regions": [{"keyframes": [{"frame": 1, "path": str(tmp_path / "key.png")}], "tracker": None}]}
    stream = collect_stream(peer, peer.request(header)["job"])
    assert stream[-1][0]["type"] == "done" and stream[-1][0]["frames"] == 8
    from_files = np.array([[cv2.imdecode(np.frombuffer(body[d["part"]], np.uint8), cv2.IMREAD_UNCHANGED)
                            for d in head["mattes"]] for head, body in stream if head["type"] == "matte"])
    inline, parts = track_request(clip[2:10], [{1: truth[1, 3]}])
    from_pixels = mattes_of(collect_stream(peer, peer.request(inline, parts)["job"]))
    assert np.array_equal(from_files.transpose(1, 0, 2, 3), from_pixels)


def test_attach_resends_mattes_from_a_frame(engine, blobs):
    clip, truth = blobs
    first = RawPeer(engine[1])
    header, parts = track_request(clip, [{0: truth[0, 0]}])
    job = first.request(header, parts)["job"]
    first.close()  # the client disappears; the track goes on
    second = RawPeer(engine[1])
    try:
        wait_for(lambda: second.request({"type": "status", "job": job})["jobs"][0]["state"] == "done",
                 "the dropped client's track to finish", every_s=0.1)
        reply = second.request({"type": "attach", "job": job, "from_frame": 9})
        assert reply["jobs"][0]["frames_ready"] == FRAMES
        stream = collect_stream(second, job)
        assert [m[0]["index"] for m in stream if m[0]["type"] == "matte"] == [9, 10, 11]
        assert stream[-1][0]["type"] == "done"
    finally:
        second.close()


def test_cancel_stops_a_running_track_and_drops_a_queued_one(peer, engine):
    clip, truth = crossing_blobs(120, 320, 240)
    header, parts = track_request(clip, [{0: truth[0, 0]}, {0: truth[1, 0]}])
    running = peer.request(header, parts)["job"]
    queued = peer.request(header, parts)
    assert queued["position"] == 1
    assert peer.request({"type": "cancel", "job": queued["job"]})["jobs"][0]["state"] == "cancelled"
    def third_frame() -> dict | None:
        got = peer.recv(limit(60))
        assert got is not None, "the engine sent nothing"
        header = got[0]
        return header if header.get("job") == running and header["type"] == "progress" and header["step"] >= 3 else None

    progress = wait_for(third_frame, "the track's third frame", every_s=0)
    assert progress["step"] < progress["total"]
    started = time.monotonic()
    assert peer.request({"type": "cancel", "job": running})["jobs"][0]["state"] == "running"
    stream = collect_stream(peer, running, timeout=30)
    assert stream[-1][0]["type"] == "error" and stream[-1][0]["code"] == "cancelled"
    assert not [m for m in stream if m[0]["type"] == "matte"]
    assert time.monotonic() - started < limit(5)  # one tracked frame takes a few hundredths of a second
    assert peer.request({"type": "status", "job": running})["jobs"][0]["state"] == "cancelled"
    assert peer.request({"type": "ping"})["type"] == "pong"


def _bad(blobs, change) -> tuple[dict, list[bytes]]:
    clip, truth = blobs
    header, parts = track_request(clip, [{0: truth[0, 0]}, {3: truth[1, 3]}])
    change(header, parts)
    return header, parts


def _set(region: int, key: str, value):
    def change(header, parts):
        header["regions"][region][key] = value
    return change


def _keyframe(region: int, key: str, value):
    def change(header, parts):
        header["regions"][region]["keyframes"][0][key] = value
    return change


def _blank_matte(header, parts):
    parts[header["regions"][1]["keyframes"][0]["matte"]["part"]] = bytes(WIDTH * HEIGHT)


def _small_matte(header, parts):
    descriptor = header["regions"][1]["keyframes"][0]["matte"]
    descriptor["width"], descriptor["height"] = WIDTH // 2, HEIGHT // 2
    parts[descriptor["part"]] = bytes([255]) * (WIDTH * HEIGHT // 4)


@pytest.mark.parametrize("change, code, words", [
    (_keyframe(1, "frame", FRAMES), "bad_job",
     f"region 'blob 1': keyframe frame {FRAMES} is outside the clip: frames are numbered 0 to {FRAMES - 1}"),
    (_keyframe(0, "frame", -1), "bad_job", "keyframe frame -1 is outside the clip"),
    (_blank_matte, "bad_job", "region 'blob 1': the keyframe matte of frame 3 is empty; paint the region white"),
    (_small_matte, "bad_job",
     f"the keyframe matte of frame 3 is {WIDTH // 2}x{HEIGHT // 2}; it must be the source's size, {WIDTH}x{HEIGHT}"),
    (_set(0, "tracker", "sift"), "bad_job", "region 'blob 0': track is 'sift'; it must be one of"),
    (_set(0, "tracker", "sam3"), "model_unavailable", "track: sam3 is not available"),
    (_set(1, "keyframes", []), "bad_job", "region 'blob 1': tracking needs at least one keyframe"),
    (lambda h, p: h["regions"][0]["keyframes"].append(dict(h["regions"][0]["keyframes"][0])), "bad_job",
     "two keyframes on frame 0"),
    (lambda h, p: h.update(regions=[]), "bad_job", "give 1 to 62"),
    (_set(1, "name", 7), "bad_header", "'track.regions[1]'.name must be a string"),
    (_keyframe(0, "frame", "0"), "bad_header",
     "'track.regions[0]'.keyframes[0] must be a map with 'frame': an integer"),
    (lambda h, p: h["regions"].__setitem__(0, "blob"), "bad_header", "'track.regions[0]' must be a map"),
    (_keyframe(0, "matte", None), "bad_header", "image descriptor"),
    (lambda h, p: h.pop("frames"), "bad_header", "an inline track needs 'frames'"),
    (lambda h, p: h.update(result_encoding="jpeg"), "bad_header", "'track.result_encoding' must be 'raw' or 'png'"),
])
def test_bad_keyframes_are_refused_saying_what_to_fix_and_nothing_is_queued(peer, engine, blobs, change, code, words):
    before = len(peer.request({"type": "status"})["jobs"])
    header, parts = _bad(blobs, change)
    reply = peer.request(header, parts)
    assert reply["type"] == "error" and reply["code"] == code and words in reply["message"], reply
    assert len(peer.request({"type": "status"})["jobs"]) == before


def test_a_region_name_is_shortened_in_messages(peer, engine, blobs):
    """A megabyte name came back whole in the error; messages repeat a bounded start of it."""
    header, parts = _bad(blobs, _keyframe(1, "frame", FRAMES))
    header["regions"][1]["name"] = "blob " + "x" * 100_000
    reply = peer.request(header, parts)
    assert reply["code"] == "bad_job" and "region 'blob xxx" in reply["message"] and len(reply["message"]) < 500, \
        len(reply["message"])


@pytest.mark.parametrize("source, keyframe, words", [
    ({"path": "clip"}, "/k.png", "source.path must be an absolute path on the engine's disk"),
    ({"path": "/no/such/clip"}, "/k.png", "source: '/no/such/clip' does not exist"),
    ({"path": "CLIP", "start": 0, "fps": 24}, "/k.png", "unknown setting 'source.fps'"),
    ({"path": "CLIP", "count": 0}, "/k.png", "source.count >= 1"),
    ({"path": "CLIP"}, "key.png", "keyframe 0 of region 'region 0': path must be an absolute path"),
    ({"path": "CLIP"}, "/no/key.png", "keyframe 0 of region 'region 0': '/no/key.png' is not an image file"),
])
def test_a_paths_track_with_bad_paths_is_refused(peer, engine, tmp_path, source, keyframe, words):
    write_png(tmp_path / "clip" / "000.png", np.zeros((8, 8, 3), np.uint8))
    source = {key: str(tmp_path / "clip") if value == "CLIP" else value for key, value in source.items()}
    header = {"type": "track", "inline": False, "source": source,
              "regions": [{"keyframes": [{"frame": 0, "path": keyframe}]}]}
    reply = peer.request(header)
    assert reply["type"] == "error" and reply["code"] == "bad_job" and words in reply["message"], reply


def test_a_paths_submit_with_keyframes_is_refused_and_points_to_track(peer, engine, demo_job):
    folder = demo_job.parent
    settings = {"source_prompt": "two men", "prompt": "an iron man and a spider man", "model": "tiny",
                "source": {"path": str(folder / "frames"), "width": 64, "height": 64},
                "regions": [{"phrase": "iron man",
                             "keyframes": [{"frame": 0, "mask": str(folder / "masks/left/0000.png")}]},
                            {"phrase": "spider man", "mask": str(folder / "masks/right")}]}
    before = len(peer.request({"type": "status"})["jobs"])
    reply = peer.request({"type": "submit", "inline": False, "settings": settings})
    assert reply["code"] == "bad_job" and "region 'iron man' gives keyframes" in reply["message"]
    assert "`track` request" in reply["message"] and len(peer.request({"type": "status"})["jobs"]) == before


def test_an_inline_submit_does_not_read_keyframes(peer, engine):
    """What `videograin edit --engine` sends for a job file with keyframes: tracked already, a matte per
    frame, the job file's settings as they are."""
    header, parts = inline_job(frames=2, steps=2)
    header["settings"]["regions"][0]["keyframes"] = [{"frame": 0, "mask": "/not/read.png"}]
    stream = collect_stream(peer, peer.request(header, parts)["job"])
    assert stream[-1][0]["type"] == "done"


def test_the_reference_client_tracks(engine, blobs, tmp_path):
    from videograin.protocol.client import EngineClient, matte_images

    clip, truth = blobs
    client = EngineClient(engine[2])
    try:
        assert "flow" in client.hello()["trackers"]
        job = client.track(clip, [{0: truth[0, 0], FRAMES - 1: truth[0, -1]}], names=["red blob"])
        mattes = [matte_images(m)[0] for m in client.events(job, timeout_s=limit(60)) if m.type == "matte"]
        assert len(mattes) == FRAMES and np.array_equal(mattes[-1] == 255, truth[0, -1])
        assert np.mean([iou(m == 255, t) for m, t in zip(mattes, truth[0])]) >= 0.9
        write_png(tmp_path / "key.png", truth[0, 0].astype(np.uint8) * 255)
        for f, frame in enumerate(clip[:3]):
            write_png(tmp_path / "clip" / f"{f}.png", frame)
        keyframes = [{"frame": 0, "path": str(tmp_path / "key.png")}]
        job = client.track_paths({"path": str(tmp_path / "clip")}, [{"keyframes": keyframes}])
        assert [m.header["index"] for m in client.events(job, timeout_s=limit(60)) if m.type == "matte"] == [0, 1, 2]
        with pytest.raises(Exception, match="empty"):
            client.track(clip, [{0: np.zeros((HEIGHT, WIDTH), bool)}])
    finally:
        client.close()
