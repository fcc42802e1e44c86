"""Finished frames that the engine keeps for `attach`, on disk rather than in RAM: an hour of retained
1080p results would otherwise be gigabytes of engine memory."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from videograin.protocol.wire import pid_alive

log = logging.getLogger("videograin.server")

PREFIX = "videograin-results-"


class FrameStore:
    """One folder per job under a private temporary folder, one `.npy` file per frame (exact, fast).

    The folder's name carries the engine's pid, so that an engine killed before it could clean up is
    recognised by the next one (`remove_stale_stores`)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))

    def _path(self, job: str, index: int) -> Path:
        return self.root / job / f"{index:05d}.npy"

    def put(self, job: str, index: int, image: np.ndarray) -> None:
        path = self._path(job, index)
        path.parent.mkdir(exist_ok=True)
        np.save(path, image)

    def get(self, job: str, index: int) -> np.ndarray:
        return np.load(self._path(job, index))

    def drop(self, job: str) -> None:
        shutil.rmtree(self.root / job, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale_stores() -> list[Path]:
    """Remove the results folders of engines that are no longer running (killed, crashed); returns them.

    Only this user's folders named by a FrameStore are considered, and a folder whose engine still runs
    is left alone."""
    removed = []
    pattern = re.compile(rf"{re.escape(PREFIX)}(\d+)-")
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        match = pattern.match(folder.name)
        if match is None or not folder.is_dir() or folder.is_symlink():
            continue
        if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
            continue
        if not pid_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed the results folder of engine pid %s, which is no longer running: %s", match.group(1), folder)
            removed.append(folder)
    return removed
