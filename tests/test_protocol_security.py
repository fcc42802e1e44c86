"""Who gets a message in, and what one peer may hold (SPEC.md §1.1, §2.5, §5): CURVE with an allow-list,
fresh requests in HMAC mode, the connection cap, paced streams, private connection files."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time

import numpy as np
import pytest
import zmq
from conformance import RawPeer, collect_stream, inline_job, now_ms, start_engine

from videograin.engine.cli import main
from videograin.protocol import wire
from videograin.protocol.client import EngineClient, EngineError


def _stop(process) -> None:
    process.kill()
    process.wait()


# -- CURVE mode (SPEC.md §1.1) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def curve_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curve-engine")
    allowed = folder / "clients"
    allowed.mkdir()
    process, info, connection = start_engine(folder, "--curve", "--curve-clients", str(allowed))
    yield process, info, connection, allowed
    _stop(process)


def test_the_connection_file_carries_the_curve_keys(curve_engine):
    _, info, connection, _ = curve_engine
    assert connection.stat().st_mode & 0o777 == 0o600
    keys = info["curve"]
    assert {len(keys[name]) for name in ("server_key", "public_key", "secret_key")} == {40}
    assert zmq.curve_public(keys["secret_key"].encode()) == keys["public_key"].encode()


def test_a_peer_without_an_allowed_key_gets_nothing_in(curve_engine):
    process, info, _, _ = curve_engine
    public, secret = zmq.curve_keypair()
    stranger = RawPeer({**info, "curve": {**info["curve"], "public_key": public.decode(), "secret_key": secret.decode()}},
                       heartbeat_s=float("inf"), send_timeout_s=2)
    plain = RawPeer({k: v for k, v in info.items() if k != "curve"}, heartbeat_s=float("inf"),  # no CURVE at all
                    send_timeout_s=2)
    member = RawPeer(info)
    try:
        for peer in (stranger, plain):  # each holds the HMAC key: only CURVE keeps them out
            for header in ({"type": "ping"}, {"type": "shutdown"}):
                try:
                    peer.send(header)
                except zmq.Again:  # the handshake was refused: ZeroMQ has no connection to queue it on
                    pass
            assert peer.recv(timeout=2) is None
        assert member.request({"type": "ping"})["type"] == "pong" and process.poll() is None
        assert stranger.recv(timeout=0.5) is None  # still nothing, later either
    finally:
        for peer in (stranger, plain, member):
            peer.close()


def test_a_curve_client_edits_end_to_end(curve_engine):
    from videograin.engine.demo import synthetic_clip

    client = EngineClient(curve_engine[2])
    try:
        client.hello()
        clip, mattes = synthetic_clip(2, 64, 64)
        settings = {"source_prompt": "two men jogging", "prompt": "an iron man and a spider man jogging",
                    "regions": [{"phrase": "iron man"}, {"phrase": "spider man"}], "steps": 2,
                    "source": {"width": 64, "height": 64}, "model": "tiny"}
        job = client.submit(settings, clip, mattes)
        messages = list(client.events(job, timeout_s=300))
        assert [m.header["index"] for m in messages if m.type == "frame"] == [0, 1] and messages[-1].type == "done"
    finally:
        client.close()


def test_keys_made_by_the_cli_are_private_and_let_in_once_allowed(curve_engine, tmp_path):
    _, _, connection, allowed = curve_engine
    folder = tmp_path / "keys"
    assert main(["keys", "editor-7", "--folder", str(folder), "--connection-file", str(connection)]) == 0
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "editor-7.key_secret").stat().st_mode & 0o777 == 0o600
    mine = folder / "editor-7.json"
    assert mine.stat().st_mode & 0o777 == 0o600
    assert main(["keys", "editor-7", "--folder", str(folder)]) == 2  # never overwrites a pair
    client = EngineClient(mine)
    try:
        with pytest.raises(EngineError, match="refused this client's CURVE key") as refused:
            client.ping(timeout_s=3)  # not on the allow-list yet
        assert refused.value.code == "refused"
    finally:
        client.close()
    (allowed / "editor-7.key").write_bytes((folder / "editor-7.key").read_bytes())  # the operator allows it
    client = EngineClient(mine)
    try:
        client.ping(timeout_s=10)
    finally:
        client.close()


# -- HMAC mode: freshness (SPEC.md §2.5) -------------------------------------------------------------

@pytest.fixture()
def busy_engine(tmp_path):
    """An engine that serves 3 peers at once; a long heartbeat keeps each pinged peer present (3 heartbeats)
    however slowly a loaded machine runs the test."""
    process, info, _ = start_engine(tmp_path, "--max-connections", "3", "--heartbeat", "30")
    yield process, info
    _stop(process)


@pytest.fixture()
def hmac_engine(tmp_path):
    process, info, _ = start_engine(tmp_path)
    yield process, info
    _stop(process)


def _jobs(peer: RawPeer) -> int:
    return len(peer.request({"type": "status"})["jobs"])


def test_a_replayed_signed_message_is_ignored(hmac_engine):
    process, info = hmac_engine
    victim, attacker = RawPeer(info), RawPeer(info)
    try:
        header, parts = inline_job(frames=2, steps=1)
        body = victim.body({"v": 1, "id": "recorded", **header}, parts)
        recorded = [victim.sign_body(body), *body]  # what a listener on the wire would have kept
        victim.send_frames(recorded)
        accepted = victim.recv(timeout=30)[0]
        assert accepted["type"] == "accepted"
        collect_stream(victim, accepted["job"])
        before = _jobs(victim)
        for peer in (attacker, victim):  # sent again, from another connection and from the same one
            peer.send_frames(recorded)
            reply = peer.recv(timeout=10)[0]
            assert reply["type"] == "error" and reply["code"] == "stale" and reply["ref"] == "recorded"
        assert _jobs(victim) == before
        # A shutdown recorded long ago, or one without a timestamp, stops nothing.
        for stamp in ({"ts": now_ms() - 120_000}, {"ts": now_ms() + 120_000}, {"ts": None}, {"ts": "now"}):
            body = attacker.body({"v": 1, "id": wire.new_id(), "type": "shutdown", **stamp})
            if stamp["ts"] is None:
                body = [_without_ts(body[0])]
            attacker.send_frames([attacker.sign_body(body), *body])
            reply = attacker.recv(timeout=10)[0]
            assert reply["code"] == "stale", reply
        assert victim.request({"type": "ping"})["type"] == "pong" and process.poll() is None
    finally:
        victim.close()
        attacker.close()


def _without_ts(packed: bytes) -> bytes:
    """The packed header without its `ts`, as a client written before SPEC.md §2.5 sends it."""
    import msgpack

    header = msgpack.unpackb(packed)
    header.pop("ts")
    return msgpack.packb(header)


def test_the_connection_cap_answers_busy(busy_engine):
    process, info = busy_engine
    peers = [RawPeer(info) for _ in range(4)]
    try:
        present = [p for p in peers[:3] if p.request({"type": "ping"})["type"] == "pong"]
        assert len(present) == 3  # the engine's --max-connections
        msg_id = peers[3].send({"type": "ping"})
        reply = peers[3].recv(timeout=10)[0]
        assert reply["code"] == "busy" and reply["ref"] == msg_id and "3 connections" in reply["message"]
        assert peers[0].request({"type": "ping"})["type"] == "pong"  # those present are still served
    finally:
        for peer in peers:
            peer.close()
    assert process.poll() is None


def test_only_a_stream_not_yet_ended_keeps_a_silent_peer_present(tmp_path):
    """A finished job is retained for an hour with its peer: that must not hold one of the places."""
    from videograin.engine.serving.server import EngineServer
    from videograin.engine.serving.worker import Job
    from videograin.protocol.wire import Limits, ProtocolError

    server = EngineServer("tcp://127.0.0.1:0", wire.new_key(), None, "tiny", "cpu", limits=Limits(max_connections=1),
                          worker=lambda store, stopping: _IdleWorker())
    try:
        job = Job("job-old", None, 1, b"gone", state="done", frames_ready=1, final={"type": "done"})
        server.jobs[job.id] = job
        server.peers_seen[b"gone"] = time.monotonic() - 3600  # silent for an hour
        server.ended_streams.add(job.id)
        server._admit(b"new")  # the one place is free
        server.ended_streams.discard(job.id)  # its stream still to end: the peer keeps its place
        with pytest.raises(ProtocolError, match="1 connections"):
            server._admit(b"new")
    finally:
        server._shut_down()


# -- a peer that never reads (SPEC.md §5) ------------------------------------------------------------

FRAME_SIDE = 2048  # 12 MiB raw RGB frames: a handful fill the per-peer budget
FRAMES = 12


@pytest.fixture()
def finished_job_engine(tmp_path):
    """An engine in this process holding a finished job of FRAMES large frames, its loop on a thread."""
    from videograin.engine.serving.server import EngineServer
    from videograin.engine.serving.worker import Job

    server = EngineServer("tcp://127.0.0.1:0", wire.new_key(), None, "tiny", "cpu", heartbeat_s=60.0,
                          connection_file=tmp_path / "engine.json", worker=lambda store, stopping: _IdleWorker())
    job = Job("job-big", None, FRAMES, None, state="done", frames_ready=FRAMES, finished_at=time.monotonic())
    for index in range(FRAMES):
        server.store.put(job.id, index, np.full((FRAME_SIDE, FRAME_SIDE, 3), index, np.uint8))
    job.final = {"type": "done", "job": job.id, "frames": FRAMES}
    server.jobs[job.id] = job
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    yield server, json.loads((tmp_path / "engine.json").read_text()), job
    server.stop()
    loop.join(timeout=30)


class _IdleWorker:
    """A worker with no jobs: the test's job is finished before the loop starts."""

    waiting: list = []

    def start(self) -> None: ...
    def close(self) -> None: ...
    def events(self) -> list: return []
    def drop_waiting(self) -> list: return []
    def workers(self) -> list: return []
    def position(self, job) -> int: return 0


