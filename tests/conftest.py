"""Shared fixtures: the tiny random pipeline and a synthetic job on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# The inversion cache's default folder lies under the user's cache directory: tests keep theirs apart.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="videograin-test-cache-")


@pytest.fixture(scope="session")
def tiny_pipe():
    from videograin.engine.models import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> str:
    """A `videograin serve` process on the tiny model (1 s heartbeat); yields its connection file."""
    from conformance import start_engine

    process, _, connection = start_engine(tmp_path_factory.mktemp("tiny-engine"), "--heartbeat", "1")
    yield str(connection)
    process.kill()
    process.wait()


@pytest.fixture()
def demo_job(tmp_path: Path) -> Path:
    """A 4-frame, 64×64 two-runner clip with mattes and a job file (5 steps) in a fresh folder."""
    from videograin.engine.demo import write_demo_inputs

    return write_demo_inputs(tmp_path / "input", frames=4, size=64, steps=5)
