"""`videograin timeline`: an OpenTimelineIO round trip, so any editor that exports OTIO is a front-end.

Clips marked `videograin` in the editor are edited and come back on a new `videograin` track above the
originals (README, "Other editors: OpenTimelineIO"). `shots` reads the marked clips and their media,
`conform` reads and writes timeline files and builds the new track, `command` runs the three stages.
This module only registers the command: OpenTimelineIO is an optional extra, imported when it runs.
"""

from __future__ import annotations

import argparse

from videograin.engine.errors import VideograinError

INSTALL_HINT = "pip install 'videograin[otio]' (OpenTimelineIO and its FCP XML adapter)"


def run(args: argparse.Namespace) -> int:
    try:
        import opentimelineio  # noqa: F401
    except ImportError:
        raise VideograinError(
            f"`videograin timeline` needs OpenTimelineIO: {INSTALL_HINT}", code="not_installed"
        ) from None
    from videograin.engine.timeline.command import cmd_timeline

    return cmd_timeline(args)


def add_parser(sub) -> None:
    from videograin.engine.cache import add_cache_arguments

    p = sub.add_parser("timeline", help="edit the clips marked 'videograin' in an OpenTimelineIO timeline")
    p.add_argument("timeline", help="the editor's exported timeline: .otio, .otioz, or a format an OTIO adapter reads")
    p.add_argument(
        "--out", required=True, help="the timeline with a 'videograin' track added (the input is never modified)"
    )
    p.add_argument(
        "--results", help="folder of the edited shots (default: next to OUT, named after it + '-videograin')"
    )
    p.add_argument("--engine", metavar="CONNECTION_FILE", help="edit on an engine server instead of in-process")
    p.add_argument("--model", help="override every shot's model: hub id, local folder, 'tiny' or 'sd15-random'")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (in-process)")
    p.add_argument(
        "--movie",
        action="store_true",
        help="new clips point at movies, not PNG sequences (always for .otioz and other formats; Resolve needs it)",
    )
    p.add_argument(
        "--movie-codec", choices=["h264", "prores"], default="h264",
        help="the edited shots' movies: H.264 in .mp4 (default) or ProRes 422 HQ in .mov, as editors prefer to cut",
    )
    p.add_argument(
        "--force", action="store_true", help="edit every shot again, even those already in the results folder"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists (else refused)")
    add_cache_arguments(p)  # in-process shots; an engine keeps its own cache
    p.set_defaults(run=run)
