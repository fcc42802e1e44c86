"""`videograin eval RESULT_DIR [--against OTHER] [--clip MODEL] [--json F]`: the numbers of an edit.

Reads a results folder (`frames/` and `result.json`, as `videograin edit` writes them) and reports:
- warp error (metrics/warp.py), recomputed from the source clip the result names (its frames, stride and
  working size, with the job's flow settings), or the figure result.json recorded when the source is
  not on this disk;
- CLIP-T and CLIP-F (metrics/clip_score.py) when a CLIP model folder or hub id is given;
- cross-attention leakage per phrase, from result.json: over the modulated steps and levels, and over
  the whole run (metrics/leakage.py).
With `--against`, a second results folder is measured the same way, side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from videograin.engine.config import parse_settings
from videograin.engine.errors import JobError
from videograin.engine.inputs.flow import clip_flow
from videograin.engine.inputs.job import frame_indices
from videograin.engine.inputs.media import list_frames, read_sequence, resize, sequence_length, write_atomic
from videograin.engine.metrics.warp import warp_error


def read_result(folder: Path) -> tuple[dict[str, Any], np.ndarray]:
    """result.json and the frames of a results folder, or one JobError that says what is wrong."""
    report_path, frames_path = folder / "result.json", folder / "frames"
    if not folder.is_dir():
        raise JobError(f"'{folder}' is not a folder: give the results folder of `videograin edit` (it holds result.json)")
    if not report_path.is_file():
        inner = folder / "result"  # where `videograin demo --out FOLDER` writes its results
        hint = (f": the results are in '{inner}' (`videograin eval {inner}`)" if (inner / "result.json").is_file()
                else ": it is not a videograin results folder")
        raise JobError(f"'{folder}' has no result.json{hint}")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as exc:
        raise JobError(f"'{report_path}' is not readable JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("settings"), dict):
        raise JobError(f"'{report_path}' has no settings: it is not a videograin result")
    if not frames_path.is_dir() or not list_frames(frames_path):
        raise JobError(f"'{folder}' has no frames/ folder of images")
    frames = read_sequence(frames_path, list(range(len(list_frames(frames_path)))), "result frames")
    return report, frames


def source_warp_error(report: dict[str, Any], frames: np.ndarray) -> float | None:
    """The result's warp error under its source's flow, at the working size the edit used; None when the
    source is not readable here."""
    settings = parse_settings(report["settings"])
    source = Path(settings.source.path)
    if not settings.source.path or not source.exists():
        return None
    length = sequence_length(source)
    indices = frame_indices(settings.source, length)
    if len(indices) != len(frames):
        raise JobError(f"the result has {len(frames)} frames but its source gives {len(indices)}: "
                       "the source changed since the edit")
    size = settings.source.width, settings.source.height
    clip = resize(read_sequence(source, indices, "source"), *size)
    return warp_error(resize(frames, *size), clip_flow(clip, settings.flow.for_metrics(), indices, length))


def measure(folder: Path, scorer=None) -> dict[str, Any]:
    report, frames = read_result(folder)
    recomputed = source_warp_error(report, frames)
    figures: dict[str, Any] = {
        "result": str(folder),
        "frames": len(frames),
        "warp_error": recomputed if recomputed is not None else report.get("warp_error"),
        "warp_error_from": "source" if recomputed is not None else "result.json",
        "leakage": report.get("leakage"),
        "leakage_whole_run": report.get("leakage_whole_run"),
        "random_weights": report.get("random_weights", False),
    }
    if scorer is not None:
        figures |= scorer.scores(frames, report["settings"]["prompt"])
    return figures


def _table(columns: list[dict[str, Any]]) -> str:
    rows = [("result", lambda c: Path(c["result"]).name), ("frames", lambda c: c["frames"]),
            ("warp error (×10³)", lambda c: _number(c["warp_error"])),
            ("CLIP-T", lambda c: _number(c.get("clip_t"))), ("CLIP-F", lambda c: _number(c.get("clip_f")))]
    for key, named in (("leakage", "modulated"), ("leakage_whole_run", "whole run")):
        phrases = sorted({p for c in columns for p in (c[key] or {})})
        rows += [(f"leakage '{p}' ({named})", lambda c, p=p, key=key: _number((c[key] or {}).get(p))) for p in phrases]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  " + "  ".join(f"{str(value(c)):>14}" for c in columns) for name, value in rows]
    if any(c["random_weights"] for c in columns):
        lines.append("NOTE: random-weight results: the numbers measure noise, not an edit.")
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def cmd_eval(args: argparse.Namespace) -> int:
    scorer = None
    if args.clip:
        from videograin.engine.metrics.clip_score import ClipScorer
        from videograin.engine.models import resolve_device

        scorer = ClipScorer(args.clip, resolve_device(args.device))
    columns = [measure(Path(args.result), scorer)]
    if args.against:
        columns.append(measure(Path(args.against), scorer))
    print(_table(columns))
    if args.json:
        write_atomic(Path(args.json), json.dumps(columns if args.against else columns[0], indent=2).encode())
    return 0


def add_parser(sub) -> None:
    parser = sub.add_parser("eval", help="warp error, CLIP-T / CLIP-F and leakage of a results folder")
    parser.add_argument("result", help="a results folder of `videograin edit`")
    parser.add_argument("--against", metavar="OTHER", help="a second results folder, measured side by side")
    parser.add_argument("--clip", metavar="MODEL", help="CLIP model folder or hub id for CLIP-T and CLIP-F "
                        "(papers use openai/clip-vit-large-patch14)")
    parser.add_argument("--device", default="auto", help="for the CLIP model")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    parser.set_defaults(run=cmd_eval)
