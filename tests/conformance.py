"""Protocol v1 from the spec alone: a raw peer that speaks the wire format with pyzmq + msgpack + hmac,
and a running engine subprocess to talk to. Deliberately shares no code with protocol/."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgpack
import numpy as np
import zmq
from conftest import limit, wait_for
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[1]


GMAC = "gmac-aes256"


def now_ms() -> int:
    """A request's `ts`: milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


class RawPeer:
    """A DEALER that signs as SPEC.md §2 says: whole-message HMAC, or (`part_mac`) HMAC over the header
    plus one GMAC tag per part. It keeps its own heartbeat in `recv` (SPEC.md §4)."""

    def __init__(self, info: dict, part_mac: bool = False, heartbeat_s: float = 0.5, send_timeout_s: float = 120.0) -> None:
        self.key = info["key"].encode()
        self.part_mac = part_mac
        self.heartbeat_s = heartbeat_s
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A DEALER with no connection to hand a message to blocks in send (a peer the engine refuses at its
        # CURVE handshake has none): a send gives up with zmq.Again rather than hang the test.
        self.socket.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        if info.get("curve"):  # CURVE mode (SPEC.md §1.1): the client's keys and the engine's public key
            self.socket.curve_serverkey = info["curve"]["server_key"].encode()
            self.socket.curve_publickey = info["curve"]["public_key"].encode()
            self.socket.curve_secretkey = info["curve"]["secret_key"].encode()
        self.socket.connect(info["address"])
        self.last_sent = time.monotonic()
        self.heartbeats: set[str] = set()

    def signature(self, frames: list[bytes]) -> bytes:
        return hmac.new(self.key, b"".join(frames), hashlib.sha256).hexdigest().encode()

    def tags(self, nonce: bytes, parts: list[bytes]) -> list[str]:
        message_key = hmac.new(self.key, b"videograin-part-mac-v1" + nonce, hashlib.sha256).digest()
        return [AESGCM(message_key).encrypt(i.to_bytes(12, "big"), b"", bytes(p)).hex() for i, p in enumerate(parts)]

    def send_frames(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)
        self.last_sent = time.monotonic()

    def body(self, header: dict, parts: list[bytes] = ()) -> list[bytes]:
        """Frames after the signature; with part MACs, the header lists a tag per part. A request is
        stamped with its `ts` (SPEC.md §2.5) unless it names one."""
        header = {"ts": now_ms(), **header}
        if self.part_mac and parts:
            nonce = os.urandom(16)
            header = {**header, "part_mac": {"scheme": GMAC, "nonce": nonce.hex(), "tags": self.tags(nonce, parts)}}
        return [msgpack.packb(header), *parts]

    def sign_body(self, body: list[bytes]) -> bytes:
        return self.signature(body[:1] if self.part_mac and len(body) > 1 else body)

    def send(self, header: dict, parts: list[bytes] = (), raw_header: bytes | None = None) -> str:
        header = {"v": 1, "id": uuid.uuid4().hex[:16], **header}
        body = [raw_header, *parts] if raw_header is not None else self.body(header, parts)
        self.send_frames([self.sign_body(body), *body])
        return header["id"]

    def recv_frames(self, timeout: float = 10.0) -> list[bytes] | None:
        """The next message's frames, unverified. Pings while waiting, and the pongs to those pings are
        not returned."""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() - self.last_sent >= self.heartbeat_s:
                self.heartbeats.add(self.send({"type": "ping"}))
            wait = min(deadline - time.monotonic(), self.heartbeat_s / 2)
            if wait <= 0:
                return None
            if not self.socket.poll(int(wait * 1000)):
                continue
            frames = self.socket.recv_multipart()
            header = msgpack.unpackb(frames[1])
            if header.get("type") == "pong" and header.get("ref") in self.heartbeats:
                self.heartbeats.discard(header["ref"])
                continue
            return frames

    def recv(self, timeout: float = 10.0) -> tuple[dict, list[bytes]] | None:
        """The next message, verified in whichever signing form the engine chose."""
        frames = self.recv_frames(timeout)
        if frames is None:
            return None
        signature, *body = frames
        header = msgpack.unpackb(body[0])
        if len(body) > 1 and hmac.compare_digest(signature, self.signature(body[:1])):
            mac = header["part_mac"]
            assert mac["scheme"] == GMAC and mac["tags"] == self.tags(bytes.fromhex(mac["nonce"]), body[1:]), "bad part MAC"
        else:
            assert hmac.compare_digest(signature, self.signature(body)), "engine message badly signed"
        return header, body[1:]

    def request(self, header: dict, parts: list[bytes] = (), timeout: float = 10.0) -> dict:
        return self.request_parts(header, parts, timeout)[0]

    def request_parts(self, header: dict, parts: list[bytes] = (), timeout: float = 10.0) -> tuple[dict, list[bytes]]:
        """The reply's header and parts; stream messages that arrive meanwhile are dropped. `timeout` is
        what a quiet machine needs (scaled by `limit`)."""
        msg_id = self.send(header, parts)
        timeout = limit(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.recv(deadline - time.monotonic())
            if got is None:
                break
            if got[0].get("ref") == msg_id:
                return got
        raise AssertionError(f"no reply to {header.get('type')} within {timeout:.0f} s")

    def close(self) -> None:
        self.socket.close(linger=0)


def interruptible() -> None:
    """`preexec_fn` for a child that a test interrupts with SIGINT: the default action back, as a shell
    in the foreground gives it. A shell running the tests in the background ignores SIGINT, children
    inherit that, and Python then never turns SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_engine(folder: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, dict, Path]:
    """Start `videograin serve` on the tiny model; returns the process, its connection info and file."""
    connection = folder / "engine.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "videograin", "serve", "--model", "tiny", "--device", "cpu",
         "--connection-file", str(connection), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )

    def started() -> dict | None:
        assert process.poll() is None, f"engine did not start: {process.stdout.read()}"
        info = _connection_info(connection)
        return info if info and info.get("pid") == process.pid else None  # not a stale one

    try:
        info = wait_for(started, "the engine to write its connection file", 120, every_s=0.1)
    except BaseException:
        process.kill()
        raise
    return process, info, connection


def _connection_info(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def inline_job(frames: int = 4, size: int = 64, steps: int = 3, **settings) -> tuple[dict, list[bytes]]:
    """A submit header (without v/id) and its parts: raw RGB frames and 1-channel mattes."""
    from videograin.engine.demo import DEMO_PROMPT, synthetic_clip

    clip, mattes = synthetic_clip(frames, size, size)
    parts: list[bytes] = []

    def image(array: np.ndarray) -> dict:
        parts.append(np.ascontiguousarray(array).tobytes())
        channels = 1 if array.ndim == 2 else array.shape[2]
        return {"part": len(parts) - 1, "encoding": "raw", "width": array.shape[1], "height": array.shape[0], "channels": channels}

    header = {
        "type": "submit",
        "inline": True,
        "settings": {
            "source_prompt": "two men jogging", "prompt": DEMO_PROMPT, "steps": steps,
            "source": {"width": size, "height": size}, "model": "tiny",
            "regions": [{"phrase": "iron man"}, {"phrase": "spider man"}], **settings,
        },
        "frames": [image(f) for f in clip],
        "masks": [[image(m.astype(np.uint8) * 255) for m in stack] for stack in mattes],
    }
    return header, parts


def collect_stream(peer: RawPeer, job: str, timeout: float = 120.0) -> list[tuple[dict, list[bytes]]]:
    """Every stream message of `job` until its `done` or job `error`, within `limit(timeout)`."""
    timeout = limit(timeout)
    stream, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = peer.recv(deadline - time.monotonic())
        if got is None:
            break
        if got[0].get("job") == job and got[0]["type"] in ("progress", "frame", "matte", "attention", "done", "error"):
            stream.append(got)
            if got[0]["type"] in ("done", "error"):
                return stream
    raise AssertionError(f"stream of {job} did not end within {timeout:.0f} s: {[m[0]['type'] for m in stream]}")
