"""`videograin timeline IN.otio --out OUT.otio`: edit every marked clip of an editor's timeline.

Three stages, timed apart by `videograin bench --timeline`:
1. `plan`: read the timeline, find the shots, read and validate every shot's pixels and check that the
   output can be written: any error stops here, before anything is edited or written.
2. `edit_shots`: each shot not already in the results folder for the same job is edited, in this process
   (one loaded pipeline for all shots) or on a running engine (one `submit` per shot, side by side when
   the engine has several workers); each result
   folder appears atomically, so an interrupted run leaves finished shots for the next one to reuse.
3. `finish`: the timeline with its `videograin` track, written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from videograin.engine.cache import InversionCache, cache_from_args
from videograin.engine.errors import JobError
from videograin.engine.inputs.media import movie_suffix, read_sequence, write_movie
from videograin.engine.models import get_pipeline, resolve_device
from videograin.engine.runner import EngineEdit, edit_in_process, edit_on_engine
from videograin.engine.timeline.conform import (
    BUNDLE,
    SEQUENCE_SUFFIXES,
    Edited,
    adapter_for,
    check_writable,
    conformed,
    read_timeline,
    write_timeline,
)
from videograin.engine.timeline.shots import Places, Shot, find_shots
from videograin.protocol.client import EngineClient


@dataclass
class Plan:
    timeline: object  # otio.schema.Timeline
    places: Places  # where the timeline's relative paths start
    shots: list[Shot]  # validated
    out: Path
    results: Path
    movies: str | None  # the codec of the edited shots' movies (MOVIE_CODECS), None for image sequences
    scratch: tempfile.TemporaryDirectory  # an unpacked .otioz, removed by close()
    edited: list[Edited] = field(default_factory=list)  # in shot order, filled by edit_shots
    finished: dict[Path, float] = field(default_factory=dict)  # results folder -> seconds, shots edited this run

    def folder(self, shot: Shot) -> Path:
        """A shot's results folder: named after its clip and its job's hash, so a changed job gets a new one."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", shot.clip).strip("._") or "clip"
        return self.results / f"{slug[:40]}-{shot.job_hash}"

    def movie(self, shot: Shot) -> Path | None:
        """Where a shot's movie goes when movies are asked for: a unique name, as a bundle holds files by name."""
        folder = self.folder(shot)
        return folder / f"{folder.name}{movie_suffix(self.movies)}" if self.movies else None

    def close(self) -> None:
        self.scratch.cleanup()


def plan(
    timeline_path: Path, out: Path, results: Path | None = None, model: str | None = None, movie: bool = False,
    device: str = "auto", codec: str = "h264", overwrite: bool = False,
) -> Plan:
    """Read and validate everything, tracking mattes given by keyframes (trackers with a model run on
    `device`); raises one VideograinError naming the clip, the track and the fix. Movies, when asked for
    or needed, are `codec` (MOVIE_CODECS); an existing `out` is replaced only with `overwrite`."""
    if out.resolve() == timeline_path.resolve():
        raise JobError(
            f"--out is the input timeline '{timeline_path}': the input is never overwritten, name another file"
        )
    if out.exists() and not out.is_dir() and not overwrite:
        raise JobError(
            f"--out '{out}' exists: pass --overwrite to replace it (finished shots are reused either way), "
            "or name another file"
        )
    adapter_for(out)
    if timeline_path.suffix.lower() == BUNDLE and out.suffix.lower() != BUNDLE:
        raise JobError(
            f"'{timeline_path.name}' is a bundle: its media live inside it, so the output must be a bundle too "
            f"(--out {out.with_suffix(BUNDLE).name})"
        )
    if out.is_dir():
        raise JobError(f"--out '{out}' is a folder: name the timeline file to write, e.g. {out / 'edited.otio'}")
    results = results or out.parent / f"{out.stem}-videograin"
    if results.exists() and not results.is_dir():
        raise JobError(f"--results '{results}' is a file: name a folder for the edited shots")
    scratch = tempfile.TemporaryDirectory(prefix="videograin-otio-")
    places = None
    try:
        timeline, places = read_timeline(timeline_path, Path(scratch.name))
        shots = find_shots(timeline, places, model)
        for shot in shots:
            shot.load(device)  # every pixel-level check (sizes, empty mattes) before the first edit
        movies = codec if movie or out.suffix.lower() not in SEQUENCE_SUFFIXES else None
        result = Plan(timeline, places, shots, out, results, movies, scratch)
        placeholders = [
            Edited(
                s,
                result.folder(s),
                {"settings": s.settings.to_dict(), "frames": len(s.source.indices)},
                result.movie(s),
            )
            for s in shots
        ]
        check_writable(timeline, out, places.media, placeholders)
    except JobError as exc:
        scratch.cleanup()
        if places is None or places.bundle is None:
            raise
        raise JobError(places.bundle.shown(str(exc))) from None  # its media as the user knows them
    except BaseException:
        scratch.cleanup()
        raise
    return result


