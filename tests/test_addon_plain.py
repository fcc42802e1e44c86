"""The add-on's plain modules (no bpy): job building, the engine link and the edit session against a
real engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pytest
from conftest import limit, wait_for

from videograin.blender_addon import check_report, jobspec, keyframes
from videograin.blender_addon.engine_link import (
    ABSENT,
    ALIVE,
    CONNECTING,
    KEEP_LOGS,
    SILENT,
    EngineError,
    EngineWatch,
    LocalEngine,
    connect,
    shares_disk,
)
from videograin.blender_addon.legacy import legacy_edit, stale_names
from videograin.blender_addon.session import CANCELLED, DONE, FAILED, EditSession, TrackSession, attention_map, slug
from videograin.blender_addon.shots import Shot, describe, eta_text
from videograin.engine.demo import synthetic_clip
from videograin.engine.inputs.mattes import crossing_blobs, iou
from videograin.engine.inputs.media import decode_png, encode_png, list_frames, write_png
from videograin.engine.inputs.media import slug as engine_slug
from videograin.protocol.wire import Message


def test_problems_in_plain_words():
    request = jobspec.EditRequest(prompt="an iron man", source_prompt="", phrases=["iron man", "spider man"])
    assert jobspec.problems(request) == ["The phrase 'spider man' is not in the prompt: each phrase must be words of the prompt."]
    assert jobspec.problems(jobspec.EditRequest(prompt="", source_prompt="", phrases=[]))[:2] == [
        "Write the target prompt: it names every region.", "Add at least one region with its phrase and matte."]


def test_a_check_reply_becomes_a_headline_the_estimate_and_findings_errors_first():
    reply = {"type": "check", "ok": False, "summary": {"estimate": {"text": "about 4 min on cuda (an estimate)"}},
             "warnings": [{"code": "region_vanishes", "message": "region 'wire' vanishes"},
                          {"code": "some_new_code", "message": "a warning this add-on does not know"}],
             "errors": [{"code": "model_unavailable", "message": "weights are nowhere"}]}
    view = check_report.read_reply(reply)
    assert not view.ok and view.headline == "The edit would fail: 1 error." and view.estimate == "about 4 min on cuda (an estimate)"
    assert [(f.code, f.error) for f in view.findings] == [
        ("model_unavailable", True), ("region_vanishes", False), ("some_new_code", False)]
    warned = check_report.read_reply({**reply, "ok": True, "errors": [], "warnings": reply["warnings"][:1]})
    assert warned.ok and warned.headline == "Ready to edit, with 1 warning." and len(warned.findings) == 1
    clean = check_report.read_reply({"ok": True, "errors": [], "warnings": [], "summary": {}})
    assert clean.headline == "Ready to edit: no warnings." and clean.estimate == "" and clean.findings == []


@pytest.mark.parametrize("playhead, shown", [(10, 0), (12, 2), (13, 3), (9, 0), (40, 3)])
def test_the_layout_shows_the_playhead_frame_clamped_into_the_strip(playhead, shown):
    assert check_report.clip_frame(playhead, range(10, 14)) == shown


def test_settings_keep_the_aspect_at_the_working_size():
    request = jobspec.EditRequest(prompt="a cat", source_prompt="", phrases=["cat"], working_size=512, model="tiny")
    mapping = jobspec.settings(request, 1920, 1080)
    assert mapping["source"] == {"width": 512, "height": 288} and mapping["source_prompt"] == "a cat"
    assert mapping["model"] == "tiny" and mapping["modulation"] == {"cross": 1.0, "self": 0.3}
    assert jobspec.working_size(100, 30, 64) == (64, 64)


def test_folder_listing_is_the_engines(tmp_path):
    names = ["frame10.png", "frame2.png", "frame1.PNG", "a.jpg", "B.png", "b1c10.tif", "b1c9.tif", "notes.txt",
             "x.exr", "12.webp", "3.bmp", ".hidden", "clip.mp4", "v2-frame001.jpeg"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert jobspec.folder_frames(str(tmp_path)) == [p.name for p in list_frames(tmp_path)]


def test_image_run_is_a_consecutive_run_of_the_folder(tmp_path):
    for i in range(6):
        (tmp_path / f"f{i}.png").write_bytes(b"")
    (tmp_path / "f10.png").write_bytes(b"")  # natural order: after f5, not after f1
    assert jobspec.image_run(str(tmp_path), ["f2.png", "f3.png", "f4.png"]) == jobspec.FileRun(str(tmp_path), 2, 3, 7)
    assert jobspec.image_run(str(tmp_path), ["f5.png", "f10.png"]) == jobspec.FileRun(str(tmp_path), 5, 2, 7)
    assert jobspec.image_run(str(tmp_path), ["f1.png", "f3.png"]) is None  # a gap the engine would fill
    assert jobspec.image_run(str(tmp_path), ["f3.png", "f2.png"]) is None
    assert jobspec.image_run(str(tmp_path / "gone"), ["f1.png"]) is None


def test_mattes_align_frame_for_frame():
    source = jobspec.FileRun("/clip", 4, 3, 10)
    assert jobspec.aligned(jobspec.FileRun("/mattes", 4, 3, 10), source)  # as long as the source
    assert jobspec.aligned(jobspec.FileRun("/mattes", 0, 3, 3), source)  # one per edited frame
    assert not jobspec.aligned(jobspec.FileRun("/mattes", 0, 3, 10), source)
    assert not jobspec.aligned(jobspec.FileRun("/mattes", 1, 3, 4), source)
    request = jobspec.EditRequest(prompt="a cat and a dog", source_prompt="", phrases=["cat", "dog"])
    mapping = jobspec.with_files(jobspec.settings(request, 64, 48), source,
                                 [jobspec.FileRun("/m1", 4, 3, 10), jobspec.FileRun("/m2", 0, 3, 3)])
    assert mapping["source"] == {"width": 512, "height": 384, "path": "/clip", "start": 4, "count": 3}
    assert mapping["regions"] == [{"phrase": "cat", "mask": "/m1"}, {"phrase": "dog", "mask": "/m2"}]


@pytest.mark.parametrize("address, local", [
    ("ipc:///tmp/videograin.sock", True), ("tcp://127.0.0.1:5571", True), ("tcp://127.8.0.1:5571", True),
    ("tcp://localhost:5571", True), ("tcp://[::1]:5571", True), ("tcp://10.0.0.7:5571", False),
    ("tcp://gpu-box:5571", False), ("tcp://*:5571", False), ("inproc://x", False),
])
def test_an_engine_shares_the_disk_on_loopback_or_ipc(address, local):
    assert shares_disk(address) is local


def _job(steps: int):
    clip, mattes = synthetic_clip(3, 64, 64)
    request = jobspec.EditRequest(prompt="an iron man and a spider man", source_prompt="two men",
                                  phrases=["iron man", "spider man"], steps=steps, working_size=64, model="tiny")
    return jobspec.settings(request, 64, 64), [encode_png(f) for f in clip], [[encode_png(m.astype(np.uint8) * 255) for m in s] for s in mattes]


def _drive(session: EditSession, seconds: float = 60) -> None:
    """Tick the session until it has ended."""
    wait_for(lambda: not session.tick(), f"the session to end (now {session.state})", seconds, every_s=0.02)


def _tick_until(session: EditSession | TrackSession, reached: Callable[[], bool], what: str) -> None:
    """Tick the session until `reached()`; fail at once if it ends first."""

    def ticked() -> bool:
        assert session.tick(), f"the session ended ({session.state}: {session.message}) before {what}"
        return reached()

    wait_for(ticked, what, every_s=0.02)


def test_session_writes_png_frames_then_renames_into_place(tiny_engine, tmp_path):
    session = EditSession(connect(tiny_engine), tmp_path / "result")
    session.submit(*_job(steps=3))
    _drive(session)
    assert session.state == DONE and session.progress == 1.0, session.message
    assert [p.name for p in session.frame_paths()] == ["00000.png", "00001.png", "00002.png"]
    assert session.frame_paths()[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert session.preview is not None and session.summary["random_weights"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    session.close()
    with pytest.raises(EngineError, match="already exists"):
        EditSession(connect(tiny_engine), tmp_path / "result")


def test_session_on_files_the_engine_reads(tiny_engine, tmp_path):
    clip, mattes = synthetic_clip(5, 64, 64)
    for i, frame in enumerate(clip):
        write_png(tmp_path / "clip" / f"{i:03d}.png", frame)
    for k, stack in enumerate(mattes):
        for i, matte in enumerate(stack[1:4]):  # one per edited frame
            write_png(tmp_path / f"matte-{k}" / f"{i}.png", matte.astype(np.uint8) * 255)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    settings, _, _ = _job(steps=2)
    run = jobspec.FileRun(str(tmp_path / "clip"), 1, 3, 5)
    mapping = jobspec.with_files(settings, run, [jobspec.FileRun(str(tmp_path / f"matte-{k}"), 0, 3, 3) for k in range(2)])
    session = EditSession(connect(tiny_engine), tmp_path / "results" / "result", scratch=scratch)
    session.submit_paths(mapping)
    _drive(session)
    assert session.state == DONE, session.message
    assert [p.name for p in session.frame_paths()] == ["00000.png", "00001.png", "00002.png"]
    assert not scratch.exists(), "the exported media outlived the edit"
    session.close()


def test_failed_session_removes_the_folders_it_made(tiny_engine, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "project").mkdir()
    session = EditSession(connect(tiny_engine), tmp_path / "project" / "results" / "deep" / "result", scratch=scratch)
    settings, frames, mattes = _job(steps=2)
    with pytest.raises(EngineError, match="empty"):
        session.submit(settings, frames, [[np.zeros((64, 64), np.uint8)] * 3] * 2)
    assert session.state == FAILED and sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    assert list((tmp_path / "project").iterdir()) == []
    session.close()


def test_cancelled_session_leaves_nothing(tiny_engine, tmp_path):
    session = EditSession(connect(tiny_engine), tmp_path / "result")
    session.submit(*_job(steps=300))
    _tick_until(session, lambda: session.phase in ("invert", "edit"), "the edit started inverting")
    session.cancel()
    _drive(session)
    assert session.state == CANCELLED and list(tmp_path.iterdir()) == []
    session.close()


class ScriptedClient:
    """Plays back engine messages, to reach a failure after some frames have arrived."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages

    def submit(self, *args, **kwargs) -> str:
        return "job-1"

    track = submit

    def poll(self) -> list[Message]:
        messages, self.messages = self.messages, []
        return messages


