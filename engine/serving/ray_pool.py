"""A pool of Ray actors that edit the passes of many jobs side by side (`serve --ray`, `edit --ray`).

A clip longer than one pass is edited in passes that share anchor frames and nothing else while they
denoise (method/pipeline.py), so each pass can run on its own GPU. `RayPool` starts one actor per GPU of
the cluster (`PassWorker`: one device, the pipeline loaded once per model, one task at a time);
`RayWorker` gives the engine server (server.py) the interface of worker.py's `JobWorker` over them.

- Scheduling: one thread per actor pulls the next task: the oldest running job's next pass, else the
  next waiting job's preparation (working-size frames, control maps, flow: `runner.prepare_clip`, once
  per job, on a worker since it may need the device). So a job's passes spread over every free actor,
  and a second job starts as soon as an actor has nothing left of the first.
- Frame order: frames leave in index order, as protocol/SPEC.md §3.4 says: a frame that a later pass
  made early waits for those before it. Passes go out in clip order, so little waits, and no client,
  `attach` or `frames_ready` has to learn about holes.
- Cancel: each actor has a second thread (its "control" concurrency group) on which `cancel` runs
  while a pass runs on the first; it sets a flag that the pass reads at its next step. A cancel
  reaches every actor of a job within one step, with no round trip per step and no extra actor.
- Lost workers: a pass whose actor died goes back to the front of its job's queue and the next free
  actor runs it again, so a lost worker costs only its pass (frames it had streamed are not sent
  twice). Ray restarts a crashed actor (`max_restarts`); it rejoins the pool once it answers again,
  and an actor gone for good (killed, node lost) leaves the pool.

Frames from passes run apart equal the single-process edit's up to the VAE's batch composition:
a pass decodes its own frames, four at a time, where one run decodes four consecutive clip frames,
and the decoder's kernels round a few pixels differently by batch (≤ 1 level of 255, tests/test_ray.py).
Everything before the decode is the same computation (on the same device kind and thread count).
"""

from __future__ import annotations

import bisect
import logging
import queue
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from videograin.engine.cache import InversionCache
from videograin.engine.errors import CancelledError, VideograinError
from videograin.engine.inputs.job import EditJob
from videograin.engine.method.pipeline import EditResult, PassTotals, longest_pass, merge_passes, plan_passes
from videograin.engine.models import device_name, resolve_device
from videograin.engine.progress import ProgressBars, ProgressEvent
from videograin.engine.runner import (
    PreparedClip,
    edit_passes,
    finish_edit,
    prepare_clip,
    preview_path,
    to_source,
    write_results,
)
from videograin.engine.serving.retention import FrameStore
from videograin.engine.serving.worker import (
    FINAL_STATES,
    Job,
    JobWorker,
    PipelineSlot,
    attention_events,
    done_fields,
    free_device_memory,
)

try:
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError
except ModuleNotFoundError:  # an optional extra: the engine works without it, `--ray` says how to get it
    ray = None

log = logging.getLogger("videograin.server")

NO_WORKERS = {"code": "internal", "message": "every Ray worker of this engine is gone: restart the engine"}
RESTART_WAIT_S = 60.0  # how long a crashed actor may take to come back before it leaves the pool
START_TIMEOUT_S = 120.0  # how long the cluster may take to place the workers


