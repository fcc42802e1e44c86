"""What the engine's socket holds per peer (protocol/SPEC.md §5): the open-file limit, and how much of a
job's stream may wait in ZeroMQ's queue for one peer.
"""

from __future__ import annotations

import logging
import resource

import zmq

log = logging.getLogger("videograin.server")

SEND_HWM = 64  # messages queued for one peer before ZeroMQ drops more (progress, replies): a backstop
STREAM_MESSAGES = 16  # frames of a stream queued for one peer at once; the rest wait on the engine's disk
STREAM_BYTES = 32 * 2**20  # and their bytes (one frame always goes, however large)


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (each peer holds a descriptor); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY: keep what we have
        log.warning("could not raise the open-file limit from %s to %s: %s", soft, hard, exc)
        return soft
    return hard


# -- per-peer memory (SPEC.md §5) --------------------------------------------------------------------

class StreamBudget:
    """Frames sent to each peer that ZeroMQ still holds (trackers not yet done): a peer that reads slowly,
    or never, holds at most STREAM_MESSAGES frames or STREAM_BYTES of the engine's memory."""

    def __init__(self) -> None:
        self._in_flight: dict[bytes, list[tuple[zmq.MessageTracker, int]]] = {}

    def room(self, peer: bytes) -> bool:
        held = [(t, n) for t, n in self._in_flight.get(peer, ()) if not t.done]
        if held:
            self._in_flight[peer] = held
        else:
            self._in_flight.pop(peer, None)
        return not held or (len(held) < STREAM_MESSAGES and sum(n for _, n in held) < STREAM_BYTES)

    def sent(self, peer: bytes, tracker: zmq.MessageTracker, nbytes: int) -> None:
        self._in_flight.setdefault(peer, []).append((tracker, nbytes))
