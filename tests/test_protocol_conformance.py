"""Conformance of the engine to protocol/SPEC.md, spoken with raw pyzmq + msgpack (tests/conformance.py)."""

from __future__ import annotations

import os
import signal
import stat
import time

import msgpack
import numpy as np
import pytest
from conformance import RawPeer, collect_stream, inline_job, start_engine

PART_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    process, info, connection = start_engine(folder, "--heartbeat", "1", "--max-part-bytes", str(PART_LIMIT))
    yield process, info, connection
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture()
def peer(engine):
    peer = RawPeer(engine[1])
    yield peer
    peer.close()


def assert_still_serving(peer: RawPeer, engine) -> None:
    assert engine[0].poll() is None, "engine process died"
    assert peer.request({"type": "ping"}, timeout=5)["type"] == "pong"


def test_connection_file_is_private_and_complete(engine):
    _, info, connection = engine
    assert stat.S_IMODE(os.stat(connection).st_mode) == 0o600
    assert info["address"].startswith("tcp://127.0.0.1:") and len(info["key"]) == 64
    assert info["signature_scheme"] == "hmac-sha256" and info["protocol"] == 1


def test_handshake(peer, engine):
    welcome = peer.request({"type": "hello", "versions": [1], "client": "conformance"})
    assert welcome["type"] == "welcome" and welcome["version"] == 1
    caps = welcome["engine"]
    assert caps["device"] == "cpu" and "canny" in caps["control_types"] and caps["heartbeat_s"] == 1
    assert caps["limits"]["max_part_bytes"] == PART_LIMIT and caps["models"] == ["tiny"]
    refused = peer.request({"type": "hello", "versions": [2, 3]})
    assert refused["type"] == "error" and refused["code"] == "bad_version"


def test_full_job_streams_progress_frames_and_done(peer, engine):
    header, parts = inline_job(frames=4, steps=3)
    accepted = peer.request(header, parts)
    assert accepted["type"] == "accepted" and accepted["position"] == 0
    stream = collect_stream(peer, accepted["job"])
    kinds = [m[0]["type"] for m in stream]
    assert kinds[-1] == "done" and kinds.count("frame") == 4
    phases = [m[0]["phase"] for m in stream if m[0]["type"] == "progress"]
    assert {"invert", "edit", "decode"} <= set(phases)
    frames = [m for m in stream if m[0]["type"] == "frame"]
    assert [m[0]["index"] for m in frames] == [0, 1, 2, 3]
    for head, body in frames:
        d = head["image"]
        assert d["encoding"] == "raw" and (d["width"], d["height"], d["channels"]) == (64, 64, 3)
        assert len(body[d["part"]]) == 64 * 64 * 3
    previews = [m for m in stream if m[0]["type"] == "progress" and "preview" in m[0]]
    assert previews and len(previews[0][1][0]) == previews[0][0]["preview"]["width"] * previews[0][0]["preview"]["height"] * 3
    done = stream[-1][0]
    assert done["frames"] == 4 and done["random_weights"] is True and set(done["leakage"]) == {"iron man", "spider man"}
    status = peer.request({"type": "status", "job": accepted["job"]})
    assert status["jobs"][0]["state"] == "done" and status["jobs"][0]["frames_ready"] == 4


def test_cancel_stops_within_a_step(peer, engine):
    header, parts = inline_job(frames=2, steps=400)
    job = peer.request(header, parts)["job"]
    while True:
        got = peer.recv(60)
        if got[0].get("type") == "progress" and got[0]["phase"] == "invert" and got[0]["step"] >= 2:
            break
    started = time.monotonic()
    reply = peer.request({"type": "cancel", "job": job})
    assert reply["type"] == "status" and reply["jobs"][0]["job"] == job
    end = collect_stream(peer, job, timeout=30)[-1][0]
    assert end["type"] == "error" and end["code"] == "cancelled"
    assert time.monotonic() - started < 5  # a tiny-model step takes well under a second
    assert peer.request({"type": "status", "job": job})["jobs"][0]["state"] == "cancelled"
    assert_still_serving(peer, engine)


def test_queued_jobs_report_positions_and_cancel_at_once(peer, engine):
    header, parts = inline_job(frames=2, steps=200)
    first = peer.request(header, parts)["job"]
    second = peer.request(header, parts)
    assert second["position"] == 1
    peer.request({"type": "cancel", "job": second["job"]})
    assert peer.request({"type": "status", "job": second["job"]})["jobs"][0]["state"] == "cancelled"
    peer.request({"type": "cancel", "job": first})
    collect_stream(peer, first, timeout=30)