@pytest.mark.parametrize("keep_partial", [False, True])
def test_failure_after_some_frames_keeps_them_only_when_asked(tmp_path, keep_partial):
    frame = Message({"type": "frame", "job": "job-1", "index": 0, "image": {"part": 0, "encoding": "png"}}, [b"\x89PNG fake"])
    failure = Message({"type": "error", "job": "job-1", "code": "internal", "message": "GPU fell over"})
    session = EditSession(ScriptedClient([frame, failure]), tmp_path / "result", keep_partial=keep_partial)
    session.submit({}, [], [])
    assert session.tick() is False and session.state == FAILED and session.message == "GPU fell over"
    expected = ["result-partial"] if keep_partial else []
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    if keep_partial:
        assert (tmp_path / "result-partial" / "00000.png").read_bytes() == b"\x89PNG fake"


def test_each_preview_is_taken_once(tmp_path):
    preview = {"part": 0, "encoding": "raw", "width": 2, "height": 1, "channels": 3}
    step = Message({"type": "progress", "job": "job-1", "phase": "edit", "step": 5, "total": 10, "preview": preview},
                   [bytes(range(6))])
    client = ScriptedClient([step])
    session = EditSession(client, tmp_path / "result")
    session.submit({}, [], [])
    assert session.take_preview() is None
    session.tick()
    assert session.take_preview().tolist() == [[[0, 1, 2], [3, 4, 5]]] and session.take_preview() is None
    assert session.preview is not None  # the latest stays readable
    client.messages = [step]
    session.tick()
    assert session.take_preview() is not None