def edit_shots(plan: Plan, engine: str | None = None, device: str = "auto", force: bool = False,
               cache: InversionCache | None = None) -> None:
    """Edit the shots whose result is missing (all of them with `force`), then fill `plan.edited` in shot
    order. On an engine with several workers (`serve --ray`) as many shots as it has workers run side by
    side; otherwise one after another."""
    fresh = [shot for shot in plan.shots if force or not (plan.folder(shot) / "result.json").is_file()]
    bar = tqdm(total=len(fresh), desc="  shots", unit="shot")
    try:
        workers = _engine_workers(engine) if engine else 1
        if workers > 1:
            _edit_side_by_side(plan, fresh, engine, workers, bar)
        else:
            pipelines: dict = {}
            for shot in fresh:
                bar.set_postfix_str(shot.clip)
                started = time.perf_counter()
                _edit(shot, plan.folder(shot), engine, device, pipelines, cache)
                plan.finished[plan.folder(shot)] = time.perf_counter() - started
                bar.update()
    finally:
        bar.close()
    for shot in plan.shots:
        folder = plan.folder(shot)
        report = json.loads((folder / "result.json").read_text())
        movie = plan.movie(shot)
        if movie is not None and (folder in plan.finished or not movie.is_file()):
            frames = read_sequence(folder / "frames", list(range(report["frames"])), "edited frames")
            write_movie(movie, frames, shot.rate, plan.movies)
        plan.edited.append(Edited(shot, folder, report, movie, plan.finished.get(folder, 0.0),
                                  reused=folder not in plan.finished))


def _engine_workers(engine: str) -> int:
    """How many jobs the engine runs at once: its `welcome`'s workers (older engines: one)."""
    client = EngineClient(engine)
    try:
        return max(1, len(client.hello(client="videograin-timeline").get("workers", [])))
    finally:
        client.close()


def _edit_side_by_side(plan: Plan, shots: list[Shot], engine: str, workers: int, bar) -> None:
    """Keep `workers` shots on the engine at once, over one client; Ctrl-C cancels every running shot."""
    client = EngineClient(engine)
    running: dict[str, tuple[Shot, EngineEdit, Path, float]] = {}
    todo = list(shots)
    try:
        info = client.hello(client="videograin-timeline")
        while todo or running:
            while todo and len(running) < workers:
                shot = todo.pop(0)
                target = _fresh_target(plan.folder(shot))
                run = EngineEdit(client, info, shot.load(), target)
                running[run.id] = (shot, run, target, time.perf_counter())
            for message in client.poll(timeout_s=0.5):
                if message.header.get("job") not in running:
                    continue
                shot, run, target, started = running[message.header["job"]]
                run.take(message)
                if run.done is not None:
                    del running[run.id]
                    run.finish()
                    _swap_in(target, plan.folder(shot))
                    plan.finished[plan.folder(shot)] = time.perf_counter() - started
                    bar.update()
    except BaseException:
        for job in running:
            client.cancel(job)  # Ctrl-C or a failed shot stops the engine's work on the others too
        raise
    finally:
        client.close()


def _edit(shot: Shot, folder: Path, engine: str | None, device: str, pipelines: dict,
          cache: InversionCache | None) -> None:
    job = shot.load()
    target = _fresh_target(folder)
    if engine:
        edit_on_engine(engine, job, target)
    else:
        s = job.settings
        key = (s.model, s.controlnet_id)
        if key not in pipelines:
            pipelines[key] = get_pipeline(s.model, s.controlnet_id, resolve_device(device))
        edit_in_process(job, target, device, cache, pipe=pipelines[key])
    _swap_in(target, folder)


def _fresh_target(folder: Path) -> Path:
    """Where a shot's edit writes: a re-edit goes to a new folder, swapped in once complete, so the old
    result stays until then."""
    if not folder.exists():
        return folder
    target = folder.with_name(f".{folder.name}.new")
    shutil.rmtree(target, ignore_errors=True)  # left by an interrupted re-edit
    return target


def _swap_in(target: Path, folder: Path) -> None:
    if target != folder:
        old = folder.with_name(f".{folder.name}.old")
        os.replace(folder, old)
        os.replace(target, folder)
        shutil.rmtree(old)


def finish(plan: Plan) -> None:
    write_timeline(conformed(plan.timeline, plan.edited), plan.out, plan.places.media)


def summary(plan: Plan) -> str:
    """A table of the edited shots: frames, seconds, leakage (mean over phrases), warp error when known."""
    rows = [("shot", "frames", "seconds", "leakage", "warp error", "")]
    for item in plan.edited:
        r = item.report
        leakage = r.get("leakage") or {}
        warp = r.get("warp_error")
        rows.append(
            (
                item.shot.name,
                str(r["frames"]),
                f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), (int, float)) else "-",
                f"{sum(leakage.values()) / len(leakage):.3f}" if leakage else "-",
                f"{warp:.3f}" if isinstance(warp, (int, float)) else "-",
                "reused" if item.reused else "edited",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cmd_timeline(args: argparse.Namespace) -> int:
    out = Path(args.out)
    the_plan = plan(
        Path(args.timeline), out, Path(args.results) if args.results else None, args.model, args.movie, args.device,
        args.movie_codec, args.overwrite,
    )
    try:
        started = time.perf_counter()
        try:
            edit_shots(the_plan, args.engine, args.device, args.force, cache_from_args(args))
        except KeyboardInterrupt:
            done = len(the_plan.finished)
            print(
                f"interrupted: {out} not written; {done} finished shot(s) stay in {the_plan.results} for the next run"
            )
            return 130
        finish(the_plan)
    finally:
        the_plan.close()
    print(summary(the_plan))
    print(
        f"wrote {out} ({len(the_plan.edited)} shots on track 'videograin', results in {the_plan.results}) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    if any(item.report.get("random_weights") for item in the_plan.edited):
        print("NOTE: random-weight model: the frames show the pipeline working, they are not an edit.")
    return 0
