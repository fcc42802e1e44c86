"""`videograin` command line: edit, check, demo, serve, bench, mattes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from videograin import __version__
from videograin.engine.errors import VideograinError
from videograin.protocol.client import EngineError


def cmd_edit(args: argparse.Namespace) -> int:
    from videograin.engine.cache import cache_from_args
    from videograin.engine.check import announce_estimate
    from videograin.engine.inputs.job import load_job
    from videograin.engine.progress import ProgressBars
    from videograin.engine.runner import check_output_folder, edit_in_process, edit_on_engine

    if args.engine and args.ray is not None:
        raise VideograinError("--engine and --ray are two ways to run the edit: pass one of them", code="bad_config")
    if args.engine and args.attention_maps:
        raise VideograinError("--attention-maps writes maps from an edit in this process or on --ray; an engine "
                              "streams them to clients that ask (SPEC.md §3.2 attention_maps)", code="bad_config")
    bars = ProgressBars()  # regions given by keyframes are tracked while the job loads
    try:
        job = load_job(args.job, args.device, bars)
    finally:
        bars.close()
    if args.model:
        job.settings.model = args.model
    out = Path(args.out)
    check_output_folder(out, job)
    if args.engine:
        summary = edit_on_engine(args.engine, job, out)
    elif args.ray is not None:
        from videograin.engine.serving.ray_pool import edit_on_ray

        summary = edit_on_ray(job, out, args.ray or None, args.workers, cache_from_args(args), args.attention_maps)
    else:
        announce_estimate(job, args.device)
        summary = edit_in_process(job, out, args.device, cache_from_args(args), args.attention_maps)
    _report(out, summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from videograin.engine.demo import write_demo_inputs
    from videograin.engine.inputs.job import load_job
    from videograin.engine.runner import edit_in_process

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise VideograinError(f"demo folder '{out}' is not empty: choose a new one", code="bad_job")
    job_path = write_demo_inputs(out / "input", frames=args.frames, size=args.size, steps=args.steps)
    print(f"demo clip, mattes and job file: {job_path}")
    # The demo's contact sheet shows each phrase's attention with and without ST-Layout modulation.
    summary = edit_in_process(load_job(job_path), out / "result", args.device, attention_maps=True, show_plain_maps=True)
    _report(out / "result", summary)
    return 0


def _report(out: Path, summary: dict) -> None:
    print(f"wrote {out}/frames, {out}/preview.mp4, {out}/contact_sheet.png, {out}/result.json")
    from videograin.engine.metrics.leakage import describe_leakage

    for line in describe_leakage(summary["leakage"], summary.get("leakage_whole_run")):
        print(line)
    if summary.get("warp_error") is not None:
        print(f"warp error (×10³, under the source's flow): {summary['warp_error']:.4g}")
    if summary.get("inversion_cached"):
        print("the inversion came from the cache")
    if summary["random_weights"]:
        print("NOTE: random-weight model: the frames show the pipeline working, they are not an edit.")


def build_parser() -> argparse.ArgumentParser:
    from videograin.engine.cache import add_cache_arguments
    from videograin.engine.serving.server import add_ray_arguments

    parser = argparse.ArgumentParser(prog="videograin", description="Multi-grained text-driven video editing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit a clip as a job file describes")
    edit.add_argument("job", help="job file (YAML)")
    edit.add_argument("--out", required=True, help="new or empty folder for the results")
    edit.add_argument("--model", help="override the job's model: hub id, local folder, 'tiny' or 'sd15-random'")
    edit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    edit.add_argument("--engine", metavar="CONNECTION_FILE", help="run on an engine server instead of in-process")
    edit.add_argument("--attention-maps", action="store_true",
                      help="also write each phrase's cross-attention maps (attention/<phrase>/) and contact-sheet rows")
    add_cache_arguments(edit)
    add_ray_arguments(edit)
    edit.set_defaults(run=cmd_edit)

    demo = sub.add_parser("demo", help="synthetic clip + mattes on the tiny random model (offline, < 1 min)")
    demo.add_argument("--out", required=True, help="new or empty folder")
    demo.add_argument("--frames", type=int, default=8)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--steps", type=int, default=20)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(run=cmd_demo)

    from videograin.engine import bench, check, evaluate, mattes_command, timeline
    from videograin.engine.serving import server

    check.add_parser(sub)
    server.add_parser(sub)
    bench.add_parser(sub)
    evaluate.add_parser(sub)
    timeline.add_parser(sub)
    mattes_command.add_parser(sub)
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
