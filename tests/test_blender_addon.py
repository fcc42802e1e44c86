"""The Blender add-on in real Blender (bpy from PyPI, headless). Each script runs in its own process:
bpy is one Blender per process, and keeping it apart from torch mirrors real use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


SCRIPTS = Path(__file__).parent / "blender_scripts"
pytest.importorskip("bpy", reason="Blender as a module: pip install -e '.[blender]'")


def run_in_blender(script: str, *args: str, env: dict | None = None) -> None:
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0 and done.stdout.rstrip().endswith("OK"), f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"




def test_register_and_unregister():
    run_in_blender("register_cycle.py")


def test_export_gives_source_pixels_and_mattes_rasterise():
    run_in_blender("export_pixels.py")


def test_round_trip_inserts_a_strip(tiny_engine):
    run_in_blender("round_trip.py", tiny_engine)


def test_cancel_leaves_the_timeline_as_it_was(tiny_engine):
    run_in_blender("cancel.py", tiny_engine)


def test_no_engine_is_a_clear_message():
    run_in_blender("no_engine.py")


def test_built_zip_installs_and_enables(tmp_path):
    from blender_addon.build import build

    archive = build(tmp_path / "dist", ["linux-x64"])
    run_in_blender("install_zip.py", str(archive), env={"BLENDER_USER_RESOURCES": str(tmp_path / "user")})


def test_start_check_and_stop_a_local_engine():
    run_in_blender("local_engine.py")
