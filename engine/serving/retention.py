"""Finished frames that the engine keeps for `attach`, on disk rather than in RAM: an hour of retained
1080p results would otherwise be gigabytes of engine memory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


class FrameStore:
    """One folder per job under a private temporary folder, one `.npy` file per frame (exact, fast)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="videograin-results-"))

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
