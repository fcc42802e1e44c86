"""Passes run apart, and the pool of Ray actors that runs them (issue 12), on the tiny model.

The first tests need no Ray: a subset of passes computes, bit for bit, the latents one run computes;
`--ray` without Ray says how to get it. The others share one local Ray cluster with two CPU workers
(one thread each, as Ray gives an actor with one CPU): the reference edits here run on one thread too,
since CPU kernels sum in an order that depends on the thread count.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import limit, wait_for

from videograin.engine.demo import write_demo_inputs
from videograin.engine.inputs.job import load_job
from videograin.engine.inputs.mattes import crossing_blobs
from videograin.engine.method.passes import merge_passes, plan_passes
from videograin.engine.models import device_name
from videograin.engine.runner import edit_clip, edit_passes, finish_edit, prepare_clip
from videograin.engine.serving.ray_pool import RayPool, RayWorker
from videograin.engine.serving.worker import Job, JobWorker

# A frame that a pass decodes among its own frames, not among its clip neighbours, may round a
# pixel differently by one level (the VAE's kernels depend on the batch): that, in a few pixels.
LEVELS = 1
SHARE = 0.001


def _job(folder: Path, frames: int = 12, steps: int = 4, window: int | None = 4):
    job = load_job(write_demo_inputs(folder, frames=frames, size=64, steps=steps))
    job.settings.window = window
    return job


@pytest.fixture()
def one_thread():
    """Edits in this process on one thread, as on a Ray worker with one CPU (and faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_same_frames(frames: np.ndarray, reference: np.ndarray) -> None:
    assert frames.shape == reference.shape
    differ = np.abs(frames.astype(int) - reference.astype(int))
    assert differ.max() <= LEVELS and (differ > 0).mean() <= SHARE, (differ.max(), int((differ > 0).sum()))


def test_passes_run_apart_compute_one_runs_latents_and_merge_to_its_result(tmp_path, tiny_pipe, monkeypatch,
                                                                          one_thread):
    job = _job(tmp_path / "input", frames=12, steps=3)
    job.settings.inject_step = 2  # injection, blending and trajectories all on: each is recorded per pass
    clip = prepare_clip(job, tiny_pipe)
    latents: dict[tuple[int, ...], list[torch.Tensor]] = {}
    edit = tiny_pipe.edit_pass

    def spy(ctx, *args, **kwargs):
        result = edit(ctx, *args, **kwargs)
        latents.setdefault(tuple(ctx.frame_ids.tolist()), []).append(result)
        return result

    monkeypatch.setattr(tiny_pipe, "edit_pass", spy)
    options = {"measure_leakage": True, "attention_maps": True}
    whole = finish_edit(clip, edit_passes(clip, tiny_pipe, **options))
    plan, anchors = plan_passes(12, 4)
    parts = [edit_passes(clip, tiny_pipe, passes=[number], **options) for number in reversed(range(len(plan)))]

    for ids, (one_run, apart) in latents.items():
        assert torch.equal(one_run, apart), f"pass {ids} computed other latents on its own"
    # Pass 0 brings the anchors' frames; the others, their own.
    expected = [sorted(plan[0])] + [ids[: len(ids) - anchors] for ids in plan[1:]]
    assert [part.indices for part in reversed(parts)] == expected
    merged = finish_edit(clip, merge_passes({i: f for p in parts for i, f in zip(p.indices, p.frames)},
                                            [p.totals for p in parts]))
    _assert_same_frames(merged.frames, whole.frames)
    assert merged.leakage.keys() == whole.leakage.keys()
    for phrase, share in whole.leakage.items():
        assert merged.leakage[phrase] == pytest.approx(share, rel=1e-12)
    for phrase, (modulated, plain) in whole.attention_maps.items():
        np.testing.assert_allclose(merged.attention_maps[phrase][0], modulated, atol=1e-6)
        np.testing.assert_allclose(merged.attention_maps[phrase][1], plain, atol=1e-6)
    assert merged.warp_error == pytest.approx(whole.warp_error, rel=1e-3)
    with pytest.raises(ValueError, match="not among"):
        edit_passes(clip, tiny_pipe, passes=[len(plan)])


def test_without_ray_the_ray_option_says_how_to_install_it(tmp_path, demo_job, monkeypatch, capsys):
    from videograin.engine import cli
    from videograin.engine.serving import ray_pool

    monkeypatch.setattr(ray_pool, "ray", None)
    assert cli.main(["edit", str(demo_job), "--out", str(tmp_path / "out"), "--ray"]) == 2
    assert "pip install 'videograin[ray]'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_edit_with_ray_runs_the_passes_on_a_local_cluster(tmp_path, tiny_pipe, one_thread):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'videograin[ray]'")
    from videograin.engine.inputs.media import list_frames, read_sequence

    job_file = write_demo_inputs(tmp_path / "input", frames=8, size=64, steps=2)
    job_file.write_text(job_file.read_text() + "window: 4\n")  # passes of 4 frames: 3 passes
    out = tmp_path / "out"
    # A process of its own: `--ray` alone starts (and stops) a local cluster, apart from this module's.
    done = subprocess.run([sys.executable, "-m", "videograin", "edit", str(job_file), "--out", str(out), "--ray",
                           "--workers", "2"], capture_output=True, text=True, timeout=limit(600),
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    frames = read_sequence(out / "frames", list(range(len(list_frames(out / "frames")))), "ray")
    _assert_same_frames(frames, edit_clip(load_job(job_file), tiny_pipe).frames)
    assert json.loads((out / "result.json").read_text())["frames"] == 8


def test_serve_with_ray_lists_its_workers_and_stops_on_sigterm(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'videograin[ray]'")
    import signal

    from conformance import start_engine

    from videograin.protocol.client import EngineClient

    process, _, connection = start_engine(tmp_path, "--ray", "--workers", "2")
    try:
        client = EngineClient(connection)
        assert [w["device"] for w in client.hello(timeout_s=60)["workers"]] == ["cpu", "cpu"]
        edit = _job(tmp_path / "input", frames=4, steps=2)
        reply, layout = client.check(edit.settings.to_dict(), list(edit.frames), [list(m) for m in edit.masks])
        assert reply["summary"]["clip"]["frames"] == 4 and layout.startswith(b"\x89PNG")  # fitted in this process
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=limit(120)) == 0
        assert not connection.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_engine_in_one_process_lists_itself_as_its_worker():
    worker = JobWorker(lambda model, controlnet: None, None, threading.Event(), device="cpu")
    assert worker.workers() == [{"node": socket.gethostname(), "device": "cpu", "name": device_name("cpu")}]


def test_ray_bench_times_one_and_two_workers(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'videograin[ray]'")
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "videograin", "bench", "--ray", "2", "--frames", "6", "--window", "3",
                          "--steps", "2", "--device", "cpu", "--json", str(out)], capture_output=True, text=True,
                         timeout=limit(600), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["passes"] == 3 and len(report["ray_2"]["workers"]) == 2
    for timed in (report["in_process"], report["ray_1"], report["ray_2"]):
        assert 0 < timed["first_frame_s"] < timed["edit_s"]
    assert report["speedup"] == report["ray_1"]["edit_s"] / report["ray_2"]["edit_s"]


# -- the Ray pool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'videograin[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = RayPool(workers=2)
    yield pool
    pool.close()
    ray.shutdown()


@pytest.fixture()
def worker(pool):
    worker = RayWorker(pool, None, threading.Event(), on_result=lambda job, result: setattr(job, "result", result))
    worker.start()
    yield worker
    worker.close()


def _run(worker: RayWorker, jobs: list[Job], on_event=lambda events: None, timeout_s: float = 300.0):
    """Every event of `jobs` until each has ended, as (kind, job id, payload); `on_event` sees the events
    so far after each one."""
    events, ended, deadline = [], set(), time.monotonic() + limit(timeout_s)
    for job in jobs:
        worker.submit(job)
    while len(ended) < len(jobs):
        assert time.monotonic() < deadline, f"jobs did not end: {[e[:2] for e in events[-5:]]}"
        for kind, job, payload in worker.events():
            events.append((kind, job.id, payload))
            on_event(events)
            if kind in ("done", "failed", "cancelled"):
                ended.add(job.id)
        time.sleep(0.01)
    return events


def _passes_seen(events, job_id: str) -> set[int]:
    return {p[0].pass_index for kind, j, p in events
            if kind == "progress" and j == job_id and p[0].phase in ("invert", "edit")}


def test_a_clip_in_passes_over_two_workers_gives_the_single_process_frames_in_order(tmp_path, tiny_pipe, worker,
                                                                                     one_thread):
    edit = _job(tmp_path / "input")
    reference = edit_clip(edit, tiny_pipe, measure_leakage=True, attention_maps=True)
    job = Job("clip", edit, 12, None, attention_maps=True)
    events = _run(worker, [job])

    assert events[-1][0] == "done", events[-1]
    assert [p[0] for kind, _, p in events if kind == "frame"] == list(range(12))  # index order (SPEC.md §3.4)
    assert _passes_seen(events, "clip") == {0, 1, 2, 3}
    _assert_same_frames(job.result.frames, reference.frames)
    streamed = np.stack([p[1] for kind, _, p in events if kind == "frame"])
    np.testing.assert_array_equal(streamed, job.result.frames)
    done = events[-1][2]
    for phrase, share in reference.leakage.items():
        assert done["leakage"][phrase] == pytest.approx(share, rel=1e-9)
    assert done["warp_error"] == pytest.approx(reference.warp_error, rel=1e-3)
    assert {p[0] for kind, _, p in events if kind == "attention"} == set(reference.attention_maps)


def test_cancel_reaches_both_workers_within_a_step(tmp_path, worker, caplog):
    caplog.set_level(logging.INFO, logger="videograin.server")
    job = Job("long", _job(tmp_path / "input", steps=40), 12, None)

    def cancel_when_both_run(events):
        if not job.cancel.is_set() and len(_passes_seen(events, "long")) == 2:
            assert not worker.cancel(job)  # running: it stops on its workers, it is not just dropped

    events = _run(worker, [job], cancel_when_both_run)
    assert events[-1][0] == "cancelled" and events[-1][2]["code"] == "cancelled"
    assert not any(kind == "frame" for kind, _, _ in events)
    stops = [r.args for r in caplog.records if "after the cancel reached it" in r.getMessage()]
    assert len(stops) == 2 and {worker for _, _, worker, _ in stops} == {0, 1}
    assert all(steps <= 1 for *_, steps in stops), stops


def test_a_lost_worker_costs_only_its_pass(tmp_path, tiny_pipe, pool, worker, caplog, one_thread):
    import ray

    caplog.set_level(logging.INFO, logger="videograin.server")
    edit = _job(tmp_path / "input", steps=8)
    reference = edit_clip(edit, tiny_pipe)
    job = Job("kill", edit, 12, None)
    killed = []

    def kill_when_both_run(events):
        if not killed and len(_passes_seen(events, "kill")) == 2:
            killed.append(pool.actors[0])
            ray.kill(pool.actors[0], no_restart=False)  # its process dies; Ray starts it again

    events = _run(worker, [job], kill_when_both_run)
    assert events[-1][0] == "done", events[-1]
    lost = [r for r in caplog.records if "was lost running" in r.getMessage()]
    assert len(lost) == 1 and lost[0].args[0] == 0
    assert [p[0] for kind, _, p in events if kind == "frame"] == list(range(12))
    _assert_same_frames(job.result.frames, reference.frames)
    # Ray restarts the killed actor: it answers again and stays in the pool.
    def answers() -> bool:
        try:
            return bool(ray.get(pool.actors[0].describe.options(concurrency_group="control").remote(),
                                timeout=limit(10)))
        except ray.exceptions.ActorUnavailableError:
            return False

    wait_for(answers, "the killed worker to come back", 120, every_s=0.5)
    assert len(worker.workers()) == 2


def test_two_jobs_run_at_once_on_two_workers(tmp_path, worker):
    jobs = [Job(f"job{n}", _job(tmp_path / f"input{n}", frames=4, steps=10, window=None), 4, None) for n in range(2)]
    events = _run(worker, jobs)
    assert [kind for kind, _, _ in events if kind in ("done", "failed", "cancelled")] == ["done", "done"]
    steps = [j for kind, j, p in events if kind == "progress" and p[0].phase in ("invert", "edit")]
    first_done = next(i for i, (kind, _, _) in enumerate(events) if kind == "done")
    # Both jobs step before either is done, their steps interleaved: each has a worker.
    assert {j for kind, j, p in events[:first_done] if kind == "progress" and p[0].phase == "edit"} == {"job0", "job1"}
    assert sum(a != b for a, b in itertools.pairwise(steps)) >= 2, steps


def test_the_engine_on_ray_reports_its_workers_and_streams_frames_in_order(tmp_path, pool):
    from videograin.engine.serving.server import EngineServer
    from videograin.protocol import wire
    from videograin.protocol.client import EngineClient, matte_images

    key = wire.new_key()
    server = EngineServer("tcp://127.0.0.1:0", key, None, "tiny", pool.device_label(),
                          worker=lambda store, stopping: RayWorker(pool, store, stopping))
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    client = EngineClient({"address": server.address, "key": key})
    try:
        engine = client.hello()
        assert engine["device"] == "cpu" and [w["device"] for w in engine["workers"]] == ["cpu", "cpu"]
        edit = _job(tmp_path / "input", steps=3)
        settings = {**edit.settings.to_dict(), "window": 4}
        job = client.submit(settings, list(edit.frames), [list(m) for m in edit.masks])
        messages = list(client.events(job, timeout_s=limit(300)))
        assert messages[-1].type == "done" and messages[-1].header["frames"] == 12
        assert [m.header["index"] for m in messages if m.type == "frame"] == list(range(12))
        edited = {m.header["pass"] for m in messages if m.type == "progress" and m.header["phase"] == "edit"}
        assert edited == {0, 1, 2, 3}
        # A track job needs no pipeline: it runs in the engine's process, beside the pool.
        clip, truth = crossing_blobs(6, 96, 64)
        job = client.track(clip, [{0: truth[0, 0]}])
        mattes = [matte_images(m)[0] for m in client.events(job, timeout_s=limit(120)) if m.type == "matte"]
        assert len(mattes) == 6 and np.array_equal(mattes[0] == 255, truth[0, 0])
    finally:
        client.close()
        server.stop()
        serving.join(timeout=60)


def test_a_timeline_on_a_ray_engine_edits_its_shots_side_by_side(tmp_path, pool):
    pytest.importorskip("opentimelineio")
    from test_timeline import build_media, build_timeline, otio

    from videograin.engine.cli import main
    from videograin.engine.serving.server import EngineServer
    from videograin.protocol import wire
    from videograin.protocol.client import EngineClient

    build_media(tmp_path / "project")
    project = tmp_path / "project" / "cut.otio"
    otio.adapters.write_to_file(build_timeline(tmp_path / "project"), str(project))
    connection = tmp_path / "engine.json"
    server = EngineServer("tcp://127.0.0.1:0", wire.new_key(), None, "tiny", pool.device_label(),
                          connection_file=connection, worker=lambda store, stopping: RayWorker(pool, store, stopping))
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    watcher, most, stop = EngineClient(connection), [0], threading.Event()

    def watch():  # the most shots the engine ran at one time
        while not stop.is_set():
            most[0] = max(most[0], sum(job["state"] == "running" for job in watcher.status()))
            time.sleep(0.02)

    watching = threading.Thread(target=watch, daemon=True)
    watching.start()
    try:
        out = tmp_path / "out.otio"
        assert main(["timeline", str(project), "--out", str(out), "--engine", str(connection)]) == 0
        clips = list(otio.adapters.read_from_file(str(out)).tracks[3].find_clips())
        assert sorted(c.metadata["videograin"]["source_clip"] for c in clips) == ["runners", "seq"]
        assert most[0] == 2
    finally:
        stop.set()
        watching.join(timeout=10)
        watcher.close()
        server.stop()
        serving.join(timeout=60)