def require_ray() -> None:
    if ray is None:
        raise VideograinError(
            "--ray needs Ray, which is not installed: pip install 'videograin[ray]'", code="bad_config"
        )


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` (host:port), or start a local one on this machine. Ray's token
    authentication stays as the cluster has it (on by default for a local cluster; docs/studio.md)."""
    require_ray()
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
    except Exception as exc:  # no cluster there, a refused token, a port in use: all mean "no cluster"
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise VideograinError(
            f"could not join {where}: {type(exc).__name__}: {exc}. Is `ray start` running there, with this "
            "machine holding the cluster's token (~/.ray/auth_token, docs/studio.md)?", code="bad_config",
        ) from None


class PassWorker:
    """The body of one Ray actor: one device, the pipeline of one model at a time, one task at a time
    (`prepare`, `run_pass`); `cancel` and `describe` run on a second thread beside them."""

    def __init__(self, device: str, cache_folder: str | None, cache_bytes: int) -> None:
        # Arrays from Ray's object store are read-only, and the pipeline only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.device = resolve_device(device)
        self.pipeline_for = PipelineSlot(self.device)
        self.cache = None if cache_folder is None else InversionCache(Path(cache_folder), cache_bytes)
        self.steps = 0  # steps reported so far, for how soon a cancel took hold
        self.cancelled: dict[str, int] = {}  # job id -> `steps` when its cancel came

    def describe(self) -> dict[str, str]:
        label = str(self.device)
        if self.device.type == "cuda":  # the GPU Ray gave this actor, as the node numbers it
            label = f"cuda:{ray.get_gpu_ids()[0]}"
        return {"node": socket.gethostname(), "device": label, "name": device_name(self.device)}

    def prepare(self, job: EditJob) -> tuple[PreparedClip, int]:
        """The job's working-size inputs, and the frames per pass (the settings', else what this device
        holds) that every worker then uses."""
        pipe = self.pipeline_for(job.settings.model, job.settings.controlnet_id)
        clip = prepare_clip(job, pipe)
        height, width = clip.frames.shape[1:3]
        latent_pixels = (height // pipe.vae_scale_factor) * (width // pipe.vae_scale_factor)
        return clip, clip.settings.window or longest_pass(len(clip.frames), latent_pixels, self.device)

    def run_pass(
        self, job_id: str, clip: PreparedClip, window: int, number: int, attention_maps: bool, preview_every: int,
    ) -> Iterator[tuple]:
        """One pass, streamed: ("progress", ProgressEvent) per step, ("frame", index, image) per frame
        it makes (working size, clip order), then ("totals", PassTotals), or ("cancelled", steps reported
        after the cancel came) when cancelled."""
        items: queue.Queue = queue.Queue()

        def progress(event: ProgressEvent) -> None:
            if event.phase in ("invert", "edit"):
                self.steps += 1
                items.put(("progress", event))

        def run() -> None:  # the pipeline reports through callbacks; the generator hands their items on
            try:
                pipe = self.pipeline_for(clip.settings.model, clip.settings.controlnet_id)
                result = edit_passes(
                    clip, pipe, passes=[number], window=window, progress=progress,
                    cancelled=lambda: job_id in self.cancelled, measure_leakage=True,
                    on_frame=lambda index, image: items.put(("frame", index, image)), cache=self.cache,
                    attention_maps=attention_maps, preview_every=preview_every,
                )
                items.put(("totals", result.totals))
            except CancelledError:
                items.put(("cancelled", self.steps - self.cancelled[job_id]))
            except BaseException as exc:  # raised again below, so that Ray hands it to the caller
                items.put(("error", exc))
            finally:
                free_device_memory()

        threading.Thread(target=run, name=f"pass-{number}", daemon=True).start()
        try:
            while True:
                item = items.get()
                if item[0] == "error":
                    raise item[1]
                yield item
                if item[0] in ("totals", "cancelled"):
                    return
        finally:
            self.cancelled.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        self.cancelled.setdefault(job_id, self.steps)


class RayPool:
    """The workers: `workers` Ray actors (default: one per GPU of the cluster, else one), each asking
    for one GPU, or one CPU on a cluster without GPUs. All share the inversion cache folder `cache`,
    which must then be the same storage on every node."""

    def __init__(self, workers: int | None = None, cache: InversionCache | None = None) -> None:
        require_ray()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or gpus or 1
        if count < 1:
            raise VideograinError("--workers must be at least 1", code="bad_config")
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        actor = ray.remote(max_restarts=-1, concurrency_groups={"control": 1}, **resources)(PassWorker)
        cache_folder = None if cache is None else str(cache.folder)
        self.actors = [
            actor.remote("cuda" if gpus else "cpu", cache_folder, 0 if cache is None else cache.max_bytes)
            for _ in range(count)
        ]
        asked = [a.describe.options(concurrency_group="control").remote() for a in self.actors]
        ready, _ = ray.wait(asked, num_returns=count, timeout=START_TIMEOUT_S)
        if len(ready) < count:
            self.close()
            kind = "GPUs" if gpus else "CPUs"
            raise VideograinError(
                f"only {len(ready)} of {count} Ray workers started within {START_TIMEOUT_S:.0f} s: each needs one of "
                f"the cluster's {kind} ({ray.cluster_resources()}); ask for fewer with --workers",
                code="bad_config",
            )
        try:
            self.described = ray.get(asked)
        except ray.exceptions.RayError as exc:
            self.close()
            raise VideograinError(f"a Ray worker could not start: {exc}", code="bad_config") from None

    def device_label(self) -> str:
        """The kinds of device the workers edit on, for `welcome`'s **device**: "cuda", "cpu"."""
        return ",".join(dict.fromkeys(worker["device"].split(":")[0] for worker in self.described))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


@dataclass
class _Run:
    """A job the pool has taken, from its preparation to its end."""

    job: Job
    started: float
    clip: PreparedClip | None = None
    clip_ref: Any = None  # the prepared clip in Ray's object store, for the passes
    window: int = 0
    pending: list[int] = field(default_factory=list)  # passes still to run, in clip order
    busy: dict[int, int | str] = field(default_factory=dict)  # worker -> "prepare" or the pass it runs
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # working-size frames made so far
    sent: int = 0  # frames below this index have been handed on, in order
    totals: dict[int, PassTotals] = field(default_factory=dict)  # pass -> its sums, once it has ended
    error: dict[str, str] | None = None  # the first failure of one of its tasks
    ended: bool = False
    clock: PassesClock | None = None


class PassesClock:
    """Remaining time of a job whose passes run side by side: from the pace of all their steps so far
    (an edit step costs about two inversion steps: guidance doubles the batch)."""

    def __init__(self, passes: int, steps: int) -> None:
        self.total = passes * steps * 3
        self.done: dict[tuple[int, str], int] = {}  # (pass, phase) -> weighted steps
        self.started: tuple[float, int] | None = None

    def update(self, event: ProgressEvent) -> float | None:
        self.done[(event.pass_index, event.phase)] = event.step * (1 if event.phase == "invert" else 2)
        done, now = sum(self.done.values()), time.perf_counter()
        if self.started is None:
            self.started = (now, done)
            return None
        pace = (done - self.started[1]) / max(now - self.started[0], 1e-9)
        return (self.total - done) / pace if pace > 0 else None


class RayWorker:
    """worker.py's `JobWorker` interface and events over a `RayPool`: jobs in submission order, each
    job's passes spread over the free actors, several jobs at once when actors are free. Track jobs
    (mattes from keyframes) need no pipeline: a `JobWorker` of this process runs them, beside the pool.

    `store` keeps streamed frames for `attach` (None: not kept, for batch use); `on_result`, when given,
    receives each finished job's result before its `done` event."""

    def __init__(self, pool: RayPool, store: FrameStore | None, stopping: threading.Event,
                 on_result: Callable[[Job, EditResult], None] | None = None) -> None:
        self.pool = pool
        self.store = store
        self.stopping = stopping
        self.on_result = on_result
        self.waiting: list[Job] = []  # the loop's view, as JobWorker's
        self.running: list[Job] = []
        self._queue: list[Job] = []  # submitted and not yet taken by an actor's thread
        self._runs: list[_Run] = []
        self._live: dict[int, dict[str, str]] = dict(enumerate(pool.described))  # worker -> description
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = False
        self._tracker: JobWorker | None = None  # made on the first track job
        self._events: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._serve, args=(number,), name=f"videograin-ray-{number}", daemon=True)
            for number in range(len(pool.actors))
        ]

    # -- the loop's side ---------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        if job.kind == "track":
            self._tracks().submit(job)
            return
        with self._changed:
            if not self._live:
                self._events.put(("failed", job, NO_WORKERS))
                return
            self.waiting.append(job)
            self._queue.append(job)
            self._changed.notify_all()

    def position(self, job: Job) -> int:
        """Jobs ahead of this one (those running, then those waiting before it); 0 once it runs."""
        if job.kind == "track":
            return self._tracks().position(job)
        if job not in self.waiting:
            return 0
        return self.waiting.index(job) + len(self.running)

    def cancel(self, job: Job) -> bool:
        """Ask the job to stop on every actor that runs a part of it; True when it was still waiting and
        is dropped at once (no events follow)."""
        if job.kind == "track":
            return self._tracks().cancel(job)
        with self._changed:
            job.cancel.set()
            if job in self._queue:
                self._queue.remove(job)
                self.waiting.remove(job)
                return True
            for run in self._runs:
                if run.job is job:
                    self._stop(run)
        return False

    def drop_waiting(self) -> list[Job]:
        with self._changed:
            dropped, self._queue = self._queue, []
            for job in dropped:
                job.cancel.set()
            self.waiting = [job for job in self.waiting if job not in dropped]
        return dropped + (self._tracker.drop_waiting() if self._tracker is not None else [])

    def workers(self) -> list[dict[str, str]]:
        """The actors still in the pool: node, device, device name (`welcome`'s **workers**)."""
        with self._lock:
            return list(self._live.values())

    def events(self) -> Iterator[tuple[str, Job, Any]]:
        if self._tracker is not None:
            yield from self._tracker.events()
        while True:
            try:
                kind, job, payload = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "start":
                if job in self.waiting:
                    self.waiting.remove(job)
                self.running.append(job)
            elif kind in FINAL_STATES and job in self.running:
                self.running.remove(job)
            yield kind, job, payload

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop: running jobs are cancelled on their actors (within a step) and end `shutting_down`."""
        with self._changed:
            self._closing = True
            for run in list(self._runs):
                self._stop(run)
            self._changed.notify_all()
        deadline = time.monotonic() + timeout_s
        if self._tracker is not None:
            self._tracker.close(timeout_s)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _tracks(self) -> JobWorker:
        """The worker that runs track jobs here: trackers read the clip on this machine (SAM 2 on its
        GPU when it has one) and need none of the pool's pipelines."""
        if self._tracker is None:
            self._tracker = JobWorker(None, self.store, self.stopping, device=str(resolve_device("auto")))
            self._tracker.start()
        return self._tracker

    # -- the actors' threads -----------------------------------------------------------------

    def _serve(self, worker: int) -> None:
        actor = self.pool.actors[worker]
        while True:
            with self._changed:
                while (task := self._next_task()) is None:
                    if self._closing:
                        return
                    self._changed.wait()
                run, what = task
                run.busy[worker] = what
            try:
                if what == "prepare":
                    self._prepare(run, actor)
                else:
                    self._run_pass(run, worker, actor, what)
            except RayActorError:
                log.warning("worker %d (%s) was lost running %s of %s: it runs again elsewhere", worker,
                            self._live[worker]["node"], "the preparation" if what == "prepare" else f"pass {what}",
                            run.job.id)
                with self._changed:
                    if what != "prepare" and what not in run.totals:  # lost before its end
                        bisect.insort(run.pending, what)
                    run.busy.pop(worker)
                    self._end_if_done(run)
                    self._changed.notify_all()
                if not self._revived(actor):
                    if not self._closing:
                        self._leave(worker)
                    return
                continue
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc  # what the actor raised, without Ray's wrapper
                if not isinstance(cause, VideograinError):
                    log.error("%s of %s failed on worker %d: %s", what, run.job.id, worker, exc)
                with self._changed:
                    if run.error is None and isinstance(cause, VideograinError):
                        run.error = {"code": cause.code, "message": str(cause)}
                    elif run.error is None:
                        run.error = {"code": "internal", "message": f"{type(cause).__name__}: {cause}"}
                    run.busy.pop(worker)
                    self._stop(run)
                    self._changed.notify_all()
                continue
            with self._changed:
                run.busy.pop(worker)
                self._changed.notify_all()
                complete = self._complete(run)
                if not complete:
                    self._end_if_done(run)
            if complete:
                self._finish(run)

    def _next_task(self) -> tuple[_Run, int | str] | None:
        """The oldest job's next pass, else a new job's preparation; None: nothing to do now."""
        if self._closing or self.stopping.is_set():
            return None
        for run in self._runs:
            if run.ended or run.error or run.job.cancel.is_set():
                continue
            if run.clip is None and "prepare" not in run.busy.values():
                return run, "prepare"
            if run.pending:
                return run, run.pending.pop(0)
        while self._queue:
            job = self._queue.pop(0)
            run = _Run(job, time.perf_counter())
            self._runs.append(run)
            self._events.put(("start", job, None))
            self._progress(run, ProgressEvent("load", 0, 1), None)
            return run, "prepare"
        return None

    def _prepare(self, run: _Run, actor) -> None:
        clip_ref, window_ref = actor.prepare.options(num_returns=2).remote(run.job.edit)
        clip, window = ray.get([clip_ref, window_ref])
        passes, _ = plan_passes(len(clip.frames), window)
        with self._changed:
            run.clip, run.clip_ref, run.window = clip, clip_ref, window
            run.pending = list(range(len(passes)))
            run.clock = PassesClock(len(passes), clip.settings.steps)
            self._progress(run, ProgressEvent("load", 1, 1), None)

    def _run_pass(self, run: _Run, worker: int, actor, number: int) -> None:
        stream = actor.run_pass.remote(run.job.id, run.clip_ref, run.window, number, run.job.attention_maps,
                                       run.job.preview_every)
        item = ("none",)
        for ref in stream:
            item = ray.get(ref)
            with self._changed:
                if item[0] == "progress":
                    if not run.ended:
                        self._progress(run, item[1], run.clock.update(item[1]))
                elif item[0] == "frame":
                    run.frames.setdefault(item[1], item[2])  # a pass run again sends its frames again
                    self._send_frames(run)
                elif item[0] == "totals":
                    run.totals[number] = item[1]
                else:
                    log.info("pass %d of %s stopped on worker %d, %d step(s) after the cancel reached it",
                             number, run.job.id, worker, item[1])
        stopped = run.job.cancel.is_set() or run.error or self._closing or self.stopping.is_set()
        if item[0] != "totals" and not stopped:
            raise VideograinError(f"pass {number} of the clip ended without its result", code="internal")

    def _revived(self, actor) -> bool:
        """Whether a lost actor is back (Ray restarts a crashed one), waiting up to `RESTART_WAIT_S`."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while time.monotonic() < deadline and not self._closing:
            try:
                ray.get(actor.describe.options(concurrency_group="control").remote(), timeout=5.0)
                return True
            except ActorDiedError:
                return False
            except (ActorUnavailableError, GetTimeoutError):
                time.sleep(0.5)
        return False

    def _leave(self, worker: int) -> None:
        """A worker gone for good; with none left, every job ends."""
        with self._changed:
            log.warning("worker %d (%s) left the pool", worker, self._live.pop(worker)["node"])
            if self._live:
                return
            for run in list(self._runs):
                run.error = run.error or NO_WORKERS
                self._end_if_done(run)
            for job in self._queue:
                self._events.put(("failed", job, NO_WORKERS))
            self._queue.clear()

    # -- a run's state (under the lock) -------------------------------------------------------

    def _stop(self, run: _Run) -> None:
        """Cancel the run's passes on their actors; a run with nothing running ends now."""
        for worker, what in run.busy.items():
            if what != "prepare":  # a preparation does not poll; the run ends when it is back
                self.pool.actors[worker].cancel.options(concurrency_group="control").remote(run.job.id)
        self._end_if_done(run)

    def _end_if_done(self, run: _Run) -> None:
        """End a failed or stopped run once none of its tasks runs any more."""
        if run.ended or run.busy:
            return
        if run.error is not None:
            self._end(run, "failed", run.error)
        elif run.job.cancel.is_set() or self.stopping.is_set() or self._closing:
            if run.job.cancel.is_set():
                self._end(run, "cancelled", {"code": "cancelled", "message": "the edit was cancelled"})
            else:
                self._end(run, "cancelled", {"code": "shutting_down", "message": "the engine is shutting down"})

    def _complete(self, run: _Run) -> bool:
        """Whether every frame of the run is in: it is then taken off the runs, to be finished."""
        if run.ended or run.busy or run.error is not None or run.clip is None or run.pending:
            return False
        if run.job.cancel.is_set() or run.sent < len(run.clip.frames):
            return False
        run.ended = True
        self._runs.remove(run)
        return True

    def _finish(self, run: _Run) -> None:
        """Merge the passes, measure the warp error over the whole clip, report (outside the lock)."""
        try:
            result = finish_edit(run.clip, merge_passes(run.frames, [run.totals[n] for n in sorted(run.totals)]))
            if self.on_result is not None:
                self.on_result(run.job, result)
            for event in attention_events(run.job, result):
                self._events.put(event)
            self._events.put(("done", run.job, done_fields(run.job, result, time.perf_counter() - run.started)))
        except Exception as exc:
            log.exception("finishing %s failed", run.job.id)
            self._events.put(("failed", run.job, {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}))

    def _end(self, run: _Run, state: str, payload: dict[str, Any]) -> None:
        run.ended = True
        self._runs.remove(run)
        self._events.put((state, run.job, payload))

    def _progress(self, run: _Run, event: ProgressEvent, eta_s: float | None) -> None:
        self._events.put(("progress", run.job, (event, eta_s)))

    def _send_frames(self, run: _Run) -> None:
        """Hand on, in index order, the frames whose predecessors have all gone out."""
        count = len(run.clip.frames)
        while run.sent in run.frames and not run.ended:
            index = run.sent
            image = to_source(run.clip, run.frames[index][None])[0]
            if self.store is not None:
                self.store.put(run.job.id, index, image)
            self._events.put(("frame", run.job, (index, image)))
            run.sent += 1
            self._progress(run, ProgressEvent("decode", run.sent, count), None)


def edit_on_ray(job: EditJob, out: Path, address: str | None, workers: int | None = None,
                cache: InversionCache | None = None, attention_maps: bool = False) -> dict:
    """`videograin edit JOB --ray [ADDRESS]`: one job over a pool of Ray workers, without a server;
    results written as an in-process edit writes them. Progress shows the first pass's steps (with its
    previews), then the frames as they are ready."""
    connect(address)
    pool = RayPool(workers, cache)
    results: list[EditResult] = []
    worker = RayWorker(pool, None, threading.Event(), on_result=lambda _, result: results.append(result))
    edit = Job("edit", job, len(job.frames), None, attention_maps=attention_maps)
    bars = ProgressBars(preview_path(out))
    started = time.perf_counter()
    worker.start()
    worker.submit(edit)
    try:
        final = None
        while final is None:
            for kind, _, payload in worker.events():
                if kind == "progress" and (payload[0].phase in ("load", "decode") or payload[0].pass_index == 0):
                    bars(payload[0])
                elif kind in ("failed", "cancelled"):
                    raise VideograinError(payload["message"], code=payload["code"])
                elif kind == "done":
                    final = payload
            time.sleep(0.02)
    except KeyboardInterrupt:
        worker.cancel(edit)  # the workers stop too, not only this process
        raise
    finally:
        bars.close()
        bars.preview_path.unlink(missing_ok=True)
        worker.close()
        pool.close()
    extra = {"device": pool.device_label(), "workers": pool.described, "seconds": time.perf_counter() - started}
    write_results(out, job, results[0], final["random_weights"], extra)
    return {"random_weights": final["random_weights"], "leakage": final["leakage"], "warp_error": final["warp_error"],
            "inversion_cached": final["inversion_cached"], "leakage_whole_run": final["leakage_whole_run"]}
