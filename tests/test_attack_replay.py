"""The attacks that once took the engine down, re-run one after another against one real engine under a
memory cap (SPEC.md §1, §5). Each gets a clear error, or is dropped when it is unauthenticated; after each
the engine answers a ping within 2 s (load-scaled, conftest.limit); across all of them its peak memory
grows by less than 500 MB; and then it serves a normal job and stops on SIGTERM. What each attack cost
is listed at the end of the run.

A CURVE engine is attacked the same way with frames under the frame cap, which HMAC mode would hold
until a message ends (SPEC.md §1: "What a peer without the key can do")."""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import struct
import time
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
import zmq
from conformance import RawPeer, collect_stream, inline_job, now_ms, start_engine
from conftest import limit, report, wait_for
from test_limits import grey_png, paths_job, refused
from zmq.utils.monitor import recv_monitor_message

from videograin.engine.demo import write_demo_inputs

GROWTH_LIMIT = 500 * 10**6  # bytes of peak memory all the attacks together may add
CAP_MARGIN = 4 * 2**30  # the memory cap: the engine's address space after its warm-up job, plus this
SECTION = "attacks re-run against one engine (test_attack_replay.py)"


def status(pid: int) -> dict[str, int]:
    """VmSize, VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmSize", "VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def zmtp_greeting(mechanism: bytes) -> bytes:
    """ZMTP 3.0's greeting (RFC 23) naming `mechanism`, as a client sends it."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0") + b"\x00" + bytes(31)


