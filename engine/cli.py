"""`videograin` command line: edit, check, demo, serve, bench, eval, timeline, mattes.

The parser is built from argparse alone: `--help`, `--version` and argument errors answer at once. Each
command's handler imports what it runs (torch and diffusers take seconds to import), and a job file's
settings are checked before that, so a typo in a job costs no model start-up either.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from videograin import __version__
from videograin.engine.errors import VideograinError

Handler = Callable[[argparse.Namespace], int]


def handler(module: str, function: str, job_settings_first: bool = False) -> Handler:
    """`module.function(args)`, imported only when the command runs; with `job_settings_first`, the job
    file's settings are parsed before the import (an unknown key or a bad value is refused at once)."""

    def run(args: argparse.Namespace) -> int:
        if job_settings_first:
            check_job_settings(args.job)
        return getattr(importlib.import_module(module), function)(args)

    return run


def check_job_settings(path: str) -> None:
    from videograin.engine.config import parse_settings
    from videograin.engine.inputs.job import read_job_file

    parse_settings(read_job_file(path))


def cmd_edit(args: argparse.Namespace) -> int:
    check_job_settings(args.job)
    from videograin.engine.cache import cache_from_args
    from videograin.engine.check import announce_estimate
    from videograin.engine.inputs.job import load_job_mapping, read_job_file
    from videograin.engine.progress import ProgressBars
    from videograin.engine.runner import check_output_folder, edit_in_process, edit_on_engine, engine_default_model

    if args.engine and args.ray is not None:
        raise VideograinError("--engine and --ray are two ways to run the edit: pass one of them", code="bad_config")
    if args.engine and args.attention_maps:
        raise VideograinError("--attention-maps writes maps from an edit in this process or on --ray; an engine "
                              "streams them to clients that ask (SPEC.md §3.2 attention_maps)", code="bad_config")
    data = read_job_file(args.job)
    # The model decides how the job loads (a family's control and frame rules): set it first. A job that
    # names none runs on an engine's own default (`welcome`'s models[0]), not this program's.
    model = args.model or (engine_default_model(args.engine) if args.engine and "model" not in data else None)
    bars = ProgressBars()  # regions given by keyframes are tracked while the job loads
    try:
        job = load_job_mapping({**data, "model": model} if model else data, Path(args.job).parent, args.device, bars)
    finally:
        bars.close()
    out = Path(args.out).resolve()  # a link to a folder: that folder, which the results' final rename replaces
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
    job_path = write_demo_inputs(out / "input", frames=args.frames, size=args.size, steps=args.steps, model=args.model)
    print(f"demo clip, mattes and job file: {job_path}")
    # The demo's contact sheet shows each phrase's attention with and without ST-Layout modulation.
    summary = edit_in_process(load_job(job_path), out / "result", args.device, attention_maps=True, show_plain_maps=True)
    _report(out / "result", summary)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """A CURVE client key pair in zmq.auth's certificate format (SPEC.md §1.1), private from the start."""
    import os

    import zmq.auth

    from videograin.protocol import wire

    folder = Path(args.folder).expanduser()
    public, secret = folder / f"{args.name}.key", folder / f"{args.name}.key_secret"
    if public.exists() or secret.exists():
        raise VideograinError(f"'{public}' or '{secret}' exists: choose another name", code="bad_config")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    umask = os.umask(0o077)  # the certificate writer opens its files with the process's umask
    try:
        zmq.auth.create_certificates(folder, args.name)
    finally:
        os.umask(umask)
    print(f"wrote {secret} (secret: keep it to yourself) and {public}: add {public.name} to the engine's "
          f"--curve-clients folder")
    if args.connection_file:
        try:
            info = wire.read_connection_file(args.connection_file)
        except wire.ProtocolError as exc:
            raise VideograinError(str(exc), code="bad_config") from None
        if not isinstance(info.get("curve"), dict) or "server_key" not in info["curve"]:
            raise VideograinError(f"'{args.connection_file}' is not a CURVE engine's connection file "
                                  "(start the engine with --curve or --allow-remote)", code="bad_config")
        client_public, client_secret = zmq.auth.load_certificate(secret)
        info["curve"] = {"server_key": info["curve"]["server_key"], "public_key": client_public.decode(),
                         "secret_key": client_secret.decode()}
        mine = folder / f"{args.name}.json"
        wire.write_private_json(mine, info)
        print(f"wrote {mine}: the engine's connection file with this key pair, for `--engine` or the add-on")
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


