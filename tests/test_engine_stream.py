"""The engine's job stream against SPEC.md §3.7 (nothing after a cancel reply but the stream's end) and §4
(a peer is silent only after 3 × heartbeat_s without an authenticated message of any kind).

The engine runs in this process with a scripted worker: the test decides when the job's events happen,
so every check waits on messages, never on how fast the machine is."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
from conformance import RawPeer, inline_job

from videograin.engine.progress import ProgressEvent
from videograin.engine.serving.server import EngineServer
from videograin.protocol import wire

HEARTBEAT_S = 1.0


class ScriptedWorker:
    """worker.py's JobWorker interface; runs nothing. The test queues the events, or pauses the loop
    inside `events()` as a slow drain would."""

    def __init__(self, store, stopping) -> None:
        self.waiting: list = []
        self.submitted: queue.Queue = queue.Queue()
        self.queued: queue.Queue = queue.Queue()
        self.on_cancel: list[tuple[str, object]] = []  # events already made when a cancel comes
        self.put_count = self.handled = 0

    def put(self, kind: str, job, payload) -> None:
        self.put_count += 1
        self.queued.put((kind, job, payload))

    def wait_handled(self, timeout: float = 60.0) -> None:
        """Until the loop has handled every event put so far (the engine has streamed or dropped it)."""
        deadline = time.monotonic() + timeout
        while self.handled < self.put_count:
            assert time.monotonic() < deadline, "the engine's loop did not drain its events"
            time.sleep(0.01)

    def start(self) -> None:
        pass

    def submit(self, job) -> None:
        self.put("start", job, None)
        self.submitted.put(job)

    def position(self, job) -> int:
        return 0

    def cancel(self, job) -> bool:
        job.cancel.set()
        for kind, payload in self.on_cancel:  # made before the cancel reached the job, drained after
            self.put(kind, job, payload)
        self.put("cancelled", job, {"code": "cancelled", "message": "the job was cancelled"})
        return False

    def drop_waiting(self) -> list:
        return []

    def workers(self) -> list:
        return []

    def events(self):
        while True:
            try:
                kind, job, payload = self.queued.get_nowait()
            except queue.Empty:
                return
            if kind == "pause":  # the loop busy this long, reading nothing
                time.sleep(payload)
            else:
                yield kind, job, payload
            self.handled += 1

    def close(self, timeout_s: float = 60.0) -> None:
        pass


@pytest.fixture()
def engine():
    key = wire.new_key()
    scripted: list[ScriptedWorker] = []

    def make_worker(store, stopping):
        scripted.append(ScriptedWorker(store, stopping))
        return scripted[0]

    server = EngineServer("tcp://127.0.0.1:0", key, None, "tiny", "cpu", heartbeat_s=HEARTBEAT_S, worker=make_worker)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    peers: list[RawPeer] = []

    def peer(**options) -> RawPeer:
        peers.append(RawPeer({"address": server.address, "key": key}, **options))
        return peers[-1]

    yield scripted[0], peer
    for p in peers:
        p.close()
    server.stop()
    serving.join(timeout=30)


def _submit(peer: RawPeer, worker: ScriptedWorker):
    header, parts = inline_job(frames=2, size=64)
    job_id = peer.request(header, parts)["job"]
    job = worker.submitted.get(timeout=30)
    assert job.id == job_id
    return job


def _progress(step: int) -> tuple[ProgressEvent, None]:
    return ProgressEvent("edit", step, 10), None


def _stream_message(peer: RawPeer, job: str, timeout: float, keep_talking=None) -> dict | None:
    """The job's next stream message, or None after `timeout`; `keep_talking` is called between waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if keep_talking is not None:
            keep_talking()
        got = peer.recv(timeout=0.25)
        if got is not None and got[0].get("job") == job:
            return got[0]
    return None


def test_a_peer_whose_signed_messages_are_refused_is_not_silent(engine):
    """A refused message (here a protocol version the engine does not speak) is still an authenticated
    message: a peer that sends only those is there, and keeps its stream past 3 × heartbeat_s."""
    worker, new_peer = engine
    peer = new_peer(heartbeat_s=float("inf"))  # no pings: only the refused messages below
    job = _submit(peer, worker)
    accepted = time.monotonic()
    refused = lambda: peer.send({"type": "ping", "v": 2})  # noqa: E731
    while time.monotonic() - accepted < 4 * HEARTBEAT_S:  # past 3 heartbeats since the last accepted message
        refused()
        assert peer.recv(timeout=5)[0]["code"] == "bad_version"
        time.sleep(0.2)
    worker.put("progress", job, _progress(1))
    got = _stream_message(peer, job.id, timeout=20, keep_talking=refused)
    assert got is not None and got["type"] == "progress", "the stream of a peer that kept talking was detached"


def test_messages_waiting_while_the_loop_is_busy_count_as_heard(engine):
    """While the loop streams for longer than 3 heartbeats, the peer's pings wait unread on the socket: the
    peer was not silent, and its stream goes on."""
    worker, new_peer = engine
    peer = new_peer(heartbeat_s=0.2)  # pings every 0.2 s while it waits
    job = _submit(peer, worker)
    worker.put("pause", None, 4 * HEARTBEAT_S)
    worker.put("progress", job, _progress(1))
    got = _stream_message(peer, job.id, timeout=60)
    assert got is not None and got["type"] == "progress", "a peer that pinged throughout was detached"