def test_attach_after_a_dropped_client_resumes_from_a_frame(engine):
    first = RawPeer(engine[1])
    header, parts = inline_job(frames=4, steps=4)
    job = first.request(header, parts)["job"]
    first.close()  # the client disappears; the job must go on
    second = RawPeer(engine[1])
    try:
        deadline = time.monotonic() + 120
        while second.request({"type": "status", "job": job})["jobs"][0]["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        reply = second.request({"type": "attach", "job": job, "from_frame": 2})
        assert reply["type"] == "status" and reply["jobs"][0]["frames_ready"] == 4
        stream = collect_stream(second, job)
        assert [m[0]["index"] for m in stream if m[0]["type"] == "frame"] == [2, 3]
        assert stream[-1][0]["type"] == "done"
    finally:
        second.close()


def test_bad_signature_is_dropped_without_reply(peer, engine):
    body = [msgpack.packb({"v": 1, "id": "forged", "type": "ping"})]
    peer.send_frames([b"0" * 64, *body])
    peer.send_frames([body[0]])  # no signature frame at all
    assert peer.recv(timeout=0.5) is None
    assert_still_serving(peer, engine)


@pytest.mark.parametrize(
    "header,parts,raw_header,code",
    [
        ({"type": "ping"}, [], b"\xc1\xff\x00 not msgpack", "malformed"),
        ({"type": "ping"}, [], msgpack.packb([1, 2, 3]), "malformed"),
        ({"type": "ping"}, [b"x" * (PART_LIMIT + 1)], None, "too_large"),
        ({"type": "teleport"}, [], None, "unknown_type"),
        ({"type": "ping", "v": 2}, [], None, "bad_version"),
        ({"type": "attach", "job": "x"}, [], None, "bad_header"),
        ({"type": "attach", "job": "x", "from_frame": "0"}, [], None, "bad_header"),
        ({"type": "cancel", "job": "no-such-job"}, [], None, "unknown_job"),
    ],
    ids=["not-msgpack", "not-a-map", "oversized-part", "unknown-type", "wrong-version", "missing-field",
         "mistyped-field", "unknown-job"],
)
def test_rejects_get_an_error_and_the_engine_still_serves(peer, engine, header, parts, raw_header, code):
    msg_id = peer.send(header, parts, raw_header=raw_header)
    got = peer.recv(timeout=5)
    assert got is not None, "no error reply"
    assert got[0]["type"] == "error" and got[0]["code"] == code, got[0]
    if raw_header is None:
        assert got[0]["ref"] == msg_id
    assert_still_serving(peer, engine)


@pytest.mark.parametrize(
    "change,code,words",
    [
        ({"settings": {"prompt": "a robot"}}, "bad_job", "does not occur in the prompt"),
        ({"frames": []}, "bad_header", "needs 'frames'"),
        ({"masks": [[]]}, "bad_header", "one list of mattes per region"),
        ({"frames": [{"part": 99, "encoding": "raw", "width": 64, "height": 64, "channels": 3}]},
         "bad_header", "part 99 does not exist"),
    ],
)
def test_bad_submits_say_what_to_fix(peer, engine, change, code, words):
    header, parts = inline_job(frames=2)
    if "settings" in change:
        header["settings"].update(change["settings"])
    else:
        header.update({k: v for k, v in change.items() if k in ("frames", "masks")})
    reply = peer.request(header, parts)
    assert reply["type"] == "error" and reply["code"] == code and words in reply["message"], reply
    assert_still_serving(peer, engine)


def test_wrong_part_size_and_empty_matte(peer, engine):
    header, parts = inline_job(frames=2)
    parts[0] = parts[0][:-1]
    reply = peer.request(header, parts)
    assert reply["code"] == "bad_header" and "bytes" in reply["message"]
    header, parts = inline_job(frames=2)
    for descriptor in header["masks"][0]:
        parts[descriptor["part"]] = bytes(len(parts[descriptor["part"]]))
    reply = peer.request(header, parts)
    assert reply["code"] == "bad_job" and "matte is empty" in reply["message"]


def test_sigterm_stops_cleanly_and_removes_the_connection_file(tmp_path):
    process, info, connection = start_engine(tmp_path)
    peer = RawPeer(info)
    try:
        assert peer.request({"type": "ping"})["type"] == "pong"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not connection.exists()
    finally:
        peer.close()
        if process.poll() is None:
            process.kill()


def test_shutdown_message(tmp_path):
    process, info, connection = start_engine(tmp_path)
    peer = RawPeer(info)
    try:
        assert peer.request({"type": "shutdown"})["type"] == "bye"
        assert process.wait(timeout=30) == 0 and not connection.exists()
    finally:
        peer.close()


def test_frames_match_the_in_process_edit(peer, engine, tiny_pipe):
    from videograin.engine.config import parse_settings
    from videograin.engine.demo import synthetic_clip
    from videograin.engine.inputs.job import EditJob
    from videograin.engine.runner import edit_clip

    header, parts = inline_job(frames=3, steps=3)
    job = peer.request(header, parts)["job"]
    streamed = {m[0]["index"]: np.frombuffer(m[1][0], np.uint8).reshape(64, 64, 3)
                for m in collect_stream(peer, job) if m[0]["type"] == "frame"}
    clip, mattes = synthetic_clip(3, 64, 64)
    # The engine measures leakage, which takes the reference path in cross-attention: so does this run.
    local = edit_clip(EditJob(parse_settings(header["settings"]), clip, mattes), tiny_pipe, measure_leakage=True).frames
    assert np.array_equal(np.stack([streamed[i] for i in range(3)]), local)


def test_submit_by_paths_on_a_shared_disk(peer, engine, demo_job):
    import yaml

    settings = yaml.safe_load(demo_job.read_text())
    base = demo_job.parent
    settings["source"]["path"] = str(base / settings["source"]["path"])
    for region in settings["regions"]:
        region["mask"] = str(base / region["mask"])
    settings["steps"] = 2
    accepted = peer.request({"type": "submit", "inline": False, "settings": settings})
    assert accepted["type"] == "accepted", accepted
    stream = collect_stream(peer, accepted["job"])
    assert [m[0]["type"] for m in stream].count("frame") == 4 and stream[-1][0]["type"] == "done"
    settings["regions"][0]["mask"] = str(base / "nowhere")
    refused = peer.request({"type": "submit", "inline": False, "settings": settings})
    assert refused["code"] == "bad_job" and "does not exist" in refused["message"]


def test_ipc_transport_and_retention_expiry(tmp_path):
    socket_path, scratch = tmp_path / "engine.sock", tmp_path / "tmp"
    scratch.mkdir()
    process, info, _ = start_engine(tmp_path, "--bind", f"ipc://{socket_path}", "--retention", "1",
                                    env={"TMPDIR": str(scratch)})
    peer = RawPeer(info)
    try:
        assert info["address"] == f"ipc://{socket_path}"
        header, parts = inline_job(frames=2, steps=2)
        job = peer.request(header, parts)["job"]
        stream = collect_stream(peer, job)
        assert stream[-1][0]["type"] == "done"
        streamed = [parts[0] for header, parts in stream if header["type"] == "frame"]
        assert peer.request({"type": "attach", "job": job, "from_frame": 0})["type"] == "status"
        resent = [parts[0] for header, parts in collect_stream(peer, job) if header["type"] == "frame"]
        assert len(streamed) == 2 and resent == streamed  # the same bytes, read back from the store
        # Retained frames wait on disk, not in the engine's memory.
        assert len(list(scratch.glob(f"videograin-results-*/{job}/*.npy"))) == 2
        time.sleep(1.5)  # past --retention
        expired = peer.request({"type": "attach", "job": job, "from_frame": 0})
        assert expired["type"] == "error" and expired["code"] == "unknown_job"
        assert not list(scratch.glob(f"videograin-results-*/{job}"))
        assert peer.request({"type": "shutdown"})["type"] == "bye"
        assert process.wait(timeout=30) == 0 and not any(scratch.iterdir())
    finally:
        peer.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_engine_refuses_a_non_loopback_bind_unless_allowed():
    from videograin.engine.errors import VideograinError
    from videograin.engine.serving.server import check_bind

    for address in ("tcp://127.0.0.1:5000", "tcp://localhost:5000", "tcp://[::1]:5000", "ipc:///tmp/x"):
        check_bind(address, allow_remote=False)
    with pytest.raises(VideograinError, match="--allow-remote"):
        check_bind("tcp://0.0.0.0:5000", allow_remote=False)
    check_bind("tcp://0.0.0.0:5000", allow_remote=True)
    with pytest.raises(VideograinError, match="must be tcp"):
        check_bind("udp://127.0.0.1:5", allow_remote=True)