class Target:
    """The engine under attack, its peer, and the memory it started the attacks from."""

    def __init__(self, process, info: dict, media: Path, cache: Path) -> None:
        self.process, self.info, self.media, self.cache = process, info, media, cache
        self.peer = RawPeer(info)
        self.baseline = 0
        self.warm_frames: list[bytes] = []  # the normal job's frames, from before the first attack
        self.output = ""  # what the engine printed, as far as read

    def cap_memory(self) -> None:
        """Cap the engine's address space and restart its peak-RSS count from here (Linux clear_refs 5)."""
        cap = status(self.process.pid)["VmSize"] + CAP_MARGIN
        resource.prlimit(self.process.pid, resource.RLIMIT_AS, (cap, cap))
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        self.baseline = status(self.process.pid)["VmRSS"]

    def wait_for_log(self, words: str) -> None:
        """Until the engine's output has a line with `words` (read from its pipe, unbuffered)."""
        def logged() -> bool:
            if select.select([self.process.stdout], [], [], 0.1)[0]:
                self.output += os.read(self.process.stdout.fileno(), 65536).decode(errors="replace")
            return words in self.output

        wait_for(logged, f"the engine to log '{words}'", 60)

    def growth(self) -> int:
        return status(self.process.pid)["VmHWM"] - self.baseline

    def still_serving(self, attack: str, answer: str) -> None:
        """The engine lives, answers a ping within 2 s (load-scaled), and has grown less than the limit."""
        assert self.process.poll() is None, f"the engine died of {attack}"
        started = time.monotonic()
        assert self.peer.request({"type": "ping"}, timeout=2.0)["type"] == "pong"
        round_trip = time.monotonic() - started
        growth = self.growth()
        report(SECTION, f"{attack}: {answer}; ping {round_trip * 1000:.0f} ms; "
                        f"peak memory +{growth / 2**20:.0f} MiB since the first attack")
        assert growth < GROWTH_LIMIT, f"{attack}: the engine's peak memory grew by {growth / 2**20:.0f} MiB"

    def normal_job(self) -> list[bytes]:
        header, parts = inline_job(frames=2, steps=2)
        stream = collect_stream(self.peer, self.peer.request(header, parts)["job"])
        assert stream[-1][0]["type"] == "done", stream[-1][0]
        return [bytes(m[1][0]) for m in stream if m[0]["type"] == "frame"]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attacked")
    media = folder / "media"
    write_demo_inputs(media / "shot", frames=2, size=64, steps=2)
    # Started with a low soft limit on open files, as many systems give one: the engine raises its own.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))
    try:
        process, info, _ = start_engine(folder, "--media-root", str(media), "--cache", str(folder / "cache"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    engine = Target(process, info, media, folder / "cache")
    engine.warm_frames = engine.normal_job()  # the model loaded and one inversion cached, before the cap
    engine.cap_memory()
    yield engine
    engine.peer.close()
    if process.poll() is None:
        process.kill()
        process.wait()


def test_a_check_at_800000_squared_is_refused_before_anything_is_drawn(target):
    header, parts = inline_job(frames=2)
    header["type"] = "check"
    header["settings"]["source"] = {"width": 800000, "height": 800000}
    assert "800000x800000, over this engine's limit of 4096x4096" in refused(target.peer, header, parts)
    target.still_serving("a 1 KB check at 800000²", "bad_job")


def test_forged_messages_of_100_mb_frames_from_three_connections_are_dropped(target):
    """ZeroMQ closes each connection when the first 100 MB frame's length arrives (the frame cap),
    before the engine holds any of it; nothing reaches the engine and nothing answers."""
    bulk = bytes(100 * 10**6)  # one buffer, sent without copying by every connection
    forged = [b"0" * 64, msgpack.packb({"v": 1, "id": "forged", "type": "ping", "ts": now_ms()})] + [bulk] * 5
    context = zmq.Context.instance()
    attackers = []
    try:
        for _ in range(3):
            attacker = context.socket(zmq.DEALER)
            attacker.setsockopt(zmq.LINGER, 0)
            attacker.setsockopt(zmq.SNDTIMEO, int(limit(30) * 1000))
            events = attacker.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            attacker.connect(target.info["address"])
            attacker.send_multipart(forged, copy=False)
            attackers.append((attacker, events))
        for attacker, events in attackers:
            assert events.poll(int(limit(30) * 1000)), "the engine kept a connection sending 100 MB frames"
            assert recv_monitor_message(events)["event"] == zmq.EVENT_DISCONNECTED
            assert not attacker.poll(0)  # no reply: no oracle for forgers
    finally:
        for attacker, _ in attackers:
            attacker.disable_monitor()
            attacker.close(linger=0)
    target.still_serving("3 connections × forged messages of 5 × 100 MB frames", "dropped at the first frame")


def test_a_message_of_a_million_empty_frames_without_the_key_is_dropped_as_it_is_read(target):
    """Two bytes of the wire make a frame: the engine passes over them and keeps none (it once held a
    Python object per frame, 1.3 GB for 2 MB sent). Until the last frame arrives ZeroMQ holds them (64 bytes
    each, SPEC.md §1); reading them stalls the loop for a moment, which the report shows."""
    host, port = target.info["address"].removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as forger:
        forger.sendall(zmtp_greeting(b"NULL"))
        ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
        forger.sendall(b"\x04" + bytes([len(ready)]) + ready)
        received = b""
        while len(received) < 66 or len(received) < 66 + received[65]:  # the engine's greeting and READY
            received += forger.recv(256)
        forger.sendall(b"\x01\x40" + b"0" * 64 + b"\x01\x01\x80")  # a forged signature, an empty map
        for _ in range(10):
            forger.sendall(b"\x01\x00" * 100_000)
        forger.sendall(b"\x00\x00")
        started = time.monotonic()
        target.wait_for_log("dropped a message of 1000003 frames with a bad signature")
        read_s = time.monotonic() - started
    target.still_serving("1,000,000 empty frames after a forged signature, from a raw connection",
                         f"read and dropped in {read_s:.1f} s")


def test_a_png_declaring_10000_squared_is_never_decoded(target):
    bomb = grey_png(10000, 10000)  # under 200 KB, 100 MB decoded
    header, parts = inline_job(frames=2)
    header["frames"][1] = {"part": len(parts), "encoding": "png"}
    assert "is 10000x10000, over this engine's limit of 4096x4096" in refused(target.peer, header, [*parts, bomb])
    folder = write_demo_inputs(target.media / "bomb", frames=2, size=64, steps=2).parent
    (folder / "frames" / "0001.png").write_bytes(bomb)
    assert "0001.png' is 10000x10000, over this engine's limit" in refused(target.peer, paths_job(folder))
    target.still_serving(f"a {len(bomb) // 1000} KB PNG of 10000², inline and by path", "bad_job")


def test_a_folder_of_1100_frames_at_1080p_is_refused_from_its_listing(target):
    folder = target.media / "long"
    frame = folder / "frame.png"
    folder.mkdir()
    cv2.imwrite(str(frame), np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), np.uint8))
    for name in ("frames", "masks/left", "masks/right"):
        (folder / name).mkdir(parents=True)
        for index in range(1100):
            os.link(frame, folder / name / f"{index:04d}.png")  # 1100 large frames, one file on disk
    message = refused(target.peer, paths_job(folder))
    assert "1100 frames is over this engine's limit of 1024" in message
    target.still_serving("a paths check of 1,100 frames at 1080p", "bad_job")


