"""`videograin timeline`: an OpenTimelineIO round trip, so any editor that exports OTIO is a front-end.

Clips marked `videograin` in the editor are edited and come back on a new `videograin` track above the
originals (README, "Other editors: OpenTimelineIO"). `shots` reads the marked clips and their media,
`conform` reads and writes timeline files and builds the new track, `command` runs the three stages.
This module is the command's entry (its arguments are in cli.py): OpenTimelineIO is an optional extra, imported
when it runs.
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
