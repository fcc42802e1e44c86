"""What the engine's socket lets in and holds per peer (protocol/SPEC.md §1.1, §2.5, §5): CurveZMQ with an
allow-list of client keys, the freshness of HMAC-mode requests, the cap on peers, and how much of a
job's stream may wait in ZeroMQ's queue for one peer.

The cryptography is ZeroMQ's own (CURVE, with pyzmq's ZAP handler `zmq.auth`); this module only
decides which keys, which requests and how many bytes.
"""

from __future__ import annotations

import heapq
import logging
import os
import resource
import threading
from pathlib import Path

import zmq
from zmq.auth import load_certificates
from zmq.auth.thread import ThreadAuthenticator

from videograin.engine.errors import VideograinError
from videograin.protocol import wire
from videograin.protocol.wire import ProtocolError

log = logging.getLogger("videograin.server")

SEND_HWM = 64  # messages queued for one peer before ZeroMQ drops more (progress, replies): a backstop
STREAM_MESSAGES = 16  # frames of a stream queued for one peer at once; the rest wait on the engine's disk
STREAM_BYTES = 32 * 2**20  # and their bytes (one frame always goes, however large)
MAX_REMEMBERED = 2**20  # request (id, ts) pairs kept for the freshness rule: about 150 MB at most


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (each peer holds a descriptor); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY: keep what we have
        log.warning("could not raise the open-file limit from %s to %s: %s", soft, hard, exc)
        return soft
    return hard


# -- CURVE (SPEC.md §1.1) ----------------------------------------------------------------------------

class AllowList:
    """The client public keys a CURVE engine lets in: the one of its own connection file, and every
    certificate (`*.key`, as `videograin keys` or zmq.auth.create_certificates write them) in `folder`,
    read again whenever the folder changes, so keys are added and revoked without a restart.
    pyzmq's ZAP handler calls `callback` from its own thread for each handshake."""

    def __init__(self, own_key: bytes, folder: Path | None) -> None:
        self.own_key = own_key
        self.folder = folder
        self._stamp: int | None = None
        self._keys: dict[bytes, bool] = {}
        self._lock = threading.Lock()

    def callback(self, domain: str, key: bytes) -> bool:
        if key == self.own_key:
            return True
        if self.folder is None:
            return False
        with self._lock:
            try:
                stamp = os.stat(self.folder).st_mtime_ns
                if stamp != self._stamp:
                    self._keys, self._stamp = load_certificates(self.folder), stamp
            except (OSError, ValueError) as exc:  # a folder gone or a broken certificate: let nobody in by it
                log.warning("CURVE allow-list folder %s is unreadable: %s", self.folder, exc)
                self._keys, self._stamp = {}, None
            return bool(self._keys.get(key))


def start_curve(context: zmq.Context, socket: zmq.Socket, allow_folder: Path | None) -> tuple[ThreadAuthenticator, dict[str, str]]:
    """Make `socket` (not yet bound) a CURVE server with fresh keys and start the ZAP handler that checks
    each client's key against the allow-list. Returns the handler and the connection file's `curve` map:
    the engine's public key and a client key pair of its own (allowed)."""
    if not zmq.has("curve"):
        raise VideograinError("this pyzmq's libzmq has no CURVE security: install a pyzmq wheel (they have it)",
                              code="bad_config")
    if allow_folder is not None and not allow_folder.is_dir():
        raise VideograinError(f"CURVE allow-list folder '{allow_folder}' does not exist", code="bad_config")
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    authenticator = ThreadAuthenticator(context, log=logging.getLogger("videograin.server.zap"))
    authenticator.start()
    authenticator.configure_curve_callback("*", AllowList(client_public, allow_folder))
    socket.curve_secretkey = server_secret
    socket.curve_publickey = server_public
    socket.curve_server = True
    return authenticator, {"server_key": server_public.decode(), "public_key": client_public.decode(),
                           "secret_key": client_secret.decode()}


# -- HMAC mode: fresh requests only (SPEC.md §2.5) -----------------------------------------------------

class Freshness:
    """Refuses a request whose `ts` is missing or outside the window, or whose (id, ts) pair was already
    accepted, from whichever peer: a recorded request sent again does nothing."""

    def __init__(self, window_ms: int = wire.FRESHNESS_WINDOW_MS) -> None:
        self.window_ms = window_ms
        self._seen: set[tuple[str, int]] = set()
        self._expiry: list[tuple[int, tuple[str, int]]] = []  # a heap: when each pair may be forgotten

    def check(self, header: dict, now_ms: int) -> None:
        ts, ref = header.get("ts"), header["id"]
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise ProtocolError("stale", "every request needs 'ts', the integer milliseconds since the Unix epoch "
                                         "when it was sent (SPEC.md §2.5)", ref)
        if abs(now_ms - ts) > self.window_ms:
            raise ProtocolError("stale", f"'ts' is {(now_ms - ts) / 1000:.0f} s away from the engine's clock "
                                         f"(at most {self.window_ms / 1000:g} s either way, SPEC.md §2.5)", ref)
        while self._expiry and self._expiry[0][0] < now_ms:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        pair = (ref, ts)
        if pair in self._seen:
            raise ProtocolError("stale", "this request was already received (a replay): nothing was done", ref)
        if len(self._seen) >= MAX_REMEMBERED:
            raise ProtocolError("busy", "too many requests within the freshness window; try again later", ref)
        self._seen.add(pair)
        heapq.heappush(self._expiry, (ts + self.window_ms, pair))


# -- per-peer memory (SPEC.md §5) --------------------------------------------------------------------

class StreamBudget:
    """Frames sent to each peer that ZeroMQ still holds (trackers not yet done): a peer that reads slowly,
    or never, holds at most STREAM_MESSAGES frames or STREAM_BYTES of the engine's memory."""

    def __init__(self) -> None:
        self._in_flight: dict[bytes, list[tuple[zmq.MessageTracker, int]]] = {}

    def room(self, peer: bytes) -> bool:
        held = [(t, n) for t, n in self._in_flight.get(peer, ()) if not t.done]
        if held:
            self._in_flight[peer] = held
        else:
            self._in_flight.pop(peer, None)
        return not held or (len(held) < STREAM_MESSAGES and sum(n for _, n in held) < STREAM_BYTES)

    def sent(self, peer: bytes, tracker: zmq.MessageTracker, nbytes: int) -> None:
        self._in_flight.setdefault(peer, []).append((tracker, nbytes))
