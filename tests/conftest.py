"""Shared fixtures: the tiny random pipeline and a synthetic job on disk; how tests wait; how they compare
results with files stored in tests/data."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# OpenMP threads that wait by spinning hold a core each: on a machine busier than its cores (CI beside other
# jobs) torch's parallel regions then crawl (a tiny edit took 80 s at 2 threads, 1-4 s waiting passively,
# on 2 cores at load 15-24). Set before torch loads its OpenMP runtime; the engines tests start inherit it.
# Only the scheduling changes, not the arithmetic: results are the same bits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The inversion cache's default folder lies under the user's cache directory: tests keep theirs apart.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="videograin-test-cache-")


@pytest.fixture(scope="session")
def tiny_pipe():
    from videograin.engine.models import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_engine_heartbeat_s() -> float:
    """The tiny engine's heartbeat: 1 s, longer on a machine busier than its cores. A peer counts an engine
    gone after 3 silent heartbeats, and an engine given a fraction of a core was silent 3 s at load 25."""
    return round(limit(1.0), 1)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory, tiny_engine_heartbeat_s) -> str:
    """A `videograin serve` process on the tiny model; yields its connection file."""
    from conformance import start_engine

    process, _, connection = start_engine(tmp_path_factory.mktemp("tiny-engine"), "--heartbeat",
                                          str(tiny_engine_heartbeat_s))
    yield str(connection)
    process.kill()
    process.wait()


@pytest.fixture()
def demo_job(tmp_path: Path) -> Path:
    """A 4-frame, 64×64 two-runner clip with mattes and a job file (5 steps) in a fresh folder."""
    from videograin.engine.demo import write_demo_inputs

    return write_demo_inputs(tmp_path / "input", frames=4, size=64, steps=5)


@pytest.fixture(scope="session")
def extension_wheel_cache(request) -> Path | None:
    """Where the Blender extension's wheels are kept between runs: pytest's cache folder; None under
    `-p no:cacheprovider`, and each build then downloads them into a scratch folder of its own."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("extension-wheels") if cache is not None else None


# -- waiting ---------------------------------------------------------------------------------------------

T = TypeVar("T")


def slowness() -> float:
    """How many times longer than on a quiet machine things may take here: VIDEOGRAIN_TEST_SLOWNESS
    (default 1) times the load per core, when the machine is busier than its cores (2-core CI beside
    other jobs runs at load 8 to 16)."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):  # no load average on this system
        load = 1.0
    return float(os.environ.get("VIDEOGRAIN_TEST_SLOWNESS", "1")) * max(1.0, load)


def limit(seconds: float) -> float:
    """A limit for something that takes well under `seconds` on a quiet machine, scaled by `slowness`."""
    return seconds * slowness()


def wait_for(condition: Callable[[], T], what: str, seconds: float = 60.0, every_s: float = 0.05) -> T:
    """Poll `condition` until it gives something true and return that; fail, saying `what` was awaited, after
    `limit(seconds)`. A condition that can tell the awaited thing will never come (a session whose `tick()`
    returned False, a process that exited) fails at once by raising itself."""
    deadline = time.monotonic() + limit(seconds)
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit(seconds):.0f} s for {what}")
        time.sleep(every_s)
    return result

# -- figures listed at the end of the run ----------------------------------------------------------------

REPORTS: dict[str, list[str]] = {}  # section title → its lines, in the order tests added them


def report(section: str, line: str) -> None:
    """Add a line to `section` of the summary printed at the end of the run (how far stored frames were,
    what each attack cost the engine)."""
    REPORTS.setdefault(section, []).append(line)


def pytest_terminal_summary(terminalreporter) -> None:
    for section, lines in REPORTS.items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)

# -- files stored in tests/data --------------------------------------------------------------------------


def this_machine() -> dict[str, object]:
    """What decides the last bits of a float32 CPU run: the processor (oneDNN and MKL choose their kernels
    and blockings by its model and caches), the torch build, and whether more than one thread runs (with
    one, PyTorch computes 1×1 convolutions by im2col and a matrix product instead of oneDNN's kernel)."""
    import torch

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "torch": torch.__version__, "threads_above_one": torch.get_num_threads() > 1}


@pytest.fixture()
def stored_frames():
    """Compare uint8 frames with frames stored in tests/data/NAME.npz, whose NAME.json says on which machine
    they reproduce bit for bit. There they must be equal; elsewhere each value may differ by `levels` on at
    most a `share` of the values (kernels that sum in another order move a value lying near a half level
    across it). How far each comparison was is listed at the end of the run."""

    def compare(name: str, key: str, frames: np.ndarray, levels: int = 1, share: float = 0.02) -> None:
        stored = np.load(Path(__file__).parent / "data" / f"{name}.npz")[key]
        about = json.loads((Path(__file__).parent / "data" / f"{name}.json").read_text())
        same_machine = this_machine() == about["reproduced_bit_for_bit_on"]
        assert frames.shape == stored.shape, (frames.shape, stored.shape)
        differ = np.abs(frames.astype(np.int16) - stored.astype(np.int16))
        allowed = "none (the machine it reproduces on)" if same_machine else f"{levels} level on {share:.0%} of them"
        line = (f"{name}.npz[{key}]: {int((differ > 0).sum())} of {differ.size} values differ, by at most "
                f"{differ.max()} level; allowed: {allowed}")
        report("results against files stored in tests/data", line)
        if same_machine:
            assert not differ.any(), line
        assert differ.max() <= levels and (differ > 0).mean() <= share, line

    return compare