def test_a_silent_peer_is_detached_and_attach_resumes(engine):
    worker, new_peer = engine
    peer = new_peer(heartbeat_s=float("inf"))
    job = _submit(peer, worker)
    time.sleep(3 * HEARTBEAT_S + 1)  # silent past 3 heartbeats
    worker.put("progress", job, _progress(1))
    worker.wait_handled()
    assert peer.request({"type": "ping"})["type"] == "pong"  # after the progress: it came back to no one
    assert _stream_message(peer, job.id, timeout=1) is None
    assert peer.request({"type": "attach", "job": job.id, "from_frame": 0})["type"] == "status"
    worker.put("progress", job, _progress(2))
    got = _stream_message(peer, job.id, timeout=60)
    assert got is not None and got["step"] == 2


def test_nothing_but_the_end_follows_a_cancel_reply(engine):
    """Frames decoded (and progress made) before a cancel took hold, but not yet sent, are not sent after
    the reply (SPEC.md §3.7): the stream ends with `error` `cancelled` and nothing else."""
    worker, new_peer = engine
    peer = new_peer()
    job = _submit(peer, worker)
    frame = np.zeros((64, 64, 3), np.uint8)
    worker.put("frame", job, (0, frame))
    first = _stream_message(peer, job.id, timeout=60)
    while first["type"] != "frame":
        first = _stream_message(peer, job.id, timeout=60)
    assert first["index"] == 0
    worker.on_cancel = [("frame", (1, frame)), ("progress", _progress(10))]
    reply_id = peer.send({"type": "cancel", "job": job.id})
    after, replied = [], False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = peer.recv(timeout=1)
        if got is None:
            continue
        header = got[0]
        if header.get("ref") == reply_id:
            replied = True
            assert header["type"] == "status"
        elif replied and header.get("job") == job.id:
            after.append(header)
            if header["type"] in ("done", "error"):
                break
    assert [(m["type"], m.get("code")) for m in after] == [("error", "cancelled")]
    # The frame stays attachable all the same: it was made.
    status = peer.request({"type": "status", "job": job.id})["jobs"][0]
    assert status["state"] == "cancelled" and status["frames_ready"] == 2


def test_a_job_cancelled_while_its_last_frames_are_made_ends_cancelled():
    """The worker does not turn a cancel that came during the job's last frames into `done`: the client
    was told the job stops (the Ray pool ends such a run `cancelled` too)."""
    from videograin.engine.serving.worker import Job, JobWorker

    worker = JobWorker(None, None, threading.Event())

    def edit(job):  # the cancel comes while the frames are decoded, after the last step's check
        job.cancel.set()
        return {"frames": 1}

    worker._edit = edit
    worker.start()
    job = Job("job-1", None, 1, None)
    worker.submit(job)
    ends, deadline = [], time.monotonic() + 60
    while not ends and time.monotonic() < deadline:
        ends = [(kind, payload) for kind, _, payload in worker.events() if kind not in ("start", "progress")]
        time.sleep(0.01)
    worker.close()
    assert ends == [("cancelled", {"code": "cancelled", "message": "the edit was cancelled"})]


# -- which model a job may name (SPEC.md §3.1 models) ----------------------------------------------------

def test_a_job_names_only_models_the_engine_lists(engine):
    """The engine's --model is the default; a job naming weights the engine does not list is refused at
    once with the fix (it never reaches the hub), and a listed one is taken."""
    worker, new_peer = engine
    peer = new_peer()
    assert peer.request({"type": "hello", "versions": [1]})["engine"]["models"] == ["tiny"]
    header, parts = inline_job(frames=2, size=64)
    del header["settings"]["model"]
    peer.request(header, parts)
    assert worker.submitted.get(timeout=30).edit.settings.model == "tiny"
    for settings in ({"model": "stable-diffusion-v1-5/stable-diffusion-v1-5"}, {"model": "sd15-random"}):
        header, parts = inline_job(frames=2, size=64, **settings)
        refused = peer.request({**header, "type": "submit"}, parts)
        assert refused["type"] == "error" and refused["code"] == "bad_job", refused
        assert f"model '{settings['model']}' is not one this engine loads: it loads tiny" in refused["message"]
        assert f"--allow-model {settings['model']}" in refused["message"]
        # A check says what `edit` would refuse among its errors, first, with the same words.
        checked = peer.request({**header, "type": "check"}, parts)
        assert checked["type"] == "check" and not checked["ok"], checked
        assert checked["errors"][0]["message"] == refused["message"]
    assert worker.submitted.empty()


def test_an_engine_allowed_more_models_lists_and_takes_them():
    key = wire.new_key()
    server = EngineServer("tcp://127.0.0.1:0", key, None, "tiny", "cpu", worker=ScriptedWorker,
                          other_models=("sd15-random", "models/canny"))
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    peer = RawPeer({"address": server.address, "key": key})
    try:
        models = peer.request({"type": "hello", "versions": [1]})["engine"]["models"]
        assert models == ["tiny", "sd15-random", "models/canny"]
        header, parts = inline_job(frames=2, size=64, model="sd15-random", controlnet="anything")  # random: no loading
        assert peer.request(header, parts)["type"] == "accepted"
        assert server.worker.submitted.get(timeout=30).edit.settings.model == "sd15-random"
        header, parts = inline_job(frames=2, size=64, model="models/canny", controlnet="lllyasviel/sd-controlnet-canny")
        refused = peer.request(header, parts)
        assert refused["code"] == "bad_job"
        assert "controlnet 'lllyasviel/sd-controlnet-canny' is not one" in refused["message"]
    finally:
        peer.close()
        server.stop()
        serving.join(timeout=30)