def test_watch_finds_an_engine_alive(tiny_engine, tiny_engine_heartbeat_s):
    watch = EngineWatch(tiny_engine)
    assert watch.wait(limit(30)) and watch.state == ALIVE, watch.message
    assert "model tiny" in watch.message and watch.capabilities["heartbeat_s"] == tiny_engine_heartbeat_s
    heard = watch.last_heard
    wait_for(lambda: watch.last_heard != heard, "a heartbeat after the first", 30, every_s=0.1)  # it goes on
    assert watch.alive and watch.ping_s is not None
    watch.close()


def test_watch_never_makes_its_caller_wait(tmp_path):
    missing = EngineWatch(str(tmp_path / "none.json"))
    assert missing.state == ABSENT and "No engine is running" in missing.message  # known before any network
    missing.close()
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps({"address": "tcp://127.0.0.1:9", "key": "00" * 32}))
    watch = EngineWatch(str(dead), timeout_s=1.0)
    assert watch.state == CONNECTING and "Waiting for the engine at tcp://127.0.0.1:9" in watch.message
    assert watch.wait(limit(10)) and watch.state == SILENT and "does not answer" in watch.message
    watch.close()


def test_local_engine_logs_in_its_folder_and_keeps_the_newest(tmp_path):
    python = tmp_path / "python"  # a stand-in that exits at once, as a Python without videograin would
    python.write_text("#!/bin/sh\necho no module named videograin\nexit 2\n")
    python.chmod(0o755)
    logs = []
    for _ in range(KEEP_LOGS + 2):
        engine = LocalEngine(str(python), "", tmp_path)
        engine.process.wait()
        engine.stop()
        logs.append(engine.log_path)
        assert engine.connection_file.parent == tmp_path and engine.log_path.parent == tmp_path / "logs"
    assert sorted((tmp_path / "logs").iterdir()) == logs[-KEEP_LOGS:]
    with pytest.raises(EngineError, match="exited with code 2: no module named videograin"):
        engine.ready()
    with pytest.raises(EngineError, match="Cannot start the engine"):
        LocalEngine(str(tmp_path / "no-python"), "", tmp_path)
    assert sorted((tmp_path / "logs").iterdir()) == logs[-KEEP_LOGS:]