def test_a_peer_that_attaches_and_never_reads_holds_a_bounded_share(finished_job_engine):
    from videograin.engine.serving.transport import STREAM_BYTES

    server, info, job = finished_job_engine
    frame_bytes = FRAME_SIDE * FRAME_SIDE * 3
    lazy = RawPeer(info, heartbeat_s=float("inf"))
    lazy.socket.setsockopt(zmq.RCVHWM, 1)
    lazy.socket.setsockopt(zmq.RCVBUF, 65536)
    other = RawPeer(info)
    try:
        for _ in range(5):  # attaching again and again moves the one stream, it never adds one
            lazy.send({"type": "attach", "job": job.id, "from_frame": 0})
        sent, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 1.5:  # until the engine stops pushing
            if job.stream_from != sent:
                sent, still_since = job.stream_from, time.monotonic()
            time.sleep(0.1)
        held = sum(n for tracker, n in server.budget._in_flight.get(job.peer, ()) if not tracker.done)
        assert held <= STREAM_BYTES + frame_bytes
        assert job.stream_from < FRAMES and job.id in server.waiting_streams  # the rest waits on disk
        assert other.request({"type": "ping"})["type"] == "pong"  # the loop serves others meanwhile
        # Once the peer reads, it gets every frame of the last attach, in order, then the end.
        indices = []
        while True:
            got = lazy.recv(timeout=30)
            assert got is not None, f"the stream stalled after {indices}"
            if got[0]["type"] == "frame":
                indices.append(got[0]["index"])
                assert bytes(got[1][0][:1]) == bytes([got[0]["index"]])
            elif got[0]["type"] == "done":
                break
        last_attach = indices[len(indices) - 1 - indices[::-1].index(0):]
        assert last_attach == list(range(FRAMES))
    finally:
        lazy.close()
        other.close()


