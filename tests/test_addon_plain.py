"""The add-on's plain modules (no bpy): job building and the edit session against a real engine."""

from __future__ import annotations

import time

import numpy as np
import pytest

from videograin.blender_addon import jobspec
from videograin.blender_addon.engine_link import EngineError, connect
from videograin.blender_addon.session import CANCELLED, DONE, FAILED, EditSession
from videograin.engine.demo import synthetic_clip
from videograin.engine.inputs.media import encode_png
from videograin.protocol.wire import Message


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


def test_session_writes_png_frames_then_renames_into_place(tiny_engine, tmp_path):
    session = EditSession(connect(tiny_engine), tmp_path / "result")
    session.submit(*_job(steps=3))
    _drive(session)
    assert session.state == DONE and session.progress == 1.0
    assert [p.name for p in session.frame_paths()] == ["00000.png", "00001.png", "00002.png"]
    assert session.frame_paths()[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert session.preview is not None and session.summary["random_weights"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    session.close()
    with pytest.raises(EngineError, match="already exists"):
        EditSession(connect(tiny_engine), tmp_path / "result")


def test_cancelled_session_leaves_nothing(tiny_engine, tmp_path):
    session = EditSession(connect(tiny_engine), tmp_path / "result")
    session.submit(*_job(steps=300))
    while session.phase not in ("invert", "edit"):
        session.tick()
        time.sleep(0.02)
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


def test_connect_without_engine(tmp_path):
    with pytest.raises(EngineError, match="No engine is running"):
        connect(str(tmp_path / "none.json"))
    with pytest.raises(EngineError, match="No engine configured"):
        connect("")