def test_connect_without_engine(tmp_path):
    with pytest.raises(EngineError, match="No engine is running"):
        connect(str(tmp_path / "none.json"))
    with pytest.raises(EngineError, match="No engine configured"):
        connect("")


# -- tracking and attention maps ------------------------------------------------------------------

def test_keyframes_are_the_keyed_frames_inside_the_source_else_the_playhead():
    source = range(10, 20)
    assert keyframes.keyframe_frames(12, [], source, "the mask 'm'") == [12]
    assert keyframes.keyframe_frames(12, [19.0, 4.0, 10.2, 10.0, 25.0], source, "the mask 'm'") == [10, 19]
    with pytest.raises(EngineError, match=r"Move the playhead into the source strip \(frames 10-19\): the image 'p'"):
        keyframes.keyframe_frames(20, [], source, "the image 'p'")
    with pytest.raises(EngineError, match=r"The mask 'm' is keyed on frames 1-5, none within the source strip's 10-19"):
        keyframes.keyframe_frames(12, [1, 5], source, "the mask 'm'")


def test_a_painted_image_is_stretched_to_the_frame():
    half = np.zeros((1024, 1024, 4), np.float32)
    half[512:] = 1.0
    fitted = keyframes.fit_image(half, 64, 48)
    assert fitted.shape == (48, 64, 4) and fitted.dtype == np.float32
    assert fitted[:23].max() == 0 and fitted[25:].min() == 1 and np.all(fitted[24] == fitted[24, 0])
    assert keyframes.fit_image(half, 1024, 1024) is half
    ramp = np.arange(4, dtype=np.float32).reshape(1, 4, 1).repeat(2, 0)
    wide = keyframes.fit_image(ramp, 8, 2)[0, :, 0]
    np.testing.assert_allclose(wide, [0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3])  # linear between pixel centres


def test_attention_folders_are_named_as_the_engine_names_them(tmp_path):
    for phrase in ("Iron Man", "cherry-blossoms!", "  ", "Ünïcode man"):
        assert slug(phrase) == engine_slug(phrase)
    assert attention_map(tmp_path, "Iron Man", 3) == tmp_path / "attention" / "iron_man" / "00003.png"


def _blobs(frames: int = 8):
    clip, truth = crossing_blobs(frames, 128, 96)
    return clip, truth


def test_track_session_writes_a_matte_per_frame_then_renames_into_place(tiny_engine, tmp_path):
    clip, truth = _blobs()
    session = TrackSession(connect(tiny_engine), tmp_path / "results" / "matte")
    session.track(list(clip), {0: truth[0, 0].astype(np.uint8) * 255, 7: truth[0, 7].astype(np.uint8) * 255},
                  name="red blob")
    _drive(session)
    assert session.state == DONE and session.phase == "track" and session.progress == 1.0, session.message
    paths = session.frame_paths()
    assert [p.name for p in paths] == [f"{i:05d}.png" for i in range(8)] and paths[0].parent == tmp_path / "results" / "matte"
    mattes = [decode_png(p.read_bytes())[..., 0] for p in paths]
    assert np.array_equal(mattes[7] == 255, truth[0, 7])
    assert np.mean([iou(m == 255, t) for m, t in zip(mattes, truth[0])]) >= 0.9
    assert session.message.startswith("8 frames in") and sorted(p.name for p in (tmp_path / "results").iterdir()) == ["matte"]
    session.close()


