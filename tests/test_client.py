"""The reference client: blocking and non-blocking use, and clear errors when no engine answers."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
from conftest import limit, wait_for

from videograin.engine.demo import DEMO_PROMPT, synthetic_clip
from videograin.protocol.client import EngineClient, EngineError, frame_image
from videograin.protocol.wire import new_key

SETTINGS = {"source_prompt": "two men", "prompt": DEMO_PROMPT, "steps": 3, "model": "tiny",
            "source": {"width": 64, "height": 64}, "regions": [{"phrase": "iron man"}, {"phrase": "spider man"}]}


def test_blocking_events(tiny_engine, tiny_engine_heartbeat_s):
    client = EngineClient(tiny_engine)
    try:
        assert client.hello()["device"] == "cpu" and client.heartbeat_s == tiny_engine_heartbeat_s
        clip, mattes = synthetic_clip(3, 64, 64)
        job = client.submit(SETTINGS, clip, mattes)
        messages = list(client.events(job))
        frames = [frame_image(m) for m in messages if m.type == "frame"]
        assert len(frames) == 3 and frames[0].shape == (64, 64, 3) and messages[-1].type == "done"
        previews = [frame_image(m, "preview") for m in messages if m.type == "progress" and "preview" in m.header]
        assert previews and previews[0].shape[2] == 3
    finally:
        client.close()


def test_poll_never_blocks_and_keeps_the_heartbeat(tiny_engine):
    client = EngineClient(tiny_engine)
    try:
        client.hello()
        clip, mattes = synthetic_clip(2, 64, 64)
        job = client.submit({**SETTINGS, "steps": 30}, clip, mattes)
        seen, polls = [], []

        def ended() -> bool:
            started = time.perf_counter()
            seen.extend(client.poll())  # what a Blender timer does on the main thread
            polls.append(time.perf_counter() - started)
            return any(m.type in ("done", "error") for m in seen)

        wait_for(ended, "the job's done or error", 120, every_s=0.01)
        assert max(polls) < limit(0.2)
        assert seen[-1].type == "done" and seen[-1].header["job"] == job
        assert client.status(job)[0]["state"] == "done"
    finally:
        client.close()


def test_engine_errors_raise_with_their_code(tiny_engine):
    client = EngineClient(tiny_engine)
    try:
        with pytest.raises(EngineError) as caught:
            client.cancel("job-that-never-was")
        assert caught.value.code == "unknown_job"
    finally:
        client.close()


def test_a_part_past_the_engines_limit_is_refused_before_it_is_sent(tiny_engine):
    """Past the frame cap the engine would close the connection without a word (SPEC.md §5): the client
    says what is too large instead, and goes on serving."""
    client = EngineClient(tiny_engine)
    try:
        largest = client.hello()["limits"]["max_part_bytes"]
        clip, mattes = synthetic_clip(2, 64, 64)
        oversized = np.zeros((largest // (64 * 3) + 1, 64, 3), np.uint8)  # one row past the limit
        with pytest.raises(EngineError, match=f"not sent: a part of {oversized.nbytes} bytes is over {largest}") as caught:
            client.submit({**SETTINGS, "source": {"width": 64, "height": oversized.shape[0]}}, [oversized, clip[1]], mattes)
        assert caught.value.code == "too_large"
        assert client.ping() is not None
    finally:
        client.close()


def test_no_engine_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="cannot read connection file") as caught:
        EngineClient(tmp_path / "missing.json")
    assert caught.value.code == "no_engine"
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps({"address": "tcp://127.0.0.1:9", "key": new_key()}))
    client = EngineClient(dead)
    try:
        started = time.monotonic()
        with pytest.raises(EngineError, match="is it running"):
            client.hello(timeout_s=1)
        assert time.monotonic() - started < 3
    finally:
        client.close()


def test_attention_maps_on_an_engine_are_refused_before_anything_runs(tiny_engine, demo_job, tmp_path, capsys):
    from videograin.engine.cli import main

    out = tmp_path / "out"
    assert main(["edit", str(demo_job), "--out", str(out), "--engine", tiny_engine, "--attention-maps"]) == 2
    assert "--attention-maps" in capsys.readouterr().err and not out.exists()


def test_cli_edit_through_the_engine_matches_in_process(tiny_engine, demo_job, tmp_path):
    import subprocess
    import sys

    def run(*extra):
        out = tmp_path / f"out{len(extra)}"
        done = subprocess.run([sys.executable, "-m", "videograin", "edit", str(demo_job), "--out", str(out),
                               "--device", "cpu", *extra], capture_output=True, text=True, timeout=limit(300))
        assert done.returncode == 0, done.stderr
        return np.stack([cv2.imread(str(p)) for p in sorted((out / "frames").iterdir())]).astype(int), out

    remote, remote_out = run("--engine", str(tiny_engine))
    local, local_out = run()
    assert remote.shape == local.shape == (4, 64, 64, 3)
    assert np.array_equal(remote, local)
    remote_report, local_report = (json.loads((out / "result.json").read_text()) for out in (remote_out, local_out))
    assert remote_report["engine"].startswith("tcp://127.0.0.1:")
    assert remote_report["warp_error"] == local_report["warp_error"] is not None  # what `done` carries, kept


def test_client_notices_a_dead_engine(tmp_path):
    from conformance import start_engine

    process, _, connection = start_engine(tmp_path, "--heartbeat", "0.5")
    client = EngineClient(connection)
    try:
        client.hello()
        process.kill()
        process.wait()
        deadline = time.monotonic() + limit(10)
        with pytest.raises(EngineError) as caught:
            while time.monotonic() < deadline:
                client.poll(timeout_s=0.1)
        assert caught.value.code == "engine_gone"
    finally:
        client.close()


def test_ctrl_c_on_a_remote_edit_cancels_the_engine_job(tiny_engine, tmp_path):
    import signal
    import subprocess
    import sys

    from conformance import interruptible

    from videograin.engine.demo import write_demo_inputs

    job_file = write_demo_inputs(tmp_path / "input", frames=2, size=64, steps=400)
    client = EngineClient(tiny_engine)
    client.hello()
    known = {j["job"] for j in client.status()}
    edit = subprocess.Popen([sys.executable, "-m", "videograin", "edit", str(job_file), "--out", str(tmp_path / "out"),
                             "--engine", str(tiny_engine)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    try:
        def our_job_inverting() -> list[dict]:
            assert edit.poll() is None, edit.stderr.read()
            return [j for j in client.status() if j["job"] not in known and j["phase"] == "invert"]

        ours = wait_for(our_job_inverting, "the edit's job to invert on the engine", every_s=0.1)
        edit.send_signal(signal.SIGINT)
        assert edit.wait(timeout=limit(120)) == 130  # a cancel takes a step
        wait_for(lambda: client.status(ours[0]["job"])[0]["state"] == "cancelled", "the engine to cancel the job", 30,
                 every_s=0.1)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    finally:
        client.close()
        if edit.poll() is None:
            edit.kill()


def test_a_killed_engine_is_reported_and_its_files_cleaned_up(tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    from conformance import ROOT, start_engine

    from videograin.protocol import wire

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    process, info, connection = start_engine(tmp_path, env=env)
    try:
        # A second engine over a running engine's connection file refuses to start.
        second = subprocess.run([sys.executable, "-m", "videograin", "serve", "--model", "tiny", "--device", "cpu",
                                 "--connection-file", str(connection)], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=limit(120))
        assert second.returncode == 2 and f"an engine (pid {process.pid}) is running" in second.stderr
        assert json.loads(connection.read_text())["pid"] == process.pid
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    left = list(scratch.glob(f"videograin-results-{process.pid}-*"))
    assert connection.exists() and len(left) == 1  # what SIGKILL leaves behind
    with pytest.raises(EngineError, match=rf"engine not running \(stale connection file of pid {process.pid}\)") as caught:
        EngineClient(connection)
    assert caught.value.code == "no_engine"
    from videograin.blender_addon.engine_link import connect

    with pytest.raises(EngineError, match=rf"stale connection file of pid {process.pid}.*'Start Engine'"):
        connect(str(connection))  # the add-on says why, and what to do
    monkeypatch.setattr(wire, "DEFAULT_CONNECTION_FILE", connection)  # where a client looks by default
    with pytest.raises(EngineError, match="stale connection file"):
        EngineClient()
    successor, info, _ = start_engine(tmp_path, env=env)
    try:
        assert info["pid"] == successor.pid and not left[0].exists()
        assert len(list(scratch.glob("videograin-results-*"))) == 1  # the successor's own
        client = EngineClient()
        assert client.hello(timeout_s=10)["device"] == "cpu"
        client.close()
    finally:
        successor.kill()
        successor.wait()


def test_the_client_attaches_again_after_its_own_silence(tiny_engine, tiny_engine_heartbeat_s):
    """A GUI thread that blocks longer than 3 heartbeats loses its stream (SPEC.md §4); the next poll()
    attaches again and the stream ends complete, each frame once."""
    client, other = EngineClient(tiny_engine), EngineClient(tiny_engine)
    try:
        client.hello()
        other.hello()
        clip, mattes = synthetic_clip(3, 64, 64)
        blocker = other.submit({**SETTINGS, "steps": 400}, clip[:2], mattes[:, :2])
        job = client.submit(SETTINGS, clip, mattes)  # queued behind the blocker
        time.sleep(3.5 * tiny_engine_heartbeat_s)  # the client is blocked: no poll, no heartbeat
        other.cancel(blocker)
        # The engine streams the queued job's frames, or tries to, while the client is silent.
        wait_for(lambda: other.status(job)[0]["frames_ready"] >= 1, "the queued job's first frame", 180)
        messages = list(client.events(job, timeout_s=limit(60)))
        assert [m.header["index"] for m in messages if m.type == "frame"] == [0, 1, 2]
        assert messages[-1].type == "done"
    finally:
        client.close()
        other.close()


def test_a_client_without_part_macs_signs_whole_messages(tiny_engine, monkeypatch):
    from videograin.protocol import wire

    monkeypatch.setattr(wire, "PART_MACS", ())  # as in a plug-in shipped without `cryptography`
    client = EngineClient(tiny_engine)
    try:
        client.hello()
        clip, mattes = synthetic_clip(2, 64, 64)
        job = client.submit(SETTINGS, clip, mattes)
        messages = list(client.events(job))  # wire.unpack would drop part-MAC messages now
        assert sum(m.type == "frame" for m in messages) == 2 and messages[-1].type == "done"
    finally:
        client.close()
