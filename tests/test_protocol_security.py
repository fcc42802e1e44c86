"""What one peer may hold (SPEC.md §1, §5): the connection cap, paced streams, private connection files."""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time

import numpy as np
import pytest
import zmq
from conformance import RawPeer, start_engine

from videograin.protocol import wire
from videograin.protocol.client import EngineClient, EngineError


def _stop(process) -> None:
    process.kill()
    process.wait()


# -- the connection cap (SPEC.md §5) -----------------------------------------------------------------

@pytest.fixture()
def busy_engine(tmp_path):
    """An engine that serves 3 peers at once; a long heartbeat keeps each pinged peer present (3 heartbeats)
    however slowly a loaded machine runs the test."""
    process, info, _ = start_engine(tmp_path, "--max-connections", "3", "--heartbeat", "30")
    yield process, info
    _stop(process)


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