def test_track_session_on_files_the_engine_reads(tiny_engine, tmp_path):
    clip, truth = _blobs()
    for i, frame in enumerate(clip):
        write_png(tmp_path / "clip" / f"{i:03d}.png", frame)
    write_png(tmp_path / "scratch" / "key.png", truth[1, 2].astype(np.uint8) * 255)
    session = TrackSession(connect(tiny_engine), tmp_path / "results" / "matte", scratch=tmp_path / "scratch")
    session.track_paths(jobspec.FileRun(str(tmp_path / "clip"), 1, 5, 8), {1: str(tmp_path / "scratch" / "key.png")})
    _drive(session)
    assert session.state == DONE, session.message
    assert len(session.frame_paths()) == 5 and np.array_equal(decode_png(session.frame_paths()[1].read_bytes())[..., 0] == 255, truth[1, 2])
    assert not (tmp_path / "scratch").exists(), "the exported keyframes outlived the tracking"
    session.close()


def test_a_refused_or_cancelled_track_leaves_nothing(tiny_engine, tmp_path):
    clip, truth = _blobs()
    session = TrackSession(connect(tiny_engine), tmp_path / "results" / "matte")
    with pytest.raises(EngineError, match="keyframe frame 8 is outside the clip"):
        session.track(list(clip), {8: truth[0, 0]})
    assert session.state == FAILED and list(tmp_path.iterdir()) == []
    session.close()
    clip, truth = crossing_blobs(100, 320, 240)
    session = TrackSession(connect(tiny_engine), tmp_path / "results" / "matte")
    session.track(list(clip), {0: truth[0, 0]})
    _tick_until(session, lambda: session.phase == "track" and session.step >= 2, "the tracking reached frame 2")
    session.cancel()
    _drive(session)
    assert session.state == CANCELLED and list(tmp_path.iterdir()) == []
    session.close()


def test_a_track_that_lost_its_region_says_where_to_add_a_keyframe(tmp_path):
    matte = Message({"type": "matte", "job": "job-1", "index": 0, "mattes": [{"part": 0, "encoding": "png"}]},
                    [b"\x89PNG fake"])
    done = Message({"type": "done", "job": "job-1", "frames": 1, "seconds": 2.0, "empty_frames": [3]})
    session = TrackSession(ScriptedClient([matte, done]), tmp_path / "matte")
    session.track([], {})
    assert session.tick() is False and session.state == DONE
    assert session.message == "1 frames in 2 s; the region was lost on 3 frames: add a keyframe there"
    assert (tmp_path / "matte" / "00000.png").read_bytes() == b"\x89PNG fake"


def test_edit_session_keeps_attention_maps_beside_its_frames(tiny_engine, tmp_path):
    session = EditSession(connect(tiny_engine), tmp_path / "result")
    settings, frames, mattes = _job(steps=2)
    session.submit(settings, frames, mattes, attention_maps=True)
    _drive(session)
    assert session.state == DONE, session.message
    assert [p.name for p in session.frame_paths()] == ["00000.png", "00001.png", "00002.png"]
    for phrase in ("iron man", "spider man"):
        maps = sorted(attention_map(tmp_path / "result", phrase, 0).parent.iterdir())
        assert [p.name for p in maps] == ["00000.png", "00001.png", "00002.png"]
        assert decode_png(maps[0].read_bytes()).shape == (64, 64, 3)
    session.close()


def test_a_region_may_have_no_phrase_and_still_counts():
    request = jobspec.EditRequest(prompt="an iron man under cherry blossoms", source_prompt="",
                                  phrases=["iron man", "", "  "], background_phrase="cherry blossoms")
    assert jobspec.problems(request) == []
    assert jobspec.settings(request, 64, 64)["regions"] == [{"phrase": "iron man"}, {"phrase": ""}, {"phrase": "  "}]
    twice = jobspec.EditRequest(prompt="an iron man", source_prompt="", phrases=["iron man", "Iron Man", ""])
    assert jobspec.problems(twice) == ["Two regions share a phrase: give each its own words."]