# -- connection files and the process (SPEC.md §1) ---------------------------------------------------

def test_the_connection_file_is_written_under_a_fresh_name_never_through_a_link(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "engine.json"
    names = iter(["planted", "planted", "fresh"])
    monkeypatch.setattr(wire.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".engine.json.planted.tmp").symlink_to(victim)  # a name guessed in advance
    wire.write_connection_file(target, "tcp://127.0.0.1:1", "k" * 64)
    assert victim.read_text() == "keep me"
    assert json.loads(target.read_text())["address"] == "tcp://127.0.0.1:1"
    assert target.stat().st_mode & 0o777 == 0o600 and not (tmp_path / ".engine.json.fresh.tmp").exists()


def test_a_huge_pid_means_not_running(tmp_path):
    for pid in (2**31, 2**64 + 5, 10**30):
        assert wire.pid_alive(pid) is False
        path = tmp_path / f"engine-{pid}.json"
        path.write_text(json.dumps({"address": "tcp://127.0.0.1:9", "key": "k" * 64, "pid": pid,
                                    "host": socket.gethostname()}))
        with pytest.raises(EngineError, match=f"stale connection file of pid {pid}"):
            EngineClient(path)


def test_the_file_descriptor_limit_is_raised_to_the_hard_limit():
    from videograin.engine.serving.transport import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft == hard and hard > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        assert raise_fd_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