def test_a_fifo_named_as_media_is_refused_without_opening_it(target):
    fifo = target.media / "clip.mp4"
    os.mkfifo(fifo)
    header = paths_job(target.media / "shot")
    header["settings"]["source"]["path"] = str(fifo)
    assert f"'{fifo}' is not a regular file" in refused(target.peer, header)
    target.still_serving("a FIFO as source.path", "bad_job")


def test_no_answer_tells_whether_a_private_file_outside_the_roots_exists(target, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret.png"
    cv2.imwrite(str(secret), np.full((64, 64, 3), 7, np.uint8))
    secret.chmod(0o600)
    answers = []
    for path in (secret, private / "missing.png"):
        header = paths_job(target.media / "shot")
        header["settings"]["source"]["path"] = str(path)
        answers.append(refused(target.peer, header).replace(str(path), "PATH"))
    assert answers[0] == answers[1] and "is not a file or folder this engine may read" in answers[0]
    for path in ("~/frames", "frames"):
        header = paths_job(target.media / "shot")
        header["settings"]["source"]["path"] = path
        assert "must be an absolute path" in refused(target.peer, header)
    target.still_serving("a 0600 image outside the media roots; ~ and relative paths", "bad_job, one message")


def test_a_tampered_or_malformed_cache_entry_is_recomputed_and_only_entries_are_evicted(target):
    entries = sorted(target.cache.glob("videograin-*.vginv"))
    assert entries, "the warm-up job left no inversion in the cache"
    foreign = target.cache / "someone-elses-model.safetensors"
    foreign.write_bytes(b"not ours")
    for damage in ("altered tensors", "malformed"):
        for entry in entries:
            data = bytearray(entry.read_bytes())
            if damage == "altered tensors":
                data[-64:] = bytes(64)  # the last tensor's bytes; the header still parses
            else:
                data = data[:40]
            entry.write_bytes(bytes(data))
        assert target.normal_job() == target.warm_frames  # recomputed: the very frames of the first run
        assert all(len(entry.read_bytes()) > 40 for entry in entries)  # and stored again, whole
    assert foreign.read_bytes() == b"not ours"
    target.still_serving("altered, then malformed cache entries", "recomputed; the same frames")


@pytest.mark.parametrize("key, value", [("guidance", float("nan")), ("control", {"scale": float("inf")}),
                                        ("modulation", {"cross": float("nan")})])
def test_nan_and_infinite_numbers_are_refused_by_name(target, key, value):
    header, parts = inline_job(frames=2)
    header["settings"][key] = value
    name = key if key == "guidance" else f"{key}.{next(iter(value))}"
    assert f"'{name}' must be a finite number" in refused(target.peer, header, parts)
    target.still_serving(f"{name} = {value if key == 'guidance' else value[next(iter(value))]}", "bad_job")


def test_recorded_requests_sent_again_do_nothing(target):
    attacker = RawPeer(target.info)
    try:
        header, parts = inline_job(frames=2, steps=1)
        body = target.peer.body({"v": 1, "id": "recorded", **header}, parts)
        recorded = [target.peer.sign_body(body), *body]
        target.peer.send_frames(recorded)
        job = target.peer.recv(timeout=limit(30))[0]["job"]
        collect_stream(target.peer, job)
        jobs = len(target.peer.request({"type": "status"})["jobs"])
        attacker.send_frames(recorded)
        assert attacker.recv(timeout=limit(10))[0]["code"] == "stale"
        body = attacker.body({"v": 1, "id": "old-shutdown", "type": "shutdown", "ts": now_ms() - 120_000})
        attacker.send_frames([attacker.sign_body(body), *body])  # a shutdown recorded two minutes ago
        assert attacker.recv(timeout=limit(10))[0]["code"] == "stale"
        assert len(target.peer.request({"type": "status"})["jobs"]) == jobs
    finally:
        attacker.close()
    target.still_serving("a recorded submit and a 2-minute-old shutdown, from another connection", "stale")


def test_peers_that_attach_and_never_read_hold_a_bounded_share(target):
    job = next(j["job"] for j in target.peer.request({"type": "status"})["jobs"] if j["state"] == "done")
    lazy = []
    try:
        for _ in range(50):
            peer = RawPeer(target.info, heartbeat_s=float("inf"))
            peer.socket.setsockopt(zmq.RCVHWM, 1)
            peer.send({"type": "attach", "job": job, "from_frame": 0})
            lazy.append(peer)
        time.sleep(1)  # let the engine push what it will
        target.still_serving("50 connections attach to a finished job and never read", "paced by the stream budget")
    finally:
        for peer in lazy:
            peer.close()


def test_thousands_of_idle_connections_leave_the_engine_serving(target):
    host, port = target.info["address"].removeprefix("tcp://").rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = max(0, min(2000, hard - 256))  # twice the soft limit the engine started with
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    idle = []
    try:
        for _ in range(count):
            idle.append(socket.create_connection((host, int(port))))
        target.still_serving(f"{count} idle TCP connections (the engine started with a soft limit of 1024 files)",
                             "served")
    finally:
        for connection in idle:
            connection.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_after_every_attack_a_normal_job_is_served_and_sigterm_stops_the_engine(target):
    assert target.normal_job() == target.warm_frames
    growth = target.growth()
    report(SECTION, f"all attacks, then a normal job: peak memory +{growth / 2**20:.0f} MiB "
                    f"(limit {GROWTH_LIMIT / 10**6:.0f} MB, cap: address space + {CAP_MARGIN / 2**30:.0f} GiB)")
    assert growth < GROWTH_LIMIT
    target.process.send_signal(signal.SIGTERM)
    target.process.wait(timeout=limit(30))


# -- CURVE mode: frames under the cap, from peers without an allowed key ----------------------------



def test_in_curve_mode_frames_from_a_peer_without_a_key_are_never_held(tmp_path):
    """3 connections × 5 frames of 60 MB, under the frame cap: held until the message ends in HMAC mode
    (900 MB), refused at the handshake here, one frame at a time."""
    process, info, _ = start_engine(tmp_path, "--curve")
    member = RawPeer(info)
    try:
        assert member.request({"type": "ping"}, timeout=30)["type"] == "pong"
        baseline = status(process.pid)["VmRSS"]
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")
        host, port = info["address"].removeprefix("tcp://").rsplit(":", 1)
        chunk = bytes(2**20)
        for _ in range(3):
            with socket.create_connection((host, int(port))) as attacker:
                attacker.sendall(zmtp_greeting(b"CURVE"))
                try:
                    for _ in range(5):
                        attacker.sendall(b"\x02" + struct.pack(">Q", 60 * 2**20))  # a long frame, not a command
                        for _ in range(60):
                            attacker.sendall(chunk)
                except OSError:  # the engine ended the handshake
                    pass
        assert member.request({"type": "ping"}, timeout=2.0)["type"] == "pong" and process.poll() is None
        growth = status(process.pid)["VmHWM"] - baseline
        report(SECTION, f"CURVE engine, 3 raw connections × 5 × 60 MB frames without a key: "
                        f"peak memory +{growth / 2**20:.0f} MiB")
        assert growth < GROWTH_LIMIT
    finally:
        member.close()
        process.kill()
        process.wait()