def _shot(session, started: float = 0.0) -> Shot:
    return Shot("Scene", "key", "hero", session, "engine.json", finish=lambda scene, shot: None, started=started)


def test_a_shot_says_its_state_progress_and_time_to_go(tmp_path):
    def progress(step: int, eta_s=None) -> Message:
        return Message({"type": "progress", "job": "job-1", "phase": "edit", "step": step, "total": 10, "eta_s": eta_s})

    client = ScriptedClient([])
    session = EditSession(client, tmp_path / "result")
    session.submit({}, [], [])
    shot = _shot(session, started=time.monotonic() - 40.0)
    assert shot.active and shot.state == "queued" and shot.eta_s() is None and describe(shot) == "Queued on the engine"
    client.messages = [progress(5)]  # no estimate from the engine: the pace so far (40 s for 2/3 of the job)
    session.tick()
    assert shot.eta_s(now=shot.started + 40.0) == pytest.approx(20.0) and shot.state == "edit"
    client.messages = [progress(6, eta_s=75.0)]  # the engine's own estimate wins
    session.tick()
    assert shot.eta_s() == 75.0 and describe(shot) == "edit 6/10, about 1 min 15 s to go"
    session.fail("The engine exited (code -9)")
    assert not shot.active and shot.state == FAILED and shot.eta_s() is None
    assert describe(shot) == "Failed: The engine exited (code -9)" and not list(tmp_path.iterdir())
    assert eta_text(None) == "" and eta_text(59.6) == "1 min 00 s" and eta_text(7) == "7 s"


def test_an_old_scene_edit_is_found_with_its_source_and_result():
    stored = {"connection_file": "e.json", "prompt": "an iron man", "regions": ["region group"], "steps": 7,
              "source_strip_key": "k1", "source_strip_name": "hero", "result_strip": "hero edit", "status": "Done",
              "check_findings": []}
    found = legacy_edit(stored)
    assert found.values == {"prompt": "an iron man", "regions": ["region group"], "steps": 7}
    assert (found.source_key, found.source_name, found.result_name) == ("k1", "hero", "hero edit")
    assert stale_names(stored) == ["prompt", "regions", "steps", "source_strip_key", "source_strip_name", "result_strip",
                                   "status", "check_findings"]
    assert legacy_edit({"connection_file": "e.json", "status": "Engine ready"}) is None  # nothing to move
    assert legacy_edit({"prompt": "a cat"}).source_key == ""  # the edit was of the active strip


def test_plain_modules_need_no_bpy_and_the_bpy_layer_has_no_import_cycle():
    import ast
    import subprocess
    import sys
    from pathlib import Path

    plain = ("check_report", "engine_link", "jobspec", "keyframes", "legacy", "session", "shots", "watches")
    blocked = "import sys; sys.modules['bpy'] = None; " + "; ".join(f"import videograin.blender_addon.{m}" for m in plain)
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    imports: dict[str, set[str]] = {}
    for path in Path(jobspec.__file__).parent.glob("*.py"):
        relative = [node for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.level == 1]
        imports[path.stem] = {node.module.split(".")[0] if node.module else alias.name
                              for node in relative for alias in node.names}

    def reaches(start: str, goal: str, seen: frozenset) -> bool:
        return any(name == goal or (name not in seen and reaches(name, goal, seen | {name}))
                   for name in imports.get(start, ()))

    assert imports["properties"] and not [name for name in imports if reaches(name, name, frozenset())], imports


def test_working_sizes_fit_the_engines_model():
    assert jobspec.working_size(1920, 1080, 512) == (512, 288)
    assert jobspec.working_size(1920, 1080, 512, 16) == (512, 288)
    assert jobspec.working_size(1280, 720, 500, 16) == (496, 288)  # 500 × 281 → multiples of 16
    assert jobspec.size_multiple({"family": {"name": "wan", "size_multiple": 16}}) == 16
    assert jobspec.size_multiple({}) == 8 and jobspec.size_multiple(None) == 8
    request = jobspec.EditRequest(prompt="a cat", source_prompt="", phrases=["cat"])
    assert jobspec.settings(request, 100, 60)["control"]["type"] == "auto"  # the engine's model decides
