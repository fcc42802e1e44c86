"""`videograin` command line: edit, demo, serve, bench."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from videograin.engine.errors import VideograinError
from videograin.protocol.client import EngineError


def _preview_path(out: Path) -> Path:
    """Where the step previews go while an edit runs, for an image viewer to follow; removed after."""
    return out.parent / f".{out.name}.preview.png"


def _edit_in_process(job, out: Path, device_name: str) -> dict:
    from videograin.engine.models import RANDOM_MODELS, get_pipeline, resolve_device
    from videograin.engine.progress import ProgressBars, ProgressEvent
    from videograin.engine.runner import edit_clip, write_results

    device = resolve_device(device_name)
    s = job.settings
    bars = ProgressBars(_preview_path(out))
    started = time.perf_counter()
    bars(ProgressEvent("load", 0, 1))
    pipe = get_pipeline(s.model, s.controlnet_id, device)
    bars(ProgressEvent("load", 1, 1))
    try:
        result = edit_clip(job, pipe, progress=bars, measure_leakage=True)
    finally:
        bars.close()
        bars.preview_path.unlink(missing_ok=True)
    random_weights = s.model in RANDOM_MODELS
    write_results(out, job, result, random_weights, {"device": str(device), "seconds": time.perf_counter() - started})
    return {"random_weights": random_weights, "leakage": result.leakage}


def _edit_remote(connection_file: str, job, out: Path) -> dict:
    """The same edit through a running engine (protocol v1), results written as in-process."""
    import numpy as np

    from videograin.engine.method.pipeline import EditResult
    from videograin.engine.progress import ProgressBars, ProgressEvent
    from videograin.engine.runner import write_results
    from videograin.protocol.client import EngineClient, frame_image

    client = EngineClient(connection_file)
    bars = ProgressBars(_preview_path(out))
    try:
        engine = client.hello(client="videograin-cli")
        job_id = client.submit(job.settings.to_dict(), job.frames, job.masks, job.control_maps)
        frames: dict[int, np.ndarray] = {}
        try:
            for message in client.events(job_id):
                h = message.header
                if message.type == "progress":
                    preview = frame_image(message, "preview") if "preview" in h else None
                    bars(ProgressEvent(h["phase"], h["step"], h["total"], preview))
                elif message.type == "frame":
                    frames[h["index"]] = frame_image(message)
                elif message.type == "done":
                    done = h
        except KeyboardInterrupt:
            client.cancel(job_id)  # Ctrl-C stops the engine's work too, not only this process
            raise
    finally:
        bars.close()
        bars.preview_path.unlink(missing_ok=True)
        client.close()
    result = EditResult(np.stack([frames[i] for i in sorted(frames)]), done["leakage"])
    write_results(out, job, result, done["random_weights"], {"device": engine["device"], "seconds": done["seconds"], "engine": client.address})
    return {"random_weights": done["random_weights"], "leakage": done["leakage"]}


def cmd_edit(args: argparse.Namespace) -> int:
    from videograin.engine.inputs.job import load_job
    from videograin.engine.runner import check_output_folder

    job = load_job(args.job)
    if args.model:
        job.settings.model = args.model
    out = Path(args.out)
    check_output_folder(out, job)
    if args.engine:
        summary = _edit_remote(args.engine, job, out)
    else:
        summary = _edit_in_process(job, out, args.device)
    _report(out, summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from videograin.engine.demo import write_demo_inputs
    from videograin.engine.inputs.job import load_job

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise VideograinError(f"demo folder '{out}' is not empty: choose a new one", code="bad_job")
    job_path = write_demo_inputs(out / "input", frames=args.frames, size=args.size, steps=args.steps)
    print(f"demo clip, mattes and job file: {job_path}")
    summary = _edit_in_process(load_job(job_path), out / "result", args.device)
    _report(out / "result", summary)
    return 0


def _report(out: Path, summary: dict) -> None:
    print(f"wrote {out}/frames, {out}/preview.mp4, {out}/contact_sheet.png, {out}/result.json")
    if summary["leakage"]:
        shares = ", ".join(f"{phrase}: {share:.3f}" for phrase, share in summary["leakage"].items())
        print(f"cross-attention leakage (share of each phrase's attention outside its region): {shares}")
    if summary["random_weights"]:
        print("NOTE: random-weight model: the frames show the pipeline working, they are not an edit.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videograin", description="Multi-grained text-driven video editing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit a clip as a job file describes")
    edit.add_argument("job", help="job file (YAML)")
    edit.add_argument("--out", required=True, help="new or empty folder for the results")
    edit.add_argument("--model", help="override the job's model: hub id, local folder, 'tiny' or 'sd15-random'")
    edit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    edit.add_argument("--engine", metavar="CONNECTION_FILE", help="run on an engine server instead of in-process")
    edit.set_defaults(run=cmd_edit)

    demo = sub.add_parser("demo", help="synthetic clip + mattes on the tiny random model (offline, < 1 min)")
    demo.add_argument("--out", required=True, help="new or empty folder")
    demo.add_argument("--frames", type=int, default=8)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--steps", type=int, default=20)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(run=cmd_demo)

    from videograin.engine import bench
    from videograin.engine.serving import server

    server.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except VideograinError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
