"""The Blender add-on in real Blender (bpy from PyPI, headless). Each script runs in its own process:
bpy is one Blender per process, and keeping it apart from torch mirrors real use.

Every test runs in each Blender found: bpy 5.0 in this venv, and 4.5 LTS in `.venv-blender45` when it
exists (`.ci/run` makes it; see the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import limit, slowness

SCRIPTS = Path(__file__).parent / "blender_scripts"
BLENDER_45 = Path(__file__).parents[1] / ".venv-blender45" / "bin" / "python"
pytest.importorskip("bpy", reason="Blender as a module: pip install -e '.[blender]'")


@pytest.fixture(params=[
    pytest.param(sys.executable, id="blender-5.0"),
    pytest.param(str(BLENDER_45), id="blender-4.5", marks=pytest.mark.skipif(
        not BLENDER_45.exists(), reason="no .venv-blender45: python3 -m venv .venv-blender45 && "
        ".venv-blender45/bin/pip install -r tests/blender-4.5.txt && .venv-blender45/bin/pip install --no-deps -e .")),
])
def blender_python(request) -> str:
    return request.param


@pytest.fixture
def run_in_blender(blender_python: str, tmp_path: Path):
    def run(script: str, *args: str, env: dict | None = None) -> str:
        """Run a script in Blender; returns what Blender printed."""
        env = {
            **os.environ,
            "VIDEOGRAIN_ENGINE_PYTHON": sys.executable,  # the engine the add-on starts: Blender's Python has no torch
            "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user"),  # the add-on's logs stay out of the home folder
            "VIDEOGRAIN_TEST_SLOWNESS": str(slowness()),  # the scripts' limits scale as the tests' do
            **(env or {}),
        }
        done = subprocess.run([blender_python, str(SCRIPTS / script), *args], capture_output=True, text=True,
                              timeout=limit(300), env=env)
        assert done.returncode == 0 and done.stdout.rstrip().endswith("OK"), \
            f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr
    return run


def test_register_and_unregister(run_in_blender):
    run_in_blender("register_cycle.py")


def test_export_gives_source_pixels_and_mattes_rasterise(run_in_blender):
    output = run_in_blender("export_pixels.py")
    assert "user count error" not in output and "user decrement error" not in output, output[-3000:]


def test_plain_strips_are_sent_as_files_and_others_rendered(run_in_blender):
    run_in_blender("export_routes.py")


def test_script_edit_waits_and_inserts_a_strip(run_in_blender, tiny_engine):
    run_in_blender("round_trip.py", tiny_engine)


def test_cancel_leaves_the_timeline_as_it_was_and_previews_go(run_in_blender, tiny_engine):
    run_in_blender("cancel.py", tiny_engine)


def test_track_matte_gives_a_matte_strip_that_edits_and_attention_maps_per_region(run_in_blender, tiny_engine):
    run_in_blender("track_matte.py", tiny_engine)


def test_track_matte_keyframes_refusals_and_cancel(run_in_blender, tiny_engine):
    run_in_blender("track_errors.py", tiny_engine)


def test_check_shows_the_layout_of_the_playhead_frame_and_the_warnings(run_in_blender, tiny_engine):
    from videograin.engine.check import CELL, GAP, MARGIN

    run_in_blender("check_layout.py", tiny_engine, str(MARGIN + CELL + GAP))


def test_each_strip_keeps_its_own_edit_through_save_rename_move_duplicate_and_paste(run_in_blender):
    run_in_blender("strip_edits.py")


def test_a_file_of_the_previous_version_opens_with_its_edit_on_its_strip(run_in_blender):
    run_in_blender("old_file.py")


def test_edit_selected_queues_the_checked_strips_each_result_above_its_own_and_re_edits_keep_takes(
        run_in_blender, tiny_engine):
    run_in_blender("edit_selected.py", tiny_engine)


def test_renamed_strips_still_edit(run_in_blender, tiny_engine):
    run_in_blender("renamed.py", tiny_engine)


def test_results_survive_a_moved_project_and_unsaved_files_ask_where(run_in_blender, tiny_engine):
    run_in_blender("results_folder.py", tiny_engine)


def test_no_engine_is_a_clear_message_without_waiting(run_in_blender):
    run_in_blender("no_engine.py")


def test_built_zip_installs_and_enables(run_in_blender, tmp_path, extension_wheel_cache):
    from videograin.blender_addon.build import build

    [archive] = build(tmp_path / "dist", ["linux-x64"], wheel_cache=extension_wheel_cache)
    run_in_blender("install_zip.py", str(archive), env={"BLENDER_USER_RESOURCES": str(tmp_path / "user")})


def test_start_check_and_stop_a_local_engine_logs_in_one_place(run_in_blender):
    run_in_blender("local_engine.py")


def test_a_started_engine_that_dies_is_reported_on_the_next_tick_with_its_log(run_in_blender):
    run_in_blender("engine_death.py")


def test_opening_another_file_stops_the_edit(run_in_blender, tiny_engine):
    run_in_blender("file_change.py", tiny_engine)


def test_panel_draws_in_every_state(run_in_blender):
    run_in_blender("panel_draw.py")


def test_bench_reports_export_and_import(blender_python, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "videograin", "bench", "--blender", "--blender-frames", "2",
                           "--blender-python", blender_python, "--json", str(out)],
                          capture_output=True, text=True, timeout=limit(600), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["frames"] == 2 and report["blender"].startswith("5.0" if blender_python == sys.executable else "4.5")
    for case in ("720p smooth", "720p noise", "1080p smooth", "1080p noise"):
        figures = report[case]
        assert set(figures) == {"export_render_fps", "export_png_per_frame_fps", "export_files_ms",
                                "engine_reads_files_fps", "export_mask_fps", "import_fps"}, figures
        assert all(value > 0 for value in figures.values()), figures
    assert "export_render_fps:" in done.stdout


@pytest.fixture(scope="module")
def wan_engine(tmp_path_factory) -> str:
    """A `videograin serve` process on the tiny random Wan model."""
    from conformance import start_engine

    process, _, connection = start_engine(tmp_path_factory.mktemp("wan-engine"), "--model", "wan-tiny")
    yield str(connection)
    process.kill()
    process.wait()


def test_the_same_script_edits_on_a_wan_engine(run_in_blender, wan_engine):
    # The add-on as a user has it: control left at the model's default, the working size fitted to the
    # multiple the engine's welcome gives (16 for Wan), the 4-frame strip padded inside the engine.
    run_in_blender("round_trip.py", wan_engine)
