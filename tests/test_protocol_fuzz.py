"""Malformed but correctly signed headers thrown at a running engine: every one is answered, none
crashes or hangs it; then several clients edit at once and each gets every frame (tests/stress.py runs
the same at full scale)."""

from __future__ import annotations

import msgpack
import pytest
from conformance import RawPeer, now_ms, start_engine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stress import clients, fuzz

TYPES = ["hello", "submit", "track", "cancel", "status", "attach", "ping", "shutdown", "teleport", "", "frame"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
headers = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | st.text(max_size=10), "v": st.sampled_from([1, 1, 1, 0, 2, "1", None])},
    optional={
        "id": st.text(max_size=70) | st.integers(-2**63, 2**64 - 1),  # what msgpack can encode
        "job": values, "from_frame": values, "versions": values, "settings": values, "inline": values,
        "frames": values, "masks": values, "control_maps": values, "result_encoding": values,
        "preview": values, "client": values, "part_macs": values, "part_mac": values, "regions": values,
        "source": values,
    },
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    process, info, _ = start_engine(tmp_path_factory.mktemp("fuzz"))
    peer = RawPeer(info)
    yield process, peer, info
    peer.close()
    process.kill()
    process.wait()


def _exchange(peer: RawPeer, header_bytes: bytes, parts: list[bytes]) -> dict:
    body = [header_bytes, *parts]
    peer.send_frames([peer.signature(body), *body])
    while True:
        got = peer.recv(timeout=10)
        assert got is not None, "the engine did not answer"
        if got[0]["type"] not in ("progress", "frame", "matte", "done") and not (got[0]["type"] == "error" and "job" in got[0]):
            return got[0]  # the reply, not the stream of a job a lucky example submitted


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers, parts=st.lists(st.binary(max_size=64), max_size=3))
def test_structured_garbage(engine, header, parts):
    process, peer, _ = engine
    if header.get("type") == "shutdown" and header.get("v") == 1 and isinstance(header.get("id"), str) and 0 < len(header["id"]) <= 64:
        header["type"] = "status"  # a valid shutdown would (rightly) stop the engine under test
    if header.get("type") in ("submit", "track"):
        header["inline"] = True  # never let random paths make the engine read this machine's files
    header.setdefault("ts", now_ms())  # fresh (SPEC.md §2.5), so that the request reaches its handler
    reply = _exchange(peer, msgpack.packb(header, use_bin_type=True), parts)
    assert reply["type"] in ("error", "welcome", "pong", "status", "accepted")
    if reply["type"] == "accepted":  # a submit that happened to be valid: do not leave it running
        peer.request({"v": 1, "type": "cancel", "job": reply["job"]})
    assert process.poll() is None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header_bytes=st.binary(min_size=0, max_size=200))
def test_random_bytes_as_header(engine, header_bytes):
    process, peer, _ = engine
    try:
        decoded = msgpack.unpackb(header_bytes)
    except Exception:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("type") in ("shutdown", "submit", "track"):
        return
    reply = _exchange(peer, header_bytes, [])
    assert reply["type"] in ("error", "pong", "status", "welcome")
    assert process.poll() is None


def test_engine_serves_after_the_fuzzing(engine):
    process, peer, _ = engine
    assert peer.request({"type": "ping"})["type"] == "pong" and process.poll() is None


def test_random_messages_pipelined_then_clients_at_once(engine):
    """Random requests, 16 awaiting replies at a time (SPEC.md §5), each answered once; then 3 clients
    at once, 2 jobs each, every frame of every job."""
    process, peer, info = engine
    assert fuzz(info, process.pid, 2000, seed=1)["messages"] >= 2000
    assert clients(info, 3, 2)["jobs"] == 6
    assert peer.request({"type": "ping"})["type"] == "pong" and process.poll() is None