def working_size(text: str) -> tuple[int, int]:
    """`512` or `832x480` → (width, height)."""
    try:
        width, _, height = text.lower().partition("x")
        return int(width), int(height or width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size: give N or WIDTHxHEIGHT, e.g. 832x480") from None


def build_parser() -> argparse.ArgumentParser:
    """Every command's arguments; nothing here imports more than argparse and the wire defaults."""
    from videograin.engine.families import RANDOM_MODELS
    from videograin.protocol.wire import DEFAULT_CONNECTION_FILE, Limits

    parser = argparse.ArgumentParser(prog="videograin", description="Multi-grained text-driven video editing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit a clip as a job file describes")
    edit.add_argument("job", help="job file (YAML)")
    edit.add_argument("--out", required=True, help="new or empty folder for the results")
    edit.add_argument("--model", help="override the job's model: hub id, local folder, or a random stand-in "
                                      "(tiny, sd15-random, wan-tiny, wan-1.3b-random)")
    edit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    edit.add_argument("--engine", metavar="CONNECTION_FILE", help="run on an engine server instead of in-process")
    edit.add_argument("--attention-maps", action="store_true",
                      help="also write each phrase's cross-attention maps (attention/<phrase>/) and contact-sheet rows")
    add_cache_arguments(edit)
    add_ray_arguments(edit)
    edit.set_defaults(run=cmd_edit)

    demo = sub.add_parser("demo", help="synthetic clip + mattes on the tiny random model (offline, ~30 s on 2 cores)")
    demo.add_argument("--out", required=True, help="new or empty folder")
    demo.add_argument("--frames", type=int, default=8)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--steps", type=int, default=20)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--model", default="tiny", choices=["tiny", "wan-tiny"],
                      help="tiny: SD-1.5's layout (the paper's model); wan-tiny: Wan 2.1's (a video transformer)")
    demo.set_defaults(run=cmd_demo)

    keys = sub.add_parser("keys", help="make a CURVE client key pair for an engine's allow-list (SPEC.md §1.1)")
    keys.add_argument("name", help="the pair's name: NAME.key (public, for the engine) and NAME.key_secret (0600)")
    keys.add_argument("--folder", default=str(Path.home() / ".videograin" / "keys"),
                      help="where to write them (default ~/.videograin/keys, made 0700)")
    keys.add_argument("--connection-file", metavar="ENGINE_JSON",
                      help="also write NAME.json: this CURVE engine's connection file with the new pair in it")
    keys.set_defaults(run=cmd_keys)

    check = sub.add_parser("check", help="validate a job in seconds, without model weights, and picture its layout")
    check.add_argument("job", help="job file (YAML)")
    check.add_argument("--out", help="folder for layout.png and check.json (new, empty, or a previous check's)")
    check.add_argument("--model", help="override the job's model, as `edit --model` does")
    check.add_argument("--device", default="auto", help="the device the estimate and the passes are for")
    check.set_defaults(run=handler("videograin.engine.check", "cmd_check", job_settings_first=True))

    serve = sub.add_parser("serve", help="run the engine server (protocol v1, see protocol/SPEC.md)")
    serve.add_argument("--bind", default="tcp://127.0.0.1:0", help="tcp://127.0.0.1:PORT (0: any free port) or ipc://PATH")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback bind address (CurveZMQ then secures the connections: --curve)")
    serve.add_argument("--curve", action="store_true",
                       help="authenticate and encrypt with CurveZMQ on any address (SPEC.md §1.1); on by --allow-remote")
    serve.add_argument("--curve-clients", metavar="DIR",
                       help="CURVE allow-list: client public keys (`videograin keys` makes them), beside the "
                            "connection file's own; read again when the folder changes")
    serve.add_argument("--max-connections", type=int, default=Limits.max_connections,
                       help="peers served at once; one more gets `busy`")
    serve.add_argument("--connection-file", default=str(DEFAULT_CONNECTION_FILE),
                       help="where clients find the engine (default ~/.videograin/engine.json)")
    serve.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5",
                       help="model for jobs that name none: hub id, local folder, or a random stand-in (tiny, sd15-random, wan-tiny, wan-1.3b-random)")
    serve.add_argument("--allow-model", action="append", default=[], metavar="NAME",
                       help="another model or ControlNet a job may name (repeatable); jobs naming any other are refused")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--retention", type=float, default=3600.0, help="seconds finished results stay attachable (kept on disk in the temp folder, not in RAM)")
    serve.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    serve.add_argument("--max-frames", type=int, default=Limits.max_frames)
    serve.add_argument("--max-part-bytes", type=int, default=Limits.max_part_bytes, help="largest binary part (image)")
    serve.add_argument("--max-pixels", type=int, default=None,
                       help="pixels one request may decode: its images' width × height, summed (default 2^30; SPEC.md §5)")
    serve.add_argument("--max-held-pixels", type=int, default=None,
                       help="pixels the jobs waiting or running hold decoded, all together (default 4 × --max-pixels; "
                            "SPEC.md §5)")
    serve.add_argument("--media-root", action="append", metavar="DIR",
                       help="a folder whose files requests may name by path (repeatable); with --allow-remote and "
                            "none, requests send their pixels inline; on loopback without one, any path (SPEC.md §1)")
    add_cache_arguments(serve)  # one inversion cache for every job and client of this engine
    add_ray_arguments(serve)
    serve.set_defaults(run=handler("videograin.engine.serving.server", "cmd_serve"))

    bench = sub.add_parser("bench", help="time and memory of an edit (or of frame streaming)")
    bench.add_argument("--model", default="tiny", choices=sorted(RANDOM_MODELS))
    bench.add_argument("--device", default="auto")
    bench.add_argument("--frames", type=int, default=4)
    bench.add_argument("--size", type=working_size, default=(64, 64),
                       help="working size: N (square) or WIDTHxHEIGHT, multiples of 8 (16 for Wan)")
    bench.add_argument("--steps", type=int, default=5, help="inversion steps = edit steps")
    bench.add_argument("--window", type=int, default=None, help="frames per pass (default: the engine picks)")
    bench.add_argument("--stream", action="store_true", help="benchmark 1080p frame streaming instead")
    bench.add_argument("--stream-frames", type=int, default=100, help="frames per signing form, over 5 rounds")
    bench.add_argument("--timeline", action="store_true", help="cost of the OpenTimelineIO round trip over 20 shots")
    bench.add_argument("--features", action="store_true",
                       help="cost of the reference's features (flow, trajectories, injection, blending)")
    bench.add_argument("--reedit", action="store_true", help="an edit, then another prompt served by the inversion cache")
    bench.add_argument("--blender", action="store_true", help="benchmark the Blender add-on's export and import instead")
    bench.add_argument("--blender-frames", type=int, default=48)
    bench.add_argument("--blender-python", default=sys.executable, metavar="PYTHON",
                       help="a Python with bpy (e.g. .venv-blender45/bin/python for Blender 4.5)")
    bench.add_argument("--track", action="store_true", help="benchmark matte tracking (flow at 720p/1080p, SAM 2)")
    bench.add_argument("--ray", type=int, metavar="N",
                       help="edit time on 1 vs N Ray workers (local cluster) and time to the first frame")
    bench.add_argument("--decode", action="store_true",
                       help="reading 1080p H.264 and ProRes to RGB: PyAV against OpenCV, frames/s")
    bench.add_argument("--decode-frames", type=int, default=48)
    bench.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    bench.set_defaults(run=handler("videograin.engine.bench", "cmd_bench"))

    evaluate = sub.add_parser("eval", help="warp error, CLIP-T / CLIP-F and leakage of a results folder")
    evaluate.add_argument("result", help="a results folder of `videograin edit`")
    evaluate.add_argument("--against", metavar="OTHER", help="a second results folder, measured side by side")
    evaluate.add_argument("--clip", metavar="MODEL", help="CLIP model folder or hub id for CLIP-T and CLIP-F "
                          "(papers use openai/clip-vit-large-patch14)")
    evaluate.add_argument("--device", default="auto", help="for the CLIP model")
    evaluate.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    evaluate.set_defaults(run=handler("videograin.engine.evaluate", "cmd_eval"))

    timeline = sub.add_parser("timeline", help="edit the clips marked 'videograin' in an OpenTimelineIO timeline")
    timeline.add_argument("timeline",
                          help="the editor's exported timeline: .otio, .otioz, or a format an OTIO adapter reads")
    timeline.add_argument("--out", required=True,
                          help="the timeline with a 'videograin' track added (the input is never modified)")
    timeline.add_argument("--results",
                          help="folder of the edited shots (default: next to OUT, named after it + '-videograin')")
    timeline.add_argument("--engine", metavar="CONNECTION_FILE", help="edit on an engine server instead of in-process")
    timeline.add_argument("--model", help="override every shot's model: hub id, local folder, or a random stand-in "
                                          "(tiny, sd15-random, wan-tiny, wan-1.3b-random)")
    timeline.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (in-process)")
    timeline.add_argument("--movie", action="store_true", help="new clips point at movies, not PNG sequences "
                          "(always for .otioz and other formats; Resolve needs it)")
    timeline.add_argument("--movie-codec", choices=["h264", "prores"], default="h264",
                          help="the edited shots' movies: H.264 in .mp4 (default) or ProRes 422 HQ in .mov, as "
                          "editors prefer to cut")
    timeline.add_argument("--force", action="store_true",
                          help="edit every shot again, even those already in the results folder")
    timeline.add_argument("--overwrite", action="store_true", help="replace OUT when it exists (else refused)")
    add_cache_arguments(timeline)  # in-process shots; an engine keeps its own cache
    timeline.set_defaults(run=handler("videograin.engine.timeline", "run"))

    mattes = sub.add_parser("mattes", help="write the mattes a job would use (tracking keyframes) for a look")
    mattes.add_argument("job", help="job file (YAML)")
    mattes.add_argument("--out", required=True, help="new or empty folder for the mattes")
    mattes.add_argument("--device", default="auto", help="where SAM trackers run: auto, cpu, cuda or cuda:N")
    mattes.set_defaults(run=handler("videograin.engine.mattes_command", "cmd_mattes", job_settings_first=True))
    return parser


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """`--cache`, `--cache-size` and `--no-cache`, the same for every command that inverts clips (cache.py)."""
    parser.add_argument("--cache", metavar="DIR", help="inversion cache folder (default: "
                        "$XDG_CACHE_HOME/videograin/inversions, else ~/.cache/videograin/inversions)")
    parser.add_argument("--cache-size", default="20G", help="cache size cap, least recently used out first (e.g. 20G)")
    parser.add_argument("--no-cache", action="store_true", help="invert every clip afresh and keep nothing")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """`--ray [ADDRESS]` and `--workers`, the same for `serve` and `edit` (ray_pool.py)."""
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="spread passes and jobs over Ray workers: the cluster at ADDRESS (host:port), or a local "
                             "one when none is given; needs `pip install 'videograin[ray]'`")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="Ray workers to start (default: one per GPU of the cluster; 1 where it has none)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except VideograinError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # An engine's error can only come from the client module, once a handler has imported it.
        client = sys.modules.get("videograin.protocol.client")
        if client is None or not isinstance(exc, client.EngineError):
            raise
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
