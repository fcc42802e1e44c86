"""The add-on's plain modules (no bpy): job building and the edit session against a real engine."""

from __future__ import annotations

import time

import numpy as np
import pytest

from blender_addon import jobspec
from blender_addon.engine_link import EngineError, connect
from blender_addon.session import CANCELLED, DONE, EditSession
from conformance import start_engine
from engine.demo import synthetic_clip
from engine.media import encode_png


def test_problems_in_plain_words():
    request = jobspec.EditRequest(prompt="an iron man", source_prompt="", phrases=["iron man", "spider man"])
    assert jobspec.problems(request) == ["The phrase 'spider man' is not in the prompt: each phrase must be words of the prompt."]
    assert jobspec.problems(jobspec.EditRequest(prompt="", source_prompt="", phrases=[]))[:2] == [
        "Write the target prompt: it names every region.", "Add at least one region with its phrase and matte."]


def test_settings_keep_the_aspect_at_the_working_size():
    request = jobspec.EditRequest(prompt="a cat", source_prompt="", phrases=["cat"], working_size=512, model="tiny")
    mapping = jobspec.settings(request, 1920, 1080)
    assert mapping["source"] == {"width": 512, "height": 288} and mapping["source_prompt"] == "a cat"
    assert mapping["model"] == "tiny" and mapping["modulation"] == {"cross": 1.0, "self": 0.3}
    assert jobspec.working_size(100, 30, 64) == (64, 64)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    process, _, connection = start_engine(tmp_path_factory.mktemp("addon-engine"))
    yield str(connection)
    process.kill()
    process.wait()


def _job(steps: int):
    clip, mattes = synthetic_clip(3, 64, 64)
    request = jobspec.EditRequest(prompt="an iron man and a spider man", source_prompt="two men",
                                  phrases=["iron man", "spider man"], steps=steps, working_size=64, model="tiny")
    return jobspec.settings(request, 64, 64), [encode_png(f) for f in clip], [[encode_png(m.astype(np.uint8) * 255) for m in s] for s in mattes]


def _drive(session: EditSession, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while session.tick():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_session_writes_png_frames_then_renames_into_place(engine, tmp_path):
    session = EditSession(connect(engine), tmp_path / "result")
    session.submit(*_job(steps=3))
    _drive(session)
    assert session.state == DONE and session.progress == 1.0
    assert [p.name for p in session.frame_paths()] == ["00000.png", "00001.png", "00002.png"]
    assert session.frame_paths()[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert session.preview is not None and session.summary["random_weights"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    session.close()
    with pytest.raises(EngineError, match="already exists"):
        EditSession(connect(engine), tmp_path / "result")


@pytest.mark.parametrize("keep_partial", [False, True])
def test_cancelled_session_leaves_nothing_unless_asked(engine, tmp_path, keep_partial):
    session = EditSession(connect(engine), tmp_path / "result", keep_partial=keep_partial)
    session.submit(*_job(steps=300))
    while session.phase not in ("invert", "edit"):
        session.tick()
        time.sleep(0.02)
    session.cancel()
    _drive(session)
    assert session.state == CANCELLED
    assert list(tmp_path.iterdir()) == []  # nothing decoded yet: even keep_partial has nothing to keep
    session.close()


def test_connect_without_engine(tmp_path):
    with pytest.raises(EngineError, match="No engine is running"):
        connect(str(tmp_path / "none.json"))
    with pytest.raises(EngineError, match="No engine configured"):
        connect("")
