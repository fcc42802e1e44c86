"""Putting an edit's frames back into the sequencer as a new image strip; nothing else is touched."""

from __future__ import annotations

from pathlib import Path

from .export import all_strips_of, strips_of

MAX_CHANNEL = 128


def free_channel_above(scene, strip, start: int, end: int) -> int:
    """The lowest channel above `strip` with nothing between frames `start` and `end`."""
    for channel in range(strip.channel + 1, MAX_CHANNEL + 1):
        if not any(s.channel == channel and s.frame_final_start < end and s.frame_final_end > start for s in all_strips_of(scene)):
            return channel
    raise RuntimeError("no free channel above the source strip")


def insert_result_strip(scene, source, frames: list[Path], name: str):
    """An image strip of `frames` on a free channel above `source`, starting where it starts."""
    start = source.frame_final_start
    channel = free_channel_above(scene, source, start, start + len(frames))
    strip = strips_of(scene).new_image(name=name, filepath=str(frames[0]), channel=channel, frame_start=start)
    for path in frames[1:]:
        strip.elements.append(path.name)
    return strip
